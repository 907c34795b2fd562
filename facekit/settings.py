"""Process-wide settings: torch thread count and well-known paths, and the validation layer.

The thread count matters on small machines: with 2 cores, a second busy process can slow an
oversubscribed step tenfold, so tests and CI pin it to 1 through ``FACEKIT_THREADS``.

Validation: every command checks its settings here before any work starts. ``check_*`` raise
:class:`~facekit.errors.ConfigError` (exit 1, for configs and library callers); the ``*_arg``
factories are argparse ``type=`` callables (a bad command-line value is a usage error, exit 2).
Each message names the setting, the value and the accepted range. YAML configs are read with
:func:`load_yaml` / :func:`parse_yaml` (size limit, no alias bombs, no deep nesting).
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import re
from pathlib import Path

from facekit.errors import ConfigError, OutputError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("FACEKIT_DATA_DIR", PROJECT_ROOT / "data"))
REPORTS_DIR = Path(os.environ.get("FACEKIT_REPORTS_DIR", PROJECT_ROOT / "reports"))
MODELS_DIR = PROJECT_ROOT / "models"
# Development/test material beside the project; absent on a user's fresh clone.
SHARED_DIR = Path(os.environ.get("FACEKIT_SHARED_DIR", PROJECT_ROOT.parent / "shared"))

MAX_THREADS = 1024
RECOGNITION_BACKENDS = ("sface", "sface-torch", "dlib")  # facekit.recognition's networks (here: --help needs no torch)
MODEL_BACKENDS = ("onnx", "torch", "auto")  # how a restoration chain runs: ONNX Runtime, PyTorch, or measured
SEED_MAX = 2**32 - 1  # numpy's legacy seeding (np.random.seed) takes 0 .. 2**32-1
NAME_MAX = 128
YAML_MAX_BYTES = 1 << 20  # 1 MiB: every config and spec of the project is a few KB
YAML_MAX_NODES = 100_000  # nodes after alias expansion (a "billion laughs" file has 10**9)
YAML_MAX_DEPTH = 100

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_DEVICE_RE = re.compile(r"(cpu|mps|cuda)(?::(\d+))?")


def _thread_count(value, what: str) -> int:
    """``value`` (an int, or the text of an environment variable) as a thread count, else ConfigError."""
    n = value
    if isinstance(value, str):
        try:
            n = int(value.strip())
        except ValueError:
            n = None
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_THREADS:
        raise ConfigError(f"{what}: must be a whole number of threads from 1 to {MAX_THREADS}, got {value!r}")
    return int(n)


def default_threads() -> int:
    """Return the configured torch/OpenCV thread count.

    Returns:
        ``FACEKIT_THREADS`` when set (tests and CI use 1), else the number of usable cores.

    Raises:
        ConfigError: ``FACEKIT_THREADS`` is not a whole number from 1 to :data:`MAX_THREADS`.
    """
    env = os.environ.get("FACEKIT_THREADS")
    if env is not None and env.strip() != "":
        return _thread_count(env, "FACEKIT_THREADS")
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_applied_threads: int | None = None  # the count set_threads last applied (the CLI's --threads wins over all)


def current_threads() -> int:
    """The thread count in force: what :func:`set_threads` last applied, else :func:`default_threads`.

    ONNX Runtime sessions, the notebook runner's kernels and anything else that sizes its own
    thread pool read this, so ``--threads`` reaches them as it reaches torch and OpenCV.
    """
    return _applied_threads if _applied_threads is not None else default_threads()


def set_threads(n: int | None = None) -> int:
    """Set the intra-op thread count of torch and OpenCV (and, via :func:`current_threads`, ONNX Runtime).

    Args:
        n: thread count (``--threads``, a train config's ``threads``); ``None`` uses :func:`default_threads`.

    Returns:
        The thread count applied.

    Raises:
        ConfigError: ``n`` (or ``FACEKIT_THREADS``) is not a whole number from 1 to :data:`MAX_THREADS`.
    """
    global _applied_threads
    n = default_threads() if n is None else _thread_count(n, "threads (--threads)")
    _applied_threads = n
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:
        pass
    return n


def shared_path(*parts: str) -> Path:
    """Return a path inside ``../shared/`` (which may not exist; callers check)."""
    return SHARED_DIR.joinpath(*parts)


# --------------------------------------------------------------------------------------------
# values


def _range_text(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return "any value"


def check_int(value, what: str, lo: int | None = None, hi: int | None = None, optional: bool = False):
    """``value`` as an int within ``[lo, hi]`` (None: unbounded; ``optional`` also allows None).

    Raises:
        ConfigError: not an integer (bools, floats such as 2.5 and strings such as "30" are refused)
            or out of range; the message names ``what`` and the value.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{what}={value!r}: must be an integer {_range_text(lo, hi)}"
                          + (" or null" if optional else ""))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{what}={value!r}: must be an integer {_range_text(lo, hi)}"
                          + (" or null" if optional else ""))
    return int(value)


def check_float(value, what: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False, optional: bool = False):
    """``value`` as a finite float within ``lo``/``hi`` (``*_open``: that end excluded).

    Raises:
        ConfigError: not a number (strings such as "fast" or "2e-4" are refused: YAML reads
            ``2e-4`` without a dot as text), NaN, infinite or out of range.
    """
    if value is None and optional:
        return None
    rng = _range_text(lo, hi, lo_open, hi_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = ""
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.\d*)?[eE][-+]?\d+\s*", value):
            hint = " (YAML reads a number like 2e-4 as text: write 2.0e-4)"
        raise ConfigError(f"{what}={value!r}: must be a number {rng}{hint}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{what}={value!r}: must be a finite number {rng}")
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open else v > hi)):
        raise ConfigError(f"{what}={value!r}: must be {rng}")
    return v


def check_str(value, what: str, choices=None, optional: bool = False):
    """``value`` as a string without NUL characters (one of ``choices`` when given)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{what}={value!r}: must be a string" + (" or null" if optional else ""))
    if "\x00" in value:
        raise ConfigError(f"{what}={value!r}: contains a NUL character")
    if choices is not None and value not in choices:
        raise ConfigError(f"{what}={value!r}: valid: {', '.join(choices)}")
    return value


def check_name(name, what: str = "name") -> str:
    """A run or evaluation name: a single folder name of ``[A-Za-z0-9._-]``, not ``.`` or ``..``.

    Raises:
        ConfigError: anything else (path separators, NUL, spaces, ``..``, empty, over :data:`NAME_MAX`).
    """
    if (not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", "..")
            or len(name) > NAME_MAX):
        raise ConfigError(f"{what} {name!r}: use 1-{NAME_MAX} of the characters A-Z a-z 0-9 . _ - "
                          f"(a single folder name, not '.' or '..')")
    return name


def child_dir(parent: str | Path, name: str, what: str = "name") -> Path:
    """``parent/name`` for a :func:`check_name`-valid ``name``, checked to stay inside ``parent``."""
    check_name(name, what)
    parent = Path(parent)
    path = parent / name
    if Path(os.path.normpath(path.absolute())).parent != Path(os.path.normpath(parent.absolute())):
        raise ConfigError(f"{what} {name!r}: resolves outside {parent}")
    return path


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_writable(folder: str | Path, what: str, hint: str = "") -> Path:
    """Check, before any work starts, that files can be created in ``folder``.

    A read-only output or cache folder used to surface as a traceback at the first write, for
    the data cache only after the whole ingestion. The check writes and removes one empty
    temporary file; it creates nothing else: for a folder that does not exist yet, its nearest
    existing parent must be writable (the folder will be made there) and must be a folder.

    Args:
        folder: the folder files will be written to.
        what: what it holds, for the message ("output folder", "data cache" ...).
        hint: how to choose another one (", choose another with --output"), appended.

    Returns:
        ``folder`` as a Path.

    Raises:
        OutputError: naming the folder (or the parent in the way) and the reason.
    """
    import tempfile

    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(probe, f"cannot create the {what} {folder} there: {probe} is a file{hint}")
    try:
        fd, name = tempfile.mkstemp(prefix=".facekit-write-check-", dir=probe)
    except OSError as exc:  # PermissionError, a read-only file system (EROFS), no space left ...
        where = str(folder) if probe == folder else f"{folder} (cannot create it in {probe})"
        raise OutputError(where, f"{what} is not writable: {_os_reason(exc)}{hint}") from None
    os.close(fd)
    os.unlink(name)
    return folder


def check_device(spec, what: str = "device", available: bool = False) -> str:
    """A torch device string: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Args:
        spec: the device (a ``torch.device`` is taken as its string).
        what: the setting's name in the message.
        available: also check that the device exists on this machine (CUDA index, MPS).

    Raises:
        ConfigError: another format, or (``available``) a device this machine does not have.
    """
    text = spec if isinstance(spec, str) else str(spec) if type(spec).__name__ == "device" else None
    m = _DEVICE_RE.fullmatch(text.strip()) if text is not None else None
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ConfigError(f"{what}={spec!r}: expected cpu, cuda, cuda:N or mps")
    text = text.strip()
    if available and m.group(1) != "cpu":
        import torch

        if m.group(1) == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise ConfigError(f"{what}={text!r}: MPS is not available on this machine")
        else:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(m.group(2) or 0)
            if count == 0:
                raise ConfigError(f"{what}={text!r}: no CUDA device on this machine"
                                  + ("" if torch.version.cuda else " (this torch is a CPU-only build)")
                                  + "; use cpu")
            if index >= count:
                raise ConfigError(f"{what}={text!r}: this machine has {count} CUDA device(s): "
                                  f"{', '.join(f'cuda:{i}' for i in range(count))}")
    return text


# --------------------------------------------------------------------------------------------
# argparse types (a bad command-line value is a usage error: argparse prints it and exits 2)


def _arg_type(fn, name: str):
    fn.__name__ = name  # argparse names the type in its fallback message
    return fn


def int_arg(lo: int | None = None, hi: int | None = None):
    """argparse ``type=``: an integer within ``[lo, hi]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: must be an integer {_range_text(lo, hi)}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text!r}: must be an integer {_range_text(lo, hi)}")
        return value
    return _arg_type(parse, "integer")


def float_arg(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """argparse ``type=``: a finite number within ``lo``/``hi`` (``*_open``: that end excluded)."""
    def parse(text: str) -> float:
        try:
            return check_float(float(text), "", lo, hi, lo_open, hi_open)
        except (ValueError, ConfigError):
            raise argparse.ArgumentTypeError(
                f"{text!r}: must be a finite number {_range_text(lo, hi, lo_open, hi_open)}") from None
    return _arg_type(parse, "number")


def name_arg(text: str) -> str:
    """argparse ``type=``: a run name (see :func:`check_name`)."""
    try:
        return check_name(text, "name")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device_arg(text: str) -> str:
    """argparse ``type=``: a device string (format only; commands check it exists with :func:`check_device`)."""
    try:
        return check_device(text, "device")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_arg_type(name_arg, "name")
_arg_type(device_arg, "device")


# --------------------------------------------------------------------------------------------
# YAML


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _check_yaml_graph(root, what: str, max_nodes: int, max_depth: int) -> None:
    """Refuse a composed YAML node graph whose alias expansion exceeds ``max_nodes``, that nests
    deeper than ``max_depth`` or refers to itself."""
    import yaml

    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > max_nodes:
                raise ConfigError(f"{what}: YAML aliases expand to more than {max_nodes} values "
                                  f"(an alias bomb?); refusing to load it")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError(f"{what}: YAML alias refers to itself (a recursive structure); refusing to load it")
        if depth > max_depth:
            raise ConfigError(f"{what}: YAML nested more than {max_depth} levels deep; refusing to load it")
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def parse_yaml(text: str, what: str, max_bytes: int = YAML_MAX_BYTES, max_nodes: int = YAML_MAX_NODES):
    """``yaml.safe_load(text)`` with limits: at most ``max_bytes``, at most ``max_nodes`` values
    after alias expansion, at most :data:`YAML_MAX_DEPTH` levels of nesting.

    Args:
        text: the YAML text.
        what: the input's name in error messages (a path, ``--set 'steps=['``).

    Raises:
        ConfigError: invalid YAML or a limit exceeded; one line naming ``what`` and the reason.
    """
    import yaml

    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ConfigError(f"{what}: larger than the {max_bytes}-byte limit for YAML configs")
    # libyaml (CSafeLoader) when present: fast, and it bounds flow nesting itself; the pure-Python
    # scanner is quadratic on deep nesting (8,000 "[" take 7 s).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_graph(node, what, max_nodes, YAML_MAX_DEPTH)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: not valid YAML ({_one_line(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{what}: YAML nested too deeply; refusing to load it") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, max_bytes: int = YAML_MAX_BYTES, max_nodes: int = YAML_MAX_NODES):
    """Read a YAML file with :func:`parse_yaml`'s limits.

    Raises:
        ConfigError: missing, not a regular file, too large, not UTF-8, invalid YAML or a limit exceeded.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ConfigError(f"{path}: {size} bytes, larger than the {max_bytes}-byte limit for YAML configs")
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise ConfigError(f"{path}: larger than the {max_bytes}-byte limit for YAML configs")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_yaml(text, str(path), max_bytes, max_nodes)


# how ``restore`` treats faces above the chain's input side; "auto" = "own" for chains whose every
# stage was trained for any face size (``any_size``, the faithful generator), else "native": a
# network trained on 16 px faces alone does much worse at 32-48 px than shrinking to 16 first.
# (Here, not in facekit.restore, so ``facekit restore --help`` needs no torch.)
LARGE_FACES = ("auto", "own", "native", "keep")

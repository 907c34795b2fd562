"""Headless pipeline runner: execute the numbered notebooks with papermill, write HTML reports.

``python -m facekit run [--profile smoke|full] [--only 01,03] [--data SOURCE]`` runs
``notebooks/NN_*.ipynb`` in numeric order with the profile's parameters (``params/<profile>.yaml``)
into ``reports/executed/``, converts each executed notebook to one self-contained HTML file in
``reports/html/``, and writes ``reports/index.html`` + ``reports/run.json`` with every notebook's
status, duration, headline numbers and key figure (read back from the files the notebooks write
with :func:`facekit.report.write_headline` and :func:`facekit.report.save_figure`). The first failing notebook stops the run; its report is
still written with the error visible, later notebooks are marked ``skipped``.

A profile YAML maps notebook stems (``03_train_gan``; a bare number ``"03"`` also works) to
parameter dicts, plus a ``common`` section applied to every notebook first. Only parameters a
notebook declares in its ``parameters`` cell are injected: unknown notebook-specific parameters
are ignored with a warning; ``common`` ones are silently left out where not declared.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from facekit import progress, report, settings
from facekit.errors import ConfigError

NOTEBOOKS_DIR = settings.PROJECT_ROOT / "notebooks"
PARAMS_DIR = settings.PROJECT_ROOT / "params"
KERNEL_NAME = "python3"
_NOTEBOOK_RE = re.compile(r"^(\d+)_[\w.-]+\.ipynb$")

STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"


class RunnerWarning(UserWarning):
    """A profile or ``--data`` setting that the runner had to ignore."""


@dataclass
class NotebookResult:
    """Outcome of one notebook in a run.

    Paths are absolute; ``to_dict`` (via :class:`RunSummary`) makes them relative to the reports dir.
    """

    stem: str
    number: int
    path: Path
    status: str = STATUS_SKIPPED
    duration_s: float | None = None
    parameters: dict = field(default_factory=dict)  # injected into the notebook
    ignored_parameters: list[str] = field(default_factory=list)  # asked for, not declared
    source: str | None = None  # effective ``source`` parameter, when the notebook has one
    executed: Path | None = None
    html: Path | None = None
    figure: Path | None = None  # key figure saved with report.save_figure (index thumbnail)
    headline: dict = field(default_factory=dict)
    error: dict | None = None  # cell_index, exec_count, first_line, ename, evalue, message


@dataclass
class RunSummary:
    """What :func:`run_pipeline` did: run settings plus one :class:`NotebookResult` per notebook."""

    profile: str
    data_source: str | None
    notebooks_dir: Path
    reports_dir: Path
    started: str
    threads: int
    finished: str | None = None
    duration_s: float | None = None
    results: list[NotebookResult] = field(default_factory=list)

    @property
    def failed(self) -> NotebookResult | None:
        """The notebook that stopped the run, or None."""
        return next((r for r in self.results if r.status == STATUS_FAILED), None)

    @property
    def ok(self) -> bool:
        """True when every notebook ran without error."""
        return all(r.status == STATUS_OK for r in self.results)

    @property
    def exit_code(self) -> int:
        """Process exit code: 0 when every notebook succeeded, else 1."""
        return 0 if self.ok else 1

    @property
    def index_html(self) -> Path:
        return self.reports_dir / "index.html"

    def to_dict(self) -> dict:
        """JSON-ready summary (as written to ``run.json`` and rendered into ``index.html``)."""

        def rel(p: Path | None) -> str | None:
            if p is None:
                return None
            try:
                return Path(p).resolve().relative_to(self.reports_dir.resolve()).as_posix()
            except ValueError:
                return str(p)

        notebooks = []
        for r in self.results:
            d = asdict(r)
            d.update(path=str(r.path), executed=rel(r.executed), html=rel(r.html), figure=rel(r.figure))
            notebooks.append(d)
        failed = self.failed
        return {
            "status": "ok" if self.ok else "failed",
            "profile": self.profile,
            "data_source": self.data_source,
            "started": self.started,
            "finished": self.finished,
            "duration_s": self.duration_s,
            "threads": self.threads,
            "notebooks_dir": str(self.notebooks_dir),
            "reports_dir": str(self.reports_dir),
            "error": failed.error["message"] if failed and failed.error else None,
            "notebooks": notebooks,
        }


# --- discovery and selection --------------------------------------------------------------------


def discover_notebooks(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """List ``NN_name.ipynb`` files of a folder in numeric order (``2_x`` before ``10_y``).

    Raises:
        ConfigError: the folder does not exist or holds no numbered notebook.
    """
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise ConfigError(f"notebooks folder {notebooks_dir} does not exist")
    found = [p for p in notebooks_dir.iterdir() if p.is_file() and _NOTEBOOK_RE.match(p.name)]
    if not found:
        raise ConfigError(f"no numbered notebooks (NN_name.ipynb) in {notebooks_dir}")
    return sorted(found, key=lambda p: (int(_NOTEBOOK_RE.match(p.name).group(1)), p.name))


def _number(path: Path) -> int:
    return int(_NOTEBOOK_RE.match(path.name).group(1))


def select_notebooks(paths: list[Path], only: str | list | tuple | None) -> list[Path]:
    """Keep the notebooks named in ``only`` (numbers like ``"01,3"`` or stems), in run order.

    Args:
        paths: discovered notebooks (see :func:`discover_notebooks`).
        only: None for all; a comma-separated string or a list of numbers/stems.

    Raises:
        ConfigError: a selector matches no notebook (the message lists the available ones).
    """
    if only is None or only == "" or only == []:
        return list(paths)
    if isinstance(only, (str, int)):
        only = str(only).split(",")
    wanted: set[Path] = set()
    for token in (str(t).strip() for t in only):
        if not token:
            continue
        if token.isdigit():
            hits = [p for p in paths if _number(p) == int(token)]
        else:
            hits = [p for p in paths if p.stem == token or p.name == token]
        if not hits:
            choices = ", ".join(p.stem for p in paths)
            raise ConfigError(f"--only {token!r} matches no notebook; available: {choices}")
        wanted.update(hits)
    return [p for p in paths if p in wanted]


# --- profiles and parameters --------------------------------------------------------------------


def available_profiles(params_dir: str | Path = PARAMS_DIR) -> list[str]:
    """Names of the profiles in ``params/`` (``smoke``, ``full``, ...)."""
    params_dir = Path(params_dir)
    if not params_dir.is_dir():
        return []
    return sorted(p.stem for p in params_dir.glob("*.yaml"))


def load_profile(profile: str | Path, params_dir: str | Path = PARAMS_DIR) -> dict[str, dict]:
    """Read a parameter profile: ``{"common": {...}, "<stem or number>": {...}, ...}``.

    Args:
        profile: a profile name in ``params_dir`` (``"smoke"``) or a path to a YAML file.
        params_dir: folder of ``<name>.yaml`` profiles.

    Returns:
        Mapping of section name to parameter dict (``common`` always present). An empty file
        is an empty profile.

    Raises:
        ConfigError: unknown profile (lists the valid ones), invalid YAML or a wrong structure.
    """
    path = Path(profile)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        path = Path(params_dir) / f"{profile}.yaml"
    if not path.is_file():
        choices = ", ".join(available_profiles(params_dir)) or "none found"
        raise ConfigError(
            f"unknown profile {str(profile)!r}: no {path}; valid profiles: {choices} "
            "(or give the path of a .yaml file)"
        )
    data = settings.load_yaml(path) or {}  # size and alias limits
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of notebook -> parameters")
    sections: dict[str, dict] = {"common": {}}
    for key, params in data.items():
        params = {} if params is None else params
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise ConfigError(
                f"{path}: section {key!r} must map parameter names to values, got {params!r}"
            )
        sections[str(key)] = dict(params)
    return sections


def _section_for(sections: dict[str, dict], nb_path: Path) -> dict:
    """Notebook-specific parameters (keyed by stem or by number) of a profile."""
    out: dict = {}
    for key, params in sections.items():
        if key == "common":
            continue
        if key == nb_path.stem or (key.isdigit() and int(key) == _number(nb_path)):
            out.update(params)
    return out


def _unused_sections(sections: dict[str, dict], paths: list[Path]) -> list[str]:
    return [
        key for key in sections
        if key != "common"
        and not any(key == p.stem or (key.isdigit() and int(key) == _number(p)) for p in paths)
    ]


def declared_parameters(nb_path: str | Path) -> dict[str, str]:
    """Parameters declared in a notebook's ``parameters`` cell: ``{name: default source text}``.

    The cell is parsed with :mod:`ast` (every top-level assignment counts); papermill's own
    line parser drops lines such as ``scale = 4  # lq side = size / scale``, so it is only the
    fallback for a cell that is not plain Python (IPython magics).
    """
    import nbformat

    try:
        nb = nbformat.read(str(nb_path), as_version=4)
    except Exception as exc:  # nbformat raises several unrelated types for a bad file
        raise ConfigError(f"{nb_path}: not a valid notebook ({' '.join(str(exc).split())[:200]})") from None
    cell = next((c for c in nb.cells if c.cell_type == "code"
                 and "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return {}
    try:
        tree = ast.parse(cell.source)
    except SyntaxError:
        import papermill as pm

        return {name: info["default"] for name, info in pm.inspect_notebook(str(nb_path)).items()}
    declared: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        text = ast.get_source_segment(cell.source, value)
        for target in targets:
            names = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
            for name in names:
                if isinstance(name, ast.Name):
                    declared[name.id] = text
    return declared


def resolve_parameters(
    sections: dict[str, dict], nb_path: Path, declared: dict[str, str], data: str | None = None
) -> tuple[dict, list[str]]:
    """Work out which parameters to inject into one notebook.

    ``common`` first, then the notebook's own section, then ``data`` as ``source``. Only
    declared names are kept; a notebook-specific name the notebook does not declare is
    reported with a :class:`RunnerWarning`.

    Returns:
        ``(parameters to inject, names left out)``.
    """
    common = dict(sections.get("common", {}))
    own = _section_for(sections, nb_path)
    merged = {**common, **own}
    if data is not None and "source" in declared:
        merged["source"] = data
    keep = {k: v for k, v in merged.items() if k in declared}
    ignored = [k for k in merged if k not in declared]
    unknown = [k for k in own if k not in declared]
    if unknown:
        names = ", ".join(sorted(declared)) or "none"
        warnings.warn(
            f"{nb_path.stem}: ignoring profile parameter(s) {', '.join(unknown)} that the "
            f"notebook does not declare (its parameters: {names})",
            RunnerWarning,
            stacklevel=2,
        )
    return keep, ignored


def _literal(text: str | None):
    try:
        return ast.literal_eval(text) if text is not None else None
    except (ValueError, SyntaxError):
        return text


# --- execution ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _kernel_environment(reports_dir: Path, threads: int):
    """Environment the notebook kernels inherit (papermill starts them from ``os.environ``).

    ``FACEKIT_REPORTS_DIR`` sends headline files to this run's reports folder,
    ``FACEKIT_THREADS`` pins torch/OpenCV threads, ``FACEKIT_PLAIN_PROGRESS`` makes progress bars
    plain text (a widget bar is saved frozen at 0%; see :mod:`facekit.progress`), and
    ``PYTHONPATH`` makes this checkout's ``facekit`` importable whatever the kernel's install.
    Restored afterwards.
    """
    saved = dict(os.environ)
    try:
        os.environ["FACEKIT_REPORTS_DIR"] = str(reports_dir)
        os.environ["FACEKIT_THREADS"] = str(threads)
        os.environ[progress.PLAIN_ENV] = "1"
        root = str(settings.PROJECT_ROOT)
        path = os.environ.get("PYTHONPATH", "")
        if root not in path.split(os.pathsep):
            os.environ["PYTHONPATH"] = root + (os.pathsep + path if path else "")
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _kernel_config():
    """traitlets config for the kernels papermill starts: Curve-encrypted sockets where possible.

    ipykernel 7 prints "Kernel is running over TCP without encryption..." to its stderr, which is
    the terminal, right into the cell progress bar, when its sockets are plain TCP. With
    ``transport_encryption = "auto"`` the kernel manager provisions CurveZMQ keys when pyzmq has
    Curve support and the kernelspec declares it (ipykernel's own does), and otherwise starts the
    kernel as before. None where jupyter_client has no such setting (older than 8.9) or pyzmq no
    Curve: papermill's defaults apply.
    """
    try:
        import zmq
        from jupyter_client.manager import KernelManager
        from traitlets.config import Config
    except ImportError:
        return None
    if not KernelManager.class_traits().get("transport_encryption") or not zmq.has("curve"):
        return None
    return Config({"KernelManager": {"transport_encryption": "auto"}})


def _source_index(executed_nb, cell_index: int) -> int:
    """Map papermill's failing-cell index to the index of that cell in the source notebook.

    papermill counts cells of the notebook as executed (with its injected parameters cell);
    the saved notebook additionally has error banner cells, which did not exist then.
    """
    cells = [c for c in executed_nb.cells
             if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    injected = sum(1 for c in cells[:cell_index]
                   if "injected-parameters" in c.get("metadata", {}).get("tags", []))
    return cell_index - injected


def _describe_failure(stem: str, exc: BaseException, executed: Path) -> dict:
    """Turn an execution error into the dict stored in the summary (with a one-line message)."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        first_line = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "")
        cell_index = exc.cell_index
        # papermill counts its injected parameters cell; people count the notebook's own cells.
        with contextlib.suppress(Exception):
            import nbformat

            cell_index = _source_index(nbformat.read(executed, as_version=4), exc.cell_index)
        message = (
            f"notebook {stem} failed in cell In [{exc.exec_count}] (cell index {cell_index}): "
            f"{first_line.strip()!r}\n  {exc.ename}: {exc.evalue}"
        )
        return {
            "cell_index": cell_index, "exec_count": exc.exec_count, "first_line": first_line,
            "ename": exc.ename, "evalue": exc.evalue, "message": message,
        }
    ename = type(exc).__name__
    evalue = str(exc) or "(no message)"
    return {
        "cell_index": None, "exec_count": None, "first_line": None,
        "ename": ename, "evalue": evalue,
        "message": f"notebook {stem} failed: {ename}: {evalue}",
    }


# A tqdm line: "desc: 40%|####  | 4/10 [00:02<00:03, 2.0it/s]" or "desc: 12it [00:03, 3.9it/s]".
_PROGRESS_LINE = re.compile(r"\[\d+:\d\d(?::\d\d)?[<,\]]")


class KernelProgress:
    """Write-only stream for a kernel's stderr: echoes its progress-bar lines to the terminal.

    papermill hands it every stderr chunk of the running cell; each refresh of a (plain, see
    :mod:`facekit.progress`) tqdm bar becomes one line above papermill's cell bar, so a cell that
    runs for minutes shows where it is. Other stderr text (warnings) stays in the report only.
    """

    def __init__(self, stem: str, stream=None):
        """Args:
            stem: notebook stem, the prefix of each line.
            stream: where lines go; None is ``sys.stderr`` at write time.
        """
        self.stem, self.stream = stem, stream

    def write(self, text: str) -> int:
        """Echo the progress lines of ``text``; returns ``len(text)``."""
        from tqdm import tqdm

        for segment in re.split(r"[\r\n]+", text):
            segment = segment.strip()
            if segment and _PROGRESS_LINE.search(segment):
                tqdm.write(f"  {self.stem} | {segment}", file=self.stream or sys.stderr)
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_pipeline(
    profile: str | Path = "smoke",
    only: str | list | None = None,
    data: str | None = None,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    reports_dir: str | Path | None = None,
    progress: bool = True,
    params_dir: str | Path = PARAMS_DIR,
    threads: int | None = None,
    cell_timeout: float | None = None,
) -> RunSummary:
    """Execute the numbered notebooks headless and write their HTML reports and the index.

    Args:
        profile: profile name in ``params_dir`` (``"smoke"``, ``"full"``) or a YAML path.
        only: notebooks to run (``"01,03"``, ``["03_train_gan"]``); None runs all.
        data: face source that replaces the ``source`` parameter of every notebook declaring one.
        notebooks_dir: folder of ``NN_name.ipynb`` notebooks.
        reports_dir: output folder (``executed/``, ``html/``, ``metrics/``, ``index.html``,
            ``run.json``); None uses ``settings.REPORTS_DIR``.
        progress: print which notebook runs, papermill's per-cell progress bar and the
            notebook's own progress bars (stderr).
        params_dir: folder of profile YAML files.
        threads: ``FACEKIT_THREADS`` for the kernels; None keeps the environment's value or
            uses all cores.
        cell_timeout: seconds one cell may run before its notebook fails (a hung kernel or a
            stuck read ends the run with a report instead of never); None = no limit.

    Returns:
        The run summary; ``summary.exit_code`` is non-zero when a notebook failed.

    Raises:
        ConfigError: unknown profile, bad profile file, no notebooks, bad ``only`` selector.
        KeyboardInterrupt: re-raised after the index is written with the notebook marked failed.
    """
    if cell_timeout is not None:
        cell_timeout = settings.check_float(cell_timeout, "cell_timeout", 0.0, None, lo_open=True)
    notebooks_dir = Path(notebooks_dir).resolve()
    reports_dir = Path(reports_dir if reports_dir is not None else settings.REPORTS_DIR).resolve()
    sections = load_profile(profile, params_dir)
    all_paths = discover_notebooks(notebooks_dir)
    paths = select_notebooks(all_paths, only)
    executed_dir, html_dir = reports_dir / "executed", reports_dir / "html"
    for folder in (executed_dir, html_dir):
        settings.check_writable(folder, "reports folder", ", choose another with --reports-dir")
    import papermill as pm  # ~10 s on a busy machine: after the profile and notebooks are checked
    for key in _unused_sections(sections, all_paths):
        warnings.warn(
            f"profile {profile!s}: section {key!r} names no notebook in {notebooks_dir} "
            f"(notebooks: {', '.join(p.stem for p in all_paths)})",
            RunnerWarning,
            stacklevel=2,
        )
    if threads is None:
        threads = settings.current_threads()

    summary = RunSummary(
        profile=Path(profile).stem if str(profile).endswith((".yaml", ".yml")) else str(profile),
        data_source=data,
        notebooks_dir=notebooks_dir,
        reports_dir=reports_dir,
        started=_utc_now(),
        threads=threads,
    )
    # Plan every notebook before running any, so parameter warnings come first.
    has_source = False
    for nb_path in paths:
        declared = declared_parameters(nb_path)
        has_source = has_source or "source" in declared
        params, ignored = resolve_parameters(sections, nb_path, declared, data)
        result = NotebookResult(
            stem=nb_path.stem, number=_number(nb_path), path=nb_path,
            parameters=params, ignored_parameters=ignored,
        )
        if "source" in declared:
            result.source = str(params.get("source", _literal(declared["source"])))
        summary.results.append(result)
    if data is not None and not has_source:
        warnings.warn(f"--data {data!r}: no selected notebook has a 'source' parameter",
                      RunnerWarning, stacklevel=2)
    if summary.data_source is None:
        sources = list(dict.fromkeys(r.source for r in summary.results if r.source))
        summary.data_source = ", ".join(sources) or None

    executed_dir.mkdir(parents=True, exist_ok=True)
    html_dir.mkdir(parents=True, exist_ok=True)
    t_run = time.perf_counter()
    total = len(summary.results)
    interrupted: BaseException | None = None
    kernel_config = _kernel_config()
    engine_kwargs = {} if kernel_config is None else {"config": kernel_config}
    with _kernel_environment(reports_dir, threads):
        for i, result in enumerate(summary.results, 1):
            if summary.failed is not None or interrupted is not None:
                break  # the rest stay "skipped"
            stem = result.stem
            shown = ", ".join(f"{k}={v!r}" for k, v in result.parameters.items()) or "defaults"
            _log(progress, f"[{i}/{total}] {stem} ({shown})")
            result.executed = executed_dir / f"{stem}.ipynb"
            # Outputs of an earlier run must not pass for this run's (e.g. if the kernel fails).
            figure = report.figure_path(stem, reports_dir=reports_dir)
            for stale in (report.headline_path(stem, reports_dir=reports_dir), result.executed,
                          html_dir / f"{stem}.html", figure):
                stale.unlink(missing_ok=True)
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    # Names were checked against the parameters cell above; papermill's own
                    # line parser misses some (see declared_parameters) and would warn wrongly.
                    warnings.filterwarnings("ignore", message="Passed unknown parameter")
                    pm.execute_notebook(
                        str(result.path), str(result.executed),
                        parameters=result.parameters, kernel_name=KERNEL_NAME,
                        cwd=str(settings.PROJECT_ROOT), progress_bar=progress, log_output=False,
                        request_save_on_cell_execute=True, execution_timeout=cell_timeout,
                        stderr_file=KernelProgress(stem) if progress else None, **engine_kwargs,
                    )
                result.status = STATUS_OK
            except KeyboardInterrupt as exc:
                interrupted = exc
                result.status = STATUS_FAILED
                result.error = _describe_failure(stem, exc, result.executed)
                result.error["message"] = f"notebook {stem} interrupted (KeyboardInterrupt)"
            except Exception as exc:  # a failing notebook must not lose the reports
                result.status = STATUS_FAILED
                result.error = _describe_failure(stem, exc, result.executed)
                if type(exc).__name__ == "CellTimeoutError":  # nbclient's; its own text is a page long
                    result.error["message"] = (f"notebook {stem} failed: a cell ran past the {cell_timeout:g} s "
                                               "cell timeout (--cell-timeout)")
            result.duration_s = round(time.perf_counter() - t0, 2)
            if result.executed.exists():
                try:
                    result.html = report.notebook_to_html(result.executed, html_dir / f"{stem}.html")
                except Exception as exc:  # keep the run's index even if one conversion fails
                    _log(progress, f"  could not write the HTML report of {stem}: {exc}")
            result.headline = report.read_headline(stem, reports_dir=reports_dir)
            result.figure = figure if figure.is_file() else None
            if result.status == STATUS_OK:
                _log(progress, f"  {stem}: ok in {report.format_duration(result.duration_s)}")
            else:
                where = f"; report: {result.html}" if result.html else ""
                _log(progress, f"  {result.error['message']}{where}")

    summary.finished = _utc_now()
    summary.duration_s = round(time.perf_counter() - t_run, 2)
    index = report.write_index(summary.to_dict(), reports_dir)
    skipped = [r.stem for r in summary.results if r.status == STATUS_SKIPPED]
    if skipped:
        _log(progress, f"skipped after the failure: {', '.join(skipped)}")
    _log(progress, f"{'all notebooks ok' if summary.ok else 'run FAILED'}; index: {index}")
    if interrupted is not None:
        raise interrupted
    return summary


# --- command line -------------------------------------------------------------------------------


# --- notebook hygiene ---------------------------------------------------------------------------

MAX_CODE_CELL_LINES = 40


def check_notebook_hygiene(path: str | Path, max_lines: int = MAX_CODE_CELL_LINES) -> list[str]:
    """List what keeps a committed notebook from the project's notebook rules.

    Rules: stored without outputs or execution counts; exactly one code cell tagged
    ``parameters``; no code cell longer than ``max_lines`` lines; kernelspec ``python3``.

    Args:
        path: the ``.ipynb`` file.
        max_lines: longest allowed code cell, in lines.

    Returns:
        One message per problem, each naming the notebook and the cell; empty when clean.
    """
    import nbformat

    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several unrelated types for a bad file
        return [f"{path.name}: not a readable notebook ({exc})"]
    problems = []
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != KERNEL_NAME:
        problems.append(f"{path.name}: kernelspec is {kernel!r}, expected {KERNEL_NAME!r}")
    tagged = []
    for i, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags:
            tagged.append(i)
            if cell.cell_type != "code":
                problems.append(f"{path.name}: cell {i} is tagged 'parameters' but is {cell.cell_type}")
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"{path.name}: cell {i} has {len(cell.outputs)} output(s) committed")
        if cell.get("execution_count") is not None:
            problems.append(f"{path.name}: cell {i} has execution count {cell.execution_count}")
        n_lines = len(cell.source.splitlines())
        if n_lines > max_lines:
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            problems.append(
                f"{path.name}: cell {i} has {n_lines} lines (max {max_lines}): {first.strip()!r}"
            )
    if len(tagged) != 1:
        where = f" (cells {', '.join(map(str, tagged))})" if tagged else ""
        problems.append(
            f"{path.name}: needs exactly one cell tagged 'parameters', found {len(tagged)}{where}"
        )
    return problems

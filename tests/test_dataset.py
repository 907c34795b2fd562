"""Paired dataset: shapes, ranges, determinism per (seed, epoch, index), DataLoader workers."""

import cv2
import numpy as np
import pytest
import torch

from facekit import augment, degrade
from facekit.data import orl_dir
from facekit.dataset import PairedFaceDataset, make_eval_pairs
from facekit.errors import ConfigError, DataSourceError


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Eight real faces (ORL, centre square, 32 px) as ``(8,32,32,3) uint8``."""
    out = []
    for person in range(1, 9):
        g = cv2.imread(str(orl_dir() / f"s{person}" / "1.pgm"), cv2.IMREAD_GRAYSCALE)
        top = (g.shape[0] - g.shape[1]) // 2
        g = cv2.resize(g[top:top + g.shape[1]], (32, 32), interpolation=cv2.INTER_AREA)
        out.append(np.repeat(g[:, :, None], 3, axis=2))
    return np.stack(out)


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_items_have_shapes_ranges_and_labels(faces):
    ds = PairedFaceDataset(faces, preset="cctv-heavy", scale=4, seed=0)
    assert len(ds) == 8
    item = ds[3]
    assert set(item) == {"lq", "gt", "condition", "index", "roll", "yaw", "pitch", "flip", "scale", "gray"}
    assert item["lq"].shape == (3, 8, 8) and item["gt"].shape == (3, 32, 32)
    assert item["lq"].dtype == torch.float32 and item["gt"].dtype == torch.float32
    for key in ("lq", "gt"):
        assert 0.0 <= item[key].min() and item[key].max() <= 1.0
    assert item["condition"] in augment.CONDITIONS and item["index"] == 3 and item["scale"] == 4
    assert -15 <= item["roll"] <= 15 and -30 <= item["yaw"] <= 30 and -15 <= item["pitch"] <= 15


def test_deterministic_per_seed_epoch_index(faces):
    a = PairedFaceDataset(faces, seed=7)
    b = PairedFaceDataset(faces, seed=7)
    assert _same(a[5], b[5])
    # order of access does not matter: index 5 drawn after others is the same sample
    for i in (0, 1, 2):
        b[i]
    assert _same(a[5], b[5])
    first = a[5]
    a.set_epoch(1)
    assert not torch.equal(a[5]["lq"], first["lq"])
    a.set_epoch(0)
    assert _same(a[5], first)
    c = PairedFaceDataset(faces, seed=8)
    assert not torch.equal(c[5]["lq"], first["lq"])
    # the documented recipe: the generator of sample i is default_rng([seed, epoch, i])
    rng = np.random.default_rng([7, 0, 5])
    condition = augment.CONDITIONS[int(rng.integers(5))]
    lq, gt, params = a.pipeline(faces[5], rng, condition=condition)
    assert condition == first["condition"] and params["ops"][0]["op"] == "pose"
    assert torch.equal(torch.from_numpy(lq.transpose(2, 0, 1)), first["lq"])


def test_gt_is_clean_and_aligned_and_lq_replays(faces):
    ds = PairedFaceDataset(faces, preset="cctv-light", scale=2, conditions="warm", angles=False, seed=1)
    for i in range(4):
        item = ds[i]
        assert torch.equal(item["gt"], torch.from_numpy(faces[i].transpose(2, 0, 1).astype(np.float32) / 255.0))
        assert item["condition"] == "warm" and item["yaw"] == 0.0 and item["lq"].shape == (3, 16, 16)
        lq, gt, params = ds.sample(i)
        assert np.array_equal(degrade.replay(params, gt), lq)
        # warm light lands on lq only
        lq_t = item["lq"].mean(dim=(1, 2))
        assert lq_t[0] / lq_t[2] > 1.2
    posed = PairedFaceDataset(faces, preset="cctv-light", scale=2, conditions="medium",
                              angles={"yaw": [20, 25], "roll": 0, "pitch": 0, "flip": False})
    lq, gt, params = posed.sample(0)
    assert np.array_equal(degrade.replay_gt(params, faces[0]), gt)  # gt carries the same pose as lq
    assert 20 <= posed[0]["yaw"] <= 25


def test_conditions_none_draws_all_five_and_fixed_condition_holds(faces):
    ds = PairedFaceDataset(faces, conditions=None, angles=False, seed=3)
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        seen |= {ds[i]["condition"] for i in range(len(ds))}
    assert seen == set(augment.CONDITIONS)
    fixed = PairedFaceDataset(faces, conditions="low", seed=3)
    assert {fixed[i]["condition"] for i in range(4)} == {"low"}


def test_dataloader_with_two_workers_matches_direct_access(faces):
    ds = PairedFaceDataset(faces, preset="cctv-heavy", scale=4, seed=2)
    ds.set_epoch(3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False,
                                         worker_init_fn=PairedFaceDataset.worker_init_fn)
    batches = list(loader)
    assert len(batches) == 2
    assert batches[0]["lq"].shape == (4, 3, 8, 8) and batches[0]["gt"].shape == (4, 3, 32, 32)
    assert torch.equal(batches[1]["lq"][2], ds[6]["lq"])
    assert list(batches[1]["condition"]) == [ds[i]["condition"] for i in range(4, 8)]


def test_make_eval_pairs_is_fixed_and_unposed(faces):
    lq, gt, = make_eval_pairs(faces, preset="cctv-heavy", scale=4, condition="cold", seed=0)
    assert lq.shape == (8, 3, 8, 8) and gt.shape == (8, 3, 32, 32) and lq.dtype == torch.float32
    assert torch.equal(gt, torch.from_numpy(faces.transpose(0, 3, 1, 2).astype(np.float32) / 255.0))
    lq2, _ = make_eval_pairs(faces, preset="cctv-heavy", scale=4, condition="cold", seed=0)
    assert torch.equal(lq, lq2)
    lq_bright, _ = make_eval_pairs(faces, preset="cctv-heavy", scale=4, condition="bright", seed=0)
    assert lq_bright.mean() > lq.mean()


def test_bad_arguments_raise_clear_errors(faces):
    with pytest.raises(DataSourceError, match=r"\(N,S,S,3\) uint8"):
        PairedFaceDataset(faces.astype(np.float32))
    with pytest.raises(ConfigError, match="dividing the face size 32"):
        PairedFaceDataset(faces, scale=3)
    with pytest.raises(ConfigError, match="unknown lighting condition 'sunset'"):
        PairedFaceDataset(faces, conditions=("warm", "sunset"))
    with pytest.raises(ConfigError, match="valid presets"):
        PairedFaceDataset(faces, preset="cctv-extreme")
    with pytest.raises(ConfigError, match="one lighting condition"):
        make_eval_pairs(faces, condition=None)
    with pytest.raises(IndexError):
        PairedFaceDataset(faces)[8]


def test_gray_prob_makes_monochrome_samples_and_leaves_other_draws_alone(faces):
    rng = np.random.default_rng(0)
    tint = rng.uniform(0.5, 1.0, (len(faces), 1, 1, 3))
    colour = (faces * tint).astype(np.uint8)  # distinct channels, so grey is detectable
    plain = PairedFaceDataset(colour, preset="cctv-light", scale=2, angles=False, seed=4)
    all_gray = PairedFaceDataset(colour, preset="cctv-light", scale=2, angles=False, seed=4, gray_prob=1.0)
    half = PairedFaceDataset(colour, preset="cctv-light", scale=2, angles=False, seed=4, gray_prob=0.5)
    flags = []
    for i in range(len(colour)):
        g = all_gray[i]
        assert g["gray"] and torch.equal(g["gt"][0], g["gt"][1]) and torch.equal(g["gt"][1], g["gt"][2])
        assert not plain[i]["gray"] and not torch.equal(plain[i]["gt"][0], plain[i]["gt"][2])
        assert g["condition"] == plain[i]["condition"]  # the condition draw is not shifted
        h = half[i]
        flags.append(h["gray"])
        assert _same(h, g if h["gray"] else plain[i])
    assert 0 < sum(flags) < len(flags)
    with pytest.raises(ConfigError, match="gray_prob"):
        PairedFaceDataset(colour, gray_prob=1.5)

"""Weights files are checked before use: released stage files against the sha256 their chain.yaml
records (in sub-folders too), pretrained recognition weights for truncation, corruption and NaN."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from facekit import restore
from facekit.chain import Stage, save_stage
from facekit.checkpoint import file_sha256, recorded_sha256
from facekit.errors import CheckpointError
from facekit.archs.rrdbnet import CompactRRDBNet
from facekit.archs.unet import UNetGenerator

RECON_KW = {"scale": 1, "base": 4, "depth": 1}
UP_KW = {"num_feat": 4, "num_block": 1, "num_grow_ch": 4, "scale": 4}


def _flip_one_weight_byte(path: Path, tensor: torch.Tensor) -> int:
    """Change one byte inside ``tensor``'s stored bytes in ``path`` (a torch zip); returns the offset."""
    raw = bytearray(path.read_bytes())
    at = raw.find(tensor.detach().cpu().contiguous().numpy().tobytes())
    assert at >= 0, "tensor bytes not found in the file"
    at += 5  # inside the tensor, a mantissa byte: still a finite float, a silently different weight
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    return at


@pytest.fixture
def release(tmp_path):
    """A released chain folder whose upscale stage lives in a sub-folder, both hashed in chain.yaml."""
    torch.manual_seed(0)
    recon, up = UNetGenerator(**RECON_KW).eval(), CompactRRDBNet(**UP_KW).eval()
    folder = tmp_path / "rel"
    save_stage(folder / "reconstruct.pt", "reconstruct", recon, RECON_KW, arch="unet", in_size=16)
    save_stage(folder / "weights" / "upscale.pt", "upscale", up, UP_KW, arch="rrdbnet_compact", in_size=16)
    digests = {n: file_sha256(folder / n) for n in ("reconstruct.pt", "weights/upscale.pt")}
    text = ("size: 16\nstages:\n  reconstruct: reconstruct.pt\n  upscale: weights/upscale.pt\nsha256:\n"
            + "".join(f"  {n}: {d}\n" for n, d in digests.items()))
    (folder / "chain.yaml").write_text(text)
    return folder, up, text


def test_stage_in_a_sub_folder_is_checked_and_a_changed_byte_names_the_file(release):
    folder, up, _ = release
    stage = folder / "weights" / "upscale.pt"
    assert recorded_sha256(stage) == file_sha256(stage)
    chain, _ = restore.build_chain(model_dir=folder, backend="torch")
    assert chain.names == ["reconstruct", "upscale"]
    _flip_one_weight_byte(stage, up.conv_first.weight)
    # the byte is inside a weight: torch itself reads the file happily, with one changed weight
    state = torch.load(stage, weights_only=True)["state_dict"]
    assert not torch.equal(state["conv_first.weight"], up.conv_first.weight)
    with pytest.raises(CheckpointError) as err:
        restore.build_chain(model_dir=folder, backend="torch")
    msg = str(err.value)
    assert msg.startswith(f"{stage}: weights file changed or corrupted (sha256 ")
    assert f"{folder / 'chain.yaml'} records {file_sha256(stage)[:16]}" not in msg
    assert f"{folder / 'chain.yaml'} records " in msg
    with pytest.raises(CheckpointError, match="weights file changed or corrupted"):
        Stage.from_checkpoint("upscale", stage)  # loaded on its own, by path: checked the same


def test_every_listed_stage_needs_a_hash_once_the_chain_records_any(release):
    folder, _, text = release
    (folder / "chain.yaml").write_text(text.replace(f"  weights/upscale.pt: {file_sha256(folder / 'weights/upscale.pt')}\n", ""))
    with pytest.raises(CheckpointError, match=r"stage file weights/upscale.pt has no sha256 entry"):
        restore.read_chain_spec(folder)
    with pytest.raises(CheckpointError, match=r"stage file weights/upscale.pt has no sha256 entry"):
        Stage.from_checkpoint("reconstruct", folder / "reconstruct.pt")  # the release as a whole is refused


def test_stage_outside_the_chain_folder_cannot_dodge_the_hash(release, tmp_path):
    folder, _, text = release
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes((folder / "weights" / "upscale.pt").read_bytes())
    (folder / "chain.yaml").write_text(text.replace("upscale: weights/upscale.pt", "upscale: ../elsewhere.pt"))
    with pytest.raises(CheckpointError, match=r"stage file ../elsewhere.pt lies outside the chain folder"):
        restore.read_chain_spec(folder)


def test_hash_keys_are_paths_relative_to_the_chain_folder(release):
    folder, _, text = release
    digest = file_sha256(folder / "weights" / "upscale.pt")
    # "./weights/upscale.pt" and "weights//upscale.pt" are the same file
    (folder / "chain.yaml").write_text(text.replace("  weights/upscale.pt:", "  ./weights//upscale.pt:"))
    assert recorded_sha256(folder / "weights" / "upscale.pt") == digest
    # a same-named file in another sub-folder is not that stage: the plain name does not match it
    (folder / "other").mkdir()
    (folder / "other" / "upscale.pt").write_bytes(b"not listed")
    assert recorded_sha256(folder / "other" / "upscale.pt") is None
    (folder / "chain.yaml").write_text(text + "  /abs/x.pt: " + "0" * 64 + "\n")
    with pytest.raises(CheckpointError, match=r"sha256 entry '/abs/x.pt' must be a file inside the chain folder"):
        recorded_sha256(folder / "reconstruct.pt")

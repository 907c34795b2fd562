"""Perceptual distance: shift-tolerant LPIPS (ST-LPIPS, Ghildyal & Liu, ECCV 2022).

The network comes from the PyPI package ``stlpips-pytorch`` (0.0.2), which ships the complete
shift-tolerant AlexNet and VGG16 (backbone *and* calibration layers) as
``stlpips_pytorch/weights/vST0.0/{alex,vgg}_shift_tolerant.pth``. The shift-tolerant backbone is
built layer by layer in ``invariant_networks.py`` (never through torchvision's ``pretrained=True``
constructors), and facekit loads the shipped file itself with ``strict=True``, so every weight is
checked to come from the package and nothing is downloaded.

Why shift-tolerant: restored faces are often a pixel or two off the ground truth (GAN upsampling,
pose warps); plain LPIPS and PSNR punish that imperceptible shift, ST-LPIPS does not.

The package imports two things it never uses on this path at import time: ``torchsummary`` (only
in a debugging print helper) and ``IPython.embed`` (a debugging leftover). :func:`import_stlpips`
stands in an empty module for whichever of the two is missing, only while the package is being
imported, so facekit needs neither.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path

import torch

from facekit.errors import FacekitError
from facekit.pretrained import load_state_dict_file

NETS = ("alex", "vgg")
PACKAGE = "stlpips_pytorch"
PIP_HINT = "pip install stlpips-pytorch==0.0.2"


class PerceptualUnavailable(FacekitError):
    """ST-LPIPS cannot be used (package or shipped weights missing); the message says how to fix it."""


@contextlib.contextmanager
def _stub_missing(names: dict[str, dict]):
    """Temporarily register empty modules for the names in ``names`` that are not installed.

    Args:
        names: module name -> attributes the stub must have (the package does ``from X import y``).
    """
    added = []
    for name, attrs in names.items():
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        added.append(name)
    try:
        yield added
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _unused(*_args, **_kwargs):
    raise FacekitError("stlpips debugging helper called; facekit stubs it because it is never needed")


def import_stlpips():
    """Import and return ``stlpips_pytorch.stlpips`` (the module with the ``LPIPS`` class).

    Raises:
        PerceptualUnavailable: the package is not installed (with the pip command).
    """
    if importlib.util.find_spec(PACKAGE) is None:
        raise PerceptualUnavailable(f"ST-LPIPS needs the PyPI package 'stlpips-pytorch'; run: {PIP_HINT}")
    with _stub_missing({"torchsummary": {"summary": _unused}, "IPython": {"embed": _unused}}):
        return importlib.import_module(f"{PACKAGE}.stlpips")


def weights_path(net: str = "alex") -> Path:
    """Path of the shipped shift-tolerant weights for ``net`` (located without importing the package).

    Raises:
        PerceptualUnavailable: unknown net (lists the valid ones), package or file missing.
    """
    if net not in NETS:
        raise PerceptualUnavailable(f"unknown ST-LPIPS network {net!r}; valid: {', '.join(NETS)}")
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PerceptualUnavailable(f"ST-LPIPS needs the PyPI package 'stlpips-pytorch'; run: {PIP_HINT}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
        if path.is_file():
            return path
    raise PerceptualUnavailable(f"stlpips-pytorch is installed but {net}_shift_tolerant.pth is missing from its "
                                f"weights/vST0.0 folder; reinstall: {PIP_HINT}")


def is_available(net: str = "alex") -> bool:
    """True when ST-LPIPS with ``net`` can be built from installed files."""
    try:
        weights_path(net)
    except PerceptualUnavailable:
        return False
    return True


class STLPIPS(torch.nn.Module):
    """ST-LPIPS distance between two image batches (lower = more similar; 0 for identical images).

    Args:
        net: ``"alex"`` (default, 2.5 M parameters, fast) or ``"vgg"``.
        device: where the network runs.

    Call ``metric(out, gt)`` with ``(N,3,H,W)`` float32 in [0,1] (H, W >= 32) -> ``(N,)`` float32.
    """

    def __init__(self, net: str = "alex", device: str | torch.device = "cpu"):
        super().__init__()
        path = weights_path(net)
        stlpips = import_stlpips()
        # pretrained=False: build the architecture only; the shipped file is loaded below with
        # strict=True (the package's own loader uses strict=False, which would hide a missing layer).
        with contextlib.redirect_stdout(None):
            model = stlpips.LPIPS(pretrained=False, net=net, variant="shift_tolerant", verbose=False)
        # truncated/corrupt or NaN weights: one line naming the file (facekit.pretrained)
        state = load_state_dict_file(path, f"ST-LPIPS {net}", f"; reinstall: {PIP_HINT}")
        # The package registers each calibration layer twice (``lin0`` and ``lins.0`` are the same
        # module); the file holds the ``linK`` names only, so the aliases are filled in from them.
        for key in list(state):
            m = re.fullmatch(r"lin(\d+)\.(.+)", key)
            if m:
                state.setdefault(f"lins.{m.group(1)}.{m.group(2)}", state[key])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise PerceptualUnavailable(f"{path}: weights do not match the ST-LPIPS {net} network: {exc}") from exc
        model.eval().requires_grad_(False)
        self.net_name = net
        self.model = model.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if out.shape != gt.shape or out.ndim != 4 or out.shape[1] != 3:
            raise ValueError(f"ST-LPIPS needs two (N,3,H,W) batches of the same shape, got "
                             f"{tuple(out.shape)} and {tuple(gt.shape)}")
        if min(out.shape[2:]) < 32:
            raise ValueError(f"ST-LPIPS needs images of at least 32x32 pixels, got {tuple(out.shape[2:])}")
        dev = self.device
        with torch.inference_mode():
            d = self.model(out.to(dev, torch.float32), gt.to(dev, torch.float32), normalize=True)
        return d.reshape(-1).float().cpu()


_CACHE: dict[tuple[str, str], STLPIPS] = {}


def stlpips(out: torch.Tensor, gt: torch.Tensor, net: str = "alex", device: str | torch.device = "cpu") -> torch.Tensor:
    """Per-image ST-LPIPS distance (the network is built once per net/device and cached).

    Args:
        out, gt: ``(N,3,H,W)`` float32 in [0,1].
        net: ``"alex"`` or ``"vgg"``.
        device: where the network runs.

    Returns:
        ``(N,)`` float32 tensor on the CPU; 0 for identical images, larger = more different.

    Raises:
        PerceptualUnavailable: package not installed.
    """
    key = (net, str(torch.device(device)))
    metric = _CACHE.get(key)
    if metric is None:
        metric = _CACHE[key] = STLPIPS(net, device)
    return metric(out, gt)

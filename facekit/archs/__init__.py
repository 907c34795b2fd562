"""Model registry: generators and discriminators by name.

``ARCHS`` is a literal dict so the valid names are visible at a glance; register a new
architecture with one line here.
"""

from __future__ import annotations

from torch import nn

from facekit.archs.deblurganv2 import FPNMobileNetGenerator
from facekit.archs.discriminator import PatchDiscriminator
from facekit.archs.faithful import FaithfulGenerator
from facekit.archs.rrdbnet import CompactRRDBNet, RRDBNet, SRVGGNetCompact
from facekit.archs.unet import LRUNetGenerator, UNetGenerator
from facekit.errors import ConfigError

ARCHS: dict[str, type[nn.Module]] = {
    "unet": UNetGenerator,
    "unet_lr": LRUNetGenerator,
    "faithful": FaithfulGenerator,  # bicubic base + high-passed luma/chroma residual (issue 24)
    "patchgan": PatchDiscriminator,
    "deblurganv2": FPNMobileNetGenerator,  # DeblurGAN-v2 FPN on MobileNetV2 (deblur stage)
    "rrdbnet": RRDBNet,  # ESRGAN / Real-ESRGAN x4plus layout
    "rrdbnet_compact": CompactRRDBNet,
    "srvgg_compact": SRVGGNetCompact,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture.

    Args:
        name: a key of :data:`ARCHS`.
        **kwargs: constructor arguments.

    Raises:
        ConfigError: unknown name, or arguments the class does not accept.
    """
    cls = ARCHS.get(name)
    if cls is None:
        raise ConfigError(f"unknown architecture {name!r}; valid: {', '.join(sorted(ARCHS))}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"architecture {name!r} does not accept {kwargs}: {exc}") from None


def arch_name(model: nn.Module) -> str:
    """Registry name of ``model``'s class (unwrapping DDP/compile wrappers)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    for name, cls in ARCHS.items():
        if type(model) is cls:
            return name
    raise ConfigError(f"{type(model).__name__} is not a registered architecture; valid: {', '.join(sorted(ARCHS))}")

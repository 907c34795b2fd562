"""The learned stage of track fusion: a multi-frame innovation network (issue 22).

:class:`FusionNet` does not restore a face by itself. It adds, to the single-frame restoration of a
track's reference crop, what the other crops know that the reference does not. Its evidence comes
in two groups of channels (see :func:`facekit.fusion.fusion_inputs`):

* **innovations**, which are exactly zero when every crop equals the reference: the classical
  multi-frame fusion minus the classical fusion of the reference alone, the mean of the aligned
  upsampled crops minus the reference's upsample, and the crops' per-pixel spread;
* **context**, the single-frame restoration and what the restorer changed, which may only
  *modulate* the innovations (multiplicative gates).

Every layer on the innovation path is bias-free and every activation maps 0 to 0, so zero
innovation gives an exactly zero correction: ``k`` copies of one crop fuse to the single-frame
restoration, never to a spurious gain. The correction is one luma channel, added equally to R, G
and B, so colour comes from the restorer (and from the input) and a grey face stays grey.
The network runs at half resolution (pixel unshuffle by 2) to stay inside the per-track budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INNOVATION_CHANNELS = 9
CONTEXT_CHANNELS = 6


class _GatedBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.gate = nn.Conv2d(ch, ch, 1)
        self.conv1 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        g = 1.0 + torch.tanh(self.gate(c))  # in (0, 2): scales innovation features, never creates them
        t = F.leaky_relu(self.conv1(h * g), 0.2)
        return h + self.conv2(t)


class FusionNet(nn.Module):
    """Gated innovation network: ``(innovations, context) -> luma correction``.

    Args:
        ch: feature channels (at half resolution).
        blocks: gated residual blocks.
        context_ch, innovation_ch: input channel counts (defaults match
            :func:`facekit.fusion.fusion_inputs`).

    Shapes:
        ``forward(innov (N,9,S,S), context (N,6,S,S)) -> (N,1,S,S)`` float32 correction in
        [0,1] units; ``S`` even.
    """

    def __init__(self, ch: int = 48, blocks: int = 4, context_ch: int = CONTEXT_CHANNELS,
                 innovation_ch: int = INNOVATION_CHANNELS):
        super().__init__()
        self.ch, self.blocks = int(ch), int(blocks)
        self.inn = nn.Conv2d(innovation_ch * 4, ch, 3, 1, 1, bias=False)
        self.ctx = nn.Sequential(nn.Conv2d(context_ch * 4, ch, 3, 1, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2))
        self.body = nn.ModuleList(_GatedBlock(ch) for _ in range(blocks))
        self.out = nn.Conv2d(ch, 4, 3, 1, 1, bias=False)
        nn.init.zeros_(self.out.weight)  # starts as the single-frame restoration

    def forward(self, innov: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.inn(F.pixel_unshuffle(innov, 2))
        c = self.ctx(F.pixel_unshuffle(context, 2))
        for block in self.body:
            h = block(h, c)
        return F.pixel_shuffle(self.out(h), 2)

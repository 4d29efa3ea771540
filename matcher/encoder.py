"""The matcher's encoder: EfficientNet-B0 on a 1-channel log-CQT, head -> nu in [-1, 1]^K.

EfficientNet-B0 (Tan & Le, 2019) written here because torchvision's wheels do
not load with the CPU torch this project pins: a 3x3 stem, seven stages of
MBConv blocks (depthwise conv, squeeze-and-excitation, linear bottleneck,
stochastic depth), a 1x1 conv to 1280 channels, global average pooling. Tympan's
input has one channel (the log-CQT image ``[B, 1, bins, frames]``) and the
head is linear -> BatchNorm1d -> tanh, giving normalized parameters ``nu``.
With ``pitch_known=True`` the head predicts the 4 parameters other than f0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["EfficientNetB0", "Encoder"]

# (expansion, kernel, stride, out channels, repeats) of B0's seven stages
B0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01)]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(s))))


class _MBConv(nn.Module):
    """Inverted residual block with squeeze-and-excitation (ratio 0.25 of the input)."""

    def __init__(self, c_in: int, c_out: int, expand: int, k: int, stride: int,
                 drop: float) -> None:
        super().__init__()
        mid = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(c_in, mid, 1))
        layers += [_conv_bn(mid, mid, k, stride, groups=mid),
                   _SqueezeExcite(mid, max(1, c_in // 4)),
                   _conv_bn(mid, c_out, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if not self.residual:
            return y
        if self.training and self.drop > 0:  # stochastic depth, per sample
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) >= self.drop
            y = y * keep / (1.0 - self.drop)
        return x + y


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 feature extractor: ``[B, in_channels, H, W] -> [B, 1280]``."""

    def __init__(self, in_channels: int = 1, drop_connect: float = 0.2) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn(in_channels, 32, 3, 2)]
        c_in, total = 32, sum(r for *_, r in B0_STAGES)
        i = 0
        for expand, k, stride, c_out, repeats in B0_STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(c_in, c_out, expand, k, stride if r == 0 else 1,
                                      drop_connect * i / total))
                c_in, i = c_out, i + 1
        blocks.append(_conv_bn(c_in, 1280, 1))
        self.features = nn.Sequential(*blocks)
        for m in self.modules():                       # the reference initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))


class Encoder(nn.Module):
    """Log-CQT image -> normalized parameters ``nu`` in [-1, 1]^K.

    Parameters
    ----------
    pitch_known : bool
        Predict the 4 parameters other than f0 (``K = 4``) instead of all 5.
    dropout : float
        Dropout before the head.

    Input ``[B, 1, bins, frames]`` (or ``[B, bins, frames]``); output ``[B, K]``.
    """

    def __init__(self, pitch_known: bool = False, dropout: float = 0.2) -> None:
        super().__init__()
        self.pitch_known = pitch_known
        self.n_out = 4 if pitch_known else 5
        self.backbone = EfficientNetB0(in_channels=1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, self.n_out),
                                  nn.BatchNorm1d(self.n_out), nn.Tanh())
        bound = 1.0 / math.sqrt(1280)
        nn.init.uniform_(self.head[1].weight, -bound, bound)
        nn.init.zeros_(self.head[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"encoder input has shape {tuple(x.shape)}: expected "
                             f"[B, 1, bins, frames] or [B, bins, frames]")
        return self.head(self.backbone(x))

"""PyTorch MobileFaceNet (insightface ``arcface_torch`` ``mbf``), the source network of the ONNX parity tests.

Written from the architecture description (not copied from insightface):
``layers`` = [ConvBlock 3x3/2 (64s), ConvBlock 3x3 grouped (64 groups) or a
residual stage, bottleneck/2, residual stage, bottleneck/2, residual stage,
bottleneck/2, residual stage], ``conv_sep`` (ConvBlock 1x1, 512) and
``features`` (GDC: depthwise 7x7 conv + BN, flatten, Linear(512, 512, no
bias), BatchNorm1d). A ConvBlock is conv (no bias) + BN + PReLU, a
LinearBlock conv + BN, a bottleneck (insightface ``DepthWise``) 1x1
ConvBlock -> depthwise 3x3 ConvBlock -> 1x1 LinearBlock, plus the input when
residual. Module names follow insightface's, so ``state_dict()`` keys are
the ones its checkpoints use. Widths and block counts are written out here,
independently of the Flax model's table.
Input: [B, 3, 112, 112] RGB already normalised as (x - 127.5) / 127.5.
"""

from __future__ import annotations

import torch
from torch import nn

FINAL_SIZE = 7


def _conv(cin: int, cout: int, k: int, stride: int, groups: int, pad: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=False)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(_conv(cin, cout, k, stride, groups, k // 2), nn.BatchNorm2d(cout), nn.PReLU(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, groups: int = 1, pad: int = 0):
        super().__init__()
        self.layers = nn.Sequential(_conv(cin, cout, k, 1, groups, pad), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    def __init__(self, cin: int, cout: int, inner: int, stride: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(ConvBlock(cin, inner), ConvBlock(inner, inner, 3, stride, groups=inner),
                                    LinearBlock(inner, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, blocks: list[DepthWise]):
        super().__init__()
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)  # as insightface: a Reshape (with a Shape subgraph) in the ONNX export


class GDC(nn.Module):
    def __init__(self, width: int, features: int):
        super().__init__()
        self.layers = nn.Sequential(LinearBlock(width, width, FINAL_SIZE, groups=width), Flatten(),
                                    nn.Linear(width, features, bias=False), nn.BatchNorm1d(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """``blocks`` per stage and width ``scale``: (1, 4, 6, 2), 2 is ``mbf``; (2, 8, 12, 4), 4 is ``mbf_large``."""

    def __init__(self, blocks: tuple[int, ...] = (1, 4, 6, 2), scale: int = 2, features: int = 512):
        super().__init__()
        c1, c2 = 64 * scale, 128 * scale

        def res(c: int, n: int, inner: int) -> Residual:
            return Residual([DepthWise(c, c, inner, 1, True) for _ in range(n)])

        self.layers = nn.ModuleList([
            ConvBlock(3, c1, 3, 2),
            ConvBlock(c1, c1, 3, 1, groups=64) if blocks[0] == 1 else res(c1, blocks[0], 128),
            DepthWise(c1, c1, 128, 2, False),
            res(c1, blocks[1], 128),
            DepthWise(c1, c2, 256, 2, False),
            res(c2, blocks[2], 256),
            DepthWise(c2, c2, 512, 2, False),
            res(c2, blocks[3], 256),
        ])
        self.conv_sep = ConvBlock(c2, 512)
        self.features = GDC(512, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.layers:
            x = m(x)
        return self.features(self.conv_sep(x))

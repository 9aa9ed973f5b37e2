"""PyTorch IResNet (insightface ``iresnet``), the source runtime the parity tests compare against.

Written from the architecture description (not copied): conv3x3(64) + BN +
PReLU stem; four stages of IBasicBlock (BN -> conv3x3 -> BN -> PReLU ->
conv3x3(stride) -> BN, plus a conv1x1 + BN downsample on the first block of
every stage, all stride 2); then BN2d -> dropout -> flatten (NCHW) ->
Linear(512*7*7, 512) -> BatchNorm1d ``features``. Module names follow
insightface's, so ``state_dict()`` keys are the ones insightface checkpoints use.
Input: [B, 3, 112, 112] RGB already normalised as (x / 255 - 0.5) / 0.5.
"""

from __future__ import annotations

import torch
from torch import nn

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = self.downsample(x) if self.downsample is not None else x
        return out + identity


class IResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...], num_features: int = 512, dropout: float = 0.0):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False), nn.BatchNorm2d(planes, eps=1e-5))
        mods = [IBasicBlock(self.inplanes, planes, 2, down)]
        self.inplanes = planes
        mods += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def iresnet(depth: int) -> IResNet:
    return IResNet(LAYERS[depth])


def randomize(model: nn.Module, seed: int = 0, calibrate: bool = True) -> nn.Module:
    """Random weights, BN running stats and PReLU slopes, then eval mode.

    Conv/linear weights keep fan-in scaling, BN gammas around 1, betas around 0,
    PReLU slopes in [0, 0.5]. With ``calibrate`` the running statistics are
    first measured on a batch of random inputs (as training would leave them,
    so activations keep a trained network's scale at every depth) and then
    perturbed at random (means + 0.1 N(0, 1) * std, variances * U(0.7, 1.3));
    without it they are drawn at random (means 0.1 N(0, 1), variances
    U(0.5, 1.5)), and activations grow with depth.
    """
    g = torch.Generator().manual_seed(seed)
    _random_weights(model, g)
    if calibrate:
        bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
        model.train()
        with torch.no_grad():
            model(torch.rand((8, 3, 112, 112), generator=g) * 2 - 1)
            for m in bns:
                m.momentum = 0.1
                m.running_mean.add_(0.1 * torch.randn(m.num_features, generator=g) * m.running_var.sqrt())
                m.running_var.mul_(0.7 + 0.6 * torch.rand(m.num_features, generator=g))
                m.num_batches_tracked.fill_(1000)
    return model.eval()


def _random_weights(model: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                n = m.num_features
                m.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(1000)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.5 * torch.rand(m.weight.shape, generator=g))

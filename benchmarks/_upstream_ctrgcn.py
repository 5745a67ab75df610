"""A straightforward CTR-GCN in the style of the original code, as the speed and correctness reference.

Written for mmcl from the published architecture (not copied): one module per paper block, one
CTRGC per adjacency subset with its own four 1x1 convs, ``torch.einsum`` for the graph product,
float32, eager. ``benchmarks/model_speed.py`` times it against ``mmcl.models.CTRGCN`` and
``tests/test_models.py`` checks that both compute the same function with the same weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def conv_init(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)


def bn_init(bn: nn.BatchNorm2d, scale: float) -> None:
    nn.init.constant_(bn.weight, scale)
    nn.init.constant_(bn.bias, 0)


def tcn_weights_init(m: nn.Module) -> None:
    """The multi-scale TCN's own init: Kaiming fan-out convs, BN weight ~ N(1, 0.02)."""
    if isinstance(m, nn.Conv2d):
        conv_init(m)
    elif isinstance(m, nn.BatchNorm2d):
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


class TemporalConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        pad = (kernel + (kernel - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(cin, cout, (kernel, 1), padding=(pad, 0), stride=(stride, 1), dilation=(dilation, 1))
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class MultiScaleTemporalConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 5, stride: int = 1, dilations=(1, 2)):
        super().__init__()
        branches = len(dilations) + 2
        bc = cout // branches
        self.branches = nn.ModuleList()
        for d in dilations:
            self.branches.append(nn.Sequential(
                nn.Conv2d(cin, bc, 1), nn.BatchNorm2d(bc), nn.ReLU(inplace=True),
                TemporalConv(bc, bc, kernel, stride=stride, dilation=d),
            ))
        self.branches.append(nn.Sequential(
            nn.Conv2d(cin, bc, 1), nn.BatchNorm2d(bc), nn.ReLU(inplace=True),
            nn.MaxPool2d((3, 1), stride=(stride, 1), padding=(1, 0)), nn.BatchNorm2d(bc),
        ))
        self.branches.append(nn.Sequential(nn.Conv2d(cin, bc, 1, stride=(stride, 1)), nn.BatchNorm2d(bc)))
        self.apply(tcn_weights_init)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], dim=1)


class UnitTCN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1):
        super().__init__()
        pad = (kernel - 1) // 2
        self.conv = nn.Conv2d(cin, cout, (kernel, 1), padding=(pad, 0), stride=(stride, 1))
        self.bn = nn.BatchNorm2d(cout)
        conv_init(self.conv)
        bn_init(self.bn, 1)

    def forward(self, x):
        return self.bn(self.conv(x))


class CTRGC(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        rel = 8 if cin in (3, 9) else cin // 8
        self.conv1 = nn.Conv2d(cin, rel, 1)
        self.conv2 = nn.Conv2d(cin, rel, 1)
        self.conv3 = nn.Conv2d(cin, cout, 1)
        self.conv4 = nn.Conv2d(rel, cout, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                conv_init(m)

    def forward(self, x, a, alpha):
        x1, x2, x3 = self.conv1(x).mean(-2), self.conv2(x).mean(-2), self.conv3(x)
        rel = torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))
        rel = self.conv4(rel) * alpha + a.unsqueeze(0).unsqueeze(0)
        return torch.einsum("ncuv,nctv->nctu", rel, x3)


class UnitGCN(nn.Module):
    def __init__(self, cin: int, cout: int, adjacency: np.ndarray):
        super().__init__()
        self.convs = nn.ModuleList(CTRGC(cin, cout) for _ in range(adjacency.shape[0]))
        if cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))
            conv_init(self.down[0])
            bn_init(self.down[1], 1)
        else:
            self.down = nn.Identity()
        self.PA = nn.Parameter(torch.from_numpy(adjacency.astype(np.float32)))
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm2d(cout)
        bn_init(self.bn, 1e-6)

    def forward(self, x):
        y = None
        for i, conv in enumerate(self.convs):
            z = conv(x, self.PA[i], self.alpha)
            y = z if y is None else y + z
        return torch.relu(self.bn(y) + self.down(x))


class TCNGCNUnit(nn.Module):
    def __init__(self, cin: int, cout: int, adjacency: np.ndarray, stride: int = 1, residual: bool = True):
        super().__init__()
        self.gcn1 = UnitGCN(cin, cout, adjacency)
        self.tcn1 = MultiScaleTemporalConv(cout, cout, kernel=5, stride=stride, dilations=(1, 2))
        if not residual:
            self.residual = None
        elif cin == cout and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = UnitTCN(cin, cout, kernel=1, stride=stride)

    def forward(self, x):
        y = self.tcn1(self.gcn1(x))
        if self.residual is not None:
            y = y + self.residual(x)
        return torch.relu(y)


class UpstreamCTRGCN(nn.Module):
    def __init__(self, num_class: int, adjacency: np.ndarray, num_person: int = 2, in_channels: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        v = adjacency.shape[-1]
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * v)
        c = 64
        self.l1 = TCNGCNUnit(in_channels, c, adjacency, residual=False)
        self.l2 = TCNGCNUnit(c, c, adjacency)
        self.l3 = TCNGCNUnit(c, c, adjacency)
        self.l4 = TCNGCNUnit(c, c, adjacency)
        self.l5 = TCNGCNUnit(c, 2 * c, adjacency, stride=2)
        self.l6 = TCNGCNUnit(2 * c, 2 * c, adjacency)
        self.l7 = TCNGCNUnit(2 * c, 2 * c, adjacency)
        self.l8 = TCNGCNUnit(2 * c, 4 * c, adjacency, stride=2)
        self.l9 = TCNGCNUnit(4 * c, 4 * c, adjacency)
        self.l10 = TCNGCNUnit(4 * c, 4 * c, adjacency)
        self.fc = nn.Linear(4 * c, num_class)
        nn.init.normal_(self.fc.weight, 0, math.sqrt(2.0 / num_class))
        bn_init(self.data_bn, 1)
        self.drop_out = nn.Dropout(dropout) if dropout else nn.Identity()

    def pooled(self, x):
        """The skeleton feature (N, 256): mean over time and joints, then persons."""
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).contiguous().view(n, m * v * c, t)
        x = self.data_bn(x)
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).contiguous().view(n * m, c, t, v)
        for layer in (self.l1, self.l2, self.l3, self.l4, self.l5, self.l6, self.l7, self.l8, self.l9, self.l10):
            x = layer(x)
        return x.view(n, m, x.size(1), -1).mean(3).mean(1)

    def forward(self, x):
        return self.fc(self.drop_out(self.pooled(x)))

"""Inception-v3 (Szegedy et al., CVPR 2016), the RGB branch the upstream MMCL code trains on every step.

Written for mmcl's benchmarks from the published architecture (torchvision's layout: 1x1/3x3
stem, Mixed_5b-5d, 6a-6e, 7a-7c, an auxiliary classifier in training mode), because
torchvision does not import beside the pinned torch. With 1000 classes it has 27,161,264
parameters with the auxiliary head and 23,834,568 without, as torchvision's ``inception_v3``;
``benchmarks/model_speed.py`` checks the second count before timing it. Only the cost matters here: no pretrained weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBN(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_branch(x: Tensor, conv: ConvBN) -> Tensor:
    return conv(F.avg_pool2d(x, 3, stride=1, padding=1))


class BlockA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.b1 = ConvBN(cin, 64, 1)
        self.b5 = nn.Sequential(ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.b3 = nn.Sequential(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1))
        self.pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b5(x), self.b3(x), _avg_pool_branch(x, self.pool)], 1)


class ReductionA(nn.Module):
    """35x35 -> 17x17: strided 3x3, strided double 3x3, max-pool."""

    def __init__(self, cin: int):
        super().__init__()
        self.b3 = ConvBN(cin, 384, 3, stride=2)
        self.b3d = nn.Sequential(ConvBN(cin, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b3(x), self.b3d(x), F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.b1 = ConvBN(cin, 192, 1)
        self.b7 = nn.Sequential(
            ConvBN(cin, c7, 1), ConvBN(c7, c7, (1, 7), padding=(0, 3)), ConvBN(c7, 192, (7, 1), padding=(3, 0))
        )
        self.b7d = nn.Sequential(
            ConvBN(cin, c7, 1),
            ConvBN(c7, c7, (7, 1), padding=(3, 0)),
            ConvBN(c7, c7, (1, 7), padding=(0, 3)),
            ConvBN(c7, c7, (7, 1), padding=(3, 0)),
            ConvBN(c7, 192, (1, 7), padding=(0, 3)),
        )
        self.pool = ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b7(x), self.b7d(x), _avg_pool_branch(x, self.pool)], 1)


class ReductionB(nn.Module):
    """17x17 -> 8x8."""

    def __init__(self, cin: int):
        super().__init__()
        self.b3 = nn.Sequential(ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.b7 = nn.Sequential(
            ConvBN(cin, 192, 1),
            ConvBN(192, 192, (1, 7), padding=(0, 3)),
            ConvBN(192, 192, (7, 1), padding=(3, 0)),
            ConvBN(192, 192, 3, stride=2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b3(x), self.b7(x), F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs."""

    def __init__(self, cin: int):
        super().__init__()
        self.b1 = ConvBN(cin, 320, 1)
        self.b3_in = ConvBN(cin, 384, 1)
        self.b3_a, self.b3_b = ConvBN(384, 384, (1, 3), padding=(0, 1)), ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.b3d_in = nn.Sequential(ConvBN(cin, 448, 1), ConvBN(448, 384, 3, padding=1))
        self.b3d_a, self.b3d_b = ConvBN(384, 384, (1, 3), padding=(0, 1)), ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.pool = ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, hd = self.b3_in(x), self.b3d_in(x)
        return torch.cat(
            [self.b1(x), self.b3_a(h), self.b3_b(h), self.b3d_a(hd), self.b3d_b(hd), _avg_pool_branch(x, self.pool)], 1
        )


class AuxClassifier(nn.Module):
    """The auxiliary head on the 17x17 map (training mode only)."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.conv0 = ConvBN(cin, 128, 1)
        self.conv1 = ConvBN(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, stride=3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionV3(nn.Module):
    """Inception-v3; ``forward`` returns (pooled 2048-d features, logits, aux logits or None)."""

    feature_dim = 2048

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True):
        super().__init__()
        self.stem = nn.Sequential(
            ConvBN(3, 32, 3, stride=2),
            ConvBN(32, 32, 3),
            ConvBN(32, 64, 3, padding=1),
            nn.MaxPool2d(3, stride=2),
            ConvBN(64, 80, 1),
            ConvBN(80, 192, 3),
            nn.MaxPool2d(3, stride=2),
        )
        self.mixed5 = nn.Sequential(BlockA(192, 32), BlockA(256, 64), BlockA(288, 64))
        self.mixed6 = nn.Sequential(
            ReductionA(288), BlockC(768, 128), BlockC(768, 160), BlockC(768, 160), BlockC(768, 192)
        )
        self.aux = AuxClassifier(768, num_classes) if aux_logits else None
        self.mixed7 = nn.Sequential(ReductionB(768), BlockE(1280), BlockE(2048))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        x = self.mixed6(self.mixed5(self.stem(x)))
        aux = self.aux(x) if self.aux is not None and self.training else None
        features = torch.flatten(F.adaptive_avg_pool2d(self.mixed7(x), 1), 1)
        return features, self.fc(F.dropout(features, 0.5, self.training)), aux

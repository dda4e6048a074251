"""Image-classifier architectures written from scratch (no torchvision).

Every model takes ``num_classes`` and ``in_channels`` keyword arguments, maps an NCHW float
batch to logits, and ends in a single :class:`torch.nn.Linear` (``linear``, or ``classifier``
for :class:`VGG16BN`) whose input is the penultimate feature vector. Activations are
``nn.ReLU`` modules (one per use) so forward hooks can observe them. Weights use torch's
default initialisation, so seeding torch before construction makes them deterministic.

The zoo models expect *normalized* inputs; :func:`hardenkit.models.create_model` wraps them
with :class:`~hardenkit.models.normalization.NormalizedModel` so the result takes [0, 1]
pixels, which is hardenkit's contract.

Example:
    >>> import torch
    >>> from hardenkit.models.zoo import SmallCNN
    >>> _ = torch.manual_seed(0)
    >>> SmallCNN(num_classes=4)(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = [
    "VGG16BN",
    "BasicBlock",
    "CifarCNN",
    "PreActBlock",
    "PreActResNet18",
    "ResNet18",
    "SmallCNN",
]


def _check_sizes(num_classes: int, in_channels: int, **widths: int) -> None:
    """Raise :class:`ConfigError` unless every size is a positive int."""
    for name, value in {"num_classes": num_classes, "in_channels": in_channels, **widths}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"{name} must be a positive integer, got {value!r}.",
                hint=f"pass {name}=<int >= 1>",
            )


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv ×2) with a 1×1 conv shortcut when needed.

    Parameter names match BackdoorBench's ``PreActBlock`` (``bn1``, ``conv1``, ``bn2``,
    ``conv2``, ``shortcut.0``), so its checkpoints load with ``load_state_dict``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_planes, planes * self.expansion, kernel_size=1, stride=stride, bias=False
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        result: torch.Tensor = out + shortcut
        return result


class BasicBlock(nn.Module):
    """Post-activation ResNet basic block (conv-BN-ReLU, conv-BN, add, ReLU).

    The shortcut is an empty ``nn.Sequential`` (identity) or a 1×1 conv + BN projection,
    the layout of the widely used CIFAR ResNet implementations.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_planes, planes * self.expansion, kernel_size=1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(planes * self.expansion),
            )
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu2(out + self.shortcut(x))
        return result


def _make_layer(
    block: type[PreActBlock] | type[BasicBlock],
    in_planes: int,
    planes: int,
    num_blocks: int,
    stride: int,
) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for s in [stride] + [1] * (num_blocks - 1):
        layers.append(block(in_planes, planes, s))
        in_planes = planes * block.expansion
    return nn.Sequential(*layers), in_planes


class PreActResNet18(nn.Module):
    """PreAct-ResNet-18 for 32×32 inputs, the BackdoorBench reference architecture.

    Layout: 3×3 conv stem (``width``) → four stages of two :class:`PreActBlock` (``width`` ×
    1/2/4/8 channels, strides 1/2/2/2) → ``bn`` + ReLU → adaptive average pool → ``linear``.
    Penultimate features are ``8 * width``-dimensional. The default ``width=64`` is the
    BackdoorBench network (parameter names match); ``width=8`` (about 1/64 of its compute)
    is the residual family of the CPU benchmarks.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        _check_sizes(num_classes, in_channels, width=width)
        self.num_classes = num_classes
        w = width
        self.conv1 = _conv3x3(in_channels, w)
        self.layer1, planes = _make_layer(PreActBlock, w, w, 2, 1)
        self.layer2, planes = _make_layer(PreActBlock, planes, 2 * w, 2, 2)
        self.layer3, planes = _make_layer(PreActBlock, planes, 4 * w, 2, 2)
        self.layer4, planes = _make_layer(PreActBlock, planes, 8 * w, 2, 2)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an NCHW batch to logits of shape ``(N, num_classes)``."""
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.relu(self.bn(out))
        out = self.flatten(self.avgpool(out))
        logits: torch.Tensor = self.linear(out)
        return logits


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3×3 conv, stride 1, no max-pool).

    Layout: conv1-bn1-ReLU (64) → four stages of two :class:`BasicBlock` (64/128/256/512,
    strides 1/2/2/2) → adaptive average pool → ``linear``. Penultimate features are
    512-dimensional.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        _check_sizes(num_classes, in_channels)
        self.num_classes = num_classes
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.layer1, planes = _make_layer(BasicBlock, 64, 64, 2, 1)
        self.layer2, planes = _make_layer(BasicBlock, planes, 128, 2, 2)
        self.layer3, planes = _make_layer(BasicBlock, planes, 256, 2, 2)
        self.layer4, planes = _make_layer(BasicBlock, planes, 512, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an NCHW batch to logits of shape ``(N, num_classes)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.flatten(self.avgpool(out))
        logits: torch.Tensor = self.linear(out)
        return logits


_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG16BN(nn.Module):
    """VGG-16 with BatchNorm, CIFAR variant (a single ``classifier`` Linear on 512 features).

    ``features`` holds the 13 conv-BN-ReLU layers and 5 max-pools; an adaptive average pool
    to 1×1 follows, so inputs of at least 32×32 work. Penultimate features are 512-dimensional.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        _check_sizes(num_classes, in_channels)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_channels = int(item)
                layers += [
                    nn.Conv2d(channels, out_channels, kernel_size=3, padding=1),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=False),
                ]
                channels = out_channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an NCHW batch to logits of shape ``(N, num_classes)``."""
        out = self.flatten(self.avgpool(self.features(x)))
        logits: torch.Tensor = self.classifier(out)
        return logits


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=False),
    ]


class SmallCNN(nn.Module):
    """A tiny CNN for unit tests and demos: three conv-BN-ReLU blocks, two max-pools.

    Layout: ``block1`` (w, pool) → ``block2`` (2w, pool) → ``block3`` (4w) → global
    average pool → ``linear``. Penultimate features are ``4 * width``-dimensional.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        _check_sizes(num_classes, in_channels, width=width)
        self.num_classes = num_classes
        w = width
        self.block1 = nn.Sequential(*_conv_bn_relu(in_channels, w), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(*_conv_bn_relu(w, 2 * w), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(*_conv_bn_relu(2 * w, 4 * w))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an NCHW batch to logits of shape ``(N, num_classes)``."""
        out = self.block3(self.block2(self.block1(x)))
        logits: torch.Tensor = self.linear(self.flatten(self.avgpool(out)))
        return logits


class CifarCNN(nn.Module):
    """The CPU benchmark CNN: three stages of (conv3×3-BN-ReLU) ×2 + max-pool.

    Channel widths are ``(w, 2w, 4w)``; a global average pool and ``linear`` follow.
    Penultimate features are ``4 * width``-dimensional.

    The default ``width=16`` keeps one CIFAR-10 epoch (50k images, batch 256) near 20 s on
    two CPU cores; ``width=32`` is about 4× the compute (roughly 60–90 s per epoch there).
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        _check_sizes(num_classes, in_channels, width=width)
        self.num_classes = num_classes
        w = width
        self.stage1 = nn.Sequential(
            *_conv_bn_relu(in_channels, w), *_conv_bn_relu(w, w), nn.MaxPool2d(2)
        )
        self.stage2 = nn.Sequential(
            *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2)
        )
        self.stage3 = nn.Sequential(
            *_conv_bn_relu(2 * w, 4 * w), *_conv_bn_relu(4 * w, 4 * w), nn.MaxPool2d(2)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an NCHW batch to logits of shape ``(N, num_classes)``."""
        out = self.stage3(self.stage2(self.stage1(x)))
        logits: torch.Tensor = self.linear(self.flatten(self.avgpool(out)))
        return logits

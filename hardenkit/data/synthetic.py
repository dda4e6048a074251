"""A deterministic synthetic image dataset: CIFAR-like, learnable, not trivial.

Each class owns a *prototype*: a smooth random colour field plus an oriented sinusoidal
texture with a class-specific frequency and angle. A sample is its class prototype blended
with a random *other* class's prototype (weight up to ``max_mix``), randomly shifted, with
brightness/contrast jitter and Gaussian pixel noise. Classes therefore overlap: a small CNN
learns the task in a few epochs but does not reach 100% (strong mixes are genuinely
ambiguous), which is what defence tests need — a benign accuracy that can drop.

Example:
    >>> from hardenkit.data import make_synthetic_dataset
    >>> splits = make_synthetic_dataset(num_classes=4, train_per_class=8, test_per_class=2)
    >>> splits.train.images.shape, splits.test.num_classes
    (torch.Size([32, 3, 32, 32]), 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError
from .datasets import ImageDataset

__all__ = ["SyntheticSplits", "make_synthetic_dataset", "synthetic_prototypes"]


@dataclass(frozen=True)
class SyntheticSplits:
    """Disjoint train and test splits of a synthetic dataset."""

    train: ImageDataset
    test: ImageDataset


def synthetic_prototypes(
    num_classes: int, *, image_size: int = 32, channels: int = 3, seed: int = 0
) -> Tensor:
    """The ``(K, C, H, W)`` class prototypes in [0, 1] for ``seed``."""
    g = torch.Generator().manual_seed(seed)
    h = w = image_size
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    protos = []
    for k in range(num_classes):
        angle = math.pi * k / num_classes + float(torch.rand(1, generator=g)) * 0.3
        freq = 2.0 + 4.0 * float(torch.rand(1, generator=g))
        phase = 2 * math.pi * float(torch.rand(1, generator=g))
        wave = torch.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        color = torch.rand(channels, 1, 1, generator=g) * 2 - 1
        protos.append(0.55 * field[k] + 0.45 * (0.5 + 0.5 * wave.unsqueeze(0) * color))
    p = torch.stack(protos)
    p = (p - p.amin(dim=(1, 2, 3), keepdim=True)) / (
        p.amax(dim=(1, 2, 3), keepdim=True) - p.amin(dim=(1, 2, 3), keepdim=True) + 1e-8
    )
    return 0.1 + 0.8 * p


def _sample(
    protos: Tensor,
    labels: Tensor,
    g: torch.Generator,
    *,
    max_mix: float,
    noise: float,
    max_shift: int,
) -> Tensor:
    n = len(labels)
    k = protos.shape[0]
    other = (labels + torch.randint(1, k, (n,), generator=g)) % k
    mix = torch.rand(n, 1, 1, 1, generator=g) * max_mix
    x = (1 - mix) * protos[labels] + mix * protos[other]
    if max_shift > 0:
        pad = max_shift
        xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        h, w = x.shape[-2:]
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
        chans = torch.arange(x.shape[1])[None, :, None, None]
        x = xp[torch.arange(n)[:, None, None, None], chans, rows, cols]
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    bright = (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.3
    x = (x - 0.5) * contrast + 0.5 + bright
    x = x + noise * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def make_synthetic_dataset(
    num_classes: int = 10,
    *,
    train_per_class: int = 500,
    test_per_class: int = 100,
    image_size: int = 32,
    channels: int = 3,
    seed: int = 0,
    max_mix: float = 0.55,
    noise: float = 0.08,
    max_shift: int = 3,
) -> SyntheticSplits:
    """Generate disjoint train/test splits (uint8 storage, labels sorted by class).

    Args:
        num_classes: number of classes K (>= 2).
        train_per_class / test_per_class: images per class in each split.
        image_size / channels: image geometry (default CIFAR-like 3×32×32).
        seed: the whole dataset is a pure function of the arguments.
        max_mix: largest weight of the distractor class (> 0.5 makes some samples ambiguous).
        noise: std of the Gaussian pixel noise.
        max_shift: largest random translation in pixels.
    """
    if num_classes < 2:
        raise DataError(f"num_classes must be >= 2, got {num_classes}.")
    if train_per_class < 1 or test_per_class < 1:
        raise DataError("train_per_class and test_per_class must be >= 1.")
    if image_size < 8:
        raise DataError(f"image_size must be >= 8, got {image_size}.")
    protos = synthetic_prototypes(num_classes, image_size=image_size, channels=channels, seed=seed)
    classes = [f"class_{i}" for i in range(num_classes)]
    out = []
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        g = torch.Generator().manual_seed(seed * 1000 + (1 if split == "train" else 2))
        labels = torch.arange(num_classes).repeat_interleave(per)
        x = _sample(protos, labels, g, max_mix=max_mix, noise=noise, max_shift=max_shift)
        images = (x * 255).round().to(torch.uint8)
        out.append(ImageDataset(images, labels, classes))
    return SyntheticSplits(train=out[0], test=out[1])

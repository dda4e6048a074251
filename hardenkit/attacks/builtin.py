"""Built-in attacks: BadNets, Blended, WaNet (noise mode), SIG (clean-label), BppAttack and FTrojan.

Defaults follow BackdoorBench (BENCHMARKS.md): BadNets 3×3 white patch bottom-right;
Blended alpha 0.2 (a seeded random-noise pattern, since BackdoorBench's image is not
redistributable); WaNet k=4, s=0.5, noise mode with cross ratio 2; SIG delta 40/255, f=6,
clean-label; BppAttack 8 levels per channel with dithering (the poisoning only: the paper's
adversarial negative samples need control of the training loop); FTrojan the published
CIFAR-10 setting (magnitude 30/255 at DCT positions (15, 15) and (31, 31) of U and V,
32-pixel blocks).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from ..data.datasets import ImageDataset
from ..data.poisoned import PoisonedDataset
from ..triggers import (
    AdditiveTrigger,
    BlendTrigger,
    PatchTrigger,
    QuantizeTrigger,
    Trigger,
    WarpTrigger,
)
from .base import ATTACKS, Attack, AttackConfig

__all__ = [
    "SIG",
    "BadNets",
    "BadNetsConfig",
    "Blended",
    "BlendedConfig",
    "Bpp",
    "BppConfig",
    "FTrojan",
    "FTrojanConfig",
    "SIGConfig",
    "WaNet",
    "WaNetConfig",
]


class BadNetsConfig(AttackConfig):
    """BadNets: a small patch (``patch_size``, ``location``, ``pattern``)."""

    patch_size: Annotated[int, Field(ge=1)] = 3
    location: Literal["bottom-right", "bottom-left", "top-left", "top-right", "center"] = (
        "bottom-right"
    )
    pattern: Literal["white", "black", "checkerboard", "random"] = "white"
    margin: Annotated[int, Field(ge=0)] = 0


class BadNets(Attack):
    """BadNets (Gu et al., 2017): stamp a patch, relabel to the target."""

    name = "badnets"
    config_class = BadNetsConfig
    config: BadNetsConfig

    def build_trigger(self) -> Trigger:
        c = self.config
        return PatchTrigger.square(
            c.patch_size,
            location=c.location,
            pattern=c.pattern,
            channels=c.channels,
            seed=c.seed,
            margin=c.margin,
        )


class BlendedConfig(AttackConfig):
    """Blended: ``(1 - alpha) x + alpha * pattern`` with a seeded noise pattern."""

    alpha: Annotated[float, Field(gt=0, le=1)] = 0.2
    pattern_seed: Annotated[int, Field(ge=0)] = 1234


class Blended(Attack):
    """Blended (Chen et al., 2017): alpha-blend a full-image pattern."""

    name = "blended"
    config_class = BlendedConfig
    config: BlendedConfig

    def build_trigger(self) -> Trigger:
        c = self.config
        return BlendTrigger.random_noise(
            c.alpha, size=c.image_size, channels=c.channels, seed=c.pattern_seed
        )


class WaNetConfig(AttackConfig):
    """WaNet: warping grid ``k``, strength ``s``; noise mode with ``cross_ratio``."""

    k: Annotated[int, Field(ge=2)] = 4
    s: Annotated[float, Field(gt=0)] = 0.5
    noise_mode: bool = True
    cross_ratio: Annotated[float, Field(ge=0)] = 2.0
    grid_seed: Annotated[int, Field(ge=0)] = 4321


class WaNet(Attack):
    """WaNet (Nguyen & Tran, 2021): an imperceptible warp; noise samples keep their labels."""

    name = "wanet"
    config_class = WaNetConfig
    config: WaNetConfig

    def build_trigger(self) -> Trigger:
        c = self.config
        return WarpTrigger.random(c.k, c.s, size=c.image_size, seed=c.grid_seed)

    def poison(self, dataset: ImageDataset) -> PoisonedDataset:
        self._check_geometry(dataset)
        idx = self.select_poison_indices(dataset.labels, dataset.num_classes)
        new = self.target_labels(dataset.labels[idx], dataset.num_classes)
        c = self.config
        noise_idx = None
        if c.noise_mode and c.cross_ratio > 0:
            free = torch.ones(len(dataset), dtype=torch.bool)
            free[idx] = False
            pool = torch.nonzero(free).flatten()
            g = torch.Generator().manual_seed(c.seed + 1)
            want = min(len(pool), round(c.cross_ratio * len(idx)))
            noise_idx = torch.sort(pool[torch.randperm(len(pool), generator=g)[:want]]).values
        warp = self.trigger
        if not isinstance(warp, WarpTrigger):  # pragma: no cover - build_trigger guarantees it
            raise TypeError("WaNet's trigger must be a WarpTrigger")
        ng = torch.Generator().manual_seed(c.seed + 2)
        return PoisonedDataset(
            dataset,
            warp,
            idx,
            new,
            noise_indices=noise_idx,
            noise_transform=lambda x: warp.noise(x, generator=ng),
        )


class SIGConfig(AttackConfig):
    """SIG: sinusoidal signal of amplitude ``delta`` and ``frequency``; clean-label."""

    delta: Annotated[float, Field(gt=0, le=1)] = 40 / 255
    frequency: Annotated[float, Field(gt=0)] = 6.0


class SIG(Attack):
    """SIG (Barni et al., 2019): clean-label, only target-class training images are poisoned."""

    name = "sig"
    config_class = SIGConfig
    config: SIGConfig
    clean_label = True

    def build_trigger(self) -> Trigger:
        c = self.config
        return AdditiveTrigger.sig(c.delta, c.frequency, size=c.image_size, channels=c.channels)


class BppConfig(AttackConfig):
    """BppAttack: every channel reduced to ``levels`` values, with Floyd–Steinberg ``dither``."""

    levels: Annotated[int, Field(ge=2, le=256)] = 8
    dither: bool = True


class Bpp(Attack):
    """BppAttack (Wang et al., CVPR 2022): colour-depth reduction as an image-specific trigger.

    Only the poisoning (quantised, dithered images relabelled to the target); the paper's
    adversarial negative samples belong to a training loop the attacker controls.
    """

    name = "bpp"
    config_class = BppConfig
    config: BppConfig

    def build_trigger(self) -> Trigger:
        return QuantizeTrigger(self.config.levels, self.config.dither)


class FTrojanConfig(AttackConfig):
    """FTrojan: ``magnitude`` added at DCT ``positions`` of U and V in ``window`` blocks.

    ``window`` ``None``: 32 when it divides ``image_size`` (the paper's), else the whole
    image; ``positions`` ``None``: the window's middle and highest diagonal frequencies
    (``(w/2 - 1, w/2 - 1)`` and ``(w - 1, w - 1)``: (15, 15) and (31, 31) at 32).
    """

    magnitude: Annotated[float, Field(gt=0, le=1)] = 30 / 255
    positions: tuple[tuple[int, int], ...] | None = None
    window: Annotated[int, Field(ge=1)] | None = None


class FTrojan(Attack):
    """FTrojan (Wang et al., ECCV 2022): an invisible trigger in the frequency domain."""

    name = "ftrojan"
    config_class = FTrojanConfig
    config: FTrojanConfig

    def build_trigger(self) -> Trigger:
        c = self.config
        window = c.window or (32 if c.image_size % 32 == 0 else c.image_size)
        half = max(window // 2 - 1, 0)
        positions = c.positions or ((half, half), (window - 1, window - 1))
        return AdditiveTrigger.frequency(
            c.magnitude, positions, window=window, size=c.image_size, channels=c.channels
        )


for _cls in (BadNets, Blended, WaNet, SIG, Bpp, FTrojan):
    ATTACKS.register(_cls.name, _cls)

"""Red-team poisoning attacks: configs, the Attack base class and the registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..config import HardenkitConfig
from ..data.datasets import ImageDataset
from ..data.poisoned import PoisonedDataset
from ..errors import ConfigError, DataError
from ..logging import get_logger
from ..registry import Registry
from ..triggers import Trigger

__all__ = ["ATTACKS", "Attack", "AttackConfig", "TargetSpec", "build_attack"]

TargetSpec = int | dict[int, int]
_log = get_logger("hardenkit.attacks")


class AttackConfig(HardenkitConfig):
    """Fields shared by every attack.

    Attributes:
        target: the target label for all-to-one attacks.
        mode: ``all-to-one`` (every poisoned image → ``target``) or ``all-to-all``
            (label ``y`` → ``(y + 1) mod K``).
        poison_rate: fraction of the *training set* that is poisoned.
        seed: seeds the poison-index draw and any random trigger pattern.
        image_size / channels: geometry of the images the trigger is built for.
    """

    target: Annotated[int, Field(ge=0)] = 0
    mode: Literal["all-to-one", "all-to-all"] = "all-to-one"
    poison_rate: Annotated[float, Field(gt=0, le=1)] = 0.1
    seed: Annotated[int, Field(ge=0)] = 0
    image_size: Annotated[int, Field(ge=4)] = 32
    channels: Annotated[int, Field(ge=1)] = 3


class Attack(ABC):
    """A poisoning attack: a trigger, a label rule and a poison-index rule."""

    name: ClassVar[str]
    config_class: ClassVar[type[AttackConfig]] = AttackConfig
    clean_label: ClassVar[bool] = False

    def __init__(self, config: AttackConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        if config is None:
            cfg = self.config_class(**kwargs)
        elif isinstance(config, dict):
            cfg = self.config_class(**{**config, **kwargs})
        elif isinstance(config, self.config_class):
            cfg = config.with_updates(**kwargs) if kwargs else config
        else:
            raise ConfigError(
                f"{type(self).__name__} expects a {self.config_class.__name__}, "
                f"got {type(config).__name__}."
            )
        if self.clean_label and cfg.mode != "all-to-one":
            raise ConfigError(f"{self.name} is a clean-label attack; only all-to-one is supported.")
        self.config = cfg
        self.trigger: Trigger = self.build_trigger()

    @abstractmethod
    def build_trigger(self) -> Trigger:
        """The trigger, a deterministic function of the config."""

    @property
    def target(self) -> TargetSpec:
        """The configured target label (all-to-all uses :meth:`target_mapping` instead)."""
        return self.config.target

    def target_labels(self, labels: Tensor, num_classes: int) -> Tensor:
        """The labels an attacker wants for triggered images with true ``labels``."""
        if self.config.mode == "all-to-all":
            return (labels + 1) % num_classes
        return torch.full_like(labels, self.config.target)

    def target_mapping(self, num_classes: int) -> TargetSpec:
        """The target as the Validator takes it: int (all-to-one) or {true: target} mapping."""
        if self.config.mode == "all-to-all":
            return {c: (c + 1) % num_classes for c in range(num_classes)}
        return self.config.target

    def select_poison_indices(self, labels: Tensor, num_classes: int) -> Tensor:
        """Which training samples get poisoned (exact, seeded)."""
        cfg = self.config
        n = len(labels)
        if cfg.mode == "all-to-one" and cfg.target >= num_classes:
            raise ConfigError(f"target {cfg.target} is not a class of a {num_classes}-class task.")
        want = round(cfg.poison_rate * n)
        if self.clean_label:
            pool = torch.nonzero(labels == cfg.target).flatten()
        elif cfg.mode == "all-to-one":
            pool = torch.nonzero(labels != cfg.target).flatten()
        else:
            pool = torch.arange(n)
        if want < 1:
            raise DataError(
                f"poison_rate {cfg.poison_rate} of {n} samples poisons no sample.",
                hint="raise poison_rate or use more data",
            )
        if want > len(pool):
            _log.warning(
                "attack.poison_capped",
                attack=self.name,
                requested=want,
                poisoned=len(pool),
                reason="fewer eligible samples than poison_rate asks for",
            )
            want = len(pool)
        if want == 0:
            raise DataError(f"no eligible samples to poison for {self.name} (target {cfg.target}).")
        g = torch.Generator().manual_seed(cfg.seed)
        return torch.sort(pool[torch.randperm(len(pool), generator=g)[:want]]).values

    def poison(self, dataset: ImageDataset) -> PoisonedDataset:
        """The poisoned view of ``dataset`` (exact poison indices on ``.poison_indices``)."""
        self._check_geometry(dataset)
        idx = self.select_poison_indices(dataset.labels, dataset.num_classes)
        new = self.target_labels(dataset.labels[idx], dataset.num_classes)
        return PoisonedDataset(dataset, self.trigger, idx, new)

    def _check_geometry(self, dataset: ImageDataset) -> None:
        c, h, w = dataset.image_shape
        if h != w:
            raise DataError(
                f"{self.name} builds its trigger for square images; the dataset's are {c}×{h}×{w}.",
                hint="crop or resize the images to a square, or poison them with a trigger "
                "function of your own (any callable on a [0, 1] NCHW batch) and train with "
                "hk.train_model; the Scanner, Purifier, Validator and gate take any image size",
            )
        if (c, h, w) != (self.config.channels, self.config.image_size, self.config.image_size):
            raise DataError(
                f"{self.name} was configured for {self.config.channels}×{self.config.image_size}"
                f"×{self.config.image_size} images but the dataset has {c}×{h}×{w}.",
                hint="set image_size/channels in the attack config",
            )

    def describe(self) -> dict[str, Any]:
        """A JSON summary for reports."""
        return {
            "attack": self.name,
            "clean_label": self.clean_label,
            **self.config.model_dump(),
            "trigger": self.trigger.describe(),
        }


ATTACKS: Registry[type[Attack]] = Registry("attack", entry_point_group="hardenkit.attacks")


def build_attack(
    name: str, config: AttackConfig | dict[str, Any] | None = None, **kwargs: Any
) -> Attack:
    """Instantiate a registered attack: ``build_attack("badnets", poison_rate=0.05)``."""
    return ATTACKS.get(name)(config, **kwargs)

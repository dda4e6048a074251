"""Helpers for testing code built on hardenkit (plugins, pipelines): tiny seeded fixtures.

Example:
    >>> from hardenkit.testing import tiny_backdoored_model
    >>> fx = tiny_backdoored_model(epochs=1)
    >>> fx.backdoored.poisoned.num_classes
    4
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attacks import BackdooredModel, make_backdoored_model
from ..data import SyntheticSplits, make_synthetic_dataset
from ..training import TrainConfig

__all__ = ["BackdoorFixture", "tiny_backdoored_model"]


@dataclass(frozen=True)
class BackdoorFixture:
    """A small synthetic dataset and a model backdoored on it."""

    data: SyntheticSplits
    backdoored: BackdooredModel


def tiny_backdoored_model(
    attack: str = "badnets",
    *,
    num_classes: int = 4,
    train_per_class: int = 100,
    test_per_class: int = 25,
    epochs: int = 6,
    seed: int = 0,
) -> BackdoorFixture:
    """Train a ``small-cnn`` with ``attack`` on tiny synthetic data (seconds on a CPU)."""
    data = make_synthetic_dataset(
        num_classes=num_classes,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        seed=seed,
    )
    bd = make_backdoored_model(
        attack,
        data.train,
        test=data.test,
        arch="small-cnn",
        attack_config={"seed": seed},
        train_config=TrainConfig(epochs=epochs, batch_size=64, lr=0.05, augment=False),
        runtime={"seed": seed, "device": "cpu"},
    )
    return BackdoorFixture(data=data, backdoored=bd)

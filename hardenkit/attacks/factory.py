"""Train backdoored models for tests, demos and benchmarks.

Example:
    >>> from hardenkit.attacks import make_backdoored_model
    >>> from hardenkit.data import make_synthetic_dataset
    >>> from hardenkit.training import TrainConfig
    >>> data = make_synthetic_dataset(num_classes=4, train_per_class=40, test_per_class=10)
    >>> bd = make_backdoored_model("badnets", data.train, test=data.test,
    ...                            train_config=TrainConfig(epochs=1, batch_size=32))
    >>> sorted(bd.metrics)
    ['asr', 'ba', 'ra']
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .._utils.progress import ProgressCallback, make_progress
from .._utils.seeding import seed_everything
from ..config import RuntimeConfig, parse_config
from ..data.datasets import ImageDataset
from ..data.poisoned import PoisonedDataset
from ..errors import ConfigError
from ..io import model_metadata, save_state_dict, write_json
from ..logging import get_logger
from ..training import TrainConfig, TrainHistory, train_model
from ..triggers import Trigger
from .base import Attack, AttackConfig, TargetSpec, build_attack

__all__ = ["BackdooredModel", "make_backdoored_model"]

_log = get_logger("hardenkit.attacks")


@dataclass
class BackdooredModel:
    """A model trained on poisoned data, with everything needed to measure its backdoor."""

    model: nn.Module
    attack: Attack
    poisoned: PoisonedDataset
    history: TrainHistory
    arch: str
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def trigger(self) -> Trigger:
        return self.attack.trigger

    @property
    def target(self) -> TargetSpec:
        """int (all-to-one) or {true: target} mapping (all-to-all) — what the Validator takes."""
        return self.attack.target_mapping(self.poisoned.num_classes)

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``trigger.safetensors`` and ``attack.json``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = model_metadata(  # lets `hardenkit validate --weights` run without --arch
            self.arch, self.poisoned.num_classes, {"in_channels": self.poisoned.image_shape[0]}
        )
        save_state_dict(self.model, d / "model.safetensors", metadata={"arch": self.arch, **meta})
        self.trigger.save(d / "trigger.safetensors")
        write_json(
            d / "attack.json",
            {
                "arch": self.arch,
                "num_classes": self.poisoned.num_classes,
                "attack": self.attack.describe(),
                "target": json.loads(json.dumps(self.target)),
                "poison_count": len(self.poisoned.poison_indices),
                "metrics": self.metrics,
                "train_seconds": self.history.seconds,
            },
        )
        return d


def make_backdoored_model(
    attack: Attack | str,
    train: ImageDataset,
    *,
    test: ImageDataset | None = None,
    arch: str | Callable[[], nn.Module] = "small-cnn",
    attack_config: AttackConfig | dict[str, Any] | None = None,
    train_config: TrainConfig | dict[str, Any] | None = None,
    runtime: RuntimeConfig | dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> BackdooredModel:
    """Poison ``train`` with ``attack``, train ``arch`` on it, and measure BA/ASR/RA on ``test``.

    ``arch`` is a zoo name (see :func:`hardenkit.models.list_models`), a ``module:factory``
    spec, or a zero-argument callable returning a fresh model. Runs on CPU or CUDA per
    ``runtime`` and is deterministic for a given seed and device.
    """
    rt = parse_config(RuntimeConfig, runtime)
    tc = parse_config(TrainConfig, train_config)
    seed_everything(rt.seed)
    if isinstance(attack, str):
        if isinstance(attack_config, AttackConfig):
            atk = build_attack(attack, attack_config)
        else:
            c, h, _ = train.image_shape
            atk = build_attack(attack, {"image_size": h, "channels": c, **(attack_config or {})})
    elif isinstance(attack, Attack):
        if attack_config is not None:
            raise ConfigError("pass attack_config only together with an attack *name*.")
        atk = attack
    else:
        raise ConfigError(f"attack must be a name or an Attack, got {type(attack).__name__}.")
    poisoned = atk.poison(train)
    if isinstance(arch, str):
        from ..models import build_model

        model = build_model(arch, train.num_classes, in_channels=train.image_shape[0])
        arch_name = arch
    elif callable(arch):
        model = arch()
        if not isinstance(model, nn.Module):
            raise ConfigError("arch callable must return an nn.Module.")
        arch_name = getattr(arch, "__qualname__", "custom")
    else:
        raise ConfigError(f"arch must be a name, spec or callable, got {type(arch).__name__}.")
    prog = make_progress(rt.progress, progress)
    device = rt.resolve_device()
    history = train_model(
        model,
        poisoned.images,
        poisoned.labels,
        tc,
        runtime=rt,
        progress=prog,
        phase=f"train[{atk.name}]",
    )
    model.eval()
    bd = BackdooredModel(
        model=model, attack=atk, poisoned=poisoned, history=history, arch=arch_name
    )
    if test is not None:
        from ..validate import Validator

        rep = Validator(copy.deepcopy(model).to(device), runtime=rt).run(
            test.loader(batch_size=512), trigger=atk.trigger, target=bd.target
        )
        bd.metrics = {"ba": rep.ba, "asr": float(rep.asr or 0.0), "ra": float(rep.ra or 0.0)}
    _log.info(
        "attack.trained",
        attack=atk.name,
        arch=arch_name,
        poisoned=len(poisoned.poison_indices),
        seconds=history.seconds,
        **bd.metrics,
    )
    return bd

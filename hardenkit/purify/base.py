"""Purification strategy plug-in interface: one class + one pydantic config + a registry entry."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .._utils.progress import ProgressCallback
from ..config import HardenkitConfig, RuntimeConfig, parse_config
from ..registry import Registry
from ..scan import ScanResult

__all__ = [
    "STRATEGIES",
    "Budget",
    "PurificationStrategy",
    "PurifyContext",
    "StrategyConfig",
    "StrategyOutcome",
]


class StrategyConfig(HardenkitConfig):
    """Fields every strategy config has.

    Attributes:
        max_steps: stop after this many optimisation steps (``None`` = the strategy's
            schedule decides). The report records whether the budget ended the run.
        max_seconds: stop after this much wall time (checked between steps).
    """

    max_steps: Annotated[int, Field(ge=1)] | None = None
    max_seconds: Annotated[float, Field(gt=0)] | None = None


class Budget:
    """Step and wall-time budget shared by a strategy's loops (``budget()`` → stop?)."""

    def __init__(self, max_steps: int | None, max_seconds: float | None) -> None:
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.steps = 0
        self.exhausted = False
        self._t0 = time.perf_counter()

    def __call__(self) -> bool:
        """Count one step; return True (stop) when the budget is used up."""
        out_of_steps = self.max_steps is not None and self.steps >= self.max_steps
        elapsed = time.perf_counter() - self._t0
        out_of_time = self.max_seconds is not None and elapsed > self.max_seconds
        if out_of_steps or out_of_time:
            self.exhausted = True
        else:
            self.steps += 1
        return self.exhausted


@dataclass
class PurifyContext:
    """What a strategy gets from the Purifier.

    ``model`` is the working copy (the strategy edits it in place and returns it);
    ``x``/``y`` the clean images it may train on (on ``device``), ``x_val``/``y_val`` a small
    validation split of the clean budget for model selection (may be empty).
    """

    model: nn.Module
    original: nn.Module
    """A frozen eval-mode copy of the input model (teacher, reference)."""
    num_classes: int
    x: Tensor
    y: Tensor
    x_val: Tensor
    y_val: Tensor
    device: torch.device
    runtime: RuntimeConfig
    scan: ScanResult | None
    budget: Budget
    progress: ProgressCallback
    input_shape: tuple[int, int, int] = (3, 32, 32)
    """``(C, H, W)`` of the model's input (known even when no clean image was given)."""
    notes: list[str] = field(default_factory=list)
    """Human-readable remarks the strategy wants in the report (fallbacks, skipped triggers)."""


@dataclass
class StrategyOutcome:
    """What a strategy returns."""

    model: nn.Module
    status: Literal["purified", "nothing-to-purify", "refused"] = "purified"
    epochs: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    scan: ScanResult | None = None
    """A scan the strategy ran itself (its triggers' held-out ASR is then reported)."""


class PurificationStrategy(ABC):
    """A repair method. Subclasses set ``name``, ``config_cls`` and ``needs_trigger``.

    ``needs_trigger=True`` strategies receive a :class:`~hardenkit.scan.ScanResult` (the
    Purifier runs the Scanner when none is given) and are skipped with the explicit status
    ``nothing-to-purify`` when the scan flags no label.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[StrategyConfig]] = StrategyConfig
    needs_trigger: ClassVar[bool] = False
    uses_scan: ClassVar[bool] = False
    """Wants a scan (the Purifier scans first when none is given) but also works without a
    flagged label (composite strategies)."""
    data_free: ClassVar[bool] = False
    """Runs without clean images (``Purifier.run(None)``), e.g. on synthesised data."""
    validation_fraction: float = 0.0
    """Share of the training part of the clean budget the Purifier splits off as
    ``ctx.x_val``/``ctx.y_val`` for the strategy's own model selection."""

    def __init__(self, config: StrategyConfig | dict[str, Any] | None = None) -> None:
        self.config = parse_config(self.config_cls, config)

    @abstractmethod
    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        """Repair ``ctx.model`` (the Purifier's copy) and return it."""


STRATEGIES: Registry[type[PurificationStrategy]] = Registry(
    "purification strategy", entry_point_group="hardenkit.strategies"
)

"""``plain``: ordinary supervised training on every sample (no defence; the reference point)."""

from __future__ import annotations

import time
from typing import Annotated

import torch
from pydantic import Field

from ..training import train_model
from .base import TRAINERS, RobustConfig, RobustContext, RobustOutcome, RobustStrategy, StageRecord

__all__ = ["PlainConfig", "PlainStrategy"]


class PlainConfig(RobustConfig):
    """Plain training.

    Attributes:
        epochs: passes over the whole training set.
    """

    epochs: Annotated[int, Field(ge=1)] = 20


@TRAINERS.decorator("plain")
class PlainStrategy(RobustStrategy):
    """Cross-entropy training on every sample (trusts every label)."""

    name = "plain"
    config_cls = PlainConfig
    isolates = False
    config: PlainConfig

    def estimate_epochs(self) -> float:
        return float(self.config.epochs)

    def fit(self, ctx: RobustContext) -> RobustOutcome:
        cfg = self.config
        t0 = time.perf_counter()
        hist = train_model(
            ctx.model,
            ctx.x,
            ctx.y,
            cfg.train_config(cfg.epochs),
            runtime=ctx.runtime,
            progress=ctx.progress,
            phase="train",
            stop=ctx.budget,
            distributed=ctx.dist,
        )
        stage = StageRecord(
            "supervised",
            time.perf_counter() - t0,
            epochs=len(hist.epochs),
            steps=hist.steps,
            details={"final_loss": hist.final_loss},
        )
        return RobustOutcome(
            model=ctx.model,
            suspected=torch.zeros(0, dtype=torch.int64),
            scores=None,
            stages=[stage],
            epochs=len(hist.epochs),
        )

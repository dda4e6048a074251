"""Baselines: plain fine-tuning (ALGORITHMS.md §6.1) and Neural Cleanse unlearning (§5.1(b)5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import torch
from pydantic import Field

from .._utils.model_checks import require_trainable
from ..training import TrainConfig, TrainHistory, train_model
from ..triggers import Trigger
from .base import (
    STRATEGIES,
    CheckpointSelector,
    PurificationStrategy,
    PurifyContext,
    Selection,
    StrategyConfig,
    StrategyOutcome,
    TriggerLabels,
    epoch_passes,
    select_triggers,
)

__all__ = ["FinetuneConfig", "FinetuneStrategy", "NCUnlearnConfig", "NCUnlearnStrategy"]


class FinetuneConfig(StrategyConfig):
    """Plain fine-tuning on the clean budget (BackdoorBench defaults).

    Attributes:
        epochs: passes over the clean images (BackdoorBench: 100).
        batch_size: images per step.
        lr: SGD learning rate (cosine schedule to 0).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        augment: random crop + horizontal flip on the device.
        selection: which epoch is returned (see :data:`hardenkit.purify.base.Selection`):
            ``best-val`` (default) — the highest validation BA among epochs whose inverted
            triggers (the scan's) reach at most ``selection_max_asr`` on the validation split;
            the last epoch when there is no inverted trigger; ``final`` — the last epoch;
            ``best-val-ba`` — the highest validation BA.
        selection_max_asr: the ASR bound of ``best-val`` selection.
    """

    epochs: Annotated[int, Field(ge=1)] = 100
    batch_size: Annotated[int, Field(ge=1)] = 256
    lr: Annotated[float, Field(gt=0)] = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    augment: bool = True
    selection: Selection = "best-val"
    selection_max_asr: Annotated[float, Field(ge=0, le=1)] = 0.1

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer="sgd",
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule="cosine",
            augment=self.augment,
        )


class FinetuneStrategy(PurificationStrategy):
    """Fine-tune the whole model with cross-entropy on the clean images.

    Works for patch triggers (BackdoorBench BadNets 95.03 → 1.48 ASR) and fails on Blended,
    LF and SSBA (the model stays in the backdoor basin). Needs no trigger.
    """

    name = "finetune"
    config_cls = FinetuneConfig
    validation_fraction = 0.1
    config: FinetuneConfig

    def estimate_passes(self) -> tuple[float, float] | None:
        # 0.66-0.72 passes per epoch measured (one training pass + the validation pass;
        # benchmarks/results/purify_estimate_factors_*.md)
        return epoch_passes(self.config.epochs, (0.7, 1.05))

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        hist, selection = _fit(ctx, self.config, "purify[finetune]")
        return StrategyOutcome(
            model=ctx.model,
            epochs=len(hist.epochs),
            details={
                "final_loss": hist.final_loss,
                "train_seconds": hist.seconds,
                "checkpoint": selection,
            },
        )


class NCUnlearnConfig(FinetuneConfig):
    """Neural Cleanse unlearning: fine-tune with the inverted trigger stamped on some images.

    Attributes:
        unlearning_ratio: share of the clean images stamped with an inverted trigger while
            keeping their true label (BackdoorBench: 0.2).
        epochs: fine-tuning passes (hardenkit default 20; the NC paper used 1 epoch on 10 %
            of the training data).
        trigger_labels: ``most-anomalous`` (default) — stamp the most anomalous flagged
            label's trigger only; ``all-flagged`` — split the stamped images across every
            flagged label's trigger. Triggers you supply with ``ScanResult.from_triggers``
            are all used.
    """

    epochs: Annotated[int, Field(ge=1)] = 20
    unlearning_ratio: Annotated[float, Field(gt=0, le=1)] = 0.2
    trigger_labels: TriggerLabels = "most-anomalous"


class NCUnlearnStrategy(PurificationStrategy):
    """Stamp the scan's inverted trigger(s) on a fraction of the clean images, keep their
    true labels, and fine-tune: the model learns that the trigger means nothing.

    With several triggers (``trigger_labels="all-flagged"``) the stamped images are split
    evenly across them.
    """

    name = "nc-unlearn"
    config_cls = NCUnlearnConfig
    needs_trigger = True
    validation_fraction = 0.1
    config: NCUnlearnConfig

    def estimate_passes(self) -> tuple[float, float] | None:
        return epoch_passes(self.config.epochs, (0.6, 1.05))  # 0.69-0.77 measured

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        assert ctx.scan is not None
        triggers = select_triggers(ctx.scan, self.config.trigger_labels)
        if not triggers:
            ctx.notes.append("the scan flagged labels but recovered no trigger: nothing to unlearn")
            return StrategyOutcome(model=ctx.model, status="refused")
        n = len(ctx.y)
        g = torch.Generator().manual_seed(ctx.runtime.seed + 11)
        chosen = torch.randperm(n, generator=g)[: max(1, round(self.config.unlearning_ratio * n))]
        # which trigger (index into ``triggers``) each image is stamped with, -1 for none;
        # stamped per mini-batch, so the clean images are never copied as a whole
        assign = torch.full((n,), -1, dtype=torch.int64)
        for i in range(len(triggers)):
            assign[chosen[i :: len(triggers)]] = i
        assign = assign.to(ctx.device)

        def stamp(xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            which = assign[idx.to(assign.device)]
            for i, (_, trig) in enumerate(triggers):
                rows = torch.nonzero(which == i).flatten()
                if len(rows):
                    xb[rows] = trig.apply(xb[rows])
            return xb

        hist, selection = _fit(
            ctx, self.config, "purify[nc-unlearn]", triggers=triggers, batch_transform=stamp
        )
        return StrategyOutcome(
            model=ctx.model,
            epochs=len(hist.epochs),
            details={
                "stamped_images": len(chosen),
                "triggers": [lab for lab, _ in triggers],
                "final_loss": hist.final_loss,
                "checkpoint": selection,
            },
        )


def _fit(
    ctx: PurifyContext,
    cfg: FinetuneConfig,
    phase: str,
    *,
    triggers: Sequence[tuple[int, Trigger]] | None = None,
    batch_transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[TrainHistory, dict[str, Any]]:
    """Fine-tune ``ctx.model`` in place on ``(ctx.images, ctx.y)`` (each mini-batch edited by
    ``batch_transform(xb, idx)``) within the run's budget — sharded over the ranks under
    ``torchrun`` — then load the checkpoint ``cfg.selection`` chooses; returns the history
    and the selection record."""
    require_trainable(ctx.model, where=phase)
    selector = CheckpointSelector(
        ctx, cfg.selection, max_asr=cfg.selection_max_asr, triggers=triggers
    )

    def on_epoch_end(epoch: int) -> None:
        selector.update(ctx.model, epoch)

    hist = train_model(
        ctx.model,
        ctx.images,
        ctx.y,
        cfg.train_config(),
        runtime=ctx.runtime,
        progress=ctx.progress,
        phase=phase,
        stop=ctx.budget,
        on_epoch_end=on_epoch_end,
        batch_transform=batch_transform,
        distributed=ctx.dist,
    )
    record = selector.finish(ctx.model, len(hist.epochs))
    ctx.model.eval()
    return hist, record


STRATEGIES.register(FinetuneStrategy.name, FinetuneStrategy)
STRATEGIES.register(NCUnlearnStrategy.name, NCUnlearnStrategy)

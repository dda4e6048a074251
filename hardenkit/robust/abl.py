"""``abl``: Anti-Backdoor Learning (Li et al., NeurIPS 2021), the baseline.

1. **LGA isolation** — train for ``isolation_epochs`` with the local gradient ascent loss
   ``sign(CE − γ) · CE`` (batch-mean CE): the loss of every batch is held near ``γ``, so the
   fast-learned backdoor samples sink below it while clean samples cannot;
2. isolate the ``isolation_ratio`` lowest-loss samples;
3. continue training on the rest for ``finetune_epochs``;
4. **unlearn** the isolated set by gradient ascent on its cross-entropy for
   ``unlearning_epochs`` with a small learning rate.

ALGORITHMS.md §8 (provenance [R]: from memory of the paper, defaults as in its code).
"""

from __future__ import annotations

import time
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..training import train_model
from .base import (
    TRAINERS,
    RobustConfig,
    RobustContext,
    RobustOutcome,
    RobustStrategy,
    StageRecord,
    isolation_record,
    sample_scores,
    select_suspects,
)

__all__ = ["ABLConfig", "ABLStrategy"]


class ABLConfig(RobustConfig):
    """Anti-Backdoor Learning.

    Attributes:
        isolation_epochs: LGA epochs on all samples before isolating (paper: 20).
        isolation_augment: crop + flip during the LGA isolation epochs (off by default, as
            DLP's stage 1: augmentation slows the learning of position-bound triggers).
        gamma: the LGA loss floor γ.
        isolation_ratio: share of the training set isolated (lowest loss; paper: 0.01).
        finetune_epochs: training epochs on the non-isolated samples after isolation.
        unlearning_epochs: gradient-ascent epochs on the isolated set (paper: 5).
        unlearning_lr: SGD learning rate of the unlearning (constant; paper: 5e-4).
        unlearning_batch_size: batch size of the unlearning (paper: 64).
    """

    isolation_epochs: Annotated[int, Field(ge=1)] = 5
    isolation_augment: bool = False
    gamma: Annotated[float, Field(ge=0)] = 0.5
    isolation_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.01
    finetune_epochs: Annotated[int, Field(ge=0)] = 15
    unlearning_epochs: Annotated[int, Field(ge=0)] = 5
    unlearning_lr: Annotated[float, Field(gt=0)] = 5e-4
    unlearning_batch_size: Annotated[int, Field(ge=1)] = 64


def _lga_loss(gamma: float) -> object:
    def loss(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        ce = F.cross_entropy(model(xb).float(), yb)
        return torch.sign(ce - gamma) * ce

    return loss


def _ascent(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
    return -F.cross_entropy(model(xb).float(), yb)


@TRAINERS.decorator("abl")
class ABLStrategy(RobustStrategy):
    """LGA isolation → training on the rest → gradient-ascent unlearning of the isolated set."""

    name = "abl"
    config_cls = ABLConfig
    config: ABLConfig

    def estimate_epochs(self) -> float:
        c = self.config
        return c.isolation_epochs + c.finetune_epochs + c.unlearning_epochs * c.isolation_ratio

    def fit(self, ctx: RobustContext) -> RobustOutcome:
        cfg = self.config
        stages: list[StageRecord] = []
        t0 = time.perf_counter()
        h1 = train_model(
            ctx.model,
            ctx.x,
            ctx.y,
            cfg.train_config(cfg.isolation_epochs, augment=cfg.isolation_augment),
            runtime=ctx.runtime,
            progress=ctx.progress,
            loss_fn=_lga_loss(cfg.gamma),  # type: ignore[arg-type]
            phase="abl.isolation",
            stop=ctx.budget,
            # LGA takes the sign of the *batch* mean loss, which a rank's shard does not
            # know: under torchrun every rank runs this stage on the whole batch (replicated)
            distributed=None,
        )
        ce, _, _ = sample_scores(ctx.model, ctx.x, ctx.y, runtime=ctx.runtime)
        suspicion = -ce  # lowest loss = most suspicious
        suspected = select_suspects(
            suspicion,
            ctx.y.cpu(),
            ratio=cfg.isolation_ratio,
            threshold=None,
            per_class=False,
            num_classes=ctx.num_classes,
        )
        history = [isolation_record(ctx, suspected, epoch=len(h1.epochs), stage="isolation")]
        stages.append(
            StageRecord(
                "isolation",
                time.perf_counter() - t0,
                epochs=len(h1.epochs),
                steps=h1.steps,
                details={"final_loss": h1.final_loss, "gamma": cfg.gamma},
            )
        )
        dev = ctx.x.device
        keep = torch.ones(len(ctx.y), dtype=torch.bool)
        keep[suspected] = False
        keep_d = keep.to(dev)
        epochs = len(h1.epochs)
        t1 = time.perf_counter()
        if cfg.finetune_epochs and not ctx.budget.exhausted and bool(keep.any()):
            h2 = train_model(
                ctx.model,
                ctx.x[keep_d],
                ctx.y[keep_d],
                cfg.train_config(cfg.finetune_epochs),
                runtime=ctx.runtime.with_updates(seed=ctx.runtime.seed + 1),
                progress=ctx.progress,
                phase="abl.train",
                stop=ctx.budget,
                distributed=ctx.dist,
            )
            epochs += len(h2.epochs)
            stages.append(
                StageRecord(
                    "train-rest",
                    time.perf_counter() - t1,
                    epochs=len(h2.epochs),
                    steps=h2.steps,
                    details={"final_loss": h2.final_loss, "samples": int(keep.sum())},
                )
            )
        t2 = time.perf_counter()
        if cfg.unlearning_epochs and len(suspected) and not ctx.budget.exhausted:
            sus_d = suspected.to(dev)
            h3 = train_model(
                ctx.model,
                ctx.x[sus_d],
                ctx.y[sus_d],
                cfg.train_config(
                    cfg.unlearning_epochs,
                    lr=cfg.unlearning_lr,
                    schedule="constant",
                    batch_size=cfg.unlearning_batch_size,
                ),
                runtime=ctx.runtime.with_updates(seed=ctx.runtime.seed + 2),
                progress=ctx.progress,
                loss_fn=_ascent,
                phase="abl.unlearn",
                stop=ctx.budget,
                distributed=ctx.dist,
            )
            _, _, correct = sample_scores(
                ctx.model, ctx.x[sus_d], ctx.y[sus_d], runtime=ctx.runtime
            )
            stages.append(
                StageRecord(
                    "unlearning",
                    time.perf_counter() - t2,
                    epochs=len(h3.epochs),
                    steps=h3.steps,
                    details={
                        "final_loss": h3.final_loss,
                        "isolated_accuracy_after": float(correct.float().mean()),
                    },
                )
            )
        return RobustOutcome(
            model=ctx.model,
            suspected=suspected,
            scores=suspicion,
            stages=stages,
            epochs=epochs,
            isolation_history=history,
        )

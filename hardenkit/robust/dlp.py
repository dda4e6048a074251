"""``dlp``: the Decoupled Learning Process (Ying & Wu, *Cybersecurity* 6:9, 2023), reconstructed.

No public code exists and the full paper could not be read (ALGORITHMS.md §4, provenance
[R/I]); this is the three-stage procedure of the abstract, with our own choices:

1. **Supervised learning** — ``sl_epochs`` of cross-entropy on every sample. The backdoor task
   is learned much faster than the clean task, so poisoned samples end up with confident,
   low-loss (low-entropy) predictions.
2. **Active unlearning** — score every sample (``score``: cross-entropy on its label, or
   predictive entropy), flag the lowest ``isolation_ratio`` (or those below
   ``isolation_threshold``; globally or ``per_class``), then unlearn the flagged set: each
   step ascends a *bounded* cross-entropy on a flagged batch (every per-sample loss capped at
   ``unlearn_bound``, so it cannot run off) while descending on a batch of the rest, and the
   stage stops as soon as the flagged set's accuracy on its own labels falls to
   ``unlearn_stop_accuracy`` (or after ``unlearn_epochs``).
3. **Active semi-supervised fine-tuning** — the flagged samples lose their labels (with
   ``ssl_init="restart"`` the model first goes back to its initial weights); FixMatch
   (weak = crop + flip, strong = + colour jitter, noise, cutout; confidence threshold
   ``fixmatch_threshold``) fine-tunes on labeled + unlabeled data for ``ssl_epochs``. Every
   ``rescore_every`` epochs all samples are re-scored with the current model and labeled
   samples move to the unlabeled set from the ends of the loss ranking: the
   ``rescore_high_ratio`` highest (once the backdoor is unlearned a poisoned sample is a
   *mislabeled* one: the model disagrees with its given label) and, optionally, the
   ``rescore_low_ratio`` lowest (the idea: a missed poisoned sample re-learns the backdoor
   fast. Off by default: on CIFAR-10 eight such moves took only clean samples, the recall
   stayed at 0.88, while the high end alone took it to 0.99). Moves
   are one-way (a flagged sample never gets its label back): a first version that redrew the
   whole split by high loss alone let the missed poison back in and re-planted BadNets on
   CIFAR-10 (recall 0.85 → 0.03), while on the synthetic data, where the clean task is learned
   as fast as the backdoor and the first isolation misses, the high-loss end is what finds
   the poison.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from .._utils.seeding import make_generator
from ..data.datasets import to_float_pixels
from ..logging import get_logger
from ..training import build_optimizer, build_scheduler, predict, train_model
from .base import (
    TRAINERS,
    RobustConfig,
    RobustContext,
    RobustOutcome,
    RobustStrategy,
    StageRecord,
    finite_or_raise,
    isolation_record,
    prediction_source,
    sample_scores,
    select_suspects,
)
from .semi import fixmatch_loss, strong_augment, weak_augment

__all__ = ["DLPConfig", "DLPStrategy"]

_log = get_logger("hardenkit.robust.dlp")


class DLPConfig(RobustConfig):
    """Decoupled learning process (supervised → active unlearning → active semi-supervised).

    Attributes:
        sl_epochs: stage 1, supervised epochs on every sample (constant learning rate ``lr``:
            the model should over-learn the backdoor, not converge).
        sl_augment: crop + flip in stage 1. Off by default: augmentation moves and mirrors
            position-bound triggers (a corner patch) and slows the backdoor's learning, which
            the isolation relies on (measured on CIFAR-10: with it, 3 epochs did not plant
            BadNets and the isolation precision was 4 %).
        score: suspicion score of stage 2: ``loss`` (cross-entropy on the given label) or
            ``entropy`` (predictive entropy, label-free); the lowest are suspected.
        isolation_ratio: share of the training set flagged (used when
            ``isolation_threshold`` is ``None``).
        isolation_threshold: flag every sample whose score is below this value instead.
        per_class: take ``isolation_ratio`` within each class instead of globally (weaker
            for all-to-one attacks, whose poison sits in one class).
        unlearn_epochs: stage 2, the most passes over the flagged set.
        unlearn_lr: SGD learning rate of the unlearning (constant).
        unlearn_bound: cap on each flagged sample's ascended cross-entropy.
        unlearn_weight: weight of the ascent term against the descent on the rest.
        unlearn_stop_accuracy: stop unlearning once the flagged set's accuracy on its given
            labels is at most this.
        unlearn_objective: ``ascent`` — gradient ascent on the flagged samples' cross-entropy
            (bounded by ``unlearn_bound``); ``uniform`` — cross-entropy to the uniform
            distribution (the flagged samples' shared feature is made to say nothing). Neither
            changed where a Blended or SIG trigger ended up on CIFAR-10 (see
            ``ssl_flagged``); ``ascent`` is kept as the default.
        ssl_flagged: how the first isolation's flagged samples take part in stage 3 as
            unlabeled data (FixMatch pseudo-labels). ``all``: every one (the first
            reconstruction). On CIFAR-10 (seed 0) that *redirected* global-trigger backdoors:
            FixMatch's confident pseudo-labels on images sharing a trigger collapsed them into
            one class — 99.8 % of Blended- and 95 % of SIG-triggered test images went to one
            non-target class (ASR 0, robust accuracy 11-13 %). ``none``: they sit stage 3 out
            (Blended RA 46 %, but BadNets ASR 11.8 % instead of 6.7 %: pseudo-labels on
            patched images by their content help remove a patch). ``guarded`` (default): every
            epoch, the flagged samples of the flagged set's dominant label that the model
            predicts as another class are left out when more than ``collapse_share`` of them
            go to one class (the report's source test): BadNets 6.7 % ASR as ``all``, Blended
            RA 33 % (51 % to one class), SIG RA 23 % (58 %).
        collapse_share: the one-class share above which ``guarded`` leaves them out.
        ssl_init: where stage 3 starts. ``continue``: from the unlearned model (the paper's
            "fine-tuning"). ``restart``: from the weights the model had when training began
            (stage 2 then only isolates; the unlearning is skipped, its model would be thrown
            away), so no feature learned from the poison in stage 1 survives into the final
            model and FixMatch's pseudo-labels on the flagged images come from a model that
            never learned the trigger. On CIFAR-10 (``ssl_epochs=12``, two seeds) it removed
            Blended (robust accuracy 52-54 %, as a model trained without the poison) where
            ``continue`` redirected it (33-42 %), at 1.4-2.3 BA points below plain training;
            BadNets 8.0 / 4.0 % ASR; SIG still redirected on one seed; on clean data 4-6 BA
            points below ``continue``. Give it about your plain training's epochs.
        ssl_epochs: stage 3, semi-supervised fine-tuning epochs (passes over the labeled set).
        ssl_lr: peak SGD learning rate of stage 3 (cosine to 0).
        rescore_every: re-score all samples every this many stage-3 epochs (0 = never;
            ``None`` = 1 with ``ssl_init="continue"``, never with ``restart``: a model
            trained from scratch finds its hardest clean samples at the high-loss end; on
            CIFAR-10 re-scoring every third epoch cost 0.5-0.7 BA points and took BadNets'
            ASR only from 8.0 to 6.9 %).
        rescore_low_ratio: share of the training set moved from the labeled to the unlabeled
            set at each re-scoring: the lowest-loss labeled samples.
        rescore_high_ratio: ... and the highest-loss labeled samples.
        fixmatch_threshold: confidence a weak view's prediction needs to become a pseudo-label.
        unlabeled_weight: weight of the unlabeled (FixMatch) loss.
        unlabeled_ratio: unlabeled images per labeled image in a step; ``None`` = the ratio of
            the set sizes (every unlabeled sample once per epoch).
    """

    sl_epochs: Annotated[int, Field(ge=1)] = 3
    sl_augment: bool = False
    score: Literal["loss", "entropy"] = "loss"
    isolation_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.25
    isolation_threshold: Annotated[float, Field(ge=0)] | None = None
    per_class: bool = False
    unlearn_epochs: Annotated[int, Field(ge=0)] = 5
    unlearn_objective: Literal["ascent", "uniform"] = "ascent"
    ssl_flagged: Literal["all", "guarded", "none"] = "guarded"
    collapse_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    ssl_init: Literal["continue", "restart"] = "continue"
    unlearn_lr: Annotated[float, Field(gt=0)] = 0.01
    unlearn_bound: Annotated[float, Field(gt=0)] = 5.0
    unlearn_weight: Annotated[float, Field(gt=0)] = 1.0
    unlearn_stop_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.2
    ssl_epochs: Annotated[int, Field(ge=1)] = 10
    ssl_lr: Annotated[float, Field(gt=0)] = 0.05
    rescore_every: Annotated[int, Field(ge=0)] | None = None
    rescore_low_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    rescore_high_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.025
    fixmatch_threshold: Annotated[float, Field(gt=0, le=1)] = 0.95
    unlabeled_weight: Annotated[float, Field(ge=0)] = 1.0
    unlabeled_ratio: Annotated[float, Field(gt=0)] | None = None

    @property
    def rescore_period(self) -> int:
        """``rescore_every`` with ``None`` resolved (1 when continuing, 0 on a restart)."""
        if self.rescore_every is not None:
            return self.rescore_every
        return 0 if self.ssl_init == "restart" else 1


@TRAINERS.decorator("dlp")
class DLPStrategy(RobustStrategy):
    """Supervised learning → active unlearning → active semi-supervised fine-tuning."""

    name = "dlp"
    config_cls = DLPConfig
    config: DLPConfig

    def estimate_epochs(self) -> float:
        c = self.config
        r = c.isolation_ratio
        mu = c.unlabeled_ratio if c.unlabeled_ratio is not None else r / (1 - r)
        ssl = c.ssl_epochs * (1 - r) * (1 + 2 * mu)
        unlearn = 0 if c.ssl_init == "restart" else c.unlearn_epochs * r * 2
        return c.sl_epochs + unlearn + ssl

    # -- stage 2 ----------------------------------------------------------------------------

    def _flag(self, ctx: RobustContext) -> tuple[Tensor, Tensor]:
        cfg = self.config
        ce, ent, _ = sample_scores(ctx.model, ctx.x, ctx.y, runtime=ctx.runtime)
        score = ce if cfg.score == "loss" else ent
        suspicion = -score
        suspected = select_suspects(
            suspicion,
            ctx.y.cpu(),
            ratio=cfg.isolation_ratio,
            threshold=None if cfg.isolation_threshold is None else -cfg.isolation_threshold,
            per_class=cfg.per_class,
            num_classes=ctx.num_classes,
        )
        return suspected, suspicion

    def _unlearn(self, ctx: RobustContext, flagged: Tensor) -> dict[str, Any]:
        cfg = self.config
        dev = ctx.x.device
        model = ctx.model
        n = len(ctx.y)
        rest_mask = torch.ones(n, dtype=torch.bool)
        rest_mask[flagged] = False
        rest = torch.nonzero(rest_mask).flatten().to(dev)
        fl = flagged.to(dev)
        info: dict[str, Any] = {"flagged": len(flagged), "steps": 0, "epochs": 0}
        if cfg.unlearn_epochs == 0 or len(fl) == 0:
            info["stopped_by"] = "disabled" if cfg.unlearn_epochs == 0 else "nothing flagged"
            return info
        _, _, corr = sample_scores(model, ctx.x[fl], ctx.y[fl], runtime=ctx.runtime)
        acc = float(corr.float().mean())
        info["flagged_accuracy_before"] = acc
        curve = [acc]
        bs = ctx_batch = self.config.batch_size
        steps_per_epoch = max(1, math.ceil(len(fl) / bs))
        opt = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.unlearn_lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        gen = make_generator(ctx.runtime.seed + 11, dev)
        stopped_by = "max epochs"
        if acc <= cfg.unlearn_stop_accuracy:
            stopped_by = "accuracy"
        else:
            for epoch in range(cfg.unlearn_epochs):
                model.train()
                perm = fl[torch.randperm(len(fl), generator=gen, device=dev)]
                for s in range(steps_per_epoch):
                    if ctx.budget():
                        break
                    fb = perm[s * bs : (s + 1) * bs]
                    rb = rest[torch.randint(0, len(rest), (ctx_batch,), generator=gen, device=dev)]
                    xf = to_float_pixels(ctx.x[fb])
                    xr = to_float_pixels(ctx.x[rb]) if len(rest) else xf[:0]
                    if cfg.augment:
                        xf = weak_augment(xf, gen)
                        xr = weak_augment(xr, gen) if len(xr) else xr
                    logits = model(torch.cat([xf, xr])).float()
                    if cfg.unlearn_objective == "uniform":
                        # cross-entropy to the uniform distribution: the flagged samples'
                        # shared feature (the trigger) is made to say nothing, rather than
                        # pushed to whichever class ascent finds next
                        loss = -cfg.unlearn_weight * (
                            F.log_softmax(logits[: len(fb)], dim=1).mean(dim=1).mean()
                        )
                    else:
                        ce_f = F.cross_entropy(logits[: len(fb)], ctx.y[fb], reduction="none")
                        ascent = ce_f.clamp(max=cfg.unlearn_bound).mean()
                        loss = -cfg.unlearn_weight * ascent
                    if len(xr):
                        loss = loss + F.cross_entropy(logits[len(fb) :], ctx.y[rb])
                    finite_or_raise(loss, "unlearning")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                    info["steps"] += 1
                info["epochs"] = epoch + 1
                _, _, corr = sample_scores(model, ctx.x[fl], ctx.y[fl], runtime=ctx.runtime)
                acc = float(corr.float().mean())
                curve.append(acc)
                ctx.progress("dlp.unlearn", epoch + 1, cfg.unlearn_epochs, acc=acc)
                if ctx.budget.exhausted:
                    stopped_by = "budget"
                    break
                if acc <= cfg.unlearn_stop_accuracy:
                    stopped_by = "accuracy"
                    break
        opt.zero_grad(set_to_none=True)
        model.eval()
        info["flagged_accuracy_after"] = acc
        info["flagged_accuracy_curve"] = curve
        info["stopped_by"] = stopped_by
        return info

    # -- stage 3 ----------------------------------------------------------------------------

    def _rescore(self, ctx: RobustContext, suspected: Tensor) -> tuple[Tensor, Tensor]:
        """Add the lowest- and highest-loss labeled samples to ``suspected``.

        Returns the new suspected set and the suspicion scores (the cross-entropy's distance
        from its median, higher = more suspicious at either end).
        """
        cfg = self.config
        ce, _, _ = sample_scores(ctx.model, ctx.x, ctx.y, runtime=ctx.runtime)
        n = len(ce)
        labeled = torch.ones(n, dtype=torch.bool)
        labeled[suspected] = False
        picks = [suspected]
        for ratio, sign in ((cfg.rescore_low_ratio, -1.0), (cfg.rescore_high_ratio, 1.0)):
            k = min(round(ratio * n), int(labeled.sum()))
            if k <= 0:
                continue
            key = sign * ce
            key[~labeled] = -torch.inf
            idx = torch.topk(key, k).indices
            labeled[idx] = False
            picks.append(idx)
        suspicion = (ce - ce.median()).abs()
        return torch.sort(torch.cat(picks)).values, suspicion

    def _ssl(
        self, ctx: RobustContext, suspected: Tensor, history: list[dict[str, Any]], epoch0: int
    ) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
        cfg = self.config
        flagged = suspected
        dev = ctx.x.device
        model = ctx.model
        n = len(ctx.y)
        count = len(suspected)
        tcfg = cfg.train_config(cfg.ssl_epochs, lr=cfg.ssl_lr)
        opt = build_optimizer([p for p in model.parameters() if p.requires_grad], tcfg)
        n_lab = max(1, n - count)
        bs = min(cfg.batch_size, n_lab)
        steps_per_epoch = max(1, n_lab // bs)
        sched = build_scheduler(opt, tcfg, steps_per_epoch * cfg.ssl_epochs)
        gen = make_generator(ctx.runtime.seed + 23, dev)
        suspicion: Tensor | None = None
        info: dict[str, Any] = {"steps": 0, "epochs": 0, "mask_rate": [], "loss": []}
        for epoch in range(cfg.ssl_epochs):
            every = cfg.rescore_period
            if epoch > 0 and every and epoch % every == 0:
                new, suspicion = self._rescore(ctx, suspected)
                history.append(
                    isolation_record(
                        ctx,
                        new,
                        epoch=epoch0 + epoch,
                        stage="ssl-rescore",
                        moved_to_unlabeled=len(new) - len(suspected),
                        moved_to_labeled=0,
                    )
                )
                suspected = new
            lab_mask = torch.ones(n, dtype=torch.bool)
            lab_mask[suspected] = False
            lab = torch.nonzero(lab_mask).flatten().to(dev)
            unl = suspected.to(dev)
            drop = None
            if cfg.ssl_flagged == "none":  # the first isolation's samples sit stage 3 out
                drop = flagged
            elif cfg.ssl_flagged == "guarded" and len(flagged):
                # the report's source test, every epoch: the flagged samples of the flagged
                # set's dominant label that the model predicts as another class. Poison drawn
                # from every class spreads over its true classes; images that share a
                # trigger collapse into one class, and FixMatch's pseudo-labels would then
                # teach the trigger -> that class (a redirected backdoor): leave those out
                fpred = predict(model, ctx.x[flagged.to(dev)], runtime=ctx.runtime).argmax(1)
                _, off, top, share = prediction_source(ctx.y.cpu()[flagged], fpred, ctx.num_classes)
                if share is not None and share > cfg.collapse_share:
                    drop = flagged[off & (fpred == top)]
                info.setdefault("flagged_source_share", []).append(share or 0.0)
                info.setdefault("left_out", []).append(0 if drop is None else len(drop))
            if drop is not None:
                keep_unl = torch.ones(n, dtype=torch.bool)
                keep_unl[drop] = False
                unl = suspected[keep_unl[suspected]].to(dev)
            mu = (
                cfg.unlabeled_ratio
                if cfg.unlabeled_ratio is not None
                else len(unl) / max(1, len(lab))
            )
            ub = min(len(unl), max(1, round(mu * bs))) if len(unl) else 0
            model.train()
            perm = lab[torch.randperm(len(lab), generator=gen, device=dev)]
            uperm = unl[torch.randperm(len(unl), generator=gen, device=dev)] if ub else unl
            tot = torch.zeros((), device=dev)
            masks = torch.zeros((), device=dev)
            seen = 0
            for s in range(steps_per_epoch):
                if ctx.budget():
                    break
                lb = perm[s * bs : (s + 1) * bs]
                if len(lb) == 0:  # the labeled set shrank at a re-scoring
                    break
                xl = weak_augment(to_float_pixels(ctx.x[lb]), gen)
                if ub:
                    start = (s * ub) % len(uperm)
                    ui = uperm[start : start + ub]
                    if len(ui) < ub:
                        ui = torch.cat([ui, uperm[: ub - len(ui)]])
                    xu = to_float_pixels(ctx.x[ui])
                    xw, xs = weak_augment(xu, gen), strong_augment(xu, gen)
                else:
                    xw = xs = xl[:0]
                loss, _, mask = fixmatch_loss(
                    model,
                    xl,
                    ctx.y[lb],
                    xw,
                    xs,
                    threshold=cfg.fixmatch_threshold,
                    unlabeled_weight=cfg.unlabeled_weight,
                )
                finite_or_raise(loss, "semi-supervised")
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                info["steps"] += 1
                tot += loss.detach()
                masks += mask.detach()
                seen += 1
            if seen == 0:
                break
            info["epochs"] = epoch + 1
            info["loss"].append(float(tot) / seen)
            info["mask_rate"].append(float(masks) / seen)
            ctx.progress(
                "dlp.ssl",
                epoch + 1,
                cfg.ssl_epochs,
                loss=float(tot) / seen,
                mask=float(masks) / seen,
            )
            if ctx.budget.exhausted:
                break
        opt.zero_grad(set_to_none=True)
        model.eval()
        return suspected, suspicion, info

    def fit(self, ctx: RobustContext) -> RobustOutcome:
        cfg = self.config
        stages: list[StageRecord] = []
        t0 = time.perf_counter()
        initial = (
            {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
            if cfg.ssl_init == "restart"
            else None
        )
        h1 = train_model(
            ctx.model,
            ctx.x,
            ctx.y,
            cfg.train_config(cfg.sl_epochs, augment=cfg.sl_augment, schedule="constant"),
            runtime=ctx.runtime,
            progress=ctx.progress,
            phase="dlp.supervised",
            stop=ctx.budget,
            distributed=ctx.dist,
        )
        stages.append(
            StageRecord(
                "supervised",
                time.perf_counter() - t0,
                epochs=len(h1.epochs),
                steps=h1.steps,
                details={"final_loss": h1.final_loss},
            )
        )
        t1 = time.perf_counter()
        flagged, suspicion = self._flag(ctx)
        history = [
            isolation_record(
                ctx, flagged, epoch=len(h1.epochs), stage="unlearning", score=cfg.score
            )
        ]
        steps0 = ctx.budget.steps
        if ctx.budget.exhausted:
            info: dict[str, Any] = {"skipped": "budget"}
        elif initial is not None:
            info = {"skipped": "ssl_init=restart (stage 3 starts from the initial weights)"}
        else:
            info = self._unlearn(ctx, flagged)
        stages.append(
            StageRecord(
                "active-unlearning",
                time.perf_counter() - t1,
                epochs=int(info.get("epochs", 0)),
                steps=ctx.budget.steps - steps0,
                details=info,
            )
        )
        _log.debug("robust.dlp.unlearned", **{k: v for k, v in info.items() if k != "steps"})
        suspected = flagged
        final_scores: Tensor = suspicion
        epochs = len(h1.epochs)
        if not ctx.budget.exhausted:
            t2 = time.perf_counter()
            steps0 = ctx.budget.steps
            if initial is not None:
                ctx.model.load_state_dict(initial)
            suspected, resc, sinfo = self._ssl(ctx, flagged, history, epochs)
            if resc is not None:
                final_scores = resc
            epochs += int(sinfo["epochs"])
            stages.append(
                StageRecord(
                    "active-semi-supervised",
                    time.perf_counter() - t2,
                    epochs=int(sinfo["epochs"]),
                    steps=ctx.budget.steps - steps0,
                    details={k: v for k, v in sinfo.items() if k != "steps"},
                )
            )
        return RobustOutcome(
            model=ctx.model,
            suspected=suspected,
            scores=final_scores,
            stages=stages,
            epochs=epochs,
            isolation_history=history,
            details={"score": cfg.score},
        )

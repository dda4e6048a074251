"""MM-BD: data-free, pattern-agnostic detection by per-class maximum margins (ALGORITHMS.md §5.2).

A backdoor gives its target class a shortcut: some input (the trigger) drives the target
logit far above every other logit. For each class y we estimate the maximum achievable margin
``max_x [f_y(x) - max_{j != y} f_j(x)]`` by gradient ascent from random images (no clean data
needed), then test whether the largest class margin is an outlier: a gamma density is fitted
to the other K-1 margins and the p-value ``1 - F(max) ** K`` is compared with ``alpha``.

Defaults follow the reference code (wanghangpsu/MM-BD ``univ_bd.py``): 30 random starts per
class, plain gradient steps (SGD, lr 0.01; the reference re-creates its momentum optimiser every
step, so momentum never acts) on images that the model sees clamped to [0, 1], at most 300
steps, a class stopping once its loss changes by less than 1e-5 (relative), and a
3-parameter gamma fitted by maximum likelihood with exponent K
(:func:`~hardenkit.scan.anomaly.gamma3_max_pvalue`). ``optimizer="adam"`` / ``fit="moments"``
keep hardenkit's earlier choices (Adam with projection; a 2-parameter method-of-moments fit
with exponent K-1).
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Literal

import torch
from pydantic import Field

from ..logging import get_logger
from .anomaly import gamma3_max_pvalue, gamma_max_pvalue, logistic_score, mad_anomaly
from .base import DETECTORS, Detector, DetectorConfig, DetectorContext, DetectorOutput, Inversion

__all__ = ["MaxMarginConfig", "MaxMarginDetector"]

_log = get_logger("scan.mm_bd")


class MaxMarginConfig(DetectorConfig):
    """MM-BD settings.

    Attributes:
        starts: random initial images per class; the class statistic is the best of them
            (the reference: 30).
        steps: most gradient-ascent steps (the reference: 300).
        lr: step size on the pixels (the reference: 0.01).
        optimizer: ``sgd`` — plain gradient steps on unconstrained images that the model sees
            clamped to [0, 1] (the reference); ``adam`` — Adam, images projected back into
            [0, 1] after every step (hardenkit's earlier default).
        tolerance: a class stops once its loss changes by less than this fraction between
            steps (the reference: 1e-5; 0 = never).
        fit: the null density of the K-1 smaller margins: ``ml`` — a 3-parameter gamma by
            maximum likelihood, p-value ``1 - F(max) ** K`` (the reference); ``moments`` — a
            2-parameter gamma by the method of moments, ``1 - F(max) ** (K - 1)``.
        alpha: the model is backdoored when the p-value is below ``alpha`` (0.05).
        max_images_per_step: upper bound on images in one forward pass (classes are chunked).
    """

    starts: Annotated[int, Field(ge=1)] = 30
    steps: Annotated[int, Field(ge=1)] = 300
    lr: Annotated[float, Field(gt=0)] = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"
    tolerance: Annotated[float, Field(ge=0)] = 1e-5
    fit: Literal["ml", "moments"] = "ml"
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    max_images_per_step: Annotated[int, Field(ge=1)] = 4096


class MaxMarginDetector(Detector):
    """MM-BD (Wang et al., IEEE S&P 2024): needs no clean data, assumes no trigger shape.

    Example:
        >>> from hardenkit.scan import MaxMarginDetector
        >>> MaxMarginDetector({"steps": 10}).needs_data
        False
    """

    name = "mm-bd"
    config_cls = MaxMarginConfig
    needs_data = False
    shardable = True
    config: MaxMarginConfig

    def invert(self, ctx: DetectorContext) -> Inversion:
        cfg = self.config
        t0 = time.perf_counter()
        labels = list(ctx.labels)
        c, h, w = ctx.image_shape
        g = torch.Generator().manual_seed(ctx.seed + 7)
        # drawn for all the scan's labels, then this call's rows: the same start on any rank
        rows = torch.tensor(ctx.label_positions(), dtype=torch.long)
        x = torch.rand(ctx.num_all_labels, cfg.starts, c, h, w, generator=g)[rows].to(ctx.device)
        x.requires_grad_(True)
        adam = torch.optim.Adam([x], lr=cfg.lr) if cfg.optimizer == "adam" else None
        tgt = torch.tensor(labels, device=ctx.device)
        chunk = max(1, cfg.max_images_per_step // cfg.starts)
        active = torch.ones(len(labels), dtype=torch.bool)
        last = torch.full((len(labels),), math.inf, dtype=torch.float64)
        stopped_at = torch.full((len(labels),), cfg.steps, dtype=torch.int64)
        cut = False
        step = 0
        for step in range(cfg.steps):
            if ctx.out_of_time():
                cut = True
                break
            idx = torch.nonzero(active).flatten().tolist()
            if not idx:
                break
            if x.grad is not None:
                x.grad.zero_()
            loss = torch.zeros(len(labels), dtype=torch.float64)
            for c0 in range(0, len(idx), chunk):
                sel = idx[c0 : c0 + chunk]
                m = self._margins(ctx, x[sel], tgt[sel], clamp=cfg.optimizer == "sgd")
                (-m.sum()).backward()  # type: ignore[no-untyped-call]
                loss[sel] = -m.detach().double().sum(1).cpu()
            assert x.grad is not None
            if adam is not None:
                # a stopped class stays where it stopped (Adam's momentum would move it on
                # while other classes run, making its margin depend on the other classes)
                stopped = ~active.to(x.device)
                frozen = x.detach()[stopped].clone() if bool(stopped.any()) else None
                adam.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
                    if frozen is not None:
                        x[stopped] = frozen
            else:
                with torch.no_grad():
                    x[idx] -= cfg.lr * x.grad[idx]
            if cfg.tolerance > 0:
                for i in idx:  # the reference's per-class stop on a flat loss
                    if abs(float(last[i]) - float(loss[i])) < cfg.tolerance * abs(float(last[i])):
                        active[i] = False
                        stopped_at[i] = step + 1
                last = torch.where(active, loss, last)
            if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
                ctx.progress("scan[mm-bd]", step + 1, cfg.steps, active=int(active.sum()))
        with torch.no_grad():
            final = torch.cat(
                [
                    self._margins(ctx, x[c0 : c0 + chunk], tgt[c0 : c0 + chunk], clamp=True)
                    for c0 in range(0, len(labels), chunk)
                ]
            )
        best = final.max(dim=1).values.double().cpu().tolist()
        return Inversion(
            detector=self.name,
            statistic="max_margin",
            suspicious_side="high",
            labels=labels,
            values=dict(zip(labels, best, strict=True)),
            seconds=time.perf_counter() - t0,
            per_label={y: {"steps": int(n)} for y, n in zip(labels, stopped_at, strict=True)},
            info={
                "budget_exhausted": cut,
                "steps_done": step + 1 if not cut else step,
                "optimizer": cfg.optimizer,
            },
        )

    def decide(self, inversion: Inversion) -> DetectorOutput:
        cfg = self.config
        t0 = time.perf_counter()
        labels = list(inversion.labels)
        best = [inversion.values[y] for y in labels]
        fit = cfg.fit if len(best) >= 4 else "moments"  # 3 parameters need >= 3 null values
        if fit == "ml":
            p, arg = gamma3_max_pvalue(best)
        else:
            p, arg = gamma_max_pvalue(best)
        # The per-class MAD index is reported for reference only; the verdict uses the p-value.
        stats = mad_anomaly(best, side="high", labels=labels)
        evidence = -math.log10(max(p, 1e-300))
        threshold = -math.log10(cfg.alpha)
        flagged = [labels[arg]] if p < cfg.alpha else []
        _log.debug("scan.detector_done", detector=self.name, p_value=p, top=labels[arg])
        info = dict(inversion.info)
        return DetectorOutput(
            detector=self.name,
            statistic="max_margin",
            suspicious_side="high",
            values=dict(zip(labels, best, strict=True)),
            anomaly_per_label=dict(zip(labels, stats.per_label, strict=True)),
            per_label=dict(inversion.per_label),
            anomaly_index=stats.index,
            evidence=evidence,
            threshold=threshold,
            flagged=flagged,
            score=logistic_score(evidence, threshold, cfg.score_slope),
            seconds=inversion.seconds + time.perf_counter() - t0,
            p_value=p,
            info={
                "alpha": cfg.alpha,
                "median": stats.median,
                "mad": stats.mad,
                "budget_exhausted": bool(info.pop("budget_exhausted", False)),
                "steps_done": info.pop("steps_done", None),
                "fit": fit,
                "optimizer": info.pop("optimizer", cfg.optimizer),
                **info,
            },
        )

    @staticmethod
    def _margins(
        ctx: DetectorContext, xs: torch.Tensor, tgt: torch.Tensor, *, clamp: bool = False
    ) -> torch.Tensor:
        """Margins ``f_y(x) - max_{j != y} f_j(x)`` for images ``xs`` (L, S, C, H, W)."""
        lab, s = xs.shape[:2]
        flat = xs.reshape(lab * s, *xs.shape[2:])
        if clamp:
            flat = flat.clamp(0, 1)
        with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
            logits = ctx.model(flat)
        logits = logits.float().view(lab, s, -1)
        own = logits.gather(2, tgt.view(lab, 1, 1).expand(lab, s, 1)).squeeze(2)
        others = logits.scatter(2, tgt.view(lab, 1, 1).expand(lab, s, 1), float("-inf"))
        margin: torch.Tensor = own - others.max(dim=2).values
        return margin


DETECTORS.register(MaxMarginDetector.name, MaxMarginDetector)

"""MM-BD: data-free, pattern-agnostic detection by per-class maximum margins (ALGORITHMS.md §5.2).

A backdoor gives its target class a shortcut: some input (the trigger) drives the target
logit far above every other logit. For each class y we estimate the maximum achievable margin
``max_x [f_y(x) - max_{j != y} f_j(x)]`` by projected gradient ascent from random images
(no clean data needed), then test whether the largest class margin is an outlier: a gamma
density is fitted to the other K-1 margins and the order-statistic p-value
``1 - F(max) ** (K - 1)`` is compared with ``alpha``.

The optimiser settings (random starts, steps, Adam lr) are hardenkit's choices — the spec does
not give the reference values — and are configurable.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

import torch
from pydantic import Field

from ..logging import get_logger
from .anomaly import gamma_max_pvalue, logistic_score, mad_anomaly
from .base import DETECTORS, Detector, DetectorConfig, DetectorContext, DetectorOutput

__all__ = ["MaxMarginConfig", "MaxMarginDetector"]

_log = get_logger("scan.mm_bd")


class MaxMarginConfig(DetectorConfig):
    """MM-BD settings.

    Attributes:
        starts: random initial images per class; the class statistic is the best of them.
        steps: gradient-ascent steps.
        lr: Adam learning rate on the pixels (projected back to [0, 1] after every step).
        alpha: the model is backdoored when the order-statistic p-value is below ``alpha``.
        max_images_per_step: upper bound on images in one forward pass (classes are chunked).
    """

    starts: Annotated[int, Field(ge=1)] = 16
    steps: Annotated[int, Field(ge=1)] = 300
    lr: Annotated[float, Field(gt=0)] = 0.01
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
    config: MaxMarginConfig

    def detect(self, ctx: DetectorContext) -> DetectorOutput:
        cfg = self.config
        t0 = time.perf_counter()
        labels = list(ctx.labels)
        c, h, w = ctx.image_shape
        g = torch.Generator().manual_seed(ctx.seed + 7)
        x = torch.rand(len(labels), cfg.starts, c, h, w, generator=g).to(ctx.device)
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cfg.lr)
        tgt = torch.tensor(labels, device=ctx.device)
        chunk = max(1, cfg.max_images_per_step // cfg.starts)
        margins = torch.zeros(len(labels), cfg.starts, device=ctx.device)
        cut = False
        for step in range(cfg.steps):
            if ctx.out_of_time():
                cut = True
                break
            opt.zero_grad(set_to_none=False)
            for c0 in range(0, len(labels), chunk):
                xs = x[c0 : c0 + chunk]
                m = self._margins(ctx, xs, tgt[c0 : c0 + chunk])
                (-m.sum()).backward()  # type: ignore[no-untyped-call]
                margins[c0 : c0 + chunk] = m.detach()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
                ctx.progress("scan[mm-bd]", step + 1, cfg.steps)
        with torch.no_grad():
            final = torch.cat(
                [
                    self._margins(ctx, x[c0 : c0 + chunk], tgt[c0 : c0 + chunk])
                    for c0 in range(0, len(labels), chunk)
                ]
            )
        best = final.max(dim=1).values.double().cpu().tolist()
        p, arg = gamma_max_pvalue(best)
        # The per-class MAD index is reported for reference only; the verdict uses the p-value.
        stats = mad_anomaly(best, side="high", labels=labels)
        evidence = -math.log10(max(p, 1e-300))
        threshold = -math.log10(cfg.alpha)
        flagged = [labels[arg]] if p < cfg.alpha else []
        _log.debug("scan.detector_done", detector=self.name, p_value=p, top=labels[arg])
        return DetectorOutput(
            detector=self.name,
            statistic="max_margin",
            suspicious_side="high",
            values=dict(zip(labels, best, strict=True)),
            anomaly_per_label=dict(zip(labels, stats.per_label, strict=True)),
            anomaly_index=stats.index,
            evidence=evidence,
            threshold=threshold,
            flagged=flagged,
            score=logistic_score(evidence, threshold, cfg.score_slope),
            seconds=time.perf_counter() - t0,
            p_value=p,
            info={
                "alpha": cfg.alpha,
                "median": stats.median,
                "mad": stats.mad,
                "budget_exhausted": cut,
                "steps_done": step + 1 if not cut else step,
            },
        )

    @staticmethod
    def _margins(ctx: DetectorContext, xs: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Margins ``f_y(x) - max_{j != y} f_j(x)`` for images ``xs`` (L, S, C, H, W)."""
        lab, s = xs.shape[:2]
        with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
            logits = ctx.model(xs.reshape(lab * s, *xs.shape[2:]))
        logits = logits.float().view(lab, s, -1)
        own = logits.gather(2, tgt.view(lab, 1, 1).expand(lab, s, 1)).squeeze(2)
        others = logits.scatter(2, tgt.view(lab, 1, 1).expand(lab, s, 1), float("-inf"))
        margin: torch.Tensor = own - others.max(dim=2).values
        return margin


DETECTORS.register(MaxMarginDetector.name, MaxMarginDetector)

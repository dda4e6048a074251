"""Smooth-signal inversion: the smallest low-frequency signal that, added to clean images,
sends them to each label.

Whole-image additive triggers — SIG's sinusoid, stripes, colour gradients, a smooth pattern
blended in at a low alpha — change every pixel a little. Neural Cleanse's mask form describes
them badly (a mask over the whole image at a low value, whose effect depends on the image),
PixelBackdoor's pixel count is the whole image for every label, and an unrestricted additive
inversion finds a universal adversarial perturbation for *every* label at about the same size
(``benchmarks/results/smooth_signal_probe.md``: the target of a stripes backdoor needed 0.71 of
the median label's RMS there, natural labels of clean and WaNet models down to 0.73). This
detector inverts the *smooth* additive family instead, the way the ``warp`` detector inverts
WaNet's: for every candidate label y a ``k × k`` grid of control values per channel,
bicubically upsampled to ``H × W``, is the signal

    delta_y = upsample(theta_y),   x' = clamp(x + delta_y, 0, 1)

optimised with ``CE(f(x'), y) + cost_y · RMS(delta_y)`` on clean images of the *other*
classes that the model does not already put in ``y``. A low-frequency signal cannot imitate
the fine textures that a natural class's universal perturbation is made of, so natural labels
need a large one, while a backdoor whose trigger is (or is reachable by) a smooth signal is
reached by a small one. The cost follows Neural Cleanse's schedule per label (``× m`` after
``patience`` epochs at or above the attack threshold, ``÷ m^1.5`` after ``patience`` epochs
below it); a label's size is the smallest RMS whose epoch attack rate reached the threshold,
``1.0`` (the largest an image in [0, 1] allows: never suspicious) when none did.

The decision is the MAD outlier test on the logarithms of the sizes (low side), floored like
Neural Cleanse's (``max_median_ratio``). Batched over labels: one forward pass stamps every
active label's signal on the same mini-batch. The recovered signal is an
:class:`~hardenkit.triggers.AdditiveTrigger` that ``nc-unlearn`` and ``mcl`` use like the other
detectors' triggers.

This is hardenkit's own detector (a parametric inversion of a trigger family, as ``warp``),
not a published method's reproduction; docs/scanning.md has how it was chosen and measured.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..logging import get_logger
from ..triggers import AdditiveTrigger, Trigger
from .base import (
    DETECTORS,
    DetectorConfig,
    DetectorContext,
    Inversion,
    TriggerSizeDetector,
    images_per_pass,
    inversion_images,
    targeted_ce,
)

__all__ = ["SmoothSignalConfig", "SmoothSignalDetector"]

_log = get_logger("scan.signal")

_UNREACHED = 1.0
"""The size of a label no signal reached: the largest RMS an image in [0, 1] allows."""


class SmoothSignalConfig(DetectorConfig):
    """Smooth-signal inversion settings.

    Attributes:
        k: control values per side of the signal (per channel); the signal is their bicubic
            upsampling, so it holds at most about ``k / 2`` periods per side.
        epochs: most passes over the inversion images.
        max_images: inversion images (a stratified subsample; ``None`` = all).
        batch_size: clean images per step (each is stamped with every active label's signal).
        lr: Adam learning rate on the control values.
        init_cost: initial weight of the RMS term.
        attack_threshold: epoch attack rate a signal must reach to count.
        patience: epochs at / below the threshold before the cost is raised / lowered.
        cost_multiplier: cost ``*= m`` when successful, ``/= m ** 1.5`` when not.
        early_stop_patience: epochs without a smaller successful signal (after the cost was
            raised once) before a label stops; ``None`` (default): every label runs every
            epoch. Not on by default: with 8 the ``stripes`` user model's target stopped at
            RMS 0.058 instead of 0.038 (anomaly index 2.42 instead of 3.62;
            ``benchmarks/results/signal_scan_early_stop.md``) — the rising cost pushes a real
            target's attack rate under the threshold for a few epochs at a time.
        max_images_per_step: upper bound on ``labels × batch`` images in one forward pass
            (``"auto"``: 4,096 on CUDA, 128 on CPU).
        anomaly_threshold: MAD anomaly index (on log sizes) at and above which a label is an
            outlier.
        max_median_ratio: a flagged label's signal must also be at most this fraction of the
            median label's RMS (a floor on the MAD; ``None``: the MAD test alone).
    """

    k: Annotated[int, Field(ge=2, le=64)] = 8
    epochs: Annotated[int, Field(ge=1)] = 30
    max_images: Annotated[int, Field(ge=2)] | None = 100
    batch_size: Annotated[int, Field(ge=1)] = 25
    lr: Annotated[float, Field(gt=0)] = 0.02
    init_cost: Annotated[float, Field(ge=0)] = 0.1
    attack_threshold: Annotated[float, Field(gt=0, le=1)] = 0.9
    patience: Annotated[int, Field(ge=1)] = 3
    cost_multiplier: Annotated[float, Field(gt=1)] = 1.5
    early_stop_patience: Annotated[int, Field(ge=1)] | None = None
    max_images_per_step: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    anomaly_threshold: Annotated[float, Field(gt=0)] = 2.0
    max_median_ratio: Annotated[float, Field(gt=0, le=1)] | None = 0.5


def _signals(theta: Tensor, h: int, w: int) -> Tensor:
    """Control values ``(L, C, k, k)`` → signals ``(L, C, H, W)``."""
    return F.interpolate(theta, size=(h, w), mode="bicubic", align_corners=True)


def _rms(delta: Tensor) -> Tensor:
    return delta.pow(2).flatten(1).mean(1).add(1e-12).sqrt()


class SmoothSignalDetector(TriggerSizeDetector):
    """Smallest smooth additive signal per label; MAD outlier test on log RMS.

    Example:
        >>> from hardenkit.scan import SmoothSignalDetector
        >>> SmoothSignalDetector({"k": 6}).config.k
        6
    """

    name = "signal"
    config_cls = SmoothSignalConfig
    config: SmoothSignalConfig

    def invert(self, ctx: DetectorContext) -> Inversion:
        cfg = self.config
        t0 = time.perf_counter()
        labels = list(ctx.labels)
        c, h, w = ctx.image_shape
        x, y = inversion_images(ctx, cfg.max_images, self.name)
        n_lab = len(labels)
        # zeros: no random start, so a label's result does not depend on the rank inverting it
        theta = torch.zeros(n_lab, c, cfg.k, cfg.k, device=ctx.device, requires_grad=True)
        opt = torch.optim.Adam([theta], lr=cfg.lr, betas=(0.5, 0.9))
        target = torch.tensor(labels, device=ctx.device)
        cost = torch.full((n_lab,), cfg.init_cost, dtype=torch.float64)
        up = torch.zeros(n_lab, dtype=torch.int64)
        down = torch.zeros(n_lab, dtype=torch.int64)
        raised = torch.zeros(n_lab, dtype=torch.bool)
        stale = torch.zeros(n_lab, dtype=torch.int64)
        best = torch.full((n_lab,), _UNREACHED, dtype=torch.float64)
        reached = torch.zeros(n_lab, dtype=torch.bool)
        best_theta = torch.zeros(n_lab, c, cfg.k, cfg.k)
        active = torch.ones(n_lab, dtype=torch.bool)
        last_acc = torch.zeros(n_lab, dtype=torch.float64)
        epochs_run = torch.zeros(n_lab, dtype=torch.int64)
        n = len(x)
        bs = min(cfg.batch_size, n)
        steps = max(1, n // bs)
        order = torch.Generator().manual_seed(ctx.seed + 21)
        chunk = max(1, images_per_pass(cfg.max_images_per_step, ctx.device) // bs)
        with torch.no_grad():  # what the model already says without any signal
            pred0 = torch.cat([ctx.model(x[i : i + 256]).argmax(1) for i in range(0, n, 256)])
        cut = False
        for epoch in range(cfg.epochs):
            act = torch.nonzero(active).flatten()
            if len(act) == 0:
                break
            if ctx.out_of_time():
                cut = True
                break
            perm = torch.randperm(n, generator=order).to(x.device)
            hit = torch.zeros(n_lab, dtype=torch.float64)
            seen = torch.zeros(n_lab, dtype=torch.float64)
            size = torch.zeros(n_lab, dtype=torch.float64)
            cost_dev = cost.to(ctx.device, torch.float32)
            for s in range(steps):
                bi = perm[s * bs : (s + 1) * bs]
                opt.zero_grad(set_to_none=False)
                for c0 in range(0, len(act), chunk):
                    sel = act[c0 : c0 + chunk].to(ctx.device)
                    hits, count, rms = self._step(
                        ctx, x[bi], y[bi], pred0[bi], theta, sel, target, cost_dev
                    )
                    where = sel.cpu()
                    hit[where] += hits.double().cpu()
                    seen[where] += count.double().cpu()
                    size[where] += rms.double().cpu()
                opt.step()
            acc, size = hit / seen.clamp(min=1), size / steps
            ok = acc >= cfg.attack_threshold
            better = active & ok & (size < 0.99 * best)
            best = torch.where(better, size, best)
            reached |= better
            best_theta[better] = theta.detach()[better.to(theta.device)].cpu()
            stale = torch.where(better, 0, stale + reached.long())
            up = torch.where(ok, up + 1, 0)
            down = torch.where(ok, 0, down + 1)
            go_up, go_down = active & (up >= cfg.patience), active & (down >= cfg.patience)
            cost = torch.where(go_up, cost * cfg.cost_multiplier, cost)
            cost = torch.where(go_down, cost / cfg.cost_multiplier**1.5, cost)
            up, down = torch.where(go_up, 0, up), torch.where(go_down, 0, down)
            raised |= go_up
            last_acc = torch.where(active, acc, last_acc)
            epochs_run = torch.where(active, epoch + 1, epochs_run)
            if cfg.early_stop_patience is not None:
                active &= ~(raised & (stale >= cfg.early_stop_patience))
            ctx.progress("scan[signal]", epoch + 1, cfg.epochs, active=int(active.sum()))
        # a label that never reached the threshold keeps its last signal as its trigger
        never = ~reached
        best_theta[never] = theta.detach()[never.to(theta.device)].cpu()
        deltas = _signals(best_theta, h, w)
        triggers: dict[int, Trigger] = {
            lab: AdditiveTrigger(deltas[i].clone(), name="smooth-signal")
            for i, lab in enumerate(labels)
        }
        sizes = [float(v) for v in best]
        per_label = {
            lab: {
                "reached_threshold": bool(reached[i]),
                "signal_rms": sizes[i],
                "inversion_attack_rate": float(last_acc[i]),
                "epochs": int(epochs_run[i]),
                "final_cost": float(cost[i]),
            }
            for i, lab in enumerate(labels)
        }
        _log.debug("scan.signal_inverted", labels=labels, sizes=sizes)
        return Inversion(
            detector=self.name,
            statistic="signal_rms",
            suspicious_side="low",
            labels=labels,
            values=dict(zip(labels, sizes, strict=True)),
            seconds=time.perf_counter() - t0,
            triggers=triggers,
            per_label=per_label,
            info={"images": n, "budget_exhausted": cut},
        )

    def _step(
        self,
        ctx: DetectorContext,
        xb: Tensor,
        yb: Tensor,
        pred0: Tensor,
        theta: Tensor,
        sel: Tensor,
        target: Tensor,
        cost: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Forward/backward for the labels ``sel``; returns (hits, images, RMS) per label."""
        c, h, w = xb.shape[1:]
        delta = _signals(theta[sel], h, w)  # (L, C, H, W)
        lab, b = len(sel), len(xb)
        stamped = (xb.unsqueeze(0) + delta.unsqueeze(1)).clamp(0, 1).reshape(lab * b, c, h, w)
        ce_mean, count, hits = targeted_ce(ctx, stamped, yb, pred0, target[sel])
        rms = _rms(delta)
        loss = (ce_mean + cost[sel] * rms).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return hits.detach(), count.detach(), rms.detach()


DETECTORS.register(SmoothSignalDetector.name, SmoothSignalDetector)

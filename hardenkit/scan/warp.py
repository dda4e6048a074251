"""Warp-trigger inversion: the smallest smooth warp that sends clean images to each label.

WaNet-class triggers (Nguyen & Tran, ICLR 2021) are not patches and not additive signals: the
poisoned image is the clean one resampled through a fixed, smooth flow field of a fraction of
a pixel. Neural Cleanse's mask form and PixelBackdoor's sparse additive form both describe
such a trigger badly (every pixel changes a little, by an amount that depends on the image),
so both miss it. This detector inverts the trigger *family* instead, the way Neural Cleanse
inverts the patch family: for every candidate label y it optimises a flow field of WaNet's
own form — a ``k × k`` grid of control displacements, bicubically upsampled to ``H × W`` —

    grid_y = identity + max_shift · tanh(upsample(θ_y)) / H,   x' = grid_sample(x, grid_y)

with ``CE(f(x'), y) + cost_y · R_y`` on clean images of the *other* classes (and not already
predicted as y), where ``R_y`` is
the field's mean displacement in WaNet's strength units (WaNet's ``s`` times its normalised
field: about ``0.8 · s`` for a planted warp of strength ``s``). The cost follows Neural
Cleanse's schedule per label (raised after ``patience`` epochs at or above the attack
threshold, lowered after ``patience`` epochs below it) and the best field is the smallest one
whose attack rate reached the threshold. ``restarts`` random initialisations per label run in
the same batch (the field has few parameters and many local optima); a label keeps its best.

A backdoor target is reached by a warp as small as the planted one; a natural label needs a
large distortion or is never reached. The decision is the MAD outlier test on the logarithms
of the per-label sizes (low side), floored like Neural Cleanse's (``max_median_ratio``);
labels that never reached the threshold get ``max_shift`` (never suspicious). Batched over
labels like the other inversions: one forward pass stamps every active label's warp on the
same mini-batch. The recovered :class:`~hardenkit.triggers.WarpTrigger` feeds ``nc-unlearn``
and ``mcl`` like the other detectors' triggers.

This is hardenkit's own detector (a parametric inversion of the warp family, not a published
method's reproduction); ALGORITHMS.md §5's feature-space detectors (BTI-DBF, FeatureRE) are the
general alternative — see docs/scanning.md for how it was chosen and measured.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..logging import get_logger
from ..triggers import Trigger, WarpTrigger
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

__all__ = ["WarpConfig", "WarpDetector"]

_log = get_logger("scan.warp")


class WarpConfig(DetectorConfig):
    """Warp-trigger inversion settings.

    Attributes:
        k: control points per side of the flow field (WaNet's default grid is 4).
        max_shift: the largest displacement a control point can take, in WaNet's strength
            units (``s`` in ``identity + s · field / H``; WaNet plants ``s = 0.5`` with a
            field of mean magnitude 1). Labels that need more are not reachable by a warp.
        restarts: random initial fields per label (the best one is kept).
        epochs: most passes over the inversion images.
        max_images: inversion images (a stratified subsample; ``None`` = all).
        batch_size: clean images per step (each is warped by every active field).
        lr: Adam learning rate on the control displacements.
        init_cost: initial weight of the displacement term.
        attack_threshold: attack rate a field must reach to count.
        patience: epochs at / below the threshold before the cost is raised / lowered.
        cost_multiplier: cost ``*= m`` when successful, ``/= m ** 1.5`` when not.
        early_stop_patience: epochs without a smaller successful field (after the cost was
            raised once) before a label stops.
        give_up_epochs: a field whose attack rate never reached half the threshold after
            this many epochs stops (the label is then "not reachable by a warp"; ``None`` =
            run every epoch).
        max_images_per_step: upper bound on ``fields × batch`` images in one forward pass
            (``"auto"``: 4,096 on CUDA, 128 on CPU).
        anomaly_threshold: MAD anomaly index (on log sizes) at and above which a label is an
            outlier.
        max_median_ratio: a flagged label's field must also be at most this fraction of the
            median label's size (a floor on the MAD; ``None``: the MAD test alone).
    """

    k: Annotated[int, Field(ge=2, le=32)] = 4
    max_shift: Annotated[float, Field(gt=0)] = 4.0
    restarts: Annotated[int, Field(ge=1)] = 2
    epochs: Annotated[int, Field(ge=1)] = 30
    max_images: Annotated[int, Field(ge=2)] | None = 100
    batch_size: Annotated[int, Field(ge=1)] = 32
    lr: Annotated[float, Field(gt=0)] = 0.1
    init_cost: Annotated[float, Field(ge=0)] = 1e-2
    attack_threshold: Annotated[float, Field(gt=0, le=1)] = 0.9
    patience: Annotated[int, Field(ge=1)] = 3
    cost_multiplier: Annotated[float, Field(gt=1)] = 1.5
    early_stop_patience: Annotated[int, Field(ge=1)] = 8
    give_up_epochs: Annotated[int, Field(ge=1)] | None = 12
    max_images_per_step: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    anomaly_threshold: Annotated[float, Field(gt=0)] = 2.0
    max_median_ratio: Annotated[float, Field(gt=0, le=1)] | None = 0.5


def _identity(h: int, w: int, device: torch.device) -> Tensor:
    ys = torch.linspace(-1, 1, h, device=device)
    xs = torch.linspace(-1, 1, w, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)  # (H, W, 2)


def _fields(theta: Tensor, h: int, w: int, max_shift: float) -> Tensor:
    """Control displacements ``(N, 2, k, k)`` → flow fields ``(N, H, W, 2)`` in strength units."""
    up = F.interpolate(theta, size=(h, w), mode="bicubic", align_corners=True)
    return (max_shift * torch.tanh(up)).permute(0, 2, 3, 1)


class WarpDetector(TriggerSizeDetector):
    """Smallest smooth (WaNet-form) warp per label; MAD outlier test on log sizes.

    Example:
        >>> from hardenkit.scan import WarpDetector
        >>> WarpDetector({"epochs": 5}).config.k
        4
    """

    name = "warp"
    config_cls = WarpConfig
    config: WarpConfig

    def invert(self, ctx: DetectorContext) -> Inversion:
        cfg = self.config
        t0 = time.perf_counter()
        labels = list(ctx.labels)
        _, h, w = ctx.image_shape
        x, y = inversion_images(ctx, cfg.max_images, self.name)
        n_lab, r = len(labels), cfg.restarts
        n_cand = n_lab * r  # candidate fields: label-major, restarts inner
        g = torch.Generator().manual_seed(ctx.seed + 11)
        # drawn for all the scan's labels, then this call's rows: the same start on any rank
        n_all, rows = ctx.num_all_labels, torch.tensor(ctx.label_positions(), dtype=torch.long)
        theta_all = (torch.rand(n_all * r, 2, cfg.k, cfg.k, generator=g) * 2 - 1) * 0.5
        theta0 = theta_all.view(n_all, r, 2, cfg.k, cfg.k)[rows].reshape(n_cand, 2, cfg.k, cfg.k)
        theta = theta0.to(ctx.device).requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=cfg.lr, betas=(0.5, 0.9))
        cand_label = torch.tensor(labels, device=ctx.device).repeat_interleave(r)
        identity = _identity(h, w, ctx.device)
        cost = torch.full((n_cand,), cfg.init_cost, dtype=torch.float64)
        up = torch.zeros(n_cand, dtype=torch.int64)
        down = torch.zeros(n_cand, dtype=torch.int64)
        raised = torch.zeros(n_cand, dtype=torch.bool)
        best = torch.full((n_cand,), math.inf, dtype=torch.float64)
        best_theta = theta0.clone()
        final_theta = theta0.clone()  # each candidate's field when it stopped (or at the end)
        stale = torch.zeros(n_cand, dtype=torch.int64)
        active = torch.ones(n_cand, dtype=torch.bool)
        last_acc = torch.zeros(n_cand, dtype=torch.float64)
        top_acc = torch.zeros(n_cand, dtype=torch.float64)
        epochs_run = torch.zeros(n_cand, dtype=torch.int64)
        n = len(x)
        bs = min(cfg.batch_size, n)
        steps = max(1, n // bs)
        order = torch.Generator().manual_seed(ctx.seed + 12)
        chunk = max(1, images_per_pass(cfg.max_images_per_step, ctx.device) // bs)
        cut = False
        for epoch in range(cfg.epochs):
            act = torch.nonzero(active).flatten()
            if len(act) == 0:
                break
            if ctx.out_of_time():
                cut = True
                break
            perm = torch.randperm(n, generator=order).to(x.device)
            hit = torch.zeros(n_cand, dtype=torch.float64)
            seen = torch.zeros(n_cand, dtype=torch.float64)
            reg_sum = torch.zeros(n_cand, dtype=torch.float64)
            cost_dev = cost.to(ctx.device, torch.float32)
            for s in range(steps):
                bi = perm[s * bs : (s + 1) * bs]
                xb, yb = x[bi], y[bi]
                with torch.no_grad():  # what the model already says without any warp
                    pred0 = ctx.model(xb).argmax(1)
                opt.zero_grad(set_to_none=False)
                for c0 in range(0, len(act), chunk):
                    sel = act[c0 : c0 + chunk].to(ctx.device)
                    hits, count, reg = self._step(
                        ctx, xb, yb, pred0, theta, sel, cand_label, cost_dev, identity
                    )
                    hit[sel.cpu()] += hits.double().cpu()
                    seen[sel.cpu()] += count.double().cpu()
                    reg_sum[sel.cpu()] += reg.double().cpu()
                opt.step()
            acc = hit / seen.clamp(min=1)
            reg_ep = reg_sum / steps
            for ci in act.tolist():
                a, size = float(acc[ci]), float(reg_ep[ci])
                if a >= cfg.attack_threshold and size < 0.99 * float(best[ci]):
                    best[ci] = size
                    best_theta[ci] = theta.detach()[ci].cpu()
                    stale[ci] = 0
                elif math.isfinite(float(best[ci])):
                    stale[ci] += 1
                if a >= cfg.attack_threshold:
                    up[ci] += 1
                    down[ci] = 0
                else:
                    up[ci] = 0
                    down[ci] += 1
                if int(up[ci]) >= cfg.patience:
                    up[ci] = 0
                    cost[ci] = (
                        float(cost[ci]) * cfg.cost_multiplier if float(cost[ci]) > 0 else 1e-3
                    )
                    raised[ci] = True
                elif int(down[ci]) >= cfg.patience:
                    down[ci] = 0
                    cost[ci] = float(cost[ci]) / cfg.cost_multiplier**1.5
                last_acc[ci] = a
                top_acc[ci] = max(float(top_acc[ci]), a)
                epochs_run[ci] = epoch + 1
                if bool(raised[ci]) and int(stale[ci]) >= cfg.early_stop_patience:
                    active[ci] = False
                hopeless = float(top_acc[ci]) < 0.5 * cfg.attack_threshold
                if cfg.give_up_epochs is not None and epoch + 1 >= cfg.give_up_epochs and hopeless:
                    active[ci] = False
                if not bool(active[ci]):
                    final_theta[ci] = theta.detach()[ci].cpu()
            ctx.progress("scan[warp]", epoch + 1, cfg.epochs, active=int(active.sum()))
        still = torch.nonzero(active).flatten()
        final_theta[still] = theta.detach()[still.to(theta.device)].cpu()
        # per label: the restart with the smallest successful field (else the best attack rate)
        sizes: list[float] = []
        reached: list[bool] = []
        chosen: list[int] = []
        for li in range(n_lab):
            cands = list(range(li * r, (li + 1) * r))
            ok = [c for c in cands if math.isfinite(float(best[c]))]
            pick = (
                min(ok, key=lambda c: float(best[c]))
                if ok
                else max(cands, key=lambda c: float(last_acc[c]))
            )
            chosen.append(pick)
            reached.append(bool(ok))
            sizes.append(float(best[pick]) if ok else float(cfg.max_shift))
            if not ok:
                best_theta[pick] = final_theta[pick]
        fields = _fields(best_theta[chosen], h, w, cfg.max_shift)
        triggers: dict[int, Trigger] = {
            lab: WarpTrigger(fields[i].clone(), strength=1.0, k=cfg.k)
            for i, lab in enumerate(labels)
        }
        per_label = {
            lab: {
                "reached_threshold": reached[i],
                "mean_shift": sizes[i],
                "inversion_attack_rate": float(last_acc[chosen[i]]),
                "epochs": int(epochs_run[chosen[i]]),
                "final_cost": float(cost[chosen[i]]),
            }
            for i, lab in enumerate(labels)
        }
        _log.debug("scan.warp_inverted", labels=labels, sizes=sizes)
        return Inversion(
            detector=self.name,
            statistic="warp_shift",
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
        cand_label: Tensor,
        cost: Tensor,
        identity: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Forward/backward for candidate fields ``sel``; returns (hits, images, mean shift)."""
        cfg = self.config
        c, h, w = xb.shape[1:]
        field = _fields(theta[sel], h, w, cfg.max_shift)  # (L, H, W, 2)
        lab, b = len(sel), len(xb)
        grid = (identity.unsqueeze(0) + field / h).clamp(-1, 1)
        grid = grid.unsqueeze(1).expand(lab, b, h, w, 2).reshape(lab * b, h, w, 2)
        src = xb.unsqueeze(0).expand(lab, b, c, h, w).reshape(lab * b, c, h, w)
        warped = F.grid_sample(src, grid, align_corners=True)
        ce_mean, count, hits = targeted_ce(ctx, warped, yb, pred0, cand_label[sel])
        reg = field.abs().mean(dim=(1, 2, 3))
        loss = (ce_mean + cost[sel] * reg).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return hits.detach(), count.detach(), reg.detach()


DETECTORS.register(WarpDetector.name, WarpDetector)

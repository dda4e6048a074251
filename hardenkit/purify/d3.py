"""D3 — distance-driven detoxification (ALGORITHMS.md §2), faithful to the official code.

Move the selected weights (default: the final linear layer) as *far* as possible from the
backdoored weights while a per-sample hinge keeps the clean loss near ε; after every step each
selected weight is projected back onto the sphere of its original norm. Needs no trigger.
``preset="last-layer"`` trains only the selected layer and holds each clean image's loss within
ε of the input model's, so the features, and with them most clean accuracy, stay; it removes
only triggers whose features clean images do not use.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from .._utils.distributed import train_step
from .._utils.model_checks import require_trainable
from .._utils.seeding import make_generator
from ..errors import ModelCompatibilityError
from ..logging import get_logger
from ..models import find_last_linear, resolve_layer
from ..training import AugmentParams, apply_augment, draw_augment, slice_augment
from .base import (
    STRATEGIES,
    CheckpointSelector,
    PurificationStrategy,
    PurifyContext,
    Selection,
    StrategyConfig,
    StrategyOutcome,
    epoch_passes,
    with_preset,
)

__all__ = ["D3Config", "D3Strategy", "hinge_excess", "selected_weights"]

_log = get_logger("purify.d3")


_PAPER: dict[str, Any] = {
    "lmd": 0.5,
    "eps": 0.1,
    "hinge": "absolute",
    "distance": "absolute",
    "scale_large_lambda": True,
    "train": "all",
    "selection": "final",
    "validation_fraction": 0.0,
}
"""The official code's procedure: its hinge, distance and λ, every parameter trains, the last
epoch, every clean image trains."""


_LAST_LAYER: dict[str, Any] = {
    "train": "selected",
    "hinge": "relative",
    "lmd": 30.0,
    "scale_large_lambda": False,
}
"""Only the selected layer trains, each image's loss held within ε of the input model's, λ 30
(stop 39): clean accuracy kept on CIFAR-scale models; see D3Config."""


class D3Config(StrategyConfig):
    """D3 settings (defaults: the official code, ``config/defense/d3/config.yaml``, with
    best-validation selection).

    ``preset="paper"`` is the official code's procedure exactly (the last epoch, no validation
    split); ``preset="last-layer"`` is the accuracy-keeping form measured in stop 39: only the
    selected layer trains, each clean image's loss may rise at most ε above the input model's,
    λ 30 without the code's rescaling.

    Attributes:
        preset: ``default`` (the fields below); ``paper`` — the official code's procedure:
            ``hinge``/``distance`` ``absolute``, λ 0.5, ε 0.1, ``train="all"``,
            ``scale_large_lambda``, ``selection="final"``, ``validation_fraction`` 0;
            ``last-layer`` — ``train="selected"``, ``hinge="relative"``, λ 30,
            ``scale_large_lambda=False`` (fields you set win).
        lmd: λ, the weight of the clean-loss hinge (code 0.5; the paper says 10).
        eps: ε, the clean-loss level the hinge allows per sample.
        hinge: ``absolute`` — ``max(0, ℓᵢ − ε)``, the code's hinge: ε is a loss level, so on
            a model that does not fit its clean images the hinge is active almost everywhere;
            ``relative`` — ``max(0, ℓᵢ − ℓ⁰ᵢ − ε)``, where ``ℓ⁰ᵢ`` is the input
            model's own loss on the same (augmented) image: ε is the loss each image may
            *gain*;
            ``distill`` — ``max(0, KL(p⁰ᵢ ‖ pᵢ) − ε)``: each clean image's prediction may move
            at most ε (nats) from the input model's, whatever its label.
        distance: ``absolute`` — ``‖W − W0‖ₚ`` (the code); ``relative`` — divided by
            ``‖W0‖ₚ``, so the distance term's weight does not depend on the layer's scale.
        p: the norm of the distance and of the projection (2 = Frobenius).
        scale_large_lambda: for λ > 1 use ``(λ·H − Dist) / (λ + 1)`` as the code does "to
            avoid explosion"; ``False`` always uses ``λ·H − Dist``.
        layers: module names whose ``Linear``/``Conv2d`` weights form the distance (biases
            excluded); ``None`` = the model's last ``nn.Linear``, found automatically.
        warm_start: ``random`` (uniform, rescaled to the original norm — the code's default),
            ``far`` (−W0, the farthest point on the sphere), ``middle`` (0), ``noise``
            (W0 + N(0, std(W0)²)) or ``near`` (no change; very slow to converge).
        epochs: passes over the clean images (code: 100, cosine schedule).
        batch_size: images per step.
        lr: SGD learning rate (momentum 0.9, no weight decay in the code).
        momentum: SGD momentum.
        weight_decay: SGD weight decay (the code's yaml ``wd`` is not used: 0).
        augment: random crop + horizontal flip on the device (BackdoorBench train transform).
        train_mode: BatchNorm statistics update during D3 (the code's default).
        train: ``all`` — SGD over every parameter (the code); ``selected`` — only the
            selected layers (weights and biases) train, the rest of the network and its
            BatchNorm statistics stay as they were (``train_mode`` then has no effect).
        selection: which epoch is returned (validation split of the clean budget, never
            the test set): ``best-val`` (default) — the highest validation BA among epochs
            whose inverted triggers (the scan's, when one was given) reach at most
            ``selection_max_asr``, and the last epoch when there is no inverted trigger;
            ``final`` — the last epoch (the code); ``best-val-ba`` — the highest validation
            BA whatever the ASR.
        selection_max_asr: the ASR bound of ``best-val`` selection.
        validation_fraction: share of the purification images held out (stratified) for
            selection (default 0.1; 0, the code: every clean image trains).
    """

    preset: Literal["default", "paper", "last-layer"] = "default"

    lmd: Annotated[float, Field(gt=0)] = 0.5
    eps: Annotated[float, Field(ge=0)] = 0.1
    hinge: Literal["absolute", "relative", "distill"] = "absolute"
    distance: Literal["absolute", "relative"] = "absolute"
    p: Annotated[float, Field(gt=0)] = 2.0
    scale_large_lambda: bool = True
    layers: tuple[str, ...] | None = None
    warm_start: Literal["random", "far", "middle", "noise", "near"] = "random"
    epochs: Annotated[int, Field(ge=1)] = 100
    batch_size: Annotated[int, Field(ge=1)] = 256
    lr: Annotated[float, Field(gt=0)] = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    augment: bool = True
    train_mode: bool = True
    train: Literal["all", "selected"] = "all"
    selection: Selection = "best-val"
    selection_max_asr: Annotated[float, Field(ge=0, le=1)] = 0.1
    validation_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1

    def resolved(self) -> D3Config:
        """This config with its preset's values (``paper``, ``last-layer``) under the fields set
        explicitly."""
        if self.preset == "paper":
            return with_preset(self, _PAPER)
        if self.preset == "last-layer":
            return with_preset(self, _LAST_LAYER)
        return self


def _global_terms(ctx: PurifyContext, terms: dict[str, Tensor], idx: Tensor) -> tuple[float, float]:
    """The step's hinge (mean over the global batch) and distance, for the history."""
    if ctx.dist is None:
        return float(terms["hinge"]), float(terms["dist"])
    lo, hi = ctx.dist.bounds(len(idx))
    w = (hi - lo) / max(1, len(idx))
    zero = torch.zeros((), device=ctx.device)
    vals = torch.stack([terms.get(k, zero).float().reshape(()) * w for k in ("hinge", "dist")])
    ctx.dist.all_sum([vals])  # the distance is the same on every rank: its weighted mean
    return float(vals[0]), float(vals[1])


def hinge_excess(
    logits: Tensor,
    y: Tensor,
    ref_logits: Tensor | None,
    mode: Literal["absolute", "relative", "distill"] = "absolute",
) -> Tensor:
    """The per-image quantity D3's hinge holds below ε (see :attr:`D3Config.hinge`).

    ``absolute``: the cross-entropy; ``relative``: the cross-entropy minus the input model's
    (``ref_logits``) on the same image; ``distill``: KL(input model ‖ model).

    >>> z = torch.tensor([[2.0, 0.0], [0.0, 1.0]]); y = torch.tensor([0, 0])
    >>> hinge_excess(z, y, z, "relative").tolist(), hinge_excess(z, y, z, "distill").tolist()
    ([0.0, 0.0], [0.0, 0.0])
    """
    if mode == "absolute":
        return F.cross_entropy(logits, y, reduction="none")
    if ref_logits is None:
        raise ValueError(f"hinge {mode!r} needs the input model's logits")
    if mode == "relative":
        return F.cross_entropy(logits, y, reduction="none") - F.cross_entropy(
            ref_logits, y, reduction="none"
        )
    logp = F.log_softmax(logits, dim=1)
    ref_logp = F.log_softmax(ref_logits, dim=1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(dim=1)


def selected_weights(model: nn.Module, layers: tuple[str, ...] | None) -> list[tuple[str, Tensor]]:
    """``(name, weight)`` of each ``Linear``/``Conv2d`` in ``layers`` (default: the last Linear)."""
    if layers is None:
        name, lin = find_last_linear(model)
        return [(f"{name}.weight", lin.weight)]
    out: list[tuple[str, Tensor]] = []
    for layer in layers:
        root = resolve_layer(model, layer)
        for sub, m in root.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                out.append((f"{layer}{'.' + sub if sub else ''}.weight", m.weight))
    if not out:
        raise ModelCompatibilityError(
            f"layers {list(layers)} contain no nn.Linear or nn.Conv2d weight for D3's distance.",
            hint="name modules that hold Linear/Conv2d layers, or leave layers unset",
        )
    return out


def _selected_params(
    model: nn.Module, sel: list[tuple[str, Tensor]], trainable: list[Tensor]
) -> list[Tensor]:
    """The weights in ``sel`` and their modules' biases, among the trainable parameters."""
    ids = {id(w) for _, w in sel}
    keep = set(ids)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and id(m.weight) in ids and m.bias is not None:
            keep.add(id(m.bias))
    return [p for p in trainable if id(p) in keep]


class D3Strategy(PurificationStrategy):
    """Distance-driven detoxification: trigger-free, works on any ``nn.Module`` with a Linear."""

    name = "d3"
    config_cls = D3Config
    needs_trigger = False
    config: D3Config

    def __init__(self, config: StrategyConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.config = self.config.resolved()  # the paper preset's values, when asked for
        self.validation_fraction = self.config.validation_fraction

    def estimate_passes(self) -> tuple[float, float] | None:
        return epoch_passes(self.config.epochs, (1.0, 1.45))  # 1.04-1.09 measured

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        cfg = self.config
        model = ctx.model
        require_trainable(model, where="purify[d3]")
        sel = selected_weights(model, cfg.layers)
        fixed = [name for name, w in sel if not w.requires_grad]
        if fixed:  # the warm start would overwrite a weight that no step could train back
            raise ModelCompatibilityError(
                f"purify[d3]: the layer(s) D3 moves away from the original, {fixed}, are "
                "frozen (requires_grad=False).",
                hint="D3 re-initialises these weights and trains them back; unfreeze them "
                "(module.requires_grad_(True) on a copy), or pick trainable layers with "
                "config={'layers': [...]}",
            )
        w0 = [w.detach().clone() for _, w in sel]
        norm0 = [torch.linalg.vector_norm(w, ord=cfg.p) for w in w0]
        g = torch.Generator().manual_seed(ctx.runtime.seed + 17)
        self._warm_start(sel, w0, norm0, g)
        params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
        frozen: list[Tensor] = []
        if cfg.train == "selected":  # the rest of the network takes no gradient at all
            params = _selected_params(model, sel, params)
            keep = {id(p) for p in params}
            frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
        for p in frozen:
            p.requires_grad_(False)
        try:
            return self._descend(ctx, sel, w0, norm0, params)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _descend(
        self,
        ctx: PurifyContext,
        sel: list[tuple[str, Tensor]],
        w0: list[Tensor],
        norm0: list[Tensor],
        params: list[Tensor],
    ) -> StrategyOutcome:
        """D3's projected descent over ``params`` (the warm start is already applied)."""
        cfg = self.config
        model = ctx.model
        dist_scale: list[Tensor | float] = (
            [n.clamp_min(1e-12) for n in norm0] if cfg.distance == "relative" else [1.0] * len(w0)
        )
        opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        n = len(ctx.y)
        bs = min(cfg.batch_size, n)
        steps = math.ceil(n / bs)
        gen = make_generator(ctx.runtime.seed + 19, ctx.device)
        history: list[dict[str, float]] = []
        selector = CheckpointSelector(ctx, cfg.selection, max_asr=cfg.selection_max_asr)
        stopped = False
        for epoch in range(cfg.epochs):
            model.train(cfg.train_mode and cfg.train == "all")
            perm = torch.randperm(n, generator=gen, device=ctx.device)
            tot_h = tot_d = 0.0
            for s in range(steps):
                if ctx.budget():
                    stopped = True
                    break
                idx = perm[s * bs : (s + 1) * bs]
                aug = draw_augment(len(idx), gen, ctx.device) if cfg.augment else None
                terms: dict[str, Tensor] = {}

                def shard_loss(
                    local: Tensor,
                    part: slice,
                    aug: AugmentParams | None = aug,
                    terms: dict[str, Tensor] = terms,
                ) -> Tensor:
                    xb, yb = ctx.images[local], ctx.y[local]
                    if aug is not None:
                        xb = apply_augment(xb, slice_augment(aug, part))
                    ref = None
                    if cfg.hinge != "absolute":
                        with torch.no_grad():
                            ref = ctx.original(xb)
                    excess = hinge_excess(model(xb), yb, ref, cfg.hinge)
                    hinge = (excess - cfg.eps).clamp(min=0).mean()
                    dist = sum(
                        (
                            torch.linalg.vector_norm(w - w_0, ord=cfg.p) / scale
                            for (_, w), w_0, scale in zip(sel, w0, dist_scale, strict=True)
                        ),
                        torch.zeros((), device=ctx.device),
                    )
                    terms["hinge"], terms["dist"] = hinge.detach(), dist.detach()
                    loss = cfg.lmd * hinge - dist
                    if cfg.lmd > 1 and cfg.scale_large_lambda:
                        loss = loss / (cfg.lmd + 1)
                    return loss

                opt.zero_grad(set_to_none=True)
                train_step(ctx.dist, idx, shard_loss, params)
                opt.step()
                with torch.no_grad():  # projection onto the sphere of the original norm
                    for (_, w), n0 in zip(sel, norm0, strict=True):
                        w.mul_(n0 / torch.linalg.vector_norm(w, ord=cfg.p).clamp_min(1e-12))
                hinge_v, dist_v = _global_terms(ctx, terms, idx)
                tot_h += hinge_v
                tot_d += dist_v
            if stopped and tot_h == 0.0 and tot_d == 0.0:  # budget ended before a step
                break
            if ctx.dist is not None:
                ctx.dist.sync_buffers(model)
            sched.step()
            rec = {
                "epoch": epoch + 1,
                "hinge": tot_h / steps,
                "distance": tot_d / steps,
            }
            val = selector.update(model, epoch + 1)
            if val is not None:
                rec["val_accuracy"] = val["val_ba"]
            history.append(rec)
            ctx.progress("purify[d3]", epoch + 1, cfg.epochs, distance=rec["distance"])
            _log.debug("purify.epoch", strategy=self.name, **rec)
            if stopped:
                break
        opt.zero_grad(set_to_none=True)
        final_epoch = len(history)
        record = selector.finish(model, final_epoch)
        model.eval()
        val_epochs = [(int(r["epoch"]), r["val_accuracy"]) for r in history if "val_accuracy" in r]
        best_ba: tuple[int | None, float | None] = (
            max(val_epochs, key=lambda e: (e[1], e[0])) if val_epochs else (None, None)
        )
        return StrategyOutcome(
            model=model,
            epochs=final_epoch,
            details={
                "selected_weights": [name for name, _ in sel],
                "selection": cfg.selection,
                "checkpoint": record,
                "chosen_epoch": record["chosen_epoch"],
                "final_epoch": final_epoch,
                "best_val_epoch": best_ba[0],
                "best_val_accuracy": best_ba[1],
                "final_val_accuracy": history[-1].get("val_accuracy") if history else None,
                "final_distance": history[-1]["distance"] if history else 0.0,
            },
        )

    def _warm_start(
        self,
        sel: list[tuple[str, Tensor]],
        w0: list[Tensor],
        norm0: list[Tensor],
        g: torch.Generator,
    ) -> None:
        mode = self.config.warm_start
        p = self.config.p
        with torch.no_grad():
            for (_, w), w_0, n0 in zip(sel, w0, norm0, strict=True):
                if mode == "random":
                    r = (torch.rand(w.shape, generator=g) - 0.5).to(w)
                    w.copy_(r * n0 / torch.linalg.vector_norm(r, ord=p).clamp_min(1e-12))
                elif mode == "far":
                    w.copy_(-w_0)
                elif mode == "middle":
                    w.zero_()
                elif mode == "noise":
                    w.add_(torch.randn(w.shape, generator=g).to(w) * w_0.std())
                # "near": unchanged


STRATEGIES.register(D3Strategy.name, D3Strategy)

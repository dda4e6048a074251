"""Pruning strategies: Fine-Pruning (ALGORITHMS.md §6.2) and ANP (§6.4), oracle-free.

Both choose *how much* to prune on the validation split of the defender's clean budget
(``ctx.x_val``) — never on triggered or test data, unlike BackdoorBench, whose FP and ANP
select the pruning amount with the clean *test* set. Pruning is a weight edit
(:mod:`hardenkit.purify.channels`), so the result exports to ONNX unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from .._utils.distributed import train_step
from .._utils.model_checks import require_trainable
from .._utils.modes import frozen_parameters
from ..config import RuntimeConfig
from ..data.store import ImageStore
from ..logging import get_logger
from ..models.features import find_last_linear, resolve_layer
from ..training import evaluate_accuracy
from .base import (
    STRATEGIES,
    PurificationStrategy,
    PurifyContext,
    StrategyConfig,
    StrategyOutcome,
    epoch_passes,
)
from .channels import ChannelGroup, ChannelMask, ChannelSet, apply_pruning, keep_pruned
from .finetune import FinetuneConfig, _fit

__all__ = ["ANPConfig", "ANPStrategy", "FinePruningConfig", "FinePruningStrategy"]

_log = get_logger("purify.pruning")


def masked_accuracy(
    model: nn.Module,
    units: ChannelSet,
    pruned: Tensor,
    x: Tensor | ImageStore,
    y: Tensor,
    runtime: RuntimeConfig,
) -> float:
    """Accuracy of ``model`` on ``(x, y)`` with the flat channel indices ``pruned`` masked."""
    mask = units.ones(x.device)
    mask[pruned.to(x.device)] = 0
    with ChannelMask(model, units, mask):
        return evaluate_accuracy(model, x, y, runtime=runtime)


def select_on_validation(
    model: nn.Module,
    units: ChannelSet,
    candidates: Sequence[Tensor],
    x_val: Tensor | ImageStore,
    y_val: Tensor,
    acc_ratio: float,
    runtime: RuntimeConfig,
) -> tuple[int, float, list[float]]:
    """Pick the last candidate prune set (they grow) whose validation accuracy stays at or
    above ``(1 - acc_ratio)`` times the unpruned model's (BackdoorBench's rule, on the
    validation split instead of the test set). Evaluation stops at the first one below.

    Returns ``(index or -1 for none, unpruned accuracy, accuracies evaluated)``.
    """
    base = evaluate_accuracy(model, x_val, y_val, runtime=runtime)
    accs: list[float] = []
    chosen = -1
    for i, cand in enumerate(candidates):
        acc = masked_accuracy(model, units, cand, x_val, y_val, runtime)
        accs.append(acc)
        if acc < (1 - acc_ratio) * base - 1e-9:
            break
        chosen = i
    return chosen, base, accs


def _validation(ctx: PurifyContext) -> tuple[ImageStore, Tensor, str]:
    if len(ctx.y_val):
        return ctx.val_images, ctx.y_val, "validation split of the clean budget"
    ctx.notes.append(
        "the clean budget was too small for a validation split: the pruning amount was "
        "chosen on the purification images themselves"
    )
    return ctx.images, ctx.y, "purification images (no validation split)"


class FinePruningConfig(FinetuneConfig):
    """Fine-Pruning (Liu et al., RAID 2018; BackdoorBench defaults).

    Attributes:
        layer: the layer whose channels are pruned. Default: the *input* of the last
            ``nn.Linear`` (the pooled last-block features, as BackdoorBench). A named
            BatchNorm/Conv layer prunes its output channels instead.
        step_fraction: channels pruned per step (BackdoorBench ``once_prune_ratio`` 0.01;
            at least one channel per step).
        acc_ratio: prune while the validation accuracy stays at or above
            ``(1 - acc_ratio)`` × the unpruned model's (BackdoorBench: 0.1, but measured on
            the clean *test* set).
        max_fraction: never prune more than this share of the layer's channels.
        epochs: fine-tuning passes after pruning (BackdoorBench: the FT schedule, 100).
    """

    layer: str | None = None
    step_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.01
    acc_ratio: Annotated[float, Field(ge=0, le=1)] = 0.10
    max_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.95


class FinePruningStrategy(PurificationStrategy):
    """Prune the channels least active on clean data (dormant channels first), then fine-tune.

    The amount is chosen on the clean validation split; pruned weights stay exactly zero
    during fine-tuning. Needs no trigger.
    """

    name = "fine-pruning"
    config_cls = FinePruningConfig
    config: FinePruningConfig
    validation_fraction = 0.1

    def estimate_passes(self) -> tuple[float, float] | None:
        # the activation and validation passes of the pruning, then fine-tuning (measured)
        lo, hi = epoch_passes(self.config.epochs, (0.7, 1.05))
        return lo + 1.0, hi + 1.5

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        cfg = self.config
        model = ctx.model.eval()
        require_trainable(model, where="purify[fine-pruning]")  # it fine-tunes after pruning
        if cfg.layer is None:
            name, _ = find_last_linear(model)
            group = ChannelGroup(name, "linear-in", int(resolve_layer(model, name).in_features))  # type: ignore[arg-type]
        else:
            group = ChannelSet.find(model, [cfg.layer]).groups[0]
        units = ChannelSet([group])
        act = _mean_activation(model, group, ctx.images)
        order = torch.argsort(act, stable=True).cpu()  # dormant first
        c = units.total
        step = max(1, round(cfg.step_fraction * c))
        limit = min(c - 1, int(cfg.max_fraction * c))
        counts = list(range(step, limit + 1, step))
        x_val, y_val, where = _validation(ctx)
        chosen, base, accs = select_on_validation(
            model,
            units,
            [order[:k] for k in counts],
            x_val,
            y_val,
            cfg.acc_ratio,
            ctx.runtime,
        )
        n_pruned = counts[chosen] if chosen >= 0 else 0
        if n_pruned == 0:
            ctx.notes.append(
                "fine-pruning pruned nothing: removing even one step of channels cost more "
                "validation accuracy than acc_ratio allows; the model was only fine-tuned"
            )
        pruned = units.split(order[:n_pruned])
        record = apply_pruning(model, units, pruned)
        _log.info("purify.pruned", strategy=self.name, pruned=n_pruned, channels=c)
        handles = keep_pruned(model, units, pruned)
        try:
            hist, checkpoint = _fit(ctx, cfg, "purify[fine-pruning]")
        finally:
            for h in handles:
                h.remove()
        return StrategyOutcome(
            model=model,
            epochs=len(hist.epochs),
            details={
                "pruning": record.model_dump(),
                "selection": {
                    "on": where,
                    "images": len(y_val),
                    "accuracy_unpruned": base,
                    "accuracy_pruned": accs[chosen] if chosen >= 0 else base,
                    "counts_tried": counts[: len(accs)],
                    "accuracies": accs,
                },
                "final_loss": hist.final_loss,
                "checkpoint": checkpoint,
            },
        )


@torch.no_grad()
def _mean_activation(
    model: nn.Module, group: ChannelGroup, x: Tensor | ImageStore, batch: int = 256
) -> Tensor:
    """Mean activation per channel of ``group`` over ``x`` (spatial dims averaged)."""
    module = resolve_layer(model, group.layer)
    total = torch.zeros(group.channels, device=x.device)
    seen: list[Tensor] = []

    def grab(t: object) -> None:
        assert isinstance(t, Tensor)
        seen.append(t.detach().float().transpose(0, 1).reshape(group.channels, -1).mean(1))

    if group.kind == "linear-in":
        h = module.register_forward_pre_hook(lambda m, a: grab(a[0]))
    else:
        h = module.register_forward_hook(lambda m, a, o: grab(o))
    try:
        n = 0
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            seen.clear()
            model(xb)
            total += seen[-1] * len(xb)
            n += len(xb)
    finally:
        h.remove()
    return total / max(1, n)


class ANPConfig(StrategyConfig):
    """Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021; original-code defaults).

    Attributes:
        layers: layers whose channels are neurons (default: every affine BatchNorm, or
            every Conv when the model has none).
        eps: bound of the multiplicative neuron noise δ, ξ (``anp_eps``).
        pgd_steps: signed ascent steps on the noise per iteration (``anp_steps``).
        alpha: weight of the natural loss; ``1 − alpha`` weighs the perturbed loss.
        iterations: mask optimisation steps (``nb_iter``).
        batch_size: clean images per step.
        mask_lr: SGD learning rate of the masks (original 0.2; BackdoorBench 0.01).
        momentum: SGD momentum of the masks.
        threshold: prune neurons whose mask is below this value. ``None`` (default)
            chooses it on the clean validation split: the largest threshold of the grid
            ``threshold_step, 2·threshold_step, …, max_threshold`` whose validation
            accuracy stays at or above ``(1 - acc_ratio)`` × the unpruned model's.
        pruning_by: ``threshold`` — candidates are the mask thresholds of the grid;
            ``number`` — candidates prune the 1, 2, 3, … neurons with the lowest masks (the
            original code's ``pruning_by number``; finer, since many masks sit at exactly 0
            and a threshold step can add dozens of neurons at once). Either way the
            validation split picks the candidate.
        max_fraction: ``number`` mode never prunes more than this share of the neurons.
        threshold_step: grid step of that search (original sweep: 0.05).
        max_threshold: largest threshold tried.
        acc_ratio: tolerated relative validation accuracy drop (BackdoorBench: 0.1, but
            measured on the clean *test* set).
        bn_mode: ``train`` (the original code) — BatchNorm normalises with batch statistics
            while the masks are learned, which absorbs much of the noise; the running
            statistics are restored afterwards. ``eval`` — running statistics throughout
            (far harsher noise: with ``eps`` 0.4 small networks collapse).
    """

    layers: tuple[str, ...] | None = None
    eps: Annotated[float, Field(ge=0, lt=1)] = 0.4
    pgd_steps: Annotated[int, Field(ge=1)] = 1
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.2
    iterations: Annotated[int, Field(ge=1)] = 2000
    batch_size: Annotated[int, Field(ge=1)] = 128
    mask_lr: Annotated[float, Field(gt=0)] = 0.2
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    threshold: Annotated[float, Field(gt=0, le=1)] | None = None
    pruning_by: Literal["threshold", "number"] = "threshold"
    max_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    threshold_step: Annotated[float, Field(gt=0, le=0.5)] = 0.05
    max_threshold: Annotated[float, Field(gt=0, le=1)] = 0.9
    acc_ratio: Annotated[float, Field(ge=0, le=1)] = 0.10
    bn_mode: Literal["train", "eval"] = "train"


class ANPStrategy(PurificationStrategy):
    """Learn per-neuron masks that keep clean accuracy under adversarial neuron noise, then
    prune the neurons whose masks fall low (backdoor neurons are the noise-sensitive ones).

    The masks are optimised with BatchNorm in train mode, as in the original code (the
    model's running statistics are restored afterwards); a mask scales a BatchNorm
    channel's scale *and* shift, so a mask of 0 is exactly the pruning weight edit. Needs
    no trigger.
    """

    name = "anp"
    config_cls = ANPConfig
    config: ANPConfig
    validation_fraction = 0.1

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        cfg = self.config
        model = ctx.model.eval()
        units = ChannelSet.find(model, cfg.layers)
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        if cfg.bn_mode == "train":
            model.train()
        try:
            with frozen_parameters(model):
                masks, iters = self._optimise(ctx, model, units)
        finally:
            with torch.no_grad():  # batch statistics seen in train mode are discarded
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
            model.eval()
        order = torch.argsort(masks, stable=True).cpu()
        sorted_m = masks[order].cpu()
        grid: list[float]
        if cfg.threshold is not None:
            grid = [cfg.threshold]
            cands = [order[: int((sorted_m < cfg.threshold).sum())]]
        elif cfg.pruning_by == "number":  # one more neuron per candidate, lowest mask first
            limit = min(units.total - 1, int(cfg.max_fraction * units.total))
            grid = [float(sorted_m[k - 1]) for k in range(1, limit + 1)]
            cands = [order[:k] for k in range(1, limit + 1)]
        else:
            n_grid = round(cfg.max_threshold / cfg.threshold_step)
            grid = [round((i + 1) * cfg.threshold_step, 6) for i in range(n_grid)]
            cands = [order[: int((sorted_m < t).sum())] for t in grid]
        x_val, y_val, where = _validation(ctx)
        if cfg.threshold is not None:
            chosen = 0
            base = evaluate_accuracy(model, x_val, y_val, runtime=ctx.runtime)
            accs = [masked_accuracy(model, units, cands[0], x_val, y_val, ctx.runtime)]
        else:
            chosen, base, accs = select_on_validation(
                model, units, cands, x_val, y_val, cfg.acc_ratio, ctx.runtime
            )
        prune = cands[chosen] if chosen >= 0 else order[:0]
        if len(prune) == 0:
            ctx.notes.append(
                "anp pruned nothing: no threshold kept the validation accuracy within acc_ratio "
                "(or no mask fell below the threshold); the weights are unchanged (status refused)"
            )
        record = apply_pruning(model, units, units.split(prune))
        _log.info("purify.pruned", strategy=self.name, pruned=record.pruned, total=units.total)
        return StrategyOutcome(
            model=model,
            status="purified" if record.pruned else "refused",
            epochs=0,
            details={
                "pruning": record.model_dump(),
                "iterations": iters,
                "threshold": grid[chosen] if chosen >= 0 else None,
                "pruning_by": "threshold" if cfg.threshold is not None else cfg.pruning_by,
                "selection": {
                    "on": where,
                    "images": len(y_val),
                    "accuracy_unpruned": base,
                    "thresholds_tried": grid[: len(accs)],
                    "accuracies": accs,
                },
                "mask_quantiles": {
                    name: float(torch.quantile(masks.cpu(), q))
                    for name, q in (("min", 0.0), ("p01", 0.01), ("p05", 0.05), ("median", 0.5))
                },
            },
        )

    def _noise_ascent(
        self,
        ctx: PurifyContext,
        model: nn.Module,
        xb: Tensor | None,
        yb: Tensor | None,
        noise: tuple[Tensor, Tensor],
        global_n: int,
    ) -> None:
        """One signed ascent step of the neuron noise on the (global) batch loss.

        Under ``torchrun`` each rank's noise gradient (``None`` images: an empty shard) is
        weighted by its share of the batch and summed over the ranks before the sign.
        """
        cfg = self.config
        grads: list[Tensor | None] = [None, None]
        if xb is not None and yb is not None:
            adv = F.cross_entropy(model(xb), yb)
            # shift noise exists for BatchNorm channels only (allow_unused)
            grads = list(torch.autograd.grad(adv, list(noise), allow_unused=True))
            if ctx.dist is not None:
                w = len(yb) / global_n
                grads = [None if gr is None else gr * w for gr in grads]
        if ctx.dist is not None:
            grads = ctx.dist.sum_gradients(grads, list(noise))
        with torch.no_grad():  # ascend the loss, stay in the eps-box
            step = cfg.eps / cfg.pgd_steps
            for t, gr in zip(noise, grads, strict=True):
                if gr is not None:
                    t.add_(step * gr.sign()).clamp_(-cfg.eps, cfg.eps)

    def _optimise(
        self, ctx: PurifyContext, model: nn.Module, units: ChannelSet
    ) -> tuple[Tensor, int]:
        cfg = self.config
        dev = ctx.device
        mask = units.ones(dev).requires_grad_(True)
        noise_w = torch.zeros(units.total, device=dev, requires_grad=True)
        noise_b = torch.zeros(units.total, device=dev, requires_grad=True)
        mask_opt = torch.optim.SGD([mask], lr=cfg.mask_lr, momentum=cfg.momentum)
        g = torch.Generator().manual_seed(ctx.runtime.seed + 17)
        n = len(ctx.y)
        bs = min(cfg.batch_size, n)
        done = 0
        dist = ctx.dist
        noisy = cfg.eps > 0 and cfg.alpha < 1
        with ChannelMask(model, units, mask) as cm:
            for it in range(cfg.iterations):
                if ctx.budget():
                    break
                idx = torch.randint(0, n, (bs,), generator=g).to(dev)
                if noisy:
                    with torch.no_grad():
                        for t in (noise_w, noise_b):
                            t.copy_(
                                (torch.rand(units.total, generator=g) * 2 - 1).to(dev) * cfg.eps
                            )

                def shard_loss(local: Tensor, part: slice, total: int = len(idx)) -> Tensor:
                    xb, yb = ctx.images[local], ctx.y[local]
                    loss_rob: Tensor | None = None
                    if noisy:
                        cm.scale_noise, cm.shift_noise = noise_w, noise_b
                        for _ in range(cfg.pgd_steps):
                            self._noise_ascent(ctx, model, xb, yb, (noise_w, noise_b), total)
                        loss_rob = F.cross_entropy(model(xb), yb)
                        cm.scale_noise = cm.shift_noise = None
                    loss_nat = F.cross_entropy(model(xb), yb)
                    if loss_rob is not None:
                        return cfg.alpha * loss_nat + (1 - cfg.alpha) * loss_rob
                    return loss_nat  # no noise: the perturbed model is the natural one

                mask_opt.zero_grad(set_to_none=True)
                if dist is not None and dist.bounds(len(idx))[0] == dist.bounds(len(idx))[1]:
                    # an empty shard still joins the noise all-reduces of the other ranks
                    for _ in range(cfg.pgd_steps if noisy else 0):
                        self._noise_ascent(ctx, model, None, None, (noise_w, noise_b), len(idx))
                loss = train_step(dist, idx, shard_loss, [mask])
                mask_opt.step()
                with torch.no_grad():
                    mask.clamp_(0, 1)
                done = it + 1
                if done % 100 == 0 or done == cfg.iterations:
                    ctx.progress("purify[anp]", done, cfg.iterations, loss=float(loss.detach()))
        return mask.detach(), done


STRATEGIES.register(FinePruningStrategy.name, FinePruningStrategy)
STRATEGIES.register(ANPStrategy.name, ANPStrategy)

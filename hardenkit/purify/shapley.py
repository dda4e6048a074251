"""ShapPruning — few-shot / data-free backdoor repair by Shapley-value channel pruning
(Guan et al., CVPR 2022; ALGORITHMS.md §3).

Four stages, as in the paper's framework: **trigger & data reverse → detection → Shapley
estimation → mitigation**.

1. *Data*: ``shots_per_class`` real images per class (1 by default), or — data-free — class
   images synthesised from the model by BatchNorm-statistics inversion
   (:mod:`hardenkit.purify.synthesis`). Each image gets ``augment_copies`` randomly
   shifted/flipped copies (reduces the 1/(K−1) granularity of a few-shot ASR).
2. *Trigger reverse + detection*: the scan given to the Purifier, or Neural Cleanse + MAD run
   on those images (:class:`~hardenkit.scan.Scanner`).
3. *Shapley estimation* (Neuron-Shapley truncated Monte-Carlo): players are channels
   (BatchNorm channels by default); the value of a coalition of removed channels is the
   backdoor strength under the inverted trigger(s). A removed channel is *mean-ablated* by
   default: it outputs the constant whose activation is its mean activation on the clean
   images, so the layers after it keep their input statistics (``ablation="zero"``: 0).
   Channels are removed along a permutation; the marginal of a channel is the drop in
   value its removal causes; once the inverted-trigger ASR falls to ``truncation_asr`` the
   rest of the permutation gets marginal 0 unevaluated. Accelerations: after
   ``discard_after`` permutations, channels whose running estimate is below
   ``discard_threshold`` leave the game; with probability ``1 − epsilon`` a permutation
   orders the remaining channels by their current estimate (ε-greedy), otherwise uniformly
   at random. Prefixes are evaluated in batches (one forward pass scores many masks).
4. *Mitigation*: prune channels by decreasing Shapley value until the inverted-trigger ASR
   on the few-shot images is at most ``asr_stop``, stopping before the clean accuracy on the
   defender's images drops by more than ``max_clean_drop`` or more than
   ``max_prune_fraction`` of the channels would go.

The paper's full text and code were not available: everything below the abstract level
(value function, players, thresholds, stop rule) is a documented, configurable
reconstruction — the defaults are *not from the paper*.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .._utils.progress import ProgressCallback
from ..data.sampling import balanced_subsample
from ..logging import get_logger
from ..scan import ScanConfig, Scanner, ScanResult
from ..training import augment_batch, evaluate_accuracy
from ..triggers import Trigger
from .base import (
    STRATEGIES,
    PurificationStrategy,
    PurifyContext,
    ScanSource,
    StrategyConfig,
    StrategyOutcome,
    TriggerLabels,
    pixel_runtime,
    select_triggers,
)
from .channels import ChannelMask, ChannelSet, ablation_fill, apply_pruning
from .synthesis import SynthesisConfig, synthesize_class_images

__all__ = ["ShapleyPruningConfig", "ShapleyPruningStrategy", "shapley_estimate"]

_log = get_logger("purify.shapley")

_FEW_SHOT_SCAN: dict[str, Any] = {
    "detectors": ["neural-cleanse"],
    "max_images": None,
    "holdout_fraction": 0.0,
    "min_images_per_class": 1,
    "detector_options": {"neural-cleanse": {"epochs": 300, "batch_size": 64}},
}


class ShapleyPruningConfig(StrategyConfig):
    """ShapPruning settings. Defaults below the abstract level are *not from the paper*.

    Attributes:
        data: ``auto`` — the given clean images, or synthesised ones when there are none;
            ``given`` — real images only (error without); ``synthesize`` — always
            data-free, ignoring any given images (the clean-accuracy check then uses the
            synthetic images too).
        shots_per_class: real images per class used for inversion and Shapley estimation
            (``None`` = all given images).
        augment_copies: random shift/flip copies added per image.
        synthesis: BatchNorm-statistics inversion settings (data-free mode).
        scan: Scanner config overrides for the few-shot inversion when the Purifier got
            no scan (default: Neural Cleanse only, 300 epochs, every image used, ASR on the
            inversion images); nested dicts such as ``detector_options`` are merged key by
            key into the default.
        layers: layers whose channels are players (default: every affine BatchNorm, or every
            Conv when the model has none).
        ablation: how a removed channel is switched off, in the game and in the pruned
            model — ``mean``: it outputs the constant whose activation is its mean activation
            on the clean images (BN ``γ = 0``, ``β`` = that constant), so later layers keep
            their input statistics; ``zero``: it outputs 0 (BN ``γ = β = 0``).
        value: the coalition value — ``target-prob`` (mean target-class probability of the
            triggered images; smooth) or ``asr`` (share classified as the target).
        truncation_asr: truncate a permutation once the inverted-trigger ASR is at most this.
        epsilon: probability of a uniformly random permutation (else greedy by estimate).
        discard_after: permutations before channels may be discarded.
        discard_threshold: channels whose running Shapley estimate is below this leave the
            game (in ``value`` units).
        max_permutations: Monte-Carlo permutations.
        asr_stop: mitigation stops once the inverted-trigger ASR is at most this.
        max_prune_fraction: never prune more than this share of the channels. The paper
            prunes under 1 % of a ResNet's channels; on the small test and benchmark CNNs
            (112–224 BatchNorm channels) 1 % is one or two channels, too few, so the cap is 5 %.
        max_clean_drop: mitigation stops before the clean accuracy (on the defender's
            images, or the synthetic ones) drops by more than this (absolute).
        max_clean_images: cap on the clean images used for that check (and for the mean
            ablation fill): a class-balanced random subsample, whatever the data's order.
        eval_batch: images per batched forward pass when scoring masks.
        trigger_labels: ``most-anomalous`` (default) — estimate Shapley values for the most
            anomalous flagged label's trigger only; ``all-flagged`` — for all flagged labels'
            triggers together. Triggers you supply with ``ScanResult.from_triggers`` are all
            used.
    """

    data: Literal["auto", "given", "synthesize"] = "auto"
    shots_per_class: Annotated[int, Field(ge=1)] | None = 1
    augment_copies: Annotated[int, Field(ge=0)] = 4
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    scan: dict[str, Any] = Field(default_factory=dict)
    layers: tuple[str, ...] | None = None
    ablation: Literal["mean", "zero"] = "mean"
    value: Literal["target-prob", "asr"] = "target-prob"
    truncation_asr: Annotated[float, Field(ge=0, lt=1)] = 0.05
    epsilon: Annotated[float, Field(ge=0, le=1)] = 0.2
    discard_after: Annotated[int, Field(ge=1)] = 5
    discard_threshold: Annotated[float, Field(ge=0)] = 0.01
    max_permutations: Annotated[int, Field(ge=1)] = 100
    asr_stop: Annotated[float, Field(ge=0, lt=1)] = 0.05
    max_prune_fraction: Annotated[float, Field(gt=0, le=1)] = 0.05
    max_clean_drop: Annotated[float, Field(ge=0, le=1)] = 0.05
    max_clean_images: Annotated[int, Field(ge=1)] = 512
    eval_batch: Annotated[int, Field(ge=1)] = 1024
    trigger_labels: TriggerLabels = "most-anomalous"


class _Game:
    """Scores channel masks: backdoor value and ASR on triggered images, clean accuracy."""

    def __init__(
        self,
        model: nn.Module,
        units: ChannelSet,
        xt: Tensor,
        targets: Tensor,
        eval_batch: int,
        value: str,
        fill: Tensor | None = None,
    ) -> None:
        self.model = model
        self.units = units
        self.fill = fill
        self.xt = xt
        self.targets = targets
        self.rows = max(1, eval_batch // max(1, len(xt)))
        self.value = value
        self.forwards = 0

    @torch.no_grad()
    def score(self, masks: Tensor) -> tuple[Tensor, Tensor]:
        """``(value, asr)`` per mask row of ``masks`` (R, P)."""
        vals: list[Tensor] = []
        asrs: list[Tensor] = []
        n = len(self.xt)
        for i in range(0, len(masks), self.rows):
            m = masks[i : i + self.rows]
            r = len(m)
            with ChannelMask(self.model, self.units, m, self.fill):
                logits = self.model(self.xt.repeat(r, *([1] * (self.xt.dim() - 1))))
            self.forwards += 1
            logits = logits.float().view(r, n, -1)
            tgt = self.targets.view(1, n, 1).expand(r, n, 1)
            hit = (logits.argmax(-1) == self.targets.view(1, n)).float().mean(1)
            prob = logits.softmax(-1).gather(-1, tgt).squeeze(-1).mean(1)
            vals.append(hit if self.value == "asr" else prob)
            asrs.append(hit)
        return torch.cat(vals), torch.cat(asrs)


def _prefix_masks(total: int, order: Tensor, lo: int, hi: int, device: torch.device) -> Tensor:
    """Masks with the first ``j+1`` channels of ``order`` removed, for j in [lo, hi)."""
    masks = torch.ones(hi - lo, total, device=device)
    for r, j in enumerate(range(lo, hi)):
        masks[r, order[: j + 1]] = 0
    return masks


def shapley_estimate(
    game: _Game,
    cfg: ShapleyPruningConfig,
    generator: torch.Generator,
    stop: Any = None,
    progress: ProgressCallback | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Truncated Monte-Carlo permutation Shapley values with discarding and ε-greedy order.

    ``progress`` is called after every permutation. Returns ``(estimates, samples per
    channel, info)``.
    """
    p = game.units.total
    dev = game.xt.device
    est = torch.zeros(p, dtype=torch.float64)
    count = torch.zeros(p, dtype=torch.float64)
    active = torch.arange(p)
    v_full, asr_full = (t.item() for t in game.score(torch.ones(1, p, device=dev)))
    info: dict[str, Any] = {"value_unpruned": v_full, "asr_unpruned": asr_full}
    perms = greedy = evaluated = 0
    truncated = 0
    chunk = game.rows
    for t in range(cfg.max_permutations):
        if stop is not None and stop():
            break
        if len(active) == 0:
            break
        use_greedy = (
            t >= cfg.discard_after and float(torch.rand((), generator=generator)) >= cfg.epsilon
        )
        if use_greedy:
            jitter = torch.rand(len(active), generator=generator, dtype=torch.float64) * 1e-9
            order = active[torch.argsort(est[active] + jitter, descending=True)]
            greedy += 1
        else:
            order = active[torch.randperm(len(active), generator=generator)]
        marg = torch.zeros(len(order), dtype=torch.float64)
        prev = v_full
        cut = len(order)
        for lo in range(0, len(order), chunk):
            hi = min(len(order), lo + chunk)
            vals, asrs = game.score(_prefix_masks(p, order.to(dev), lo, hi, dev))
            vals64 = vals.double().cpu()
            hit = (asrs.cpu() <= cfg.truncation_asr).nonzero()
            end = hi if len(hit) == 0 else lo + int(hit[0]) + 1
            seg = vals64[: end - lo]
            prevs = torch.cat([torch.tensor([prev], dtype=torch.float64), seg[:-1]])
            marg[lo:end] = prevs - seg
            prev = float(seg[-1])
            evaluated += end - lo
            if len(hit):
                cut = end
                truncated += 1
                break
        del cut  # channels after the truncation point keep marginal 0
        count[order] += 1
        est[order] += (marg - est[order]) / count[order]
        perms += 1
        if t + 1 >= cfg.discard_after:
            active = active[est[active] >= cfg.discard_threshold]
        if progress is not None:
            progress("purify[shapley-pruning]", t + 1, cfg.max_permutations, players=len(active))
    info.update(
        permutations=perms,
        greedy_permutations=greedy,
        truncated_permutations=truncated,
        masks_evaluated=evaluated,
        forward_passes=game.forwards,
        channels_left_in_game=len(active),
    )
    return est, count, info


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``over`` wins, nested dicts are merged key by key."""
    out = dict(base)
    for key, val in over.items():
        old = out.get(key)
        out[key] = _merge(old, val) if isinstance(old, dict) and isinstance(val, dict) else val
    return out


def _shots(y: Tensor, per_class: int | None, k: int, generator: torch.Generator) -> Tensor:
    """Indices of up to ``per_class`` images of each class (seeded)."""
    if per_class is None:
        return torch.arange(len(y))
    perm = torch.randperm(len(y), generator=generator)
    ys = y.cpu()[perm]
    picked = [perm[ys == c][:per_class] for c in range(k)]
    return torch.cat(picked).sort().values


class ShapleyPruningStrategy(PurificationStrategy):
    """Prune the few channels with the largest Shapley value for the inverted-trigger
    backdoor. Works with one clean image per class, or none (``Purifier.run(None)`` with an
    ``input_shape``): class images are then synthesised from the model.
    """

    name = "shapley-pruning"
    config_cls = ShapleyPruningConfig
    config: ShapleyPruningConfig
    data_free = True

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        cfg = self.config
        rt = ctx.runtime
        g = torch.Generator().manual_seed(rt.seed + 23)
        model = ctx.model.eval()
        k = ctx.num_classes
        details: dict[str, Any] = {}
        # 1. data
        have = len(ctx.y) > 0
        if cfg.data == "given" and not have:
            ctx.notes.append("shapley-pruning with data='given' got no clean images")
            return StrategyOutcome(model=model, status="refused")
        if cfg.data == "synthesize" or not have:
            shape = ctx.input_shape
            xs, ys, syn = synthesize_class_images(
                ctx.original,
                k,
                shape,
                cfg.synthesis,
                seed=rt.seed,
                device=ctx.device,
                progress=ctx.progress,
            )
            details["data"] = {"source": "synthesized", **syn}
            ctx.notes.append(
                f"data-free: {len(ys)} class images synthesised from the model (BatchNorm "
                f"statistics inversion); the model assigns {100 * syn['class_accuracy']:.0f}% "
                "of them to their intended class"
            )
        else:
            idx = _shots(ctx.y, cfg.shots_per_class, k, g).to(ctx.device)
            xs, ys = ctx.images[idx], ctx.y[idx]
            details["data"] = {"source": "given", "images": len(ys)}
        if cfg.augment_copies:
            ag = torch.Generator(device=xs.device).manual_seed(rt.seed + 29)
            copies = [augment_batch(xs, ag, pad=2) for _ in range(cfg.augment_copies)]
            xs_aug = torch.cat([xs, *copies])
            ys_aug = ys.repeat(1 + cfg.augment_copies)
        else:
            xs_aug, ys_aug = xs, ys
        details["data"]["with_augmented_copies"] = len(ys_aug)
        # clean-accuracy check images: the defender's real images when there are more of them
        # than few-shot images with their augmented copies, else the latter
        # (a class-balanced random subsample: the images are often class-sorted, and a
        # prefix would judge clean accuracy on two or three classes)
        if len(ctx.y) >= len(ys_aug) and cfg.data != "synthesize":
            sub = balanced_subsample(ctx.y, cfg.max_clean_images, seed=rt.seed + 31)
            sub = sub.to(ctx.y.device)
            cx, cy = ctx.images[sub], ctx.y[sub]
        else:
            sub = balanced_subsample(ys_aug, cfg.max_clean_images, seed=rt.seed + 31)
            sub = sub.to(ys_aug.device)
            cx, cy = xs_aug[sub], ys_aug[sub]
        # 2. trigger reverse + detection
        scan = ctx.scan
        own_scan: ScanResult | None = None
        source: ScanSource | None = None
        if scan is None:
            scan_cfg = ScanConfig.model_validate(_merge(_FEW_SHOT_SCAN, cfg.scan))
            source = (scan_cfg, [(xs_aug, ys_aug)])
            own_scan = scan = Scanner(
                ctx.original, k, config=scan_cfg, runtime=pixel_runtime(rt), progress=ctx.progress
            ).run(source[1])
            details["scan"] = {
                "verdict": scan.verdict,
                "flagged_labels": scan.flagged_labels,
                "on": details["data"]["source"] + " images",
            }
        if not scan.is_backdoored or not scan.triggers:
            ctx.notes.append(
                f"shapley-pruning: the scan found no backdoor trigger (verdict {scan.verdict}); "
                "nothing was pruned"
            )
            return StrategyOutcome(
                model=model,
                status="nothing-to-purify",
                details=details,
                scan=own_scan,
                scan_source=source,
            )
        triggers: dict[int, Trigger] = dict(select_triggers(scan, cfg.trigger_labels))
        # 3. Shapley estimation on the triggered few-shot images
        xt_parts, tgt_parts = [], []
        for label, trig in triggers.items():
            keep = ys_aug != label
            xt_parts.append(trig.apply(xs_aug[keep]))
            tgt_parts.append(torch.full((int(keep.sum()),), label, device=xs_aug.device))
        xt, tg = torch.cat(xt_parts), torch.cat(tgt_parts)
        units = ChannelSet.find(model, cfg.layers)
        fill = None
        if cfg.ablation == "mean":
            fill, acts = ablation_fill(model, units, cx)
            details["ablation"] = {"mode": "mean", "activations": acts, "images": len(cx)}
        else:
            details["ablation"] = {"mode": "zero"}
        game = _Game(model, units, xt, tg, cfg.eval_batch, cfg.value, fill)
        est, count, info = shapley_estimate(game, cfg, g, stop=ctx.budget, progress=ctx.progress)
        details["shapley"] = info
        # 4. mitigation
        record, mit = self._mitigate(ctx, game, est, cx, cy)
        details["pruning"] = record.model_dump()
        details["mitigation"] = mit
        top = torch.argsort(est, descending=True)[:10]
        details["top_channels"] = [
            {
                "layer": units.locate(int(i))[0].layer,
                "channel": units.locate(int(i))[1],
                "shapley": float(est[i]),
                "samples": int(count[i]),
            }
            for i in top
        ]
        _log.info("purify.pruned", strategy=self.name, pruned=record.pruned, total=units.total)
        status: Literal["purified", "refused"] = "purified" if record.pruned else "refused"
        return StrategyOutcome(
            model=model, status=status, details=details, scan=own_scan, scan_source=source
        )

    def _mitigate(
        self, ctx: PurifyContext, game: _Game, est: Tensor, cx: Tensor, cy: Tensor
    ) -> tuple[Any, dict[str, Any]]:
        cfg = self.config
        units = game.units
        model = game.model
        dev = cx.device
        p = units.total
        limit = max(1, math.floor(cfg.max_prune_fraction * p))
        cand = torch.argsort(est, descending=True)
        cand = cand[est[cand] > 0][:limit]
        base_clean = evaluate_accuracy(model, cx, cy, runtime=ctx.runtime)
        v0, a0 = (float(t) for t in game.score(torch.ones(1, p, device=dev)))
        chosen = 0
        reason = "no channel has a positive Shapley value"
        trail: list[dict[str, float]] = []
        best = (a0, 0)
        if a0 <= cfg.asr_stop:
            cand = cand[:0]
            reason = (
                f"the inverted trigger(s) already fail on the few-shot images (ASR "
                f"{100 * a0:.1f}% <= asr_stop)"
            )
        for j in range(len(cand)):
            mask = units.ones(dev)
            mask[cand[: j + 1].to(dev)] = 0
            val, asr = (float(t[0]) for t in game.score(mask[None]))
            with ChannelMask(model, units, mask, game.fill):
                clean = evaluate_accuracy(model, cx, cy, runtime=ctx.runtime)
            trail.append({"pruned": j + 1, "asr": asr, "value": val, "clean_accuracy": clean})
            if base_clean - clean > cfg.max_clean_drop + 1e-12:
                reason = (
                    f"stopped before pruning channel {j + 1}: clean accuracy would drop "
                    f"{100 * (base_clean - clean):.1f} points > max_clean_drop"
                )
                break
            if asr < best[0]:
                best = (asr, j + 1)
            if asr <= cfg.asr_stop:
                chosen = j + 1
                reason = f"inverted-trigger ASR {100 * asr:.1f}% <= asr_stop"
                break
        else:
            if len(cand):
                reason = (
                    f"reached the limit of {len(cand)} channels (max_prune_fraction or positive "
                    "Shapley values) without the ASR falling to asr_stop"
                )
        if chosen == 0 and best[1] > 0:
            chosen = best[1]
            ctx.notes.append(
                f"shapley-pruning did not bring the inverted-trigger ASR to "
                f"{100 * cfg.asr_stop:.0f}% ({reason}); pruned the {chosen} channel(s) with the "
                f"lowest ASR {100 * best[0]:.1f}%"
            )
        if chosen == 0:
            ctx.notes.append(
                f"shapley-pruning pruned nothing ({reason}); the weights are unchanged "
                "(status refused)"
            )
        record = apply_pruning(model, units, units.split(cand[:chosen]), game.fill)
        return record, {
            "stop_reason": reason,
            "clean_images": len(cy),
            "clean_accuracy_unpruned": base_clean,
            "asr_unpruned": a0,
            "value_unpruned": v0,
            "trail": trail,
        }


STRATEGIES.register(ShapleyPruningStrategy.name, ShapleyPruningStrategy)

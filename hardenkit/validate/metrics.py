"""Functional metrics: BA, ASR, RA, DER, Wilson confidence intervals and the paired interval
of an accuracy drop.

Definitions (BackdoorBench, ALGORITHMS.md §0):
    * **BA** — top-1 accuracy on the full clean test set.
    * **ASR** — fraction of triggered test images classified as the attacker's target, over
      images whose true label is *not* the target (all-to-one); all-to-all: over all images,
      success = the mapped label.
    * **RA** — accuracy of the same triggered images against their true labels.
    * **DER** = [max(0, ΔASR) − max(0, ΔBA) + 1] / 2, in [0, 1].

Example:
    >>> from hardenkit.validate import der, wilson_interval
    >>> der(ba_before=0.90, ba_after=0.89, asr_before=0.99, asr_after=0.01)
    0.985
    >>> [round(v, 3) for v in wilson_interval(9, 10)]
    [0.596, 0.982]
    >>> [round(v, 3) for v in paired_drop_interval(right_before_only=6, right_after_only=2, n=250)]
    [-0.007, 0.039]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from .._utils.finite import ensure_finite_logits
from .._utils.modes import eval_mode
from ..config import RuntimeConfig, parse_config
from ..data.loaders import BatchSource, iter_batches
from ..data.store import ImageStore
from ..errors import ConfigError, DataError, ModelCompatibilityError
from ..training import check_logits, predict
from ..triggers import Trigger, as_trigger

__all__ = [
    "ChanceCheck",
    "RateEstimate",
    "TargetSpec",
    "attack_success_rate",
    "benign_accuracy",
    "chance_check",
    "chance_check_of",
    "der",
    "paired_accuracy",
    "paired_drop_interval",
    "robust_accuracy",
    "wilson_interval",
]

TargetSpec = int | Mapping[int, int]
TriggerLike = Trigger | Callable[[Tensor], Tensor]


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if total <= 0:
        return (0.0, 1.0)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    # clamp so float rounding never puts the point estimate outside its own interval
    lo = 0.0 if successes == 0 else min(p, max(0.0, centre - half))
    hi = 1.0 if successes == total else max(p, min(1.0, centre + half))
    return (lo, hi)


def paired_drop_interval(
    right_before_only: int, right_after_only: int, n: int, z: float = 1.959964
) -> tuple[float, float]:
    """95 % interval of an accuracy *drop* measured on the same ``n`` images before and after.

    ``right_before_only`` images were classified correctly before and wrongly after,
    ``right_after_only`` the other way round (the discordant pairs; the images both models get
    right or wrong do not move the drop, only its denominator). The drop is
    ``(right_before_only - right_after_only) / n``. The interval is Agresti and Min's adjusted
    Wald interval for matched pairs ("Wald+2": half an image added to each cell of the 2x2
    table, Statistics in Medicine 24, 2005), clipped to [-1, 1]. Two accuracies on the same
    images are correlated: their own (Wilson) intervals overlap far more than the interval of
    the difference does, so judge a drop by this one.
    """
    if min(right_before_only, right_after_only) < 0 or n < right_before_only + right_after_only:
        raise ValueError(
            f"discordant counts must be >= 0 and add up to at most n, got "
            f"{right_before_only} + {right_after_only} of {n}"
        )
    b, c, m = right_before_only, right_after_only, n + 2
    diff = (b - c) / m
    var = (b + c + 1) - (b - c) ** 2 / m
    half = z * math.sqrt(max(var, 0.0)) / m
    return (max(-1.0, diff - half), min(1.0, diff + half))


def paired_accuracy(
    before: nn.Module,
    after: nn.Module,
    x: Tensor | ImageStore,
    y: Tensor,
    *,
    runtime: RuntimeConfig | dict[str, Any] | None = None,
) -> tuple[float, float, tuple[float, float]]:
    """Accuracy of ``before`` and ``after`` on the same images ``(x, y)``, and the 95 %
    interval of the drop between them (:func:`paired_drop_interval`)."""
    if len(y) == 0:
        raise DataError("cannot evaluate accuracy on an empty set.")
    yc = y.cpu()
    right_before = predict(before, x, runtime=runtime).argmax(1) == yc
    right_after = predict(after, x, runtime=runtime).argmax(1) == yc
    interval = paired_drop_interval(
        int((right_before & ~right_after).sum()), int((~right_before & right_after).sum()), len(yc)
    )
    return float(right_before.float().mean()), float(right_after.float().mean()), interval


@dataclass(frozen=True)
class ChanceCheck:
    """Is a model's accuracy on some labelled images better than chance?

    ``chance`` is the accuracy that predictions *unrelated to the images* would reach: with the
    model's own prediction frequencies, ``sum_c share_labels(c) * share_predicted(c)`` (the
    chance agreement of Cohen's kappa). A constant guess of the largest class reaches exactly
    its share (``majority``); a model whose inputs do not fit it (another class order, pixel
    range or normalisation) reaches about ``chance`` whatever it predicts. Without the
    prediction frequencies ``chance`` is ``majority``, the highest chance agreement any
    predictions can have. ``above`` is ``True`` when the lower end of the accuracy's 95 %
    Wilson interval is above ``chance``, ``False`` when it is not and there were at least
    ``min_images_per_class`` images per class (enough for a working model to show itself),
    ``None`` when there were fewer (too few to tell) or when the labels hold a single class
    (no accuracy can tell a model from a guess there: ``classes`` is 1).
    """

    accuracy: float
    ci_low: float
    chance: float
    images: int
    above: bool | None
    majority: float | None = None
    """The largest class's share of the labels: a constant guess's accuracy."""
    classes: int | None = None
    """How many classes the labels hold."""

    def describe(self) -> str:
        """One line for notes and messages."""
        if self.classes == 1:
            return (
                f"the {self.images} labelled images all belong to one class: accuracy on them "
                "cannot tell a working model from a constant guess"
            )
        guess = (
            ""
            if self.majority is None
            else (f"; a constant guess of the largest class {100 * self.majority:.2f}%")
        )
        return (
            f"accuracy {100 * self.accuracy:.2f}% (95% lower bound {100 * self.ci_low:.2f}%) "
            f"on {self.images} labelled images against {100 * self.chance:.2f}% for "
            f"predictions unrelated to the images{guess}"
        )


def chance_check(
    correct: int,
    labels: Tensor,
    num_classes: int,
    *,
    predicted_counts: Tensor | None = None,
    min_images_per_class: int = 5,
) -> ChanceCheck:
    """Compare ``correct`` right predictions on ``labels`` with chance.

    A model at chance on images that are supposed to be its clean data means the images or
    labels do not fit the model (another class order, pixel range or normalisation, the
    wrong model), or the model does not work: every accuracy or repair measured on them is
    meaningless. ``predicted_counts`` (how many images the model put in each class) makes
    chance the agreement of predictions with those frequencies but unrelated to the images
    (:class:`ChanceCheck`), so a good model on imbalanced labels is not mistaken for a guess;
    without it chance is the largest class's share.

    Example:
        >>> import torch
        >>> y = torch.arange(10).repeat(20)  # 200 images, 10 balanced classes
        >>> chance_check(24, y, 10).above, chance_check(120, y, 10).above
        (False, True)
        >>> chance_check(1, y[:10], 10).above is None  # one image per class: too few to tell
        True
        >>> y = torch.tensor([0] * 950 + [1] * 50)  # 95 % of the labels are class 0
        >>> chance_check(960, y, 2).above  # against the constant guess (95 %): not above
        False
        >>> chance_check(960, y, 2, predicted_counts=torch.tensor([940, 60])).above
        True
    """
    n = len(labels)
    if n == 0:
        raise DataError("chance_check needs at least one labelled image.")
    if not 0 <= correct <= n:
        raise ConfigError(f"correct must be in [0, {n}], got {correct}.")
    share = torch.bincount(labels.detach().cpu().long(), minlength=num_classes).double() / n
    majority = float(share.max())
    chance = majority
    if predicted_counts is not None:
        pred = predicted_counts.detach().cpu().double().flatten()
        if len(pred) < len(share) or float(pred.sum()) <= 0:
            raise ConfigError(
                f"predicted_counts must count the predictions of {num_classes} classes, got "
                f"{len(pred)} entries summing to {float(pred.sum()):g}."
            )
        pred = pred[: len(share)] / pred.sum()
        chance = float((share * pred).sum())
    classes = int((share > 0).sum())
    acc = correct / n
    low = wilson_interval(correct, n)[0]
    above: bool | None = low > chance
    if classes < 2 or (not above and n < min_images_per_class * num_classes):
        above = None
    return ChanceCheck(
        accuracy=acc,
        ci_low=low,
        chance=chance,
        images=n,
        above=above,
        majority=majority,
        classes=classes,
    )


def chance_check_of(
    model: nn.Module,
    x: Tensor | ImageStore,
    y: Tensor,
    num_classes: int,
    *,
    runtime: RuntimeConfig | dict[str, Any] | None = None,
) -> ChanceCheck:
    """:func:`chance_check` of ``model``'s predictions on the labelled images ``(x, y)``
    (pixels in [0, 1]; non-finite logits raise :class:`~hardenkit.errors.NonFiniteError`)."""
    pred = predict(model, x, runtime=runtime).argmax(1)
    correct = int((pred == y.cpu()).sum())
    counts = torch.bincount(pred, minlength=num_classes)
    return chance_check(correct, y, num_classes, predicted_counts=counts)


class RateEstimate(BaseModel):
    """A measured rate with its sample count and 95% Wilson interval.

    ``value`` is ``None`` when no sample was eligible (``total == 0``), e.g. ASR on a test
    set that holds only target-class images; the interval is then [0, 1].
    """

    model_config = ConfigDict(frozen=True)

    value: float | None
    successes: int
    total: int
    ci_low: float
    ci_high: float

    @classmethod
    def from_counts(cls, successes: int, total: int) -> RateEstimate:
        lo, hi = wilson_interval(successes, total)
        return cls(
            value=successes / total if total else None,
            successes=successes,
            total=total,
            ci_low=lo,
            ci_high=hi,
        )


def der(*, ba_before: float, ba_after: float, asr_before: float, asr_after: float) -> float:
    """Defense Effectiveness Rating in [0, 1] (rates as fractions)."""
    return (max(0.0, asr_before - asr_after) - max(0.0, ba_before - ba_after) + 1) / 2


def _target_table(target: TargetSpec, num_classes: int) -> Tensor:
    """Per-true-label target (``-1`` where the label is excluded from ASR)."""
    table = torch.full((num_classes,), -1, dtype=torch.int64)
    if isinstance(target, bool) or not isinstance(target, (int, Mapping)):
        raise ConfigError(
            f"target must be an int (all-to-one) or a {{label: target}} mapping, got "
            f"{type(target).__name__}."
        )
    if isinstance(target, int):
        if not 0 <= target < num_classes:
            raise ConfigError(f"target {target} is not a class of a {num_classes}-class model.")
        table[:] = target
        table[target] = -1
        return table
    for src, dst in target.items():
        if not (0 <= int(src) < num_classes and 0 <= int(dst) < num_classes):
            raise ConfigError(f"target mapping {src}->{dst} is outside [0, {num_classes}).")
        if int(src) != int(dst):
            table[int(src)] = int(dst)
    return table


@dataclass
class Counts:
    """Raw counts from one evaluation pass."""

    num_classes: int
    correct: int = 0
    total: int = 0
    per_class_correct: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    per_class_total: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    per_class_predicted: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    """Per class: clean images the model predicted as that class."""
    asr_hits: int = 0
    ra_hits: int = 0
    triggered: int = 0
    base_hits: int = 0
    """Triggered-eligible images predicted as their target *without* the trigger."""
    redirected: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    """Per class: triggered images predicted as that class when it is neither their target
    nor their own class (a trigger that still controls the model but sends images to another
    class)."""

    def redirect_top(self) -> tuple[int, int] | None:
        """The class most triggered images are moved to (not their target, not their own
        class), and how many."""
        if self.triggered == 0 or len(self.redirected) == 0:
            return None
        top = int(self.redirected.argmax())
        return top, int(self.redirected[top])


@torch.no_grad()
def evaluate_counts(
    model: nn.Module,
    loader: BatchSource,
    *,
    trigger: TriggerLike | None = None,
    target: TargetSpec | None = None,
    num_classes: int | None = None,
    runtime: RuntimeConfig | dict[str, Any] | None = None,
    where: str = "test loader",
) -> Counts:
    """One pass over ``loader`` counting clean and triggered outcomes (model left as found)."""
    if (trigger is None) != (target is None):
        raise ConfigError(
            "trigger and target go together: pass both to measure ASR/RA, or neither.",
            hint="e.g. run(test_loader, trigger=attack.trigger, target=0)",
        )
    rt = parse_config(RuntimeConfig, runtime)
    device = rt.resolve_device()
    trig = None if trigger is None else as_trigger(trigger)
    counts: Counts | None = None
    table: Tensor | None = None
    with eval_mode(model):
        for batch_index, (x, y) in enumerate(
            iter_batches(
                loader,
                num_classes=num_classes,
                input_normalization=rt.input_normalization,
                device=device,
                where=where,
            )
        ):
            with torch.autocast(device.type, torch.bfloat16, enabled=rt.use_amp(device)):
                logits = model(x)
            check_logits(logits, len(y), None)
            ensure_finite_logits(logits, where=where)
            k = logits.shape[1]
            if counts is None:
                if num_classes is not None and k != num_classes:
                    raise ModelCompatibilityError(
                        f"the model outputs {k} logits but num_classes={num_classes}.",
                        hint="pass the model's number of classes",
                    )
                counts = Counts(
                    num_classes=k,
                    per_class_correct=torch.zeros(k, dtype=torch.int64),
                    per_class_total=torch.zeros(k, dtype=torch.int64),
                    per_class_predicted=torch.zeros(k, dtype=torch.int64),
                    redirected=torch.zeros(k, dtype=torch.int64),
                )
                if target is not None:
                    table = _target_table(target, k).to(device)
            if int(y.max()) >= k:
                raise DataError(
                    f"{where}: batch {batch_index} has label {int(y.max())} but the model has "
                    f"{k} classes.",
                    hint="check num_classes and the label encoding of your dataset",
                )
            pred = logits.argmax(1)
            ok = pred == y
            counts.correct += int(ok.sum())
            counts.total += len(y)
            counts.per_class_total += torch.bincount(y, minlength=k).cpu()
            counts.per_class_correct += torch.bincount(y[ok], minlength=k).cpu()
            counts.per_class_predicted += torch.bincount(pred, minlength=k).cpu()
            if trig is not None and table is not None:
                tgt = table[y]
                keep = tgt >= 0
                if bool(keep.any()):
                    xt = trig(x[keep])
                    if not isinstance(xt, Tensor) or xt.shape != x[keep].shape:
                        raise DataError("the trigger must return a batch of the same shape.")
                    with torch.autocast(device.type, torch.bfloat16, enabled=rt.use_amp(device)):
                        lt = model(xt)
                    check_logits(lt, len(xt), None)
                    ensure_finite_logits(lt, where=f"{where} (triggered images)")
                    pt = lt.argmax(1)
                    counts.asr_hits += int((pt == tgt[keep]).sum())
                    counts.ra_hits += int((pt == y[keep]).sum())
                    counts.triggered += int(keep.sum())
                    counts.base_hits += int((pred[keep] == tgt[keep]).sum())
                    off = pt[(pt != tgt[keep]) & (pt != y[keep])]
                    counts.redirected += torch.bincount(off, minlength=k).cpu()
    if counts is None:  # pragma: no cover - iter_batches raises on empty loaders
        raise DataError(f"{where}: the loader yielded no batches.")
    return counts


def benign_accuracy(
    model: nn.Module, loader: BatchSource, *, runtime: RuntimeConfig | dict[str, Any] | None = None
) -> float:
    """Top-1 accuracy on clean data (BA)."""
    c = evaluate_counts(model, loader, runtime=runtime)
    return c.correct / c.total


def _triggered_counts(
    model: nn.Module,
    loader: BatchSource,
    trigger: TriggerLike,
    target: TargetSpec,
    runtime: RuntimeConfig | dict[str, Any] | None,
    metric: str,
) -> Counts:
    c = evaluate_counts(model, loader, trigger=trigger, target=target, runtime=runtime)
    if c.triggered == 0:
        raise DataError(f"no test image is eligible for {metric} (all belong to the target class).")
    return c


def attack_success_rate(
    model: nn.Module,
    loader: BatchSource,
    trigger: TriggerLike,
    target: TargetSpec,
    *,
    runtime: RuntimeConfig | dict[str, Any] | None = None,
) -> float:
    """ASR over non-target images (all-to-one) or all images (all-to-all)."""
    c = _triggered_counts(model, loader, trigger, target, runtime, "ASR")
    return c.asr_hits / c.triggered


def robust_accuracy(
    model: nn.Module,
    loader: BatchSource,
    trigger: TriggerLike,
    target: TargetSpec,
    *,
    runtime: RuntimeConfig | dict[str, Any] | None = None,
) -> float:
    """Accuracy of triggered non-target images against their true labels (RA)."""
    c = _triggered_counts(model, loader, trigger, target, runtime, "RA")
    return c.ra_hits / c.triggered

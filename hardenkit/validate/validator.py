"""The Validator facade: BA, ASR, RA, per-class accuracy and a gate decision in one pass.

Example:
    >>> import torch
    >>> from hardenkit import Validator
    >>> from hardenkit.triggers import PatchTrigger
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    >>> data = [(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]))]
    >>> rep = Validator(model).run(data, trigger=PatchTrigger.square(2), target=0)
    >>> rep.attack_success_rate.total  # the two target-class images are excluded
    4
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from .._utils.model_checks import check_model
from ..config import RuntimeConfig, parse_config
from ..data.loaders import BatchSource
from ..errors import ConfigError, DataError
from ..logging import get_logger
from ..reports import BaseReport, ModelFingerprint
from ..triggers import Trigger, as_trigger
from .metrics import RateEstimate, TargetSpec, TriggerLike, chance_check, evaluate_counts
from .policy import GateDecision, GatePolicy

__all__ = ["ClassAccuracy", "ValidationReport", "Validator"]

_log = get_logger("hardenkit.validate")


class ClassAccuracy(BaseModel):
    """Clean accuracy of one class."""

    model_config = ConfigDict(frozen=True)

    label: int
    correct: int
    total: int
    accuracy: float | None


class ValidationReport(BaseReport):
    """BA / ASR / RA with sample counts and 95% Wilson intervals, plus the gate decision."""

    report_type: Literal["validation"] = "validation"
    model: ModelFingerprint
    num_classes: int
    samples: int
    benign_accuracy: RateEstimate
    attack_success_rate: RateEstimate | None = None
    robust_accuracy: RateEstimate | None = None
    triggered_samples: int = 0
    asr_without_trigger: RateEstimate | None = None
    """The share of the same images the model predicts as their target *without* the trigger:
    its own bias, the floor under the ASR (the ASR rule judges the ASR itself)."""
    trigger_top_class: int | None = None
    """The class that takes the most triggered images moved away from their own class to a
    class other than their target (``None`` when none was, or without a trigger)."""
    trigger_top_share: RateEstimate | None = None
    """The share of triggered images moved to ``trigger_top_class`` (its own images not
    counted): a trigger that still controls the model but was *redirected* (by a repair, or a
    training-time defence) shows as a low ASR with most triggered images on one other class
    (and a low RA). A model with no backdoor spreads them: on CIFAR-10 at most 36 % for a
    Blended or SIG trigger (the class the trigger's look resembles); redirected 84-89 %."""
    per_class_accuracy: list[ClassAccuracy]
    trigger: dict[str, Any] | None = None
    target: int | dict[str, int] | None = None
    baseline_ba: float | None = None
    chance_accuracy: float | None = None
    """The accuracy of predictions unrelated to the images, with the model's own class
    frequencies (:class:`~hardenkit.validate.ChanceCheck`; the largest class's share for a
    constant guess)."""
    above_chance: bool | None = None
    """Whether BA is better than ``chance_accuracy`` (95 % Wilson lower bound above it; ``None``:
    fewer than 5 images per class, too few to tell). ``False`` means the images or labels do
    not fit the model (class order, pixel range, normalisation): no number here means anything."""
    decision: GateDecision | None = None
    seconds: float

    @property
    def ba(self) -> float:
        return float(self.benign_accuracy.value or 0.0)

    @property
    def asr(self) -> float | None:
        return None if self.attack_success_rate is None else self.attack_success_rate.value

    @property
    def ra(self) -> float | None:
        return None if self.robust_accuracy is None else self.robust_accuracy.value

    @property
    def passed(self) -> bool | None:
        return None if self.decision is None else self.decision.passed

    def summary(self) -> str:
        """A short human-readable summary."""

        def pct(r: RateEstimate | None) -> str:
            if r is None or r.value is None:
                return "n/a"
            return (
                f"{100 * r.value:.2f}% [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}] (n={r.total})"
            )

        lines = [
            f"BA  {pct(self.benign_accuracy)}",
            f"ASR {pct(self.attack_success_rate)}"
            + (
                ""
                if self.asr_without_trigger is None
                else f"; without the trigger {pct(self.asr_without_trigger)}"
            ),
            f"RA  {pct(self.robust_accuracy)}",
        ]
        if self.trigger_top_share is not None:
            where = "none" if self.trigger_top_class is None else f"class {self.trigger_top_class}"
            lines.append(f"triggered -> one other class ({where}): {pct(self.trigger_top_share)}")
        if self.above_chance is False:
            lines.append(
                f"WARNING: BA is no better than chance "
                f"({100 * (self.chance_accuracy or 0.0):.2f}%): the images or labels do not fit "
                "the model (class order, pixel range, normalisation)"
            )
        if self.decision is not None:
            lines.append(self.decision.summary())
        return "\n".join(lines)


class Validator:
    """Measure a model on held-out data: BA, and with a trigger ASR and RA.

    Args:
        model: any ``nn.Module`` mapping a [0, 1] pixel batch to logits (float32 parameters;
            a ``torch.compile``d or ``DataParallel`` model is unwrapped). It is put in eval
            mode during ``run()`` and restored afterwards; its weights are never changed.
        num_classes: expected number of classes (checked against the model's output).
        runtime: device, seed, input normalization (see :class:`~hardenkit.RuntimeConfig`).
        policy: a :class:`GatePolicy` (or dict) applied to every report.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int | None = None,
        runtime: RuntimeConfig | dict[str, Any] | None = None,
        policy: GatePolicy | dict[str, Any] | None = None,
    ) -> None:
        inner = check_model(model, where="Validator")
        if num_classes is not None and num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}.")
        # The plain module inside a torch.compile / DataParallel wrapper (shared, not copied):
        # run() puts it in eval mode and restores every flag, and never changes its weights.
        self.model = inner
        self.num_classes = num_classes
        self.runtime = parse_config(RuntimeConfig, runtime)
        self.policy = None if policy is None else parse_config(GatePolicy, policy)

    def run(
        self,
        test_loader: BatchSource,
        *,
        trigger: Trigger | TriggerLike | None = None,
        target: TargetSpec | None = None,
        baseline_ba: float | None = None,
        policy: GatePolicy | dict[str, Any] | None = None,
    ) -> ValidationReport:
        """Evaluate on ``test_loader``; with ``trigger`` and ``target`` also ASR and RA.

        ``target`` is an int (all-to-one; target-class images are excluded from ASR/RA) or a
        ``{true_label: target_label}`` mapping (all-to-all).
        """
        t0 = time.perf_counter()
        if baseline_ba is not None and not 0.0 <= baseline_ba <= 1.0:
            raise ConfigError(
                f"baseline_ba must be a fraction in [0, 1], got {baseline_ba}.",
                hint="pass 0.9 for 90%",
            )
        device = self.runtime.resolve_device()
        trig = None if trigger is None else as_trigger(trigger)
        original_device = next((p.device for p in self.model.parameters()), None)
        self.model.to(device)
        try:
            c = evaluate_counts(
                self.model,
                test_loader,
                trigger=trig,
                target=target,
                num_classes=self.num_classes,
                runtime=self.runtime,
            )
        finally:
            if original_device is not None:
                self.model.to(original_device)
        per_class = [
            ClassAccuracy(
                label=i,
                correct=int(c.per_class_correct[i]),
                total=int(c.per_class_total[i]),
                accuracy=(
                    int(c.per_class_correct[i]) / int(c.per_class_total[i])
                    if int(c.per_class_total[i])
                    else None
                ),
            )
            for i in range(c.num_classes)
        ]
        ba = RateEstimate.from_counts(c.correct, c.total)
        totals = torch.tensor([int(t) for t in c.per_class_total], dtype=torch.int64)
        chance = (
            chance_check(
                c.correct,
                torch.repeat_interleave(torch.arange(len(totals)), totals),
                c.num_classes,
                predicted_counts=c.per_class_predicted,
            )
            if c.total
            else None
        )
        asr = ra = top_share = base = None
        top_class: int | None = None
        if trig is not None:
            asr = RateEstimate.from_counts(c.asr_hits, c.triggered)
            ra = RateEstimate.from_counts(c.ra_hits, c.triggered)
            base = RateEstimate.from_counts(c.base_hits, c.triggered)
            redirect = c.redirect_top()
            if redirect is not None:
                top_class = redirect[0] if redirect[1] else None
                top_share = RateEstimate.from_counts(redirect[1], c.triggered)
        pol = parse_config(GatePolicy, policy) if policy is not None else self.policy
        decision = None
        if pol is not None:
            asr_value = None
            if asr is not None and asr.value is not None:
                asr_value = asr.ci_high if pol.use_upper_confidence_bound else asr.value
            share_value = None
            if top_share is not None and top_share.value is not None:
                ucb = pol.use_upper_confidence_bound
                share_value = top_share.ci_high if ucb else top_share.value
            decision = pol.evaluate(
                ba=ba.value,
                asr=asr_value,
                baseline_ba=baseline_ba,
                trigger_share=share_value,
                chance=chance,
            )
        tgt: int | dict[str, int] | None
        if target is None or isinstance(target, int):
            tgt = target
        elif isinstance(target, Mapping):
            tgt = {str(k): int(v) for k, v in target.items()}
        if c.total == 0:  # pragma: no cover - iter_batches raises first
            raise DataError("the test loader yielded no samples.")
        report = ValidationReport(
            model=ModelFingerprint.of(self.model),
            num_classes=c.num_classes,
            samples=c.total,
            benign_accuracy=ba,
            attack_success_rate=asr,
            robust_accuracy=ra,
            triggered_samples=c.triggered,
            asr_without_trigger=base,
            trigger_top_class=top_class,
            trigger_top_share=top_share,
            per_class_accuracy=per_class,
            trigger=None if trig is None else trig.describe(),
            target=tgt,
            baseline_ba=baseline_ba,
            chance_accuracy=None if chance is None else chance.chance,
            above_chance=None if chance is None else chance.above,
            decision=decision,
            seconds=time.perf_counter() - t0,
        )
        _log.info(
            "validate.done",
            ba=ba.value,
            asr=report.asr,
            ra=report.ra,
            samples=c.total,
            passed=report.passed,
            seconds=report.seconds,
        )
        return report

"""Pass/fail gate policy over a validation report.

Rates are fractions in [0, 1]. Every rule is reported with its value, threshold and outcome;
a rule that cannot be evaluated (e.g. ``max_asr`` without a trigger, ``max_ba_drop`` without a
baseline) is ``skipped`` — or ``fail`` when ``require_all_rules`` is set.

Example:
    >>> from hardenkit.validate import GatePolicy
    >>> policy = GatePolicy(min_ba=0.8, max_asr=0.05)
    >>> d = policy.evaluate(ba=0.9, asr=0.02)
    >>> d.passed, [r.status for r in d.rules]
    (True, ['pass', 'pass', 'skipped'])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import HardenkitConfig
from ..errors import ConfigError

if TYPE_CHECKING:
    from .metrics import ChanceCheck

__all__ = ["GateDecision", "GatePolicy", "RuleResult"]

Fraction = Annotated[float, Field(ge=0, le=1)]


class RuleResult(BaseModel):
    """One gate rule: what was measured, against which threshold, and the outcome."""

    model_config = ConfigDict(frozen=True)

    rule: str
    rule_id: str
    comparison: Literal[">=", "<=", ">"]
    value: float | None
    threshold: float
    status: Literal["pass", "fail", "skipped"]
    message: str


class GateDecision(BaseModel):
    """The policy's verdict: ``passed`` plus every rule's result."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    rules: list[RuleResult]

    @property
    def failed_rules(self) -> list[RuleResult]:
        return [r for r in self.rules if r.status == "fail"]

    def summary(self) -> str:
        lines = [f"gate {'PASSED' if self.passed else 'FAILED'}"]
        for r in self.rules:
            v = "n/a" if r.value is None else f"{100 * r.value:.2f}%"
            lines.append(f"  [{r.status:>7}] {r.rule}: {v} {r.comparison} {100 * r.threshold:.2f}%")
        return "\n".join(lines)


class GatePolicy(HardenkitConfig):
    """Thresholds of the deployment gate (fractions, not percent).

    Attributes:
        min_ba: lowest acceptable benign accuracy (None = no rule).
        max_asr: highest acceptable attack success rate (None = no rule).
        max_ba_drop: largest acceptable BA drop against a baseline (None = no rule).
        require_all_rules: a rule that cannot be evaluated fails instead of being skipped.
        use_upper_confidence_bound: judge ASR (and the triggered-class share) by the upper
            end of its 95% Wilson interval (stricter on small test sets) instead of the point
            estimate.
        max_trigger_share: highest acceptable share of triggered images moved to one class
            other than their target and their own class (None = no rule). Catches a
            *redirected* backdoor: a repair or training-time defence that moved the trigger's
            effect to another class reads as ASR 0 %. 0.5 leaves room for a clean model's
            natural bias (at most 36 % on CIFAR-10 for Blended and SIG triggers; redirected
            backdoors 84-89 %, docs/training.md "Redirected backdoors").
        require_above_chance: rule ``HK-DATA-002`` — the model must be better than chance on
            the test images (the lower end of BA's 95 % Wilson interval above the accuracy of
            predictions unrelated to the images with the model's own class frequencies,
            judged with at least 5 images per class and two classes): a model at
            chance means the images or labels do not fit it (class order, pixel range,
            normalisation), so no other rule's number means anything.
    """

    min_ba: Fraction | None = None
    max_asr: Fraction | None = 0.10
    max_ba_drop: Fraction | None = 0.03
    require_all_rules: bool = False
    use_upper_confidence_bound: bool = False
    max_trigger_share: Fraction | None = 0.5
    require_above_chance: bool = True

    def evaluate(
        self,
        *,
        ba: float | None,
        asr: float | None = None,
        baseline_ba: float | None = None,
        trigger_share: float | None = None,
        chance: ChanceCheck | None = None,
    ) -> GateDecision:
        """Decide on measured ``ba``/``asr`` (and ``baseline_ba`` for the drop rule,
        ``trigger_share`` -- the largest share of triggered images sent to one class other
        than their target -- for the redirection rule, ``chance`` -- BA against a constant
        guess, :func:`~hardenkit.validate.chance_check` -- for ``require_above_chance``).

        All rates are fractions in [0, 1]; anything else raises :class:`ConfigError`.
        """
        for label, rate in (
            ("ba", ba),
            ("asr", asr),
            ("baseline_ba", baseline_ba),
            ("trigger_share", trigger_share),
        ):
            if rate is not None and not 0.0 <= rate <= 1.0:
                raise ConfigError(
                    f"{label} must be a fraction in [0, 1], got {rate}.", hint="pass 0.9 for 90%"
                )
        rules: list[RuleResult] = []

        def add(
            rule: str,
            rule_id: str,
            value: float | None,
            threshold: float | None,
            cmp: Literal[">=", "<="],
            missing: str,
        ) -> None:
            if threshold is None:
                return
            if value is None:
                status: Literal["pass", "fail", "skipped"] = (
                    "fail" if self.require_all_rules else "skipped"
                )
                rules.append(
                    RuleResult(
                        rule=rule,
                        rule_id=rule_id,
                        comparison=cmp,
                        value=None,
                        threshold=threshold,
                        status=status,
                        message=missing,
                    )
                )
                return
            ok = value >= threshold if cmp == ">=" else value <= threshold
            rules.append(
                RuleResult(
                    rule=rule,
                    rule_id=rule_id,
                    comparison=cmp,
                    value=value,
                    threshold=threshold,
                    status="pass" if ok else "fail",
                    message=f"{rule} = {100 * value:.2f}% {'meets' if ok else 'violates'} "
                    f"{cmp} {100 * threshold:.2f}%",
                )
            )

        add("benign_accuracy", "HK-BA-001", ba, self.min_ba, ">=", "no benign accuracy measured")
        add(
            "attack_success_rate",
            "HK-ASR-001",
            asr,
            self.max_asr,
            "<=",
            "no trigger/target given, so ASR was not measured",
        )
        drop = None if (ba is None or baseline_ba is None) else max(0.0, baseline_ba - ba)
        add(
            "benign_accuracy_drop",
            "HK-BA-002",
            drop,
            self.max_ba_drop,
            "<=",
            "no baseline BA given, so the BA drop was not measured",
        )
        if trigger_share is not None:  # measured only with a trigger
            add(
                "triggered_class_share",
                "HK-ASR-003",
                trigger_share,
                self.max_trigger_share,
                "<=",
                "",
            )
        if self.require_above_chance and chance is not None:
            bad = chance.above is False
            rules.append(
                RuleResult(
                    rule="better_than_chance",
                    rule_id="HK-DATA-002",
                    comparison=">",
                    value=chance.ci_low,
                    threshold=chance.chance,
                    status="fail" if bad else "pass",
                    message=(
                        f"the model is no better than chance ({chance.describe()}): "
                        "the images or labels do not fit it (class order, pixel range, "
                        "normalisation); no other number here means anything"
                        if bad
                        else chance.describe()
                        + (
                            ""
                            if chance.above or chance.classes == 1
                            else " (too few images per class to judge)"
                        )
                    ),
                )
            )
        return GateDecision(passed=all(r.status != "fail" for r in rules), rules=rules)

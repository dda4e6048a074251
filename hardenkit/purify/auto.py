"""Composite strategy: scan; repair with the recovered trigger when there is one, otherwise with
a trigger-free strategy. The default pair was chosen by the CPU benchmark (docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import (
    STRATEGIES,
    PurificationStrategy,
    PurifyContext,
    StrategyConfig,
    StrategyOutcome,
)

__all__ = ["AutoConfig", "AutoStrategy"]


class AutoConfig(StrategyConfig):
    """The two branches of the composite.

    Attributes:
        trigger_strategy: strategy run when Neural Cleanse recovered a trigger for a flagged
            label: ``nc-unlearn`` or ``mcl``.
        trigger_config: that strategy's config fields.
        fallback: trigger-free strategy run otherwise (or when the trigger strategy refuses):
            ``finetune`` or ``d3``.
        fallback_config: that strategy's config fields.
    """

    trigger_strategy: Literal["nc-unlearn", "mcl"] = "nc-unlearn"
    trigger_config: dict[str, Any] = Field(default_factory=dict)
    fallback: Literal["finetune", "d3"] = "finetune"
    fallback_config: dict[str, Any] = Field(default_factory=dict)


class AutoStrategy(PurificationStrategy):
    """Scan → ``trigger_strategy`` on the recovered trigger(s) when Neural Cleanse flagged a label,
    otherwise ``fallback`` (trigger-free).

    A negative scan never becomes a silent no-op: the model is always repaired, and the report
    says which branch ran and why (``details["branch"]``, ``notes``).
    """

    name = "auto"
    config_cls = AutoConfig
    uses_scan = True
    config: AutoConfig

    def __init__(self, config: AutoConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        # Build (and so validate) both stages now: the constructor validates, run() works.
        # The budget of this composite (max_steps / max_seconds) covers both: ctx.budget.
        cfg = self.config
        self._trigger = STRATEGIES.get(cfg.trigger_strategy)(cfg.trigger_config)
        self._fallback = STRATEGIES.get(cfg.fallback)(cfg.fallback_config)
        self.validation_fraction = max(
            self._trigger.validation_fraction, self._fallback.validation_fraction
        )

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        scan = ctx.scan
        cfg = self.config
        if scan is not None and scan.triggers:
            out = self._trigger.run(ctx)
            if out.status == "purified":
                out.details = {"branch": cfg.trigger_strategy, **out.details}
                return out
            ctx.notes.append(
                f"auto: {cfg.trigger_strategy} could not run; falling back to {cfg.fallback} "
                "(trigger-free)"
            )
        elif scan is not None and scan.is_backdoored:
            ctx.notes.append(
                f"auto: the scan flagged {scan.flagged_labels} without a recovered trigger; "
                f"running {cfg.fallback} (trigger-free)"
            )
        else:
            verdict = "no scan" if scan is None else f"scan verdict {scan.verdict}"
            ctx.notes.append(
                f"auto: {verdict}, no trigger to use: running {cfg.fallback} (trigger-free)"
            )
        out = self._fallback.run(ctx)
        out.details = {"branch": cfg.fallback, **out.details}
        return out


STRATEGIES.register(AutoStrategy.name, AutoStrategy)

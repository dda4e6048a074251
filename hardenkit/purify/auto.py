"""Composite strategy: MCL on the recovered trigger when the scan finds one, D3 otherwise."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .base import STRATEGIES, PurificationStrategy, PurifyContext, StrategyConfig, StrategyOutcome
from .d3 import D3Config, D3Strategy
from .mcl import MCLConfig, MCLStrategy

__all__ = ["AutoConfig", "AutoStrategy"]


class AutoConfig(StrategyConfig):
    """Settings of the two stages (each a full strategy config).

    Attributes:
        mcl: :class:`~hardenkit.purify.MCLConfig` fields for the trigger branch.
        d3: :class:`~hardenkit.purify.D3Config` fields for the trigger-free branch.
    """

    mcl: dict[str, Any] = Field(default_factory=dict)
    d3: dict[str, Any] = Field(default_factory=dict)


class AutoStrategy(PurificationStrategy):
    """Scan → MCL when Neural Cleanse recovered a trigger for a flagged label (and it is strong
    enough), otherwise D3, which needs no trigger.

    A negative scan never becomes a silent no-op: the model is always repaired, and the report
    says which branch ran and why (``details["branch"]``, ``notes``).
    """

    name = "auto"
    config_cls = AutoConfig
    uses_scan = True
    validation_fraction = 0.1
    config: AutoConfig

    def __init__(self, config: AutoConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        # Validate both stage configs now (the constructor validates, run() works). The budget
        # of this composite (max_steps / max_seconds) covers both stages: they share ctx.budget.
        self._mcl = MCLStrategy(MCLConfig(**self.config.mcl))
        self._d3 = D3Strategy(D3Config(**self.config.d3))

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        scan = ctx.scan
        if scan is not None and scan.triggers:
            out = self._mcl.run(ctx)
            if out.status == "purified":
                out.details = {"branch": "mcl", **out.details}
                return out
            ctx.notes.append("auto: MCL could not run; falling back to D3 (trigger-free)")
        elif scan is not None and scan.is_backdoored:
            ctx.notes.append(
                f"auto: the scan flagged {scan.flagged_labels} without a recovered trigger; "
                "running D3 (trigger-free)"
            )
        else:
            verdict = "no scan" if scan is None else f"scan verdict {scan.verdict}"
            ctx.notes.append(f"auto: {verdict}, no trigger to contrast: running D3 (trigger-free)")
        out = self._d3.run(ctx)
        out.details = {"branch": "d3", **out.details}
        return out


STRATEGIES.register(AutoStrategy.name, AutoStrategy)

"""The ``hardenkit demo`` report model (kept apart so ``hardenkit --help`` stays light)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..export import ExportReport, VerificationReport
from ..purify import PurificationReport
from ..reports import BaseReport
from ..scan import ScanReport
from ..validate import ValidationReport

__all__ = ["DemoReport", "DemoStep"]


class DemoStep(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    seconds: float


class DemoReport(BaseReport):
    """What ``hardenkit demo`` did and measured."""

    report_type: Literal["demo"] = "demo"
    dataset: dict[str, Any]
    attack: dict[str, Any]
    arch: str
    train_epochs: int
    validation: ValidationReport
    scan: ScanReport | None = None
    purification: PurificationReport | None = None
    validation_after: ValidationReport | None = None
    """The repaired model on the same test set and real trigger (``baseline_ba`` = before)."""
    export: ExportReport | None = None
    verification: VerificationReport | None = None
    steps: list[DemoStep]
    seconds: float
    passed: bool | None = None
    """The demo's own verdict: the backdoor was planted, found or not, and the repaired model
    passed its gate (ASR <= 10 % with the real trigger, BA drop <= 5 points, trusted repair
    status, ONNX parity). ``None`` in reports written before this field existed."""
    failures: list[str] = Field(default_factory=list)
    """Why ``passed`` is false (one line each); the command then exits 1."""

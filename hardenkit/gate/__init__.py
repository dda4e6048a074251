"""The pre-deployment gate: scan → repair → re-scan → measure → export → verify → decide.

Example:
    >>> from hardenkit.gate import Gate, DeploymentPolicy
    >>> gate = Gate(DeploymentPolicy(repair="never"))
    >>> gate.policy.max_asr
    0.1
"""

from __future__ import annotations

from .gate import (
    RULES,
    ClassDrop,
    Gate,
    GateReport,
    GateResult,
    GateRule,
    TriggerMeasurement,
    image_hashes,
)
from .html import html_report, render_saved
from .outputs import junit_xml, markdown_summary, sarif_log
from .policy import DeploymentPolicy

__all__ = [
    "RULES",
    "ClassDrop",
    "DeploymentPolicy",
    "Gate",
    "GateReport",
    "GateResult",
    "GateRule",
    "TriggerMeasurement",
    "html_report",
    "image_hashes",
    "junit_xml",
    "markdown_summary",
    "render_saved",
    "sarif_log",
]

"""Machine- and human-readable renderings of a :class:`~hardenkit.gate.GateReport`.

* :func:`junit_xml` — JUnit XML, one test case per rule (CI test tabs read it);
* :func:`sarif_log` — SARIF 2.1.0, one result per failed rule (GitHub code scanning);
* :func:`markdown_summary` — a table for ``$GITHUB_STEP_SUMMARY`` or a pull-request comment.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

from .._version import __version__

if TYPE_CHECKING:
    from .gate import GateReport

__all__ = ["junit_xml", "markdown_summary", "sarif_log"]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFO_URI = "https://github.com/hardenkit/hardenkit/blob/main/docs/gate.md"


def _value(v: float | str | None, rule_id: str) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if rule_id == "HK-DATA-001":
        return f"{v:.0f}"
    return f"{100 * v:.2f}%"


def _rule_tags(rule_id: str) -> list[str]:
    """Code-scanning tags of a rule: ``security`` for the backdoor checks (scan, repair,
    ASR), ``correctness`` for the rest (data, accuracy, ONNX), plus its family.

    Example:
        >>> _rule_tags("HK-ASR-001")
        ['hardenkit-gate', 'security', 'asr']
    """
    family = rule_id.split("-")[1].lower() if rule_id.count("-") >= 2 else "other"
    kind = "security" if family in {"scan", "repair", "asr"} else "correctness"
    return ["hardenkit-gate", kind, family]


def junit_xml(report: GateReport) -> str:
    """JUnit XML: a ``<testsuite name="hardenkit-gate">`` with one ``<testcase>`` per rule
    (``<failure>`` for a failed rule, ``<skipped>`` for a skipped one)."""
    failures = sum(r.status == "fail" for r in report.rules)
    skipped = sum(r.status == "skipped" for r in report.rules)
    total = report.timings.get("total_seconds", 0.0)
    suites = ET.Element(
        "testsuites",
        name="hardenkit gate",
        tests=str(len(report.rules)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time=f"{total:.3f}",
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="hardenkit-gate",
        tests=str(len(report.rules)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time=f"{total:.3f}",
        timestamp=report.created_at,
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("report_id", report.report_id),
        ("input_sha256", report.input_model.sha256),
        ("output_sha256", report.output_model.sha256),
        ("repaired", str(report.repaired).lower()),
    ):
        ET.SubElement(props, "property", name=name, value=value)
    for r in report.rules:
        case = ET.SubElement(
            suite, "testcase", classname="hardenkit.gate", name=f"{r.rule_id} {r.description}"
        )
        case.set("time", "0")
        if r.status == "fail":
            fail = ET.SubElement(case, "failure", message=r.message, type=r.cause or "policy")
            fail.text = (
                f"value {_value(r.value, r.rule_id)}, threshold "
                f"{_value(r.threshold, r.rule_id)} ({r.comparison or '-'})"
            )
        elif r.status == "skipped":
            ET.SubElement(case, "skipped", message=r.message)
        out = ET.SubElement(case, "system-out")
        out.text = r.message
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def sarif_log(report: GateReport, artifact_uri: str = "model.safetensors") -> str:
    """A SARIF 2.1.0 log: the gate's rules in ``tool.driver.rules`` and one ``error`` result
    per failed rule, located at the model file (``artifact_uri``).

    It validates against the OASIS SARIF 2.1.0 schema and carries what GitHub code scanning
    reads: per rule ``help`` and ``properties.tags``; per result a location and
    ``partialFingerprints`` (``hardenkitRule/v1`` = rule id and the input model's sha256), so
    re-running the gate on the same candidate model updates its alerts instead of duplicating
    them. No ``region``: a weights file has no lines. Pass ``artifact_uri`` as the weights'
    path relative to the repository root to attach the alerts to that file.
    """
    rule_ids = sorted({r.rule_id for r in report.rules})
    index = {rid: i for i, rid in enumerate(rule_ids)}
    by_id = {r.rule_id: r for r in report.rules}
    driver: dict[str, Any] = {
        "name": "hardenkit",
        "version": __version__,
        "informationUri": INFO_URI,
        "rules": [
            {
                "id": rid,
                "name": rid.replace("-", ""),
                "shortDescription": {"text": by_id[rid].description},
                "fullDescription": {"text": f"hardenkit gate rule {rid}: {by_id[rid].description}"},
                "help": {
                    "text": f"{by_id[rid].description}. What it checks and when it fails: "
                    f"{INFO_URI}#rules",
                    "markdown": f"{by_id[rid].description}. What it checks and when it fails: "
                    f"[docs/gate.md]({INFO_URI}#rules)",
                },
                "helpUri": f"{INFO_URI}#rules",
                "defaultConfiguration": {"level": "error"},
                "properties": {"tags": _rule_tags(rid)},
            }
            for rid in rule_ids
        ],
    }
    results = [
        {
            "ruleId": r.rule_id,
            "ruleIndex": index[r.rule_id],
            "level": "error",
            "message": {"text": f"{r.description}: {r.message}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri}}}],
            "partialFingerprints": {"hardenkitRule/v1": f"{r.rule_id}:{report.input_model.sha256}"},
            "properties": {
                "value": r.value,
                "threshold": r.threshold,
                "comparison": r.comparison,
                "cause": r.cause,
            },
        }
        for r in report.rules
        if r.status == "fail"
    ]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": driver},
                "results": results,
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "exitCode": report.exit_code,
                        "properties": {"report_id": report.report_id, "passed": report.passed},
                    }
                ],
            }
        ],
    }
    return json.dumps(log, indent=2) + "\n"


def markdown_summary(report: GateReport) -> str:
    """A markdown section: the verdict, a rule table and the key numbers."""
    icon = {"pass": "✅", "fail": "❌", "skipped": "⚪"}
    head = "PASSED" if report.passed else "FAILED"
    lines = [
        f"## hardenkit gate: {head}",
        "",
        f"Input model `{report.input_model.sha256[:12]}` → shipped model "
        f"`{report.output_model.sha256[:12]}`"
        + (
            f" (repaired with `{report.strategy}`, status `{report.purification_status}`)"
            if report.repaired
            else " (not repaired)"
        ),
        "",
        "| rule | status | value | threshold | message |",
        "|---|---|---|---|---|",
    ]
    for r in report.rules:
        msg = r.message.replace("|", "\\|")
        lines.append(
            f"| {r.rule_id} | {icon[r.status]} {r.status} | {_value(r.value, r.rule_id)} | "
            f"{(r.comparison or '') + ' ' if r.threshold is not None else ''}"
            f"{_value(r.threshold, r.rule_id) if r.threshold is not None else ''} | {msg} |"
        )
    lines.append("")
    if report.input_ba is not None and report.output_ba is not None:
        lines.append(
            f"Benign accuracy on {report.data.get('holdout_images', '?')} held-out images: "
            f"{100 * report.input_ba:.2f}% → {100 * report.output_ba:.2f}%."
        )
    if report.class_accuracy:
        lost = max(report.class_accuracy, key=lambda c: c.drop)
        lines.append(
            f"Largest per-class drop: class {lost.label} {100 * lost.before:.2f}% → "
            f"{100 * lost.after:.2f}% ({lost.images} images)."
            if lost.drop > 0
            else "No class lost accuracy."
        )
    for m in report.triggers:
        a = "n/a" if m.input_asr is None else f"{100 * m.input_asr:.2f}%"
        b = "n/a" if m.output_asr is None else f"{100 * m.output_asr:.2f}%"
        floor = (
            ""
            if m.output_asr_without_trigger is None
            else f" ({100 * m.output_asr_without_trigger:.2f}% of the same images are predicted "
            f"as {m.label} without the trigger)"
        )
        lines.append(f"- ASR of the {m.source} trigger for label {m.label}: {a} → {b}{floor}")
    if report.onnx and report.onnx.get("provider"):
        lines.append(
            f"- ONNX (`{report.onnx['sha256'][:12]}`) verified on {report.onnx['provider']}: "
            + ("passed" if report.onnx.get("verification_passed") else "FAILED")
        )
    for n in report.notes:
        lines.append(f"- note: {n}")
    lines.append("")
    lines.append(f"Report id `{report.report_id}`, hardenkit {report.hardenkit_version}.")
    return "\n".join(lines) + "\n"

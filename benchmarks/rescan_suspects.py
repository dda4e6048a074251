"""Which label does the re-scan of a repaired model suspect, and was the backdoor gone?

    python -m benchmarks.rescan_suspects --out rescan_suspects_s60

Reads every gate run cached by ``benchmarks.gate_user_script`` (``benchmarks/cache/gate_user/
<model>-<key>/out/``: ``gate.json`` and ``rescan/report.json``) with the outcome it recorded
(the shipped model's real-trigger ASR), and lists, for each model the gate repaired: the labels
the repair was aimed at, the re-scan's verdict, the label each ``suspicious`` detector of the
re-scan ranks most extreme (``hardenkit.gate.gate.rescan_suspects``, what the policy's
``repaired_label_suspect`` compares with the repaired labels), whether that rule fails the
model, and the real ASR the model shipped with. Stop 59 added the rule after the default gate
shipped a held-out FTrojan-style model at 68.9 % real ASR with a ``suspicious`` re-scan that
still ranked the repaired label first. Stop 60 narrowed it to suspects the same detector had
singled out in the input model's scan too (``scan/report.json``): both forms are listed
(``suspects (s59)`` / ``rule fails (s59)``: the re-scan alone). Writes
``benchmarks/results/<out>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hardenkit.gate.gate import rescan_suspects
from hardenkit.scan import ScanReport
from hardenkit.scan.scanner import most_extreme_label

from .common import CACHE, md_table, write_results


def rows() -> list[dict[str, Any]]:
    """One row per cached gate run whose model the gate repaired and re-scanned."""
    out: list[dict[str, Any]] = []
    for outcome_path in sorted((CACHE / "gate_user").glob("*.json")):
        run = outcome_path.with_suffix("") / "out"
        gate_path, rescan_path = run / "gate.json", run / "rescan" / "report.json"
        if not (gate_path.is_file() and rescan_path.is_file()):
            continue
        outcome = json.loads(outcome_path.read_text())
        gate = json.loads(gate_path.read_text())
        aimed = sorted({y for r in gate.get("repair_rounds", []) for y in r["against_labels"]})
        report = ScanReport.model_validate_json(rescan_path.read_text())
        input_path = run / "scan" / "report.json"
        before = ScanReport.model_validate_json(input_path.read_text())
        anywhere = rescan_suspects(report)
        suspects = rescan_suspects(report, before)
        hit = [y for y in suspects if y in aimed]
        nc = next((d for d in before.detectors if d.detector == "neural-cleanse"), None)
        real = outcome.get("real ASR in/out") or [None, None]
        scan_rule = next(r for r in gate["rules"] if r["rule_id"] == "HK-SCAN-001")
        out.append(
            {
                "model": outcome.get("model", outcome_path.stem),
                "repaired labels": aimed,
                "re-scan": report.verdict,
                "input scan": before.verdict,
                "its NC suspect": None if nc is None or not nc.classes else most_extreme_label(nc),
                "suspects (s59)": anywhere,
                "rule fails (s59)": report.verdict == "suspicious"
                and any(y in aimed for y in anywhere),
                "suspects": suspects,
                "rule fails": report.verdict == "suspicious" and bool(hit),
                "HK-SCAN-001 (as run)": scan_rule["status"],
                "gate passed (as run)": gate["passed"],
                "real ASR % shipped": None if real[1] is None else 100 * real[1],
                "verdict (as run)": outcome.get("verdict"),
                "cache key": outcome_path.stem.rsplit("-", 1)[-1],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="rescan_suspects", help="results name")
    args = p.parse_args(argv)
    table = rows()
    cols = ["model", "input scan", "its NC suspect", "repaired labels", "re-scan",
            "suspects (s59)", "rule fails (s59)", "suspects", "rule fails",
            "HK-SCAN-001 (as run)", "gate passed (as run)", "real ASR % shipped",
            "verdict (as run)", "cache key"]  # fmt: skip
    write_results(
        args.out,
        table,
        cols,
        {"command": "python -m benchmarks.rescan_suspects " + " ".join(argv or sys.argv[1:])},
    )
    print(md_table(table, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

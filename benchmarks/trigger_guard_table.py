"""The Purifier's trigger guard on the default repair and D3: when it fires, is it right.

    python -m benchmarks.purify_cpu --only blended-0.1 --only blended-0.1-s1 \\
        --only badnets-0.1 --only badnets-0.1-s1 --only wanet-0.1 --only wanet-0.1-s1 \\
        --only sig-0.1 --only sig-0.1-s1 --defence auto-quick-tg --out purify_cpu_trigger_guard_cnn
    python -m benchmarks.purify_cpu --only preact-blended-0.1 --only preact-blended-0.1-s1 \\
        --only preact-badnets-0.1 --only preact-badnets-0.1-s1 --only preact-wanet-0.1 \\
        --only preact-wanet-0.1-s1 --only preact-sig-0.1 --only preact-sig-0.1-s1 \\
        --defence auto-quick-tg --out purify_cpu_trigger_guard_res
    M=patch-tl,patch-mid,blend-smooth,res-patch,res-blend,stripes,ripple,warp,clean,res-clean
    python -m benchmarks.user_script --models $M --defences default-tg \\
        --out user_script_trigger_guard
    python -m benchmarks.fallback_zoo --defences auto-tg --out fallback_zoo_trigger_guard \\
        --models small-cnn-blended-0,user-sequential-blended-2,tiny-resnet-badnets-1
    python -m benchmarks.purify_cpu --only badnets-0.1 --only blended-0.1 \\
        --only preact-blended-0.1 --defence d3-head-rel-30-scan --out purify_cpu_trigger_guard_d3
    python -m benchmarks.purify_cpu --only blended-0.1 --only preact-blended-0.1 \\
        --defence d3-head-rel-30-scan-final --out purify_cpu_trigger_guard_d3_final
    python -m benchmarks.trigger_guard_table

The first four commands run the shipped default, ``Purifier(model).run(clean_loader)``
(``Purifier(max_trigger_asr=0.10)``), on the CIFAR-10 protocol fixtures (both families, two
seeds), the user-script models and the scanner-zoo models, and record each known trigger's
held-out ASR before / after the repair and the trigger guard (stop 54). The fifth and sixth run
D3's ``last-layer`` preset given the protocol's scan: the Purifier measures its trigger, so
the guard judges a trigger-free repair (the preset leaves Blended in place); with the scan,
``best-val`` selection judges the epochs on its trigger, so the sixth keeps the last epoch —
the weights D3 returns without a scan.
This script reads those cells from ``benchmarks/cache/`` and tables, per model, what the guard
saw and whether its verdict agrees with the real trigger on the test set: the guard is
*right* when it fires (``backdoor-remains``) exactly on the repairs that left the real trigger
above 10 % test ASR (and never on a clean model).
Writes ``benchmarks/results/trigger_guard.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from .common import CACHE, write_results

SETS = (
    ("protocol", "purify", "auto-quick-tg"),
    ("protocol, d3 last-layer + scan", "purify", "d3-head-rel-30-scan"),
    ("protocol, d3 last-layer + scan, last epoch", "purify", "d3-head-rel-30-scan-final"),
    ("user script", "user_script", "default-tg"),
    ("scanner zoo", "fallback", "auto-tg"),
)
REAL_ASR_BOUND = 0.10  # the gate's max_asr: a real trigger above it is a backdoor left


def _latest(paths: list[Path]) -> dict[str, Any] | None:
    if not paths:
        return None
    row: dict[str, Any] = json.loads(max(paths, key=lambda p: p.stat().st_mtime).read_text())
    return row


def _rows() -> list[dict[str, Any]]:
    out = []
    for set_name, folder, defence in SETS:
        own = re.compile(rf"(.+)-{re.escape(defence)}-[0-9a-f]+\.json")
        for path in sorted((CACHE / folder).glob(f"*-{defence}-*.json")):
            m = own.fullmatch(path.name)
            if m is None:  # another defence whose name starts with this one
                continue
            name = m.group(1)
            row = json.loads(path.read_text())
            base = _latest(list((CACHE / folder).glob(f"{name}-none-*.json")))
            clean = {
                "purify": False,  # every protocol fixture is backdoored
                "user_script": row.get("target") is None,
                "fallback": row.get("attack") == "clean",
            }[folder]
            guard = row.get("trigger_guard") or {}
            fired = guard.get("passed") is False  # the status says so unless a worse one won
            verdict = "fired" if fired else "passed" if guard.get("passed") else "no trigger"
            real = None if clean else row.get("asr")
            left = real is not None and real > REAL_ASR_BOUND
            rows_asr = row.get("trigger_asr", [])
            # the guard judges the trigger the repair was aimed at: these scans are ranked by a
            # detector, so the first row (the most anomalous flagged label's), marked *
            judged = rows_asr[0] if rows_asr else None
            triggers = "; ".join(
                f"{t['label']}{'*' if i == 0 else ''}: "
                f"{100 * t['before']:.1f} → {100 * t['after']:.1f}"
                + (
                    ""
                    if t.get("after_without_trigger") is None
                    else f" ({100 * t['after_without_trigger']:.1f})"
                )
                for i, t in enumerate(rows_asr)
            )
            out.append(
                {
                    "set": set_name,
                    "model": name,
                    "status": row["status"],
                    "branch": row.get("branch") or "-",
                    "flagged labels' triggers: ASR % before → after (without)": triggers or "-",
                    "judged: added %": "-"
                    if judged is None
                    else f"{100 * (judged['after'] - (judged['after_without_trigger'] or 0)):.1f}",
                    "real ASR % in → out": "- (clean model)"
                    if real is None
                    else f"{100 * base['asr']:.2f} → {100 * real:.2f}"
                    if base is not None
                    else f"? → {100 * real:.2f}",
                    "BA drop": "-" if base is None else f"{100 * (base['ba'] - row['ba']):.2f}",
                    "guard": verdict,
                    "right": "yes" if fired == left else "NO",
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="trigger_guard", help="results name (default trigger_guard)")
    args = p.parse_args(argv)
    rows = _rows()
    if not rows:
        print("no trigger-guard cells cached: run the benchmark commands in the docstring first")
        return 1
    cols = list(rows[0])
    fired = sum(r["guard"] == "fired" for r in rows)
    wrong = [r["model"] for r in rows if r["right"] == "NO"]
    summary = {
        "cells": len(rows),
        "fired": fired,
        "wrong": wrong,
        "real_asr_bound": REAL_ASR_BOUND,
    }
    md = write_results(
        args.out,
        rows,
        cols,
        {"summary": summary, "command": "python -m benchmarks.trigger_guard_table"},
    )
    with md.open("a") as fh:
        fh.write(
            f"\nThe guard fired on {fired} of {len(rows)} repairs; its verdict disagrees "
            f"with the real trigger (test ASR above {100 * REAL_ASR_BOUND:g} % after the repair) "
            f"on {len(wrong)}" + (f": {', '.join(wrong)}" if wrong else "") + ".\n"
        )
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

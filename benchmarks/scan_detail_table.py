"""Which labels' inversions never reached their attack threshold, per model and detector, from
``benchmarks/scan_detail.py`` results (stop 56).

On ``gray-blend`` the smooth-signal inversion reached its threshold for every label but the
real target's; this table asks whether "the one label whose inversion stalls" happens on
clean models too.

    python -m benchmarks.scan_detail_table --inputs scan_detail_s56_a,scan_detail_s56_b
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .common import RESULTS, md_table, write_results


def summarise(rows: list[dict[str, Any]], targets: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and trigger-inverting detector: the labels never reached."""
    out: list[dict[str, Any]] = []
    keys = sorted({(r["model"], r["detector"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, det in keys:
        mine = [r for r in rows if r["model"] == model and r["detector"] == det]
        if all(r.get("reached") is None for r in mine):
            continue  # a detector that inverts nothing (prediction-share)
        missed = sorted(r["label"] for r in mine if r.get("reached") is False)
        target = targets.get(model)
        rates = {r["label"]: r.get("attack rate") for r in mine}
        out.append(
            {
                "model": model,
                "target": "clean" if target is None else target,
                "detector": det,
                "labels not reached": len(missed),
                "which": missed,
                "target not reached": None if target is None else target in missed,
                "their attack rates": [
                    None if rates[y] is None else round(float(rates[y]), 2) for y in missed
                ],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--inputs", required=True, help="comma-separated scan_detail result names")
    p.add_argument("--out", default="scan_detail_table", help="results name")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    targets: dict[str, Any] = {}
    for name in [n for n in args.inputs.split(",") if n]:
        data = json.loads((RESULTS / f"{name}.json").read_text())
        rows += data["rows"]
        targets |= {s["model"]: s["target"] for s in data["scans"]}
    table = summarise(rows, targets)
    cols = ["model", "target", "detector", "labels not reached", "which",
            "target not reached", "their attack rates"]  # fmt: skip
    write_results(
        args.out,
        table,
        cols,
        {
            "inputs": args.inputs,
            "command": "python -m benchmarks.scan_detail_table " + " ".join(argv or sys.argv[1:]),
        },
    )
    print(md_table(table, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the default repair's own scan saw on a user-script model, label by label (stop 56).

When ``Purifier(model).run(clean_loader)`` misses a backdoor, the first question is whether
any statistic of its scan pointed at the real target. This runs the Purifier's own scan
exactly as the default does (its ``quick`` settings, on the purification images after the
holdout split; the repair is cut after one step and discarded) and writes, per detector and
label, the statistic, the anomaly index, which side of the detector's median the label is on
(the detector's suspicious side or the other), whether the inversion reached its attack
threshold and its last attack rate, with the real target marked.

    python -m benchmarks.scan_detail --models gray-blend --out scan_detail_gray_blend
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import hardenkit as hk

from .common import load_cifar10, md_table, write_results
from .user_script import CLEAN_MODELS, MODELS, clean_loader, load_or_train, model_spec


def scan_rows(name: str, data: dict[str, hk.ImageDataset]) -> tuple[dict[str, Any], list[dict]]:
    """(the scan's summary, one row per detector and label) for user-script model ``name``."""
    model, info = load_or_train(name, data)
    spec = model_spec(name)
    loader = clean_loader(spec, info, data)
    t0 = time.perf_counter()
    # the default's own scan: Purifier.run scans the purification images first; one repair
    # step is the cheapest way to get exactly that scan (the repair is thrown away)
    res = hk.Purifier(model, "auto", config={"max_steps": 1}).run(loader)
    seconds = time.perf_counter() - t0
    scan = res.scan
    assert scan is not None
    summary = {
        "model": name,
        "target": spec["target"],
        "verdict": scan.verdict,
        "flagged": scan.flagged_labels,
        "score": scan.report.score,
        "seconds": seconds,
    }
    rows: list[dict[str, Any]] = []
    for det in scan.report.detectors:
        median = statistics.median(c.value for c in det.classes)
        for c in sorted(det.classes, key=lambda c: -c.anomaly_index):
            low = c.value < median
            rows.append(
                {
                    "model": name,
                    "detector": det.detector,
                    "detector verdict": det.verdict,
                    "label": c.label,
                    "target": "**target**" if c.label == spec["target"] else "",
                    "value": c.value,
                    "anomaly index": c.anomaly_index,
                    "side": (
                        "suspicious"
                        if c.value != median and low == (det.suspicious_side == "low")
                        else "other"
                    ),
                    "reached": c.extra.get("reached_threshold"),
                    # the inversion's attack rate in its last epoch (the detectors that
                    # record it), against the detector's attack threshold
                    "attack rate": c.extra.get("inversion_attack_rate"),
                    "threshold": det.config.get("attack_threshold"),
                    "flagged": c.flagged,
                }
            )
    return summary, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", required=True, help="comma-separated user-script models")
    p.add_argument("--out", default="scan_detail", help="results name")
    args = p.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(MODELS) - set(CLEAN_MODELS))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}")
    data = load_cifar10()
    summaries: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] scan {name} ...", flush=True)
        summary, detail = scan_rows(name, data)
        summaries.append(summary)
        rows += detail
    head = ["model", "target", "verdict", "flagged", "score", "seconds"]
    cols = ["model", "detector", "detector verdict", "label", "target", "value",
            "anomaly index", "side", "reached", "attack rate", "threshold",
            "flagged"]  # fmt: skip
    body = md_table(summaries, head) + "\n" + md_table(rows, cols)
    write_results(
        args.out,
        rows,
        cols,
        {
            "protocol": "the default repair's own scan, per detector and label",
            "scans": summaries,
            "command": "python -m benchmarks.scan_detail " + " ".join(argv or sys.argv[1:]),
        },
        body=body,
    )
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

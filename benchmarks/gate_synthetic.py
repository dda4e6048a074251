"""The gate on the synthetic BadNets ``small-cnn`` of the tests, under a few policies.

    python -m benchmarks.gate_synthetic                  # every policy below
    python -m benchmarks.gate_synthetic --only nc-1round

The model is trained as ``tests/conftest.py``'s ``badnets_model`` (10 classes, target 0, a
3x3 patch); the clean budget is 100 non-poisoned training images per class, the held-out set
the 1,000 test images. Scans: 300 inversion images x 30 Neural Cleanse epochs. The real
trigger is given as a known (red-team) trigger only to report its ASR. Writes
``benchmarks/results/gate_synthetic.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import hardenkit as hk
from hardenkit.gate import Gate

from .common import write_results

NC = {"epochs": 30, "batch_size": 32}
POLICIES: dict[str, dict[str, Any]] = {
    "nc-1round": {"scan": {"max_images": 300, "detector_options": {"neural-cleanse": NC}}},
    "nc-2rounds": {
        "scan": {"max_images": 300, "detector_options": {"neural-cleanse": NC}},
        "max_repair_rounds": 2,
    },
    "nc+mmbd-all": {
        "scan": {
            "max_images": 300,
            "detectors": ["neural-cleanse", "mm-bd"],
            "combine": "all",
            "detector_options": {"neural-cleanse": NC, "mm-bd": {"starts": 10}},
        }
    },
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", action="append", choices=sorted(POLICIES))
    args = p.parse_args(argv)
    from tests.conftest import train_backdoored

    data = hk.make_synthetic_dataset(num_classes=10, train_per_class=500, test_per_class=100)
    bd = train_backdoored("badnets", data)
    idx = hk.data.stratified_indices(
        data.train.labels, per_class=100, exclude=bd.poisoned.poison_indices
    )
    clean = data.train.subset(idx)
    rows = []
    for name in args.only or list(POLICIES):
        t0 = time.perf_counter()
        res = Gate(POLICIES[name], runtime={"device": "cpu", "seed": 0}).run(
            bd.model,
            clean.loader(),
            data.test.loader(),
            known_triggers={"real": (bd.trigger, bd.target)},
        )
        rep = res.report
        real = next(m for m in rep.triggers if m.source == "known:real")
        rows.append(
            {
                "policy": name,
                "passed": rep.passed,
                "failed rules": " ".join(r.rule_id for r in rep.failed_rules) or "-",
                "input flagged": rep.input_scan["flagged_labels"] if rep.input_scan else None,
                "rounds": len(rep.repair_rounds),
                "rescan flagged": rep.rescan["flagged_labels"] if rep.rescan else None,
                "BA %": f"{100 * (rep.input_ba or 0):.1f} -> {100 * (rep.output_ba or 0):.1f}",
                "real-trigger ASR %": f"{100 * (real.input_asr or 0):.1f} -> "
                f"{100 * (real.output_asr or 0):.1f}",
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(rows[-1], flush=True)
    cmd = "python -m benchmarks.gate_synthetic" + "".join(f" --only {n}" for n in (args.only or []))
    write_results("gate_synthetic", rows, list(rows[0]), {"command": cmd})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pruning integration tests' shortened budgets, measured against the longer ones.

    python -m benchmarks.pruning_test_budgets --strategy anp --values 150,75
    python -m benchmarks.pruning_test_budgets --strategy shapley-pruning --values 100,50

The model is the tests' stored width-32 BadNets ``small-cnn`` (tests/fixture_store.py) on the
tests' synthetic data; ``anp`` varies ``iterations`` on 100 clean images per class,
``shapley-pruning`` varies ``max_permutations`` on one image per class (no held-out split), as
in tests/integration/test_pruning_removes.py. BA / ASR on the 1,000 test images with the real
trigger; seconds are wall time (one thread). Results:
``benchmarks/results/pruning_test_budgets_<strategy>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

import hardenkit as hk

from .common import write_results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", choices=["anp", "shapley-pruning"], required=True)
    ap.add_argument("--values", default=None, help="comma-separated budgets")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the tests' setting
    from tests.integration.test_pruning_removes import train_wide

    syn = hk.make_synthetic_dataset(num_classes=10, train_per_class=500, test_per_class=100)
    wide = train_wide(syn)
    exclude = wide.poisoned.poison_indices

    def measure(model: Any) -> hk.ValidationReport:
        return hk.Validator(model).run(syn.test.loader(), trigger=wide.trigger, target=wide.target)

    before = measure(wide.model)
    key = "iterations" if args.strategy == "anp" else "max_permutations"
    per_class = 100 if args.strategy == "anp" else 1
    # as in the tests: ANP with the Purifier's default held-out split, ShapPruning with none
    extra: dict[str, Any] = {} if args.strategy == "anp" else {"holdout_fraction": 0}
    clean = syn.train.subset(
        hk.data.stratified_indices(syn.train.labels, per_class=per_class, exclude=exclude)
    )
    default = "150,75" if args.strategy == "anp" else "100,50"
    rows: list[dict[str, Any]] = []
    for value in (int(v) for v in (args.values or default).split(",")):
        t0 = time.perf_counter()
        res = hk.Purifier(wide.model, args.strategy, config={key: value}, **extra).run(
            clean.loader()
        )
        after = measure(res.model)
        rows.append(
            {
                key: value,
                "status": res.status,
                "pruned": res.report.details["pruning"]["pruned"],
                "ba_before": round(100 * before.ba, 2),
                "ba_after": round(100 * after.ba, 2),
                "asr_before": round(100 * float(before.asr or 0), 2),
                "asr_after": round(100 * float(after.asr or 0), 2),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(rows[-1], flush=True)
    write_results(
        f"pruning_test_budgets_{args.strategy}",
        rows,
        list(rows[0]),
        {
            "command": " ".join(
                ["python -m benchmarks.pruning_test_budgets", *(argv or sys.argv[1:])]
            )
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

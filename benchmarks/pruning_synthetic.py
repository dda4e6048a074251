"""Pruning strategies on the synthetic BadNets model of the integration tests (no dataset needed).

    python -m benchmarks.pruning_synthetic
    python -m benchmarks.pruning_synthetic --seeds 5    # one-shot shapley-pruning, 5 seeds

The model is the width-32 ``SmallCNN`` of ``tests/integration/test_pruning_removes.py``
(10-class synthetic data, 500 training images per class, BadNets 10 %, 8 epochs); the clean
budget is 100 non-poisoned training images per class. Rows: fine-pruning (default 100 and the
tests' 20 fine-tuning epochs), anp (the tests' 300 mask iterations), shapley-pruning with one
image per class (its own inverted trigger — with the default mean ablation and with zero
ablation — and, as a diagnostic, the *real* trigger given as the scan), and data-free
shapley-pruning (without real images, and with 1,000 real ones for the Purifier's
measurements only, as the integration test). BA / ASR on the 1,000 synthetic test images with
the real trigger; the trigger guard's and the recheck's verdicts (stop 62). Writes
``benchmarks/results/pruning_synthetic.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

import hardenkit as hk
from hardenkit.models import SmallCNN

from .common import guard_fields, recheck_cell, write_results

ROWS: list[tuple[str, str, dict[str, Any], str]] = [
    ("fine-pruning", "fine-pruning", {}, "budget"),
    ("fine-pruning (20 epochs)", "fine-pruning", {"epochs": 20}, "budget"),
    ("anp (300 iterations)", "anp", {"iterations": 300}, "budget"),
    ("shapley-pruning, 1 image/class", "shapley-pruning", {}, "one-shot"),
    (
        "shapley-pruning, 1 image/class, zero ablation",
        "shapley-pruning",
        {"ablation": "zero"},
        "one-shot",
    ),
    ("shapley-pruning, 1 image/class, real trigger", "shapley-pruning", {}, "one-shot-real"),
    ("shapley-pruning, data-free", "shapley-pruning", {"max_permutations": 50}, "data-free"),
    (
        "shapley-pruning, data-free, 1,000 held-out images",
        "shapley-pruning",
        {"max_permutations": 50},
        "data-free-holdout",
    ),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--seeds",
        type=int,
        default=0,
        help="instead of the rows above: one-image-per-class shapley-pruning with runtime "
        "seeds 0..N-1 (the seed changes the augmented copies, the inversion and the estimate), "
        "written to pruning_synthetic_seeds",
    )
    ap.add_argument(
        "--only",
        default=None,
        help="run only the rows whose name contains this text (e.g. 'data-free')",
    )
    ap.add_argument("--out", default=None, help="result name (default pruning_synthetic)")
    args = ap.parse_args(argv)
    rows_spec: list[tuple[str, str, dict[str, Any], str, int]] = [
        (*r, 0) for r in ROWS if args.only is None or args.only in r[0]
    ]
    if args.seeds:
        rows_spec = [
            (f"shapley-pruning, 1 image/class, seed {s}", "shapley-pruning", {}, "one-shot", s)
            for s in range(args.seeds)
        ]
    data = hk.make_synthetic_dataset(num_classes=10, train_per_class=500, test_per_class=100)
    torch.manual_seed(0)
    bd = hk.make_backdoored_model(
        "badnets",
        data.train,
        test=data.test,
        arch=lambda: SmallCNN(num_classes=10, width=32),
        train_config=hk.TrainConfig(epochs=8, batch_size=128, lr=0.05, augment=False),
    )
    poison = bd.poisoned.poison_indices
    budget = data.train.subset(
        hk.data.stratified_indices(data.train.labels, per_class=100, exclude=poison)
    )
    shots = data.train.subset(
        hk.data.stratified_indices(data.train.labels, per_class=1, exclude=poison)
    )

    def measure(model: Any) -> tuple[float, float]:
        r = hk.Validator(model).run(data.test.loader(), trigger=bd.trigger, target=bd.target)
        return r.ba, float(r.asr or 0.0)

    ba0, asr0 = measure(bd.model)
    rows: list[dict[str, Any]] = [
        {"defence": "none", "BA %": 100 * ba0, "ASR %": 100 * asr0, "seconds": 0.0}
    ]
    for label, strategy, cfg, mode, seed in rows_spec:
        rt = {"seed": seed}
        print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
        t0 = time.perf_counter()
        scan = None
        if mode == "budget":
            res = hk.Purifier(bd.model, strategy, config=cfg).run(budget.loader())
        elif mode == "data-free":
            res = hk.Purifier(bd.model, strategy, config=cfg, input_shape=(3, 32, 32)).run(None)
        elif mode == "data-free-holdout":  # real images for the measurements only
            res = hk.Purifier(bd.model, strategy, config=cfg, input_shape=(3, 32, 32)).run(
                None, holdout_loader=budget.loader()
            )
        else:
            if mode == "one-shot-real":
                scan = hk.ScanResult.from_triggers(
                    {int(bd.target): bd.trigger},  # type: ignore[call-overload]
                    model=bd.model,
                    num_classes=10,
                )
            res = hk.Purifier(bd.model, strategy, config=cfg, holdout_fraction=0, runtime=rt).run(
                shots.loader(), scan=scan
            )
        secs = time.perf_counter() - t0
        ba, asr = measure(res.model)
        pruning = res.report.details.get("pruning") or {}
        used = res.report.clean_images
        rows.append(
            {
                "defence": label,
                "BA %": 100 * ba,
                "ASR %": 100 * asr,
                "seconds": secs,
                "clean images": used["train"] + used["validation"],
                "pruned": f"{pruning['pruned']} of {pruning['total']}" if pruning else "-",
                "status": res.status,
                "trigger guard": _guard_cell(res.report),
                "recheck": recheck_cell(guard_fields(res.report)["recheck"]),
            }
        )
        print(f"  BA {100 * ba:.2f} ASR {100 * asr:.2f} {secs:.0f}s {rows[-1]['pruned']}")
    cols = ["defence", "BA %", "ASR %", "seconds", "clean images", "pruned", "status",
            "trigger guard", "recheck"]  # fmt: skip
    write_results(
        args.out or ("pruning_synthetic_seeds" if args.seeds else "pruning_synthetic"),
        rows,
        cols,
        {
            "protocol": "synthetic BadNets, width-32 SmallCNN (the pruning integration tests)",
            "command": "python -m benchmarks.pruning_synthetic " + " ".join(sys.argv[1:]),
        },
    )
    return 0


def _guard_cell(report: Any) -> str:
    """The trigger guard's judged label and added ASR (``-`` when nothing was judged)."""
    g = report.trigger_guard
    if g is None or g.added_asr is None:
        return "-"
    return f"{g.label}: +{100 * g.added_asr:.2f} ({'pass' if g.passed else 'fail'})"


if __name__ == "__main__":
    raise SystemExit(main())

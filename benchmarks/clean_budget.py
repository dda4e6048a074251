"""The default Purifier against the size of the clean budget, on the demo's synthetic BadNets model.

    python -m benchmarks.clean_budget            # budgets 1, 5, 20, 50, 100 images per class
    python -m benchmarks.clean_budget --quick    # smoke run: budgets 1 and 20 only

The model is the one ``hardenkit demo`` trains (seed 0): 10-class synthetic data (500 training
/ 100 test images per class), BadNets (3x3 patch, target 0, 10 % poisoning), ``small-cnn``,
8 epochs. The default ``hk.Purifier(model)`` (strategy ``auto``: scan -> ``nc-unlearn`` on a
recovered trigger, ``finetune`` otherwise) runs with clean budgets of 1, 5, 20, 50 and 100
non-poisoned training images per class (50 per class = 10 %, 100 per class = 20 % of this
training set). Its own scan is CPU-sized like the demo's (300 inversion images, at most 30
Neural Cleanse epochs per label, batch 32) instead of the Scanner's defaults. With one image
per class the Purifier runs with ``holdout_fraction=0``; its scan then refuses (the Scanner
needs ``min_images_per_class`` = 5 images per class after its own 20 % holdout: a
``DataError``, recorded as a row) and runs again with the scan's ``min_images_per_class=1``
and ``holdout_fraction=0``; the same happens at 5 per class (then only the minimum is lowered);
``shapley-pruning`` (its one-image-per-class mode, which scans on augmented copies of the few
images) runs too.

Every run gets the same separate ``holdout_loader``: 50 clean training images per class,
disjoint from every budget and from the poison, so the utility guard (BA before/after,
``degraded`` above a 5-point drop) judges on 500 images whatever the budget (images the model
was trained on, so the guard's BA reads higher than the test set's). BA and ASR are
measured on the 1,000 synthetic test images with the **real** trigger (ASR over the 900
non-target images), in %. Rows are written after every run to
``benchmarks/results/clean_budget.{json,md}`` (``--out`` renames them).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

import hardenkit as hk
from hardenkit.data import stratified_indices
from hardenkit.errors import DataError

from .common import peak_rss_mb, torch_threads, write_results

SEED = 0
BUDGETS = (1, 5, 20, 50, 100)
QUICK_BUDGETS = (1, 20)
HOLDOUT_PER_CLASS = 50
SCAN_CONFIG: dict[str, Any] = {
    "max_images": 300,
    "detector_options": {"neural-cleanse": {"epochs": 30, "batch_size": 32}},
}
"""The demo's CPU-sized scan (``hardenkit.cli.demo.DEMO_SCAN``)."""
COLUMNS = ["strategy", "per_class", "images", "status", "branch", "ba", "asr", "seconds"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"budgets {QUICK_BUDGETS} only")
    ap.add_argument("--out", default="clean_budget", help="name of the result files")
    args = ap.parse_args(argv)
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    rt = {"device": "cpu", "seed": SEED}

    t_all = time.perf_counter()
    data = hk.make_synthetic_dataset(num_classes=10, seed=SEED)
    bd = hk.make_backdoored_model(
        "badnets",
        data.train,
        test=data.test,
        arch="small-cnn",
        attack_config={"target": 0, "poison_rate": 0.1, "seed": SEED},
        train_config=hk.TrainConfig(epochs=8, batch_size=128, lr=0.05, augment=False),
        runtime=rt,
    )
    train_seconds = time.perf_counter() - t_all
    poison = torch.as_tensor(bd.poisoned.poison_indices)
    labels = data.train.labels
    holdout_idx = stratified_indices(
        labels, per_class=HOLDOUT_PER_CLASS, seed=SEED + 1, exclude=poison
    )
    holdout = data.train.subset(holdout_idx)
    taken = torch.cat([poison, holdout_idx])
    print(
        f"trained in {train_seconds:.0f}s; {len(poison)} poisoned, holdout {len(holdout)}",
        flush=True,
    )

    def measure(model: Any) -> tuple[float, float]:
        r = hk.Validator(model, runtime=rt).run(
            data.test.loader(batch_size=500), trigger=bd.trigger, target=bd.target
        )
        return 100 * r.ba, 100 * float(r.asr or 0.0)

    ba0, asr0 = measure(bd.model)
    rows: list[dict[str, Any]] = [
        {
            "strategy": "none (backdoored)",
            "per_class": 0,
            "images": 0,
            "status": "-",
            "branch": "-",
            "ba": ba0,
            "asr": asr0,
            "seconds": 0.0,
        }
    ]
    print(f"backdoored: BA {ba0:.2f} ASR {asr0:.2f}", flush=True)

    runs: list[tuple[str, int]] = [("auto", k) for k in budgets]
    runs.insert(1, ("shapley-pruning", 1))
    meta = {
        "protocol": "hardenkit demo's synthetic BadNets model (seed 0), default Purifier vs "
        "clean budget",
        "model": {
            "dataset": "make_synthetic_dataset(num_classes=10, seed=0): 5,000 train / 1,000 test",
            "attack": "badnets, target 0, poison_rate 0.1, seed 0",
            "arch": "small-cnn",
            "train_config": "epochs=8, batch_size=128, lr=0.05, augment=False",
            "train_seconds": train_seconds,
            "poisoned": len(poison),
        },
        "scan_config": SCAN_CONFIG,
        "holdout": f"{HOLDOUT_PER_CLASS} clean training images per class "
        f"({len(holdout)}), disjoint from the budgets and the poison, passed as holdout_loader",
        "budgets": "stratified_indices(per_class=k, seed=0, exclude=poison + holdout)",
        "metrics": "ba / asr in % on the 1,000 synthetic test images with the real trigger",
        "seed": SEED,
        "torch_threads": torch_threads(),
        "command": "python -m benchmarks.clean_budget " + " ".join(sys.argv[1:]),
    }
    for strategy, k in runs:
        budget_idx = stratified_indices(labels, per_class=k, seed=SEED, exclude=taken)
        budget = data.train.subset(budget_idx)
        print(f"[{time.strftime('%H:%M:%S')}] {strategy}, {k}/class ...", flush=True)
        scan_cfg: dict[str, Any] | None = SCAN_CONFIG if strategy == "auto" else None
        label = strategy
        t0 = time.perf_counter()
        try:
            res = _purify(bd.model, strategy, k, rt, scan_cfg, budget, holdout)
        except DataError as e:
            # The Scanner needs ScanConfig.min_images_per_class (5) images per class, and 2
            # while its own holdout_fraction is > 0: record the refusal, then run again with
            # the minimum lowered to 1 (and, below 2 per class, no scan holdout).
            print(f"  DataError: {e}", flush=True)
            rows.append(_row(label, k, len(budget), "DataError", "-", None, None, t0))
            rows[-1]["error"] = str(e)
            if scan_cfg is None:
                continue
            scan_cfg = {**scan_cfg, "min_images_per_class": 1}
            label = f"{strategy} (scan min_images_per_class=1"
            if k < 2:
                scan_cfg["holdout_fraction"] = 0.0
                label += ", scan holdout_fraction=0"
            label += ")"
            t0 = time.perf_counter()
            try:
                res = _purify(bd.model, strategy, k, rt, scan_cfg, budget, holdout)
            except Exception as e2:  # record it and go on with the next budget
                print(f"  {type(e2).__name__}: {e2}", flush=True)
                rows.append(_row(label, k, len(budget), type(e2).__name__, "-", None, None, t0))
                rows[-1]["error"] = str(e2)
                continue
        secs = time.perf_counter() - t0
        ba, asr = measure(res.model)
        rep = res.report
        guard = rep.utility_guard
        scan = rep.scan or {}
        rows.append(
            {
                **_row(
                    label, k, len(budget), res.status, rep.details.get("branch") or "-", ba, asr, t0
                ),
                "seconds": secs,
                "scan_config": scan_cfg,
                "clean_images": rep.clean_images,
                "scan_verdict": scan.get("verdict"),
                "flagged_labels": scan.get("flagged_labels"),
                "utility_guard": None if guard is None else guard.model_dump(),
                "pruning": rep.details.get("pruning"),
                "notes": list(rep.notes),
            }
        )
        print(
            f"  {res.status} branch={rows[-1]['branch']} BA {ba:.2f} ASR {asr:.2f} "
            f"{secs:.0f}s scan={rows[-1]['scan_verdict']} {rows[-1]['flagged_labels']}",
            flush=True,
        )
        meta["seconds_total"] = time.perf_counter() - t_all
        meta["peak_rss_mb"] = peak_rss_mb()
        write_results(args.out, rows, COLUMNS, meta)
    print(f"done in {time.perf_counter() - t_all:.0f}s", flush=True)
    return 0


def _purify(
    model: Any,
    strategy: str,
    k: int,
    rt: dict[str, Any],
    scan_cfg: dict[str, Any] | None,
    budget: Any,
    holdout: Any,
) -> hk.PurificationResult:
    return hk.Purifier(
        model,
        strategy,
        runtime=rt,
        holdout_fraction=0 if k == 1 else 0.1,  # ignored: a holdout_loader is given
        scan_config=scan_cfg,
    ).run(budget.loader(batch_size=500), holdout_loader=holdout.loader(batch_size=500))


def _row(
    strategy: str,
    k: int,
    images: int,
    status: str,
    branch: str,
    ba: float | None,
    asr: float | None,
    t0: float,
) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "per_class": k,
        "images": images,
        "status": status,
        "branch": branch,
        "ba": ba,
        "asr": asr,
        "seconds": time.perf_counter() - t0,
    }


if __name__ == "__main__":
    raise SystemExit(main())

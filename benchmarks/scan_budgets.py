"""What each ``hardenkit scan --budget`` costs on the demo's model (CPU), and what it finds.

    python -m benchmarks.scan_budgets                       # quick, standard, thorough
    python -m benchmarks.scan_budgets --budgets quick standard

Trains the demo's backdoored model (synthetic 10 classes, BadNets 10 %, target 0, small-cnn,
8 epochs, seed 0) and scans it the way ``hardenkit scan --data synthetic`` does (the 5,000
training images) with each budget preset: the printed up-front estimate, the wall time, the
verdict, the flagged labels and whether the scan was cut short. Writes
``benchmarks/results/scan_budgets.{json,md}``. Timings depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

import hardenkit as hk
from hardenkit.scan import estimate_scan_seconds, scan_config_for_budget

from .common import torch_threads, write_results

COLUMNS = ["budget", "images", "epochs", "estimate_s", "seconds", "verdict", "flagged",
           "anomaly_index", "cut_short"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", nargs="+", default=["quick", "standard", "thorough"])
    args = ap.parse_args(argv)
    rt = {"seed": 0, "device": "cpu", "progress": "off"}
    data = hk.make_synthetic_dataset(num_classes=10, seed=0)
    bd = hk.make_backdoored_model(
        "badnets",
        data.train,
        test=data.test,
        arch="small-cnn",
        attack_config={"target": 0, "poison_rate": 0.1, "seed": 0},
        train_config=hk.TrainConfig(epochs=8, batch_size=128, lr=0.05, augment=False),
        runtime=rt,
    )
    rows: list[dict[str, Any]] = []
    cmd = "python -m benchmarks.scan_budgets " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {"command": cmd.strip(), "torch_threads": torch_threads(), "model_ba_asr": bd.metrics}
    path = None
    for budget in args.budgets:
        cfg = scan_config_for_budget(budget)
        est = estimate_scan_seconds(
            bd.model, cfg, num_classes=10, input_shape=(3, 32, 32), clean_images=len(data.train)
        )
        t0 = time.perf_counter()
        res = hk.Scanner(bd.model, 10, config=cfg, runtime=rt).run(data.train.loader())
        rows.append(
            {
                "budget": budget,
                "images": cfg.max_images,
                "epochs": cfg.detector_options.get("neural-cleanse", {}).get("epochs", 80),
                "estimate_s": est,
                "seconds": time.perf_counter() - t0,
                "verdict": res.verdict,
                "flagged": res.flagged_labels,
                "anomaly_index": res.report.detectors[0].anomaly_index,
                "cut_short": res.report.budget_exhausted,
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)
        # written after every budget: a long `thorough` run that is stopped keeps the others
        path = write_results("scan_budgets", rows, COLUMNS, meta)
    print(path)
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())

"""Example 05: scan an untrusted model for a backdoor before deploying it.

What it shows:
    * ``hk.Scanner`` with two detectors: Neural Cleanse (trigger inversion on a small clean
      budget, batched over all classes) and MM-BD (data-free maximum-margin test);
    * the verdict, the calibrated score, the flagged target label and the per-class table
      (inverted mask L1 norm, the recovered trigger's attack success rate on held-out clean
      images, the maximum margin);
    * checking the recovered trigger with ``hk.Validator`` on test images the scan never saw:
      a trigger that the scanner *reconstructed* (it never saw the real one) still sends most
      images to the target;
    * ``ScanResult.save``: ``report.json`` (schema: docs/schemas/scan-report.schema.json),
      every label's recovered trigger as safetensors, and a PNG of each flagged label's
      trigger (mask | pattern | mask*pattern | a stamped example).

The default (``--quick``) run trains a BadNets-backdoored ``small-cnn`` (target 0, a 3x3
patch) on 10-class synthetic data for 8 epochs and scans it with 200 inversion images and 10
Neural Cleanse epochs: about half a minute on one CPU thread. ``--no-quick`` uses more data and
the detectors' default settings (80 epochs, 800 inversion images; several minutes).

    python examples/05_scan_model.py
    python examples/05_scan_model.py --out runs/05

Exit status: 0 when the scan flags the planted target (label 0), 1 when it misses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import hardenkit as hk
from hardenkit.data import stratified_split


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="small scan budget (default); --no-quick for the detectors' default settings",
    )
    p.add_argument("--out", type=Path, default=None, help="output directory (default: a temp dir)")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _fmt(v: float | bool | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    runtime = hk.RuntimeConfig(device=args.device, seed=args.seed, progress="off")
    per_class = (300, 60) if args.quick else (500, 150)
    data = hk.make_synthetic_dataset(
        num_classes=10, train_per_class=per_class[0], test_per_class=per_class[1], seed=args.seed
    )

    # 1. The untrusted model: BadNets, target 0 (the scanner is not told either).
    t0 = time.perf_counter()
    bd = hk.make_backdoored_model(
        "badnets",
        data.train,
        arch="small-cnn",
        attack_config={"target": 0},
        train_config=hk.TrainConfig(epochs=8, batch_size=128, lr=0.05, augment=False),
        runtime=runtime,
    )
    print(f"trained a BadNets small-cnn (target {bd.target}) in {time.perf_counter() - t0:.1f}s")

    # 2. The defender's clean data: a clean budget for the scan and disjoint test images.
    budget_idx, test_idx = stratified_split(
        data.test.labels, holdout_fraction=1 / 3, seed=args.seed
    )
    budget, test = data.test.subset(budget_idx), data.test.subset(test_idx)
    print(f"clean budget {len(budget)} images, held-out test {len(test)} images")

    # 3. Scan. Neural Cleanse inverts a trigger for every label (all labels in one batch);
    #    MM-BD needs no data. combine="any": the most severe of the two verdicts.
    #    The quick budget (200 images, 10 epochs; MM-BD 8 starts x 150 steps) is a fraction
    #    of the defaults; on this model it still separates label 0 (seed 0: mask L1 16 against
    #    150-200 for the other labels, anomaly index 6.8) and keeps the example short.
    if args.quick:
        config: dict[str, object] = {
            "detectors": ["neural-cleanse", "mm-bd"],
            "max_images": 200,
            "detector_options": {
                "neural-cleanse": {"epochs": 10, "batch_size": 32},
                "mm-bd": {"starts": 8, "steps": 150},
            },
        }
    else:
        config = {"detectors": ["neural-cleanse", "mm-bd"]}
    scanner = hk.Scanner(bd.model, num_classes=10, config=config, runtime=runtime)
    scan = scanner.run(budget.loader())
    rep = scan.report
    print()
    print(rep.summary())
    print(f"\n{'label':>5} {'flagged':>7} {'mask L1':>8} {'trig ASR':>8} {'max margin':>10}")
    for row in rep.classes:
        print(
            f"{row.label:>5} {'yes' if row.flagged else '':>7} {_fmt(row.mask_l1, '8.1f')} "
            f"{_fmt(row.trigger_asr, '8.1%')} {_fmt(row.max_margin, '10.1f')}"
        )

    # 4. Does the recovered trigger work on images the scan never saw?
    val = None
    if scan.trigger is not None and scan.target is not None:
        val = hk.Validator(bd.model, runtime=runtime).run(
            test.loader(), trigger=scan.trigger, target=scan.target
        )
        print(f"\nrecovered trigger of label {scan.target} on the held-out test set:")
        print(val.summary())
        # the real trigger, for comparison (a defender would not have it)
        real = hk.Validator(bd.model, runtime=runtime).run(
            test.loader(), trigger=bd.trigger, target=bd.target
        )
        print(f"the planted trigger: ASR {_fmt(real.asr, '.1%')}")

    # 5. Save: report.json, triggers/label_<y>.safetensors, flagged_label_<y>.png.
    out = args.out or Path(tempfile.mkdtemp(prefix="hardenkit-example-05-"))
    scan.save(out / "scan")
    again = hk.ScanResult.load(out / "scan")  # report + every recovered trigger
    assert again.report == rep
    assert again.target == scan.target
    print(f"\nwrote {out / 'scan'}/: {sorted(p.name for p in (out / 'scan').iterdir())}")

    found = rep.verdict == "backdoored" and scan.target == bd.target
    print(
        json.dumps(
            {
                "verdict": rep.verdict,
                "score": round(rep.score, 3),
                "flagged": rep.flagged_labels,
                "planted_target": bd.target,
                "found": found,
                "recovered_trigger_asr": None if val is None else val.asr,
                "detector_seconds": {d.detector: round(d.seconds, 1) for d in rep.detectors},
                "seconds": round(time.perf_counter() - t_start, 1),
            }
        )
    )
    if not found:
        print("the scan missed the planted backdoor", file=sys.stderr)
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())

"""Example 07: remove a backdoor without a trigger (D3) when the scan cannot recover one.

What it shows:
    * a **Blended** backdoor (a full-image noise pattern blended in at alpha 0.2, target 0):
      not the small patch that Neural Cleanse's trigger inversion assumes;
    * a data-free ``hk.Scanner`` (MM-BD) flags the target label but recovers no trigger:
      ``scan.triggers`` only holds triggers of labels that a trigger-recovering detector
      (Neural Cleanse) itself flagged, so MCL has nothing to contrast against and
      ``hk.Purifier(model, "mcl")`` returns the model unchanged (``refused``);
    * ``hk.Purifier(model, "d3", config={"lmd": 10.0})``: distance-driven detoxification, which
      needs **no trigger and no scan**: it moves the last linear layer's weights as far as
      possible from the backdoored ones while a hinge keeps the clean loss low, and keeps 10 %
      of the clean budget as a validation split (the report's ``details`` give the best and
      final validation epochs);
    * measuring the repaired copy with ``hk.Validator`` on the test set with the **real**
      trigger (unknown to the defender), and ``PurificationResult.save``.

The default (``--quick``) run trains a Blended-backdoored ``small-cnn`` on 10-class synthetic
data (500 training images per class; with 300, 8 epochs gave an ASR of only 78 %) for 8
epochs, scans it with MM-BD (5 random starts per class instead of 30) and runs D3 for 60
epochs instead of the code's 100 (the cosine schedule is shortened accordingly): about a
minute on one CPU thread. ``--no-quick`` runs MM-BD's 30 starts and D3's 100 epochs.

Neural Cleanse assumes a small patch, but it is not blind to blends: on this model (seed 0)
a quick Neural Cleanse scan (200 inversion images, 20 epochs) did flag label 0 and recover a
trigger, and ``auto`` would then take the MCL branch. What the scan finds depends on the model;
D3 does not depend on it.

    python examples/07_trigger_free_d3.py
    python examples/07_trigger_free_d3.py --out runs/07

Exit status: 0 when the repaired model meets the targets on the test set (ASR with the real
trigger <= 10 % and BA drop <= 3 points); 1 otherwise, or when the planted backdoor is too
weak to demonstrate anything (ASR < 90 % before the repair).
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
from hardenkit.reports import ModelFingerprint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="5 MM-BD starts and 60 D3 epochs (default); --no-quick for 30 and the code's 100",
    )
    p.add_argument("--out", type=Path, default=None, help="output directory (default: a temp dir)")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:6.1f}%"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    runtime = hk.RuntimeConfig(device=args.device, seed=args.seed, progress="off")
    data = hk.make_synthetic_dataset(
        num_classes=10,
        train_per_class=500,
        test_per_class=100,
        seed=args.seed,
    )

    # 1. The model to repair: Blended, target 0, 10 % of the training images poisoned.
    t0 = time.perf_counter()
    bd = hk.make_backdoored_model(
        "blended",
        data.train,
        arch="small-cnn",
        attack_config={"target": 0, "poison_rate": 0.1, "seed": args.seed},
        train_config=hk.TrainConfig(epochs=8, batch_size=128, lr=0.05, augment=False),
        runtime=runtime,
    )
    fingerprint = ModelFingerprint.of(bd.model)
    print(f"trained a Blended small-cnn (target {bd.target}) in {time.perf_counter() - t0:.1f}s")

    test = data.test  # never seen by the scan or the Purifier
    before = hk.Validator(bd.model, runtime=runtime).run(
        test.loader(), trigger=bd.trigger, target=bd.target
    )
    print(
        f"backdoored model on the test set: BA {_pct(before.ba).strip()}, "
        f"ASR (real trigger) {_pct(before.asr).strip()}"
    )
    if (before.asr or 0.0) < 0.90:
        print("the planted backdoor is too weak (ASR < 90%): nothing to show", file=sys.stderr)
        return 1

    # 2. The defender's clean budget: 100 training images per class, none of them poisoned.
    budget = data.train.subset(
        hk.data.stratified_indices(
            data.train.labels,
            per_class=100,
            seed=args.seed,
            exclude=bd.poisoned.poison_indices,
        )
    )
    print(f"clean budget {len(budget)} images; test set {len(test)} images")

    # 3. Scan with the data-free MM-BD gate (seconds, no clean images needed). It is
    #    pattern-agnostic and can flag the target of a blended backdoor, but it recovers no
    #    trigger: ScanResult.triggers only holds triggers of labels that a trigger-recovering
    #    detector (Neural Cleanse) itself flagged.
    #    The quick run uses 5 random starts per class instead of 30 (it flags label 0 as
    #    10 did, in half the time: 6.7 s against 14.0 s).
    t0 = time.perf_counter()
    mm_bd: dict[str, object] = {"starts": 5} if args.quick else {}
    scan = hk.Scanner(
        bd.model,
        10,
        config={"detectors": ["mm-bd"], "detector_options": {"mm-bd": mm_bd}},
        input_shape=(3, 32, 32),
        runtime=runtime,
    ).run()
    scan_seconds = time.perf_counter() - t0
    print(
        f"\nscan (mm-bd): {scan.verdict} (score {scan.score:.3f}), flagged "
        f"{scan.flagged_labels}, recovered triggers for {sorted(scan.triggers)} "
        f"({scan_seconds:.1f}s)"
    )

    # What the trigger-based default would do with this scan. When the scan offers a trigger,
    # MCL would run; otherwise it returns the model unchanged (cheap: no training).
    if scan.triggers:
        print(f"MCL would get the recovered trigger(s) of {sorted(scan.triggers)} this time")
    else:
        mcl = hk.Purifier(bd.model, "mcl", runtime=runtime).run(budget.loader(), scan=scan)
        print(f"Purifier(model, 'mcl'): {mcl.status}, model unchanged")
        for note in mcl.report.notes:
            print(f"  note: {note}")

    # 4. Repair without any trigger: D3 (no scan, no trigger). lmd=10 is the paper's lambda
    #    (the official code's default is 0.5). The Purifier holds 10 % of the budget out for
    #    the before/after numbers, and D3 keeps 10 % of the rest for validation.
    d3_config: dict[str, object] = {"lmd": 10.0}
    if args.quick:
        d3_config["epochs"] = 60
    res = hk.Purifier(bd.model, "d3", config=d3_config, runtime=runtime).run(budget.loader())
    rep = res.report
    print()
    print(rep.summary())
    d = rep.details
    print(
        f"  D3 on {d['selected_weights']}: {d['final_epoch']} epochs, output = epoch "
        f"{d['chosen_epoch']} ({d['selection']}); validation accuracy best "
        f"{_pct(d['best_val_accuracy']).strip()} at epoch {d['best_val_epoch']}, final "
        f"{_pct(d['final_val_accuracy']).strip()}; distance from the original "
        f"{d['final_distance']:.2f}"
    )
    assert res.scan is None  # D3 never scans
    assert ModelFingerprint.of(bd.model) == fingerprint  # the caller's model is untouched

    # 5. Measure the repaired copy on the test set with the real trigger, and gate it.
    gate = hk.GatePolicy(max_asr=0.10, max_ba_drop=0.03)
    after = hk.Validator(res.model, runtime=runtime, policy=gate).run(
        test.loader(), trigger=bd.trigger, target=bd.target, baseline_ba=before.ba
    )
    print(f"\n{'':40} {'before':>7} {'after':>7}")
    print(f"{'BA (test set)':40} {_pct(before.ba)} {_pct(after.ba)}")
    print(f"{'ASR, real trigger (test set)':40} {_pct(before.asr)} {_pct(after.asr)}")
    print(f"{'BA (held-out clean budget)':40} {_pct(rep.ba_before)} {_pct(rep.ba_after)}")
    print(f"gate (ASR <= 10%, BA drop <= 3 points): {'PASSED' if after.passed else 'FAILED'}")

    # 6. Save the repaired model, its report, the validation and the scan.
    out = args.out or Path(tempfile.mkdtemp(prefix="hardenkit-example-07-"))
    res.save(out)  # model.safetensors, report.json (no scan/: D3 used none)
    after.save(out / "validation_after.json")
    scan.save(out / "scan")  # the MM-BD scan: report.json only (no trigger)
    print(f"wrote {out}/: {sorted(p.name for p in out.iterdir())}")

    asr_after = after.asr or 0.0
    ba_drop = before.ba - after.ba
    ok = res.purified and asr_after <= 0.10 and ba_drop <= 0.03
    print(
        json.dumps(
            {
                "status": res.status,
                "scan_verdict": scan.verdict,
                "scan_triggers": sorted(scan.triggers),
                "ba_before": round(before.ba, 4),
                "ba_after": round(after.ba, 4),
                "asr_before": round(before.asr or 0.0, 4),
                "asr_after": round(asr_after, 4),
                "best_val_epoch": d["best_val_epoch"],
                "final_epoch": d["final_epoch"],
                "scan_seconds": round(scan_seconds, 1),
                "purify_seconds": round(rep.seconds, 1),
                "seconds": round(time.perf_counter() - t_start, 1),
            }
        )
    )
    if not ok:
        print(
            f"the repair missed its targets: ASR {asr_after:.1%} (max 10%), "
            f"BA drop {100 * ba_drop:.1f} points (max 3)",
            file=sys.stderr,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

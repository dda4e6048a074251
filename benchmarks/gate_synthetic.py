"""The gate, end to end, on synthetic backdoored and clean models: decision and seconds.

    python -m benchmarks.gate_synthetic                 # every case, both policies
    python -m benchmarks.gate_synthetic --only demo     # one case

Each case trains a model on the 10-class synthetic data (5,000 train / 1,000 test images, 8
epochs, as ``hardenkit demo``), then runs :class:`hardenkit.gate.Gate` twice:

* ``default`` — the documented default policy (quick scans, repair with ``auto`` when
  flagged, re-scan, BA drop <= 3 points, ASR <= 10 %, ONNX verified on CPU);
* ``never`` — the same with ``repair: never`` (a backdoored model must fail it).

The clean data is 100 non-poisoned training images per class (the gate holds 20 % of them
out itself); the 1,000 test images are the held-out set. The real trigger is given as a known
(red-team) trigger only to report its ASR (rule ``HK-ASR-002``); the decision without it is
in the ``decision without the real trigger`` column. ``demo`` is the synthetic demo model
(the one the gate was developed on); the other cases — other trigger positions, sizes,
colours, targets, a blended trigger, a user-style ``nn.Sequential`` with normalization
inside, a residual net, seeds — were never tuned to. Writes
``benchmarks/results/gate_synthetic.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from torch import nn

import hardenkit as hk
from hardenkit.gate import Gate

from .common import write_results
from .scan_statistic import TinyResNet, user_sequential

# name: (arch, attack or None, attack config, seed, tuned)
CASES: dict[str, tuple[str, str | None, dict[str, Any], int, bool]] = {
    "demo": ("small-cnn", "badnets", {}, 0, True),
    "clean-small-cnn": ("small-cnn", None, {}, 0, True),
    "badnets-4x4-random-top-left": (
        "small-cnn",
        "badnets",
        {"patch_size": 4, "location": "top-left", "pattern": "random", "target": 3},
        1,
        False,
    ),
    "badnets-5x5-checker-center-seq": (
        "user-sequential",
        "badnets",
        {"patch_size": 5, "location": "center", "pattern": "checkerboard", "target": 7},
        2,
        False,
    ),
    "badnets-3x3-black-resnet": (
        "tiny-resnet",
        "badnets",
        {"patch_size": 3, "location": "bottom-left", "pattern": "black", "target": 5},
        3,
        False,
    ),
    "blended-small-cnn": ("small-cnn", "blended", {"target": 2}, 4, False),
    "clean-seq": ("user-sequential", None, {}, 5, False),
    "clean-resnet": ("tiny-resnet", None, {}, 6, False),
}
ARCHS: dict[str, Any] = {
    "small-cnn": lambda: hk.create_model("small-cnn", 10),
    "user-sequential": user_sequential,
    "tiny-resnet": TinyResNet,
}


def _train(
    case: str, data: hk.data.SyntheticSplits
) -> tuple[nn.Module, tuple[hk.Trigger, int] | None, list[int], float, float | None]:
    arch, attack, cfg, seed, _ = CASES[case]
    train_cfg = hk.TrainConfig(epochs=8, batch_size=128, lr=0.05, augment=False)
    rt = {"seed": seed, "device": "cpu"}
    if attack is None:
        torch.manual_seed(seed)
        model = ARCHS[arch]()
        hk.train_model(model, *data.train.tensors(), train_cfg, runtime=rt)
        ba = hk.Validator(model.eval()).run(data.test.loader()).ba
        return model.eval(), None, [], ba, None
    bd = hk.make_backdoored_model(
        attack,
        data.train,
        test=data.test,
        arch=ARCHS[arch],
        attack_config=cfg,
        train_config=train_cfg,
        runtime=rt,
    )
    return (
        bd.model.eval(),
        (bd.trigger, bd.target),
        list(bd.poisoned.poison_indices),
        bd.metrics["ba"],
        bd.metrics["asr"],
    )


def _nc(scan: hk.ScanResult | None) -> str:
    """Neural Cleanse's anomaly index and the smallest mask's ratio to the median mask."""
    if scan is None:
        return "-"
    det = next(d for d in scan.report.detectors if d.detector == "neural-cleanse")
    med = det.info["median_mask_l1"]
    low = min(det.classes, key=lambda c: c.value)
    dropped = det.info.get("not_flagged_by_ratio") or []
    return f"{det.anomaly_index:.2f} / {low.value / med:.2f} (label {low.label})" + (
        f", ratio unflagged {dropped}" if dropped else ""
    )


def _pair(known: Any) -> str:
    if known is None:
        return "-"
    return f"{100 * (known.input_asr or 0):.1f} -> {100 * (known.output_asr or 0):.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", action="append", choices=sorted(CASES))
    args = p.parse_args(argv)
    data = hk.make_synthetic_dataset(num_classes=10, train_per_class=500, test_per_class=100)
    rows = []
    for case in args.only or list(CASES):
        t0 = time.perf_counter()
        model, real, poison, ba, asr = _train(case, data)
        train_s = time.perf_counter() - t0
        idx = hk.data.stratified_indices(data.train.labels, per_class=100, exclude=poison)
        clean = data.train.subset(idx)
        for policy in ("default", "never"):
            pol: dict[str, Any] = {} if policy == "default" else {"repair": "never"}
            t = time.perf_counter()
            res = Gate(pol, runtime={"device": "cpu", "seed": 0}).run(
                model,
                clean.loader(),
                data.test.loader(),
                known_triggers=None if real is None else {"real": real},
            )
            secs = time.perf_counter() - t
            rep = res.report
            known = next((m for m in rep.triggers if m.source == "known:real"), None)
            failed = [r.rule_id for r in rep.failed_rules]
            rows.append(
                {
                    "case": case,
                    "tuned": CASES[case][4],
                    "arch": CASES[case][0],
                    "target": None if real is None else real[1],
                    "model BA %": round(100 * ba, 1),
                    "model ASR %": None if asr is None else round(100 * asr, 1),
                    "policy": policy,
                    "passed": rep.passed,
                    "failed rules": " ".join(failed) or "-",
                    "decision without the real trigger": (
                        "pass" if not [f for f in failed if f != "HK-ASR-002"] else "fail"
                    ),
                    "scan flagged": rep.input_scan["flagged_labels"] if rep.input_scan else None,
                    "scan index / lowest mask ratio": _nc(res.scan),
                    "repaired": rep.repaired,
                    "rescan": (
                        f"{rep.rescan['verdict']} {rep.rescan['flagged_labels']}"
                        if rep.rescan
                        else "-"
                    ),
                    "rescan index / lowest mask ratio": _nc(res.rescan),
                    "BA % in -> out": f"{100 * (rep.input_ba or 0):.1f} -> "
                    f"{100 * (rep.output_ba or 0):.1f}",
                    "real-trigger ASR % in -> out": _pair(known),
                    "gate seconds": round(secs, 1),
                    "train seconds": round(train_s, 1),
                }
            )
            print(rows[-1], flush=True)
    cmd = "python -m benchmarks.gate_synthetic" + "".join(f" --only {n}" for n in (args.only or []))
    write_results("gate_synthetic", rows, list(rows[0]), {"command": cmd})
    return 0


if __name__ == "__main__":
    sys.exit(main())

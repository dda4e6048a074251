"""Example 10: the pre-deployment gate on a backdoored model — refused, then repaired and shipped.

What it shows:
    * ``hk.Gate`` with a no-repair policy: the scan flags the backdoor, so the model may not
      ship (rules ``HK-SCAN-001`` and ``HK-ASR-001`` fail; exit code 1);
    * the default policy: the gate repairs the model (``auto``), re-scans the repaired copy,
      measures BA and every recovered trigger's ASR on held-out images, exports it to ONNX and
      verifies it on ONNX Runtime, and decides. The repair removes the planted backdoor and
      the repaired copy ships when its re-scan flags no label (docs/gate.md, "What we
      measured");
    * ``GateResult.save``: ``gate.json`` (docs/schemas/gate-report.schema.json), ``junit.xml``,
      ``gate.sarif``, ``summary.md``, ``report.html``, the shipped ``model.safetensors`` and
      ``model.onnx``.

The model is a BadNets-backdoored ``small-cnn`` (target 0) on 10-class synthetic data; the
default (``--quick``) scans use 200 inversion images, 10 Neural Cleanse epochs and 15 warp
inversion epochs (about 80 s on one CPU thread: the input scan flags label 0 alone, the repaired
copy's re-scan flags none, and it ships); ``--no-quick`` uses the gate's ``standard`` scan
budget (300 images, 30 epochs). The gate
never sees the real trigger: it is passed as a *known* (red-team) trigger only to show its ASR
before and after.

    python examples/10_gate.py
    python examples/10_gate.py --out runs/10

Exit status: 0 when the no-repair gate failed and the repair removed the planted backdoor
(real-trigger ASR at most 10 % on the shipped model), 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import hardenkit as hk
from hardenkit.gate import Gate

SCAN = {
    "max_images": 200,
    "detector_options": {"neural-cleanse": {"epochs": 10}, "warp": {"epochs": 15}},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="where to write the gate outputs")
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="small scans (default); --no-quick for the standard scan budget",
    )
    args = p.parse_args(argv)
    scan: dict[str, object] = SCAN if args.quick else {}
    budget = "quick" if args.quick else "standard"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    data = hk.make_synthetic_dataset(num_classes=10, train_per_class=300, test_per_class=50)
    bd = hk.make_backdoored_model(
        "badnets",
        data.train,
        test=data.test,
        arch="small-cnn",
        train_config=hk.TrainConfig(epochs=8, batch_size=128, lr=0.05, augment=False),
        runtime={"seed": 0, "device": "cpu"},
    )
    clean = data.train.subset(
        hk.data.stratified_indices(
            data.train.labels, per_class=100, exclude=bd.poisoned.poison_indices
        )
    )
    known = {"red-team": (bd.trigger, bd.target)}
    rt = {"device": "cpu", "seed": 0}

    # 1. a policy that forbids repair: the backdoored model may not ship
    strict = Gate(
        {"repair": "never", "scan": scan, "scan_budget": budget, "export_onnx": False},
        runtime=rt,
    )
    refused = strict.run(bd.model, clean.loader(), data.test.loader(), known_triggers=known)
    print(refused.report.summary())
    # 2. the default policy (repair when flagged), re-using the first scan
    gate = Gate({"scan": scan, "scan_budget": budget}, runtime=rt)
    result = gate.run(
        bd.model, clean.loader(), data.test.loader(), known_triggers=known, scan=refused.scan
    )
    print(result.report.summary())
    for m in result.report.triggers:
        print(f"  ASR of the {m.source} trigger (label {m.label}): {m.input_asr} -> {m.output_asr}")
    out = args.out or Path(tempfile.mkdtemp(prefix="hardenkit-gate-"))
    path = result.save(out)
    print(f"wrote {path} and {sorted(p.name for p in out.iterdir())}")
    print(f"total {time.perf_counter() - t0:.0f}s")
    real = next(m for m in result.report.triggers if m.source == "known:red-team")
    removed = real.output_asr is not None and real.output_asr <= 0.1
    print(f"gate decision: {'ship' if result.passed else 'do not ship'} (exit {result.exit_code})")
    ok = (not refused.passed) and refused.exit_code == 1 and result.report.repaired and removed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

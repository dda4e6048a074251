"""Export + verify the CPU fixture model and compare ORT-CPU with PyTorch-CPU throughput.

    python -m benchmarks.export_cpu [--fixture badnets-0.1]

Uses the cached `cifar10-cpu` fixture (build it with ``python -m benchmarks.cifar_fixtures``),
exports it with ``hardenkit.to_onnx``, verifies it on ONNX Runtime's CPU provider over the full
CIFAR-10 test set with the fixture's trigger, and records the seconds of each step, the parity
checks and the images/s of both backends measured on the same batches in one run.
Writes ``benchmarks/results/export_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import hardenkit as hk

from .cifar_fixtures import FIXTURES, load_fixture
from .common import load_cifar10, write_results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fixture", default="badnets-0.1", choices=sorted(FIXTURES))
    p.add_argument("--batch-size", type=int, default=500)
    args = p.parse_args(argv)
    model, trigger, _, info = load_fixture(args.fixture)
    test = load_cifar10()["test"]
    target = int(info["config"]["attack_config"]["target"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        exp = hk.to_onnx(model, Path(tmp) / "model.onnx", input_shape=(3, 32, 32))
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ver = hk.verify_onnx(
            exp,
            model,
            test.loader(batch_size=args.batch_size),
            trigger=trigger,
            target=target,
            providers=["CPUExecutionProvider"],
        )
        verify_s = time.perf_counter() - t0
    tm, om = ver.torch_metrics, ver.onnx_metrics
    tp = ver.throughput.model_dump()
    row = {
        "fixture": args.fixture,
        "export s": export_s,
        "verify s": verify_s,
        "parity passed": ver.passed,
        "max abs diff": max(c.max_abs_diff for c in ver.comparisons),
        "BA torch %": 100 * (tm.benign_accuracy.value or 0),
        "BA onnx %": 100 * (om.benign_accuracy.value or 0),
        "ASR torch %": 100 * ((tm.attack_success_rate.value or 0) if tm.attack_success_rate else 0),
        "ASR onnx %": 100 * ((om.attack_success_rate.value or 0) if om.attack_success_rate else 0),
        **{k: v for k, v in tp.items() if isinstance(v, (int, float))},
    }
    cols = list(row)
    out = write_results(
        "export_cpu",
        [row],
        cols,
        {"command": "python -m benchmarks.export_cpu", "providers": ver.providers_active},
    )
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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
from typing import Any

import hardenkit as hk

from .cifar_fixtures import FIXTURES, load_fixture
from .common import load_cifar10, write_results


def _pct(rate: Any) -> float:
    """A rate estimate in percent (0 when it was not measured)."""
    return 0.0 if rate is None else 100 * float(rate.value or 0)


def export_and_verify(
    model: Any,
    test: hk.ImageDataset,
    trigger: Any,
    target: int,
    directory: Path,
    *,
    providers: list[str],
    batch_size: int = 500,
) -> tuple[dict[str, Any], hk.VerificationReport]:
    """Export ``model`` to ``directory/model.onnx`` and verify it on ``providers`` over ``test``.

    Returns the row (seconds of each step, parity, max |Δ logits|, BA/ASR of both backends,
    throughput) and the :class:`~hardenkit.VerificationReport`. ``verify_onnx`` raises
    ``ExecutionProviderError`` when ONNX Runtime does not run on ``providers[0]``.
    """
    shape = tuple(int(d) for d in test.image_shape)
    t0 = time.perf_counter()
    exp = hk.to_onnx(model, directory / "model.onnx", input_shape=shape)
    export_s = time.perf_counter() - t0
    row, ver = verify_row(
        exp, model, test, trigger, target, providers=providers, batch_size=batch_size
    )
    return {"export s": export_s, **row}, ver


def verify_row(
    exported: hk.ExportReport,
    model: Any,
    test: hk.ImageDataset,
    trigger: Any,
    target: int,
    *,
    providers: list[str],
    batch_size: int = 500,
) -> tuple[dict[str, Any], hk.VerificationReport]:
    """``verify_onnx`` over ``test`` on ``providers``: the row fields of :func:`export_and_verify`
    without ``export s``, and the report."""
    t0 = time.perf_counter()
    ver = hk.verify_onnx(
        exported,
        model,
        test.loader(batch_size=batch_size),
        trigger=trigger,
        target=target,
        providers=providers,
    )
    verify_s = time.perf_counter() - t0
    tm, om = ver.torch_metrics, ver.onnx_metrics
    tp = ver.throughput.model_dump()
    row = {
        "verify s": verify_s,
        "parity passed": ver.passed,
        "max abs diff": max(c.max_abs_diff for c in ver.comparisons),
        "BA torch %": _pct(tm.benign_accuracy),
        "BA onnx %": _pct(om.benign_accuracy),
        "ASR torch %": _pct(tm.attack_success_rate),
        "ASR onnx %": _pct(om.attack_success_rate),
        **{k: v for k, v in tp.items() if isinstance(v, (int, float))},
    }
    return row, ver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fixture", default="badnets-0.1", choices=sorted(FIXTURES))
    p.add_argument("--batch-size", type=int, default=500)
    args = p.parse_args(argv)
    model, trigger, _, info = load_fixture(args.fixture)
    test = load_cifar10()["test"]
    target = int(info["config"]["attack_config"]["target"])
    with tempfile.TemporaryDirectory() as tmp:
        cells, ver = export_and_verify(
            model,
            test,
            trigger,
            target,
            Path(tmp),
            providers=["CPUExecutionProvider"],
            batch_size=args.batch_size,
        )
    row = {"fixture": args.fixture, **cells}
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

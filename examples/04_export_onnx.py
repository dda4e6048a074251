"""Example 04: export a model to ONNX and verify it on ONNX Runtime before shipping it.

What it shows:
    * ``hk.export.to_onnx``: the torch.export-based exporter, a dynamic ``batch`` axis,
      normalization inside the graph (the ONNX model takes float32 pixels in [0, 1]),
      provenance in the file's metadata, and every written file with its sha256;
    * ``hk.export.verify_onnx``: the files are copied to a fresh directory (a missing
      ``.data`` sidecar would fail here, not in production), the session must run on the
      requested provider (CPU here, asked for explicitly), logits are compared with PyTorch
      at the loader's batch size and at batch 1 and 7, and BA/ASR are measured again on
      ONNX Runtime with the Validator;
    * what happens when CUDA is requested on a machine where it cannot run: an
      ``ExecutionProviderError`` instead of a silent fallback to the CPU.

The default (``--quick``) run trains a BadNets-backdoored ``small-cnn`` for 2 epochs on a
small synthetic set with one CPU thread and takes well under a minute. The printed timings
(export and verification seconds, ONNX Runtime vs PyTorch images/s on the same batches) are
measurements of this machine, not benchmarks.

    python examples/04_export_onnx.py
    python examples/04_export_onnx.py --arch cifar-cnn --out runs/04
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
from hardenkit.errors import ExecutionProviderError
from hardenkit.export import to_onnx, verify_onnx


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="small data (default); --no-quick for 10 classes x 500 images and 8 epochs",
    )
    p.add_argument("--arch", default="small-cnn", help="zoo architecture (default small-cnn)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: a temp dir)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _value(rate: hk.validate.RateEstimate | None) -> float | None:
    return None if rate is None else rate.value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    if args.quick:
        data = hk.make_synthetic_dataset(
            num_classes=4, train_per_class=100, test_per_class=50, seed=args.seed
        )
        epochs = 2
    else:
        data = hk.make_synthetic_dataset(
            num_classes=10, train_per_class=500, test_per_class=100, seed=args.seed
        )
        epochs = 8

    # 1. A (backdoored) model to ship: the trigger lets us check that ASR is the same on ORT.
    t0 = time.perf_counter()
    bd = hk.make_backdoored_model(
        "badnets",
        data.train,
        arch=args.arch,
        attack_config={"target": 0, "poison_rate": 0.1},
        train_config=hk.TrainConfig(epochs=epochs, batch_size=64, lr=0.05, augment=False),
        runtime=hk.RuntimeConfig(device="cpu", seed=args.seed, progress="off"),
    )
    print(f"trained {args.arch} for {epochs} epochs in {time.perf_counter() - t0:.1f}s")

    # 2. Export. The caller's model is not touched; a deep copy is exported on CPU in fp32.
    out = args.out or Path(tempfile.mkdtemp(prefix="hardenkit-example-04-"))
    exp = to_onnx(bd.model, out / "model.onnx", input_shape=(3, 32, 32), report_id="example-04")
    print(exp.summary())
    for f in exp.files:
        print(f"  ship {f.name}: {f.size_bytes} bytes, sha256 {f.sha256[:16]}...")

    # 3. Verify on an explicitly requested provider, with the trigger.
    test_loader = data.test.loader(batch_size=100)
    ver = verify_onnx(
        exp,
        bd.model,
        test_loader,
        trigger=bd.trigger,
        target=bd.target,
        providers=["CPUExecutionProvider"],
    )
    print(ver.summary())

    # 4. Requesting CUDA where it cannot run is an error, never a silent CPU fallback.
    if not torch.cuda.is_available():
        try:
            verify_onnx(exp, bd.model, test_loader, providers=["CUDAExecutionProvider"])
        except ExecutionProviderError as exc:
            print(f"CUDA requested on a CPU-only machine -> {type(exc).__name__}: {exc.message}")

    exp.save(out / "export.json")
    ver.save(out / "verification.json")
    tp = ver.throughput
    summary = {
        "arch": args.arch,
        "passed": ver.passed,
        "export_seconds": round(exp.seconds, 2),
        "verify_seconds": round(ver.seconds, 2),
        "ort_cpu_images_per_s": round(tp.ort_images_per_s or 0.0),
        "torch_cpu_images_per_s": round(tp.torch_images_per_s or 0.0),
        "threads": args.threads,
        "ba_torch": ver.torch_metrics.benign_accuracy.value,
        "ba_onnx": ver.onnx_metrics.benign_accuracy.value,
        "asr_torch": _value(ver.torch_metrics.attack_success_rate),
        "asr_onnx": _value(ver.onnx_metrics.attack_success_rate),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(f"wrote {out / 'model.onnx'}, {out / 'export.json'} and {out / 'verification.json'}")
    print(json.dumps(summary))
    return 0 if ver.passed else 1


if __name__ == "__main__":
    sys.exit(main())

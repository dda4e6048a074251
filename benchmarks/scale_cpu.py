"""Scale on one CPU machine: data-parallel purification (1 vs 2 processes) and clean-set memory.

    python -m benchmarks.scale_cpu                    # the full protocol
    python -m benchmarks.scale_cpu --images 512 --epochs 1 --out scale_cpu_smoke   # smoke

Two measurements on the same fixed purification — ``finetune`` (``epochs``, batch 256, no
augmentation) of the zoo's ``cifar-cnn`` (width 16, with BatchNorm) on ``--images`` clean
32×32 images generated batch by batch by a seeded loader (so the loader itself holds no data
set in memory; the pixels are exact multiples of 1/255, like decoded JPEG/PNG images):

1. **Data parallel.** The purification in one process with one torch thread per core, in one
   process with one thread, and under ``torchrun --standalone --nproc-per-node 2`` (one
   thread per rank, gloo). Reported: the wall time of the whole run (``report.seconds``,
   which includes reading the loader and the held-out BA measurement, replicated on every
   rank) and of the fine-tuning alone (``details["train_seconds"]``, the sharded part); the
   fine-tuning speed-up against the one-process run on all cores (the same hardware) and
   against the single thread, the parallel efficiency (single-thread time / (time × threads
   in use)) and the whole run's speed-up against the single thread; and the largest weight
   difference from the all-cores run. This model has BatchNorm, so each rank normalises its
   own shard and the difference is not 0 (models without BatchNorm agree to ~1e-8, see
   tests/unit/test_distributed.py); a different thread count alone also changes the float
   summation order, hence small differences.
2. **Clean-set memory.** The same purification in one process with the clean images held as
   float32 in memory (the behaviour before image stores, forced here), as uint8 in memory
   (the default for such pixels), and as uint8 on disk (``clean_storage="disk"``), with
   ``MALLOC_MMAP_THRESHOLD_=131072`` (see ``MALLOC_ENV``). Reported: the process's peak
   resident memory (``report.peak_memory_mb``) and the bytes of the store.

Every configuration runs in a fresh process (peak memory is per process). Writes
``benchmarks/results/<out>.{json,md}`` (default ``scale_cpu``). Honest numbers: on two shared
cores the two processes compete with each other and with whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .common import write_results

ROOT = Path(__file__).resolve().parents[1]
ARCH = "cifar-cnn"
ARCH_KW: dict[str, Any] = {"width": 16}
NUM_CLASSES = 10
BATCH = 256


class SeededLoader:
    """``images`` 3×32×32 images in batches, generated on the fly (no data set in memory).

    Class ``c``'s images are a per-class colour gradient plus seeded noise, quantised to
    multiples of 1/255.
    """

    def __init__(self, images: int, seed: int = 0, batch: int = 500) -> None:
        self.images, self.seed, self.batch = images, seed, batch

    def __len__(self) -> int:
        return -(-self.images // self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ramp = torch.linspace(0, 1, 32)
        for b, start in enumerate(range(0, self.images, self.batch)):
            n = min(self.batch, self.images - start)
            g = torch.Generator().manual_seed(self.seed * 100_003 + b)
            y = torch.arange(start, start + n) % NUM_CLASSES
            tint = torch.stack([(y * k % 7).float() / 7 for k in (1, 3, 5)], 1)[:, :, None, None]
            base = 0.5 * tint + 0.3 * ramp[None, None, :, None] * ramp[None, None, None, :]
            noise = 0.2 * torch.rand(n, 3, 32, 32, generator=g)
            x = torch.round((base + noise).clamp(0, 1) * 255).to(torch.uint8)
            yield x.float() / 255, y


def worker(args: argparse.Namespace) -> int:
    """One purification (under torchrun: this rank's part); rank 0 writes ``--result``."""
    import hardenkit as hk
    from hardenkit.data import store

    if args.storage == "float":  # the pre-store behaviour: every pixel as float32
        store.quantize = lambda x: None  # type: ignore[assignment]
    torch.manual_seed(0)
    model = hk.build_model(ARCH, NUM_CLASSES, **ARCH_KW)
    runtime = {
        "device": "cpu",
        "seed": 0,
        "progress": "off",
        "clean_storage": "disk" if args.storage == "disk" else "memory",
    }
    config = {"epochs": args.epochs, "batch_size": BATCH, "augment": False, "selection": "final"}
    t0 = time.perf_counter()
    res = hk.Purifier(model, "finetune", config=config, runtime=runtime).run(
        SeededLoader(args.images)
    )
    wall = time.perf_counter() - t0
    if res.rank != 0:
        return 0
    rep = res.report
    result = {
        "seconds": rep.seconds,
        "wall": wall,
        "train_seconds": rep.details.get("train_seconds"),
        "peak_rss_mb": rep.peak_memory_mb.get("process_rss"),
        "store": rep.clean_storage,
        "distributed": rep.distributed.model_dump(),
        "ba_after": rep.ba_after,
        "steps": rep.steps,
        "status": rep.status,
        "threads": torch.get_num_threads(),
    }
    weights = Path(args.result).with_suffix(".pt")
    torch.save({k: v.detach().clone() for k, v in res.model.state_dict().items()}, weights)
    result["weights"] = str(weights)
    Path(args.result).write_text(json.dumps(result))
    return 0


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc otherwise raises its mmap threshold after the first large free and serves the
per-batch buffers from the heap, where interleaved small long-lived allocations keep the freed
memory from being returned (measured: +200 MiB of peak RSS over 20,000 images that
``malloc_trim`` gives back); with a fixed threshold every buffer above 128 KiB is returned at
once, so the peak RSS of the memory part measures the data held, not the allocator."""


def _launch(
    procs: int,
    threads: int,
    storage: str,
    images: int,
    epochs: int,
    tmp: Path,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    tag = "-malloc" if extra_env else ""
    result = tmp / f"p{procs}-t{threads}-{storage}{tag}.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "TQDM_DISABLE": "1",
        "HARDENKIT_DISABLE_PLUGINS": "1",
        **(extra_env or {}),
    }
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    body = [
        "-m",
        "benchmarks.scale_cpu",
        "--worker",
        "--images",
        str(images),
        "--epochs",
        str(epochs),
        "--storage",
        storage,
        "--result",
        str(result),
    ]
    if procs == 1:
        cmd = [sys.executable, *body]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(procs),
            *body,
        ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(result.read_text())
    out["process_seconds"] = elapsed
    return out


def _max_diff(a: str, b: str) -> float:
    wa = torch.load(a, weights_only=True)
    wb = torch.load(b, weights_only=True)
    return max(
        float((wa[k] - wb[k]).abs().max())
        for k in wa
        if wa[k].is_floating_point() and wa[k].numel()
    )


def _diff_columns(base: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    d = _max_diff(base["weights"], r["weights"])
    return {"max_abs_weight_diff": d, "max |Δw| vs 1 process": f"{d:.1e}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=20_000, help="clean images (default 20,000)")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    p.add_argument("--out", default="scale_cpu", help="result file stem")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--storage", default="memory", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    cores = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hk-scale-") as d:
        tmp = Path(d)
        runs = {
            "1 process, all cores": _launch(1, cores, "memory", args.images, args.epochs, tmp),
            "1 process, 1 thread": _launch(1, 1, "memory", args.images, args.epochs, tmp),
            "2 processes (torchrun, gloo), 1 thread each": _launch(
                2, 1, "memory", args.images, args.epochs, tmp
            ),
        }
        base = runs["1 process, all cores"]
        serial = runs["1 process, 1 thread"]
        for name, r in runs.items():
            procs = int(r["distributed"]["world_size"])
            cores_used = procs * int(r["threads"])
            rows.append(
                {
                    "part": "data parallel",
                    "configuration": name,
                    "processes": procs,
                    "threads per process": r["threads"],
                    "seconds (run)": r["seconds"],
                    "seconds (fine-tuning)": r["train_seconds"],
                    "speed-up vs 1 process all cores": base["train_seconds"] / r["train_seconds"],
                    "speed-up vs 1 thread": serial["train_seconds"] / r["train_seconds"],
                    "efficiency": serial["train_seconds"] / r["train_seconds"] / cores_used,
                    "speed-up (run) vs 1 thread": serial["seconds"] / r["seconds"],
                    **_diff_columns(base, r),
                    "peak RSS MiB (max over ranks)": r["peak_rss_mb"],
                    "BA after": r["ba_after"],
                    "steps": r["steps"],
                }
            )
        for storage, label in (
            ("float", "float32 in memory (before image stores; forced)"),
            ("memory", "uint8 in memory (default for exact pixels)"),
            ("disk", 'uint8 on disk (clean_storage="disk")'),
        ):
            r = _launch(1, cores, storage, args.images, args.epochs, tmp, MALLOC_ENV)
            rows.append(
                {
                    "part": "clean-set memory",
                    "configuration": label,
                    "processes": 1,
                    "threads per process": r["threads"],
                    "seconds (run)": r["seconds"],
                    "seconds (fine-tuning)": r["train_seconds"],
                    "store MiB": r["store"]["bytes"] / 2**20,
                    "peak RSS MiB (max over ranks)": r["peak_rss_mb"],
                    **_diff_columns(base, r),
                    "BA after": r["ba_after"],
                    "steps": r["steps"],
                }
            )
    columns = [
        "part",
        "configuration",
        "processes",
        "threads per process",
        "seconds (run)",
        "seconds (fine-tuning)",
        "speed-up vs 1 process all cores",
        "speed-up vs 1 thread",
        "efficiency",
        "speed-up (run) vs 1 thread",
        "store MiB",
        "peak RSS MiB (max over ranks)",
        "max |Δw| vs 1 process",
        "BA after",
    ]
    command = "python -m benchmarks.scale_cpu" + (
        f" --images {args.images} --epochs {args.epochs}"
        if (args.images, args.epochs) != (20_000, 2)
        else ""
    )
    if args.out != "scale_cpu":
        command += f" --out {args.out}"
    path = write_results(
        args.out,
        rows,
        columns,
        {
            "command": command,
            "images": args.images,
            "epochs": args.epochs,
            "arch": ARCH,
            "arch_kwargs": ARCH_KW,
            "batch_size": BATCH,
            "cpu_count": cores,
            "date": time.strftime("%Y-%m-%d"),
        },
    )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

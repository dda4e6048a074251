"""Scanning under torchrun on one CPU machine: 1 process vs 2 (labels split over the ranks).

    python -m benchmarks.scale_scan_cpu                   # the default protocol
    python -m benchmarks.scale_scan_cpu --epochs 2 --out scale_scan_cpu_smoke   # smoke

One fixed scan — Neural Cleanse and the warp inversion (the scan presets' detectors) with a
fixed number of epochs and early stopping off, so every label costs the same and the
measurement is the split, not the schedule — of the zoo's ``cifar-cnn`` (width 16, random
weights, seed 0) over 10 candidate labels, on ``--images`` clean 32×32 images from the
seeded loader of :mod:`benchmarks.scale_cpu`. Run in one process with one torch thread per
core, in one process with one thread, and under ``torchrun --standalone --nproc-per-node 2``
(one thread per rank, gloo; rank 0 inverts labels 0, 2, 4, 6, 8 and rank 1 the others).
Reported: the scan's wall time (``report.timings["total_seconds"]``, which includes loading
the images and the held-out ASR of the recovered triggers, replicated on every rank), each
detector's time (the slowest rank's under torchrun) and its ranks' times, the speed-up
against the single thread, the parallel efficiency, and the largest difference of the
per-label values from the one-process single-thread scan (0 when the split is exact).

Every configuration runs in a fresh process. Writes ``benchmarks/results/<out>.{json,md}``
(default ``scale_scan_cpu``). Honest numbers: on two shared cores the two processes compete
with each other and with whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .common import write_results
from .scale_cpu import ARCH, ARCH_KW, NUM_CLASSES, SeededLoader

ROOT = Path(__file__).resolve().parents[1]
DETECTORS = ("neural-cleanse", "warp")


def _config(images: int, epochs: int) -> dict[str, Any]:
    return {
        "detectors": list(DETECTORS),
        "max_images": images,
        "max_holdout_images": 200,
        "detector_options": {
            "neural-cleanse": {"epochs": epochs, "batch_size": 32, "early_stop": False},
            "warp": {"epochs": epochs, "give_up_epochs": None, "early_stop_patience": 10_000},
        },
    }


def worker(args: argparse.Namespace) -> int:
    """One scan (under torchrun: this rank's labels); rank 0 writes ``--result``."""
    import hardenkit as hk

    torch.manual_seed(0)
    model = hk.build_model(ARCH, NUM_CLASSES, **ARCH_KW)
    runtime = {"device": "cpu", "seed": 0, "progress": "off"}
    t0 = time.perf_counter()
    res = hk.Scanner(
        model, NUM_CLASSES, config=_config(args.images, args.epochs), runtime=runtime
    ).run(SeededLoader(args.images + args.images // 4))
    wall = time.perf_counter() - t0
    if res.rank != 0:
        return 0
    rep = res.report
    result = {
        "seconds": rep.timings["total_seconds"],
        "wall": wall,
        "detectors": {
            d.detector: {
                "seconds": d.seconds,
                "rank_seconds": d.info.get("rank_seconds"),
                "values": [c.value for c in d.classes],
                "flagged": d.flagged_labels,
                "anomaly_index": d.anomaly_index,
            }
            for d in rep.detectors
        },
        "distributed": rep.distributed.model_dump(),
        "verdict": rep.verdict,
        "inversion_images": rep.clean_images["inversion"],
        "threads": torch.get_num_threads(),
    }
    Path(args.result).write_text(json.dumps(result))
    return 0


def _launch(procs: int, threads: int, images: int, epochs: int, tmp: Path) -> dict[str, Any]:
    result = tmp / f"p{procs}-t{threads}.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "TQDM_DISABLE": "1",
        "HARDENKIT_DISABLE_PLUGINS": "1",
    }
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    body = ["-m", "benchmarks.scale_scan_cpu", "--worker", "--images", str(images)]
    body += ["--epochs", str(epochs), "--result", str(result)]
    if procs == 1:
        cmd = [sys.executable, *body]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc-per-node", str(procs), *body]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(result.read_text())
    out["process_seconds"] = elapsed
    return out


def _max_value_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(
        abs(x - y)
        for det in DETECTORS
        for x, y in zip(a["detectors"][det]["values"], b["detectors"][det]["values"], strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=200, help="inversion images (default 200)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per detector (default 5)")
    p.add_argument("--out", default="scale_scan_cpu", help="result file stem")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="hk-scale-scan-") as d:
        tmp = Path(d)
        runs = {
            "1 process, all cores": _launch(1, cores, args.images, args.epochs, tmp),
            "1 process, 1 thread": _launch(1, 1, args.images, args.epochs, tmp),
            "2 processes (torchrun, gloo), 1 thread each": _launch(
                2, 1, args.images, args.epochs, tmp
            ),
        }
    serial = runs["1 process, 1 thread"]
    rows: list[dict[str, Any]] = []
    for name, r in runs.items():
        procs = int(r["distributed"]["world_size"])
        cores_used = procs * int(r["threads"])
        row: dict[str, Any] = {
            "configuration": name,
            "processes": procs,
            "threads per process": r["threads"],
            "scan seconds": r["seconds"],
            "speed-up vs 1 thread": serial["seconds"] / r["seconds"],
            "efficiency": serial["seconds"] / r["seconds"] / cores_used,
            "max |Δ value| vs 1 thread": f"{_max_value_diff(serial, r):.1e}",
            "verdict": r["verdict"],
        }
        for det in DETECTORS:
            info = r["detectors"][det]
            row[f"{det} s"] = info["seconds"]
            ranks = info["rank_seconds"]
            row[f"{det} s per rank"] = (
                "" if ranks is None else " / ".join(f"{s:.1f}" for s in ranks)
            )
        rows.append(row)
    columns = [
        "configuration",
        "processes",
        "threads per process",
        "scan seconds",
        *(c for det in DETECTORS for c in (f"{det} s", f"{det} s per rank")),
        "speed-up vs 1 thread",
        "efficiency",
        "max |Δ value| vs 1 thread",
        "verdict",
    ]
    command = "python -m benchmarks.scale_scan_cpu" + (
        f" --images {args.images} --epochs {args.epochs}"
        if (args.images, args.epochs) != (200, 5)
        else ""
    )
    if args.out != "scale_scan_cpu":
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
            "detectors": list(DETECTORS),
            "labels": NUM_CLASSES,
            "cpu_count": cores,
            "date": time.strftime("%Y-%m-%d"),
        },
    )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

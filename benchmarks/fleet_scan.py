"""Fleet scanning throughput: models per minute on the process pool (1, 2 workers) and on Ray.

    python -m benchmarks.fleet_scan                    # 8 models: a few minutes on 2 cores
    python -m benchmarks.fleet_scan --models 2 --name fleet_scan_smoke   # a smoke run
    python -m benchmarks.fleet_scan --no-ray           # without the Ray rows

Writes ``--models`` tiny models (``small-cnn`` width 8, 10 classes, seeded random weights:
this measures the fleet machinery, not the detector) and a manifest over synthetic
3x32x32 data, then runs ``hardenkit.fleet.scan_fleet`` on the same fleet, each time into a
fresh output folder:

* ``process`` with 1 worker (2 torch threads on a 2-core machine) and with 2 workers
  (1 thread each): the default ``max(1, CPUs // workers)`` threads;
* ``process resume``: the 2-worker output again, every model skipped (the cost of validating
  the manifest and hashing the weights);
* ``ray`` on a local cluster (``ray.init(num_cpus=2)``; its start-up is timed separately and
  is not in the fleet's wall time), unless ``--no-ray`` or ``ray`` is not installed.

Each model's scan is Neural Cleanse on 64 inversion images, ``--epochs`` epochs per label
(default 3), batch 32: seconds per model, so start-up and scheduling costs show.
Throughput = models scanned / wall time of ``scan_fleet`` (planning and worker start-up
included) in minutes. Writes ``benchmarks/results/<name>.{json,md}``. The numbers depend on
the machine and on what else it runs: the load average is recorded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import hardenkit as hk
from hardenkit.fleet import scan_fleet
from hardenkit.fleet.runner import cpu_count
from hardenkit.io import model_metadata, save_state_dict

from .common import write_results

COLUMNS = ["backend", "workers", "threads", "models", "ok", "skipped", "failed",
           "startup_s", "wall_s", "models_per_min", "mean_model_s"]  # fmt: skip
DATA = "synthetic:num_classes=10,train_per_class=15,test_per_class=2"


def _fleet(root: Path, n: int, epochs: int) -> Path:
    torch.manual_seed(0)
    entries = []
    for i in range(n):
        path = root / "models" / f"model-{i:03d}.safetensors"
        model = hk.build_model("small-cnn", 10, width=8)
        save_state_dict(model, path, metadata=model_metadata("small-cnn", 10, {"width": 8}))
        entries.append({"id": f"model-{i:03d}", "weights": str(path.relative_to(root))})
    manifest = {
        "defaults": {
            "data": DATA,
            "budget": "quick",
            "device": "cpu",
            "scan": {
                "detectors": ["neural-cleanse"],  # pinned: not whatever the preset adds
                "max_images": 64,  # of the 120 left after the 20 % hold-out
                "max_holdout_images": 20,
                "detector_options": {"neural-cleanse": {"epochs": epochs, "batch_size": 32}},
            },
        },
        "models": entries,
    }
    path = root / "fleet.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def _row(backend: str, result: Any, startup: float | None = None) -> dict[str, Any]:
    rep = result.report
    secs = [m.seconds for m in rep.models if m.status == "ok" and m.seconds is not None]
    return {
        "backend": backend,
        "workers": rep.workers,
        "threads": rep.threads_per_worker,
        "models": rep.counts["models"],
        "ok": rep.counts["ok"],
        "skipped": rep.counts["skipped"],
        "failed": rep.counts["failed"],
        "startup_s": startup,
        "wall_s": rep.wall_seconds,
        "models_per_min": rep.models_per_minute,
        "mean_model_s": sum(secs) / len(secs) if secs else None,
    }


def _say(row: dict[str, Any]) -> None:
    rate = row["models_per_min"]
    print(
        f"{row['backend']:<15} workers {row['workers']} x {row['threads']} threads: "
        f"{row['ok']} scanned, {row['skipped']} skipped, {row['failed']} failed in "
        f"{row['wall_s']:.1f}s" + ("" if rate is None else f" = {rate:.2f} models/min"),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=8, help="models in the fleet")
    ap.add_argument("--epochs", type=int, default=3, help="Neural Cleanse epochs per label")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    ap.add_argument("--name", default="fleet_scan", help="results file name")
    args = ap.parse_args(argv)
    if args.models < 1 or args.epochs < 1:
        ap.error("--models and --epochs must be >= 1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    root = Path(tempfile.mkdtemp(prefix="hk-fleet-bench-"))
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    try:
        manifest = _fleet(root, args.models, args.epochs)
        for workers in (1, 2):
            out = root / f"out-process-{workers}"
            res = scan_fleet(manifest, out, workers=workers, progress="off")
            rows.append(_row("process", res))
            _say(rows[-1])
        res = scan_fleet(manifest, root / "out-process-2", workers=2, progress="off")
        rows.append(_row("process resume", res))
        _say(rows[-1])
        if not args.no_ray:
            try:
                import ray
            except ImportError:
                print('ray is not installed (pip install "hardenkit[ray]"): no Ray rows')
            else:
                t0 = time.perf_counter()
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                startup = time.perf_counter() - t0
                try:
                    res = scan_fleet(manifest, root / "out-ray", backend="ray", progress="off")
                    rows.append(_row("ray", res, startup))
                    _say(rows[-1])
                finally:
                    ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta = {
        "command": "python -m benchmarks.fleet_scan " + " ".join(argv or sys.argv[1:]),
        "models": args.models,
        "arch": "small-cnn (width 8, 10 classes, 3x32x32)",
        "data": DATA,
        "scan": f"neural-cleanse, 64 inversion images, {args.epochs} epochs per label, batch 32",
        "cpus": cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "total_seconds": time.perf_counter() - t_all,
    }
    path = write_results(args.name, rows, COLUMNS, meta)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``hardenkit demo`` over seeds and thread counts: how far from its gate does it land?

    python -m benchmarks.demo_margins                      # seeds 0 1 2, threads 1 and 2
    python -m benchmarks.demo_margins --seeds 0 --threads 2

Each cell runs the real command (``python -m hardenkit demo --seed S --out DIR``) in a fresh
process with ``OMP_NUM_THREADS=T`` (torch reads it at start-up), then reads the demo's
``report.json``: BA / ASR before and after the default repair on the 1,000 synthetic test
images with the real trigger, the purification status, the final gate and the exit code.
The demo's gate is ASR <= 10 %; ``margin`` = 10 % - ASR after (percentage points). Writes
``benchmarks/results/demo_margins.{json,md}``. A benchmark, not a test: timing varies.
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

from .common import write_results

GATE_ASR = 0.10


def run_cell(seed: int, threads: int, extra: list[str]) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"demo-s{seed}-t{threads}-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["TQDM_DISABLE"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "hardenkit", "demo", "--seed", str(seed), "--out", str(out), *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {"seed": seed, "threads": threads, "exit": proc.returncode}
    report_path = out / "report.json"
    if not report_path.is_file():
        row["error"] = proc.stderr.strip().splitlines()[-1:] or ["no report"]
        return row
    rep = json.loads(report_path.read_text())
    before = rep["validation"]
    after = rep.get("validation_after") or {}
    pur = rep.get("purification") or {}
    asr_after = (after.get("attack_success_rate") or {}).get("value")
    row.update(
        ba_before=100 * before["benign_accuracy"]["value"],
        asr_before=100 * before["attack_success_rate"]["value"],
        status=pur.get("status"),
        ba_after=None if not after else 100 * after["benign_accuracy"]["value"],
        asr_after=None if asr_after is None else 100 * asr_after,
        margin=None if asr_after is None else 100 * (GATE_ASR - asr_after),
        gate="PASSED" if (after.get("decision") or {}).get("passed") else "FAILED",
        seconds=seconds,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--name", default="demo_margins")
    args, extra = ap.parse_known_args(argv)
    rows = []
    for seed in args.seeds:
        for threads in args.threads:
            row = run_cell(seed, threads, extra)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    cols = [
        "seed",
        "threads",
        "ba_before",
        "asr_before",
        "status",
        "ba_after",
        "asr_after",
        "margin",
        "gate",
        "exit",
        "seconds",
    ]
    cmd = "python -m benchmarks.demo_margins " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(write_results(args.name, rows, cols, {"command": cmd.strip(), "gate_asr": GATE_ASR}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Wall time of the default ``hardenkit scan`` on CIFAR-10 zoo models, as a user runs it.

    python -m benchmarks.scan_cli_timing
    python -m benchmarks.scan_cli_timing --models small-cnn-badnets-0 --per-class 100

For each committed zoo model (``benchmarks/fixtures/scanner_zoo``), runs the CLI in a fresh
process with no option but the model and the data — ``hardenkit scan --weights W --arch A
--data DIR --split test --out OUT`` (so the default ``quick`` budget: Neural Cleanse + warp) —
and records the wall time of the whole command (start-up, image loading, the scan, writing),
the up-front estimate it printed, the verdict and the detectors' own seconds. The clean images
are the first ``--per-class`` JPEGs per class of the CIFAR-10 archive's test split, written to
a temporary ImageFolder. Torch threads are left at their default. Writes
``benchmarks/results/scan_cli_timing.{json,md}``; the machine's load average before and after
each run is recorded, because a shared machine slows every number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import DEFAULT_ARCHIVE, write_results
from .scanner_zoo import FIXTURES

ARCH_CLI = {
    "small-cnn": "small-cnn",
    "user-sequential": "benchmarks.scan_statistic:user_sequential",
    "tiny-resnet": "benchmarks.scan_statistic:TinyResNet",
}
ROOT = Path(__file__).resolve().parents[1]


def extract_clean(archive: Path, out: Path, per_class: int) -> int:
    """The first ``per_class`` test JPEGs of every class into ``out/test/<class>/``."""
    count: Counter[str] = Counter()
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or parts[-3] != "test":
                continue
            cls = parts[-2]
            if count[cls] >= per_class:
                if len(count) == 10 and min(count.values()) >= per_class:
                    break
                continue
            f = tar.extractfile(member)
            assert f is not None
            (out / "test" / cls).mkdir(parents=True, exist_ok=True)
            (out / "test" / cls / parts[-1]).write_bytes(f.read())
            count[cls] += 1
    return sum(count.values())


def time_scan(model_id: str, arch: str, data: Path, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "hardenkit", "scan",
        "--weights", str(FIXTURES / f"{model_id}.safetensors"),
        "--arch", ARCH_CLI[arch], "--num-classes", "10",
        "--data", str(data), "--split", "test", "--out", str(out / model_id),
    ]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    est = re.search(r"estimated at most ~([\d.]+)\s*(s|min)", text)
    estimate_s = None
    if est:
        estimate_s = float(est.group(1)) * (60 if est.group(2) == "min" else 1)
    seconds = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"  ([\w-]+): \w+, .*?([\d.]+)s\n", text)
    }
    verdict = re.search(r"verdict (\w+)", text)
    return {
        "model": model_id,
        "arch": arch,
        "exit_code": proc.returncode,
        "wall_s": wall,
        "estimate_s": estimate_s,
        "verdict": verdict.group(1) if verdict else None,
        "neural_cleanse_s": seconds.get("neural-cleanse"),
        "warp_s": seconds.get("warp"),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "under_2_min": wall <= 120,
        "tail": text[-600:] if proc.returncode not in (0, 1) else "",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--models",
        default="small-cnn-badnets-0,user-sequential-clean-0,tiny-resnet-clean-0",
        help="zoo model ids (comma-separated)",
    )
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    args = p.parse_args(argv)
    index = json.loads((FIXTURES / "index.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "clean"
        n = extract_clean(args.archive, data, args.per_class)
        for mid in [m for m in args.models.split(",") if m]:
            row = time_scan(mid, index[mid]["arch"], data, Path(tmp) / "out")
            print(
                f"{mid}: {row['wall_s']:.1f}s (estimate {row['estimate_s']}s) "
                f"verdict {row['verdict']} exit {row['exit_code']} "
                f"load {row['load_before']:.2f}->{row['load_after']:.2f}",
                flush=True,
            )
            rows.append(row)
    cmd = "python -m benchmarks.scan_cli_timing " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    cols = ["model", "arch", "wall_s", "estimate_s", "neural_cleanse_s", "warp_s", "verdict",
            "load_before", "load_after", "under_2_min"]  # fmt: skip
    path = write_results("scan_cli_timing", rows, cols, {"command": cmd.strip(), "images": n})
    with path.open("a") as f:
        f.write(
            f"\n`hardenkit scan` with default settings (`quick` budget) on {n} clean CIFAR-10 "
            "test images; wall time of the whole command (fresh process), torch threads at "
            "their default; `load_*`: the 1-minute load average before and after the run.\n"
        )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How long the ``hardenkit`` CLI takes to start: ``--help`` must not import torch.

    python -m benchmarks.cli_startup [--runs 5] [--name cli_startup]

Times, in fresh subprocesses, ``hardenkit --help``, ``hardenkit scan --help`` and
``python -c "import hardenkit.cli"`` (``--runs`` each, median, min and max wall-clock
seconds) and records whether ``import hardenkit.cli`` pulled in torch. Uses the
``hardenkit`` console script next to the running interpreter (``python -m hardenkit``
when there is none). Writes ``benchmarks/results/<name>.{json,md}``. Not a timed test:
the numbers depend on the machine and on a warm file cache (the first run is discarded).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .common import write_results


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("hardenkit")
    if script.exists():
        return [str(script)]
    found = shutil.which("hardenkit")
    return [found] if found else [sys.executable, "-m", "hardenkit"]


def _time(cmd: list[str], runs: int) -> list[float]:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--name", default="cli_startup", help="results file name")
    args = p.parse_args(argv)
    cli = _cli()
    cases = {
        "hardenkit --help": [*cli, "--help"],
        "hardenkit scan --help": [*cli, "scan", "--help"],
        "import hardenkit.cli": [sys.executable, "-c", "import hardenkit.cli"],
    }
    rows = []
    for label, cmd in cases.items():
        times = _time(cmd, args.runs)
        rows.append(
            {
                "command": label,
                "runs": args.runs,
                "median s": statistics.median(times),
                "min s": min(times),
                "max s": max(times),
            }
        )
    probe = subprocess.run(
        [sys.executable, "-c", "import hardenkit.cli, sys; sys.exit('torch' in sys.modules)"],
        capture_output=True,
    )
    meta = {
        "command": "python -m benchmarks.cli_startup",
        "cli": " ".join(cli),
        "torch_imported_by_cli": probe.returncode != 0,
    }
    path = write_results(args.name, rows, ["command", "runs", "median s", "min s", "max s"], meta)
    for r in rows:
        print(f"{r['command']:<24} median {r['median s']:.3f}s (min {r['min s']:.3f}s)")
    print(f"torch imported by `import hardenkit.cli`: {meta['torch_imported_by_cli']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

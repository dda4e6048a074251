"""The gate on held-out images whose class folders sort in another order than the model's classes.

    python -m benchmarks.class_order_probe

A user's ``ImageFolder`` assigns labels by sorting the class folder names; when the model was
trained with another order, every label is wrong. This probe trains the demo's backdoored
model (``hardenkit demo``), repairs it, writes the synthetic train/test images as PNG folders
named ``class_{9 - k}`` (so sorting reverses the classes), and runs ``hardenkit gate`` on the
repaired model twice: with the default policy, and with ``require_above_chance: false`` (the
behaviour before stop 43, when the rule did not exist). Writes
``benchmarks/results/class_order_probe.{json,md}``. A benchmark, not a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import hardenkit as hk

from .common import write_results


def _folders(root: Path) -> None:
    data = hk.make_synthetic_dataset(num_classes=10, seed=0)  # the demo's data
    for split, ds, step in (("train", data.train, 2), ("test", data.test, 1)):
        x, y = ds.tensors()
        for i in range(0, len(y), step):
            d = root / split / f"class_{9 - int(y[i])}"
            d.mkdir(parents=True, exist_ok=True)
            px = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(px).save(d / f"{i}.png")


def _hk(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "hardenkit", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="class-order-"))
    demo = _hk(["demo", "--out", str(work / "demo")])
    if demo.returncode != 0:
        print(demo.stderr[-2000:], file=sys.stderr)
        return 1
    _folders(work / "folders")
    (work / "off.yaml").write_text("require_above_chance: false\n")
    rows: list[dict[str, Any]] = []
    for name, extra in (
        ("default", []),
        ("require_above_chance: false", ["--policy", str(work / "off.yaml")]),
    ):
        out = work / f"gate-{len(rows)}"
        t0 = time.perf_counter()
        proc = _hk(
            [
                "gate",
                "--weights",
                str(work / "demo" / "purified" / "model.safetensors"),
                "--data",
                str(work / "folders"),
                "--split",
                "train",
                "--holdout",
                str(work / "folders"),
                "--holdout-split",
                "test",
                *extra,
                "--out",
                str(out),
            ]
        )
        rep = json.loads((out / "gate.json").read_text())
        failed = [r["rule_id"] for r in rep["rules"] if r["status"] == "fail"]
        row = {
            "policy": name,
            "exit": proc.returncode,
            "gate": "PASSED" if rep["passed"] else "FAILED",
            "failed_rules": ", ".join(failed) or "-",
            "ba_measured": round(100 * rep["input_ba"], 2),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    path = write_results(
        "class_order_probe",
        rows,
        ["policy", "exit", "gate", "failed_rules", "ba_measured", "seconds"],
        {"command": "python -m benchmarks.class_order_probe"},
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

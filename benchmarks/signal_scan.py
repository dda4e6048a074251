"""The ``signal`` detector (smooth additive signal inversion) on the committed CIFAR-10 models.

    python -m benchmarks.signal_scan                                    # every model below
    python -m benchmarks.signal_scan --models user:stripes,user:clean   # some
    python -m benchmarks.signal_scan --options '{"k": 16}' --out signal_scan_k16

Stop 50: a held-out user-script model poisoned with additive diagonal stripes passed
``hardenkit gate`` unrepaired, because no default detector describes a whole-image additive
trigger. The ``signal`` detector inverts the smallest *smooth* additive signal per label
(``hardenkit.scan.smooth``). This script runs it alone, at its defaults unless ``--options``
(``SmoothSignalConfig`` fields), on

* ``user:<name>`` — the ``benchmarks.user_script`` fixtures (five backdoored, three clean);
* ``protocol:<name>`` — the ``cifar10-cpu`` protocol fixtures (``cifar-cnn`` and the residual
  family; BadNets, Blended, WaNet, SIG; two seeds),

with 250 clean images (25 per class) from a fixed random half of the CIFAR-10 test split that
no model trained on (the scanner holds out 20 % of them to measure the recovered triggers),
and reports per model the labels it flags, whether that is the planted target, the target's
and the smallest label's RMS, their ratio to the median label, the anomaly index, and the
recovered target trigger's attack rate on the held-out images. A flagged label other than
the target is a false flag (on a backdoored model it sends a repair after a natural class).
Each row is cached in ``benchmarks/cache/signal_scan/``; writes
``benchmarks/results/<out>.{json,md}``. The scanner zoo's 50 short-trained models are in
``benchmarks/results/scanner_zoo_signal.md`` (``benchmarks.scanner_zoo --add signal``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

import hardenkit as hk
from hardenkit.data import stratified_indices

from .common import (
    CACHE,
    config_hash,
    load_cached,
    load_cifar10,
    md_table,
    save_cached,
    write_results,
)
from .mm_bd_pvalues import ALL, _load


def _clean_images(data: dict[str, hk.ImageDataset]) -> hk.ImageDataset:
    """25 images per class from the scanner zoo's fixed random half of the test split."""
    pool = torch.randperm(len(data["test"]), generator=torch.Generator().manual_seed(123))
    half = pool[len(pool) // 2 :].sort().values
    pick = stratified_indices(data["test"].labels[half], per_class=25, seed=0)
    return data["test"].subset(half[pick])


def run_model(
    name: str, options: dict[str, Any], data: dict[str, hk.ImageDataset]
) -> dict[str, Any]:
    key = config_hash({"model": name, "signal": options, "v": 1})
    cache = CACHE / "signal_scan" / f"{name.replace(':', '-')}-{key}.json"
    cached = load_cached(cache)
    if cached is not None:
        return cached
    model, target = _load(name)
    cfg = hk.scan.scan_config_for_budget(
        "quick", {"detectors": ["signal"], "detector_options": {"signal": options}}
    )
    rt = {"seed": 0, "device": "cpu", "progress": "off"}
    t0 = time.perf_counter()
    scan = hk.Scanner(model, 10, config=cfg, runtime=rt).run(_clean_images(data).loader())
    seconds = time.perf_counter() - t0
    det = scan.report.detectors[0]
    rms = [float(c.value) for c in det.classes]
    index = [float(c.anomaly_index) for c in det.classes]
    med = statistics.median(rms)
    low = min(range(len(rms)), key=lambda i: rms[i])
    asr = {c.label: c.trigger_asr for c in scan.report.classes}
    row = {
        "model": name,
        "target": target,
        "flagged": list(det.flagged_labels),
        "flags target": None if target is None else target in det.flagged_labels,
        "false flags": [y for y in det.flagged_labels if y != target],
        "verdict": scan.verdict,
        "smallest": low,
        "smallest / median": rms[low] / med,
        "smallest index": index[low],
        "target rms": None if target is None else rms[target],
        "target / median": None if target is None else rms[target] / med,
        "target index": None if target is None else index[target],
        "target trigger ASR": None if target is None else asr.get(target),
        "rms": rms,
        "reached": [bool(c.extra["reached_threshold"]) for c in det.classes],
        "index": index,
        "seconds": seconds,
    }
    return save_cached(cache, row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(ALL), help="comma-separated user:/protocol:")
    p.add_argument("--options", default="{}", help="SmoothSignalConfig fields (JSON)")
    p.add_argument("--out", default="signal_scan", help="results name")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    options = json.loads(args.options)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {ALL}")
    data = load_cifar10()
    rows = []
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] signal {name} ...", flush=True)
        r = run_model(name, options, data)
        print(json.dumps({k: r[k] for k in ("model", "target", "flagged", "smallest", "seconds")}))
        rows.append(r)
    cols = [
        "model", "target", "flagged", "flags target", "false flags", "smallest",
        "smallest / median", "smallest index", "target / median", "target index",
        "target trigger ASR", "seconds",
    ]  # fmt: skip
    backdoored = [r for r in rows if r["target"] is not None]
    summary = {
        "backdoored": len(backdoored),
        "target flagged": sum(bool(r["flags target"]) for r in backdoored),
        "models with a false flag": sum(bool(r["false flags"]) for r in rows),
        "clean models": len(rows) - len(backdoored),
        "clean models flagged": sum(bool(r["flagged"]) for r in rows if r["target"] is None),
    }
    body = md_table(rows, cols) + "\n" + md_table([summary], list(summary))
    write_results(
        args.out,
        rows,
        cols,
        {
            "options": options,
            "summary": summary,
            "torch_threads": torch.get_num_threads(),
            "command": "python -m benchmarks.signal_scan " + " ".join(argv or sys.argv[1:]),
        },
        body=body,
    )
    print(body)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

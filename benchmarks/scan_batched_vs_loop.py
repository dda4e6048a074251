"""Batched inversion over all labels vs a one-label-at-a-time loop, side by side in one run.

    python -m benchmarks.scan_batched_vs_loop                        # NC, warp, pixel
    python -m benchmarks.scan_batched_vs_loop --model user-sequential-badnets-0 --detectors warp

Every inversion detector (Neural Cleanse, warp, pixel) optimises all candidate labels in one
batched loop. The *loop* mode is the plain alternative: the same detector's
:meth:`~hardenkit.scan.base.Detector.invert` called once per label (the label-sharding path
that ``torchrun`` scans use, with one label per call), inside the same Scanner run — same
model, images, seed and settings (the ``quick`` preset's). Per-label inversions are
independent (each label has its own parameters, schedule and stopping rule; random starts are
drawn for every class and sliced), so the two modes must recover the same per-label
statistics — the benchmark reports the largest relative difference — and only the wall time
differs. Seconds are the detector's own inversion time (the sum over the calls in loop mode).

After one untimed warm-up run, the two modes alternate ``--repeats`` times (which one goes
first alternates too); the fastest run of each is compared (a shared machine adds noise).
The model is a committed CIFAR-10 zoo fixture
(``benchmarks/fixtures/scanner_zoo``); scan images are 30 per class from the zoo's scan half of
the test split. Writes ``benchmarks/results/scan_batched_vs_loop.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

import torch

import hardenkit as hk
from hardenkit.data import stratified_indices
from hardenkit.scan.base import DETECTORS, Detector, DetectorContext, Inversion
from hardenkit.scan.budget import SCAN_BUDGETS

from .common import load_cifar10, write_results
from .scanner_zoo import FIXTURES, _load_weights

_VALUE = {"neural-cleanse": "mask_l1", "warp": "warp_shift", "pixel": "value"}


def _clean(data: dict[str, hk.ImageDataset], per_class: int, seed: int) -> hk.ImageDataset:
    pool = torch.randperm(len(data["test"]), generator=torch.Generator().manual_seed(123))
    half = pool[len(pool) // 2 :].sort().values
    pick = stratified_indices(data["test"].labels[half], per_class=per_class, seed=seed)
    return data["test"].subset(half[pick])


def looped(cls: type[Detector]) -> type[Detector]:
    """``cls`` with :meth:`invert` called one label at a time (registered as ``<name>-loop``)."""

    class Looped(cls):  # type: ignore[valid-type,misc]
        name = f"{cls.name}-loop"

        def invert(self, ctx: DetectorContext) -> Inversion:
            parts = [cls.invert(self, dataclasses.replace(ctx, labels=[y])) for y in ctx.labels]
            merged = self.merge(parts, ctx.labels)
            merged.seconds = sum(p.seconds for p in parts)
            return merged

    if Looped.name not in DETECTORS:
        DETECTORS.register(Looped.name, Looped)
    return Looped


def _run(
    model: torch.nn.Module, clean: hk.ImageDataset, detector: str, loop: bool, seed: int
) -> tuple[float, dict[int, float]]:
    opts = dict(SCAN_BUDGETS["quick"].get("detector_options", {}).get(detector, {}))
    name = looped(DETECTORS.get(detector)).name if loop else detector
    cfg = hk.scan.scan_config_for_budget(
        "quick", {"detectors": [name], "detector_options": {name: opts}}
    )
    rt = {"seed": seed, "device": "cpu", "progress": "off"}
    res = hk.Scanner(model, 10, config=cfg, runtime=rt).run(clean.loader())
    det = res.report.detectors[0]
    return det.seconds, {int(c.label): float(c.value) for c in det.classes}


def compare(
    model: torch.nn.Module, clean: hk.ImageDataset, detector: str, repeats: int, seed: int
) -> dict[str, Any]:
    times: dict[str, list[float]] = {"batched": [], "loop": []}
    values: dict[str, dict[int, float]] = {}
    _run(model, clean, detector, False, seed)  # warm-up (allocator, caches), not timed
    for rep in range(repeats):
        # alternate which mode goes first: a shared machine's load drifts
        for mode in ("batched", "loop") if rep % 2 == 0 else ("loop", "batched"):
            t, values[mode] = _run(model, clean, detector, mode == "loop", seed)
            times[mode].append(t)
        print(
            f"  {detector}: batched {times['batched'][-1]:.1f}s loop {times['loop'][-1]:.1f}s",
            flush=True,
        )
    diffs = [
        abs(values["batched"][y] - values["loop"][y]) / max(abs(values["loop"][y]), 1e-9)
        for y in range(10)
    ]
    return {
        "detector": detector,
        "statistic": _VALUE[detector],
        "batched_s": min(times["batched"]),
        "loop_s": min(times["loop"]),
        "speedup": min(times["loop"]) / min(times["batched"]),
        "max_rel_diff": max(diffs),
        "batched_all_s": times["batched"],
        "loop_all_s": times["loop"],
        "batched_values": [values["batched"][y] for y in range(10)],
        "loop_values": [values["loop"][y] for y in range(10)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="small-cnn-badnets-0", help="zoo fixture id")
    p.add_argument("--detectors", default="neural-cleanse,warp,pixel")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--scan-per-class", type=int, default=30)
    p.add_argument("--name", default="scan_batched_vs_loop")
    args = p.parse_args(argv)
    index = json.loads((FIXTURES / "index.json").read_text())
    if args.model not in index:
        raise SystemExit(f"unknown zoo model {args.model!r}; one of {sorted(index)}")
    meta = {"id": args.model, **index[args.model]}
    model = _load_weights(meta)
    data = load_cifar10()
    clean = _clean(data, args.scan_per_class, meta["seed"])
    rows = [
        compare(model, clean, d, args.repeats, meta["seed"]) for d in args.detectors.split(",") if d
    ]
    cmd = "python -m benchmarks.scan_batched_vs_loop " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    cols = ["detector", "statistic", "batched_s", "loop_s", "speedup", "max_rel_diff"]
    path = write_results(
        args.name,
        rows,
        cols,
        {
            "command": cmd.strip(),
            "model": args.model,
            "torch_threads": torch.get_num_threads(),
            "repeats": args.repeats,
        },
    )
    with path.open("a") as f:
        f.write(
            f"\nModel: `{args.model}` (BA {100 * meta['ba']:.1f} %); 10 labels, "
            f"{len(clean)} scan images, `quick` preset settings, {torch.get_num_threads()} "
            f"torch thread(s); one warm-up run, then the fastest of {args.repeats} alternating "
            "run(s). "
            "`max_rel_diff`: the largest relative difference of a label's statistic between "
            "the modes.\n"
        )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

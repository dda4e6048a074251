"""Worker of tests/unit/test_scan_distributed.py: scans run either in the test process (the
one-process reference) or on each rank under ``torchrun``, which splits the candidate labels
of the shardable detectors over the ranks.

    torchrun --standalone --nproc-per-node 2 tests/unit/scan_ddp_worker.py JOB[,JOB...] OUT_DIR

For each job every rank writes its report to ``OUT_DIR/JOB/report{r}.json``, its recovered
triggers to ``OUT_DIR/JOB/triggers{r}.pt`` and calls ``result.save(OUT_DIR/JOB/saved{r})`` —
which only rank 0 may honour.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ddp_worker
from test_scan_pixel import OnePixelBackdoor
from test_scan_warp import LineShiftBackdoor, _images

from hardenkit.scan import DETECTORS, Detector, DetectorContext, DetectorOutput
from hardenkit.scan.anomaly import logistic_score, mad_anomaly

JOBS = ("nc", "warp", "cnn", "plugin", "budget")
"""``nc``: Neural Cleanse on a one-pixel backdoor; ``warp``: the warp inversion on a line-shift
backdoor (both planted in hand-built 4-class models, target 0); ``cnn``: all four built-in
detectors on a small convolutional net; ``plugin``: a third-party detector with ``detect``
only (run whole) next to Neural Cleanse; ``budget``: a wall-time budget cuts the scan."""


class MeanLogit(Detector):
    """A third-party detector written against the old interface: ``detect`` only. Its info
    records the labels it saw and the rank that ran it."""

    name = "test-mean-logit"
    needs_data = True

    def detect(self, ctx: DetectorContext) -> DetectorOutput:
        assert ctx.x is not None
        with torch.no_grad():
            mean = ctx.model(ctx.x).float().mean(0)
        labels = list(ctx.labels)
        values = [float(mean[y]) for y in labels]
        stats = mad_anomaly(values, side="high", labels=labels)
        return DetectorOutput(
            detector=self.name,
            statistic="mean_logit",
            suspicious_side="high",
            values=dict(zip(labels, values, strict=True)),
            anomaly_per_label=dict(zip(labels, stats.per_label, strict=True)),
            anomaly_index=stats.index,
            evidence=stats.index,
            threshold=2.0,
            flagged=list(stats.flagged),
            score=logistic_score(stats.index, 2.0),
            seconds=0.0,
            info={"labels_seen": labels, "rank": int(os.environ.get("RANK", "0"))},
        )


_FEW = {
    "neural-cleanse": {"epochs": 4, "batch_size": 16},
    "warp": {"epochs": 4, "max_images": 48},
    "pixel": {"epochs": 4, "batch_size": 16, "max_images": 48},
    "mm-bd": {"starts": 3, "steps": 20},
}


def _planted(job: str) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]], dict[str, Any]]:
    if job == "nc":
        g = torch.Generator().manual_seed(0)
        x = torch.rand(64, 3, 8, 8, generator=g) * 0.5  # dark: the backdoor pixel is off
        opts = {"neural-cleanse": {"epochs": 20, "batch_size": 16}}
        return OnePixelBackdoor(), [(x, torch.arange(64) % 4)], opts
    x = _images(80)
    return LineShiftBackdoor(), [(x, torch.arange(80) % 4)], {"warp": {"epochs": 20}}


def run(job: str) -> Any:
    """Run ``job`` in this process (one rank of it under ``torchrun``); the ScanResult."""
    import hardenkit as hk

    rt = {"device": "cpu", "seed": 5, "progress": "off"}
    if job in ("nc", "warp"):
        model, data, opts = _planted(job)
        config: dict[str, Any] = {
            "detectors": list(opts),
            "detector_options": opts,
            "min_images_per_class": 1,
        }
        return hk.Scanner(model, 4, config=config, runtime=rt).run(data)
    ds = ddp_worker.data()
    model = ddp_worker.tiny_model()
    if job == "cnn":
        names = ["neural-cleanse", "warp", "pixel", "mm-bd"]
        config = {"detectors": names, "detector_options": {n: _FEW[n] for n in names}}
    elif job == "plugin":  # registered for this scan only (the registry is process-wide)
        config = {
            "detectors": ["neural-cleanse", MeanLogit.name],
            "detector_options": {"neural-cleanse": _FEW["neural-cleanse"]},
        }
        DETECTORS.register(MeanLogit.name, MeanLogit, override=True)
        try:
            return hk.Scanner(model, 4, config=config, runtime=rt).run(
                ds.train.loader(batch_size=50)
            )
        finally:
            DETECTORS.unregister(MeanLogit.name)
    elif job == "budget":
        config = {
            "detectors": ["neural-cleanse"],
            "detector_options": {"neural-cleanse": {"epochs": 10_000, "early_stop": False}},
            "max_seconds": 1.0,
        }
    else:
        raise ValueError(job)
    return hk.Scanner(model, 4, config=config, runtime=rt).run(ds.train.loader(batch_size=50))


def trigger_tensors(result: Any) -> dict[int, dict[str, torch.Tensor]]:
    return {y: dict(t.tensors()) for y, t in result.all_triggers.items()}


def main(argv: list[str]) -> int:
    jobs, root = argv[0].split(","), Path(argv[1])
    rank = int(os.environ.get("RANK", "0"))
    for job in jobs:
        out = root / job
        out.mkdir(parents=True, exist_ok=True)
        res = run(job)
        torch.save(trigger_tensors(res), out / f"triggers{rank}.pt")
        (out / f"report{rank}.json").write_text(res.report.model_dump_json())
        res.save(out / f"saved{rank}")
        print(json.dumps({"job": job, "rank": rank, "verdict": res.verdict}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Worker of tests/unit/test_distributed.py: purifications and a robust training, run either
in the test process (the one-process reference) or on each rank under ``torchrun``.

    torchrun --standalone --nproc-per-node 2 tests/unit/ddp_worker.py JOB[,JOB...] OUT_DIR

For each job every rank writes its final weights to ``OUT_DIR/JOB/rank{r}.pt`` and its report
to ``OUT_DIR/JOB/report{r}.json`` (for the comparison), and calls
``result.save(OUT_DIR/JOB/saved{r})`` — which only rank 0 may honour.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

JOBS = ("finetune", "mcl", "d3", "nc-unlearn", "plain", "finetune-bn", "finetune-time")
"""``d3`` trains on 84 images in batches of 83: its last global batch holds one image, so one
rank's shard is empty (it still joins the all-reduce). The batch sizes of the others do not
divide evenly by 2 either (unequal shards). ``finetune-time`` is cut short by a wall-time
budget, which the ranks must agree on."""


def tiny_model(num_classes: int = 4, *, bn: bool = False) -> nn.Module:
    """A small CNN without BatchNorm (unless ``bn``): exact data-parallel equivalence on CPU."""
    torch.manual_seed(1)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(8))
    layers += [
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    ]
    return nn.Sequential(*layers)


def data(num_classes: int = 4, per_class: int = 26) -> Any:
    from hardenkit.data import make_synthetic_dataset

    return make_synthetic_dataset(
        num_classes=num_classes, train_per_class=per_class, test_per_class=4, image_size=16, seed=3
    )


CONFIGS: dict[str, dict[str, Any]] = {
    "finetune": {"epochs": 2, "batch_size": 21, "lr": 0.05},
    "finetune-bn": {"epochs": 2, "batch_size": 21, "lr": 0.05},
    "finetune-time": {"epochs": 500, "batch_size": 21, "lr": 0.05, "max_seconds": 1.0},
    "nc-unlearn": {"epochs": 2, "batch_size": 21, "lr": 0.05},
    "mcl": {"epochs": 2, "batch_size": 19, "min_trigger_asr": 0.0, "lr_schedule": [[0, 0.05]]},
    "d3": {"epochs": 2, "batch_size": 83},
}


def run(job: str, runtime: dict[str, Any] | None = None) -> tuple[nn.Module, Any]:
    """Run ``job``; returns the trained/purified model and the result object."""
    import hardenkit as hk
    from hardenkit.robust import RobustTrainer
    from hardenkit.scan import ScanResult

    rt = {"device": "cpu", "seed": 5, "progress": "off", **(runtime or {})}
    ds = data()
    if job == "plain":
        trainer = RobustTrainer(
            tiny_model(), "plain", config={"epochs": 2, "batch_size": 23, "lr": 0.05}, runtime=rt
        )
        res = trainer.fit(ds.train, test=ds.test)
        return res.model, res
    model = tiny_model(bn=job == "finetune-bn")
    scan = None
    if job in ("mcl", "nc-unlearn"):
        trig = hk.PatchTrigger.square(3)
        scan = ScanResult.from_triggers({0: trig}, model=model, num_classes=4)
    strategy = "finetune" if job.startswith("finetune") else job
    # an untrained model (the mechanics are under test): no refusal for being at chance
    purifier = hk.Purifier(
        model, strategy, config=CONFIGS[job], runtime=rt, require_above_chance=False
    )
    res = purifier.run(ds.train.loader(batch_size=50), scan=scan)
    return res.model, res


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(argv: list[str]) -> int:
    jobs, root = argv[0].split(","), Path(argv[1])
    rank = int(os.environ.get("RANK", "0"))
    for job in jobs:
        out = root / job
        out.mkdir(parents=True, exist_ok=True)
        model, res = run(job)
        torch.save(state(model), out / f"rank{rank}.pt")
        (out / f"report{rank}.json").write_text(res.report.model_dump_json())
        res.save(out / f"saved{rank}")
        print(json.dumps({"job": job, "rank": rank, "status": res.report.status}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

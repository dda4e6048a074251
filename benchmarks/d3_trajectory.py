"""D3's test-set trajectory: BA and ASR (the fixture's real trigger) every few epochs of one run.

    python -m benchmarks.d3_trajectory --only badnets-0.1 --only blended-0.1 --out d3_trajectory

Runs ``Purifier(model, "d3", config)`` on a ``cifar10-cpu`` fixture's clean budget, exactly as
``benchmarks.purify_cpu`` does, and measures the model being trained every ``--every`` epochs on
a fixed random 3,000-image subset of the test set. The measurement is hooked onto the epoch-end
validation call of D3's checkpoint selector (``hardenkit.purify.d3.CheckpointSelector.update``),
so the run itself is the library's code path, unchanged. Used to see *when* D3 removes a
backdoor and what the clean accuracy is then — whether any epoch (a different selection rule,
a shorter schedule) would meet D3's aim on the model.

Writes ``benchmarks/results/<out>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any
from unittest import mock

import torch

import hardenkit as hk
import hardenkit.purify.d3 as d3mod
from hardenkit.purify.base import CheckpointSelector
from hardenkit.training import evaluate_accuracy, trigger_asr

from .cifar_fixtures import FIXTURES, load_fixture
from .common import load_cifar10, peak_rss_mb, write_results
from .purify_cpu import DEFENCES


def trajectory(
    name: str,
    defence: str,
    data: dict[str, hk.ImageDataset],
    test: tuple[torch.Tensor, torch.Tensor],
    every: int,
) -> list[dict[str, Any]]:
    """One D3 run on fixture ``name``: test BA / ASR at epoch 0, 1, every ``every``-th, and of
    the model the Purifier returned."""
    model, trigger, idx, _ = load_fixture(name)
    assert trigger is not None
    x_test, y_test = test
    clean = data["train"].subset(idx["clean_indices"])
    rt = hk.RuntimeConfig(device="cpu", seed=0)
    rows: list[dict[str, Any]] = []

    def measure(m: torch.nn.Module, epoch: int | str) -> None:
        ba = evaluate_accuracy(m, x_test, y_test, runtime=rt)
        asr = trigger_asr(m, trigger, x_test, y_test, 0, rt)  # the fixtures' target is 0
        rows.append({"fixture": name, "epoch": epoch, "BA %": 100 * ba, "ASR %": 100 * asr})
        print(f"  {name} epoch {epoch}: BA {100 * ba:.2f} ASR {100 * asr:.2f}", flush=True)

    class Traced(CheckpointSelector):
        def update(self, model: torch.nn.Module, epoch: int) -> dict[str, float] | None:
            if epoch == 1 or epoch % every == 0:
                was = model.training
                measure(model, epoch)
                model.train(was)
            return super().update(model, epoch)

    measure(model, 0)
    strategy, cfg = DEFENCES[defence]
    t0 = time.perf_counter()
    with mock.patch.object(d3mod, "CheckpointSelector", Traced):
        res = hk.Purifier(model, strategy, config=cfg, runtime={"device": "cpu", "seed": 0}).run(
            clean.loader(batch_size=500)
        )
    chosen = res.report.details.get("chosen_epoch")
    print(f"[{name}] {defence}: {time.perf_counter() - t0:.0f}s, returned epoch {chosen}")
    measure(res.model, f"returned ({chosen}, {res.status})")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", action="append", choices=sorted(FIXTURES), help="fixture(s)")
    p.add_argument(
        "--defence",
        default="d3-0.5",
        choices=sorted(k for k, v in DEFENCES.items() if v[0] == "d3"),
        help="a D3 configuration of benchmarks.purify_cpu (default %(default)s)",
    )
    p.add_argument("--every", type=int, default=10, help="measure every N epochs (and epoch 1)")
    p.add_argument("--test-images", type=int, default=3000)
    p.add_argument("--out", default="d3_trajectory")
    args = p.parse_args(argv)
    data = load_cifar10()
    g = torch.Generator().manual_seed(1)
    sub = torch.randperm(len(data["test"].labels), generator=g)[: args.test_images]
    test = data["test"].subset(sub)
    x_test = next(iter(test.loader(batch_size=len(sub))))[0]
    rows: list[dict[str, Any]] = []
    for name in args.only or ["badnets-0.1", "blended-0.1"]:
        rows += trajectory(name, args.defence, data, (x_test, test.labels), args.every)
    write_results(
        args.out,
        rows,
        ["fixture", "epoch", "BA %", "ASR %"],
        {
            "protocol": "cifar10-cpu D3 trajectory",
            "defence": DEFENCES[args.defence],
            "test_images": args.test_images,
            "peak_rss_mb": peak_rss_mb(),
            "command": "python -m benchmarks.d3_trajectory " + " ".join(argv or sys.argv[1:]),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A rough, up-front time estimate of a repair (``hardenkit purify`` prints it before any work).

A strategy states its schedule's work as *passes*: one pass is a forward, backward and update
step of every purification image at the strategy's batch size
(:meth:`~hardenkit.purify.PurificationStrategy.estimate_passes`). The cost of one such step
is timed here on the model itself; the estimate is ``passes × images / batch × step``. The
pass counts per epoch were measured on CIFAR-10 models (``benchmarks/purify_estimate.py``,
docs/purification.md "How long a repair takes").
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Any

import torch
from torch import nn

from ..config import RuntimeConfig, parse_config
from ..training import infer_num_classes
from .base import STRATEGIES, PurificationStrategy

__all__ = ["estimate_repair_seconds", "step_seconds"]


def step_seconds(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> float:
    """Seconds of one SGD step (forward, backward, update) of a copy of ``model`` on a random
    batch of ``batch_size`` images: the median of five timed steps after one that warms up.
    The median, not the fastest: on cores shared with other jobs the fastest step is the
    one that ran alone, and a repair runs at the shared pace (stop 63: with three jobs on
    two cores the fastest of two steps put the same model's estimate 2x apart from run to
    run). ``model`` itself is not changed.

    >>> import hardenkit as hk
    >>> step_seconds(hk.create_model("small-cnn", 10), (3, 32, 32), 8) > 0
    True
    """
    dev = torch.device(device)
    work = copy.deepcopy(model).to(dev).train()
    work.requires_grad_(True)
    x = torch.rand(batch_size, *input_shape, device=dev)
    with torch.no_grad():
        k = infer_num_classes(work, x[:2])
    y = torch.randint(0, k, (batch_size,), device=dev)
    opt = torch.optim.SGD([p for p in work.parameters() if p.requires_grad], lr=1e-6)
    times: list[float] = []
    for _ in range(6):
        if dev.type == "cuda":  # pragma: no cover - GPU only
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(work(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if dev.type == "cuda":  # pragma: no cover - GPU only
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def estimate_repair_seconds(
    model: nn.Module,
    strategy: str | PurificationStrategy,
    *,
    num_images: int,
    input_shape: tuple[int, int, int],
    config: dict[str, Any] | None = None,
    runtime: RuntimeConfig | dict[str, Any] | None = None,
) -> tuple[float, float] | None:
    """``(fewest, most)`` seconds the repair itself may take on ``num_images`` purification
    images (after the hold-out and validation splits) — a rough estimate for planning, not a
    bound: the step is timed once, and branches (``auto``) or early stops change the work.
    ``None`` when the strategy does not state its schedule
    (:meth:`~hardenkit.purify.PurificationStrategy.estimate_passes`; ``anp``,
    ``shapley-pruning``). The scan the Purifier may run first and the recheck after are
    not included (:func:`hardenkit.scan.estimate_scan_seconds` estimates a scan).

    >>> import hardenkit as hk
    >>> lo, hi = estimate_repair_seconds(hk.create_model("small-cnn", 10), "finetune",
    ...     num_images=64, input_shape=(3, 32, 32), config={"epochs": 2})
    >>> 0 < lo <= hi
    True
    """
    strat = (
        strategy if isinstance(strategy, PurificationStrategy) else STRATEGIES.get(strategy)(config)
    )
    passes = strat.estimate_passes()
    if passes is None or num_images <= 0:
        return None
    rt = parse_config(RuntimeConfig, runtime)
    bs = max(1, min(strat.estimate_batch_size(), num_images))
    per_step = step_seconds(model, input_shape, bs, rt.resolve_device())
    steps_per_pass = math.ceil(num_images / bs)
    return (passes[0] * steps_per_pass * per_step, passes[1] * steps_per_pass * per_step)

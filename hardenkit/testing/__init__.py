"""Helpers for testing code built on hardenkit (plugins, pipelines): tiny seeded fixtures.

Example:
    >>> from hardenkit.testing import tiny_backdoored_model
    >>> fx = tiny_backdoored_model(epochs=1)
    >>> fx.backdoored.poisoned.num_classes
    4
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..attacks import BackdooredModel, make_backdoored_model
from ..data import SyntheticSplits, make_synthetic_dataset
from ..scan import ClassScan, ScanResult
from ..training import TrainConfig
from ..triggers import Trigger

__all__ = ["BackdoorFixture", "check_strategy", "missed_scan", "tiny_backdoored_model"]


@dataclass(frozen=True)
class BackdoorFixture:
    """A small synthetic dataset and a model backdoored on it."""

    data: SyntheticSplits
    backdoored: BackdooredModel


def tiny_backdoored_model(
    attack: str = "badnets",
    *,
    num_classes: int = 4,
    train_per_class: int = 100,
    test_per_class: int = 25,
    epochs: int = 6,
    seed: int = 0,
) -> BackdoorFixture:
    """Train a ``small-cnn`` with ``attack`` on tiny synthetic data (seconds on a CPU)."""
    data = make_synthetic_dataset(
        num_classes=num_classes,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        seed=seed,
    )
    bd = make_backdoored_model(
        attack,
        data.train,
        test=data.test,
        arch="small-cnn",
        attack_config={"seed": seed},
        train_config=TrainConfig(epochs=epochs, batch_size=64, lr=0.05, augment=False),
        runtime={"seed": seed, "device": "cpu"},
    )
    return BackdoorFixture(data=data, backdoored=bd)


def check_strategy(
    strategy: str,
    *,
    config: dict[str, Any] | None = None,
    fixture: BackdoorFixture | None = None,
    max_steps: int = 3,
) -> dict[str, bool]:
    """Conformance suite every purification strategy must pass (plugins included).

    Runs ``strategy`` through :class:`~hardenkit.Purifier` on a tiny BadNets model (with its
    real trigger as the "scan", so trigger-based strategies need no detection) on the CPU and
    checks that it

    * leaves the caller's model untouched (weights, train/eval flags, ``requires_grad``),
    * is deterministic under a seed (two runs give the same weights),
    * returns a model with the same input/output contract (class, logits shape),
    * respects a step budget (``max_steps``) and reports the steps it took, and never calls
      a run that the budget cut short ``purified`` (``budget-exhausted``),
    * runs on the CPU,
    * never reads the held-out (test) data: two runs whose ``holdout_loader`` differ — the
      clean test set, and the same images with the trigger stamped on every one — must give
      identical weights (held-out data is for the Purifier's before/after measurement only;
      strategies select on ``ctx.x_val``, a split of the clean budget).

    Returns ``{check: True}`` for every check; raises ``AssertionError`` naming the first one
    that fails.

    >>> check_strategy("finetune", config={"epochs": 1})["deterministic"]
    True
    """
    from typing import get_args

    import torch

    from ..purify import Purifier
    from ..purify.base import PurificationStatus
    from ..reports import ModelFingerprint
    from ..scan import ScanResult

    fx = fixture or tiny_backdoored_model(epochs=2)
    bd = fx.backdoored
    model = bd.model
    k = fx.data.train.num_classes
    target = bd.target
    if not isinstance(target, int):
        raise AssertionError("check_strategy needs an all-to-one fixture")
    scan = ScanResult.from_triggers({target: bd.trigger}, model=model, num_classes=k)
    before = ModelFingerprint.of(model).sha256
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    cfg = {**(config or {}), "max_steps": max_steps}
    results: dict[str, bool] = {}

    def run(holdout: Any = None) -> tuple[torch.nn.Module, Any]:
        res = Purifier(model, strategy, config=cfg, runtime={"seed": 0, "device": "cpu"}).run(
            fx.data.train.loader(batch_size=64), scan=scan, holdout_loader=holdout
        )
        return res.model, res.report

    out1, rep1 = run()
    out2, rep2 = run()

    def check(name: str, ok: bool, detail: str) -> None:
        if not ok:
            raise AssertionError(f"strategy {strategy!r} fails {name!r}: {detail}")
        results[name] = True

    check(
        "input unchanged",
        ModelFingerprint.of(model).sha256 == before
        and all(m.training == f for m, f in flags)
        and all(p.requires_grad == g for p, g in grads),
        "the caller's model was modified",
    )
    check(
        "deterministic",
        ModelFingerprint.of(out1).sha256 == ModelFingerprint.of(out2).sha256,
        "two runs with seed 0 gave different weights",
    )
    probe = fx.data.test.pixels()[:5]
    with torch.no_grad():
        shape_in = tuple(model(probe).shape)
        shape_out = tuple(out1.eval()(probe).shape)
    check(
        "same I/O",
        type(out1) is type(model) and shape_in == shape_out and out1 is not model,
        f"output {type(out1).__name__} {shape_out} vs input {type(model).__name__} {shape_in}",
    )
    check(
        "respects budget",
        rep1.steps <= max_steps and rep2.steps == rep1.steps,
        f"{rep1.steps} steps with max_steps={max_steps}",
    )
    check(
        "runs on CPU",
        all(p.device.type == "cpu" for p in out1.parameters()),
        "output parameters are not on the CPU",
    )
    statuses = set(get_args(PurificationStatus))
    check("reports status", rep1.status in statuses, rep1.status)
    check(
        "honest status",
        not (rep1.budget_exhausted and rep1.status == "purified"),
        f"status {rep1.status!r} although the step budget ended the run",
    )
    test_x, test_y = fx.data.test.tensors()
    poisoned = [(bd.trigger(test_x), test_y)]
    out_clean, _ = run(fx.data.test.loader(batch_size=64))
    out_poisoned, _ = run(poisoned)
    check(
        "reads no held-out data",
        ModelFingerprint.of(out_clean).sha256 == ModelFingerprint.of(out_poisoned).sha256,
        "the repaired weights depend on holdout_loader (the test data)",
    )
    return results


def missed_scan(scan: ScanResult) -> ScanResult:
    """``scan`` as if its statistics had flagged nothing: verdict ``clean``, no flagged label in
    the report or any detector — to test what a pipeline (e.g. ``auto``) does when the Scanner
    misses a backdoor.

    What a genuine miss would hold is rebuilt: when no detector flags a label, its trigger
    (``all_triggers``) is the first inverting detector's (Neural Cleanse's in every preset).
    A label whose trigger came from *another* detector because that detector flagged it (e.g.
    ``warp`` on a WaNet target) gets the first detector's inversion back from
    ``scan.inversions`` (its held-out ``trigger_asr`` is then unknown: ``None``), or is dropped
    when the scan does not hold it (a result loaded from a report saved before inversions were
    kept). Every detector's inversions (``inversions``) stay: a scan that misses still ran them.

    >>> import hardenkit as hk
    >>> m = hk.create_model("small-cnn", 4)
    >>> s = ScanResult.from_triggers({1: hk.PatchTrigger.square(3)}, model=m, num_classes=4)
    >>> miss = missed_scan(s)
    >>> miss.verdict, miss.flagged_labels, sorted(miss.all_triggers)
    ('clean', [], [1])
    """
    dets = [d.model_copy(update={"flagged_labels": []}) for d in scan.report.detectors]
    first = next((d.detector for d in scan.report.detectors if d.produces_triggers), None)
    source = {c.label: c.trigger_source for c in scan.report.classes}
    own = scan.inversions.get(first, {}) if first is not None else {}
    kept: dict[int, Trigger] = {}
    swapped: set[int] = set()
    for y, t in scan.all_triggers.items():
        if source.get(y) is None or first is None or source[y] == first:
            kept[y] = t
        elif y in own:
            kept[y] = own[y]
            swapped.add(y)

    def _row(c: ClassScan) -> ClassScan:
        update: dict[str, Any] = {"flagged": False}
        if c.label in swapped:
            update.update(trigger_source=first, trigger_asr=None)
        elif c.label not in kept:
            update.update(trigger_source=None, trigger_asr=None)
        return c.model_copy(update=update)

    report = scan.report.model_copy(
        update={
            "verdict": "clean",
            "flagged_labels": [],
            "detectors": dets,
            "classes": [_row(c) for c in scan.report.classes],
        }
    )
    return ScanResult(report, kept, scan.example, inversions=scan.inversions)

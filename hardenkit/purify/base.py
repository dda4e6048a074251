"""Purification strategy plug-in interface: one class + one pydantic config + a registry entry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import torch
from pydantic import Field
from torch import Tensor, nn

from .._utils.budget import Budget
from .._utils.distributed import Distributed
from .._utils.progress import ProgressCallback
from ..config import HardenkitConfig, RuntimeConfig, parse_config
from ..data.loaders import BatchSource
from ..data.store import ImageStore
from ..registry import Registry
from ..scan import ScanConfig, ScanResult
from ..training import evaluate_accuracy, trigger_asr
from ..triggers import Trigger

__all__ = [
    "STRATEGIES",
    "Budget",
    "CheckpointSelector",
    "PurificationStatus",
    "PurificationStrategy",
    "PurifyContext",
    "ScanSource",
    "StrategyConfig",
    "StrategyOutcome",
    "TriggerLabels",
    "select_triggers",
]


PurificationStatus = Literal[
    "purified",
    "nothing-to-purify",
    "refused",
    "degraded",
    "backdoor-remains",
    "budget-exhausted",
    "unverified",
]
"""Outcome of a purification. Only ``purified`` means "repaired and checked":

* ``purified`` — the strategy ran to the end of its schedule, held-out (or validation)
  BA dropped by at most ``max_ba_drop``, and no trigger the repair was aimed at still works on
  the held-out images (``max_trigger_asr``);
* ``nothing-to-purify`` / ``refused`` — the model is returned unchanged (no flagged label;
  the strategy could not run, see the notes);
* ``degraded`` — the repaired model lost more than ``max_ba_drop`` BA (returned anyway);
* ``backdoor-remains`` — a trigger the repair was aimed at (the recovered trigger of the
  scan's most anomalous flagged label, or one given with
  :meth:`~hardenkit.scan.ScanResult.from_triggers`) still sends more than
  ``Purifier(max_trigger_asr=...)`` of the held-out images to its label beyond the share the
  repaired model sends there without it (returned anyway);
* ``budget-exhausted`` — ``max_steps`` / ``max_seconds`` ended the run before its schedule;
* ``unverified`` — no held-out or validation image was left to measure BA (e.g.
  ``holdout_fraction=0`` with one image per class): check it with :class:`hardenkit.Validator`.
"""

ScanSource = tuple[ScanConfig, BatchSource]
"""The settings and images a scan was made with (the Purifier's recheck inverts the repaired
model on them again)."""

TRUSTED_STATUSES: frozenset[str] = frozenset({"purified", "nothing-to-purify"})
"""Statuses whose result can be used as reported (the CLI exits 0 only for these)."""


class StrategyConfig(HardenkitConfig):
    """Fields every strategy config has.

    Attributes:
        max_steps: stop after this many optimisation steps (``None`` = the strategy's
            schedule decides). A run the budget cut short has status ``budget-exhausted``.
        max_seconds: stop after this much wall time (checked between steps); same status.
        max_ba_drop: the utility guard — the largest loss of benign accuracy (a fraction:
            0.05 = 5 points) on the held-out split (validation split when nothing is held out)
            that still counts as ``purified``; more gives status ``degraded``.
            ``Purifier(max_ba_drop=...)`` overrides it.
    """

    max_steps: Annotated[int, Field(ge=1)] | None = None
    max_seconds: Annotated[float, Field(gt=0)] | None = None
    max_ba_drop: Annotated[float, Field(ge=0, le=1)] = 0.05


_Config = TypeVar("_Config", bound=StrategyConfig)


def with_preset(config: _Config, preset: dict[str, Any]) -> _Config:
    """``config`` with the ``preset`` values under the fields the caller set explicitly.

    >>> from hardenkit.purify import FinetuneConfig
    >>> with_preset(FinetuneConfig(lr=0.5), {"lr": 0.1, "epochs": 3}).model_dump(
    ...     include={"lr", "epochs"})
    {'epochs': 3, 'lr': 0.5}
    """
    return type(config).model_validate({**preset, **config.model_dump(exclude_unset=True)})


TriggerLabels = Literal["most-anomalous", "all-flagged"]
"""Which flagged labels' recovered triggers a trigger-based strategy repairs against:
``most-anomalous`` (default) — only the most anomalous flagged label's, ``all-flagged`` — every
flagged label's. Detectors often flag a naturally small label next to the target (a
"bird"-like feature); repairing against it teaches the model to ignore a real feature and
costs accuracy, while the true target is almost always the most anomalous label."""


def select_triggers(scan: ScanResult | None, which: TriggerLabels) -> list[tuple[int, Trigger]]:
    """The ``(label, trigger)`` pairs a strategy uses, most anomalous first (see
    :data:`TriggerLabels`); empty when the scan recovered no trigger for a flagged label.

    Triggers you supplied yourself (:meth:`ScanResult.from_triggers`, no detector ranked
    them) are all used.

    Example:
        >>> import hardenkit as hk
        >>> from hardenkit.scan import ScanResult
        >>> m = hk.create_model("small-cnn", 10)
        >>> t = hk.PatchTrigger.square(3)
        >>> scan = ScanResult.from_triggers({3: t, 5: t}, model=m, num_classes=10)
        >>> [y for y, _ in select_triggers(scan, "most-anomalous")]
        [3, 5]
    """
    if scan is None:
        return []
    pairs = list(scan.triggers.items())
    ranked = bool(scan.report.detectors)
    return pairs[:1] if which == "most-anomalous" and ranked else pairs


Selection = Literal["final", "best-val", "best-val-ba"]
"""Which epoch a training strategy returns: ``final`` (the last), ``best-val`` (highest
validation BA among checkpoints whose inverted triggers' validation ASR is at most the bound;
without an inverted trigger the last epoch, because BA alone favours epochs where the repair
has not worked yet), ``best-val-ba`` (highest validation BA, no ASR bound)."""


class CheckpointSelector:
    """Keep the best validated checkpoint of a training strategy (see :data:`Selection`).

    Call :meth:`update` after every epoch and :meth:`finish` at the end; ``finish`` loads the
    chosen weights into the model and returns a JSON-able record for the report.

    Example:
        >>> import torch
        >>> from hardenkit.purify.base import CheckpointSelector
        >>> CheckpointSelector.rank(ba=0.9, asr=0.05, bound=0.1, epoch=3) > (
        ...     CheckpointSelector.rank(ba=0.95, asr=0.5, bound=0.1, epoch=4))
        True
    """

    def __init__(
        self,
        ctx: PurifyContext,
        mode: Selection,
        *,
        max_asr: float = 0.1,
        triggers: Sequence[tuple[int, Trigger]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.mode = mode
        self.max_asr = max_asr
        if triggers is None:
            triggers = list(ctx.scan.triggers.items()) if ctx.scan is not None else []
        self.triggers = list(triggers)
        self.reason: str | None = None
        if mode == "final":
            self.reason = "selection 'final': the last epoch"
        elif len(ctx.y_val) == 0:
            self.reason = "no validation images: kept the last epoch"
        elif mode == "best-val" and not self.triggers:
            self.reason = (
                "no inverted trigger to bound the ASR: kept the last epoch (BA alone would "
                "favour epochs where the repair has not worked yet)"
            )
        self.active = self.reason is None
        self.history: list[dict[str, float]] = []
        self._best: tuple[tuple[float, ...], int, dict[str, Tensor]] | None = None

    @staticmethod
    def rank(*, ba: float, asr: float | None, bound: float, epoch: int) -> tuple[float, ...]:
        """Sort key: checkpoints within the ASR bound first — by BA, then by lower ASR, then
        the later epoch — otherwise by lowest ASR, then BA."""
        if asr is None:
            return (1.0, ba, 0.0, float(epoch))
        if asr <= bound:
            return (1.0, ba, -asr, float(epoch))
        return (0.0, -asr, ba, float(epoch))

    def update(self, model: nn.Module, epoch: int) -> dict[str, float] | None:
        """Evaluate ``model`` on the validation split after ``epoch`` (1-based).

        The validation curve is recorded whenever validation images exist (also for
        ``final``); a checkpoint is kept only when the selection is active.
        """
        ctx = self.ctx
        if len(ctx.y_val) == 0:
            return None
        ba = evaluate_accuracy(model, ctx.val_images, ctx.y_val, runtime=ctx.runtime)
        rec: dict[str, float] = {"epoch": float(epoch), "val_ba": ba}
        asr: float | None = None
        if self.triggers:
            asr = max(
                trigger_asr(model, t, ctx.val_images, ctx.y_val, lab, ctx.runtime)
                for lab, t in self.triggers
            )
            rec["val_trigger_asr"] = asr
        self.history.append(rec)
        if not self.active:
            return rec
        bound_asr = asr if self.mode == "best-val" else None
        key = self.rank(ba=ba, asr=bound_asr, bound=self.max_asr, epoch=epoch)
        if self._best is None or key > self._best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self._best = (key, epoch, state)
        return rec

    def finish(self, model: nn.Module, final_epoch: int) -> dict[str, Any]:
        """Load the chosen checkpoint into ``model``; return the record for the report."""
        out: dict[str, Any] = {"mode": self.mode, "final_epoch": final_epoch}
        if not self.active or self._best is None:
            out.update(
                chosen_epoch=final_epoch,
                reason=self.reason or "no epoch completed",
                history=self.history,
            )
            return out
        _, epoch, state = self._best
        if epoch != final_epoch:
            model.load_state_dict(state)
        chosen = next(r for r in self.history if int(r["epoch"]) == epoch)
        out.update(
            chosen_epoch=epoch,
            max_val_trigger_asr=self.max_asr if self.mode == "best-val" else None,
            chosen=chosen,
            history=self.history,
        )
        return out


@dataclass
class PurifyContext:
    """What a strategy gets from the Purifier.

    ``model`` is the working copy (the strategy edits it in place and returns it);
    ``images``/``y`` the clean images it may train on, ``val_images``/``y_val`` a small
    validation split of the clean budget for model selection (may be empty). The images are
    an :class:`~hardenkit.data.store.ImageStore`: ``ctx.images[idx]`` gives float32 [0, 1]
    pixels on ``device`` per mini-batch (the store may be uint8, or on disk with
    ``RuntimeConfig(clean_storage="disk")``). ``ctx.x`` / ``ctx.x_val`` are the same images
    as one float tensor, built on first access — the full copy the store avoids; use them
    only in code that needs every image at once.

    Under ``torchrun``, ``dist`` is this rank's
    :class:`~hardenkit._utils.distributed.Distributed` (``None`` in a single process):
    training loops pass it to :func:`~hardenkit._utils.distributed.train_step` (or
    :func:`~hardenkit.training.train_model`), which shards each global mini-batch.
    """

    model: nn.Module
    original: nn.Module
    """A frozen eval-mode copy of the input model (teacher, reference)."""
    num_classes: int
    images: ImageStore
    y: Tensor
    val_images: ImageStore
    y_val: Tensor
    device: torch.device
    runtime: RuntimeConfig
    scan: ScanResult | None
    budget: Budget
    progress: ProgressCallback
    input_shape: tuple[int, int, int] = (3, 32, 32)
    """``(C, H, W)`` of the model's input (known even when no clean image was given)."""
    notes: list[str] = field(default_factory=list)
    """Human-readable remarks the strategy wants in the report (fallbacks, skipped triggers)."""
    dist: Distributed | None = None
    """The data-parallel context under ``torchrun``; ``None`` in a single process."""
    scan_config: ScanConfig | None = None
    """The Purifier's Scanner settings (``Purifier.scan_config``): what a strategy that
    inverts a trigger again (MCL's ``inversion_restarts``) runs with; ``None``: the
    Scanner's defaults."""
    _full: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def x(self) -> Tensor:
        """Every training image as one float32 tensor on ``device`` (built on first use)."""
        if "x" not in self._full:
            self._full["x"] = self.images.to_tensor()
        return self._full["x"]

    @property
    def x_val(self) -> Tensor:
        """Every validation image as one float32 tensor on ``device`` (built on first use)."""
        if "x_val" not in self._full:
            self._full["x_val"] = self.val_images.to_tensor()
        return self._full["x_val"]


def pixel_runtime(runtime: RuntimeConfig) -> RuntimeConfig:
    """``runtime`` for a Scanner (or Validator) run on images the Purifier already holds: they
    are [0, 1] pixels, so ``input_normalization`` (which converts the *user's* normalized
    batches back to pixels) must not be applied a second time.

    >>> from hardenkit.config import RuntimeConfig
    >>> rt = RuntimeConfig(input_normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    >>> pixel_runtime(rt).input_normalization is None, pixel_runtime(rt).seed == rt.seed
    (True, True)
    """
    return runtime.model_copy(update={"input_normalization": None})


class StoreBatches:
    """``(x, y)`` CPU batches of an :class:`~hardenkit.data.store.ImageStore` and its labels,
    read on each iteration (no full float copy): a loader for the Scanner.

    >>> import torch
    >>> from hardenkit.data.store import as_store
    >>> store = as_store(torch.rand(5, 3, 4, 4))
    >>> [len(x) for x, _ in StoreBatches(store, torch.arange(5), size=2)]
    [2, 2, 1]
    """

    def __init__(self, x: ImageStore, y: Tensor, size: int = 512) -> None:
        self.x, self.y, self.size = x, y, size

    def __len__(self) -> int:
        return -(-len(self.y) // self.size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, len(self.y), self.size):
            yield self.x[i : i + self.size].cpu(), self.y[i : i + self.size].cpu()


@dataclass
class StrategyOutcome:
    """What a strategy returns."""

    model: nn.Module
    status: Literal["purified", "nothing-to-purify", "refused"] = "purified"
    """What the strategy itself concluded; the Purifier then applies the utility guard and
    the budget check (``degraded`` / ``budget-exhausted`` / ``unverified``)."""
    epochs: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    scan: ScanResult | None = None
    """A scan the strategy ran itself (its triggers' held-out ASR is then reported)."""
    scan_source: ScanSource | None = None
    """The settings and images of ``scan`` (what ``Purifier(recheck=True)`` inverts the
    repaired model on again); without them a strategy's own scan is not rechecked."""


class PurificationStrategy(ABC):
    """A repair method. Subclasses set ``name``, ``config_cls`` and ``needs_trigger``.

    ``needs_trigger=True`` strategies receive a :class:`~hardenkit.scan.ScanResult` (the
    Purifier runs the Scanner when none is given) and are skipped with the explicit status
    ``nothing-to-purify`` when the scan flags no label.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[StrategyConfig]] = StrategyConfig
    needs_trigger: ClassVar[bool] = False
    uses_scan: ClassVar[bool] = False
    """Wants a scan (the Purifier scans first when none is given) but also works without a
    flagged label (composite strategies)."""
    data_free: ClassVar[bool] = False
    """Runs without clean images (``Purifier.run(None)``), e.g. on synthesised data."""
    validation_fraction: float = 0.0
    """Share of the training part of the clean budget the Purifier splits off as
    ``ctx.val_images``/``ctx.y_val`` for the strategy's own model selection."""

    def __init__(self, config: StrategyConfig | dict[str, Any] | None = None) -> None:
        self.config = parse_config(self.config_cls, config)

    @abstractmethod
    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        """Repair ``ctx.model`` (the Purifier's copy) and return it."""

    def estimate_passes(self) -> tuple[float, float] | None:
        """The schedule's work as ``(fewest, most)`` passes over the purification images, for
        a rough time estimate (:func:`hardenkit.purify.estimate_repair_seconds`): one pass
        costs what one forward, backward and update step of every image at
        :meth:`estimate_batch_size` costs. ``None`` (the default): not stated, no estimate.
        Subclasses that override it should measure their factor
        (``benchmarks/purify_estimate.py``)."""
        return None

    def estimate_batch_size(self) -> int:
        """The batch size the schedule steps with (the config's ``batch_size``, else 128)."""
        bs = getattr(self.config, "batch_size", None)
        return int(bs) if isinstance(bs, int) and bs > 0 else 128


def epoch_passes(epochs: int, per_epoch: tuple[float, float]) -> tuple[float, float]:
    """``(fewest, most)`` passes of a schedule of ``epochs`` epochs of ``per_epoch`` passes
    each (:meth:`PurificationStrategy.estimate_passes`).

    >>> epoch_passes(20, (3.2, 3.7))
    (64.0, 74.0)
    """
    return float(epochs * per_epoch[0]), float(epochs * per_epoch[1])


STRATEGIES: Registry[type[PurificationStrategy]] = Registry(
    "purification strategy", entry_point_group="hardenkit.strategies"
)

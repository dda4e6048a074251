"""Robust-training strategy plug-in interface: one class + one pydantic config + a registry entry.

A robust-training strategy trains a model *from scratch* on an untrusted (possibly poisoned)
training set and returns it together with the indices it suspects of being poisoned and a
per-sample suspicion score (higher = more suspicious). :class:`~hardenkit.robust.RobustTrainer`
does the bookkeeping (copy of the model, data validation, budget, metrics, the report).

Example:
    >>> from hardenkit.robust import TRAINERS, isolation_metrics
    >>> sorted(TRAINERS.names())[:3]
    ['abl', 'dlp', 'plain']
    >>> isolation_metrics([1, 2, 3, 4], [3, 4, 5])
    (0.5, 0.6666666666666666)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from .._utils.budget import Budget as RobustBudget
from .._utils.distributed import Distributed
from .._utils.progress import ProgressCallback
from ..config import HardenkitConfig, RuntimeConfig, parse_config
from ..errors import NonFiniteError
from ..registry import Registry
from ..reports import BaseReport, DistributedInfo, ModelFingerprint
from ..training import TrainConfig, predict

__all__ = [
    "TRAINERS",
    "TRUSTED_STATUSES",
    "Isolation",
    "IsolationReport",
    "RobustBudget",
    "RobustConfig",
    "RobustContext",
    "RobustOutcome",
    "RobustStrategy",
    "StageReport",
    "TrainingReport",
    "TrainingStatus",
    "isolation_metrics",
    "prediction_source",
    "sample_scores",
    "select_suspects",
]

TrainingStatus = Literal["trained", "isolation-doubtful", "backdoor-remains", "budget-exhausted"]
"""Outcome of a robust training run. Only ``trained`` means "ran its schedule and the isolated
set looks like a poison set":

* ``trained`` — the schedule ran to the end (and, for strategies that isolate samples, the
  suspected set looks like a poison set: one class dominates it);
* ``isolation-doubtful`` — the schedule ran, but the suspected set does not look like a
  removed poison set. Either the data is clean, the backdoor is still there or was
  redirected to another class, or the attack is one the isolation cannot see (clean-label
  attacks such as SIG, or a very low poison rate): the returned model may still carry a
  backdoor;
* ``backdoor-remains`` — a test set, trigger and target were given, and the trigger still
  controls the trained model: its ASR exceeds the model's own rate of predicting the target
  without the trigger by more than ``max_asr``, or it sends at least
  ``max_trigger_share`` of the test images from other classes to one class (a redirected
  backdoor);
* ``budget-exhausted`` — ``max_steps`` / ``max_seconds`` ended the run before its schedule.
"""

TRUSTED_STATUSES: frozenset[str] = frozenset({"trained"})
"""Statuses whose result can be used as reported (``hardenkit train`` exits 0 only for these)."""


class RobustConfig(HardenkitConfig):
    """Fields every robust-training strategy config has.

    Attributes:
        batch_size: samples per step.
        lr: peak SGD learning rate (cosine schedule per stage).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        augment: random crop (pad 4) + horizontal flip on the device for supervised steps.
        judge_ratio: the poison-likeness check looks at the suspected samples the trained
            model fits worst: the highest-loss (on their given labels) ``judge_ratio`` of the
            training set (at least 20), or the whole suspected set when it is smaller. Once a
            backdoor is removed its poisoned samples are mislabeled, so they rank first;
            judging the whole set instead let DLP's re-scorings (which add mostly clean
            samples) dilute the target class of a real poison set below
            ``min_dominant_share``.
        min_dominant_share: the judged set "looks like poison" when its most common class
            holds at least this share of it (all-to-one poisoning concentrates it on the
            target class) and the three checks below hold too; otherwise the report warns
            and the status is ``isolation-doubtful``.
        min_concentration: ... and when that class is at least this many times more
            frequent in the judged set than in the whole training set.
        min_disagreement: ... and when the trained model disagrees with the given label of at
            least this share of the judged samples. A poisoned sample is mislabeled: once the
            backdoor is gone the model predicts its true class. Clean samples that were merely
            easy (a natural class such as CIFAR-10's ships fills the lowest-loss 5 % of a clean
            training set) are predicted as labeled; so are poisoned ones whose backdoor is
            still there, which is why that case is untrusted too.
        max_source_share: ... and when, among the judged samples of that class the model
            disagrees with, no single predicted class holds more than this share. An all-to-one
            poison set drawn from every class is predicted as its many true classes once the
            backdoor is gone; an easy natural class that the isolation (and DLP's unlearning)
            took away is predicted as one neighbour (CIFAR-10: ships → airplanes).
            When one class does take more than this share, the persistence test tells the
            two ways that happens apart in the report's warning (the status stays
            ``isolation-doubtful`` either way).
        persistence_mix: the persistence test mixes each of those samples with training
            images of other classes, ``(1 - persistence_mix) * x + persistence_mix * other``,
            and counts how often the model still predicts that one class; it does the same
            for images of that class which the model predicts as their label.
        min_persistence_gap: when the one class survives the mixing at least this much more
            often than that class's own images do, a shared input component (a trigger)
            still drives the model: the backdoor was redirected to that class, not removed
            (``IsolationReport.trigger_persists``). Measured on CIFAR-10 (seed 0) with
            FixMatch on every flagged sample (DLP ``ssl_flagged="all"``): Blended and SIG redirected
            to one class kept it in 70 % and 97 % of mixes against 21 % and 28 % for that
            class's own images; a natural neighbour (clean data, ships → airplanes) in 36 %
            against 34 %.
        max_asr: with a test set, a trigger and a target: the status is ``backdoor-remains``
            when the trigger sends more than this share of the test images (those not of the
            target class) to the target *beyond* the share the model sends there without
            the trigger (``TrainingReport.asr_without_trigger``). The raw ASR would call a
            model biased towards the target backdoored: DLP on a clean CIFAR-10 set predicts
            airplanes for 11.5 % of the other test images, with the BadNets patch or without
            (ASR 11.3 %, no backdoor); a backdoor adds tens of points. Same default as the
            deployment gate's ``max_asr`` (which judges the raw ASR).
        max_trigger_share: ... or when it moves at least this share of them to one other
            class (images of that class not counted): a backdoor redirected, not removed.
            Models trained without the poison moved at most 36 % of the triggered CIFAR-10
            test images to one class (SIG, a strong perturbation for a 65 %-accurate model;
            Blended 18-21 %); backdoors that DLP redirected 84-89 %.
        max_steps: stop after this many optimisation steps (``None`` = the schedule decides);
            a run cut short has status ``budget-exhausted``.
        max_seconds: stop after this much wall time (checked between steps); same status.
    """

    batch_size: Annotated[int, Field(ge=1)] = 128
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    augment: bool = True
    judge_ratio: Annotated[float, Field(gt=0, le=1)] = 0.05
    min_dominant_share: Annotated[float, Field(gt=0, le=1)] = 0.4
    min_concentration: Annotated[float, Field(ge=1)] = 1.25
    min_disagreement: Annotated[float, Field(ge=0, le=1)] = 0.5
    max_source_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    persistence_mix: Annotated[float, Field(gt=0, lt=1)] = 0.5
    min_persistence_gap: Annotated[float, Field(gt=0, le=1)] = 0.25
    max_asr: Annotated[float, Field(ge=0, le=1)] = 0.10
    max_trigger_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    max_steps: Annotated[int, Field(ge=1)] | None = None
    max_seconds: Annotated[float, Field(gt=0)] | None = None

    def train_config(self, epochs: int, **changes: Any) -> TrainConfig:
        """The :class:`~hardenkit.training.TrainConfig` of a supervised stage."""
        fields: dict[str, Any] = {
            "epochs": epochs,
            "batch_size": self.batch_size,
            "optimizer": "sgd",
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "schedule": "cosine",
            "augment": self.augment,
        }
        fields.update(changes)
        return TrainConfig(**fields)


@dataclass
class RobustContext:
    """What a strategy gets from the trainer.

    ``model`` is the working copy (trained in place and returned); ``x``/``y`` the untrusted
    training set on ``device`` (``x`` uint8 or float pixels in [0, 1]).
    """

    model: nn.Module
    num_classes: int
    x: Tensor
    y: Tensor
    device: torch.device
    runtime: RuntimeConfig
    budget: RobustBudget
    progress: ProgressCallback
    notes: list[str] = field(default_factory=list)
    poison_indices: Tensor | None = None
    """True poison indices when the caller gave them: **only** for the report's isolation
    history (precision/recall); a strategy must never use them to decide anything."""
    dist: Distributed | None = None
    """The data-parallel context under ``torchrun`` (pass it to
    :func:`~hardenkit.training.train_model`); ``None`` in a single process."""


@dataclass
class StageRecord:
    """One stage as measured by a strategy (turned into a :class:`StageReport`)."""

    name: str
    seconds: float
    epochs: int = 0
    steps: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RobustOutcome:
    """What a strategy returns.

    ``suspected`` are the indices (into the training set) the strategy finally treated as
    poisoned (empty for strategies that isolate nothing); ``scores`` one suspicion score per
    sample (higher = more suspicious) or ``None``.
    """

    model: nn.Module
    suspected: Tensor
    scores: Tensor | None
    stages: list[StageRecord] = field(default_factory=list)
    epochs: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    isolation_history: list[dict[str, Any]] = field(default_factory=list)


class RobustStrategy(ABC):
    """A robust-training method. Subclasses set ``name``, ``config_cls`` and ``isolates``."""

    name: ClassVar[str]
    config_cls: ClassVar[type[RobustConfig]] = RobustConfig
    isolates: ClassVar[bool] = True
    """Whether the strategy isolates suspected samples (``plain`` does not)."""

    def __init__(self, config: RobustConfig | dict[str, Any] | None = None) -> None:
        self.config = parse_config(self.config_cls, config)

    @abstractmethod
    def fit(self, ctx: RobustContext) -> RobustOutcome:
        """Train ``ctx.model`` on ``(ctx.x, ctx.y)`` and return it with the suspected set."""

    def estimate_epochs(self) -> float:
        """Full-data epoch equivalents of the schedule (for a rough time estimate)."""
        return 1.0


TRAINERS: Registry[type[RobustStrategy]] = Registry(
    "robust-training strategy", entry_point_group="hardenkit.trainers"
)


# --- scoring and isolation ----------------------------------------------------------------


ScoreKind = Literal["loss", "entropy"]


@torch.no_grad()
def sample_scores(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    runtime: RuntimeConfig,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample ``(cross-entropy, predictive entropy, correct)`` of ``model`` on ``(x, y)``.

    On the CPU, float32; non-finite losses raise :class:`~hardenkit.errors.NonFiniteError`.
    """
    logits = predict(model, x, batch_size=batch_size, runtime=runtime, where="sample scoring")
    yc = y.cpu()
    ce = F.cross_entropy(logits, yc, reduction="none")
    logp = F.log_softmax(logits, dim=1)
    ent = -(logp.exp() * logp).sum(1)
    if not bool(torch.isfinite(ce).all()) or not bool(torch.isfinite(ent).all()):
        raise NonFiniteError(
            "per-sample losses are not finite while scoring the training set.",
            hint="lower the learning rate or check the data",
        )
    return ce, ent, logits.argmax(1) == yc


def select_suspects(
    suspicion: Tensor,
    labels: Tensor,
    *,
    ratio: float | None,
    threshold: float | None,
    per_class: bool,
    num_classes: int,
) -> Tensor:
    """Indices (sorted) of the suspected samples: the top ``ratio`` by ``suspicion`` (higher =
    more suspicious) globally or within each class, or those with ``suspicion > threshold``.

    Example:
        >>> import torch
        >>> s = torch.tensor([0.9, 0.1, 0.8, 0.2]); y = torch.tensor([0, 0, 1, 1])
        >>> select_suspects(s, y, ratio=0.5, threshold=None, per_class=False, num_classes=2)
        tensor([0, 2])
        >>> select_suspects(s, y, ratio=None, threshold=0.5, per_class=False, num_classes=2)
        tensor([0, 2])
    """
    n = len(suspicion)
    if threshold is not None:
        return torch.nonzero(suspicion > threshold).flatten()
    r = 0.0 if ratio is None else ratio
    if not per_class:
        k = min(n, max(1, round(r * n))) if r > 0 else 0
        return torch.sort(torch.topk(suspicion, k).indices).values
    picks: list[Tensor] = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) == 0:
            continue
        k = min(len(idx), max(1, round(r * len(idx)))) if r > 0 else 0
        picks.append(idx[torch.topk(suspicion[idx], k).indices])
    if not picks:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(torch.cat(picks)).values


def isolation_metrics(
    suspected: Tensor | Sequence[int], poison: Tensor | Sequence[int]
) -> tuple[float | None, float | None]:
    """``(precision, recall)`` of the suspected indices against the true poison indices.

    Precision is ``None`` when nothing is suspected, recall ``None`` when there is no poison.
    """
    s = set(torch.as_tensor(suspected, dtype=torch.int64).tolist())
    p = set(torch.as_tensor(poison, dtype=torch.int64).tolist())
    hit = len(s & p)
    precision = hit / len(s) if s else None
    recall = hit / len(p) if p else None
    return precision, recall


def prediction_source(
    labels: Tensor, pred: Tensor, num_classes: int
) -> tuple[int, Tensor, int | None, float | None]:
    """Where the model sends the samples of the set's dominant label it disagrees with.

    Returns ``(dom, off, source, share)``: the most common label, the mask of samples of that
    label predicted as another class, the most common such prediction and its share of them
    (``None`` when there are none). Poison drawn from every class spreads over its true
    classes; a natural neighbour class, or images that share a trigger, collapse into one.
    """
    dom = int(torch.bincount(labels, minlength=num_classes).argmax())
    off = (labels == dom) & (pred != labels)
    if not bool(off.any()):
        return dom, off, None, None
    hist = torch.bincount(pred[off], minlength=num_classes)
    src = int(hist.argmax())
    return dom, off, src, int(hist[src]) / int(off.sum())


def isolation_record(
    ctx: RobustContext, suspected: Tensor, *, epoch: int, stage: str, **extra: Any
) -> dict[str, Any]:
    """One row of the isolation history: size, most common class and its share (precision and
    recall only when poison indices are known)."""
    rec: dict[str, Any] = {"stage": stage, "epoch": epoch, "suspected": len(suspected), **extra}
    if len(suspected):
        hist = torch.bincount(ctx.y.cpu()[suspected.cpu()], minlength=ctx.num_classes)
        rec["dominant_class"] = int(hist.argmax())
        rec["dominant_share"] = float(hist.max()) / len(suspected)
    if ctx.poison_indices is not None:
        rec["precision"], rec["recall"] = isolation_metrics(suspected, ctx.poison_indices)
    return rec


def finite_or_raise(value: Tensor, where: str) -> None:
    """Raise :class:`NonFiniteError` when the scalar ``value`` is NaN or infinite."""
    if not math.isfinite(float(value.detach())):
        raise NonFiniteError(
            f"the {where} loss is not finite ({float(value.detach())}).",
            hint="lower the learning rate (or the unlearning rate) or check the data",
        )


LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


# --- the report ---------------------------------------------------------------------------


class StageReport(BaseModel):
    """One stage of a robust-training run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    seconds: float
    epochs: int
    steps: int
    details: dict[str, Any] = Field(default_factory=dict)


class IsolationReport(BaseModel):
    """The suspected (isolated) set: size, class histogram and, with known poison, quality."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    suspected: int
    fraction: float
    class_histogram: list[int]
    """Class histogram of the (final) suspected set."""
    dominant_class: int | None
    dominant_share: float | None
    """Share of the judged set (see ``judged_on``) held by its most common class."""
    concentration: float | None = None
    """``dominant_share`` divided by the dominant class's share of the whole training set."""
    disagreement: float | None = None
    """Share of the judged set whose prediction by the trained model differs from its given
    label (high for mislabeled = poisoned samples once the backdoor is gone)."""
    source_class: int | None = None
    """The most common prediction of those samples (``None`` when there are none)."""
    source_share: float | None = None
    """Among the judged samples of the dominant class that the trained model disagrees with,
    the share of its most common prediction (``None`` when there are none): low for a poison
    set drawn from every class, high for an easy natural class the isolation took away."""
    persistence: float | None = None
    """Measured only when ``source_share > max_source_share``: the share of those samples,
    mixed with other classes' images (``persistence_mix``), still predicted as
    ``source_class``."""
    natural_persistence: float | None = None
    """The same share for images of ``source_class`` the model predicts as their label."""
    trigger_persists: bool | None = None
    """``persistence - natural_persistence >= min_persistence_gap``: a shared input component
    (a trigger) still drives the model to ``source_class`` — a redirected backdoor (``None``
    when not measured)."""
    looks_like_poison: bool | None
    """``dominant_share >= min_dominant_share``, ``concentration >= min_concentration``,
    ``disagreement >= min_disagreement`` and ``source_share <= max_source_share``; ``None``
    when nothing was suspected."""
    judged_on: Literal["suspected", "highest-loss"] = "suspected"
    """The set the poison-likeness check looked at: the whole suspected set, or (when it is
    larger than ``judge_ratio`` of the training set) its highest-loss part under the trained
    model."""
    judged_size: int | None = None
    """Size of the judged set."""
    true_poison: int | None = None
    """Number of true poison indices given (``None``: not given)."""
    poison_indices_source: Literal["argument", "dataset", "none"] = "none"
    precision: float | None = None
    recall: float | None = None


Isolation = IsolationReport


class TrainingReport(BaseReport):
    """What a robust training run did and measured."""

    SCHEMA_VERSION: ClassVar[str] = "1.0"

    report_type: str = "robust-training"
    strategy: str
    status: TrainingStatus
    """See :data:`hardenkit.robust.base.TrainingStatus`."""
    config: dict[str, Any]
    runtime: dict[str, Any]
    num_classes: int
    num_samples: int
    class_counts: list[int]
    epochs: int
    steps: int
    budget_exhausted: bool
    seconds: float
    stages: list[StageReport]
    isolation: IsolationReport | None
    """``None`` for strategies that isolate nothing (``plain``)."""
    isolation_history: list[dict[str, Any]] = Field(default_factory=list)
    """Every (re-)scoring of the split: stage, epoch, size, moves, precision/recall."""
    ba: float | None = None
    """Benign accuracy on the ``test`` set (``None`` without one)."""
    asr: float | None = None
    """Attack success rate of ``trigger`` → ``target`` on the test images not of the target
    class (``None`` without a test set, trigger and target)."""
    ra: float | None = None
    """Robust accuracy: the share of those triggered images still classified correctly."""
    trigger_top_class: int | None = None
    """The class the trigger sends most of those images to (the target, while the backdoor is
    there; another class when a defence redirected it)."""
    trigger_top_share: float | None = None
    """The share of those images sent to ``trigger_top_class``."""
    asr_without_trigger: float | None = None
    """The share of the same images the model predicts as the target *without* the trigger:
    its own bias, the floor under ``asr``; ``asr - asr_without_trigger`` is what the trigger
    does (judged against ``max_asr``)."""
    test_images: int = 0
    input_model: ModelFingerprint
    output_model: ModelFingerprint
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)
    peak_memory_mb: dict[str, float] = Field(default_factory=dict)
    """Peak memory in MiB: ``process_rss`` (maximum resident set; under ``torchrun`` the
    maximum over the ranks) and, on CUDA, ``cuda_allocated``."""
    distributed: DistributedInfo = Field(default_factory=DistributedInfo)
    """World size and backend of a ``torchrun`` run (``world_size`` 1 otherwise)."""

    def summary(self) -> str:
        """A few human-readable lines."""

        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.2f}%"

        lines = [
            f"robust training ({self.strategy}): status {self.status}, {self.epochs} epoch(s), "
            f"{self.steps} step(s), {self.seconds:.1f}s",
            "  stages: " + ", ".join(f"{s.name} {s.seconds:.1f}s" for s in self.stages),
        ]
        iso = self.isolation
        if iso is not None:
            line = f"  suspected: {iso.suspected} of {self.num_samples} ({100 * iso.fraction:.1f}%)"
            if iso.precision is not None or iso.recall is not None:
                line += f", precision {pct(iso.precision)}, recall {pct(iso.recall)}"
            lines.append(line)
            if iso.judged_size is not None:
                lines.append(
                    f"  poison-likeness ({iso.judged_size} "
                    + ("suspected" if iso.judged_on == "suspected" else "worst-fitted suspected")
                    + f"): class {iso.dominant_class} holds {pct(iso.dominant_share)}, "
                    f"model disagrees with {pct(iso.disagreement)}, one prediction "
                    f"({iso.source_class}) takes {pct(iso.source_share)}"
                    + (
                        ""
                        if iso.persistence is None
                        else f" and survives mixing in {pct(iso.persistence)} (its own "
                        f"class: {pct(iso.natural_persistence)})"
                    )
                    + " -> "
                    + (
                        "looks like poison"
                        if iso.looks_like_poison
                        else "does not look like poison"
                    )
                )
        if self.test_images:
            line = f"  test: BA {pct(self.ba)}, ASR {pct(self.asr)}"
            if self.asr_without_trigger is not None:
                line += f" ({pct(self.asr_without_trigger)} without the trigger)"
            if self.ra is not None:
                line += (
                    f", RA {pct(self.ra)}, triggered images mostly to class "
                    f"{self.trigger_top_class} ({pct(self.trigger_top_share)})"
                )
            lines.append(line)
        lines += [f"  WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)

"""Detector plug-in interface: one detector = one class + one pydantic config + a registry entry.

A detector runs in two phases: :meth:`Detector.invert` optimises a trigger (or a margin, ...)
for each candidate label of ``ctx.labels`` and returns an :class:`Inversion` (the per-label
evidence only); :meth:`Detector.decide` turns the inversion of *every* candidate label into
the model-level verdict (MAD outlier test, p-value, score). :meth:`Detector.detect` is
``decide(invert(ctx))``. A detector whose labels are inverted independently of each other
(``shardable = True``) can then be split by label over ``torchrun`` ranks: each rank inverts
its share, the :class:`Inversion` objects are gathered and joined with :meth:`Detector.merge`,
and :meth:`Detector.decide` runs on the whole. Third-party detectors may implement
:meth:`Detector.detect` alone; the Scanner then runs them whole.
"""

from __future__ import annotations

import math
import time
from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Protocol, cast

import torch
from pydantic import Field
from torch import Tensor, nn

from .._utils.progress import ProgressCallback
from ..config import HardenkitConfig, parse_config
from ..logging import get_logger
from ..registry import Registry
from ..triggers import Trigger
from .anomaly import AnomalyStats, log_values, logistic_score, mad_anomaly, ratio_scale_floor

__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorConfig",
    "DetectorContext",
    "DetectorOutput",
    "Inversion",
    "TriggerSizeDetector",
    "decide_on_log_sizes",
    "images_per_pass",
    "inversion_images",
    "mad_output",
    "targeted_ce",
]


class DetectorConfig(HardenkitConfig):
    """Fields shared by every detector's config.

    Attributes:
        score_slope: slope of the logistic map from the detector's evidence to its score
            (``score = sigmoid(slope * (evidence - decision threshold))``).
    """

    score_slope: Annotated[float, Field(gt=0)] = 2.0


@dataclass
class DetectorContext:
    """What a detector gets from the Scanner (the model is a frozen eval-mode copy)."""

    model: nn.Module
    num_classes: int
    image_shape: tuple[int, int, int]
    device: torch.device
    amp: bool
    seed: int
    x: Tensor | None
    """Clean inversion images (float [0, 1], on ``device``); ``None`` in data-free mode."""
    y: Tensor | None
    labels: list[int]
    """Candidate target labels to examine (all classes unless the user restricted them); under
    ``torchrun`` this rank's share of them."""
    progress: ProgressCallback
    deadline: float | None = None
    """``time.perf_counter()`` value after which a detector stops optimising (the scan's
    ``max_seconds``); it then sets ``info["budget_exhausted"] = True`` in its output."""
    x_holdout: Tensor | None = None
    """The scan's held-out clean images (kept out of inversion to measure the recovered
    triggers); detectors that optimise nothing on the images (``prediction-share``) may use
    them as well. ``None`` when there are none."""
    y_holdout: Tensor | None = None
    all_labels: list[int] | None = None
    """Every candidate label of the scan when ``labels`` is one rank's share of them
    (``None``: ``labels`` is the whole list). Detectors draw their random initialisations for
    all of them and take the rows of ``labels`` (:meth:`label_positions`), so a label starts
    from the same point whichever rank inverts it."""

    def out_of_time(self) -> bool:
        """True once the scan's wall-time budget is used up."""
        return self.deadline is not None and time.perf_counter() > self.deadline

    @property
    def num_all_labels(self) -> int:
        """How many candidate labels the whole scan has (``len(all_labels or labels)``)."""
        return len(self.labels if self.all_labels is None else self.all_labels)

    def label_positions(self) -> list[int]:
        """The position of each of ``labels`` in :attr:`all_labels` (``0..n-1`` without it).

        >>> import torch
        >>> ctx = DetectorContext(model=torch.nn.Identity(), num_classes=5,
        ...     image_shape=(1, 2, 2), device=torch.device("cpu"), amp=False, seed=0, x=None,
        ...     y=None, labels=[4, 1], progress=lambda *a, **k: None, all_labels=[0, 1, 2, 4])
        >>> ctx.label_positions(), ctx.num_all_labels
        ([3, 1], 4)
        """
        if self.all_labels is None:
            return list(range(len(self.labels)))
        where = {y: i for i, y in enumerate(self.all_labels)}
        return [where[y] for y in self.labels]


@dataclass
class Inversion:
    """The per-label evidence of one detector for some candidate labels (:meth:`Detector.invert`).

    Everything here is per label, so the inversions of disjoint label sets join into one
    (:meth:`Detector.merge`); the model-level decision (:meth:`Detector.decide`) needs them all.
    """

    detector: str
    statistic: str
    """Name of the per-label statistic (``mask_l1``, ``max_margin``)."""
    suspicious_side: Literal["low", "high"]
    labels: list[int]
    """The labels covered, in the scan's order."""
    values: dict[int, float]
    """Per label: the statistic."""
    seconds: float
    """Wall time of the inversion (the longest rank's when merged)."""
    triggers: dict[int, Trigger] = field(default_factory=dict)
    per_label: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Extra per-label columns (e.g. ``reached_threshold``, ``epochs``)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Run-level facts (e.g. ``budget_exhausted``, ``images``)."""

    @property
    def budget_exhausted(self) -> bool:
        return bool(self.info.get("budget_exhausted"))


@dataclass
class DetectorOutput:
    """The per-label evidence of one detector plus its model-level decision inputs."""

    detector: str
    statistic: str
    """Name of the per-label statistic (``mask_l1``, ``max_margin``)."""
    suspicious_side: Literal["low", "high"]
    values: dict[int, float]
    """Per candidate label: the statistic."""
    anomaly_per_label: dict[int, float]
    anomaly_index: float
    evidence: float
    """The model-level evidence compared with ``threshold`` (e.g. the MAD anomaly index)."""
    threshold: float
    flagged: list[int]
    score: float
    seconds: float
    p_value: float | None = None
    triggers: dict[int, Trigger] = field(default_factory=dict)
    per_label: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Extra per-label columns (e.g. ``reached_threshold``, ``epochs``)."""
    info: dict[str, Any] = field(default_factory=dict)


class Detector(ABC):
    """A model-level backdoor detector.

    Subclasses set ``name``, ``config_cls`` and ``needs_data`` (``False`` for data-free
    detectors) and implement either :meth:`invert` and :meth:`decide` (the two phases; set
    ``shardable = True`` when each label's inversion is independent of the other labels) or
    :meth:`detect` alone. Register with ``DETECTORS.register(name, cls)`` or through the
    ``hardenkit.detectors`` entry-point group.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[DetectorConfig]] = DetectorConfig
    needs_data: ClassVar[bool] = True
    shardable: ClassVar[bool] = False
    """True when :meth:`invert` treats every label on its own — same result for a label
    whether it is inverted with all the others or with a subset (up to float rounding) — so
    the Scanner may split the labels over ``torchrun`` ranks. Needs :meth:`invert` and
    :meth:`decide`."""

    def __init__(self, config: DetectorConfig | dict[str, Any] | None = None) -> None:
        self.config = parse_config(self.config_cls, config)

    def detect(self, ctx: DetectorContext) -> DetectorOutput:
        """Examine ``ctx.model`` and return the evidence (never modifies the model).

        The default is ``decide(invert(ctx))``; a detector that does not split into the two
        phases overrides this method instead.
        """
        return self.decide(self.invert(ctx))

    def invert(self, ctx: DetectorContext) -> Inversion:
        """The per-label evidence for the labels ``ctx.labels`` (phase 1)."""
        raise NotImplementedError(
            f"detector {type(self).__name__} implements neither invert() nor detect()"
        )

    def decide(self, inversion: Inversion) -> DetectorOutput:
        """The model-level decision from the inversion of every candidate label (phase 2)."""
        raise NotImplementedError(f"detector {type(self).__name__} has no decide()")

    @classmethod
    def splits_into_phases(cls) -> bool:
        """True when the class overrides both :meth:`invert` and :meth:`decide`."""
        return cls.invert is not Detector.invert and cls.decide is not Detector.decide

    def merge(self, parts: Sequence[Inversion], labels: Sequence[int]) -> Inversion:
        """Join the inversions of disjoint label sets into one covering ``labels`` (in that order).

        Per-label entries are united; ``seconds`` is the longest part's (the parts ran at the
        same time on different ranks). ``info``: ``budget_exhausted`` is true when any part's
        is (fail closed); any other key keeps its value when every part agrees, else takes
        the largest number (e.g. steps done) or the list of the parts' values.
        """
        if not parts:
            raise ValueError("merge needs at least one inversion")
        values: dict[int, float] = {}
        triggers: dict[int, Trigger] = {}
        per_label: dict[int, dict[str, Any]] = {}
        for part in parts:
            values.update(part.values)
            triggers.update(part.triggers)
            per_label.update(part.per_label)
        missing = [y for y in labels if y not in values]
        if missing:
            raise ValueError(f"{self.name}: no inversion of label(s) {missing}")
        keys = list(dict.fromkeys(k for part in parts for k in part.info))
        info: dict[str, Any] = {}
        for key in keys:
            seen = [part.info[key] for part in parts if key in part.info]
            if key == "budget_exhausted":
                info[key] = any(bool(v) for v in seen)
            elif all(v == seen[0] for v in seen):
                info[key] = seen[0]
            elif all(_is_number(v) for v in seen):
                info[key] = max(seen)
            else:
                info[key] = seen
        first = parts[0]
        return Inversion(
            detector=first.detector,
            statistic=first.statistic,
            suspicious_side=first.suspicious_side,
            labels=list(labels),
            values={y: values[y] for y in labels},
            seconds=max(part.seconds for part in parts),
            triggers={y: triggers[y] for y in labels if y in triggers},
            per_label={y: per_label[y] for y in labels if y in per_label},
            info=info,
        )


class _SizeDecisionConfig(Protocol):
    @property
    def anomaly_threshold(self) -> float: ...
    @property
    def max_median_ratio(self) -> float | None: ...
    @property
    def score_slope(self) -> float: ...


class TriggerSizeDetector(Detector):
    """A trigger inversion that decides on the *sizes* of its per-label triggers (``pixel``,
    ``warp``, ``signal``): :func:`decide_on_log_sizes` with the config's
    ``anomaly_threshold``, ``max_median_ratio`` and ``score_slope``. Each label's trigger is
    inverted independently of the others (``shardable``)."""

    shardable: ClassVar[bool] = True

    def size_statistic(self, inversion: Inversion) -> str:
        """The tested quantity's name in the output's ``info`` (``log-<statistic>``)."""
        return f"log-{inversion.statistic}"

    def decide(self, inversion: Inversion) -> DetectorOutput:
        cfg = cast(_SizeDecisionConfig, self.config)
        out = decide_on_log_sizes(
            inversion,
            threshold=cfg.anomaly_threshold,
            max_median_ratio=cfg.max_median_ratio,
            score_slope=cfg.score_slope,
            statistic=self.size_statistic(inversion),
        )
        get_logger(f"scan.{self.name}").debug(
            f"scan.{self.name}_done", sizes=list(out.values.values()), flagged=out.flagged
        )
        return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def decide_on_log_sizes(
    inversion: Inversion,
    *,
    threshold: float,
    max_median_ratio: float | None,
    score_slope: float,
    statistic: str,
) -> DetectorOutput:
    """The decision of a trigger-*size* detector (``pixel``, ``warp``): the floored MAD test
    on the logarithms of the per-label sizes (low side), where only a label whose trigger
    reached the attack threshold (``per_label[y]["reached_threshold"]``) may be flagged; an
    outlier that never reached it caps the score below 0.5.

    ``statistic`` names the tested quantity in ``info`` (e.g. ``log-pixels``).
    """
    t0 = time.perf_counter()
    labels = list(inversion.labels)
    sizes = [inversion.values[lab] for lab in labels]
    reached = [bool(inversion.per_label[lab]["reached_threshold"]) for lab in labels]
    floor = ratio_scale_floor(max_median_ratio, threshold)
    stats = mad_anomaly(
        log_values(sizes), side="low", threshold=threshold, labels=labels, min_scale=floor
    )
    flagged = [lab for lab in stats.flagged if reached[labels.index(lab)]]
    score = logistic_score(stats.index, threshold, score_slope)
    if stats.flagged and not flagged:
        score = min(score, 0.49)
    return mad_output(
        inversion,
        stats,
        threshold=threshold,
        flagged=flagged,
        score=score,
        started=t0,
        info={"scale_floor": floor, "statistic": statistic},
    )


def mad_output(
    inversion: Inversion,
    stats: AnomalyStats,
    *,
    threshold: float,
    flagged: list[int],
    score: float,
    started: float,
    info: dict[str, Any],
) -> DetectorOutput:
    """The :class:`DetectorOutput` of an inversion decided by a MAD test (``stats``): the
    anomaly index is the evidence; ``info`` (the decision's facts) follows the MAD's median
    and scale, then the inversion's own info, with ``budget_exhausted`` last; ``started`` is
    the decision's ``time.perf_counter()`` start, added to the inversion's seconds."""
    labels = list(inversion.labels)
    inv_info = dict(inversion.info)
    budget_exhausted = bool(inv_info.pop("budget_exhausted", False))
    return DetectorOutput(
        detector=inversion.detector,
        statistic=inversion.statistic,
        suspicious_side=inversion.suspicious_side,
        values={y: inversion.values[y] for y in labels},
        anomaly_per_label=dict(zip(labels, stats.per_label, strict=True)),
        anomaly_index=stats.index,
        evidence=stats.index,
        threshold=threshold,
        flagged=flagged,
        score=score,
        seconds=inversion.seconds + time.perf_counter() - started,
        triggers=dict(inversion.triggers),
        per_label=dict(inversion.per_label),
        info={
            "median": stats.median,
            "mad": stats.mad,
            **info,
            **inv_info,
            "budget_exhausted": budget_exhausted,
        },
    )


def images_per_pass(setting: int | Literal["auto"], device: torch.device) -> int:
    """A detector's ``max_images_per_step``: ``"auto"`` is 4,096 on CUDA and 128 on CPU, where
    convolution throughput falls for larger batches (benchmarks/results/scanner_cpu_*.md).

    >>> images_per_pass("auto", torch.device("cpu")), images_per_pass(64, torch.device("cpu"))
    (128, 64)
    """
    if setting == "auto":
        return 4096 if device.type == "cuda" else 128
    return int(setting)


def inversion_images(
    ctx: DetectorContext, max_images: int | None, who: str = "an inversion"
) -> tuple[Tensor, Tensor]:
    """The clean images ``(x, y)`` an inversion detector optimises on: all of the scan's, or a
    class-stratified subsample of ``max_images`` (seeded by the scan's seed). ``ValueError``
    naming ``who`` (the detector) without clean images (the Scanner checks this first)."""
    if ctx.x is None or ctx.y is None:
        raise ValueError(f"{who} needs clean images")
    x, y = ctx.x, ctx.y
    if max_images is not None and len(x) > max_images:
        from ..data.sampling import stratified_indices

        sub = stratified_indices(
            y.cpu(), fraction=max_images / len(x), seed=ctx.seed, num_classes=ctx.num_classes
        ).to(x.device)
        x, y = x[sub], y[sub]
    return x, y


def targeted_ce(
    ctx: DetectorContext, stamped: Tensor, yb: Tensor, pred0: Tensor, target: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward pass of a batched inversion step: ``stamped`` holds the batch ``yb`` stamped
    with each of ``L = len(target)`` candidate triggers, label-major (``L × B`` images).

    Returns, per candidate, the mean cross-entropy towards its target over the images that
    count (of another class and not already predicted as the target: a label the model
    predicts for almost everything is then not "reached" by a zero trigger), how many count,
    and how many of them the stamped image sends to the target.
    """
    lab, b = len(target), len(yb)
    keep = (yb.unsqueeze(0) != target.unsqueeze(1)) & (pred0.unsqueeze(0) != target.unsqueeze(1))
    keep_f = keep.float()
    images = stamped.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
        logits = ctx.model(images)
    logits = logits.float()
    ce = torch.nn.functional.cross_entropy(
        logits, target.repeat_interleave(b), reduction="none"
    ).view(lab, b)
    count = keep_f.sum(1)
    with torch.no_grad():
        hits = ((logits.argmax(1).view(lab, b) == target.unsqueeze(1)).float() * keep_f).sum(1)
    return (ce * keep_f).sum(1) / count.clamp(min=1), count, hits


DETECTORS: Registry[type[Detector]] = Registry("detector", entry_point_group="hardenkit.detectors")

"""The Scanner facade: run one or more detectors and combine them into one calibrated verdict."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from .._utils.distributed import Distributed, distributed_info
from .._utils.distributed import setup as setup_distributed
from .._utils.finite import ensure_finite_values
from .._utils.model_checks import check_model
from .._utils.probabilities import log_probabilities_hook, returns_probabilities
from .._utils.progress import NullProgress, ProgressCallback, make_progress
from .._utils.seeding import seed_everything
from ..config import HardenkitConfig, RuntimeConfig, parse_config
from ..data.loaders import BatchSource, materialize
from ..data.sampling import stratified_indices, stratified_split
from ..errors import ConfigError, DataError, ModelCompatibilityError
from ..logging import get_logger
from ..reports import BaseReport, DistributedInfo, ModelFingerprint
from ..training import infer_num_classes, trigger_asr
from ..triggers import Trigger, as_trigger
from ..validate.metrics import ChanceCheck, chance_check_of
from .base import DETECTORS, Detector, DetectorContext, DetectorOutput, Inversion

__all__ = [
    "ClassScan",
    "DetectorClassRow",
    "DetectorReport",
    "LabelRecheck",
    "ScanConfig",
    "ScanReport",
    "ScanResult",
    "Scanner",
    "Verdict",
]

_log = get_logger("scan")

Verdict = Literal["clean", "suspicious", "backdoored"]
_SEVERITY: dict[str, int] = {"clean": 0, "suspicious": 1, "backdoored": 2}


class ScanConfig(HardenkitConfig):
    """What the Scanner runs and how it decides.

    Attributes:
        detectors: registered detector names, run in order (``hardenkit.scan.DETECTORS``):
            ``neural-cleanse`` (mask trigger inversion, needs clean data), ``pixel``
            (additive trigger inversion, needs clean data) and ``mm-bd`` (data-free
            max-margin test).
        detector_options: per-detector config overrides, e.g.
            ``{"neural-cleanse": {"epochs": 40}}``.
        combine: how several detectors' verdicts merge: ``any`` (the most severe verdict,
            score = max), ``all`` (the least severe, score = min, flagged labels intersected),
            ``mean`` (score = mean; verdict from that score).
        labels: candidate target labels (default: every class).
        max_images: clean images used for inversion (a stratified subsample; the original
            Neural Cleanse used 1,000). ``None`` uses all of them.
        holdout_fraction: share of the clean images kept out of inversion to measure each
            recovered trigger's attack success rate. ``0`` measures it on the inversion images.
        max_holdout_images: cap on those held-out images (a stratified subsample).
        min_images_per_class: fewer clean images than this in any class is an error.
        suspicious_score: scores in ``[suspicious_score, 0.5)`` give the verdict
            ``suspicious``; ``>= 0.5`` with a flagged label gives ``backdoored``.
        max_seconds: wall-time budget of the detectors together (checked between epochs /
            steps). A scan it cuts short has ``budget_exhausted = true`` in its report and a
            warning in its summary: a ``clean`` verdict from it is not conclusive (the CLI
            exits 1). ``None`` = the detectors' schedules decide. See
            :func:`hardenkit.scan.budget.scan_config_for_budget` for the CLI presets.
        require_above_chance: the model must be better than chance on the labelled
            clean images (the lower end of its accuracy's 95 % Wilson interval above the
            accuracy of predictions unrelated to the images, with the model's class
            frequencies; judged with at least 5 images per class). When it is not,
            the images do not fit the model (class order, pixel range, normalisation, the
            wrong weights): the inversions ran on inputs the model does not understand, so
            the report says ``above_chance = false`` and the verdict is not conclusive (the
            CLI exits 1). ``False``: recorded, never judged.
    """

    detectors: tuple[str, ...] = ("neural-cleanse",)
    detector_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    combine: Literal["any", "all", "mean"] = "any"
    labels: tuple[int, ...] | None = None
    max_images: Annotated[int | None, Field(ge=2)] = 1000
    holdout_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    max_holdout_images: Annotated[int | None, Field(ge=1)] = 1000
    min_images_per_class: Annotated[int, Field(ge=1)] = 5
    suspicious_score: Annotated[float, Field(gt=0, lt=0.5)] = 0.25
    max_seconds: Annotated[float, Field(gt=0)] | None = None
    require_above_chance: bool = True

    @field_validator("detectors")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("give at least one detector")
        if len(set(v)) != len(v):
            raise ValueError(f"detectors listed twice: {list(v)}")
        return v


class DetectorClassRow(BaseModel):
    """One label as one detector saw it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: int
    value: float
    anomaly_index: float
    flagged: bool
    extra: dict[str, Any] = Field(default_factory=dict)


class DetectorReport(BaseModel):
    """One detector's evidence and verdict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detector: str
    statistic: str
    suspicious_side: Literal["low", "high"]
    verdict: Verdict
    score: float
    anomaly_index: float
    evidence: float
    threshold: float
    p_value: float | None = None
    flagged_labels: list[int]
    seconds: float
    config: dict[str, Any]
    info: dict[str, Any] = Field(default_factory=dict)
    produces_triggers: bool = False
    """True for detectors that recover a trigger per label (Neural Cleanse)."""
    classes: list[DetectorClassRow]


class LabelRecheck(BaseModel):
    """One label of a scan made again on a (repaired) model, next to the scan before
    (:meth:`Scanner.recheck`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detector: str
    label: int
    statistic: str
    """The detector's per-label statistic (Neural Cleanse: ``mask_l1``, suspicious when low)."""
    value_before: float
    """The label's statistic in the scan before."""
    value_after: float
    """The label's statistic in the scan made again."""
    anomaly_before: float
    anomaly_after: float
    threshold: float
    flagged_after: bool
    """The detector flags the label in the scan made again."""
    most_extreme_after: bool
    """The label is still the detector's most extreme (Neural Cleanse: the smallest mask)."""
    verdict_after: Verdict
    """The detector's verdict in the scan made again."""
    budget_exhausted: bool = False


class ClassScan(BaseModel):
    """The per-class summary table of a scan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: int
    flagged: bool
    mask_l1: float | None = None
    """Neural Cleanse's inverted mask L1 norm (pixels) when that detector ran."""
    trigger_asr: float | None = None
    """Attack success rate of the recovered trigger on held-out clean non-``label`` images."""
    reached_threshold: bool | None = None
    max_margin: float | None = None
    trigger_pixels: float | None = None
    """PixelBackdoor's (``pixel``) smallest additive trigger size, in perturbed pixels."""
    warp_shift: float | None = None
    """The ``warp`` detector's smallest successful flow field (mean displacement, WaNet
    strength units); ``max_shift`` when no warp reached the label."""
    signal_rms: float | None = None
    """The ``signal`` detector's smallest successful smooth additive signal (RMS, pixel
    units in [0, 1]); 1.0 when no signal reached the label."""
    trigger_source: str | None = None
    """The detector whose recovered trigger ``trigger_asr`` measures (and purifiers get)."""


class ScanReport(BaseReport):
    """The JSON part of a scan: verdict, score, flagged labels, per-class table, timings."""

    report_type: str = "scan"
    verdict: Verdict
    score: float
    """In [0, 1]; >= 0.5 means backdoored. See docs/scanning.md for how it is made."""
    flagged_labels: list[int]
    num_classes: int
    candidate_labels: list[int]
    data_free: bool
    clean_images: dict[str, int]
    """``inversion`` and ``holdout`` image counts."""
    trigger_asr_on_holdout: bool
    combine: str
    detectors: list[DetectorReport]
    classes: list[ClassScan]
    config: dict[str, Any]
    runtime: dict[str, Any]
    model: ModelFingerprint
    timings: dict[str, float]
    budget_exhausted: bool = False
    """``max_seconds`` stopped a detector before its schedule ended: a verdict other than
    ``backdoored`` is then not conclusive."""
    calibration: dict[str, Any] | None = None
    """Where this model's anomaly indices fall among clean reference models
    (:mod:`hardenkit.scan.calibration`): ``combined_index`` (the largest index of the
    MAD-based detectors), ``clean_models``, ``clean_at_or_above`` (how many clean models
    scored at least as high), ``p_clean``, ``clean_max_index``, ``clean_flagged_at_threshold``
    (the reference's false positives at the threshold). ``None`` without a comparable
    reference."""
    distributed: DistributedInfo = Field(default_factory=DistributedInfo)
    """The ``torchrun`` ranks that shared the candidate labels (``world_size``, ``backend``);
    ``world_size`` 1 for a scan in one process. See docs/scale.md."""
    clean_accuracy: float | None = None
    """The model's accuracy on all the labelled clean images (``None`` when data-free)."""
    chance_accuracy: float | None = None
    """The accuracy of predictions unrelated to the images, with the model's own class
    frequencies (:class:`~hardenkit.validate.ChanceCheck`)."""
    above_chance: bool | None = None
    """``clean_accuracy``'s 95 % Wilson lower bound is above ``chance_accuracy``; ``False``:
    the images or labels do not fit the model and (with ``ScanConfig.require_above_chance``,
    the default) the verdict is not conclusive; ``None``: data-free, fewer than 5 images per
    class, or not checked."""

    model_outputs: Literal["logits", "probabilities"] = "logits"
    """``probabilities``: the model returns probability vectors (it ends in a softmax); the
    detectors ran on their logarithm — the logits up to a constant per image — since on the
    probabilities themselves their losses saturate."""

    @property
    def is_backdoored(self) -> bool:
        return self.verdict == "backdoored"

    @property
    def at_chance(self) -> bool:
        """The model was no better than chance on the clean images and the scan's
        config judges that (``require_above_chance``)."""
        return self.above_chance is False and bool(self.config.get("require_above_chance", True))

    @property
    def conclusive(self) -> bool:
        """False when a budget cut the scan short and it did not flag the model, or when the
        model was at chance on the clean images (:attr:`at_chance`)."""
        if self.at_chance:
            return False
        return self.verdict == "backdoored" or not self.budget_exhausted

    def summary(self) -> str:
        """A short human-readable summary."""
        lines = [
            f"verdict {self.verdict} (score {self.score:.3f}); flagged labels: "
            f"{self.flagged_labels or 'none'}"
        ]
        for d in self.detectors:
            evidence = (
                f"anomaly index {d.anomaly_index:.2f}"
                if d.p_value is None
                else f"p-value {d.p_value:.3g}"
            )
            lines.append(
                f"  {d.detector}: {d.verdict}, {evidence}, score {d.score:.3f}, {d.seconds:.1f}s"
            )
            if d.info.get("finding"):
                lines.append(f"    {d.info['finding']}")
            if d.info.get("underpowered"):
                lines.append(
                    f"    ({d.detector} could not flag any label with {d.info.get('images')} "
                    f"clean images: the smallest possible p-value is "
                    f"{float(d.info.get('smallest_possible_p', 1.0)):.3g}; pass more)"
                )
        cal = self.calibration
        if cal is not None:
            lines.append(
                f"  clean reference: {cal['clean_at_or_above']} of {cal['clean_models']} clean "
                f"models reached index {cal['combined_index']:.2f} (their largest: "
                f"{cal['clean_max_index']:.2f}; flagged at {cal['threshold']:g}: "
                f"{cal['clean_flagged_at_threshold']})"
            )
        if self.model_outputs == "probabilities":
            lines.append(
                "  note: the model returns probabilities (a final softmax): scanned on their "
                "logarithm (its logits up to a constant)"
            )
        if self.budget_exhausted:
            lines.append(
                "  WARNING: the time budget (max_seconds) cut the scan short"
                + ("" if self.verdict == "backdoored" else ": this verdict is NOT conclusive")
            )
        if self.above_chance is False and self.clean_accuracy is not None:
            lines.append(
                f"  WARNING: the model is no better than chance on the clean images "
                f"(accuracy {100 * self.clean_accuracy:.2f}% against "
                f"{100 * (self.chance_accuracy or 0.0):.2f}%): the images or labels do not fit "
                "it (class order, pixel range, normalisation, the wrong weights)"
                + (": this verdict is NOT conclusive" if self.at_chance else "")
            )
        return "\n".join(lines)


class ScanResult:
    """A scan's report plus its heavy artefacts (recovered triggers).

    Attributes:
        report: the :class:`ScanReport`.
        all_triggers: the recovered trigger of every candidate label: the first detector's
            that flagged it, else the first inverting detector's (Neural Cleanse's).
        inversions: every trigger-recovering detector's inversion of every label it inverted,
            ``{detector: {label: trigger}}`` (e.g. ``warp``'s flow field for a label whose
            ``all_triggers`` entry is Neural Cleanse's mask): what ``auto`` draws its
            candidate triggers from when the scan flags nothing.
        rank: this process's rank under ``torchrun`` (0 otherwise); every rank holds the same
            report and triggers, and only rank 0's :meth:`save` writes.
    """

    def __init__(
        self,
        report: ScanReport,
        all_triggers: dict[int, Trigger] | None = None,
        example: Tensor | None = None,
        *,
        rank: int = 0,
        inversions: Mapping[str, Mapping[int, Trigger]] | None = None,
    ) -> None:
        self.report = report
        self.all_triggers = dict(all_triggers or {})
        self._example = example
        self.rank = rank
        self.inversions = {d: dict(t) for d, t in (inversions or {}).items()}

    @property
    def verdict(self) -> Verdict:
        return self.report.verdict

    @property
    def example(self) -> Tensor | None:
        """One clean image ``(C, H, W)`` the figures stamp the triggers on (not saved: None
        after :meth:`load`)."""
        return self._example

    @property
    def score(self) -> float:
        return self.report.score

    @property
    def is_backdoored(self) -> bool:
        return self.report.is_backdoored

    @property
    def flagged_labels(self) -> list[int]:
        return list(self.report.flagged_labels)

    @property
    def triggers(self) -> dict[int, Trigger]:
        """Recovered triggers of the flagged labels (most anomalous first).

        Only labels that a trigger-recovering detector (Neural Cleanse) itself flagged have a
        trigger here: when only MM-BD flags a label, Neural Cleanse's inversion for that label
        was not anomalous and is not evidence of the backdoor, so it is not offered to
        purifiers. Results built with :meth:`from_triggers` return all their triggers.
        """
        # (``statistic == "mask_l1"`` also recognises Neural Cleanse in reports saved before
        # ``produces_triggers`` existed)
        makers = [
            d for d in self.report.detectors if d.produces_triggers or d.statistic == "mask_l1"
        ]
        if self.report.detectors:
            confirmed = {y for d in makers for y in d.flagged_labels}
        else:
            confirmed = set(self.flagged_labels)
        return {
            y: self.all_triggers[y]
            for y in self.flagged_labels
            if y in self.all_triggers and y in confirmed
        }

    @property
    def target(self) -> int | None:
        """The most anomalous flagged label that has a recovered trigger, if any."""
        return next(iter(self.triggers), None)

    @property
    def trigger(self) -> Trigger | None:
        """The recovered trigger of :attr:`target` (``None`` when nothing was flagged)."""
        t = self.target
        return None if t is None else self.all_triggers[t]

    def trigger_asr(self, label: int) -> float | None:
        """The held-out attack success rate of ``label``'s recovered trigger."""
        row = next((c for c in self.report.classes if c.label == label), None)
        return None if row is None else row.trigger_asr

    def save(self, directory: str | Path) -> Path:
        """Write ``report.json``, ``triggers/label_<y>.safetensors`` (:attr:`all_triggers`),
        ``triggers/<detector>/label_<y>.safetensors`` (the other :attr:`inversions`) and the
        PNG figures.

        Figures: ``flagged_label_<y>.png`` (the recovered trigger of each flagged label) and
        ``anomaly_<detector>.png`` (each detector's per-label bar chart); see docs/scanning.md.
        Under ``torchrun`` only rank 0 writes (every rank holds the same result).
        """
        from .figures import detector_chart, figure_name

        d = Path(directory)
        if self.rank != 0:
            return d
        d.mkdir(parents=True, exist_ok=True)
        for y, trig in self.all_triggers.items():
            trig.save(d / "triggers" / f"label_{y}.safetensors")
        for name, inv in self.inversions.items():
            for y, trig in inv.items():
                if trig is not self.all_triggers.get(y):
                    trig.save(d / "triggers" / name / f"label_{y}.safetensors")
        mask_l1 = {c.label: c.mask_l1 for c in self.report.classes}
        for y in self.flagged_labels:
            if y in self.all_triggers:
                _save_png(
                    self.all_triggers[y],
                    self._example,
                    d / f"flagged_label_{y}.png",
                    label=y,
                    mask_l1=mask_l1.get(y),
                    asr=self.trigger_asr(y),
                )
        for det in self.report.detectors:
            chart = detector_chart(det)
            if chart is not None:
                chart.save(d / figure_name(det.detector))
        self.report.save(d / "report.json")
        return d

    @classmethod
    def from_triggers(
        cls,
        triggers: Mapping[int, Trigger],
        *,
        model: nn.Module,
        num_classes: int,
        trigger_asr: Mapping[int, float] | None = None,
    ) -> ScanResult:
        """A "backdoored" scan result built from triggers you already know (no detection).

        Lets trigger-based purifiers (``mcl``, ``nc-unlearn``) use a known or externally
        recovered trigger: ``{target_label: trigger}``. ``trigger_asr`` (per label, on clean
        images) is what MCL's ``min_trigger_asr`` guard checks; when missing, it is measured
        on the purification images.

        >>> import torch, hardenkit as hk
        >>> m = hk.create_model("small-cnn", 4)
        >>> scan = ScanResult.from_triggers({1: hk.PatchTrigger.square(3)}, model=m, num_classes=4)
        >>> scan.verdict, scan.target
        ('backdoored', 1)
        """
        if not triggers:
            raise ConfigError("from_triggers needs at least one {label: trigger}.")
        bad = [y for y in triggers if not 0 <= int(y) < num_classes]
        if bad:
            raise ConfigError(f"trigger labels {bad} are outside [0, {num_classes}).")
        asr = dict(trigger_asr or {})
        labels = [int(y) for y in triggers]
        report = ScanReport(
            verdict="backdoored",
            score=1.0,
            flagged_labels=labels,
            num_classes=num_classes,
            candidate_labels=list(range(num_classes)),
            data_free=False,
            clean_images={"inversion": 0, "holdout": 0},
            trigger_asr_on_holdout=False,
            combine="user-supplied",
            detectors=[],
            classes=[
                ClassScan(label=y, flagged=y in labels, trigger_asr=asr.get(y))
                for y in range(num_classes)
            ],
            config={"source": "user-supplied triggers"},
            runtime={},
            model=ModelFingerprint.of(model),
            timings={"total_seconds": 0.0},
        )
        return cls(report, {int(y): as_trigger(t) for y, t in triggers.items()})

    @classmethod
    def load(cls, directory: str | Path) -> ScanResult:
        """Read a directory written by :meth:`save`."""
        d = Path(directory)
        path = d / "report.json"
        if not path.is_file():
            raise DataError(
                f"{path} not found.", hint="pass a directory written by ScanResult.save"
            )
        try:
            report = ScanReport.model_validate(json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path} is not a valid scan report: {exc}") from exc
        triggers = {
            int(p.stem.removeprefix("label_")): Trigger.load(p)
            for p in sorted((d / "triggers").glob("label_*.safetensors"))
        }
        inversions: dict[str, dict[int, Trigger]] = {}
        for c in report.classes:
            if c.trigger_source is not None and c.label in triggers:
                inversions.setdefault(c.trigger_source, {})[c.label] = triggers[c.label]
        for det in report.detectors:
            for p in sorted((d / "triggers" / det.detector).glob("label_*.safetensors")):
                y = int(p.stem.removeprefix("label_"))
                inversions.setdefault(det.detector, {})[y] = Trigger.load(p)
        return cls(report, triggers, inversions=inversions)

    def __repr__(self) -> str:
        return (
            f"ScanResult(verdict={self.verdict!r}, score={self.score:.3f}, "
            f"flagged={self.flagged_labels})"
        )


def _save_png(
    trigger: Trigger,
    example: Tensor | None,
    path: Path,
    *,
    label: int | None = None,
    mask_l1: float | None = None,
    asr: float | None = None,
) -> None:
    """Labelled panels of ``trigger`` (:func:`hardenkit.scan.figures.trigger_figure`)."""
    from .figures import trigger_figure

    img = trigger_figure(trigger, example, label=label, mask_l1=mask_l1, asr=asr)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def most_extreme_label(d: Any) -> int:
    """The label a detector report (a :class:`DetectorReport`, or anything with
    ``suspicious_side`` and ``classes`` of ``label``/``value``) ranks most extreme on its
    suspicious side — Neural Cleanse: the smallest mask.

    >>> from types import SimpleNamespace as S
    >>> most_extreme_label(S(suspicious_side="low", classes=[S(label=0, value=9.0),
    ...     S(label=1, value=2.0)]))
    1
    """
    sign = 1.0 if d.suspicious_side == "low" else -1.0
    return int(min(d.classes, key=lambda c: sign * c.value).label)


def _verdict(score: float, flagged: Sequence[int], suspicious: float) -> Verdict:
    if score >= 0.5 and flagged:
        return "backdoored"
    if score >= suspicious:
        return "suspicious"
    return "clean"


class Scanner:
    """Model-level backdoor scanner (Neural Cleanse batched over classes, MM-BD data-free).

    Args:
        model: any ``nn.Module`` mapping a [0, 1] pixel batch to logits. A frozen copy is
            scanned; the caller's model is never modified.
        num_classes: number of classes; checked against the model's output (default: read
            from the output).
        config: a :class:`ScanConfig` or dict (detectors, combination, data budget).
        runtime: device, seed, input normalization.
        input_shape: ``(C, H, W)``; needed only in data-free mode (no clean loader).
        progress: a progress callback (default: a tqdm bar on a TTY).

    Example:
        >>> import hardenkit as hk
        >>> model = hk.create_model("small-cnn", num_classes=4, normalization=None)
        >>> data = hk.data.make_synthetic_dataset(num_classes=4, train_per_class=20)
        >>> scan = hk.Scanner(model, num_classes=4, config={
        ...     "detector_options": {"neural-cleanse": {"epochs": 2}}}).run(data.train.loader())
        >>> scan.verdict in ("clean", "suspicious", "backdoored")
        True
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        *,
        config: ScanConfig | dict[str, Any] | None = None,
        runtime: RuntimeConfig | dict[str, Any] | None = None,
        input_shape: tuple[int, int, int] | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        inner = check_model(model, where="Scanner")
        if num_classes is not None and num_classes < 3:
            raise ConfigError(
                f"num_classes must be >= 3 for an outlier test across classes, got {num_classes}."
            )
        self.model = inner  # unwrapped from torch.compile / DataParallel; copied in run()
        self.num_classes = num_classes
        self.config = parse_config(ScanConfig, config)
        self.runtime = parse_config(RuntimeConfig, runtime)
        self.input_shape = input_shape
        self._progress = progress
        unknown = [d for d in self.config.detectors if d not in DETECTORS]
        if unknown:
            raise ConfigError(
                f"unknown detector(s) {unknown}; registered: {DETECTORS.names()}.",
                hint="install the plugin that provides it or fix the name",
            )
        extra = set(self.config.detector_options) - set(self.config.detectors)
        if extra:
            raise ConfigError(
                f"detector_options given for {sorted(extra)}, which are not in detectors "
                f"{list(self.config.detectors)}."
            )
        self.detectors: list[Detector] = [
            DETECTORS.get(name)(self.config.detector_options.get(name))
            for name in self.config.detectors
        ]

    @property
    def data_free(self) -> bool:
        """True when every configured detector works without clean data."""
        return not any(d.needs_data for d in self.detectors)

    def run(
        self,
        clean_loader: BatchSource | None = None,
        *,
        holdout_loader: BatchSource | None = None,
    ) -> ScanResult:
        """Scan the model. ``clean_loader`` may be ``None`` only with data-free detectors.

        A part of the clean images (``holdout_fraction``) is kept out of inversion to measure
        each recovered trigger's attack success rate; pass ``holdout_loader`` to use separate
        images instead.

        Under ``torchrun`` (``RuntimeConfig.distributed="auto"``) every rank must call this with
        the same model and images: the trigger inversions of the shardable detectors are split
        by candidate label over the ranks, and every rank returns the same result (see
        docs/scale.md, "Scanning under torchrun").
        """
        t_start = time.perf_counter()
        rt = self.runtime
        dist = setup_distributed(rt)
        seed_everything(rt.seed)
        device = rt.resolve_device()
        if dist is None or dist.is_main:
            progress = make_progress(rt.progress, self._progress)
        else:  # one progress bar per job: rank 0's
            progress = self._progress or NullProgress()
        fingerprint = ModelFingerprint.of(self.model)
        model = copy.deepcopy(self.model).to(device).eval()
        if dist is not None:
            _same_model_on_every_rank(dist, model, fingerprint)
        model.requires_grad_(False)
        # channels-last: ~1/3 faster convolutions on CPU and tensor cores on CUDA; the
        # detectors make their stamped batches channels-last too.
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

        x_inv = y_inv = x_hold = y_hold = None
        chance: ChanceCheck | None = None
        if clean_loader is None:
            if not self.data_free:
                needs = [d.name for d in self.detectors if d.needs_data]
                raise DataError(
                    f"detector(s) {needs} need clean images, but no clean_loader was given.",
                    hint="pass a loader of clean images, or use detectors=['mm-bd'] (data-free)",
                )
            if self.input_shape is None:
                raise ConfigError(
                    "data-free scanning needs input_shape=(C, H, W).",
                    hint="e.g. Scanner(model, 10, input_shape=(3, 32, 32))",
                )
            shape = tuple(int(s) for s in self.input_shape)
            if len(shape) != 3:
                raise ConfigError(f"input_shape must be (C, H, W), got {self.input_shape}.")
            image_shape = (shape[0], shape[1], shape[2])
            k = self._check_model(model, torch.zeros(2, *image_shape, device=device))
        else:
            x, y, k, image_shape = self._images(clean_loader, model, device)
            chance = chance_check_of(model, x, y, k, runtime=rt)
            if chance.above is False:
                _log.warning(
                    "scan.at_chance",
                    accuracy=chance.accuracy,
                    chance=chance.chance,
                    judged=self.config.require_above_chance,
                )
            x_inv, y_inv, x_hold, y_hold = self._split(x, y, k, holdout_loader, device)
            if dist is not None:
                x_inv, y_inv, x_hold, y_hold = _same_images_on_every_rank(
                    dist, (x_inv, y_inv, x_hold, y_hold), device
                )
        probe = torch.zeros(2, *image_shape) if x_inv is None else x_inv[:8]
        with torch.no_grad():
            probabilities = returns_probabilities(model(probe.to(device)))
        if probabilities:  # a final softmax: scan its logarithm, the logits up to a constant
            _log.info("scan.probabilities")
            model.register_forward_hook(log_probabilities_hook)  # on the scanner's own copy
        labels = self._candidates(k)
        images = (x_inv, y_inv, x_hold, y_hold)
        ctx = self._context(
            model, device, k, image_shape, images, labels, labels, progress, t_start
        )
        outputs = [_detect(det, ctx, dist) for det in self.detectors]
        all_triggers, sources = _choose_triggers(outputs)
        asr: dict[int, float] = {}
        eval_x, eval_y = (x_hold, y_hold) if x_hold is not None else (x_inv, y_inv)
        if eval_x is not None and eval_y is not None:
            for lab, trig in all_triggers.items():
                asr[lab] = trigger_asr(model, trig, eval_x, eval_y, lab, rt)
        report = self._report(
            outputs, k, labels, x_inv, x_hold, asr, t_start, sources, fingerprint, dist
        )
        if chance is not None:
            report = report.model_copy(
                update={
                    "clean_accuracy": chance.accuracy,
                    "chance_accuracy": chance.chance,
                    "above_chance": chance.above,
                }
            )
        if probabilities:
            report = report.model_copy(update={"model_outputs": "probabilities"})
        if dist is not None:  # one report (id, timings) on every rank: rank 0's
            report = dist.broadcast_object(report)
        example = None
        if eval_x is not None:
            example = eval_x[0].detach().cpu()
        _log.info(
            "scan.done",
            verdict=report.verdict,
            score=report.score,
            flagged=report.flagged_labels,
            seconds=report.timings["total_seconds"],
        )
        inversions = {o.detector: dict(o.triggers) for o in outputs if o.triggers}
        return ScanResult(
            report,
            all_triggers,
            example,
            rank=0 if dist is None else dist.rank,
            inversions=inversions,
        )

    def invert(
        self, clean_loader: BatchSource, labels: Sequence[int]
    ) -> dict[str, dict[int, Trigger]]:
        """The recovered triggers of ``labels`` alone, as a full :meth:`run` of this scanner
        computes them — the same inversion images and the same random starts — without the
        other labels and without any decision: ``{detector: {label: trigger}}`` for the
        trigger-recovering detectors (a detector without separate inversion and decision
        phases runs whole).

        :class:`~hardenkit.purify.MCLConfig`'s ``inversion_restarts`` uses it to invert one
        label again from other random starts (another ``runtime.seed``) at a tenth of the
        cost of a full ten-class scan. Runs in this process only (no label sharding).

        Example:
            >>> import hardenkit as hk
            >>> model = hk.create_model("small-cnn", num_classes=4, normalization=None)
            >>> data = hk.data.make_synthetic_dataset(num_classes=4, train_per_class=20)
            >>> scanner = hk.Scanner(model, 4, config={
            ...     "detector_options": {"neural-cleanse": {"epochs": 2}}})
            >>> inv = scanner.invert(data.train.loader(), [2])
            >>> sorted(inv["neural-cleanse"])
            [2]
        """
        rt = self.runtime
        seed_everything(rt.seed)
        device = rt.resolve_device()
        model = copy.deepcopy(self.model).to(device).eval()
        model.requires_grad_(False)
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x, y, k, image_shape = self._images(clean_loader, model, device)
        candidates = self._candidates(k)
        wanted = [int(v) for v in labels]
        outside = [v for v in wanted if v not in candidates]
        if not wanted or outside or len(set(wanted)) != len(wanted):
            raise ConfigError(
                f"invert needs distinct labels among the scan's candidates {candidates}, got "
                f"{list(labels)}."
            )
        x_inv, y_inv, x_hold, y_hold = self._split(x, y, k, None, device)
        with torch.no_grad():
            if returns_probabilities(model(x_inv[:8])):
                model.register_forward_hook(log_probabilities_hook)
        progress = make_progress(rt.progress, self._progress)
        images = (x_inv, y_inv, x_hold, y_hold)
        started = time.perf_counter()
        ctx = self._context(
            model, device, k, image_shape, images, wanted, candidates, progress, started
        )
        out: dict[str, dict[int, Trigger]] = {}
        for det in self.detectors:
            if type(det).splits_into_phases():
                found = det.invert(ctx).triggers
            else:
                found = det.detect(dataclasses.replace(ctx, labels=candidates)).triggers
            kept = {v: t for v, t in found.items() if v in wanted}
            if kept:
                out[det.name] = kept
        return out

    def recheck(
        self, clean_loader: BatchSource, labels: Sequence[int], before: ScanReport
    ) -> tuple[list[LabelRecheck], ScanResult]:
        """Scan this scanner's model (usually a *repaired* one) again and compare ``labels``
        with ``before`` (the scan that guided the repair, made with the same settings on the
        same images: the same inversion images and random starts): one
        :class:`LabelRecheck` per trigger-recovering detector and label, and the new scan.

        Every label is inverted again, not only ``labels``: a repair moves the whole model
        (after MCL on a CIFAR-10 blend model every label's smallest mask was 2–3 times
        smaller), so a label's new value means something only among the others' new values.
        Detectors that ran in ``before`` with other settings, or recover no trigger, give no
        row. The Purifier runs this after a repair (``Purifier(recheck=True)``).

        Example:
            >>> import hardenkit as hk
            >>> model = hk.create_model("small-cnn", num_classes=4, normalization=None)
            >>> data = hk.data.make_synthetic_dataset(num_classes=4, train_per_class=20)
            >>> cfg = {"detector_options": {"neural-cleanse": {"epochs": 2}}}
            >>> before = hk.Scanner(model, 4, config=cfg).run(data.train.loader())
            >>> rows, again = hk.Scanner(model, 4, config=cfg).recheck(
            ...     data.train.loader(), [1], before.report)
            >>> [(r.detector, r.label) for r in rows]
            [('neural-cleanse', 1)]
            >>> abs(rows[0].value_after - rows[0].value_before) < 1e-3  # same model and start
            True
        """
        wanted = [int(v) for v in labels]
        if (
            not wanted
            or len(set(wanted)) != len(wanted)
            or any(v not in before.candidate_labels for v in wanted)
        ):
            raise ConfigError(
                f"recheck needs distinct labels among the scan's candidates "
                f"{before.candidate_labels}, got {list(labels)}."
            )
        again = self.run(clean_loader)
        prior = {d.detector: d for d in before.detectors}
        rows: list[LabelRecheck] = []
        for rep in again.report.detectors:
            old_rep = prior.get(rep.detector)
            if (
                old_rep is None
                or not (rep.produces_triggers and old_rep.produces_triggers)
                or rep.config != old_rep.config
            ):
                continue
            first = most_extreme_label(rep)
            for y in wanted:
                old = next((c for c in old_rep.classes if c.label == y), None)
                new = next((c for c in rep.classes if c.label == y), None)
                if old is None or new is None:
                    continue
                rows.append(
                    LabelRecheck(
                        detector=rep.detector,
                        label=y,
                        statistic=rep.statistic,
                        value_before=old.value,
                        value_after=new.value,
                        anomaly_before=old.anomaly_index,
                        anomaly_after=new.anomaly_index,
                        threshold=rep.threshold,
                        flagged_after=new.flagged,
                        most_extreme_after=first == y,
                        verdict_after=rep.verdict,
                        budget_exhausted=bool(rep.info.get("budget_exhausted")),
                    )
                )
        return rows, again

    # ------------------------------------------------------------------ helpers
    def _context(
        self,
        model: nn.Module,
        device: torch.device,
        k: int,
        image_shape: tuple[int, int, int],
        images: tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None],
        labels: list[int],
        all_labels: list[int],
        progress: ProgressCallback,
        started: float,
    ) -> DetectorContext:
        """What the detectors get (``k`` classes, the model on ``device``): ``images`` are
        (inversion x, y, held-out x, y); the wall-time budget counts from ``started``."""
        rt, (x_inv, y_inv, x_hold, y_hold) = self.runtime, images
        return DetectorContext(
            model=model,
            num_classes=k,
            image_shape=image_shape,
            device=device,
            amp=rt.use_amp(device),
            seed=rt.seed,
            x=x_inv,
            y=y_inv,
            labels=labels,
            progress=progress,
            x_holdout=x_hold,
            y_holdout=y_hold,
            deadline=None if self.config.max_seconds is None else started + self.config.max_seconds,
            all_labels=all_labels,
        )

    def _images(
        self, clean_loader: BatchSource, model: nn.Module, device: torch.device
    ) -> tuple[Tensor, Tensor, int, tuple[int, int, int]]:
        """The clean images and labels (on the CPU), the number of classes and the image
        shape, checked against the model and ``min_images_per_class``."""
        x, y = materialize(
            clean_loader,
            input_normalization=self.runtime.input_normalization,
            device="cpu",
            where="clean_loader",
        )
        image_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        k = self._check_model(model, x[:2].to(device))
        self._check_labels(y, k)
        return x, y, k, image_shape

    def _check_model(self, model: nn.Module, probe: Tensor) -> int:
        k = infer_num_classes(model, probe)
        if self.num_classes is not None and k != self.num_classes:
            raise ModelCompatibilityError(
                f"num_classes={self.num_classes} but the model outputs {k} logits.",
                hint="pass the model's real number of classes",
            )
        if k < 3:
            raise ModelCompatibilityError(
                f"the model has {k} classes; the outlier test across classes needs >= 3."
            )
        return k

    def _check_labels(self, y: Tensor, k: int) -> None:
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise DataError(
                f"clean_loader has labels in [{int(y.min())}, {int(y.max())}] but the model "
                f"has {k} classes."
            )
        counts = torch.bincount(y, minlength=k)
        need = self.config.min_images_per_class
        if self.config.holdout_fraction > 0:
            need = max(need, 2)
        few = [(c, int(n)) for c, n in enumerate(counts.tolist()) if n < need]
        if few:
            shown = ", ".join(f"class {c}: {n}" for c, n in few[:10])
            raise DataError(
                f"too few clean images per class for scanning (need >= {need}): {shown}"
                f"{' ...' if len(few) > 10 else ''}.",
                hint="provide more clean images per class, or lower "
                "ScanConfig.min_images_per_class (and holdout_fraction=0 for 1 per class)",
            )

    def _split(
        self,
        x: Tensor,
        y: Tensor,
        k: int,
        holdout_loader: BatchSource | None,
        device: torch.device,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        cfg = self.config
        seed = self.runtime.seed
        x_hold = y_hold = None
        if holdout_loader is not None:
            x_hold, y_hold = materialize(
                holdout_loader,
                num_classes=k,
                input_normalization=self.runtime.input_normalization,
                device="cpu",
                where="holdout_loader",
            )
            keep = torch.arange(len(y))
        elif cfg.holdout_fraction > 0:
            keep, hold = stratified_split(y, holdout_fraction=cfg.holdout_fraction, seed=seed)
            if cfg.max_holdout_images is not None and len(hold) > cfg.max_holdout_images:
                sub = stratified_indices(
                    y[hold], fraction=cfg.max_holdout_images / len(hold), seed=seed + 1
                )
                hold = hold[sub]
            x_hold, y_hold = x[hold], y[hold]
        else:
            keep = torch.arange(len(y))
        if cfg.max_images is not None and len(keep) > cfg.max_images:
            sub = stratified_indices(
                y[keep], fraction=cfg.max_images / len(keep), seed=seed, num_classes=k
            )
            keep = keep[sub]
        x_inv, y_inv = x[keep].to(device), y[keep].to(device)
        if x_hold is not None and y_hold is not None:
            x_hold, y_hold = x_hold.to(device), y_hold.to(device)
        return x_inv, y_inv, x_hold, y_hold

    def _candidates(self, k: int) -> list[int]:
        labels = list(range(k)) if self.config.labels is None else list(self.config.labels)
        bad = [c for c in labels if not 0 <= c < k]
        if bad:
            raise ConfigError(f"candidate labels {bad} are outside [0, {k}).")
        if len(set(labels)) != len(labels) or len(labels) < 3:
            raise ConfigError(
                f"labels must be >= 3 distinct classes for an outlier test, got {labels}."
            )
        return labels

    def _report(
        self,
        outputs: list[DetectorOutput],
        k: int,
        labels: list[int],
        x_inv: Tensor | None,
        x_hold: Tensor | None,
        asr: dict[int, float],
        t_start: float,
        sources: dict[int, str],
        fingerprint: ModelFingerprint,
        dist: Distributed | None = None,
    ) -> ScanReport:
        cfg = self.config
        det_reports: list[DetectorReport] = []
        for out in outputs:
            # Fail closed: a NaN statistic compares False with every threshold, which would
            # read as "not anomalous" — a detector with non-finite numbers has no verdict.
            ensure_finite_values(
                [out.values[y] for y in labels], what=f"scan: {out.detector} per-label statistic"
            )
            ensure_finite_values(
                [out.score, out.anomaly_index, out.evidence],
                what=f"scan: {out.detector} score / anomaly index / evidence",
            )
        for det, out in zip(self.detectors, outputs, strict=True):
            v = _verdict(out.score, out.flagged, cfg.suspicious_score)
            det_reports.append(
                DetectorReport(
                    detector=out.detector,
                    statistic=out.statistic,
                    suspicious_side=out.suspicious_side,
                    verdict=v,
                    score=out.score,
                    anomaly_index=out.anomaly_index,
                    evidence=out.evidence,
                    threshold=out.threshold,
                    p_value=out.p_value,
                    flagged_labels=list(out.flagged),
                    seconds=out.seconds,
                    config=det.config.model_dump(mode="json"),
                    info=out.info,
                    produces_triggers=bool(out.triggers),
                    classes=[
                        DetectorClassRow(
                            label=y,
                            value=out.values[y],
                            anomaly_index=out.anomaly_per_label[y],
                            flagged=y in out.flagged,
                            extra=out.per_label.get(y, {}),
                        )
                        for y in labels
                    ],
                )
            )
        scores = [d.score for d in det_reports]
        positive = [d for d in det_reports if d.verdict == "backdoored"]
        if cfg.combine == "any":
            score = max(scores)
            verdict = max((d.verdict for d in det_reports), key=lambda s: _SEVERITY[s])
            flagged = _by_evidence(positive)
        elif cfg.combine == "all":
            score = min(scores)
            verdict = min((d.verdict for d in det_reports), key=lambda s: _SEVERITY[s])
            common = set.intersection(*(set(d.flagged_labels) for d in det_reports))
            flagged = [y for y in det_reports[0].flagged_labels if y in common]
            if verdict == "backdoored" and not flagged:
                verdict = "suspicious"
        else:
            score = sum(scores) / len(scores)
            flagged = _by_evidence(positive)
            verdict = _verdict(score, flagged, cfg.suspicious_score)
        if verdict != "backdoored":
            flagged = []
        classes = []
        for y in labels:
            row: dict[str, Any] = {"label": y, "flagged": y in flagged}
            for d in det_reports:
                cell = next(c for c in d.classes if c.label == y)
                if d.statistic == "mask_l1":
                    row["mask_l1"] = cell.value
                    row["reached_threshold"] = cell.extra.get("reached_threshold")
                elif d.statistic == "max_margin":
                    row["max_margin"] = cell.value
                elif d.detector == "pixel":
                    row["trigger_pixels"] = cell.extra.get("pixels")
                    if "reached_threshold" not in row:
                        row["reached_threshold"] = cell.extra.get("reached_threshold")
                elif d.detector in ("warp", "signal"):
                    row["warp_shift" if d.detector == "warp" else "signal_rms"] = cell.value
                    if "reached_threshold" not in row:
                        row["reached_threshold"] = cell.extra.get("reached_threshold")
            if y in asr:
                row["trigger_asr"] = asr[y]
                row["trigger_source"] = sources.get(y)
            classes.append(ClassScan(**row))
        return ScanReport(
            verdict=verdict,
            score=score,
            flagged_labels=flagged,
            num_classes=k,
            candidate_labels=labels,
            data_free=x_inv is None,
            clean_images={
                "inversion": 0 if x_inv is None else len(x_inv),
                "holdout": 0 if x_hold is None else len(x_hold),
            },
            trigger_asr_on_holdout=x_hold is not None,
            combine=cfg.combine,
            detectors=det_reports,
            classes=classes,
            config=cfg.model_dump(mode="json"),
            runtime=self.runtime.model_dump(mode="json"),
            model=fingerprint,
            timings={
                "total_seconds": time.perf_counter() - t_start,
                **{f"{d.detector}_seconds": d.seconds for d in det_reports},
            },
            budget_exhausted=any(bool(o.info.get("budget_exhausted")) for o in outputs),
            calibration=_calibration(det_reports, len(labels)),
            distributed=distributed_info(dist),
        )


def _detect(det: Detector, ctx: DetectorContext, dist: Distributed | None) -> DetectorOutput:
    """Run one detector; under ``torchrun`` split a shardable one's labels over the ranks.

    Rank ``r`` of ``W`` inverts ``labels[r::W]``; the inversions (triggers on the CPU) are
    gathered on every rank, merged in label order and decided there — the decision is cheap
    and deterministic, so every rank gets the same output. A detector that is not shardable
    (or has no invert/decide phases, e.g. a third-party one with ``detect`` only) runs whole
    on every rank, and rank 0's output is broadcast so the ranks report the same thing.
    """
    if dist is None:
        return det.detect(ctx)
    if det.shardable and type(det).splits_into_phases():
        share = ctx.labels[dist.rank :: dist.world_size]
        part = det.invert(dataclasses.replace(ctx, labels=share)) if share else None
        parts: list[Inversion | None] = dist.all_gather_object(
            None if part is None else _inversion_on_cpu(part)
        )
        merged = det.merge([p for p in parts if p is not None], ctx.labels)
        merged.info["rank_seconds"] = [0.0 if p is None else p.seconds for p in parts]
        return det.decide(merged)
    out = det.detect(ctx)
    return dist.broadcast_object(dataclasses.replace(out, triggers=_triggers_on_cpu(out.triggers)))


def _trigger_on_cpu(trigger: Trigger) -> Trigger:
    tensors = trigger.tensors()
    if all(t.device.type == "cpu" for t in tensors.values()):
        return trigger
    cpu = {k: t.detach().cpu() for k, t in tensors.items()}
    return type(trigger).from_state(trigger.params(), cpu)


def _triggers_on_cpu(triggers: Mapping[int, Trigger]) -> dict[int, Trigger]:
    return {y: _trigger_on_cpu(t) for y, t in triggers.items()}


def _inversion_on_cpu(inv: Inversion) -> Inversion:
    return dataclasses.replace(inv, triggers=_triggers_on_cpu(inv.triggers))


def _same_model_on_every_rank(dist: Distributed, model: nn.Module, fp: ModelFingerprint) -> None:
    """Check that every rank scans the same weights; if not, give every rank rank 0's."""
    shas = dist.all_gather_object(fp.sha256)
    differ = [r for r, sha in enumerate(shas) if sha != shas[0]]
    if not differ:
        return
    _log.warning(
        "scan.ranks_differ",
        what="model",
        ranks=differ,
        note="every rank scans rank 0's model (pass the same weights on every rank)",
    )
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    dist.broadcast_module(model)  # collectives need contiguous tensors


_Images = tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]


def _digest(tensors: _Images) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        c = t.detach().cpu().contiguous()
        h.update(f"{c.dtype}{tuple(c.shape)}".encode())
        h.update(c.numpy().tobytes())
    return h.hexdigest()


def _same_images_on_every_rank(dist: Distributed, images: _Images, device: torch.device) -> _Images:
    """The ranks' inversion and held-out images, checked to be the same; when they are not
    (e.g. a loader with a ``DistributedSampler``), every rank scans rank 0's."""
    digests = dist.all_gather_object(_digest(images))
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if not differ:
        return images
    _log.warning(
        "scan.ranks_differ",
        what="clean images",
        ranks=differ,
        note="every rank scans rank 0's images (pass the whole clean set on every rank)",
    )
    cpu = tuple(None if t is None else t.detach().cpu() for t in images)
    got = dist.broadcast_object(cpu)
    x_inv, y_inv, x_hold, y_hold = (None if t is None else t.to(device) for t in got)
    return x_inv, y_inv, x_hold, y_hold


def _calibration(det_reports: list[DetectorReport], n_labels: int) -> dict[str, Any] | None:
    """This scan's evidence against the clean reference (same number of labels): every
    detector that decides at the reference's threshold (the MAD-based ones; the prediction
    share at its default alpha 0.01, whose evidence is ``-log10 p``) and that the reference
    models ran."""
    from .calibration import load_reference

    ref = load_reference()
    if ref is None or n_labels != ref.num_classes:
        return None
    known = ref.detectors
    evidence = {
        d.detector: d.evidence
        for d in det_reports
        if d.detector in known and math.isclose(d.threshold, ref.threshold)
    }
    return ref.compare(evidence) if evidence else None


def _choose_triggers(outputs: list[DetectorOutput]) -> tuple[dict[int, Trigger], dict[int, str]]:
    """One recovered trigger per label: from the first detector that *flagged* the label,
    else from the first detector that recovered one (Neural Cleanse before PixelBackdoor in
    the default order). Returns the triggers and the name of the detector each came from."""
    chosen: dict[int, Trigger] = {}
    source: dict[int, str] = {}
    for out in outputs:
        for lab in out.flagged:
            if lab in out.triggers and lab not in chosen:
                chosen[lab], source[lab] = out.triggers[lab], out.detector
    for out in outputs:
        for lab, trig in out.triggers.items():
            if lab not in chosen:
                chosen[lab], source[lab] = trig, out.detector
    return chosen, source


def _by_evidence(reports: list[DetectorReport]) -> list[int]:
    """The union of the detectors' flagged labels, most anomalous first: by the score of the
    strongest detector that flagged the label, then by that detector's per-label index (a
    repair uses the first label's trigger, so a natural label one detector flagged weakly
    must not come before a target another detector flagged strongly)."""
    best: dict[int, tuple[float, float]] = {}
    for d in reports:
        index = {c.label: c.anomaly_index for c in d.classes}
        for y in d.flagged_labels:
            key = (d.score, index.get(y, 0.0))
            if y not in best or key > best[y]:
                best[y] = key
    return sorted(best, key=lambda y: best[y], reverse=True)

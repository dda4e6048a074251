"""The Purifier facade: repair a copy of a model with a registered strategy and measure it."""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from .._utils.distributed import (
    batchnorm_note,
    distributed_info,
    same_input_on_every_rank,
    same_output_on_every_rank,
)
from .._utils.distributed import setup as setup_distributed
from .._utils.memory import peak_memory_mb
from .._utils.model_checks import check_model
from .._utils.probabilities import (
    log_probabilities_hook,
    remove_log_probabilities_hook,
    returns_probabilities,
)
from .._utils.progress import NullProgress, ProgressCallback, make_progress
from .._utils.seeding import seed_everything
from ..config import RuntimeConfig, parse_config
from ..data.loaders import BatchSource
from ..data.sampling import stratified_split
from ..data.store import ImageStore, MemoryStore, collect
from ..errors import ConfigError, DataError, ModelCompatibilityError, NonFiniteError
from ..io import save_state_dict
from ..logging import get_logger
from ..reports import BaseReport, DistributedInfo, ModelFingerprint
from ..scan import (
    LabelRecheck,
    ScanConfig,
    Scanner,
    ScanResult,
    Verdict,
    scan_config_for_budget,
)
from ..training import infer_num_classes, trigger_asr, trigger_effect
from ..validate.metrics import chance_check_of, paired_accuracy
from .base import (
    STRATEGIES,
    TRUSTED_STATUSES,
    Budget,
    PurificationStatus,
    PurificationStrategy,
    PurifyContext,
    ScanSource,
    StoreBatches,
    StrategyOutcome,
    pixel_runtime,
    select_triggers,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "PurificationReport",
    "PurificationResult",
    "Purifier",
    "PurifyEstimate",
    "Recheck",
    "TriggerASR",
    "TriggerGuard",
    "UtilityGuard",
]

_log = get_logger("purify")

DEFAULT_STRATEGY = "auto"
"""The strategy of ``Purifier(model)`` when none is named: the composite ``auto`` (scan →
``mcl`` on a recovered trigger — ``nc-unlearn``'s repair when MCL's costs more than 3 points
of clean accuracy — when the scan flags nothing, ``mcl`` on the smallest mask's trigger kept
when it costs at most 1.5 points, else ``nc-unlearn`` on the smallest masks' triggers,
``finetune`` when there is no inversion), measured in docs/benchmarks.md."""


class TriggerASR(BaseModel):
    """Attack success rate of one recovered trigger on the held-out clean split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: int
    before: float
    after: float
    images: int
    after_without_trigger: float | None = None
    """The repaired model's share of the same images on ``label`` *without* the trigger: its
    own bias, the floor under ``after`` (``after`` minus this is what the trigger adds)."""


class TriggerGuard(BaseModel):
    """The trigger guard's measurement: the known trigger that works best on the repaired
    model, judged on the held-out split (``Purifier(max_trigger_asr=...)``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_trigger_asr: float
    """The bound: the most a known trigger may add to the share of the held-out images (those
    not of its label) that the repaired model puts on its label."""
    labels: list[int]
    """The labels whose triggers were judged: those the repair was aimed at — the most
    anomalous flagged label's (a detector-ranked scan), every trigger you gave
    (``ScanResult.from_triggers``), and any other the strategy repaired against."""
    label: int | None
    """The label whose trigger adds the most (``None`` when no trigger was measured)."""
    added_asr: float | None
    """That trigger's ASR after the repair minus the repaired model's share of the same
    images on the label without the trigger (``None`` when no trigger was measured)."""
    passed: bool | None
    """``None`` when no trigger was known or no image was held out: nothing was judged."""


class Recheck(BaseModel):
    """The recheck after a repair (``Purifier(recheck=True)``): the repaired model scanned
    again with the settings and images of the scan that guided the repair, and the labels
    the trigger guard judges looked up in it (:meth:`~hardenkit.scan.Scanner.recheck`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labels: list[int]
    rows: list[LabelRecheck] = Field(default_factory=list)
    passed: bool | None
    """``False``: the scan of the repaired model still flags a label the repair was aimed at
    (``backdoor-remains``), or was cut short by ``max_seconds`` (``unverified``); ``None``:
    not run (see ``skipped``)."""
    seconds: float = 0.0
    skipped: str | None = None
    """Why it did not run (no scan images known, the guard not passed, ...)."""
    verdict: Verdict | None = None
    """The verdict of the scan of the repaired model (``None`` when none ran)."""
    flagged_labels: list[int] = Field(default_factory=list)
    """The labels that scan flags."""
    report_id: str | None = None
    """The report id of that scan (:attr:`PurificationResult.rescan`, saved as ``rescan/``)."""


def _targeted(scan: ScanResult | None, details: dict[str, Any]) -> set[int]:
    """The labels whose known triggers the repair was aimed at (what the trigger guard
    judges): the most anomalous flagged label's trigger (all of them for triggers you gave,
    see :func:`~hardenkit.purify.base.select_triggers`) and any the strategy recorded in
    ``details["triggers"]``."""
    labels = {y for y, _ in select_triggers(scan, "most-anomalous")}
    used = details.get("triggers")
    if isinstance(used, list):
        labels.update(int(y) for y in used if isinstance(y, int))
    return labels


class UtilityGuard(BaseModel):
    """The utility guard's measurement: BA before/after on the split it judged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    split: Literal["holdout", "validation", "none"]
    """``holdout`` (never seen by the strategy), ``validation`` (used by the strategy for
    model selection; only when nothing is held out) or ``none`` (no image to judge on)."""
    images: int
    ba_before: float | None
    ba_after: float | None
    max_ba_drop: float
    passed: bool | None
    """``None`` when nothing could be measured. Judged on the measured drop
    ``ba_before - ba_after``; ``drop_interval`` says how sure that is."""
    drop_interval: tuple[float, float] | None = None
    """95 % interval of the BA drop on these images (paired: the same images before and after;
    :func:`hardenkit.validate.paired_drop_interval`). When it straddles ``max_ba_drop`` the
    split is too small to tell a pass from a fail, and a note says so."""


class PurificationReport(BaseReport):
    """What a purification did and measured (held-out split of the clean budget)."""

    report_type: str = "purification"
    strategy: str
    status: PurificationStatus
    """``purified`` only when the run finished its schedule and passed the utility guard;
    see :data:`hardenkit.purify.base.PurificationStatus` for the others."""
    config: dict[str, Any]
    runtime: dict[str, Any]
    num_classes: int
    clean_images: dict[str, int]
    """``train`` (used by the strategy), ``validation`` (model selection) and ``holdout``
    (before/after measurements only)."""
    ba_before: float | None
    """``None`` when no held-out image exists (``holdout_fraction=0`` or a data-free run
    without ``holdout_loader``): validate the result separately."""
    ba_after: float | None
    trigger_asr: list[TriggerASR]
    """ASR of each inverted trigger (flagged labels) on the held-out clean images."""
    scan: dict[str, Any] | None = None
    """Verdict, score, flagged labels and report id of the scan the strategy used."""
    steps: int
    epochs: int
    budget_exhausted: bool
    seconds: float
    timings: dict[str, float] = Field(default_factory=dict)
    """Wall seconds of each part of :attr:`seconds`: ``load`` (collecting the clean images,
    the chance check and the splits), ``scan`` (the Scanner run first; 0 when a scan was
    given or the strategy uses none), ``repair`` (the strategy), ``measure`` (the held-out
    measurements and the guards) and ``recheck`` (the scan of the repaired model; 0 when it
    did not run). Empty in reports written before stop 63."""
    peak_memory_mb: dict[str, float]
    """Peak memory in MiB: ``process_rss`` (the process's maximum resident set; under
    ``torchrun`` the maximum over the ranks) and, on CUDA, ``cuda_allocated`` (torch's peak
    allocation on the device during the strategy and the measurements)."""
    input_model: ModelFingerprint
    output_model: ModelFingerprint
    notes: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)
    utility_guard: UtilityGuard | None = None
    """How the repaired model's benign accuracy was judged (``None`` in reports written
    before the guard existed)."""
    trigger_guard: TriggerGuard | None = None
    """How the known triggers were judged on the repaired model (``None`` when the guard was
    off, ``Purifier(max_trigger_asr=None)``, or in reports written before it existed)."""
    recheck: Recheck | None = None
    """The recheck: the repaired model scanned again, the judged labels looked up (``None``
    when it was off — ``Purifier(recheck=False)`` or the trigger guard off — or no label was
    judged, or in reports written before it existed)."""
    distributed: DistributedInfo = Field(default_factory=DistributedInfo)
    """World size and backend of a ``torchrun`` run (``world_size`` 1 otherwise)."""
    clean_storage: dict[str, Any] = Field(default_factory=dict)
    """How the clean images were held: ``location`` (``memory``/``disk``), ``dtype``
    (``uint8`` when every pixel was an exact multiple of 1/255, else ``float32``), ``images``
    and ``bytes``."""

    @property
    def trusted(self) -> bool:
        """True for ``purified`` and ``nothing-to-purify``: the result can be used as reported."""
        return self.status in TRUSTED_STATUSES

    @property
    def ba_drop(self) -> float | None:
        if self.ba_before is None or self.ba_after is None:
            return None
        return self.ba_before - self.ba_after

    def summary(self) -> str:
        """A short human-readable summary."""
        g = self.utility_guard
        ba = f"  BA (held-out clean) {_pct(self.ba_before)} -> {_pct(self.ba_after)}"
        if g is not None and g.split == "holdout" and g.drop_interval is not None:
            lo, hi = g.drop_interval
            ba += f" (drop 95% interval {100 * lo:.2f} to {100 * hi:.2f} points, {g.images} images)"
        lines = [
            f"strategy {self.strategy}: {self.status} in {self.seconds:.1f}s ({self.steps} steps)",
            ba,
        ]
        if g is not None and g.passed is False:
            lines.insert(
                1,
                f"  WARNING: the repair lost {_pct((g.ba_before or 0) - (g.ba_after or 0))} BA on "
                f"the {g.split} split (> max_ba_drop {_pct(g.max_ba_drop)}): DEGRADED",
            )
        elif self.recheck is not None and self.recheck.passed is False and self.recheck.rows:
            worst = max(self.recheck.rows, key=lambda r: r.anomaly_after)
            lines.insert(
                1,
                f"  WARNING: a scan of the repaired model still flags label {worst.label} "
                f"({worst.detector} anomaly index {worst.anomaly_before:.2f} -> "
                f"{worst.anomaly_after:.2f}): {self.status.upper()}",
            )
        elif self.status == "backdoor-remains" and self.trigger_guard is not None:
            tg = self.trigger_guard
            lines.insert(
                1,
                f"  WARNING: the trigger of label {tg.label} still adds {_pct(tg.added_asr)} ASR "
                f"(> max_trigger_asr {_pct(tg.max_trigger_asr)}): BACKDOOR REMAINS",
            )
        elif self.status == "budget-exhausted":
            lines.insert(1, "  WARNING: the budget ended the run before its schedule finished")
        elif self.status == "unverified":
            lines.insert(1, "  WARNING: BA could not be measured (no held-out images): UNVERIFIED")
        pruning = self.details.get("pruning")
        if isinstance(pruning, dict):
            lines.append(
                f"  pruned {pruning['pruned']} of {pruning['total']} {pruning['unit']} channels "
                f"({100 * pruning['fraction']:.2f}%)"
            )
        for t in self.trigger_asr:
            floor = (
                ""
                if t.after_without_trigger is None
                else f" ({100 * t.after_without_trigger:.2f}% without the trigger)"
            )
            lines.append(
                f"  ASR of the inverted trigger for label {t.label}: "
                f"{100 * t.before:.2f}% -> {100 * t.after:.2f}%{floor}"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


class PurificationResult:
    """The repaired model (a copy), its report, and the scan that guided it.

    Attributes:
        model: the repaired copy, in eval mode (the caller's model is untouched).
        report: the :class:`PurificationReport`.
        scan: the :class:`~hardenkit.scan.ScanResult` used, if any.
        rescan: the recheck's scan of the repaired model (``report.recheck``), if one ran.
        rank: this process's rank under ``torchrun`` (0 otherwise).
    """

    def __init__(
        self,
        model: nn.Module,
        report: PurificationReport,
        scan: ScanResult | None,
        input_shape: tuple[int, int, int],
        rank: int = 0,
        rescan: ScanResult | None = None,
    ) -> None:
        self.model = model
        self.report = report
        self.scan = scan
        self.rescan = rescan
        self.input_shape = input_shape
        self.rank = rank
        """This process's rank under ``torchrun`` (0 otherwise); only rank 0's :meth:`save`
        writes."""

    @property
    def status(self) -> str:
        return self.report.status

    @property
    def purified(self) -> bool:
        return self.report.status == "purified"

    @property
    def trusted(self) -> bool:
        """``purified`` or ``nothing-to-purify``: usable as reported (see the report's notes)."""
        return self.report.trusted

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``report.json``, the scan (if any) to ``scan/`` and
        the recheck's scan of the repaired model (if one ran) to ``rescan/``
        (:meth:`hardenkit.scan.ScanResult.load` reads both back).

        Under ``torchrun`` only rank 0 writes (every rank holds the same result).
        """
        d = Path(directory)
        if self.rank != 0:
            return d
        d.mkdir(parents=True, exist_ok=True)
        save_state_dict(self.model, d / "model.safetensors")
        if self.scan is not None:
            self.scan.save(d / "scan")
        if self.rescan is not None:
            self.rescan.save(d / "rescan")
        self.report.save(d / "report.json")
        return d

    def export_onnx(self, path: str | Path, **kwargs: Any) -> Any:
        """Export the repaired model with :func:`hardenkit.export.to_onnx`.

        The input shape defaults to the clean images'; the ONNX metadata records this
        purification report's id. Returns the :class:`~hardenkit.export.ExportReport`.
        """
        from ..export import to_onnx

        if "input_shape" not in kwargs and "example_input" not in kwargs:
            kwargs["input_shape"] = self.input_shape
        kwargs.setdefault("report_id", self.report.report_id)
        return to_onnx(self.model, path, **kwargs)

    def __repr__(self) -> str:
        return (
            f"PurificationResult(strategy={self.report.strategy!r}, status={self.status!r}, "
            f"ba {_pct(self.report.ba_before)}->{_pct(self.report.ba_after)})"
        )


@dataclass(frozen=True)
class PurifyEstimate:
    """Roughly how long :meth:`Purifier.run` will take, said before it runs
    (:meth:`Purifier.estimate`; ``hardenkit purify`` prints it). Seconds; ``None`` where a
    part does not run or has no estimate (``unknown`` says why).

    Attributes:
        repair_images: the clean images the strategy works on (after the hold-out and the
            validation split).
        scan: the Purifier's own scan first — an upper estimate
            (:func:`hardenkit.scan.estimate_scan_seconds`; early stopping usually ends it
            sooner); ``None`` when a scan is given or the strategy uses none.
        repair: ``(fewest, most)`` seconds of the strategy
            (:func:`hardenkit.purify.estimate_repair_seconds`; ``auto``'s range spans its
            branches).
        recheck: the recheck's scan of the repaired model (at most one more scan, the same
            upper estimate), when it would run.
        device: where the steps were timed.
        unknown: the parts without an estimate and why.
    """

    repair_images: int
    scan: float | None
    repair: tuple[float, float] | None
    recheck: float | None
    device: str
    unknown: list[str] = field(default_factory=list)

    @property
    def total(self) -> tuple[float, float] | None:
        """``(fewest, most)`` seconds in all; ``None`` when the repair has no estimate."""
        if self.repair is None:
            return None
        scans = (self.scan or 0.0) + (self.recheck or 0.0)
        return self.repair[0] + scans, self.repair[1] + scans


class Purifier:
    """Repair a (possibly) backdoored model with a registered strategy.

    Args:
        model: any ``nn.Module`` mapping a [0, 1] pixel batch to logits. It is copied; the
            caller's object and weights are never changed.
        strategy: a registered name (``hardenkit.purify.STRATEGIES``): ``auto`` (default),
            ``finetune``, ``nc-unlearn``, ... or a :class:`PurificationStrategy` instance.
        config: the strategy's config (dict or its pydantic model).
        runtime: device, seed, input normalization.
        holdout_fraction: share of the clean budget kept out of purification to measure BA
            and the inverted triggers' ASR before and after (ignored with ``holdout_loader``).
            ``0`` uses every clean image for purification (few-shot budgets such as one
            image per class); the report's BA fields are then ``None``.
        scan_config: Scanner settings used when a strategy that repairs with a trigger
            (``auto``, ``mcl``, ``nc-unlearn``, ...) must scan first. A dict is laid over the
            ``scan_budget`` preset (its keys win); a :class:`~hardenkit.scan.ScanConfig` is used
            as given.
        scan_budget: the preset that scan starts from — ``quick`` (default, the same scan as
            ``hardenkit scan``: Neural Cleanse and the warp inversion on 200 images),
            ``standard``, ``thorough`` (the published Neural Cleanse settings) or seconds
            (see :func:`hardenkit.scan.scan_config_for_budget`).
        input_shape: ``(C, H, W)`` of the model input; needed only for data-free runs
            (``run(None)`` with a strategy such as ``shapley-pruning``).
        progress: a progress callback (default: a tqdm bar on a TTY).
        max_ba_drop: the utility guard (default: the strategy config's ``max_ba_drop``,
            0.05): a repair that loses more benign accuracy than this on the held-out split
            (the validation split when nothing is held out) gets status ``degraded``. The
            model is still returned; the report and the CLI exit code say it failed.
        max_trigger_asr: the trigger guard (default 0.10, the deployment gate's
            ``max_asr``): a repair after which a trigger it was aimed at (the recovered trigger
            of the scan's most anomalous flagged label, every trigger given with
            ``ScanResult.from_triggers``, any other the strategy used) still sends
            more than this share of the held-out images of other labels to its label, beyond
            the share the repaired model sends there without it, gets status
            ``backdoor-remains``. The model is still returned; the report and the CLI exit
            code say it failed. ``None`` turns the guard off (the gate does: its own
            ``HK-ASR-001`` judges the triggers on the shipped model).
        require_above_chance: refuse (status ``refused``, the model returned unchanged,
            nothing scanned or trained) when the input model is no better than a constant
            guess on the clean images (:func:`hardenkit.validate.chance_check`, with at least
            5 images per class): the images or labels do not fit the model (class order,
            pixel range, normalisation), and a repair trained on them would teach it other
            labels. ``False`` skips the check.
        recheck: with the trigger guard on, after a repair that passed both guards, scan
            the *repaired* model again with the settings, images and random starts of the
            scan that guided the repair (the Purifier's own, or the strategy's; one more scan)
            and look up the labels the guard judges (:meth:`~hardenkit.scan.Scanner.recheck`):
            one still flagged gives ``backdoor-remains``. The guard judges the one trigger the
            repair was aimed at, and a repair can remove that trigger and leave the backdoor
            (pruning the channels it used, say). Skipped, with the reason in
            ``report.recheck``, when the scan was passed in (its images are not known here).
            ``False`` turns it off.

    Statuses: ``purified`` only when the strategy finished its schedule and passed both
    guards and the recheck; ``degraded`` when it lost too much BA; ``backdoor-remains`` when
    the trigger it was aimed at still works, or a scan of the repaired model still flags its
    label; ``budget-exhausted`` when ``max_steps``/``max_seconds`` cut it short;
    ``unverified`` when no image was left to measure BA or the recheck could not run to the
    end; ``nothing-to-purify``/``refused`` when the model is returned unchanged.

    Example:
        >>> import hardenkit as hk
        >>> from hardenkit.testing import tiny_backdoored_model
        >>> fx = tiny_backdoored_model(epochs=2)
        >>> res = hk.Purifier(fx.backdoored.model, strategy="finetune",
        ...                   config={"epochs": 1}).run(fx.data.train.loader())
        >>> res.status
        'purified'
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: str | PurificationStrategy = DEFAULT_STRATEGY,
        *,
        config: Any = None,
        runtime: RuntimeConfig | dict[str, Any] | None = None,
        holdout_fraction: float = 0.1,
        scan_config: ScanConfig | dict[str, Any] | None = None,
        scan_budget: str | float = "quick",
        input_shape: tuple[int, int, int] | None = None,
        progress: ProgressCallback | None = None,
        max_ba_drop: float | None = None,
        require_above_chance: bool = True,
        max_trigger_asr: float | None = 0.10,
        recheck: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ModelCompatibilityError(
                f"Purifier needs a torch.nn.Module, got {type(model).__name__}.",
                hint="load the architecture in code, then its weights",
            )
        model = check_model(model, where="Purifier")
        if isinstance(strategy, PurificationStrategy):
            if config is not None:
                raise ConfigError("pass config only together with a strategy *name*.")
            self.strategy = strategy
        elif isinstance(strategy, str):
            if strategy not in STRATEGIES:
                raise ConfigError(
                    f"unknown purification strategy {strategy!r}; registered: "
                    f"{STRATEGIES.names()}.",
                    hint="install the plugin that provides it or fix the name",
                )
            self.strategy = STRATEGIES.get(strategy)(config)
        else:
            raise ConfigError(f"strategy must be a name or a strategy, got {type(strategy)}.")
        if not 0 <= holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}.")
        if input_shape is not None and (
            len(input_shape) != 3 or any(int(d) < 1 for d in input_shape)
        ):
            raise ConfigError(
                f"input_shape must be (C, H, W) with positive sizes, got {input_shape}."
            )
        if max_ba_drop is not None and not 0 <= max_ba_drop <= 1:
            raise ConfigError(
                f"max_ba_drop must be a fraction in [0, 1], got {max_ba_drop}.",
                hint="0.05 allows a 5-point drop of benign accuracy",
            )
        self.max_ba_drop = (
            self.strategy.config.max_ba_drop if max_ba_drop is None else float(max_ba_drop)
        )
        if max_trigger_asr is not None and not 0 <= max_trigger_asr <= 1:
            raise ConfigError(
                f"max_trigger_asr must be a fraction in [0, 1] or None, got {max_trigger_asr}.",
                hint="0.10 lets a known trigger add at most 10 points of ASR; None turns the "
                "trigger guard off",
            )
        self.max_trigger_asr = None if max_trigger_asr is None else float(max_trigger_asr)
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        self.model = model
        self.runtime = parse_config(RuntimeConfig, runtime)
        self.holdout_fraction = holdout_fraction
        self.scan_config = (
            scan_config
            if isinstance(scan_config, ScanConfig)
            else scan_config_for_budget(scan_budget, scan_config)
        )
        self.require_above_chance = require_above_chance
        self.recheck = bool(recheck)
        if not require_above_chance:  # the scan it runs does not judge it either
            self.scan_config = self.scan_config.model_copy(update={"require_above_chance": False})
        self._progress = progress

    def estimate(
        self,
        num_images: int,
        input_shape: tuple[int, int, int],
        *,
        scan_given: bool = False,
        holdout_given: bool = False,
    ) -> PurifyEstimate:
        """Roughly how long :meth:`run` takes on ``num_images`` clean images of shape
        ``input_shape`` (one scan-step and one training-step timing on this model; a few
        seconds). ``scan_given``: a scan will be passed to :meth:`run` (no scan, no recheck);
        ``holdout_given``: so will a ``holdout_loader`` (no image of ``num_images`` is held
        out). Estimates never raise: a part that could not be estimated is in ``unknown``.

        Example:
            >>> import hardenkit as hk
            >>> est = hk.Purifier(hk.create_model("small-cnn", 10), "finetune",
            ...                   config={"epochs": 2}).estimate(500, (3, 32, 32))
            >>> est.repair_images, est.scan is None, est.total[0] > 0
            (405, True, True)
        """
        from .estimate import estimate_repair_seconds

        strat = self.strategy
        held = 0 if holdout_given else round(num_images * self.holdout_fraction)
        n_tr = max(0, num_images - held)
        n_rep = max(0, n_tr - round(n_tr * strat.validation_fraction))
        unknown: list[str] = []
        device = "unknown"
        try:
            device = str(self.runtime.resolve_device().type)
            repair = estimate_repair_seconds(
                self.model,
                strat,
                num_images=n_rep,
                input_shape=input_shape,
                runtime=self.runtime,
            )
            if repair is None:
                unknown.append(f"repair: strategy {strat.name} states no schedule to time")
        except Exception as exc:  # an estimate must never stop the work
            repair = None
            unknown.append(f"repair: {type(exc).__name__}: {exc}")
        scan = recheck = None
        if not scan_given and (strat.needs_trigger or strat.uses_scan):
            from ..scan import estimate_scan_seconds

            try:
                k = infer_num_classes(self.model, torch.zeros(2, *input_shape))
                scan = estimate_scan_seconds(
                    self.model,
                    self.scan_config,
                    num_classes=k,
                    input_shape=input_shape,
                    clean_images=n_rep,
                    device=self.runtime.resolve_device(),
                )
            except Exception as exc:
                unknown.append(f"scan: {type(exc).__name__}: {exc}")
            if self.recheck and self.max_trigger_asr is not None:
                recheck = scan
        return PurifyEstimate(n_rep, scan, repair, recheck, device, unknown)

    def run(
        self,
        clean_loader: BatchSource | None,
        *,
        scan: ScanResult | None = None,
        holdout_loader: BatchSource | None = None,
    ) -> PurificationResult:
        """Purify a copy of the model with the clean images of ``clean_loader``.

        ``scan`` — a :class:`~hardenkit.scan.ScanResult` of this model; trigger-based
        strategies run the Scanner themselves when it is missing. ``holdout_loader`` —
        separate clean images for the before/after measurements (must not overlap the
        clean loader); by default ``holdout_fraction`` of the clean images is held out.
        ``clean_loader=None`` runs a data-free strategy (``Purifier(..., input_shape=...)``).
        """
        t_start = time.perf_counter()
        timings = dict.fromkeys(("load", "scan", "repair", "measure", "recheck"), 0.0)
        rt = self.runtime
        dist = setup_distributed(rt)
        seed_everything(rt.seed)
        device = rt.resolve_device()
        if dist is None or dist.is_main:
            progress = make_progress(rt.progress, self._progress)
        else:  # one progress bar per job: rank 0's
            progress = self._progress or NullProgress()
        strat = self.strategy
        if clean_loader is None:
            x, y = self._no_data(strat)
        else:
            x, y = collect(
                clean_loader,
                input_normalization=rt.input_normalization,
                storage=rt.clean_storage,
                spill_dir=rt.spill_dir,
                where="clean_loader",
            )
        storage = x.info()
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        notes: list[str] = []
        input_fp = ModelFingerprint.of(self.model)
        original = copy.deepcopy(self.model).to(device).eval()
        original.requires_grad_(False)
        if dist is not None:
            same_input_on_every_rank(dist, original, input_fp, notes)
        k = infer_num_classes(original, torch.zeros(2, *shape, device=device))
        with torch.no_grad():
            probabilities = returns_probabilities(original(torch.zeros(2, *shape, device=device)))
        if probabilities:  # a final softmax: train and compare on log(p), the logits + const
            original.register_forward_hook(log_probabilities_hook)
            notes.append(
                "the model returns probabilities (a final softmax): the repair trained on their "
                "logarithm (its logits up to a constant); the returned model still ends in its "
                "softmax"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise DataError(
                f"clean_loader has labels in [{int(y.min())}, {int(y.max())}] but the model has "
                f"{k} classes."
            )
        mismatch = self._chance(original, x, y, k, notes) if self.require_above_chance else False
        x_tr, y_tr, x_ho, y_ho = self._holdout(x, y, k, holdout_loader)
        val_frac = strat.validation_fraction
        x_val = x_tr.take(torch.zeros(0, dtype=torch.int64))
        y_val = y_tr[:0]
        if val_frac > 0 and len(y_tr) and int(torch.bincount(y_tr).min()) >= 2:
            keep, val = stratified_split(y_tr, holdout_fraction=val_frac, seed=rt.seed + 2)
            x_val, y_val = x_tr.take(val), y_tr[val]
            x_tr, y_tr = x_tr.take(keep), y_tr[keep]
        if scan is not None and scan.report.num_classes != k:
            raise DataError(
                f"the scan is of a {scan.report.num_classes}-class model, this model has {k}.",
                hint="pass the ScanResult of this model",
            )
        if scan is not None and scan.report.model.sha256 != input_fp.sha256:
            notes.append(
                "the scan was made on a model with other weights (fingerprint "
                f"{scan.report.model.sha256[:12]} vs {input_fp.sha256[:12]}"
                "); its triggers may not fit this model"
            )
        scan_source: ScanSource | None = None  # the settings and images of the scan made here
        t_part = time.perf_counter()
        timings["load"] = t_part - t_start
        if scan is None and (strat.needs_trigger or strat.uses_scan) and not mismatch:
            notes.append("no scan given: ran the Scanner on the purification images first")
            scan_source = (self.scan_config, StoreBatches(x_tr, y_tr))
            scan = Scanner(
                original, k, config=self.scan_config, runtime=pixel_runtime(rt), progress=progress
            ).run(scan_source[1])
            timings["scan"] = time.perf_counter() - t_part
        if len(y_ho) == 0:
            notes.append(
                "no held-out clean images: BA and the inverted triggers' ASR were not measured "
                "here; check the result with hk.Validator on data of your own"
            )
        work = copy.deepcopy(self.model).to(device)
        if probabilities:
            work.register_forward_hook(log_probabilities_hook)
        if dist is not None:
            dist.broadcast_module(work)
            batchnorm_note(dist, work, notes)
            if dist.sync_batchnorm:  # pragma: no cover - GPU only
                dist.convert_batchnorm(work)
        budget = Budget(
            strat.config.max_steps,
            strat.config.max_seconds,
            agree=None if dist is None else dist.any,
        )
        if device.type == "cuda":  # pragma: no cover - GPU only
            torch.cuda.reset_peak_memory_stats(device)
        ctx = PurifyContext(
            model=work,
            original=original,
            num_classes=k,
            images=x_tr.to(device),
            y=y_tr.to(device),
            val_images=x_val.to(device),
            y_val=y_val.to(device),
            device=device,
            runtime=rt,
            scan=scan,
            budget=budget,
            progress=progress,
            input_shape=shape,
            notes=notes,
            dist=dist,
            scan_config=self.scan_config,
        )
        if mismatch:
            outcome = StrategyOutcome(model=work, status="refused")
        elif strat.needs_trigger and scan is not None and not scan.is_backdoored:
            notes.append(
                f"the scan found no backdoor (verdict {scan.verdict}, score {scan.score:.3f}): "
                f"{strat.name} needs a flagged label, so the model is returned unchanged. Use a "
                "trigger-free strategy (d3, fine-pruning, or auto, which runs its trigger-free "
                "fallback when no label is flagged) to repair anyway."
            )
            outcome = StrategyOutcome(model=work, status="nothing-to-purify")
        else:
            t_part = time.perf_counter()
            try:
                outcome = strat.run(ctx)
            finally:
                if dist is not None:
                    dist.restore_batchnorm()
                timings["repair"] = time.perf_counter() - t_part
        t_part = time.perf_counter()
        model = outcome.model.eval()
        if probabilities:
            remove_log_probabilities_hook(model)
        output_fp = ModelFingerprint.of(model)
        if dist is not None:
            output_fp = same_output_on_every_rank(dist, model, output_fp, notes)
        if outcome.scan is not None:
            scan = outcome.scan
            scan_source = outcome.scan_source
        triggers = dict(scan.triggers) if scan is not None else {}
        x_ho_d, y_ho_d = x_ho.to(device), y_ho.to(device)  # every rank evaluates it all
        ba_before = ba_after = None
        drop_interval: tuple[float, float] | None = None
        asr_rows: list[TriggerASR] = []
        if len(y_ho):
            ba_before, ba_after, drop_interval = paired_accuracy(
                original, model, x_ho_d, y_ho_d, runtime=rt
            )
            for lab, t in triggers.items():
                after = trigger_effect(model, t, x_ho_d, y_ho_d, lab, rt)
                asr_rows.append(
                    TriggerASR(
                        label=lab,
                        before=trigger_asr(original, t, x_ho_d, y_ho_d, lab, rt),
                        after=0.0 if after is None else after.asr,
                        images=int((y_ho != lab).sum()),
                        after_without_trigger=None if after is None else after.asr_without_trigger,
                    )
                )
        status, guard = self._judge(
            outcome.status,
            budget,
            model,
            original,
            (x_ho_d, y_ho_d, ba_before, ba_after, drop_interval),
            (ctx.val_images, ctx.y_val),
            notes,
        )
        aimed = _targeted(scan, outcome.details)
        status, trigger_guard = self._trigger_guard(status, asr_rows, notes, aimed)
        recheck: Recheck | None = None
        rescan: ScanResult | None = None
        judged = sorted(lab for lab in triggers if lab in aimed)  # what the guard judges
        timings["measure"] = time.perf_counter() - t_part
        if self.recheck and self.max_trigger_asr is not None and judged:
            status, recheck, rescan = self._recheck(
                status, model, k, scan, scan_source, judged, notes, progress
            )
            timings["recheck"] = recheck.seconds
        if status == "purified" and len(y_ho) and not asr_rows:
            unknown = (
                "no trigger was known to measure"
                if not aimed
                else "no flagged label's trigger was known to measure (the repair was aimed at "
                f"the inverted triggers of labels {sorted(aimed)}, which the scan did not flag: "
                "candidates in case it missed a backdoor, as often natural features, so not "
                "judged)"
            )
            notes.append(
                f"{unknown}: 'purified' says the repair ran and kept benign accuracy, not that a "
                "backdoor is gone; measure the attack success rate with a known trigger "
                "(hk.Validator, hardenkit validate/gate) before you rely on it"
            )
        peak = peak_memory_mb(device)
        if dist is not None:
            peak = dist.max_values(peak)
        report = PurificationReport(
            strategy=strat.name,
            status=status,
            config=strat.config.model_dump(mode="json"),
            runtime=rt.model_dump(mode="json"),
            num_classes=k,
            clean_images={"train": len(y_tr), "validation": len(y_val), "holdout": len(y_ho)},
            ba_before=ba_before,
            ba_after=ba_after,
            trigger_asr=asr_rows,
            scan=None
            if scan is None
            else {
                "verdict": scan.verdict,
                "score": scan.score,
                "flagged_labels": scan.flagged_labels,
                "report_id": scan.report.report_id,
            },
            steps=budget.steps,
            epochs=outcome.epochs,
            budget_exhausted=budget.exhausted,
            seconds=time.perf_counter() - t_start,
            timings=timings,
            peak_memory_mb=peak,
            input_model=input_fp,
            output_model=output_fp,
            notes=notes,
            details=outcome.details,
            utility_guard=guard,
            trigger_guard=trigger_guard,
            recheck=recheck,
            distributed=distributed_info(dist),
            clean_storage=storage,
        )
        _log.info(
            "purify.done",
            strategy=strat.name,
            status=status,
            ba_before=ba_before,
            ba_after=ba_after,
            seconds=report.seconds,
        )
        return PurificationResult(
            model, report, scan, shape, 0 if dist is None else dist.rank, rescan=rescan
        )

    def _judge(
        self,
        status: str,
        budget: Budget,
        model: nn.Module,
        original: nn.Module,
        holdout: tuple[ImageStore, Tensor, float | None, float | None, tuple[float, float] | None],
        validation: tuple[ImageStore, Tensor],
        notes: list[str],
    ) -> tuple[PurificationStatus, UtilityGuard]:
        """Apply the utility guard and the budget check to a strategy's own status."""
        _, y_ho, ba_before, ba_after, interval = holdout
        x_val, y_val = validation
        split: Literal["holdout", "validation", "none"] = "none"
        images = 0
        if ba_before is not None and ba_after is not None:
            split, images = "holdout", len(y_ho)
        elif len(y_val):
            split, images = "validation", len(y_val)
            ba_before, ba_after, interval = paired_accuracy(
                original, model, x_val, y_val, runtime=self.runtime
            )
        passed: bool | None = None
        if ba_before is not None and ba_after is not None:
            passed = ba_before - ba_after <= self.max_ba_drop + 1e-12
        guard = UtilityGuard(
            split=split,
            images=images,
            ba_before=ba_before,
            ba_after=ba_after,
            max_ba_drop=self.max_ba_drop,
            passed=passed,
            drop_interval=interval,
        )
        if status != "purified":  # the model came back unchanged
            return status, guard  # type: ignore[return-value]
        span = (
            ""
            if interval is None
            else f" (95% interval of the drop: {100 * interval[0]:.2f} to "
            f"{100 * interval[1]:.2f} points)"
        )
        if passed is False and ba_before is not None and ba_after is not None:
            notes.append(
                f"DEGRADED: benign accuracy on the {split} split fell from "
                f"{100 * ba_before:.2f}% to {100 * ba_after:.2f}% ({images} images){span}, more "
                f"than max_ba_drop={100 * self.max_ba_drop:.1f} points; do not ship this model "
                "without review (try another strategy, more clean images, or a gentler config)"
            )
            if interval is not None and interval[0] <= self.max_ba_drop:
                notes.append(
                    f"the {images}-image {split} split cannot tell this drop from one within "
                    "max_ba_drop (the interval reaches below it): measure the repaired model on "
                    "more clean held-out images (run(..., holdout_loader=...) or hk.Validator) "
                    "before you discard it"
                )
            _log.warning("purify.degraded", ba_before=ba_before, ba_after=ba_after)
            return "degraded", guard
        if passed and interval is not None and interval[1] > self.max_ba_drop:
            notes.append(
                f"the BA drop on the {split} split, {100 * (ba_before or 0.0):.2f}% -> "
                f"{100 * (ba_after or 0.0):.2f}%{span}, is within max_ba_drop="
                f"{100 * self.max_ba_drop:.1f} points, but the {images} images cannot rule out "
                "a larger loss; measure the repaired model on more clean held-out images "
                "(run(..., holdout_loader=...) or hk.Validator) before you rely on its accuracy"
            )
        if budget.exhausted:
            notes.append(
                f"BUDGET EXHAUSTED after {budget.steps} step(s): max_steps="
                f"{budget.max_steps}, max_seconds={budget.max_seconds} ended the run before its "
                "schedule finished; the repair is incomplete"
                + (" (no optimisation step was made)" if budget.steps == 0 else "")
            )
            return "budget-exhausted", guard
        if passed is None:
            notes.append(
                "UNVERIFIED: no held-out or validation images were left to measure benign "
                "accuracy; measure the repaired model with hk.Validator on clean data of your "
                "own before trusting it"
            )
            return "unverified", guard
        return "purified", guard

    def _trigger_guard(
        self,
        status: PurificationStatus,
        rows: list[TriggerASR],
        notes: list[str],
        targeted: set[int],
    ) -> tuple[PurificationStatus, TriggerGuard | None]:
        """Judge the known triggers the repair was aimed at (``targeted``) on the repaired
        model: ``purified`` becomes ``backdoor-remains`` when one still adds more than
        ``max_trigger_asr`` ASR. Another flagged label's trigger that still works gets a note."""
        bound = self.max_trigger_asr
        if bound is None:
            return status, None

        def added(t: TriggerASR) -> float:
            return t.after - (t.after_without_trigger or 0.0)

        judged = [t for t in rows if t.label in targeted]
        if not judged:
            return status, TriggerGuard(
                max_trigger_asr=bound, labels=[], label=None, added_asr=None, passed=None
            )
        worst = max(judged, key=added)
        passed = added(worst) <= bound + 1e-12
        guard = TriggerGuard(
            max_trigger_asr=bound,
            labels=[t.label for t in judged],
            label=worst.label,
            added_asr=added(worst),
            passed=passed,
        )
        if status in ("nothing-to-purify", "refused"):  # the model came back unchanged
            return status, guard
        for t in rows:
            if t.label not in targeted and added(t) > bound + 1e-12:
                notes.append(
                    f"the recovered trigger of label {t.label}, flagged beside the most "
                    "anomalous label and not repaired against, still sends "
                    f"{100 * t.after:.2f}% of the held-out images of other labels to {t.label} "
                    f"({100 * (t.after_without_trigger or 0.0):.2f}% without it): a flag on a "
                    "natural feature of that class is common (the trigger guard does not judge "
                    "it); if that label is attacked too, repair with "
                    "trigger_labels='all-flagged' and check it with the real trigger"
                )
        if passed:
            return status, guard
        floor = worst.after_without_trigger or 0.0
        notes.append(
            f"BACKDOOR REMAINS: the known trigger of label {worst.label} still sends "
            f"{100 * worst.after:.2f}% of the {worst.images} held-out images of other labels to "
            f"{worst.label} after the repair ({100 * floor:.2f}% without the trigger; "
            f"{100 * worst.before:.2f}% before the repair), more than "
            f"max_trigger_asr={100 * bound:g} points above that share: the repair did not "
            "remove it. Try another strategy or a longer schedule, and measure with the real "
            "trigger if you know it (hk.Validator, hardenkit gate)"
        )
        _log.warning("purify.backdoor_remains", label=worst.label, added_asr=added(worst))
        return ("backdoor-remains" if status == "purified" else status), guard

    def _recheck(
        self,
        status: PurificationStatus,
        model: nn.Module,
        k: int,
        scan: ScanResult | None,
        source: ScanSource | None,
        labels: list[int],
        notes: list[str],
        progress: ProgressCallback,
    ) -> tuple[PurificationStatus, Recheck, ScanResult | None]:
        """Scan the repaired ``model`` again with the settings and images of the guiding
        ``scan`` and look at ``labels`` (those the trigger guard judges; with or without
        held-out images): ``purified`` becomes ``backdoor-remains`` when a detector still
        flags one; still its most anomalous label gets a note. Also returns the new scan
        (``None`` when none finished)."""

        def skip(why: str) -> tuple[PurificationStatus, Recheck, ScanResult | None]:
            return status, Recheck(labels=labels, passed=None, skipped=why), None

        if status != "purified":
            return skip(f"status {status}: only a repair that passed the guards is rechecked")
        if scan is None or source is None:
            return skip(
                "the scan was passed in (or is a strategy's own without its scan_source): its "
                "images are not known here, so a scan of the repaired model would not be "
                "comparable with it (the gate re-scans the repaired model itself)"
            )
        t0 = time.perf_counter()
        config, images = source
        try:
            rows, again = Scanner(
                model, k, config=config, runtime=pixel_runtime(self.runtime), progress=progress
            ).recheck(images, labels, scan.report)
        except NonFiniteError as exc:
            notes.append(
                f"UNVERIFIED: the scan of the repaired model for the recheck of label(s) "
                f"{labels} gave non-finite numbers ({exc}): nothing shows the backdoor is gone"
            )
            return (
                "unverified",
                Recheck(labels=labels, passed=False, seconds=time.perf_counter() - t0),
                None,
            )
        seconds = time.perf_counter() - t0
        verdict, again_flagged = again.verdict, list(again.flagged_labels)
        if not rows:
            return (
                status,
                Recheck(
                    labels=labels,
                    passed=None,
                    seconds=seconds,
                    skipped="no detector of the scan recovers triggers",
                    verdict=verdict,
                    flagged_labels=again_flagged,
                    report_id=again.report.report_id,
                ),
                again,
            )
        flagged = [r for r in rows if r.flagged_after]
        cut = [r for r in rows if r.budget_exhausted]
        rec = Recheck(
            labels=labels,
            rows=rows,
            passed=not (flagged or cut),
            seconds=seconds,
            verdict=verdict,
            flagged_labels=again_flagged,
            report_id=again.report.report_id,
        )
        if flagged:
            r = max(flagged, key=lambda v: v.anomaly_after)
            notes.append(
                f"BACKDOOR REMAINS: a scan of the repaired model (the guiding scan's settings and "
                f"images) still flags label {r.label}, the label the repair was aimed at "
                f"({r.detector}: {r.statistic} {r.value_before:.4g} -> {r.value_after:.4g}, "
                f"anomaly index {r.anomaly_before:.2f} -> {r.anomaly_after:.2f}, threshold "
                f"{r.threshold:g}). The repair removed the trigger it was aimed at, not the "
                "backdoor: try another strategy, and measure with the real trigger if you know "
                "it (hk.Validator, hardenkit gate)"
            )
            _log.warning("purify.recheck_flagged", label=r.label, anomaly=r.anomaly_after)
            return "backdoor-remains", rec, again
        if cut:  # a cut inversion stops early, at a larger trigger: no evidence either way
            notes.append(
                f"UNVERIFIED: the scan of the repaired model for the recheck was cut short by "
                f"max_seconds ({cut[0].detector}), so it cannot show that label "
                f"{cut[0].label} no longer stands out: raise max_seconds or measure with the "
                "real trigger"
            )
            return "unverified", rec, again
        standing = [r for r in rows if r.most_extreme_after and r.verdict_after != "clean"]
        if standing:
            r = standing[0]
            notes.append(
                f"a scan of the repaired model no longer flags label {r.label}, but "
                f"{r.detector} still ranks it first ({r.verdict_after}, anomaly index "
                f"{r.anomaly_before:.2f} -> {r.anomaly_after:.2f}): repairs that removed the "
                "real trigger do this too (stop 62), so it does not change the status; "
                "hardenkit gate fails it (repaired_label_suspect) — measure with the real "
                "trigger if you know it"
            )
        return status, rec, again

    def _chance(
        self, original: nn.Module, x: ImageStore, y: Tensor, k: int, notes: list[str]
    ) -> bool:
        """``True`` (and a REFUSED note) when ``original`` is at chance on the clean images."""
        if len(y) == 0:
            return False
        check = chance_check_of(original, x, y, k, runtime=self.runtime)
        if check.above is False:
            notes.append(
                "REFUSED: the input model is no better than chance on the clean "
                f"images ({check.describe()}): the images or labels do not fit this model "
                "(another class order, pixel range or normalisation, or the wrong model), so "
                "no repair or measurement on them can be trusted. Check the loader with "
                "hk.Validator(model).run(clean_loader); pass require_above_chance=False only "
                "if a model this inaccurate is expected"
            )
            _log.warning("purify.at_chance", accuracy=check.accuracy, chance=check.chance)
            return True
        if check.above is None and check.accuracy <= check.chance:
            notes.append(
                f"the input model is no better than chance on the {check.images} "
                f"clean images ({check.describe()}); too few images to refuse on, but check "
                "that the labels and pixels fit the model"
            )
        return False

    def _no_data(self, strat: PurificationStrategy) -> tuple[ImageStore, Tensor]:
        if not strat.data_free:
            free = [n for n in STRATEGIES.names() if STRATEGIES.get(n).data_free]
            raise DataError(
                f"strategy {strat.name!r} needs clean images; clean_loader is None.",
                hint=f"pass a clean loader, or use a data-free strategy: {free}",
            )
        if self.input_shape is None:
            raise ConfigError(
                "a data-free run needs the model's input shape.",
                hint="pass Purifier(..., input_shape=(3, 32, 32))",
            )
        return MemoryStore(torch.zeros(0, *self.input_shape)), torch.zeros(0, dtype=torch.long)

    def _holdout(
        self, x: ImageStore, y: Tensor, k: int, holdout_loader: BatchSource | None
    ) -> tuple[ImageStore, Tensor, ImageStore, Tensor]:
        if holdout_loader is not None:
            x_ho, y_ho = collect(
                holdout_loader,
                num_classes=k,
                input_normalization=self.runtime.input_normalization,
                storage=self.runtime.clean_storage,
                spill_dir=self.runtime.spill_dir,
                where="holdout_loader",
            )
            overlap = _hashes(x) & _hashes(x_ho)
            if overlap:
                raise DataError(
                    f"{len(overlap)} image(s) appear in both clean_loader and holdout_loader.",
                    hint="the held-out images must never be used for purification",
                )
            return x, y, x_ho, y_ho
        if self.holdout_fraction == 0 or len(y) == 0:
            return x, y, x.take(torch.zeros(0, dtype=torch.int64)), y[:0]
        counts = torch.bincount(y, minlength=k)
        if int(counts.min()) < 2:
            few = [c for c, n in enumerate(counts.tolist()) if n < 2]
            raise DataError(
                f"classes {few[:10]} have fewer than 2 clean images; the Purifier needs at least "
                "2 per class (one to train on, one held out).",
                hint="provide more clean images, pass holdout_loader=, or holdout_fraction=0 "
                "to purify with every image (BA is then not measured)",
            )
        keep, hold = stratified_split(
            y, holdout_fraction=self.holdout_fraction, seed=self.runtime.seed + 1
        )
        return x.take(keep), y[keep], x.take(hold), y[hold]


def _hashes(x: ImageStore) -> set[bytes]:
    out: set[bytes] = set()
    for xb in x.batches(4096):
        flat = (xb.cpu().clamp(0, 1) * 255).round().to(torch.uint8).flatten(1)
        out.update(hashlib.sha1(row.numpy().tobytes()).digest() for row in flat)
    return out

"""The pre-deployment gate: from a model of unknown provenance to a deploy decision with proof.

Pipeline (:meth:`Gate.run`): check the data (held-out images must not overlap the clean
images, by content hash) → scan → repair when the policy allows and the scan flags the model →
re-scan the repaired model → measure the model that would ship on held-out images (BA, BA drop
against the input model, ASR of every recovered and known trigger) → export to ONNX and verify
it on ONNX Runtime with the policy's provider → one rule per check, fail closed.

The decision never depends on the true trigger (unknown in a real gate); ``known_triggers``
(a red team's triggers) add rules, they never remove any.

Example:
    >>> import hardenkit as hk
    >>> from hardenkit.gate import Gate
    >>> Gate().policy.repair
    'if-flagged'
"""

from __future__ import annotations

import copy
import hashlib
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from .._utils.model_checks import check_model
from .._utils.progress import ProgressCallback
from ..config import RuntimeConfig, parse_config
from ..data import TensorLoader, materialize
from ..data.loaders import BatchSource
from ..data.sampling import stratified_split
from ..errors import (
    ConfigError,
    DataError,
    ExecutionProviderError,
    ExportError,
    NonFiniteError,
    ParityError,
)
from ..logging import get_logger
from ..reports import BaseReport, ModelFingerprint
from ..scan import ScanReport, ScanResult
from ..scan.scanner import most_extreme_label
from ..triggers import Trigger, as_trigger
from ..validate.metrics import ChanceCheck, TriggerLike, chance_check_of, paired_accuracy
from .policy import DeploymentPolicy

if TYPE_CHECKING:
    from ..purify.purifier import PurificationResult

__all__ = ["ClassDrop", "Gate", "GateReport", "GateResult", "GateRule", "image_hashes"]

_log = get_logger("gate")

RuleStatus = Literal["pass", "fail", "skipped"]
Cause = Literal["policy", "evaluation", "environment"]

EXIT_PASS, EXIT_FAILED, EXIT_ENVIRONMENT = 0, 1, 3

RULES: dict[str, str] = {
    "HK-DATA-001": "held-out images: enough to measure the shipped model",
    "HK-DATA-002": "the input model is better than chance on the held-out images "
    "(the images and labels fit the model)",
    "HK-SCAN-001": "the model that ships passes the scan",
    "HK-SCAN-002": "every scan is conclusive (finished, finite)",
    "HK-REPAIR-001": "the repair is trusted (purified, within its utility guard)",
    "HK-BA-001": "benign accuracy of the shipped model at least min_ba",
    "HK-BA-002": "benign-accuracy drop against the input model at most max_ba_drop",
    "HK-BA-003": "no class loses more than max_class_ba_drop of its accuracy",
    "HK-ASR-001": "every recovered trigger's ASR on the shipped model at most max_asr",
    "HK-ASR-002": "every known trigger's ASR on the shipped model at most max_asr",
    "HK-ASR-003": "no known trigger moves more than max_trigger_share of the images to one "
    "other class (a redirected backdoor)",
    "HK-ONNX-001": "the ONNX export matches the shipped model on ONNX Runtime",
    "HK-ONNX-002": "ONNX Runtime ran on the policy's execution provider",
}
"""Every rule id the gate can report, with what it checks (docs/gate.md)."""


class GateRule(BaseModel):
    """One check of the gate: what was measured, against what, and the outcome.

    ``cause`` says why a failed rule failed: ``policy`` (a measured value broke its
    threshold), ``evaluation`` (it could not be evaluated: non-finite numbers, an exhausted
    budget, a failed export, missing data) or ``environment`` (an execution provider or
    package is missing: the CLI exits 3).
    """

    model_config = ConfigDict(frozen=True)

    rule_id: str
    description: str
    status: RuleStatus
    value: float | str | None = None
    threshold: float | str | None = None
    comparison: str | None = None
    message: str
    cause: Cause | None = None


class TriggerMeasurement(BaseModel):
    """ASR of one trigger (recovered by a scan, or known) before and after the gate."""

    model_config = ConfigDict(frozen=True)

    source: str
    """``scan`` (input-model scan), ``rescan`` (the last re-scan of the repaired model),
    ``rescan-<round>`` (the re-scan after repair round ``<round>`` that started another round:
    its triggers were repaired against, so they are measured on the model that ships too) or
    ``known:<name>``."""
    label: int
    input_asr: float | None
    output_asr: float | None
    images: int
    output_top_class: int | None = None
    """On the shipped model: the class taking the most triggered images other than the
    target (a redirected backdoor shows here, not in the ASR)."""
    output_top_share: float | None = None
    output_asr_without_trigger: float | None = None
    """On the shipped model: the share of the same images it predicts as ``label`` *without*
    the trigger (its own bias, the floor under ``output_asr``; ``output_asr`` minus this is what
    the trigger itself adds). The ASR rules judge ``output_asr``: a bias toward the label fails
    them too."""


class ClassDrop(BaseModel):
    """One class's accuracy on the held-out images, input model against shipped model."""

    model_config = ConfigDict(frozen=True)

    label: int
    images: int
    before: float
    after: float

    @property
    def drop(self) -> float:
        return self.before - self.after


def drop_interval_note(
    drop: float | None, interval: tuple[float, float] | None, max_ba_drop: float, images: int
) -> str | None:
    """The note for ``HK-BA-002`` when the drop's paired 95 % interval straddles
    ``max_ba_drop`` (the held-out set cannot tell a pass from a fail), else ``None``.

    >>> drop_interval_note(0.01, (-0.01, 0.04), 0.03, 500) is not None
    True
    >>> drop_interval_note(0.01, (-0.01, 0.025), 0.03, 500) is None
    True
    """
    if drop is None or interval is None or not interval[0] <= max_ba_drop < interval[1]:
        return None
    verdict = (
        "within it by the measurement, but a larger loss is not ruled out"
        if drop <= max_ba_drop
        else "beyond it by the measurement, but a loss within it is not ruled out"
    )
    return (
        f"HK-BA-002: the benign-accuracy drop on the {images} held-out images has a 95% "
        f"interval of {100 * interval[0]:.2f} to {100 * interval[1]:.2f} points, across "
        f"max_ba_drop={100 * max_ba_drop:.1f} points: {verdict}; more held-out images "
        "(--holdout) narrow the interval"
    )


class GateReport(BaseReport):
    """``gate.json``: the decision, every rule, and the evidence behind it."""

    report_type: Literal["gate"] = "gate"
    passed: bool
    exit_code: int
    """0 passed, 1 a rule failed, 3 a rule failed for an environment reason."""
    rules: list[GateRule]
    policy: dict[str, Any]
    input_model: ModelFingerprint
    output_model: ModelFingerprint
    repaired: bool
    strategy: str | None = None
    purification_status: str | None = None
    repair_rounds: list[dict[str, Any]] = Field(default_factory=list)
    """One entry per repair round: the labels repaired against, the status, the re-scan."""
    input_scan: dict[str, Any] | None = None
    rescan: dict[str, Any] | None = None
    input_ba: float | None = None
    output_ba: float | None = None
    output_ba_ci: tuple[float, float] | None = None
    ba_drop_interval: tuple[float, float] | None = None
    """95 % interval of ``input_ba - output_ba``, paired on the same held-out images
    (:func:`hardenkit.validate.paired_drop_interval`). ``HK-BA-002`` judges the measured drop;
    when this interval straddles ``max_ba_drop`` a note says the held-out set cannot tell a
    pass from a fail (stop 55)."""
    class_accuracy: list[ClassDrop] = Field(default_factory=list)
    """Per class with held-out images: accuracy of the input and of the shipped model. The
    overall BA can hide a repair that trades one class for others (``HK-BA-003``)."""
    triggers: list[TriggerMeasurement] = Field(default_factory=list)
    onnx: dict[str, Any] | None = None
    data: dict[str, Any]
    """Images each step saw and how the held-out set was obtained."""
    timings: dict[str, float]
    notes: list[str] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
    """sha256 of every file :meth:`GateResult.save` wrote beside ``gate.json``."""

    @property
    def failed_rules(self) -> list[GateRule]:
        return [r for r in self.rules if r.status == "fail"]

    def summary(self) -> str:
        """A few lines for a terminal."""
        head = "PASSED" if self.passed else "FAILED"
        lines = [f"gate {head} ({len(self.failed_rules)} of {len(self.rules)} rules failed)"]
        for r in self.rules:
            lines.append(f"  [{r.status:>7}] {r.rule_id} {r.message}")
        return "\n".join(lines)


def image_hashes(x: Tensor) -> list[str]:
    """A content hash per image (its pixels quantised to 8 bits), for overlap checks.

    Quantising first makes an image and its float/uint8 round trip hash the same.
    """
    q = (x.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
    return [hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest() for img in q]


class GateResult:
    """What :meth:`Gate.run` returns: the decision, the model that would ship, the report."""

    def __init__(
        self,
        report: GateReport,
        model: nn.Module,
        artefacts: dict[str, Any],
        workdir: Path | None,
    ) -> None:
        self.report = report
        self.model = model
        self._artefacts = artefacts
        self._workdir = workdir

    @property
    def passed(self) -> bool:
        return self.report.passed

    @property
    def exit_code(self) -> int:
        return self.report.exit_code

    @property
    def scan(self) -> ScanResult | None:
        """The scan of the input model (pass it to another ``Gate.run(scan=...)``)."""
        out: ScanResult | None = self._artefacts.get("scan")
        return out

    @property
    def rescan(self) -> ScanResult | None:
        """The re-scan of the model that ships (None without a repair, or when its repair
        round was not trusted and so not re-scanned)."""
        out: ScanResult | None = self._artefacts.get("rescan")
        return out

    def save(self, directory: str | Path) -> Path:
        """Write every output into ``directory`` and return the ``gate.json`` path.

        ``gate.json`` (with the sha256 of every other file), ``junit.xml``, ``gate.sarif``,
        ``summary.md``, ``report.html`` (a self-contained page with the figures,
        :func:`hardenkit.gate.html.html_report`), ``model.safetensors`` (the model that
        would ship), ``model.onnx`` (when exported), ``scan/`` and ``rescan/`` (the scans;
        ``rescan-<round>/`` for a re-scan that started another repair round) and
        ``purification.json``.
        With the policy's ``serving_bundle: triton`` and an ONNX export, also the Triton
        model repository ``triton/<serving_model_name>/`` (``1/model.onnx``,
        ``config.pbtxt``); ``gate.json``'s ``files`` keys are paths relative to
        ``directory``.
        """
        from ..io import file_sha256, save_state_dict
        from .html import html_report
        from .outputs import junit_xml, markdown_summary, sarif_log

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        meta = {"hardenkit_gate_report_id": self.report.report_id}
        meta.update(self._artefacts.get("weights_metadata", {}))
        written.append(save_state_dict(self.model, d / "model.safetensors", metadata=meta))
        if self._workdir is not None:
            for f in sorted(self._workdir.glob("model.onnx*")):
                shutil.copy2(f, d / f.name)
                written.append(d / f.name)
        scan = self._artefacts.get("scan")
        if scan is not None:
            scan.save(d / "scan")
        rescan = self._artefacts.get("rescan")
        if rescan is not None:
            rescan.save(d / "rescan")
        earlier = sorted(
            (
                (int(k.removeprefix("rescan-")), v)
                for k, v in self._artefacts.items()
                if k.startswith("rescan-")
            ),
            key=lambda item: item[0],
        )
        for rnd, earlier_scan in earlier:
            earlier_scan.save(d / f"rescan-{rnd}")
        purification = self._artefacts.get("purification")
        if purification is not None:
            written.append(purification.save(d / "purification.json"))
        verification = self._artefacts.get("verification")
        if verification is not None:
            written.append(verification.save(d / "onnx_verification.json"))
        (d / "junit.xml").write_text(junit_xml(self.report))
        (d / "gate.sarif").write_text(sarif_log(self.report))
        written += self._serving_bundle(d)
        (d / "summary.md").write_text(markdown_summary(self.report))
        (d / "report.html").write_text(
            html_report(self.report, scan=scan, rescan=rescan, earlier_rescans=earlier),
            encoding="utf-8",
        )
        written += [d / "junit.xml", d / "gate.sarif", d / "summary.md", d / "report.html"]
        files = {p.relative_to(d).as_posix(): file_sha256(p) for p in written}
        self.report = self.report.model_copy(update={"files": files})
        return self.report.save(d / "gate.json")

    def _serving_bundle(self, d: Path) -> list[Path]:
        """Write ``d/triton/<name>/`` from ``d/model.onnx`` when the policy asks for it."""
        serving: dict[str, Any] | None = self._artefacts.get("serving")
        if serving is None:
            return []
        if not (d / "model.onnx").is_file() or self.report.onnx is None:
            note = "no Triton serving bundle written: there is no ONNX export"
            if note not in self.report.notes:
                notes = [*self.report.notes, note]
                self.report = self.report.model_copy(update={"notes": notes})
            return []
        from ..export.triton import write_triton_repository

        model_dir = write_triton_repository(
            d / "model.onnx",
            d / "triton",
            serving["model_name"],
            max_batch_size=serving["max_batch_size"],
            instance_kind=serving["instance_kind"],
            overwrite=True,
        )
        return sorted(p for p in model_dir.rglob("*") if p.is_file())

    def __repr__(self) -> str:
        return (
            f"GateResult(passed={self.passed}, "
            f"failed={[r.rule_id for r in self.report.failed_rules]}, "
            f"repaired={self.report.repaired})"
        )


class _Rules:
    """Collects rules; a rule that cannot be evaluated is ``fail`` (fail closed) or
    ``skipped`` by the policy's ``fail_on_skipped``."""

    def __init__(self, fail_on_skipped: bool) -> None:
        self.fail_on_skipped = fail_on_skipped
        self.rules: list[GateRule] = []

    def check(
        self,
        rule_id: str,
        value: float | None,
        threshold: float,
        comparison: Literal["<=", ">="],
        what: str,
        note: str = "",
    ) -> None:
        if value is None or not math.isfinite(value):
            self.unevaluated(rule_id, f"{what} could not be measured", "evaluation")
            return
        ok = value <= threshold if comparison == "<=" else value >= threshold
        self.add(
            rule_id,
            "pass" if ok else "fail",
            f"{what} = {_pct(value)} {'meets' if ok else 'violates'} {comparison} "
            f"{_pct(threshold)}" + (f"; {note}" if note else ""),
            value=value,
            threshold=threshold,
            comparison=comparison,
            cause=None if ok else "policy",
        )

    def unevaluated(self, rule_id: str, reason: str, cause: Cause = "evaluation") -> None:
        status: RuleStatus = "fail" if self.fail_on_skipped or cause == "environment" else "skipped"
        self.add(rule_id, status, reason, cause=cause if status == "fail" else None)

    def add(
        self,
        rule_id: str,
        status: RuleStatus,
        message: str,
        *,
        value: float | str | None = None,
        threshold: float | str | None = None,
        comparison: str | None = None,
        cause: Cause | None = None,
    ) -> None:
        self.rules.append(
            GateRule(
                rule_id=rule_id,
                description=RULES[rule_id],
                status=status,
                value=value,
                threshold=threshold,
                comparison=comparison,
                message=message,
                cause=cause,
            )
        )


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


KnownTriggers = Mapping[str, tuple[Trigger | TriggerLike, int]]


class Gate:
    """A pre-deployment gate under a :class:`DeploymentPolicy` (the default one when None).

    Args:
        policy: a :class:`DeploymentPolicy`, a dict of its fields, or None (the default
            policy: quick scan, repair with ``auto`` when flagged, the re-scan must flag nothing,
            BA drop ≤ 3 points, recovered-trigger ASR ≤ 10 %, a label flagged without a
            recovered trigger fails, ONNX verified on CPU).
        runtime: device, seed, input normalization of the loaders.
        progress: optional callback ``(phase, step, total, **info)``.
    """

    def __init__(
        self,
        policy: DeploymentPolicy | dict[str, Any] | None = None,
        *,
        runtime: RuntimeConfig | dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.policy = parse_config(DeploymentPolicy, policy)
        self.runtime = parse_config(RuntimeConfig, runtime)
        self.progress = progress

    # ------------------------------------------------------------------------------ run
    def run(
        self,
        model: nn.Module,
        clean_loader: BatchSource,
        holdout_loader: BatchSource | None = None,
        *,
        known_triggers: KnownTriggers | None = None,
        num_classes: int | None = None,
        scan: ScanResult | None = None,
        weights_metadata: Mapping[str, str] | None = None,
    ) -> GateResult:
        """Run the gate on ``model`` (never modified) and return the decision.

        Args:
            model: the candidate model (float32 ``nn.Module`` mapping [0, 1] pixels to logits).
            clean_loader: clean images you trust, for scanning and repairing.
            holdout_loader: held-out clean images for the measurements; None splits
                ``policy.holdout_fraction`` off ``clean_loader``. Images that also appear in
                ``clean_loader`` (same content) are refused.
            known_triggers: ``{name: (trigger, target_label)}`` of a red team: rule
                ``HK-ASR-002`` bounds their ASR on the shipped model.
            num_classes: expected number of classes (checked against the model).
            scan: a scan of this model you already ran (e.g. ``hk.ScanResult.load(dir)``)
                instead of the gate's first scan; the re-scan of a repaired model always
                runs with the policy's settings.
            weights_metadata: extra metadata stored in the saved ``model.safetensors``.

        Raises:
            DataError / ConfigError / ModelCompatibilityError: bad input (exit 2), before any
                long step runs.
        """
        t0 = time.perf_counter()
        pol = self.policy
        inner = check_model(model, where="Gate")
        original = copy.deepcopy(inner).eval()
        rt = self.runtime
        pixel_rt = rt.model_copy(update={"input_normalization": None})
        timings: dict[str, float] = {}
        notes: list[str] = []
        rules = _Rules(pol.fail_on_skipped)
        artefacts: dict[str, Any] = {"weights_metadata": dict(weights_metadata or {})}
        # the id exists before the report: the ONNX export records it (hardenkit.gate_report_id)
        report_id = uuid.uuid4().hex
        if pol.serving_bundle == "triton":
            artefacts["serving"] = {
                "model_name": pol.serving_model_name,
                "max_batch_size": pol.serving_max_batch_size,
                "instance_kind": {"cpu": "KIND_CPU", "cuda": "KIND_GPU"}.get(pol.onnx_provider),
            }

        # 1. data ------------------------------------------------------------------------
        t = time.perf_counter()
        known = self._known(known_triggers)
        x, y = materialize(
            clean_loader,
            num_classes=num_classes,
            input_normalization=rt.input_normalization,
            device="cpu",
            where="clean_loader",
        )
        data: dict[str, Any] = {"clean_images": len(y)}
        if holdout_loader is not None:
            xh, yh = materialize(
                holdout_loader,
                num_classes=num_classes,
                input_normalization=rt.input_normalization,
                device="cpu",
                where="holdout_loader",
            )
            overlap = set(image_hashes(x)) & set(image_hashes(xh))
            hold_hashes = image_hashes(xh)
            n_over = sum(h in overlap for h in hold_hashes)
            if n_over:
                raise DataError(
                    f"{n_over} of the {len(yh)} held-out images also appear in the clean data "
                    "(same pixels): measurements on them would not be held out.",
                    hint="pass disjoint clean and held-out sets (or no holdout_loader: the "
                    "gate then splits the clean images itself)",
                )
            x_tr, y_tr, x_ho, y_ho = x, y, xh, yh
            data["holdout_source"] = "holdout_loader"
        else:
            keep, hold = stratified_split(y, holdout_fraction=pol.holdout_fraction, seed=rt.seed)
            x_tr, y_tr, x_ho, y_ho = x[keep], y[keep], x[hold], y[hold]
            train_h = set(image_hashes(x_tr))
            fresh = torch.tensor([h not in train_h for h in image_hashes(x_ho)], dtype=torch.bool)
            if not bool(fresh.all()):
                dup = int((~fresh).sum())
                notes.append(
                    f"{dup} held-out image(s) duplicate a clean image and were dropped from "
                    "the measurements"
                )
                x_ho, y_ho = x_ho[fresh], y_ho[fresh]
            data["holdout_source"] = f"split of clean_loader ({pol.holdout_fraction:.0%})"
        data.update(scan_repair_images=len(y_tr), holdout_images=len(y_ho))
        k = num_classes or _num_classes(original, x_tr[:2], rt)
        image_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        timings["data_seconds"] = time.perf_counter() - t
        if len(y_ho) < pol.min_holdout_images:
            rules.add(
                "HK-DATA-001",
                "fail",
                f"{len(y_ho)} held-out images < min_holdout_images {pol.min_holdout_images}",
                value=float(len(y_ho)),
                threshold=float(pol.min_holdout_images),
                comparison=">=",
                cause="evaluation",
            )
        else:
            rules.add(
                "HK-DATA-001",
                "pass",
                f"{len(y_ho)} held-out images (>= {pol.min_holdout_images})",
                value=float(len(y_ho)),
                threshold=float(pol.min_holdout_images),
                comparison=">=",
            )
        check = (
            self._chance_rule(rules, original, x_ho, y_ho, k, rt)
            if pol.require_above_chance and len(y_ho)
            else None
        )
        if check is not None and check.above is False:
            # every later number would be measured on images the model does not fit: stop
            # here instead of spending the scan's and the repair's minutes on them
            notes.append(
                "stopped after HK-DATA-002: the scan, repair, measurements and ONNX export "
                "did not run (fix the data, or set require_above_chance: false)"
            )
            skipped = ["HK-SCAN-001", "HK-SCAN-002"]
            skipped += ["HK-BA-001"] if pol.min_ba is not None else []
            skipped += ["HK-BA-002"]
            skipped += ["HK-BA-003"] if pol.max_class_ba_drop is not None else []
            skipped += ["HK-ASR-001"] + (["HK-ASR-002"] if known else [])
            skipped += ["HK-ONNX-001"]
            for rule_id in skipped:
                rules.add(rule_id, "skipped", "not run: HK-DATA-002 failed")
            return self._decide(
                t0,
                report_id,
                rules,
                original,
                original,
                data=data,
                timings=timings,
                notes=notes,
                artefacts=artefacts,
                in_ba=check.accuracy,
            )

        # 2. scan ------------------------------------------------------------------------
        from ..scan import Scanner
        from ..scan.budget import scan_config_for_budget

        scan_cfg = scan_config_for_budget(pol.scan_budget, pol.scan)
        scan_cfg = scan_cfg.model_copy(
            update={
                "require_above_chance": pol.require_above_chance and scan_cfg.require_above_chance
            }
        )
        train_loader = TensorLoader(x_tr, y_tr, batch_size=512)
        hold_loader = TensorLoader(x_ho, y_ho, batch_size=512)

        def do_scan(m: nn.Module, what: str) -> ScanResult | None:
            t = time.perf_counter()
            try:
                return Scanner(m, k, config=scan_cfg, runtime=pixel_rt, progress=self.progress).run(
                    train_loader
                )
            except NonFiniteError as exc:
                notes.append(f"{what} failed: {exc}")
                return None
            finally:  # every re-scan counts (one per repair round)
                key = f"{what.replace(' ', '_')}_seconds"
                timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t)

        if scan is None:
            scan = do_scan(original, "scan")
        else:
            if scan.report.num_classes != k:
                raise ConfigError(
                    f"the given scan is of a {scan.report.num_classes}-class model; this model "
                    f"has {k} classes.",
                    hint="pass the scan of this model, or no scan (the gate scans itself)",
                )
            notes.append(f"used the given scan (report {scan.report.report_id})")
        artefacts["scan"] = scan
        input_scan = None if scan is None else _scan_summary(scan)

        # 3. repair, 4. re-scan (another round while the re-scan flags the repaired model)
        shipped: nn.Module = original
        repaired = False
        purification = None
        rescan = None
        rounds: list[dict[str, Any]] = []
        # the re-scans that started another round: (round, scan)
        earlier: list[tuple[int, ScanResult]] = []
        flagged = scan is not None and not _verdict_ok(scan.verdict, pol.max_scan_verdict)
        want_repair = pol.repair == "always" or (pol.repair == "if-flagged" and flagged)
        repair_ok: bool | None = None
        repair_msg = ""
        if scan is not None and want_repair:
            from ..purify import Purifier

            current_scan = scan
            used: dict[int, Trigger] = {}
            used_asr: dict[int, float] = {}
            for rnd in range(1, pol.max_repair_rounds + 1):
                t = time.perf_counter()
                try:
                    # the repair trains on every clean image; its utility guard measures on
                    # the gate's held-out images (the same measurement as HK-BA-002, never
                    # used for training or checkpoint selection). Its own 20 % split of the
                    # clean images was too small: 8 of 200 images (4 points) made a repair
                    # "degraded" whose drop on 1,000 held-out images was 0.3 points.
                    purification = Purifier(
                        shipped,
                        pol.strategy,
                        config=pol.strategy_config or None,
                        runtime=pixel_rt,
                        progress=self.progress,
                        max_ba_drop=pol.max_ba_drop,
                        # the gate judges every trigger itself (HK-ASR-001, after the
                        # re-scan and any further repair round)
                        max_trigger_asr=None,
                    ).run(train_loader, scan=current_scan, holdout_loader=hold_loader)
                except NonFiniteError as exc:
                    notes.append(f"the repair (round {rnd}) failed: {exc}")
                    purification = None
                timings["repair_seconds"] = timings.get("repair_seconds", 0.0) + (
                    time.perf_counter() - t
                )
                if purification is None:
                    repair_ok, repair_msg = None, f"round {rnd} failed (non-finite values)"
                    break
                artefacts["purification"] = purification.report
                shipped, repaired = purification.model.eval(), True
                record: dict[str, Any] = {
                    "round": rnd,
                    "against_labels": current_scan.flagged_labels,
                    "status": purification.status,
                    "report_id": purification.report.report_id,
                }
                rounds.append(record)
                repair_ok = purification.trusted if repair_ok in (None, True) else False
                repair_msg = f"{pol.strategy}: status {purification.status!r}" + (
                    f" in round {rnd}" if rnd > 1 else ""
                )
                if not purification.trusted or not pol.rescan:
                    break
                rescan = do_scan(shipped, "rescan")
                artefacts["rescan"] = rescan
                record["rescan_verdict"] = None if rescan is None else rescan.verdict
                if (
                    rescan is None
                    or _verdict_ok(rescan.verdict, pol.max_scan_verdict)
                    or rnd == pol.max_repair_rounds
                ):
                    break
                # the next round repairs against every trigger used so far *and* the new ones:
                # fine-tuning against the new label alone let the first backdoor come back
                # (measured on the synthetic BadNets model: real-trigger ASR 1 % -> 22 %)
                if current_scan.target is not None and current_scan.trigger is not None:
                    lab = current_scan.target
                    used[lab] = current_scan.trigger
                    used_asr[lab] = current_scan.trigger_asr(lab) or 1.0
                for lab, trig in rescan.triggers.items():
                    used.setdefault(lab, trig)
                    used_asr.setdefault(lab, rescan.trigger_asr(lab) or 1.0)
                if not rescan.triggers:
                    break  # nothing to repair against (flagged by a trigger-free detector)
                notes.append(
                    f"round {rnd}: the re-scan flagged {rescan.flagged_labels}; repairing again "
                    f"against the triggers of labels {sorted(used)}"
                )
                # this re-scan judged round ``rnd``'s model, not the next round's: its triggers
                # are measured on the model that ships (``rescan-<rnd>``) and it is saved as
                # such; only a re-scan of the model that ships judges HK-SCAN-001
                earlier.append((rnd, rescan))
                artefacts[f"rescan-{rnd}"] = artefacts.pop("rescan")
                rescan = None
                current_scan = ScanResult.from_triggers(
                    used, model=shipped, num_classes=k, trigger_asr=used_asr
                )
            if repair_ok is None:
                rules.unevaluated("HK-REPAIR-001", f"the repair failed: {repair_msg}")
            elif repair_ok and len(rounds) > 1:
                # every trusted round, but more than one: fail closed (stop 57)
                rules.add(
                    "HK-REPAIR-001",
                    "fail",
                    f"{repair_msg}: the model that ships took {len(rounds)} repair rounds, and a "
                    "model repaired in more than one round is not trusted: on the three CIFAR-10 "
                    "models whose first re-scan flagged a label, the second round left the real "
                    "trigger's ASR at 14.2-15.5 % while the re-scanned triggers measured low, and "
                    "one of them passed every other rule (docs/gate.md, stop 57); look into the "
                    "labels the re-scan flagged, or repair with a stronger strategy_config",
                    value=float(len(rounds)),
                    threshold=1.0,
                    comparison="<=",
                    cause="policy",
                )
            else:
                rules.add(
                    "HK-REPAIR-001",
                    "pass" if repair_ok else "fail",
                    repair_msg
                    + (
                        ""
                        if repair_ok
                        else " is not a trusted repair (see purification.json notes)"
                    ),
                    value=purification.status if purification is not None else None,
                    threshold="purified",
                    comparison="==",
                    cause=None if repair_ok else "policy",
                )
        shipped = shipped.eval()
        judged = rescan if repaired else scan
        judged_name = "re-scan of the repaired model" if repaired else "scan of the input model"
        if repaired and not pol.rescan:
            rules.unevaluated(
                "HK-SCAN-001", "the repaired model was not re-scanned (rescan: false)"
            )
        elif repaired and judged is None and not repair_ok:
            rules.unevaluated(
                "HK-SCAN-001",
                "the repaired model was not re-scanned: its repair is not trusted (HK-REPAIR-001)",
            )
        elif judged is None:
            rules.unevaluated("HK-SCAN-001", f"the {judged_name} failed (non-finite values)")
        elif repaired and not pol.rescan_must_be_clean:
            rules.add(
                "HK-SCAN-001",
                "skipped",
                f"{judged_name}: verdict {judged.verdict} (not judged: rescan_must_be_clean "
                "is false)",
                value=judged.verdict,
            )
        else:
            ok = _verdict_ok(judged.verdict, pol.max_scan_verdict)
            flagged_txt = (
                f", flagged labels {judged.flagged_labels}" if judged.flagged_labels else ""
            )
            aimed = sorted({y for r in rounds for y in r["against_labels"]})
            before = None if scan is None else scan.report
            still = rescan_suspects(judged.report, before) if repaired else []
            still = [y for y in still if y in aimed]
            suspect_txt = ""
            if ok and still and judged.verdict == "suspicious":
                suspect_txt = (
                    f"; the repaired label {still[0]} is still its most suspicious label: the "
                    "repair removed the inverted trigger, not necessarily the backdoor (a "
                    "held-out model shipped at 68.9 % real ASR with such a re-scan, "
                    "docs/gate.md, stop 59)"
                )
                ok = pol.repaired_label_suspect == "allow"
                if ok:
                    suspect_txt += " (allowed: repaired_label_suspect is allow)"
            rules.add(
                "HK-SCAN-001",
                "pass" if ok else "fail",
                f"{judged_name}: verdict {judged.verdict} (score {judged.score:.3f}{flagged_txt})"
                + suspect_txt
                + (
                    "" if ok or repaired or pol.repair != "never" else "; the policy forbids repair"
                ),
                value=judged.verdict,
                threshold=pol.max_scan_verdict,
                comparison="<=",
                cause=None if ok else "policy",
            )
        scans = [s for s in (scan, *(r for _, r in earlier), rescan) if s is not None]
        if len(scans) < 1 + len(earlier) + int(repaired and pol.rescan and bool(repair_ok)):
            rules.unevaluated("HK-SCAN-002", "a scan did not produce a result")
        else:
            cut = [s for s in scans if not s.report.conclusive]
            if cut:
                rules.add(
                    "HK-SCAN-002",
                    "fail",
                    "a scan ran on clean images the model is at chance on: its verdict is not "
                    "conclusive"
                    if any(s.report.at_chance for s in cut)
                    else "a scan's time budget ended before its schedule: its verdict is not "
                    "conclusive",
                    cause="evaluation",
                )
            else:
                rules.add("HK-SCAN-002", "pass", f"{len(scans)} scan(s) ran to the end")

        # 5. measure on held-out images --------------------------------------------------
        t = time.perf_counter()
        measured_ok = len(y_ho) > 0
        in_ba = out_ba = None
        out_ci: tuple[float, float] | None = None
        drop_ci: tuple[float, float] | None = None
        measurements: list[TriggerMeasurement] = []
        class_accuracy: list[ClassDrop] = []
        if measured_ok:
            from ..validate import Validator

            try:
                v_in = Validator(original, num_classes=k, runtime=pixel_rt).run(hold_loader)
                v_out = Validator(shipped, num_classes=k, runtime=pixel_rt).run(hold_loader)
                in_ba = v_in.benign_accuracy.value
                out_ba = v_out.benign_accuracy.value
                class_accuracy = [
                    ClassDrop(label=a.label, images=a.total, before=a.accuracy, after=b.accuracy)
                    for a, b in zip(v_in.per_class_accuracy, v_out.per_class_accuracy, strict=True)
                    if a.accuracy is not None and b.accuracy is not None
                ]
                out_ci = (v_out.benign_accuracy.ci_low, v_out.benign_accuracy.ci_high)
                drop_ci = paired_accuracy(original, shipped, x_ho, y_ho, runtime=pixel_rt)[2]
                candidates: list[tuple[str, int, Trigger]] = []
                # every scan whose triggers were repaired against or judge the shipped model
                for src, s in (
                    ("scan", scan),
                    *((f"rescan-{rnd}", r) for rnd, r in earlier),
                    ("rescan", rescan),
                ):
                    if s is not None:
                        candidates += [(src, lab, trig) for lab, trig in s.triggers.items()]
                candidates += [(f"known:{n}", tgt, trig) for n, (trig, tgt) in known.items()]
                for src, lab, trig in candidates:
                    a_in = Validator(original, num_classes=k, runtime=pixel_rt).run(
                        hold_loader, trigger=trig, target=lab
                    )
                    a_out = Validator(shipped, num_classes=k, runtime=pixel_rt).run(
                        hold_loader, trigger=trig, target=lab
                    )
                    measurements.append(
                        TriggerMeasurement(
                            source=src,
                            label=lab,
                            input_asr=None if a_in.attack_success_rate is None else a_in.asr,
                            output_asr=None if a_out.attack_success_rate is None else a_out.asr,
                            images=a_out.triggered_samples,
                            output_top_class=a_out.trigger_top_class,
                            output_top_share=None
                            if a_out.trigger_top_share is None
                            else a_out.trigger_top_share.value,
                            output_asr_without_trigger=None
                            if a_out.asr_without_trigger is None
                            else a_out.asr_without_trigger.value,
                        )
                    )
            except NonFiniteError as exc:
                notes.append(f"measuring on the held-out images failed: {exc}")
                measured_ok = False
        timings["measure_seconds"] = time.perf_counter() - t
        if pol.min_ba is not None:
            rules.check(
                "HK-BA-001", out_ba if measured_ok else None, pol.min_ba, ">=", "benign accuracy"
            )
        drop = None if in_ba is None or out_ba is None else max(0.0, in_ba - out_ba)
        rules.check("HK-BA-002", drop, pol.max_ba_drop, "<=", "benign-accuracy drop")
        straddle = drop_interval_note(drop, drop_ci, pol.max_ba_drop, len(y_ho))
        if straddle is not None:
            notes.append(straddle)
        if pol.max_class_ba_drop is not None:
            class_rows = [c for c in class_accuracy if c.images >= pol.min_class_images]
            if not measured_ok:
                rules.unevaluated("HK-BA-003", "the held-out measurements failed")
            elif not class_rows:
                rules.unevaluated(
                    "HK-BA-003",
                    f"no class has {pol.min_class_images} held-out images (min_class_images)",
                )
            else:
                lost = max(class_rows, key=lambda c: c.drop)
                rules.check(
                    "HK-BA-003",
                    max(0.0, lost.drop),
                    pol.max_class_ba_drop,
                    "<=",
                    f"largest per-class accuracy drop (class {lost.label}, "
                    f"{_pct(lost.before)} -> {_pct(lost.after)} on {lost.images} images)",
                    note=f"{len(class_rows)} of {len(class_accuracy)} classes judged",
                )
        recovered = [m for m in measurements if not m.source.startswith("known:")]
        blind = flagged_without_trigger(scan, *(r for _, r in earlier), rescan)
        blind_fails = bool(blind) and pol.flagged_without_trigger == "fail"
        blind_txt = (
            f"flagged label(s) {blind} have no recovered trigger (a test that recovers none, "
            "e.g. prediction share, flagged them): their ASR cannot be measured here; "
            + (
                "nothing shows the repair removed them, so the gate fails closed "
                "(flagged_without_trigger: fail; scan-verdict leaves them to HK-SCAN-001)"
                if blind_fails
                else "HK-SCAN-001 (the verdict on the model that ships) judges them"
            )
            if blind
            else ""
        )
        if not measured_ok:
            rules.unevaluated("HK-ASR-001", "the held-out measurements failed")
        elif blind_fails:
            worst = max(recovered, key=lambda m: m.output_asr or 0.0, default=None)
            rules.add(
                "HK-ASR-001",
                "fail",
                blind_txt
                + (
                    ""
                    if worst is None or worst.output_asr is None
                    else f"; highest measured ASR ({worst.source}, label {worst.label}) "
                    f"{_pct(worst.output_asr)}"
                ),
                value=None if worst is None else worst.output_asr,
                threshold=pol.max_asr,
                comparison="<=",
                cause="policy",
            )
        elif not recovered:
            rules.add(
                "HK-ASR-001",
                "pass",
                blind_txt or "no scan flagged a label: nothing to measure",
                threshold=pol.max_asr,
                comparison="<=",
            )
        else:
            self._asr_rule(rules, "HK-ASR-001", recovered, pol.max_asr, note=blind_txt)
        if known:
            if not measured_ok:
                rules.unevaluated("HK-ASR-002", "the held-out measurements failed")
            else:
                mine = [m for m in measurements if m.source.startswith("known:")]
                self._asr_rule(rules, "HK-ASR-002", mine, pol.max_asr)
                if pol.max_trigger_share is not None:
                    shares = [m for m in mine if m.output_top_share is not None]
                    if len(shares) < len(mine):
                        rules.unevaluated(
                            "HK-ASR-003", "a known trigger had no eligible held-out image"
                        )
                    else:
                        top = max(shares, key=lambda m: m.output_top_share or 0.0)
                        rules.check(
                            "HK-ASR-003",
                            top.output_top_share,
                            pol.max_trigger_share,
                            "<=",
                            f"largest share moved to one other class ({top.source}, class "
                            f"{top.output_top_class})",
                        )

        # 6. ONNX ------------------------------------------------------------------------
        workdir: Path | None = None
        onnx_info: dict[str, Any] | None = None
        if pol.export_onnx:
            workdir = Path(tempfile.mkdtemp(prefix="hardenkit-gate-"))
            t = time.perf_counter()
            onnx_info = self._onnx(
                shipped, image_shape, hold_loader, workdir, rules, artefacts, report_id
            )
            timings["onnx_seconds"] = time.perf_counter() - t
        else:
            rules.unevaluated("HK-ONNX-001", "ONNX export is off in the policy (export_onnx)")

        # 7. decision --------------------------------------------------------------------
        return self._decide(
            t0,
            report_id,
            rules,
            original,
            shipped,
            data=data,
            timings=timings,
            notes=notes,
            artefacts=artefacts,
            repaired=repaired,
            purification=purification,
            rounds=rounds,
            input_scan=input_scan,
            rescan=rescan,
            in_ba=in_ba,
            out_ba=out_ba,
            out_ci=out_ci,
            drop_ci=drop_ci,
            measurements=measurements,
            class_accuracy=class_accuracy,
            onnx_info=onnx_info,
            workdir=workdir,
        )

    # ------------------------------------------------------------------------- helpers
    def _decide(
        self,
        t0: float,
        report_id: str,
        rules: _Rules,
        original: nn.Module,
        shipped: nn.Module,
        *,
        data: dict[str, Any],
        timings: dict[str, float],
        notes: list[str],
        artefacts: dict[str, Any],
        repaired: bool = False,
        purification: PurificationResult | None = None,
        rounds: list[dict[str, Any]] | None = None,
        input_scan: dict[str, Any] | None = None,
        rescan: ScanResult | None = None,
        in_ba: float | None = None,
        out_ba: float | None = None,
        out_ci: tuple[float, float] | None = None,
        drop_ci: tuple[float, float] | None = None,
        measurements: list[TriggerMeasurement] | None = None,
        class_accuracy: list[ClassDrop] | None = None,
        onnx_info: dict[str, Any] | None = None,
        workdir: Path | None = None,
    ) -> GateResult:
        """The decision: passed when no rule failed; the report and the result."""
        pol = self.policy
        failed = [r for r in rules.rules if r.status == "fail"]
        passed = not failed
        exit_code = EXIT_PASS
        if failed:
            exit_code = (
                EXIT_ENVIRONMENT if any(r.cause == "environment" for r in failed) else EXIT_FAILED
            )
        timings["total_seconds"] = time.perf_counter() - t0
        report = GateReport(
            report_id=report_id,
            passed=passed,
            exit_code=exit_code,
            rules=rules.rules,
            policy=pol.model_dump(mode="json"),
            input_model=ModelFingerprint.of(original),
            output_model=ModelFingerprint.of(shipped),
            repaired=repaired,
            strategy=pol.strategy if repaired else None,
            purification_status=None if purification is None else purification.status,
            repair_rounds=rounds or [],
            input_scan=input_scan,
            rescan=None if rescan is None else _scan_summary(rescan),
            input_ba=in_ba,
            output_ba=out_ba,
            output_ba_ci=out_ci,
            ba_drop_interval=drop_ci,
            class_accuracy=class_accuracy or [],
            triggers=measurements or [],
            onnx=onnx_info,
            data=data,
            timings=timings,
            notes=notes,
        )
        _log.info(
            "gate.done",
            passed=passed,
            failed=[r.rule_id for r in failed],
            repaired=repaired,
            seconds=timings["total_seconds"],
        )
        return GateResult(report, shipped, artefacts, workdir)

    @staticmethod
    def _chance_rule(
        rules: _Rules, model: nn.Module, x: Tensor, y: Tensor, k: int, rt: RuntimeConfig
    ) -> ChanceCheck | None:
        """``HK-DATA-002``: the input model must beat chance on the held-out images
        (else every BA and ASR the gate measures on them is meaningless). The check, None when
        it could not be made."""
        pixel_rt = rt.model_copy(update={"input_normalization": None})
        try:
            check = chance_check_of(model, x, y, k, runtime=pixel_rt)
        except NonFiniteError as exc:
            rules.unevaluated("HK-DATA-002", f"the input model's logits are not finite: {exc}")
            return None
        if check.classes == 1:
            rules.unevaluated(
                "HK-DATA-002",
                f"{check.describe()}: hold out images of several classes (the BA and ASR the "
                "gate measures would see one class only)",
            )
            return check
        failed = check.above is False
        if failed:
            _log.warning("gate.at_chance", accuracy=check.accuracy, chance=check.chance)
            message = (
                f"the input model is no better than chance on the held-out images "
                f"({check.describe()}): the images or labels do not fit the model (class "
                "order, pixel range, normalisation, or the wrong weights); check them with "
                "hardenkit validate before gating"
            )
        elif check.above is None:
            message = f"too few held-out images to tell the model from chance ({check.describe()})"
        else:
            message = check.describe()
        rules.add(
            "HK-DATA-002",
            "fail" if failed else "pass",
            message,
            value=check.ci_low,
            threshold=check.chance,
            comparison=">",
            cause="evaluation" if failed else None,
        )
        return check

    @staticmethod
    def _known(known: KnownTriggers | None) -> dict[str, tuple[Trigger, int]]:
        if known is None:
            return {}
        if not isinstance(known, Mapping):
            raise ConfigError(
                f"known_triggers must be a mapping {{name: (trigger, target)}}, got "
                f"{type(known).__name__}.",
                hint="e.g. known_triggers={'patch': (hk.PatchTrigger.square(3), 0)}",
            )
        out: dict[str, tuple[Trigger, int]] = {}
        for name, pair in known.items():
            if not isinstance(pair, Sequence) or len(pair) != 2:
                raise ConfigError(
                    f"known_triggers[{name!r}] must be a (trigger, target_label) pair.",
                    hint="e.g. (hk.PatchTrigger.square(3), 0)",
                )
            out[str(name)] = (as_trigger(pair[0]), int(pair[1]))
        return out

    @staticmethod
    def _asr_rule(
        rules: _Rules,
        rule_id: str,
        rows: list[TriggerMeasurement],
        bound: float,
        note: str = "",
    ) -> None:
        values = [m.output_asr for m in rows]
        if any(v is None for v in values):
            rules.unevaluated(rule_id, "a trigger's ASR could not be measured (no eligible image)")
            return
        worst = max(rows, key=lambda m: m.output_asr or 0.0)
        base = worst.output_asr_without_trigger
        floor = (
            []
            if base is None
            else [
                f"the shipped model predicts label {worst.label} on {_pct(base)} of the same "
                "images without the trigger"
            ]
        )
        rules.check(
            rule_id,
            worst.output_asr,
            bound,
            "<=",
            f"highest ASR ({worst.source}, label {worst.label})",
            note="; ".join(floor + ([note] if note else [])),
        )

    def _onnx(
        self,
        model: nn.Module,
        image_shape: tuple[int, int, int],
        hold_loader: TensorLoader,
        workdir: Path,
        rules: _Rules,
        artefacts: dict[str, Any],
        report_id: str,
    ) -> dict[str, Any] | None:
        from ..export import to_onnx, verify_onnx

        pol = self.policy
        providers: list[str] | None
        if pol.onnx_provider == "cpu":
            providers = ["CPUExecutionProvider"]
        elif pol.onnx_provider == "cuda":
            providers = ["CUDAExecutionProvider"]
        else:
            providers = None
        try:
            exp = to_onnx(
                model, workdir / "model.onnx", input_shape=image_shape, gate_report_id=report_id
            )
        except (ExportError, RuntimeError) as exc:
            rules.unevaluated("HK-ONNX-001", f"the ONNX export failed: {exc}")
            return None
        info: dict[str, Any] = {
            "path": "model.onnx",
            "sha256": exp.files[0].sha256,
            "files": {f.name: f.sha256 for f in exp.files},
            "opset": exp.opset,
        }
        try:
            ver = verify_onnx(
                exp, model, hold_loader, providers=providers, config=pol.parity or None
            )
        except ImportError as exc:
            rules.unevaluated(
                "HK-ONNX-001", f"ONNX Runtime is not installed: {exc}", cause="environment"
            )
            return info
        except ExecutionProviderError as exc:
            rules.unevaluated(
                "HK-ONNX-002",
                f"ONNX Runtime could not run on {pol.onnx_provider}: {exc}",
                cause="environment",
            )
            return info
        except (NonFiniteError, ParityError, ExportError) as exc:
            rules.unevaluated("HK-ONNX-001", f"the ONNX verification failed: {exc}")
            return info
        artefacts["verification"] = ver
        active = ver.providers_active[0] if ver.providers_active else "?"
        info.update(
            provider=active,
            verification_passed=ver.passed,
            onnx_ba=ver.onnx_metrics.benign_accuracy.value,
            torch_ba=ver.torch_metrics.benign_accuracy.value,
            checks=[c.model_dump() for c in ver.checks],
        )
        failed = [c.name for c in ver.failed_checks]
        rules.add(
            "HK-ONNX-001",
            "pass" if ver.passed else "fail",
            "ONNX Runtime matches PyTorch: "
            + ("every check passed" if ver.passed else f"failed {', '.join(failed)}")
            + f" ({ver.samples} images)",
            value="passed" if ver.passed else "failed",
            threshold="passed",
            comparison="==",
            cause=None if ver.passed else "policy",
        )
        want = providers[0] if providers else active
        ok = active == want
        rules.add(
            "HK-ONNX-002",
            "pass" if ok else "fail",
            f"ONNX Runtime ran on {active}" + ("" if ok else f", the policy requires {want}"),
            value=active,
            threshold=want,
            comparison="==",
            cause=None if ok else "environment",
        )
        return info


_SEVERITY = {"clean": 0, "suspicious": 1, "backdoored": 2}


def flagged_without_trigger(*scans: ScanResult | None) -> list[int]:
    """Labels some scan flagged without recovering a trigger for them (sorted): their ASR
    cannot be measured, only the re-scan's verdict judges them.

    >>> from types import SimpleNamespace as S
    >>> flagged_without_trigger(S(flagged_labels=[1, 7], triggers={7: None}), None)
    [1]
    """
    out: set[int] = set()
    for s in scans:
        if s is not None:
            out |= {lab for lab in s.flagged_labels if lab not in s.triggers}
    return sorted(out)


def rescan_suspects(report: ScanReport, before: ScanReport | None = None) -> list[int]:
    """The label each ``suspicious`` detector of a scan ranks most extreme on its suspicious
    side (Neural Cleanse: the smallest mask), most anomalous detector first: what
    ``repaired_label_suspect`` compares with the labels a repair was aimed at.

    With ``before`` (the input model's scan), a detector's suspect counts only when the same
    detector had singled that label out before the repair too — flagged it, or ranked it most
    extreme with a verdict other than ``clean`` — or did not run then: an anomaly the repair
    left in place, not one it made. (Stop 60: MCL against a warp trigger that ``warp`` had
    flagged made the same label Neural Cleanse's smallest mask on a model whose real ASR it had
    cut to 2.45 %; Neural Cleanse had pointed at another label before.)

    >>> from types import SimpleNamespace as S
    >>> row = lambda y, v: S(label=y, value=v)
    >>> nc = lambda verdict, flagged, small: S(detector="neural-cleanse", verdict=verdict,
    ...     classes=[row(y, 10.0 if y == small else 60.0) for y in range(3)],
    ...     suspicious_side="low", anomaly_index=1.5, flagged_labels=flagged)
    >>> after = S(detectors=[nc("suspicious", [], 2)])
    >>> rescan_suspects(after), rescan_suspects(after, S(detectors=[nc("backdoored", [2], 2)]))
    ([2], [2])
    >>> rescan_suspects(after, S(detectors=[nc("suspicious", [], 0)]))  # a new suspect
    []
    """
    rows = sorted(
        (d for d in report.detectors if d.verdict == "suspicious" and d.classes),
        key=lambda d: -d.anomaly_index,
    )
    prior = {d.detector: d for d in before.detectors} if before is not None else {}
    out: list[int] = []
    for d in rows:
        label = most_extreme_label(d)
        p = prior.get(d.detector)
        singled_out = (
            p is None
            or not p.classes
            or label in p.flagged_labels
            or (p.verdict != "clean" and most_extreme_label(p) == label)
        )
        if not singled_out:
            continue
        if label not in out:
            out.append(label)
    return out


def _verdict_ok(verdict: str, worst: str) -> bool:
    """Whether a scan ``verdict`` is no worse than the policy's ``worst`` allowed verdict."""
    return _SEVERITY[verdict] <= _SEVERITY[worst]


def _num_classes(model: nn.Module, probe: Tensor, rt: RuntimeConfig) -> int:
    from ..training import infer_num_classes

    device = rt.resolve_device()
    m = copy.deepcopy(model).to(device).eval()
    return infer_num_classes(m, probe.to(device))


def _scan_summary(scan: Any) -> dict[str, Any]:
    return {
        "verdict": scan.verdict,
        "score": scan.score,
        "flagged_labels": scan.flagged_labels,
        "conclusive": scan.report.conclusive,
        "report_id": scan.report.report_id,
        "detectors": [d.detector for d in scan.report.detectors],
    }

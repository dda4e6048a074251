"""The deployment policy of :class:`~hardenkit.gate.Gate`: what a model must show to ship.

A policy is a pydantic model (frozen, unknown keys rejected with the nearest valid key
suggested), read from YAML or JSON by ``hardenkit gate --policy``; ``hardenkit schema
gate-policy`` prints its JSON Schema. Rates are fractions in [0, 1].

Example:
    >>> from hardenkit.gate import DeploymentPolicy
    >>> p = DeploymentPolicy(repair="never", max_asr=0.05)
    >>> p.repair, p.max_ba_drop, p.onnx_provider
    ('never', 0.03, 'cpu')
    >>> DeploymentPolicy(max_asrr=0.05)
    Traceback (most recent call last):
    ...
    hardenkit.errors.ConfigError: Invalid DeploymentPolicy: max_asrr: ...did you mean 'max_asr'?...
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import HardenkitConfig

__all__ = ["DeploymentPolicy"]

Fraction = Annotated[float, Field(ge=0, le=1)]


class DeploymentPolicy(HardenkitConfig):
    """What the gate checks and how strictly (the default is the documented default policy).

    Attributes:
        policy_version: the policy file format (1).
        scan_budget: Scanner preset for the scans (``quick``, ``standard``, ``thorough``; see
            ``hardenkit.scan.budget``).
        scan: ``ScanConfig`` fields that override the preset (e.g. ``{"detectors":
            ["neural-cleanse", "pixel"]}``).
        repair: ``if-flagged`` (default) — repair a model whose scan verdict is worse than
            ``max_scan_verdict`` with ``strategy``; ``never`` — such a model fails;
            ``always`` — repair every model.
        strategy: the purification strategy of a repair (``hardenkit strategies``).
        strategy_config: that strategy's config fields.
        rescan: re-scan the repaired model; with ``rescan_must_be_clean`` its verdict must be
            no worse than ``max_scan_verdict`` to ship (rule ``HK-SCAN-001`` judges the model
            that ships).
        max_scan_verdict: the worst scan verdict the shipped model may have. ``suspicious``
            (default) ships a model with no flagged label whose highest anomaly index lies in
            the band just under the flag threshold; ``clean`` fails it too. Not ``clean`` by
            default: a clean model's highest Neural Cleanse anomaly index reached 1.62
            (score 0.32, ``suspicious``) in ``benchmarks/results/scanner_zoo.md``.
        max_repair_rounds: when the re-scan of a repaired model flags a label again, repair
            it once more against every trigger used so far plus the re-scan's, and re-scan,
            up to this many rounds in all (1: no second round). A model that took more than
            one round fails ``HK-REPAIR-001`` (stop 57): on the three CIFAR-10 models whose
            first re-scan flagged a label, the second round left the real trigger at
            14.2-15.5 % (after 1.74 and 7.20 % on two of them) while the triggers it aimed
            at measured low, and one passed every other rule. Rounds > 1 are for
            investigation: the report shows whether further rounds clear the re-scan.
        rescan_must_be_clean: see ``rescan``; False records the re-scan without judging it.
        repaired_label_suspect: a re-scan of the repaired model whose verdict is
            ``suspicious`` because of a label the repair was aimed at (a detector whose own
            verdict is ``suspicious`` ranks that label most extreme, and had singled it out in
            the input model's scan too — flagged it, or ranked it first with a verdict other
            than ``clean`` — or did not run then): ``fail`` (default) fails ``HK-SCAN-001``;
            ``allow`` judges the verdict alone. The repair removed the inverted trigger, which
            says little about the real one while the label stays the scan's first suspect: the
            default gate shipped a held-out FTrojan-style model at 68.9 % real ASR with this
            re-scan (stop 59, docs/gate.md). A suspect the same detector had not pointed at
            before is one the repair made: stop 60 measured such a re-scan on a repaired WaNet
            model at 2.45 % real ASR.
        min_ba: lowest benign accuracy of the shipped model on held-out data (None: no rule).
        max_ba_drop: largest benign-accuracy loss of the shipped model against the input
            model, on the same held-out images.
        max_class_ba_drop: largest accuracy loss of any one class (``HK-BA-003``; None, the
            default: no rule). Overall BA hides a repair that trades classes: the gate's
            repairs of two scanner-zoo SIG models *raised* BA by 3.4 and 3.5 points while one
            class lost 13.6 and 17.8 (``benchmarks/results/gate_user_script_trigger_effect.md``,
            "largest class drop"). Judged on classes with at least ``min_class_images`` held-out
            images (the point estimate; on 200 images a class's accuracy has a 95 % interval
            about ±7 points wide).
        min_class_images: fewer held-out images of a class leave it out of ``HK-BA-003``.
        max_asr: highest attack success rate of every recovered trigger (from both scans) and
            every known trigger on the shipped model, on held-out images.
        flagged_without_trigger: what ``HK-ASR-001`` does with a label a scan (input or re-scan)
            flagged without recovering a trigger for it (the prediction-share test flags a SIG-style
            clean-label target this way), so that no ASR of the shipped model can be measured
            for it: ``fail`` (default since stop 41) — the gate fails closed, since nothing
            shows the repair removed that backdoor; ``scan-verdict`` — the rule names the
            label and leaves the judgement to ``HK-SCAN-001`` (the re-scan of the shipped
            model), the behaviour before. On the scanner zoo's user-style SIG models
            ``scan-verdict`` passed one repaired model whose real trigger still reached
            12.10 % (``benchmarks/results/gate_user_script.md``).
        max_trigger_share: highest share of held-out images that a *known* trigger may move
            to one class other than its target (and their own class) on the shipped model
            (rule ``HK-ASR-003``; None: no rule). A repair that redirected a backdoor instead
            of removing it reads as ASR 0 % with most triggered images on one other class.
        holdout_fraction: share of the clean images held out for the measurements when no
            ``holdout_loader`` is given (stratified; the rest scans and repairs).
        min_holdout_images: fewer held-out images fail ``HK-DATA-001`` (too few to measure).
        require_above_chance: ``HK-DATA-002`` — the input model must be better than chance
            on the held-out images (the lower end of its accuracy's 95 % Wilson interval
            above the accuracy of predictions unrelated to the images, with the model's own
            class frequencies — Cohen's kappa's chance agreement, so imbalanced labels do not
            make a good model look like a guess; judged with at least 5 images per class; a
            held-out set of one class cannot be judged: the rule is not evaluated, which
            fails the gate under ``fail_on_skipped``). A model at chance means the images or
            labels do not fit it (class order, pixel range, normalisation), and every BA and
            ASR measured on them is meaningless: the gate then stops (no scan, repair,
            measurement or export; those rules are ``skipped``). False: no rule.
        export_onnx: export the shipped model to ONNX and verify it on ONNX Runtime.
        onnx_provider: the execution provider the verification must actually run on:
            ``cpu``, ``cuda`` or ``auto`` (CUDA when ONNX Runtime and torch see a GPU).
        parity: ``ParityTolerance`` fields overriding the provider's profile.
        fail_on_skipped: a rule that could not be evaluated fails the gate (fail closed);
            False reports it as ``skipped`` without failing.
        serving_bundle: ``triton`` makes ``GateResult.save`` also write a Triton Inference
            Server model repository, ``triton/<serving_model_name>/1/model.onnx`` +
            ``config.pbtxt``, from the ONNX export (needs ``export_onnx``); ``none`` writes none.
        serving_model_name: the Triton model name (and directory): letters, digits, ``_``,
            ``-``, ``.``.
        serving_max_batch_size: the bundle's ``max_batch_size`` (Triton batches requests up
            to it; the export's batch axis is dynamic).
    """

    policy_version: Literal[1] = 1
    scan_budget: Literal["quick", "standard", "thorough"] = "quick"
    scan: dict[str, Any] = Field(default_factory=dict)
    repair: Literal["never", "if-flagged", "always"] = "if-flagged"
    strategy: str = "auto"
    strategy_config: dict[str, Any] = Field(default_factory=dict)
    rescan: bool = True
    max_repair_rounds: Annotated[int, Field(ge=1, le=5)] = 1
    rescan_must_be_clean: bool = True
    repaired_label_suspect: Literal["fail", "allow"] = "fail"
    max_scan_verdict: Literal["clean", "suspicious"] = "suspicious"
    min_ba: Fraction | None = None
    max_ba_drop: Fraction = 0.03
    max_class_ba_drop: Fraction | None = None
    min_class_images: Annotated[int, Field(ge=1)] = 50
    max_asr: Fraction = 0.10
    flagged_without_trigger: Literal["fail", "scan-verdict"] = "fail"
    max_trigger_share: Fraction | None = 0.5
    holdout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    min_holdout_images: Annotated[int, Field(ge=1)] = 100
    require_above_chance: bool = True
    export_onnx: bool = True
    onnx_provider: Literal["cpu", "cuda", "auto"] = "cpu"
    parity: dict[str, Any] = Field(default_factory=dict)
    fail_on_skipped: bool = True
    serving_bundle: Literal["none", "triton"] = "none"
    serving_model_name: str = "hardenkit_model"
    serving_max_batch_size: Annotated[int, Field(ge=1)] = 64

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        from ..purify import STRATEGIES

        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; registered: {STRATEGIES.names()}")
        return v

    @field_validator("scan")
    @classmethod
    def _scan_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        from ..scan import ScanConfig

        ScanConfig(**v)  # raises with the field name
        return v

    @field_validator("serving_model_name")
    @classmethod
    def _serving_name(cls, v: str) -> str:
        from ..errors import ConfigError
        from ..export.triton import check_triton_model_name

        try:
            return check_triton_model_name(v)
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _bundle_needs_onnx(self) -> DeploymentPolicy:
        if self.serving_bundle != "none" and not self.export_onnx:
            raise ValueError(
                f"serving_bundle {self.serving_bundle!r} is built from the ONNX export; set "
                "export_onnx: true or serving_bundle: none"
            )
        return self

    @field_validator("parity")
    @classmethod
    def _parity_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        from ..export.verify import ParityTolerance

        ParityTolerance(**v)
        return v

"""MCL — model-contrastive learning for backdoor elimination (ALGORITHMS.md §1).

Stage 1 (trigger synthesis) is the Scanner: Neural Cleanse inverts a mask+pattern trigger for
every label and the flagged labels' triggers are used (the 2022 reference code also used NC
mask+pattern inversion; the 2023 code's PixelBackdoor inversion is not reproduced). Stage 2
fine-tunes a copy of the model so that its penultimate feature of a *triggered* image moves
toward the frozen original's feature of the *clean* image (positive) and away from the frozen
original's feature of the triggered image (negative), with an InfoNCE loss at temperature τ.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from .._utils.distributed import train_step
from .._utils.model_checks import require_trainable
from ..errors import HardenkitError
from ..logging import get_logger
from ..models import FeatureExtractor
from ..scan import ScanConfig, Scanner
from ..training import trigger_asr
from ..triggers import MaskPatternTrigger, Trigger
from .base import (
    STRATEGIES,
    CheckpointSelector,
    PurificationStrategy,
    PurifyContext,
    Selection,
    StoreBatches,
    StrategyConfig,
    StrategyOutcome,
    TriggerLabels,
    epoch_passes,
    pixel_runtime,
    select_triggers,
    with_preset,
)
from .calibration import recalibrate_prior

__all__ = ["MCLConfig", "MCLStrategy"]

_log = get_logger("purify.mcl")

_PAPER: dict[str, Any] = {
    "anchor_weight": 0.0,
    "selection": "final",
    "validation_fraction": 0.0,
    "recalibrate_prior": False,
    "inversion_restarts": 0,
}
"""The reference code's stage 2: the contrastive loss alone, the last epoch, every clean image
trains."""


class MCLConfig(StrategyConfig):
    """MCL stage-2 settings (the reference code for CIFAR-10, plus a clean-feature anchor and
    best-validated-epoch selection by default; ``preset="paper"`` is the reference code).

    Attributes:
        preset: ``default`` (the fields below) or ``paper`` — the reference code's procedure:
            ``anchor_weight`` 0, ``selection="final"``, ``validation_fraction`` 0,
            ``recalibrate_prior`` off (fields you set win). Measured in docs/purification.md:
            on the scanner zoo's residual-net BadNets model the paper procedure removed the
            backdoor at −13.2 BA points, the default at −1.6.
        temperature: τ of the InfoNCE loss over cosine similarities.
        epochs: fine-tuning passes over the clean images.
        batch_size: images per step (incomplete last batches are dropped, as in the code).
        lr_schedule: ``(epoch, lr)`` pairs; the LR is set at the start of each listed epoch
            (code: 0.1 at epoch 0, 0.01 from 1, 0.001 from 10).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        ce_weight: weight of an optional cross-entropy term on the clean images (code: 0,
            contrastive loss only).
        bn_mode: ``triggered`` — the student's BatchNorm statistics update on triggered
            images only (the code); ``clean-and-triggered`` — clean and triggered images go
            through the student together; ``frozen`` — BatchNorm layers stay in eval mode.
        min_trigger_asr: a recovered trigger is used only if its attack success rate on
            held-out clean images reaches this bound (the code's inversion bound is 0.9);
            weaker triggers are skipped with a note, and with none left the model is
            returned unchanged with status ``refused`` (never contrast identical inputs).
        selection: which epoch is returned: ``final`` — the last epoch (the reference code);
            ``best-val`` (default) — the highest validation BA among epochs whose used
            triggers reach at most ``selection_max_asr`` on the validation split (the lowest
            ASR when none does); ``best-val-ba`` — the highest validation BA. Both need a
            validation split (``validation_fraction`` > 0); without one they keep the last
            epoch.
        selection_max_asr: the ASR bound of ``best-val`` selection.
        trigger_labels: ``most-anomalous`` (default) — contrast against the most anomalous
            flagged label's trigger only; ``all-flagged`` — against every flagged label's
            (the reference code, which had one target; a falsely flagged label's trigger
            teaches the model to ignore a natural feature). Triggers you supply with
            ``ScanResult.from_triggers`` are all used.
        validation_fraction: share of the purification images held out (stratified) as the
            validation split of ``best-val`` selection (default 0.1; 0, the reference code:
            every clean image trains).
        anchor_weight: weight of a clean-feature anchor ``1 − cos(φ_student(x), φ_orig(x))``
            on the clean images of each batch (default 3; 0, the reference code: none). The
            contrastive loss alone only constrains triggered images, so clean features drift.
            3 rather than 1 since stop 34: it met MCL's aim (ASR <= 2 % at <= 2 BA points) on
            4 of 4 CIFAR-10 protocol fixtures (1 with weight 1) and 7 of 10 zoo models (4),
            leaving somewhat more of some patch backdoors (docs/benchmarks.md).
        recalibrate_prior: after the epoch selection, refit the output layer's bias so the
            repaired model's predicted probabilities on the clean training images match the
            input model's (:func:`~hardenkit.purify.calibration.calibrate_output_bias`;
            **opt-in**); undone when it lifts an inverted trigger's validation ASR above
            ``max(selection_max_asr, the ASR before)``, skipped with a note when the model's
            logits are not its last ``nn.Linear``'s output; recorded in ``details`` as
            ``prior_calibration``. The contrastive loss can shrink the target label on clean
            images (a CIFAR-10 user model's target class 64.6 → 42.3 %; recalibrated 63.2 %,
            largest class drop 7.7–12.8 → 3.1–6.2 points on five held-out zoo models,
            ``benchmarks/results/class_prior_probe.md``), but where the repair suppressed the
            target label to hide a trigger it did not remove, the recalibration brings the
            trigger back where the inverted trigger cannot show it (the demo model: real ASR
            1.22 → 12.67 %, inverted trigger 1.1 %) — hence not the default.
        inversion_restarts: also contrast against this many more Neural Cleanse inversions
            of each label used, from other random starts (runtime seeds ``seed + 1`` ...
            ``seed + inversion_restarts``; the Purifier's scan settings with
            ``detectors=["neural-cleanse"]``, that label only — :meth:`Scanner.invert
            <hardenkit.scan.Scanner.invert>` — on the purification images); image ``j`` of a
            batch gets trigger ``j mod t`` of all ``t``, the selection bounds the largest ASR of
            them, and a restart below ``min_trigger_asr`` is skipped with a note. Also for
            triggers you supplied (kept; the restarts are added). **Opt-in** (default 0): one
            inversion can be a mask MCL unlearns without unlearning the backdoor (a user-script
            residual net's texture trigger: 64.82 % real ASR after MCL against one inversion of
            its label, 0.00 % against either of two other random starts, 0.02 % against the
            three together; ``benchmarks/mcl_inversion.py``).

    >>> MCLConfig(preset="paper").resolved().anchor_weight, MCLConfig().anchor_weight
    (0.0, 3.0)
    >>> MCLConfig(recalibrate_prior=True, preset="paper").resolved().recalibrate_prior
    True
    """

    preset: Literal["default", "paper"] = "default"

    temperature: Annotated[float, Field(gt=0)] = 0.5
    epochs: Annotated[int, Field(ge=1)] = 20
    batch_size: Annotated[int, Field(ge=2)] = 64
    lr_schedule: tuple[tuple[int, float], ...] = ((0, 0.1), (1, 0.01), (10, 0.001))
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    ce_weight: Annotated[float, Field(ge=0)] = 0.0
    bn_mode: Literal["triggered", "clean-and-triggered", "frozen"] = "triggered"
    min_trigger_asr: Annotated[float, Field(ge=0, le=1)] = 0.9
    selection: Selection = "best-val"
    selection_max_asr: Annotated[float, Field(ge=0, le=1)] = 0.1
    trigger_labels: TriggerLabels = "most-anomalous"
    validation_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    anchor_weight: Annotated[float, Field(ge=0)] = 3.0
    recalibrate_prior: bool = False
    inversion_restarts: Annotated[int, Field(ge=0)] = 0

    @field_validator("lr_schedule")
    @classmethod
    def _schedule(cls, v: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
        if not v or v[0][0] != 0:
            raise ValueError("lr_schedule must start at epoch 0, e.g. [[0, 0.1], [1, 0.01]]")
        epochs = [e for e, _ in v]
        if epochs != sorted(set(epochs)) or any(lr <= 0 for _, lr in v):
            raise ValueError("lr_schedule epochs must increase and learning rates be > 0")
        return v

    def lr_at(self, epoch: int) -> float:
        return [lr for e, lr in self.lr_schedule if e <= epoch][-1]

    def resolved(self) -> MCLConfig:
        """This config with the ``paper`` preset's values under the fields set explicitly."""
        return with_preset(self, _PAPER) if self.preset == "paper" else self


class MCLStrategy(PurificationStrategy):
    """Model-contrastive fine-tuning on the scan's inverted trigger(s) (needs a flagged label).

    With several triggers (``trigger_labels="all-flagged"``) each triggered image gets one of
    them in turn.
    """

    name = "mcl"
    config_cls = MCLConfig
    needs_trigger = True
    config: MCLConfig

    def __init__(self, config: StrategyConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.config = self.config.resolved()  # the paper preset's values, when asked for
        self.validation_fraction = self.config.validation_fraction

    def estimate_passes(self) -> tuple[float, float] | None:
        # per image and step: the student's forward and backward of the clean and the
        # triggered copy, the teacher's forwards, the validation passes: 3.32-3.46 measured;
        # inversion_restarts' extra inversions are not included
        return epoch_passes(self.config.epochs, (3.2, 3.7))

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        cfg = self.config
        assert ctx.scan is not None
        usable: list[tuple[int, Trigger]] = []
        if not ctx.scan.triggers:
            ctx.notes.append(
                f"MCL refused: the scan flagged {ctx.scan.flagged_labels} but recovered no "
                "trigger for them (no trigger-recovering detector such as neural-cleanse "
                "flagged them); the model is returned unchanged. Use a trigger-free strategy."
            )
            return StrategyOutcome(model=ctx.model, status="refused")
        for label, trig in select_triggers(ctx.scan, cfg.trigger_labels):
            asr = ctx.scan.trigger_asr(label)
            where = "held-out clean images (scan)"
            if asr is None:
                asr = trigger_asr(ctx.original, trig, ctx.images, ctx.y, label, ctx.runtime)
                where = "the purification images"
            if asr < cfg.min_trigger_asr:
                ctx.notes.append(
                    f"skipped the inverted trigger of label {label}: its ASR on {where} is "
                    f"{100 * asr:.1f}% < min_trigger_asr {100 * cfg.min_trigger_asr:.0f}%"
                )
                continue
            usable.append((label, trig))
        if not usable:
            ctx.notes.append(
                "MCL refused: no inverted trigger is strong enough to contrast against; the "
                "model is returned unchanged. Lower min_trigger_asr, re-scan with more epochs, "
                "or use a trigger-free strategy."
            )
            _log.warning("purify.refused", strategy=self.name, reason="weak triggers")
            return StrategyOutcome(model=ctx.model, status="refused")
        restarts: list[dict[str, Any]] = []
        if cfg.inversion_restarts > 0:
            usable, restarts = self._restarts(ctx, usable)
        student = ctx.model
        require_trainable(student, where="mcl")
        selector = CheckpointSelector(
            ctx, cfg.selection, max_asr=cfg.selection_max_asr, triggers=usable
        )
        teacher = ctx.original
        fx_s = FeatureExtractor(student, penultimate=True)
        fx_t = FeatureExtractor(teacher, penultimate=True)
        params = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.SGD(
            params, lr=cfg.lr_at(0), momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        n = len(ctx.y)
        bs = min(cfg.batch_size, n)
        steps = max(1, n // bs)
        g = torch.Generator().manual_seed(ctx.runtime.seed + 13)
        epochs_done = 0
        last_loss = float("nan")
        stopped = False
        try:
            for epoch in range(cfg.epochs):
                for group in opt.param_groups:
                    group["lr"] = cfg.lr_at(epoch)
                student.train()
                if cfg.bn_mode == "frozen":
                    for m in student.modules():
                        if isinstance(m, nn.modules.batchnorm._BatchNorm):
                            m.eval()
                perm = torch.randperm(n, generator=g).to(ctx.device)
                tot = 0.0
                for s in range(steps):
                    if ctx.budget():
                        stopped = True
                        break
                    idx = perm[s * bs : (s + 1) * bs]

                    def shard_loss(local: torch.Tensor, part: slice) -> torch.Tensor:
                        xb, yb = ctx.images[local], ctx.y[local]
                        xt = xb.clone()
                        t = len(usable)
                        for i, (_, trig) in enumerate(usable):
                            # image j of the global batch gets trigger j mod t
                            first = (i - (part.start or 0)) % t
                            xt[first::t] = trig.apply(xb[first::t])
                        return self._loss(fx_s, fx_t, xb, xt, yb)

                    opt.zero_grad(set_to_none=True)
                    loss = train_step(ctx.dist, idx, shard_loss, params)
                    opt.step()
                    tot += float(loss)
                if stopped and tot == 0.0:  # the budget ended before this epoch's first step
                    break
                if ctx.dist is not None:
                    ctx.dist.sync_buffers(student)
                last_loss = tot / max(1, steps)
                epochs_done += 1
                selector.update(student, epochs_done)
                ctx.progress("purify[mcl]", epoch + 1, cfg.epochs, loss=last_loss)
                _log.debug("purify.epoch", strategy=self.name, epoch=epoch + 1, loss=last_loss)
                if stopped:
                    break
        finally:
            fx_s.close()
            fx_t.close()
            opt.zero_grad(set_to_none=True)
        record = selector.finish(student, epochs_done)
        student.eval()
        details: dict[str, Any] = {
            "triggers": list(dict.fromkeys(lab for lab, _ in usable)),
            "final_loss": last_loss,
            "checkpoint": record,
        }
        if cfg.inversion_restarts > 0:
            details["inversion_restarts"] = restarts
        if cfg.recalibrate_prior and epochs_done > 0:
            details["prior_calibration"] = recalibrate_prior(
                ctx, student, usable, max_asr=cfg.selection_max_asr
            )
        return StrategyOutcome(model=student, epochs=epochs_done, details=details)

    def _restarts(
        self, ctx: PurifyContext, usable: list[tuple[int, Trigger]]
    ) -> tuple[list[tuple[int, Trigger]], list[dict[str, Any]]]:
        """``usable`` with ``inversion_restarts`` more Neural Cleanse inversions of each of its
        labels (those that reach ``min_trigger_asr``) after the label's own trigger(s), and a
        record per restart for the report."""
        cfg = self.config
        base = ctx.scan_config or ScanConfig()
        out: list[tuple[int, Trigger]] = []
        records: list[dict[str, Any]] = []
        val = len(ctx.y_val) > 0
        x_asr, y_asr = (ctx.val_images, ctx.y_val) if val else (ctx.images, ctx.y)
        where = "the validation split" if val else "the purification images"
        for label in dict.fromkeys(lab for lab, _ in usable):
            out += [(lab, t) for lab, t in usable if lab == label]
            labels = base.labels if base.labels is None or label in base.labels else None
            config = base.model_copy(
                update={
                    "detectors": ("neural-cleanse",),
                    "detector_options": {
                        "neural-cleanse": base.detector_options.get("neural-cleanse", {})
                    },
                    "labels": labels,
                }
            )
            for r in range(1, cfg.inversion_restarts + 1):
                seed = ctx.runtime.seed + r
                runtime = pixel_runtime(ctx.runtime).model_copy(update={"seed": seed})
                record: dict[str, Any] = {"label": label, "seed": seed, "used": False}
                records.append(record)
                started = time.perf_counter()
                try:
                    scanner = Scanner(ctx.original, ctx.num_classes, config=config, runtime=runtime)
                    inverted = scanner.invert(StoreBatches(ctx.images, ctx.y), [label])
                    trig = inverted["neural-cleanse"][label]
                except HardenkitError as err:
                    record["error"] = str(err)
                    ctx.notes.append(
                        f"MCL inversion restart {r} of label {label} could not run ({err}); "
                        "contrasted against the other triggers"
                    )
                    continue
                if ctx.dist is not None:  # every rank contrasts against rank 0's inversion
                    trig = ctx.dist.broadcast_object(trig)
                record["seconds"] = time.perf_counter() - started
                asr = trigger_asr(ctx.original, trig, x_asr, y_asr, label, ctx.runtime)
                record.update(asr=asr, asr_on=where)
                if isinstance(trig, MaskPatternTrigger):
                    record["mask_l1"] = trig.mask_l1
                if asr < cfg.min_trigger_asr:
                    ctx.notes.append(
                        f"skipped inversion restart {r} of label {label}: its ASR on {where} "
                        f"is {100 * asr:.1f}% < min_trigger_asr {100 * cfg.min_trigger_asr:.0f}%"
                    )
                    continue
                record["used"] = True
                out.append((label, trig))
            _log.info("purify.mcl.restarts", label=label, restarts=records)
        return out, records

    def _loss(
        self,
        fx_s: FeatureExtractor,
        fx_t: FeatureExtractor,
        xb: torch.Tensor,
        xt: torch.Tensor,
        yb: torch.Tensor,
    ) -> torch.Tensor:
        cfg = self.config
        both = cfg.bn_mode == "clean-and-triggered" or cfg.ce_weight > 0 or cfg.anchor_weight > 0
        if both:
            logits, feats = fx_s(torch.cat([xt, xb]))
            z = feats["penultimate"][: len(xt)]
            z_clean = feats["penultimate"][len(xt) :]
            clean_logits = logits[len(xt) :]
        else:
            _, feats = fx_s(xt)
            z = feats["penultimate"]
        with torch.no_grad():
            _, pos_f = fx_t(xb)
            _, neg_f = fx_t(xt)
        pos = F.cosine_similarity(z, pos_f["penultimate"], dim=1)
        neg = F.cosine_similarity(z, neg_f["penultimate"], dim=1)
        logits_c = torch.stack([pos, neg], dim=1) / cfg.temperature
        loss = F.cross_entropy(logits_c, torch.zeros(len(z), dtype=torch.long, device=z.device))
        if cfg.ce_weight > 0:
            loss = loss + cfg.ce_weight * F.cross_entropy(clean_logits, yb)
        if cfg.anchor_weight > 0:
            anchor = 1 - F.cosine_similarity(z_clean, pos_f["penultimate"], dim=1)
            loss = loss + cfg.anchor_weight * anchor.mean()
        return loss


STRATEGIES.register(MCLStrategy.name, MCLStrategy)

"""Composite strategy: scan; repair with the recovered trigger when there is one, with the
smallest-mask labels' inverted triggers when the scan flags nothing (and, first, the flagged
labels' when it flagged some without a recovered trigger) — MCL on the first, kept when it
costs little clean accuracy, else NC unlearning of several — otherwise with a trigger-free
strategy. The defaults were chosen by the CPU benchmarks (docs/benchmarks.md)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field
from torch import Tensor, nn

from ..scan import ScanResult
from ..training import evaluate_accuracy
from ..triggers import AlternatingTrigger, Trigger
from .base import (
    STRATEGIES,
    PurificationStrategy,
    PurifyContext,
    StrategyConfig,
    StrategyOutcome,
)

__all__ = ["AutoConfig", "AutoStrategy"]


class AutoConfig(StrategyConfig):
    """The two branches of the composite.

    Attributes:
        trigger_strategy: strategy run when Neural Cleanse recovered a trigger for a flagged
            label: ``mcl`` (default since issue 16, checked by ``max_trigger_ba_drop``: on
            seven scanner-zoo models ``nc-unlearn`` alone left 3.5–21.6 % ASR, MCL alone
            <= 3.58 % at 1.3–4.0 BA points, the checked default <= 5 % on five;
            ``benchmarks/results/fallback_zoo_trigger_branch.md``) or ``nc-unlearn``. When
            ``mcl`` refuses (no inverted trigger reaches its ``min_trigger_asr``),
            ``nc-unlearn`` runs on the same triggers before ``fallback`` is considered.
        trigger_config: that strategy's config fields.
        fallback: trigger-free strategy run otherwise (or when the trigger strategy refuses):
            ``finetune``, ``d3`` or ``sau``.
        fallback_config: that strategy's config fields.
        unflagged_candidates: when the scan flags no label but Neural Cleanse inverted every
            label, ``candidate_strategy`` still runs — on the inverted triggers of this many
            labels with the *smallest* masks (the labels a missed patch or blend backdoor
            would be among; a clean model only unlearns a few natural adversarial patches),
            keeping its last epoch (``selection="final"`` unless ``candidate_config`` sets
            one). ``0``: run ``fallback`` instead (the earlier behaviour). Measured in
            ``benchmarks/fallback_zoo.py``.
        other_inversion_candidates: in that branch, also the labels (this many per detector)
            whose inversion by each *other* trigger-recovering detector of the scan (``warp``
            in the ``quick`` preset, ``pixel``) reached its attack threshold with the smallest
            size — with that detector's trigger (:attr:`ScanResult.inversions`; alternated
            with Neural Cleanse's when the label is already a candidate,
            :class:`~hardenkit.triggers.AlternatingTrigger`). A WaNet target whose warp
            the statistic did not flag is the smallest warp, but Neural Cleanse's masks do
            not rank it among the smallest. ``0``: Neural Cleanse's candidates only (the
            behaviour before stop 37).
        other_inversion_detectors: the detectors whose inversions ``other_inversion_candidates``
            takes (default ``warp`` and ``pixel``). The smooth-signal inversion (``signal``,
            in the presets since stop 50) is left out by default: among the candidates it cost
            clean models 0.16–0.70 points more (stop 51); it gets its own checked MCL run
            instead (``candidate_mcl_detectors``).
        candidate_strategy: the strategy of that smallest-mask branch: ``nc-unlearn``
            (default: cheap on the clean models that make up most negative scans) or ``mcl``.
        candidate_mcl: before that branch, MCL on the inverted trigger(s) of this many
            candidates only (the flagged labels first, then the smallest mask, plus each
            other detector's smallest reached inversion); its repair is kept when it costs at
            most ``candidate_mcl_max_ba_drop`` of the clean accuracy (measured as
            ``max_trigger_ba_drop`` is), otherwise it is undone and ``candidate_strategy``
            runs from the input weights. Contrasting away a real trigger costs little
            accuracy; contrasting away a clean model's natural feature costs points. ``0``:
            off (the behaviour before stop 38). Skipped when ``candidate_strategy`` is
            ``mcl``, without validation images, and under a ``max_steps`` / ``max_seconds``
            budget (it would spend what the repair needs).
        candidate_mcl_max_ba_drop: the accuracy cost up to which that MCL repair is kept.
        candidate_mcl_detectors: detectors whose smallest reached inversion (one label each;
            none when ``other_inversion_candidates`` is 0) gets a checked MCL run *of its own*
            when the first one was undone — alone, from the input weights, kept on the same
            ``candidate_mcl_max_ba_drop`` bound (``details["candidate_mcl_separate"]``) — and
            never join the other candidates (unless also in ``other_inversion_detectors``).
            Default ``signal`` (since stop 51): a missed whole-image additive backdoor
            (user-script ``stripes``, DER 90.7 → 99.5) is removed by MCL on its recovered
            signal alone, while on clean models that run cost 3–5 points and was undone, so
            their repair is the one without it. With the signal among the candidates instead
            (``other_inversion_detectors``) the clean user models lost 0.16–0.70 points more
            and a first check that had been kept (``cifar-cnn`` WaNet) was undone. ``()``:
            off. Costs one more MCL run on a negative scan whose first check was undone (most
            clean models).
        candidate_config: its config fields (``trigger_config`` when ``candidate_strategy``
            equals ``trigger_strategy`` and this is empty).
        flagged_without_trigger: what runs when the scan flagged labels but recovered no
            trigger for them (e.g. MM-BD alone flagged them): ``candidates`` (default since
            stop 35) — ``candidate_strategy`` on the inverted triggers of the flagged labels
            first, then of the smallest-mask labels, up to ``unflagged_candidates`` (at least
            the flagged ones), when Neural Cleanse inverted every label (else ``fallback``);
            ``fallback`` — the trigger-free ``fallback`` (the behaviour before). On the five
            models measured in that branch (``auto-flag-cand`` in ``benchmarks/purify_cpu.py``
            and ``benchmarks/fallback_zoo.py``) it left 0.21–9.81 % ASR where fine-tuning left
            0.16–12.86 %, lowest DER 90.4 against 87.8, in 15–31 % of the time on CIFAR-10.
        max_trigger_ba_drop: when ``trigger_strategy`` is ``mcl`` and its repair costs more
            than this share of the clean accuracy (0.03 = 3 points; the larger of its drop on
            the validation split and on the purification images, which MCL never fits the
            labels of), ``nc-unlearn`` also runs on the same trigger, from the input model,
            and it is returned when its validation drop is smaller (``details``:
            ``val_ba_drop`` of both, ``train_ba_drop`` of MCL). MCL
            removes more of a backdoor but can cost a well-fitted model several points
            (CIFAR-10 ``cifar-cnn`` BadNets: 4.4); NC unlearning keeps accuracy. ``None``:
            never; needs validation images.
    """

    trigger_strategy: Literal["nc-unlearn", "mcl"] = "mcl"
    trigger_config: dict[str, Any] = Field(default_factory=dict)
    fallback: Literal["finetune", "d3", "sau"] = "finetune"
    fallback_config: dict[str, Any] = Field(default_factory=dict)
    unflagged_candidates: Annotated[int, Field(ge=0)] = 3
    other_inversion_candidates: Annotated[int, Field(ge=0)] = 1
    other_inversion_detectors: tuple[str, ...] = ("warp", "pixel")
    candidate_strategy: Literal["nc-unlearn", "mcl"] = "nc-unlearn"
    candidate_config: dict[str, Any] = Field(default_factory=dict)
    candidate_mcl: Annotated[int, Field(ge=0)] = 1
    candidate_mcl_max_ba_drop: Annotated[float, Field(ge=0, le=1)] = 0.015
    candidate_mcl_detectors: tuple[str, ...] = ("signal",)
    flagged_without_trigger: Literal["fallback", "candidates"] = "candidates"
    max_trigger_ba_drop: Annotated[float, Field(ge=0, le=1)] | None = 0.03


class AutoStrategy(PurificationStrategy):
    """Scan → ``trigger_strategy`` on the recovered trigger(s) when Neural Cleanse flagged a label;
    when it flagged nothing, MCL on the smallest mask's inverted trigger, kept when it costs
    little clean accuracy (``candidate_mcl``), else ``candidate_strategy`` on the inverted
    triggers of the ``unflagged_candidates`` labels with the smallest masks (a statistic can
    miss a backdoor whose trigger the inversion found) — with the flagged labels' inverted
    triggers first when it flagged labels without recovering a trigger
    (``flagged_without_trigger``);
    ``fallback`` (trigger-free) when there is nothing inverted to use.

    A negative scan never becomes a silent no-op: the model is always repaired, and the report
    says which branch ran and why (``details["branch"]``, ``notes``).
    """

    name = "auto"
    config_cls = AutoConfig
    uses_scan = True
    config: AutoConfig

    def __init__(self, config: AutoConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        # Build (and so validate) both stages now: the constructor validates, run() works.
        # The budget of this composite (max_steps / max_seconds) covers both: ctx.budget.
        cfg = self.config
        self._trigger = STRATEGIES.get(cfg.trigger_strategy)(cfg.trigger_config)
        self._fallback = STRATEGIES.get(cfg.fallback)(cfg.fallback_config)
        # the candidate labels are mostly natural features whose inverted triggers keep some
        # ASR however well the repair works: bounding checkpoints by their ASR would pick the
        # least-trained epoch, so this branch keeps the last epoch unless told otherwise
        cand_cfg = cfg.candidate_config or _shared(cfg.trigger_config, cfg.candidate_strategy)
        self._candidate = STRATEGIES.get(cfg.candidate_strategy)({"selection": "final", **cand_cfg})
        self._probe = (
            STRATEGIES.get("mcl")({"selection": "final", **_shared(cfg.trigger_config, "mcl")})
            if cfg.candidate_mcl > 0 and cfg.candidate_strategy != "mcl"
            else None
        )
        # MCL refuses triggers weaker than its min_trigger_asr; NC unlearning uses any
        # inverted trigger, so it is tried before the trigger-free fallback
        self._second = (
            STRATEGIES.get("nc-unlearn")(_shared(cfg.trigger_config, "nc-unlearn"))
            if cfg.trigger_strategy == "mcl"
            else None
        )
        self.validation_fraction = max(
            self._trigger.validation_fraction, self._fallback.validation_fraction
        )

    def estimate_passes(self) -> tuple[float, float] | None:
        """Fewest: the trigger strategy alone (the scan flags a label, its repair is kept).
        Most: the longest branch — the trigger strategy then NC unlearning (its repair cost
        too much accuracy), the checked MCL runs then the candidates' repair (the scan flags
        nothing; most clean models), or the trigger-free fallback."""
        none = (0.0, 0.0)
        trigger = self._trigger.estimate_passes()
        second = self._second.estimate_passes() if self._second is not None else none
        candidate = self._candidate.estimate_passes()
        probe = self._probe.estimate_passes() if self._probe is not None else none
        fallback = self._fallback.estimate_passes()
        if trigger is None or second is None or candidate is None:
            return None
        if probe is None or fallback is None:
            return None
        # the first checked MCL run, and the signal's own when that one was undone
        probes = 1 + (len(self.config.candidate_mcl_detectors) > 0)
        most = max(trigger[1] + second[1], probes * probe[1] + candidate[1], fallback[1])
        return trigger[0], most

    def estimate_batch_size(self) -> int:
        return self._trigger.estimate_batch_size()

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        scan = ctx.scan
        cfg = self.config
        # the trigger branches to try in turn: (strategy, its context, extra details)
        attempts: list[tuple[PurificationStrategy, PurifyContext, dict[str, Any]]] = []
        # the candidate branch: (its flagged labels, its name, why it runs, what it runs)
        probe: tuple[Sequence[int], str, str, str] | None = None
        if scan is not None and scan.triggers:
            attempts.append((self._trigger, ctx, {"branch": cfg.trigger_strategy}))
            if self._second is not None:
                attempts.append((self._second, ctx, {"branch": self._second.name}))
        elif scan is not None and scan.is_backdoored:
            flagged = scan.flagged_labels
            candidates = (
                self._candidates(ctx, scan, first=flagged)
                if cfg.flagged_without_trigger == "candidates"
                else None
            )
            if candidates is None:
                ctx.notes.append(
                    f"auto: the scan flagged {flagged} without a recovered trigger; "
                    f"running {cfg.fallback} (trigger-free)"
                )
            else:
                why = f"auto: the scan flagged {flagged} without a recovered trigger; "
                note = (
                    f"running {cfg.candidate_strategy} on the inverted triggers of "
                    f"{_described(candidates[1])} (the flagged labels, then the smallest)"
                )
                attempts.append(
                    self._candidate_attempt(ctx, *candidates, "flagged + smallest masks")
                )
                probe = (flagged, "flagged + smallest masks", why, note)
        elif scan is not None and (candidates := self._candidates(ctx, scan)) is not None:
            why = f"auto: scan verdict {scan.verdict}; in case it missed a backdoor, "
            note = (
                f"running {cfg.candidate_strategy} on the inverted triggers with the smallest "
                f"sizes: {_described(candidates[1])}"
            )
            attempts.append(self._candidate_attempt(ctx, *candidates, "smallest masks"))
            probe = ((), "smallest masks", why, note)
        else:
            verdict = "no scan" if scan is None else f"scan verdict {scan.verdict}"
            ctx.notes.append(
                f"auto: {verdict}, no trigger to use: running {cfg.fallback} (trigger-free)"
            )
        if probe is not None and scan is not None:
            first, which, why, note = probe
            budgeted = ctx.budget.max_steps is not None or ctx.budget.max_seconds is not None
            if self._probe is not None and budgeted:
                ctx.notes.append(
                    "auto: candidate_mcl skipped: a step or time budget is set, and it would "
                    "spend what the repair needs"
                )
            elif self._probe is not None:
                found = self._candidates(ctx, scan, first=first, k=cfg.candidate_mcl)
                kept, info = self._checked_mcl(ctx, found, which, why)
                if kept is not None:
                    return kept
                if info is not None:  # it ran and was undone; its note said why
                    attempts[-1][2]["candidate_mcl"] = info
                    why = "auto: "
                    separate: dict[str, Any] = {}
                    for det, y, trig in self._other_inversions(scan, cfg.candidate_mcl_detectors):
                        if det in separate:  # its smallest reached label only
                            continue
                        own = ScanResult.from_triggers(
                            {y: trig}, model=ctx.original, num_classes=ctx.num_classes
                        )
                        kept, separate[det] = self._checked_mcl(
                            ctx, (own, {y: [det]}), which, why, then=" alone"
                        )
                        if kept is not None:
                            kept.details = {
                                **kept.details,
                                "candidate_mcl": info,
                                "candidate_mcl_separate": separate,
                            }
                            return kept
                    if separate:
                        attempts[-1][2]["candidate_mcl_separate"] = separate
            ctx.notes.append(why + note)
        guard = (
            self._second is not None
            and cfg.max_trigger_ba_drop is not None
            and len(ctx.y_val) > 0
            and bool(attempts)
            and attempts[0][0] is self._trigger
        )
        start = _state(ctx.model) if guard else None
        for i, (strategy, run_ctx, extra) in enumerate(attempts):
            out = strategy.run(run_ctx)
            if out.status == "purified":
                out.details = {**extra, **out.details}
                if start is not None and i == 0 and out.model is ctx.model:
                    return self._keep_accuracy(ctx, out, start)
                return out
            then = attempts[i + 1][0].name if i + 1 < len(attempts) else cfg.fallback
            ctx.notes.append(
                f"auto: {strategy.name} could not run; falling back to {then}"
                + ("" if i + 1 < len(attempts) else " (trigger-free)")
            )
        out = self._fallback.run(ctx)
        out.details = {"branch": cfg.fallback, **out.details}
        return out

    def _keep_accuracy(
        self, ctx: PurifyContext, first: StrategyOutcome, start: dict[str, Tensor]
    ) -> StrategyOutcome:
        """``first`` (MCL's repair) unless it cost more validation accuracy than
        ``max_trigger_ba_drop`` and NC unlearning, run from the input weights, kept more."""
        assert self._second is not None
        assert self.config.max_trigger_ba_drop is not None
        name = self.config.trigger_strategy
        before, drop, on_train = _ba_drops(ctx)
        first.details["val_ba_drop"] = {name: drop}
        first.details["train_ba_drop"] = {name: on_train}
        drop = max(drop, on_train)
        if drop <= self.config.max_trigger_ba_drop:
            return first
        kept = _state(ctx.model)
        ctx.model.load_state_dict(start)
        second = self._second.run(ctx)
        drops = {name: drop}
        if second.status == "purified" and second.model is ctx.model:
            drops["nc-unlearn"] = before - evaluate_accuracy(
                ctx.model, ctx.val_images, ctx.y_val, runtime=ctx.runtime
            )
            if drops["nc-unlearn"] < drop:
                ctx.notes.append(
                    f"auto: {name} cost {100 * drop:.1f} points of clean accuracy "
                    f"(> max_trigger_ba_drop {100 * self.config.max_trigger_ba_drop:g}); "
                    f"nc-unlearn on the same trigger cost {100 * drops['nc-unlearn']:.1f}: "
                    "kept nc-unlearn's repair"
                )
                second.details = {
                    "branch": "nc-unlearn",
                    **second.details,
                    "val_ba_drop": drops,
                    "train_ba_drop": first.details["train_ba_drop"],
                }
                return second
        other = f"{100 * drops['nc-unlearn']:.1f}" if "nc-unlearn" in drops else "could not run"
        ctx.notes.append(
            f"auto: {name} cost {100 * drop:.1f} points of clean accuracy; nc-unlearn "
            f"did not keep more ({other}): kept {name}'s repair"
        )
        ctx.model.load_state_dict(kept)
        first.details["val_ba_drop"] = drops
        return first

    def _checked_mcl(
        self,
        ctx: PurifyContext,
        found: tuple[ScanResult, dict[int, list[str]]] | None,
        which: str,
        why: str,
        then: str = " first",
    ) -> tuple[StrategyOutcome | None, dict[str, Any] | None]:
        """MCL on the inverted triggers of ``found`` (candidates and their detectors): (its
        outcome, kept because it cost at most ``candidate_mcl_max_ba_drop``, else ``None``;
        what it cost, ``None`` when it did not run). An MCL repair that is not kept is
        undone."""
        cfg = self.config
        assert self._probe is not None
        if found is None or len(ctx.y_val) == 0:
            return None, None
        start = _state(ctx.model)
        _, run_ctx, extra = self._candidate_attempt(ctx, *found, which, self._probe)
        labels = _described(found[1])
        out = self._probe.run(run_ctx)
        info: dict[str, Any] = {"labels": found[0].flagged_labels, "kept": False}
        bound = f"candidate_mcl_max_ba_drop {100 * cfg.candidate_mcl_max_ba_drop:g}"
        if out.status == "purified" and out.model is ctx.model:
            _, val, train = _ba_drops(ctx)
            cost = max(val, train)
            info.update(val_ba_drop=val, train_ba_drop=train)
            if cost <= cfg.candidate_mcl_max_ba_drop:
                info["kept"] = True
                ctx.notes.append(
                    f"{why}ran mcl on the inverted triggers of {labels}: it cost "
                    f"{100 * cost:.1f} points of clean accuracy (<= {bound}): kept its repair"
                )
                out.details = {**extra, **out.details, "candidate_mcl": info}
                return out, info
            what = (
                f"ran mcl on the inverted triggers of {labels}{then}: it cost "
                f"{100 * cost:.1f} points of clean accuracy (> {bound})"
            )
        else:
            what = f"mcl on the inverted triggers of {labels} could not run"
        ctx.model.load_state_dict(start)
        ctx.notes.append(f"{why}{what}: undone")
        return None, info

    def _candidate_attempt(
        self,
        ctx: PurifyContext,
        candidates: ScanResult,
        sources: dict[int, list[str]],
        which: str,
        strategy: PurificationStrategy | None = None,
    ) -> tuple[PurificationStrategy, PurifyContext, dict[str, Any]]:
        """``strategy`` (default ``candidate_strategy``) on the ``candidates`` triggers, with
        its ``details``."""
        strategy = strategy or self._candidate
        branch = {
            "branch": f"{strategy.name} ({which})",
            "candidate_labels": candidates.flagged_labels,
            "candidate_sources": {str(y): d for y, d in sources.items()},
        }
        return strategy, dataclasses.replace(ctx, scan=candidates), branch

    def _candidates(
        self,
        ctx: PurifyContext,
        scan: ScanResult,
        first: Sequence[int] = (),
        k: int | None = None,
    ) -> tuple[ScanResult, dict[int, list[str]]] | None:
        """A scan result "flagging" the labels of ``first`` that have an inverted trigger,
        then the labels with the smallest Neural Cleanse masks, ``k`` (default
        ``unflagged_candidates``) in all (at least those of ``first``), then each other
        inverting detector's smallest reached labels (``other_inversion_candidates``), and
        the detectors each label's trigger(s) came from; ``None`` when there are none."""
        k = self.config.unflagged_candidates if k is None else k
        if k == 0 or not scan.all_triggers:
            return None
        nc = next((d for d in scan.report.detectors if d.detector == "neural-cleanse"), None)
        if nc is None:
            return None
        rows = sorted(
            (c for c in nc.classes if c.label in scan.all_triggers and math.isfinite(c.value)),
            key=lambda c: (c.value, c.label),
        )
        inverted = [y for y in first if y in scan.all_triggers]
        rest = [c.label for c in rows if c.label not in inverted]
        labels = (inverted + rest)[: max(k, len(inverted))]
        source = {c.label: c.trigger_source for c in scan.report.classes}
        parts: dict[int, list[Trigger]] = {y: [scan.all_triggers[y]] for y in labels}
        sources = {y: [source.get(y) or "neural-cleanse"] for y in labels}
        for det, y, trig in self._other_inversions(scan, self.config.other_inversion_detectors):
            if not any(t is trig for t in parts.setdefault(y, [])):
                parts[y].append(trig)
                sources.setdefault(y, []).append(det)
        if not parts:
            return None
        result = ScanResult.from_triggers(
            {y: ts[0] if len(ts) == 1 else AlternatingTrigger(ts) for y, ts in parts.items()},
            model=ctx.original,
            num_classes=ctx.num_classes,
        )
        return result, sources

    def _other_inversions(
        self, scan: ScanResult, detectors: Sequence[str]
    ) -> list[tuple[str, int, Trigger]]:
        """Per trigger-recovering detector of ``detectors`` in the scan, the
        ``other_inversion_candidates`` labels whose inversion reached its attack threshold
        with the smallest size (its statistic's suspicious side), with that trigger."""
        m = self.config.other_inversion_candidates
        out: list[tuple[str, int, Trigger]] = []
        if m == 0:
            return out
        for det in scan.report.detectors:
            inv = scan.inversions.get(det.detector, {})
            if det.detector not in detectors or not inv:
                continue
            sign = 1.0 if det.suspicious_side == "low" else -1.0
            reached = sorted(
                (
                    c
                    for c in det.classes
                    if c.label in inv
                    and c.extra.get("reached_threshold") is True
                    and math.isfinite(c.value)
                ),
                key=lambda c: (sign * c.value, c.label),
            )
            out += [(det.detector, c.label, inv[c.label]) for c in reached[:m]]
        return out


def _described(sources: dict[int, list[str]]) -> str:
    """``{9: ["neural-cleanse"], 0: ["neural-cleanse", "warp"]}`` as
    ``"labels [9, 0] (neural-cleanse), [0] (warp)"``."""
    by: dict[str, list[int]] = {}
    for y, dets in sources.items():
        for d in dets:
            by.setdefault(d, []).append(y)
    return "labels " + ", ".join(f"{ys} ({d})" for d, ys in by.items())


def _ba_drops(ctx: PurifyContext) -> tuple[float, float, float]:
    """(validation accuracy of the input model, what ``ctx.model`` lost of it, what it lost
    on the purification images). A strategy that picked its epoch by validation accuracy
    makes the first drop optimistic (CIFAR-10 cifar-cnn BadNets, MCL: under 3 points there,
    8 on the Purifier's holdout); MCL never fits the labels (contrast + feature anchor), so
    its accuracy on the purification images is a second, unselected estimate."""
    before = evaluate_accuracy(ctx.original, ctx.val_images, ctx.y_val, runtime=ctx.runtime)
    drop = before - evaluate_accuracy(ctx.model, ctx.val_images, ctx.y_val, runtime=ctx.runtime)
    on_train = evaluate_accuracy(
        ctx.original, ctx.images, ctx.y, runtime=ctx.runtime
    ) - evaluate_accuracy(ctx.model, ctx.images, ctx.y, runtime=ctx.runtime)
    return before, drop, on_train


def _state(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``model``'s weights and buffers."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _shared(config: dict[str, Any], strategy: str) -> dict[str, Any]:
    """The keys of ``config`` (another stage's) that ``strategy``'s config also has: a
    stage dict written for ``mcl`` (``epochs``, ``batch_size``, ``lr`` ...) also sets the
    ``nc-unlearn`` stage that stands in for it."""
    fields = STRATEGIES.get(strategy).config_cls.model_fields
    return {k: v for k, v in config.items() if k in fields}


STRATEGIES.register(AutoStrategy.name, AutoStrategy)

"""The RobustTrainer facade: train a copy of a model on untrusted data with a registered strategy.

Example:
    >>> import hardenkit as hk
    >>> from hardenkit.robust import RobustTrainer
    >>> data = hk.data.make_synthetic_dataset(num_classes=3, train_per_class=20, test_per_class=5)
    >>> model = hk.build_model("small-cnn", 3, width=4)
    >>> res = RobustTrainer(model, "dlp", config={"sl_epochs": 1, "ssl_epochs": 1,
    ...     "unlearn_epochs": 1}, runtime={"device": "cpu", "progress": "off"}).fit(data.train)
    >>> res.report.strategy, len(res.suspected_indices) == res.report.isolation.suspected
    ('dlp', True)
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._utils.distributed import (
    batchnorm_note,
    distributed_info,
    same_input_on_every_rank,
    same_output_on_every_rank,
)
from .._utils.distributed import setup as setup_distributed
from .._utils.memory import peak_memory_mb
from .._utils.model_checks import check_model, require_trainable
from .._utils.progress import NullProgress, ProgressCallback, make_progress
from .._utils.seeding import seed_everything
from ..config import RuntimeConfig, parse_config
from ..data.datasets import ImageDataset, to_float_pixels
from ..data.loaders import BatchSource, materialize, validate_batch
from ..errors import ConfigError, DataError, ModelCompatibilityError
from ..io import save_state_dict
from ..logging import get_logger
from ..reports import ModelFingerprint
from ..training import (
    build_optimizer,
    evaluate_accuracy,
    infer_num_classes,
    predict,
    trigger_effect,
)
from .base import (
    TRAINERS,
    TRUSTED_STATUSES,
    IsolationReport,
    RobustBudget,
    RobustConfig,
    RobustContext,
    RobustStrategy,
    StageReport,
    TrainingReport,
    TrainingStatus,
    isolation_metrics,
    prediction_source,
)

__all__ = ["DEFAULT_TRAINER", "RobustTrainer", "TrainingResult"]

_log = get_logger("hardenkit.robust")

DEFAULT_TRAINER = "dlp"

_MIN_JUDGED = 20
"""The poison-likeness check never judges fewer suspected samples than this (class shares of a
handful of samples mean nothing)."""
_PERSIST_N = 200
"""Samples per side of the persistence test (judged ones, and the source class's own)."""
_PERSIST_POOL = 1000
"""Kept samples of the source class scanned for ones the model predicts as that class."""
_PERSIST_ROUNDS = 4
"""Random mixing partners per sample in the persistence test."""


def _persistence(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    off: Tensor,
    kept: Tensor,
    dom: int,
    src: int,
    mix: float,
    rt: RuntimeConfig,
) -> tuple[float, float] | None:
    """How often ``src`` survives mixing: ``(judged rate, the source class's own rate)``.

    ``off`` are judged samples of class ``dom`` the model predicts as ``src``; ``kept`` the
    training samples outside the suspected set. Each sample is mixed ``(1 - mix) * x +
    mix * partner`` with kept images of other classes (neither ``dom`` nor ``src``), and the
    share of mixes still predicted as ``src`` is measured for ``off`` and for kept images of
    class ``src`` that the model predicts as ``src`` (the class's natural persistence).
    A prediction carried by a shared input component (a trigger) survives far more often than
    one carried by the image's content. ``None`` when a side has no samples.
    """
    g = torch.Generator().manual_seed(rt.seed)
    partners = kept[(y[kept] != dom) & (y[kept] != src)]
    pool = kept[y[kept] == src]
    if len(partners) == 0 or len(pool) == 0 or len(off) == 0:
        return None
    pool = pool[torch.randperm(len(pool), generator=g)[:_PERSIST_POOL]]
    on_src = predict(model, x[pool.to(x.device)], runtime=rt).argmax(1) == src
    natural = pool[on_src][:_PERSIST_N]
    if len(natural) == 0:
        return None
    judged = off[torch.randperm(len(off), generator=g)[:_PERSIST_N]]

    def rate(idx: Tensor) -> float:
        hits = 0
        for _ in range(_PERSIST_ROUNDS):
            other = partners[torch.randint(len(partners), (len(idx),), generator=g)]
            a = to_float_pixels(x[idx.to(x.device)])
            b = to_float_pixels(x[other.to(x.device)])
            pred = predict(model, (1 - mix) * a + mix * b, runtime=rt).argmax(1)
            hits += int((pred == src).sum())
        return hits / (_PERSIST_ROUNDS * len(idx))

    return rate(judged), rate(natural)


DataSource = ImageDataset | tuple[Tensor, Tensor] | BatchSource
"""An :class:`~hardenkit.data.ImageDataset` (a poisoned one carries its poison indices), an
``(x, y)`` tensor pair, or any iterable of ``(x, y)`` batches (e.g. a DataLoader)."""


class TrainingResult:
    """The trained model (a new object), its report, and the suspected-poison indices.

    Attributes:
        model: the trained model, in eval mode (the caller's model is untouched).
        report: the :class:`TrainingReport`.
        suspected_indices: indices into the training set the strategy treated as poisoned.
        scores: one suspicion score per training sample (higher = more suspicious), or
            ``None`` (``plain``).
        rank: this process's rank under ``torchrun`` (0 otherwise).
    """

    def __init__(
        self,
        model: nn.Module,
        report: TrainingReport,
        suspected_indices: Tensor,
        scores: Tensor | None,
        input_shape: tuple[int, int, int],
        rank: int = 0,
    ) -> None:
        self.model = model
        self.report = report
        self.suspected_indices = suspected_indices
        self.scores = scores
        self.input_shape = input_shape
        self.rank = rank
        """This process's rank under ``torchrun`` (0 otherwise); only rank 0's :meth:`save`
        writes."""

    @property
    def status(self) -> str:
        return self.report.status

    @property
    def trusted(self) -> bool:
        """True only for status ``trained``."""
        return self.report.status in TRUSTED_STATUSES

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors``, ``report.json`` and ``suspected.json`` (indices, scores).

        Under ``torchrun`` only rank 0 writes (every rank holds the same result).
        """
        d = Path(directory)
        if self.rank != 0:
            return d
        d.mkdir(parents=True, exist_ok=True)
        save_state_dict(self.model, d / "model.safetensors")
        payload = {
            "report_id": self.report.report_id,
            "suspected_indices": self.suspected_indices.tolist(),
            "scores": None if self.scores is None else [float(s) for s in self.scores.tolist()],
        }
        (d / "suspected.json").write_text(json.dumps(payload) + "\n")
        self.report.save(d / "report.json")
        return d

    def __repr__(self) -> str:
        return (
            f"TrainingResult(strategy={self.report.strategy!r}, status={self.status!r}, "
            f"suspected={len(self.suspected_indices)})"
        )


def _as_tensors(
    source: DataSource, rt: RuntimeConfig, where: str
) -> tuple[Tensor, Tensor, ImageDataset | None]:
    if isinstance(source, ImageDataset):
        if len(source) == 0:
            raise DataError(f"{where}: the dataset is empty.")
        x, y = source.images, source.labels
        validate_batch(
            source.pixels()[:64] if x.dtype == torch.uint8 else x,
            y[:64] if x.dtype == torch.uint8 else y,
            num_classes=source.num_classes,
            where=where,
        )
        return x, y, source
    if (
        isinstance(source, (tuple, list))
        and len(source) == 2
        and isinstance(source[0], Tensor)
        and isinstance(source[1], Tensor)
        and source[0].ndim == 4
    ):
        x, y = source[0], source[1]
        if len(x) != len(y):
            raise DataError(
                f"{where}: {len(x)} images but {len(y)} labels.",
                hint="pass (images (N, C, H, W), labels (N,)) of equal length",
            )
        validate_batch(x, y, where=where)
        return x.to(torch.float32), y.to(torch.int64), None
    x, y = materialize(
        source, input_normalization=rt.input_normalization, device="cpu", where=where
    )
    return x, y, None


def _poison_tensor(value: Any, n: int) -> Tensor:
    try:
        t = torch.as_tensor(np.asarray(value)).flatten()
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"poison_indices must be a sequence of integer sample indices: {exc}",
            hint="pass e.g. poisoned_dataset.poison_indices or a list of ints",
        ) from exc
    if len(t) and (t.is_floating_point() or t.dtype == torch.bool):
        raise DataError(
            f"poison_indices must hold integer indices, got dtype {t.dtype}.",
            hint="pass indices, not a mask (use torch.nonzero(mask).flatten())",
        )
    t = t.to(torch.int64)
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= n):
        raise DataError(
            f"poison_indices must lie in [0, {n}) (the training set's size), got range "
            f"[{int(t.min())}, {int(t.max())}]."
        )
    if len(torch.unique(t)) != len(t):
        raise DataError("poison_indices contains duplicates.")
    return torch.sort(t).values


class RobustTrainer:
    """Train a copy of ``model`` from scratch on an untrusted training set.

    Args:
        model: any ``nn.Module`` mapping [0, 1] pixel batches to logits; it is deep-copied
            and never modified (pass a freshly initialised model: training starts from its
            weights).
        strategy: a registered name (``plain``, ``abl``, ``dlp``; see ``TRAINERS.names()``)
            or a :class:`RobustStrategy` instance.
        config: the strategy's config (object or dict); only with a strategy name.
        runtime: device, seed, progress.
        progress: a progress callback (overrides ``runtime.progress``).
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: str | RobustStrategy = DEFAULT_TRAINER,
        *,
        config: RobustConfig | dict[str, Any] | None = None,
        runtime: RuntimeConfig | dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ModelCompatibilityError(
                f"model must be a torch.nn.Module, got {type(model).__name__}.",
                hint="pass the (untrained) network, e.g. hk.build_model('small-cnn', 10)",
            )
        model = check_model(model, where="RobustTrainer")
        require_trainable(model, where="RobustTrainer")
        if isinstance(strategy, RobustStrategy):
            if config is not None:
                raise ConfigError(
                    "config= is only used with a strategy name.",
                    hint="configure the strategy instance itself",
                )
            self.strategy = strategy
        elif isinstance(strategy, str):
            self.strategy = TRAINERS.get(strategy)(config)
        else:
            raise ConfigError(
                f"strategy must be a name or a RobustStrategy, got {type(strategy).__name__}.",
                hint=f"use one of {TRAINERS.names()}",
            )
        self.model = model
        self.runtime = parse_config(RuntimeConfig, runtime)
        self._progress = progress

    def estimate_seconds(self, num_samples: int, input_shape: Sequence[int]) -> float:
        """A rough wall-time estimate: two timed training steps × the schedule's steps."""
        rt = self.runtime
        device = rt.resolve_device()
        work = copy.deepcopy(self.model).to(device).train()
        bs = min(self.strategy.config.batch_size, max(1, num_samples))
        xb = torch.rand(bs, *input_shape, device=device)
        k = infer_num_classes(work, xb[:2])
        yb = torch.randint(0, k, (bs,), device=device)
        opt = build_optimizer(work.parameters(), self.strategy.config.train_config(1))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(work(xb), yb)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            times.append(time.perf_counter() - t0)
        per_step = min(times[1:])
        steps = self.strategy.estimate_epochs() * math.ceil(num_samples / bs)
        return per_step * steps * 1.15  # + scoring and evaluation passes

    def fit(
        self,
        data: DataSource,
        *,
        test: DataSource | None = None,
        trigger: Any | None = None,
        target: int | None = None,
        poison_indices: Tensor | Sequence[int] | np.ndarray | None = None,
    ) -> TrainingResult:
        """Train on ``data`` and return the model, the report and the suspected indices.

        Args:
            data: the untrusted training set (see :data:`DataSource`).
            test: a held-out clean set for BA (and ASR with ``trigger``/``target``).
            trigger: a :class:`~hardenkit.triggers.Trigger` or callable on [0, 1] batches.
            target: the attack's target label (all-to-one), needed with ``trigger``.
            poison_indices: the true poison indices, only to report isolation precision and
                recall (default: ``data.poison_indices`` when ``data`` is a poisoned dataset).
                Never used by the strategy.
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
        strat = self.strategy
        x, y, ds = _as_tensors(data, rt, "data")
        n = len(y)
        if n < 2:
            raise DataError(f"data: robust training needs at least 2 samples, got {n}.")
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        probe = copy.deepcopy(self.model).to(device).eval()
        k = infer_num_classes(probe, torch.zeros(2, *shape, device=device))
        del probe
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise DataError(
                f"data has labels in [{int(y.min())}, {int(y.max())}] but the model outputs "
                f"{k} logits.",
                hint="pass a model whose classifier head matches the number of classes",
            )
        source = "none"
        poison: Tensor | None = None
        if poison_indices is not None:
            poison, source = _poison_tensor(poison_indices, n), "argument"
        elif ds is not None and isinstance(getattr(ds, "poison_indices", None), Tensor):
            poison, source = _poison_tensor(ds.poison_indices, n), "dataset"  # type: ignore[attr-defined]
        if trigger is not None and target is None:
            raise ConfigError(
                "a trigger was given without its target label.",
                hint="pass target=<the attack's target class> to measure ASR",
            )
        if target is not None and not 0 <= int(target) < k:
            raise ConfigError(f"target {target} is not a class of a {k}-class model.")
        if trigger is not None and not callable(trigger):
            raise ConfigError(
                f"trigger must be callable on a [0, 1] batch, got {type(trigger).__name__}."
            )
        x_te = y_te = None
        if test is not None:
            x_te, y_te, _ = _as_tensors(test, rt, "test")
            if tuple(x_te.shape[1:]) != shape:
                raise DataError(
                    f"test images are {tuple(x_te.shape[1:])}, training images {shape}."
                )
            if int(y_te.max()) >= k:
                raise DataError(f"test labels must lie in [0, {k}).")
        notes: list[str] = []
        input_fp = ModelFingerprint.of(self.model)
        work = copy.deepcopy(self.model).to(device)
        if dist is not None:  # every rank starts from rank 0's weights
            same_input_on_every_rank(dist, work, input_fp, notes)
            batchnorm_note(dist, work, notes)
            if dist.sync_batchnorm:  # pragma: no cover - GPU only
                dist.convert_batchnorm(work)
        if device.type == "cuda":  # pragma: no cover - GPU only
            torch.cuda.reset_peak_memory_stats(device)
        budget = RobustBudget(
            strat.config.max_steps,
            strat.config.max_seconds,
            agree=None if dist is None else dist.any,
        )
        ctx = RobustContext(
            model=work,
            num_classes=k,
            x=x.to(device),
            y=y.to(device, torch.int64),
            device=device,
            runtime=rt,
            budget=budget,
            progress=progress,
            notes=notes,
            poison_indices=poison,
            dist=dist,
        )
        try:
            outcome = strat.fit(ctx)
        finally:
            if dist is not None:
                dist.restore_batchnorm()
        model = outcome.model.eval()
        output_fp = ModelFingerprint.of(model)
        if dist is not None:
            output_fp = same_output_on_every_rank(dist, model, output_fp, notes)
        suspected = torch.sort(outcome.suspected.cpu().to(torch.int64)).values
        warnings: list[str] = []
        isolation = self._isolation(strat, suspected, ctx, poison, source, warnings, model, rt)
        ba = asr = ra = top_share = base = None
        top_class: int | None = None
        test_n = 0
        if x_te is not None and y_te is not None:
            test_n = len(y_te)
            xd, yd = x_te.to(device), y_te.to(device)
            ba = evaluate_accuracy(model, xd, yd, runtime=rt)
            if trigger is not None and target is not None:
                effect = trigger_effect(model, trigger, xd, yd, int(target), rt)
                if effect is not None:
                    asr, ra, top_class, top_share, base = effect
        elif trigger is not None:
            notes.append("a trigger was given without a test set: ASR was not measured")
        cfg = strat.config
        remains = False
        lift = None if asr is None else asr - (base or 0.0)
        if lift is not None and lift > cfg.max_asr:
            remains = True
            warnings.append(
                f"BACKDOOR REMAINS: the trigger sends {100 * (asr or 0):.1f}% of the test "
                f"images to the target {target}, {100 * lift:.1f} points more than without "
                f"it ({100 * (base or 0):.1f}%; max_asr {100 * cfg.max_asr:.0f}%)"
            )
        elif (
            top_share is not None
            and top_class is not None
            and top_class != target
            and top_share >= cfg.max_trigger_share
        ):
            remains = True
            warnings.append(
                f"BACKDOOR REDIRECTED: the trigger no longer sends the test images to the "
                f"target {target} (ASR {100 * (asr or 0):.1f}%) but sends "
                f"{100 * top_share:.1f}% of them to class {top_class} (max_trigger_share "
                f"{100 * cfg.max_trigger_share:.0f}%; robust accuracy "
                f"{100 * (ra or 0):.1f}%): the trigger still controls the model"
            )
        status: TrainingStatus = "trained"
        if budget.exhausted:
            status = "budget-exhausted"
            warnings.append(
                f"BUDGET EXHAUSTED after {budget.steps} step(s): max_steps={budget.max_steps}, "
                f"max_seconds={budget.max_seconds} ended the run before its schedule finished; "
                "the model is under-trained and the defence incomplete"
            )
        elif remains:
            status = "backdoor-remains"
        elif isolation is not None and isolation.looks_like_poison is not True:
            status = "isolation-doubtful"
        peak = peak_memory_mb(device)
        if dist is not None:
            peak = dist.max_values(peak)
        report = TrainingReport(
            strategy=strat.name,
            status=status,
            config=strat.config.model_dump(mode="json"),
            runtime=rt.model_dump(mode="json"),
            num_classes=k,
            num_samples=n,
            class_counts=torch.bincount(y.cpu(), minlength=k).tolist(),
            epochs=outcome.epochs,
            steps=budget.steps,
            budget_exhausted=budget.exhausted,
            seconds=time.perf_counter() - t_start,
            stages=[
                StageReport(
                    name=s.name,
                    seconds=s.seconds,
                    epochs=s.epochs,
                    steps=s.steps,
                    details=s.details,
                )
                for s in outcome.stages
            ],
            isolation=isolation,
            isolation_history=outcome.isolation_history,
            ba=ba,
            asr=asr,
            ra=ra,
            trigger_top_class=top_class,
            trigger_top_share=top_share,
            asr_without_trigger=base,
            test_images=test_n,
            input_model=input_fp,
            output_model=output_fp,
            warnings=warnings,
            notes=notes,
            details=outcome.details,
            peak_memory_mb=peak,
            distributed=distributed_info(dist),
        )
        for w in warnings:
            _log.warning("robust.warning", message=w)
        _log.info(
            "robust.done",
            strategy=strat.name,
            status=status,
            ba=ba,
            asr=asr,
            suspected=len(suspected),
            seconds=report.seconds,
        )
        scores = None if outcome.scores is None else outcome.scores.detach().cpu().float()
        return TrainingResult(
            model, report, suspected, scores, shape, 0 if dist is None else dist.rank
        )

    @staticmethod
    def _isolation(
        strat: RobustStrategy,
        suspected: Tensor,
        ctx: RobustContext,
        poison: Tensor | None,
        source: str,
        warnings: list[str],
        model: nn.Module,
        rt: RuntimeConfig,
    ) -> IsolationReport | None:
        if not strat.isolates:
            return None
        y, k = ctx.y.cpu(), ctx.num_classes
        n = len(y)
        hist = torch.bincount(y.cpu()[suspected], minlength=k).tolist()
        cfg = strat.config
        judged = suspected
        dom = share = conc = disagree = src_share = src_class = None
        persist: float | None = None
        natural: float | None = None
        persists: bool | None = None
        looks: bool | None = None
        if len(suspected):
            logits = predict(model, ctx.x[suspected.to(ctx.x.device)], runtime=rt)
            cap = max(_MIN_JUDGED, round(cfg.judge_ratio * n))
            if len(suspected) > cap:  # the suspected samples the trained model fits worst
                ce = torch.nn.functional.cross_entropy(logits, y[suspected], reduction="none")
                worst = torch.topk(ce, cap).indices
                judged, logits = suspected[worst], logits[worst]
            yj = y[judged]
            pred = logits.argmax(1)
            dom, off_dom, src_class, src_share = prediction_source(yj, pred, k)
            share = int((yj == dom).sum()) / len(judged)
            prior = int((y == dom).sum()) / max(1, n)
            conc = share / prior if prior > 0 else math.inf
            disagree = float((pred != yj).float().mean())
            spread = src_share is not None and src_share <= cfg.max_source_share
            first = (
                share >= cfg.min_dominant_share
                and conc >= cfg.min_concentration
                and disagree >= cfg.min_disagreement
            )
            if first and src_share is not None and not spread and src_class is not None:
                # one prediction takes them: a natural neighbour class, or a trigger that
                # still drives the model, now to another class (a redirected backdoor)?
                kept = torch.ones(n, dtype=torch.bool)
                kept[suspected.cpu()] = False
                rates = _persistence(
                    model,
                    ctx.x,
                    y,
                    judged[off_dom & (pred == src_class)].cpu(),
                    torch.nonzero(kept).flatten(),
                    dom,
                    src_class,
                    cfg.persistence_mix,
                    rt,
                )
                if rates is not None:
                    persist, natural = rates
                    persists = persist - natural >= cfg.min_persistence_gap
            looks = first and spread
        precision = recall = None
        if poison is not None:
            precision, recall = isolation_metrics(suspected, poison)
        if looks is None:
            warnings.append(
                "nothing was isolated: the strategy found no suspected sample, so no poison was "
                "removed; check the isolation settings"
            )
        elif persists:
            warnings.append(
                f"the isolated samples of class {dom} share an input component that still "
                f"drives the model: it predicts {100 * (src_share or 0):.1f}% of the judged "
                f"ones as class {src_class}, and mixed with other images they keep that "
                f"prediction in {100 * (persist or 0):.1f}% of cases against "
                f"{100 * (natural or 0):.1f}% for class {src_class}'s own images. That is how "
                f"a trigger behaves: the backdoor was most likely redirected to class "
                f"{src_class}, not removed. Validate the model with the trigger if you have it "
                "(hk.Validator: robust accuracy, the class triggered images go to) or scan it "
                "(hk.Scanner) before use"
            )
        elif not looks:
            what = (
                f"the {len(suspected)} suspected samples"
                if judged is suspected
                else f"the {len(judged)} suspected samples the trained model fits worst"
            )
            warnings.append(
                f"the isolated set does not look like a poison set: its most common class "
                f"({dom}) holds {100 * (share or 0):.1f}% of {what}, "
                f"{conc or 0:.2f}x its share of the training set; the trained model "
                f"disagrees with the given label of {100 * (disagree or 0):.1f}% of them and "
                f"predicts {100 * (src_share or 0):.1f}% of those of class {dom} as one class "
                f"({src_class})"
                + (
                    ""
                    if persist is None or natural is None
                    else f", a prediction that survives mixing with other images in "
                    f"{100 * persist:.1f}% of cases, like class {src_class}'s own images "
                    f"({100 * natural:.1f}%): carried by content, not by a trigger"
                )
                + f" (a poison set needs >= {cfg.min_dominant_share}, "
                f">= {cfg.min_concentration}x, >= {100 * cfg.min_disagreement:.0f}% and "
                f"<= {100 * cfg.max_source_share:.0f}%). Either the data is clean (the "
                "isolation found a naturally easy class), the backdoor was not removed (the "
                "model still predicts the target on its poisoned samples), or the attack is "
                "one that loss/entropy isolation does not see (clean-label attacks such as "
                "SIG, or a very low poison rate such as 1%): the model may still carry a "
                "backdoor — validate it (hk.Validator) or scan it (hk.Scanner) before use"
            )
        return IsolationReport(
            suspected=len(suspected),
            fraction=len(suspected) / max(1, n),
            class_histogram=hist,
            dominant_class=dom,
            dominant_share=share,
            concentration=conc,
            disagreement=disagree,
            source_class=src_class,
            source_share=src_share,
            persistence=persist,
            natural_persistence=natural,
            trigger_persists=persists,
            looks_like_poison=looks,
            judged_on="suspected" if judged is suspected else "highest-loss",
            judged_size=len(judged) if len(suspected) else None,
            true_poison=None if poison is None else len(poison),
            poison_indices_source=source,  # type: ignore[arg-type]
            precision=precision,
            recall=recall,
        )

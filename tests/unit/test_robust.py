"""Unit tests of hardenkit.robust: configs, registry, isolation metrics, reports, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.errors import (
    ConfigError,
    DataError,
    HardenkitError,
    ModelCompatibilityError,
    NonFiniteError,
    RegistryError,
)
from hardenkit.reports import ModelFingerprint
from hardenkit.robust import (
    TRAINERS,
    ABLConfig,
    DLPConfig,
    PlainConfig,
    RobustContext,
    RobustOutcome,
    RobustStrategy,
    RobustTrainer,
    TrainingReport,
    isolation_metrics,
    select_suspects,
)
from hardenkit.robust.semi import cutout, fixmatch_loss, strong_augment

K = 3
TINY_DLP = {"sl_epochs": 1, "ssl_epochs": 2, "unlearn_epochs": 1, "rescore_every": 1}
RT = {"device": "cpu", "progress": "off"}


@pytest.fixture(scope="module")
def data() -> hk.data.SyntheticSplits:
    return hk.data.make_synthetic_dataset(
        num_classes=K, train_per_class=16, test_per_class=6, image_size=16
    )


@pytest.fixture(scope="module")
def poisoned(data: hk.data.SyntheticSplits) -> hk.data.PoisonedDataset:
    attack = hk.build_attack("badnets", poison_rate=0.1, target=0, image_size=16)
    return attack.poison(data.train)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return hk.build_model("small-cnn", K, width=4)


@pytest.fixture(scope="module")
def dlp_result(poisoned: hk.data.PoisonedDataset, data: hk.data.SyntheticSplits) -> object:
    attack = hk.build_attack("badnets", poison_rate=0.1, target=0, image_size=16)
    return RobustTrainer(tiny_model(), "dlp", config=TINY_DLP, runtime=RT).fit(
        poisoned, test=data.test, trigger=attack.build_trigger(), target=0
    )


# --- configs and registry ---------------------------------------------------------------------


def test_registry_has_the_builtins() -> None:
    assert {"plain", "abl", "dlp"} <= set(TRAINERS.names())
    with pytest.raises(RegistryError, match="Unknown robust-training strategy 'nope'"):
        RobustTrainer(tiny_model(), "nope")


def test_default_strategy_matches_the_cli() -> None:
    from hardenkit.cli import train_cmd
    from hardenkit.robust import DEFAULT_TRAINER

    assert train_cmd.DEFAULT_STRATEGY == DEFAULT_TRAINER


@pytest.mark.parametrize(
    ("cls", "bad"),
    [
        (DLPConfig, {"isolation_ratio": 1.5}),
        (DLPConfig, {"score": "margin"}),
        (DLPConfig, {"unknown_key": 1}),
        (ABLConfig, {"isolation_ratio": 0}),
        (PlainConfig, {"epochs": 0}),
        (PlainConfig, {"max_seconds": -1}),
    ],
)
def test_config_validation(cls: type, bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=f"Invalid {cls.__name__}"):
        cls(**bad)


def test_configs_are_frozen_and_dicts_work() -> None:
    cfg = DLPConfig(isolation_ratio=0.1)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        cfg.isolation_ratio = 0.3  # type: ignore[misc]
    tr = RobustTrainer(tiny_model(), "dlp", config={"isolation_ratio": 0.1})
    assert tr.strategy.config == cfg
    with pytest.raises(ConfigError):
        RobustTrainer(tiny_model(), "dlp", config={"isolation_ratio": 2})


def test_strategy_instance_with_config_is_refused() -> None:
    strat = TRAINERS.get("plain")()
    with pytest.raises(ConfigError, match="only used with a strategy name"):
        RobustTrainer(tiny_model(), strat, config={"epochs": 1})


# --- isolation metrics ------------------------------------------------------------------------


def test_isolation_metrics() -> None:
    assert isolation_metrics([1, 2, 3, 4], [3, 4, 5]) == (0.5, pytest.approx(2 / 3))
    assert isolation_metrics([], [1]) == (None, 0.0)
    assert isolation_metrics([1], []) == (0.0, None)
    assert isolation_metrics(torch.tensor([7]), torch.tensor([7])) == (1.0, 1.0)


def test_select_suspects_global_per_class_threshold() -> None:
    s = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    glob = select_suspects(s, y, ratio=0.5, threshold=None, per_class=False, num_classes=2)
    assert glob.tolist() == [0, 1, 2]
    per = select_suspects(s, y, ratio=1 / 3, threshold=None, per_class=True, num_classes=2)
    assert per.tolist() == [0, 5]
    thr = select_suspects(s, y, ratio=None, threshold=0.75, per_class=False, num_classes=2)
    assert thr.tolist() == [0, 1]


# --- semi-supervised pieces -------------------------------------------------------------------


def test_strong_augment_and_cutout_are_seeded_and_in_range() -> None:
    x = torch.rand(6, 3, 16, 16)
    a = strong_augment(x, torch.Generator().manual_seed(1))
    b = strong_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.shape == x.shape
    assert float(a.min()) >= 0
    assert float(a.max()) <= 1
    c = cutout(torch.zeros(2, 1, 8, 8), torch.Generator().manual_seed(0), size=4)
    assert int((c == 0.5).sum()) > 0


def test_fixmatch_loss_masks_unconfident_pseudo_labels() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)  # uniform predictions: confidence 0.5 < threshold
    x = torch.rand(4, 3, 2, 2)
    y = torch.tensor([0, 1, 0, 1])
    loss, logits, mask = fixmatch_loss(model, x, y, x, x, threshold=0.95, unlabeled_weight=1.0)
    assert float(mask) == 0.0
    assert float(loss.detach()) == pytest.approx(float(torch.log(torch.tensor(2.0))), rel=1e-5)
    assert logits.shape == (4, 2)
    _, _, mask2 = fixmatch_loss(model, x, y, x, x, threshold=0.5, unlabeled_weight=1.0)
    assert float(mask2) == 1.0


# --- the trainer ------------------------------------------------------------------------------


def test_the_callers_model_is_not_mutated(poisoned: hk.data.PoisonedDataset) -> None:
    model = tiny_model()
    before = ModelFingerprint.of(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = RobustTrainer(model, "dlp", config=TINY_DLP, runtime=RT).fit(poisoned)
    assert ModelFingerprint.of(model) == before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert res.model is not model
    assert res.report.input_model == before
    assert res.report.output_model != before
    assert all(p.grad is None for p in model.parameters())


def test_report_fields_and_precision_recall_from_the_dataset(
    dlp_result: object, poisoned: hk.data.PoisonedDataset
) -> None:
    res = dlp_result
    rep: TrainingReport = res.report  # type: ignore[attr-defined]
    assert rep.strategy == "dlp"
    assert rep.report_type == "robust-training"
    assert rep.schema_version == TrainingReport.SCHEMA_VERSION
    assert [s.name for s in rep.stages] == [
        "supervised",
        "active-unlearning",
        "active-semi-supervised",
    ]
    assert all(s.seconds >= 0 for s in rep.stages)
    iso = rep.isolation
    assert iso is not None
    assert iso.poison_indices_source == "dataset"
    assert iso.true_poison == len(poisoned.poison_indices)
    suspected = res.suspected_indices  # type: ignore[attr-defined]
    p, r = isolation_metrics(suspected, poisoned.poison_indices)
    assert (iso.precision, iso.recall) == (p, r)
    assert sum(iso.class_histogram) == iso.suspected == len(suspected)
    assert rep.ba is not None
    assert rep.asr is not None
    assert rep.test_images == 3 * 6
    assert res.scores is not None
    assert len(res.scores) == len(poisoned)
    assert rep.isolation_history[0]["stage"] == "unlearning"
    assert any(h["stage"] == "ssl-rescore" for h in rep.isolation_history)


def test_poison_indices_argument_wins(poisoned: hk.data.PoisonedDataset) -> None:
    res = RobustTrainer(
        tiny_model(), "abl", config={"isolation_epochs": 1, "finetune_epochs": 1}, runtime=RT
    ).fit(poisoned, poison_indices=np.array([0, 1, 2]))
    assert res.report.isolation is not None
    assert res.report.isolation.poison_indices_source == "argument"
    assert res.report.isolation.true_poison == 3


def test_report_json_round_trip_and_save(dlp_result: object, tmp_path: Path) -> None:
    res = dlp_result
    rep: TrainingReport = res.report  # type: ignore[attr-defined]
    again = TrainingReport.model_validate_json(rep.to_json())
    assert again == rep
    out = res.save(tmp_path / "out")  # type: ignore[attr-defined]
    assert (out / "model.safetensors").is_file()
    assert TrainingReport.model_validate_json((out / "report.json").read_text()) == rep
    sus = json.loads((out / "suspected.json").read_text())
    assert sus["suspected_indices"] == res.suspected_indices.tolist()  # type: ignore[attr-defined]
    assert sus["report_id"] == rep.report_id


def test_plain_isolates_nothing(data: hk.data.SyntheticSplits) -> None:
    x, y = data.train.tensors()
    res = RobustTrainer(tiny_model(), "plain", config={"epochs": 1}, runtime=RT).fit((x, y))
    assert res.report.isolation is None
    assert res.report.status == "trained"
    assert res.trusted
    assert res.scores is None
    assert len(res.suspected_indices) == 0


def test_tensor_pair_and_loader_inputs_agree(data: hk.data.SyntheticSplits) -> None:
    x, y = data.train.tensors()
    cfg = {"epochs": 1, "augment": False}
    a = RobustTrainer(tiny_model(), "plain", config=cfg, runtime=RT).fit((x, y))
    b = RobustTrainer(tiny_model(), "plain", config=cfg, runtime=RT).fit(
        data.train.loader(batch_size=20)
    )
    assert a.report.output_model.sha256 == b.report.output_model.sha256


def test_isolated_set_unlike_poison_is_flagged(data: hk.data.SyntheticSplits) -> None:
    # per-class isolation of clean data spreads the suspected set evenly over the classes
    res = RobustTrainer(
        tiny_model(),
        "dlp",
        config={**TINY_DLP, "per_class": True, "rescore_every": 0},
        runtime=RT,
    ).fit(data.train)
    iso = res.report.isolation
    assert iso is not None
    assert iso.looks_like_poison is False
    assert iso.dominant_share is not None
    assert iso.dominant_share < 0.5
    assert res.report.status == "isolation-doubtful"
    assert not res.trusted
    assert any("does not look like a poison set" in w for w in res.report.warnings)
    assert "WARNING" in res.report.summary()


def test_budget_exhausted_status(data: hk.data.SyntheticSplits) -> None:
    res = RobustTrainer(tiny_model(), "dlp", config={**TINY_DLP, "max_steps": 2}, runtime=RT).fit(
        data.train
    )
    assert res.report.status == "budget-exhausted"
    assert res.report.budget_exhausted
    assert res.report.steps == 2
    assert any("BUDGET EXHAUSTED" in w for w in res.report.warnings)


def test_seeded_runs_are_reproducible(data: hk.data.SyntheticSplits) -> None:
    a = RobustTrainer(tiny_model(), "dlp", config=TINY_DLP, runtime=RT).fit(data.train)
    b = RobustTrainer(tiny_model(), "dlp", config=TINY_DLP, runtime=RT).fit(data.train)
    assert a.report.output_model.sha256 == b.report.output_model.sha256
    assert torch.equal(a.suspected_indices, b.suspected_indices)


# --- bad input --------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(data: hk.data.SyntheticSplits) -> None:
    x, y = data.train.tensors()
    tr = RobustTrainer(tiny_model(), "plain", config={"epochs": 1}, runtime=RT)
    with pytest.raises(DataError, match="labels in \\[0, 5\\] but the model outputs 3"):
        tr.fit((x, torch.where(y == 2, 5, y)))
    with pytest.raises(DataError, match="poison_indices must lie in"):
        tr.fit((x, y), poison_indices=[0, len(y)])
    with pytest.raises(DataError, match="duplicates"):
        tr.fit((x, y), poison_indices=[1, 1])
    with pytest.raises(DataError, match="not a mask"):
        tr.fit((x, y), poison_indices=np.zeros(len(y), dtype=bool))
    with pytest.raises(DataError, match="images but"):
        tr.fit((x, y[:-1]))
    with pytest.raises(DataError, match="\\[0, 1\\]"):
        tr.fit((x * 255, y))
    with pytest.raises(ConfigError, match="without its target"):
        tr.fit((x, y), test=data.test, trigger=lambda t: t)
    with pytest.raises(ConfigError, match="not a class"):
        tr.fit((x, y), test=data.test, trigger=lambda t: t, target=7)
    with pytest.raises(DataError):
        tr.fit("not data")  # type: ignore[arg-type]
    with pytest.raises(ModelCompatibilityError, match=r"torch\.nn\.Module"):
        RobustTrainer("model", "plain")  # type: ignore[arg-type]
    with pytest.raises(ModelCompatibilityError, match="parameter"):
        RobustTrainer(nn.Flatten(), "plain")
    with pytest.raises(ModelCompatibilityError, match="logits"):
        RobustTrainer(nn.Conv2d(3, 3, 1), "plain", config={"epochs": 1}, runtime=RT).fit((x, y))


class _NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3 * 16 * 16, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1)) * float("nan")


def test_non_finite_values_raise(data: hk.data.SyntheticSplits) -> None:
    with pytest.raises(NonFiniteError) as exc:
        RobustTrainer(_NaNModel(), "dlp", config=TINY_DLP, runtime=RT).fit(data.train)
    assert isinstance(exc.value, HardenkitError)


def test_lazy_exports() -> None:
    assert hk.RobustTrainer is RobustTrainer
    assert hk.TrainingReport is TrainingReport
    assert "RobustTrainer" in hk.__all__
    assert "TrainingResult" in hk.__all__


def test_dlp_rescoring_only_moves_samples_to_the_unlabeled_set(
    data: hk.data.SyntheticSplits,
) -> None:
    from hardenkit.config import RuntimeConfig
    from hardenkit.robust import DLPStrategy
    from hardenkit.robust.base import RobustBudget, RobustContext

    x, y = data.train.tensors()
    strat = DLPStrategy({"rescore_low_ratio": 0.1, "rescore_high_ratio": 0.05})
    ctx = RobustContext(
        model=tiny_model(),
        num_classes=K,
        x=x,
        y=y,
        device=torch.device("cpu"),
        runtime=RuntimeConfig(device="cpu"),
        budget=RobustBudget(None, None),
        progress=lambda *a, **k: None,
    )
    before = torch.tensor([0, 5, 7])
    after, scores = strat._rescore(ctx, before)
    assert set(before.tolist()) <= set(after.tolist())
    assert len(after) == 3 + round(0.1 * len(y)) + round(0.05 * len(y))
    assert len(torch.unique(after)) == len(after)
    assert scores.shape == (len(y),)


# --- the poison-likeness check -------------------------------------------------------------


class _Lookup(nn.Module):
    """Logits looked up by the sample index written into pixel (0, 0, 0)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[(x[:, 0, 0, 0] * 255).round().long()]


class _TriggerLookup(_Lookup):
    """:class:`_Lookup` plus a trigger: pixel (1, 0, 0) adds ``30 * value`` to class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        bonus = torch.zeros_like(out)
        bonus[:, 1] = 30 * x[:, 1, 0, 0]
        return out + bonus


def _judge(
    predicted: torch.Tensor,
    *,
    trigger: bool = False,
    config: dict[str, Any] | None = None,
    target: int | None = None,
    bias: int = 0,
) -> TrainingReport:
    """A 10-class set with 40 samples relabeled to class 0 (indices 0-39, true classes 1-9)
    plus 15 clean samples per class; a fixed strategy suspects the 40 and 10 clean samples;
    ``predicted`` is what the 'trained' model says about the 40. With ``trigger`` the 40
    carry a trigger pixel that drives the model to class 1 (and survives mixing). With
    ``target`` the 135 clean samples are also the test set, and the trigger pixel the test
    trigger. ``bias`` clean samples of class 1 are predicted as class 0."""
    k = 10
    y = torch.cat([torch.zeros(40, dtype=torch.int64), torch.arange(k).repeat_interleave(15)])
    n = len(y)
    x = torch.zeros(n, 3, 8, 8)
    x[:, 0, 0, 0] = torch.arange(n) / 255
    if trigger:
        x[:40, 1, 0, 0] = 1.0
    table = torch.full((n, k), -5.0)
    table[torch.arange(n), y] = 5.0  # every sample predicted as labeled ...
    table[:40] = -5.0
    table[torch.arange(40), predicted] = 5.0  # ... except the 40, predicted as told
    if bias:  # the first ``bias`` clean samples of class 1 predicted as class 0
        table[55 : 55 + bias] = -5.0
        table[55 : 55 + bias, 0] = 5.0
    suspected = torch.cat([torch.arange(40), torch.arange(55, 65)])  # + 10 clean of class 1

    class Fixed(RobustStrategy):
        name = "fixed-suspects"

        def fit(self, ctx: RobustContext) -> RobustOutcome:
            return RobustOutcome(model=ctx.model, suspected=suspected, scores=None)

    TRAINERS.register("fixed-suspects", Fixed, override=True)
    try:
        model = _TriggerLookup(table) if trigger else _Lookup(table)
        fit_kw: dict[str, Any] = {}
        if target is not None:

            def stamp(b: torch.Tensor) -> torch.Tensor:
                b = b.clone()
                b[:, 1, 0, 0] = 1.0
                return b

            fit_kw = {"test": (x[40:], y[40:]), "trigger": stamp, "target": target}
        res = RobustTrainer(model, "fixed-suspects", config=config, runtime=RT).fit(
            (x, y), **fit_kw
        )
    finally:
        TRAINERS.unregister("fixed-suspects")
    return res.report


def test_poison_set_predicted_as_many_classes_looks_like_poison() -> None:
    rep = _judge(torch.arange(40) % 9 + 1)  # the backdoor is gone: true classes 1-9
    iso = rep.isolation
    assert iso is not None
    # 50 suspected > max(20, 5 % of 175): judged on the 20 the model fits worst (the 40's)
    assert iso.judged_on == "highest-loss"
    assert iso.judged_size == 20
    assert iso.dominant_class == 0
    assert iso.dominant_share == 1.0
    assert iso.disagreement == 1.0
    assert iso.source_share is not None
    assert iso.source_share <= 0.5
    assert iso.looks_like_poison is True
    assert rep.status == "trained"
    assert iso.class_histogram[:2] == [40, 10]  # the histogram is the whole suspected set's


def test_easy_class_predicted_as_one_neighbour_is_doubtful() -> None:
    # all predicted as one class by their content: an almost-no-op mix keeps both the judged
    # samples' and class 1's own predictions, so the persistence gap is 0
    rep = _judge(torch.full((40,), 1), config={"persistence_mix": 0.001})
    iso = rep.isolation
    assert iso is not None
    assert iso.dominant_share == 1.0
    assert iso.disagreement == 1.0
    assert iso.source_share == 1.0
    assert iso.source_class == 1
    assert iso.persistence == 1.0
    assert iso.natural_persistence == 1.0
    assert iso.trigger_persists is False
    assert iso.looks_like_poison is False
    assert rep.status == "isolation-doubtful"
    assert any("as one class" in w and "carried by content" in w for w in rep.warnings)
    assert "survives mixing in 100.00% (its own class: 100.00%)" in rep.summary()


def test_one_class_carried_by_a_trigger_is_reported_as_redirected() -> None:
    # a trigger that now drives the model to another class (a redirected backdoor): that
    # prediction survives mixing with other images; class 1's own images lose it
    rep = _judge(torch.full((40,), 1), trigger=True)
    iso = rep.isolation
    assert iso is not None
    assert iso.source_share == 1.0
    assert iso.persistence == 1.0
    assert iso.natural_persistence is not None
    assert iso.natural_persistence < 0.25
    assert iso.trigger_persists is True
    assert iso.looks_like_poison is False
    assert rep.status == "isolation-doubtful"
    assert any("redirected to class 1" in w for w in rep.warnings), rep.warnings
    # mixed 10/90, the trigger (30 * 0.1 = 3) no longer outweighs the content
    weak = _judge(torch.full((40,), 1), trigger=True, config={"persistence_mix": 0.9})
    assert weak.isolation is not None
    assert weak.isolation.persistence is not None
    assert weak.isolation.persistence < 0.25
    assert weak.isolation.trigger_persists is False


def test_a_test_trigger_that_still_controls_the_model_means_backdoor_remains() -> None:
    spread = torch.arange(40) % 9 + 1  # the isolation looks like poison ...
    # ... but the test trigger sends every clean test image to the target: ASR 1
    rep = _judge(spread, trigger=True, target=1)
    assert rep.asr is not None
    assert rep.asr == 1.0
    assert rep.trigger_top_class == 1
    assert rep.status == "backdoor-remains"
    assert any("BACKDOOR REMAINS" in w for w in rep.warnings)
    # ... the same trigger judged against target 0: ASR 0, but one class takes them all
    rep = _judge(spread, trigger=True, target=0)
    assert rep.asr == 0.0
    assert rep.ra is not None
    assert rep.ra < 0.15  # only the test images of class 1 stay right
    assert rep.trigger_top_class == 1
    assert rep.trigger_top_share == pytest.approx(120 / 135)  # class 1's own 15 not counted
    assert rep.status == "backdoor-remains"
    assert any("BACKDOOR REDIRECTED" in w for w in rep.warnings)
    assert "triggered images mostly to class 1 (88.89%)" in rep.summary()
    # a trigger that does nothing: trained, RA = BA
    rep = _judge(spread, target=0)
    assert rep.status == "trained"
    assert rep.asr == 0.0
    assert rep.ra == 1.0
    assert rep.asr_without_trigger == 0.0


def test_a_model_biased_towards_the_target_is_not_called_backdoored() -> None:
    """ASR 11 % of which the model gives 11 % without the trigger: no backdoor (DLP on clean
    CIFAR-10 data, ships -> airplanes); the same bias plus a working trigger still is."""
    spread = torch.arange(40) % 9 + 1
    rep = _judge(spread, target=0, bias=15)  # the 'trigger' changes nothing
    assert rep.asr == pytest.approx(15 / 135)
    assert rep.asr_without_trigger == pytest.approx(15 / 135)
    assert rep.status == "trained", rep.warnings
    assert "without the trigger" in rep.summary()
    rep = _judge(spread, trigger=True, target=1, bias=15)
    assert rep.asr == 1.0
    assert rep.asr_without_trigger == 0.0  # class 1 is the target: the biased ones are excluded
    assert rep.status == "backdoor-remains"
    assert any("points more than without it" in w for w in rep.warnings)


def test_suspects_still_predicted_as_labeled_are_doubtful() -> None:
    rep = _judge(torch.zeros(40, dtype=torch.int64))  # the backdoor is still there
    iso = rep.isolation
    assert iso is not None
    assert iso.disagreement == 0.0
    assert iso.source_share is None
    assert iso.looks_like_poison is False
    assert rep.status == "isolation-doubtful"


def test_dlp_restart_trains_stage_3_from_the_initial_weights(
    poisoned: hk.data.PoisonedDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ssl_init="restart"``: stage 2 only isolates (no unlearning) and stage 3 starts from
    the weights the model had before stage 1; re-scoring is off unless asked for."""
    from hardenkit.robust import DLPStrategy

    assert DLPConfig().rescore_period == 1
    assert DLPConfig(ssl_init="restart").rescore_period == 0
    assert DLPConfig(ssl_init="restart", rescore_every=2).rescore_period == 2
    model = tiny_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[dict[str, torch.Tensor]] = []
    original = DLPStrategy._ssl

    def spy(self: DLPStrategy, ctx: RobustContext, *a: Any, **k: Any) -> Any:
        seen.append({k2: v.clone() for k2, v in ctx.model.state_dict().items()})
        return original(self, ctx, *a, **k)

    monkeypatch.setattr(DLPStrategy, "_ssl", spy)
    cfg = {**TINY_DLP, "rescore_every": None, "ssl_init": "restart"}
    res = RobustTrainer(model, "dlp", config=cfg, runtime=RT).fit(poisoned)
    assert len(seen) == 1
    assert all(torch.equal(seen[0][k], initial[k]) for k in initial)
    stages = {s.name: s for s in res.report.stages}
    assert "restart" in str(stages["active-unlearning"].details["skipped"])
    assert stages["active-unlearning"].steps == 0
    assert [h["stage"] for h in res.report.isolation_history] == ["unlearning"]
    # continuing (the default) starts stage 3 from the unlearned model and re-scores
    seen.clear()
    res = RobustTrainer(tiny_model(), "dlp", config=TINY_DLP, runtime=RT).fit(poisoned)
    assert not all(torch.equal(seen[0][k], initial[k]) for k in initial)
    assert "ssl-rescore" in [h["stage"] for h in res.report.isolation_history]

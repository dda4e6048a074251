"""Unit tests of the Purifier framework, the strategies' guards and the conformance suite."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.errors import ConfigError, DataError, ModelCompatibilityError, NonFiniteError
from hardenkit.purify import STRATEGIES, MCLConfig, PurificationStrategy, PurifyContext
from hardenkit.purify.base import Budget, StrategyOutcome
from hardenkit.reports import ModelFingerprint
from hardenkit.scan import LabelRecheck, ScanResult
from hardenkit.testing import BackdoorFixture, check_strategy, missed_scan, tiny_backdoored_model

FAST: dict[str, dict[str, object]] = {
    "finetune": {"epochs": 2},
    "nc-unlearn": {"epochs": 2},
    "auto": {"trigger_config": {"epochs": 1}, "fallback_config": {"epochs": 1}},
    "fine-pruning": {"epochs": 1},
    "anp": {"iterations": 5},
    "shapley-pruning": {"max_permutations": 3},
    "sau": {"epochs": 1, "steps": 2},
}


@pytest.fixture(scope="module")
def fx() -> BackdoorFixture:
    return tiny_backdoored_model(epochs=4)


@pytest.fixture(scope="module")
def scan(fx: BackdoorFixture) -> ScanResult:
    bd = fx.backdoored
    return ScanResult.from_triggers({0: bd.trigger}, model=bd.model, num_classes=4)


def _loader(fx: BackdoorFixture) -> object:
    return fx.data.train.loader(batch_size=64)


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_registered_strategy_passes_the_conformance_suite(
    name: str, fx: BackdoorFixture
) -> None:
    results = check_strategy(name, config=FAST.get(name), fixture=fx)
    assert all(results.values())
    assert set(results) >= {
        "input unchanged",
        "deterministic",
        "same I/O",
        "respects budget",
        "reads no held-out data",
    }


def test_conformance_suite_catches_a_mutating_strategy(fx: BackdoorFixture) -> None:
    class Mutating(PurificationStrategy):
        name = "mutating-test"

        def run(self, ctx: PurifyContext) -> StrategyOutcome:
            # a buggy plugin: edits the model it was *not* given (the frozen original is a
            # copy, so reach the caller's object through the test's closure)
            with torch.no_grad():
                for p in fx.backdoored.model.parameters():
                    p.add_(0.01)
            return StrategyOutcome(model=ctx.model)

    STRATEGIES.register(Mutating.name, Mutating)
    model = fx.backdoored.model
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with pytest.raises(AssertionError, match="input unchanged"):
            check_strategy(Mutating.name, fixture=fx)
    finally:
        STRATEGIES.unregister(Mutating.name)
        model.load_state_dict(saved)


def test_trigger_rows_carry_the_share_on_the_label_without_the_trigger(
    fx: BackdoorFixture, scan: ScanResult
) -> None:
    """The floor under each recovered trigger's ASR: the repaired model's share of the same
    held-out images on the label with no trigger (recomputed here on the given holdout)."""
    res = hk.Purifier(fx.backdoored.model, "finetune", config={"epochs": 1}).run(
        _loader(fx), scan=scan, holdout_loader=fx.data.test.loader(batch_size=64)
    )
    row = res.report.trigger_asr[0]
    x, y = fx.data.test.tensors()
    keep = y != row.label
    with torch.no_grad():
        share = float((res.model.eval()(x[keep]).argmax(1) == row.label).float().mean())
    assert row.images == int(keep.sum())
    assert row.after_without_trigger == pytest.approx(share)
    assert f"{100 * share:.2f}% without the trigger" in res.report.summary()


def test_report_contents(fx: BackdoorFixture, scan: ScanResult) -> None:
    res = hk.Purifier(fx.backdoored.model, "finetune", config={"epochs": 2}).run(
        _loader(fx), scan=scan
    )
    rep = res.report
    assert rep.strategy == "finetune"
    assert rep.status == "purified"
    assert res.purified
    assert rep.config["epochs"] == 2
    ci = rep.clean_images
    assert ci["train"] + ci["validation"] + ci["holdout"] == 400
    assert ci["holdout"] == 40  # 10 % held out, stratified
    assert ci["validation"] == 36  # 10 % of the rest for checkpoint selection
    assert rep.utility_guard is not None
    assert rep.utility_guard.split == "holdout"
    assert rep.utility_guard.passed
    lo, hi = rep.utility_guard.drop_interval or (1.0, -1.0)
    assert lo <= rep.ba_before - rep.ba_after <= hi  # paired, on the same 40 images
    assert "drop 95% interval" in rep.summary()
    assert rep.trigger_asr[0].label == 0
    assert rep.trigger_asr[0].images == 30
    assert 0 <= rep.ba_after <= 1
    assert rep.steps == rep.epochs  # 324 training images // batch 256 = 1 step per epoch
    assert rep.input_model.sha256 != rep.output_model.sha256
    assert rep.input_model == ModelFingerprint.of(fx.backdoored.model)
    assert rep.peak_memory_mb["process_rss"] > 0
    assert rep.scan is not None
    assert rep.scan["flagged_labels"] == [0]
    assert "strategy finetune" in rep.summary()
    assert not any(n.startswith("no trigger was known") for n in rep.notes)  # ASR measured
    assert "finetune" in repr(res)


def test_purified_without_a_known_trigger_says_the_backdoor_was_not_measured(
    fx: BackdoorFixture,
) -> None:
    res = hk.Purifier(fx.backdoored.model, "finetune", config={"epochs": 2}).run(_loader(fx))
    assert res.status == "purified"  # BA kept: the status judges what it can measure
    assert res.report.trigger_asr == []
    assert res.report.notes[-1].startswith("no trigger was known to measure")
    assert "not that a backdoor is gone" in res.report.summary()


def test_save_and_export_onnx(fx: BackdoorFixture, scan: ScanResult, tmp_path: Path) -> None:
    res = hk.Purifier(fx.backdoored.model, "nc-unlearn", config={"epochs": 1}).run(
        _loader(fx), scan=scan
    )
    out = res.save(tmp_path / "res")
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "report.json").read_text())["strategy"] == "nc-unlearn"
    assert (out / "scan" / "report.json").is_file()
    m = hk.create_model("small-cnn", 4)
    hk.load_model_weights(m, out / "model.safetensors")
    exp = res.export_onnx(tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(exp.path)).metadata_props}
    assert props["hardenkit.purification_report_id"] == res.report.report_id
    ver = hk.verify_onnx(exp, res.model, fx.data.test.loader())
    assert ver.passed


def test_nothing_to_purify_is_explicit(fx: BackdoorFixture, scan: ScanResult) -> None:
    clean_report = scan.report.model_copy(update={"verdict": "clean", "flagged_labels": []})
    clean_scan = ScanResult(clean_report, scan.all_triggers)
    res = hk.Purifier(fx.backdoored.model, "mcl").run(_loader(fx), scan=clean_scan)
    assert res.status == "nothing-to-purify"
    assert not res.purified
    assert res.report.output_model.sha256 == res.report.input_model.sha256
    assert "found no backdoor" in res.report.notes[0]
    assert res.report.steps == 0


def test_mcl_refuses_a_weak_trigger(fx: BackdoorFixture) -> None:
    weak = hk.PatchTrigger.square(3, location="top-left", pattern="black")
    scan = ScanResult.from_triggers(
        {0: weak}, model=fx.backdoored.model, num_classes=4, trigger_asr={0: 0.05}
    )
    res = hk.Purifier(fx.backdoored.model, "mcl").run(_loader(fx), scan=scan)
    assert res.status == "refused"
    assert res.report.output_model.sha256 == res.report.input_model.sha256
    assert any("5.0% < min_trigger_asr 90%" in n for n in res.report.notes)
    assert any("MCL refused" in n for n in res.report.notes)


def test_mcl_with_several_triggers_and_options(fx: BackdoorFixture) -> None:
    bd = fx.backdoored
    scan = ScanResult.from_triggers(
        {0: bd.trigger, 1: hk.PatchTrigger.square(3, location="top-left")},
        model=bd.model,
        num_classes=4,
        trigger_asr={0: 1.0, 1: 0.95},
    )
    for cfg in ({"epochs": 1}, {"epochs": 1, "ce_weight": 1.0, "bn_mode": "frozen"}):
        res = hk.Purifier(bd.model, "mcl", config=cfg).run(_loader(fx), scan=scan)
        assert res.report.details["triggers"] == [0, 1]
        assert [t.label for t in res.report.trigger_asr] == [0, 1]


def _ranked_scan(fx: BackdoorFixture) -> ScanResult:
    """A scan that *detected* labels 0 (most anomalous) and 1, as a detector ranks them."""
    from hardenkit.scan.scanner import DetectorReport

    bd = fx.backdoored
    known = ScanResult.from_triggers(
        {0: bd.trigger, 1: hk.PatchTrigger.square(3, location="top-left")},
        model=bd.model,
        num_classes=4,
        trigger_asr={0: 1.0, 1: 0.95},
    )
    det = DetectorReport(
        detector="neural-cleanse",
        statistic="mask_l1",
        suspicious_side="low",
        verdict="backdoored",
        score=1.0,
        anomaly_index=5.0,
        evidence=5.0,
        threshold=2.0,
        flagged_labels=[0, 1],
        seconds=0.0,
        config={},
        produces_triggers=True,
        classes=[],
    )
    report = known.report.model_copy(update={"detectors": [det]})
    return ScanResult(report, known.all_triggers)


@pytest.mark.parametrize("name", ["mcl", "nc-unlearn"])
def test_trigger_strategies_use_the_most_anomalous_label_by_default(
    name: str, fx: BackdoorFixture
) -> None:
    scan = _ranked_scan(fx)
    bd = fx.backdoored
    res = hk.Purifier(bd.model, name, config={"epochs": 1}).run(_loader(fx), scan=scan)
    assert res.report.details["triggers"] == [0]
    both = hk.Purifier(bd.model, name, config={"epochs": 1, "trigger_labels": "all-flagged"}).run(
        _loader(fx), scan=scan
    )
    assert both.report.details["triggers"] == [0, 1]
    # every flagged label's trigger is still measured in the report
    assert [t.label for t in res.report.trigger_asr] == [0, 1]


def test_select_triggers_keeps_every_known_trigger(fx: BackdoorFixture) -> None:
    from hardenkit.purify.base import select_triggers

    ranked = _ranked_scan(fx)
    assert [y for y, _ in select_triggers(ranked, "most-anomalous")] == [0]
    assert [y for y, _ in select_triggers(ranked, "all-flagged")] == [0, 1]
    known = ScanResult(ranked.report.model_copy(update={"detectors": []}), ranked.all_triggers)
    assert [y for y, _ in select_triggers(known, "most-anomalous")] == [0, 1]
    assert select_triggers(None, "all-flagged") == []


def test_mcl_anchor_and_validation_split(fx: BackdoorFixture) -> None:
    bd = fx.backdoored
    scan = ScanResult.from_triggers(
        {0: bd.trigger}, model=bd.model, num_classes=4, trigger_asr={0: 1.0}
    )
    cfg = {"epochs": 2, "anchor_weight": 1.0, "validation_fraction": 0.2, "selection": "best-val"}
    res = hk.Purifier(bd.model, "mcl", config=cfg).run(_loader(fx), scan=scan)
    ckpt = res.report.details["checkpoint"]
    assert ckpt["mode"] == "best-val"
    assert "reason" not in ckpt  # a real choice on the validation split, not the fallback
    assert [int(r["epoch"]) for r in ckpt["history"]] == [1, 2]
    assert res.report.clean_images["validation"] > 0
    # the default is that configuration (with a 10 % split) ...
    default = hk.Purifier(bd.model, "mcl", config={"epochs": 2}).run(_loader(fx), scan=scan)
    assert default.report.clean_images["validation"] > 0
    assert default.report.details["checkpoint"]["mode"] == "best-val"
    assert default.report.config["anchor_weight"] == 3.0
    # ... and the paper preset keeps every clean image for training and the last epoch
    paper = {"epochs": 1, "preset": "paper"}
    plain = hk.Purifier(bd.model, "mcl", config=paper).run(_loader(fx), scan=scan)
    assert plain.report.clean_images["validation"] == 0
    assert "reason" in plain.report.details["checkpoint"]
    assert plain.report.config["anchor_weight"] == 0.0
    assert plain.report.config["selection"] == "final"
    assert plain.report.config["preset"] == "paper"


def test_mcl_config_validation() -> None:
    with pytest.raises(ConfigError, match="start at epoch 0"):
        MCLConfig(lr_schedule=((1, 0.1),))
    with pytest.raises(ConfigError, match="increase"):
        MCLConfig(lr_schedule=((0, 0.1), (5, 0.01), (3, 0.001)))
    assert MCLConfig().lr_at(0) == 0.1
    assert MCLConfig().lr_at(5) == 0.01
    assert MCLConfig().lr_at(19) == 0.001


def test_trigger_strategy_scans_when_no_scan_is_given(fx: BackdoorFixture) -> None:
    res = hk.Purifier(
        fx.backdoored.model,
        "nc-unlearn",
        config={"epochs": 1},
        scan_config={"detector_options": {"neural-cleanse": {"epochs": 2}}},
    ).run(_loader(fx))
    assert res.scan is not None
    assert res.report.notes[0].startswith("no scan given")


def test_budget_seconds_and_steps() -> None:
    b = Budget(max_steps=2, max_seconds=None)
    assert [b(), b(), b()] == [False, False, True]
    assert b.steps == 2
    assert b.exhausted
    t = Budget(max_steps=None, max_seconds=1e-9)
    t()
    assert t()
    assert t.exhausted


def test_max_seconds_budget_stops_training(fx: BackdoorFixture) -> None:
    res = hk.Purifier(
        fx.backdoored.model, "finetune", config={"epochs": 500, "max_seconds": 0.5}
    ).run(_loader(fx))
    assert res.report.budget_exhausted
    assert res.report.epochs < 500


def test_holdout_loader_and_overlap_guard(fx: BackdoorFixture) -> None:
    train, test = fx.data.train, fx.data.test
    res = hk.Purifier(fx.backdoored.model, "finetune", config={"epochs": 1}).run(
        train.loader(), holdout_loader=test.loader()
    )
    assert res.report.clean_images == {"train": 360, "validation": 40, "holdout": 100}
    with pytest.raises(DataError, match="appear in both"):
        hk.Purifier(fx.backdoored.model, "finetune").run(
            train.loader(), holdout_loader=train.subset(torch.arange(5)).loader()
        )


def test_bad_inputs(fx: BackdoorFixture, scan: ScanResult) -> None:
    model = fx.backdoored.model
    with pytest.raises(ConfigError, match="unknown purification strategy"):
        hk.Purifier(model, "nope")
    with pytest.raises(ConfigError):
        hk.Purifier(model, "mcl", config={"temperature": 0})
    with pytest.raises(ConfigError):
        hk.Purifier(model, "mcl", config={"not_a_field": 1})
    with pytest.raises(ConfigError, match="only together"):
        hk.Purifier(model, STRATEGIES.get("mcl")(), config={"epochs": 1})
    with pytest.raises(ConfigError, match="holdout_fraction"):
        hk.Purifier(model, holdout_fraction=1.0)
    with pytest.raises(ModelCompatibilityError):
        hk.Purifier("model")  # type: ignore[arg-type]
    x = torch.rand(20, 3, 32, 32)
    with pytest.raises(DataError, match="labels"):
        hk.Purifier(model, "finetune").run([(x, torch.arange(20) % 7)])
    with pytest.raises(DataError, match="fewer than 2 clean images"):
        hk.Purifier(model, "finetune").run([(x[:4], torch.arange(4))])
    with pytest.raises(DataError):
        hk.Purifier(model, "finetune").run([(torch.rand(8, 5), torch.zeros(8, dtype=torch.long))])
    other = ScanResult.from_triggers({0: fx.backdoored.trigger}, model=model, num_classes=10)
    with pytest.raises(DataError, match="10-class model"):
        hk.Purifier(model, "mcl").run(_loader(fx), scan=other)


def test_wrong_model_output(fx: BackdoorFixture) -> None:
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))[..., None]

    with pytest.raises(ModelCompatibilityError, match="logits"):
        hk.Purifier(Bad(), "finetune").run(_loader(fx))


def test_from_triggers_validation(fx: BackdoorFixture) -> None:
    m = fx.backdoored.model
    with pytest.raises(ConfigError, match="at least one"):
        ScanResult.from_triggers({}, model=m, num_classes=4)
    with pytest.raises(ConfigError, match="outside"):
        ScanResult.from_triggers({7: fx.backdoored.trigger}, model=m, num_classes=4)


# ----------------------------------------------------------------------------- d3


def test_d3_projection_keeps_the_norm_and_moves_away(fx: BackdoorFixture) -> None:
    from hardenkit.purify.d3 import selected_weights

    model = fx.backdoored.model
    (name, w_before), *_ = selected_weights(model, None)
    w0 = w_before.detach().clone()
    res = hk.Purifier(model, "d3", config={"epochs": 3}).run(_loader(fx))
    (_, w_after), *_ = selected_weights(res.model, None)
    assert name == "model.linear.weight"
    # every step projects back onto the sphere of the original norm ...
    assert float(torch.linalg.vector_norm(w_after.detach())) == pytest.approx(
        float(torch.linalg.vector_norm(w0)), rel=1e-4
    )
    # ... and the distance term moved the weights away from the backdoored ones
    moved = float(torch.linalg.vector_norm(w_after.detach() - w0))
    assert moved > 0.5 * float(torch.linalg.vector_norm(w0))
    d = res.report.details
    assert d["selected_weights"] == ["model.linear.weight"]
    assert res.report.clean_images["validation"] > 0  # D3 keeps a validation split
    assert d["final_epoch"] == 3
    assert d["chosen_epoch"] == 3  # selection="final" by default
    assert 1 <= d["best_val_epoch"] <= 3


@pytest.mark.parametrize("warm", ["random", "far", "middle", "noise", "near"])
def test_d3_warm_starts(warm: str, fx: BackdoorFixture) -> None:
    res = hk.Purifier(
        fx.backdoored.model, "d3", config={"epochs": 1, "warm_start": warm, "max_steps": 1}
    ).run(_loader(fx))
    # one step of a 1-epoch schedule cut by max_steps: never "purified" (issue: d3 with
    # max_steps=1 dropped BA to chance and still said purified)
    assert res.status in {"budget-exhausted", "degraded"}
    assert res.report.budget_exhausted
    assert res.report.steps == 1


def test_d3_best_val_selection_and_layers(fx: BackdoorFixture) -> None:
    res = hk.Purifier(
        fx.backdoored.model,
        "d3",
        config={"epochs": 3, "selection": "best-val-ba", "layers": ["block3"], "lmd": 10.0},
    ).run(_loader(fx))
    d = res.report.details
    assert d["chosen_epoch"] == d["best_val_epoch"]
    assert all(n.startswith("block3") for n in d["selected_weights"])
    with pytest.raises(ModelCompatibilityError, match=r"no nn\.Linear or nn\.Conv2d"):
        hk.Purifier(fx.backdoored.model, "d3", config={"layers": ["avgpool"]}).run(_loader(fx))


def test_d3_train_selected_moves_only_the_selected_layer(fx: BackdoorFixture) -> None:
    from hardenkit.purify.d3 import D3Config, selected_weights

    model = fx.backdoored.model
    (name, _), *_ = selected_weights(model, None)
    layer = name.rsplit(".", 1)[0]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    res = hk.Purifier(model, "d3", config={"epochs": 2, "train": "selected"}).run(_loader(fx))
    after = res.model.state_dict()
    moved = {k for k, v in before.items() if not torch.equal(v, after[k])}
    # the last linear layer's weight (and its bias) moved; every other tensor, BatchNorm
    # running statistics included, is bit-identical
    assert f"{layer}.weight" in moved
    assert moved <= {f"{layer}.weight", f"{layer}.bias"}
    assert all(p.requires_grad for p in res.model.parameters())  # flags restored
    full = hk.Purifier(model, "d3", config={"epochs": 2}).run(_loader(fx)).model.state_dict()
    assert any(not torch.equal(before[k], full[k]) for k in before if not k.startswith(layer))
    # the default trains everything (the code); preset="last-layer" is the stop-39 form
    assert D3Config().train == "all"
    last = D3Config(preset="last-layer").resolved()
    assert (last.train, last.hinge, last.lmd, last.scale_large_lambda) == (
        "selected",
        "relative",
        30.0,
        False,
    )
    assert D3Config(preset="last-layer", lmd=10.0).resolved().lmd == 10.0  # fields set win
    assert D3Config(preset="paper").resolved().train == "all"


def test_d3_hinge_excess_modes() -> None:
    from hardenkit.purify.d3 import hinge_excess

    g = torch.Generator().manual_seed(0)
    z, ref = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    assert torch.allclose(hinge_excess(z, y, None, "absolute"), ce)
    ce_ref = torch.nn.functional.cross_entropy(ref, y, reduction="none")
    assert torch.allclose(hinge_excess(z, y, ref, "relative"), ce - ce_ref)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(z, 1), torch.log_softmax(ref, 1), log_target=True, reduction="none"
    ).sum(1)
    assert torch.allclose(hinge_excess(z, y, ref, "distill"), kl, atol=1e-6)
    # the model itself: nothing to hold back, whatever its labels
    assert hinge_excess(z, y, z, "relative").abs().max() == 0
    assert hinge_excess(z, y, z, "distill").abs().max() < 1e-6
    with pytest.raises(ValueError, match="input model's logits"):
        hinge_excess(z, y, None, "distill")


@pytest.mark.parametrize("hinge", ["relative", "distill"])
def test_d3_hinges_against_the_input_model_run(hinge: str, fx: BackdoorFixture) -> None:
    model = fx.backdoored.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = hk.Purifier(
        model, "d3", config={"epochs": 2, "hinge": hinge, "distance": "relative"}
    ).run(_loader(fx))
    assert res.report.details["final_epoch"] == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not in place


def test_d3_paper_preset_is_the_official_procedure(fx: BackdoorFixture) -> None:
    from hardenkit.purify.d3 import D3Config, D3Strategy

    paper = D3Config(preset="paper").resolved()
    assert (paper.hinge, paper.distance, paper.selection) == ("absolute", "absolute", "final")
    assert (paper.lmd, paper.eps, paper.validation_fraction) == (0.5, 0.1, 0.0)
    assert D3Config(preset="paper", lmd=10.0).resolved().lmd == 10.0  # fields set win
    assert D3Strategy({"preset": "paper"}).validation_fraction == 0.0
    res = hk.Purifier(fx.backdoored.model, "d3", config={"preset": "paper", "epochs": 2}).run(
        _loader(fx)
    )
    assert res.report.clean_images["validation"] == 0  # every clean image trains
    assert res.report.details["chosen_epoch"] == 2


def test_scan_of_other_weights_is_noted(fx: BackdoorFixture) -> None:
    other = hk.create_model("small-cnn", 4)
    scan = ScanResult.from_triggers({0: fx.backdoored.trigger}, model=other, num_classes=4)
    res = hk.Purifier(fx.backdoored.model, "nc-unlearn", config={"epochs": 1}).run(
        _loader(fx), scan=scan
    )
    assert "made on a model with other weights" in res.report.notes[0]


# ----------------------------------------------------------------------------- auto

AUTO_FAST = {"trigger_config": {"epochs": 1}, "fallback_config": {"epochs": 1}}
AUTO_MCL_D3 = {"trigger_strategy": "mcl", "fallback": "d3", **AUTO_FAST}


def test_auto_runs_mcl_on_a_recovered_trigger(fx: BackdoorFixture) -> None:
    bd = fx.backdoored  # (the tiny fixture's backdoor is weak: vouch for the trigger's ASR)
    scan = ScanResult.from_triggers(
        {0: bd.trigger}, model=bd.model, num_classes=4, trigger_asr={0: 1.0}
    )
    res = hk.Purifier(bd.model, "auto", config=AUTO_MCL_D3).run(_loader(fx), scan=scan)
    assert res.status == "purified"
    assert res.report.details["branch"] == "mcl"
    assert res.report.details["triggers"] == [0]
    res = hk.Purifier(bd.model, "auto", config=AUTO_FAST).run(_loader(fx), scan=scan)
    assert res.report.details["branch"] == "mcl"  # the default trigger branch
    nc = {**AUTO_FAST, "trigger_strategy": "nc-unlearn"}
    res = hk.Purifier(bd.model, "auto", config=nc).run(_loader(fx), scan=scan)
    assert res.report.details["branch"] == "nc-unlearn"


def test_auto_falls_back_to_d3(fx: BackdoorFixture, scan: ScanResult) -> None:
    clean_report = scan.report.model_copy(update={"verdict": "clean", "flagged_labels": []})
    # one D3 epoch costs BA on this tiny model: the guard is widened to test the branch
    res = hk.Purifier(fx.backdoored.model, "auto", config=AUTO_MCL_D3, max_ba_drop=1.0).run(
        _loader(fx), scan=ScanResult(clean_report, {})
    )
    assert res.status == "purified"  # a negative scan is not a silent no-op
    assert res.report.details["branch"] == "d3"
    assert res.report.clean_images["validation"] > 0  # d3 as a stage keeps its split
    assert "scan verdict clean" in res.report.notes[-2]
    # no trigger was recovered: the report says the backdoor itself was not measured
    assert res.report.notes[-1].startswith("no trigger was known to measure")
    weak = ScanResult.from_triggers(
        {0: hk.PatchTrigger.square(3, location="top-left", pattern="black")},
        model=fx.backdoored.model,
        num_classes=4,
        trigger_asr={0: 0.01},
    )
    # MCL refuses the weak trigger; NC unlearning (which uses any inverted trigger) stands in
    # before the trigger-free fallback
    res = hk.Purifier(fx.backdoored.model, "auto", config=AUTO_MCL_D3).run(_loader(fx), scan=weak)
    assert res.report.details["branch"] == "nc-unlearn"
    assert any("auto: mcl could not run; falling back to nc-unlearn" in n for n in res.report.notes)


def test_auto_unlearns_the_smallest_masks_when_the_scan_flags_nothing(
    fx: BackdoorFixture,
) -> None:
    nc = {"detector_options": {"neural-cleanse": {"epochs": 2}}}
    real = hk.Scanner(fx.backdoored.model, 4, config=nc).run(_loader(fx))
    assert set(real.all_triggers) == {0, 1, 2, 3}
    values = {c.label: c.value for c in real.report.detectors[0].classes}
    smallest = sorted(values, key=lambda y: (values[y], y))[:2]
    missed = missed_scan(real)
    cfg = {**AUTO_FAST, "unflagged_candidates": 2}
    res = hk.Purifier(fx.backdoored.model, "auto", config=cfg, max_ba_drop=1.0).run(
        _loader(fx), scan=missed
    )
    assert res.report.details["branch"] == "nc-unlearn (smallest masks)"
    assert res.report.details["candidate_labels"] == smallest
    assert any("with the smallest sizes: labels" in n for n in res.report.notes)
    assert res.report.details["candidate_sources"] == {str(y): ["neural-cleanse"] for y in smallest}
    # the candidates are not judged (no flagged label: often natural features), and the note
    # says what the repair was aimed at instead of "no trigger was known" (stop 55)
    assert res.status == "purified"
    assert res.report.trigger_asr == []
    assert res.report.notes[-1].startswith(
        "no flagged label's trigger was known to measure (the repair was aimed at the inverted "
        f"triggers of labels {sorted(smallest)}, which the scan did not flag"
    )
    # 0 candidates: the trigger-free fallback, as before
    cfg = {**AUTO_FAST, "unflagged_candidates": 0}
    res = hk.Purifier(fx.backdoored.model, "auto", config=cfg, max_ba_drop=1.0).run(
        _loader(fx), scan=missed
    )
    assert res.report.details["branch"] == "finetune"
    assert res.report.notes[-1].startswith("no trigger was known to measure:")


def test_missed_scan_drops_a_trigger_only_the_flagging_detector_recovered(
    fx: BackdoorFixture,
) -> None:
    nc = {"detector_options": {"neural-cleanse": {"epochs": 2}}}
    real = hk.Scanner(fx.backdoored.model, 4, config=nc).run(_loader(fx))
    # as if a later detector (warp) had flagged label 0 and so supplied its trigger
    classes = [
        c.model_copy(update={"trigger_source": "warp", "flagged": True}) if c.label == 0 else c
        for c in real.report.classes
    ]
    hit = ScanResult(real.report.model_copy(update={"classes": classes}), real.all_triggers)
    missed = missed_scan(hit)
    assert sorted(missed.all_triggers) == [1, 2, 3]  # a genuine miss has NC's, not warp's
    assert not any(c.flagged for c in missed.report.classes)
    assert missed.report.classes[0].trigger_source is None
    assert sorted(missed_scan(real).all_triggers) == [0, 1, 2, 3]  # NC-sourced: all kept


def test_auto_unlearns_flagged_then_smallest_masks_when_no_trigger_was_recovered(
    fx: BackdoorFixture,
) -> None:
    nc = {"detector_options": {"neural-cleanse": {"epochs": 2}}}
    real = hk.Scanner(fx.backdoored.model, 4, config=nc).run(_loader(fx))
    values = {c.label: c.value for c in real.report.detectors[0].classes}
    by_mask = sorted(values, key=lambda y: (values[y], y))
    flagged = by_mask[-1]  # the largest mask: never among the smallest-mask candidates
    # as if MM-BD alone had flagged it: backdoored, but no detector that inverts flagged it
    dets = [d.model_copy(update={"flagged_labels": []}) for d in real.report.detectors]
    report = real.report.model_copy(
        update={"verdict": "backdoored", "flagged_labels": [flagged], "detectors": dets}
    )
    scan = ScanResult(report, real.all_triggers)
    assert scan.is_backdoored
    assert not scan.triggers
    old = {**AUTO_FAST, "flagged_without_trigger": "fallback"}
    res = hk.Purifier(fx.backdoored.model, "auto", config=old, max_ba_drop=1.0).run(
        _loader(fx), scan=scan
    )
    assert res.report.details["branch"] == "finetune"  # the behaviour before stop 35
    cfg = {
        **AUTO_FAST,
        "unflagged_candidates": 2,
    }  # the default: flagged_without_trigger="candidates"
    res = hk.Purifier(fx.backdoored.model, "auto", config=cfg, max_ba_drop=1.0).run(
        _loader(fx), scan=scan
    )
    assert res.report.details["branch"] == "nc-unlearn (flagged + smallest masks)"
    assert sorted(res.report.details["candidate_labels"]) == sorted([flagged, by_mask[0]])
    assert any("(the flagged labels, then the smallest)" in n for n in res.report.notes)
    # no inversion to use (unflagged_candidates=0): the fallback, as before
    cfg = {**cfg, "unflagged_candidates": 0}
    res = hk.Purifier(fx.backdoored.model, "auto", config=cfg, max_ba_drop=1.0).run(
        _loader(fx), scan=scan
    )
    assert res.report.details["branch"] == "finetune"


def test_auto_validates_stage_configs() -> None:
    with pytest.raises(ConfigError):
        hk.purify.AutoStrategy({"trigger_strategy": "mcl", "trigger_config": {"temperature": -1}})
    with pytest.raises(ConfigError):
        hk.purify.AutoStrategy({"fallback": "d3", "fallback_config": {"nope": 1}})
    with pytest.raises(ConfigError):
        hk.purify.AutoStrategy({"fallback": "mcl"})


def test_auto_stage_configs_share_their_common_keys() -> None:
    from hardenkit.purify.auto import AutoStrategy

    auto = AutoStrategy(
        {"trigger_strategy": "mcl", "trigger_config": {"epochs": 2, "anchor_weight": 3.0}}
    )
    assert auto._second is not None
    assert auto._second.config.epochs == 2  # type: ignore[attr-defined]
    assert auto._candidate.name == "nc-unlearn"
    assert auto._candidate.config.epochs == 2  # type: ignore[attr-defined]
    assert auto._candidate.config.selection == "final"  # type: ignore[attr-defined]
    own = AutoStrategy({"trigger_strategy": "mcl", "candidate_config": {"epochs": 5}})
    assert own._candidate.config.epochs == 5  # type: ignore[attr-defined]
    assert AutoStrategy()._second is not None  # the default trigger branch is mcl
    assert AutoStrategy({"trigger_strategy": "nc-unlearn"})._second is None  # needs no stand-in
    both_mcl = AutoStrategy(
        {
            "trigger_strategy": "mcl",
            "candidate_strategy": "mcl",
            "trigger_config": {"anchor_weight": 2.0},
        }
    )
    assert both_mcl._candidate.config.anchor_weight == 2.0  # type: ignore[attr-defined]


def test_auto_keeps_nc_unlearning_when_mcl_costs_too_much_accuracy(fx: BackdoorFixture) -> None:
    bd = fx.backdoored
    scan = ScanResult.from_triggers(
        {0: bd.trigger}, model=bd.model, num_classes=4, trigger_asr={0: 1.0}
    )
    # an MCL run that wrecks the model (LR 5): NC unlearning from the input weights keeps more
    wreck = {
        **AUTO_FAST,
        "trigger_config": {"epochs": 1, "lr_schedule": [[0, 5.0]], "selection": "final"},
        "max_trigger_ba_drop": 0.0,
    }
    res = hk.Purifier(bd.model, "auto", config=wreck, max_ba_drop=1.0).run(_loader(fx), scan=scan)
    drops = res.report.details["val_ba_drop"]
    assert res.report.details["branch"] == "nc-unlearn"
    assert set(drops) == {"mcl", "nc-unlearn"}
    assert drops["nc-unlearn"] < drops["mcl"]
    assert any("kept nc-unlearn's repair" in n for n in res.report.notes)
    nc_only = {**AUTO_FAST, "trigger_strategy": "nc-unlearn"}
    want = hk.Purifier(bd.model, "auto", config=nc_only, max_ba_drop=1.0).run(
        _loader(fx), scan=scan
    )
    for a, b in zip(res.model.state_dict().values(), want.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the same repair as nc-unlearn alone from the input weights
    # within the bound: MCL's repair, its drop reported; None: no check at all
    res = hk.Purifier(
        bd.model, "auto", config={**wreck, "max_trigger_ba_drop": 1.0}, max_ba_drop=1.0
    ).run(_loader(fx), scan=scan)
    assert res.report.details["branch"] == "mcl"
    assert set(res.report.details["val_ba_drop"]) == {"mcl"}
    res = hk.Purifier(bd.model, "auto", config={**AUTO_FAST, "max_trigger_ba_drop": None}).run(
        _loader(fx), scan=scan
    )
    assert "val_ba_drop" not in res.report.details


def test_auto_checked_mcl_on_the_smallest_candidate_is_kept_or_undone(
    fx: BackdoorFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = {"detector_options": {"neural-cleanse": {"epochs": 2}}}
    real = hk.Scanner(fx.backdoored.model, 4, config=nc).run(_loader(fx))
    values = {c.label: c.value for c in real.report.detectors[0].classes}
    smallest = sorted(values, key=lambda y: (values[y], y))
    missed = missed_scan(real)
    base = {
        **AUTO_FAST,
        "unflagged_candidates": 2,
        "candidate_config": {"epochs": 1},
        # the tiny fixture's inversions are weak: let MCL use them
        "trigger_config": {"epochs": 1, "min_trigger_asr": 0.0},
    }
    # within the bound: MCL's repair on the smallest candidate is kept
    keep = {**base, "candidate_mcl": 1, "candidate_mcl_max_ba_drop": 1.0}
    res = hk.Purifier(fx.backdoored.model, "auto", config=keep, max_ba_drop=1.0).run(
        _loader(fx), scan=missed
    )
    info = res.report.details["candidate_mcl"]
    assert res.report.details["branch"] == "mcl (smallest masks)"
    assert res.report.details["candidate_labels"] == smallest[:1] == info["labels"]
    assert info["kept"] is True
    assert {"val_ba_drop", "train_ba_drop"} <= set(info)
    # (MCL's own notes may come first)
    note = next(n for n in res.report.notes if n.startswith("auto: scan verdict clean"))
    assert note.startswith(
        "auto: scan verdict clean; in case it missed a backdoor, ran mcl on the inverted "
        f"triggers of labels {smallest[:1]} (neural-cleanse): it cost"
    )
    assert note.endswith("kept its repair")
    assert not any("running nc-unlearn" in n for n in res.report.notes)
    # an MCL run that wrecks the model (LR 5) costs more than the bound: undone, and the
    # default branch runs from the input weights — the same repair as without the check
    wreck = {
        **base,
        "candidate_mcl": 1,
        "candidate_mcl_max_ba_drop": 0.0,
        "trigger_config": {"epochs": 1, "min_trigger_asr": 0.0, "lr_schedule": [[0, 5.0]]},
    }
    res = hk.Purifier(fx.backdoored.model, "auto", config=wreck, max_ba_drop=1.0).run(
        _loader(fx), scan=missed
    )
    info = res.report.details["candidate_mcl"]
    assert res.report.details["branch"] == "nc-unlearn (smallest masks)"
    assert res.report.details["candidate_labels"] == smallest[:2]
    assert info["kept"] is False
    assert max(info["val_ba_drop"], info["train_ba_drop"]) > 0.0
    assert any(n.endswith("(> candidate_mcl_max_ba_drop 0): undone") for n in res.report.notes)
    assert res.report.notes[-2].startswith("auto: running nc-unlearn on the inverted triggers")
    off = {**base, "candidate_mcl": 0}  # the behaviour before stop 38
    want = hk.Purifier(fx.backdoored.model, "auto", config=off, max_ba_drop=1.0).run(
        _loader(fx), scan=missed
    )
    assert "candidate_mcl" not in want.report.details
    for a, b in zip(res.model.state_dict().values(), want.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # MCL refusing its candidate (e.g. too weak a trigger) is undone the same way
    from hardenkit.purify.mcl import MCLStrategy

    def refuse(self: MCLStrategy, ctx: PurifyContext) -> StrategyOutcome:
        ctx.model.train()  # touched, as a real run would
        return StrategyOutcome(model=ctx.model, status="refused")

    monkeypatch.setattr(MCLStrategy, "run", refuse)
    res = hk.Purifier(
        fx.backdoored.model, "auto", config={**base, "candidate_mcl": 1}, max_ba_drop=1.0
    ).run(_loader(fx), scan=missed)
    assert res.report.details["branch"] == "nc-unlearn (smallest masks)"
    assert res.report.details["candidate_mcl"] == {"labels": smallest[:1], "kept": False}
    assert any("could not run: undone" in n for n in res.report.notes)


def _with_signal(missed: ScanResult, label: int, trigger: hk.Trigger) -> ScanResult:
    """``missed`` plus a ``signal`` detector whose inversion of ``label`` alone reached its
    threshold (the tiny fixture is too small for a real smooth-signal inversion)."""
    nc = next(d for d in missed.report.detectors if d.detector == "neural-cleanse")
    rows = [
        c.model_copy(update={"extra": {**c.extra, "reached_threshold": c.label == label}})
        for c in nc.classes
    ]
    sig = nc.model_copy(update={"detector": "signal", "classes": rows})
    report = missed.report.model_copy(update={"detectors": [*missed.report.detectors, sig]})
    return ScanResult(
        report,
        missed.all_triggers,
        inversions={**missed.inversions, "signal": {label: trigger}},
    )


def test_auto_checked_mcl_of_its_own_for_the_smooth_signal(
    fx: BackdoorFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``candidate_mcl_detectors`` (stop 51): when the first checked MCL run is undone, the
    signal's smallest reached inversion gets a checked MCL run alone; it never joins the
    NC-unlearning candidates."""
    from hardenkit.purify.mcl import MCLStrategy

    nc = {"detector_options": {"neural-cleanse": {"epochs": 2}}}
    real = hk.Scanner(fx.backdoored.model, 4, config=nc).run(_loader(fx))
    values = {c.label: c.value for c in real.report.detectors[0].classes}
    smallest = sorted(values, key=lambda y: (values[y], y))
    y = smallest[-1]  # not among the Neural Cleanse candidates below
    signal = hk.PatchTrigger.square(2, location="top-left")
    scan = _with_signal(missed_scan(real), y, signal)
    base = {
        **AUTO_FAST,
        "unflagged_candidates": 2,
        "candidate_config": {"epochs": 1},
        "trigger_config": {"epochs": 1, "min_trigger_asr": 0.0},
        "candidate_mcl": 1,
        "candidate_mcl_max_ba_drop": 1.0,
    }
    assert hk.purify.AutoConfig().candidate_mcl_detectors == ("signal",)
    real_run = MCLStrategy.run
    seen: list[list[int]] = []

    def refuse_first(self: MCLStrategy, ctx: PurifyContext) -> StrategyOutcome:
        assert ctx.scan is not None
        seen.append(ctx.scan.flagged_labels)
        if len(seen) == 1:
            return StrategyOutcome(model=ctx.model, status="refused")
        return real_run(self, ctx)

    monkeypatch.setattr(MCLStrategy, "run", refuse_first)
    res = hk.Purifier(fx.backdoored.model, "auto", config=base, max_ba_drop=1.0).run(
        _loader(fx), scan=scan
    )
    d = res.report.details
    assert seen == [smallest[:1], [y]]
    assert d["branch"] == "mcl (smallest masks)"
    assert d["candidate_labels"] == [y]
    assert d["candidate_sources"] == {str(y): ["signal"]}
    assert d["candidate_mcl"] == {"labels": smallest[:1], "kept": False}
    own = d["candidate_mcl_separate"]["signal"]
    assert own["labels"] == [y]
    assert own["kept"] is True
    assert any(
        n == f"auto: ran mcl on the inverted triggers of labels [{y}] (signal): it cost "
        f"{100 * max(own['val_ba_drop'], own['train_ba_drop']):.1f} points of clean accuracy "
        "(<= candidate_mcl_max_ba_drop 100): kept its repair"
        for n in res.report.notes
    )

    # both undone: NC unlearning of the Neural Cleanse candidates, without the signal's trigger
    def refuse(self: MCLStrategy, ctx: PurifyContext) -> StrategyOutcome:
        return StrategyOutcome(model=ctx.model, status="refused")

    monkeypatch.setattr(MCLStrategy, "run", refuse)
    res = hk.Purifier(fx.backdoored.model, "auto", config=base, max_ba_drop=1.0).run(
        _loader(fx), scan=scan
    )
    d = res.report.details
    assert d["branch"] == "nc-unlearn (smallest masks)"
    assert d["candidate_labels"] == smallest[:2]
    assert all("signal" not in src for src in d["candidate_sources"].values())
    assert d["candidate_mcl_separate"] == {"signal": {"labels": [y], "kept": False}}
    # off: the behaviour of stop 50, the same repair
    off = hk.Purifier(
        fx.backdoored.model,
        "auto",
        config={**base, "candidate_mcl_detectors": []},
        max_ba_drop=1.0,
    ).run(_loader(fx), scan=scan)
    assert "candidate_mcl_separate" not in off.report.details
    for a, b in zip(res.model.state_dict().values(), off.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_auto_checked_mcl_is_off_when_the_candidate_branch_is_mcl() -> None:
    from hardenkit.purify.auto import AutoStrategy

    assert AutoStrategy()._probe is not None  # on by default since stop 38
    assert AutoStrategy({"candidate_mcl": 1, "candidate_strategy": "mcl"})._probe is None
    assert AutoStrategy({"candidate_mcl": 0})._probe is None
    with pytest.raises(ConfigError):
        AutoStrategy({"candidate_mcl": -1})


def test_auto_checked_mcl_is_skipped_under_a_budget(fx: BackdoorFixture) -> None:
    nc = {"detector_options": {"neural-cleanse": {"epochs": 2}}}
    missed = missed_scan(hk.Scanner(fx.backdoored.model, 4, config=nc).run(_loader(fx)))
    cfg = {**AUTO_FAST, "candidate_mcl": 1, "max_steps": 3}
    res = hk.Purifier(fx.backdoored.model, "auto", config=cfg, max_ba_drop=1.0).run(
        _loader(fx), scan=missed
    )
    assert "candidate_mcl" not in res.report.details
    assert res.report.details["branch"] == "nc-unlearn (smallest masks)"
    assert any("candidate_mcl skipped: a step or time budget is set" in n for n in res.report.notes)
    assert any(
        n.startswith("auto: scan verdict clean; in case it missed a backdoor, running nc-unlearn")
        for n in res.report.notes
    )


def test_the_utility_guard_says_when_its_split_cannot_tell_pass_from_fail() -> None:
    """The guard judges the measured drop; the paired interval of the drop says whether the
    held-out split is big enough to believe that verdict, and a note says when it is not."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    p = hk.Purifier(net)  # max_ba_drop 0.05
    empty = (torch.zeros(0, 12), torch.zeros(0, dtype=torch.int64))

    def judge(before: float, after: float, interval: tuple[float, float]) -> tuple[str, list[str]]:
        notes: list[str] = []
        holdout = (empty[0], torch.zeros(250, dtype=torch.int64), before, after, interval)
        status, guard = p._judge("purified", Budget(None, None), net, net, holdout, empty, notes)
        assert guard.drop_interval == interval
        assert guard.images == 250
        return status, notes

    assert judge(0.90, 0.88, (-0.01, 0.03)) == ("purified", [])  # clearly within
    status, notes = judge(0.90, 0.87, (0.005, 0.062))  # within by the estimate only
    assert status == "purified"
    assert len(notes) == 1
    assert "cannot rule out a larger loss" in notes[0]
    assert "0.50 to 6.20 points" in notes[0]
    status, notes = judge(0.90, 0.83, (0.02, 0.11))  # beyond by the estimate only
    assert status == "degraded"
    assert notes[0].startswith("DEGRADED")
    assert "2.00 to 11.00 points" in notes[0]
    assert "cannot tell this drop from one within max_ba_drop" in notes[1]
    status, notes = judge(0.90, 0.78, (0.07, 0.17))  # clearly beyond
    assert status == "degraded"
    assert len(notes) == 1


def test_the_trigger_guard_judges_what_the_targeted_trigger_adds_to_the_floor() -> None:
    from hardenkit.purify.purifier import TriggerASR, TriggerGuard

    p = hk.Purifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
    biased = TriggerASR(label=1, before=0.9, after=0.5, images=200, after_without_trigger=0.45)
    left = TriggerASR(label=2, before=0.9, after=0.5, images=200, after_without_trigger=0.05)
    notes: list[str] = []
    assert p._trigger_guard("purified", [biased], notes, {1})[0] == "purified"  # adds 5 points
    assert notes == []
    status, guard = p._trigger_guard("purified", [biased, left], notes, {1, 2})
    assert status == "backdoor-remains"
    assert guard is not None
    assert guard.label == 2
    assert guard.labels == [1, 2]
    assert guard.added_asr == pytest.approx(0.45)
    assert notes[-1].startswith("BACKDOOR REMAINS: the known trigger of label 2")
    # a flagged label the repair was not aimed at (a natural feature, often) gets a note only
    notes.clear()
    status, guard = p._trigger_guard("purified", [biased, left], notes, {1})
    assert status == "purified"
    assert guard is not None
    assert guard.passed is True
    assert guard.labels == [1]
    assert len(notes) == 1
    assert "label 2, flagged beside the most anomalous label" in notes[0]
    # a worse status stays, with the note; an unchanged model gets neither
    notes.clear()
    assert p._trigger_guard("degraded", [left], notes, {2})[0] == "degraded"
    assert len(notes) == 1
    notes.clear()
    assert p._trigger_guard("refused", [left], notes, {2})[0] == "refused"
    assert notes == []
    assert p._trigger_guard("purified", [], notes, set()) == (
        "purified",
        TriggerGuard(max_trigger_asr=0.1, labels=[], label=None, added_asr=None, passed=None),
    )
    off = hk.Purifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), max_trigger_asr=None)
    assert off._trigger_guard("purified", [left], notes, {2}) == ("purified", None)
    with pytest.raises(ConfigError, match="max_trigger_asr must be a fraction"):
        hk.Purifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), max_trigger_asr=1.5)


def test_the_trigger_guard_judges_the_triggers_the_repair_was_aimed_at() -> None:
    from hardenkit.purify.purifier import _targeted

    m = hk.create_model("small-cnn", 10)
    t = hk.PatchTrigger.square(3)
    given = ScanResult.from_triggers({3: t, 5: t}, model=m, num_classes=10)
    assert _targeted(given, {}) == {3, 5}  # triggers you give are all judged
    assert _targeted(None, {"triggers": [7]}) == {7}
    assert _targeted(None, {"triggers": "x"}) == set()


def test_mcl_inversion_restarts_add_neural_cleanse_inversions_of_the_label(
    fx: BackdoorFixture,
) -> None:
    bd = fx.backdoored
    scan = ScanResult.from_triggers({0: bd.trigger}, model=bd.model, num_classes=4)
    nc = {"neural-cleanse": {"epochs": 3}}
    purifier = hk.Purifier(
        bd.model,
        "mcl",
        config={"epochs": 1, "inversion_restarts": 2, "min_trigger_asr": 0.0},
        scan_config={"detector_options": nc},
        runtime={"seed": 5},
    )
    res = purifier.run(_loader(fx), scan=scan)
    details = res.report.details
    assert details["triggers"] == [0]  # one label, three triggers
    restarts = details["inversion_restarts"]
    assert [(r["label"], r["seed"], r["used"]) for r in restarts] == [(0, 6, True), (0, 7, True)]
    assert all(0 <= r["asr"] <= 1 and r["mask_l1"] > 0 for r in restarts)
    assert restarts[0]["mask_l1"] != restarts[1]["mask_l1"]  # two random starts
    # a restart too weak for min_trigger_asr is skipped with a note; the label's own stays
    known = ScanResult.from_triggers(
        {0: bd.trigger}, model=bd.model, num_classes=4, trigger_asr={0: 1.0}
    )
    weak = {"neural-cleanse": {"epochs": 1, "lr": 1e-6}}  # the random start, barely moved
    strict = hk.Purifier(
        bd.model,
        "mcl",
        config={"epochs": 1, "inversion_restarts": 1, "min_trigger_asr": 0.99},
        scan_config={"detector_options": weak},
    ).run(_loader(fx), scan=known)
    assert strict.report.details["inversion_restarts"][0]["used"] is False
    assert any("skipped inversion restart 1 of label 0" in n for n in strict.report.notes)
    assert strict.status == "purified"  # against the label's own trigger
    # the default (and the paper preset) run none
    assert MCLConfig().inversion_restarts == 0
    assert MCLConfig(preset="paper", inversion_restarts=3).resolved().inversion_restarts == 3
    with pytest.raises(ValueError):
        MCLConfig(inversion_restarts=-1)


def test_mcl_inversion_restart_that_cannot_run_is_noted(fx: BackdoorFixture) -> None:
    bd = fx.backdoored
    scan = ScanResult.from_triggers(
        {0: bd.trigger}, model=bd.model, num_classes=4, trigger_asr={0: 1.0}
    )
    res = hk.Purifier(
        bd.model,
        "mcl",
        config={"epochs": 1, "inversion_restarts": 1},
        scan_config={"min_images_per_class": 100_000},
    ).run(_loader(fx), scan=scan)
    assert res.status == "purified"  # contrasted against the scan's trigger alone
    (record,) = res.report.details["inversion_restarts"]
    assert record["used"] is False
    assert "too few clean images per class" in record["error"]
    assert any("MCL inversion restart 1 of label 0 could not run" in n for n in res.report.notes)


def test_the_purifiers_own_scans_see_pixels_when_the_loader_is_normalized(
    fx: BackdoorFixture,
) -> None:
    """The Purifier holds [0, 1] pixels once it has read a normalized loader; its own scan and
    MCL's inversion restarts must not undo the normalization a second time (before stop 61
    they saw pixels squeezed into [mean, mean + std]: [0.5, 0.75] here)."""
    from unittest import mock

    import hardenkit.scan.scanner as scanner_mod
    from hardenkit.data.loaders import materialize

    seen: list[tuple[float, float]] = []

    def spy(loader: object, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = materialize(loader, **kw)  # type: ignore[arg-type]
        seen.append((float(x.min()), float(x.max())))
        return x, y

    x, y = fx.data.train.tensors()
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    normalized = [((x[i : i + 50] - 0.5) / 0.25, y[i : i + 50]) for i in range(0, len(y), 50)]
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    nc = {"detectors": ["neural-cleanse"], "detector_options": {"neural-cleanse": {"epochs": 1}}}
    config = {"epochs": 1, "inversion_restarts": 1, "min_trigger_asr": 0.0}
    with mock.patch.object(scanner_mod, "materialize", spy):
        res = hk.Purifier(
            fx.backdoored.model,
            "mcl",
            config=config,
            scan_config=nc,
            runtime={"input_normalization": norm},
            require_above_chance=False,
        ).run(normalized)
    assert "no scan given: ran the Scanner on the purification images first" in res.report.notes
    assert len(seen) >= 1  # the Purifier's own scan (and the restart when MCL ran)
    for low, high in seen:
        assert low >= 0.0
        assert high <= 1.0
        assert high - low > 0.9  # the images' own range, not [0.5, 0.75]


class _Unchanged(PurificationStrategy):
    """A "repair" that changes nothing and says it purified (what the recheck must catch)."""

    name = "unchanged-for-recheck"
    needs_trigger = True

    def run(self, ctx: PurifyContext) -> StrategyOutcome:
        return StrategyOutcome(model=ctx.model, status="purified")


# a scan that flags this tiny model (its real trigger is too weak for the default test)
_RECHECK_SCAN = {
    "detectors": ("neural-cleanse",),
    "detector_options": {
        "neural-cleanse": {"epochs": 8, "anomaly_threshold": 0.5, "max_median_ratio": None}
    },
}


def test_recheck_catches_a_repair_that_left_the_flagged_label_standing(
    fx: BackdoorFixture, tmp_path: Path
) -> None:
    bd = fx.backdoored
    # the trigger guard off in effect (bound 1): only the recheck can see the backdoor
    kw = {"scan_config": _RECHECK_SCAN, "max_trigger_asr": 1.0, "runtime": {"seed": 2}}
    res = hk.Purifier(bd.model, _Unchanged(), **kw).run(_loader(fx))
    assert res.scan is not None
    assert res.scan.flagged_labels, res.report.summary()
    rc = res.report.recheck
    assert rc is not None
    (label,) = rc.labels  # the most anomalous flagged label, the one the guard judges
    assert label in res.scan.flagged_labels
    assert rc.skipped is None
    (row,) = rc.rows
    assert (row.detector, row.label, row.statistic) == ("neural-cleanse", label, "mask_l1")
    # the same model, images and random start: the scan's own value comes back
    assert row.value_after == pytest.approx(row.value_before, rel=1e-3)
    assert row.flagged_after
    assert row.most_extreme_after
    assert rc.passed is False
    assert res.status == "backdoor-remains"
    assert rc.verdict == res.scan.verdict
    assert label in rc.flagged_labels
    assert any(
        n.startswith("BACKDOOR REMAINS: a scan of the repaired model") and f"label {label}" in n
        for n in res.report.notes
    )
    assert f"a scan of the repaired model still flags label {label}" in res.report.summary()
    # the recheck's scan is kept (stop 63): on the result, by id in the report, saved as
    # rescan/ beside scan/ and read back unchanged
    assert res.rescan is not None
    assert rc.report_id == res.rescan.report.report_id != res.scan.report.report_id
    assert res.rescan.flagged_labels == rc.flagged_labels
    t = res.report.timings
    assert set(t) == {"load", "scan", "repair", "measure", "recheck"}
    assert t["scan"] > 0
    assert t["recheck"] == pytest.approx(rc.seconds)
    assert sum(t.values()) <= res.report.seconds
    saved = res.save(tmp_path / "out")
    back = ScanResult.load(saved / "rescan")
    assert back.report.report_id == rc.report_id
    assert back.flagged_labels == res.rescan.flagged_labels
    assert (saved / "scan").is_dir()
    # turned off: the unchanged model reads purified (what the guard alone concludes)
    off = hk.Purifier(bd.model, _Unchanged(), recheck=False, **kw).run(_loader(fx))
    assert off.report.recheck is None
    assert off.status == "purified"
    assert off.rescan is None
    assert off.report.timings["recheck"] == 0.0
    assert not (off.save(tmp_path / "off") / "rescan").exists()
    # a scan passed in: its images are unknown here, so no comparable recheck
    given = hk.Purifier(bd.model, _Unchanged(), **kw).run(_loader(fx), scan=res.scan)
    assert given.report.recheck is not None
    assert given.report.recheck.passed is None
    assert "passed in" in (given.report.recheck.skipped or "")
    assert given.status == "purified"


def _row(**kw: object) -> LabelRecheck:
    base: dict[str, object] = {
        "detector": "neural-cleanse",
        "label": 0,
        "statistic": "mask_l1",
        "value_before": 5.0,
        "value_after": 20.0,
        "anomaly_before": 6.0,
        "anomaly_after": 0.5,
        "threshold": 2.0,
        "flagged_after": False,
        "most_extreme_after": False,
        "verdict_after": "clean",
    }
    return LabelRecheck.model_validate({**base, **kw})


@pytest.mark.parametrize(
    ("row", "status"),
    [
        ({}, "purified"),
        ({"most_extreme_after": True}, "purified"),  # smallest, but the detector is clean
        # still ranked first by a suspicious detector: a note only (good repairs do this too)
        ({"most_extreme_after": True, "verdict_after": "suspicious"}, "purified"),
        (
            {"flagged_after": True, "anomaly_after": 3.0, "verdict_after": "backdoored"},
            "backdoor-remains",
        ),
        ({"budget_exhausted": True}, "unverified"),  # cut short: no evidence either way
    ],
)
def test_recheck_decides_the_status_from_the_new_inversion(
    fx: BackdoorFixture, monkeypatch: pytest.MonkeyPatch, row: dict[str, object], status: str
) -> None:
    again = SimpleNamespace(
        verdict="suspicious", flagged_labels=[], report=SimpleNamespace(report_id="again")
    )
    monkeypatch.setattr(hk.Scanner, "recheck", lambda *a, **k: ([_row(**row)], again))
    bd = fx.backdoored
    res = hk.Purifier(bd.model, _Unchanged(), scan_config=_RECHECK_SCAN, max_trigger_asr=1.0).run(
        _loader(fx)
    )
    assert res.status == status, res.report.summary()
    assert res.report.recheck is not None
    assert res.report.recheck.passed is (status == "purified")
    noted = any("still ranks it first" in n for n in res.report.notes)
    assert noted is (row.get("verdict_after") == "suspicious")
    assert res.rescan is again  # whatever the status, the new scan is kept
    assert res.report.recheck.report_id == "again"


def test_recheck_with_non_finite_numbers_fails_closed(
    fx: BackdoorFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*a: object, **k: object) -> tuple[list[object], object]:
        raise NonFiniteError("recheck: neural-cleanse statistic of label 0 is nan")

    monkeypatch.setattr(hk.Scanner, "recheck", broken)
    bd = fx.backdoored
    res = hk.Purifier(bd.model, _Unchanged(), scan_config=_RECHECK_SCAN, max_trigger_asr=1.0).run(
        _loader(fx)
    )
    assert res.status == "unverified"
    assert res.report.recheck is not None
    assert res.report.recheck.passed is False
    assert any("non-finite" in n for n in res.report.notes)
    assert res.rescan is None  # no scan finished
    assert res.report.recheck.report_id is None

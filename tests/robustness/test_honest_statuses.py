"""Repairs that cannot be trusted say so: utility guard, budget stops, unmeasured BA, NaN.

Each case is one that used to come back ``purified`` (issue: "Never a silent wrong answer").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.data import stratified_indices
from hardenkit.errors import ConfigError, NonFiniteError
from hardenkit.purify.base import CheckpointSelector
from hardenkit.scan import ScanResult
from hardenkit.testing import BackdoorFixture

from .conftest import unchanged

CPU = {"seed": 0, "device": "cpu"}


def _loader(fx: BackdoorFixture) -> object:
    return fx.data.train.loader(batch_size=64)


def test_d3_short_schedule_that_destroys_accuracy_is_degraded(tiny_fx: BackdoorFixture) -> None:
    model = tiny_fx.backdoored.model
    with unchanged(model):
        res = hk.Purifier(model, "d3", config={"epochs": 1}, runtime=CPU).run(_loader(tiny_fx))
    g = res.report.utility_guard
    assert g is not None
    assert g.split == "holdout"
    assert g.images == 40
    assert g.ba_before is not None
    assert g.ba_after is not None
    assert g.ba_before - g.ba_after > 0.05
    assert g.passed is False
    assert res.status == "degraded"
    assert not res.purified
    assert not res.trusted
    assert "DEGRADED" in res.report.summary()
    assert any(n.startswith("DEGRADED") for n in res.report.notes)
    assert res.model is not model  # the repaired copy is still returned


def test_max_ba_drop_is_configurable_in_purifier_and_config(tiny_fx: BackdoorFixture) -> None:
    model = tiny_fx.backdoored.model
    loose = hk.Purifier(model, "d3", config={"epochs": 1}, runtime=CPU, max_ba_drop=1.0)
    assert loose.run(_loader(tiny_fx)).status == "purified"
    via_config = hk.Purifier(model, "d3", config={"epochs": 1, "max_ba_drop": 1.0}, runtime=CPU)
    assert via_config.max_ba_drop == 1.0
    with pytest.raises(ConfigError, match="max_ba_drop"):
        hk.Purifier(model, "d3", max_ba_drop=1.5)
    with pytest.raises(ConfigError):
        hk.Purifier(model, "d3", config={"max_ba_drop": -0.1})


def test_finetune_with_no_time_does_no_step_and_says_so(tiny_fx: BackdoorFixture) -> None:
    model = tiny_fx.backdoored.model
    res = hk.Purifier(
        model, "finetune", config={"epochs": 5, "max_seconds": 1e-9}, runtime=CPU
    ).run(_loader(tiny_fx))
    assert res.report.steps == 0
    assert res.status == "budget-exhausted"
    assert res.report.budget_exhausted
    assert any("no optimisation step" in n for n in res.report.notes)
    assert res.report.input_model.sha256 == res.report.output_model.sha256


def test_d3_with_one_step_is_never_purified(tiny_fx: BackdoorFixture) -> None:
    res = hk.Purifier(tiny_fx.backdoored.model, "d3", config={"max_steps": 1}, runtime=CPU).run(
        _loader(tiny_fx)
    )
    assert res.report.steps == 1
    assert res.status in {"budget-exhausted", "degraded"}


def test_no_image_to_judge_on_is_unverified(tiny_fx: BackdoorFixture) -> None:
    train = tiny_fx.data.train
    shots = train.subset(stratified_indices(train.labels, per_class=1, seed=0))
    res = hk.Purifier(
        tiny_fx.backdoored.model,
        "finetune",
        config={"epochs": 1},
        runtime=CPU,
        holdout_fraction=0,
    ).run(shots.loader())
    assert res.report.clean_images == {"train": 4, "validation": 0, "holdout": 0}
    assert res.status == "unverified"
    assert res.report.utility_guard is not None
    assert res.report.utility_guard.split == "none"
    assert res.report.utility_guard.passed is None
    assert "UNVERIFIED" in res.report.summary()


def test_validation_split_judges_when_nothing_is_held_out(tiny_fx: BackdoorFixture) -> None:
    res = hk.Purifier(
        tiny_fx.backdoored.model,
        "finetune",
        config={"epochs": 1},
        runtime=CPU,
        holdout_fraction=0,
    ).run(_loader(tiny_fx))
    g = res.report.utility_guard
    assert g is not None
    assert g.split == "validation"
    assert g.images == 40
    assert g.ba_before is not None
    assert g.ba_after is not None
    assert g.drop_interval is not None
    assert g.drop_interval[0] <= g.ba_before - g.ba_after <= g.drop_interval[1]
    assert res.report.ba_before is None  # nothing held out: the report's BA fields stay empty
    assert res.status in {"purified", "degraded"}


def test_best_checkpoint_respects_the_trigger_asr_bound(tiny_fx: BackdoorFixture) -> None:
    bd = tiny_fx.backdoored
    scan = ScanResult.from_triggers({0: bd.trigger}, model=bd.model, num_classes=4)
    res = hk.Purifier(bd.model, "nc-unlearn", config={"epochs": 4}, runtime=CPU).run(
        _loader(tiny_fx), scan=scan
    )
    ck = res.report.details["checkpoint"]
    assert ck["mode"] == "best-val"
    hist = ck["history"]
    assert [int(r["epoch"]) for r in hist] == [1, 2, 3, 4]
    assert all("val_trigger_asr" in r for r in hist)
    best = max(
        hist,
        key=lambda r: CheckpointSelector.rank(
            ba=r["val_ba"], asr=r["val_trigger_asr"], bound=0.1, epoch=int(r["epoch"])
        ),
    )
    assert ck["chosen_epoch"] == int(best["epoch"])
    # the returned weights are that epoch's: re-measure on the validation split's numbers
    assert ck["chosen"] == best


def test_selection_rank_prefers_the_bound_then_accuracy() -> None:
    r = CheckpointSelector.rank
    assert r(ba=0.80, asr=0.05, bound=0.1, epoch=1) > r(ba=0.95, asr=0.50, bound=0.1, epoch=2)
    assert r(ba=0.90, asr=0.05, bound=0.1, epoch=1) > r(ba=0.80, asr=0.00, bound=0.1, epoch=2)
    assert r(ba=0.90, asr=0.30, bound=0.1, epoch=1) > r(ba=0.99, asr=0.60, bound=0.1, epoch=2)
    assert r(ba=0.9, asr=None, bound=0.1, epoch=2) > r(ba=0.9, asr=None, bound=0.1, epoch=1)


class _NaNAfter(nn.Module):
    """Wraps a model; its logits become NaN (all, or only on images with a bright corner)."""

    def __init__(self, inner: nn.Module, only_triggered: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.only_triggered = only_triggered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.only_triggered:
            bright = (x[:, :, -3:, -3:].amin(dim=(1, 2, 3)) > 0.99).view(-1, 1)
            return torch.where(bright, torch.full_like(out, float("nan")), out)
        return out * float("nan")


def test_nan_logits_never_pass_the_gate(tiny_fx: BackdoorFixture) -> None:
    bd = tiny_fx.backdoored
    nan_model = _NaNAfter(bd.model)
    with unchanged(nan_model), pytest.raises(NonFiniteError, match="NaN or infinite logits"):
        hk.Validator(nan_model, policy=hk.GatePolicy(max_asr=0.05)).run(
            tiny_fx.data.test.loader(), trigger=bd.trigger, target=bd.target
        )
    # NaN only on triggered inputs: argmax(NaN) = 0 = the target would read as "ASR 0"
    sneaky = _NaNAfter(bd.model, only_triggered=True)
    with pytest.raises(NonFiniteError, match="triggered images"):
        hk.Validator(sneaky, policy=hk.GatePolicy(max_asr=0.05)).run(
            tiny_fx.data.test.loader(), trigger=bd.trigger, target=bd.target
        )


def test_nan_logits_stop_scan_and_purify(tiny_fx: BackdoorFixture) -> None:
    nan_model = _NaNAfter(tiny_fx.backdoored.model)
    cfg = {"detector_options": {"neural-cleanse": {"epochs": 1}}, "max_images": 40}
    with unchanged(nan_model), pytest.raises(NonFiniteError):
        hk.Scanner(nan_model, 4, config=cfg, runtime=CPU).run(_loader(tiny_fx))
    with unchanged(nan_model), pytest.raises(NonFiniteError):
        hk.Purifier(nan_model, "finetune", config={"epochs": 1}, runtime=CPU).run(_loader(tiny_fx))


def test_nan_detector_statistic_can_never_say_clean(
    tiny_fx: BackdoorFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hardenkit.scan import neural_cleanse

    real = neural_cleanse.NeuralCleanse.detect

    def nan_norms(self: object, ctx: object) -> object:
        out = real(self, ctx)  # type: ignore[arg-type]
        out.values = {k: float("nan") for k in out.values}
        return out

    monkeypatch.setattr(neural_cleanse.NeuralCleanse, "detect", nan_norms)
    cfg = {"detector_options": {"neural-cleanse": {"epochs": 1}}, "max_images": 40}
    with pytest.raises(NonFiniteError, match="per-label statistic"):
        hk.Scanner(tiny_fx.backdoored.model, 4, config=cfg, runtime=CPU).run(_loader(tiny_fx))


def test_nan_and_float64_triggers(tiny_fx: BackdoorFixture) -> None:
    bd = tiny_fx.backdoored
    test = tiny_fx.data.test.loader()
    with pytest.raises(hk.DataError, match="NaN or infinite pixels"):
        hk.Validator(bd.model).run(test, trigger=lambda x: x * float("nan"), target=0)
    ref = hk.Validator(bd.model).run(test, trigger=bd.trigger, target=0)
    as64 = hk.Validator(bd.model).run(
        test, trigger=lambda x: bd.trigger(x).to(torch.float64), target=0
    )
    assert as64.asr == ref.asr
    assert as64.ra == ref.ra
    with pytest.raises(hk.DataError, match="float pixels"):
        hk.Validator(bd.model).run(test, trigger=lambda x: (x * 255).to(torch.uint8), target=0)


def test_cli_purify_exits_1_on_an_untrusted_status(
    tiny_fx: BackdoorFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hardenkit.cli import main
    from hardenkit.io import save_state_dict

    weights = save_state_dict(tiny_fx.backdoored.model, tmp_path / "m.safetensors")
    common = [
        "purify",
        "--weights",
        str(weights),
        "--arch",
        "small-cnn",
        "--num-classes",
        "4",
        "--data",
        "synthetic:num_classes=4,train_per_class=100,test_per_class=25",
        "--strategy",
        "d3",
        "--set",
        "epochs=1",
    ]
    assert main([*common, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "DEGRADED" in err
    assert "not a trusted repair" in err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["status"] == "degraded"
    assert (tmp_path / "a" / "model.safetensors").is_file()  # nothing is lost
    assert main([*common, "--max-ba-drop", "1", "--out", str(tmp_path / "b")]) == 0


def _shifted_labels(fx: BackdoorFixture) -> hk.data.TensorLoader:
    """The clean images with every label moved to the next class: another class order."""
    x, y = fx.data.train.tensors()
    return hk.data.TensorLoader(x, (y + 1) % 4, batch_size=64)


@pytest.mark.parametrize("strategy", ["auto", "finetune", "d3"])
def test_labels_that_do_not_fit_the_model_are_refused_before_any_work(
    tiny_fx: BackdoorFixture, strategy: str
) -> None:
    """A model at chance on the clean images (here: a shifted class order) is not repaired:
    fine-tuning on those labels would teach it the wrong classes and then measure BA on the
    same wrong labels (before stop 43: `purified`, the model re-trained to the shifted order)."""
    model = tiny_fx.backdoored.model
    assert tiny_fx.backdoored.metrics["ba"] > 0.5  # the model itself works
    with unchanged(model):
        res = hk.Purifier(model, strategy, config=None, runtime=CPU).run(_shifted_labels(tiny_fx))
    assert res.status == "refused"
    assert not res.trusted
    assert res.scan is None  # refused before the scan, not after minutes of work
    assert res.report.steps == 0
    assert any(
        n.startswith("REFUSED: the input model is no better than chance") for n in res.report.notes
    ), res.report.notes
    assert all(
        torch.equal(a, b)
        for a, b in zip(res.model.state_dict().values(), model.state_dict().values(), strict=True)
    )
    # the right labels pass the check; so does the override
    ok = hk.Purifier(model, "finetune", config={"epochs": 1}, runtime=CPU).run(_loader(tiny_fx))
    assert ok.status != "refused"
    forced = hk.Purifier(
        model, "finetune", config={"epochs": 1}, runtime=CPU, require_above_chance=False
    ).run(_shifted_labels(tiny_fx))
    assert forced.status != "refused"
    assert forced.report.steps > 0


def test_the_gate_fails_closed_when_the_held_out_labels_do_not_fit(
    tiny_fx: BackdoorFixture,
) -> None:
    """HK-DATA-002: held-out images the input model is at chance on make every BA/ASR the gate
    measures meaningless; before stop 43 such a gate passed a clean-scanned model."""
    from hardenkit.gate import Gate

    model = tiny_fx.backdoored.model
    scan = hk.ScanResult.from_triggers({1: hk.PatchTrigger.square(3)}, model=model, num_classes=4)
    scan.report = scan.report.model_copy(update={"verdict": "clean", "flagged_labels": []})
    policy = {"repair": "never", "export_onnx": False, "min_holdout_images": 10}
    xt, yt = tiny_fx.data.test.tensors()
    wrong = hk.data.TensorLoader(xt, (yt + 1) % 4, batch_size=64)
    res = Gate(policy, runtime=CPU).run(model, _loader(tiny_fx), wrong, scan=scan)
    rule = next(r for r in res.report.rules if r.rule_id == "HK-DATA-002")
    assert rule.status == "fail", rule.message
    assert rule.cause == "evaluation"
    assert "no better than chance" in rule.message
    assert not res.report.passed
    assert res.report.exit_code == 1
    right = Gate(policy, runtime=CPU).run(
        model, _loader(tiny_fx), tiny_fx.data.test.loader(), scan=scan
    )
    rule = next(r for r in right.report.rules if r.rule_id == "HK-DATA-002")
    assert rule.status == "pass", rule.message
    assert rule.value is not None
    assert rule.value > 0.25
    off = Gate({**policy, "require_above_chance": False}, runtime=CPU).run(
        model, _loader(tiny_fx), wrong, scan=scan
    )
    assert all(r.rule_id != "HK-DATA-002" for r in off.report.rules)


def test_a_held_out_set_of_one_class_cannot_judge_hk_data_002(tiny_fx: BackdoorFixture) -> None:
    """Held-out images of a single class: a constant guess scores 100 % there, so no accuracy
    tells a working model from a guess. Before stop 45 the gate called such a model "no better
    than a constant guess ... the images or labels do not fit the model"; now the rule is not
    evaluated and says why (failing the gate under fail_on_skipped, the default)."""
    from hardenkit.gate import Gate

    model = tiny_fx.backdoored.model
    scan = hk.ScanResult.from_triggers({1: hk.PatchTrigger.square(3)}, model=model, num_classes=4)
    scan.report = scan.report.model_copy(update={"verdict": "clean", "flagged_labels": []})
    xt, yt = tiny_fx.data.test.tensors()
    one = hk.data.TensorLoader(xt[yt == 2], yt[yt == 2], batch_size=64)
    policy = {"repair": "never", "export_onnx": False, "min_holdout_images": 10}
    res = Gate(policy, runtime=CPU).run(model, _loader(tiny_fx), one, scan=scan)
    rule = next(r for r in res.report.rules if r.rule_id == "HK-DATA-002")
    assert rule.status == "fail", rule.message
    assert "all belong to one class" in rule.message
    assert "hold out images of several classes" in rule.message
    assert "do not fit the model" not in rule.message
    assert not res.report.passed
    lenient = Gate({**policy, "fail_on_skipped": False}, runtime=CPU).run(
        model, _loader(tiny_fx), one, scan=scan
    )
    rule = next(r for r in lenient.report.rules if r.rule_id == "HK-DATA-002")
    assert rule.status == "skipped"


def test_a_repair_that_trades_one_class_fails_hk_ba_003(tiny_fx: BackdoorFixture) -> None:
    """Overall BA can hide a repair that gives up a class. The gate reports every class's
    accuracy before and after, and with ``max_class_ba_drop`` fails HK-BA-003 naming the
    class (here a plugin 'repair' swaps the last layer's rows of classes 1 and 2)."""
    from hardenkit.gate import Gate
    from hardenkit.purify import STRATEGIES, PurificationStrategy, PurifyContext, StrategyOutcome

    class SwapClasses(PurificationStrategy):
        name = "swap-classes-test"

        def run(self, ctx: PurifyContext) -> StrategyOutcome:
            last = [m for m in ctx.model.modules() if isinstance(m, nn.Linear)][-1]
            with torch.no_grad():
                last.weight[[1, 2]] = last.weight[[2, 1]].clone()
                last.bias[[1, 2]] = last.bias[[2, 1]].clone()
            return StrategyOutcome(model=ctx.model)

    STRATEGIES.register(SwapClasses.name, SwapClasses)
    try:
        model = tiny_fx.backdoored.model
        policy = {
            "repair": "always",
            "strategy": SwapClasses.name,
            "rescan": False,
            "export_onnx": False,
            "fail_on_skipped": False,
            "min_holdout_images": 10,
            "max_class_ba_drop": 0.2,
            "min_class_images": 10,
        }
        scan = hk.ScanResult.from_triggers(
            {0: hk.PatchTrigger.square(3)}, model=model, num_classes=4
        )
        res = Gate(policy, runtime=CPU).run(
            model, _loader(tiny_fx), tiny_fx.data.test.loader(), scan=scan
        )
        rows = {c.label: c for c in res.report.class_accuracy}
        assert sorted(rows) == [0, 1, 2, 3]
        assert all(rows[c].images == 25 for c in rows)
        assert rows[1].after < rows[1].before - 0.5
        assert rows[2].after < rows[2].before - 0.5
        rule = next(r for r in res.report.rules if r.rule_id == "HK-BA-003")
        assert rule.status == "fail", rule.message
        assert "largest per-class accuracy drop (class" in rule.message
        assert not res.report.passed
        from hardenkit.gate import markdown_summary

        assert "Largest per-class drop: class" in markdown_summary(res.report)
        off = Gate({**policy, "max_class_ba_drop": None}, runtime=CPU).run(
            model, _loader(tiny_fx), tiny_fx.data.test.loader(), scan=scan
        )
        assert all(r.rule_id != "HK-BA-003" for r in off.report.rules)
        assert off.report.class_accuracy  # measured and reported either way
    finally:
        STRATEGIES.unregister(SwapClasses.name)


def test_the_gate_stops_after_hk_data_002_instead_of_scanning_and_repairing(
    tiny_fx: BackdoorFixture, tmp_path: Path
) -> None:
    """At chance on the held-out images, the scan, repair, measurements and export would all
    run on data the model does not fit: the gate stops and says the later rules were not run
    (before stop 44 it scanned and repaired anyway, minutes on a real model)."""
    from hardenkit.gate import Gate

    model = tiny_fx.backdoored.model
    xt, yt = tiny_fx.data.test.tensors()
    wrong = hk.data.TensorLoader(xt, (yt + 1) % 4, batch_size=64)
    policy = {"min_holdout_images": 10, "min_ba": 0.5, "fail_on_skipped": True}
    known = {"patch": (tiny_fx.backdoored.trigger, tiny_fx.backdoored.target)}
    with unchanged(model):
        res = Gate(policy, runtime=CPU).run(model, _loader(tiny_fx), wrong, known_triggers=known)
    status = {r.rule_id: r.status for r in res.report.rules}
    assert status["HK-DATA-002"] == "fail"
    later = ["HK-SCAN-001", "HK-SCAN-002", "HK-BA-001", "HK-BA-002", "HK-ASR-001"]
    later += ["HK-ASR-002", "HK-ONNX-001"]
    assert {rid: status.get(rid) for rid in later} == dict.fromkeys(later, "skipped")
    assert not res.passed
    assert res.exit_code == 1
    assert res.scan is None
    assert not res.report.repaired
    assert res.report.input_scan is None
    assert "scan_seconds" not in res.report.timings
    assert res.report.input_ba is not None  # the accuracy HK-DATA-002 measured
    assert res.report.input_ba < 0.25
    assert res.report.output_ba is None
    assert any("stopped after HK-DATA-002" in n for n in res.report.notes)
    # what ships is the input model; every output is still written
    shipped = res.model.state_dict()
    for name, a in model.state_dict().items():
        assert torch.equal(a, shipped[name]), name
    saved = json.loads(res.save(tmp_path / "gate").read_text())
    assert saved["passed"] is False
    assert (tmp_path / "gate" / "junit.xml").is_file()
    assert (tmp_path / "gate" / "report.html").is_file()


def test_a_scan_on_images_the_model_is_at_chance_on_is_not_conclusive(
    tiny_fx: BackdoorFixture,
) -> None:
    """Clean images whose labels do not fit the model (another class order, BGR, another
    normalisation): the inversions ran on inputs the model does not understand. Before stop 44
    the scan reported its verdict as conclusive with no word about it."""
    model = tiny_fx.backdoored.model
    x, y = tiny_fx.data.train.tensors()
    cfg = {"detector_options": {"neural-cleanse": {"epochs": 1}}, "max_images": 40}
    shifted = hk.data.TensorLoader(x, (y + 1) % 4, batch_size=64)
    with unchanged(model):
        bad = hk.Scanner(model, 4, config=cfg, runtime=CPU).run(shifted).report
    assert bad.above_chance is False
    assert bad.clean_accuracy is not None
    assert bad.chance_accuracy is not None
    assert bad.clean_accuracy < bad.chance_accuracy
    assert bad.at_chance
    assert not bad.conclusive
    assert "no better than chance" in bad.summary()
    assert "NOT conclusive" in bad.summary()
    # the saved report keeps the fields (schema round trip)
    again = hk.ScanReport.model_validate_json(bad.model_dump_json())
    assert again.above_chance is False
    assert not again.conclusive
    # turned off: recorded, never judged
    off = hk.Scanner(model, 4, config={**cfg, "require_above_chance": False}, runtime=CPU)
    off_rep = off.run(shifted).report
    assert off_rep.above_chance is False
    assert not off_rep.at_chance
    assert off_rep.conclusive
    assert "NOT conclusive" not in off_rep.summary()
    # the right labels: above chance and conclusive
    good = hk.Scanner(model, 4, config=cfg, runtime=CPU).run(_loader(tiny_fx)).report
    assert good.above_chance is True
    assert good.clean_accuracy is not None
    assert good.clean_accuracy > 0.5
    assert good.conclusive
    assert "no better than chance" not in good.summary()


def test_a_model_that_ends_in_a_softmax_is_scanned_on_its_logits(
    tiny_fx: BackdoorFixture,
) -> None:
    """A user's nn.Sequential ending in nn.Softmax: on the probabilities the inversion's loss
    saturates (a planted patch went from `backdoored` to `suspicious`, stop 44); the scanner
    now scans their logarithm, which is the logits up to a constant per image."""
    model = tiny_fx.backdoored.model
    soft = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    cfg = {"detector_options": {"neural-cleanse": {"epochs": 2}}, "max_images": 80}
    plain = hk.Scanner(model, 4, config=cfg, runtime=CPU).run(_loader(tiny_fx)).report
    with unchanged(soft):
        wrapped = hk.Scanner(soft, 4, config=cfg, runtime=CPU).run(_loader(tiny_fx)).report
    assert plain.model_outputs == "logits"
    assert wrapped.model_outputs == "probabilities"
    assert "returns probabilities" in wrapped.summary()
    assert wrapped.verdict == plain.verdict
    assert wrapped.above_chance is True
    for a, b in zip(plain.classes, wrapped.classes, strict=True):
        assert a.mask_l1 is not None
        assert b.mask_l1 is not None
        assert b.mask_l1 == pytest.approx(a.mask_l1, rel=0.01), a.label  # apart before stop 44


def test_a_softmax_model_is_repaired_through_its_logits_and_keeps_its_softmax(
    tiny_fx: BackdoorFixture,
) -> None:
    """Cross-entropy on probabilities hardly moves a model (fine-tuning a CIFAR-10 BadNets
    small-cnn that ends in a softmax left ASR at 89 % where the same model without it went to
    27 %, stop 44): the Purifier trains through log(p) — the same gradients as the logits — and
    returns the user's model, softmax included, with no hook left on it."""
    model = tiny_fx.backdoored.model
    soft = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    cfg = {"epochs": 2}
    plain = hk.Purifier(model, "finetune", config=cfg, runtime=CPU).run(_loader(tiny_fx))
    with unchanged(soft):
        res = hk.Purifier(soft, "finetune", config=cfg, runtime=CPU).run(_loader(tiny_fx))
    assert any("returns probabilities" in n for n in res.report.notes)
    assert isinstance(res.model, nn.Sequential)
    assert isinstance(res.model[1], nn.Softmax)
    assert not res.model._forward_hooks
    x, _ = tiny_fx.data.test.tensors()
    with torch.no_grad():
        out = res.model(x)
    assert torch.allclose(out.sum(1), torch.ones(len(x)), atol=1e-4)  # still probabilities
    trained = res.model[0].state_dict()
    for name, w in plain.model.state_dict().items():
        assert torch.allclose(w.float(), trained[name].float(), atol=1e-3), name

"""Unit tests of the gate's policy, rules, outputs and input checks (no long scans)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch

import hardenkit as hk
from hardenkit.cli import main
from hardenkit.errors import ConfigError, DataError
from hardenkit.gate import (
    RULES,
    DeploymentPolicy,
    Gate,
    GateReport,
    GateResult,
    GateRule,
    TriggerMeasurement,
    image_hashes,
    junit_xml,
    markdown_summary,
    sarif_log,
)
from hardenkit.reports import ModelFingerprint
from hardenkit.schemas import json_schema, schema_names


def _report(statuses: dict[str, str]) -> GateReport:
    model = hk.create_model("small-cnn", 4)
    fp = ModelFingerprint.of(model)
    rules = [
        GateRule(
            rule_id=rid,
            description=RULES[rid],
            status=st,  # type: ignore[arg-type]
            value=0.2 if rid.startswith("HK-ASR") else None,
            threshold=0.1 if rid.startswith("HK-ASR") else None,
            comparison="<=" if rid.startswith("HK-ASR") else None,
            message=f"{rid} is {st}",
            cause="policy" if st == "fail" else None,
        )
        for rid, st in statuses.items()
    ]
    failed = any(s == "fail" for s in statuses.values())
    return GateReport(
        passed=not failed,
        exit_code=1 if failed else 0,
        rules=rules,
        policy=DeploymentPolicy().model_dump(mode="json"),
        input_model=fp,
        output_model=fp,
        repaired=False,
        input_ba=0.9,
        output_ba=0.89,
        triggers=[
            TriggerMeasurement(source="scan", label=0, input_asr=1.0, output_asr=0.2, images=90)
        ],
        data={"clean_images": 10, "holdout_images": 100},
        timings={"total_seconds": 1.5},
    )


# ------------------------------------------------------------------------------ policy


def test_default_policy_is_the_documented_one() -> None:
    p = DeploymentPolicy()
    assert (p.repair, p.strategy, p.max_ba_drop, p.max_asr) == ("if-flagged", "auto", 0.03, 0.1)
    assert p.rescan_must_be_clean
    assert p.fail_on_skipped
    assert Gate().policy == p


def test_policy_typo_names_the_nearest_key() -> None:
    with pytest.raises(ConfigError, match=r"max_asrr.*did you mean 'max_asr'"):
        DeploymentPolicy(max_asrr=0.05)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="unknown strategy 'mlc'"):
        DeploymentPolicy(strategy="mlc")
    with pytest.raises(ConfigError, match="max_imagez"):
        DeploymentPolicy(scan={"max_imagez": 10})
    with pytest.raises(ConfigError):
        DeploymentPolicy(max_asr=1.5)


def test_schema_names_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"gate-policy", "gate-report", "validation-policy"} <= set(schema_names())
    assert json_schema("gate-policy")["title"] == "DeploymentPolicy"
    assert main(["schema", "gate-policy"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "max_ba_drop" in printed["properties"]
    assert main(["schema", "no-such-schema"]) == 2
    assert "unknown schema" in capsys.readouterr().err


# ------------------------------------------------------------------------------ outputs


def test_junit_has_one_case_per_rule() -> None:
    rep = _report({"HK-DATA-001": "pass", "HK-ASR-001": "fail", "HK-ONNX-001": "skipped"})
    root = ET.fromstring(junit_xml(rep))
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == 3
    assert suite.get("failures") == "1"
    assert suite.get("skipped") == "1"
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name", "").split()[0] for c in failed] == ["HK-ASR-001"]
    assert failed[0].find("failure").get("message") == "HK-ASR-001 is fail"  # type: ignore[union-attr]


def test_sarif_reports_failed_rules_only() -> None:
    rep = _report({"HK-DATA-001": "pass", "HK-ASR-001": "fail", "HK-BA-002": "fail"})
    log = json.loads(sarif_log(rep))
    assert log["version"] == "2.1.0"
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == sorted(["HK-DATA-001", "HK-ASR-001", "HK-BA-002"])
    assert sorted(r["ruleId"] for r in run["results"]) == ["HK-ASR-001", "HK-BA-002"]
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] == "error"
        uri = res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert uri == "model.safetensors"
    assert run["invocations"][0]["exitCode"] == 1
    assert not json.loads(sarif_log(_report({"HK-DATA-001": "pass"})))["runs"][0]["results"]


def test_markdown_summary_and_round_trip() -> None:
    rep = _report({"HK-DATA-001": "pass", "HK-ASR-001": "fail"})
    md = markdown_summary(rep)
    assert md.startswith("## hardenkit gate: FAILED")
    assert "| HK-ASR-001 | ❌ fail | 20.00% | <= 10.00% |" in md
    assert "90.00% → 89.00%" in md
    again = GateReport.model_validate_json(rep.to_json())
    assert again == rep
    assert again.failed_rules[0].rule_id == "HK-ASR-001"


# ------------------------------------------------------------------------------ data checks


def test_image_hashes_survive_a_uint8_round_trip() -> None:
    x = torch.rand(5, 3, 8, 8)
    u8 = (x * 255).round().to(torch.uint8)
    assert image_hashes(x) == image_hashes(u8.float() / 255)
    assert len(set(image_hashes(x))) == 5


def test_overlapping_holdout_is_refused_before_any_scan() -> None:
    data = hk.make_synthetic_dataset(num_classes=4, train_per_class=20, test_per_class=5)
    model = hk.create_model("small-cnn", 4)
    x, y = data.train.tensors()
    hold = hk.data.TensorLoader(x[:7], y[:7], batch_size=8)
    with pytest.raises(DataError, match="7 of the 7 held-out images also appear"):
        Gate().run(model, data.train.loader(), hold)


def test_bad_known_triggers_are_config_errors() -> None:
    data = hk.make_synthetic_dataset(num_classes=4, train_per_class=5, test_per_class=5)
    model = hk.create_model("small-cnn", 4)
    with pytest.raises(ConfigError, match="mapping"):
        Gate().run(model, data.train.loader(), known_triggers=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pair"):
        Gate().run(model, data.train.loader(), known_triggers={"x": 3})  # type: ignore[dict-item]


def test_gate_cli_policy_typo_is_a_usage_error(tmp_path: Path) -> None:
    weights = tmp_path / "m.safetensors"
    hk.save_state_dict(hk.create_model("small-cnn", 4), weights)
    policy = tmp_path / "p.yaml"
    policy.write_text("max_asrr: 0.05\n")
    code = main(
        [
            "gate",
            "--weights",
            str(weights),
            "--arch",
            "small-cnn",
            "--num-classes",
            "4",
            "--data",
            "synthetic:num_classes=4",
            "--policy",
            str(policy),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert not (tmp_path / "out").exists()


def test_gate_cli_says_up_front_that_extra_repair_rounds_are_for_investigation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy with ``max_repair_rounds`` > 1 is told before any work that such a model
    cannot pass (stop 57); the default policy's line says nothing about rounds."""
    weights = tmp_path / "m.safetensors"
    hk.save_state_dict(hk.create_model("small-cnn", 4), weights)

    def stop(*args: Any, **kwargs: Any) -> None:
        raise ConfigError("stopped before any work (test)")

    monkeypatch.setattr(Gate, "run", stop)
    argv = ["gate", "--weights", str(weights), "--arch", "small-cnn", "--num-classes", "4",
            "--data", "synthetic:num_classes=4", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "repair round" not in err
    # stop 58: the line estimates one scan of this model and these images (it said "a few
    # minutes" whatever the model), from the same timing as `hardenkit scan`'s estimate
    assert "one scan estimated at most ~" in err
    # stop 63: the repair's range from the strategy's schedule and one timed training step
    assert "when it flags a label, a repair (auto: ~" in err
    assert "and a re-scan follow" in err
    import hardenkit.scan as scan_pkg

    seen: list[tuple[int, int, int]] = []

    def at_most(*args: Any, **kwargs: Any) -> float:
        seen.append(kwargs["input_shape"])
        return 600.0

    monkeypatch.setattr(scan_pkg, "estimate_scan_seconds", at_most)
    assert main(argv) == 2
    assert "one scan estimated at most ~10.0 min on cpu" in capsys.readouterr().err
    assert seen == [(3, 32, 32)]

    def broken(*args: Any, **kwargs: Any) -> float:
        raise RuntimeError("no timing (test)")

    monkeypatch.setattr(scan_pkg, "estimate_scan_seconds", broken)
    assert main(argv) == 2  # an estimate that fails never stops the gate
    assert "no time estimate for the scan (RuntimeError)" in capsys.readouterr().err
    policy = tmp_path / "p.yaml"
    policy.write_text("max_repair_rounds: 3\n")
    assert main([*argv, "--policy", str(policy)]) == 2
    err = capsys.readouterr().err
    assert "max_repair_rounds 3: up to 2 more repair and re-scan round(s)" in err
    assert "fails HK-REPAIR-001" in err
    # a strategy that states no schedule: the measured ratio to a scan instead
    policy.write_text("strategy: anp\n")
    assert main([*argv, "--policy", str(policy)]) == 2
    assert "a repair (often 1-5 times a scan) and a re-scan follow" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("verdict", "worst", "status", "repaired"),
    [
        ("suspicious", "suspicious", "pass", False),
        ("suspicious", "clean", "fail", False),
        ("backdoored", "suspicious", "fail", False),
        ("clean", "clean", "pass", False),
    ],
)
def test_max_scan_verdict_decides_hk_scan_001(
    verdict: str, worst: str, status: str, repaired: bool
) -> None:
    """``suspicious`` (no flagged label, index just under the threshold) ships by default;
    ``max_scan_verdict: clean`` fails it; a flagged label always fails."""
    data = hk.make_synthetic_dataset(num_classes=4, train_per_class=30, test_per_class=30)
    model = hk.create_model("small-cnn", 4)
    scan = hk.ScanResult.from_triggers({1: hk.PatchTrigger.square(3)}, model=model, num_classes=4)
    flagged = [1] if verdict == "backdoored" else []
    scan.report = scan.report.model_copy(
        update={"verdict": verdict, "score": 0.35, "flagged_labels": flagged}
    )
    policy = {
        "repair": "never",
        "max_scan_verdict": worst,
        "export_onnx": False,
        "fail_on_skipped": False,
        "min_holdout_images": 10,
        "require_above_chance": False,  # an untrained model: the mechanics of HK-SCAN-001
    }
    res = Gate(policy).run(model, data.train.loader(), data.test.loader(), scan=scan)
    rule = next(r for r in res.report.rules if r.rule_id == "HK-SCAN-001")
    assert rule.status == status, rule.message
    assert rule.threshold == worst
    assert res.report.repaired is repaired


class _Redirected(torch.nn.Module):
    """A small CNN whose white 3x3 bottom-right patch sends every image to class 2: a backdoor
    that a defence moved away from its target (0) instead of removing it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = hk.create_model("small-cnn", 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        hit = (x[:, :, -3:, -3:] >= 0.999).flatten(1).all(1)
        forced = torch.nn.functional.one_hot(torch.full_like(hit, 2, dtype=torch.long), 4) * 50.0
        return torch.where(hit[:, None], forced.to(out.dtype), out)


def _gate_with_known_trigger(
    model: torch.nn.Module,
) -> tuple[GateResult, tuple[Any, hk.PatchTrigger, hk.ScanResult, dict[str, Any]]]:
    """``model`` (untrained or hand-made) through a no-repair gate with a red team's 3x3
    bottom-right patch for label 0 and a clean scan carrying a label-1 trigger; the result
    and what it was run with."""
    data = hk.make_synthetic_dataset(num_classes=4, train_per_class=30, test_per_class=30)
    trigger = hk.PatchTrigger.square(3, location="bottom-right")
    scan = hk.ScanResult.from_triggers({1: trigger}, model=model, num_classes=4)
    scan.report = scan.report.model_copy(update={"verdict": "clean", "flagged_labels": []})
    policy = {
        "repair": "never",
        "export_onnx": False,
        "fail_on_skipped": False,
        "min_holdout_images": 10,
        "require_above_chance": False,  # not a trained model: the mechanics of the ASR rules
    }
    res = Gate(policy).run(
        model,
        data.train.loader(),
        data.test.loader(),
        scan=scan,
        known_triggers={"red-team": (trigger, 0)},
    )
    return res, (data, trigger, scan, policy)


def test_a_known_trigger_redirected_to_another_class_fails_hk_asr_003() -> None:
    """ASR 0 % on the red team's trigger does not ship a model that the trigger still
    controls: HK-ASR-002 passes, HK-ASR-003 fails."""
    model = _Redirected().eval()
    res, (data, trigger, scan, policy) = _gate_with_known_trigger(model)
    rules = {r.rule_id: r for r in res.report.rules}
    real = next(m for m in res.report.triggers if m.source == "known:red-team")
    assert real.output_asr == 0.0
    assert real.output_top_class == 2
    assert real.output_top_share == pytest.approx(2 / 3)  # class 2's own images not counted
    assert rules["HK-ASR-002"].status == "pass"
    assert rules["HK-ASR-003"].status == "fail"
    assert "class 2" in rules["HK-ASR-003"].message
    assert not res.passed
    # the rule is the policy's to switch off
    off = Gate({**policy, "max_trigger_share": None}).run(
        model,
        data.train.loader(),
        data.test.loader(),
        scan=scan,
        known_triggers={"red-team": (trigger, 0)},
    )
    assert "HK-ASR-003" not in {r.rule_id for r in off.report.rules}


class _AlwaysZero(torch.nn.Module):
    """Predicts class 0 for every image: a bias toward the target, no trigger needed."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([5.0, 0.0, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 4) + 0.0 * x.flatten(1)[:, :1]


def test_the_asr_rules_report_the_share_predicted_as_the_target_without_the_trigger() -> None:
    """A known trigger's ASR on a model biased toward its target: the rule still fails on the
    ASR (fail closed), and the report and message carry the floor, so a reader sees the trigger
    adds nothing to what the model does without it."""
    res, _ = _gate_with_known_trigger(_AlwaysZero().eval())
    real = next(m for m in res.report.triggers if m.source == "known:red-team")
    assert real.output_asr == 1.0
    assert real.output_asr_without_trigger == 1.0
    rule = next(r for r in res.report.rules if r.rule_id == "HK-ASR-002")
    assert rule.status == "fail"
    assert "predicts label 0 on 100.00% of the same images without the trigger" in rule.message
    md = markdown_summary(res.report)
    assert "100.00% → 100.00% (100.00% of the same images are predicted as 0 without" in md


def test_hk_asr_001_names_flagged_labels_without_a_recovered_trigger() -> None:
    """A label flagged by a test that recovers no trigger (prediction share) has no ASR to
    measure: HK-ASR-001 says so by label and, by default, fails closed on it."""
    from hardenkit.gate.gate import flagged_without_trigger

    data = hk.make_synthetic_dataset(num_classes=4, train_per_class=30, test_per_class=30)
    model = hk.create_model("small-cnn", 4)
    policy = {
        "repair": "never",
        "export_onnx": False,
        "fail_on_skipped": False,
        "min_holdout_images": 10,
        "require_above_chance": False,  # an untrained model: the mechanics of the ASR rules
    }
    scan = hk.ScanResult.from_triggers({1: hk.PatchTrigger.square(3)}, model=model, num_classes=4)
    scan.report = scan.report.model_copy(update={"verdict": "backdoored", "flagged_labels": [1, 3]})
    assert flagged_without_trigger(scan, None) == [3]
    res = Gate(policy).run(model, data.train.loader(), data.test.loader(), scan=scan)
    rule = next(r for r in res.report.rules if r.rule_id == "HK-ASR-001")
    assert "highest measured ASR (scan, label 1)" in rule.message
    assert "flagged label(s) [3] have no recovered trigger" in rule.message
    assert rule.status == "fail"
    assert "fails closed" in rule.message
    assert not res.passed  # the flagged scan itself fails HK-SCAN-001
    # only trigger-less flags: the rule fails closed by default, or names them for HK-SCAN-001
    bare = hk.ScanResult.from_triggers({1: hk.PatchTrigger.square(3)}, model=model, num_classes=4)

    def asr_rule(verdict: str, flagged: list[int]) -> GateRule:
        bare.report = bare.report.model_copy(update={"verdict": verdict, "flagged_labels": flagged})
        rep = Gate(policy).run(model, data.train.loader(), data.test.loader(), scan=bare).report
        return next(r for r in rep.rules if r.rule_id == "HK-ASR-001")

    rule = asr_rule("backdoored", [2])  # default policy: fail closed
    assert rule.status == "fail"
    assert rule.cause == "policy"
    assert rule.message.startswith("flagged label(s) [2] have no recovered trigger")
    assert "fails closed" in rule.message
    policy["flagged_without_trigger"] = "scan-verdict"  # the behaviour before stop 41
    rule = asr_rule("backdoored", [2])
    assert rule.status == "pass"
    assert rule.message.startswith("flagged label(s) [2] have no recovered trigger")
    assert "HK-SCAN-001" in rule.message
    assert asr_rule("clean", []).message == "no scan flagged a label: nothing to measure"


def test_the_ba_drop_note_says_when_the_held_out_set_cannot_tell_pass_from_fail() -> None:
    """HK-BA-002 judges the measured drop; the paired interval (stop 55) adds a note only
    when it straddles max_ba_drop, saying which way the measurement went."""
    from hardenkit.gate.gate import drop_interval_note

    assert drop_interval_note(0.010, (-0.005, 0.025), 0.03, 2000) is None  # clearly within
    assert drop_interval_note(0.060, (0.040, 0.080), 0.03, 2000) is None  # clearly beyond
    assert drop_interval_note(None, (0.0, 0.1), 0.03, 2000) is None  # nothing measured
    within = drop_interval_note(0.020, (0.005, 0.036), 0.03, 2000)
    assert within is not None
    assert "0.50 to 3.60 points" in within
    assert "within it by the measurement, but a larger loss is not ruled out" in within
    assert "2000 held-out images" in within
    beyond = drop_interval_note(0.040, (0.020, 0.060), 0.03, 2000)
    assert beyond is not None
    assert "beyond it by the measurement, but a loss within it is not ruled out" in beyond


def test_a_second_repair_round_runs_when_the_rescan_flags_again(
    monkeypatch: pytest.MonkeyPatch,
    synthetic: Any,
    clean_model: torch.nn.Module,
    tmp_path: Path,
) -> None:
    """``max_repair_rounds`` 2 (stop 57: it had no test): the first re-scan flags label 2, so a
    second round repairs against the input scan's trigger *and* the re-scan's, and the second
    re-scan judges HK-SCAN-001; both re-scans' seconds are counted, the first re-scan's trigger
    is measured on the model that ships, and HK-REPAIR-001 fails a model that took two rounds
    (on CIFAR-10 the second round let the real trigger back while the re-scan said it was
    gone). With 1 round the gate stops after the
    first re-scan and fails HK-SCAN-001."""
    import time as _time

    from hardenkit.scan import scanner as scanner_mod

    model = clean_model  # a trained model: a repair of an untrained one is not trusted
    train = synthetic.train.subset(
        hk.data.stratified_indices(synthetic.train.labels, per_class=30, seed=0)
    )
    held = synthetic.test.subset(
        hk.data.stratified_indices(synthetic.test.labels, per_class=20, seed=0)
    )

    def scan_of(label: int, size: int) -> hk.ScanResult:
        t = hk.PatchTrigger.square(size)
        return hk.ScanResult.from_triggers({label: t}, model=model, num_classes=10)

    first, again, clean = scan_of(1, 3), scan_of(2, 4), scan_of(3, 2)
    clean.report = clean.report.model_copy(update={"verdict": "clean", "flagged_labels": []})
    scripted: list[hk.ScanResult] = []

    def fake_run(self: Any, *args: Any, **kwargs: Any) -> hk.ScanResult:
        _time.sleep(0.05)
        return scripted.pop(0)

    monkeypatch.setattr(scanner_mod.Scanner, "run", fake_run)
    policy: dict[str, Any] = {
        "strategy": "finetune",
        "strategy_config": {"epochs": 1},
        "max_ba_drop": 1.0,
        "export_onnx": False,
        "fail_on_skipped": False,
        "min_holdout_images": 10,
        "max_repair_rounds": 2,
    }
    scripted[:] = [again, clean]
    rep = Gate(policy).run(model, train.loader(), held.loader(), scan=first).report
    assert not scripted  # both re-scans ran
    assert [r["round"] for r in rep.repair_rounds] == [1, 2]
    assert rep.repair_rounds[0]["against_labels"] == [1]
    assert sorted(rep.repair_rounds[1]["against_labels"]) == [1, 2]
    assert [r["rescan_verdict"] for r in rep.repair_rounds] == ["backdoored", "clean"]
    assert any("round 1: the re-scan flagged [2]" in n for n in rep.notes)
    assert rep.timings["rescan_seconds"] >= 0.1  # both re-scans, not the last one only
    # the first re-scan's trigger was repaired against: it is measured on the shipped model
    sources = {(m.source, m.label) for m in rep.triggers}
    assert {("scan", 1), ("rescan-1", 2)} <= sources
    scan_rule = next(r for r in rep.rules if r.rule_id == "HK-SCAN-001")
    assert scan_rule.status == "pass", scan_rule.message  # the second re-scan judges
    # ... but a model repaired in two rounds is not trusted (stop 57): it fails closed
    repair_rule = next(r for r in rep.rules if r.rule_id == "HK-REPAIR-001")
    assert repair_rule.status == "fail"
    assert "took 2 repair rounds" in repair_rule.message
    assert (repair_rule.value, repair_rule.threshold) == (2.0, 1.0)
    assert not rep.passed
    # a second round that is not trusted is not re-scanned: the first re-scan (of the model
    # round 1 made) no longer judges HK-SCAN-001, its triggers are measured once, as
    # rescan-1, and it is saved as such
    from hardenkit.purify import purifier as purifier_mod

    real_run = purifier_mod.Purifier.run
    calls: list[int] = []

    def second_degraded(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = real_run(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            out.report = out.report.model_copy(update={"status": "degraded"})
        return out

    monkeypatch.setattr(purifier_mod.Purifier, "run", second_degraded)
    scripted[:] = [again]
    res = Gate(policy).run(model, train.loader(), held.loader(), scan=first)
    rep = res.report
    assert not scripted
    assert len(calls) == 2
    assert [r["status"] for r in rep.repair_rounds] == ["purified", "degraded"]
    rule = next(r for r in rep.rules if r.rule_id == "HK-SCAN-001")
    assert rule.status != "pass"
    assert "not re-scanned" in rule.message, rule.message
    assert [m.source for m in rep.triggers].count("rescan-1") == 1
    assert not any(m.source == "rescan" for m in rep.triggers)
    assert res.rescan is None
    assert not res.passed
    res.save(tmp_path / "out")
    assert (tmp_path / "out" / "rescan-1" / "report.json").is_file()
    # the earlier re-scan is in the HTML report, saved and re-rendered, and in the evidence
    # an MLflow run logs (stop 58: both showed the input scan and the last re-scan only)
    from hardenkit.gate.html import render_saved
    from hardenkit.integrations.mlflow import _evidence

    title = "Re-scan after repair round 1 (started round 2)"
    assert title in (tmp_path / "out" / "report.html").read_text()
    assert title in render_saved(tmp_path / "out", figures="pillow")
    assert "re-scan after round 1: label" in render_saved(tmp_path / "out", figures="pillow")
    assert Path("rescan-1") in _evidence(res.report, tmp_path / "out", [])
    monkeypatch.setattr(purifier_mod.Purifier, "run", real_run)
    policy["max_repair_rounds"] = 1
    scripted[:] = [again]
    rep = Gate(policy).run(model, train.loader(), held.loader(), scan=first).report
    assert not scripted
    assert len(rep.repair_rounds) == 1
    assert next(r for r in rep.rules if r.rule_id == "HK-SCAN-001").status == "fail"


def _suspicious_rescan(
    model: torch.nn.Module, smallest: int, trigger_label: int | None = None
) -> hk.ScanResult:
    """A re-scan with no flagged label whose Neural Cleanse is ``suspicious``, ranking
    ``smallest`` first (its mask is the smallest: index 1.5, under the threshold 2)."""
    from hardenkit.scan.scanner import DetectorClassRow, DetectorReport

    label = smallest if trigger_label is None else trigger_label
    scan = hk.ScanResult.from_triggers({label: hk.PatchTrigger.square(3)}, model=model,
                                       num_classes=10)  # fmt: skip
    values = [60.0 + y for y in range(10)]
    values[smallest] = 37.0
    rows = [
        DetectorClassRow(label=y, value=v, anomaly_index=1.5 if y == smallest else 0.4,
                         flagged=False)
        for y, v in enumerate(values)
    ]  # fmt: skip
    nc = DetectorReport(
        detector="neural-cleanse", statistic="mask_l1", suspicious_side="low",
        verdict="suspicious", score=0.28, anomaly_index=1.5, evidence=1.5, threshold=2.0,
        flagged_labels=[], seconds=0.1, config={}, classes=rows,
    )  # fmt: skip
    scan.report = scan.report.model_copy(
        update={"verdict": "suspicious", "score": 0.28, "flagged_labels": [], "detectors": [nc]}
    )
    return scan


def test_a_rescan_that_still_suspects_the_repaired_label_fails_hk_scan_001(
    monkeypatch: pytest.MonkeyPatch, synthetic: Any, clean_model: torch.nn.Module
) -> None:
    """Stop 59: the default gate repaired a held-out FTrojan-style model against label 9's
    inverted trigger, its re-scan was ``suspicious`` with label 9 still the smallest Neural
    Cleanse mask, and it shipped at 68.9 % real ASR. A ``suspicious`` re-scan that points at
    the repaired label now fails HK-SCAN-001 (``repaired_label_suspect: allow`` judges the
    verdict alone); one that points at another label still ships."""
    from hardenkit.scan import scanner as scanner_mod

    model = clean_model
    train = synthetic.train.subset(
        hk.data.stratified_indices(synthetic.train.labels, per_class=30, seed=0)
    )
    held = synthetic.test.subset(
        hk.data.stratified_indices(synthetic.test.labels, per_class=20, seed=0)
    )
    first = hk.ScanResult.from_triggers({1: hk.PatchTrigger.square(3)}, model=model, num_classes=10)
    scripted: list[hk.ScanResult] = []
    monkeypatch.setattr(scanner_mod.Scanner, "run", lambda self, *a, **k: scripted.pop(0))
    policy: dict[str, Any] = {
        "strategy": "finetune",
        "strategy_config": {"epochs": 1},
        "max_ba_drop": 1.0,
        "max_asr": 1.0,
        "export_onnx": False,
        "fail_on_skipped": False,
        "min_holdout_images": 10,
    }

    def scan_rule(rescan: hk.ScanResult, **extra: Any) -> Any:
        scripted[:] = [rescan]
        rep = Gate({**policy, **extra}).run(model, train.loader(), held.loader(), scan=first)
        assert not scripted
        assert rep.report.repaired
        return next(r for r in rep.report.rules if r.rule_id == "HK-SCAN-001"), rep

    rule, res = scan_rule(_suspicious_rescan(model, smallest=1))
    assert rule.status == "fail", rule.message
    assert "the repaired label 1 is still its most suspicious label" in rule.message
    assert not res.passed
    rule, _ = scan_rule(_suspicious_rescan(model, smallest=1), repaired_label_suspect="allow")
    assert rule.status == "pass", rule.message
    assert "allowed" in rule.message
    rule, _ = scan_rule(_suspicious_rescan(model, smallest=5))  # another label: verdict alone
    assert rule.status == "pass", rule.message
    assert "most suspicious" not in rule.message
    with pytest.raises(ConfigError):
        Gate({"repaired_label_suspect": "maybe"})
    # stop 60: Neural Cleanse pointed at another label before the repair (a warp detector
    # flagged label 1): its new suspect is what the repair made, not the backdoor left behind
    scripted[:] = [_suspicious_rescan(model, smallest=1)]
    before = _suspicious_rescan(model, smallest=5, trigger_label=1)
    before.report = before.report.model_copy(
        update={"flagged_labels": [1], "verdict": "backdoored"}
    )
    rep = Gate(policy).run(model, train.loader(), held.loader(), scan=before)
    rule = next(r for r in rep.report.rules if r.rule_id == "HK-SCAN-001")
    assert rep.report.repaired
    assert rule.status == "pass", rule.message
    assert "most suspicious" not in rule.message


def test_rescan_suspects_reads_each_suspicious_detector_on_its_own_side() -> None:
    """A low-side detector suspects its smallest value, a high-side one its largest; clean or
    backdoored detectors add nothing."""
    from hardenkit.gate.gate import rescan_suspects
    from hardenkit.scan.scanner import DetectorReport

    model = hk.create_model("small-cnn", 10)
    low = _suspicious_rescan(model, smallest=4).report
    assert rescan_suspects(low) == [4]
    nc = low.detectors[0]
    high = DetectorReport(**{**nc.model_dump(), "detector": "mm-bd", "suspicious_side": "high",
                             "anomaly_index": 1.8})  # fmt: skip
    both = low.model_copy(update={"detectors": [nc, high]})
    assert rescan_suspects(both) == [9, 4]  # the larger index first; 9 has the largest value
    quiet = nc.model_copy(update={"verdict": "clean"})
    assert rescan_suspects(low.model_copy(update={"detectors": [quiet]})) == []
    # the input scan: the same detector's suspect counts only when it singled it out then
    flagged4 = nc.model_copy(update={"verdict": "backdoored", "flagged_labels": [4]})
    other = _suspicious_rescan(model, smallest=7).report.detectors[0]
    assert rescan_suspects(low, low) == [4]  # suspicious on 4 before and after
    assert rescan_suspects(low, low.model_copy(update={"detectors": [flagged4]})) == [4]
    assert rescan_suspects(low, low.model_copy(update={"detectors": [other]})) == []
    calm = nc.model_copy(update={"verdict": "clean"})  # ranked 4 first, but called it clean
    assert rescan_suspects(low, low.model_copy(update={"detectors": [calm]})) == []
    assert rescan_suspects(both, low.model_copy(update={"detectors": [other]})) == [9]  # mm-bd
    assert rescan_suspects(low, low.model_copy(update={"detectors": []})) == [4]  # not run

"""``hardenkit gate`` end to end on real weights: pass (exit 0), fail (exit 1), usage errors
(exit 2: a pickled module, overlapping data, a policy typo) and an environment error (exit 3),
with every report file the exit code promises."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.attacks import BackdooredModel
from hardenkit.cli import main
from hardenkit.gate import GateReport

# the fixtures' generator with fewer images per class (same class prototypes and seed): the
# scan and repair see 800 images, the 1,000 test images are held out
DATA = "synthetic:num_classes=10,train_per_class=100,test_per_class=100"
REPORTS = ("gate.json", "junit.xml", "gate.sarif", "summary.md", "report.html")


def _gate(weights: Path, out: Path, *extra: str, policy: str | None = None) -> int:
    argv = ["gate", "--weights", str(weights), "--arch", "small-cnn", "--num-classes", "10"]
    argv += ["--data", DATA, "--holdout", DATA, "--device", "cpu", "--out", str(out)]
    if policy is not None:
        pfile = out.parent / f"{out.name}-policy.yaml"
        pfile.write_text(policy)
        argv += ["--policy", str(pfile)]
    return main([*argv, *extra])


@pytest.fixture(scope="module")
def weights(badnets_model: BackdooredModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    hk.save_state_dict(badnets_model.model, path)
    return path


def _report(out: Path) -> GateReport:
    for name in REPORTS:
        assert (out / name).is_file(), name
    rep = GateReport.model_validate_json((out / "gate.json").read_text())
    assert set(rep.files) >= {"junit.xml", "gate.sarif", "summary.md", "report.html"}
    return rep


@pytest.fixture(scope="module")
def pass_run(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    """The default policy end to end (its own quick scan, ``auto`` repair, re-scan, ONNX) —
    the one run of it in the suite; a GitHub step summary that already has a heading."""
    out = tmp_path_factory.mktemp("gate-pass") / "out"
    summary = out.parent / "step-summary.md"
    summary.write_text("# earlier step\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITHUB_STEP_SUMMARY", str(summary))
        code = _gate(weights, out)
    return code, out, summary.read_text()


def _rules(report: GateReport) -> dict[str, str]:
    return {r.rule_id: r.status for r in report.rules}


def test_pass_exit_0_with_every_file(pass_run: tuple[int, Path, str]) -> None:
    code, out, text = pass_run
    rep = _report(out)
    assert code == 0, rep.summary()
    assert rep.passed
    assert rep.repaired
    for name in ("model.safetensors", "model.onnx", "purification.json"):
        assert (out / name).is_file(), name
    assert (out / "scan" / "report.json").is_file()
    assert (out / "rescan" / "report.json").is_file()
    assert rep.onnx is not None
    assert rep.files["model.onnx"] == rep.onnx["sha256"]
    assert text.startswith("# earlier step\n")  # appended, not overwritten
    assert "hardenkit gate: PASSED" in text
    html = (out / "report.html").read_text()
    assert "PASSED" in html
    assert rep.report_id in html
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert len(suite.findall("testcase")) == len(rep.rules)
    assert suite.get("failures") == "0"
    assert json.loads((out / "gate.sarif").read_text())["runs"][0]["results"] == []


def test_the_default_policy_repairs_the_backdoor_and_ships_the_repaired_model(
    pass_run: tuple[int, Path, str], badnets_model: BackdooredModel
) -> None:
    _, out, _ = pass_run
    rep = _report(out)
    rules = _rules(rep)
    assert rep.input_scan is not None
    assert rep.input_scan["flagged_labels"][:1] == [0]  # the planted target, found
    assert rep.purification_status == "purified"
    assert rules["HK-REPAIR-001"] == rules["HK-BA-002"] == "pass"
    # the drop's paired interval (stop 55) holds the measured drop
    assert rep.ba_drop_interval is not None
    assert rep.input_ba is not None
    assert rep.output_ba is not None
    lo, hi = rep.ba_drop_interval
    assert lo <= rep.input_ba - rep.output_ba <= hi
    assert rules["HK-ASR-001"] == "pass"  # every recovered trigger, on the shipped model
    assert rep.input_model.sha256 != rep.output_model.sha256
    assert rep.onnx is not None
    assert rep.onnx["provider"] == "CPUExecutionProvider"
    assert rules["HK-ONNX-001"] == rules["HK-ONNX-002"] == "pass"
    # the decision is the re-scan's: the shipped model flags no label
    assert rep.rescan is not None
    assert rep.rescan["flagged_labels"] == []
    assert rules["HK-SCAN-001"] == "pass"
    # the planted trigger (never shown to the gate) is gone from the shipped weights, and its
    # images are not redirected to another class either
    bd = badnets_model
    data = hk.make_synthetic_dataset(num_classes=10, train_per_class=100, test_per_class=100)
    shipped = hk.load_model_weights(hk.create_model("small-cnn", 10), out / "model.safetensors")
    before = hk.Validator(bd.model).run(data.test.loader(), trigger=bd.trigger, target=bd.target)
    after = hk.Validator(shipped).run(data.test.loader(), trigger=bd.trigger, target=bd.target)
    assert before.asr is not None
    assert before.asr > 0.9
    assert after.asr is not None
    assert after.asr <= 0.1, after.summary()
    assert before.ba - after.ba <= 0.03


@pytest.fixture(scope="module")
def fail_run(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    """One gate run under a no-repair policy, shared by the exit-code test and the
    shipped-weights test; its scan (the slow part) is Neural Cleanse alone for 10 epochs, as
    the decision under test needs a flagged label and its recovered trigger only."""
    out = tmp_path_factory.mktemp("gate-fail") / "out"
    scan = "scan: {detectors: [neural-cleanse], detector_options: {neural-cleanse: {epochs: 10}}}"
    return _gate(weights, out, policy=f"repair: never\n{scan}\n"), out


def test_fail_exit_1_with_every_file(fail_run: tuple[int, Path]) -> None:
    code, out = fail_run
    rep = _report(out)
    assert code == 1
    assert not rep.passed
    assert not rep.repaired
    failed = {r.rule_id for r in rep.failed_rules}
    assert {"HK-SCAN-001", "HK-ASR-001"} <= failed
    sarif = json.loads((out / "gate.sarif").read_text())
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} == failed
    assert (out / "model.safetensors").is_file()  # the evidence is kept even on a fail


def test_environment_error_exit_3(weights: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the cuda provider may exist")
    out = tmp_path / "out"
    # the ONNX provider is under test, not the scan: a small data-free MM-BD scan keeps it short
    # (the exit code is 3 whatever the scan finds: an environment error wins over a fail)
    scan = "scan: {detectors: [mm-bd], detector_options: {mm-bd: {starts: 4, steps: 50}}}\n"
    code = _gate(weights, out, policy=f"repair: never\nonnx_provider: cuda\n{scan}")
    rep = _report(out)
    assert code == 3
    onnx = next(r for r in rep.failed_rules if r.rule_id.startswith("HK-ONNX"))
    assert onnx.cause == "environment"


def test_a_pickled_module_is_refused_exit_2(
    badnets_model: BackdooredModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pickled = tmp_path / "model.pt"
    torch.save(badnets_model.model, pickled)  # a whole pickled nn.Module, not a state dict
    out = tmp_path / "out"
    assert _gate(pickled, out) == 2
    assert "pickle" in capsys.readouterr().err.lower()
    assert not out.exists()


def test_overlapping_data_is_refused_exit_2(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = _gate(weights, out, "--holdout-split", "train")  # held-out = the clean images
    assert code == 2
    assert "also appear in the clean data" in capsys.readouterr().err
    assert not (out / "gate.json").exists()


def test_the_shipped_weights_load_back(weights: Path, fail_run: tuple[int, Path]) -> None:
    """The fail run's shipped weights are the input weights, byte for byte in values."""
    _, out = fail_run
    m = hk.load_model_weights(hk.create_model("small-cnn", 10), out / "model.safetensors")
    ref = hk.load_model_weights(hk.create_model("small-cnn", 10), weights)
    assert isinstance(m, nn.Module)
    for (k, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

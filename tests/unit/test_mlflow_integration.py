"""The MLflow adapter of the gate, offline against a SQLite store in tmp_path.

One real gate (a tiny untrained model with a clean scan handed in, no repair, ONNX exported
and verified) is saved once per module; the failing gate is that directory with its report
rewritten to a failed HK-SCAN-001 (the other files, and the hashes gate.json records for
them, are unchanged). mlflow imports in seconds, so the tests are few.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import torch

import hardenkit as hk
from hardenkit.cli import main
from hardenkit.errors import DataError, DependencyError
from hardenkit.gate import Gate, GateReport, GateResult
from hardenkit.io import file_sha256
from hardenkit.scan import ScanResult
from hardenkit.scan.scanner import ClassScan

MODEL = "hk-cli"


def _clean_scan(model: torch.nn.Module, k: int) -> ScanResult:
    flagged = ScanResult.from_triggers({1: hk.PatchTrigger.square(3)}, model=model, num_classes=k)
    report = flagged.report.model_copy(
        update={
            "verdict": "clean",
            "score": 0.0,
            "flagged_labels": [],
            "classes": [ClassScan(label=y, flagged=False) for y in range(k)],
        }
    )
    return ScanResult(report, {})


@pytest.fixture(scope="module")
def gate_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[GateResult, Path]:
    torch.manual_seed(0)
    data = hk.make_synthetic_dataset(4, train_per_class=8, test_per_class=4, image_size=16)
    model = hk.create_model("small-cnn", 4)
    res = Gate(
        {"repair": "never", "min_holdout_images": 8}, runtime={"device": "cpu", "seed": 0}
    ).run(model, data.train.loader(), data.test.loader(), scan=_clean_scan(model, 4))
    assert res.passed, res.report.summary()
    out = tmp_path_factory.mktemp("gate") / "passed"
    res.save(out)
    return res, out


@pytest.fixture(scope="module")
def failed_dir(
    gate_result: tuple[GateResult, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    _, passed = gate_result
    out = tmp_path_factory.mktemp("gate") / "failed"
    shutil.copytree(passed, out)
    rep = GateReport.model_validate_json((out / "gate.json").read_text())
    rules = [
        r.model_copy(update={"status": "fail", "cause": "policy", "value": "backdoored"})
        if r.rule_id == "HK-SCAN-001"
        else r
        for r in rep.rules
    ]
    rep.model_copy(update={"passed": False, "exit_code": 1, "rules": rules}).save(out / "gate.json")
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, Path]:
    """One SQLite tracking store for the module (creating its tables takes seconds)."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow resolves its default artifact root (./mlruns) against the cwd
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments()
    return uri, client, root


@pytest.fixture
def offline(
    store: tuple[str, Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Any]:
    """The store, with the test running in tmp_path and no MLflow URI in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return store[0], store[1]


def _local(uri: str) -> Path:
    return Path(urlparse(uri).path) if uri.startswith("file:") else Path(uri)


def test_a_passing_gate_registers_one_version_with_its_tags(
    gate_result: tuple[GateResult, Path],
    offline: tuple[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hardenkit.integrations.mlflow import log_gate

    uri, client = offline
    _, gate_dir = gate_result
    report = GateReport.model_validate_json((gate_dir / "gate.json").read_text())
    rec = log_gate(
        gate_dir,
        tracking_uri=uri,
        experiment="passed",
        registered_model_name="hk-passed",
        artifact_location=tmp_path / "artifacts",
    )
    assert rec.passed
    assert rec.registered_version == "1"
    assert rec.model_uri == "models:/hk-passed/1"
    versions = client.search_model_versions("name='hk-passed'")
    assert len(versions) == 1
    onnx_sha = file_sha256(gate_dir / "model.onnx")
    assert report.onnx is not None
    assert onnx_sha == report.onnx["sha256"]
    assert versions[0].run_id == rec.run_id
    assert {k: v for k, v in versions[0].tags.items() if k.startswith("hardenkit.")} == {
        "hardenkit.report_id": report.report_id,
        "hardenkit.gate": "passed",
        "hardenkit.input_sha256": report.input_model.sha256,
        "hardenkit.output_sha256": report.output_model.sha256,
        "hardenkit.onnx_sha256": onnx_sha,
        "hardenkit.version": report.hardenkit_version,
    }

    run = client.get_run(rec.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["hardenkit.gate"] == "passed"
    assert run.data.tags["hardenkit.report_id"] == report.report_id
    assert run.data.tags["hardenkit.rule.HK-ONNX-001"] == "pass"
    assert run.data.tags["mlflow.note.content"].startswith("## hardenkit gate: PASSED")
    assert run.data.params["policy.repair"] == "never"
    assert run.data.params["policy.max_asr"] == "0.1"
    assert run.data.params["repaired"] == "false"
    assert run.data.metrics["gate.passed"] == 1.0
    assert run.data.metrics["ba.drop"] == 0.0
    assert run.data.metrics["ba.largest_class_drop"] == 0.0  # not repaired: no class changed
    assert run.data.metrics["data.holdout_images"] == 16.0
    assert "time.total_seconds" in run.data.metrics

    root = _local(run.info.artifact_uri)
    assert root.is_relative_to(tmp_path / "artifacts")
    for name in ("gate.json", "junit.xml", "gate.sarif", "summary.md", "model.safetensors"):
        assert (root / "gate" / name).is_file(), name
    assert (root / "gate" / "scan" / "report.json").is_file()
    assert not (root / "gate" / "model.onnx").exists()  # the model is under model/
    # the registered model is the very file the gate verified, in a loadable onnx flavour
    assert file_sha256(root / "model" / "model.onnx") == onnx_sha
    assert (root / "model" / "MLmodel").is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow.onnx

    loaded = mlflow.onnx.load_model(rec.model_uri)
    assert loaded.graph.input[0].name


def test_a_failing_gate_logs_its_run_and_registers_nothing(
    failed_dir: Path, offline: tuple[str, Any], store: tuple[str, Any, Path], tmp_path: Path
) -> None:
    from hardenkit.integrations.mlflow import log_gate

    uri, client = offline
    rec = log_gate(failed_dir, tracking_uri=uri, experiment="failed", registered_model_name="hk-f")
    assert not rec.passed
    assert rec.registered_version is None
    assert rec.model_uri is None
    assert "HK-SCAN-001" in rec.reason
    assert client.search_model_versions("name='hk-f'") == []
    assert client.search_registered_models("name='hk-f'") == []
    run = client.get_run(rec.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["hardenkit.gate"] == "failed"
    assert run.data.tags["hardenkit.failed_rules"] == "HK-SCAN-001"
    assert run.data.metrics["gate.passed"] == 0.0
    root = _local(run.info.artifact_uri)
    # MLflow's default artifact root, ./mlruns of the cwd the store was opened in
    assert root.is_relative_to(store[2]) or root.is_relative_to(tmp_path)
    assert (root / "gate" / "gate.json").is_file()
    assert (root / "gate" / "model.onnx").is_file()  # evidence, not an MLflow model
    assert not (root / "model").exists()


def test_a_gate_result_is_saved_then_logged(
    gate_result: tuple[GateResult, Path], offline: tuple[str, Any]
) -> None:
    from hardenkit.integrations.mlflow import log_gate

    uri, client = offline
    result = gate_result[0]
    rec = log_gate(result, tracking_uri=uri, experiment="result", run_name="from-a-result")
    assert rec.passed
    assert not rec.registered
    assert "no registered model name" in rec.reason
    run = client.get_run(rec.run_id)
    assert run.info.run_name == "from-a-result"
    assert run.data.tags["hardenkit.report_id"] == result.report.report_id
    assert "hardenkit.registered_model" not in run.data.tags
    names = {a.path for a in client.list_artifacts(rec.run_id)}
    assert names == {"gate", "model"}


def test_an_edited_output_is_refused_before_anything_is_logged(
    gate_result: tuple[GateResult, Path], offline: tuple[str, Any], tmp_path: Path
) -> None:
    from hardenkit.integrations.mlflow import log_gate

    uri, client = offline
    edited = tmp_path / "edited"
    shutil.copytree(gate_result[1], edited)
    with (edited / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(DataError, match=r"model\.onnx has sha256 .* not the"):
        log_gate(edited, tracking_uri=uri, experiment="edited", registered_model_name="hk-e")
    assert client.get_experiment_by_name("edited") is None  # no run was started
    with pytest.raises(DataError, match="not a saved gate"):
        log_gate(tmp_path / "nowhere", tracking_uri=uri)


def test_missing_mlflow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hardenkit.integrations.mlflow import log_gate

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    with pytest.raises(DependencyError, match=r'pip install "hardenkit\[mlflow\]"') as info:
        log_gate(tmp_path, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert isinstance(info.value, ImportError)
    assert info.value.exit_code == 3


def test_gate_cli_registers_a_passing_gate_and_fails_closed(
    gate_result: tuple[GateResult, Path],
    offline: tuple[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri, client = offline
    calls: list[int] = []

    def fake_run(self: Gate, *args: Any, **kwargs: Any) -> GateResult:
        calls.append(1)
        return gate_result[0]

    monkeypatch.setattr(Gate, "run", fake_run)
    weights = tmp_path / "m.safetensors"
    hk.save_state_dict(hk.create_model("small-cnn", 4), weights)
    base = ["gate", "--weights", str(weights), "--arch", "small-cnn", "--num-classes", "4"]
    base += ["--data", "synthetic:num_classes=4,train_per_class=4,test_per_class=2"]

    # a registration without a tracking server is a usage error before the gate runs
    assert main([*base, "--out", str(tmp_path / "o0"), "--register-model", MODEL]) == 2
    assert "--mlflow-tracking-uri" in capsys.readouterr().err
    assert not calls

    out = tmp_path / "o1"
    code = main([*base, "--out", str(out), "--mlflow-tracking-uri", uri, "--register-model", MODEL])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"registered {MODEL} version 1" in err
    (version,) = client.search_model_versions(f"name='{MODEL}'")
    saved = GateReport.model_validate_json((out / "gate.json").read_text())
    assert version.tags["hardenkit.report_id"] == saved.report_id

    # an MLflow failure after a passed gate: exit 3, outputs saved, nothing registered
    bad = "bogus-scheme://nowhere"
    out2 = tmp_path / "o2"
    code = main(
        [*base, "--out", str(out2), "--mlflow-tracking-uri", bad, "--register-model", MODEL]
    )
    err = capsys.readouterr().err
    assert code == 3  # an environment error
    assert "could not start a run" in err
    assert (out2 / "gate.json").is_file()
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1

"""``hardenkit export`` and ``hardenkit doctor`` through their argparse entry points.

The commands are not registered in ``hardenkit.cli.build_parser`` by these tests; each test
builds a parser with just the command under test and runs it through ``run_command`` (the
exception-to-exit-code mapping shared by every command).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from onnx import numpy_helper

import hardenkit as hk
from hardenkit.cli import doctor_cmd, export_cmd
from hardenkit.cli._common import run_command
from hardenkit.export import OrtDistribution

CUDA_RUNS = torch.cuda.is_available()
SYNTHETIC = "synthetic:num_classes=4,train_per_class=2,test_per_class=8"


def _run(module: Any, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    module.add_parser(sub)
    args = parser.parse_args(argv)
    return run_command(lambda: int(args.func(args)))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = hk.create_model("small-cnn", 4)
    return hk.save_state_dict(model, tmp_path_factory.mktemp("w") / "model.safetensors")


def _base(weights: Path, out: Path) -> list[str]:
    return [
        "export",
        "--weights",
        str(weights),
        "--arch",
        "small-cnn",
        "--num-classes",
        "4",
        "--output",
        str(out),
    ]


def test_export_and_verify(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    report = tmp_path / "report.json"
    argv = [*_base(weights, out),
        "--input-shape", "3,32,32", "--metadata", "team=vision,ticket=42", "--report-id", "r1",
        "--verify", "--data", SYNTHETIC, "--trigger", "badnets", "--target", "0",
        "--providers", "CPUExecutionProvider", "--report", str(report),
    ]  # fmt: skip
    assert _run(export_cmd, argv) == 0
    data = json.loads(report.read_text())
    assert data["report_type"] == "export_run"
    assert data["passed"] is True
    assert data["export"]["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert data["export"]["metadata"]["team"] == "vision"
    assert data["export"]["purification_report_id"] == "r1"
    ver = data["verification"]
    assert ver["providers_active"][0] == "CPUExecutionProvider"
    assert {c["name"] for c in ver["checks"]} >= {"logits_allclose", "asr_increase"}
    assert [f["name"] for f in data["export"]["files"]] == ["model.onnx"]
    err = capsys.readouterr().err
    assert "ONNX verification PASSED" in err


def test_static_batch_with_sidecar_to_stdout(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    argv = [*_base(weights, out),
        "--no-dynamic-batch", "--external-data", "always", "--report", "-",
    ]  # fmt: skip
    assert _run(export_cmd, argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verification"] is None
    assert data["export"]["dynamic_batch"] is False
    assert data["export"]["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert [f["role"] for f in data["export"]["files"]] == ["model", "external_data"]
    assert (tmp_path / "model.onnx.data").is_file()


def test_requesting_cuda_exits_3(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if CUDA_RUNS:
        pytest.skip("a GPU is present: the CUDA provider may really run here")
    argv = [*_base(weights, tmp_path / "m.onnx"),
        "--verify", "--data", SYNTHETIC, "--providers", "CUDAExecutionProvider",
    ]  # fmt: skip
    assert _run(export_cmd, argv) == 3
    err = capsys.readouterr().err
    assert "fell back to the CPU" in err
    assert "--providers CPUExecutionProvider" in err


def test_failed_parity_exits_1_and_still_writes_the_report(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_verify = export_cmd.verify_onnx

    def corrupt_then_verify(export: Any, *args: Any, **kwargs: Any) -> Any:
        proto = onnx.load(export.path)
        init = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
        arr = numpy_helper.to_array(init) + 0.5
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        onnx.save(proto, export.path)
        return real_verify(export.path, *args, **kwargs)

    monkeypatch.setattr(export_cmd, "verify_onnx", corrupt_then_verify)
    report = tmp_path / "r.json"
    argv = [*_base(weights, tmp_path / "m.onnx"),
        "--verify", "--data", SYNTHETIC, "--providers", "CPUExecutionProvider",
        "--report", str(report),
    ]  # fmt: skip
    assert _run(export_cmd, argv) == 1  # a check that ran and failed
    data = json.loads(report.read_text())
    assert data["passed"] is False
    assert not data["verification"]["passed"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--verify"],  # --verify needs --data
        ["--trigger", "badnets"],  # --trigger needs --target
        ["--data", SYNTHETIC],  # --data only with --verify
        ["--opset", "12"],
    ],
)
def test_usage_errors_exit_2(weights: Path, tmp_path: Path, extra: list[str]) -> None:
    assert _run(export_cmd, _base(weights, tmp_path / "m.onnx") + extra) == 2


def test_missing_weights_exit_2(tmp_path: Path) -> None:
    assert _run(export_cmd, _base(tmp_path / "nope.safetensors", tmp_path / "m.onnx")) == 2


def test_bad_input_shape_is_a_usage_error(weights: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _run(export_cmd, [*_base(weights, tmp_path / "m.onnx"), "--input-shape", "32,32"])


# --- doctor ----------------------------------------------------------------------------------


def test_doctor_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(doctor_cmd, ["doctor", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["report_type"] == "doctor"
    assert data["torch"]["version"] == torch.__version__
    ort_info = data["onnxruntime"]
    assert ort_info["importable"] is True
    assert "CPUExecutionProvider" in ort_info["available_providers"]
    checks = {c["provider"]: c for c in ort_info["provider_checks"]}
    assert set(checks) == set(ort_info["available_providers"])
    assert checks["CPUExecutionProvider"]["active"] is True
    if not CUDA_RUNS and "CUDAExecutionProvider" in checks:
        # listed by the build, but a session on it silently runs on the CPU
        assert checks["CUDAExecutionProvider"]["active"] is False
        assert checks["CUDAExecutionProvider"]["active_providers"] == ["CPUExecutionProvider"]
        # expected on a host without a GPU: an info note, not an issue
        assert any("CUDAExecutionProvider" in i for i in data["issues"] + data["notes"])
    assert [d["name"] for d in ort_info["distributions"]]


def test_doctor_text_and_require(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(doctor_cmd, ["doctor", "--require", "CPUExecutionProvider"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out
    assert "CPUExecutionProvider" in out
    assert "runs" in out
    if not CUDA_RUNS:
        assert _run(doctor_cmd, ["doctor", "--require", "CUDAExecutionProvider"]) == 3


def test_doctor_flags_two_ort_distributions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    both = [
        OrtDistribution(name="onnxruntime", version="1.31.1"),
        OrtDistribution(name="onnxruntime-gpu", version="1.31.1"),
    ]
    monkeypatch.setattr(doctor_cmd, "ort_distributions", lambda: both)
    assert _run(doctor_cmd, ["doctor", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["onnxruntime"]["conflicting_distributions"] is True
    assert any("onnxruntime and onnxruntime-gpu" in i for i in data["issues"])
    assert _run(doctor_cmd, ["doctor"]) == 0
    assert "CONFLICT" in capsys.readouterr().out


# ------------------------------------------ the input shape when --input-shape is not given


@pytest.fixture(scope="module")
def gray_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = hk.build_model("small-cnn", 4, in_channels=1)
    return hk.save_state_dict(model, tmp_path_factory.mktemp("g") / "gray.safetensors")


def _shape_of(report: Path) -> list[Any]:
    shape: list[Any] = json.loads(report.read_text())["export"]["inputs"][0]["shape"]
    return shape


def test_export_infers_one_channel_for_a_grayscale_model(
    gray_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default used to be 3,32,32 whatever the model took: a grayscale model exited 2."""
    report = tmp_path / "r.json"
    argv = [*_base(gray_weights, tmp_path / "m.onnx"), "--arch-args", "in_channels=1"]
    assert _run(export_cmd, [*argv, "--report", str(report)]) == 0
    assert _shape_of(report) == ["batch", 1, 32, 32]
    assert "--input-shape not given: using 1,32,32" in capsys.readouterr().err
    # --image-size gives H and W
    assert _run(export_cmd, [*argv, "--image-size", "24", "20", "--report", str(report)]) == 0
    assert _shape_of(report) == ["batch", 1, 24, 20]


def test_export_given_shape_wins_and_rgb_default_is_unchanged(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.json"
    assert _run(export_cmd, [*_base(weights, tmp_path / "m.onnx"), "--report", str(report)]) == 0
    assert _shape_of(report) == ["batch", 3, 32, 32]
    assert "using 3,32,32" in capsys.readouterr().err
    argv = [*_base(weights, tmp_path / "m.onnx"), "--input-shape", "3,40,40"]
    assert _run(export_cmd, [*argv, "--report", str(report)]) == 0
    assert _shape_of(report) == ["batch", 3, 40, 40]
    assert "not given" not in capsys.readouterr().err


def test_export_verify_takes_the_shape_of_its_data(
    gray_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.json"
    argv = [*_base(gray_weights, tmp_path / "m.onnx"), "--arch-args", "in_channels=1",
        "--verify", "--data", SYNTHETIC + ",image_size=16", "--providers",
        "CPUExecutionProvider", "--report", str(report)]  # fmt: skip
    assert _run(export_cmd, argv) == 0, capsys.readouterr().err
    assert _shape_of(report) == ["batch", 1, 16, 16]
    assert json.loads(report.read_text())["passed"] is True


def test_export_model_that_takes_neither_shape_asks_for_input_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = hk.build_model("small-cnn", 4, in_channels=2)
    w = hk.save_state_dict(model, tmp_path / "w.safetensors")
    argv = [*_base(w, tmp_path / "m.onnx"), "--arch-args", "in_channels=2"]
    assert _run(export_cmd, argv) == 2
    err = capsys.readouterr().err
    assert "runs on neither 3x32x32 nor 1x32x32 images" in err
    assert "--input-shape C,H,W" in err
    assert not (tmp_path / "m.onnx").exists()


def test_inferred_shape_is_said_once_per_torchrun_job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under torchrun every rank infers the shape; only rank 0 says so (stop 57)."""
    from hardenkit.cli._common import model_input_shape

    model = hk.build_model("small-cnn", 4, in_channels=1).eval()
    monkeypatch.setenv("RANK", "1")
    assert model_input_shape(model, None) == (1, 32, 32)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert model_input_shape(model, None) == (1, 32, 32)
    assert "--input-shape not given: using 1,32,32" in capsys.readouterr().err

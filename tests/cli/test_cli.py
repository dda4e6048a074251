"""Tests of the ``hardenkit`` command line, run in-process through ``hardenkit.cli.main``.

Exit codes (documented in ``hardenkit --help``): 0 ok/passed, 1 gate failed, 2 usage or
input error, 3 runtime error, 70 internal error. The demo runs once per module
(``--classes 4``, 8 epochs) and its saved model feeds the ``validate`` tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.cli import build_parser, main
from hardenkit.validate import ValidationReport

DATA = "synthetic:num_classes=4,train_per_class=10,test_per_class=30"


@dataclass(frozen=True)
class DemoRun:
    out: Path
    code: int
    stdout: str
    stderr: str

    @property
    def weights(self) -> Path:
        return self.out / "backdoored" / "model.safetensors"

    @property
    def trigger(self) -> Path:
        return self.out / "backdoored" / "trigger.safetensors"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    out = tmp_path_factory.mktemp("demo") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    logger = logging.getLogger("hardenkit")
    handlers, level = list(logger.handlers), logger.level
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(
            # 8 epochs (the default): fewer do not plant the backdoor on 4 classes, and the
            # demo then exits 1 (tests/cli/test_demo_proves_itself.py)
            ["demo", "--classes", "4", "--device", "cpu", "--out", str(out)]
        )
    logger.handlers[:] = handlers
    logger.setLevel(level)
    return DemoRun(out=out, code=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def validate_args(demo: DemoRun, *extra: str, trigger: bool = True) -> list[str]:
    args = [
        "validate",
        "--weights",
        str(demo.weights),
        "--arch",
        "small-cnn",
        "--num-classes",
        "4",
        "--data",
        DATA,
        "--device",
        "cpu",
    ]
    if trigger:
        args += ["--trigger", str(demo.trigger), "--target", "0"]
    return [*args, *extra]


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


# ----------------------------------------------------------------------------- basics


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hardenkit {hk.__version__}"


def test_version_console_script() -> None:
    """The installed ``hardenkit`` console script (a real subprocess)."""
    exe = Path(sys.executable).parent / "hardenkit"
    script = str(exe) if exe.is_file() else shutil.which("hardenkit")
    assert script, "the hardenkit console script is not installed"
    env = {**os.environ, "HARDENKIT_DISABLE_PLUGINS": "1"}
    proc = subprocess.run(
        [script, "--version"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"hardenkit {hk.__version__}"


def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: hardenkit" in err
    assert "validate" in err
    assert "demo" in err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "Exit codes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["models", "--bogus"],
        ["frobnicate"],
        ["validate"],  # required arguments missing
        ["validate", "--weights", "w.safetensors", "--arch", "small-cnn"],  # no --data
        ["demo", "--attack", "wanet"],  # not one of the demo's choices
        ["demo", "--epochs", "three"],
        ["--log-format", "xml", "models"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_log_level(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: an unknown level used to escape as a ValueError traceback (exit 1)."""
    assert main(["--log-level", "LOUD", "models"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--log-level", "debug", "models"]) == 0  # case-insensitive
    capsys.readouterr()


def test_models_lists_the_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    names = capsys.readouterr().out.split()
    assert "small-cnn" in names
    assert names == hk.list_models()


def test_parser_documents_exit_codes() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "2 usage or input error" in text
    assert "1 gate failed or backdoor flagged" in text


# ----------------------------------------------------------------------------- demo


@pytest.mark.slow
def test_demo_succeeds_and_writes_outputs(demo: DemoRun) -> None:
    assert demo.code == 0, demo.stderr
    assert (demo.out / "report.json").is_file()
    assert demo.weights.is_file()
    assert demo.trigger.is_file()
    assert (demo.out / "backdoored" / "attack.json").is_file()
    assert "data      synthetic 4 classes" in demo.stderr
    # said up front (stop 63): training, scan and repair estimated before any work
    assert "plan      estimated about " in demo.stderr
    assert "the repair ~" in demo.stderr


@pytest.mark.slow
def test_demo_report_json(demo: DemoRun) -> None:
    report = json.loads((demo.out / "report.json").read_text())
    assert report["report_type"] == "demo"
    assert report["arch"] == "small-cnn"
    assert report["train_epochs"] == 8
    assert report["passed"] is True
    assert report["failures"] == []
    assert report["dataset"]["classes"] == 4
    assert report["attack"]["attack"] == "badnets"
    val = report["validation"]
    assert val["report_type"] == "validation"
    assert 0.0 <= val["benign_accuracy"]["value"] <= 1.0
    assert val["attack_success_rate"]["total"] == 300  # 3 non-target classes × 100 images
    assert val["decision"]["rules"][0]["rule"] == "attack_success_rate"
    # The embedded validation report is a valid ValidationReport.
    ValidationReport.model_validate(val)
    assert [s["name"] for s in report["steps"]] == [
        "data",
        "train_backdoored",
        "validate",
        "scan",
        "purify_validate",
        "export_verify",
    ]
    # The purify step repaired a copy (auto: nc-unlearn on the scan's trigger), re-validated it.
    assert report["purification"]["strategy"] == "auto"
    assert report["purification"]["status"] == "purified"
    assert report["validation_after"]["report_type"] == "validation"
    assert (demo.out / "purified" / "model.safetensors").is_file()
    # The scan step ran Neural Cleanse on the backdoored model and saved its result.
    scan = report["scan"]
    assert scan["report_type"] == "scan"
    assert scan["num_classes"] == 4
    assert scan["verdict"] in {"clean", "suspicious", "backdoored"}
    assert (demo.out / "scan" / "report.json").is_file()
    assert len(list((demo.out / "scan" / "triggers").glob("label_*.safetensors"))) == 4
    # The demo exports the model to ONNX and verifies it on ONNX Runtime.
    assert report["export"]["dynamic_batch"] is True
    assert report["verification"]["passed"] is True
    assert report["verification"]["providers_active"][0] == "CPUExecutionProvider"
    exported = "purified" if report["purification"] is not None else "backdoored"
    assert (demo.out / exported / "model.onnx").is_file()


@pytest.mark.slow
def test_demo_stdout_last_line_is_json(demo: DemoRun) -> None:
    last = demo.stdout.strip().splitlines()[-1]
    summary = json.loads(last)
    assert set(summary) == {
        "ba",
        "asr",
        "ra",
        "scan_verdict",
        "flagged_labels",
        "ba_after",
        "asr_after",
        "passed",
        "report",
    }
    assert (
        summary["scan_verdict"]
        == json.loads((demo.out / "report.json").read_text())["scan"]["verdict"]
    )
    report = json.loads((demo.out / "report.json").read_text())
    assert summary["ba"] == pytest.approx(
        report["validation"]["benign_accuracy"]["value"], abs=1e-4
    )
    assert summary["asr"] == pytest.approx(
        report["validation"]["attack_success_rate"]["value"], abs=1e-4
    )
    assert Path(summary["report"]) == demo.out / "report.json"
    # Eight epochs on 4 synthetic classes plant the backdoor (measured ASR 94 %) and the
    # repair removes it (measured 5 %): the demo's own gate passed.
    assert summary["ba"] > 0.5
    assert summary["asr"] >= 0.5
    assert summary["asr_after"] <= 0.10
    assert summary["passed"] is True


@pytest.mark.parametrize(
    "extra",
    [
        ["--classes", "1"],  # DataError from the synthetic generator
        ["--classes", "2", "--epochs", "0"],  # ConfigError from TrainConfig
        ["--classes", "2", "--epochs", "1", "--seed", "-1"],  # ConfigError from RuntimeConfig
        ["--strategy", "d3", "--set", "nope=1"],  # ConfigError from D3Config, before training
        ["--strategy", "d3", "--set", "preset=best"],  # not a D3 preset
    ],
)
def test_demo_bad_values_exit_2(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--device", "cpu", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert "hardenkit: error:" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "report.json").exists()


# ----------------------------------------------------------------------------- validate


@pytest.mark.slow
def test_validate_strict_policy_fails(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    code, rep, err = run_json(validate_args(demo, "--max-asr", "0.0", "--output", "-"), capsys)
    if rep["attack_success_rate"]["value"] == 0:
        pytest.skip("the 3-epoch demo backdoor never fired on this platform")
    assert code == 1
    assert rep["decision"]["passed"] is False
    assert "gate FAILED" in err


@pytest.mark.slow
def test_validate_lenient_policy_passes(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(validate_args(demo, "--max-asr", "1.0", "--min-ba", "0.0"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == ""  # without --output the report is not printed
    assert "gate PASSED" in captured.err
    assert "ASR " in captured.err


@pytest.mark.slow
def test_validate_output_stdout_is_the_report(
    demo: DemoRun, capsys: pytest.CaptureFixture[str]
) -> None:
    code, rep, _ = run_json(
        validate_args(demo, "--max-asr", "1.0", "--min-ba", "0.0", "--output", "-"), capsys
    )
    assert code == 0
    back = ValidationReport.model_validate(rep)
    assert back.samples == 120
    assert back.num_classes == 4
    assert back.attack_success_rate is not None
    assert back.attack_success_rate.total == 90  # 30 target-class images excluded
    assert back.target == 0
    assert back.trigger is not None
    assert back.trigger["kind"] == "patch"
    assert back.passed is True


@pytest.mark.slow
def test_validate_output_file(
    demo: DemoRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "reports" / "val.json"
    code = main(validate_args(demo, "--max-asr", "1.0", "--output", str(path)))
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == ""
    assert f"wrote {path}" in captured.err
    rep = ValidationReport.model_validate_json(path.read_text())
    assert rep.report_type == "validation"
    assert rep.passed is True


@pytest.mark.slow
def test_validate_without_trigger(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    code, rep, _ = run_json(
        validate_args(demo, "--min-ba", "0.0", "--output", "-", trigger=False), capsys
    )
    assert code == 0
    assert rep["attack_success_rate"] is None
    statuses = {r["rule"]: r["status"] for r in rep["decision"]["rules"]}
    assert statuses == {
        "benign_accuracy": "pass",
        "attack_success_rate": "skipped",
        "benign_accuracy_drop": "skipped",
        "better_than_chance": "pass",
    }


@pytest.mark.slow
def test_validate_baseline_ba_drop(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    code, rep, _ = run_json(
        validate_args(
            demo, "--max-asr", "1.0", "--baseline-ba", "1.0", "--max-ba-drop", "0.0", "-o", "-"
        ),
        capsys,
    )
    assert rep["baseline_ba"] == 1.0
    drop = next(r for r in rep["decision"]["rules"] if r["rule"] == "benign_accuracy_drop")
    assert drop["value"] == pytest.approx(1.0 - rep["benign_accuracy"]["value"])
    assert code == (0 if drop["value"] == 0 else 1)


@pytest.mark.slow
def test_validate_attack_spec_trigger(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    """``badnets:patch_size=3`` is the demo's trigger, so ASR matches the saved trigger's."""
    argv = validate_args(demo, "--max-asr", "1.0", "-o", "-", trigger=False)
    code_a, spec, _ = run_json(
        [*argv, "--trigger", "badnets:patch_size=3", "--target", "0"], capsys
    )
    code_b, saved, _ = run_json([*argv, "--trigger", str(demo.trigger), "--target", "0"], capsys)
    assert code_a == code_b == 0
    assert spec["trigger"]["kind"] == "patch"
    assert spec["attack_success_rate"] == saved["attack_success_rate"]
    # Other spec options reach the attack config.
    code_c, other, _ = run_json(
        [
            *argv,
            "--trigger",
            "badnets:patch_size=1,pattern=black,location=top-left",
            "--target",
            "0",
        ],
        capsys,
    )
    assert code_c == 0
    assert other["trigger"]["location"] == "top-left"
    assert other["trigger"]["tensors"]["pattern"] == [3, 1, 1]


@pytest.mark.slow
def test_validate_all_to_all_target(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    code, rep, _ = run_json(
        [
            *validate_args(demo, "--max-asr", "1.0", "-o", "-", trigger=False),
            "--max-trigger-share",
            "0.3",
            "--trigger",
            str(demo.trigger),
            "--target",
            "all-to-all",
        ],
        capsys,
    )
    # the demo's backdoor is all-to-one (to 0): measured against an all-to-all target it
    # shows as a trigger that moves the images of classes 1 and 2 to one other class (0)
    assert code == 1
    assert rep["target"] == {"0": 1, "1": 2, "2": 3, "3": 0}
    assert rep["attack_success_rate"]["total"] == 120  # all-to-all: every image counts
    assert rep["trigger_top_class"] == 0
    failed = [r["rule_id"] for r in rep["decision"]["rules"] if r["status"] == "fail"]
    assert failed == ["HK-ASR-003"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["abc", "9", "-1", "1.5"])
def test_validate_bad_target(
    target: str, demo: DemoRun, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*validate_args(demo, trigger=False), "--trigger", str(demo.trigger), "--target", target]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "hardenkit: error:" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_synthetic_split_must_exist(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(validate_args(demo, "--split", "val")) == 2
    assert "'train' and 'test'" in capsys.readouterr().err
    assert main(validate_args(demo, "--split", "train", "--max-asr", "1.0")) == 0
    capsys.readouterr()


@pytest.mark.slow
def test_validate_policy_json_file(
    demo: DemoRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"max_asr": 0.0, "min_ba": 0.999}))  # BA ~0.9
    lenient = tmp_path / "lenient.json"
    lenient.write_text(json.dumps({"max_asr": 1.0, "min_ba": 0.0, "max_ba_drop": None}))
    assert main(validate_args(demo, "--policy", str(strict))) == 1
    code, rep, _ = run_json(validate_args(demo, "--policy", str(lenient), "-o", "-"), capsys)
    assert code == 0
    assert [r["rule"] for r in rep["decision"]["rules"]] == [
        "benign_accuracy",
        "attack_success_rate",
        "triggered_class_share",
        "better_than_chance",
    ]
    assert rep["trigger_top_share"]["total"] == rep["triggered_samples"]
    # the redirection rule's threshold from the command line (a fraction: 60 is refused)
    assert main(validate_args(demo, "--policy", str(lenient), "--max-trigger-share", "60")) == 2
    capsys.readouterr()
    # Command-line thresholds override the file's.
    argv = validate_args(demo, "--policy", str(strict), "--max-asr", "1.0", "--min-ba", "0.0")
    assert main(argv) == 0
    capsys.readouterr()


@pytest.mark.slow
def test_validate_policy_yaml_file(
    demo: DemoRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("yaml")
    strict = tmp_path / "strict.yaml"
    strict.write_text("max_asr: 0.0\nmin_ba: 0.999\n")
    lenient = tmp_path / "lenient.yml"
    lenient.write_text("# a lenient gate\nmax_asr: 1.0\nmin_ba: 0.0\nrequire_all_rules: false\n")
    assert main(validate_args(demo, "--policy", str(strict))) == 1
    assert main(validate_args(demo, "--policy", str(lenient))) == 0
    capsys.readouterr()


@pytest.mark.slow
def test_validate_yaml_policy_without_pyyaml(
    demo: DemoRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` raises ModuleNotFoundError
    policy = tmp_path / "p.yaml"
    policy.write_text("max_asr: 1.0\n")
    assert main(validate_args(demo, "--policy", str(policy))) == 2
    assert "PyYAML" in capsys.readouterr().err


# ----------------------------------------------------------------------------- usage errors


@pytest.mark.slow
def test_missing_weights_file(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    argv = validate_args(demo)
    argv[argv.index("--weights") + 1] = str(demo.out / "nope.safetensors")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_pickled_weights_are_refused(
    demo: DemoRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), bad)  # a whole pickled module, not a state dict
    argv = validate_args(demo)
    argv[argv.index("--weights") + 1] = str(bad)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unsafe" in err.lower()
    assert "Traceback" not in err


@pytest.mark.slow
def test_state_dict_pt_file_is_accepted(
    demo: DemoRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = hk.build_model("small-cnn", 4)
    hk.load_model_weights(model, demo.weights)
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    argv = validate_args(demo, "--max-asr", "1.0", "-o", "-")
    argv[argv.index("--weights") + 1] = str(pt)
    code, rep, _ = run_json(argv, capsys)
    assert code == 0
    assert rep["model"]["num_parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_wrong_num_classes(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    argv = validate_args(demo)
    argv[argv.index("--num-classes") + 1] = "10"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "do not match" in err or "do not fit" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_wrong_arch(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    argv = validate_args(demo)
    argv[argv.index("--arch") + 1] = "cifar-cnn"
    assert main(argv) == 2  # weights do not fit the architecture
    argv[argv.index("--arch") + 1] = "no-such-net"
    assert main(argv) == 2
    assert "small-cnn" in capsys.readouterr().err  # the registry lists the known names


@pytest.mark.parametrize(
    "extra",
    [
        ["--trigger", "badnets"],  # no --target
        ["--target", "0"],  # no --trigger
    ],
)
def test_trigger_and_target_go_together(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "validate",
        "--weights",
        str(tmp_path / "unused.safetensors"),
        "--arch",
        "small-cnn",
        "--data",
        DATA,
        *extra,
    ]
    assert main(argv) == 2
    assert "--trigger and --target go together" in capsys.readouterr().err


@pytest.mark.slow
def test_nonexistent_data_path(
    demo: DemoRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = validate_args(demo)
    argv[argv.index("--data") + 1] = str(tmp_path / "no-such-dir")
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_synthetic_spec(demo: DemoRun, capsys: pytest.CaptureFixture[str]) -> None:
    argv = validate_args(demo)
    argv[argv.index("--data") + 1] = "synthetic:num_classes"
    assert main(argv) == 2
    assert "key=value" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(
            "synthetic:classes=4",
        ),
        pytest.param(
            "synthetic:num_classes=four",
        ),
        "synthetic:num_classes=4,train_per_class=0",
    ],
)
def test_bad_synthetic_options_are_usage_errors(
    spec: str, demo: DemoRun, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = validate_args(demo, trigger=False)
    argv[argv.index("--data") + 1] = spec
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "internal error" not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ["--max-asr", "5"],
        ["--min-ba", "-0.5"],
        ["--max-ba-drop", "1.5"],
    ],
)
def test_invalid_policy_value(
    extra: list[str], demo: DemoRun, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(validate_args(demo, *extra)) == 2
    err = capsys.readouterr().err
    assert "Invalid GatePolicy" in err
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("p.json", '{"max_asr": 5}', "Invalid GatePolicy"),
        ("p.json", '{"max_asr": 0.1, "typo_rule": 1}', "typo_rule"),
        ("p.json", "{not json", "not valid JSON"),
        ("p.json", "[0.1]", "mapping"),
        ("p.yaml", "max_asr: 5\n", "Invalid GatePolicy"),
    ],
)
def test_invalid_policy_file(
    name: str,
    text: str,
    needle: str,
    demo: DemoRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    path = tmp_path / name
    path.write_text(text)
    assert main(validate_args(demo, "--policy", str(path))) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.slow
def test_missing_policy_file(
    demo: DemoRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(validate_args(demo, "--policy", str(tmp_path / "none.json"))) == 2
    assert "none.json" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_trigger_arguments(
    demo: DemoRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = validate_args(demo, trigger=False)
    assert main([*argv, "--trigger", str(tmp_path / "t.safetensors"), "--target", "0"]) == 2
    assert main([*argv, "--trigger", "nosuchattack:x=1", "--target", "0"]) == 2
    assert main([*argv, "--trigger", "badnets:patch_size=0", "--target", "0"]) == 2
    assert main([*argv, "--trigger", str(demo.trigger), "--target", "9"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_cuda_device_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = hk.build_model("small-cnn", 4)
    weights = hk.save_state_dict(model, tmp_path / "m.safetensors")
    argv = [
        "validate",
        "--weights",
        str(weights),
        "--arch",
        "small-cnn",
        "--num-classes",
        "4",
        "--data",
        DATA,
        "--device",
        "cuda",
    ]
    assert main(argv) == 3  # DeviceError: a runtime/environment error
    err = capsys.readouterr().err
    assert "CUDA" in err
    assert "Traceback" not in err
    argv[-1] = "tpu"
    assert main(argv) == 2  # not a device name at all: a usage error


# ----------------------------------------------------------------------------- scan

SCAN_DATA = "synthetic:num_classes=10,train_per_class=500,test_per_class=100"
# Neural Cleanse alone (the presets add the warp inversion, tested in tests/unit/test_scan_warp.py)
FAST_NC = [
    "--detectors",
    "neural-cleanse",
    "--max-images",
    "300",
    "--epochs",
    "30",
    "--option",
    "neural-cleanse:batch_size=32",
]


@pytest.fixture(scope="module")
def scan_weights(
    badnets_model: hk.attacks.BackdooredModel,
    clean_model: nn.Module,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("scan-weights")
    hk.save_state_dict(badnets_model.model, d / "badnets.safetensors")
    hk.save_state_dict(clean_model, d / "clean.safetensors")
    return {"badnets": d / "badnets.safetensors", "clean": d / "clean.safetensors"}


def scan_args(weights: Path, *extra: str) -> list[str]:
    return ["scan", "--weights", str(weights), "--arch", "small-cnn", "--device", "cpu", *extra]


@dataclass(frozen=True)
class ScanRun:
    out: Path
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def badnets_scan_run(
    scan_weights: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> ScanRun:
    """One Neural Cleanse scan of the BadNets weights (the slow part: ~30 s), shared by the
    scan test (its report and files) and the purify test (``--scan DIR``)."""
    out = tmp_path_factory.mktemp("badnets-scan") / "scan"
    stdout, stderr = io.StringIO(), io.StringIO()
    logger = logging.getLogger("hardenkit")
    handlers, level = list(logger.handlers), logger.level
    argv = scan_args(
        scan_weights["badnets"],
        "--data",
        SCAN_DATA,
        "--split",
        "test",
        *FAST_NC,
        "--out",
        str(out),
        "--output",
        "-",
    )
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    logger.handlers[:] = handlers
    logger.setLevel(level)
    return ScanRun(out=out, code=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def test_scan_flags_backdoor_exit_1(
    scan_weights: dict[str, Path], badnets_scan_run: ScanRun
) -> None:
    run, out = badnets_scan_run, badnets_scan_run.out
    assert run.code == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["verdict"] == "backdoored"
    # the target is the most anomalous flagged label (log-l1 may flag a natural one after it)
    assert report["flagged_labels"][0] == 0
    assert report["detectors"][0]["config"]["epochs"] == 30
    assert report["detectors"][0]["config"]["batch_size"] == 32
    assert report["clean_images"]["inversion"] == 300
    assert "verdict backdoored" in run.stderr
    assert (out / "report.json").is_file()
    assert (out / "flagged_label_0.png").is_file()
    assert (out / "triggers" / "label_0.safetensors").is_file()
    # the recovered trigger file feeds `hardenkit validate`
    code = main(
        [
            "validate",
            "--weights",
            str(scan_weights["badnets"]),
            "--arch",
            "small-cnn",
            "--data",
            SCAN_DATA,
            "--trigger",
            str(out / "triggers" / "label_0.safetensors"),
            "--target",
            "0",
            "--max-asr",
            "0.5",
            "--device",
            "cpu",
        ]
    )
    assert code == 1  # the recovered trigger works: ASR above 50%


def test_scan_data_free_clean_model_exit_0(
    scan_weights: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 10 random starts per class instead of 30, as in tests/integration/test_scan_detects.py
    code = main(
        scan_args(
            scan_weights["clean"],
            "--data-free",
            "--option",
            "mm-bd:starts=10",
            "--output",
            str(tmp_path / "r.json"),
        )
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["data_free"] is True
    assert [d["detector"] for d in report["detectors"]] == ["mm-bd"]
    assert report["detectors"][0]["config"]["starts"] == 10
    assert report["verdict"] != "backdoored"


def test_scan_fail_on_suspicious(
    scan_weights: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "scan.yaml"
    # suspicious_score just above 0: any score counts as at least "suspicious". A small MM-BD
    # budget (the exit-code mapping is under test, not the detector) keeps this test short.
    cfg.write_text(
        "detectors: [mm-bd]\nsuspicious_score: 0.000001\n"
        "detector_options: {mm-bd: {starts: 4, steps: 50}}\n"
    )
    code = main(
        scan_args(
            scan_weights["clean"], "--data-free", "--config", str(cfg), "--fail-on", "suspicious"
        )
    )
    assert code == 1, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--data is required"),
        (["--data-free", "--data", "synthetic"], "exclude each other"),
        (["--data-free", "--input-shape", "3,32"], "C,H,W"),
        (["--data-free", "--option", "mm-bd"], "DETECTOR:key=value"),
        (["--data-free", "--option", "neural-cleanse:lr=1"], "not in --detectors"),
        (["--data-free", "--detectors", "nope"], "unknown detector"),
        (["--data-free", "--num-classes", "7"], "check num_classes"),
        (["--data", "synthetic", "--detectors", "neural-cleanse", "--data-free"], "exclude"),
        (["--data-free", "--detectors", "neural-cleanse"], "need clean images"),
    ],
)
def test_scan_usage_errors_exit_2(
    scan_weights: dict[str, Path],
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(scan_args(scan_weights["clean"], *extra))
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err


def test_scan_too_few_clean_images_exit_2(
    scan_weights: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = "synthetic:num_classes=10,train_per_class=3,test_per_class=1"
    code = main(scan_args(scan_weights["clean"], "--data", data))
    err = capsys.readouterr().err
    assert code == 2
    assert "too few clean images per class" in err


# ----------------------------------------------------------------------------- purify


def purify_args(weights: Path, out: Path, *extra: str) -> list[str]:
    return [
        "purify",
        "--weights",
        str(weights),
        "--arch",
        "small-cnn",
        "--data",
        SCAN_DATA,
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def test_purify_with_scan_dir_and_onnx(
    scan_weights: dict[str, Path],
    badnets_scan_run: ScanRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert badnets_scan_run.code == 1  # the scan flagged the backdoor
    scan_dir = badnets_scan_run.out
    out = tmp_path / "purified"
    code = main(
        purify_args(
            scan_weights["badnets"],
            out,
            "--strategy",
            "nc-unlearn",
            "--set",
            "epochs=2",
            "--scan",
            str(scan_dir),
            "--onnx",
        )
    )
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["strategy"] == "nc-unlearn"
    assert report["config"]["epochs"] == 2
    assert report["scan"]["flagged_labels"][0] == 0  # the most anomalous: the target
    assert report["details"]["triggers"] == [0]  # only its trigger is unlearned
    assert report["status"] == "purified"
    assert (out / "model.safetensors").is_file()
    assert (out / "model.onnx").is_file()
    assert json.loads((out / "onnx_verification.json").read_text())["passed"] is True
    assert "verification PASSED" in err
    # said up front (stop 63): the repair's estimate; no scan and no recheck with --scan
    head = err[: err.index("strategy nc-unlearn: purified")]
    assert "purify: strategy nc-unlearn on " in head
    assert "estimated about" in head
    assert "the repair ~" in head
    assert "scan at most" not in head
    assert "recheck" not in head
    assert set(report["timings"]) == {"load", "scan", "repair", "measure", "recheck"}
    assert report["timings"]["scan"] == 0.0  # the scan was given
    assert not (out / "rescan").exists()  # no recheck with --scan: nothing to save


@pytest.mark.parametrize("command", ["purify", "train", "demo"])
def test_set_given_twice_adds_up(command: str) -> None:
    # argparse's default "store" kept only the last --set: `--set epochs=1 --set lr=0.0001`
    # silently ran the default 100 epochs (found by the test below, stop 54)
    from hardenkit.cli._common import parse_kv

    needs = {
        "purify": [
            "--weights",
            "w.safetensors",
            "--arch",
            "small-cnn",
            "--data",
            "d",
            "--out",
            "o",
        ],
        "train": ["--data", "d", "--out", "o"],
        "demo": [],
    }[command]
    args = build_parser().parse_args(
        [command, *needs, "--set", "epochs=1", "--set", "lr=0.0001,momentum=0.5"]
    )
    assert args.settings == "epochs=1,lr=0.0001,momentum=0.5"
    assert parse_kv(args.settings, "--set") == {"epochs": 1, "lr": 0.0001, "momentum": 0.5}
    assert build_parser().parse_args([command, *needs]).settings == ""


def test_purify_exits_1_when_a_recovered_trigger_still_works(
    scan_weights: dict[str, Path],
    badnets_scan_run: ScanRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a gentle fine-tuning keeps BA but leaves the scan's recovered trigger working: the
    # trigger guard fails it closed (before stop 54: "purified", exit 0)
    gentle = ["--strategy", "finetune", "--set", "epochs=1", "--set", "lr=0.0001"]
    scan = ["--scan", str(badnets_scan_run.out)]
    out = tmp_path / "gentle"
    assert main(purify_args(scan_weights["badnets"], out, *gentle, *scan)) == 1
    err = capsys.readouterr().err
    assert "BACKDOOR REMAINS" in err
    assert "not a trusted repair" in err
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "backdoor-remains"
    assert report["trigger_guard"]["passed"] is False
    assert report["trigger_guard"]["added_asr"] > 0.10
    assert (out / "model.safetensors").is_file()  # nothing is lost
    loose = tmp_path / "loose"
    code = main(
        purify_args(scan_weights["badnets"], loose, *gentle, *scan, "--max-trigger-asr", "1")
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((loose / "report.json").read_text())["status"] == "purified"


def test_purify_finetune_config_file(
    scan_weights: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "ft.json"
    cfg.write_text('{"epochs": 1, "batch_size": 128}')
    code = main(
        purify_args(
            scan_weights["clean"], tmp_path / "o", "--strategy", "finetune", "--config", str(cfg)
        )
    )
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["config"]["batch_size"] == 128
    assert report["scan"] is None
    assert "purify: strategy finetune on " in err
    assert "estimated about" in err


def test_strategies_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["strategies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[1] for line in lines if line.startswith("strategy")]
    assert listed == hk.purify.STRATEGIES.names()
    assert any(line.startswith("detector  mm-bd") and "data-free" in line for line in lines)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "nope"], "unknown purification strategy"),
        (["--strategy", "mcl", "--set", "temperature=-1"], "temperature"),
        (["--strategy", "mcl", "--set", "nope"], "key=value"),
        (["--scan", "/nonexistent"], "not a directory"),
        (["--holdout-fraction", "2"], "--holdout-fraction"),
    ],
)
def test_purify_usage_errors_exit_2(
    scan_weights: dict[str, Path],
    extra: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(purify_args(scan_weights["clean"], tmp_path / "o", *extra))
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err


def test_demo_unknown_strategy_exits_2_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--strategy", "nope", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 2
    assert "nope" in capsys.readouterr().err


# ----------------------------------------------------------------- grayscale models (stop 55)


def _gray_folder(root: Path, classes: int = 4, per_class: int = 6) -> Path:
    """An ImageFolder of 8-bit grayscale PNG files (16x16), as a grayscale dataset has them."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            px = torch.randint(0, 256, (16, 16), generator=g, dtype=torch.uint8)
            Image.fromarray(px.numpy()).save(root / f"c{c}" / f"{i}.png")
    return root


def test_cli_reads_grayscale_images_for_a_one_channel_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Image files are read as RGB; a model whose first layer takes one channel used to
    crash with torch's "expected input ... to have 1 channels" (exit 3, "runtime error")."""
    torch.manual_seed(0)
    model = hk.build_model("small-cnn", 4, in_channels=1)
    hk.save_state_dict(model, tmp_path / "w.safetensors")
    data = _gray_folder(tmp_path / "gray")
    argv = ["validate", "--weights", str(tmp_path / "w.safetensors"), "--arch", "small-cnn"]
    argv += ["--num-classes", "4", "--arch-args", "in_channels=1", "--data", str(data)]
    argv += ["--device", "cpu", "--skip-chance-check", "--output", "-"]
    code, report, err = run_json(argv, capsys)
    assert code in (0, 1), err  # measured (a random model's gate verdict is beside the point)
    assert "--data: the model takes 1-channel images: read as grayscale" in err
    back = ValidationReport.model_validate(report)
    assert back.samples == 24
    # the files' own gray values reach the model: the same BA as on the 1-channel tensors
    import numpy as np
    from PIL import Image

    files = [f for c in range(4) for f in sorted((data / f"c{c}").iterdir())]
    x = torch.stack([torch.from_numpy(np.array(Image.open(f))) for f in files])
    y = torch.arange(4).repeat_interleave(6)
    with torch.no_grad():
        ba = float((model.eval()(x[:, None].float() / 255).argmax(1) == y).float().mean())
    assert back.ba == pytest.approx(ba)


def test_cli_model_that_takes_neither_channel_count_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hk.save_state_dict(hk.build_model("small-cnn", 4, in_channels=2), tmp_path / "w.safetensors")
    data = _gray_folder(tmp_path / "gray")
    argv = ["validate", "--weights", str(tmp_path / "w.safetensors"), "--arch", "small-cnn"]
    argv += ["--num-classes", "4", "--arch-args", "in_channels=2", "--data", str(data)]
    code = main([*argv, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "does not run on the --data images (3x16x16, also tried as 1 channel(s))" in err
    assert "runtime error" not in err


def test_data_free_scan_of_a_grayscale_model_infers_its_input_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--input-shape`` defaulted to 3,32,32: a data-free scan of a 1-channel model crashed."""
    torch.manual_seed(0)
    hk.save_state_dict(hk.build_model("small-cnn", 4, in_channels=1), tmp_path / "w.safetensors")
    argv = ["scan", "--weights", str(tmp_path / "w.safetensors"), "--arch", "small-cnn"]
    argv += ["--num-classes", "4", "--arch-args", "in_channels=1", "--data-free"]
    argv += ["--option", "mm-bd:starts=2", "--option", "mm-bd:steps=20", "--device", "cpu"]
    code = main([*argv, "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code in (0, 1), err  # scanned (a random model's verdict is beside the point)
    assert "--input-shape not given: using 1,32,32" in err
    assert json.loads((tmp_path / "r.json").read_text())["data_free"] is True


def test_to_luma_is_pils_grayscale_conversion() -> None:
    import numpy as np
    from PIL import Image

    from hardenkit.cli._common import to_luma

    rgb = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    ours = to_luma(rgb)
    assert ours.shape == (3, 1, 8, 8)
    for i in range(3):
        pil = np.asarray(Image.fromarray(rgb[i].permute(1, 2, 0).numpy()).convert("L"))
        assert np.array_equal(ours[i, 0].numpy(), pil)
    gray = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(to_luma(gray.expand(-1, 3, -1, -1)), gray)  # gray files come back exact

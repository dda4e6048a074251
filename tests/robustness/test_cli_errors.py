"""The CLI never answers a user error with a traceback, and its exit codes match the docs.

Every case runs ``hardenkit.cli.main`` in-process and checks the exit code and that stderr is
one line ``hardenkit: error: ...`` (at most two with the debug-log pointer) naming the
offending file or flag. Exit codes: 0 ok, 1 a check ran and failed, 2 usage/config/input,
3 runtime/environment, 70 internal error, 130 interrupted.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import hardenkit as hk
from hardenkit.cli import _common, build_parser, main
from hardenkit.config import Normalization, RuntimeConfig
from hardenkit.errors import ConfigError, DeviceError, ExecutionProviderError, ParityError

DOCS = Path(__file__).resolve().parents[2] / "docs"
DATA = "synthetic:num_classes=4,train_per_class=10,test_per_class=5"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = hk.build_model("small-cnn", 4)
    return hk.save_state_dict(model, tmp_path_factory.mktemp("w") / "model.safetensors")


def model_args(weights: Path) -> list[str]:
    return ["--weights", str(weights), "--arch", "small-cnn", "--num-classes", "4"]


def validate_args(weights: Path, *extra: str) -> list[str]:
    return ["validate", *model_args(weights), "--data", DATA, "--device", "cpu", *extra]


def scan_args(weights: Path, *extra: str) -> list[str]:
    return ["scan", *model_args(weights), "--device", "cpu", "--data-free", *extra]


def purify_args(weights: Path, out: Path, *extra: str) -> list[str]:
    return ["purify", *model_args(weights), "--data", DATA, "--device", "cpu", "--out", str(out),
            "--strategy", "finetune", *extra]  # fmt: skip


def export_args(weights: Path, out: Path, *extra: str) -> list[str]:
    return ["export", *model_args(weights), "--output", str(out), *extra]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_error(err: str, *needles: str, max_lines: int = 1) -> list[str]:
    """One ``hardenkit: error:`` line (``max_lines`` at most), no traceback, naming needles."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= max_lines, err
    assert lines[0].startswith("hardenkit: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines


# ----------------------------------------------------------------------------- policy files


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("bad.yaml", b"min_ba: 0.5\nmax_asr: [0.1\n", ["not valid YAML", "line 3, column 1"]),
        ("tabs.yml", b"max_asr: 0.1\n\tmin_ba: 0.5\n", ["not valid YAML", "line 2"]),
        ("bad.json", b'{"max_asr": 0.1,}', ["not valid JSON", "line 1, column 17"]),
        ("latin1.json", b"\xff\xfe\x00bad", ["not UTF-8", "0xff"]),
        ("latin1.yaml", b"\xff\xfe\x00bad", ["not UTF-8", "0xff"]),
        ("list.json", b"[0.1, 0.2]", ["must hold a mapping", "got a list"]),
        ("list.yaml", b"- 0.1\n", ["must hold a mapping", "got a list"]),
        ("empty.yaml", b"", ["must hold a mapping", "empty file"]),
        ("dup.json", b'{"max_asr": 0.01, "max_asr": 0.5}', ["duplicate key 'max_asr'"]),
        ("dup.yaml", b"max_asr: 0.01\nmax_asr: 0.5\n", ["duplicate key 'max_asr'", "line 2"]),
        ("nan.json", b'{"max_asr": NaN}', ["NaN is not a finite number"]),
        ("nan.yaml", b"max_asr: .nan\n", ["max_asr is nan"]),
    ],
)
def test_unreadable_policy_file_exits_2(
    name: str,
    content: bytes,
    needles: list[str],
    weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    code, _, err = run(validate_args(weights, "--policy", str(path)), capsys)
    assert code == 2, err
    assert_error(err, "policy file", str(path), *needles)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_policy_path_that_is_not_a_file_exits_2(
    kind: str, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.json"
    if kind == "directory":
        path.mkdir()
    code, _, err = run(validate_args(weights, "--policy", str(path)), capsys)
    assert code == 2, err
    assert_error(err, str(path), "does not exist" if kind == "missing" else "is a directory")


def test_scan_and_purify_config_files_exit_2(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_yaml = tmp_path / "scan.yaml"
    bad_yaml.write_text("detectors: [mm-bd\n")
    code, _, err = run(scan_args(weights, "--config", str(bad_yaml)), capsys)
    assert code == 2, err
    assert_error(err, "scan config file", str(bad_yaml), "not valid YAML", "line 2")

    not_utf8 = tmp_path / "strategy.json"
    not_utf8.write_bytes(b"\xff\xfe\x00bad")
    code, _, err = run(purify_args(weights, tmp_path / "o", "--config", str(not_utf8)), capsys)
    assert code == 2, err
    assert_error(err, "strategy config file", str(not_utf8), "not UTF-8")


def test_other_unreadable_inputs_exit_2(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "trigger.bin"  # an existing file is read as a trigger file (docs)
    junk.write_bytes(b"\xff\xfe\x00bad")
    code, _, err = run(validate_args(weights, "--trigger", str(junk), "--target", "0"), capsys)
    assert code == 2, err
    assert_error(err, str(junk), "not a readable trigger file")

    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(b"not an archive")
    argv = validate_args(weights)
    argv[argv.index("--data") + 1] = str(archive)
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert_error(err, str(archive))

    corrupt_scan = tmp_path / "scan"
    corrupt_scan.mkdir()
    (corrupt_scan / "report.json").write_bytes(b"\xff{not json")
    code, _, err = run(purify_args(weights, tmp_path / "o", "--scan", str(corrupt_scan)), capsys)
    assert code == 2, err
    assert_error(err, "report.json", "not a valid scan report")

    code, _, err = run(
        purify_args(weights, tmp_path / "o", "--scan", str(tmp_path / "missing")), capsys
    )
    assert code == 2, err
    assert_error(err, "--scan", "not a directory")


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("command", ["scan", "export"])
@pytest.mark.parametrize(
    "shape", ["3,32", "a,b,c", "0,32,32", "3x32x32", "", "3,32,32,1", "-3,32,32"]
)
def test_malformed_input_shape_exits_2(
    command: str,
    shape: str,
    weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flag = f"--input-shape={shape}"  # '=' so that '-3,32,32' is a value, not an option
    if command == "scan":
        argv = scan_args(weights, flag)
    else:
        argv = export_args(weights, tmp_path / "m.onnx", flag)
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert_error(err, "--input-shape", "C,H,W", "3,32,32", f"hardenkit {command} --help")


def test_input_shape_accepts_the_documented_spelling() -> None:
    assert _common.input_shape("3,32,32") == (3, 32, 32)
    assert _common.input_shape(" 1, 28 ,28") == (1, 28, 28)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["validate", "--batch-size", "0"], "--batch-size"),
        (["validate", "--num-classes", "1"], "--num-classes"),
        (["validate", "--num-classes", "ten"], "--num-classes"),
        (["scan", "--epochs", "0"], "--epochs"),
        (["scan", "--epochs", "-1"], "--epochs"),
        (["scan", "--max-images", "0"], "--max-images"),
        (["scan", "--seed", "-1"], "--seed"),
        (["purify", "--seed", "-2"], "--seed"),
        (["purify", "--max-ba-drop", "nan"], "--max-ba-drop"),
        (["purify", "--max-ba-drop", "1.5"], "--max-ba-drop"),
        (["export", "--max-batches", "0"], "--max-batches"),
        (["export", "--batch-size", "-4"], "--batch-size"),
        (["export", "--batch-size-static", "0"], "--batch-size-static"),
        (["demo", "--classes", "1"], "--classes"),
        (["demo", "--epochs", "0"], "--epochs"),
        (["models", "--bogus"], "--bogus"),
        (["--log-level", "LOUD", "models"], "--log-level"),
    ],
)
def test_bad_flag_values_are_one_line_usage_errors(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(argv, capsys)  # argparse rejects them before anything runs
    assert code == 2, err
    assert_error(err, f"argument {flag}" if flag != "--bogus" else flag)


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--trigger", "badnets", "--target", "4"], ["--target 4", "4-class"]),
        (["--trigger", "badnets", "--target", "-1"], ["--target -1"]),
        (["--trigger", "badnets", "--target", "one"], ["--target", "'one'"]),
        (["--arch-args", "=3"], ["--arch-args", "empty key"]),
        (["--arch-args", "width=nan"], ["--arch-args", "not a finite number"]),
        (["--arch-args", "width"], ["--arch-args", "key=value"]),
        (["--trigger", "badnets:patch_size=inf", "--target", "0"], ["--trigger", "finite"]),
    ],
)
def test_bad_values_in_validate_exit_2(
    extra: list[str],
    needles: list[str],
    weights: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(validate_args(weights, *extra), capsys)
    assert code == 2, err
    assert_error(err, *needles)


VERIFY_TARGET_7 = ["--verify", "--data", DATA, "--trigger", "badnets", "--target", "7"]


@pytest.mark.parametrize(
    ("argv_fn", "needles"),
    [
        (lambda w, t: scan_args(w, "--option", "mm-bd:steps=nan"), ["--option"]),
        (lambda w, t: purify_args(w, t, "--set", "lr=-inf"), ["--set", "lr=-inf"]),
        (lambda w, t: export_args(w, t / "m.onnx", "--metadata", "=x"), ["--metadata"]),
        (lambda w, t: export_args(w, t / "m.onnx", *VERIFY_TARGET_7), ["--target 7"]),
    ],
)
def test_bad_key_values_exit_2(
    argv_fn: Any,
    needles: list[str],
    weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(argv_fn(weights, tmp_path), capsys)
    assert code == 2, err
    assert_error(err, *needles)


# ----------------------------------------------------------------------------- holdout


def test_holdout_fraction_range_matches_the_purifier(weights: Path) -> None:
    """The CLI accepts exactly what ``Purifier`` accepts: 0 <= holdout_fraction < 1."""
    model = hk.build_model("small-cnn", 4)
    for value in ["0", "0.0", "0.1", "0.5", "0.99"]:
        assert _common.holdout_fraction(value) == float(value)
        hk.Purifier(model, "finetune", holdout_fraction=float(value))
    for value in ["1", "1.5", "-0.1"]:
        with pytest.raises(Exception, match=r"\[0, 1\)"):
            _common.holdout_fraction(value)
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            hk.Purifier(model, "finetune", holdout_fraction=float(value))
    for value in ["nan", "inf", "abc"]:
        with pytest.raises(Exception, match="fraction"):
            _common.holdout_fraction(value)


def test_holdout_fraction_zero_is_accepted(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = purify_args(weights, tmp_path / "o", "--holdout-fraction", "0")
    assert build_parser().parse_args(argv).holdout_fraction == 0.0
    # The Purifier is built (and accepts 0) before --scan is checked: stop the run there.
    code, _, err = run([*argv, "--scan", str(tmp_path / "missing")], capsys)
    assert code == 2, err
    assert_error(err, "--scan")
    assert "--holdout-fraction" not in err


@pytest.mark.parametrize("value", ["1", "-0.1", "nan", "2", "ten"])
def test_holdout_fraction_outside_the_range_exits_2(
    value: str, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(purify_args(weights, tmp_path / "o", f"--holdout-fraction={value}"), capsys)
    assert code == 2, err
    assert_error(err, "argument --holdout-fraction", "[0, 1)" if value != "ten" else "fraction")


# ----------------------------------------------------------------------------- environment


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
@pytest.mark.parametrize("command", ["validate", "scan", "purify", "demo"])
def test_cuda_without_cuda_exits_3(
    command: str, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if command == "validate":
        argv = validate_args(weights)
    elif command == "scan":
        argv = scan_args(weights)
    elif command == "demo":  # fails before its plan line (stop 63), before any training
        argv = ["demo", "--device", "cpu", "--out", str(tmp_path / "d")]
    else:
        argv = purify_args(weights, tmp_path / "o")
    argv[argv.index("--device") + 1] = "cuda"
    code, _, err = run(argv, capsys)
    assert code == 3 == DeviceError.exit_code, err
    assert_error(err, "CUDA")


def test_keyboard_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hardenkit.cli as cli

    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_list_models", interrupted)
    code, _, err = run(["models"], capsys)
    assert code == 130 == _common.EXIT_INTERRUPTED
    assert err.strip() == "hardenkit: interrupted"


def test_a_bug_is_still_an_internal_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hardenkit.cli as cli

    def buggy(args: Any) -> int:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli, "_list_models", buggy)
    code, _, err = run(["models"], capsys)
    assert code == 70
    assert "Traceback" in err
    assert "internal error" in err


# ----------------------------------------------------------------------------- export


FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn


    class DataDependent(nn.Module):
        def __init__(self, num_classes: int = 4) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 8 * 8, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent Python control flow: torch.export fails
                return self.fc(x.flatten(1))
            return -self.fc(x.flatten(1))


    def build(num_classes: int = 4) -> nn.Module:
        return DataDependent(num_classes)
    """
)


@pytest.fixture
def untraceable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    module = tmp_path / "hk_untraceable_model.py"
    module.write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential()  # only for the state dict below
    model.add_module("fc", torch.nn.Linear(3 * 8 * 8, 4))
    w = hk.save_state_dict(model, tmp_path / "w.safetensors")
    out = str(tmp_path / "m.onnx")
    return ["export", "--weights", str(w), "--arch", "hk_untraceable_model:build",
            "--num-classes", "4", "--input-shape", "3,8,8", "-o", out]  # fmt: skip


def test_failed_export_prints_a_short_message(
    untraceable: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(untraceable, capsys)
    assert code == 3, err
    lines = assert_error(err, "torch.onnx.export", "DataDependent", max_lines=2)
    assert len(lines[0]) < 800
    assert lines[-1] == f"hardenkit: {_common.DEBUG_LOG_NOTE}"
    assert "def forward" not in err + out  # no traced graph on the console
    assert "GraphModule" not in err + out


def test_failed_export_full_output_is_in_the_debug_log(
    untraceable: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["--log-level", "DEBUG", "--log-format", "json", *untraceable], capsys)
    assert code == 3
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    by_name = {e["event"]: e for e in events}
    assert "ExportError" in by_name["cli.error"]["traceback"]
    # what the exporter printed (torch 2.13: the traced graphs) is logged, not shown
    if "cli.exporter_output" in by_name:
        assert by_name["cli.exporter_output"]["step"] == "export.onnx_export"
        assert by_name["cli.exporter_output"]["output"].strip()
    assert not [line for line in err.splitlines() if "def forward" in line and "{" not in line]


def test_format_error_cuts_long_multiline_messages() -> None:
    from hardenkit.errors import ExportError

    exc = ExportError("first line\n" + "graph line\n" * 200, hint="do this")
    lines = _common.format_error(exc)
    assert lines[0] == "hardenkit: error: first line Fix: do this"
    assert "debug log" in lines[1]
    try:
        raise ExportError("x" * 5000) from RuntimeError("exporter")
    except ExportError as raised:
        lines = _common.format_error(raised)
    assert len(lines[0]) <= len("hardenkit: error: ") + _common.MAX_EXPORT_MESSAGE
    assert lines[1] == f"hardenkit: {_common.DEBUG_LOG_NOTE}"
    assert _common.format_error(ConfigError("short", hint="fix")) == [
        "hardenkit: error: short Fix: fix"
    ]


def test_failed_onnx_verification_exits_1(
    weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A verification that ran and found a parity failure is a failed check: exit 1."""
    from hardenkit.cli import export_cmd

    real_verify = export_cmd.verify_onnx

    def failing_verify(*args: Any, **kwargs: Any) -> Any:
        report = real_verify(*args, **kwargs)
        checks = [c.model_copy(update={"passed": False}) for c in report.checks]
        return report.model_copy(update={"checks": checks, "passed": False})

    monkeypatch.setattr(export_cmd, "verify_onnx", failing_verify)
    report = tmp_path / "r.json"
    argv = export_args(weights, tmp_path / "m.onnx", "--verify", "--data", DATA,
                       "--providers", "CPUExecutionProvider", "--report", str(report))  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 1 == _common.EXIT_GATE_FAILED, err
    assert "failed verification" in err
    assert "Traceback" not in err
    assert json.loads(report.read_text())["passed"] is False


# ----------------------------------------------------------------------------- documentation


def _doc_exit_table() -> dict[int, str]:
    text = (DOCS / "cli.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.*) \|$", section, flags=re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def test_documented_exit_codes_equal_the_code() -> None:
    table = _doc_exit_table()
    constants = {
        v for k, v in vars(_common).items() if k.startswith("EXIT_") and isinstance(v, int)
    }
    assert set(table) == constants == {0, 1, 2, 3, 70, 130}
    # the semantic rule, stated in the table and true of the code
    assert "ParityError" in table[_common.EXIT_GATE_FAILED]
    assert "--device cuda" in table[_common.EXIT_RUNTIME]
    assert "ExecutionProviderError" in table[_common.EXIT_RUNTIME]
    assert DeviceError.exit_code == ExecutionProviderError.exit_code == _common.EXIT_RUNTIME
    assert _common.run_command(_raise(ParityError("x"))) == _common.EXIT_GATE_FAILED
    assert _common.run_command(_raise(ExecutionProviderError("x"))) == _common.EXIT_RUNTIME
    assert _common.run_command(_raise(DeviceError("x"))) == _common.EXIT_RUNTIME
    assert _common.run_command(_raise(ConfigError("x"))) == _common.EXIT_USAGE
    text = (DOCS / "cli.md").read_text()
    assert "configuration error (2)" not in text  # --device cuda used to be documented as 2
    export_section = text.split("## `hardenkit export`", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"verification that ran and failed[^.]*exits 1", export_section)
    # the --help epilog and the module docstring list the same codes
    epilog = " ".join(build_parser().format_help().split())
    import hardenkit.cli as cli

    for code in table:
        assert re.search(rf"\b{code}\b", epilog), code
        assert re.search(rf"\b{code}\b", cli.__doc__ or ""), code


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (FileNotFoundError(2, "No such file or directory", "out/x.json"), 2),
        (FileExistsError(17, "File exists", "out"), 2),  # --out names an existing file
        (NotADirectoryError(20, "Not a directory", "file/x"), 2),
        (PermissionError(13, "Permission denied", "/root/x"), 2),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2),
        (MemoryError(), 3),
        (OSError(28, "No space left on device"), 3),
        (RuntimeError("CUDA error: device-side assert"), 3),
    ],
)
def test_run_command_maps_builtin_errors(
    exc: BaseException, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _common.run_command(_raise(exc)) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("hardenkit: ")


def _raise(exc: BaseException) -> Any:
    def fn() -> int:
        raise exc

    return fn


def test_documented_holdout_range() -> None:
    text = (DOCS / "cli.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `--holdout-fraction"))
    assert "[0, 1)" in row
    assert "(0, 1)" not in text


def test_input_normalization_spellings_match_the_docs() -> None:
    """docs/cli.md and docs/configuration.md: a Normalization, a dict or a (mean, std) pair."""
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    expected = Normalization(mean=tuple(mean), std=tuple(std))
    for value in (expected, {"mean": mean, "std": std}, (mean, std), [mean, std]):
        assert RuntimeConfig(input_normalization=value).input_normalization == expected
    for bad in ({"mean": [0.5], "std": [0.0]}, {"mean": [0.5, 0.5], "std": [0.2]}, (mean,)):
        with pytest.raises(ConfigError):
            RuntimeConfig(input_normalization=bad)
    for doc in ("cli.md", "configuration.md"):
        text = (DOCS / doc).read_text()
        assert "input_normalization" in text
        assert '{"mean": [...], "std": [...]}' in text
        assert "(mean, std)" in text
    assert not any(math.isnan(x) for x in expected.mean)

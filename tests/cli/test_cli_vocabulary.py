"""One CLI vocabulary: ``--out DIR``, ``--report PATH``, ``--output``/``-o FILE``; defaults in
``--help``; ``--image-size``; the architecture read from the weights file; a fast start-up.

Run in-process through ``hardenkit.cli.main`` (one subprocess checks the imports).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import hardenkit as hk
from hardenkit.cli import build_parser, main
from hardenkit.cli._common import load_data_arg
from hardenkit.io import model_metadata, read_model_metadata, save_state_dict

DATA = "synthetic:num_classes=4,train_per_class=10,test_per_class=5"
LENIENT = ["--max-asr", "1.0", "--min-ba", "0.0", "--skip-chance-check"]  # untrained models


def _model(num_classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return hk.build_model("small-cnn", num_classes)


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class small-cnn saved without metadata (needs --arch/--num-classes)."""
    return save_state_dict(_model(), tmp_path_factory.mktemp("w") / "plain.safetensors")


@pytest.fixture(scope="module")
def meta_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with ``hardenkit.arch``/``num_classes``/``arch_args`` metadata."""
    path = tmp_path_factory.mktemp("w") / "meta.safetensors"
    return save_state_dict(_model(), path, metadata=model_metadata("small-cnn", 4))


def _validate(weights: Path, *extra: str, model: bool = True) -> list[str]:
    args = ["validate", "--weights", str(weights), "--data", DATA, "--device", "cpu"]
    if model:
        args += ["--arch", "small-cnn", "--num-classes", "4"]
    return [*args, *LENIENT, *extra]


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(action.choices)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- vocabulary


def test_report_writes_the_json_report(
    plain_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_validate(plain_weights, "--report", "-")) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["report_type"] == "validation"
    assert "deprecated" not in captured.err
    path = tmp_path / "v.json"
    assert main(_validate(plain_weights, "--report", str(path))) == 0
    assert json.loads(path.read_text())["report_type"] == "validation"


@pytest.mark.parametrize("old", ["--output", "-o"])
def test_old_report_spellings_still_work_and_warn(
    old: str, plain_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_validate(plain_weights, old, "-")) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["report_type"] == "validation"
    warnings = [line for line in captured.err.splitlines() if "deprecated" in line]
    assert warnings == [f"hardenkit: warning: {old} is deprecated, use --report"]


@pytest.mark.parametrize("old", ["--output", "-o"])
def test_scan_old_report_spelling_shares_the_dest(
    old: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["scan", "--weights", "w.safetensors", "--data-free", old, "r.json"]
    args = build_parser().parse_args(argv)
    assert args.report == Path("r.json")
    assert f"{old} is deprecated, use --report" in capsys.readouterr().err
    assert build_parser().parse_args(argv[:-2]).report is None  # the alias sets no default


def test_export_output_is_the_onnx_file_not_deprecated(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["export", "--weights", "w.safetensors", "-o", "m.onnx"])
    assert args.output == Path("m.onnx")
    assert args.report is None
    assert "deprecated" not in capsys.readouterr().err


def test_every_command_writing_a_directory_uses_out() -> None:
    parser = build_parser()
    for name in ("demo", "scan", "purify"):
        args = parser.parse_args([name, *_required(name), "--out", "d"])
        assert args.out == Path("d")


def _required(name: str) -> list[str]:
    return {
        "demo": [],
        "scan": ["--weights", "w.safetensors", "--data-free"],
        "purify": ["--weights", "w.safetensors", "--data", "synthetic"],
    }[name]


@pytest.mark.parametrize("command", _subcommands())
def test_help_of_every_subcommand_shows_defaults(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    options = [a for a in _parser(command)._actions if a.option_strings and a.help]
    with_default = [
        a
        for a in options
        if a.default not in (None, False, "", [], "==SUPPRESS==") and a.help != "==SUPPRESS=="
    ]
    assert text.count("(default: ") >= len(with_default), text
    assert not re.search(r"\(default [^:]", text), "a help text still spells its default"
    assert "(default: None)" not in text


def _parser(command: str) -> object:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices[command]  # type: ignore[attr-defined]


def test_help_shows_specific_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "split folder inside --data (default: train)" in text
    # --input-shape is inferred from the model since stop 56; its help says how
    assert "(default: 3,32,32 or 1,32,32, whichever the model runs on" in text
    assert "(default: backdoored)" in text
    # the detectors every preset runs (stop 58: the help said neural-cleanse,warp since stop 50)
    from hardenkit.cli.scan_cmd import DEFAULT_DETECTORS_TEXT
    from hardenkit.scan.budget import DEFAULT_DETECTORS

    assert ",".join(DEFAULT_DETECTORS) == DEFAULT_DETECTORS_TEXT
    assert f"default: {DEFAULT_DETECTORS_TEXT} (mm-bd with --data-free)" in text
    assert "--output" not in text  # deprecated aliases are hidden (and documented)
    assert main(["--help"]) == 0
    assert "(default: auto)" in capsys.readouterr().out


def test_help_formatter_spells_tuple_defaults() -> None:
    from hardenkit.cli._common import CliParser

    p = CliParser(prog="x")
    p.add_argument("--shape", default=(3, 32, 32), help="C,H,W")
    p.add_argument("--size", nargs=2, default=(24, 20), help="H W")
    text = " ".join(p.format_help().split())
    assert "C,H,W (default: 3,32,32)" in text
    assert "H W (default: 24 20)" in text


def test_purify_default_strategy_matches_the_library() -> None:
    from hardenkit.cli import purify_cmd

    assert purify_cmd.DEFAULT_STRATEGY == hk.purify.DEFAULT_STRATEGY


# ----------------------------------------------------------------------------- --image-size


def _mixed_size_folder(root: Path) -> Path:
    sizes = [(32, 32), (40, 36), (24, 28)]
    for c, color in enumerate([(255, 0, 0), (0, 255, 0)]):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.new("RGB", (w, h), color).save(d / f"{i}.png")
    return root


def test_image_size_resizes_mixed_size_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _mixed_size_folder(tmp_path / "imgs")
    data = load_data_arg(str(folder), split="test", image_size=(32, 32))
    assert data.image_shape == (3, 32, 32)
    assert len(data) == 6
    weights = save_state_dict(_model(2), tmp_path / "m.safetensors")
    argv = ["validate", "--weights", str(weights), "--arch", "small-cnn", "--num-classes", "2",
            "--data", str(folder), "--device", "cpu", *LENIENT]  # fmt: skip
    assert main(argv) == 2  # mixed sizes without --image-size: an input error
    err = capsys.readouterr().err
    assert "different sizes" in err
    assert "--image-size H W" in err  # the CLI flag, not the Python keyword
    assert main([*argv, "--image-size", "32", "32"]) == 0


def test_image_size_is_on_every_command_that_reads_images() -> None:
    for command in ("scan", "purify", "validate", "export"):
        assert any("--image-size" in a.option_strings for a in _parser(command)._actions)  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [["0", "32"], ["32"], ["a", "b"]])
def test_bad_image_size_is_a_usage_error(
    bad: list[str], plain_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_validate(plain_weights), "--image-size", *bad]) == 2
    assert "--image-size" in capsys.readouterr().err


# ----------------------------------------------------------------------------- metadata


def test_read_model_metadata(meta_weights: Path, plain_weights: Path, tmp_path: Path) -> None:
    meta = read_model_metadata(meta_weights)
    assert meta["hardenkit.arch"] == "small-cnn"
    assert meta["hardenkit.num_classes"] == "4"
    assert json.loads(meta["hardenkit.arch_args"]) == {}
    assert read_model_metadata(plain_weights) == {}
    pt = tmp_path / "m.pt"
    torch.save(_model().state_dict(), pt)
    assert read_model_metadata(pt) == {}


def test_validate_and_export_read_the_arch_from_the_weights(
    meta_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_validate(meta_weights, "--report", "-", model=False)) == 0
    assert json.loads(capsys.readouterr().out)["report_type"] == "validation"
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(meta_weights), "--output", str(onnx_path)]) == 0
    assert onnx_path.is_file()


def test_explicit_flags_win_over_the_metadata(
    meta_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the file records 4 classes; an explicit --num-classes 5 is used (and does not fit)
    assert main([*_validate(meta_weights, model=False), "--num-classes", "5"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_missing_arch_and_metadata_exits_2_with_a_hint(
    plain_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_validate(plain_weights, model=False)) == 2
    err = capsys.readouterr().err
    assert err.startswith("hardenkit: error: --arch is required")
    assert "Fix: pass --arch" in err


def test_purify_records_the_arch_in_its_model(
    plain_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p"
    argv = ["purify", "--weights", str(plain_weights), "--arch", "small-cnn", "--num-classes",
            "4", "--data", DATA, "--strategy", "finetune", "--set", "epochs=1",
            "--device", "cpu", "--out", str(out), "--report", str(tmp_path / "r.json")]  # fmt: skip
    assert main(argv) in (0, 1)  # 1: an untrained model may come out 'degraded'
    meta = read_model_metadata(out / "model.safetensors")
    assert meta["hardenkit.arch"] == "small-cnn"
    assert meta["hardenkit.num_classes"] == "4"
    assert json.loads((tmp_path / "r.json").read_text())["report_type"] == "purification"
    capsys.readouterr()
    # and the repaired model validates without --arch/--num-classes
    assert main(_validate(out / "model.safetensors", model=False)) == 0


# ----------------------------------------------------------------------------- strategies


def test_strategies_table_aligns_long_names(capsys: pytest.CaptureFixture[str]) -> None:
    long_name = "a-strategy-with-a-very-long-plugin-name"

    class Dummy:
        needs_trigger = False
        uses_scan = False

    hk.purify.STRATEGIES.register(long_name, Dummy)  # type: ignore[arg-type]
    try:
        assert main(["strategies"]) == 0
    finally:
        hk.purify.STRATEGIES.unregister(long_name)
    lines = capsys.readouterr().out.splitlines()
    assert any(long_name in line for line in lines)
    third = {line.index(line.split()[2]) for line in lines}
    assert len(third) == 1, lines  # the third column starts at the same offset on every line
    assert all(line.split()[1] in line[: min(third)] for line in lines)


# ----------------------------------------------------------------------------- start-up, doctor


def test_importing_the_cli_does_not_import_torch() -> None:
    code = "import hardenkit.cli, sys; sys.exit('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, "import hardenkit.cli imported torch"


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom hardenkit.cli import main\n"
        "for argv in (['--help'], ['scan', '--help'], ['export', '--help']):\n"
        "    assert main(argv) == 0\n"
        "sys.exit('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_lazy_package_keeps_the_public_names() -> None:
    code = (
        "import sys, hardenkit as hk\n"
        "assert 'torch' not in sys.modules\n"
        "from hardenkit import Purifier, data\n"
        "assert hk.Purifier is Purifier and hk.data is data\n"
        "assert all(hasattr(hk, n) for n in hk.__all__)\n"
        "assert set(hk.__all__) <= set(dir(hk))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError):
        _ = hk.no_such_name


def test_doctor_keeps_ort_library_errors_off_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    assert main(["doctor"]) == 0
    out, err = capfd.readouterr()
    assert "[E:onnxruntime" not in err
    assert "Failed to load library" not in err
    assert "[W:onnxruntime" not in err
    providers = ort.get_available_providers()
    if not torch.cuda.is_available() and "CUDAExecutionProvider" in providers:
        assert "info: CUDAExecutionProvider is not usable here" in out
        assert "CUDAExecutionProvider is listed" not in out  # not reported as an issue
    assert main(["doctor", "--format", "json"]) == 0
    out, err = capfd.readouterr()
    data = json.loads(out)
    assert "[E:onnxruntime" not in err
    if not torch.cuda.is_available() and "CUDAExecutionProvider" in providers:
        assert any(n.startswith("CUDAExecutionProvider is not usable") for n in data["notes"])

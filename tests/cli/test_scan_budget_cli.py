"""``hardenkit scan --budget``: presets, seconds, the up-front estimate, fail-closed cut-offs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardenkit.cli import main
from hardenkit.io import model_metadata, save_state_dict
from hardenkit.testing import tiny_backdoored_model

DATA = "synthetic:num_classes=4,train_per_class=20,test_per_class=5"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fx = tiny_backdoored_model(epochs=2)
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    return save_state_dict(fx.backdoored.model, path, metadata=model_metadata("small-cnn", 4))


def test_estimate_is_printed_first_and_a_cut_short_clean_scan_exits_1(
    weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["scan", "--weights", str(weights), "--data", DATA, "--budget", "0.001"])
    err = capsys.readouterr().err
    first = err.strip().splitlines()[0]
    assert first.startswith(
        "scan: budget 0.001 (neural-cleanse, warp, prediction-share, signal; 300 images x 30 "
        "epochs per label, capped at 0s)"
    )
    assert "estimated at most" in first
    assert "cut the scan short" in err or "backdoored" in err
    assert code == 1


def test_unknown_budget_is_a_usage_error(weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--weights", str(weights), "--data", DATA, "--budget", "fast"]) == 2
    assert "unknown scan budget 'fast'" in capsys.readouterr().err


def test_quick_preset_runs(weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "scan",
            "--weights",
            str(weights),
            "--data",
            DATA,
            "--budget",
            "quick",
            "--epochs",
            "2",
            "--option",
            "warp:epochs=2",
        ]
    )
    err = capsys.readouterr().err
    assert (
        "budget quick (neural-cleanse, warp, prediction-share, signal; 200 images x 2 epochs "
        "per label)" in err
    )
    assert code in (0, 1)
    assert "NOT conclusive" not in err


def test_a_model_at_chance_on_the_data_is_not_conclusive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An untrained model is no better than chance on the labelled images: the
    scan's verdict is not conclusive (exit 1, says why), whatever it found; with
    --skip-chance-check only the verdict decides."""
    import json

    import torch

    from hardenkit.models import create_model

    torch.manual_seed(0)
    path = save_state_dict(
        create_model("small-cnn", 4),
        tmp_path / "u.safetensors",
        metadata=model_metadata("small-cnn", 4),
    )
    args = ["scan", "--weights", str(path), "--data", DATA, "--detectors", "neural-cleanse"]
    args += ["--epochs", "1", "--max-images", "40", "--report", str(tmp_path / "r.json")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "no better than chance on --data" in err
    assert "--skip-chance-check" in err
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["above_chance"] is False
    code = main([*args, "--skip-chance-check"])
    err = capsys.readouterr().err
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["config"]["require_above_chance"] is False
    assert code == (1 if again["verdict"] == "backdoored" else 0), err
    assert "no better than chance on --data" not in err

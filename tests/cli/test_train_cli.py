"""``hardenkit train``: robust training from the command line, on tiny synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hardenkit.cli import main
from hardenkit.io import read_model_metadata
from hardenkit.robust import TrainingReport

DATA = "synthetic:num_classes=3,train_per_class=12,test_per_class=4,image_size=16"
TINY = "sl_epochs=1,ssl_epochs=2,unlearn_epochs=1,rescore_every=1,batch_size=16"


def _train(tmp: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        DATA,
        "--arch-args",
        "width=4",
        "--device",
        "cpu",
        "--out",
        str(tmp / "out"),
        *extra,
    ]


def test_train_writes_model_report_and_suspects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "poison.json").write_text("[0, 1, 2]")
    rc = main(
        _train(
            tmp_path,
            "--strategy",
            "dlp",
            "--set",
            TINY,
            "--test-data",
            DATA,
            "--trigger",
            "badnets:image_size=16",
            "--target",
            "0",
            "--poison-indices",
            str(tmp_path / "poison.json"),
            "--report",
            "-",
        )
    )
    out, err = capsys.readouterr()
    rep = TrainingReport.model_validate_json((tmp_path / "out" / "report.json").read_text())
    assert rc == (0 if rep.status == "trained" else 1), err
    assert "rough estimate" in err
    assert "robust training (dlp)" in err
    assert TrainingReport.model_validate_json(out) == rep  # --report - on stdout
    assert rep.isolation is not None
    assert rep.isolation.poison_indices_source == "argument"
    assert rep.isolation.true_poison == 3
    assert rep.isolation.precision is not None
    assert rep.ba is not None
    assert rep.asr is not None
    meta = read_model_metadata(tmp_path / "out" / "model.safetensors")
    assert meta["hardenkit.arch"] == "small-cnn"
    assert meta["hardenkit.num_classes"] == "3"
    sus = json.loads((tmp_path / "out" / "suspected.json").read_text())
    assert len(sus["scores"]) == 36
    assert len(sus["suspected_indices"]) == rep.isolation.suspected


def test_train_plain_exits_0_and_npy_indices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "p.npy", np.array([3, 4]))
    rc = main(
        _train(
            tmp_path,
            "--strategy",
            "plain",
            "--set",
            "epochs=1",
            "--poison-indices",
            str(tmp_path / "p.npy"),
        )
    )
    capsys.readouterr()
    assert rc == 0
    rep = TrainingReport.model_validate_json((tmp_path / "out" / "report.json").read_text())
    assert rep.status == "trained"
    assert rep.isolation is None


def test_untrusted_status_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # per-class isolation of clean data: no dominant class -> isolation-doubtful
    rc = main(_train(tmp_path, "--set", TINY + ",per_class=true,rescore_every=0"))
    _, err = capsys.readouterr()
    assert rc == 1, err
    assert "isolation-doubtful" in err
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "nope"], "Unknown robust-training strategy"),
        (["--trigger", "badnets"], "--trigger and --target go together"),
        (["--set", "isolation_ratio=2"], "Invalid DLPConfig"),
        (["--poison-indices", "missing.json"], "does not exist"),
        (["--poison-indices", "BAD"], "list of integer indices"),
        (
            ["--set", "epochs=1", "--strategy", "plain", "--target", "9", "--trigger", "badnets"],
            "not a class",
        ),
    ],
)
def test_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    (tmp_path / "BAD").write_text('["a"]')
    extra = [str(tmp_path / e) if e == "BAD" else e for e in extra]
    rc = main(_train(tmp_path, *extra))
    _, err = capsys.readouterr()
    assert rc == 2, err
    assert message in err


def test_train_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom hardenkit.cli import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--poison-indices" in proc.stdout

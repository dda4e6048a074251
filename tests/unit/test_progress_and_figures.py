"""Heartbeat progress outside a terminal, tqdm bars on one, and the scan's evidence figures."""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hardenkit as hk
import hardenkit._utils.progress as progress_mod
from hardenkit._utils.progress import (
    HeartbeatProgress,
    NullProgress,
    TqdmProgress,
    heartbeat_interval,
    make_progress,
)
from hardenkit.scan import ScanResult
from hardenkit.scan.figures import anomaly_chart, detector_chart, figure_name, trigger_figure
from hardenkit.scan.scanner import DetectorClassRow, DetectorReport

# ----------------------------------------------------------------------------- progress


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def no_tqdm_disable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HARDENKIT_HEARTBEAT_SECONDS", raising=False)


def _lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("[hardenkit] ")]


@pytest.mark.usefixtures("no_tqdm_disable")
def test_auto_outside_a_terminal_writes_heartbeats_with_eta_after_two_steps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HARDENKIT_HEARTBEAT_SECONDS", "0")
    assert not sys.stderr.isatty()
    clock = _Clock()
    monkeypatch.setattr(progress_mod, "_clock", clock)
    prog = make_progress("auto")
    assert isinstance(prog, HeartbeatProgress)
    for step in range(1, 6):
        prog("purify[finetune]", step, 5, loss=0.41234)
        clock.t += 0.5  # 0.5 s per step
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 5
    assert lines[0] == "[hardenkit] purify[finetune] 1/5 (20%) elapsed 0s loss=0.4123"
    assert "2/5 (40%)" in lines[1]
    assert "eta" not in lines[1]
    assert "3/5 (60%)" in lines[2]
    assert "eta 1s" in lines[2]
    assert "eta" in lines[3]
    assert lines[4].startswith("[hardenkit] purify[finetune] 5/5 (100%) elapsed 2s done")
    assert all(ln.endswith("loss=0.4123") for ln in lines)


@pytest.mark.usefixtures("no_tqdm_disable")
def test_eta_after_one_step_once_two_seconds_are_measured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = _Clock()
    prog = HeartbeatProgress(0, clock=clock)
    prog("train", 1, 100)
    clock.t += 3.0
    prog("train", 2, 100)  # one step over 3 s: rate known
    lines = _lines(capsys.readouterr().err)
    assert "eta" not in lines[0]
    assert "2/100 (2%) elapsed 3s eta 4m54s" in lines[1]


@pytest.mark.usefixtures("no_tqdm_disable")
def test_heartbeat_interval_is_ten_seconds_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress_mod, "_clock", clock)
    prog = make_progress("auto")
    assert isinstance(prog, HeartbeatProgress)
    assert prog.interval == 10.0
    emitted_at: list[int] = []
    for step in range(1, 31):  # 3 s per step, 30 steps
        before = len(_lines(capsys.readouterr().err))
        assert before == 0
        prog("scan[neural-cleanse]", step, 30)
        if _lines(capsys.readouterr().err):
            emitted_at.append(step)
        clock.t += 3.0
    # first step, then every >= 10 s (4 steps of 3 s), and the last step
    assert emitted_at == [1, 5, 9, 13, 17, 21, 25, 29, 30]


@pytest.mark.usefixtures("no_tqdm_disable")
def test_heartbeat_env_interval_and_phases_are_independent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HARDENKIT_HEARTBEAT_SECONDS", "5")
    clock = _Clock()
    prog = HeartbeatProgress(clock=clock)
    assert prog.interval == 5.0
    prog("a", 1, 10)
    prog("b", 1, 10)  # another phase: its own first line
    clock.t += 4
    prog("a", 2, 10)  # 4 s < 5 s: silent
    clock.t += 1
    prog("a", 3, 10)  # 5 s: a line
    prog("a", 1, 10)  # started over: a first line again
    lines = _lines(capsys.readouterr().err)
    assert [ln.split()[1:3] for ln in lines] == [
        ["a", "1/10"],
        ["b", "1/10"],
        ["a", "3/10"],
        ["a", "1/10"],
    ]


def test_heartbeat_interval_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, want in [
        ("", 10.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-1", 10.0),
        ("x", 10.0),
        ("nan", 10.0),
    ]:
        monkeypatch.setenv("HARDENKIT_HEARTBEAT_SECONDS", raw)
        assert heartbeat_interval() == want


@pytest.mark.usefixtures("no_tqdm_disable")
def test_progress_off_and_tqdm_disable_silence_heartbeats(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HARDENKIT_HEARTBEAT_SECONDS", "0")
    off = make_progress("off")
    assert isinstance(off, NullProgress)
    off("train", 1, 2, loss=0.5)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    quiet = make_progress("auto")
    assert isinstance(quiet, NullProgress)
    quiet("train", 1, 2)
    assert capsys.readouterr().err == ""


@pytest.mark.usefixtures("no_tqdm_disable")
def test_heartbeat_logs_a_structured_event(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    prog = HeartbeatProgress(0, stream=None, clock=clock)
    with caplog.at_level(logging.INFO, logger="hardenkit.progress"):
        for step in range(1, 4):
            prog("purify[mcl]", step, 4, loss=0.25)
            clock.t += 1.0
    events = [r for r in caplog.records if r.getMessage() == "progress.heartbeat"]
    assert len(events) == 3
    last = vars(events[-1])
    assert (last["phase"], last["step"], last["total"], last["percent"]) == (
        "purify[mcl]",
        3,
        4,
        75.0,
    )
    assert last["elapsed_s"] == 2.0
    assert last["eta_s"] == 1.0
    assert last["loss"] == 0.25
    assert vars(events[0])["eta_s"] is None


def test_heartbeat_never_fails_on_a_closed_stream() -> None:
    stream = io.StringIO()
    stream.close()
    HeartbeatProgress(0, stream=stream)("train", 1, 2)


def test_training_heartbeats_end_to_end(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("HARDENKIT_HEARTBEAT_SECONDS", "0")
    model = hk.create_model("small-cnn", 3, normalization=None)
    x, y = torch.rand(12, 3, 16, 16), torch.arange(12) % 3
    hk.train_model(model, x, y, {"epochs": 3, "batch_size": 6}, progress=make_progress("auto"))
    lines = _lines(capsys.readouterr().err)
    assert [re.search(r" (\d+/\d+) ", ln).group(1) for ln in lines] == ["1/3", "2/3", "3/3"]  # type: ignore[union-attr]
    assert ("loss=" in lines[0] and "eta" in lines[2]) or "done" in lines[2]


class _FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.usefixtures("no_tqdm_disable")
def test_tqdm_bar_on_a_terminal_stays_and_has_no_first_step_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("tqdm")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # CI sets it; this test needs the bar
    tty = _FakeTty()
    monkeypatch.setattr(sys, "stderr", tty)
    prog = make_progress("auto")
    assert isinstance(prog, TqdmProgress)
    prog("train", 3, 5, loss=0.5)  # first report at step 3: no rate yet
    prog("train", 5, 5, loss=0.25)
    out = tty.getvalue()
    frames = [f for f in out.split("\r") if f.strip()]
    assert "3/5" in frames[0]
    assert "?it/s" in frames[0]
    assert out.endswith("\n")
    assert "5/5" in frames[-1]


# ----------------------------------------------------------------------------- figures


def _nc_trigger() -> hk.MaskPatternTrigger:
    mask = torch.zeros(32, 32)
    mask[-4:, -4:] = 1
    return hk.MaskPatternTrigger(mask, torch.ones(3, 32, 32))


def _strip_is_drawn(img: Image.Image, top: int, bottom: int) -> bool:
    strip = np.asarray(img.crop((0, top, img.width, bottom)).convert("L"))
    return bool(int(strip.max()) - int(strip.min()) > 100)


def test_trigger_figure_has_labelled_upscaled_panels() -> None:
    example = torch.full((3, 32, 32), 0.5)
    img = trigger_figure(_nc_trigger(), example, label=1, asr=0.97)
    assert img.mode == "RGB"
    assert img.size[1] == 128  # 16 px title + 16 px labels + 3x 32 px panels
    assert img.size[0] > 4 * 96
    assert _strip_is_drawn(img, 0, 16)  # the title line
    assert _strip_is_drawn(img, 16, 32)  # the panel labels
    # the mask panel (first) is white where the mask is on (bottom-right 4x4 -> 12x12 px)
    arr = torch.from_numpy(np.asarray(img.convert("L")).copy())
    panel = arr[32:128]
    cols = (panel.float().std(dim=0) > 0).nonzero().flatten()
    first = int(cols[0])
    assert int(panel[-6, first + 96 - 8]) > 240
    assert int(panel[10, first + 10]) < 20


def test_trigger_figure_without_example_and_other_triggers() -> None:
    img = trigger_figure(_nc_trigger(), None)
    assert img.size[1] == 128
    assert img.size[0] > 3 * 128
    patch = trigger_figure(hk.PatchTrigger.square(3), torch.rand(3, 28, 28), label=0)
    assert patch.size[1] == 2 * 16 + 28 * 3
    assert _strip_is_drawn(patch, 16, 32)
    big = trigger_figure(hk.BlendTrigger.random_noise(size=64), None)
    assert big.size[1] == 2 * 16 + 64 * 2


def test_anomaly_chart_marks_flagged_labels_and_threshold() -> None:
    values = [21.3, 19.8, 22.5, 20.1, 4.2, 20.5]
    idx = [0.6, 0.3, 1.4, 0.1, 10.3, 0.1]
    img = anomaly_chart(list(range(6)), values, idx, [4], 2.0, "nc: mask_l1", statistic="mask_l1")
    assert img.mode == "RGB"
    assert img.size[0] >= 360
    assert img.size[1] > 250
    colours = {c for _, c in img.getcolors(maxcolors=1 << 16) or []}
    assert (214, 39, 40) in colours  # flagged bar
    assert (230, 120, 0) in colours  # threshold line
    assert (76, 120, 168) in colours  # other bars
    plain = anomaly_chart([0, 1, 2], [1.0, 2.0, 3.0], None, [], None, "é ✓ title")
    plain_colours = {c for _, c in plain.getcolors(maxcolors=1 << 16) or []}
    assert (214, 39, 40) not in plain_colours
    assert (230, 120, 0) not in plain_colours
    many = anomaly_chart(
        list(range(100)), [float(i % 7) for i in range(100)], None, [42], None, "t"
    )
    assert many.size[0] >= 600
    with pytest.raises(ValueError, match="same length"):
        anomaly_chart([0, 1], [1.0], None, [], None, "t")


def _report_with_detector() -> ScanResult:
    model = hk.create_model("small-cnn", 4, normalization=None)
    scan = ScanResult.from_triggers(
        {1: _nc_trigger()}, model=model, num_classes=4, trigger_asr={1: 0.9}
    )
    values = [20.0, 3.0, 21.0, 19.0]
    det = DetectorReport(
        detector="neural-cleanse",
        statistic="mask_l1",
        suspicious_side="low",
        verdict="backdoored",
        score=0.99,
        anomaly_index=11.2,
        evidence=11.2,
        threshold=2.0,
        flagged_labels=[1],
        seconds=1.0,
        config={},
        produces_triggers=True,
        classes=[
            DetectorClassRow(label=y, value=v, anomaly_index=abs(v - 19.5), flagged=y == 1)
            for y, v in enumerate(values)
        ],
    )
    return ScanResult(scan.report.model_copy(update={"detectors": [det]}), scan.all_triggers)


def test_scan_result_save_writes_trigger_figure_and_anomaly_chart(tmp_path: Path) -> None:
    scan = _report_with_detector()
    out = scan.save(tmp_path / "scan")
    assert figure_name("neural-cleanse") == "anomaly_neural-cleanse.png"
    assert figure_name("my det/1") == "anomaly_my_det_1.png"
    with Image.open(out / "anomaly_neural-cleanse.png") as saved:
        assert saved.size[0] >= 360
    with Image.open(out / "flagged_label_1.png") as fig:
        assert fig.size[1] == 128
    assert detector_chart(scan.report.detectors[0]) is not None
    # a p-value detector gets no threshold line
    mm = scan.report.detectors[0].model_copy(
        update={"detector": "mm-bd", "p_value": 1e-4, "threshold": 1.3, "suspicious_side": "high"}
    )
    mm_chart = detector_chart(mm)
    assert mm_chart is not None
    assert (230, 120, 0) not in {c for _, c in mm_chart.getcolors(maxcolors=1 << 16) or []}
    assert detector_chart(mm.model_copy(update={"classes": []})) is None

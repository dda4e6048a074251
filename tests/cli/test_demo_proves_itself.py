"""``hardenkit demo`` checks its own claims: it exits 1 when one fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardenkit.cli import demo, main
from hardenkit.purify import DEFAULT_STRATEGY


def test_parser_default_strategy_is_the_purifiers() -> None:
    assert demo.DEFAULT_STRATEGY == DEFAULT_STRATEGY


def test_a_demo_that_plants_nothing_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d"
    code = main(
        [
            "demo",
            "--classes",
            "4",
            "--epochs",
            "1",
            "--no-scan",
            "--no-purify",
            "--no-export",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    asr = report["validation"]["attack_success_rate"]["value"]
    if asr >= demo.DEMO_MIN_PLANTED_ASR:  # pragma: no cover - one epoch never plants it here
        pytest.skip(f"one epoch planted the backdoor (ASR {asr:.2f})")
    assert code == 1
    assert report["passed"] is False
    assert "not planted" in report["failures"][0]
    assert "demo      FAILED: the backdoor was not planted" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["passed"] is False

"""The gate's self-contained HTML report: content, escaping, figure back-ends, a real browser."""

from __future__ import annotations

import base64
import importlib.util
import io
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hardenkit as hk
from hardenkit.errors import ConfigError, DataError
from hardenkit.gate import (
    RULES,
    ClassDrop,
    DeploymentPolicy,
    GateReport,
    GateRule,
    TriggerMeasurement,
    html_report,
    render_saved,
)
from hardenkit.reports import ModelFingerprint
from hardenkit.scan import ScanResult
from hardenkit.scan.scanner import DetectorClassRow, DetectorReport
from hardenkit.validate import wilson_interval

XSS = "<script>alert('x')</script>"


def _fp(seed: int) -> ModelFingerprint:
    torch.manual_seed(seed)
    return ModelFingerprint.of(hk.create_model("small-cnn", 4, normalization=None))


def _report(*, passed: bool = False, message: str = "") -> GateReport:
    statuses = dict.fromkeys(RULES, "pass")
    if not passed:
        statuses["HK-SCAN-001"] = "fail"
        statuses["HK-ASR-001"] = "fail"
    rules = [
        GateRule(
            rule_id=rid,
            description=RULES[rid],
            status=st,  # type: ignore[arg-type]
            value=0.42 if rid == "HK-ASR-001" else (120.0 if rid == "HK-DATA-001" else None),
            threshold=0.1 if rid == "HK-ASR-001" else (100.0 if rid == "HK-DATA-001" else None),
            comparison="<=" if rid == "HK-ASR-001" else (">=" if rid == "HK-DATA-001" else None),
            message=(message if rid == "HK-SCAN-001" and message else f"{rid} is {st}"),
            cause="policy" if st == "fail" else None,
        )
        for rid, st in statuses.items()
    ]
    return GateReport(
        passed=passed,
        exit_code=0 if passed else 1,
        rules=rules,
        policy=DeploymentPolicy().model_dump(mode="json"),
        input_model=_fp(0),
        output_model=_fp(1),
        repaired=True,
        strategy="auto",
        purification_status="purified",
        repair_rounds=[
            {"round": 1, "against_labels": [1], "status": "purified", "rescan_verdict": "clean"}
        ],
        input_scan={
            "verdict": "backdoored",
            "score": 0.97,
            "flagged_labels": [1],
            "conclusive": True,
            "detectors": ["neural-cleanse"],
        },
        rescan={
            "verdict": "clean",
            "score": 0.05,
            "flagged_labels": [],
            "conclusive": True,
            "detectors": ["neural-cleanse"],
        },
        input_ba=0.904,
        output_ba=0.896,
        output_ba_ci=(0.85, 0.93),
        class_accuracy=[
            ClassDrop(label=c, images=100, before=0.9, after=0.9 - 0.01 * c) for c in range(15)
        ],
        triggers=[
            TriggerMeasurement(
                source="scan",
                label=1,
                input_asr=0.99,
                output_asr=0.42,
                images=90,
                output_asr_without_trigger=0.07,
            ),
            TriggerMeasurement(
                source="known:red-team", label=1, input_asr=1.0, output_asr=None, images=0
            ),
        ],
        onnx={
            "path": "model.onnx",
            "sha256": "cd" * 32,
            "opset": 18,
            "provider": "CPUExecutionProvider",
            "verification_passed": True,
            "onnx_ba": 0.896,
            "torch_ba": 0.896,
            "checks": [
                {
                    "name": "logits_allclose",
                    "passed": True,
                    "value": 7.8e-07,
                    "threshold": 1e-4,
                    "comparison": "<=",
                    "detail": "max |diff| over 120 images",
                }
            ],
        },
        data={"clean_images": 600, "scan_repair_images": 480, "holdout_images": 120},
        timings={"scan_seconds": 12.3, "total_seconds": 40.0},
        notes=[f"a note with {XSS}"],
    )


def _nc_trigger() -> hk.MaskPatternTrigger:
    mask = torch.zeros(32, 32)
    mask[-4:, -4:] = 1
    pattern = torch.zeros(3, 32, 32)
    pattern[0] = 1.0
    return hk.MaskPatternTrigger(mask, pattern)


def _scan(flagged: bool = True, example: torch.Tensor | None = None) -> ScanResult:
    model = hk.create_model("small-cnn", 4, normalization=None)
    base = ScanResult.from_triggers(
        {1: _nc_trigger()}, model=model, num_classes=4, trigger_asr={1: 0.93}
    )
    values = [20.0, 3.0, 21.0, 19.0] if flagged else [20.0, 18.0, 21.0, 19.0]
    det = DetectorReport(
        detector="neural-cleanse",
        statistic="mask_l1",
        suspicious_side="low",
        verdict="backdoored" if flagged else "clean",
        score=0.99 if flagged else 0.05,
        anomaly_index=11.2 if flagged else 0.8,
        evidence=11.2 if flagged else 0.8,
        threshold=2.0,
        flagged_labels=[1] if flagged else [],
        seconds=1.0,
        config={},
        produces_triggers=True,
        classes=[
            DetectorClassRow(
                label=y, value=v, anomaly_index=abs(v - 19.5), flagged=flagged and y == 1
            )
            for y, v in enumerate(values)
        ],
    )
    update = {"detectors": [det]}
    if not flagged:
        update.update(verdict="clean", flagged_labels=[], score=0.05)  # type: ignore[dict-item]
    return ScanResult(base.report.model_copy(update=update), base.all_triggers, example)


def _data_uris(page: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def _no_external_urls(page: str) -> None:
    attrs = re.findall(r'\b(?:src|href|action|srcset|poster)\s*=\s*"([^"]*)"', page, re.I)
    assert attrs, "expected at least the data: images"
    for value in attrs:
        assert value.startswith("data:image/png;base64,"), value[:60]
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "url(" not in page  # no CSS fetches either


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize("figures", ["pillow", "matplotlib"])
def test_report_sections_rules_and_figures(figures: str) -> None:
    if figures == "matplotlib":
        pytest.importorskip("matplotlib")
    rep = _report()
    example = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    page = html_report(rep, scan=_scan(example=example), rescan=_scan(False), figures=figures)  # type: ignore[arg-type]
    assert page.startswith("<!DOCTYPE html>")
    assert "Gate FAILED" in page
    assert 'class="banner fail"' in page
    assert "2 of 13 rules failed: HK-SCAN-001, HK-ASR-001" in page
    # the floor under the ASR and the per-class table, largest drop first, 12 of 15 shown
    assert "label 1 for 7.00 % (scan)" in page
    assert "<h3>Per class</h3>" in page
    assert page.index("<tr><td>14</td>") < page.index("<tr><td>13</td>")
    assert "<tr><td>2</td>" not in page
    assert "3 more classes lost less" in page
    assert "exit code 1" in page
    assert rep.report_id in page
    assert rep.input_model.sha256[:12] in page
    assert rep.output_model.sha256[:12] in page
    assert "repaired with <code>auto</code>, status <code>purified</code>" in page
    for rid in RULES:
        assert f"<code>{rid}</code>" in page
    # rule values formatted like the other outputs; thresholds with their comparison
    assert "42.00%" in page
    assert "&lt;= 10.00%" in page
    assert "&gt;= 100" in page
    # sections in the documented order
    order = [
        "Gate FAILED",
        "<h2>Rules</h2>",
        "<h2>Benign accuracy and attack success rates</h2>",
        "<h2>Scans: per-label anomaly</h2>",
        "<h2>Recovered triggers</h2>",
        "<h2>ONNX export</h2>",
        "<h2>Notes</h2>",
        "<h2>Data and timings</h2>",
        "<footer>",
    ]
    positions = [page.index(s) for s in order]
    assert positions == sorted(positions)
    # BA with the recorded CI; ASR with a Wilson interval from the counts (38/90 -> 42.2 %)
    assert "89.60% [85.0, 93.0]" in page
    lo, hi = wilson_interval(round(0.42 * 90), 90)
    assert f"42.00% [{100 * lo:.1f}, {100 * hi:.1f}]" in page
    assert "ASR · known:red-team · label 1" in page  # an unmeasured ASR is n/a, not 0
    assert "CPUExecutionProvider" in page
    assert "parity passed" in page
    assert ("cd" * 32)[:12] in page
    assert "BA on ONNX Runtime 89.60% vs PyTorch 89.60%" in page
    assert "<details><summary>parity checks (1)</summary>" in page  # closed: it passed
    assert "<code>logits_allclose</code>" in page
    assert "7.8e-07" in page
    assert "&lt;= 0.0001" in page
    # rate chart + 2 anomaly charts + 1 trigger figure (the clean re-scan has none)
    images = _data_uris(page)
    assert len(images) == 4
    for png in images:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            assert im.format == "PNG"
            assert im.width >= 300
            assert im.height >= 100
            arr = np.asarray(im.convert("L"))
            assert int(arr.max()) - int(arr.min()) > 100  # drawn, not blank
    footer = page[page.index("<footer>") :]
    drawn_by = "matplotlib" if figures == "matplotlib" else "Pillow"
    assert f"Figures drawn with {drawn_by}" in footer
    assert hk.__version__ in footer
    _no_external_urls(page)


def test_strings_from_the_report_are_escaped() -> None:
    rep = _report(message=f"verdict {XSS} & more")
    page = html_report(rep, figures="pillow")
    assert XSS not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert page.count("&lt;script&gt;") == 2  # the rule message and the note
    _no_external_urls(page)


def test_passed_report_without_scans_or_measurements() -> None:
    rep = _report(passed=True).model_copy(
        update={
            "repaired": False,
            "strategy": None,
            "purification_status": None,
            "repair_rounds": [],
            "rescan": None,
            "input_ba": None,
            "output_ba": None,
            "output_ba_ci": None,
            "triggers": [],
            "onnx": None,
        }
    )
    page = html_report(rep, figures="pillow")
    assert "Gate PASSED" in page
    assert 'class="banner pass"' in page
    assert "all 13 rules passed" in page
    assert "not repaired" in page
    assert "Nothing was measured" in page
    assert "Per-label charts need the scan itself" in page
    assert "The scans were not passed to the renderer" in page
    assert "not exported to ONNX" in page
    assert "Re-scan of the repaired model" not in page
    assert "<h2>Repair rounds</h2>" not in page
    assert _data_uris(page) == []


def test_auto_falls_back_to_pillow_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = html_report(_report(), scan=_scan(), figures="auto")
    assert "Figures drawn with Pillow" in page
    assert len(_data_uris(page)) == 3  # rates, the scan's chart, its trigger
    with pytest.raises(ModuleNotFoundError, match=r"hardenkit\[report\]"):
        html_report(_report(), figures="matplotlib")


def test_bad_figures_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="figures must be 'auto', 'matplotlib' or 'pillow'"):
        html_report(_report(), figures="svg")  # type: ignore[arg-type]


def test_render_saved_reads_gate_json_and_scans(tmp_path: Path) -> None:
    rep = _report()
    rep.save(tmp_path / "gate.json")
    _scan().save(tmp_path / "scan")
    page = render_saved(tmp_path, figures="pillow")
    assert rep.report_id in page
    assert len(_data_uris(page)) == 3  # rates, the scan's chart, its trigger (no rescan/)
    with pytest.raises(DataError, match=r"gate\.json not found"):
        render_saved(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "gate.json").write_text("{}")
    with pytest.raises(DataError, match="not a valid gate report"):
        render_saved(tmp_path / "bad")


# ----------------------------------------------------------------------------- browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_headless_chromium_renders_the_report(tmp_path: Path) -> None:
    page = html_report(_report(), scan=_scan(), rescan=_scan(False), figures="pillow")
    html_path = tmp_path / "report.html"
    html_path.write_text(page, encoding="utf-8")
    png = tmp_path / "shot.png"
    # the documented check's own browser call (docs/render_gate_report.py), not a copy of it
    spec = importlib.util.spec_from_file_location(
        "render_gate_report", Path(__file__).resolve().parents[2] / "docs/render_gate_report.py"
    )
    assert spec is not None
    assert spec.loader is not None
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    render.screenshot(html_path, png, "1000,1400")
    assert png.is_file()
    with Image.open(png) as shot:
        assert shot.size == (1000, 1400)
        arr = np.asarray(shot.convert("RGB")).astype(np.int16)
    # the red FAILED banner is drawn at the top, and the page is not blank below it
    top = arr[10:60, 100:900]
    assert ((top[..., 0] > 150) & (top[..., 1] < 80) & (top[..., 2] < 80)).mean() > 0.5
    assert arr[200:].std() > 20


def test_gate_result_save_writes_report_html(tmp_path: Path) -> None:
    from hardenkit.gate import GateResult
    from hardenkit.io import file_sha256

    model = hk.create_model("small-cnn", 4, normalization=None)
    result = GateResult(_report(), model, {"scan": _scan(), "rescan": _scan(False)}, None)
    saved = GateReport.model_validate_json(result.save(tmp_path).read_text())
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert saved.files["report.html"] == file_sha256(tmp_path / "report.html")
    assert saved.report_id in page
    assert len(_data_uris(page)) == 4  # rates, two anomaly charts, the scan's trigger

"""``benchmarks/gpu_protocol.py``: the smoke mode runs every phase of the GPU protocol end to
end on the CPU, and the wall-time budget stops a run with the phases that did not run listed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import hardenkit as hk
from benchmarks import gpu_protocol
from benchmarks.gpu_protocol import OverBudgetError, Run

CPU = "CPUExecutionProvider"


def _load(out: Path) -> dict[str, Any]:
    return json.loads((out / f"{gpu_protocol.NAME}.json").read_text())


@pytest.mark.slow  # ~25 s on a loaded 2-core CPU (most of it the ONNX export)
def test_smoke_runs_every_phase(tmp_path: Path) -> None:
    assert gpu_protocol.main(["--smoke", "--out", str(tmp_path)]) == 0
    res = _load(tmp_path)
    strategies = list(gpu_protocol.STRATEGIES)
    planned = gpu_protocol.planned_phases(["badnets"], strategies)
    assert [p["phase"] for p in res["phases"]] == planned
    assert {p["status"] for p in res["phases"]} == {"ok"}
    assert all(math.isfinite(p["seconds"]) and p["seconds"] >= 0 for p in res["phases"])
    assert res["budget"]["complete"]
    assert not res["budget"]["not_run"]
    assert res["mode"] == "smoke"
    assert res["device"] == "cpu"

    # BA / ASR / RA / DER / seconds for the undefended model and every strategy
    cells = {(r["attack"], r["strategy"]): r for r in res["details"]}
    assert set(cells) == {("badnets", s) for s in ["none", *strategies]}
    for r in cells.values():
        for key in ("ba", "asr", "ra", "der", "seconds"):
            assert math.isfinite(r[key]), (r["strategy"], key)
        assert 0 <= r["ba"] <= 1
        assert 0 <= r["asr"] <= 1
    (train,) = res["train_results"]
    assert train["poisoned"] > 0
    assert train["clean_budget_excludes_poisoned"]
    (scan,) = res["scans"]
    assert scan["verdict"] in {"clean", "suspicious", "backdoored"}
    assert math.isfinite(scan["seconds"])
    (exp,) = res["exports"]
    assert exp["parity passed"] is True
    assert exp["provider_ran"] == "CPUExecutionProvider"
    assert exp["provider_fallback"] is False
    for key in ("export s", "verify s", "max abs diff", "BA onnx %", "ASR onnx %"):
        assert math.isfinite(exp[key]), key

    md = (tmp_path / f"{gpu_protocol.NAME}.md").read_text()
    for section in ("## Scan", "## Export + verify", "## Phases", "BackdoorBench none", "D3 paper"):
        assert section in md


def test_budget_stop_lists_the_phases_that_did_not_run(tmp_path: Path) -> None:
    rc = gpu_protocol.main(["--smoke", "--out", str(tmp_path), "--max-minutes", "0.001"])
    assert rc == 3
    res = _load(tmp_path)
    assert res["budget"]["stopped_at"] == "data"
    assert not res["budget"]["complete"]
    assert res["budget"]["not_run"] == gpu_protocol.planned_phases(
        ["badnets"], list(gpu_protocol.STRATEGIES)
    )
    assert "Stopped at data" in (tmp_path / f"{gpu_protocol.NAME}.md").read_text()


def test_phase_admission_and_failures() -> None:
    run = Run(max_seconds=100.0, reserve=0.0)
    assert run.phase("a", "kind", lambda left: left) > 0
    run.seconds_by_kind["kind"] = 1000.0  # the same phase took 1000 s before
    with pytest.raises(OverBudgetError, match="needs ~1000 s"):
        run.phase("b", "kind", lambda left: None)

    def boom(left: float) -> None:
        raise ValueError("broken")

    assert run.phase("c", "other", boom) is None  # recorded, the run goes on
    assert [(p["phase"], p["status"]) for p in run.phases] == [("a", "ok"), ("c", "failed")]


def test_full_mode_refuses_to_run_without_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        gpu_protocol.main(["--out", str(tmp_path)])


@pytest.mark.slow  # one ONNX export (~5 s)
def test_cuda_provider_that_did_not_run_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # ask for the CUDA provider where ONNX Runtime cannot run it: the verification falls back
    # to the CPU provider, and the record says so
    if torch.cuda.is_available():
        pytest.skip("ONNX Runtime may really run on CUDA here")
    monkeypatch.setattr(
        gpu_protocol, "providers_for", lambda device: (["CUDAExecutionProvider", CPU], None)
    )
    data = hk.make_synthetic_dataset(num_classes=4, train_per_class=1, test_per_class=8)
    model = hk.create_model("small-cnn", 4, width=4)
    trigger = hk.PatchTrigger.square(3)
    rec = gpu_protocol.export_record(model, data.test, trigger, torch.device("cpu"))
    assert rec["provider_fallback"] is True
    assert rec["provider_ran"] == CPU
    assert "CUDAExecutionProvider was requested" in rec["provider_note"]
    assert rec["parity passed"] is True

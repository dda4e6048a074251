"""Scanning under ``torchrun``: trigger inversion split by candidate label over the ranks.

The equivalence target: a label's inversion does not depend on which other labels run with
it, so ``decide(merge(invert(share_0), invert(share_1)))`` equals ``detect(all labels)`` in
one process, and a 2-process gloo scan gives the one-process report (per-label values,
flagged labels, anomaly index, triggers). The jobs live in ``tests/unit/scan_ddp_worker.py``;
the references run in this process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.reports import DistributedInfo
from hardenkit.scan import (
    MaxMarginDetector,
    NeuralCleanse,
    PixelDetector,
    ScanResult,
    WarpDetector,
)
from hardenkit.scan.base import Detector, DetectorContext, DetectorOutput, Inversion

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker
import scan_ddp_worker
from test_scan_mm_bd import MarginModel
from test_scan_pixel import OnePixelBackdoor
from test_scan_warp import LineShiftBackdoor, _images

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(scan_ddp_worker.__file__)
EXACT_JOBS = ("nc", "warp", "cnn", "plugin")


def _ctx(model: nn.Module, x: torch.Tensor | None, k: int, shape: tuple[int, int, int]) -> Any:
    model = model.eval().requires_grad_(False)
    return DetectorContext(
        model=model,
        num_classes=k,
        image_shape=shape,
        device=torch.device("cpu"),
        amp=False,
        seed=0,
        x=x,
        y=None if x is None else model(x).argmax(1),
        labels=list(range(k)),
        progress=lambda *a, **kw: None,
        all_labels=list(range(k)),
    )


def _dark(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g) * 0.5


def _cases() -> list[tuple[str, Detector, Any]]:
    return [
        (
            "neural-cleanse",
            NeuralCleanse({"epochs": 20, "batch_size": 16}),
            _ctx(OnePixelBackdoor(), _dark(), 4, (3, 8, 8)),
        ),
        ("warp", WarpDetector({"epochs": 20}), _ctx(LineShiftBackdoor(), _images(), 4, (3, 8, 8))),
        (
            "pixel",
            PixelDetector({"epochs": 30, "batch_size": 16}),
            _ctx(OnePixelBackdoor(), _dark(), 4, (3, 8, 8)),
        ),
        (
            "mm-bd",
            MaxMarginDetector({"starts": 4, "steps": 80, "lr": 0.5}),
            _ctx(MarginModel(), None, 6, (3, 8, 8)),
        ),
        (
            "mm-bd-adam",
            MaxMarginDetector({"starts": 4, "steps": 80, "lr": 0.5, "optimizer": "adam"}),
            _ctx(MarginModel(), None, 6, (3, 8, 8)),
        ),
    ]


def _same_output(a: DetectorOutput, b: DetectorOutput) -> None:
    assert a.values == b.values
    assert a.flagged == b.flagged
    assert a.anomaly_index == b.anomaly_index
    assert a.anomaly_per_label == b.anomaly_per_label
    assert (a.score, a.evidence, a.p_value) == (b.score, b.evidence, b.p_value)
    assert a.per_label == b.per_label
    assert a.triggers.keys() == b.triggers.keys()
    for y, t in a.triggers.items():
        for name, tensor in t.tensors().items():
            assert torch.equal(tensor, b.triggers[y].tensors()[name]), (y, name)
    ignore = {"rank_seconds"}
    assert {k: v for k, v in a.info.items() if k not in ignore} == {
        k: v for k, v in b.info.items() if k not in ignore
    }


@pytest.mark.parametrize("case", range(5), ids=[c[0] for c in _cases()])
def test_sharded_inversion_equals_the_whole_detection(case: int) -> None:
    """Per-label independence: the seeded starts are drawn for all labels and sliced, the
    shuffles are per label, and a stopped label's trigger is frozen — so any split of the
    labels gives the one-call result, bit for bit on the CPU."""
    name, det, ctx = _cases()[case]
    assert det.shardable
    assert type(det).splits_into_phases()
    whole = det.detect(ctx)
    if name != "mm-bd-adam":
        assert whole.flagged == [0], name  # the planted target
    for world in (2, 3):
        parts = [
            det.invert(dataclasses.replace(ctx, labels=ctx.labels[r::world])) for r in range(world)
        ]
        assert [p.labels for p in parts] == [ctx.labels[r::world] for r in range(world)]
        merged = det.merge(parts[::-1], ctx.labels)  # gathered in any order
        assert merged.labels == ctx.labels
        _same_output(det.decide(merged), whole)


class _SimulatedRanks:
    """A ``Distributed`` stand-in for rank ``rank`` of ``world``: ``all_gather_object``
    returns what every rank would contribute (the other ranks' shares are inverted here)."""

    def __init__(self, det: Detector, ctx: Any, rank: int, world: int) -> None:
        self.det, self.ctx, self.rank, self.world_size = det, ctx, rank, world

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = []
        for r in range(self.world_size):
            share = self.ctx.labels[r :: self.world_size]
            if r == self.rank:
                out.append(obj)
            else:
                part = self.det.invert(dataclasses.replace(self.ctx, labels=share))
                out.append(part if share else None)
        return out


def test_more_ranks_than_labels_gives_the_whole_detection() -> None:
    """With 6 ranks and 4 labels, ranks 4 and 5 invert nothing; every rank, idle or not,
    decides on the merged table and gets the one-process output."""
    from hardenkit.scan.scanner import _detect

    _, det, ctx = _cases()[0]
    whole = det.detect(ctx)
    for rank in (0, 3, 4, 5):
        out = _detect(det, ctx, _SimulatedRanks(det, ctx, rank, 6))  # type: ignore[arg-type]
        _same_output(out, whole)
        assert len(out.info["rank_seconds"]) == 6
        assert out.info["rank_seconds"][4:] == [0.0, 0.0]


def test_merge_fails_closed_on_a_budget_and_combines_info() -> None:
    det = NeuralCleanse()

    def part(labels: list[int], info: dict[str, Any], seconds: float) -> Inversion:
        return Inversion(
            detector="neural-cleanse",
            statistic="mask_l1",
            suspicious_side="low",
            labels=labels,
            values={y: 10.0 + y for y in labels},
            seconds=seconds,
            per_label={y: {"reached_threshold": True} for y in labels},
            info=info,
        )

    merged = det.merge(
        [
            part([0, 2], {"budget_exhausted": False, "mode": "batched", "steps": 3}, 1.0),
            part([1, 3], {"budget_exhausted": True, "mode": "batched", "steps": 7}, 2.5),
        ],
        [0, 1, 2, 3],
    )
    assert merged.budget_exhausted  # one rank ran out of time: the scan did
    assert merged.info["mode"] == "batched"
    assert merged.info["steps"] == 7
    assert merged.seconds == 2.5
    assert list(merged.values) == [0, 1, 2, 3]
    out = det.decide(merged)
    assert out.info["budget_exhausted"] is True
    with pytest.raises(ValueError, match="label"):
        det.merge([part([0, 2], {}, 1.0)], [0, 1, 2, 3])


class _DetectOnly(Detector):
    """A third-party detector of the old interface: ``detect`` only."""

    name = "test-detect-only"

    def detect(self, ctx: DetectorContext) -> DetectorOutput:
        return scan_ddp_worker.MeanLogit().detect(ctx)


def test_a_detect_only_detector_still_works() -> None:
    assert not _DetectOnly.shardable
    assert not _DetectOnly.splits_into_phases()
    ctx = _ctx(OnePixelBackdoor(), _dark(), 4, (3, 8, 8))
    out = _DetectOnly().detect(ctx)
    assert out.info["labels_seen"] == [0, 1, 2, 3]
    with pytest.raises(NotImplementedError, match="invert"):
        _DetectOnly().invert(ctx)
    res = scan_ddp_worker.run("plugin")  # via the Scanner, next to a shardable detector
    assert [d.detector for d in res.report.detectors] == ["neural-cleanse", "test-mean-logit"]
    assert res.report.distributed == DistributedInfo()
    assert "rank_seconds" not in res.report.detectors[0].info
    assert scan_ddp_worker.MeanLogit.name not in hk.scan.DETECTORS  # unregistered again


def test_a_detector_with_neither_phase_nor_detect_says_so() -> None:
    class Nothing(Detector):
        name = "test-nothing"

    with pytest.raises(NotImplementedError, match="neither invert"):
        Nothing().detect(_ctx(OnePixelBackdoor(), _dark(), 4, (3, 8, 8)))


def test_a_non_main_rank_does_not_save(tmp_path: Path) -> None:
    scan = ScanResult.from_triggers(
        {1: hk.PatchTrigger.square(3)}, model=nn.Linear(2, 4), num_classes=4
    )
    ScanResult(scan.report, scan.all_triggers, rank=1).save(tmp_path / "r1")
    assert not (tmp_path / "r1").exists()
    ScanResult(scan.report, scan.all_triggers, rank=0).save(tmp_path / "r0")
    assert (tmp_path / "r0" / "report.json").is_file()


# ---------------------------------------------------------------------------- torchrun


def _torchrun(
    *args: str, timeout: float = 300, ok: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode in ok, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scan-ddp")
    _torchrun(str(WORKER), ",".join((*EXACT_JOBS, "budget")), str(out))
    return out


def _reports(root: Path, job: str) -> list[dict[str, Any]]:
    return [json.loads((root / job / f"report{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("job", EXACT_JOBS)
def test_two_processes_give_the_one_process_scan(job: str, two_ranks: Path) -> None:
    ref = scan_ddp_worker.run(job)
    want = json.loads(ref.report.model_dump_json())
    reports = _reports(two_ranks, job)
    assert reports[0] == reports[1]  # one report on every rank (rank 0's, id included)
    got = reports[0]
    assert got["distributed"] == {"world_size": 2, "backend": "gloo", "sync_batchnorm": False}
    assert want["distributed"]["world_size"] == 1
    assert got["verdict"] == want["verdict"]
    assert got["flagged_labels"] == want["flagged_labels"]
    assert got["budget_exhausted"] is want["budget_exhausted"] is False
    if job in ("nc", "warp"):
        assert got["flagged_labels"] == [0]  # the planted target
    for d_got, d_want in zip(got["detectors"], want["detectors"], strict=True):
        name = d_got["detector"]
        values = [c["value"] for c in d_got["classes"]]
        assert values == pytest.approx([c["value"] for c in d_want["classes"]], rel=1e-5, abs=1e-6)
        assert d_got["flagged_labels"] == d_want["flagged_labels"], name
        assert d_got["anomaly_index"] == pytest.approx(d_want["anomaly_index"], rel=1e-5, abs=1e-6)
        assert [c["extra"] for c in d_got["classes"]] == [c["extra"] for c in d_want["classes"]]
        if name == "test-mean-logit":  # not shardable: ran whole, rank 0's output reported
            assert d_got["info"]["labels_seen"] == [0, 1, 2, 3]
            assert d_got["info"]["rank"] == 0
        else:  # shardable: the labels were split, each rank timed its share
            assert len(d_got["info"]["rank_seconds"]) == 2
    assert [c.get("trigger_asr") for c in got["classes"]] == pytest.approx(
        [c.get("trigger_asr") for c in want["classes"]]
    )
    want_trig = scan_ddp_worker.trigger_tensors(ref)
    for rank in (0, 1):
        trig = torch.load(two_ranks / job / f"triggers{rank}.pt", weights_only=True)
        assert trig.keys() == want_trig.keys()
        for y, tensors in want_trig.items():
            for k, t in tensors.items():
                torch.testing.assert_close(trig[y][k], t, rtol=1e-5, atol=1e-5)
    # only rank 0 writes the result's files
    assert (two_ranks / job / "saved0" / "report.json").is_file()
    assert not (two_ranks / job / "saved1").exists()


@pytest.mark.slow
def test_a_budget_cut_on_the_ranks_is_reported(two_ranks: Path) -> None:
    reports = _reports(two_ranks, "budget")
    assert reports[0] == reports[1]
    assert reports[0]["budget_exhausted"] is True
    info = reports[0]["detectors"][0]["info"]
    assert info["budget_exhausted"] is True
    assert all(0 < s < 30 for s in info["rank_seconds"])


@pytest.mark.slow
def test_cli_scan_under_torchrun_writes_once(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    hk.io.save_state_dict(
        ddp_worker.tiny_model(),
        weights,
        metadata=hk.io.model_metadata("tests.unit.ddp_worker:tiny_model", 4),
    )
    out, report = tmp_path / "out", tmp_path / "scan.json"
    proc = _torchrun(
        "-m",
        "hardenkit",
        "scan",
        "--weights",
        str(weights),
        "--data",
        "synthetic:num_classes=4,train_per_class=12,test_per_class=2,image_size=16",
        "--detectors",
        "neural-cleanse,warp",
        "--epochs",
        "2",
        "--option",
        "warp:epochs=2",
        "--device",
        "cpu",
        "--skip-chance-check",  # an untrained model: the mechanics of the distributed scan
        "--out",
        str(out),
        "--report",
        str(report),
        ok=(0, 1),  # 1: the (untrained) model was flagged
    )
    saved = json.loads((out / "report.json").read_text())
    flagged = saved["verdict"] == "backdoored" or saved["budget_exhausted"]
    assert (proc.returncode == 1) == flagged, proc.stderr[-4000:]
    assert saved["distributed"]["world_size"] == 2
    assert json.loads(report.read_text())["report_id"] == saved["report_id"]
    assert proc.stderr.count(f"wrote {out}/") == 1
    assert proc.stderr.count(f"wrote {report}") == 1
    assert proc.stderr.count("neural-cleanse:") == 1  # one summary, rank 0's
    assert proc.stderr.count("scan: budget") == 1  # one estimate

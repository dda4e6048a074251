"""Data-parallel purification and training under ``torchrun`` (2 gloo processes on the CPU).

The equivalence target: the weights of a 2-process run equal (float tolerance) those of one
process with the same global batch, for models without BatchNorm. The jobs live in
``tests/unit/ddp_worker.py``; the reference runs in this process.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit._utils import distributed as hk_dist
from hardenkit._utils.distributed import Distributed, setup, shutdown, train_step
from hardenkit.errors import ConfigError
from hardenkit.reports import DistributedInfo

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(ddp_worker.__file__)
EXACT_JOBS = ("finetune", "mcl", "d3", "plain")
"""finetune: train_model (augmentation, unequal shards); mcl: a custom loop with a trigger and
a parameter without gradient (the unused classifier, which weight decay must not touch); d3:
an empty shard in the last batch; plain: the RobustTrainer."""


def _torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(str(WORKER), ",".join((*EXACT_JOBS, "finetune-bn", "finetune-time")), str(out))
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(
        float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point() and a[k].numel()
    )


@pytest.mark.slow
@pytest.mark.parametrize("job", EXACT_JOBS)
def test_two_processes_give_the_one_process_weights(job: str, two_ranks: Path) -> None:
    model, res = ddp_worker.run(job)
    ref = ddp_worker.state(model)
    start = ddp_worker.state(ddp_worker.tiny_model())
    assert _max_diff(ref, start) > 1e-3  # the run did change the weights
    for rank in (0, 1):
        got = torch.load(two_ranks / job / f"rank{rank}.pt", weights_only=True)
        assert _max_diff(ref, got) < 1e-5, f"{job}: rank {rank} differs from one process"
    reports = [json.loads((two_ranks / job / f"report{r}.json").read_text()) for r in (0, 1)]
    for rep in reports:
        assert rep["distributed"] == {"world_size": 2, "backend": "gloo", "sync_batchnorm": False}
        assert rep["status"] == res.report.status
        assert rep["output_model"]["sha256"] == reports[0]["output_model"]["sha256"]
        assert rep["peak_memory_mb"]["process_rss"] > 0
    assert res.report.distributed == DistributedInfo()
    if job != "plain":
        assert reports[0]["ba_after"] == res.report.ba_after
        assert reports[0]["steps"] == res.report.steps
    # only rank 0 writes the result's files
    assert (two_ranks / job / "saved0" / "report.json").is_file()
    assert (two_ranks / job / "saved0" / "model.safetensors").is_file()
    assert not (two_ranks / job / "saved1").exists()


@pytest.mark.slow
def test_batchnorm_deviation_is_reported(two_ranks: Path) -> None:
    model, _ = ddp_worker.run("finetune-bn")
    ref = ddp_worker.state(model)
    ranks = [
        torch.load(two_ranks / "finetune-bn" / f"rank{r}.pt", weights_only=True) for r in (0, 1)
    ]
    assert _max_diff(ranks[0], ranks[1]) == 0.0  # the ranks agree with each other ...
    deviation = _max_diff(ref, ranks[0])  # ... but BN normalised each shard on its own
    assert 0 < deviation < 0.05
    notes = json.loads((two_ranks / "finetune-bn" / "report0.json").read_text())["notes"]
    assert any("BatchNorm" in n and "sync_batchnorm" in n for n in notes)


@pytest.mark.slow
def test_ranks_agree_on_a_time_budget(two_ranks: Path) -> None:
    reports = [
        json.loads((two_ranks / "finetune-time" / f"report{r}.json").read_text()) for r in (0, 1)
    ]
    assert [r["status"] for r in reports] == ["budget-exhausted"] * 2
    assert reports[0]["steps"] == reports[1]["steps"] > 0
    assert reports[0]["output_model"] == reports[1]["output_model"]


@pytest.mark.slow
def test_cli_purify_under_torchrun_writes_once(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    torch.manual_seed(0)
    hk.io.save_state_dict(
        ddp_worker.tiny_model(),
        weights,
        metadata=hk.io.model_metadata("tests.unit.ddp_worker:tiny_model", 4),
    )
    out = tmp_path / "out"
    proc = _torchrun(
        "-m",
        "hardenkit",
        "purify",
        "--weights",
        str(weights),
        "--data",
        "synthetic:num_classes=4,train_per_class=12,test_per_class=2,image_size=16",
        "--strategy",
        "finetune",
        "--set",
        "epochs=1,batch_size=9",
        "--device",
        "cpu",
        "--skip-chance-check",  # an untrained model: it is at chance on the images
        "--out",
        str(out),
    )
    report = json.loads((out / "report.json").read_text())
    assert report["distributed"]["world_size"] == 2
    assert proc.stderr.count("wrote ") == 1
    assert proc.stderr.count("strategy finetune:") == 1  # one summary, rank 0's


def test_shard_bounds_cover_every_batch() -> None:
    for world in (1, 2, 3, 5):
        for n in range(0, 13):
            parts = [
                Distributed(rank=r, world_size=world, local_rank=r, backend="gloo").bounds(n)
                for r in range(world)
            ]
            assert parts[0][0] == 0
            assert parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1


def test_train_step_without_torchrun_is_a_plain_backward() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x, y = torch.rand(5, 3), torch.tensor([0, 1, 0, 1, 1])
    loss = nn.functional.cross_entropy(lin(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    want = [p.grad.clone() for p in lin.parameters() if p.grad is not None]
    lin.zero_grad(set_to_none=True)
    seen: list[slice] = []

    def shard(idx: torch.Tensor, part: slice) -> torch.Tensor:
        seen.append(part)
        return nn.functional.cross_entropy(lin(x[idx]), y[idx])

    got_loss = train_step(None, torch.arange(5), shard, list(lin.parameters()))
    assert seen == [slice(0, 5)]
    assert torch.equal(got_loss, loss.detach())
    assert all(torch.equal(p.grad, g) for p, g in zip(lin.parameters(), want, strict=True))


def test_single_process_needs_no_process_group() -> None:
    assert setup(hk.RuntimeConfig(device="cpu")) is None
    assert setup(hk.RuntimeConfig(device="cpu", distributed="off")) is None


def test_shutdown_tears_down_only_the_group_hardenkit_initialised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        shutdown()  # the caller's group: left alone
        assert dist.is_initialized()
        monkeypatch.setattr(hk_dist, "_INITIALISED_HERE", True)
        shutdown()  # hardenkit's: barrier (one rank) then destroyed
        assert not dist.is_initialized()
        assert hk_dist._INITIALISED_HERE is False
        shutdown()  # idempotent
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_sync_batchnorm_on_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="SyncBatchNorm runs on GPUs only"):
        hk.Purifier(
            ddp_worker.tiny_model(), "finetune", runtime={"device": "cpu", "sync_batchnorm": True}
        ).run(ddp_worker.data().train.loader())
    from hardenkit.robust import RobustTrainer

    with pytest.raises(ConfigError, match="sync_batchnorm"):
        RobustTrainer(
            ddp_worker.tiny_model(), "plain", runtime={"device": "cpu", "sync_batchnorm": True}
        ).fit(ddp_worker.data().train)


def test_batchnorm_swap_shares_the_tensors_and_is_undone() -> None:
    model = ddp_worker.tiny_model(bn=True)
    original_bn = model[1]
    d = Distributed(rank=0, world_size=2, local_rank=0, backend="gloo", sync_batchnorm=True)
    assert d.convert_batchnorm(model) == 1
    sync = model[1]
    assert isinstance(sync, nn.SyncBatchNorm)
    assert sync.weight is original_bn.weight
    assert sync.running_mean is original_bn.running_mean
    with torch.no_grad():
        sync.weight.add_(1.0)  # training the swapped layer trains the original's tensors
    d.restore_batchnorm()
    assert model[1] is original_bn
    assert type(model[1]) is nn.BatchNorm2d
    assert float(original_bn.weight.detach().min()) == 2.0
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())

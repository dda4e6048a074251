"""Image stores: uint8 when exact, in memory or spilled to disk; the Purifier on them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import hardenkit as hk
from hardenkit.data import store as store_mod
from hardenkit.data import to_float_pixels
from hardenkit.data.store import DiskStore, ImageStore, MemoryStore, collect, quantize
from hardenkit.purify import STRATEGIES, PurificationStrategy, PurifyContext
from hardenkit.purify.base import StrategyOutcome
from hardenkit.reports import ModelFingerprint
from hardenkit.scan import ScanResult

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker

MINIBATCH_JOBS = {
    "finetune": {"epochs": 1, "batch_size": 16},
    "nc-unlearn": {"epochs": 1, "batch_size": 16},
    "mcl": {"epochs": 1, "batch_size": 16, "min_trigger_asr": 0.0, "validation_fraction": 0.1},
    "d3": {"epochs": 1, "batch_size": 16},
    "fine-pruning": {"epochs": 1, "batch_size": 16},
    "anp": {"iterations": 3, "batch_size": 16},
}


def _pixels(n: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return to_float_pixels(torch.randint(0, 256, (n, 3, 5, 5), dtype=torch.uint8, generator=g))


def test_quantize_is_bitwise() -> None:
    x = _pixels()
    q = quantize(x)
    assert q is not None
    assert q.dtype == torch.uint8
    assert torch.equal(to_float_pixels(q).view(torch.int32), x.view(torch.int32))
    assert quantize(x * 0.999) is None  # not multiples of 1/255
    assert quantize(x.double()) is None
    z = x.clone()
    z.view(-1)[0] = -0.0  # equal to 0.0, but not the same bits
    assert quantize(z) is None
    assert quantize(torch.tensor([1.0005])) is None  # in the loader's tolerance, not exact


def test_collect_keeps_uint8_until_a_batch_is_not_exact() -> None:
    x, y = _pixels(9), torch.arange(9) % 3
    store, labels = collect([(x[:4], y[:4]), (x[4:], y[4:])])
    assert store.storage_dtype == torch.uint8
    assert torch.equal(store[:], x)
    assert torch.equal(labels, y)
    mixed = torch.cat([x[:4], x[4:] * 0.5])
    store, _ = collect([(x[:4], y[:4]), (x[4:] * 0.5, y[4:]), (x[:2], y[:2])])
    assert store.storage_dtype == torch.float32
    assert torch.equal(store[:9], mixed)
    assert store.info() == {"location": "memory", "dtype": "float32", "images": 11, "bytes": 3300}


@pytest.mark.parametrize("storage", ["memory", "disk"])
@pytest.mark.parametrize("exact", [True, False])
def test_store_indexing_matches_a_tensor(storage: str, exact: bool, tmp_path: Path) -> None:
    x = _pixels(23) if exact else _pixels(23) * 0.7
    y = torch.arange(23) % 4
    batches = [(x[i : i + 5], y[i : i + 5]) for i in range(0, 23, 5)]
    store, labels = collect(batches, storage=storage, spill_dir=tmp_path)  # type: ignore[arg-type]
    assert isinstance(store, DiskStore if storage == "disk" else MemoryStore)
    assert store.storage_dtype == (torch.uint8 if exact else torch.float32)
    assert len(store) == 23
    assert store.shape == (23, 3, 5, 5)
    assert torch.equal(labels, y)
    idx = torch.tensor([7, 3, 3, 22, 0, 8, 9, 10])  # unsorted, duplicates, runs
    assert torch.equal(store[idx], x[idx])
    assert torch.equal(store[4], x[4])
    assert torch.equal(store[-1], x[-1])
    assert torch.equal(store[2:19:3], x[2:19:3])
    assert torch.equal(store[20:40], x[20:])
    assert torch.equal(store[y == 1], x[y == 1])
    assert torch.equal(store[[1, 2]], x[[1, 2]])
    sub = store.take(torch.tensor([5, 1, 17, 2]))
    assert torch.equal(sub[:], x[[5, 1, 17, 2]])
    assert torch.equal(sub[torch.tensor([3, 0])], x[[2, 5]])
    assert torch.equal(sub.take([1])[0], x[1])
    assert torch.equal(store.to("cpu").to_tensor(), x)
    assert torch.equal(torch.cat(list(store.batches(6))), x)
    assert len(store.take(torch.zeros(0, dtype=torch.int64)).to_tensor()) == 0
    with pytest.raises(IndexError):
        store[23]
    assert list(tmp_path.iterdir()) == []  # the spill file is unlinked at once (POSIX)


def test_disk_store_of_an_image_dataset(tmp_path: Path) -> None:
    ds = ddp_worker.data().train
    store, y = collect(ds, storage="disk", spill_dir=tmp_path)
    assert store.storage_dtype == torch.uint8
    assert torch.equal(store[:], ds.pixels())
    assert torch.equal(y, ds.labels)
    mem, _ = collect(ds)
    assert isinstance(mem, MemoryStore)
    assert mem.data is ds.images  # no copy


class _Once:
    """A loader that may be read once only (a stream, or a set larger than memory)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int = 20) -> None:
        self.x, self.y, self.batch, self.used = x, y, batch, False

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.used:
            raise AssertionError("the loader was iterated a second time")
        self.used = True
        for i in range(0, len(self.y), self.batch):
            yield self.x[i : i + self.batch], self.y[i : i + self.batch]


def _run(
    job: str, runtime: dict[str, object], loader: object | None = None
) -> hk.PurificationResult:
    model = ddp_worker.tiny_model()
    ds = ddp_worker.data()
    scan = None
    if job in ("mcl", "nc-unlearn"):
        scan = ScanResult.from_triggers({0: hk.PatchTrigger.square(3)}, model=model, num_classes=4)
    rt = {"device": "cpu", "seed": 2, "progress": "off", **runtime}
    return hk.Purifier(  # an untrained model: the at-chance refusal is off
        model, job, config=MINIBATCH_JOBS.get(job), runtime=rt, require_above_chance=False
    ).run(loader if loader is not None else ds.train.loader(batch_size=30), scan=scan)


@pytest.mark.parametrize("job", list(MINIBATCH_JOBS))
def test_disk_storage_never_builds_the_full_float_copy(
    job: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: ImageStore) -> torch.Tensor:
        raise AssertionError(f"{job} asked for every clean image at once")

    monkeypatch.setattr(DiskStore, "to_tensor", refuse)
    ds = ddp_worker.data()
    loader = _Once(ds.train.pixels(), ds.train.labels)
    res = _run(job, {"clean_storage": "disk", "spill_dir": str(tmp_path)}, loader)
    assert res.report.clean_storage == {
        "location": "disk",
        "dtype": "uint8",
        "images": 104,
        "bytes": 104 * 3 * 16 * 16,
    }
    assert res.report.steps > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("job", ["finetune", "nc-unlearn", "mcl", "d3"])
def test_uint8_and_disk_storage_are_bit_identical_to_float(
    job: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_uint8 = _run(job, {})
    on_disk = _run(job, {"clean_storage": "disk", "spill_dir": str(tmp_path)})
    monkeypatch.setattr(store_mod, "quantize", lambda x: None)  # keep float32
    as_float = _run(job, {})
    assert as_uint8.report.clean_storage["dtype"] == "uint8"
    assert on_disk.report.clean_storage["location"] == "disk"
    assert as_float.report.clean_storage["dtype"] == "float32"
    assert as_float.report.clean_storage["bytes"] == 4 * as_uint8.report.clean_storage["bytes"]
    sha = ModelFingerprint.of(as_float.model).sha256
    assert ModelFingerprint.of(as_uint8.model).sha256 == sha
    assert ModelFingerprint.of(on_disk.model).sha256 == sha
    for rep in (as_uint8.report, on_disk.report):
        assert rep.ba_after == as_float.report.ba_after
        assert rep.details.get("final_loss") == as_float.report.details.get("final_loss")


def test_a_plugin_strategy_still_gets_ctx_x(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    class Legacy(PurificationStrategy):
        name = "legacy-ctx-x-test"
        validation_fraction = 0.1

        def run(self, ctx: PurifyContext) -> StrategyOutcome:
            seen["x"] = ctx.x
            seen["x_val"] = ctx.x_val
            seen["store"] = ctx.images
            assert ctx.x is seen["x"]  # built once
            return StrategyOutcome(model=ctx.model)

    STRATEGIES.register(Legacy.name, Legacy)
    try:
        _run(Legacy.name, {})
    finally:
        STRATEGIES.unregister(Legacy.name)
    x, store = seen["x"], seen["store"]
    assert isinstance(x, torch.Tensor)
    assert isinstance(store, ImageStore)
    assert x.dtype == torch.float32
    assert torch.equal(x, store[:])
    assert isinstance(seen["x_val"], torch.Tensor)
    assert len(seen["x_val"]) > 0

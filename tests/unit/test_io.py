"""Unit tests for hardenkit.io: safe weight loading/saving."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from hardenkit.errors import DataError, ModelCompatibilityError, UnsafeArtifactError
from hardenkit.io import (
    file_sha256,
    load_model_weights,
    load_state_dict,
    save_state_dict,
    write_json,
)


class CustomPayload:
    """A custom class: pickling it makes a checkpoint that needs code execution to load."""

    def __init__(self) -> None:
        self.weight = torch.ones(2)


CUSTOM_GLOBAL = f"{CustomPayload.__module__}.{CustomPayload.__qualname__}"


def _net(out: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, out))


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------
# save / load round trips
# --------------------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path: Path) -> None:
    model = _net()
    path = save_state_dict(model, tmp_path / "deep" / "m.safetensors", metadata={"arch": "x"})
    assert path == tmp_path / "deep" / "m.safetensors"
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_state_dict(path)
    _assert_same_state(loaded, model.state_dict())
    assert all(v.device.type == "cpu" for v in loaded.values())
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"arch": "x"}


def test_save_mapping_with_shared_and_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd = {"a": base, "tied": base, "t": base.t(), "half": base[:, :2].to(torch.float16)}
    path = save_state_dict(sd, tmp_path / "shared.safetensors")
    loaded = load_state_dict(path)
    assert torch.equal(loaded["a"], base)
    assert torch.equal(loaded["tied"], base)
    assert torch.equal(loaded["t"], base.t())
    assert loaded["half"].dtype == torch.float16
    assert loaded["t"].is_contiguous()


@pytest.mark.parametrize("name", ["m.pt", "m.pth", "m.bin", "m", "m.safetensors.bak"])
def test_save_refuses_non_safetensors_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="safetensors") as info:
        save_state_dict(nn.Linear(2, 2), tmp_path / name)
    assert info.value.hint is not None
    assert ".safetensors" in info.value.hint
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_torch_state_dict_loads_weights_only(tmp_path: Path, suffix: str) -> None:
    model = _net()
    path = tmp_path / f"weights{suffix}"
    torch.save(model.state_dict(), path)
    _assert_same_state(load_state_dict(path), model.state_dict())


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "net", "weights"])
def test_checkpoint_dict_is_unwrapped(tmp_path: Path, key: str) -> None:
    model = _net()
    ckpt = {
        "epoch": 7,
        "optimizer": {"lr": 0.1, "momentum": 0.9},
        key: model.state_dict(),
        "notes": "trained",
    }
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    _assert_same_state(load_state_dict(path), model.state_dict())


def test_ordered_dict_state_dict_keeps_keys(tmp_path: Path) -> None:
    sd = OrderedDict([("z", torch.zeros(1)), ("a", torch.ones(2))])
    path = tmp_path / "od.pt"
    torch.save(sd, path)
    loaded = load_state_dict(path)
    assert list(loaded) == ["z", "a"]


@pytest.mark.parametrize(
    "payload",
    [[torch.zeros(1)], {}, {"epoch": 3}, {"state_dict": {}}, {"state_dict": {"a": 1}}, 5],
    ids=["list", "empty-dict", "no-tensors", "empty-nested", "nested-non-tensor", "int"],
)
def test_file_without_state_dict_raises_data_error(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(DataError, match="holds no state dict"):
        load_state_dict(path)


# --------------------------------------------------------------------------------------
# unsafe / malformed files
# --------------------------------------------------------------------------------------


def test_pickled_custom_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    torch.save(CustomPayload(), path)
    with pytest.raises(UnsafeArtifactError) as info:
        load_state_dict(path)
    exc = info.value
    assert CUSTOM_GLOBAL in exc.unsafe_globals
    assert CUSTOM_GLOBAL in str(exc)
    assert "Refused" in str(exc)
    assert exc.hint is not None
    assert "state_dict" in exc.hint


def test_pickled_full_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(UnsafeArtifactError) as info:
        load_state_dict(path)
    assert "torch.nn.modules.linear.Linear" in info.value.unsafe_globals
    assert "torch.nn.modules.linear.Linear" in str(info.value)


def test_checkpoint_with_custom_object_inside_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": nn.Linear(2, 2).state_dict(), "extra": CustomPayload()}, path)
    with pytest.raises(UnsafeArtifactError) as info:
        load_state_dict(path)
    assert CUSTOM_GLOBAL in info.value.unsafe_globals


def test_refused_pickle_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))

    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "x": Evil()}, path)
    with pytest.raises(UnsafeArtifactError) as info:
        load_state_dict(path)
    assert not marker.exists()
    assert "pathlib.Path" in info.value.unsafe_globals
    assert "builtins.getattr" in info.value.unsafe_globals


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.pt", b""),
        ("badzip.pt", b"PK\x03\x04 definitely not a zip archive"),
        ("bad.safetensors", b"this is not a safetensors file"),
        ("empty.safetensors", b""),
    ],
)
def test_unreadable_file_raises_data_error(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a readable"):
        load_state_dict(path)


@pytest.mark.parametrize(
    "content",
    [
        b"not a weights file",
        b'{"weight": [1, 2, 3]}',
        bytes(range(64)),
        b"hello\n" * 10,
        b"this is not a torch file at all\n" * 3,
    ],
    ids=["text", "json", "bytes", "hello", "sentence"],
)
def test_garbage_torch_file_raises_data_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(DataError):
        load_state_dict(path)


def test_missing_file_raises_data_error(tmp_path: Path) -> None:
    for name in ("missing.pt", "missing.safetensors"):
        with pytest.raises(DataError, match="does not exist"):
            load_state_dict(tmp_path / name)
    with pytest.raises(DataError, match="does not exist"):
        load_state_dict(tmp_path)  # a directory is not a file


# --------------------------------------------------------------------------------------
# load_model_weights
# --------------------------------------------------------------------------------------


def test_load_model_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = _net()
    path = save_state_dict(src, tmp_path / "w.safetensors")
    torch.manual_seed(2)
    dst = _net()
    assert not torch.equal(dst[0].weight, src[0].weight)
    out = load_model_weights(dst, path)
    assert out is dst
    _assert_same_state(dst.state_dict(), src.state_dict())


def test_load_model_weights_strips_module_prefix(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = _net()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "dp.pt"
    torch.save(sd, path)
    dst = load_model_weights(_net(), path)
    _assert_same_state(dst.state_dict(), src.state_dict())


def test_partial_module_prefix_is_not_stripped(tmp_path: Path) -> None:
    src = _net()
    sd = dict(src.state_dict())
    first = next(iter(sd))
    sd[f"module.{first}"] = sd.pop(first)
    path = save_state_dict(sd, tmp_path / "partial.safetensors")
    with pytest.raises(ModelCompatibilityError, match="missing"):
        load_model_weights(_net(), path)


def test_missing_keys_raise(tmp_path: Path) -> None:
    sd = dict(_net().state_dict())
    sd.pop("3.bias")
    path = save_state_dict(sd, tmp_path / "missing.safetensors")
    with pytest.raises(ModelCompatibilityError) as info:
        load_model_weights(_net(), path)
    assert "3.bias" in str(info.value)
    assert isinstance(info.value, TypeError)
    assert info.value.hint is not None


def test_unexpected_keys_raise(tmp_path: Path) -> None:
    sd = dict(_net().state_dict())
    sd["extra.weight"] = torch.zeros(2)
    path = save_state_dict(sd, tmp_path / "unexpected.safetensors")
    with pytest.raises(ModelCompatibilityError, match=r"unexpected \['extra.weight'\]"):
        load_model_weights(_net(), path)


def test_many_mismatched_keys_are_truncated(tmp_path: Path) -> None:
    sd = {f"junk{i}": torch.zeros(1) for i in range(8)}
    path = save_state_dict(sd, tmp_path / "junk.safetensors")
    with pytest.raises(ModelCompatibilityError) as info:
        load_model_weights(_net(), path)
    msg = str(info.value)
    assert "junk0" in msg
    assert "junk4" in msg
    assert "junk7" not in msg
    assert "..." in msg


def test_non_strict_allows_missing_keys(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = _net()
    sd = {k: v for k, v in src.state_dict().items() if k.startswith("0.")}
    path = save_state_dict(sd, tmp_path / "part.safetensors")
    torch.manual_seed(2)
    dst = _net()
    before = dst[3].weight.detach().clone()
    load_model_weights(dst, path, strict=False)
    assert torch.equal(dst[0].weight, src[0].weight)
    assert torch.equal(dst[3].weight, before)


def test_shape_mismatch_raises(tmp_path: Path) -> None:
    path = save_state_dict(_net(out=3), tmp_path / "three.safetensors")
    dst = _net(out=4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ModelCompatibilityError) as info:
        load_model_weights(dst, path)
    msg = str(info.value)
    assert "3.weight: file (3, 5) vs model (4, 5)" in msg
    assert "3.bias" in msg
    _assert_same_state(dst.state_dict(), before)  # nothing was loaded
    with pytest.raises(ModelCompatibilityError, match="shapes"):
        load_model_weights(_net(out=4), path, strict=False)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def test_file_sha256_and_write_json(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # > 1 MiB: exercises chunked reading
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    out = write_json(tmp_path / "a" / "b.json", {"x": 1, "p": Path("/tmp")})
    assert json.loads(out.read_text()) == {"x": 1, "p": "/tmp"}
    assert not list(out.parent.glob("*.tmp"))

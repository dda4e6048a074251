"""Odd models and odd weight files: a typed HardenkitError with a fix, or a correct answer.

Every test that passes a model in also checks that the caller's model is left exactly as it
was (weights, every ``training`` flag, every ``requires_grad`` flag).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import hardenkit as hk
from hardenkit._utils.model_checks import check_model, require_trainable, unwrap_model
from hardenkit.errors import DataError, ModelCompatibilityError, UnsafeArtifactError
from hardenkit.io import load_model_weights, load_state_dict, save_state_dict, scan_pickle_globals

Batches = list[tuple[Tensor, Tensor]]

pytestmark = [
    # users still hand us TorchScript files; torch itself calls the API deprecated
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning"),
]

# --- helpers --------------------------------------------------------------------------------


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


@pytest.fixture
def data() -> Batches:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
        for _ in range(3)
    ]


@dataclass
class Snapshot:
    state: dict[str, Tensor]
    training: list[bool]
    requires_grad: list[bool]


def snapshot(model: nn.Module) -> Snapshot:
    return Snapshot(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        training=[m.training for m in model.modules()],
        requires_grad=[p.requires_grad for p in model.parameters()],
    )


def assert_unchanged(model: nn.Module, snap: Snapshot) -> None:
    now = model.state_dict()
    assert sorted(now) == sorted(snap.state)
    for k, v in snap.state.items():
        assert now[k].dtype == v.dtype, k
        assert now[k].device == v.device, k
        assert now[k].shape == v.shape, k
        if not v.is_meta:
            assert torch.equal(now[k], v), k
    assert [m.training for m in model.modules()] == snap.training
    assert [p.requires_grad for p in model.parameters()] == snap.requires_grad


class TupleOut(nn.Module):
    """Returns ``(logits, features)``, like many research models."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.body(x), x.mean(dim=(2, 3))


class DictOut(nn.Module):
    """Returns ``{"logits": ...}``, like Hugging Face style models."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.body(x)}


def compiled(model: nn.Module) -> nn.Module:
    out = torch.compile(model, backend="eager")
    assert isinstance(out, nn.Module)
    return out


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a pickle executed code while being inspected"


def make_evil(marker: Path) -> object:
    class Evil:
        def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
            return (os.system, (f"touch {marker}",))

    return Evil()


def make_evil_getcwd() -> object:
    class Evil2:
        def __reduce__(self) -> tuple[Callable[[], str], tuple[()]]:
            return (os.getcwd, ())

    return Evil2()


SYSTEM = f"{os.system.__module__}.system"  # posix.system on Linux/macOS, nt.system on Windows


def assert_clean_message(exc: BaseException) -> None:
    text = str(exc)
    assert "weights_only=False" not in text
    assert "\x1b" not in text
    assert "Fix:" in text  # every message says how to fix it


# --- check_model / unwrap_model / require_trainable -----------------------------------------


def test_unwrap_model_peels_nested_wrappers_without_copying() -> None:
    net = tiny()
    assert unwrap_model(net) is net
    assert unwrap_model(nn.DataParallel(net)) is net
    assert unwrap_model(compiled(net)) is net
    assert unwrap_model(nn.DataParallel(compiled(nn.DataParallel(net)))) is net


def test_check_model_refuses_non_modules_with_a_fix() -> None:
    with pytest.raises(ModelCompatibilityError, match=r"expected a torch\.nn\.Module") as ei:
        check_model({"weight": torch.ones(1)}, where="Validator")
    assert "builtins.dict" in str(ei.value)
    assert_clean_message(ei.value)


def test_check_model_refuses_traced_and_partly_scripted_models() -> None:
    traced = torch.jit.trace(tiny(), torch.rand(1, 3, 8, 8))
    with pytest.raises(ModelCompatibilityError, match="TorchScript"):
        check_model(traced, where="Scanner")
    mixed = nn.Sequential(torch.jit.script(tiny()), nn.Identity())
    with pytest.raises(ModelCompatibilityError, match=r"scripted: 0\)"):
        check_model(mixed, where="Scanner")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_check_model_refuses_non_float32_but_not_for_export(dtype: torch.dtype) -> None:
    model = tiny().to(dtype)
    with pytest.raises(ModelCompatibilityError, match=r"model\.float\(\)") as ei:
        check_model(model, where="Validator")
    assert str(dtype).removeprefix("torch.") in str(ei.value)
    assert check_model(model, where="to_onnx", require_float32=False) is model


def test_require_trainable() -> None:
    model = tiny()
    require_trainable(model, where="finetune")
    snap = snapshot(model.requires_grad_(False))
    with pytest.raises(ModelCompatibilityError, match="requires_grad_") as ei:
        require_trainable(model, where="finetune")
    assert "shapley-pruning" in str(ei.value)
    with pytest.raises(ModelCompatibilityError, match="without parameters"):
        require_trainable(nn.ReLU(), where="finetune")
    assert_unchanged(model, snap)


# --- models returning something other than a logits tensor ----------------------------------


@pytest.mark.parametrize("cls", [TupleOut, DictOut])
def test_validator_refuses_non_tensor_output(cls: type[nn.Module], data: Batches) -> None:
    model = cls().train()
    snap = snapshot(model)
    with pytest.raises(ModelCompatibilityError, match="one logits tensor") as ei:
        hk.Validator(model).run(data)
    assert ("tuple" if cls is TupleOut else "dict") in str(ei.value)
    assert "out[0]" in str(ei.value) or "out['logits']" in str(ei.value)
    assert_clean_message(ei.value)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("cls", [TupleOut, DictOut])
def test_scanner_refuses_non_tensor_output(cls: type[nn.Module], data: Batches) -> None:
    model = cls()
    snap = snapshot(model)
    with pytest.raises(ModelCompatibilityError) as ei:
        hk.Scanner(model, 3).run(data)
    assert ("tuple" if cls is TupleOut else "dict") in str(ei.value)
    assert_unchanged(model, snap)


def test_check_logits_names_what_came_back() -> None:
    from hardenkit.training import check_logits

    with pytest.raises(ModelCompatibilityError, match=r"tuple of 2 items"):
        check_logits((torch.zeros(2, 3), torch.zeros(2)), 2, None)
    with pytest.raises(ModelCompatibilityError, match=r"dict with keys \['logits'\]"):
        check_logits({"logits": torch.zeros(2, 3)}, 2, None)


# --- TorchScript, meta device, fp16 at the entry points -------------------------------------


def test_torchscript_model_is_refused_everywhere(data: Batches, tmp_path: Path) -> None:
    scripted = torch.jit.script(tiny())
    snap = snapshot(scripted)
    with pytest.raises(ModelCompatibilityError, match="TorchScript") as ei:
        hk.Scanner(scripted, 3)
    assert_clean_message(ei.value)
    with pytest.raises(ModelCompatibilityError, match="TorchScript"):
        hk.Validator(scripted)
    with pytest.raises(ModelCompatibilityError, match="TorchScript"):
        hk.to_onnx(scripted, tmp_path / "m.onnx", input_shape=(3, 8, 8))
    assert not (tmp_path / "m.onnx").exists()
    assert_unchanged(scripted, snap)


def test_torchscript_model_is_refused_by_the_purifier(data: Batches) -> None:
    """Needs ``check_model`` wired into ``Purifier`` (at construction or at run)."""
    scripted = torch.jit.script(tiny())
    snap = snapshot(scripted)
    with pytest.raises(ModelCompatibilityError, match="TorchScript"):
        hk.Purifier(scripted, "finetune", config={"epochs": 1}).run(data)
    assert_unchanged(scripted, snap)


def test_meta_device_model_is_refused(data: Batches) -> None:
    with torch.device("meta"):
        model = tiny()
    snap = snapshot(model)
    for make in (lambda: hk.Validator(model), lambda: hk.Scanner(model, 3)):
        with pytest.raises(ModelCompatibilityError, match="meta") as ei:
            make()
        assert "assign=True" in str(ei.value)
        assert "to_empty" in str(ei.value)
        assert_clean_message(ei.value)
    assert_unchanged(model, snap)


def test_meta_buffer_is_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    model[1].register_buffer("running_mean", torch.empty(3, device="meta"))
    with pytest.raises(ModelCompatibilityError, match=r"running_mean \(buffer\)"):
        check_model(model, where="Validator")


def test_fp16_model_in_validator_and_scanner(data: Batches) -> None:
    model = tiny().half()
    snap = snapshot(model)
    with pytest.raises(ModelCompatibilityError, match="float32") as ei:
        hk.Validator(model).run(data)
    text = str(ei.value)
    assert "float16" in text
    assert "model.float()" in text
    assert "autocast" in text
    with pytest.raises(ModelCompatibilityError, match="float32"):
        hk.Scanner(model, 3)
    assert_unchanged(model, snap)


# --- wrapped models: torch.compile, DataParallel ---------------------------------------------


@pytest.mark.parametrize("wrap", ["compile", "dataparallel", "both"])
def test_wrapped_model_gives_the_eager_answer_in_validator(wrap: str, data: Batches) -> None:
    net = tiny().train()
    model: nn.Module = {
        "compile": lambda: compiled(net),
        "dataparallel": lambda: nn.DataParallel(net),
        "both": lambda: nn.DataParallel(compiled(net)),
    }[wrap]()
    snap, snap_inner = snapshot(model), snapshot(net)
    rep = hk.Validator(model, num_classes=3).run(data)
    eager = tiny()
    eager.load_state_dict(net.state_dict())
    ref = hk.Validator(eager, num_classes=3).run(data)
    assert rep.benign_accuracy == ref.benign_accuracy
    assert rep.model.sha256 == ref.model.sha256  # fingerprint of the plain weights
    assert_unchanged(model, snap)
    assert_unchanged(net, snap_inner)
    assert net.training


def test_scanner_unwraps_compiled_model() -> None:
    net = tiny()
    model = compiled(net)
    snap = snapshot(model)
    assert hk.Scanner(model, 3).model is net
    assert_unchanged(model, snap)


def _train_one_step(model: nn.Module, data: Batches) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data[0]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("wrap", ["compile", "dataparallel", "dataparallel+compile"])
def test_wrapped_model_round_trips_through_safetensors(
    wrap: str, data: Batches, tmp_path: Path
) -> None:
    net = tiny()
    model: nn.Module = {
        "compile": lambda: compiled(net),
        "dataparallel": lambda: nn.DataParallel(net),
        "dataparallel+compile": lambda: nn.DataParallel(compiled(net)),
    }[wrap]()
    _train_one_step(model, data)  # "purified": weights changed through the wrapper
    assert any(k.startswith(("_orig_mod.", "module.")) for k in model.state_dict())
    x = data[1][0]
    with torch.no_grad():
        want = net.eval()(x)
    snap = snapshot(model)

    path = save_state_dict(model, tmp_path / "m.safetensors")
    assert sorted(load_state_dict(path)) == sorted(tiny().state_dict())
    fresh = load_model_weights(tiny(), path)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), want)

    # the wrapper's own state_dict (prefixed keys) saves plain keys too
    path2 = save_state_dict(model.state_dict(), tmp_path / "m2.safetensors")
    assert sorted(load_state_dict(path2)) == sorted(tiny().state_dict())

    # a prefixed file (written by another tool) loads into an eager or a wrapped model
    prefixed = tmp_path / "prefixed.pt"
    torch.save(model.state_dict(), prefixed)
    for target in (tiny(), compiled(tiny()), nn.DataParallel(tiny())):
        out = load_model_weights(target, prefixed)
        assert out is target
        with torch.no_grad():
            assert torch.equal(unwrap_model(target).eval()(x), want)
    assert_unchanged(model, snap)


def test_real_module_child_named_module_keeps_its_prefix(tmp_path: Path) -> None:
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)

    src = Holder()
    path = tmp_path / "h.pt"
    torch.save(src.state_dict(), path)  # keys module.weight / module.bias, no wrapper
    dst = load_model_weights(Holder(), path)
    assert torch.equal(dst.module.weight, src.module.weight)


# --- pickles that need code execution ---------------------------------------------------------


def _assert_unsafe(path: Path, *expected: str) -> UnsafeArtifactError:
    with pytest.raises(UnsafeArtifactError) as ei:
        load_state_dict(path)
    for name in expected:
        assert name in ei.value.unsafe_globals, ei.value.unsafe_globals
        assert name in str(ei.value)
    assert_clean_message(ei.value)
    assert ei.value.__cause__ is None  # torch's "use weights_only=False" text is not chained
    return ei.value


@pytest.mark.parametrize("fmt", ["legacy", "zip", "pickle"])
def test_pickled_module_is_refused_with_its_globals(fmt: str, tmp_path: Path) -> None:
    model = tiny()
    snap = snapshot(model)
    path = tmp_path / "model.pt"
    if fmt == "legacy":
        torch.save(model, path, _use_new_zipfile_serialization=False)
    elif fmt == "zip":
        torch.save(model, path)
    else:
        with path.open("wb") as fh:
            pickle.dump(model, fh)
    err = _assert_unsafe(
        path, "torch.nn.modules.container.Sequential", "torch.nn.modules.conv.Conv2d"
    )
    assert not any("_rebuild_tensor" in n or n.endswith("Storage") for n in err.unsafe_globals)
    with pytest.raises(UnsafeArtifactError):
        load_model_weights(tiny(), path)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_os_system_pickle_is_refused_and_never_executed(
    protocol: int, tmp_path: Path, marker: Path
) -> None:
    path = tmp_path / "evil.pkl"
    # a second global from the same module: protocol 4+ memoizes the module name (BINGET)
    path.write_bytes(pickle.dumps([make_evil(marker), make_evil_getcwd()], protocol=protocol))
    assert scan_pickle_globals(path) == sorted([SYSTEM, f"{os.getcwd.__module__}.getcwd"])
    err = _assert_unsafe(path, SYSTEM, f"{os.getcwd.__module__}.getcwd")
    assert len(err.unsafe_globals) == 2
    with pytest.raises(UnsafeArtifactError):
        load_model_weights(tiny(), path)


@pytest.mark.parametrize("zip_format", [False, True])
def test_torch_saved_os_system_payload_is_refused(
    zip_format: bool, tmp_path: Path, marker: Path
) -> None:
    path = tmp_path / "evil.pt"
    payload = {"state_dict": tiny().state_dict(), "extra": make_evil(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    err = _assert_unsafe(path, SYSTEM)
    assert err.unsafe_globals == [SYSTEM]


def test_zip_checkpoint_is_scanned_from_its_data_pkl(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": make_evil(marker)}, path)
    with zipfile.ZipFile(path) as zf:
        assert any(n.endswith("/data.pkl") for n in zf.namelist())
    assert SYSTEM in scan_pickle_globals(path)


@pytest.mark.parametrize("zip_format", [False, True])
def test_weights_only_files_still_load(zip_format: bool, tmp_path: Path) -> None:
    model = tiny()
    path = tmp_path / "sd.pt"
    torch.save({"state_dict": model.state_dict()}, path, _use_new_zipfile_serialization=zip_format)
    sd = load_state_dict(path)
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert set(scan_pickle_globals(path)) <= {
        "collections.OrderedDict",
        "torch.FloatStorage",
        "torch._utils._rebuild_tensor_v2",
        "torch.LongStorage",
    }


@pytest.mark.parametrize(
    "content",
    [os.urandom(2000), b"hello world\ncat\ndog\n", b"", b"PK\x03\x04 not really a zip"],
    ids=["random", "text", "empty", "fake-zip"],
)
def test_not_a_pickle_is_a_clean_data_error(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(DataError) as ei:
        load_state_dict(path)
    assert not isinstance(ei.value, UnsafeArtifactError)
    assert_clean_message(ei.value)
    assert scan_pickle_globals(path) == []


def test_torch_error_text_with_ansi_and_weights_only_advice_is_not_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x00\x01 not a pickle")

    def refuse(*args: object, **kwargs: object) -> object:
        raise pickle.UnpicklingError(
            "\x1b[1mWeights only load failed.\x1b[0m Re-running with weights_only=False will ..."
        )

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(DataError) as ei:
        load_state_dict(path)
    assert_clean_message(ei.value)
    assert "Weights only load failed" not in str(ei.value)
    assert ei.value.__cause__ is None

    def colourful(*args: object, **kwargs: object) -> object:
        raise RuntimeError("\x1b[31mbad magic number\x1b[0m")

    monkeypatch.setattr(torch, "load", colourful)
    with pytest.raises(DataError, match="bad magic number") as ei2:
        load_state_dict(path)
    assert_clean_message(ei2.value)

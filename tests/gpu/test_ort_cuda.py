"""ONNX Runtime on CUDA: the session really runs there, and its logits match PyTorch.

Marked ``gpu``: tests/conftest.py skips these without a CUDA device. On a GPU machine whose
ONNX Runtime cannot load the CUDA provider, these tests *fail* with ExecutionProviderError on
purpose: that is the silent-fallback setup hardenkit exists to catch (see `hardenkit doctor`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hardenkit as hk
from hardenkit.export import (
    ExportReport,
    check_providers,
    convert_fp16,
    default_providers,
    make_session,
    to_onnx,
    verify_onnx,
)

pytestmark = pytest.mark.gpu

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module", autouse=True)
def _ort_has_cuda() -> None:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build has no CUDA provider (install onnxruntime-gpu)")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = hk.create_model("small-cnn", 10)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def exported(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    return to_onnx(model, tmp_path_factory.mktemp("gpu") / "model.onnx", input_shape=(3, 32, 32))


@pytest.fixture(scope="module")
def loader() -> object:
    data = hk.make_synthetic_dataset(num_classes=10, train_per_class=1, test_per_class=20)
    return data.test.loader(batch_size=50)


def test_cuda_session_really_runs_on_cuda(exported: ExportReport) -> None:
    session = make_session(exported.path, [CUDA, CPU])
    assert session.get_providers()[0] == CUDA
    assert default_providers() == [CUDA, CPU]
    assert {c.provider: c.active for c in check_providers([CUDA])} == {CUDA: True}


def test_fp32_cuda_parity(exported: ExportReport, model: torch.nn.Module, loader: object) -> None:
    rep = verify_onnx(
        exported,
        model,
        loader,
        trigger=hk.PatchTrigger.square(3),
        target=0,
        providers=[CUDA, CPU],
        # strict fp32 on the GPU: TF32 off in ONNX Runtime (PyTorch's is off while verifying)
        provider_options={CUDA: {"use_tf32": 0}},
    )
    assert rep.profile == "fp32-cuda"
    assert rep.providers_active[0] == CUDA
    assert rep.torch_device.startswith("cuda")
    assert rep.passed, rep.summary()
    assert rep.throughput.ort_images_per_s
    assert rep.throughput.torch_images_per_s


def test_default_providers_pick_cuda(
    exported: ExportReport, model: torch.nn.Module, loader: object
) -> None:
    rep = verify_onnx(exported, model, loader, provider_options={CUDA: {"use_tf32": 0}})
    assert rep.providers_requested == [CUDA, CPU]
    assert rep.providers_active[0] == CUDA
    assert rep.passed, rep.summary()


def test_fp16_on_cuda(
    exported: ExportReport, model: torch.nn.Module, loader: object, tmp_path: Path
) -> None:
    pytest.importorskip("onnxconverter_common")
    rep16 = convert_fp16(exported, tmp_path / "model.fp16.onnx")
    rep = verify_onnx(rep16, model, loader, providers=[CUDA, CPU])
    assert rep.profile == "fp16"
    assert rep.providers_active[0] == CUDA
    assert rep.passed, rep.summary()

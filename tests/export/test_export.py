"""ONNX export and post-export verification on the CPU execution provider.

The expensive steps (training a tiny backdoored model, exporting it) run once per module;
the large zoo models are exported and verified once each under the ``slow`` marker.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import hardenkit as hk
from hardenkit.attacks import BackdooredModel
from hardenkit.data import SyntheticSplits
from hardenkit.errors import ConfigError, ExecutionProviderError, ExportError, ParityError
from hardenkit.export import (
    PROFILES,
    ExportReport,
    OrtModule,
    ParityTolerance,
    VerificationReport,
    check_providers,
    convert_fp16,
    default_providers,
    make_session,
    ort_distributions,
    read_metadata,
    to_onnx,
    verify_onnx,
)
from hardenkit.io import file_sha256

CPU = ["CPUExecutionProvider"]
CUDA_RUNS = torch.cuda.is_available()


@pytest.fixture(scope="module")
def backdoored(tiny_synthetic: SyntheticSplits) -> BackdooredModel:
    """A 4-class small-cnn with a BadNets backdoor (a few seconds on one CPU thread)."""
    return hk.make_backdoored_model(
        "badnets",
        tiny_synthetic.train,
        arch="small-cnn",
        attack_config={"target": 0, "poison_rate": 0.2},
        train_config=hk.TrainConfig(epochs=3, batch_size=32, lr=0.05, augment=False),
        runtime={"seed": 0, "device": "cpu"},
    )


@pytest.fixture(scope="module")
def exported(backdoored: BackdooredModel, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    return to_onnx(backdoored.model, out, input_shape=(3, 32, 32), report_id="purify-123")


@pytest.fixture
def test_loader(tiny_synthetic: SyntheticSplits) -> object:
    return tiny_synthetic.test.loader(batch_size=16)


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
    )


# --- export ----------------------------------------------------------------------------------


def test_export_report_lists_the_single_file(
    exported: ExportReport, backdoored: BackdooredModel
) -> None:
    path = Path(exported.path)
    assert path.is_file()
    assert [f.role for f in exported.files] == ["model"]
    assert exported.files[0].sha256 == file_sha256(path)
    assert exported.files[0].size_bytes == path.stat().st_size
    assert not exported.external_data
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no sidecar, no tmp
    assert exported.opset == 18
    assert exported.ir_version == 10
    assert exported.inputs[0].name == "input"
    assert exported.inputs[0].shape == ["batch", 3, 32, 32]
    assert exported.inputs[0].dtype == "float32"
    assert exported.outputs[0].name == "logits"
    assert exported.outputs[0].shape == ["batch", 4]
    assert exported.dynamic_batch
    assert exported.model is not None
    assert exported.model.sha256 == hk.ModelFingerprint.of(backdoored.model).sha256
    assert exported.exporter == "torch.onnx.export(dynamo=True)"
    assert exported.torch_version == torch.__version__
    assert exported.onnx_version == onnx.__version__
    assert len(exported.checks) == 2
    # JSON round trip
    again = ExportReport.model_validate_json(exported.to_json())
    assert again.files == exported.files


def test_export_metadata_props(exported: ExportReport, backdoored: BackdooredModel) -> None:
    meta = read_metadata(exported.path)
    assert meta["hardenkit.version"] == hk.__version__
    assert meta["hardenkit.model_sha256"] == hk.ModelFingerprint.of(backdoored.model).sha256
    assert meta["hardenkit.purification_report_id"] == "purify-123"
    assert meta["hardenkit.input_contract"] == "float32 NCHW pixels in [0,1]"
    assert meta["hardenkit.precision"] == "fp32"
    assert exported.purification_report_id == "purify-123"


def test_normalization_is_inside_the_graph(
    exported: ExportReport, backdoored: BackdooredModel
) -> None:
    # raw [0, 1] pixels in, the wrapped model's logits out: nothing to normalize outside
    x = torch.rand(5, 3, 32, 32)
    ort_logits = OrtModule.from_path(exported.path, CPU)(x)
    with torch.no_grad():
        ref = backdoored.model.eval()(x)
    torch.testing.assert_close(ort_logits, ref, atol=1e-4, rtol=1e-3)


def test_dynamic_batch_runs_at_1_and_7(exported: ExportReport) -> None:
    session = make_session(exported.path, CPU)
    assert session.get_inputs()[0].shape[0] == "batch"
    for n in (1, 7):
        x = np.random.default_rng(n).random((n, 3, 32, 32), dtype=np.float32)
        (out,) = session.run(None, {"input": x})
        assert out.shape == (n, 4)


def test_ort_module_feeds_float32_contiguous(exported: ExportReport) -> None:
    module = OrtModule.from_path(exported.path, CPU)
    x = torch.rand(3, 32, 32, 3).permute(0, 3, 1, 2).double()  # float64, non-contiguous
    assert module(x).dtype == torch.float32
    assert module(x).shape == (3, 4)


def test_static_batch_export_is_reported_static(
    backdoored: BackdooredModel, tmp_path: Path, test_loader: object
) -> None:
    rep = to_onnx(backdoored.model, tmp_path / "static.onnx", input_shape=(3, 32, 32),
                  dynamic_batch=False, example_batch_size=2)  # fmt: skip
    assert not rep.dynamic_batch
    assert rep.inputs[0].shape == [2, 3, 32, 32]
    assert rep.outputs[0].shape == [2, 4]
    assert read_metadata(rep.path)["hardenkit.input_shape"] == "2,3,32,32"
    # OrtModule chunks and pads, so verification still works at any batch size
    ver = verify_onnx(rep, backdoored.model, test_loader, providers=CPU)
    assert ver.passed, ver.summary()
    assert not ver.dynamic_batch


def test_batch_axis_that_comes_out_static_fails(tmp_path: Path) -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 4 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.fc(x.reshape(2, -1))  # hard-codes the example batch
            return out

    with pytest.raises(ExportError, match="batch"):
        to_onnx(FixedBatch(), tmp_path / "fixed.onnx", input_shape=(3, 4, 4))
    assert not (tmp_path / "fixed.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".md")] == []


def test_untraceable_model_is_an_export_error_with_the_exporter_report(tmp_path: Path) -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.flatten(1)[:, :3]
            return flat if bool(x.sum() > 0) else -flat  # data-dependent Python branch

    with pytest.raises(ExportError, match=r"torch\.export") as err:
        to_onnx(DataDependent(), tmp_path / "dd.onnx", input_shape=(3, 4, 4))
    assert "dd.export-report.md" in str(err.value)
    assert (tmp_path / "dd.export-report.md").is_file()
    assert not (tmp_path / "dd.onnx").exists()


def test_stale_sidecar_is_reported(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    out = tmp_path / "m.onnx"
    first = to_onnx(model, out, input_shape=(3, 4, 4), external_data="always")
    assert len(first.files) == 2
    assert first.warnings == []
    second = to_onnx(model, out, input_shape=(3, 4, 4), external_data="never")
    assert [f.name for f in second.files] == ["m.onnx"]
    assert "m.onnx.data" in second.warnings[0]
    # the single file loads without its (stale) neighbour
    (tmp_path / "m.onnx.data").unlink()
    assert OrtModule.from_path(out, CPU)(torch.rand(3, 3, 4, 4)).shape == (3, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of input_shape"),
        ({"input_shape": (3, 32, 32), "example_input": torch.rand(2, 3, 32, 32)}, "exactly one"),
        ({"input_shape": (32, 32)}, "input_shape must be"),
        ({"input_shape": (3, 32, 32), "opset": 17}, "opset"),
        ({"input_shape": (3, 32, 32), "external_data": "sometimes"}, "external_data"),
        ({"input_shape": (3, 32, 32), "metadata": {"hardenkit.version": "x"}}, "reserved"),
    ],
)
def test_bad_export_arguments(kwargs: dict[str, object], match: str, tmp_path: Path) -> None:
    model = hk.create_model("small-cnn", 4)
    with pytest.raises(ConfigError, match=match):
        to_onnx(model, tmp_path / "m.onnx", **kwargs)  # type: ignore[arg-type]


def test_bad_export_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.onnx"):
        to_onnx(hk.create_model("small-cnn", 4), tmp_path / "m.pt", input_shape=(3, 32, 32))


def test_wrong_input_shape_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(hk.ModelCompatibilityError):
        to_onnx(hk.create_model("small-cnn", 4), tmp_path / "m.onnx", input_shape=(1, 32, 32))


# --- verification ----------------------------------------------------------------------------


def test_verify_passes_and_measures_both_backends(
    exported: ExportReport, backdoored: BackdooredModel, test_loader: object
) -> None:
    rep = verify_onnx(
        exported,
        backdoored.model,
        test_loader,
        trigger=backdoored.trigger,
        target=backdoored.target,
        providers=CPU,
    )
    assert rep.passed, rep.summary()
    assert [c.name for c in rep.checks] == [
        "logits_allclose",
        "top1_agreement",
        "batch_sizes",
        "ba_delta",
        "asr_increase",
        "source_fingerprint",
    ]
    assert all(c.passed for c in rep.checks)
    assert rep.profile == "fp32-cpu"
    assert rep.tolerance == PROFILES["fp32-cpu"]
    assert rep.providers_requested == CPU
    assert rep.providers_active[0] == "CPUExecutionProvider"
    assert rep.batch_sizes_tested == [1, 7]
    assert [c.inputs for c in rep.comparisons] == ["held-out", "batch=1", "batch=7"]
    assert [c.samples for c in rep.comparisons[1:]] == [1, 7]
    assert rep.comparisons[0].samples == rep.samples + rep.triggered_samples
    # behavioural parity measured by the Validator on both backends
    torch_asr = rep.torch_metrics.attack_success_rate
    onnx_asr = rep.onnx_metrics.attack_success_rate
    assert torch_asr is not None
    assert onnx_asr is not None
    assert torch_asr.value is not None
    assert torch_asr.value > 0.5
    assert onnx_asr.value == torch_asr.value
    assert rep.onnx_metrics.benign_accuracy.value == rep.torch_metrics.benign_accuracy.value
    expected = hk.Validator(backdoored.model).run(
        test_loader, trigger=backdoored.trigger, target=backdoored.target
    )
    assert rep.torch_metrics.benign_accuracy.value == expected.ba
    assert torch_asr.value == expected.asr
    # throughput is measured, not asserted
    tp = rep.throughput
    assert tp.images > 0
    assert tp.torch_images_per_s
    assert tp.ort_images_per_s
    assert rep.onnxruntime_distributions == ort_distributions()
    assert [f.sha256 for f in rep.files] == [f.sha256 for f in exported.files]
    assert VerificationReport.model_validate_json(rep.to_json()).passed


def test_validator_runs_unchanged_on_ort(
    exported: ExportReport, backdoored: BackdooredModel, test_loader: object
) -> None:
    ort_rep = hk.Validator(OrtModule.from_path(exported.path, CPU)).run(
        test_loader, trigger=backdoored.trigger, target=backdoored.target
    )
    ref = hk.Validator(backdoored.model).run(
        test_loader, trigger=backdoored.trigger, target=backdoored.target
    )
    assert (ort_rep.ba, ort_rep.asr) == (ref.ba, ref.asr)


def test_callers_model_is_unchanged(backdoored: BackdooredModel, tmp_path: Path) -> None:
    model = copy.deepcopy(backdoored.model).train()  # training mode must survive too
    model.model.block1[1].eval()  # a per-submodule flag that model.train() would overwrite
    before, flags = _snapshot(model)
    rep = to_onnx(model, tmp_path / "m.onnx", input_shape=(3, 32, 32))
    data = [(torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1]))]
    verify_onnx(rep, model, data, trigger=backdoored.trigger, target=0, providers=CPU)
    after, flags_after = _snapshot(model)
    assert flags_after == flags
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # includes BN running stats and num_batches_tracked
    assert next(model.parameters()).device.type == "cpu"
    assert next(model.parameters()).dtype == torch.float32


def test_pruned_model_exports_and_matches(backdoored: BackdooredModel, tmp_path: Path) -> None:
    pruned = copy.deepcopy(backdoored.model)
    with torch.no_grad():  # "prune" half the channels of two blocks by zeroing BN gamma/beta
        for bn in (pruned.model.block2[1], pruned.model.block3[1]):
            half = bn.weight.shape[0] // 2
            bn.weight[:half] = 0
            bn.bias[:half] = 0
    # a single example image is repeated to a batch of 2 (batch 1 would specialise the axis)
    rep = to_onnx(pruned, tmp_path / "pruned.onnx", example_input=torch.rand(1, 3, 32, 32))
    assert rep.dynamic_batch
    assert rep.model is not None
    assert rep.model.sha256 != hk.ModelFingerprint.of(backdoored.model).sha256
    data = [(torch.rand(8, 3, 32, 32), torch.arange(8) % 4)]
    ver = verify_onnx(rep, pruned, data, providers=CPU)
    assert ver.passed, ver.summary()


def test_corrupted_initializer_fails_verification(
    exported: ExportReport, backdoored: BackdooredModel, tmp_path: Path, test_loader: object
) -> None:
    proto = onnx.load(exported.path)
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[: arr.size // 4] += 0.5 * float(np.abs(arr).mean()) + 0.05
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "corrupted.onnx"
    onnx.save(proto, str(bad))

    rep = verify_onnx(bad, backdoored.model, test_loader, providers=CPU)
    assert not rep.passed
    failed = {c.name for c in rep.failed_checks}
    assert "logits_allclose" in failed
    assert "source_fingerprint" not in failed  # same provenance metadata, different weights
    assert "FAIL" in rep.summary()
    with pytest.raises(ParityError, match="logits_allclose"):
        verify_onnx(bad, backdoored.model, test_loader, providers=CPU, raise_on_failure=True)


def test_verify_against_a_different_model_fails(
    exported: ExportReport, tiny_synthetic: SyntheticSplits, test_loader: object
) -> None:
    torch.manual_seed(1)
    other = hk.create_model("small-cnn", 4)
    rep = verify_onnx(exported, other, test_loader, providers=CPU, max_batches=1)
    assert not rep.passed
    assert "source_fingerprint" in {c.name for c in rep.failed_checks}


def test_external_data_always_and_missing_sidecar(
    backdoored: BackdooredModel, tmp_path: Path
) -> None:
    out = tmp_path / "side" / "model.onnx"
    rep = to_onnx(backdoored.model, out, input_shape=(3, 32, 32), external_data="always")
    assert rep.external_data
    assert [(f.name, f.role) for f in rep.files] == [
        ("model.onnx", "model"),
        ("model.onnx.data", "external_data"),
    ]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    for f in rep.files:
        assert f.sha256 == file_sha256(f.path)
        assert f.size_bytes == Path(f.path).stat().st_size
    data = [(torch.rand(8, 3, 32, 32), torch.arange(8) % 4)]
    assert verify_onnx(rep, backdoored.model, data, providers=CPU).passed

    # a gate that ships only model.onnx ships a broken model: caught before loading
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out, alone / "model.onnx")
    with pytest.raises(ExportError, match=r"model\.onnx\.data") as err:
        verify_onnx(alone / "model.onnx", backdoored.model, data, providers=CPU)
    assert "missing" in str(err.value)

    (out.parent / "model.onnx.data").unlink()
    with pytest.raises(ExportError, match=r"model\.onnx\.data"):
        verify_onnx(rep, backdoored.model, data, providers=CPU)
    with pytest.raises(ExportError, match=r"model\.onnx\.data"):
        verify_onnx(out, backdoored.model, data, providers=CPU)


def test_changed_file_is_caught_through_the_report(
    exported: ExportReport, backdoored: BackdooredModel, tmp_path: Path
) -> None:
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    moved = copy_dir / "model.onnx"
    shutil.copy(exported.path, moved)
    tampered = exported.model_copy(
        update={"files": [exported.files[0].model_copy(update={"path": str(moved), "sha256": "0"})]}
    )
    with pytest.raises(ExportError, match="changed since it was exported"):
        verify_onnx(tampered, backdoored.model, [(torch.rand(2, 3, 32, 32), torch.zeros(2).long())])


def test_requesting_cuda_without_a_gpu_raises(
    exported: ExportReport, backdoored: BackdooredModel
) -> None:
    if CUDA_RUNS:
        pytest.skip("a GPU is present: the CUDA provider may really run here")
    data = [(torch.rand(4, 3, 32, 32), torch.arange(4))]
    with pytest.raises(ExecutionProviderError) as err:
        verify_onnx(exported, backdoored.model, data, providers=["CUDAExecutionProvider"])
    msg = str(err.value)
    assert "fell back to the CPU" in msg
    assert "providers=['CPUExecutionProvider']" in msg  # how to ask for the CPU explicitly
    with pytest.raises(ExecutionProviderError):
        make_session(exported.path, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert isinstance(err.value, ExportError)  # the CLI maps it to exit code 3
    # the explicit CPU request is fine, and so is the default on a CPU-only machine
    assert default_providers() == CPU
    rep = verify_onnx(exported, backdoored.model, data, providers=CPU)
    assert rep.passed
    assert rep.providers_active[0] == "CPUExecutionProvider"
    checks = {c.provider: c for c in check_providers()}
    assert checks["CPUExecutionProvider"].active
    if "CUDAExecutionProvider" in checks:
        assert not checks["CUDAExecutionProvider"].active
        assert checks["CUDAExecutionProvider"].active_providers[0] == "CPUExecutionProvider"


def test_bad_provider_arguments(exported: ExportReport) -> None:
    with pytest.raises(ConfigError):
        make_session(exported.path, [])
    with pytest.raises(ConfigError):
        make_session(exported.path, CPU, {"CUDAExecutionProvider": {"device_id": 0}})
    assert make_session(exported.path, "CPUExecutionProvider").get_providers()[0] == CPU[0]


def test_one_shot_loader_and_max_batches(
    exported: ExportReport, backdoored: BackdooredModel, tiny_synthetic: SyntheticSplits
) -> None:
    batches = iter(list(tiny_synthetic.test.loader(batch_size=8)))
    rep = verify_onnx(exported, backdoored.model, batches, providers=CPU, max_batches=2)
    assert rep.passed, rep.summary()
    assert rep.samples == 16


def test_tolerance_profiles_and_overrides(
    exported: ExportReport, backdoored: BackdooredModel
) -> None:
    assert ParityTolerance.for_profile("fp32-cpu").atol == 1e-4
    assert ParityTolerance.for_profile("fp32-cpu").rtol == 1e-3
    assert ParityTolerance.for_profile("fp32-cuda").atol == 1e-3
    fp16 = ParityTolerance.for_profile("fp16")
    assert (fp16.min_top1_agreement, fp16.max_ba_delta) == (0.99, 0.01)
    with pytest.raises(ConfigError):
        ParityTolerance(atol=-1.0)
    with pytest.raises(ConfigError):
        ParityTolerance.for_profile("int8")  # type: ignore[arg-type]
    data = [(torch.rand(4, 3, 32, 32), torch.arange(4))]
    rep = verify_onnx(
        exported, backdoored.model, data, providers=CPU, profile="fp32-cuda",
        config={"min_top1_agreement": 0.5},
    )  # fmt: skip
    assert rep.profile == "fp32-cuda"
    assert rep.tolerance.atol == 1e-3
    assert rep.tolerance.min_top1_agreement == 0.5
    with pytest.raises(ConfigError):
        verify_onnx(exported, backdoored.model, data, providers=CPU, config={"nope": 1})
    with pytest.raises(ConfigError, match="together"):
        verify_onnx(exported, backdoored.model, data, providers=CPU, target=0)


def test_fp16_needs_the_optional_dependency(exported: ExportReport, tmp_path: Path) -> None:
    try:
        import onnxconverter_common  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ModuleNotFoundError, match=r"hardenkit\[fp16\]"):
            convert_fp16(exported, tmp_path / "m16.onnx")
    else:
        pytest.skip("onnxconverter-common is installed")


def test_fp16_serving_profile(
    exported: ExportReport, backdoored: BackdooredModel, tmp_path: Path, test_loader: object
) -> None:
    pytest.importorskip("onnxconverter_common")
    rep16 = convert_fp16(exported, tmp_path / "model.fp16.onnx")
    assert rep16.precision == "fp16"
    assert rep16.source == exported.path
    assert rep16.inputs[0].dtype == "float32"  # keep_io_types: clients still send float32
    assert rep16.files[0].size_bytes < exported.files[0].size_bytes
    ver = verify_onnx(
        rep16, backdoored.model, test_loader, trigger=backdoored.trigger,
        target=backdoored.target, providers=CPU,
    )  # fmt: skip
    assert ver.profile == "fp16"
    assert ver.precision == "fp16"
    assert ver.passed, ver.summary()


# --- the zoo ---------------------------------------------------------------------------------

ZOO = [
    pytest.param(name, marks=[] if name == "small-cnn" else [pytest.mark.slow])
    for name in hk.list_models()
]


@pytest.mark.parametrize("arch", ZOO)
def test_every_zoo_model_exports_and_verifies(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = hk.create_model(arch, 10)
    with torch.no_grad():  # non-trivial BN statistics so the folding is exercised
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    rep = to_onnx(model, tmp_path / f"{arch}.onnx", input_shape=(3, 32, 32))
    assert rep.dynamic_batch
    assert rep.outputs[0].shape == ["batch", 10]
    assert [f.role for f in rep.files] == ["model"]  # well below 1.5 GiB: one file
    data = [(torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2]))]
    ver = verify_onnx(rep, model, data, providers=CPU)
    assert ver.passed, ver.summary()
    assert json.loads(ver.to_json())["passed"] is True

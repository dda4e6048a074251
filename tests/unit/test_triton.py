"""The Triton serving bundle: config.pbtxt checked against the ONNX file with Triton's own
protobuf, the ONNX input-contract metadata, and the gate writing the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import hardenkit as hk
from hardenkit.errors import ConfigError, ExportError
from hardenkit.export import ExportReport, read_metadata, to_onnx
from hardenkit.export.triton import (
    check_triton_model_name,
    parse_triton_config,
    write_triton_repository,
)
from hardenkit.gate import DeploymentPolicy, Gate
from hardenkit.io import file_sha256

onnx = pytest.importorskip("onnx")

NUM_CLASSES = 3
SHAPE = (3, 8, 8)


def _tiny(num_classes: int = NUM_CLASSES, size: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * size * size, num_classes),
    ).eval()


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    d = tmp_path_factory.mktemp("dyn")
    return to_onnx(_tiny(), d / "model.onnx", input_shape=SHAPE, gate_report_id="gate-abc")


@pytest.fixture(scope="module")
def static_export(tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    d = tmp_path_factory.mktemp("static")
    return to_onnx(
        _tiny(),
        d / "m.onnx",
        input_shape=SHAPE,
        dynamic_batch=False,
        example_batch_size=2,
        external_data="always",
    )


def _onnx_io(path: str | Path) -> tuple[list[tuple[str, int, list[int | str]]], ...]:
    """(name, elem_type, shape) of the inputs and outputs, straight from the file."""
    proto = onnx.load(str(path), load_external_data=False)

    def rows(values: object) -> list[tuple[str, int, list[int | str]]]:
        out = []
        for v in values:  # type: ignore[attr-defined]
            tt = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
            out.append((v.name, tt.elem_type, shape))
        return out

    return rows(proto.graph.input), rows(proto.graph.output)


def _triton(path: Path) -> object:
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return parse_triton_config(path)


def _check_against_onnx(cfg: object, onnx_path: str | Path, batching: bool) -> None:
    """Every config.pbtxt input/output agrees with the ONNX graph."""
    from tritonclient.grpc import model_config_pb2 as pb2

    to_triton = {onnx.TensorProto.FLOAT: pb2.TYPE_FP32, onnx.TensorProto.INT64: pb2.TYPE_INT64}
    ins, outs = _onnx_io(onnx_path)
    for entries, graph in ((cfg.input, ins), (cfg.output, outs)):  # type: ignore[attr-defined]
        assert [e.name for e in entries] == [g[0] for g in graph]
        for e, (_, elem, shape) in zip(entries, graph, strict=True):
            assert e.data_type == to_triton[elem]
            want = [d if isinstance(d, int) else -1 for d in (shape[1:] if batching else shape)]
            # a per-item scalar is dims [1] reshaped to [] (Triton needs a non-empty dims)
            got = list(e.reshape.shape) if e.HasField("reshape") else list(e.dims)
            assert got == want


# --------------------------------------------------------------------------- repository


def test_dynamic_export_gives_a_batching_config(
    dynamic_export: ExportReport, tmp_path: Path
) -> None:
    model_dir = write_triton_repository(dynamic_export.path, tmp_path / "repo", "tiny-cnn")
    assert model_dir == tmp_path / "repo" / "tiny-cnn"
    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*"))
    assert files == ["1", "1/model.onnx", "config.pbtxt"]
    assert file_sha256(model_dir / "1" / "model.onnx") == dynamic_export.files[0].sha256
    cfg = _triton(model_dir / "config.pbtxt")
    assert cfg.name == "tiny-cnn"  # type: ignore[attr-defined]
    assert cfg.platform == "onnxruntime_onnx"  # type: ignore[attr-defined]
    assert cfg.max_batch_size == 64  # type: ignore[attr-defined]
    assert cfg.HasField("dynamic_batching")  # type: ignore[attr-defined]
    assert not cfg.instance_group  # type: ignore[attr-defined]
    _check_against_onnx(cfg, dynamic_export.path, batching=True)
    assert list(cfg.input[0].dims) == list(SHAPE)  # type: ignore[attr-defined]
    assert list(cfg.output[0].dims) == [NUM_CLASSES]  # type: ignore[attr-defined]
    text = (model_dir / "config.pbtxt").read_text()
    assert "# Input 'input': float32 NCHW pixels in [0,1]" in text
    assert "# hardenkit.gate_report_id: gate-abc" in text


def test_static_export_keeps_the_full_shape_and_its_sidecar(
    static_export: ExportReport, tmp_path: Path
) -> None:
    assert [f.role for f in static_export.files] == ["model", "external_data"]
    model_dir = write_triton_repository(static_export.path, tmp_path, "static_model")
    sidecar = static_export.files[1]
    copied = model_dir / "1" / sidecar.name
    assert copied.is_file()
    assert file_sha256(copied) == sidecar.sha256
    cfg = _triton(model_dir / "config.pbtxt")
    assert cfg.max_batch_size == 0  # type: ignore[attr-defined]
    assert not cfg.HasField("dynamic_batching")  # type: ignore[attr-defined]
    _check_against_onnx(cfg, static_export.path, batching=False)
    assert list(cfg.input[0].dims) == [2, *SHAPE]  # type: ignore[attr-defined]
    # the renamed model.onnx still finds its sidecar: ONNX Runtime runs the bundle as exported
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(0).random((2, *SHAPE), dtype=np.float32)
    bundle = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    with torch.no_grad():
        ref = _tiny()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(bundle.run(None, {"input": x})[0], ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="needs a symbolic batch axis"):
        write_triton_repository(static_export.path, tmp_path / "r2", max_batch_size=8)


def test_options_labels_and_instance_group(dynamic_export: ExportReport, tmp_path: Path) -> None:
    names = ["cat", "dog", 'say "hi"']
    model_dir = write_triton_repository(
        dynamic_export.path,
        tmp_path,
        "labelled",
        max_batch_size=0,
        instance_kind="KIND_GPU",
        instance_count=2,
        class_names=names,
        version=3,
    )
    assert (model_dir / "3" / "model.onnx").is_file()
    assert (model_dir / "labels.txt").read_text().splitlines() == names
    cfg = _triton(model_dir / "config.pbtxt")
    assert cfg.max_batch_size == 0  # type: ignore[attr-defined]
    _check_against_onnx(cfg, dynamic_export.path, batching=False)  # batch axis as -1
    assert list(cfg.input[0].dims) == [-1, *SHAPE]  # type: ignore[attr-defined]
    assert cfg.output[0].label_filename == "labels.txt"  # type: ignore[attr-defined]
    from tritonclient.grpc import model_config_pb2 as pb2

    (group,) = cfg.instance_group  # type: ignore[attr-defined]
    assert (group.count, group.kind) == (2, pb2.ModelInstanceGroup.KIND_GPU)
    with pytest.raises(ConfigError, match=r"2 class names .* must match its last dimension"):
        write_triton_repository(dynamic_export.path, tmp_path / "x", class_names=["a", "b"])
    with pytest.raises(ConfigError, match="dynamic_batching needs max_batch_size > 0"):
        write_triton_repository(
            dynamic_export.path, tmp_path / "x", max_batch_size=0, dynamic_batching=True
        )


@pytest.mark.parametrize("bad", ["", "a b", "../up", "a/b", ".hidden", "x" * 129, "modèle"])
def test_bad_model_names_are_config_errors(
    bad: str, dynamic_export: ExportReport, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="invalid Triton model name"):
        write_triton_repository(dynamic_export.path, tmp_path, bad)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match=r"serving_model_name.*invalid Triton model name"):
        DeploymentPolicy(serving_bundle="triton", serving_model_name=bad)


def test_good_names_and_existing_directories(dynamic_export: ExportReport, tmp_path: Path) -> None:
    assert check_triton_model_name("a.b-c_1") == "a.b-c_1"
    d = write_triton_repository(dynamic_export.path, tmp_path, "m")
    (d / "1" / "stale.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="already exists"):
        write_triton_repository(dynamic_export.path, tmp_path, "m")
    write_triton_repository(dynamic_export.path, tmp_path, "m", overwrite=True)
    assert not (d / "1" / "stale.bin").exists()
    with pytest.raises(ExportError, match="does not exist"):
        write_triton_repository(tmp_path / "missing.onnx", tmp_path, "m2")


def test_a_broken_config_is_an_export_error(tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "x"\nmax_batch_size: "many"\n')
    with pytest.raises(ExportError, match="not a valid Triton model configuration"):
        parse_triton_config(bad)


# ----------------------------------------------------------------------------- metadata


def test_metadata_carries_the_input_contract(
    dynamic_export: ExportReport, static_export: ExportReport
) -> None:
    props = {p.key: p.value for p in onnx.load(dynamic_export.path).metadata_props}
    assert props["hardenkit.input_contract"] == "float32 NCHW pixels in [0,1]"
    assert props["hardenkit.pixel_range"] == "0,1"
    assert props["hardenkit.layout"] == "NCHW"
    assert props["hardenkit.num_classes"] == str(NUM_CLASSES)
    assert props["hardenkit.input_shape"] == "batch,3,8,8"
    assert props["hardenkit.gate_report_id"] == "gate-abc"
    assert dynamic_export.gate_report_id == "gate-abc"
    static = read_metadata(static_export.path)
    assert "hardenkit.gate_report_id" not in static
    assert static["hardenkit.num_classes"] == str(NUM_CLASSES)
    with pytest.raises(ConfigError, match="gate_report_id must be a string"):
        to_onnx(_tiny(), "x.onnx", input_shape=SHAPE, gate_report_id=3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- gate


def test_policy_needs_the_onnx_export_for_a_bundle() -> None:
    with pytest.raises(ConfigError, match="export_onnx: true or serving_bundle: none"):
        DeploymentPolicy(serving_bundle="triton", export_onnx=False)
    p = DeploymentPolicy()
    assert (p.serving_bundle, p.serving_model_name, p.serving_max_batch_size) == (
        "none",
        "hardenkit_model",
        64,
    )


def test_gate_writes_the_triton_bundle(tmp_path: Path) -> None:
    data = hk.make_synthetic_dataset(
        num_classes=4, train_per_class=12, test_per_class=1, image_size=16
    )
    model = _tiny(num_classes=4, size=16)  # untrained; small so its export takes seconds
    policy = DeploymentPolicy(
        repair="never",
        scan_budget="quick",
        scan={
            "max_images": 16,
            "max_holdout_images": 8,
            "min_images_per_class": 2,
            "detector_options": {"neural-cleanse": {"epochs": 1, "batch_size": 8}},
        },
        holdout_fraction=0.25,
        min_holdout_images=4,
        fail_on_skipped=False,
        serving_bundle="triton",
        serving_model_name="candidate",
        serving_max_batch_size=16,
    )
    result = Gate(policy, runtime={"device": "cpu", "seed": 0}).run(
        model, data.train.loader(batch_size=64), num_classes=4
    )
    assert result.report.onnx is not None, result.report.summary()
    gate_json = result.save(tmp_path)
    report = json.loads(gate_json.read_text())
    model_dir = tmp_path / "triton" / "candidate"
    for rel in ("triton/candidate/config.pbtxt", "triton/candidate/1/model.onnx"):
        assert report["files"][rel] == file_sha256(tmp_path / rel)
    assert report["files"]["model.onnx"] == report["files"]["triton/candidate/1/model.onnx"]
    meta = read_metadata(model_dir / "1" / "model.onnx")
    assert meta["hardenkit.gate_report_id"] == report["report_id"]
    assert meta["hardenkit.num_classes"] == "4"
    cfg = _triton(model_dir / "config.pbtxt")
    assert (cfg.name, cfg.max_batch_size) == ("candidate", 16)  # type: ignore[attr-defined]
    from tritonclient.grpc import model_config_pb2 as pb2

    assert [g.kind for g in cfg.instance_group] == [pb2.ModelInstanceGroup.KIND_CPU]  # type: ignore[attr-defined]
    _check_against_onnx(cfg, model_dir / "1" / "model.onnx", batching=True)
    assert list(cfg.input[0].dims) == [3, 16, 16]  # type: ignore[attr-defined]


def test_hand_built_graph_types_symbolic_dims_and_scalar_outputs(tmp_path: Path) -> None:
    """Not only hardenkit exports: an int64 per-item scalar output and a symbolic inner axis."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "seq", 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["n"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
            helper.make_node("ArgMax", ["s"], ["y"], axis=1, keepdims=0),
        ],
        "g",
        [x],
        [y],
        [axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "argmax.onnx"
    onnx.save(model, str(path))
    cfg = _triton(write_triton_repository(path, tmp_path / "repo", "argmax") / "config.pbtxt")
    _check_against_onnx(cfg, path, batching=True)
    (inp,), (out,) = cfg.input, cfg.output  # type: ignore[attr-defined]
    assert list(inp.dims) == [-1, 4]
    assert list(out.dims) == [1]  # Triton needs a dim; the reshape removes it again
    assert out.HasField("reshape")
    assert list(out.reshape.shape) == []
    text = (tmp_path / "repo" / "argmax" / "config.pbtxt").read_text()
    assert "# hardenkit." not in text  # no hardenkit metadata in this file: no contract lines
    assert "# Input" not in text

"""Export a PyTorch classifier to ONNX with the torch.export-based exporter.

:func:`to_onnx` never touches the caller's model: it exports a deep copy in eval mode, on
CPU, in float32. The exported graph takes float32 NCHW pixels in [0, 1] (normalization stays
inside the model, as everywhere in hardenkit) and has a named symbolic batch axis
``"batch"``. Every written file is listed with its sha256 and size in the returned
:class:`ExportReport`, so a deployment step can ship exactly those files.

Why opset 18 by default: the exporter's ONNX function library (torchlib) is authored at
opset 18, so exporting at 18 needs no version-conversion pass; every other opset runs the
onnxscript version converter after export, which is one more place to fail. Opset 18 is also
old enough for every maintained serving runtime (ONNX Runtime supports it since 1.14). Ask for
a newer opset (up to 23) when a runtime needs a newer operator.

Example:
    >>> import tempfile, torch
    >>> from hardenkit.export import to_onnx
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    >>> rep = to_onnx(model, tempfile.mkdtemp() + "/m.onnx", input_shape=(3, 4, 4))
    >>> rep.inputs[0].shape, rep.dynamic_batch, [f.role for f in rep.files]
    (['batch', 3, 4, 4], True, ['model'])
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .._utils.imports import require
from .._utils.model_checks import check_model
from .._version import __version__
from ..config import HardenkitConfig
from ..errors import ConfigError, ExportError, ModelCompatibilityError
from ..io import file_sha256
from ..logging import get_logger
from ..reports import BaseReport, ModelFingerprint

if TYPE_CHECKING:
    import onnx

__all__ = [
    "BATCH_DIM",
    "DEFAULT_OPSET",
    "INPUT_CONTRACT",
    "INPUT_NAME",
    "LAYOUT",
    "OUTPUT_NAME",
    "PIXEL_RANGE",
    "ExportConfig",
    "ExportReport",
    "ExportedFile",
    "TensorSpec",
    "convert_fp16",
    "external_data_locations",
    "read_metadata",
    "to_onnx",
]

_log = get_logger("hardenkit.export")

DEFAULT_OPSET = 18
"""Default ONNX opset: the exporter's native torchlib opset (no version-conversion pass)."""

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
INPUT_CONTRACT = "float32 NCHW pixels in [0,1]"
PIXEL_RANGE = "0,1"
"""``hardenkit.pixel_range`` of every export: the input's pixel range as ``low,high``."""
LAYOUT = "NCHW"
"""``hardenkit.layout`` of every export."""

_EXPORTER = "torch.onnx.export(dynamo=True)"
_AUTO_EXTERNAL_BYTES = 1536 * 1024 * 1024  # torch's own threshold for external data (1.5 GiB)
_PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # 2 GiB protobuf limit, minus headroom for the graph
_META_PREFIX = "hardenkit."


class ExportConfig(HardenkitConfig):
    """Options of :func:`to_onnx` (echoed in :class:`ExportReport`).

    Attributes:
        opset: ONNX opset (18..23). 18 is the exporter's native opset, so no conversion
            pass runs; see the module docstring.
        dynamic_batch: export a symbolic batch axis named ``"batch"``; the export fails with
            :class:`~hardenkit.errors.ExportError` if it comes out static.
        external_data: ``"auto"`` writes a single ``.onnx`` file below 1.5 GiB of weights and
            a ``<name>.data`` sidecar above; ``"always"`` forces the sidecar; ``"never"``
            forces a single file (fails above the 2 GiB protobuf limit).
        example_batch_size: batch of the example input. Default 2 with a dynamic batch
            (a batch of 1 lets ``torch.export`` specialise the axis to 1) and 1 without.
    """

    opset: Annotated[int, Field(ge=18, le=23)] = DEFAULT_OPSET
    dynamic_batch: bool = True
    external_data: Literal["auto", "always", "never"] = "auto"
    example_batch_size: Annotated[int, Field(ge=1, le=4096)] | None = None


class TensorSpec(BaseModel):
    """Name, element type and shape of a graph input or output (symbolic dims as strings)."""

    model_config = ConfigDict(frozen=True)

    name: str
    dtype: str
    shape: list[int | str]


class ExportedFile(BaseModel):
    """One file of an ONNX artefact: the graph or an external-data sidecar."""

    model_config = ConfigDict(frozen=True)

    name: str
    """File name relative to the model's directory (what the ``.onnx`` file refers to)."""
    path: str
    role: Literal["model", "external_data"]
    size_bytes: int
    sha256: str


class ExportReport(BaseReport):
    """What :func:`to_onnx` (or :func:`convert_fp16`) wrote and checked."""

    report_type: Literal["export"] = "export"
    path: str
    files: list[ExportedFile]
    opset: int
    ir_version: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_batch: bool
    precision: Literal["fp32", "fp16"] = "fp32"
    external_data: bool
    config: ExportConfig
    model: ModelFingerprint | None
    model_sha256: str | None
    purification_report_id: str | None = None
    gate_report_id: str | None = None
    """The :class:`~hardenkit.gate.GateReport` id this export was made for (the gate's)."""
    metadata: dict[str, str]
    checks: list[str]
    warnings: list[str] = Field(default_factory=list)
    source: str | None = None
    exporter: str
    torch_version: str
    onnx_version: str
    onnxscript_version: str | None
    seconds: float

    @property
    def total_bytes(self) -> int:
        """Size of all files together."""
        return sum(f.size_bytes for f in self.files)

    def summary(self) -> str:
        """A short human-readable summary."""
        shapes = ", ".join(f"{t.name}{t.shape}" for t in [*self.inputs, *self.outputs])
        files = ", ".join(f"{f.name} ({f.size_bytes} B)" for f in self.files)
        return (
            f"exported {self.path} ({self.precision}, opset {self.opset}, IR {self.ir_version}, "
            f"{'dynamic' if self.dynamic_batch else 'static'} batch) in {self.seconds:.1f}s\n"
            f"  io: {shapes}\n  files: {files}"
        )


# --- helpers ---------------------------------------------------------------------------------


def _dist_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _iter_graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _iter_graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _iter_graph_tensors(sub)


def external_data_locations(model: onnx.ModelProto) -> list[str]:
    """Relative paths of every external-data file a model refers to (sorted, unique).

    Raises:
        ExportError: If a location is absolute or escapes the model's directory (``..``).
    """
    import onnx

    locations: set[str] = set()
    tensors: list[onnx.TensorProto] = list(_iter_graph_tensors(model.graph))
    for fn in model.functions:
        for node in fn.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
    for t in tensors:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if loc is None:
            raise ExportError(
                f"tensor {t.name!r} is stored externally but names no location.",
                hint="re-export the model; the ONNX file is malformed",
            )
        p = Path(loc)
        if p.is_absolute() or ".." in p.parts or loc.startswith(("/", "\\")):
            raise ExportError(
                f"external-data location {loc!r} of tensor {t.name!r} is absolute or escapes "
                "the model directory.",
                hint="external data must sit next to the .onnx file under a relative name; "
                "re-save it with onnx.save_model(..., location='<name>.data')",
            )
        locations.add(p.as_posix())
    return sorted(locations)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (external data is not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def _tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> list[TensorSpec]:
    out = []
    for v in values:
        tt = v.type.tensor_type
        shape: list[int | str] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            else:
                shape.append(d.dim_param or "?")
        out.append(TensorSpec(name=v.name, dtype=_dtype_name(tt.elem_type), shape=shape))
    return out


def _is_symbolic(spec: TensorSpec) -> bool:
    return bool(spec.shape) and isinstance(spec.shape[0], str)


def _collect_files(model_path: Path, locations: Sequence[str]) -> list[ExportedFile]:
    files = [
        ExportedFile(
            name=model_path.name,
            path=str(model_path),
            role="model",
            size_bytes=model_path.stat().st_size,
            sha256=file_sha256(model_path),
        )
    ]
    for loc in locations:
        p = model_path.parent / loc
        files.append(
            ExportedFile(
                name=loc,
                path=str(p),
                role="external_data",
                size_bytes=p.stat().st_size,
                sha256=file_sha256(p),
            )
        )
    return files


def _structural_checks(path: Path) -> tuple[onnx.ModelProto, list[str]]:
    """onnx.checker (full) and strict shape inference; returns the proto without weights."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(
            f"onnx.checker rejected {path.name}: {exc}",
            hint="the exporter produced an invalid graph; try another opset or report a bug",
        ) from exc
    proto = onnx.load(str(path), load_external_data=False)
    try:
        # the path-based variant handles external data and models above 2 GiB
        with tempfile.TemporaryDirectory(prefix="hardenkit-shapes-") as tmp:
            out = Path(tmp) / "inferred.onnx"
            onnx.shape_inference.infer_shapes_path(
                str(path), str(out), check_type=True, strict_mode=True, data_prop=True
            )
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise ExportError(
            f"strict ONNX shape inference failed on {path.name}: {exc}",
            hint="the exporter produced an inconsistent graph; try another opset",
        ) from exc
    return proto, ["onnx.checker.check_model(full_check=True)", "infer_shapes(strict_mode=True)"]


@contextlib.contextmanager
def _staging_dir(parent: Path) -> Iterator[Path]:
    """A scratch directory next to the destination (same filesystem: moves are renames)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hardenkit-export-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(staged_model: Path, locations: Sequence[str], dest: Path) -> list[str]:
    """Move the staged files next to ``dest``; returns warnings about stale files."""
    notes: list[str] = []
    for loc in locations:
        target = dest.parent / loc
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged_model.parent / loc, target)
    os.replace(staged_model, dest)
    stale = dest.parent / f"{dest.name}.data"
    if stale.exists() and f"{dest.name}.data" not in locations:
        notes.append(
            f"{stale} exists next to the model but is not part of this export (a leftover "
            "of an earlier export?); do not ship it"
        )
    return notes


def _example_input(
    input_shape: Sequence[int] | None,
    example_input: torch.Tensor | None,
    cfg: ExportConfig,
) -> torch.Tensor:
    if (input_shape is None) == (example_input is None):
        raise ConfigError(
            "to_onnx needs exactly one of input_shape=(C, H, W) or example_input=<tensor>.",
            hint="e.g. to_onnx(model, 'model.onnx', input_shape=(3, 32, 32))",
        )
    min_batch = 2 if cfg.dynamic_batch else 1
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.ndim != 4:
            raise ConfigError(
                "example_input must be a float tensor (N, C, H, W), got "
                f"{getattr(example_input, 'shape', type(example_input).__name__)}.",
                hint="pass a pixel batch in [0, 1], or input_shape=(C, H, W)",
            )
        x = example_input.detach().to("cpu", torch.float32)
        want = cfg.example_batch_size or max(min_batch, x.shape[0])
        if x.shape[0] != want:
            reps = -(-want // x.shape[0])
            x = x.repeat(reps, 1, 1, 1)[:want]
        return x.contiguous()
    if input_shape is None:  # unreachable: exactly one of the two was checked above
        raise ConfigError("pass input_shape=(C, H, W) or example_input.")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise ConfigError(
            f"input_shape must be (C, H, W) with positive ints, got {input_shape!r}.",
            hint="leave the batch axis out: input_shape=(3, 32, 32)",
        )
    g = torch.Generator().manual_seed(0)
    n = cfg.example_batch_size or min_batch
    return torch.rand((n, *shape), generator=g)


def _prepare_model(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ModelCompatibilityError(
            f"to_onnx needs a torch.nn.Module, got {type(model).__name__}.",
            hint="build the architecture in code and load its weights first",
        )
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:
        raise ExportError(
            f"could not deep-copy the model for export ({type(exc).__name__}: {exc}).",
            hint="hardenkit never exports the caller's model in place; make the module "
            "copyable (no open files, locks or generators as attributes)",
        ) from exc
    return clone.to(device="cpu", dtype=torch.float32).eval()


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(
                f"metadata must map str to str, got {k!r}: {type(v).__name__}.",
                hint="convert values with str()",
            )
        if k.startswith(_META_PREFIX):
            raise ConfigError(
                f"metadata key {k!r} uses the reserved prefix {_META_PREFIX!r}.",
                hint="hardenkit writes those keys itself; use your own prefix",
            )
        out[k] = v
    return out


@contextlib.contextmanager
def _quiet_torchvision_registration() -> Iterator[None]:
    """Silence the exporter's "torchvision is not installed" warnings for this export only.

    hardenkit never needs torchvision; torch's exporter warns about its missing custom ops on
    every export. The logger's previous level is restored afterwards.
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _run_exporter(
    model: nn.Module, x: torch.Tensor, cfg: ExportConfig, artifacts: Path, dest: Path
) -> Any:  # torch.onnx.ONNXProgram
    dynamic_shapes: tuple[dict[int, Any]] | None = None
    if cfg.dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM, min=1)},)
    with warnings.catch_warnings(), _quiet_torchvision_registration():
        # torch-internal deprecation noise of the exporter, not actionable by users
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        try:
            return torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=cfg.opset,
                optimize=True,
                verbose=False,
                report=True,
                artifacts_dir=str(artifacts),
            )
        except Exception as exc:
            report = _keep_report(artifacts, dest)
            first = _first_line(exc)
            cause = exc.__cause__
            if cause is not None:
                first += f" (caused by {type(cause).__name__}: {_first_line(cause)})"

            batch_hint = ""
            if cfg.dynamic_batch and ("batch" in str(exc) or "Constraint" in type(exc).__name__):
                batch_hint = (
                    " The model seems to specialise the batch axis (e.g. x.view(2, -1) or a "
                    "batch-size-dependent branch): use x.flatten(1) / x.shape[0], or export "
                    "with dynamic_batch=False."
                )
            raise ExportError(
                f"torch.onnx.export(dynamo=True) failed for {type(model).__name__}: "
                f"{type(exc).__name__}: {first}.{batch_hint}",
                hint="the model must be traceable by torch.export (no data-dependent Python "
                "control flow, no unsupported ops)"
                + (f"; the exporter's report is at {report}" if report is not None else ""),
            ) from exc


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _initializer_bytes(program: Any) -> int:
    total = 0
    for value in program.model.graph.initializers.values():
        const = value.const_value
        if const is not None:
            total += int(const.nbytes)
    return total


def _keep_report(artifacts: Path, dest: Path) -> Path | None:
    report = next(iter(sorted(artifacts.glob("*.md"))), None)
    if report is None:
        return None
    kept = dest.parent / f"{dest.stem}.export-report.md"
    shutil.copyfile(report, kept)
    return kept


# --- public API ------------------------------------------------------------------------------


def to_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    external_data: Literal["auto", "always", "never"] = "auto",
    metadata: Mapping[str, str] | None = None,
    report_id: str | None = None,
    example_batch_size: int | None = None,
    gate_report_id: str | None = None,
) -> ExportReport:
    """Export ``model`` to ONNX at ``path`` and check the result.

    The caller's model is never modified: a deep copy is exported in eval mode, on CPU, in
    float32, with ``torch.onnx.export(..., dynamo=True)``. The graph input is
    ``"input"`` (float32 NCHW pixels in [0, 1]) and the output ``"logits"``; with
    ``dynamic_batch`` their first axis is the symbolic ``"batch"``. The saved file passes
    ``onnx.checker.check_model(full_check=True)`` and strict shape inference.

    Args:
        model: an ``nn.Module`` mapping [0, 1] pixels to logits ``(N, K)``.
        path: destination ``.onnx`` file (parents created). A sidecar, when written, is
            ``<name>.data`` next to it.
        input_shape: ``(C, H, W)`` of one image; or pass ``example_input`` instead.
        example_input: an example pixel batch ``(N, C, H, W)``; repeated to 2 images when
            it holds one and the batch is dynamic.
        opset: ONNX opset, 18 (default, the exporter's native opset) to 23.
        dynamic_batch: export a symbolic batch axis (verified after export).
        external_data: ``"auto"`` | ``"always"`` | ``"never"`` (see :class:`ExportConfig`).
        metadata: extra ``metadata_props`` (str to str; the ``hardenkit.`` prefix is
            reserved).
        report_id: id of the purification/validation report this model came from; stored
            in the file as ``hardenkit.purification_report_id``.
        example_batch_size: batch of the example input (default 2 dynamic / 1 static).
        gate_report_id: id of the gate report (``gate.json``) this export belongs to;
            stored as ``hardenkit.gate_report_id`` (:class:`~hardenkit.gate.Gate` sets it).

    Returns:
        An :class:`ExportReport` listing every written file with sha256 and size.

    Raises:
        ConfigError: bad arguments. ModelCompatibilityError: the model does not return
            ``(N, K)`` logits for the example batch. ExportError: the exporter failed, the
            batch axis came out static, or a structural check failed.
    """
    t0 = time.perf_counter()
    cfg = ExportConfig(
        opset=opset,
        dynamic_batch=dynamic_batch,
        external_data=external_data,
        example_batch_size=example_batch_size,
    )
    dest = Path(path)
    if dest.suffix != ".onnx":
        raise ConfigError(
            f"the export path must end in .onnx, got {str(dest)!r}.",
            hint="e.g. to_onnx(model, 'out/model.onnx', ...)",
        )
    user_meta = _check_metadata(metadata)
    if report_id is not None and not isinstance(report_id, str):
        raise ConfigError(f"report_id must be a string, got {type(report_id).__name__}.")
    if gate_report_id is not None and not isinstance(gate_report_id, str):
        raise ConfigError(f"gate_report_id must be a string, got {type(gate_report_id).__name__}.")
    # The exported copy is cast to float32 below, so fp16/bf16/float64 models are accepted.
    inner = check_model(model, where="to_onnx", require_float32=False)
    x = _example_input(input_shape, example_input, cfg)
    work = _prepare_model(inner)
    fingerprint = ModelFingerprint.of(work)
    with torch.no_grad():
        try:
            y = work(x)
        except Exception as exc:
            raise ModelCompatibilityError(
                f"the model failed on an example batch of shape {tuple(x.shape)}: "
                f"{type(exc).__name__}: {exc}",
                hint="check input_shape (C, H, W) against the model",
            ) from exc
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ModelCompatibilityError(
            f"the model must return one logits tensor (N, K); got "
            f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__} "
            f"for N={x.shape[0]}.",
            hint="wrap the model so forward returns only the logits",
        )

    props = {
        "hardenkit.version": __version__,
        "hardenkit.model_sha256": fingerprint.sha256,
        "hardenkit.model_class": fingerprint.model_class,
        "hardenkit.input_contract": INPUT_CONTRACT,
        "hardenkit.input_shape": ",".join(
            [BATCH_DIM if cfg.dynamic_batch else str(x.shape[0]), *map(str, x.shape[1:])]
        ),
        "hardenkit.pixel_range": PIXEL_RANGE,
        "hardenkit.layout": LAYOUT,
        "hardenkit.num_classes": str(int(y.shape[1])),
        "hardenkit.precision": "fp32",
        "hardenkit.exporter": _EXPORTER,
        **({"hardenkit.purification_report_id": report_id} if report_id else {}),
        **({"hardenkit.gate_report_id": gate_report_id} if gate_report_id else {}),
        **user_meta,
    }

    with _staging_dir(dest.parent) as stage:
        artifacts = stage / "_artifacts"
        artifacts.mkdir()
        program = _run_exporter(work, x, cfg, artifacts, dest)
        for k, v in props.items():
            program.model.metadata_props[k] = v
        program.model.doc_string = (
            f"Exported by hardenkit {__version__}. Input {INPUT_NAME!r}: {INPUT_CONTRACT}; "
            f"output {OUTPUT_NAME!r}: logits."
        )
        nbytes = _initializer_bytes(program)
        use_external = cfg.external_data == "always" or (
            cfg.external_data == "auto" and nbytes > _AUTO_EXTERNAL_BYTES
        )
        if cfg.external_data == "never" and nbytes > _PROTOBUF_LIMIT:
            raise ExportError(
                f"the weights take {nbytes / 1024**3:.2f} GiB, above what a single ONNX file "
                "can hold (protobuf limit 2 GiB).",
                hint="use external_data='auto' or 'always' and ship the sidecar file too",
            )
        staged = stage / dest.name
        if use_external:
            program.save(str(staged), external_data=True)
        elif nbytes <= _AUTO_EXTERNAL_BYTES:
            program.save(str(staged), external_data=False)
        else:  # "never" between 1.5 and 2 GiB: torch's save() would still write a sidecar
            import onnx_ir

            onnx_ir.save(program.model, str(staged))
        try:
            proto, checks = _structural_checks(staged)
        except ExportError:
            kept = _keep_report(artifacts, dest)
            if kept is not None:
                _log.warning("export.report_kept", path=str(kept))
            raise
        locations = external_data_locations(proto)
        inputs = _tensor_specs(proto.graph.input)
        outputs = _tensor_specs(proto.graph.output)
        if cfg.dynamic_batch and not (
            inputs and outputs and _is_symbolic(inputs[0]) and _is_symbolic(outputs[0])
        ):
            raise ExportError(
                f"the batch axis came out static: input {inputs[0].shape if inputs else None}, "
                f"output {outputs[0].shape if outputs else None} (expected {BATCH_DIM!r} "
                "first).",
                hint="the model fixes the batch size somewhere (e.g. x.view(2, -1) or "
                "x.reshape(<int>, ...)); use x.flatten(1) / x.shape[0], or export with "
                "dynamic_batch=False",
            )
        notes = _publish(staged, locations, dest)
    for note in notes:
        _log.warning("export.stale_file", detail=note)
    files = _collect_files(dest.resolve(), locations)
    report = ExportReport(
        path=str(dest.resolve()),
        files=files,
        opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0),
        ir_version=int(proto.ir_version),
        inputs=inputs,
        outputs=outputs,
        dynamic_batch=_is_symbolic(inputs[0]) if inputs else False,
        precision="fp32",
        external_data=bool(locations),
        config=cfg,
        model=fingerprint,
        model_sha256=fingerprint.sha256,
        purification_report_id=report_id,
        gate_report_id=gate_report_id,
        metadata=props,
        checks=checks,
        warnings=notes,
        exporter=_EXPORTER,
        torch_version=torch.__version__,
        onnx_version=_dist_version("onnx") or "unknown",
        onnxscript_version=_dist_version("onnxscript"),
        seconds=time.perf_counter() - t0,
    )
    _log.info(
        "export.done",
        path=report.path,
        files=len(files),
        bytes=report.total_bytes,
        opset=report.opset,
        dynamic_batch=report.dynamic_batch,
        seconds=report.seconds,
    )
    return report


def convert_fp16(
    source: str | Path | ExportReport,
    path: str | Path,
    *,
    external_data: Literal["auto", "always", "never"] = "auto",
    op_block_list: Sequence[str] | None = None,
) -> ExportReport:
    """Convert an fp32 ONNX export to an fp16 serving graph (float32 inputs and outputs kept).

    Uses ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)``, so
    clients still send float32 pixels in [0, 1]. The fp32 file stays the canonical artefact;
    verify the fp16 one separately with ``verify_onnx(..., profile="fp16")`` on a GPU
    execution provider (CPU coverage of fp16 kernels is partial).

    Needs the optional dependency ``onnxconverter-common`` (``pip install
    "hardenkit[fp16]"``); without it this raises ``ModuleNotFoundError`` with that hint.
    """
    t0 = time.perf_counter()
    f16 = require("onnxconverter_common.float16", extra="fp16", purpose="fp16 ONNX conversion")
    import onnx

    cfg = ExportConfig(external_data=external_data)
    src = Path(source.path if isinstance(source, ExportReport) else source)
    dest = Path(path)
    if dest.suffix != ".onnx":
        raise ConfigError(f"the fp16 path must end in .onnx, got {str(dest)!r}.")
    if not src.is_file():
        raise ExportError(f"source model {str(src)!r} does not exist.", hint="check the path")
    if src.resolve() == dest.resolve():
        raise ConfigError(
            "convert_fp16 writes a new file; source and destination are the same.",
            hint="keep the fp32 export and write e.g. model.fp16.onnx",
        )
    proto = onnx.load(str(src))
    try:
        converted = f16.convert_float_to_float16(
            proto,
            keep_io_types=True,
            op_block_list=list(op_block_list) if op_block_list is not None else None,
        )
    except Exception as exc:
        raise ExportError(
            f"fp16 conversion of {src.name} failed: {type(exc).__name__}: {exc}",
            hint="block the failing op types with op_block_list=[...]",
        ) from exc
    meta = {p.key: p.value for p in converted.metadata_props}
    meta["hardenkit.precision"] = "fp16"
    meta["hardenkit.fp16_source_sha256"] = file_sha256(src)
    del converted.metadata_props[:]
    for k, v in meta.items():
        converted.metadata_props.add(key=k, value=v)
    nbytes = converted.ByteSize()
    use_external = cfg.external_data == "always" or (
        cfg.external_data == "auto" and nbytes > _AUTO_EXTERNAL_BYTES
    )
    if cfg.external_data == "never" and nbytes > _PROTOBUF_LIMIT:
        raise ExportError(
            "the fp16 model is above the 2 GiB single-file limit.",
            hint="use external_data='auto' or 'always'",
        )
    with _staging_dir(dest.parent) as stage:
        staged = stage / dest.name
        if use_external:
            onnx.save_model(
                converted,
                str(staged),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=f"{dest.name}.data",
                size_threshold=0,
            )
        else:
            onnx.save_model(converted, str(staged))
        checked, checks = _structural_checks(staged)
        locations = external_data_locations(checked)
        notes = _publish(staged, locations, dest)
    inputs = _tensor_specs(checked.graph.input)
    outputs = _tensor_specs(checked.graph.output)
    return ExportReport(
        path=str(dest.resolve()),
        files=_collect_files(dest.resolve(), locations),
        opset=next((o.version for o in checked.opset_import if o.domain in ("", "ai.onnx")), 0),
        ir_version=int(checked.ir_version),
        inputs=inputs,
        outputs=outputs,
        dynamic_batch=_is_symbolic(inputs[0]) if inputs else False,
        precision="fp16",
        external_data=bool(locations),
        config=cfg.with_updates(
            dynamic_batch=_is_symbolic(inputs[0]) if inputs else False,
            opset=max(
                18,
                min(23, next((o.version for o in checked.opset_import if o.domain == ""), 18)),
            ),
        ),
        model=source.model if isinstance(source, ExportReport) else None,
        model_sha256=meta.get("hardenkit.model_sha256"),
        purification_report_id=meta.get("hardenkit.purification_report_id"),
        gate_report_id=meta.get("hardenkit.gate_report_id"),
        metadata=meta,
        checks=[*checks, "onnxconverter_common.float16(keep_io_types=True)"],
        warnings=notes,
        source=str(src.resolve()),
        exporter="onnxconverter_common.float16.convert_float_to_float16",
        torch_version=torch.__version__,
        onnx_version=_dist_version("onnx") or "unknown",
        onnxscript_version=_dist_version("onnxscript"),
        seconds=time.perf_counter() - t0,
    )

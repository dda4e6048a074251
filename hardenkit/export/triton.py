"""A Triton Inference Server model repository from an ONNX file.

:func:`write_triton_repository` lays an exported model out the way Triton's ONNX Runtime
backend loads it::

    <repository>/
      <model_name>/
        config.pbtxt        name, platform, max_batch_size, inputs, outputs (read from the file)
        labels.txt          one class name per line (only with class_names)
        1/
          model.onnx        the graph (renamed to Triton's default file name)
          model.onnx.data   its external-data sidecar, when the export has one

Names, data types and dims in ``config.pbtxt`` are read from the ONNX graph with the ``onnx``
package, never assumed. A symbolic first axis (hardenkit's ``"batch"``) becomes Triton
batching (``max_batch_size`` > 0, the batch axis left out of ``dims``); a static first axis
gives ``max_batch_size: 0`` and the full shape. Other symbolic axes are ``-1``. The hardenkit
input contract from the file's metadata is repeated as ``#`` comments at the top of the config
(Triton's text-format parser skips them).

Writing needs nothing beyond ``onnx``; :func:`parse_triton_config` parses a config with
Triton's own protobuf and needs the ``triton`` extra (``pip install "hardenkit[triton]"``).

Example:
    >>> import tempfile, torch
    >>> from hardenkit.export import to_onnx
    >>> from hardenkit.export.triton import write_triton_repository
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    >>> tmp = tempfile.mkdtemp()
    >>> exp = to_onnx(model, tmp + "/model.onnx", input_shape=(3, 4, 4))
    >>> d = write_triton_repository(exp.path, tmp + "/models", "tiny", max_batch_size=8)
    >>> sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    ['1/model.onnx', 'config.pbtxt']
    >>> print((d / "config.pbtxt").read_text().split("\\n\\n", 1)[1])  # after the comments
    name: "tiny"
    platform: "onnxruntime_onnx"
    max_batch_size: 8
    input [
      {
        name: "input"
        data_type: TYPE_FP32
        dims: [ 3, 4, 4 ]
      }
    ]
    output [
      {
        name: "logits"
        data_type: TYPE_FP32
        dims: [ 2 ]
      }
    ]
    dynamic_batching { }
    <BLANKLINE>
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._utils.imports import require
from .._version import __version__
from ..errors import ConfigError, ExportError
from .onnx_export import external_data_locations

if TYPE_CHECKING:
    import onnx

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MODEL_NAME",
    "TRITON_PLATFORM",
    "check_triton_model_name",
    "parse_triton_config",
    "write_triton_repository",
]

TRITON_PLATFORM = "onnxruntime_onnx"
"""Triton's platform string for the ONNX Runtime backend."""
DEFAULT_MODEL_NAME = "hardenkit_model"
DEFAULT_MAX_BATCH_SIZE = 64
"""``max_batch_size`` written for a file with a symbolic batch axis when none is given."""

_MODEL_FILE = "model.onnx"  # the ONNX Runtime backend's default_model_filename
_LABELS_FILE = "labels.txt"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

InstanceKind = Literal["KIND_CPU", "KIND_GPU"]

# ONNX TensorProto element type name -> Triton DataType (model_config.proto)
_TRITON_TYPES = {
    "FLOAT": "TYPE_FP32",
    "FLOAT16": "TYPE_FP16",
    "BFLOAT16": "TYPE_BF16",
    "DOUBLE": "TYPE_FP64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "BOOL": "TYPE_BOOL",
    "STRING": "TYPE_STRING",
}


def check_triton_model_name(name: str) -> str:
    """Return ``name`` if it can be a Triton model name (and its directory name), else raise.

    Allowed: 1 to 128 characters from letters, digits, ``_``, ``-`` and ``.``, starting with
    a letter, a digit or ``_`` (no path separators, no hidden directory, no spaces).

    Example:
        >>> check_triton_model_name("cifar_resnet-v2")
        'cifar_resnet-v2'
        >>> check_triton_model_name("../evil")
        Traceback (most recent call last):
        ...
        hardenkit.errors.ConfigError: invalid Triton model name '../evil': ...
    """
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ConfigError(
            f"invalid Triton model name {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter, a digit or '_'.",
            hint="the name is also the model's directory in the repository, e.g. "
            "'hardenkit_model' or 'cifar10-resnet18'",
        )
    return name


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    out: list[int | str] = []
    for d in value.type.tensor_type.shape.dim:
        out.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
    return out


def _io_entries(
    values: Sequence[onnx.ValueInfoProto], batching: bool, kind: str, label_file: str | None
) -> list[str]:
    import onnx

    entries = []
    for i, v in enumerate(values):
        if not v.type.HasField("tensor_type"):
            raise ExportError(
                f"{kind} {v.name!r} is not a tensor; Triton's ONNX Runtime backend needs "
                "tensor inputs and outputs.",
                hint="export a model whose inputs and outputs are plain tensors",
            )
        elem = onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
        triton_type = _TRITON_TYPES.get(elem)
        if triton_type is None:
            raise ExportError(
                f"{kind} {v.name!r} has ONNX element type {elem}, which Triton has no type for.",
                hint=f"Triton supports {sorted(_TRITON_TYPES)}; cast it in the model",
            )
        shape = _dims(v)
        if batching:
            if not shape or isinstance(shape[0], int):
                raise ExportError(
                    f"{kind} {v.name!r} has shape {shape}: with Triton batching every input "
                    "and output needs a symbolic first (batch) axis.",
                    hint="export with dynamic_batch=True, or write the repository with "
                    "max_batch_size=0",
                )
            shape = shape[1:]
        dims = [d if isinstance(d, int) else -1 for d in shape]
        lines = [
            "  {",
            f"    name: {_quote(v.name)}",
            f"    data_type: {triton_type}",
        ]
        if dims:
            lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
        else:  # a per-image scalar: Triton wants a non-empty dims, reshaped away
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        if label_file is not None and i == 0:
            lines.append(f"    label_filename: {_quote(label_file)}")
        lines.append("  }")
        entries.append("\n".join(lines))
    return entries


def _comment(text: str) -> str:
    return " ".join(text.split())  # one line: no newline may end the comment early


def write_triton_repository(
    onnx_path: str | Path,
    repository_dir: str | Path,
    model_name: str = DEFAULT_MODEL_NAME,
    *,
    max_batch_size: int | None = None,
    instance_kind: InstanceKind | None = None,
    instance_count: int = 1,
    dynamic_batching: bool | None = None,
    class_names: Sequence[str] | None = None,
    version: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write a Triton model repository entry for an ONNX file; return the model's directory.

    Copies ``onnx_path`` to ``<repository_dir>/<model_name>/<version>/model.onnx`` together
    with every external-data file it refers to (same relative names, e.g. the
    ``model.onnx.data`` sidecar of :func:`~hardenkit.export.to_onnx`), and writes
    ``<repository_dir>/<model_name>/config.pbtxt`` for the ONNX Runtime backend
    (``platform: "onnxruntime_onnx"``) with input and output names, data types and dims read
    from the graph.

    Args:
        onnx_path: the ``.onnx`` file (e.g. ``ExportReport.path``).
        repository_dir: the model repository (created; other models in it are left alone).
        model_name: the Triton model name, also its directory (:func:`check_triton_model_name`).
        max_batch_size: Triton's ``max_batch_size``. None: :data:`DEFAULT_MAX_BATCH_SIZE`
            (64) when the file's first input axis is symbolic, 0 when it is static. A value
            > 0 needs a symbolic batch axis on every input and output; the batch axis is then
            left out of ``dims``. 0 writes the full shapes (a symbolic batch axis as ``-1``).
        instance_kind: ``"KIND_CPU"`` or ``"KIND_GPU"`` writes an ``instance_group`` of
            ``instance_count`` instances; None leaves the placement to Triton (GPUs when it
            sees any).
        instance_count: instances in that group (>= 1).
        dynamic_batching: write ``dynamic_batching { }`` (server-side batching of single
            requests). None: on when ``max_batch_size`` > 0.
        class_names: one name per class: written to ``labels.txt`` and named by the first
            output's ``label_filename`` (Triton's classification extension). Their number must
            equal the first output's last dimension.
        version: the model version directory (>= 1).
        overwrite: replace an existing ``<repository_dir>/<model_name>/`` (the whole
            directory); False raises instead.

    Returns:
        ``<repository_dir>/<model_name>``.

    Raises:
        ConfigError: a bad name or argument, or the model directory exists without
            ``overwrite``. ExportError: the file is missing, or its inputs/outputs cannot be
            described to Triton (no batch axis where batching is asked for, an element type
            Triton lacks).
    """
    import onnx

    src = Path(onnx_path)
    check_triton_model_name(model_name)
    if not src.is_file() or src.suffix != ".onnx":
        raise ExportError(
            f"ONNX file {str(src)!r} does not exist or is not a .onnx file.",
            hint="pass the path of an exported model, e.g. to_onnx(...).path",
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(
            f"version must be an int >= 1, got {version!r}.", hint="Triton's default is 1"
        )
    if not isinstance(instance_count, int) or isinstance(instance_count, bool):
        raise ConfigError(f"instance_count must be an int, got {instance_count!r}.")
    if instance_count < 1:
        raise ConfigError(f"instance_count must be >= 1, got {instance_count}.")
    if instance_kind not in (None, "KIND_CPU", "KIND_GPU"):
        raise ConfigError(
            f"instance_kind must be 'KIND_CPU', 'KIND_GPU' or None, got {instance_kind!r}.",
            hint="None lets Triton place the instances",
        )
    proto = onnx.load(str(src), load_external_data=False)
    locations = external_data_locations(proto)
    if not proto.graph.input or not proto.graph.output:
        raise ExportError(f"{src.name} has no graph inputs or outputs.")
    first = _dims(proto.graph.input[0])
    symbolic_batch = bool(first) and isinstance(first[0], str)
    if max_batch_size is None:
        max_batch_size = DEFAULT_MAX_BATCH_SIZE if symbolic_batch else 0
    if (
        not isinstance(max_batch_size, int)
        or isinstance(max_batch_size, bool)
        or max_batch_size < 0
    ):
        raise ConfigError(f"max_batch_size must be an int >= 0, got {max_batch_size!r}.")
    if max_batch_size > 0 and not symbolic_batch:
        raise ConfigError(
            f"max_batch_size={max_batch_size} needs a symbolic batch axis, but the input of "
            f"{src.name} has the static shape {first}.",
            hint="export with dynamic_batch=True, or pass max_batch_size=0 (or None)",
        )
    batching = max_batch_size > 0
    if dynamic_batching is None:
        dynamic_batching = batching
    if dynamic_batching and not batching:
        raise ConfigError(
            "dynamic_batching needs max_batch_size > 0.",
            hint="pass max_batch_size, or dynamic_batching=False",
        )
    labels: list[str] | None = None
    if class_names is not None:
        labels = [str(c) for c in class_names]
        bad = [c for c in labels if not c or "\n" in c or "\r" in c]
        if bad:
            raise ConfigError(
                f"class names must be non-empty single lines, got {bad[:3]!r}.",
                hint="one name per class, e.g. ['airplane', 'automobile', ...]",
            )
        out_dims = _dims(proto.graph.output[0])
        if not out_dims or not isinstance(out_dims[-1], int) or out_dims[-1] != len(labels):
            raise ConfigError(
                f"{len(labels)} class names for the output {proto.graph.output[0].name!r} of "
                f"shape {out_dims}: they must match its last dimension.",
                hint="pass one name per class, in label order",
            )

    meta = {p.key: p.value for p in proto.metadata_props}
    header = [
        f"# Triton model configuration written by hardenkit {__version__} from {src.name}.",
    ]
    contract = meta.get("hardenkit.input_contract")
    if contract:
        header.append(
            f"# Input {_comment(proto.graph.input[0].name)!r}: {_comment(contract)}; "
            "normalization is inside the model, clients must not normalize again."
        )
    header += [
        f"# {_comment(k)}: {_comment(v)}" for k, v in meta.items() if k.startswith("hardenkit.")
    ]
    body = [
        f"name: {_quote(model_name)}",
        f"platform: {_quote(TRITON_PLATFORM)}",
        f"max_batch_size: {max_batch_size}",
        "input [",
        ",\n".join(_io_entries(proto.graph.input, batching, "input", None)),
        "]",
        "output [",
        ",\n".join(
            _io_entries(proto.graph.output, batching, "output", _LABELS_FILE if labels else None)
        ),
        "]",
    ]
    if instance_kind is not None:
        body += [
            "instance_group [",
            "  {",
            f"    count: {instance_count}",
            f"    kind: {instance_kind}",
            "  }",
            "]",
        ]
    if dynamic_batching:
        body.append("dynamic_batching { }")
    text = "\n".join(header) + "\n\n" + "\n".join(body) + "\n"

    model_dir = Path(repository_dir) / model_name
    if model_dir.exists():
        if not overwrite:
            raise ConfigError(
                f"{model_dir} already exists.",
                hint="pass overwrite=True to replace it, or choose another model_name",
            )
        shutil.rmtree(model_dir)
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True)
    for loc in locations:
        part = src.parent / loc
        if not part.is_file():
            raise ExportError(
                f"{src.name} refers to the external-data file {loc!r}, which is missing next "
                "to it.",
                hint="copy the sidecar next to the .onnx file (ExportReport.files lists both)",
            )
        dest = version_dir / loc
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(part, dest)
    shutil.copy2(src, version_dir / _MODEL_FILE)
    if labels is not None:
        (model_dir / _LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    return model_dir


def parse_triton_config(path: str | Path) -> Any:
    """Parse a ``config.pbtxt`` with Triton's own ``ModelConfig`` protobuf.

    Needs ``tritonclient[grpc]`` (``pip install "hardenkit[triton]"``); raises
    ``ModuleNotFoundError`` with that hint without it, and :class:`ExportError` when the
    text does not parse. Returns a ``tritonclient.grpc.model_config_pb2.ModelConfig``.
    """
    pb2 = require(
        "tritonclient.grpc.model_config_pb2", extra="triton", purpose="parsing config.pbtxt"
    )
    text_format = require("google.protobuf.text_format", extra="triton")
    cfg = pb2.ModelConfig()
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), cfg)
    except text_format.ParseError as exc:
        raise ExportError(
            f"{path} is not a valid Triton model configuration: {exc}",
            hint="regenerate it with write_triton_repository",
        ) from exc
    return cfg

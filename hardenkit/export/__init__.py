"""Ship a repaired model to ONNX serving: export, verify, and check the runtime.

* :func:`to_onnx` — export with ``torch.onnx.export(..., dynamo=True)``: a deep copy of the
  model (eval, CPU, float32), normalization inside the graph (input: float32 NCHW pixels in
  [0, 1]), a named dynamic batch axis ``"batch"`` (verified), ``onnx.checker`` (full) and
  strict shape inference, provenance in ``metadata_props``, every written file with sha256 in
  the :class:`ExportReport`. Default opset 18, the exporter's native opset.
* :func:`verify_onnx` — copy the files to a fresh directory, run them on an explicitly
  requested ONNX Runtime provider, compare logits with PyTorch (held-out, triggered, batch 1
  and 7) and re-measure BA/ASR with the :class:`~hardenkit.validate.Validator` on both
  backends; tolerance profiles ``fp32-cpu``, ``fp32-cuda``, ``fp16``.
* :func:`make_session` — an ONNX Runtime session that raises
  :class:`~hardenkit.errors.ExecutionProviderError` when it silently fell back to another
  provider (e.g. CUDA requested, CPU running). :class:`OrtModule` wraps it as an ``nn.Module``.
* :func:`convert_fp16` — optional fp16 serving graph (needs ``onnxconverter-common``).
* :func:`write_triton_repository` — a Triton Inference Server model repository entry
  (``<name>/1/model.onnx`` + ``config.pbtxt`` read from the graph).

Example:
    >>> import tempfile, torch
    >>> import hardenkit as hk
    >>> from hardenkit.export import to_onnx, verify_onnx
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(
    ...     torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
    ...     torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3),
    ... )
    >>> exp = to_onnx(model, tempfile.mkdtemp() + "/model.onnx", input_shape=(3, 8, 8))
    >>> exp.inputs[0].shape, exp.outputs[0].shape, len(exp.files)
    (['batch', 3, 8, 8], ['batch', 3], 1)
    >>> data = [(torch.rand(16, 3, 8, 8), torch.randint(0, 3, (16,)))]
    >>> rep = verify_onnx(exp, model, data, providers=["CPUExecutionProvider"],
    ...                   trigger=hk.PatchTrigger.square(2), target=0)
    >>> rep.passed, [c.name for c in rep.checks]  # doctest: +NORMALIZE_WHITESPACE
    (True, ['logits_allclose', 'top1_agreement', 'batch_sizes', 'ba_delta', 'asr_increase',
            'source_fingerprint'])
    >>> verify_onnx(exp, model, data, providers=["CUDAExecutionProvider"])  # doctest: +SKIP
    Traceback (most recent call last):
    hardenkit.errors.ExecutionProviderError: Requested execution provider CUDAExecutionProvider
    is not active: ONNX Runtime silently fell back to the CPU ...
"""

from .onnx_export import (
    DEFAULT_OPSET,
    INPUT_CONTRACT,
    ExportConfig,
    ExportedFile,
    ExportReport,
    TensorSpec,
    convert_fp16,
    external_data_locations,
    read_metadata,
    to_onnx,
)
from .runtime import (
    OrtDistribution,
    OrtModule,
    ProviderCheck,
    available_providers,
    check_providers,
    default_providers,
    make_session,
    ort_distributions,
)
from .triton import parse_triton_config, write_triton_repository
from .verify import (
    PROFILES,
    BackendMetrics,
    LogitComparison,
    ParityCheck,
    ParityTolerance,
    Profile,
    Throughput,
    VerificationReport,
    verify_onnx,
)

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_CONTRACT",
    "PROFILES",
    "BackendMetrics",
    "ExportConfig",
    "ExportReport",
    "ExportedFile",
    "LogitComparison",
    "OrtDistribution",
    "OrtModule",
    "ParityCheck",
    "ParityTolerance",
    "Profile",
    "ProviderCheck",
    "TensorSpec",
    "Throughput",
    "VerificationReport",
    "available_providers",
    "check_providers",
    "convert_fp16",
    "default_providers",
    "external_data_locations",
    "make_session",
    "ort_distributions",
    "parse_triton_config",
    "read_metadata",
    "to_onnx",
    "verify_onnx",
    "write_triton_repository",
]

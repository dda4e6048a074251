"""ONNX Runtime sessions that run where they were asked to, and environment diagnostics.

ONNX Runtime falls back to the CPU *silently* (a log line, at most a warning) when a requested
GPU provider cannot be loaded, even when the provider list names only
``CUDAExecutionProvider``. :func:`make_session` therefore checks, after creating the session,
that ``session.get_providers()[0]`` is the first provider asked for, and raises
:class:`~hardenkit.errors.ExecutionProviderError` otherwise. To run on the CPU, ask for it
explicitly: ``providers=["CPUExecutionProvider"]``.

:class:`OrtModule` wraps a session as an ``nn.Module`` (float32 NCHW in, logits out), so the
rest of hardenkit (e.g. :class:`~hardenkit.validate.Validator`) measures an exported model
exactly like a PyTorch one.

Example:
    >>> from hardenkit.export.runtime import check_providers
    >>> [c.active for c in check_providers(["CPUExecutionProvider"])]
    [True]
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
import warnings
from collections.abc import Mapping, Sequence
from importlib.metadata import distributions
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from ..errors import ConfigError, ExecutionProviderError, ExportError, ModelCompatibilityError
from ..logging import get_logger

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "CPU",
    "CUDA",
    "TENSORRT",
    "OrtDistribution",
    "OrtModule",
    "ProviderCheck",
    "available_providers",
    "check_providers",
    "default_providers",
    "make_session",
    "ort_distributions",
]

_log = get_logger("hardenkit.export.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ProviderOptions = Mapping[str, Mapping[str, Any]]
"""Provider options keyed by provider name, e.g. ``{"CUDAExecutionProvider": {"device_id": 0}}``."""


class OrtDistribution(BaseModel):
    """An installed ONNX Runtime distribution (pip package)."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str


class ProviderCheck(BaseModel):
    """Whether a tiny session really runs on one execution provider."""

    model_config = ConfigDict(frozen=True)

    provider: str
    active: bool
    """``session.get_providers()[0]`` was this provider and the session produced correct output."""
    active_providers: list[str] = Field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def ort_distributions() -> list[OrtDistribution]:
    """ONNX Runtime pip distributions installed in this environment (sorted by name).

    More than one (typically ``onnxruntime`` *and* ``onnxruntime-gpu``) is a broken setup:
    both install into the same ``onnxruntime/`` directory and the last one installed wins.
    """
    found: dict[str, OrtDistribution] = {}
    for dist in distributions():
        try:
            name = str(dist.metadata["Name"] or "")
        except KeyError:  # a broken dist-info without a name
            continue
        norm = name.lower().replace("_", "-")
        if norm == "onnxruntime" or norm.startswith(("onnxruntime-", "ort-nightly")):
            found.setdefault(norm, OrtDistribution(name=norm, version=str(dist.version)))
    return [found[k] for k in sorted(found)]


def available_providers() -> list[str]:
    """What the installed ONNX Runtime build *contains* (not what will load)."""
    import onnxruntime as ort

    return [str(p) for p in ort.get_available_providers()]


def default_providers() -> list[str]:
    """CUDA then CPU when both ONNX Runtime and torch see CUDA; otherwise CPU only."""
    if CUDA in available_providers() and torch.cuda.is_available():
        return [CUDA, CPU]
    return [CPU]


def _normalize_providers(providers: Sequence[str] | str | None) -> list[str]:
    if providers is None:
        return default_providers()
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    out = list(providers)
    if not out or not all(isinstance(p, str) and p for p in out):
        raise ConfigError(
            f"providers must be a non-empty list of provider names, got {providers!r}.",
            hint="e.g. providers=['CUDAExecutionProvider', 'CPUExecutionProvider']",
        )
    if len(set(out)) != len(out):
        raise ConfigError(f"providers lists a provider twice: {out}.")
    return out


def _options_list(
    providers: Sequence[str], provider_options: ProviderOptions | None
) -> list[dict[str, Any]] | None:
    if provider_options is None:
        return None
    if not isinstance(provider_options, Mapping):
        raise ConfigError(
            "provider_options must map a provider name to its options dict.",
            hint="e.g. {'CUDAExecutionProvider': {'device_id': 0}}",
        )
    unknown = sorted(set(provider_options) - set(providers))
    if unknown:
        raise ConfigError(
            f"provider_options names providers that are not requested: {unknown}.",
            hint=f"requested providers: {list(providers)}",
        )
    return [dict(provider_options.get(p, {})) for p in providers]


def _fallback_message(
    requested: Sequence[str], active: Sequence[str], caught: Sequence[str]
) -> tuple[str, str]:
    want = requested[0]
    got = active[0] if active else "nothing"
    avail = available_providers()
    why = []
    if want not in avail:
        why.append(f"this ONNX Runtime build does not contain {want} (it lists {avail})")
    elif want in (CUDA, TENSORRT):
        why.append(
            f"{want} is compiled in, but its libraries could not be loaded or no GPU is usable "
            f"(torch.cuda.is_available()={torch.cuda.is_available()})"
        )
    if caught:
        why.append("ONNX Runtime said: " + " | ".join(c.splitlines()[0][:300] for c in caught[:3]))
    fell_back = "fell back to the CPU" if got == CPU else f"fell back to {got}"
    msg = (
        f"Requested execution provider {want} is not active: ONNX Runtime silently "
        f"{fell_back} (active providers {list(active)}, requested {list(requested)}). "
        + ("; ".join(why) + "." if why else "")
    )
    hint = (
        f"to run on the CPU, request it explicitly: providers=['{CPU}'] (CLI: --providers "
        f"{CPU}); to use {want}, install one matching ONNX Runtime GPU build with its "
        "CUDA/cuDNN libraries and check `hardenkit doctor`"
    )
    return msg, hint


def make_session(
    path: str | Path | bytes,
    providers: Sequence[str] | str | None = None,
    provider_options: ProviderOptions | None = None,
    *,
    session_options: onnxruntime.SessionOptions | None = None,
    intra_op_num_threads: int | None = None,
) -> onnxruntime.InferenceSession:
    """Create an ONNX Runtime session and check it runs on the first requested provider.

    Args:
        path: an ``.onnx`` file (its external-data files next to it) or serialized bytes.
        providers: provider names in priority order (default :func:`default_providers`).
            For TensorRT list ``[TensorRT, CUDA, CPU]`` so unsupported subgraphs fall back.
        provider_options: options per provider name.
        session_options: an ``onnxruntime.SessionOptions`` to use.
        intra_op_num_threads: CPU threads of the session (default: ONNX Runtime's choice).

    Raises:
        ExecutionProviderError: ``session.get_providers()[0]`` is not ``providers[0]`` (the
            silent-fallback case, e.g. CUDA requested on a machine without a usable GPU).
        ExportError: the model cannot be loaded (missing file or sidecar, invalid graph).
    """
    provs = _normalize_providers(providers)
    if provs[0] in (CUDA, TENSORRT):
        _preload_gpu_libraries()
    session, caught = _create_session(
        path, provs, _options_list(provs, provider_options), session_options, intra_op_num_threads
    )
    active = [str(p) for p in session.get_providers()]
    if not active or active[0] != provs[0]:
        msg, hint = _fallback_message(provs, active, caught)
        _log.warning("export.provider_fallback", requested=provs, active=active)
        raise ExecutionProviderError(msg, hint=hint)
    _log.debug("export.session", requested=provs, active=active, ort_warnings=caught)
    return session


@functools.cache
def _preload_gpu_libraries() -> None:
    """Let ONNX Runtime load CUDA/cuDNN from torch or the nvidia pip packages (once)."""
    if not torch.cuda.is_available():
        return
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints; stdout is not ours
            preload()
    except Exception as exc:  # best effort: the provider check reports what really runs
        _log.debug("export.preload_dlls_failed", error=str(exc))


def _create_session(
    path: str | Path | bytes,
    providers: list[str],
    options: list[dict[str, Any]] | None,
    session_options: onnxruntime.SessionOptions | None,
    intra_op_num_threads: int | None,
) -> tuple[onnxruntime.InferenceSession, list[str]]:
    import onnxruntime as ort

    so = session_options if session_options is not None else ort.SessionOptions()
    if intra_op_num_threads is not None:
        so.intra_op_num_threads = int(intra_op_num_threads)
    source = path if isinstance(path, bytes) else str(path)
    printed = io.StringIO()
    # ORT prints its provider fallback ("EP Error ... Falling back to") on stdout, which
    # belongs to the application (and to `--format json` output): capture it instead
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        try:
            session = ort.InferenceSession(
                source, sess_options=so, providers=providers, provider_options=options
            )
        except Exception as exc:
            where = "the serialized model" if isinstance(path, bytes) else repr(str(path))
            raise ExportError(
                f"ONNX Runtime could not load {where}: {type(exc).__name__}: {exc}",
                hint="check that every file of the export (the .onnx and its .data sidecar) "
                "is present, and that the model is a valid ONNX graph",
            ) from exc
    notes = [str(w.message) for w in caught]
    text = " ".join(printed.getvalue().replace("*", " ").split())
    if text:
        notes.append(text)
    return session, notes


def _tiny_model_bytes() -> bytes:
    """``y = x + 1`` on a (1, 4) float tensor; IR version pinned to 10 for ORT 1.2x/1.3x."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    one = numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), name="one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "hardenkit_probe", [x], [y], [one]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10, producer_name="hardenkit"
    )
    return bytes(model.SerializeToString())


def check_providers(providers: Sequence[str] | None = None) -> list[ProviderCheck]:
    """For each provider (default: all available), whether a tiny session really runs on it."""
    probe = _tiny_model_bytes()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    out: list[ProviderCheck] = []
    for provider in providers if providers is not None else available_providers():
        t0 = time.perf_counter()
        try:
            session, caught = _create_session(probe, [provider], None, None, 1)
        except ExportError as exc:
            out.append(
                ProviderCheck(
                    provider=provider,
                    active=False,
                    error=str(exc),
                    seconds=time.perf_counter() - t0,
                )
            )
            continue
        active = [str(p) for p in session.get_providers()]
        error = None
        if not active or active[0] != provider:
            error = _fallback_message([provider], active, caught)[0]
        else:
            y = session.run(None, {"x": x})[0]
            if not np.allclose(y, x + 1):
                error = "the probe session returned wrong values"
        out.append(
            ProviderCheck(
                provider=provider,
                active=error is None,
                active_providers=active,
                error=error,
                seconds=time.perf_counter() - t0,
            )
        )
    return out


class OrtModule(nn.Module):
    """An ONNX Runtime session as an ``nn.Module``: float pixels ``(N, C, H, W)`` → logits.

    Inputs are fed as contiguous float32 NumPy arrays (float16 when the graph's input is
    float16); outputs come back as float32 tensors on the input's device. A graph with a
    static batch size is fed in chunks of that size (the last one padded), so any batch
    works. The module has no parameters; ``to()``/``eval()`` are no-ops for the session.

    Args:
        session: an ``onnxruntime.InferenceSession`` (see :func:`make_session`).
    """

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        super().__init__()
        inputs = session.get_inputs()
        outputs = session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelCompatibilityError(
                f"expected a graph with one image input and a logits output, got inputs "
                f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}.",
                hint="export with hardenkit.export.to_onnx",
            )
        itype = str(inputs[0].type)
        if itype not in ("tensor(float)", "tensor(float16)"):
            raise ModelCompatibilityError(
                f"the graph input {inputs[0].name!r} is {itype}; expected float pixels.",
                hint="export with hardenkit.export.to_onnx (float32 NCHW pixels in [0, 1])",
            )
        self.session = session
        self.input_name = str(inputs[0].name)
        self.output_name = str(outputs[0].name)
        self.input_dtype: type[np.floating[Any]] = (
            np.float16 if itype == "tensor(float16)" else np.float32
        )
        dim0 = inputs[0].shape[0] if inputs[0].shape else None
        self.static_batch: int | None = dim0 if isinstance(dim0, int) and dim0 > 0 else None

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        providers: Sequence[str] | str | None = None,
        provider_options: ProviderOptions | None = None,
        *,
        intra_op_num_threads: int | None = None,
    ) -> OrtModule:
        """Load ``path`` with :func:`make_session` (provider assertion included)."""
        return cls(
            make_session(
                path, providers, provider_options, intra_op_num_threads=intra_op_num_threads
            )
        )

    @property
    def providers(self) -> list[str]:
        """The session's active providers, first = where it runs."""
        return [str(p) for p in self.session.get_providers()]

    def run_numpy(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Run the session on an NCHW array; returns float32 logits."""
        arr = np.ascontiguousarray(x, dtype=self.input_dtype)
        n = self.static_batch
        if n is None or arr.shape[0] == n:
            out = self.session.run([self.output_name], {self.input_name: arr})[0]
            return np.asarray(out, dtype=np.float32)
        chunks = []
        for start in range(0, arr.shape[0], n):
            part = arr[start : start + n]
            k = part.shape[0]
            if k < n:
                pad = np.zeros((n - k, *part.shape[1:]), dtype=part.dtype)
                part = np.ascontiguousarray(np.concatenate([part, pad]))
            res = self.session.run([self.output_name], {self.input_name: part})[0]
            chunks.append(np.asarray(res, dtype=np.float32)[:k])
        return np.concatenate(chunks)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a float pixel batch (computed by ONNX Runtime)."""
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.run_numpy(arr)).to(x.device)

    def extra_repr(self) -> str:
        """Show the providers and the static batch, if any."""
        return f"providers={self.providers}, static_batch={self.static_batch}"

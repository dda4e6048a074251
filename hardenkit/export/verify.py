"""Post-export verification: numerical and behavioural parity of ONNX Runtime vs PyTorch.

:func:`verify_onnx` answers two questions about an exported model:

1. *Numerical parity* — on the same inputs (held-out batches, their triggered versions, and
   batches of 1 and 7 images to prove the dynamic axis), do the ONNX Runtime logits match
   PyTorch's within the tolerance profile (``|Δ| <= atol + rtol·|ref|``), and does the top-1
   class agree?
2. *Behavioural parity* — measured with the :class:`~hardenkit.validate.Validator` on both
   backends, is benign accuracy (BA) unchanged and the attack success rate (ASR) not higher?
   A tiny numerical drift can flip triggered samples that sit near a decision boundary.

The model files are first copied to a fresh temporary directory (only the ``.onnx`` file and
the external-data files it refers to, or exactly the files listed in an
:class:`~hardenkit.export.ExportReport`), so a missing sidecar is caught here rather than in
production. The session is created with explicit providers and must run on the first one
(see :func:`~hardenkit.export.runtime.make_session`).

A failed verification is a report with ``passed=False``; ``raise_on_failure=True`` turns it
into :class:`~hardenkit.errors.ParityError`. Exceptions otherwise mean "could not verify".

Example:
    >>> import tempfile, torch
    >>> from hardenkit.export import to_onnx, verify_onnx
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    >>> exp = to_onnx(model, tempfile.mkdtemp() + "/m.onnx", input_shape=(3, 4, 4))
    >>> data = [(torch.rand(8, 3, 4, 4), torch.randint(0, 2, (8,)))]
    >>> rep = verify_onnx(exp, model, data, providers=["CPUExecutionProvider"])
    >>> rep.passed, rep.providers_active[0], rep.batch_sizes_tested
    (True, 'CPUExecutionProvider', [1, 7])
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from ..config import HardenkitConfig, RuntimeConfig, parse_config
from ..data import ImageDataset
from ..data.loaders import BatchSource
from ..errors import ConfigError, ExportError, ModelCompatibilityError, ParityError
from ..io import file_sha256
from ..logging import get_logger
from ..reports import BaseReport, ModelFingerprint
from ..triggers import Trigger
from ..validate import Validator
from ..validate.metrics import RateEstimate, TargetSpec, TriggerLike
from .onnx_export import ExportedFile, ExportReport, external_data_locations
from .runtime import (
    CPU,
    CUDA,
    TENSORRT,
    OrtDistribution,
    OrtModule,
    ProviderOptions,
    _normalize_providers,
    make_session,
    ort_distributions,
)

__all__ = [
    "PROFILES",
    "BackendMetrics",
    "LogitComparison",
    "ParityCheck",
    "ParityTolerance",
    "Profile",
    "Throughput",
    "VerificationReport",
    "verify_onnx",
]

_log = get_logger("hardenkit.export.verify")

Profile = Literal["fp32-cpu", "fp32-cuda", "fp16"]

_DYNAMIC_BATCHES = (1, 7)


class ParityTolerance(HardenkitConfig):
    """Tolerances of :func:`verify_onnx` (rates are fractions in [0, 1]).

    Attributes:
        atol / rtol: logits must satisfy ``|onnx - torch| <= atol + rtol * |torch|``
            elementwise (NumPy ``allclose`` semantics).
        min_top1_agreement: fraction of compared images whose top-1 class agrees.
        max_ba_delta: largest ``|BA_onnx - BA_torch|``.
        max_asr_increase: largest ``ASR_onnx - ASR_torch`` (only with a trigger).
    """

    atol: Annotated[float, Field(ge=0)] = 1e-4
    rtol: Annotated[float, Field(ge=0)] = 1e-3
    min_top1_agreement: Annotated[float, Field(ge=0, le=1)] = 0.999
    max_ba_delta: Annotated[float, Field(ge=0, le=1)] = 0.005
    max_asr_increase: Annotated[float, Field(ge=0, le=1)] = 0.01

    @classmethod
    def for_profile(cls, profile: Profile) -> ParityTolerance:
        """The preset of a profile (see :data:`PROFILES`)."""
        if profile not in PROFILES:
            raise ConfigError(
                f"unknown verification profile {profile!r}.",
                hint=f"use one of {sorted(PROFILES)}",
            )
        return PROFILES[profile]


PROFILES: dict[str, ParityTolerance] = {
    # fp32 on the CPU provider against PyTorch fp32 on the CPU
    "fp32-cpu": ParityTolerance(),
    # fp32 on a GPU provider: other kernels and summation orders, so a looser atol
    "fp32-cuda": ParityTolerance(atol=1e-3, rtol=1e-3),
    # an fp16 serving graph (convert_fp16) against the fp32 PyTorch model
    "fp16": ParityTolerance(
        atol=5e-2, rtol=2e-2, min_top1_agreement=0.99, max_ba_delta=0.01, max_asr_increase=0.01
    ),
}
"""Tolerance presets by profile name."""


class ParityCheck(BaseModel):
    """One verification rule: the measured value against its threshold."""

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    value: float | None
    threshold: float
    comparison: Literal["<=", ">="]
    detail: str


class LogitComparison(BaseModel):
    """Logit differences between ONNX Runtime and PyTorch on one set of inputs."""

    model_config = ConfigDict(frozen=True)

    inputs: str
    """What was compared: ``"held-out"`` (clean and triggered loader batches) or ``"batch=N"``."""
    samples: int
    max_abs_diff: float
    max_rel_diff: float
    """``max |Δ| / max(|torch|, 1e-6)`` (large when a logit is near zero; informational)."""
    allclose_excess: float
    """``max(|Δ| - rtol·|torch|)``: the logits match when this is <= ``atol``."""
    top1_agreement: float


class BackendMetrics(BaseModel):
    """BA / ASR / RA measured by the Validator on one backend."""

    model_config = ConfigDict(frozen=True)

    benign_accuracy: RateEstimate
    attack_success_rate: RateEstimate | None = None
    robust_accuracy: RateEstimate | None = None


class Throughput(BaseModel):
    """Images per second of both backends on the same batches (measured, not asserted)."""

    model_config = ConfigDict(frozen=True)

    images: int
    batches: int
    torch_device: str
    torch_threads: int
    ort_provider: str
    ort_threads: int | None
    torch_images_per_s: float | None
    ort_images_per_s: float | None
    ort_speedup: float | None
    """``ort_images_per_s / torch_images_per_s``."""


class VerificationReport(BaseReport):
    """Result of :func:`verify_onnx`: every check with its value and threshold."""

    report_type: Literal["onnx_verification"] = "onnx_verification"
    path: str
    files: list[ExportedFile]
    precision: str
    profile: Profile
    tolerance: ParityTolerance
    providers_requested: list[str]
    providers_active: list[str]
    onnxruntime_version: str
    onnxruntime_distributions: list[OrtDistribution]
    torch_device: str
    model: ModelFingerprint
    onnx_model_sha256: str | None
    """The source-model fingerprint stored in the ONNX metadata at export time, if any."""
    dynamic_batch: bool
    batch_sizes_tested: list[int]
    comparisons: list[LogitComparison]
    torch_metrics: BackendMetrics
    onnx_metrics: BackendMetrics
    trigger: dict[str, Any] | None = None
    target: int | dict[str, int] | None = None
    samples: int
    triggered_samples: int
    checks: list[ParityCheck]
    passed: bool
    throughput: Throughput
    notes: list[str] = Field(default_factory=list)
    seconds: float

    @property
    def failed_checks(self) -> list[ParityCheck]:
        """The checks that did not pass."""
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        """A short human-readable summary."""
        lines = [
            f"ONNX verification {'PASSED' if self.passed else 'FAILED'} ({self.profile}, "
            f"{self.providers_active[0] if self.providers_active else '?'}, "
            f"{self.samples} images)"
        ]
        for c in self.checks:
            value = "n/a" if c.value is None else f"{c.value:.6g}"
            lines.append(
                f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {value} {c.comparison} "
                f"{c.threshold:g} — {c.detail}"
            )
        tp = self.throughput
        if tp.torch_images_per_s and tp.ort_images_per_s:
            lines.append(
                f"  throughput: ORT {tp.ort_images_per_s:.0f} img/s vs PyTorch "
                f"{tp.torch_images_per_s:.0f} img/s ({tp.ort_speedup:.2f}x)"
            )
        return "\n".join(lines)


# --- files -----------------------------------------------------------------------------------


def _stage_files(source: str | Path | ExportReport, tmp: Path) -> tuple[Path, list[ExportedFile]]:
    """Copy the model and its sidecars into ``tmp``; returns the copied model path."""
    import onnx

    if isinstance(source, ExportReport):
        src = Path(source.path)
        listed = list(source.files)
        for f in listed:
            p = Path(f.path)
            if not p.is_file():
                raise ExportError(
                    f"{f.name} ({f.role}) listed in the export report is missing: {p}.",
                    hint="ship and keep every file listed in ExportReport.files together",
                )
            if p.stat().st_size != f.size_bytes or file_sha256(p) != f.sha256:
                raise ExportError(
                    f"{p} changed since it was exported (sha256 or size differs from the "
                    "export report).",
                    hint="re-export the model, or verify the file path instead of the report",
                )
    else:
        src = Path(source)
        listed = []
    if not src.is_file():
        raise ExportError(f"ONNX model {str(src)!r} does not exist.", hint="check the path")
    try:
        proto = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise ExportError(
            f"{src} is not a readable ONNX file: {type(exc).__name__}: {exc}",
            hint="export it with hardenkit.export.to_onnx",
        ) from exc
    locations = external_data_locations(proto)
    if listed:
        names = {f.name for f in listed if f.role == "external_data"}
        unlisted = [loc for loc in locations if loc not in names]
        if unlisted:
            raise ExportError(
                f"{src.name} refers to external data {unlisted} that the export report does "
                "not list.",
                hint="re-export; the report and the model file do not belong together",
            )
    missing = [loc for loc in locations if not (src.parent / loc).is_file()]
    if missing:
        raise ExportError(
            f"{src.name} stores its weights in external data file(s) {missing} which are "
            f"missing next to it (expected {[str(src.parent / m) for m in missing]}).",
            hint="ship every file listed in ExportReport.files together (the .onnx and its "
            ".data sidecar), or export with external_data='never' for a single file",
        )
    dest = tmp / src.name
    shutil.copy2(src, dest)
    for loc in locations:
        target = tmp / loc
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.parent / loc, target)
    files = [
        ExportedFile(
            name=src.name,
            path=str(src.resolve()),
            role="model",
            size_bytes=src.stat().st_size,
            sha256=file_sha256(src),
        )
    ] + [
        ExportedFile(
            name=loc,
            path=str((src.parent / loc).resolve()),
            role="external_data",
            size_bytes=(src.parent / loc).stat().st_size,
            sha256=file_sha256(src.parent / loc),
        )
        for loc in locations
    ]
    return dest, files


# --- loaders ---------------------------------------------------------------------------------


class _Limited:
    """A re-iterable view of at most ``n`` batches of a loader."""

    def __init__(self, source: Iterable[Any], n: int | None) -> None:
        self.source = source
        self.n = n

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.source)
        return it if self.n is None else itertools.islice(it, self.n)


def _reiterable(loader: BatchSource | ImageDataset, max_batches: int | None) -> Iterable[Any]:
    if isinstance(loader, ImageDataset):
        loader = loader.loader()
    if isinstance(loader, Tensor) or not isinstance(loader, Iterable):
        raise ConfigError(
            f"loader must be an iterable of (images, labels) batches, got {type(loader).__name__}.",
            hint="pass a DataLoader, a list of (x, y) batches or an ImageDataset",
        )
    if isinstance(loader, Iterator):  # one-shot (a generator...): keep the batches for both passes
        return list(itertools.islice(loader, max_batches))
    return _Limited(loader, max_batches)


# --- the two passes --------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _digest(x: Tensor) -> str:
    return hashlib.sha1(x.detach().to("cpu").contiguous().numpy().tobytes()).hexdigest()


class _Stats:
    """Streaming logit statistics."""

    def __init__(self, rtol: float) -> None:
        self.rtol = rtol
        self.samples = 0
        self.agree = 0
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.excess = -float("inf")

    def update(self, ref: Tensor, got: Tensor) -> None:
        r = ref.detach().to("cpu", torch.float64)
        g = got.detach().to("cpu", torch.float64)
        if r.shape != g.shape:
            raise ModelCompatibilityError(
                f"ONNX Runtime returned logits {tuple(g.shape)} but PyTorch {tuple(r.shape)}.",
                hint="the ONNX file was not exported from this model",
            )
        diff = (r - g).abs()
        if not bool(torch.isfinite(g).all()):
            self.max_abs = self.max_rel = self.excess = float("inf")
        else:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.max_rel = max(self.max_rel, float((diff / r.abs().clamp_min(1e-6)).max()))
            self.excess = max(self.excess, float((diff - self.rtol * r.abs()).max()))
        self.agree += int((r.argmax(1) == g.argmax(1)).sum())
        self.samples += int(r.shape[0])

    def result(self, inputs: str) -> LogitComparison:
        return LogitComparison(
            inputs=inputs,
            samples=self.samples,
            max_abs_diff=self.max_abs,
            max_rel_diff=self.max_rel,
            allclose_excess=self.excess if self.samples else 0.0,
            top1_agreement=self.agree / self.samples if self.samples else 1.0,
        )


class _Paired(nn.Module):
    """Runs PyTorch and ONNX Runtime on every batch; returns PyTorch's logits.

    Records logit statistics, timings, ONNX Runtime's outputs (replayed by :class:`_Replay`)
    and the first few images (for the batch-size checks).
    """

    def __init__(self, ref: nn.Module, ort: OrtModule, rtol: float, device: torch.device):
        super().__init__()
        self.ref = ref
        self.ort_module = [ort]  # a list: not a submodule, Validator must not move/eval it
        self.device = device
        self.stats = _Stats(rtol)
        self.cache: list[tuple[str, Tensor]] = []
        self.times: list[tuple[int, float, float]] = []
        self.first: list[Tensor] = []
        self.kept = 0

    def forward(self, x: Tensor) -> Tensor:
        _sync(self.device)
        t0 = time.perf_counter()
        ref = self.ref(x)
        _sync(self.device)
        t1 = time.perf_counter()
        got = self.ort_module[0](x)
        t2 = time.perf_counter()
        self.times.append((int(x.shape[0]), t1 - t0, t2 - t1))
        self.stats.update(ref, got)
        self.cache.append((_digest(x), got))
        if self.kept < max(_DYNAMIC_BATCHES):
            take = x[: max(_DYNAMIC_BATCHES) - self.kept].detach().to("cpu")
            self.first.append(take)
            self.kept += int(take.shape[0])
        out: Tensor = ref
        return out


class _Replay(nn.Module):
    """Returns the ONNX Runtime logits recorded by :class:`_Paired` for identical inputs."""

    def __init__(self, paired: _Paired) -> None:
        super().__init__()
        self.cache = paired.cache
        self.ort_module = paired.ort_module
        self.index = 0
        self.live = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.index < len(self.cache):
            digest, logits = self.cache[self.index]
            self.index += 1
            if digest == _digest(x):
                return logits.to(x.device)
        self.live += 1  # the loader (or the trigger) is not deterministic: run ORT again
        out: Tensor = self.ort_module[0](x)
        return out


def _metrics(rep: Any) -> BackendMetrics:
    return BackendMetrics(
        benign_accuracy=rep.benign_accuracy,
        attack_success_rate=rep.attack_success_rate,
        robust_accuracy=rep.robust_accuracy,
    )


def _resolve_profile(profile: Profile | None, providers: Sequence[str], precision: str) -> Profile:
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(
                f"unknown verification profile {profile!r}.", hint=f"use one of {sorted(PROFILES)}"
            )
        return profile
    if precision == "fp16":
        return "fp16"
    return "fp32-cuda" if providers[0] in (CUDA, TENSORRT) else "fp32-cpu"


def _throughput(
    times: Sequence[tuple[int, float, float]],
    device: torch.device,
    provider: str,
    ort_threads: int | None,
) -> Throughput:
    timed = list(times[1:]) if len(times) > 1 else list(times)  # first batch = warm-up
    n = sum(t[0] for t in timed)
    t_ref = sum(t[1] for t in timed)
    t_ort = sum(t[2] for t in timed)
    ref_ips = n / t_ref if t_ref > 0 else None
    ort_ips = n / t_ort if t_ort > 0 else None
    return Throughput(
        images=n,
        batches=len(timed),
        torch_device=str(device),
        torch_threads=torch.get_num_threads(),
        ort_provider=provider,
        ort_threads=ort_threads,
        torch_images_per_s=ref_ips,
        ort_images_per_s=ort_ips,
        ort_speedup=(ort_ips / ref_ips) if ref_ips and ort_ips else None,
    )


# --- public API ------------------------------------------------------------------------------


def verify_onnx(
    path: str | Path | ExportReport,
    model: nn.Module,
    loader: BatchSource | ImageDataset,
    *,
    trigger: Trigger | TriggerLike | None = None,
    target: TargetSpec | None = None,
    providers: Sequence[str] | str | None = None,
    provider_options: ProviderOptions | None = None,
    profile: Profile | None = None,
    config: ParityTolerance | dict[str, Any] | None = None,
    runtime: RuntimeConfig | dict[str, Any] | None = None,
    max_batches: int | None = None,
    raise_on_failure: bool = False,
) -> VerificationReport:
    """Verify an exported ONNX model against the PyTorch model it came from.

    Args:
        path: the ``.onnx`` file, or the :class:`ExportReport` of :func:`to_onnx` (then
            exactly its listed files are used, and their sha256 must still match).
        model: the PyTorch model (never modified: a float32 deep copy in eval mode is used).
        loader: held-out ``(x, y)`` pixel batches (any loader, or an ``ImageDataset``). It is
            iterated twice; a one-shot iterator is materialised first.
        trigger / target: measure ASR on both backends (the trigger is stamped in pixel
            space by PyTorch before the batch is fed to ONNX Runtime).
        providers: ONNX Runtime providers in priority order. Default: CUDA first when ONNX
            Runtime lists it *and* torch sees a GPU, else CPU. The session must run on
            ``providers[0]`` or :class:`~hardenkit.errors.ExecutionProviderError` is raised.
        provider_options: options per provider name (e.g. ``{"CUDAExecutionProvider":
            {"use_tf32": 0}}``).
        profile: tolerance preset, ``"fp32-cpu"``, ``"fp32-cuda"`` or ``"fp16"``. Default:
            ``"fp16"`` for an fp16 file, ``"fp32-cuda"`` on a GPU provider, else
            ``"fp32-cpu"``.
        config: a :class:`ParityTolerance` or a dict of its fields overriding the profile.
        runtime: PyTorch side: ``device`` (default: CPU for CPU providers, CUDA for GPU
            providers when available), ``input_normalization`` of the loader. Autocast is
            always off: the reference is the fp32 model.
        max_batches: use at most this many loader batches.
        raise_on_failure: raise :class:`~hardenkit.errors.ParityError` instead of returning a
            failed report.

    Returns:
        A :class:`VerificationReport` (``passed``, each check with value and threshold,
        BA/ASR on both backends, throughput of both).

    Raises:
        ExportError: a file is missing (e.g. the ``.data`` sidecar) or unreadable.
        ExecutionProviderError: ONNX Runtime did not run on the first requested provider.
        ParityError: with ``raise_on_failure=True`` when a check fails.
    """
    import onnxruntime as ort

    t_start = time.perf_counter()
    if max_batches is not None and (isinstance(max_batches, bool) or max_batches < 1):
        raise ConfigError(f"max_batches must be a positive int or None, got {max_batches!r}.")
    if (trigger is None) != (target is None):
        raise ConfigError(
            "trigger and target go together: pass both to measure ASR, or neither.",
            hint="e.g. verify_onnx(path, model, test_loader, trigger=attack.trigger, target=0)",
        )
    if not isinstance(model, nn.Module):
        raise ModelCompatibilityError(
            f"verify_onnx needs the PyTorch nn.Module, got {type(model).__name__}."
        )
    provs = _normalize_providers(providers)
    rt_in = parse_config(RuntimeConfig, runtime)
    if rt_in.device == "auto":
        want_cuda = provs[0] in (CUDA, TENSORRT) and torch.cuda.is_available()
        rt_in = rt_in.with_updates(device="cuda" if want_cuda else "cpu")
    rt = rt_in.with_updates(amp=False)
    device = rt.resolve_device()
    data = _reiterable(loader, max_batches)

    ref = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    fingerprint = ModelFingerprint.of(ref)
    ref.to(device)
    notes: list[str] = []

    tmp = Path(tempfile.mkdtemp(prefix="hardenkit-verify-"))
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        staged, files = _stage_files(path, tmp)
        import onnx

        proto = onnx.load(str(staged), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        precision = meta.get("hardenkit.precision", "fp32")
        prof = _resolve_profile(profile, provs, precision)
        base = PROFILES[prof]
        if config is None:
            tol = base
        elif isinstance(config, ParityTolerance):
            tol = config
        else:
            tol = parse_config(ParityTolerance, {**base.model_dump(), **config})
        ort_threads = torch.get_num_threads() if provs[0] == CPU else None
        session = make_session(staged, provs, provider_options, intra_op_num_threads=ort_threads)
        onnx_module = OrtModule(session)
        dynamic = onnx_module.static_batch is None

        # the reference is true fp32: no TF32 on the PyTorch side while verifying
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

        paired = _Paired(ref, onnx_module, tol.rtol, device)
        rep_torch = Validator(paired, runtime=rt).run(data, trigger=trigger, target=target)
        replay = _Replay(paired)
        rep_onnx = Validator(replay, runtime=rt).run(data, trigger=trigger, target=target)
        if replay.live:
            notes.append(
                f"{replay.live} batch(es) differed between the two passes (shuffling loader "
                "or random trigger); ONNX Runtime was run again on those for BA/ASR"
            )
        comparisons = [paired.stats.result("held-out")]

        # batch sizes 1 and 7: the dynamic axis (or the static-batch padding) works
        pool = torch.cat(paired.first) if paired.first else torch.rand(1, 3, 32, 32)
        for n in _DYNAMIC_BATCHES:
            reps = -(-n // pool.shape[0])
            xb = pool.repeat(reps, 1, 1, 1)[:n].to(device)
            st = _Stats(tol.rtol)
            with torch.no_grad():
                st.update(ref(xb), onnx_module(xb))
            comparisons.append(st.result(f"batch={n}"))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        shutil.rmtree(tmp, ignore_errors=True)

    onnx_sha = meta.get("hardenkit.model_sha256")
    checks = _checks(tol, comparisons, rep_torch, rep_onnx, fingerprint.sha256, onnx_sha)
    passed = all(c.passed for c in checks)
    tgt: int | dict[str, int] | None = None
    if isinstance(target, int):
        tgt = target
    elif target is not None:
        tgt = {str(k): int(v) for k, v in target.items()}
    report = VerificationReport(
        path=files[0].path,
        files=files,
        precision=precision,
        profile=prof,
        tolerance=tol,
        providers_requested=provs,
        providers_active=onnx_module.providers,
        onnxruntime_version=str(ort.__version__),
        onnxruntime_distributions=ort_distributions(),
        torch_device=str(device),
        model=fingerprint,
        onnx_model_sha256=onnx_sha,
        dynamic_batch=dynamic,
        batch_sizes_tested=list(_DYNAMIC_BATCHES),
        comparisons=comparisons,
        torch_metrics=_metrics(rep_torch),
        onnx_metrics=_metrics(rep_onnx),
        trigger=rep_torch.trigger,
        target=tgt,
        samples=rep_torch.samples,
        triggered_samples=rep_torch.triggered_samples,
        checks=checks,
        passed=passed,
        throughput=_throughput(paired.times, device, onnx_module.providers[0], ort_threads),
        notes=notes,
        seconds=time.perf_counter() - t_start,
    )
    _log.info(
        "export.verify_done",
        path=report.path,
        passed=passed,
        profile=prof,
        provider=report.providers_active[0],
        failed=[c.name for c in report.failed_checks],
        seconds=report.seconds,
    )
    if raise_on_failure and not passed:
        raise ParityError(
            "ONNX verification failed: "
            + "; ".join(
                f"{c.name} = {c.value} (must be {c.comparison} {c.threshold})"
                for c in report.failed_checks
            ),
            hint="re-export from the right model; if only the tolerance is at stake, use the "
            "profile of the target runtime (fp32-cuda, fp16) or pass config={...}",
        )
    return report


def _checks(
    tol: ParityTolerance,
    comparisons: Sequence[LogitComparison],
    rep_torch: Any,
    rep_onnx: Any,
    model_sha: str,
    onnx_sha: str | None,
) -> list[ParityCheck]:
    held = comparisons[0]
    batches = comparisons[1:]
    out = [
        ParityCheck(
            name="logits_allclose",
            passed=held.allclose_excess <= tol.atol,
            value=held.allclose_excess,
            threshold=tol.atol,
            comparison="<=",
            detail=f"max(|Δ| - rtol·|torch|) over {held.samples} held-out and triggered images "
            f"(rtol {tol.rtol:g}); max |Δ| {held.max_abs_diff:.3g}, max rel "
            f"{held.max_rel_diff:.3g}",
        ),
        ParityCheck(
            name="top1_agreement",
            passed=held.top1_agreement >= tol.min_top1_agreement,
            value=held.top1_agreement,
            threshold=tol.min_top1_agreement,
            comparison=">=",
            detail=f"fraction of {held.samples} images with the same top-1 class",
        ),
    ]
    worst = max((c.allclose_excess for c in batches), default=0.0)
    out.append(
        ParityCheck(
            name="batch_sizes",
            passed=worst <= tol.atol and all(c.top1_agreement == 1.0 for c in batches),
            value=worst,
            threshold=tol.atol,
            comparison="<=",
            detail="logits at batch sizes "
            + ", ".join(c.inputs.split("=")[1] for c in batches)
            + " match PyTorch (dynamic batch axis)",
        )
    )
    ba_t = rep_torch.benign_accuracy.value or 0.0
    ba_o = rep_onnx.benign_accuracy.value or 0.0
    out.append(
        ParityCheck(
            name="ba_delta",
            passed=abs(ba_o - ba_t) <= tol.max_ba_delta + 1e-12,
            value=abs(ba_o - ba_t),
            threshold=tol.max_ba_delta,
            comparison="<=",
            detail=f"BA PyTorch {ba_t:.4f} vs ONNX Runtime {ba_o:.4f}",
        )
    )
    if rep_torch.attack_success_rate is not None and rep_onnx.attack_success_rate is not None:
        asr_t = rep_torch.attack_success_rate.value
        asr_o = rep_onnx.attack_success_rate.value
        if asr_t is not None and asr_o is not None:
            out.append(
                ParityCheck(
                    name="asr_increase",
                    passed=asr_o - asr_t <= tol.max_asr_increase + 1e-12,
                    value=asr_o - asr_t,
                    threshold=tol.max_asr_increase,
                    comparison="<=",
                    detail=f"ASR PyTorch {asr_t:.4f} vs ONNX Runtime {asr_o:.4f}",
                )
            )
    if onnx_sha is not None:
        out.append(
            ParityCheck(
                name="source_fingerprint",
                passed=onnx_sha == model_sha,
                value=1.0 if onnx_sha == model_sha else 0.0,
                threshold=1.0,
                comparison=">=",
                detail="the ONNX metadata names this model's state-dict sha256"
                if onnx_sha == model_sha
                else f"the ONNX file was exported from another model (sha256 {onnx_sha[:12]}… "
                f"vs {model_sha[:12]}…)",
            )
        )
    return out

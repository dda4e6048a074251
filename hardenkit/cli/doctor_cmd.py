"""``hardenkit doctor``: what this environment can really run (torch, CUDA, ONNX Runtime).

``onnxruntime.get_available_providers()`` lists what the installed build *contains*, not what
will load: a CUDA session can silently run on the CPU. The doctor creates a tiny session on
every listed provider and reports whether it really ran there, and flags the broken setup of
several ONNX Runtime distributions installed side by side.

On a host without a GPU (or without the CUDA libraries) the GPU providers of an
``onnxruntime-gpu`` build cannot load; that is expected, so the doctor says so in one
``info:`` line instead of listing it as an issue, and keeps ONNX Runtime's own library-load
error lines (printed on file descriptor 2 by its C++ logger) off the terminal: they go to
``OrtInfo.probe_log`` and the debug log.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, Literal

from ._common import EXIT_OK, EXIT_RUNTIME, add_command, add_report_arg, lazy_attr, write_report

# torch, pydantic and ONNX Runtime are imported on first use: `--help` must stay fast
_LAZY = {
    "package_version": "._utils.environment",
    "OrtDistribution": ".export.runtime",
    "ProviderCheck": ".export.runtime",
    "check_providers": ".export.runtime",
    "ort_distributions": ".export.runtime",
}

GPU_PROVIDERS = frozenset(
    {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "NvTensorRTRTXExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
    }
)
"""Providers that need a GPU and its libraries (expected not to run on a CPU-only host)."""


def __getattr__(name: str) -> Any:
    if name in {"TorchInfo", "OrtInfo", "DoctorReport"}:
        return getattr(_models(), name)
    return lazy_attr(globals(), name, _LAZY)


def _lazy(name: str) -> Any:
    return lazy_attr(globals(), name, _LAZY)


@functools.cache
def _models() -> Any:
    """The report models (defined on first use: pydantic and torch are slow to import)."""
    from pydantic import BaseModel, ConfigDict, Field

    from ..export.runtime import OrtDistribution, ProviderCheck
    from ..reports import BaseReport

    class TorchInfo(BaseModel):
        """The PyTorch build and the GPU it sees."""

        model_config = ConfigDict(frozen=True)

        version: str
        cuda_build: str | None
        cuda_available: bool
        device_count: int
        devices: list[str]
        cudnn: int | None

    class OrtInfo(BaseModel):
        """The ONNX Runtime installation."""

        model_config = ConfigDict(frozen=True)

        importable: bool
        version: str | None = None
        cuda_build: str | None = None
        device: str | None = None
        distributions: list[OrtDistribution] = Field(default_factory=list)
        conflicting_distributions: bool = False
        available_providers: list[str] = Field(default_factory=list)
        provider_checks: list[ProviderCheck] = Field(default_factory=list)
        debug_info: str | None = None
        probe_log: str | None = None
        """What ONNX Runtime's own logger printed during the provider probes (kept off the
        terminal), e.g. the CUDA libraries it could not load."""
        error: str | None = None

    class DoctorReport(BaseReport):
        """The environment report of ``hardenkit doctor``."""

        report_type: Literal["doctor"] = "doctor"
        torch: TorchInfo
        onnx: str | None
        onnxscript: str | None
        onnxruntime: OrtInfo
        issues: list[str]
        notes: list[str] = Field(default_factory=list)
        """Informational findings that are not problems (e.g. no GPU provider on a CPU host)."""
        required_providers: list[str] = Field(default_factory=list)
        ok: bool

    for cls in (TorchInfo, OrtInfo, DoctorReport):
        cls.__qualname__ = cls.__name__
        cls.__module__ = __name__
    return argparse.Namespace(TorchInfo=TorchInfo, OrtInfo=OrtInfo, DoctorReport=DoctorReport)


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "doctor",
        help="report torch/CUDA/ONNX Runtime and which providers really run",
        description="Report the torch build and CUDA, the installed ONNX Runtime "
        "distributions (flagging several installed together), the providers the build "
        "lists, and for each one whether a tiny session really runs on it. Exit 0, or 3 "
        "when a --require'd provider does not run.",
    )
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    p.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="PROVIDER",
        help="exit 3 unless this provider really runs (repeatable), e.g. CUDAExecutionProvider",
    )
    add_report_arg(p, "DoctorReport")
    p.set_defaults(func=run)


def _torch_info() -> Any:
    import torch

    avail = torch.cuda.is_available()
    count = torch.cuda.device_count() if avail else 0
    return _models().TorchInfo(
        version=torch.__version__,
        cuda_build=torch.version.cuda,
        cuda_available=avail,
        device_count=count,
        devices=[torch.cuda.get_device_name(i) for i in range(count)],
        cudnn=torch.backends.cudnn.version() if avail else None,  # type: ignore[no-untyped-call]
    )


@contextlib.contextmanager
def _quiet_ort_logger(captured: list[str]) -> Iterator[None]:
    """Keep ONNX Runtime's C++ log lines (written to fd 2) off the terminal; collect them.

    Around the provider probes: its default logger prints red ``[E:onnxruntime:...] Failed
    to load library ...libonnxruntime_providers_cuda.so`` lines when the CUDA libraries are
    missing. The severity is raised to ERROR (warnings dropped) and file descriptor 2 is
    redirected to a temporary file whose text is appended to ``captured``.
    """
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
    except Exception:  # not importable, or an old build: nothing to quiet
        ort = None
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (embedded interpreters): only the severity applies
        saved = -1
    with tempfile.TemporaryFile() as tmp:
        if saved >= 0:
            os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            if saved >= 0:
                os.dup2(saved, 2)
                os.close(saved)
            if ort is not None:
                with contextlib.suppress(Exception):
                    ort.set_default_logger_severity(2)  # ONNX Runtime's default (WARNING)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", errors="replace"))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _clean_log(text: str) -> str | None:
    text = _ANSI.sub("", text).strip()
    return text or None


def _load_failure(log: str | None, provider: str) -> str | None:
    """The shared library ONNX Runtime could not load for ``provider``, from its log."""
    if not log:
        return None
    stem = {
        "CUDAExecutionProvider": "cuda",
        "TensorrtExecutionProvider": "tensorrt",
        "ROCMExecutionProvider": "rocm",
        "MIGraphXExecutionProvider": "migraphx",
    }.get(provider)
    for line in log.splitlines():
        m = re.search(r"providers_(\w+)\.\w+ with error: (.+)$", line)
        if m and (stem is None or m.group(1) == stem):
            error = m.group(2).strip()
            missing = re.match(r"(\S+): cannot open shared object file", error)
            return f"{missing.group(1)} not found" if missing else error
    return None


def _ort_info() -> Any:
    OrtInfo = _models().OrtInfo
    dists = _lazy("ort_distributions")()
    try:
        import onnxruntime as ort

        providers = [str(p) for p in ort.get_available_providers()]
    except Exception as exc:  # broken install: e.g. one of two distributions uninstalled
        return OrtInfo(
            importable=False,
            distributions=dists,
            conflicting_distributions=len(dists) > 1,
            error=f"{type(exc).__name__}: {exc}",
        )
    buf = io.StringIO()
    debug: str | None = None
    captured: list[str] = []
    with _quiet_ort_logger(captured):
        checks = _lazy("check_providers")(providers)
    probe_log = _clean_log("".join(captured))
    if probe_log:
        from ..logging import get_logger

        get_logger("hardenkit.cli").debug("doctor.ort_probe_log", output=probe_log)
    if hasattr(ort, "print_debug_info"):
        try:
            with contextlib.redirect_stdout(buf):
                ort.print_debug_info()
            debug = buf.getvalue().replace("\x1b[33m", "").replace("\x1b[0m", "").strip()
        except Exception as exc:
            debug = f"print_debug_info failed: {exc}"
    return OrtInfo(
        importable=True,
        version=str(ort.__version__),
        cuda_build=getattr(ort, "cuda_version", None) or None,
        device=str(ort.get_device()),
        distributions=dists,
        conflicting_distributions=len(dists) > 1,
        available_providers=providers,
        provider_checks=checks,
        debug_info=debug,
        probe_log=probe_log,
    )


def _not_usable_here(check: Any, oinfo: Any, gpu: bool) -> str | None:
    """The info line for a GPU provider that cannot run on this host (no GPU/libraries)."""
    if check.active or check.provider not in GPU_PROVIDERS:
        return None
    reason = _load_failure(oinfo.probe_log, check.provider)
    if gpu and reason is None:
        return None  # torch sees a GPU, ONNX Runtime loaded its libraries: a real problem
    ran_on = check.active_providers[0] if check.active_providers else "nothing"
    why = []
    if not gpu:
        why.append("torch sees no CUDA GPU")
    if reason:
        why.append(f"ONNX Runtime cannot load its libraries: {reason}")
    cuda = f"CUDA {oinfo.cuda_build} and cuDNN" if oinfo.cuda_build else "GPU"
    return (
        f"{check.provider} is not usable here ({'; '.join(why)}); sessions that ask for it "
        f"run on {ran_on}. Expected on a CPU-only host; on a GPU host, install the {cuda} "
        "libraries this ONNX Runtime build needs"
    )


def collect(required: list[str] | None = None) -> Any:
    """Build the doctor report (no side effects besides creating tiny sessions)."""
    tinfo = _torch_info()
    oinfo = _ort_info()
    issues: list[str] = []
    notes: list[str] = []
    names = [d.name for d in oinfo.distributions]
    if oinfo.conflicting_distributions:
        both = "onnxruntime" in names and "onnxruntime-gpu" in names
        issues.append(
            f"several ONNX Runtime distributions are installed together ({', '.join(names)})"
            + (
                ": onnxruntime and onnxruntime-gpu share one directory, the last installed wins"
                if both
                else ""
            )
            + "; pip uninstall all of them, then install exactly one"
        )
    if not oinfo.importable:
        issues.append(f"onnxruntime cannot be used: {oinfo.error}")
    for check in oinfo.provider_checks:
        note = _not_usable_here(check, oinfo, tinfo.cuda_available)
        if note is not None:
            notes.append(note)
        elif not check.active:
            ran_on = check.active_providers[0] if check.active_providers else "nothing"
            issues.append(
                f"{check.provider} is listed by this build but a session on it runs on "
                f"{ran_on}: {(check.error or '').split('. ')[0]}"
            )
    if (
        tinfo.cuda_available
        and oinfo.importable
        and "CUDAExecutionProvider" not in oinfo.available_providers
    ):
        issues.append("torch sees a GPU but this ONNX Runtime build has no CUDA provider")
    active = {c.provider for c in oinfo.provider_checks if c.active}
    missing = [p for p in required or [] if p not in active]
    for p in missing:
        issues.append(f"required provider {p} does not run here")
    package_version = _lazy("package_version")
    return _models().DoctorReport(
        torch=tinfo,
        onnx=package_version("onnx"),
        onnxscript=package_version("onnxscript"),
        onnxruntime=oinfo,
        issues=issues,
        notes=notes,
        required_providers=list(required or []),
        ok=not missing and oinfo.importable,
    )


def _text(rep: Any) -> str:
    t = rep.torch
    o = rep.onnxruntime
    lines = [
        f"hardenkit   {rep.hardenkit_version} (python {rep.environment.python})",
        f"torch       {t.version} (CUDA build {t.cuda_build or 'none'}; "
        f"cuda available: {t.cuda_available}"
        + (f"; {', '.join(t.devices)}; cuDNN {t.cudnn}" if t.devices else "")
        + ")",
        f"onnx        {rep.onnx or 'not installed'}; "
        f"onnxscript {rep.onnxscript or 'not installed'}",
        "onnxruntime "
        + (
            f"{o.version} (device {o.device}; CUDA build {o.cuda_build or 'none'})"
            if o.importable
            else f"NOT USABLE: {o.error}"
        ),
        "  distributions: "
        + (", ".join(f"{d.name}=={d.version}" for d in o.distributions) or "none")
        + ("  <-- CONFLICT" if o.conflicting_distributions else ""),
        f"  available providers: {', '.join(o.available_providers) or 'none'}",
    ]
    unusable = {n.split(" ", 1)[0] for n in rep.notes if " is not usable here" in n}
    for c in o.provider_checks:
        if c.active:
            status = "runs"
        elif c.provider in unusable:
            status = "not usable here (see info below)"
        else:
            status = "DOES NOT RUN"
        line = f"    {c.provider:<28} {status}"
        if not c.active and c.error and c.provider not in unusable:
            line += f" ({c.error.split('. ')[0]})"
        lines.append(line)
    lines += [f"info: {n}" for n in rep.notes]
    lines.append("issues:" if rep.issues else "issues: none")
    lines += [f"  - {i}" for i in rep.issues]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect(list(args.require))
    if args.format == "json":
        print(report.to_json())
    else:
        print(_text(report))
    if args.report is not None and not (str(args.report) == "-" and args.format == "json"):
        write_report(report, args.report)
    if not report.ok:
        print("hardenkit: doctor found a required provider that does not run", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK

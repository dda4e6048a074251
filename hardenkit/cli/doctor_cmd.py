"""``hardenkit doctor``: what this environment can really run (torch, CUDA, ONNX Runtime).

``onnxruntime.get_available_providers()`` lists what the installed build *contains*, not what
will load: a CUDA session can silently run on the CPU. The doctor creates a tiny session on
every listed provider and reports whether it really ran there, and flags the broken setup of
several ONNX Runtime distributions installed side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .._utils.environment import package_version
from ..export.runtime import OrtDistribution, ProviderCheck, check_providers, ort_distributions
from ..reports import BaseReport
from ._common import EXIT_OK, EXIT_RUNTIME


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
    error: str | None = None


class DoctorReport(BaseReport):
    """The environment report of ``hardenkit doctor``."""

    report_type: Literal["doctor"] = "doctor"
    torch: TorchInfo
    onnx: str | None
    onnxscript: str | None
    onnxruntime: OrtInfo
    issues: list[str]
    required_providers: list[str] = Field(default_factory=list)
    ok: bool


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
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
    p.set_defaults(func=run)


def _torch_info() -> TorchInfo:
    avail = torch.cuda.is_available()
    count = torch.cuda.device_count() if avail else 0
    return TorchInfo(
        version=torch.__version__,
        cuda_build=torch.version.cuda,
        cuda_available=avail,
        device_count=count,
        devices=[torch.cuda.get_device_name(i) for i in range(count)],
        cudnn=torch.backends.cudnn.version() if avail else None,  # type: ignore[no-untyped-call]
    )


def _ort_info() -> OrtInfo:
    dists = ort_distributions()
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
        provider_checks=check_providers(providers),
        debug_info=debug,
    )


def collect(required: list[str] | None = None) -> DoctorReport:
    """Build the doctor report (no side effects besides creating tiny sessions)."""
    tinfo = _torch_info()
    oinfo = _ort_info()
    issues: list[str] = []
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
        if not check.active:
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
    return DoctorReport(
        torch=tinfo,
        onnx=package_version("onnx"),
        onnxscript=package_version("onnxscript"),
        onnxruntime=oinfo,
        issues=issues,
        required_providers=list(required or []),
        ok=not missing and oinfo.importable,
    )


def _text(rep: DoctorReport) -> str:
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
    for c in o.provider_checks:
        status = "runs" if c.active else "DOES NOT RUN"
        line = f"    {c.provider:<28} {status}"
        if not c.active and c.error:
            line += f" ({c.error.split('. ')[0]})"
        lines.append(line)
    lines.append("issues:" if rep.issues else "issues: none")
    lines += [f"  - {i}" for i in rep.issues]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect(list(args.require))
    if args.format == "json":
        print(report.to_json())
    else:
        print(_text(report))
    if not report.ok:
        print("hardenkit: doctor found a required provider that does not run", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK

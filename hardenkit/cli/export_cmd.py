"""``hardenkit export``: export a model file to ONNX and optionally verify it on ONNX Runtime."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, ParityError
from ._common import (
    EXIT_OK,
    add_command,
    add_image_size_arg,
    add_model_args,
    add_report_arg,
    input_shape,
    lazy_attr,
    load_data_for,
    load_model_from_args,
    load_trigger_arg,
    model_input_shape,
    parse_kv,
    parse_target,
    positive_int,
    quiet_exporter,
    resolve_model_args,
    write_report,
)

# torch, pydantic and the exporter are imported on first use: `--help` must stay fast

_LAZY = {
    "ExportReport": ".export",
    "VerificationReport": ".export",
    "to_onnx": ".export",
    "verify_onnx": ".export",
}


def __getattr__(name: str) -> Any:
    if name == "ExportRunReport":
        return _export_run_report()
    return lazy_attr(globals(), name, _LAZY)


@functools.cache
def _export_run_report() -> Any:
    """The ``ExportRunReport`` model (defined on first use: pydantic and torch are slow)."""
    from ..export import ExportReport, VerificationReport
    from ..reports import BaseReport

    class ExportRunReport(BaseReport):
        """What ``hardenkit export`` wrote (and, with ``--verify``, how the file verified)."""

        report_type: Literal["export_run"] = "export_run"
        export: ExportReport
        verification: VerificationReport | None = None
        passed: bool

    ExportRunReport.__qualname__ = "ExportRunReport"
    ExportRunReport.__module__ = __name__
    return ExportRunReport


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "export",
        help="export a model to ONNX (and verify it on ONNX Runtime)",
        description="Export a model file to ONNX with the torch.export-based exporter "
        "(dynamic batch axis, normalization inside the graph, float32 NCHW pixels in [0, 1]), "
        "check it, and with --verify compare ONNX Runtime against PyTorch on held-out data. "
        "Exit 0 = ok, 1 = the verification ran and failed (parity), 2 = usage/input error, "
        "3 = export error or execution-provider (environment) error.",
    )
    add_model_args(p)
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        required=True,
        metavar="PATH",
        help="the destination .onnx file (the primary output; a .data sidecar goes next to it)",
    )
    p.add_argument(
        "--input-shape",
        type=input_shape,
        default=None,
        help="C,H,W of one image: three positive integers separated by commas (default: the "
        "--data images' shape with --verify, else 3,32,32 or 1,32,32 - whichever the model "
        "runs on; H,W from --image-size when given)",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 to 23")
    p.add_argument(
        "--no-dynamic-batch",
        action="store_true",
        help="export a static batch (of --batch-size-static) instead of a dynamic 'batch' axis",
    )
    p.add_argument(
        "--batch-size-static",
        type=positive_int,
        default=1,
        help="batch of a --no-dynamic-batch export",
    )
    p.add_argument(
        "--external-data",
        choices=["auto", "always", "never"],
        default="auto",
        help="weights in a .data sidecar: auto (only above 1.5 GiB), always, never",
    )
    p.add_argument(
        "--metadata", default="", help="extra ONNX metadata_props as key=value,key=value"
    )
    p.add_argument("--report-id", help="id of the purification report this model came from")
    p.add_argument(
        "--verify", action="store_true", help="verify the export on ONNX Runtime against PyTorch"
    )
    p.add_argument("--data", help="held-out data for --verify (directory, .tar.gz, 'synthetic')")
    p.add_argument("--split", default="test", help="split folder inside --data")
    add_image_size_arg(p)
    p.add_argument("--trigger", help="trigger .safetensors or attack spec (ASR on both backends)")
    p.add_argument("--target", help="target label of the trigger, or 'all-to-all'")
    p.add_argument(
        "--providers",
        help="ONNX Runtime providers in priority order, comma-separated "
        "(default: CUDA first when usable, else CPUExecutionProvider)",
    )
    p.add_argument(
        "--profile",
        choices=["fp32-cpu", "fp32-cuda", "fp16"],
        help="tolerance profile (default: from the provider)",
    )
    p.add_argument("--max-batches", type=positive_int, help="verify on at most this many batches")
    p.add_argument("--batch-size", type=positive_int, default=256, help="verification batch size")
    add_report_arg(p, "export_run report (export + verification)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.trigger is None) != (args.target is None):
        raise ConfigError("--trigger and --target go together.", hint="pass both or neither")
    if args.verify and args.data is None:
        raise ConfigError("--verify needs --data.", hint="e.g. --data synthetic or a directory")
    if not args.verify and (args.data or args.trigger or args.providers):
        raise ConfigError(
            "--data/--trigger/--target/--providers only apply with --verify.",
            hint="add --verify",
        )
    meta = {k: str(v) for k, v in parse_kv(args.metadata, "--metadata").items()}
    resolve_model_args(args)  # --num-classes may come from the weights file
    target = parse_target(args.target, args.num_classes)
    model = load_model_from_args(args)
    data = None
    if args.verify:  # loaded first: its images give the input shape
        data = load_data_for(model, args.data, split=args.split, image_size=args.image_size)
    shape = (
        data.image_shape
        if data is not None and args.input_shape is None
        else model_input_shape(model, args.input_shape, image_size=args.image_size)
    )
    to_onnx_ = lazy_attr(globals(), "to_onnx", _LAZY)
    verify_onnx_ = lazy_attr(globals(), "verify_onnx", _LAZY)
    with quiet_exporter("export.onnx_export"):
        export = to_onnx_(
            model,
            args.output,
            input_shape=shape,
            opset=args.opset,
            dynamic_batch=not args.no_dynamic_batch,
            external_data=args.external_data,
            metadata=meta,
            report_id=args.report_id,
            example_batch_size=args.batch_size_static if args.no_dynamic_batch else None,
        )
    print(export.summary(), file=sys.stderr)
    verification = None
    if data is not None:
        trigger = None
        if args.trigger is not None:
            c, h, _ = data.image_shape
            trigger = load_trigger_arg(args.trigger, image_size=h, channels=c)
        verification = verify_onnx_(
            export,
            model,
            data.loader(batch_size=args.batch_size),
            trigger=trigger,
            target=target,
            providers=args.providers,
            profile=args.profile,
            max_batches=args.max_batches,
        )
        print(verification.summary(), file=sys.stderr)
    passed = verification is None or verification.passed
    report = _export_run_report()(export=export, verification=verification, passed=passed)
    write_report(report, args.report)
    if verification is not None and not verification.passed:
        raise ParityError(
            "the exported model failed verification: "
            + ", ".join(c.name for c in verification.failed_checks),
            hint="see the report for values and thresholds",
        )
    return EXIT_OK

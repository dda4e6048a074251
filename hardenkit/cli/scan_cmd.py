"""``hardenkit scan``: is this model backdoored, and which label is the target?"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ._common import (
    EXIT_GATE_FAILED,
    EXIT_OK,
    add_command,
    add_deprecated_alias,
    add_image_size_arg,
    add_model_args,
    add_report_arg,
    input_shape,
    load_data_arg,
    load_model_from_args,
    load_policy_file,
    nonnegative_int,
    parse_kv,
    positive_int,
    resolve_model_args,
    write_report,
)

if TYPE_CHECKING:  # torch and the scanners are imported in run(): `--help` stays fast
    from ..scan import ScanConfig


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "scan",
        help="detect a backdoor (Neural Cleanse, data-free MM-BD) and recover its trigger",
        description="Scan a model for a backdoor: per-class trigger inversion (Neural Cleanse, "
        "batched over classes) and/or the data-free max-margin test (MM-BD). Exit 0 = not "
        "flagged, 1 = flagged (verdict at or above --fail-on), 2 = usage/input error, "
        "3 = runtime or environment error (e.g. --device cuda without CUDA).",
    )
    add_model_args(p)
    p.add_argument(
        "--data",
        help="clean images: ImageFolder directory, .tar.gz archive (ImageFolder layout) "
        "or 'synthetic'; omit with --data-free",
    )
    p.add_argument("--split", default="train", help="split folder inside --data")
    add_image_size_arg(p)
    p.add_argument(
        "--data-free",
        action="store_true",
        help="scan without clean images (runs the mm-bd detector unless --detectors is given)",
    )
    p.add_argument(
        "--input-shape",
        type=input_shape,
        default=(3, 32, 32),
        help="C,H,W of the model input for --data-free: three positive integers separated by "
        "commas",
    )
    p.add_argument(
        "--detectors",
        help="comma-separated detectors, e.g. neural-cleanse,mm-bd; default: neural-cleanse "
        "(mm-bd with --data-free)",
    )
    p.add_argument("--combine", choices=["any", "all", "mean"], help="how verdicts combine")
    p.add_argument("--max-images", type=positive_int, help="clean images used for inversion")
    p.add_argument(
        "--epochs", type=positive_int, help="neural-cleanse: maximum epochs per label (>= 1)"
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="DETECTOR:K=V,...",
        help="detector option, e.g. 'neural-cleanse:batch_size=64,lr=0.1' (repeatable)",
    )
    p.add_argument("--config", type=Path, help="ScanConfig file (JSON or YAML)")
    p.add_argument(
        "--fail-on",
        choices=["backdoored", "suspicious"],
        default="backdoored",
        help="lowest verdict that exits 1",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of subsampling and random starts"
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write report.json, triggers and PNGs here"
    )
    add_report_arg(p, "ScanReport")
    add_deprecated_alias(p, "--output", "-o", new="--report", dest="report", type=Path)
    p.set_defaults(func=run)


def scan_config_from_args(args: argparse.Namespace) -> ScanConfig:
    """Merge ``--config`` with the command-line overrides into one :class:`ScanConfig`."""
    from ..scan import ScanConfig

    fields: dict[str, Any] = load_policy_file(args.config, "scan config") if args.config else {}
    if args.detectors:
        fields["detectors"] = [d.strip() for d in args.detectors.split(",") if d.strip()]
    elif args.data_free and "detectors" not in fields:
        fields["detectors"] = ["mm-bd"]
    if args.combine:
        fields["combine"] = args.combine
    if args.max_images is not None:
        fields["max_images"] = args.max_images
    options: dict[str, dict[str, Any]] = {
        k: dict(v) for k, v in dict(fields.get("detector_options") or {}).items()
    }
    if args.epochs is not None:
        options.setdefault("neural-cleanse", {})["epochs"] = args.epochs
    for spec in args.option:
        name, sep, rest = spec.partition(":")
        if not sep or not name:
            raise ConfigError(
                f"--option must look like DETECTOR:key=value, got {spec!r}.",
                hint="e.g. --option neural-cleanse:batch_size=64",
            )
        options.setdefault(name.strip(), {}).update(parse_kv(rest, "--option"))
    if options:
        detectors = fields.get("detectors") or list(ScanConfig().detectors)
        fields["detector_options"] = {k: v for k, v in options.items() if k in detectors}
        dropped = sorted(set(options) - set(detectors))
        if dropped and args.epochs is None:
            raise ConfigError(f"options given for {dropped}, which are not in --detectors.")
    return ScanConfig(**fields)


def run(args: argparse.Namespace) -> int:
    if args.data_free and args.data:
        raise ConfigError("--data-free and --data exclude each other.")
    if not args.data_free and not args.data:
        raise ConfigError(
            "--data is required (clean images), unless --data-free.",
            hint="e.g. --data clean_images/ or --data-free",
        )
    from ..config import RuntimeConfig
    from ..scan import Scanner

    resolve_model_args(args)
    cfg = scan_config_from_args(args)
    rt = RuntimeConfig(device=args.device, seed=args.seed)
    model = load_model_from_args(args)
    scanner = Scanner(
        model,
        args.num_classes,
        config=cfg,
        runtime=rt,
        input_shape=args.input_shape,
    )
    if args.data_free:
        result = scanner.run()
    else:
        data = load_data_arg(args.data, split=args.split, image_size=args.image_size)
        result = scanner.run(data.loader(batch_size=512))
    print(result.report.summary(), file=sys.stderr)
    if args.out is not None:
        result.save(args.out)
        print(f"wrote {args.out}/", file=sys.stderr)
    write_report(result.report, args.report)
    failing = {"backdoored"} if args.fail_on == "backdoored" else {"backdoored", "suspicious"}
    return EXIT_GATE_FAILED if result.verdict in failing else EXIT_OK

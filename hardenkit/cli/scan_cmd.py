"""``hardenkit scan``: is this model backdoored, and which label is the target?"""

from __future__ import annotations

import argparse
import os
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
    load_data_for,
    load_model_from_args,
    load_policy_file,
    model_input_shape,
    nonnegative_int,
    parse_kv,
    positive_int,
    resolve_model_args,
    write_report,
)

if TYPE_CHECKING:  # torch and the scanners are imported in run(): `--help` stays fast
    from ..scan import ScanConfig

DEFAULT_DETECTORS_TEXT = "neural-cleanse,warp,prediction-share,signal"
"""``hardenkit.scan.budget.DEFAULT_DETECTORS`` for ``--help`` without importing torch (a test
keeps the two equal)."""


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
        default=None,
        help="C,H,W of the model input for --data-free: three positive integers separated by "
        "commas (default: 3,32,32 or 1,32,32, whichever the model runs on; H,W from "
        "--image-size when given)",
    )
    p.add_argument(
        "--detectors",
        help="comma-separated detectors, e.g. neural-cleanse,mm-bd; default: "
        f"{DEFAULT_DETECTORS_TEXT} (mm-bd with --data-free)",
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
    p.add_argument(
        "--budget",
        default="quick",
        metavar="quick|standard|thorough|SECONDS",
        help="how much the scan may cost: a preset (quick: 200 images x 15 epochs per label; "
        "standard: 300 x 30; "
        "thorough: the published 1,000 x 80; each runs the default detectors unless "
        "--detectors says otherwise) or a number of seconds "
        "(standard, stopped when the time is up: a cut-short scan that flags nothing exits 1). "
        "--config, --max-images and --epochs win over the preset",
    )
    p.add_argument("--config", type=Path, help="ScanConfig file (JSON or YAML)")
    p.add_argument(
        "--fail-on",
        choices=["backdoored", "suspicious"],
        default="backdoored",
        help="lowest verdict that exits 1",
    )
    p.add_argument(
        "--skip-chance-check",
        action="store_true",
        help="do not judge whether the model beats chance on the clean images (by "
        "default a model at chance on them makes the verdict not conclusive: exit 1)",
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
    if getattr(args, "skip_chance_check", False):
        fields["require_above_chance"] = False
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
        from ..scan.budget import DEFAULT_DETECTORS

        detectors = fields.get("detectors") or list(DEFAULT_DETECTORS)
        fields["detector_options"] = {k: v for k, v in options.items() if k in detectors}
        dropped = sorted(set(options) - set(detectors))
        if dropped and args.epochs is None:
            raise ConfigError(f"options given for {dropped}, which are not in --detectors.")
    from ..scan import scan_config_for_budget

    return scan_config_for_budget(getattr(args, "budget", "thorough"), ScanConfig(**fields))


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
    rt.resolve_device()  # an unusable --device fails here (exit 3), before the estimate
    model = load_model_from_args(args)
    if args.data_free:
        args.input_shape = model_input_shape(model, args.input_shape, image_size=args.image_size)
    scanner = Scanner(
        model,
        args.num_classes,
        config=cfg,
        runtime=rt,
        input_shape=args.input_shape,
    )
    data = None
    if not args.data_free:
        data = load_data_for(model, args.data, split=args.split, image_size=args.image_size)
    if os.environ.get("RANK", "0") == "0":  # one estimate per job under torchrun
        _say_estimate(args, cfg, model, rt, data)
    result = scanner.run() if data is None else scanner.run(data.loader(batch_size=512))
    main = result.rank == 0  # under torchrun rank 0 writes the files and prints
    if main:
        print(result.report.summary(), file=sys.stderr)
        if args.out is not None:
            result.save(args.out)
            print(f"wrote {args.out}/", file=sys.stderr)
        write_report(result.report, args.report)
    failing = {"backdoored"} if args.fail_on == "backdoored" else {"backdoored", "suspicious"}
    if result.verdict in failing:
        return EXIT_GATE_FAILED
    if not result.report.conclusive:
        if not main:
            return EXIT_GATE_FAILED
        if result.report.at_chance:
            print(
                f"hardenkit: the model is no better than chance on --data; verdict "
                f"{result.verdict!r} is not conclusive (exit {EXIT_GATE_FAILED}): check the "
                "class order, pixel range and normalisation with hardenkit validate, or pass "
                "--skip-chance-check if a model this inaccurate is expected",
                file=sys.stderr,
            )
            return EXIT_GATE_FAILED
        print(
            f"hardenkit: the --budget {args.budget} time limit cut the scan short; verdict "
            f"{result.verdict!r} is not conclusive (exit {EXIT_GATE_FAILED}): give it more time "
            "or a preset",
            file=sys.stderr,
        )
        return EXIT_GATE_FAILED
    return EXIT_OK


def _say_estimate(
    args: argparse.Namespace, cfg: ScanConfig, model: Any, rt: Any, data: Any
) -> None:
    """Print, before any work, roughly how long the scan may take (an upper estimate)."""
    shape = tuple(args.input_shape) if data is None else tuple(data.image_shape)
    est = scan_estimate(
        model, cfg, rt, shape, None if data is None else len(data), args.num_classes
    )
    if isinstance(est, str):
        print(f"scan: no time estimate ({est})", file=sys.stderr)
        return
    nc = cfg.detector_options.get("neural-cleanse", {})
    what = ", ".join(cfg.detectors) + (
        f"; {cfg.max_images or 'all'} images x {nc.get('epochs', 80)} epochs per label"
        if "neural-cleanse" in cfg.detectors
        else ""
    )
    cap = "" if cfg.max_seconds is None else f", capped at {cfg.max_seconds:.0f}s"
    print(
        f"scan: budget {args.budget} ({what}{cap}); estimated at most ~{human_seconds(est[0])} "
        f"on {est[1]} (early stopping usually ends sooner)",
        file=sys.stderr,
        flush=True,
    )


def scan_estimate(
    model: Any,
    cfg: ScanConfig,
    rt: Any,
    shape: tuple[int, ...],
    clean_images: int | None,
    num_classes: int | None,
) -> tuple[float, str] | str:
    """``(upper estimate in seconds, device type)`` of one scan of ``model`` with ``cfg``
    (:func:`hardenkit.scan.estimate_scan_seconds`: the fastest of five timed passes, so it can
    come out short on cores shared with other jobs), or the name of the error
    that stopped the estimate: an estimate never stops the work itself."""
    from ..scan import estimate_scan_seconds
    from ..training import infer_num_classes

    try:
        device = rt.resolve_device()
        import torch

        k = num_classes or infer_num_classes(model, torch.zeros(2, *shape))
        est = estimate_scan_seconds(
            model,
            cfg,
            num_classes=k,
            input_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            clean_images=clean_images,
            device=device,
        )
    except Exception as exc:  # an estimate must never stop the scan itself
        return type(exc).__name__
    return est, str(device.type)


def human_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f} min"

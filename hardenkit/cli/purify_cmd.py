"""``hardenkit purify``: repair a model with a strategy and write the repaired copy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, HardenkitError, ParityError
from ._common import (
    EXIT_GATE_FAILED,
    EXIT_OK,
    add_command,
    add_image_size_arg,
    add_model_args,
    add_report_arg,
    add_settings_arg,
    fraction,
    holdout_fraction,
    load_data_for,
    load_model_from_args,
    load_policy_file,
    model_metadata_from_args,
    nonnegative_int,
    parse_kv,
    quiet_exporter,
    resolve_model_args,
    write_report,
)

DEFAULT_STRATEGY = "auto"
"""``--strategy`` default; equals ``hardenkit.purify.DEFAULT_STRATEGY`` (a test checks), kept
here so that ``hardenkit purify --help`` does not import torch."""


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "purify",
        help="remove a backdoor with a purification strategy (mcl, finetune, nc-unlearn, ...)",
        description="Repair a copy of a model with clean images and a purification strategy; "
        "write the repaired weights, the report and (optionally) a verified ONNX export. "
        "Exit 0 = a trusted result (purified, or nothing to purify), 1 = an untrusted status "
        "(degraded, backdoor-remains, budget-exhausted, unverified, refused; model and report "
        "are still written) or a failed --onnx verification, 2 = usage/input error, 3 = runtime or "
        "environment error (including a failed ONNX export, a missing ONNX Runtime provider "
        "or NaN results).",
    )
    add_model_args(p)
    p.add_argument(
        "--data",
        required=True,
        help="clean images: ImageFolder directory, .tar.gz archive (ImageFolder layout) "
        "or 'synthetic'",
    )
    p.add_argument("--split", default="train", help="split folder inside --data")
    add_image_size_arg(p)
    p.add_argument(
        "--strategy",
        default=DEFAULT_STRATEGY,
        help="purification strategy; `hardenkit strategies` lists them",
    )
    add_settings_arg(p, "strategy config values, e.g. 'epochs=10,ce_weight=1.0'")
    p.add_argument("--config", type=Path, help="strategy config file (JSON or YAML)")
    p.add_argument(
        "--scan",
        type=Path,
        help="directory written by `hardenkit scan --out` (default: the Purifier scans first "
        "when the strategy uses one: auto, mcl, nc-unlearn)",
    )
    p.add_argument(
        "--scan-budget",
        default="quick",
        metavar="quick|standard|thorough|SECONDS",
        help="the scan the Purifier runs first when no --scan is given (as `hardenkit scan "
        "--budget`; default quick: Neural Cleanse, the warp inversion, the prediction share "
        "and the signal inversion on 200 images)",
    )
    p.add_argument(
        "--holdout-fraction",
        type=holdout_fraction,
        default=0.1,
        help="share of the clean images held out for the before/after measurements, in "
        "[0, 1); 0 purifies on every image and does not measure BA",
    )
    p.add_argument(
        "--max-ba-drop",
        type=fraction,
        default=None,
        help="utility guard: the largest benign-accuracy loss (fraction, e.g. 0.05) that still "
        "counts as purified; more gives status 'degraded' and exit 1 (default: the strategy "
        "config's max_ba_drop, 0.05)",
    )
    p.add_argument(
        "--max-trigger-asr",
        type=fraction,
        default=0.10,
        help="trigger guard: the most the trigger the repair was aimed at (the most anomalous "
        "flagged label's, from the scan or --scan) may still add to the held-out images' share "
        "on its label after the repair (fraction, default 0.10, "
        "the gate's max_asr); more gives status 'backdoor-remains' and exit 1; 1 turns it off",
    )
    p.add_argument(
        "--no-recheck",
        action="store_true",
        help="do not scan the repaired model again (by default a label the trigger guard judges "
        "that a scan of the repaired model still flags gives 'backdoor-remains' and exit 1; "
        "skipped with --scan, whose images are not known)",
    )
    p.add_argument(
        "--skip-chance-check",
        action="store_true",
        help="repair even when the model is no better than chance on the clean "
        "images (by default that is refused, exit 1: the images or labels do not fit the model)",
    )
    p.add_argument("--onnx", action="store_true", help="also export model.onnx and verify it")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of the holdout split, the scan, batch order and augmentation",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output directory: model.safetensors (with its architecture in the metadata), "
        "report.json, scan/, rescan/ (the recheck's scan), model.onnx",
    )
    add_report_arg(p, "PurificationReport (also written to DIR/report.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import RuntimeConfig
    from ..io import save_state_dict
    from ..purify import Purifier
    from ..scan import ScanResult

    resolve_model_args(args)
    fields: dict[str, Any] = load_policy_file(args.config, "strategy config") if args.config else {}
    fields.update(parse_kv(args.settings, "--set"))
    rt = RuntimeConfig(device=args.device, seed=args.seed)
    rt.resolve_device()  # an unusable --device fails here (exit 3), before the estimate
    purifier = Purifier(
        load_model_from_args(args),
        args.strategy,
        config=fields or None,
        runtime=rt,
        holdout_fraction=args.holdout_fraction,
        scan_budget=args.scan_budget,
        max_ba_drop=args.max_ba_drop,
        require_above_chance=not args.skip_chance_check,
        max_trigger_asr=args.max_trigger_asr,
        recheck=not args.no_recheck,
    )
    scan = None
    if args.scan is not None:
        if not args.scan.is_dir():
            raise ConfigError(
                f"--scan {str(args.scan)!r} is not a directory.",
                hint="pass the --out directory of `hardenkit scan`",
            )
        try:
            scan = ScanResult.load(args.scan)
        except (ValueError, TypeError, KeyError) as exc:  # a corrupt directory, not a bug
            if isinstance(exc, HardenkitError):
                raise
            raise ConfigError(
                f"--scan {str(args.scan)!r} is not a valid scan directory: "
                f"{type(exc).__name__}: {exc}",
                hint="pass the --out directory of `hardenkit scan`, unmodified",
            ) from exc
    data = load_data_for(purifier.model, args.data, split=args.split, image_size=args.image_size)
    c, h, w = data.image_shape
    est = purifier.estimate(len(data), (c, h, w), scan_given=scan is not None)
    print(
        f"purify: strategy {purifier.strategy.name} on {len(data):,} clean images; "
        f"{describe_estimate(est)} (progress below)",
        file=sys.stderr,
        flush=True,
    )
    result = purifier.run(data.loader(batch_size=512), scan=scan)
    if result.rank != 0:  # under torchrun rank 0 writes the files and prints
        return EXIT_OK if result.trusted else EXIT_GATE_FAILED
    print(result.report.summary(), file=sys.stderr)
    out: Path = args.out
    result.save(out)
    # record the architecture, so `validate`/`export --weights DIR/model.safetensors` need
    # no --arch/--num-classes (PurificationResult.save does not know them)
    save_state_dict(
        result.model, out / "model.safetensors", metadata=model_metadata_from_args(args)
    )
    write_report(result.report, args.report)
    print(f"wrote {out}/model.safetensors and {out}/report.json", file=sys.stderr)
    if args.onnx:
        from ..export import verify_onnx

        with quiet_exporter("purify.onnx_export"):
            exp = result.export_onnx(out / "model.onnx")
        ver = verify_onnx(exp, result.model, data.loader(batch_size=512))
        ver.save(out / "onnx_verification.json")
        print(
            f"exported {exp.path}; verification {'PASSED' if ver.passed else 'FAILED'} on "
            f"{ver.providers_active[0]}",
            file=sys.stderr,
        )
        if not ver.passed:
            raise ParityError(
                "the exported model failed verification: "
                + ", ".join(c.name for c in ver.failed_checks),
                hint=f"see {out / 'onnx_verification.json'} for values and thresholds",
            )
    if not result.trusted:
        # fail closed: the model and report are written, but a pipeline must not read this
        # run as a successful repair (degraded / backdoor-remains / budget-exhausted /
        # unverified / refused)
        print(
            f"hardenkit: purification status {result.status!r} is not a trusted repair "
            f"(see the notes in {out}/report.json); exit {EXIT_GATE_FAILED}",
            file=sys.stderr,
        )
        return EXIT_GATE_FAILED
    return EXIT_OK


def describe_estimate(est: Any) -> str:
    """One line of a :class:`hardenkit.purify.PurifyEstimate`: the total range, then the parts.

    >>> from hardenkit.purify import PurifyEstimate
    >>> describe_estimate(PurifyEstimate(2025, 60.0, (70.0, 190.0), 60.0, "cpu"))
    'estimated about 3.2-5.2 min in all on cpu for 2,025 repair images: a scan at most ~60s, \
the repair ~70s-3.2 min, the recheck (one more scan) at most ~60s; scans usually end sooner'
    """
    from .scan_cmd import human_seconds

    parts = []
    if est.scan is not None:
        parts.append(f"a scan at most ~{human_seconds(est.scan)}")
    if est.repair is not None:
        lo, hi = est.repair
        parts.append(f"the repair ~{human_seconds(lo)}-{human_seconds(hi)}")
    if est.recheck is not None:
        parts.append(f"the recheck (one more scan) at most ~{human_seconds(est.recheck)}")
    total = est.total
    head = (
        f"no time estimate in all ({'; '.join(est.unknown)})"
        if total is None
        else f"estimated about {_span(total)} in all on {est.device}"
    )
    tail = "; scans usually end sooner" if est.scan is not None else ""
    body = ", ".join(parts) if parts else "nothing to estimate"
    return f"{head} for {est.repair_images:,} repair images: {body}{tail}"


def _span(seconds: tuple[float, float]) -> str:
    from .scan_cmd import human_seconds

    lo, hi = (human_seconds(v) for v in seconds)
    if lo.endswith(" min") and hi.endswith(" min"):
        return f"{lo.removesuffix(' min')}-{hi}"
    return f"{lo}-{hi}"

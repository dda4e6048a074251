"""``hardenkit train``: train a clean model from an untrusted (possibly poisoned) dataset."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ._common import (
    EXIT_GATE_FAILED,
    EXIT_OK,
    add_command,
    add_image_size_arg,
    add_report_arg,
    add_settings_arg,
    class_count,
    load_data_arg,
    load_policy_file,
    load_trigger_arg,
    nonnegative_int,
    parse_kv,
    parse_target,
    write_report,
)

DEFAULT_STRATEGY = "dlp"
"""``--strategy`` default; equals ``hardenkit.robust.DEFAULT_TRAINER`` (a test checks), kept
here so that ``hardenkit train --help`` does not import torch."""


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "train",
        help="train a clean model from an untrusted dataset (dlp, abl, plain)",
        description="Train a model from scratch on an untrusted, possibly poisoned training set "
        "with a robust-training strategy (dlp: supervised -> active unlearning -> active "
        "semi-supervised fine-tuning; abl: anti-backdoor learning; plain: no defence); write "
        "the weights, the report and the suspected-poison indices. Exit 0 = status trained, "
        "1 = an untrusted status (isolation-doubtful: the isolated set does not look like "
        "poison; backdoor-remains: the given trigger still controls the model; "
        "budget-exhausted; model and report are still written), 2 = usage/input "
        "error, 3 = runtime or environment error (including NaN losses).",
    )
    p.add_argument(
        "--data",
        required=True,
        help="the untrusted training images: ImageFolder directory, .tar.gz archive "
        "(ImageFolder layout) or 'synthetic[:k=v,...]'",
    )
    p.add_argument("--split", default="train", help="split folder inside --data")
    p.add_argument(
        "--test-data",
        help="clean held-out images for BA (and ASR with --trigger/--target): same forms as "
        "--data; default: none (BA is not measured)",
    )
    p.add_argument("--test-split", default="test", help="split folder inside --test-data")
    add_image_size_arg(p)
    p.add_argument(
        "--arch",
        default="small-cnn",
        help="zoo name (see `hardenkit models`) or 'package.module:factory'",
    )
    p.add_argument(
        "--num-classes",
        type=class_count,
        metavar="K",
        help="number of classes, >= 2; default: the number of classes of --data",
    )
    p.add_argument(
        "--arch-args", default="", metavar="K=V,...", help="architecture arguments, e.g. 'width=32'"
    )
    p.add_argument(
        "--strategy",
        default=DEFAULT_STRATEGY,
        help="robust-training strategy: dlp, abl, plain (or a plugin)",
    )
    add_settings_arg(p, "strategy config values, e.g. 'sl_epochs=3,isolation_ratio=0.15'")
    p.add_argument("--config", type=Path, help="strategy config file (JSON or YAML)")
    p.add_argument(
        "--poison-indices",
        type=Path,
        metavar="FILE",
        help="the true poison indices (.npy or .json list) of --data, only to report isolation "
        "precision/recall",
    )
    p.add_argument(
        "--trigger",
        help="trigger .safetensors file, or attack spec such as 'badnets:patch_size=3' "
        "(with --target and --test-data: ASR is measured)",
    )
    p.add_argument("--target", help="target label of the trigger (all-to-one)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of the initial weights, batch order and augmentation",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="output directory: model.safetensors (with its architecture in the metadata), "
        "report.json, suspected.json",
    )
    add_report_arg(p, "TrainingReport (also written to DIR/report.json)")
    p.set_defaults(func=run)


def _load_indices(path: Path) -> list[int]:
    if not path.is_file():
        raise DataError(f"--poison-indices {str(path)!r} does not exist.")
    try:
        if path.suffix == ".npy":
            import numpy as np

            arr = np.load(path, allow_pickle=False)
            values = arr.reshape(-1).tolist()
        else:
            values = json.loads(path.read_text())
            if isinstance(values, dict):
                values = values.get("poison_indices", values.get("indices"))
    except (ValueError, OSError) as exc:
        raise DataError(
            f"--poison-indices {str(path)!r} could not be read: {exc}",
            hint="pass a .npy array or a JSON list of integer indices",
        ) from exc
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise DataError(
            f"--poison-indices {str(path)!r} must hold a list of integer indices.",
            hint="e.g. [12, 57, 301] (JSON) or an integer .npy array",
        )
    return [int(v) for v in values]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..config import RuntimeConfig
    from ..io import model_metadata, save_state_dict
    from ..models import build_model
    from ..robust import RobustTrainer

    if (args.trigger is None) != (args.target is None):
        raise ConfigError("--trigger and --target go together.", hint="pass both or neither")
    fields: dict[str, Any] = load_policy_file(args.config, "strategy config") if args.config else {}
    fields.update(parse_kv(args.settings, "--set"))
    poison = _load_indices(args.poison_indices) if args.poison_indices is not None else None
    data = load_data_arg(args.data, split=args.split, image_size=args.image_size)
    k = args.num_classes or data.num_classes
    target = parse_target(args.target, k)
    if isinstance(target, dict):
        raise ConfigError("hardenkit train measures all-to-one ASR only: pass --target N.")
    test = None
    if args.test_data is not None:
        test = load_data_arg(args.test_data, split=args.test_split, image_size=args.image_size)
    trigger = None
    if args.trigger is not None:
        c, h, _ = data.image_shape
        trigger = load_trigger_arg(args.trigger, image_size=h, channels=c)
    arch_kwargs = parse_kv(args.arch_args, "--arch-args")
    torch.manual_seed(args.seed)
    model = build_model(args.arch, k, **arch_kwargs)
    rt = RuntimeConfig(device=args.device, seed=args.seed)
    trainer = RobustTrainer(model, args.strategy, config=fields or None, runtime=rt)
    if os.environ.get("RANK", "0") == "0":  # one line per job under torchrun
        estimate = trainer.estimate_seconds(len(data), data.image_shape)
        print(
            f"hardenkit: training {args.arch} with {trainer.strategy.name} on {len(data)} "
            f"images ({k} classes); rough estimate {_duration(estimate)} on "
            f"{rt.resolve_device()}",
            file=sys.stderr,
        )
    result = trainer.fit(data, test=test, trigger=trigger, target=target, poison_indices=poison)
    if result.rank != 0:  # under torchrun rank 0 writes the files and prints
        return EXIT_OK if result.trusted else EXIT_GATE_FAILED
    print(result.report.summary(), file=sys.stderr)
    out: Path = args.out
    result.save(out)
    save_state_dict(
        result.model, out / "model.safetensors", metadata=model_metadata(args.arch, k, arch_kwargs)
    )
    write_report(result.report, args.report)
    print(
        f"wrote {out}/model.safetensors, {out}/report.json and {out}/suspected.json",
        file=sys.stderr,
    )
    if not result.trusted:
        print(
            f"hardenkit: training status {result.status!r} is not a trusted result (see the "
            f"warnings in {out}/report.json); exit {EXIT_GATE_FAILED}",
            file=sys.stderr,
        )
        return EXIT_GATE_FAILED
    return EXIT_OK


def _duration(seconds: float) -> str:
    s = max(1, round(seconds))
    if s < 60:
        return f"~{s}s"
    if s < 3600:
        return f"~{s // 60}m{s % 60:02d}s"
    return f"~{s // 3600}h{(s % 3600) // 60:02d}m"

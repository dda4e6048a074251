"""Shared CLI plumbing: exit codes, error mapping, data/trigger/model argument parsing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import ImageDataset, load_image_archive, load_image_folder, make_synthetic_dataset
from ..errors import ConfigError, DataError, HardenkitError
from ..triggers import Trigger

if TYPE_CHECKING:
    from torch import nn

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3
EXIT_INTERNAL = 70


def run_command(fn: Callable[[], int]) -> int:
    """Run a command body and map exceptions to documented exit codes."""
    try:
        return fn()
    except HardenkitError as exc:
        print(f"hardenkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"hardenkit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, MemoryError, OSError) as exc:
        print(f"hardenkit: runtime error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("hardenkit: interrupted", file=sys.stderr)
        return 130


def parse_kv(text: str) -> dict[str, Any]:
    """``"a=1,b=x,c=0.5"`` → ``{"a": 1, "b": "x", "c": 0.5}`` (JSON scalars where they parse)."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for part in text.split(","):
        if "=" not in part:
            raise ConfigError(f"expected key=value in {text!r}, got {part!r}.")
        k, v = part.split("=", 1)
        k = k.strip().replace("-", "_")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v.strip()
    return out


def parse_target(value: str | None, num_classes: int) -> int | dict[int, int] | None:
    """``"3"`` → 3; ``"all-to-all"`` → ``{y: (y + 1) % K}``; None stays None."""
    if value is None:
        return None
    if value.strip().lower() in {"all-to-all", "all2all"}:
        return {c: (c + 1) % num_classes for c in range(num_classes)}
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(
            f"--target must be a class index or 'all-to-all', got {value!r}."
        ) from exc


def load_trigger_arg(spec: str, *, image_size: int, channels: int) -> Trigger:
    """A trigger from a ``.safetensors`` file or an attack spec like ``badnets:patch_size=4``."""
    path = Path(spec)
    if path.suffix == ".safetensors":
        return Trigger.load(path)
    from ..attacks import build_attack

    name, _, rest = spec.partition(":")
    cfg = {"image_size": image_size, "channels": channels, **parse_kv(rest)}
    return build_attack(name, cfg).trigger


def load_data_arg(spec: str, *, split: str) -> ImageDataset:
    """Dataset from ``synthetic[:k=v,...]``, a ``.tar.gz`` archive, or a directory."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        if split not in {"train", "test"}:
            raise ConfigError(f"synthetic data has splits 'train' and 'test', not {split!r}.")
        kv = parse_kv(spec.partition(":")[2])
        try:
            splits = make_synthetic_dataset(**kv)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, HardenkitError):
                raise
            raise ConfigError(
                f"invalid synthetic data spec {spec!r}: {exc}",
                hint="e.g. synthetic:num_classes=4,train_per_class=100,test_per_class=20",
            ) from exc
        return splits.test if split == "test" else splits.train
    path = Path(spec)
    if not path.exists():
        raise DataError(
            f"data path {spec!r} does not exist.",
            hint="pass an ImageFolder directory, a .tar.gz archive, or 'synthetic'",
        )
    if path.is_file():
        return load_image_archive(path, splits=(split,))[split]
    if (path / split).is_dir():
        return load_image_folder(path / split)
    return load_image_folder(path)


def load_policy_file(path: Path, what: str = "policy") -> dict[str, Any]:
    """Read a mapping (a gate policy, a scan config, ...) from JSON or YAML."""
    text = path.read_text()
    if path.suffix in {".yaml", ".yml"}:
        try:
            import yaml
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"YAML {what} files need PyYAML.", hint='pip install "hardenkit[cli]"'
            ) from exc
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{what} file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {str(path)!r} must hold a mapping of {what} fields.")
    return data


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model arguments shared by commands that load a model file."""
    p.add_argument("--weights", type=Path, required=True, help=".safetensors or state-dict .pt")
    p.add_argument(
        "--arch",
        required=True,
        help="zoo name (see `hardenkit models`) or 'package.module:factory'",
    )
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--arch-args", default="", help="extra architecture arguments, e.g. 'width=32'")


def load_model_from_args(args: argparse.Namespace) -> nn.Module:
    """Build the architecture from ``--arch``/``--arch-args`` and load ``--weights`` safely."""
    from ..io import load_model_weights
    from ..models import build_model

    model = build_model(args.arch, args.num_classes, **parse_kv(args.arch_args))
    load_model_weights(model, args.weights)
    return model.eval()

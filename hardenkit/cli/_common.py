"""Shared CLI plumbing: exit codes, error mapping, argument types, data/trigger/model parsing.

Every user error leaves the CLI as one line ``hardenkit: error: ...`` and exit code 2 (usage,
config or input) or 3 (runtime or environment); never as a traceback.

Example:
    >>> positive_int("8")
    8
    >>> input_shape(" 3, 32,32 ")
    (3, 32, 32)
    >>> holdout_fraction("0")
    0.0
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import ConfigError, DataError, ExportError, HardenkitError

if TYPE_CHECKING:  # imported where used: `hardenkit --help` must not import torch
    from torch import Tensor, nn

    from ..data import ImageDataset
    from ..triggers import Trigger

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

MAX_EXPORT_MESSAGE = 300
"""Characters of an exporter failure printed on the console (the rest goes to the debug log)."""
MAX_MESSAGE = 1000
"""Characters of any other error message printed on the console."""
DEBUG_LOG_NOTE = "see the debug log (--log-level DEBUG) for the full exporter output"


def _log() -> Any:
    from ..logging import get_logger

    return get_logger("hardenkit.cli")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every default: ``(default: X)`` after each option that has one.

    Options without a default (``None``, off switches, empty lists and strings) get no
    ``(default: ...)`` suffix, and neither do help texts that already mention their default.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default == ""
            or default == []
            or default is argparse.SUPPRESS
            or "%(default)" in help_text
            or "(default" in help_text
        ):
            return action.help
        if isinstance(default, tuple | list):  # --input-shape (3, 32, 32) -> 3,32,32
            sep = " " if isinstance(action.nargs, int) or action.nargs in {"+", "*"} else ","
            shown = sep.join(str(v) for v in default).replace("%", "%%")
            return f"{help_text} (default: {shown})"
        return super()._get_help_string(action)


class CliParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``hardenkit: error: ...`` (exit 2).

    Its help uses :class:`HelpFormatter` (every default shown) unless told otherwise.
    Subparsers created with ``add_subparsers().add_parser`` inherit the class, and so the
    formatter.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"hardenkit: error: {message} (see `{self.prog} --help`)\n")


def add_command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """``sub.add_parser(name, ...)`` with :class:`HelpFormatter` (every default in ``--help``)."""
    kwargs.setdefault("formatter_class", HelpFormatter)
    parser: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    return parser


class _DeprecatedAlias(argparse.Action):
    """An old option spelling: stores into the new option's ``dest`` and warns once on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.new = kwargs.pop("new")
        self.store_const = kwargs.pop("store_const", None)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"hardenkit: warning: {option_string} is deprecated, use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, self.store_const if self.nargs == 0 else values)


def add_deprecated_alias(
    p: argparse.ArgumentParser, *old: str, new: str, dest: str, **kwargs: Any
) -> None:
    """Accept ``old`` spellings of ``new`` (same ``dest``; hidden from ``--help``).

    Using one prints ``hardenkit: warning: --x is deprecated, use --y`` on stderr. ``kwargs``
    (``type``, ``metavar``, ``nargs``...) should match the new option's.
    """
    p.add_argument(
        *old,
        dest=dest,
        action=_DeprecatedAlias,
        new=new,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
        **kwargs,
    )


def add_report_arg(
    p: argparse.ArgumentParser, what: str, *, deprecated: Sequence[str] = ()
) -> None:
    """``--report PATH``: write the command's JSON report to a file (``-`` = stdout)."""
    p.add_argument(
        "--report", type=Path, metavar="PATH", help=f"write the {what} JSON here ('-' = stdout)"
    )
    if deprecated:
        add_deprecated_alias(p, *deprecated, new="--report", dest="report", type=Path)


def write_report(report: Any, path: Path | None) -> None:
    """Write a report to ``--report PATH`` (stdout for ``-``; nothing for None)."""
    if path is None:
        return
    if str(path) == "-":
        print(report.to_json())
    else:
        report.save(path)
        print(f"wrote {path}", file=sys.stderr)


def lazy_attr(namespace: dict[str, Any], name: str, spec: Mapping[str, str]) -> Any:
    """A module-level name imported on first use (PEP 562 helper for the command modules).

    ``spec`` maps a name to ``"package.module"`` (relative to ``hardenkit``) or
    ``"package.module:attr"``. The value is cached in ``namespace`` (the module's globals),
    so ``monkeypatch.setattr(module, name, ...)`` keeps working.
    """
    if name in namespace:
        return namespace[name]
    if name not in spec:
        raise AttributeError(f"module {namespace.get('__name__')!r} has no attribute {name!r}")
    module, _, attr = spec[name].partition(":")
    mod = importlib.import_module(module, "hardenkit")
    value = getattr(mod, attr or name)
    namespace[name] = value
    return value


def _clip(text: str, limit: int) -> tuple[str, bool]:
    """The first non-empty line of ``text``, at most ``limit`` characters; True if shortened."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    cut = len(lines) > 1
    if len(first) > limit:
        first, cut = first[: limit - 3].rstrip() + "...", True
    return first, cut


def format_error(exc: HardenkitError) -> list[str]:
    """The console lines of an error: one line, plus a pointer to the debug log if shortened.

    Multi-line messages keep their first line; an exporter failure (an ``ExportError`` raised
    from a third-party exception) is cut to :data:`MAX_EXPORT_MESSAGE` characters. The full
    text is logged at DEBUG by :func:`run_command`.
    """
    exporter = isinstance(exc, ExportError) and exc.__cause__ is not None
    limit = MAX_EXPORT_MESSAGE if exporter else MAX_MESSAGE
    message, cut = _clip(exc.message, limit)
    line = f"hardenkit: error: {message or type(exc).__name__}"
    if exc.hint:
        hint, hint_cut = _clip(exc.hint, limit)
        cut = cut or hint_cut
        line += f" Fix: {hint}"
    if not cut:
        return [line]
    note = DEBUG_LOG_NOTE if exporter else DEBUG_LOG_NOTE.replace("exporter output", "message")
    return [line, f"hardenkit: {note}"]


def run_command(fn: Callable[[], int]) -> int:
    """Run a command body and map exceptions to documented exit codes.

    ``HardenkitError`` → its ``exit_code`` (``ParityError``, a verification that ran and
    failed, → 1); missing, unreadable or unwritable paths (and a file where a directory
    goes) → 2; other ``RuntimeError``/``OSError``/
    ``MemoryError`` → 3; ``KeyboardInterrupt`` → 130. Anything else propagates (the caller
    reports an internal error, 70).
    """
    try:
        return fn()
    except HardenkitError as exc:
        _log().debug(
            "cli.error",
            error=type(exc).__name__,
            detail=str(exc),
            traceback="".join(traceback.format_exception(exc)),
        )
        for line in format_error(exc):
            print(line, file=sys.stderr)
        return exc.exit_code
    except (
        FileNotFoundError,
        FileExistsError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    ) as exc:  # a path the user gave: missing, unwritable, or a file where a directory goes
        print(f"hardenkit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UnicodeDecodeError as exc:
        print(f"hardenkit: error: a file is not valid UTF-8 text: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, MemoryError, OSError) as exc:
        _log().debug("cli.error", error=type(exc).__name__, traceback=traceback.format_exc())
        text, _ = _clip(str(exc), MAX_MESSAGE)
        print(f"hardenkit: runtime error: {type(exc).__name__}: {text}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print("hardenkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextlib.contextmanager
def quiet_exporter(what: str = "onnx_export") -> Iterator[None]:
    """Keep the exporter's console output (traced graphs, torch warnings) off the terminal.

    ``torch.onnx.export``/``torch.export`` print graph dumps on stdout/stderr and log through
    their own stream handlers; inside this block both go to a buffer that is logged at DEBUG
    (event ``cli.exporter_output``) when the block ends, whether it failed or not.
    """
    buf = io.StringIO()
    handlers: dict[int, logging.StreamHandler[Any]] = {}
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.split(".")[0] in {
            "torch",
            "onnxscript",
            "onnx_ir",
        }:
            for h in logger.handlers:
                if type(h) is logging.StreamHandler:
                    handlers[id(h)] = h
    old = {key: h.setStream(buf) for key, h in handlers.items()}
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    finally:
        for key, h in handlers.items():
            stream = old[key]
            if stream is not None:
                h.setStream(stream)
        text = buf.getvalue().strip()
        if text:
            _log().debug("cli.exporter_output", step=what, output=text)


# ----------------------------------------------------------------------------- argument types


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (>= 1), got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds)."""
    value = _int(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def class_count(text: str) -> int:
    """argparse type: a number of classes, an integer >= 2."""
    value = _int(text, "a number of classes (an integer >= 2)")
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected a number of classes >= 2, got {text!r}")
    return value


def _float(text: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a finite fraction in [0, 1] (0.9 = 90%)."""
    value = _float(text, "a fraction in [0, 1] such as 0.9")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a fraction in [0, 1] such as 0.9 (for 90%), got {text!r}"
        )
    return value


def holdout_fraction(text: str) -> float:
    """argparse type: a holdout fraction in [0, 1); 0 holds nothing out (BA is not measured)."""
    value = _float(text, "a fraction in [0, 1) such as 0.1")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a fraction in [0, 1) such as 0.1 (0 = hold nothing out), got {text!r}"
        )
    return value


def input_shape(text: str) -> tuple[int, int, int]:
    """argparse type: ``C,H,W`` of one image, three positive integers (e.g. ``3,32,32``)."""
    parts = text.split(",")
    try:
        dims = [int(p.strip()) for p in parts]
    except ValueError:
        dims = []
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"expected C,H,W as three positive integers separated by commas, such as "
            f"3,32,32, got {text!r}"
        )
    return dims[0], dims[1], dims[2]


_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


class JoinSettings(argparse.Action):
    """``--set`` given more than once adds to the earlier values (``--set epochs=1 --set
    lr=0.001`` = ``--set epochs=1,lr=0.001``) instead of replacing them, as argparse's default
    ``store`` would: a later ``--set`` silently dropped the earlier settings before stop 54."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        before = getattr(namespace, self.dest, "") or ""
        setattr(namespace, self.dest, f"{before},{values}" if before.strip() else str(values))


def add_settings_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--set K=V,...`` (``args.settings``; repeatable, the values add up): a strategy's
    config values, read by :func:`parse_kv` (``hardenkit purify``, ``train`` and ``demo``)."""
    p.add_argument(
        "--set",
        dest="settings",
        default="",
        action=JoinSettings,
        metavar="K=V,...",
        help=help_text + " (repeatable: the values add up)",
    )


def parse_kv(text: str, what: str = "key=value list") -> dict[str, Any]:
    """``"a=1,b=x,c=0.5"`` → ``{"a": 1, "b": "x", "c": 0.5}`` (JSON scalars where they parse).

    Raises :class:`~hardenkit.errors.ConfigError` (exit 2) for a part without ``=``, an empty
    key, or a NaN/infinite number, naming ``what`` (e.g. ``"--arch-args"``).

    Example:
        >>> parse_kv("width=32,name=x,on=true")
        {'width': 32, 'name': 'x', 'on': True}
        >>> parse_kv("lr=nan", "--set")
        Traceback (most recent call last):
        ...
        hardenkit.errors.ConfigError: --set: lr=nan is not a finite number. ...
    """
    out: dict[str, Any] = {}
    if not text.strip():
        return out
    example = "e.g. 'width=32' or 'epochs=10,lr=0.01'"
    for part in text.split(","):
        if "=" not in part:
            raise ConfigError(
                f"{what}: expected key=value in {text!r}, got {part!r}.", hint=example
            )
        k, v = part.split("=", 1)
        k = k.strip().replace("-", "_")
        if not k:
            raise ConfigError(f"{what}: empty key in {part!r}.", hint=example)
        if v.strip().lower() in _NON_FINITE:
            raise ConfigError(
                f"{what}: {part.strip()} is not a finite number.", hint="pass a finite value"
            )
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v.strip()
    return out


def parse_target(value: str | None, num_classes: int) -> int | dict[int, int] | None:
    """``"3"`` → 3; ``"all-to-all"`` → ``{y: (y + 1) % K}``; None stays None.

    A label outside ``0..num_classes-1`` is a :class:`~hardenkit.errors.ConfigError` (exit 2).
    """
    if value is None:
        return None
    if value.strip().lower() in {"all-to-all", "all2all"}:
        return {c: (c + 1) % num_classes for c in range(num_classes)}
    try:
        target = int(value)
    except ValueError as exc:
        raise ConfigError(
            f"--target must be a class index or 'all-to-all', got {value!r}."
        ) from exc
    if not 0 <= target < num_classes:
        raise ConfigError(
            f"--target {target} is not a class of a {num_classes}-class model "
            f"(expected 0..{num_classes - 1}).",
            hint="pass the target label of the trigger, or check --num-classes",
        )
    return target


def load_trigger_arg(spec: str, *, image_size: int, channels: int) -> Trigger:
    """A trigger from a file (``.safetensors``, or any existing file) or an attack spec.

    Attack specs look like ``badnets:patch_size=4``.
    """
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists():
        from ..triggers import Trigger

        return Trigger.load(path)
    from ..attacks import build_attack

    name, _, rest = spec.partition(":")
    cfg = {"image_size": image_size, "channels": channels, **parse_kv(rest, "--trigger")}
    return build_attack(name, cfg).trigger


def add_image_size_arg(p: argparse.ArgumentParser) -> None:
    """``--image-size H W``: resize the images of ``--data`` on load."""
    p.add_argument(
        "--image-size",
        nargs=2,
        type=positive_int,
        metavar=("H", "W"),
        help="resize every image of --data to H x W pixels on load (needed when the images "
        "have different sizes); default: keep the files' size",
    )


def load_data_arg(
    spec: str, *, split: str, image_size: Sequence[int] | None = None
) -> ImageDataset:
    """Dataset from ``synthetic[:k=v,...]``, a ``.tar.gz`` archive, or a directory.

    ``image_size`` (``--image-size H W``) resizes the images of a folder or an archive on
    load; for synthetic data it sets the spec's ``image_size`` (square sizes only).
    """
    from ..data import load_image_archive, load_image_folder, make_synthetic_dataset

    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    if spec == "synthetic" or spec.startswith("synthetic:"):
        if split not in {"train", "test"}:
            raise ConfigError(f"synthetic data has splits 'train' and 'test', not {split!r}.")
        kv = parse_kv(spec.partition(":")[2])
        if size is not None and "image_size" not in kv:
            if size[0] != size[1]:
                raise ConfigError(
                    f"synthetic images are square, got --image-size {size[0]} {size[1]}.",
                    hint="pass --image-size N N, or synthetic:image_size=N",
                )
            kv["image_size"] = size[0]
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
    try:
        if path.is_file():
            return load_image_archive(path, splits=(split,), image_size=size)[split]
        if (path / split).is_dir():
            return load_image_folder(path / split, image_size=size)
        return load_image_folder(path, image_size=size)
    except DataError as exc:
        if exc.hint and "image_size=" in exc.hint:  # the loader's Python-API hint
            raise DataError(
                exc.message, hint="pass --image-size H W to resize them on load"
            ) from exc
        raise


def _takes(model: nn.Module, images: Tensor) -> str | None:
    """``None`` when ``model`` runs on ``images`` (float pixels), else torch's message."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    except RuntimeError as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    finally:
        model.train(was_training)
    return None


def to_luma(images: Tensor) -> Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) grayscale, as PIL's ``convert("L")`` (ITU-R 601-2
    luma; uint8 images get PIL's integer rounding, so a grayscale file read as RGB comes back
    to its own pixel values)."""
    import torch

    if images.dtype == torch.uint8:
        r, g, b = (images[:, i : i + 1].to(torch.int64) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def match_channels(model: nn.Module, data: ImageDataset, flag: str = "--data") -> ImageDataset:
    """The images of ``flag`` as ``model`` takes them.

    Image files are read as RGB. A model whose first layer takes **one** channel (a grayscale
    model) gets them as grayscale instead (:func:`to_luma`, what reading the files in PIL's
    ``L`` mode gives), with a line on stderr; a model that takes neither gets a
    :class:`~hardenkit.errors.ModelCompatibilityError` naming the image shape, instead of a
    torch error from deep inside the first command that runs it.
    """
    from ..data import ImageDataset

    if len(data) == 0:
        return data
    first = data.pixels()[:2] if len(data) >= 2 else data.pixels()
    error = _takes(model, first)
    if error is None:
        return data
    c, h, w = data.image_shape
    if c == 3:
        gray = ImageDataset(to_luma(data.images), data.labels, data.classes)
        if _takes(model, gray.pixels()[: len(first)]) is None:
            say(
                f"{flag}: the model takes 1-channel images: read as grayscale (luma of the "
                f"{c}x{h}x{w} RGB files)"
            )
            return gray
    elif c == 1:
        rgb = ImageDataset(
            data.images.expand(-1, 3, -1, -1).contiguous(), data.labels, data.classes
        )
        if _takes(model, rgb.pixels()[: len(first)]) is None:
            say(f"{flag}: the model takes 3-channel images: the gray channel repeated")
            return rgb
    from ..errors import ModelCompatibilityError

    raise ModelCompatibilityError(
        f"the model does not run on the {flag} images ({c}x{h}x{w}, also tried as "
        f"{'1' if c == 3 else '3'} channel(s)): {error}",
        hint="check --arch / --arch-args (input channels, image size) against the images, or "
        "pass --image-size H W to resize them",
    )


def load_data_for(
    model: nn.Module,
    spec: str,
    *,
    split: str,
    image_size: Sequence[int] | None = None,
    flag: str = "--data",
) -> ImageDataset:
    """:func:`load_data_arg`, then :func:`match_channels`: the images of ``flag`` as ``model``
    takes them (grayscale for a 1-channel model)."""
    return match_channels(model, load_data_arg(spec, split=split, image_size=image_size), flag)


def say(message: str) -> None:
    """``message`` on stderr, once per job: under ``torchrun`` only rank 0 (``RANK``) says it."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def model_input_shape(
    model: nn.Module,
    given: Sequence[int] | None,
    *,
    image_size: Sequence[int] | None = None,
    flag: str = "--input-shape",
) -> tuple[int, int, int]:
    """The (C, H, W) of one input of ``model`` for a command that has no images to go by.

    ``given`` (the user's ``--input-shape``) wins. Otherwise the model is run on one zero
    image of H x W (``image_size``, default 32 x 32) with 3 channels, then with 1: the first
    it runs on is used and said on stderr; neither is a
    :class:`~hardenkit.errors.ModelCompatibilityError` asking for ``flag``.
    """
    import torch

    if given is not None:
        c, h, w = (int(v) for v in given)
        return c, h, w
    h, w = (int(v) for v in image_size) if image_size is not None else (32, 32)
    errors: list[str] = []
    for c in (3, 1):
        error = _takes(model, torch.zeros(1, c, h, w))
        if error is None:
            say(
                f"{flag} not given: using {c},{h},{w} (the model runs on {c}-channel "
                f"{h}x{w} images; pass {flag} C,H,W to choose)"
            )
            return c, h, w
        errors.append(f"{c}x{h}x{w}: {error}")
    from ..errors import ModelCompatibilityError

    raise ModelCompatibilityError(
        f"could not tell the model's input shape: it runs on neither "
        f"{' nor '.join(e.split(':')[0] for e in errors)} images ({errors[0]})",
        hint=f"pass {flag} C,H,W (e.g. {flag} 3,64,64)",
    )


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file the user named, or a one-line ``ConfigError`` (exit 2)."""
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {name!r} does not exist.", hint="check the path") from None
    except IsADirectoryError:
        raise ConfigError(
            f"{what} file {name!r} is a directory.", hint=f"pass a JSON or YAML {what} file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what} file {name!r} cannot be read: {exc.strerror or exc}.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} file {name!r} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start} cannot be decoded.",
            hint=f"save the {what} file as UTF-8 JSON or YAML",
        ) from None


def _reject_non_finite(value: Any, where: str, file: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(
            f"{file}: {where or 'the value'} is {value}, not a finite number.",
            hint="pass a finite value",
        )
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(v, f"{where}.{k}" if where else str(k), file)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_non_finite(v, f"{where}[{i}]", file)


def _load_yaml(text: str, name: str, what: str) -> Any:
    try:
        import yaml
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"YAML {what} files need PyYAML.", hint='pip install "hardenkit[cli]"'
        ) from exc

    class StrictLoader(yaml.SafeLoader):
        """``SafeLoader`` that refuses duplicate keys (the last one would silently win)."""

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        loader.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            with contextlib.suppress(TypeError):  # unhashable keys: pydantic rejects them
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or _clip(str(exc), MAX_MESSAGE)[0]
        raise ConfigError(
            f"{what} file {name!r} is not valid YAML{where}: {problem}.",
            hint=f"fix the YAML syntax of the {what} file (a mapping of {what} fields)",
        ) from None


def _no_constant(token: str) -> float:
    raise ValueError(f"{token} is not a finite number")


def load_policy_file(path: Path, what: str = "policy") -> dict[str, Any]:
    """Read a mapping (a gate policy, a scan config, ...) from JSON or YAML.

    Every problem is a one-line :class:`~hardenkit.errors.ConfigError` (exit 2) naming the
    file: missing or unreadable, not UTF-8, a JSON/YAML syntax error (with line and column),
    a duplicate key, a NaN or infinite number, or a document that is not a mapping.
    """
    name = str(path)
    text = _read_text(path, what)
    if path.suffix.lower() in {".yaml", ".yml"}:
        data = _load_yaml(text, name, what)
    else:

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for k, v in items:
                if k in out:
                    raise ValueError(f"duplicate key {k!r}")
                out[k] = v
            return out

        try:
            data = json.loads(text, object_pairs_hook=pairs, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{what} file {name!r} is not valid JSON at line {exc.lineno}, column "
                f"{exc.colno}: {exc.msg}.",
                hint=f"fix the JSON syntax (a .yaml/.yml {what} file is read as YAML)",
            ) from None
        except ValueError as exc:
            raise ConfigError(f"{what} file {name!r} is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            f"{what} file {name!r} must hold a mapping of {what} fields, got {got}.",
            hint='e.g. {"max_asr": 0.05}' if what == "policy" else None,
        )
    _reject_non_finite(data, "", f"{what} file {name!r}")
    if any(not isinstance(k, str) for k in data):
        raise ConfigError(f"{what} file {name!r} has a key that is not a string.")
    return data


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model arguments shared by commands that load a model file.

    ``--arch``, ``--num-classes`` and ``--arch-args`` default to what the weights file
    records (``hardenkit.*`` safetensors metadata, see :func:`hardenkit.io.model_metadata`);
    explicit flags win. See :func:`resolve_model_args`.
    """
    p.add_argument(
        "--weights",
        type=Path,
        required=True,
        metavar="PATH",
        help=".safetensors or state-dict .pt",
    )
    p.add_argument(
        "--arch",
        help="zoo name (see `hardenkit models`) or 'package.module:factory'; default: the "
        "architecture recorded in the weights file (files written by hardenkit record it)",
    )
    p.add_argument(
        "--num-classes",
        type=class_count,
        metavar="K",
        help=f"number of classes, >= 2; default: recorded in the weights file, else "
        f"{DEFAULT_NUM_CLASSES}",
    )
    p.add_argument(
        "--arch-args",
        default="",
        metavar="K=V,...",
        help="extra architecture arguments, e.g. 'width=32'; default: recorded in the weights "
        "file (with its architecture)",
    )


DEFAULT_NUM_CLASSES = 10
"""``--num-classes`` when neither the flag nor the weights file's metadata gives it."""


def resolve_model_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill ``args.arch``, ``args.num_classes`` and ``args.arch_kwargs`` (explicit flags win).

    Missing values come from the weights file's ``hardenkit.arch``/``hardenkit.num_classes``/
    ``hardenkit.arch_args`` metadata; recorded ``arch_args`` apply only to the recorded
    architecture. Without ``--arch`` and without a recorded one: ``ConfigError`` (exit 2).
    Idempotent (a second call changes nothing).
    """
    if getattr(args, "_model_args_resolved", False):
        return args
    from ..io import META_ARCH, META_ARCH_ARGS, META_NUM_CLASSES, read_model_metadata

    meta = read_model_metadata(args.weights)
    recorded_arch = meta.get(META_ARCH) or meta.get("arch")  # "arch": hardenkit <= 0.1 demo
    if args.arch is None:
        if not recorded_arch:
            raise ConfigError(
                f"--arch is required: the weights file {str(args.weights)!r} does not record "
                "its architecture.",
                hint="pass --arch (e.g. --arch small-cnn; `hardenkit models` lists the zoo) and "
                "--num-classes; files saved by hardenkit (purify, demo, "
                "save_state_dict(metadata=model_metadata(...))) record both",
            )
        args.arch = recorded_arch
        args.arch_from_metadata = True
    if args.num_classes is None:
        recorded = meta.get(META_NUM_CLASSES)
        try:
            args.num_classes = class_count(recorded) if recorded else DEFAULT_NUM_CLASSES
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(
                f"the weights file {str(args.weights)!r} records an invalid number of classes: "
                f"{exc}.",
                hint="pass --num-classes",
            ) from None
    kwargs = parse_kv(args.arch_args, "--arch-args")
    if not args.arch_args and recorded_arch == args.arch and meta.get(META_ARCH_ARGS):
        try:
            recorded_kwargs = json.loads(meta[META_ARCH_ARGS])
        except json.JSONDecodeError:
            recorded_kwargs = None
        if not isinstance(recorded_kwargs, dict):
            raise ConfigError(
                f"the weights file {str(args.weights)!r} records invalid architecture "
                f"arguments {meta[META_ARCH_ARGS]!r}.",
                hint="pass --arch-args (an empty string for none)",
            )
        kwargs = recorded_kwargs
    args.arch_kwargs = kwargs
    args._model_args_resolved = True
    return args


def load_model_from_args(args: argparse.Namespace) -> nn.Module:
    """Build the architecture from ``--arch``/``--arch-args`` and load ``--weights`` safely."""
    from ..io import load_model_weights
    from ..models import build_model

    resolve_model_args(args)
    try:
        model = build_model(args.arch, args.num_classes, **args.arch_kwargs)
    except HardenkitError as exc:
        if not getattr(args, "arch_from_metadata", False):
            raise
        raise ConfigError(
            f"cannot build the architecture {args.arch!r} recorded in the weights file: "
            f"{exc.message}",
            hint="pass --arch (and --arch-args) to override it",
        ) from exc
    load_model_weights(model, args.weights)
    return model.eval()


def model_metadata_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The ``hardenkit.*`` safetensors metadata of the model the command loaded."""
    from ..io import model_metadata

    resolve_model_args(args)
    return model_metadata(args.arch, args.num_classes, args.arch_kwargs)

"""Safe loading and saving of model weights.

Weights travel as ``.safetensors`` (preferred) or as ``.pt``/``.pth`` files read with
``torch.load(weights_only=True)`` only. A file that needs arbitrary code execution to load
(a pickled module, custom classes) is refused with
:class:`~hardenkit.errors.UnsafeArtifactError` naming the unsafe globals; hardenkit never
retries with ``weights_only=False``. Architectures come from code, never from a pickle.

Example:
    >>> import tempfile, torch
    >>> from hardenkit.io import load_state_dict, save_state_dict
    >>> m = torch.nn.Linear(2, 2)
    >>> path = save_state_dict(m, tempfile.mkdtemp() + "/m.safetensors")
    >>> sorted(load_state_dict(path))
    ['bias', 'weight']
"""

from __future__ import annotations

import hashlib
import json
import pickletools
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ._utils.model_checks import unwrap_model
from .errors import DataError, ModelCompatibilityError, UnsafeArtifactError

__all__ = [
    "file_sha256",
    "load_model_weights",
    "load_state_dict",
    "model_metadata",
    "read_model_metadata",
    "save_state_dict",
    "scan_pickle_globals",
]

_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
# Key prefixes left by wrappers: torch.compile (``_orig_mod.``), DataParallel/DDP (``module.``).
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (streamed)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_state_dict(
    obj: nn.Module | Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a module's (or a mapping's) tensors to ``path`` as safetensors.

    Shared storage is de-duplicated by cloning, non-contiguous tensors are made contiguous.
    The keys are always those of the plain module: a ``torch.compile``d, ``DataParallel`` or
    DDP model is unwrapped first, and a mapping whose keys *all* start with a wrapper prefix
    (``_orig_mod.``, ``module.``, also nested such as ``module._orig_mod.``) has it stripped,
    so the file loads into a fresh eager architecture.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DataError(
            f"Weights are saved as safetensors only, got path {str(path)!r}.",
            hint="use a file name ending in .safetensors",
        )
    if isinstance(obj, nn.Module):
        sd = dict(unwrap_model(obj).state_dict())
    else:
        sd = _strip_wrapper_prefixes(dict(obj))
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp), metadata=dict(metadata or {}))
    tmp.replace(path)
    return path


META_ARCH = "hardenkit.arch"
META_NUM_CLASSES = "hardenkit.num_classes"
META_ARCH_ARGS = "hardenkit.arch_args"


def model_metadata(
    arch: str, num_classes: int, arch_args: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The safetensors metadata that lets ``hardenkit`` commands rebuild the architecture.

    ``hardenkit.arch`` (a zoo name or ``package.module:factory``), ``hardenkit.num_classes``
    and ``hardenkit.arch_args`` (a JSON object of extra :func:`~hardenkit.models.build_model`
    arguments). Pass it as ``save_state_dict(..., metadata=...)``; then ``hardenkit
    validate``/``export``/``scan``/``purify`` need no ``--arch``/``--num-classes``.

    Example:
        >>> meta = model_metadata("small-cnn", 10, {"width": 32})
        >>> meta["hardenkit.arch"], meta["hardenkit.num_classes"], meta["hardenkit.arch_args"]
        ('small-cnn', '10', '{"width": 32}')
    """
    return {
        META_ARCH: str(arch),
        META_NUM_CLASSES: str(int(num_classes)),
        META_ARCH_ARGS: json.dumps(dict(arch_args or {}), sort_keys=True),
    }


def read_model_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file (``{}`` for ``.pt``/``.pth`` files).

    Reads only the file's header (no tensors). A missing file or a file that is not
    safetensors raises :class:`~hardenkit.errors.DataError`.

    Example:
        >>> import tempfile, torch
        >>> path = save_state_dict(torch.nn.Linear(2, 2), tempfile.mkdtemp() + "/m.safetensors",
        ...                        metadata=model_metadata("small-cnn", 4))
        >>> read_model_metadata(path)["hardenkit.num_classes"]
        '4'
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Weights file {str(path)!r} does not exist.", hint="check the path")
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(
            f"{str(path)!r} is not a readable safetensors file: {exc}",
            hint="re-save the weights with hardenkit.io.save_state_dict",
        ) from exc


def _strip_wrapper_prefixes(
    sd: dict[str, torch.Tensor], keep: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Strip ``_orig_mod.`` / ``module.`` prefixes that every key shares, repeatedly.

    A prefix is left alone when it is also shared by every key in ``keep`` (the target
    model's own keys: a model whose only child is really called ``module``).
    """
    own = list(keep)
    while sd:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None or (own and all(k.startswith(prefix) for k in own)):
            break
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
        own = [k[len(prefix) :] for k in own]
    return sd


# --- pickle inspection (never unpickles) -------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b")
# Globals torch's weights-only unpickler allows (besides dtypes, storages, ``_rebuild_*``).
_SAFE_GLOBALS = frozenset(
    {
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.set",
        "collections.Counter",
        "collections.OrderedDict",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch._tensor._rebuild_from_type_v2",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
    }
)
_SAFE_MODULES_FOR_STORAGE = ("torch", "torch.cuda")
_STRING_OPS = frozenset(
    {
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
    }
)
_MEMO_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MAX_PICKLES = 5  # the legacy torch.save format is five pickles followed by raw storage bytes


def _clean_text(text: str, limit: int = 300) -> str:
    """``text`` without ANSI escapes, on one line, at most ``limit`` characters."""
    flat = " ".join(_ANSI.sub("", text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _torch_text_is_unsafe(exc: BaseException) -> bool:
    """True when torch's message mentions ``weights_only`` or holds ANSI escapes."""
    text = str(exc)
    return "\x1b" in text or "weights_only" in text or "weights only" in text.lower()


def _torch_error_text(exc: BaseException) -> str:
    """Torch's message for a refused load, unless it advises ``weights_only=False``."""
    text = str(exc)
    if "weights_only" in text or "weights only" in text.lower():
        return "torch's weights-only loader refused it"
    return _clean_text(text) or type(exc).__name__


def _is_safe_global(name: str) -> bool:
    """True for globals torch's weights-only loader allows (tensors, storages, dtypes...)."""
    # Protocol-2 pickles spell Python 3's ``builtins`` / ``copyreg`` the Python 2 way.
    for old, new in (("__builtin__.", "builtins."), ("copy_reg.", "copyreg.")):
        if name.startswith(old):
            name = new + name[len(old) :]
    if name in _SAFE_GLOBALS or name.startswith("torch._utils._rebuild_"):
        return True
    module, _, attr = name.rpartition(".")
    if module in _SAFE_MODULES_FOR_STORAGE and attr.endswith("Storage"):
        return True
    # Dtypes and quantization schemes pickle as ``torch.<name>``; getattr on the already
    # imported torch module executes nothing from the file.
    return module == "torch" and isinstance(
        getattr(torch, attr, None), (torch.dtype, torch.qscheme)
    )


def _globals_in_one_pickle(fh: IO[bytes]) -> list[str] | None:
    """Globals referenced by the next pickle in ``fh``; ``None`` unless it parses to STOP.

    Walks the opcodes with :func:`pickletools.genops` (nothing is unpickled). ``GLOBAL`` and
    ``INST`` carry ``module name`` in their argument; ``STACK_GLOBAL`` takes the two strings
    pushed before it (followed through the memo when they were pushed with ``*GET``). A
    reference that cannot be resolved that simply is reported as ``<unresolved ...>``.
    """
    found: list[str] = []
    recent: list[object] = []  # what each push put on the stack (None: not a string)
    memo: dict[int, object] = {}
    try:
        for op, arg, _pos in pickletools.genops(fh):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.append(f"{module}.{attr}")
                recent.append(None)
            elif name == "STACK_GLOBAL":
                module_s = recent[-2] if len(recent) >= 2 else None
                attr_s = recent[-1] if recent else None
                if isinstance(module_s, str) and isinstance(attr_s, str):
                    found.append(f"{module_s}.{attr_s}")
                else:
                    found.append("<unresolved STACK_GLOBAL>")
                recent.append(None)
            elif name in ("EXT1", "EXT2", "EXT4"):
                found.append(f"<copyreg extension code {arg}>")
                recent.append(None)
            elif name in _STRING_OPS:
                recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in _MEMO_PUT_OPS:
                memo[arg if isinstance(arg, int) else -1] = recent[-1] if recent else None
            elif name in _MEMO_GET_OPS:
                recent.append(memo.get(arg) if isinstance(arg, int) else None)
            elif name == "STOP":
                return found
            elif name not in ("FRAME", "PROTO"):
                recent.append(None)
    except Exception:  # truncated, not a pickle, or raw storage bytes
        return None
    return None


def _pickle_stream_globals(fh: IO[bytes]) -> list[str] | None:
    """Globals of the consecutive pickles at the start of ``fh`` (at most five; the rest of
    a legacy ``torch.save`` file is raw storage bytes); ``None`` when not even one parses."""
    names: list[str] | None = None
    for _ in range(_MAX_PICKLES):
        found = _globals_in_one_pickle(fh)
        if found is None:
            break
        names = [*(names or []), *found]
    return names


def _scan_globals(path: Path) -> list[str] | None:
    """Sorted globals of every complete pickle in ``path``; ``None`` when there is none."""
    names: list[str] = []
    complete = False
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    if member == "data.pkl" or member.endswith("/data.pkl"):
                        with zf.open(member) as fh:
                            found = _pickle_stream_globals(fh)
                        if found is not None:
                            complete = True
                            names.extend(found)
        else:
            with path.open("rb") as fh:
                found = _pickle_stream_globals(fh)
            if found is not None:
                complete = True
                names.extend(found)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return None
    return sorted(set(names)) if complete else None


def scan_pickle_globals(path: str | Path) -> list[str]:
    """Every global a pickle-based file references, found without unpickling it.

    Handles plain ``pickle.dump`` files, legacy (non-zip) ``torch.save`` files and zip
    ``torch.save`` archives (their ``*/data.pkl`` member): the opcodes are walked with
    :func:`pickletools.genops`, nothing is executed. Names are ``module.qualname`` as written
    in the file, sorted and de-duplicated; a file that holds no complete pickle gives ``[]``.

    Example:
        >>> import collections, pickle, tempfile
        >>> p = tempfile.mkdtemp() + "/x.pkl"
        >>> with open(p, "wb") as fh:
        ...     pickle.dump(collections.OrderedDict(a=1), fh)
        >>> scan_pickle_globals(p)
        ['collections.OrderedDict']
    """
    return _scan_globals(Path(path)) or []


def _unsafe_globals(path: Path) -> list[str] | None:
    """Globals of ``path`` that torch's weights-only loader does not allow (never unpickles).

    ``None`` when ``path`` holds no complete pickle at all (not a torch/pickle file).
    """
    found = _scan_globals(path)
    names = {n for n in found or [] if not _is_safe_global(n)}
    if zipfile.is_zipfile(path):
        try:
            from torch.serialization import get_unsafe_globals_in_checkpoint

            names.update(
                n for n in get_unsafe_globals_in_checkpoint(str(path)) if not _is_safe_global(n)
            )
        except Exception:
            pass
    if found is None and not names:
        return None
    return sorted(_clean_text(n, 200) for n in names)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` state dict from safetensors or a weights-only torch file.

    A checkpoint dict that nests the weights under ``state_dict``/``model``/... is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Weights file {str(path)!r} does not exist.", hint="check the path")
    if path.suffix == ".safetensors":
        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(
                f"{str(path)!r} is not a readable safetensors file: {exc}",
                hint="re-save the weights with hardenkit.io.save_state_dict",
            ) from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        # Torch refused the file (its weights-only unpickler never runs code from it). Find
        # out why without unpickling: a scan of the pickle opcodes for non-allowed globals.
        # Torch's own text is not chained when it advises weights_only=False (a traceback
        # must not suggest unpickling an untrusted file) or carries terminal colour codes.
        cause = None if _torch_text_is_unsafe(exc) else exc
        names = _unsafe_globals(path)
        if names:
            raise UnsafeArtifactError(
                f"Refused to load {str(path)!r}: expected weights only (tensors in a "
                f"state_dict), got a pickle that needs code execution to load (unsafe "
                f"globals: {', '.join(names)}). hardenkit never unpickles untrusted files.",
                hint="in a trusted environment, save only the weights "
                "(torch.save(model.state_dict(), ...) or hardenkit.io.save_state_dict) and "
                "pass the architecture as code",
                unsafe_globals=names,
            ) from None
        what = (
            "neither a torch.save archive nor a pickle"
            if names is None
            else "a pickle torch could not read"
        )
        raise DataError(
            f"{str(path)!r} is not a readable torch weights file: expected a torch.save'd "
            f"state_dict, got {what} ({type(exc).__name__}: {_torch_error_text(exc)}).",
            hint="pass a .safetensors file or a torch.save'd state_dict",
        ) from cause
    return _flatten_checkpoint(obj, path)


def _flatten_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for key in _CHECKPOINT_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return {str(k): v for k, v in inner.items()}
    raise DataError(
        f"{str(path)!r} holds no state dict (got {type(obj).__name__}).",
        hint=f"save model.state_dict() or a dict with one of the keys {_CHECKPOINT_KEYS}",
    )


def load_model_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load weights from ``path`` into ``model`` (in place; returns it).

    Prefixes left by wrappers (``module.`` from ``DataParallel``/DDP, ``_orig_mod.`` from
    ``torch.compile``, also nested) are stripped, and a wrapped ``model`` receives the
    weights in its inner module. Key mismatches raise
    :class:`~hardenkit.errors.ModelCompatibilityError` listing the first differences.
    """
    sd = load_state_dict(path)
    target = unwrap_model(model)
    own = target.state_dict()
    sd = _strip_wrapper_prefixes(sd, keep=own)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected):
        raise ModelCompatibilityError(
            f"Weights in {str(path)!r} do not fit the architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}.",
            hint="check --arch / the factory and num_classes used to build the model",
        )
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if shapes:
        raise ModelCompatibilityError(
            "Weight shapes do not match the architecture: " + "; ".join(shapes[:5]),
            hint="check num_classes and the architecture",
        )
    target.load_state_dict(sd, strict=strict)
    return model


def write_json(path: str | Path, payload: object) -> Path:
    """Write ``payload`` as indented JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path

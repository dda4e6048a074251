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
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import DataError, ModelCompatibilityError, UnsafeArtifactError

__all__ = [
    "file_sha256",
    "load_model_weights",
    "load_state_dict",
    "save_state_dict",
]

_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


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
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DataError(
            f"Weights are saved as safetensors only, got path {str(path)!r}.",
            hint="use a file name ending in .safetensors",
        )
    sd = obj.state_dict() if isinstance(obj, nn.Module) else dict(obj)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp), metadata=dict(metadata or {}))
    tmp.replace(path)
    return path


def _unsafe_globals(path: Path) -> list[str]:
    try:
        from torch.serialization import get_unsafe_globals_in_checkpoint

        return sorted(get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


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
    except pickle.UnpicklingError as exc:
        names = _unsafe_globals(path)
        if not names:
            raise DataError(
                f"{str(path)!r} is not a readable torch weights file: {exc}",
                hint="pass a .safetensors file or a torch.save'd state_dict",
            ) from exc
        raise UnsafeArtifactError(
            f"Refused to load {str(path)!r}: it is a pickle that needs code execution to load "
            f"(unsafe globals: {', '.join(names)}). hardenkit never unpickles untrusted files.",
            hint="save only the state_dict (torch.save(model.state_dict(), ...)) or convert it to "
            "safetensors in a trusted environment, and pass the architecture as code",
            unsafe_globals=names,
        ) from exc
    except Exception as exc:
        raise DataError(
            f"{str(path)!r} is not a readable torch weights file: {exc}",
            hint="pass a .safetensors file or a torch.save'd state_dict",
        ) from exc
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

    A ``module.`` prefix left by ``DataParallel`` is stripped. Key mismatches raise
    :class:`~hardenkit.errors.ModelCompatibilityError` listing the first differences.
    """
    sd = load_state_dict(path)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    own = model.state_dict()
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
    model.load_state_dict(sd, strict=strict)
    return model


def write_json(path: str | Path, payload: object) -> Path:
    """Write ``payload`` as indented JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path

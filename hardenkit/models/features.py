"""Penultimate features and named intermediate layers of any model, via forward hooks.

Works on zoo models and arbitrary user models alike (a plain ``nn.Sequential`` included):
the penultimate feature vector is the *input* of the last ``nn.Linear`` in module order,
and a named layer's feature is its *output*. Models are never edited; hooks are removed
when the extractor closes. Captured tensors are not detached, so losses on them
backpropagate into the model.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from hardenkit.models.features import FeatureExtractor
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> with FeatureExtractor(net, layers=["2"]) as fx:
    ...     logits, feats = fx(torch.rand(5, 3, 2, 2))
    >>> logits.shape, feats["penultimate"].shape, feats["2"].shape
    (torch.Size([5, 3]), torch.Size([5, 8]), torch.Size([5, 8]))
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError, ModelCompatibilityError
from .normalization import NormalizedModel

__all__ = [
    "PENULTIMATE",
    "FeatureExtractor",
    "find_last_linear",
    "penultimate_features",
    "prunable_layers",
    "resolve_layer",
]

PENULTIMATE = "penultimate"
"""Key of the penultimate feature vector in :class:`FeatureExtractor` results."""


def find_last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """Return ``(name, module)`` of the last ``nn.Linear`` in ``model.named_modules()`` order.

    Raises:
        ModelCompatibilityError: If the model contains no ``nn.Linear``.
    """
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ModelCompatibilityError(
            f"{type(model).__name__} has no nn.Linear layer, so its penultimate features "
            "cannot be found automatically.",
            hint="pass layer=<module name> explicitly (see model.named_modules())",
        )
    return found


def _suggest(model: nn.Module, name: str, limit: int = 5) -> str:
    if isinstance(model, NormalizedModel):  # inner names resolve without the prefix too
        names = ["normalize", *(n for n, _ in model.model.named_modules() if n)]
    else:
        names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=limit, cutoff=0.5)
    shown = close or names[:limit]
    if not shown:
        return "(the model has no submodules)"
    more = "" if close or len(names) <= len(shown) else f" (and {len(names) - len(shown)} more)"
    return ", ".join(repr(n) for n in shown) + more


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name`` (dotted path as in ``named_modules()``).

    For a :class:`~hardenkit.models.normalization.NormalizedModel`, names of the wrapped
    network also work without the ``model.`` prefix (``"layer4"`` as well as
    ``"model.layer4"``).

    Raises:
        ModelCompatibilityError: If no such submodule exists; the message lists close names.
    """
    if not isinstance(name, str):
        raise ModelCompatibilityError(
            f"layer names must be strings, got {type(name).__name__}.",
            hint="use a dotted name from model.named_modules(), e.g. 'layer4'",
        )
    try:
        return model.get_submodule(name)
    except AttributeError:
        pass
    if isinstance(model, NormalizedModel):
        try:
            return model.model.get_submodule(name)
        except AttributeError:
            pass
    raise ModelCompatibilityError(
        f"{type(model).__name__} has no layer named {name!r}. "
        f"Valid names include: {_suggest(model, name)}.",
        hint="use a dotted name from model.named_modules()",
    )


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) if x.dim() > 2 else x


class FeatureExtractor:
    """Capture penultimate features and named layer outputs during a forward pass.

    Hooks are registered on construction and removed by :meth:`close` (or leaving the
    ``with`` block). Use it as a context manager so hooks never outlive their use.

    Args:
        model: Any module mapping a batch to logits.
        layers: Names (from ``model.named_modules()``) whose *outputs* to capture.
        penultimate: Also capture the *input* of the last ``nn.Linear`` (flattened to
            ``(N, D)``) under the key ``"penultimate"``.

    Calling the extractor returns ``(logits, features)``. If a hooked module runs several
    times in one forward pass, the last call wins. The extractor runs the model in whatever
    mode it is in: in train mode BatchNorm layers update their running statistics, as in any
    forward pass — call ``model.eval()`` (or pass a copy) when the model must stay untouched.

    Raises:
        ModelCompatibilityError: If a layer name is unknown, or ``penultimate=True`` and the
            model has no ``nn.Linear``.
        ConfigError: If a layer is named ``"penultimate"`` (the reserved key).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        *,
        penultimate: bool = True,
    ) -> None:
        if isinstance(layers, str):
            layers = [layers]
        names = list(dict.fromkeys(layers or ()))
        if PENULTIMATE in names:
            raise ConfigError(
                f"{PENULTIMATE!r} is reserved for the penultimate features.",
                hint="request it with penultimate=True instead of as a layer name",
            )
        self.model = model
        self.layers: tuple[str, ...] = tuple(names)
        self.penultimate_layer: str | None = None
        targets = {name: resolve_layer(model, name) for name in names}
        linear: nn.Linear | None = None
        if penultimate:
            self.penultimate_layer, linear = find_last_linear(model)
        self._store: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._closed = False
        try:
            if linear is not None:
                self._handles.append(
                    linear.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
                )
            for name, module in targets.items():
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self.close()
            raise

    def _pre_hook(
        self, module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> None:
        inp = args[0] if args else kwargs.get("input")
        if not isinstance(inp, torch.Tensor):
            raise ModelCompatibilityError(
                f"the input of the last Linear ({self.penultimate_layer!r}) is not a tensor.",
                hint="pass layer=<module name> explicitly",
            )
        self._store[PENULTIMATE] = _flatten(inp)

    def _make_hook(self, name: str) -> _LayerHook:
        return _LayerHook(self._store, name)

    @property
    def closed(self) -> bool:
        """True once the hooks have been removed."""
        return self._closed

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model on ``x``; return its logits and the captured features.

        Raises:
            RuntimeError: If the extractor is closed.
            ModelCompatibilityError: If the model output is not a tensor or a hooked layer
                did not run during the forward pass.
        """
        if self._closed:
            raise RuntimeError("FeatureExtractor is closed; create a new one.")
        self._store.clear()
        try:
            logits = self.model(x)
            if not isinstance(logits, torch.Tensor):
                raise ModelCompatibilityError(
                    f"expected the model to return a logits tensor, got {type(logits).__name__}.",
                    hint="wrap the model so forward() returns the logits tensor",
                )
            expected = ([PENULTIMATE] if self.penultimate_layer is not None else []) + list(
                self.layers
            )
            missing = [k for k in expected if k not in self._store]
            if missing:
                which = [self.penultimate_layer if k == PENULTIMATE else k for k in missing]
                raise ModelCompatibilityError(
                    f"layers {which} did not run during the forward pass.",
                    hint="pass layer names that the model's forward() actually uses",
                )
            features = {k: self._store[k] for k in expected}
        finally:
            self._store.clear()
        return logits, features

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._store.clear()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _LayerHook:
    """Forward hook storing a module's output under ``name``."""

    def __init__(self, store: dict[str, torch.Tensor], name: str) -> None:
        self.store = store
        self.name = name

    def __call__(self, module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if not isinstance(output, torch.Tensor):
            raise ModelCompatibilityError(
                f"layer {self.name!r} returned {type(output).__name__}, not a tensor.",
                hint="choose a layer whose output is a single tensor",
            )
        self.store[self.name] = output


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Return the ``(N, D)`` input of the last ``nn.Linear`` of ``model`` on batch ``x``.

    Gradients flow through the result (wrap in ``torch.no_grad()`` when not training).

    Raises:
        ModelCompatibilityError: If the model has no ``nn.Linear``.
    """
    with FeatureExtractor(model, penultimate=True) as fx:
        _, feats = fx(x)
    return feats[PENULTIMATE]


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """List ``(name, module)`` for every ``nn.BatchNorm2d`` in ``named_modules()`` order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]

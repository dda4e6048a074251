"""The model registry, :func:`create_model`, and ``module:factory`` specs for user models.

Built-in zoo architectures are registered under short names; third-party packages can add
more through the ``hardenkit.models`` entry-point group. Architectures always come from code
(a registered name or an importable ``package.module:callable``), never from pickles.

Example:
    >>> from hardenkit.models.registry import create_model, list_models
    >>> "preact-resnet18" in list_models()
    True
    >>> type(create_model("small-cnn", num_classes=3)).__name__
    'NormalizedModel'
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias, cast

from torch import nn

from ..errors import ConfigError, HardenkitError, ModelCompatibilityError
from ..registry import Registry
from .normalization import CIFAR10_MEAN, CIFAR10_STD, validate_stats, with_normalization
from .zoo import VGG16BN, CifarCNN, PreActResNet18, ResNet18, SmallCNN

__all__ = [
    "MODELS",
    "ModelFactory",
    "NormalizationArg",
    "build_model",
    "create_model",
    "list_models",
    "load_factory",
]

ModelFactory: TypeAlias = Callable[..., nn.Module]
"""A callable returning an ``nn.Module``; registered factories accept ``num_classes`` and
``in_channels`` keyword arguments."""

NormalizationArg: TypeAlias = tuple[Sequence[float], Sequence[float]] | Literal["cifar10"] | None
"""``(mean, std)``, a preset name (``"cifar10"``), or ``None`` for no normalization layer."""

MODELS: Registry[ModelFactory] = Registry("model", entry_point_group="hardenkit.models")
"""Registry of model factories (zoo architectures plus ``hardenkit.models`` plugins)."""

MODELS.register("preact-resnet18", PreActResNet18)
MODELS.register("resnet18", ResNet18)
MODELS.register("vgg16-bn", VGG16BN)
MODELS.register("small-cnn", SmallCNN)
MODELS.register("cifar-cnn", CifarCNN)

_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
}


def list_models() -> list[str]:
    """Sorted names accepted by :func:`create_model` (built-ins and installed plugins)."""
    return MODELS.names()


def _signature(factory: Callable[..., object]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins and C extensions have no signature
        return None


def _accepts(sig: inspect.Signature | None, name: str) -> bool:
    if sig is None:
        return True
    return name in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
    )


def _check_bind(label: str, sig: inspect.Signature | None, kwargs: dict[str, object]) -> None:
    if sig is None:
        return
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        accepted = [
            p.name
            for p in sig.parameters.values()
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        raise ConfigError(
            f"model {label} cannot be built with arguments {sorted(kwargs)}: {exc}.",
            hint=f"it accepts: {', '.join(accepted) or '(no keyword arguments)'}",
        ) from exc


def _check_module(label: str, model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ModelCompatibilityError(
            f"model factory {label} returned {type(model).__name__}, expected a torch.nn.Module.",
            hint="make the factory return the constructed network",
        )
    return model


def _resolve_normalization(
    normalization: NormalizationArg, in_channels: int | None
) -> tuple[list[float], list[float]] | None:
    """Validate ``normalization`` up front (before any model is built)."""
    if normalization is None:
        return None
    mean: Sequence[float]
    std: Sequence[float]
    if isinstance(normalization, str):
        preset = _PRESETS.get(normalization.strip().lower())
        if preset is None:
            raise ConfigError(
                f"unknown normalization preset {normalization!r}.",
                hint=f"use one of {sorted(_PRESETS)}, a (mean, std) pair, or None",
            )
        mean, std = preset
    elif isinstance(normalization, tuple | list) and len(normalization) == 2:
        mean, std = normalization
    else:
        raise ConfigError(
            f"normalization must be a preset name, a (mean, std) pair or None, "
            f"got {normalization!r}.",
            hint='pass normalization="cifar10", normalization=(mean, std) or normalization=None',
        )
    m, s = validate_stats(mean, std)
    if in_channels is not None and len(m) != in_channels:
        raise ConfigError(
            f"normalization has {len(m)} channels but the model has in_channels={in_channels}.",
            hint="pass normalization=(mean, std) with one value per channel, or None",
        )
    return m, s


def _wrap(model: nn.Module, stats: tuple[list[float], list[float]] | None) -> nn.Module:
    return model if stats is None else with_normalization(model, *stats)


def create_model(
    name: str,
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    normalization: NormalizationArg = "cifar10",
    **kwargs: object,
) -> nn.Module:
    """Build a registered architecture, by default wrapped to take [0, 1] pixels.

    Args:
        name: A name from :func:`list_models` (case-insensitive), e.g. ``"preact-resnet18"``.
        num_classes: Number of output logits.
        in_channels: Number of input channels.
        normalization: ``"cifar10"`` (default) prepends CIFAR-10 mean/std normalization;
            ``(mean, std)`` uses custom statistics; ``None`` returns the bare network.
        **kwargs: Extra architecture arguments (e.g. ``width=`` for the small CNNs).

    Returns:
        A :class:`~hardenkit.models.normalization.NormalizedModel` (the zoo network is its
        ``model`` attribute) or, with ``normalization=None``, the bare network.

    Raises:
        RegistryError: If ``name`` is not registered.
        ConfigError: For arguments the architecture does not accept, or bad normalization.

    Note:
        To load weights saved from a bare zoo network (e.g. a BackdoorBench checkpoint),
        use ``create_model(...).model.load_state_dict(state)`` or ``normalization=None``.
    """
    stats = _resolve_normalization(normalization, in_channels)
    factory = MODELS.get(name)
    label = repr(name)
    sig = _signature(factory)
    call_kwargs: dict[str, object] = {"num_classes": num_classes, **kwargs}
    if in_channels != 3 or _accepts(sig, "in_channels"):
        call_kwargs["in_channels"] = in_channels
    _check_bind(label, sig, call_kwargs)
    model = _check_module(label, factory(**call_kwargs))
    return _wrap(model, stats)


def load_factory(spec: str) -> ModelFactory:
    """Resolve a ``"package.module:callable"`` spec (the callable may be dotted, ``mod:A.b``).

    Importing the module runs its code, exactly like ``import``; only point this at code you
    trust.

    Raises:
        ConfigError: If the spec is malformed, the module cannot be imported, the attribute
            is missing, or it is not callable.
    """
    if not isinstance(spec, str):
        raise ConfigError(
            f"a model factory spec must be a string, got {type(spec).__name__}.",
            hint='write it as "package.module:callable"',
        )
    module_name, sep, attr_path = spec.strip().partition(":")
    if not sep or not module_name or not attr_path or ":" in attr_path:
        raise ConfigError(
            f"expected a model factory spec 'package.module:callable', got {spec!r}.",
            hint='e.g. "my_project.models:build_net"',
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import module {module_name!r} from model spec {spec!r}: {exc}.",
            hint="check the module name and that it is installed or on PYTHONPATH",
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"importing module {module_name!r} from model spec {spec!r} raised "
            f"{type(exc).__name__}: {exc}.",
            hint="fix the error in that module",
        ) from exc
    obj: object = module
    resolved = module_name
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(
                f"{resolved!r} has no attribute {part!r} (model spec {spec!r}).",
                hint="check the callable's name after the ':'",
            ) from exc
        resolved = f"{resolved}.{part}"
    if not callable(obj):
        raise ConfigError(
            f"model spec {spec!r} points at a {type(obj).__name__}, not a callable.",
            hint="point it at a function or class that returns an nn.Module",
        )
    return cast(ModelFactory, obj)


def build_model(
    arch: str,
    num_classes: int = 10,
    *,
    in_channels: int | None = None,
    normalization: NormalizationArg | Literal["auto"] = "auto",
    **kwargs: object,
) -> nn.Module:
    """Build a model from a zoo name or a ``"package.module:callable"`` spec.

    Args:
        arch: A registered name (see :func:`list_models`) or a ``module:callable`` spec.
        num_classes: Number of classes; passed to a user factory only if it accepts
            ``num_classes`` (or ``**kwargs``).
        in_channels: Number of input channels; ``None`` means 3 for zoo names and "not
            passed" for user factories.
        normalization: ``"auto"`` means ``"cifar10"`` for 3-channel zoo models, no
            normalization layer for other channel counts, and no wrapping for user factories
            (whose models must already take [0, 1] pixels); otherwise as in
            :func:`create_model`.
        **kwargs: Forwarded to the architecture / factory.

    Raises:
        RegistryError: If ``arch`` is neither a spec nor a registered name.
        ConfigError: If the spec cannot be resolved or the arguments do not fit.
        ModelCompatibilityError: If a user factory fails or returns a non-module.
    """
    if ":" not in arch:
        channels = 3 if in_channels is None else in_channels
        auto: NormalizationArg = "cifar10" if channels == 3 else None
        norm = auto if normalization == "auto" else normalization
        return create_model(
            arch,
            num_classes,
            in_channels=channels,
            normalization=norm,
            **kwargs,
        )
    stats = None if normalization == "auto" else _resolve_normalization(normalization, in_channels)
    factory = load_factory(arch)
    label = repr(arch)
    sig = _signature(factory)
    call_kwargs: dict[str, object] = dict(kwargs)
    if in_channels is not None:
        call_kwargs["in_channels"] = in_channels
    if _accepts(sig, "num_classes"):
        call_kwargs["num_classes"] = num_classes
    _check_bind(label, sig, call_kwargs)
    try:
        built = factory(**call_kwargs)
    except HardenkitError:
        raise
    except Exception as exc:
        raise ModelCompatibilityError(
            f"model factory {label} raised {type(exc).__name__}: {exc}.",
            hint="check the factory and the arguments passed to it",
        ) from exc
    return _wrap(_check_module(label, built), stats)

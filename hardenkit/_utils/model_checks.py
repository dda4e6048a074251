"""Cheap up-front checks that a model is something hardenkit can work with.

Every entry point (Validator, Scanner, Purifier, ONNX export) calls :func:`check_model` so
that an odd model (a TorchScript module, weights on the ``meta`` device, an fp16 model, a
non-module object) fails at once with a typed
:class:`~hardenkit.errors.ModelCompatibilityError` that says what was expected, what was
got and how to fix it, instead of an untyped crash deep inside a forward pass, or a silently
wrong number. Wrappers (``torch.compile``, ``nn.DataParallel``,
``nn.parallel.DistributedDataParallel``) are unwrapped, never copied.

No check runs a forward pass.

Example:
    >>> import torch
    >>> from hardenkit._utils.model_checks import check_model, unwrap_model
    >>> net = torch.nn.Linear(4, 2)
    >>> unwrap_model(torch.nn.DataParallel(net)) is net
    True
    >>> check_model(net, where="Validator") is net
    True
    >>> check_model(net.half(), where="Validator")
    Traceback (most recent call last):
    ...
    hardenkit.errors.ModelCompatibilityError: Validator: ...
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..errors import ModelCompatibilityError

__all__ = ["check_model", "require_trainable", "unwrap_model"]

_MAX_LISTED = 3


def _compiled_module_type() -> type | None:
    """``OptimizedModule`` when ``torch._dynamo`` is loaded; ``None`` otherwise.

    A ``torch.compile``d model can only exist once ``torch._dynamo`` has been imported, so
    reading ``sys.modules`` avoids importing the compiler stack just to run an isinstance test.
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    cls = getattr(eval_frame, "OptimizedModule", None)
    return cls if isinstance(cls, type) else None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile``, ``DataParallel`` and DDP wrappers.

    Nested wrappers (e.g. a compiled ``DataParallel``) are peeled repeatedly. Nothing is
    copied: the returned module shares its parameters with ``model``, and a module that is
    not a wrapper is returned as is.

    Args:
        model: any ``nn.Module``, possibly wrapped.

    Returns:
        The innermost wrapped module (``model`` itself when it is not a wrapper).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> unwrap_model(torch.nn.DataParallel(torch.nn.DataParallel(net))) is net
        True
    """
    compiled = _compiled_module_type()
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        if compiled is not None and isinstance(model, compiled):
            inner = getattr(model, "_orig_mod", None)
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        else:
            break
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def _listed(items: list[str]) -> str:
    more = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f" (and {more} more)" if more > 0 else "")


def check_model(model: object, *, where: str, require_float32: bool = True) -> nn.Module:
    """Raise :class:`~hardenkit.errors.ModelCompatibilityError` unless hardenkit can use
    ``model``; return the plain module inside any wrapper (see :func:`unwrap_model`).

    Refused, each with a fix in the message:

    * an object that is not a ``torch.nn.Module``;
    * a TorchScript module (``torch.jit.script`` / ``torch.jit.trace``), or an eager module
      holding one: hardenkit needs forward hooks, ``copy.deepcopy`` and autograd through an
      eager module;
    * parameters or buffers on the ``meta`` device (a model built without real weights);
    * floating-point parameters that are not float32 (fp16, bf16 or float64 models) when
      ``require_float32`` is true: hardenkit measures in float32 and applies bf16 autocast
      on CUDA itself.

    Cheap: no forward pass; the model is neither copied nor modified.

    Args:
        model: the caller's model (possibly ``torch.compile``d or ``DataParallel``).
        where: the entry point, used as the message prefix (e.g. ``"Validator"``).
        require_float32: refuse non-float32 parameters (``to_onnx`` passes ``False``: it
            exports a float32 copy anyway).

    Returns:
        The unwrapped module (shares its parameters with ``model``).

    Raises:
        ModelCompatibilityError: one of the cases above.
    """
    if not isinstance(model, nn.Module):
        hint = "build the architecture in code (a torch.nn.Module) and load its weights"
        if type(model).__name__ == "ExportedProgram":
            hint = "pass the eager module, or program.module() for a torch.export program"
        raise ModelCompatibilityError(
            f"{where}: expected a torch.nn.Module, got {type(model).__module__}."
            f"{type(model).__qualname__}.",
            hint=hint,
        )
    inner = unwrap_model(model)
    scripted: list[str] = []  # outermost scripted modules only
    for name, m in inner.named_modules():
        if isinstance(m, torch.jit.ScriptModule) and not any(
            s == "" or name.startswith(s + ".") for s in scripted
        ):
            scripted.append(name)
    if scripted:
        raise ModelCompatibilityError(
            f"{where}: expected an eager torch.nn.Module, got a TorchScript module "
            f"({type(inner).__name__}; scripted: {_listed([n or '<root>' for n in scripted])}). "
            "hardenkit needs forward hooks, copy.deepcopy and autograd through the model, which "
            "TorchScript modules do not support.",
            hint="pass the eager nn.Module the script was made from (build the architecture in "
            "code and load its weights, e.g. from the scripted module's state_dict())",
        )
    meta = [
        f"{name} ({kind})"
        for kind, named in (
            ("parameter", inner.named_parameters()),
            ("buffer", inner.named_buffers()),
        )
        for name, t in named
        if t.is_meta
    ]
    if meta:
        raise ModelCompatibilityError(
            f"{where}: expected a model with real weights, got tensors on the 'meta' device "
            f"(no data): {_listed(meta)}.",
            hint="load real weights first, e.g. model.load_state_dict(state_dict, assign=True), "
            "or model.to_empty(device='cpu') and then load_state_dict(...)",
        )
    if require_float32:
        wrong = [
            f"{name} ({str(p.dtype).removeprefix('torch.')})"
            for name, p in inner.named_parameters()
            if (p.is_floating_point() or p.is_complex()) and p.dtype != torch.float32
        ]
        if wrong:
            raise ModelCompatibilityError(
                f"{where}: expected float32 parameters, got {_listed(wrong)}.",
                hint="pass model.float(): hardenkit measures and trains in float32 and applies "
                "bf16 autocast on CUDA automatically",
            )
    return inner


def require_trainable(model: nn.Module, *, where: str) -> None:
    """Raise :class:`~hardenkit.errors.ModelCompatibilityError` when no parameter of
    ``model`` has ``requires_grad=True`` (nothing a fine-tuning strategy could train).

    Args:
        model: the model (its flags are only read).
        where: the entry point or strategy, used as the message prefix.

    Raises:
        ModelCompatibilityError: the model has no parameters, or every one is frozen.

    Example:
        >>> import torch
        >>> require_trainable(torch.nn.Linear(2, 2), where="fine-tuning")
        >>> require_trainable(torch.nn.Linear(2, 2).requires_grad_(False), where="fine-tuning")
        Traceback (most recent call last):
        ...
        hardenkit.errors.ModelCompatibilityError: fine-tuning: ...
    """
    params = list(unwrap_model(model).parameters())
    if any(p.requires_grad for p in params):
        return
    got = (
        "a model without parameters"
        if not params
        else f"all {len(params)} parameters frozen (requires_grad=False)"
    )
    raise ModelCompatibilityError(
        f"{where}: expected at least one trainable parameter (requires_grad=True), got {got}.",
        hint="the strategy fine-tunes a copy and never changes your model; call "
        "model.requires_grad_(True) on the parts that may be trained, or use a strategy that "
        "does not train, such as shapley-pruning",
    )

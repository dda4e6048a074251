"""Channel-level pruning machinery shared by the pruning strategies.

A *channel group* is one layer whose output (or, for a ``Linear``, input) channels can be
switched off one by one:

* ``bn`` — a ``BatchNorm`` layer with affine parameters: channel ``c`` is pruned by zeroing
  ``weight[c]`` and ``bias[c]`` (its output is then exactly 0);
* ``conv`` — a ``Conv`` layer: pruned by zeroing filter ``c`` and ``bias[c]``;
* ``linear-in`` — a ``Linear`` layer's input feature ``c``: pruned by zeroing column ``c``.

Pruning is always a **weight edit** (:func:`apply_pruning`), so a pruned model has the
original architecture, loads with the original code and exports to ONNX with no graph
surgery. A pruned channel outputs 0 (*zero ablation*), or — given ``fill`` values from
:func:`ablation_fill` — a constant: the mean its activation takes on clean images (*mean
ablation*: BN ``γ = 0`` and ``β = `` that constant, a Conv filter's bias, or a Linear bias
correction), which leaves the next layers' input statistics in place.

While a strategy searches, :class:`ChannelMask` applies *soft* masks with forward hooks
instead (the weights stay untouched); a mask of 0 gives exactly the output of the weight edit
(tested), and a 2-D mask ``(R, C)`` evaluates ``R`` different masks in one batched forward
pass (the input batch is ``R`` repeats of the same images, mask-major).

Example:
    >>> import torch
    >>> from hardenkit.models import SmallCNN
    >>> from hardenkit.purify.channels import ChannelSet, ablation_fill, apply_pruning
    >>> net = SmallCNN(num_classes=3, width=4).eval()
    >>> units = ChannelSet.find(net)
    >>> units.kind, units.total, [g.layer for g in units.groups]
    ('bn', 28, ['block1.1', 'block2.1', 'block3.1'])
    >>> rec = apply_pruning(net, units, {"block3.1": [0, 5]})
    >>> rec.pruned, net.block3[1].weight[5].item()
    (2, 0.0)
    >>> fill, acts = ablation_fill(net, units, torch.rand(8, 3, 32, 32))
    >>> acts["block1.1"], fill.shape
    ('relu', torch.Size([28]))
    >>> apply_pruning(net, units, {"block1.1": [1]}, fill).ablation
    'mean'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from .._utils.modes import eval_mode
from ..errors import ConfigError, ModelCompatibilityError
from ..models.features import resolve_layer

__all__ = [
    "ChannelGroup",
    "ChannelMask",
    "ChannelSet",
    "PruningRecord",
    "ablation_fill",
    "apply_pruning",
    "keep_pruned",
]

UnitKind = Literal["bn", "conv", "linear-in"]

_BN = nn.modules.batchnorm._BatchNorm
_CONV = nn.modules.conv._ConvNd


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable layer: its ``named_modules()`` name, unit kind and channel count."""

    layer: str
    kind: UnitKind
    channels: int


def _group_of(name: str, module: nn.Module) -> ChannelGroup:
    if isinstance(module, _BN):
        if not module.affine:
            raise ModelCompatibilityError(
                f"BatchNorm layer {name!r} has affine=False: it has no scale/shift to zero.",
                hint="prune the convolution before it instead (name the Conv layer)",
            )
        return ChannelGroup(name, "bn", int(module.num_features))
    if isinstance(module, _CONV):
        return ChannelGroup(name, "conv", int(module.out_channels))
    if isinstance(module, nn.Linear):
        return ChannelGroup(name, "linear-in", int(module.in_features))
    raise ModelCompatibilityError(
        f"layer {name!r} is a {type(module).__name__}; prunable layers are BatchNorm "
        "(channels), Conv (filters) and Linear (input features).",
        hint="name BatchNorm, Conv or Linear layers",
    )


class ChannelSet:
    """The prunable channels of a model, flattened to indices ``0 .. total-1``.

    Index ``i`` maps to ``(group, channel)`` in group order; :meth:`split` turns a set of flat
    indices into the per-layer dict :func:`apply_pruning` takes.
    """

    def __init__(self, groups: Sequence[ChannelGroup]) -> None:
        if not groups:
            raise ModelCompatibilityError(
                "no prunable channels found.",
                hint="name BatchNorm, Conv or Linear layers explicitly with layers=[...]",
            )
        self.groups = tuple(groups)
        offsets = [0]
        for g in self.groups:
            offsets.append(offsets[-1] + g.channels)
        self.offsets = tuple(offsets)

    @classmethod
    def find(
        cls,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        *,
        unit: Literal["auto", "bn", "conv"] = "auto",
    ) -> ChannelSet:
        """Find prunable channel groups.

        With ``layers`` the named modules are used (BatchNorm, Conv or Linear). Otherwise
        ``unit="bn"`` takes every affine BatchNorm layer (the ANP/ShapPruning choice: a
        BN channel is one neuron), ``"conv"`` every Conv layer, and ``"auto"`` BatchNorm
        channels when the model has any, else Conv filters.

        Raises:
            ModelCompatibilityError: If a named layer is missing or not prunable, or
                nothing prunable exists.
        """
        if layers is not None:
            if isinstance(layers, str):
                layers = [layers]
            names = list(dict.fromkeys(layers))
            if not names:
                raise ConfigError("layers=[] names no layer; omit it to find layers automatically.")
            return cls([_group_of(n, resolve_layer(model, n)) for n in names])
        bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BN) and m.affine]
        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, _CONV)]
        chosen = bns if unit == "bn" or (unit == "auto" and bns) else convs
        if not chosen:
            raise ModelCompatibilityError(
                f"{type(model).__name__} has no {'affine BatchNorm' if unit == 'bn' else 'Conv'} "
                "layer to prune.",
                hint="name the layers to prune with layers=[...] (BatchNorm, Conv or Linear)",
            )
        return cls([_group_of(n, m) for n, m in chosen])

    @property
    def total(self) -> int:
        """Number of prunable channels."""
        return self.offsets[-1]

    @property
    def kind(self) -> str:
        """The unit kind when all groups share one, else ``"mixed"``."""
        kinds = {g.kind for g in self.groups}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def locate(self, index: int) -> tuple[ChannelGroup, int]:
        """Return ``(group, channel)`` of flat index ``index``."""
        if not 0 <= index < self.total:
            raise IndexError(f"channel index {index} outside [0, {self.total})")
        for g, lo in zip(self.groups, self.offsets, strict=False):
            if index < lo + g.channels:
                return g, index - lo
        raise AssertionError("unreachable")  # pragma: no cover

    def split(self, indices: Sequence[int] | Tensor) -> dict[str, list[int]]:
        """Map flat indices to ``{layer: sorted channels}`` (layers with none omitted)."""
        idx = sorted(
            {int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)}
        )
        out: dict[str, list[int]] = {}
        for i in idx:
            g, c = self.locate(i)
            out.setdefault(g.layer, []).append(c)
        return out

    def flat(self, pruned: Mapping[str, Sequence[int]]) -> list[int]:
        """Inverse of :meth:`split`."""
        by_name = {g.layer: (g, lo) for g, lo in zip(self.groups, self.offsets, strict=False)}
        out: list[int] = []
        for layer, chans in pruned.items():
            if layer not in by_name:
                raise ConfigError(
                    f"layer {layer!r} is not one of the prunable layers {list(by_name)}."
                )
            g, lo = by_name[layer]
            for c in chans:
                if not 0 <= int(c) < g.channels:
                    raise ConfigError(
                        f"channel {c} is outside layer {layer!r} ({g.channels} channels)."
                    )
                out.append(lo + int(c))
        return sorted(set(out))

    def ones(self, device: torch.device | str = "cpu") -> Tensor:
        """An all-ones flat mask (nothing pruned)."""
        return torch.ones(self.total, device=device)


class PruningRecord(BaseModel):
    """Exactly what was pruned (part of a purification report's ``details``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: str
    """``bn`` (BatchNorm channels), ``conv`` (filters), ``linear-in`` or ``mixed``."""
    layers: dict[str, list[int]]
    """Pruned channel indices per layer name."""
    pruned: int
    total: int
    """Prunable channels considered."""
    fraction: float
    ablation: Literal["zero", "mean"] = "zero"
    """``zero``: pruned channels output 0; ``mean``: a constant, their clean mean activation."""


def _record(
    units: ChannelSet, pruned: Mapping[str, Sequence[int]], *, mean: bool = False
) -> PruningRecord:
    flat = units.flat(pruned)
    return PruningRecord(
        unit=units.kind,
        layers=units.split(flat),
        pruned=len(flat),
        total=units.total,
        fraction=len(flat) / units.total,
        ablation="mean" if mean else "zero",
    )


@torch.no_grad()
def apply_pruning(
    model: nn.Module,
    units: ChannelSet,
    pruned: Mapping[str, Sequence[int]],
    fill: Tensor | None = None,
) -> PruningRecord:
    """Prune ``pruned`` (``{layer: channels}``) of ``model`` **in place** by weight edits.

    Without ``fill`` a pruned channel outputs 0. With ``fill`` (flat ``(total,)``, from
    :func:`ablation_fill`) it outputs the constant ``fill[c]``: BN/Conv ``weight = 0`` and
    ``bias = fill``; for a Linear input ``c`` the column is zeroed and ``weight[:, c] ·
    fill[c]`` moves into the bias. Returns the :class:`PruningRecord`. Pruned channels of
    earlier calls stay pruned.
    """
    rec = _record(units, pruned, mean=fill is not None)
    for gi, g in enumerate(units.groups):
        chans = rec.layers.get(g.layer)
        if not chans:
            continue
        module = resolve_layer(model, g.layer)
        idx = torch.tensor(chans, dtype=torch.long, device=_device(module))
        weight = module.weight
        assert isinstance(weight, Tensor)
        bias = getattr(module, "bias", None)
        vals = None
        if fill is not None:
            vals = fill[units.offsets[gi] : units.offsets[gi + 1]].to(weight)[idx]
            if not isinstance(bias, Tensor) and bool(vals.ne(0).any()):
                raise ModelCompatibilityError(
                    f"layer {g.layer!r} has no bias to hold the mean-ablation constants.",
                    hint="use zero ablation for it (ablation_fill gives 0 for such layers)",
                )
        if g.kind == "linear-in":
            if vals is not None and isinstance(bias, Tensor):
                bias += weight[:, idx] @ vals
            weight[:, idx] = 0
            continue
        weight[idx] = 0
        if isinstance(bias, Tensor):
            bias[idx] = 0 if vals is None else vals
    return rec


def _device(module: nn.Module) -> torch.device:
    """Device of the module's first parameter (CPU for a parameter-free module)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def keep_pruned(
    model: nn.Module, units: ChannelSet, pruned: Mapping[str, Sequence[int]]
) -> list[RemovableHandle]:
    """Zero the gradients of pruned weights so fine-tuning keeps them exactly 0.

    With SGD (momentum, weight decay) or Adam a zero weight whose gradient is always zero
    stays zero. Remove the returned handles when training is done.
    """
    handles: list[RemovableHandle] = []
    kinds = {g.layer: g.kind for g in units.groups}
    for layer, chans in units.split(units.flat(pruned)).items():
        module = resolve_layer(model, layer)
        for pname in ("weight", "bias"):
            param = getattr(module, pname, None)
            if not isinstance(param, nn.Parameter) or not param.requires_grad:
                continue  # a frozen weight is never updated: it stays pruned without a mask
            keep = torch.ones_like(param)
            if kinds[layer] == "linear-in":
                if pname == "bias":
                    continue
                keep[:, chans] = 0
            else:
                keep[chans] = 0
            handles.append(param.register_hook(_GradMask(keep)))  # type: ignore[no-untyped-call]
    return handles


class _GradMask:
    def __init__(self, keep: Tensor) -> None:
        self.keep = keep

    def __call__(self, grad: Tensor) -> Tensor:
        return grad * self.keep


_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_, F.relu6}
_LEAKY_FUNCS = {F.leaky_relu, F.leaky_relu_}


class _FillStats:
    """Accumulates, per group, the channel means of the layer's output before and after the
    elementwise activation that consumes it (found by module pre-hooks and a function mode)."""

    def __init__(self, units: ChannelSet) -> None:
        self.units = units
        n = len(units.groups)
        self.pre: list[Tensor | None] = [None] * n
        self.post: list[Tensor | None] = [None] * n
        self.act: list[str] = ["none"] * n
        self.slope: list[float] = [0.0] * n
        self.count = 0
        self.live: dict[int, tuple[int, Tensor]] = {}

    @staticmethod
    def _means(t: Tensor) -> Tensor:
        return t.detach().float().transpose(0, 1).reshape(t.shape[1], -1).mean(1)

    def _add(self, store: list[Tensor | None], gi: int, t: Tensor) -> None:
        v = self._means(t) * len(t)
        old = store[gi]
        store[gi] = v if old is None else old + v

    def output(self, gi: int, t: Tensor) -> None:
        self._add(self.pre, gi, t)
        self.live[id(t)] = (gi, t)

    def activation(self, t: object, kind: str, slope: float = 0.0) -> None:
        hit = self.live.get(id(t))
        if hit is None or hit[1] is not t:
            return
        del self.live[id(t)]  # counted once (an nn.ReLU also calls F.relu)
        gi = hit[0]
        if self.act[gi] == "none" and self.post[gi] is None:
            self.act[gi] = kind
            self.slope[gi] = slope
        if self.act[gi] != kind:
            return
        assert isinstance(t, Tensor)
        y = F.leaky_relu(t, slope) if kind == "leaky_relu" else t.clamp(min=0)
        if kind == "relu6":
            y = y.clamp(max=6)
        self._add(self.post, gi, y)


class _ActivationSpy(TorchFunctionMode):
    def __init__(self, stats: _FillStats) -> None:
        super().__init__()
        self.stats = stats

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if args and func in _RELU_FUNCS:
            self.stats.activation(args[0], "relu6" if func is F.relu6 else "relu")
        elif args and func in _LEAKY_FUNCS:
            slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
            self.stats.activation(args[0], "leaky_relu", float(slope))
        return func(*args, **kwargs)


@torch.no_grad()
def ablation_fill(
    model: nn.Module, units: ChannelSet, x: Tensor, *, batch_size: int = 256
) -> tuple[Tensor, dict[str, str]]:
    """Mean-ablation constants for every channel of ``units``, measured on images ``x``.

    For a channel followed by a ReLU / ReLU6 / LeakyReLU (an ``nn`` module or the
    functional form applied directly to the layer's output), the constant is the one whose
    activation equals the channel's mean *activation* on ``x``, so the next layer sees the
    input it gets on average; otherwise (e.g. a residual sum comes first) it is the mean of
    the output itself. A Linear input's constant is that input's mean. Layers without a bias
    (which cannot hold a constant) get 0. The model runs in eval mode (its flags are restored
    afterwards). Returns the flat ``(total,)`` fill (on the model's device) and, per layer,
    the activation found (``relu``, ``relu6``, ``leaky_relu``, ``none`` or ``no bias``).
    """
    if len(x) == 0:
        raise ConfigError("ablation_fill needs at least one image.")
    stats = _FillStats(units)
    handles: list[RemovableHandle] = []
    for gi, g in enumerate(units.groups):
        module = resolve_layer(model, g.layer)
        if g.kind == "linear-in":
            handles.append(
                module.register_forward_pre_hook(lambda _m, a, gi=gi: stats.output(gi, a[0]))
            )
        else:
            handles.append(
                module.register_forward_hook(lambda _m, _a, o, gi=gi: stats.output(gi, o))
            )
    for module in model.modules():
        if isinstance(module, _ACT_MODULES):
            kind = (
                "relu"
                if isinstance(module, nn.ReLU)
                else "relu6"
                if isinstance(module, nn.ReLU6)
                else "leaky_relu"
            )
            slope = float(getattr(module, "negative_slope", 0.0))
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, a, k=kind, s=slope: stats.activation(a[0], k, s)
                )
            )
    dev = _device(model)
    try:
        with eval_mode(model):
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(dev)
                stats.live.clear()
                with _ActivationSpy(stats):
                    model(xb)
                stats.count += len(xb)
    finally:
        stats.live.clear()
        for h in handles:
            h.remove()
    parts: list[Tensor] = []
    kinds: dict[str, str] = {}
    for gi, g in enumerate(units.groups):
        module = resolve_layer(model, g.layer)
        pre, post = stats.pre[gi], stats.post[gi]
        act = stats.act[gi] if g.kind != "linear-in" else "none"
        if not isinstance(getattr(module, "bias", None), Tensor):
            kinds[g.layer] = "no bias"
            parts.append(torch.zeros(g.channels))
            continue
        if act == "none" or post is None:
            if pre is None:
                raise ModelCompatibilityError(
                    f"layer {g.layer!r} never ran in the model's forward pass.",
                    hint="prune only layers the model uses (the layers argument)",
                )
            val = pre / stats.count
            act = "none"
        else:
            val = post / stats.count
            if act == "leaky_relu" and stats.slope[gi] > 0:
                val = torch.where(val < 0, val / stats.slope[gi], val)
        kinds[g.layer] = act
        parts.append(val.cpu())
    return torch.cat(parts).to(dev), kinds


class ChannelMask:
    """Soft channel masks applied with forward hooks (weights untouched).

    ``mask`` is a flat tensor over :class:`ChannelSet` indices: shape ``(total,)`` for one
    mask, or ``(R, total)`` for ``R`` masks evaluated together on an input made of ``R``
    mask-major repeats of the same images. Update it in place (``cm.mask[...] = 0``) or
    assign a new tensor to ``cm.mask``. Gradients flow to the mask when it requires grad.

    With ``fill`` (flat ``(total,)``, see :func:`ablation_fill`) a masked channel moves
    towards that constant instead of 0: ``out = fill + m·(out − fill)`` (mean ablation; a mask
    of 0 equals :func:`apply_pruning` with the same ``fill``).

    ``scale_noise`` / ``shift_noise`` (flat ``(total,)`` tensors, 1-D masks only) perturb
    the masked channels multiplicatively, as in adversarial neuron pruning: for ``bn``
    groups ``out = m·(1+δ)·(γ·x̂) + m·(1+ξ)·β``; other groups get ``out = m·(1+δ)·out``.
    """

    def __init__(
        self,
        model: nn.Module,
        units: ChannelSet,
        mask: Tensor | None = None,
        fill: Tensor | None = None,
    ) -> None:
        self.model = model
        self.units = units
        self.mask: Tensor = units.ones(_device(model)) if mask is None else mask
        self.fill = fill
        self.scale_noise: Tensor | None = None
        self.shift_noise: Tensor | None = None
        self._handles: list[RemovableHandle] = []
        try:
            for gi, g in enumerate(units.groups):
                module = resolve_layer(model, g.layer)
                if g.kind == "linear-in":
                    self._handles.append(module.register_forward_pre_hook(_PreHook(self, gi)))
                else:
                    self._handles.append(module.register_forward_hook(_PostHook(self, gi)))
        except BaseException:
            self.close()
            raise

    def _slice(self, t: Tensor, gi: int) -> Tensor:
        lo, hi = self.units.offsets[gi], self.units.offsets[gi + 1]
        return t[..., lo:hi]

    def _apply(self, out: Tensor, gi: int, *, bn: nn.Module | None = None) -> Tensor:
        m = self._slice(self.mask, gi)
        c = out.shape[1]
        tail = [1] * (out.dim() - 2)
        f = None if self.fill is None else self._slice(self.fill, gi).view(1, c, *tail)
        if m.dim() == 1:
            a = m.view(1, c, *tail)
            sn = None if self.scale_noise is None else self._slice(self.scale_noise, gi)
            hn = None if self.shift_noise is None else self._slice(self.shift_noise, gi)
            if sn is None and hn is None:
                return out * a if f is None else f + a * (out - f)
            scale = a if sn is None else a * (1 + sn.view(1, c, *tail))
            bias = getattr(bn, "bias", None)
            if not isinstance(bias, Tensor):  # conv filters / inputs: scale noise only
                return out * scale
            beta = bias.view(1, c, *tail)
            shift = a if hn is None else a * (1 + hn.view(1, c, *tail))
            return scale * (out - beta) + shift * beta
        r = m.shape[0]
        if out.shape[0] % r:
            raise ModelCompatibilityError(
                f"a batch of {out.shape[0]} cannot be split into {r} mask groups.",
                hint="repeat the images once per mask row (mask-major)",
            )
        grouped = out.reshape(r, out.shape[0] // r, *out.shape[1:])
        mr = m.view(r, 1, c, *tail)
        masked = grouped * mr if f is None else f + mr * (grouped - f)
        return masked.reshape(out.shape)

    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _PostHook:
    def __init__(self, owner: ChannelMask, gi: int) -> None:
        self.owner = owner
        self.gi = gi

    def __call__(self, module: nn.Module, args: tuple[object, ...], out: object) -> Tensor:
        if not isinstance(out, Tensor):
            raise ModelCompatibilityError(
                f"layer {self.owner.units.groups[self.gi].layer!r} returned "
                f"{type(out).__name__}, not a tensor."
            )
        bn = module if isinstance(module, _BN) else None
        return self.owner._apply(out, self.gi, bn=bn)


class _PreHook:
    def __init__(self, owner: ChannelMask, gi: int) -> None:
        self.owner = owner
        self.gi = gi

    def __call__(self, module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...]:
        x = args[0]
        assert isinstance(x, Tensor)
        return (self.owner._apply(x, self.gi), *args[1:])

"""Backdoor triggers defined and stamped in pixel space ([0, 1], NCHW).

Every trigger is a callable ``trigger(x) -> x_triggered`` that accepts a batch ``(N, C, H, W)``
or one image ``(C, H, W)`` and returns pixels clamped to [0, 1]. Triggers serialise to a
safetensors file (tensors + JSON metadata) and load back with :meth:`Trigger.load`.

Types:
    * :class:`PatchTrigger` — a small patch pasted at a location (BadNets).
    * :class:`BlendTrigger` — ``(1 - alpha) x + alpha * pattern`` (Blended).
    * :class:`MaskPatternTrigger` — ``(1 - m) x + m * pattern`` (Neural Cleanse's form).
    * :class:`AdditiveTrigger` — ``clamp(x + delta)`` (SIG's sinusoid and similar).
    * :class:`WarpTrigger` — a fixed smooth warping field (WaNet).
    * :class:`QuantizeTrigger` — every channel reduced to a few levels, optionally with
      Floyd–Steinberg dithering: a different change on every image (BppAttack).
    * :class:`AlternatingTrigger` — several triggers in turn over a batch (image ``i`` gets
      trigger ``i mod n``): one label's inversions from several detectors, unlearned together.
    * :class:`CallableTrigger` — wraps any user function (not serialisable).

Example:
    >>> import torch
    >>> from hardenkit.triggers import PatchTrigger, Trigger
    >>> t = PatchTrigger.square(size=3, location="bottom-right")
    >>> x = t(torch.zeros(2, 3, 32, 32))
    >>> float(x[0, :, -3:, -3:].min()), float(x[0, :, :-3, :].max())
    (1.0, 0.0)
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import ConfigError, DataError
from .registry import Registry

__all__ = [
    "TRIGGERS",
    "AdditiveTrigger",
    "AlternatingTrigger",
    "BlendTrigger",
    "CallableTrigger",
    "MaskPatternTrigger",
    "PatchTrigger",
    "QuantizeTrigger",
    "Trigger",
    "WarpTrigger",
    "as_trigger",
]

TRIGGERS: Registry[type[Trigger]] = Registry("trigger", entry_point_group="hardenkit.triggers")

Location = Literal["bottom-right", "bottom-left", "top-left", "top-right", "center"]
_LOCATIONS = ("bottom-right", "bottom-left", "top-left", "top-right", "center")


def _batchify(x: Tensor) -> tuple[Tensor, bool]:
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim != 4:
        raise DataError(
            f"a trigger expects (N, C, H, W) or (C, H, W) pixels, got {tuple(x.shape)}."
        )
    return x, False


def _check_channels(trigger_channels: int, like: Tensor) -> None:
    if trigger_channels not in (1, like.shape[1]):
        raise DataError(
            f"the trigger has {trigger_channels} channels but the images have {like.shape[1]}.",
            hint="build the trigger for the images' channel count (e.g. channels=1 for grey)",
        )


def _fit(t: Tensor, like: Tensor) -> Tensor:
    """Move ``t`` (C,H,W) to ``like``'s device/dtype and resize to its spatial size."""
    _check_channels(t.shape[0], like)
    t = t.to(device=like.device, dtype=like.dtype)
    if t.shape[-2:] != like.shape[-2:]:
        t = F.interpolate(
            t.unsqueeze(0), size=like.shape[-2:], mode="bilinear", align_corners=False
        ).squeeze(0)
    if t.shape[0] == 1 and like.shape[1] != 1:
        t = t.expand(like.shape[1], *t.shape[1:])
    return t


class Trigger(ABC):
    """Base class: a pixel-space transformation that plants (or represents) a backdoor."""

    kind: ClassVar[str] = "trigger"

    def __call__(self, x: Tensor) -> Tensor:
        return self.apply(x)

    def apply(self, x: Tensor) -> Tensor:
        """Return the triggered copy of ``x`` (batch or single image), clamped to [0, 1].

        The result has ``x``'s dtype; a trigger that produces NaN or infinite pixels raises
        :class:`~hardenkit.errors.DataError` (clamping would keep the NaN, and a NaN image
        would be silently counted as a class-0 prediction).
        """
        xb, single = _batchify(x)
        out = self._apply(xb)
        if not out.is_floating_point():
            raise DataError(
                f"trigger {self.kind!r} returned {out.dtype} pixels; expected float pixels "
                "in [0, 1].",
                hint="return x_triggered as a float tensor (e.g. out.float() / 255)",
            )
        if not bool(torch.isfinite(out).all()):
            raise DataError(
                f"trigger {self.describe().get('name', self.kind)!r} produced NaN or infinite "
                "pixels.",
                hint="check the trigger's pattern/mask tensors and its arithmetic",
            )
        out = out.to(xb.dtype).clamp(0.0, 1.0)
        return out.squeeze(0) if single else out

    @abstractmethod
    def _apply(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-serialisable scalar parameters."""

    @abstractmethod
    def tensors(self) -> dict[str, Tensor]:
        """Named tensors that define the trigger."""

    @classmethod
    @abstractmethod
    def from_state(cls, params: dict[str, Any], tensors: dict[str, Tensor]) -> Trigger:
        """Rebuild from :meth:`params` and :meth:`tensors`."""

    def describe(self) -> dict[str, Any]:
        """A JSON summary (kind + parameters + tensor shapes) for reports."""
        return {
            "kind": self.kind,
            **self.params(),
            "tensors": {k: list(v.shape) for k, v in self.tensors().items()},
        }

    def save(self, path: str | Path) -> Path:
        """Write the trigger as safetensors (tensors + JSON metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        meta = {"kind": self.kind, "params": json.dumps(self.params())}
        save_file(tensors, str(path), metadata=meta)
        return path

    @staticmethod
    def load(path: str | Path) -> Trigger:
        """Load a trigger written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(f"Trigger file {str(path)!r} does not exist.")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            tensors = dict(load_file(str(path)))
        except Exception as exc:
            raise DataError(
                f"{str(path)!r} is not a readable trigger file: {exc}",
                hint="save triggers with Trigger.save()",
            ) from exc
        if "kind" not in meta:
            raise DataError(f"{str(path)!r} is not a hardenkit trigger file (no 'kind').")
        cls = TRIGGERS.get(meta["kind"])
        try:
            params = json.loads(meta.get("params", "{}"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{str(path)!r} has corrupt trigger parameters: {exc}") from exc
        return cls.from_state(params, tensors)


class PatchTrigger(Trigger):
    """Paste ``pattern`` (C×h×w, [0, 1]) at ``location``; an optional ``mask`` (h×w) blends it."""

    kind = "patch"

    def __init__(
        self,
        pattern: Tensor,
        location: Location | tuple[int, int] = "bottom-right",
        mask: Tensor | None = None,
        margin: int = 0,
    ) -> None:
        if pattern.ndim == 2:
            pattern = pattern.unsqueeze(0)
        if pattern.ndim != 3:
            raise ConfigError(f"patch pattern must be (C, h, w), got {tuple(pattern.shape)}.")
        if float(pattern.min()) < 0 or float(pattern.max()) > 1:
            raise ConfigError("patch pattern values must lie in [0, 1].")
        if mask is not None and tuple(mask.shape) != tuple(pattern.shape[-2:]):
            raise ConfigError("patch mask must be (h, w) matching the pattern.")
        if margin < 0:
            raise ConfigError(f"patch margin must be >= 0, got {margin}.")
        if isinstance(location, tuple):
            if len(location) != 2 or min(location) < 0:
                raise ConfigError(f"patch location must be (row, col) >= 0, got {location}.")
        elif location not in _LOCATIONS:
            raise ConfigError(
                f"unknown patch location {location!r}.", hint=f"use one of {_LOCATIONS}"
            )
        self.pattern = pattern.detach().float()
        self.mask = None if mask is None else mask.detach().float().clamp(0, 1)
        self.location = location
        self.margin = margin

    @classmethod
    def square(
        cls,
        size: int = 3,
        *,
        location: Location | tuple[int, int] = "bottom-right",
        pattern: Literal["white", "black", "checkerboard", "random"] = "white",
        channels: int = 3,
        seed: int = 0,
        margin: int = 0,
    ) -> PatchTrigger:
        """A ``size``×``size`` patch: white (BadNets default), black, checkerboard or random."""
        if size < 1:
            raise ConfigError(f"patch size must be >= 1, got {size}.")
        if pattern == "white":
            p = torch.ones(channels, size, size)
        elif pattern == "black":
            p = torch.zeros(channels, size, size)
        elif pattern == "checkerboard":
            ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
            p = ((ii + jj) % 2 == 0).float().expand(channels, size, size).clone()
        elif pattern == "random":
            p = torch.rand(channels, size, size, generator=torch.Generator().manual_seed(seed))
        else:
            raise ConfigError(f"unknown patch pattern {pattern!r}.")
        return cls(p, location, margin=margin)

    def _origin(self, h: int, w: int) -> tuple[int, int]:
        ph, pw = self.pattern.shape[-2:]
        if ph > h or pw > w:
            raise DataError(f"patch {ph}×{pw} does not fit images of {h}×{w}.")
        m = self.margin
        if isinstance(self.location, tuple):
            r, c = self.location
            if not (0 <= r <= h - ph and 0 <= c <= w - pw):
                raise DataError(f"patch at {self.location} does not fit images of {h}×{w}.")
            return r, c
        table = {
            "bottom-right": (h - ph - m, w - pw - m),
            "bottom-left": (h - ph - m, m),
            "top-left": (m, m),
            "top-right": (m, w - pw - m),
            "center": ((h - ph) // 2, (w - pw) // 2),
        }
        r, c = table[self.location]
        if not (0 <= r <= h - ph and 0 <= c <= w - pw):
            raise DataError(
                f"patch {ph}×{pw} with margin {m} does not fit images of {h}×{w}.",
                hint="use a smaller margin or patch",
            )
        return r, c

    def _apply(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        r, c = self._origin(h, w)
        ph, pw = self.pattern.shape[-2:]
        _check_channels(self.pattern.shape[0], x)
        out = x.clone()
        pat = self.pattern.to(x.device, x.dtype)
        if pat.shape[0] == 1 and x.shape[1] != 1:
            pat = pat.expand(x.shape[1], ph, pw)
        region = out[:, :, r : r + ph, c : c + pw]
        if self.mask is None:
            out[:, :, r : r + ph, c : c + pw] = pat
        else:
            m = self.mask.to(x.device, x.dtype)
            out[:, :, r : r + ph, c : c + pw] = (1 - m) * region + m * pat
        return out

    def params(self) -> dict[str, Any]:
        loc = list(self.location) if isinstance(self.location, tuple) else self.location
        return {"location": loc, "margin": self.margin}

    def tensors(self) -> dict[str, Tensor]:
        t = {"pattern": self.pattern}
        if self.mask is not None:
            t["mask"] = self.mask
        return t

    @classmethod
    def from_state(cls, params: dict[str, Any], tensors: dict[str, Tensor]) -> PatchTrigger:
        loc = params.get("location", "bottom-right")
        return cls(
            tensors["pattern"],
            tuple(loc) if isinstance(loc, list) else loc,
            tensors.get("mask"),
            int(params.get("margin", 0)),
        )


class BlendTrigger(Trigger):
    """``(1 - alpha) * x + alpha * pattern`` over the whole image (Blended attack)."""

    kind = "blend"

    def __init__(self, pattern: Tensor, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ConfigError(f"blend alpha must be in (0, 1], got {alpha}.")
        if pattern.ndim != 3:
            raise ConfigError(f"blend pattern must be (C, H, W), got {tuple(pattern.shape)}.")
        self.pattern = pattern.detach().float().clamp(0, 1)
        self.alpha = float(alpha)

    @classmethod
    def random_noise(
        cls, alpha: float = 0.2, *, size: int = 32, channels: int = 3, seed: int = 0
    ) -> BlendTrigger:
        """A seeded uniform-noise pattern (the Blended paper's random-pattern variant)."""
        g = torch.Generator().manual_seed(seed)
        return cls(torch.rand(channels, size, size, generator=g), alpha)

    def _apply(self, x: Tensor) -> Tensor:
        p = _fit(self.pattern, x)
        return (1 - self.alpha) * x + self.alpha * p

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def tensors(self) -> dict[str, Tensor]:
        return {"pattern": self.pattern}

    @classmethod
    def from_state(cls, params: dict[str, Any], tensors: dict[str, Tensor]) -> BlendTrigger:
        return cls(tensors["pattern"], float(params["alpha"]))


class MaskPatternTrigger(Trigger):
    """``(1 - mask) * x + mask * pattern`` with mask (H×W) and pattern (C×H×W) in [0, 1].

    This is the form Neural Cleanse inverts; ``mask_l1`` is its size measure.
    """

    kind = "mask-pattern"

    def __init__(self, mask: Tensor, pattern: Tensor) -> None:
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.ndim != 2 or pattern.ndim != 3 or tuple(pattern.shape[-2:]) != tuple(mask.shape):
            raise ConfigError(
                f"mask must be (H, W) and pattern (C, H, W) of the same size, got "
                f"{tuple(mask.shape)} and {tuple(pattern.shape)}."
            )
        self.mask = mask.detach().float().clamp(0, 1)
        self.pattern = pattern.detach().float().clamp(0, 1)

    @property
    def mask_l1(self) -> float:
        return float(self.mask.sum())

    def _apply(self, x: Tensor) -> Tensor:
        m = _fit(self.mask.unsqueeze(0), x)[:1]
        p = _fit(self.pattern, x)
        return (1 - m) * x + m * p

    def params(self) -> dict[str, Any]:
        return {"mask_l1": self.mask_l1}

    def tensors(self) -> dict[str, Tensor]:
        return {"mask": self.mask, "pattern": self.pattern}

    @classmethod
    def from_state(cls, params: dict[str, Any], tensors: dict[str, Tensor]) -> MaskPatternTrigger:
        return cls(tensors["mask"], tensors["pattern"])


class AdditiveTrigger(Trigger):
    """``clamp(x + delta)`` with a fixed signal ``delta`` (C×H×W, values in [-1, 1])."""

    kind = "additive"

    def __init__(self, delta: Tensor, name: str = "additive") -> None:
        if delta.ndim != 3:
            raise ConfigError(f"additive delta must be (C, H, W), got {tuple(delta.shape)}.")
        self.delta = delta.detach().float()
        self.name = name

    @classmethod
    def sig(
        cls,
        delta: float = 40 / 255,
        frequency: float = 6,
        *,
        size: int = 32,
        channels: int = 3,
    ) -> AdditiveTrigger:
        """SIG's horizontal sinusoid ``v(i, j) = delta * sin(2π j f / W``).

        BackdoorBench's defaults: delta 40/255, f 6.
        """
        j = torch.arange(size, dtype=torch.float32)
        row = delta * torch.sin(2 * math.pi * j * frequency / size)
        return cls(row.expand(channels, size, size).clone(), name="sig")

    @classmethod
    def frequency(
        cls,
        magnitude: float = 30 / 255,
        positions: tuple[tuple[int, int], ...] = ((15, 15), (31, 31)),
        *,
        window: int = 32,
        size: int = 32,
        channels: int = 3,
    ) -> AdditiveTrigger:
        """FTrojan's frequency-domain trigger (Wang et al., ECCV 2022) as a fixed signal.

        The image is cut into ``window`` × ``window`` blocks; in each block ``magnitude`` is
        added to the orthonormal 2-D DCT-II coefficients at ``positions`` of the U and V planes
        (YUV, BT.601; the only plane of a one-channel image). The DCT is linear, so the trigger
        is one additive pattern: with the published CIFAR-10 setting (magnitude 30/255,
        positions (15, 15) and (31, 31), window 32) at most about 6.5/255 per pixel.

        Example:
            >>> t = AdditiveTrigger.frequency()
            >>> round(float(t.delta.abs().max()) * 255, 1)
            6.5
        """
        if window < 1 or size % window:
            raise ConfigError(
                f"the frequency trigger's window ({window}) must divide the image size ({size}).",
                hint="pick a window that divides the image size (FTrojan uses 32 on CIFAR-10)",
            )
        bad = [p for p in positions if not all(0 <= v < window for v in p)]
        if not positions or bad:
            raise ConfigError(
                f"frequency positions must be (row, column) pairs in [0, {window}), got "
                f"{list(positions)}.",
                hint="FTrojan's CIFAR-10 positions are (15, 15) and (31, 31) in a 32-pixel window",
            )
        k = torch.arange(window, dtype=torch.float64)
        # the orthonormal DCT-II matrix: row u is the u-th cosine basis vector
        dct = torch.cos(math.pi * (k[None, :] + 0.5) * k[:, None] / window)
        dct = dct * math.sqrt(2 / window)
        dct[0] /= math.sqrt(2)
        block = torch.zeros(window, window, dtype=torch.float64)
        for u, v in positions:
            block += torch.outer(dct[u], dct[v])
        plane = (magnitude * block).repeat(size // window, size // window).float()
        if channels == 3:  # YUV -> RGB with Y unchanged and U = V = plane
            weights = torch.tensor([1.13983, -0.39465 - 0.58060, 2.03211])
            delta = weights.view(3, 1, 1) * plane
        elif channels == 1:
            delta = plane.unsqueeze(0)
        else:
            raise ConfigError(f"the frequency trigger takes 1 or 3 channels, got {channels}.")
        return cls(delta, name="ftrojan")

    def _apply(self, x: Tensor) -> Tensor:
        return x + _fit(self.delta, x)

    def params(self) -> dict[str, Any]:
        return {"name": self.name}

    def tensors(self) -> dict[str, Tensor]:
        return {"delta": self.delta}

    @classmethod
    def from_state(cls, params: dict[str, Any], tensors: dict[str, Tensor]) -> AdditiveTrigger:
        return cls(tensors["delta"], str(params.get("name", "additive")))


_FS_BELOW = (3 / 16, 5 / 16, 1 / 16)
"""Floyd–Steinberg's shares of a pixel's error for the row below (left, under, right); the
remaining 7/16 goes to the next pixel on the right."""


class QuantizeTrigger(Trigger):
    """Every channel reduced to ``levels`` values (BppAttack's colour-depth trigger).

    With ``dither`` (BppAttack's default) each pixel's rounding error is diffused to its
    unprocessed neighbours (Floyd–Steinberg, raster order), so the image keeps its local
    colour and the change differs from image to image; without it every value is rounded.
    Dithering runs one step per pixel position (batched over images and channels): cheap at
    32×32, slow for large images.

    Example:
        >>> import torch
        >>> x = QuantizeTrigger(levels=8)(torch.full((1, 3, 32, 32), 0.3))
        >>> bool(((x * 7).round() == x * 7).all()), round(float(x.mean()), 2)
        (True, 0.3)
    """

    kind = "quantize"

    def __init__(self, levels: int = 8, dither: bool = True) -> None:
        if not 2 <= levels <= 256:
            raise ConfigError(
                f"quantize levels must be in [2, 256], got {levels}.",
                hint="BppAttack uses 8 levels per channel on CIFAR-10",
            )
        self.levels = int(levels)
        self.dither = bool(dither)

    def _round(self, v: Tensor) -> Tensor:
        q = self.levels - 1
        return torch.round(v.clamp(0, 1) * q) / q

    def _apply(self, x: Tensor) -> Tensor:
        if not self.dither:
            return self._round(x)
        h, w = x.shape[-2:]
        # one padding column either side and a spare row take the edges' diffused error
        buf = F.pad(x.float(), (1, 1, 0, 1))
        out = torch.empty_like(x, dtype=buf.dtype)
        below = torch.tensor(_FS_BELOW, device=x.device, dtype=buf.dtype)
        for i in range(h):
            for j in range(w):
                v = buf[:, :, i, j + 1]
                r = self._round(v)
                out[:, :, i, j] = r
                err = v - r
                buf[:, :, i, j + 2] += err * (7 / 16)
                buf[:, :, i + 1, j : j + 3] += err.unsqueeze(-1) * below
        return out.to(x.dtype)

    def params(self) -> dict[str, Any]:
        return {"levels": self.levels, "dither": self.dither}

    def tensors(self) -> dict[str, Tensor]:
        return {}

    @classmethod
    def from_state(cls, params: dict[str, Any], tensors: dict[str, Tensor]) -> QuantizeTrigger:
        return cls(int(params.get("levels", 8)), bool(params.get("dither", True)))


class WarpTrigger(Trigger):
    """WaNet's imperceptible warp: a fixed smooth flow field applied with ``grid_sample``.

    ``noise_grid`` is the upsampled (H×W×2) random field; the warp is
    ``identity + strength * noise_grid / H`` clamped to [-1, 1].
    """

    kind = "warp"

    def __init__(self, noise_grid: Tensor, strength: float = 0.5, k: int = 4) -> None:
        if noise_grid.ndim != 3 or noise_grid.shape[-1] != 2:
            raise ConfigError(f"noise_grid must be (H, W, 2), got {tuple(noise_grid.shape)}.")
        self.noise_grid = noise_grid.detach().float()
        self.strength = float(strength)
        self.k = int(k)

    @classmethod
    def random(
        cls, k: int = 4, strength: float = 0.5, *, size: int = 32, seed: int = 0
    ) -> WarpTrigger:
        """WaNet's construction: k×k uniform field, mean-|·| normalised, bicubic upsampled."""
        if k < 2:
            raise ConfigError(f"WaNet grid k must be >= 2, got {k}.")
        g = torch.Generator().manual_seed(seed)
        ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        grid = F.interpolate(ins, size=size, mode="bicubic", align_corners=True)
        return cls(grid.permute(0, 2, 3, 1)[0], strength, k)

    def grid(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The (1, H, W, 2) sampling grid of the warp."""
        ng = self.noise_grid.to(device, dtype)
        if ng.shape[:2] != (h, w):
            ng = F.interpolate(
                ng.permute(2, 0, 1).unsqueeze(0), size=(h, w), mode="bicubic", align_corners=True
            )[0].permute(1, 2, 0)
        ys = torch.linspace(-1, 1, h, device=device, dtype=dtype)
        xs = torch.linspace(-1, 1, w, device=device, dtype=dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack((gx, gy), dim=-1)
        return (identity + self.strength * ng / h).clamp(-1, 1).unsqueeze(0)

    def _apply(self, x: Tensor) -> Tensor:
        grid = self.grid(x.shape[-2], x.shape[-1], x.device, x.dtype)
        return F.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1), align_corners=True)

    def noise(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """WaNet's *noise mode*: the warp plus a random per-image perturbation (label kept)."""
        xb, single = _batchify(x)
        n, _, h, w = xb.shape
        grid = self.grid(h, w, xb.device, xb.dtype).expand(n, -1, -1, -1)
        rnd = torch.rand(n, h, w, 2, generator=generator).to(xb.device, xb.dtype) * 2 - 1
        out = F.grid_sample(xb, (grid + rnd / h).clamp(-1, 1), align_corners=True).clamp(0, 1)
        return out.squeeze(0) if single else out

    def params(self) -> dict[str, Any]:
        return {"strength": self.strength, "k": self.k}

    def tensors(self) -> dict[str, Tensor]:
        return {"noise_grid": self.noise_grid}

    @classmethod
    def from_state(cls, params: dict[str, Any], tensors: dict[str, Tensor]) -> WarpTrigger:
        return cls(tensors["noise_grid"], float(params["strength"]), int(params.get("k", 4)))


class AlternatingTrigger(Trigger):
    """Several triggers taking turns over a batch: image ``i`` gets ``parts[i mod n]``.

    One label can have several candidate triggers (Neural Cleanse's mask inversion and the
    ``warp`` detector's flow field); a repair that stamps clean images with their own label
    (``nc-unlearn``, ``mcl``) unlearns all of them at once when given this trigger. Its attack
    success rate is the mean of the parts' over the batch.

    >>> import torch
    >>> t = AlternatingTrigger([PatchTrigger.square(3), BlendTrigger.random_noise(alpha=0.2)])
    >>> x = t(torch.zeros(4, 3, 32, 32))
    >>> float(x[0, :, -3:, -3:].min()), float(x[1, :, :3, :3].max()) > 0
    (1.0, True)
    >>> Trigger.load(t.save(__import__("tempfile").mkdtemp() + "/t.safetensors")).kind
    'alternating'
    """

    kind = "alternating"

    def __init__(self, parts: list[Trigger]) -> None:
        if len(parts) < 1 or not all(isinstance(p, Trigger) for p in parts):
            raise ConfigError("AlternatingTrigger needs at least one Trigger.")
        if any(isinstance(p, AlternatingTrigger) for p in parts):
            raise ConfigError("AlternatingTrigger parts cannot themselves alternate.")
        self.parts = list(parts)

    def _apply(self, x: Tensor) -> Tensor:
        n = len(self.parts)
        out = x.clone()
        for i, part in enumerate(self.parts):
            if i < len(x):
                out[i::n] = part.apply(x[i::n])
        return out

    def params(self) -> dict[str, Any]:
        return {"parts": [{"kind": p.kind, "params": p.params()} for p in self.parts]}

    def tensors(self) -> dict[str, Tensor]:
        return {f"{i}.{k}": v for i, p in enumerate(self.parts) for k, v in p.tensors().items()}

    @classmethod
    def from_state(cls, params: dict[str, Any], tensors: dict[str, Tensor]) -> AlternatingTrigger:
        parts: list[Trigger] = []
        for i, spec in enumerate(params["parts"]):
            own = {k.removeprefix(f"{i}."): v for k, v in tensors.items() if k.startswith(f"{i}.")}
            parts.append(TRIGGERS.get(spec["kind"]).from_state(spec["params"], own))
        return cls(parts)


class CallableTrigger(Trigger):
    """Wraps any ``fn(x) -> x_triggered`` on pixel batches (cannot be saved)."""

    kind = "callable"

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"trigger must be callable, got {type(fn).__name__}.")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", type(fn).__name__)

    def _apply(self, x: Tensor) -> Tensor:
        out = self.fn(x)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            raise DataError(
                f"trigger callable {self.name!r} must return a tensor of shape {tuple(x.shape)}."
            )
        return out

    def params(self) -> dict[str, Any]:
        return {"name": self.name}

    def tensors(self) -> dict[str, Tensor]:
        return {}

    def save(self, path: str | Path) -> Path:
        raise ConfigError(
            f"CallableTrigger {self.name!r} wraps arbitrary code and cannot be saved.",
            hint="use a PatchTrigger/BlendTrigger/... or save your own function's parameters",
        )

    @classmethod
    def from_state(cls, params: dict[str, Any], tensors: dict[str, Tensor]) -> CallableTrigger:
        raise ConfigError("CallableTrigger cannot be loaded from a file.")


def as_trigger(trigger: Trigger | Callable[[Tensor], Tensor]) -> Trigger:
    """Accept a :class:`Trigger` or any callable on pixel batches."""
    if isinstance(trigger, Trigger):
        return trigger
    return CallableTrigger(trigger)


for _cls in (
    PatchTrigger,
    BlendTrigger,
    MaskPatternTrigger,
    AdditiveTrigger,
    WarpTrigger,
    QuantizeTrigger,
    AlternatingTrigger,
):
    TRIGGERS.register(_cls.kind, _cls)

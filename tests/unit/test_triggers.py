"""Unit tests for hardenkit.triggers: stamping math, geometry, serialisation, validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hardenkit.errors import ConfigError, DataError, RegistryError
from hardenkit.triggers import (
    TRIGGERS,
    AdditiveTrigger,
    BlendTrigger,
    CallableTrigger,
    MaskPatternTrigger,
    PatchTrigger,
    Trigger,
    WarpTrigger,
    as_trigger,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _changed_region(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) bounding box (inclusive) of changed pixels of a batch."""
    changed = (before != after).any(dim=(0, 1))
    rows, cols = torch.nonzero(changed, as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


# --------------------------------------------------------------------------------------
# PatchTrigger
# --------------------------------------------------------------------------------------


def test_square_patterns() -> None:
    white = PatchTrigger.square(3, pattern="white")
    black = PatchTrigger.square(3, pattern="black", channels=1)
    checker = PatchTrigger.square(4, pattern="checkerboard")
    assert torch.equal(white.pattern, torch.ones(3, 3, 3))
    assert torch.equal(black.pattern, torch.zeros(1, 3, 3))
    expected = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    for c in range(3):
        assert torch.equal(checker.pattern[c], expected)
    r0 = PatchTrigger.square(5, pattern="random", seed=0).pattern
    r0b = PatchTrigger.square(5, pattern="random", seed=0).pattern
    r1 = PatchTrigger.square(5, pattern="random", seed=1).pattern
    assert r0.shape == (3, 5, 5)
    assert torch.equal(r0, r0b)
    assert not torch.equal(r0, r1)
    assert float(r0.min()) >= 0
    assert float(r0.max()) <= 1
    assert len(torch.unique(r0)) > 10


@pytest.mark.parametrize(
    ("location", "margin", "origin"),
    [
        ("bottom-right", 0, (29, 29)),
        ("bottom-left", 0, (29, 0)),
        ("top-left", 0, (0, 0)),
        ("top-right", 0, (0, 29)),
        ("center", 0, (14, 14)),
        ((5, 7), 0, (5, 7)),
        ((29, 29), 0, (29, 29)),
        ("bottom-right", 2, (27, 27)),
        ("top-left", 2, (2, 2)),
        ("bottom-left", 1, (28, 1)),
        ("top-right", 1, (1, 28)),
        ("center", 3, (14, 14)),
    ],
)
def test_patch_location_and_only_patch_changes(
    location: str | tuple[int, int], margin: int, origin: tuple[int, int]
) -> None:
    t = PatchTrigger.square(3, location=location, margin=margin)  # type: ignore[arg-type]
    x = _rand(2, 3, 32, 32) * 0.5  # never 1.0, so every patch pixel changes
    out = t(x)
    r, c = origin
    assert _changed_region(x, out) == (r, c, r + 2, c + 2)
    assert bool((out[:, :, r : r + 3, c : c + 3] == 1).all())
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[r : r + 3, c : c + 3] = False
    assert torch.equal(out[:, :, outside], x[:, :, outside])


def test_patch_single_image_and_grey_pattern() -> None:
    t = PatchTrigger(torch.ones(2, 2), location="top-left")  # (h, w) pattern -> 1 channel
    assert t.pattern.shape == (1, 2, 2)
    img = torch.zeros(3, 8, 8)
    out = t(img)
    assert out.shape == (3, 8, 8)
    assert bool((out[:, :2, :2] == 1).all())
    assert float(out.sum()) == 12.0
    grey_batch = t(torch.zeros(4, 1, 8, 8))
    assert grey_batch.shape == (4, 1, 8, 8)


def test_patch_mask_blends() -> None:
    mask = torch.tensor([[1.0, 0.5], [0.0, 2.0]])  # clamped to [0, 1]
    t = PatchTrigger(torch.ones(3, 2, 2), location=(1, 1), mask=mask)
    x = torch.full((1, 3, 4, 4), 0.2)
    out = t(x)
    region = out[0, :, 1:3, 1:3]
    expected = torch.tensor([[1.0, 0.6], [0.2, 1.0]]).expand(3, 2, 2)
    assert torch.allclose(region, expected)
    assert float(t.mask.max()) == 1.0


@pytest.mark.parametrize(
    ("trigger", "shape"),
    [
        (PatchTrigger.square(40), (1, 3, 32, 32)),
        (PatchTrigger.square(3, location=(30, 0)), (1, 3, 32, 32)),
        (PatchTrigger.square(5), (1, 3, 4, 8)),
    ],
    ids=["too-big", "tuple-past-edge", "too-tall"],
)
def test_patch_that_does_not_fit(trigger: PatchTrigger, shape: tuple[int, ...]) -> None:
    with pytest.raises(DataError, match="does not fit"):
        trigger(torch.zeros(shape))


def test_patch_negative_tuple_location_rejected_at_construction() -> None:
    with pytest.raises(ConfigError, match="location"):
        PatchTrigger.square(3, location=(0, -1))


def test_patch_constructor_validation() -> None:
    with pytest.raises(ConfigError, match=r"\(C, h, w\)"):
        PatchTrigger(torch.ones(1, 3, 3, 3))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        PatchTrigger(torch.full((3, 3, 3), 1.5))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        PatchTrigger(torch.full((3, 3, 3), -0.1))
    with pytest.raises(ConfigError, match="mask"):
        PatchTrigger(torch.ones(3, 3, 3), mask=torch.ones(2, 2))
    with pytest.raises(ConfigError, match="size"):
        PatchTrigger.square(0)
    with pytest.raises(ConfigError, match="unknown patch pattern"):
        PatchTrigger.square(3, pattern="stripes")  # type: ignore[arg-type]


def test_patch_unknown_location_rejected_by_constructor() -> None:
    with pytest.raises(ConfigError, match="location"):
        PatchTrigger(torch.ones(3, 3, 3), location="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("margin", [40, 30, -1])
def test_patch_margin_that_does_not_fit(margin: int) -> None:
    if margin < 0:  # rejected when the trigger is built
        with pytest.raises(ConfigError, match="margin"):
            PatchTrigger.square(3, location="bottom-right", margin=margin)
        return
    t = PatchTrigger.square(3, location="bottom-right", margin=margin)
    with pytest.raises(DataError, match="does not fit"):
        t(torch.zeros(1, 3, 32, 32))


# --------------------------------------------------------------------------------------
# BlendTrigger / MaskPatternTrigger
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.5, 1.0])
def test_blend_math(alpha: float) -> None:
    pattern = _rand(3, 8, 8, seed=1)
    x = _rand(4, 3, 8, 8, seed=2)
    out = BlendTrigger(pattern, alpha)(x)
    assert torch.allclose(out, (1 - alpha) * x + alpha * pattern, atol=1e-6)
    if alpha == 1.0:
        assert torch.allclose(out, pattern.expand_as(out))


def test_blend_pattern_is_resized_and_broadcast() -> None:
    t = BlendTrigger.random_noise(alpha=0.3, size=32, seed=4)
    assert t.pattern.shape == (3, 32, 32)
    assert torch.equal(t.pattern, BlendTrigger.random_noise(alpha=0.3, size=32, seed=4).pattern)
    x = _rand(2, 3, 16, 16)
    out = t(x)
    assert out.shape == (2, 3, 16, 16)
    resized = F.interpolate(t.pattern[None], size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(out, 0.7 * x + 0.3 * resized, atol=1e-6)
    wide = t(_rand(1, 3, 20, 40))
    assert wide.shape == (1, 3, 20, 40)
    grey = BlendTrigger(torch.ones(1, 4, 4), 0.5)(torch.zeros(2, 3, 4, 4))
    assert torch.allclose(grey, torch.full((2, 3, 4, 4), 0.5))


def test_blend_validation() -> None:
    for alpha in (0.0, -0.2, 1.5):
        with pytest.raises(ConfigError, match="alpha"):
            BlendTrigger(torch.zeros(3, 4, 4), alpha)
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        BlendTrigger(torch.zeros(4, 4), 0.2)
    assert float(BlendTrigger(torch.full((3, 2, 2), 3.0)).pattern.max()) == 1.0


def test_mask_pattern_math_and_l1() -> None:
    mask = torch.zeros(8, 8)
    mask[2:4, 5:7] = 1.0
    mask[0, 0] = 0.25
    pattern = _rand(3, 8, 8, seed=5)
    t = MaskPatternTrigger(mask, pattern)
    assert t.mask_l1 == pytest.approx(4.25)
    assert t.params() == {"mask_l1": pytest.approx(4.25)}
    x = _rand(3, 3, 8, 8, seed=6)
    out = t(x)
    assert torch.allclose(out, (1 - mask) * x + mask * pattern, atol=1e-6)
    assert torch.equal(out[:, :, 6:, :], x[:, :, 6:, :])  # mask is 0 there
    assert torch.allclose(out[:, :, 2:4, 5:7], pattern[:, 2:4, 5:7].expand(3, 3, 2, 2))
    # a (1, H, W) mask is accepted; out-of-range values are clamped
    t2 = MaskPatternTrigger(torch.full((1, 8, 8), 2.0), pattern)
    assert t2.mask.shape == (8, 8)
    assert t2.mask_l1 == 64.0
    assert torch.allclose(t2(x), pattern.expand_as(x))
    assert t(_rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    ("mask", "pattern"),
    [
        (torch.ones(8, 8), torch.ones(3, 4, 4)),
        (torch.ones(2, 8, 8), torch.ones(3, 8, 8)),
        (torch.ones(8), torch.ones(3, 8, 8)),
        (torch.ones(8, 8), torch.ones(8, 8)),
    ],
)
def test_mask_pattern_validation(mask: torch.Tensor, pattern: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="same size"):
        MaskPatternTrigger(mask, pattern)


# --------------------------------------------------------------------------------------
# AdditiveTrigger
# --------------------------------------------------------------------------------------


def test_sig_values() -> None:
    delta, freq, size = 40 / 255, 6, 32
    t = AdditiveTrigger.sig(delta, freq, size=size, channels=3)
    assert t.name == "sig"
    assert t.delta.shape == (3, size, size)
    j = torch.arange(size, dtype=torch.float32)
    row = delta * torch.sin(2 * math.pi * j * freq / size)
    assert torch.allclose(t.delta, row.expand(3, size, size))
    assert float(t.delta.abs().max()) == pytest.approx(delta, rel=1e-3)
    x = torch.full((2, 3, size, size), 0.5)
    assert torch.allclose(t(x), 0.5 + row.expand(2, 3, size, size), atol=1e-6)


def test_additive_clamps_to_unit_range() -> None:
    t = AdditiveTrigger.sig(0.3, 2, size=16)
    ones, zeros = t(torch.ones(1, 3, 16, 16)), t(torch.zeros(1, 3, 16, 16))
    assert float(ones.max()) == 1.0
    assert float(zeros.min()) == 0.0
    assert torch.allclose(ones, (1 + t.delta).clamp(max=1).expand_as(ones))
    assert torch.allclose(zeros, t.delta.clamp(min=0).expand_as(zeros))
    assert bool((ones < 1).any())
    assert bool((zeros > 0).any())


def test_additive_validation_and_resize() -> None:
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        AdditiveTrigger(torch.zeros(8, 8))
    t = AdditiveTrigger(torch.full((3, 4, 4), 0.1), name="flat")
    assert torch.allclose(t(torch.zeros(1, 3, 9, 9)), torch.full((1, 3, 9, 9), 0.1))


# --------------------------------------------------------------------------------------
# WarpTrigger
# --------------------------------------------------------------------------------------


def test_warp_deterministic_for_seed() -> None:
    a, b, c = WarpTrigger.random(seed=3), WarpTrigger.random(seed=3), WarpTrigger.random(seed=4)
    assert a.noise_grid.shape == (32, 32, 2)
    assert torch.equal(a.noise_grid, b.noise_grid)
    assert not torch.equal(a.noise_grid, c.noise_grid)
    x = _rand(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    assert a.grid(32, 32, torch.device("cpu"), torch.float32).shape == (1, 32, 32, 2)


def test_warp_identity_for_tiny_strength() -> None:
    x = _rand(2, 3, 32, 32)
    out = WarpTrigger.random(strength=1e-6, seed=0)(x)
    assert torch.allclose(out, x, atol=1e-4)
    strong = WarpTrigger.random(strength=2.0, seed=0)(x)
    assert float((strong - x).abs().mean()) > 0.01


def test_warp_output_range_and_other_sizes() -> None:
    t = WarpTrigger.random(k=4, strength=3.0, seed=1)
    x = _rand(3, 3, 32, 32)
    out = t(x)
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0
    small = t(_rand(2, 3, 16, 24))
    assert small.shape == (2, 3, 16, 24)
    assert float(small.min()) >= 0.0
    assert float(small.max()) <= 1.0


def test_warp_noise_mode() -> None:
    t = WarpTrigger.random(strength=0.5, seed=0)
    x = _rand(2, 3, 32, 32)
    n1 = t.noise(x, generator=torch.Generator().manual_seed(0))
    n2 = t.noise(x, generator=torch.Generator().manual_seed(0))
    n3 = t.noise(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(n1, n2)
    assert not torch.equal(n1, n3)
    assert not torch.allclose(n1, t(x), atol=1e-4)
    assert float(n1.min()) >= 0.0
    assert float(n1.max()) <= 1.0
    single = t.noise(x[0])
    assert single.shape == (3, 32, 32)


def test_warp_validation() -> None:
    with pytest.raises(ConfigError, match="k must be >= 2"):
        WarpTrigger.random(k=1)
    with pytest.raises(ConfigError, match=r"\(H, W, 2\)"):
        WarpTrigger(torch.zeros(32, 32, 3))
    with pytest.raises(ConfigError, match=r"\(H, W, 2\)"):
        WarpTrigger(torch.zeros(32, 2))


# --------------------------------------------------------------------------------------
# serialisation
# --------------------------------------------------------------------------------------


def _serialisable() -> list[Trigger]:
    mask = torch.zeros(32, 32)
    mask[3:8, 3:8] = 0.7
    return [
        PatchTrigger.square(4, pattern="random", location="top-right", margin=1, seed=2),
        PatchTrigger.square(3, pattern="checkerboard", location=(4, 9)),
        PatchTrigger(_rand(3, 3, 3, seed=9), location="center", mask=_rand(3, 3, seed=8)),
        BlendTrigger.random_noise(alpha=0.15, seed=3),
        MaskPatternTrigger(mask, _rand(3, 32, 32, seed=4)),
        AdditiveTrigger.sig(),
        AdditiveTrigger(_rand(3, 32, 32, seed=5) - 0.5, name="custom"),
        WarpTrigger.random(k=6, strength=0.8, seed=7),
    ]


@pytest.mark.parametrize("trigger", _serialisable(), ids=lambda t: f"{t.kind}")
def test_save_load_round_trip(tmp_path: Path, trigger: Trigger) -> None:
    path = trigger.save(tmp_path / "sub" / "trigger.safetensors")
    assert path.is_file()
    loaded = Trigger.load(path)
    assert type(loaded) is type(trigger)
    assert loaded.params() == trigger.params()
    assert loaded.describe() == trigger.describe()
    for name, tensor in trigger.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
    x = _rand(4, 3, 32, 32, seed=11)
    assert torch.equal(loaded(x), trigger(x))


def test_describe() -> None:
    d = PatchTrigger.square(3, location=(1, 2)).describe()
    assert d == {
        "kind": "patch",
        "location": [1, 2],
        "margin": 0,
        "tensors": {"pattern": [3, 3, 3]},
    }
    w = WarpTrigger.random(k=5, strength=0.25).describe()
    assert w["kind"] == "warp"
    assert w["k"] == 5
    assert w["strength"] == 0.25
    assert w["tensors"] == {"noise_grid": [32, 32, 2]}


def test_registered_trigger_kinds() -> None:
    for cls in (PatchTrigger, BlendTrigger, MaskPatternTrigger, AdditiveTrigger, WarpTrigger):
        assert TRIGGERS.get(cls.kind) is cls
    assert "callable" not in TRIGGERS


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        Trigger.load(tmp_path / "missing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"pattern": torch.ones(3, 3, 3)}, str(plain))
    with pytest.raises(DataError, match="no 'kind'"):
        Trigger.load(plain)
    unknown = tmp_path / "unknown.safetensors"
    save_file({"pattern": torch.ones(3, 3, 3)}, str(unknown), metadata={"kind": "sparkle"})
    with pytest.raises(RegistryError, match="Unknown trigger 'sparkle'"):
        Trigger.load(unknown)


def test_load_garbage_file_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"definitely not a safetensors file")
    with pytest.raises(DataError):
        Trigger.load(path)


# --------------------------------------------------------------------------------------
# CallableTrigger / as_trigger / generic behaviour
# --------------------------------------------------------------------------------------


def _add_half(x: torch.Tensor) -> torch.Tensor:
    return x + 0.5


def test_callable_trigger_wraps_function(tmp_path: Path) -> None:
    t = CallableTrigger(_add_half)
    assert t.name == "_add_half"
    assert CallableTrigger(_add_half, name="shift").params() == {"name": "shift"}
    x = torch.full((2, 3, 4, 4), 0.25)
    out = t(x)
    assert torch.allclose(out, torch.full_like(x, 0.75))
    assert float(t(torch.full((3, 4, 4), 0.9)).max()) == 1.0  # clamped; CHW in, CHW out
    assert t(torch.zeros(3, 4, 4)).shape == (3, 4, 4)
    assert t.tensors() == {}
    with pytest.raises(ConfigError, match="cannot be saved"):
        t.save(tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()
    with pytest.raises(ConfigError):
        CallableTrigger.from_state({}, {})
    with pytest.raises(ConfigError, match="callable"):
        CallableTrigger(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fn",
    [lambda x: x[:, :1], lambda x: x.flatten(1), lambda x: x.numpy(), lambda x: None],
    ids=["fewer-channels", "flat", "numpy", "none"],
)
def test_callable_trigger_wrong_output(fn: Callable[[torch.Tensor], object]) -> None:
    t = CallableTrigger(fn)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="must return a tensor of shape"):
        t(torch.zeros(2, 3, 4, 4))


def test_as_trigger() -> None:
    patch = PatchTrigger.square(2)
    assert as_trigger(patch) is patch
    wrapped = as_trigger(_add_half)
    assert isinstance(wrapped, CallableTrigger)
    assert wrapped.fn is _add_half
    with pytest.raises(ConfigError):
        as_trigger("not callable")  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(32, 32), (1, 1, 3, 32, 32), (5,)])
def test_trigger_rejects_bad_input_rank(shape: tuple[int, ...]) -> None:
    with pytest.raises(DataError, match=r"\(N, C, H, W\) or \(C, H, W\)"):
        BlendTrigger.random_noise()(torch.zeros(shape))
    with pytest.raises(DataError):
        WarpTrigger.random().noise(torch.zeros(shape))


@pytest.mark.parametrize(
    "trigger", [*_serialisable(), CallableTrigger(_add_half)], ids=lambda t: t.kind
)
def test_inputs_not_modified_in_place(trigger: Trigger) -> None:
    x = _rand(2, 3, 32, 32, seed=12)
    before = x.clone()
    out = trigger(x)
    assert torch.equal(x, before)
    assert out.data_ptr() != x.data_ptr()
    single = x[0].clone()
    trigger(single)
    assert torch.equal(single, before[0])
    if isinstance(trigger, WarpTrigger):
        trigger.noise(x)
        assert torch.equal(x, before)


@pytest.mark.parametrize(
    "trigger",
    [
        PatchTrigger.square(3),
        BlendTrigger.random_noise(),
        AdditiveTrigger.sig(),
        MaskPatternTrigger(torch.full((32, 32), 0.1), torch.ones(3, 32, 32)),
    ],
    ids=lambda t: t.kind,
)
def test_channel_mismatch_is_rejected_or_preserves_shape(trigger: Trigger) -> None:
    x = torch.zeros(2, 1, 32, 32)
    try:
        out = trigger(x)
    except DataError:
        return
    assert out.shape == x.shape

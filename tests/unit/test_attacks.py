"""Unit tests for hardenkit.attacks: registry, configs, poison-index rules, saving.

Fast: poisoning runs on ``tiny_synthetic`` (4 classes, 160 train images) and the only
training is one epoch on it (module-scoped, shared by the save tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import torch

import hardenkit as hk
from hardenkit.attacks import (
    ATTACKS,
    SIG,
    Attack,
    AttackConfig,
    BackdooredModel,
    BadNets,
    BadNetsConfig,
    Blended,
    BlendedConfig,
    Bpp,
    BppConfig,
    FTrojan,
    FTrojanConfig,
    SIGConfig,
    WaNet,
    WaNetConfig,
    build_attack,
    make_backdoored_model,
)
from hardenkit.data import PoisonedDataset, SyntheticSplits
from hardenkit.errors import ConfigError, DataError, RegistryError
from hardenkit.io import load_model_weights
from hardenkit.triggers import (
    AdditiveTrigger,
    BlendTrigger,
    PatchTrigger,
    QuantizeTrigger,
    Trigger,
    WarpTrigger,
)

NAMES = ["badnets", "blended", "bpp", "ftrojan", "sig", "wanet"]
EXPECTED = {
    "badnets": (BadNets, BadNetsConfig, PatchTrigger, "patch"),
    "blended": (Blended, BlendedConfig, BlendTrigger, "blend"),
    "bpp": (Bpp, BppConfig, QuantizeTrigger, "quantize"),
    "ftrojan": (FTrojan, FTrojanConfig, AdditiveTrigger, "additive"),
    "sig": (SIG, SIGConfig, AdditiveTrigger, "additive"),
    "wanet": (WaNet, WaNetConfig, WarpTrigger, "warp"),
}


def _tiny_train_config(epochs: int = 1) -> hk.TrainConfig:
    return hk.TrainConfig(epochs=epochs, batch_size=32, lr=0.05, augment=False)


# ----------------------------------------------------------------------------- registry


def test_registry_holds_the_builtins() -> None:
    assert ATTACKS.names() == NAMES
    for name in NAMES:
        assert name in ATTACKS
        assert ATTACKS.get(name).name == name


@pytest.mark.parametrize("name", NAMES)
def test_build_attack_each_name(name: str) -> None:
    cls, cfg_cls, trig_cls, kind = EXPECTED[name]
    atk = build_attack(name)
    assert type(atk) is cls
    assert isinstance(atk, Attack)
    assert type(atk.config) is cfg_cls
    assert isinstance(atk.trigger, trig_cls)
    assert atk.trigger.kind == kind
    assert atk.clean_label is (name == "sig")
    # BackdoorBench defaults (BENCHMARKS.md "Shared definitions").
    assert atk.config.target == 0
    assert atk.config.mode == "all-to-one"
    assert atk.config.poison_rate == 0.1
    assert atk.target == 0
    # The trigger works on a pixel batch and keeps pixels in [0, 1].
    x = torch.rand(2, 3, 32, 32)
    out = atk.trigger(x)
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0
    assert not torch.equal(out, x)


def test_build_attack_name_is_case_insensitive() -> None:
    assert type(build_attack(" BadNets ")) is BadNets


def test_build_attack_config_forms() -> None:
    a = build_attack("badnets", poison_rate=0.05, patch_size=4)
    b = build_attack("badnets", {"poison_rate": 0.05, "patch_size": 4})
    c = build_attack("badnets", BadNetsConfig(poison_rate=0.05, patch_size=4))
    d = build_attack("badnets", BadNetsConfig(poison_rate=0.5), poison_rate=0.05, patch_size=4)
    e = build_attack("badnets", {"poison_rate": 0.5, "patch_size": 4}, poison_rate=0.05)
    for atk in (a, b, c, d, e):
        assert atk.config == BadNetsConfig(poison_rate=0.05, patch_size=4)
        assert tuple(atk.trigger.tensors()["pattern"].shape) == (3, 4, 4)


def test_build_attack_unknown_name_lists_names() -> None:
    with pytest.raises(RegistryError) as info:
        build_attack("trojannn")
    msg = str(info.value)
    assert "trojannn" in msg
    for name in NAMES:
        assert name in msg
    assert isinstance(info.value, KeyError)  # also a builtin KeyError


def test_wrong_config_class_is_rejected() -> None:
    with pytest.raises(ConfigError, match="BadNetsConfig"):
        BadNets(BlendedConfig())
    with pytest.raises(ConfigError):
        build_attack("sig", AttackConfig())
    with pytest.raises(ConfigError):
        BadNets(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("badnets", {"poison_rate": 0}),
        ("badnets", {"poison_rate": 1.5}),
        ("badnets", {"poison_rate": -0.1}),
        ("badnets", {"target": -1}),
        ("badnets", {"seed": -1}),
        ("badnets", {"mode": "one-to-one"}),
        ("badnets", {"image_size": 2}),
        ("badnets", {"channels": 0}),
        ("badnets", {"patch_size": 0}),
        ("badnets", {"location": "middle"}),
        ("badnets", {"pattern": "rainbow"}),
        ("badnets", {"margin": -1}),
        ("badnets", {"alpha": 0.2}),  # a Blended field: unknown keys are rejected
        ("blended", {"alpha": 0}),
        ("blended", {"alpha": 1.5}),
        ("blended", {"pattern_seed": -1}),
        ("wanet", {"k": 1}),
        ("wanet", {"s": 0}),
        ("wanet", {"cross_ratio": -1}),
        ("sig", {"delta": 0}),
        ("sig", {"delta": 1.5}),
        ("sig", {"frequency": 0}),
        ("bpp", {"levels": 1}),
        ("bpp", {"levels": 257}),
        ("ftrojan", {"magnitude": 0}),
        ("ftrojan", {"window": 0}),
    ],
)
def test_config_rejects_bad_values(name: str, bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        build_attack(name, bad)
    assert next(iter(bad)) in str(info.value)
    with pytest.raises(ValueError):  # ConfigError is also a ValueError
        build_attack(name, **bad)


def test_configs_are_frozen_and_with_updates_validates() -> None:
    cfg = BadNetsConfig()
    with pytest.raises(pydantic.ValidationError):  # frozen
        cfg.poison_rate = 0.5  # type: ignore[misc]
    assert cfg.with_updates(poison_rate=0.5).poison_rate == 0.5
    with pytest.raises(ConfigError):
        cfg.with_updates(poison_rate=2.0)


def test_sig_rejects_all_to_all() -> None:
    with pytest.raises(ConfigError, match="clean-label"):
        build_attack("sig", mode="all-to-all")
    with pytest.raises(ConfigError):
        SIG(SIGConfig(mode="all-to-all"))


@pytest.mark.parametrize("name", ["badnets", "blended", "wanet", "bpp", "ftrojan"])
def test_other_attacks_accept_all_to_all(name: str) -> None:
    assert build_attack(name, mode="all-to-all").config.mode == "all-to-all"


# ----------------------------------------------------------------------------- poisoning


@pytest.fixture(scope="module")
def tiny16() -> SyntheticSplits:
    return hk.make_synthetic_dataset(
        num_classes=4, train_per_class=10, test_per_class=2, image_size=16
    )


@pytest.mark.parametrize("name", NAMES)
def test_geometry_mismatch(name: str, tiny16: SyntheticSplits) -> None:
    atk = build_attack(name)  # built for 3×32×32
    with pytest.raises(DataError, match="16"):
        atk.poison(tiny16.train)
    # Configured for the right geometry it works.
    ok = build_attack(name, image_size=16)
    assert ok.poison(tiny16.train).images.shape == tiny16.train.images.shape


def test_channel_mismatch(tiny_synthetic: SyntheticSplits) -> None:
    with pytest.raises(DataError, match="channels"):
        build_attack("badnets", channels=1).poison(tiny_synthetic.train)


def test_poison_rate_too_small(tiny_synthetic: SyntheticSplits) -> None:
    n = len(tiny_synthetic.train)  # 160
    with pytest.raises(DataError, match="poisons no sample"):
        build_attack("badnets", poison_rate=0.003).poison(tiny_synthetic.train)  # 0.48 → 0
    assert len(build_attack("badnets", poison_rate=1 / n).poison(tiny_synthetic.train)
               .poison_indices) == 1  # fmt: skip


def test_target_outside_the_task(tiny_synthetic: SyntheticSplits) -> None:
    with pytest.raises(ConfigError, match="target 4"):
        build_attack("badnets", target=4).poison(tiny_synthetic.train)
    with pytest.raises((ConfigError, DataError)):
        build_attack("sig", target=9).poison(tiny_synthetic.train)


@pytest.mark.parametrize("name", NAMES)
def test_poison_indices_deterministic(name: str, tiny_synthetic: SyntheticSplits) -> None:
    train = tiny_synthetic.train
    a = build_attack(name, seed=3).poison(train)
    b = build_attack(name, seed=3).poison(train)
    assert torch.equal(a.poison_indices, b.poison_indices)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.noise_indices, b.noise_indices)
    c = build_attack(name, seed=4).poison(train)
    assert not torch.equal(a.poison_indices, c.poison_indices)
    # select_poison_indices alone is the same pure function of (labels, seed).
    atk = build_attack(name, seed=3)
    assert torch.equal(atk.select_poison_indices(train.labels, 4), a.poison_indices)


@pytest.mark.parametrize("name", NAMES)
def test_triggers_are_deterministic(name: str) -> None:
    t1, t2 = build_attack(name).trigger, build_attack(name).trigger
    for key, tensor in t1.tensors().items():
        assert torch.equal(tensor, t2.tensors()[key])


@pytest.mark.parametrize("name", ["badnets", "blended", "wanet", "bpp", "ftrojan"])
@pytest.mark.parametrize("target", [0, 2])
def test_all_to_one_poison_rule(name: str, target: int, tiny_synthetic: SyntheticSplits) -> None:
    train = tiny_synthetic.train
    before_images, before_labels = train.images.clone(), train.labels.clone()
    p = build_attack(name, target=target, poison_rate=0.1).poison(train)
    assert isinstance(p, PoisonedDataset)
    idx = p.poison_indices
    assert len(idx) == round(0.1 * len(train)) == 16
    assert len(torch.unique(idx)) == len(idx)
    assert torch.equal(idx, torch.sort(idx).values)
    assert bool((train.labels[idx] != target).all())  # only non-target images
    assert bool((p.labels[idx] == target).all())
    rest = ~p.poison_mask
    assert torch.equal(p.labels[rest], train.labels[rest])
    assert torch.equal(p.original_labels, train.labels)
    # The clean base is untouched.
    assert torch.equal(train.images, before_images)
    assert torch.equal(train.labels, before_labels)
    assert p.base is train
    # Poisoned images changed; untouched clean images are identical.
    clean = p.clean_indices
    assert torch.equal(p.images[clean], train.images[clean])
    assert bool((p.images[idx] != train.images[idx]).flatten(1).any(1).all())


def test_all_to_all_poison_rule(tiny_synthetic: SyntheticSplits) -> None:
    train = tiny_synthetic.train
    p = build_attack("badnets", mode="all-to-all", poison_rate=0.25).poison(train)
    idx = p.poison_indices
    assert len(idx) == 40
    assert torch.equal(p.labels[idx], (train.labels[idx] + 1) % 4)
    # Any class may be poisoned in all-to-all mode (the pool is the whole set).
    assert len(torch.unique(train.labels[idx])) > 1


def test_sig_poisons_only_target_class_and_keeps_labels(tiny_synthetic: SyntheticSplits) -> None:
    train = tiny_synthetic.train
    p = build_attack("sig", target=1, poison_rate=0.1).poison(train)
    idx = p.poison_indices
    assert len(idx) == 16
    assert bool((train.labels[idx] == 1).all())
    assert torch.equal(p.labels, train.labels)  # clean-label: no label changes
    # The count is capped by the number of target-class images (40 here).
    capped = build_attack("sig", target=1, poison_rate=0.5).poison(train)
    assert len(capped.poison_indices) == 40
    assert torch.equal(capped.poison_indices, torch.nonzero(train.labels == 1).flatten())


def test_wanet_noise_mode(tiny_synthetic: SyntheticSplits) -> None:
    train = tiny_synthetic.train
    p = build_attack("wanet", poison_rate=0.1, cross_ratio=2.0).poison(train)
    idx, noise = p.poison_indices, p.noise_indices
    assert len(idx) == 16
    assert len(noise) == 32
    assert not bool(torch.isin(noise, idx).any())
    assert torch.equal(p.labels[noise], train.labels[noise])  # noise samples keep labels
    assert len(p.clean_indices) == len(train) - 48
    off = build_attack("wanet", noise_mode=False).poison(train)
    assert len(off.noise_indices) == 0
    assert len(build_attack("wanet", cross_ratio=0.0).poison(train).noise_indices) == 0


def test_badnets_stamps_the_patch(tiny_synthetic: SyntheticSplits) -> None:
    p = build_attack("badnets", patch_size=3).poison(tiny_synthetic.train)
    idx = p.poison_indices
    assert bool((p.images[idx][:, :, -3:, -3:] == 255).all())
    assert torch.equal(p.images[idx][:, :, :-3, :], tiny_synthetic.train.images[idx][:, :, :-3, :])


def _dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix, from its definition (row u: the u-th cosine)."""
    i = torch.arange(n, dtype=torch.float64)
    m = torch.stack([torch.cos(torch.pi * (2 * i + 1) * u / (2 * n)) for u in range(n)])
    m[0] *= (1 / n) ** 0.5
    m[1:] *= (2 / n) ** 0.5
    return m


def test_ftrojan_moves_only_its_dct_coefficients_of_u_and_v() -> None:
    """FTrojan's trigger is +magnitude at its DCT positions of U and V in every block, and
    nothing else: Y and every other coefficient stay."""
    atk = build_attack("ftrojan", image_size=64)  # two 32-pixel blocks each way
    delta = atk.trigger.tensors()["delta"].double()
    assert tuple(delta.shape) == (3, 64, 64)
    rgb_to_yuv = torch.tensor(
        [[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]],
        dtype=torch.float64,
    )
    yuv = torch.einsum("kc,chw->khw", rgb_to_yuv, delta) * 255
    d = _dct_matrix(32)
    for bi in range(2):
        for bj in range(2):
            block = yuv[:, 32 * bi : 32 * bi + 32, 32 * bj : 32 * bj + 32]
            coef = d @ block @ d.T
            assert float(coef[0].abs().max()) < 0.05  # Y: unchanged
            for u, v in ((15, 15), (31, 31)):  # the published positions, the default at 32
                assert torch.allclose(
                    coef[1:, u, v], torch.full((2,), 30.0, dtype=coef.dtype), atol=0.1
                )
                coef[1:, u, v] = 0
            assert float(coef.abs().max()) < 0.1
    # invisible: a few levels of 255 per pixel; a grey image gets exactly the signal
    assert 2 / 255 < float(delta.abs().max()) < 8 / 255
    grey = torch.full((1, 3, 64, 64), 0.5)
    assert torch.allclose(atk.trigger(grey) - grey, delta.float().unsqueeze(0), atol=1e-6)
    one = build_attack("ftrojan", channels=1).trigger.tensors()["delta"]
    assert tuple(one.shape) == (1, 32, 32)
    # other sizes: one window over the image, its middle and highest diagonal frequencies
    mnist = build_attack("ftrojan", image_size=28, channels=1).trigger.tensors()["delta"][0]
    coef = _dct_matrix(28) @ mnist.double() @ _dct_matrix(28).T * 255
    assert torch.allclose(coef[[13, 27], [13, 27]], torch.full((2,), 30.0, dtype=coef.dtype))
    with pytest.raises(ConfigError, match="window"):
        build_attack("ftrojan", image_size=48, window=32)  # 32 does not divide 48
    for window in (0, -4):  # the trigger itself, not only the attack's config, says so
        with pytest.raises(ConfigError, match="window"):
            AdditiveTrigger.frequency(0.1, window=window)
    with pytest.raises(ConfigError, match="positions"):
        build_attack("ftrojan", positions=((15, 32),))
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        build_attack("ftrojan", channels=4)


def test_bpp_quantises_with_dithering(tmp_path: Path) -> None:
    """BppAttack's images take ``levels`` values per channel; dithering keeps each region's
    mean colour (plain rounding does not) and changes every image differently."""
    x = torch.rand(6, 3, 32, 32)
    t = build_attack("bpp").trigger
    assert isinstance(t, QuantizeTrigger)
    out = t(x)
    assert torch.allclose(out * 7, (out * 7).round(), atol=1e-5)
    rounded = QuantizeTrigger(8, dither=False)(x)
    assert torch.equal(rounded, (x * 7).round() / 7)
    assert not torch.equal(out, rounded)
    flat = torch.full((1, 3, 32, 32), 0.3)  # between the levels 2/7 and 3/7
    assert abs(float(t(flat).mean()) - 0.3) < 0.005
    assert abs(float(QuantizeTrigger(8, dither=False)(flat).mean()) - 0.3) > 0.01
    # the error is diffused to the right and below only: the first pixel is plainly rounded
    assert torch.equal(out[:, :, 0, 0], rounded[:, :, 0, 0])
    # a parameter-only trigger round-trips through its file
    back = Trigger.load(QuantizeTrigger(4, dither=False).save(tmp_path / "q.safetensors"))
    assert isinstance(back, QuantizeTrigger)
    assert (back.levels, back.dither) == (4, False)
    with pytest.raises(ConfigError, match="levels"):
        QuantizeTrigger(1)


@pytest.mark.parametrize("name", ["badnets", "blended", "wanet", "bpp", "ftrojan"])
def test_target_labels_and_mapping(name: str) -> None:
    labels = torch.tensor([0, 1, 2, 3, 3])
    one = build_attack(name, target=2)
    assert torch.equal(one.target_labels(labels, 4), torch.full((5,), 2))
    assert one.target_mapping(4) == 2
    assert one.target == 2
    a2a = build_attack(name, mode="all-to-all")
    assert torch.equal(a2a.target_labels(labels, 4), torch.tensor([1, 2, 3, 0, 0]))
    assert a2a.target_mapping(4) == {0: 1, 1: 2, 2: 3, 3: 0}
    assert a2a.target_mapping(2) == {0: 1, 1: 0}


@pytest.mark.parametrize("name", NAMES)
def test_describe_is_json_serialisable(name: str) -> None:
    atk = build_attack(name, target=1, poison_rate=0.05)
    d = atk.describe()
    back = json.loads(json.dumps(d))
    assert back["attack"] == name
    assert back["clean_label"] is (name == "sig")
    assert back["target"] == 1
    assert back["poison_rate"] == 0.05
    assert back["mode"] == "all-to-one"
    assert back["trigger"]["kind"] == EXPECTED[name][3]
    assert isinstance(back["trigger"]["tensors"], dict)


# ----------------------------------------------------------------------------- factory / save


@pytest.fixture(scope="module")
def tiny_bd(tiny_synthetic: SyntheticSplits) -> BackdooredModel:
    return make_backdoored_model(
        "badnets",
        tiny_synthetic.train,
        test=tiny_synthetic.test,
        train_config=_tiny_train_config(),
        runtime={"seed": 0, "device": "cpu", "progress": "off"},
    )


def test_make_backdoored_model_basics(
    tiny_bd: BackdooredModel, tiny_synthetic: SyntheticSplits
) -> None:
    assert tiny_bd.arch == "small-cnn"
    assert sorted(tiny_bd.metrics) == ["asr", "ba", "ra"]
    assert all(0.0 <= v <= 1.0 for v in tiny_bd.metrics.values())
    assert tiny_bd.target == 0
    assert tiny_bd.trigger is tiny_bd.attack.trigger
    assert len(tiny_bd.history.epochs) == 1
    assert not tiny_bd.model.training
    assert len(tiny_bd.poisoned.poison_indices) == 16
    assert tiny_bd.poisoned.base is tiny_synthetic.train
    # metrics agree with a fresh Validator run on the same test set.
    rep = hk.Validator(tiny_bd.model, runtime={"device": "cpu"}).run(
        tiny_synthetic.test.loader(), trigger=tiny_bd.trigger, target=tiny_bd.target
    )
    assert rep.ba == pytest.approx(tiny_bd.metrics["ba"])
    assert rep.asr == pytest.approx(tiny_bd.metrics["asr"])


def test_backdoored_model_save(tiny_bd: BackdooredModel, tmp_path: Path) -> None:
    out = tiny_bd.save(tmp_path / "bd")
    assert out == tmp_path / "bd"
    assert sorted(p.name for p in out.iterdir()) == [
        "attack.json",
        "model.safetensors",
        "trigger.safetensors",
    ]
    meta = json.loads((out / "attack.json").read_text())
    assert meta["arch"] == "small-cnn"
    assert meta["num_classes"] == 4
    assert meta["target"] == 0
    assert meta["poison_count"] == 16
    assert meta["attack"]["attack"] == "badnets"
    assert meta["metrics"] == pytest.approx(tiny_bd.metrics)
    trig = Trigger.load(out / "trigger.safetensors")
    assert isinstance(trig, PatchTrigger)
    assert torch.equal(trig.pattern, tiny_bd.trigger.tensors()["pattern"])
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(trig(x), tiny_bd.trigger(x))
    # The weights load into a freshly built architecture and give the same logits.
    fresh = hk.build_model("small-cnn", 4)
    load_model_weights(fresh, out / "model.safetensors")
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x), tiny_bd.model(x))


def test_backdoored_model_save_all_to_all(tiny_synthetic: SyntheticSplits, tmp_path: Path) -> None:
    bd = make_backdoored_model(
        "blended",
        tiny_synthetic.train,
        attack_config={"mode": "all-to-all"},
        train_config=_tiny_train_config(),
        runtime={"seed": 0, "device": "cpu", "progress": "off"},
    )
    assert bd.target == {0: 1, 1: 2, 2: 3, 3: 0}
    assert bd.metrics == {}  # no test set given
    bd.save(tmp_path)
    meta = json.loads((tmp_path / "attack.json").read_text())
    assert meta["target"] == {"0": 1, "1": 2, "2": 3, "3": 0}
    assert meta["attack"]["mode"] == "all-to-all"
    trig = Trigger.load(tmp_path / "trigger.safetensors")
    assert isinstance(trig, BlendTrigger)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(trig(x), bd.trigger(x))


def test_make_backdoored_model_argument_errors(tiny_synthetic: SyntheticSplits) -> None:
    train = tiny_synthetic.train
    with pytest.raises(ConfigError, match="attack_config"):
        make_backdoored_model(build_attack("badnets"), train, attack_config={"target": 1})
    with pytest.raises(ConfigError):
        make_backdoored_model(42, train)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        make_backdoored_model("badnets", train, arch=lambda: "not a model")  # type: ignore[arg-type,return-value]
    with pytest.raises(RegistryError):
        make_backdoored_model("nope", train)
    with pytest.raises(ConfigError):
        make_backdoored_model("badnets", train, train_config={"epochs": 0})


@pytest.mark.parametrize("name", NAMES)
def test_non_square_images_name_the_limit_and_the_way_out(name: str) -> None:
    """The built-in triggers are square; the hint must not send the user to image_size."""
    x = torch.rand(8, 3, 16, 24)
    ds = hk.data.from_arrays(x, torch.arange(8) % 4)
    with pytest.raises(DataError, match="square images") as err:
        build_attack(name, image_size=16).poison(ds)
    assert "trigger function of your own" in (err.value.hint or "")

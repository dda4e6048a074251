"""Channel pruning machinery, the Shapley estimator and data-free synthesis (fast, tiny models)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.errors import ConfigError, ModelCompatibilityError
from hardenkit.models import SmallCNN
from hardenkit.purify.channels import (
    ChannelMask,
    ChannelSet,
    ablation_fill,
    apply_pruning,
    keep_pruned,
)
from hardenkit.purify.shapley import ShapleyPruningConfig, shapley_estimate
from hardenkit.purify.synthesis import SynthesisConfig, synthesize_class_images
from hardenkit.reports import ModelFingerprint
from hardenkit.testing import tiny_backdoored_model


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = SmallCNN(num_classes=4, width=4)
    with torch.no_grad():  # non-trivial BN statistics and shifts
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def _plain_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).eval()


def test_find_units_bn_conv_and_named_layers() -> None:
    units = ChannelSet.find(_net())
    assert units.kind == "bn"
    assert [g.layer for g in units.groups] == ["block1.1", "block2.1", "block3.1"]
    assert units.total == 4 + 8 + 16
    assert units.locate(4) == (units.groups[1], 0)
    conv = ChannelSet.find(_plain_cnn())
    assert conv.kind == "conv"
    assert conv.total == 11
    assert ChannelSet.find(_net(), unit="conv").kind == "conv"
    named = ChannelSet.find(_net(), ["block3.0", "linear"])
    assert [g.kind for g in named.groups] == ["conv", "linear-in"]
    assert named.kind == "mixed"
    flat = named.flat({"linear": [0, 3], "block3.0": [15]})
    assert flat == [15, 16, 19]
    assert named.split(flat) == {"block3.0": [15], "linear": [0, 3]}


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        (["nope"], "no layer named"),
        (["block1.2"], "prunable layers are"),
        ([], "names no layer"),
    ],
)
def test_find_units_rejects_bad_layers(layers: list[str], match: str) -> None:
    with pytest.raises((ModelCompatibilityError, ConfigError), match=match):
        ChannelSet.find(_net(), layers)


def test_find_units_rejects_non_affine_bn_and_empty_models() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False))
    with pytest.raises(ModelCompatibilityError, match="affine=False"):
        ChannelSet.find(net, ["1"])
    with pytest.raises(ModelCompatibilityError, match="no affine BatchNorm"):
        ChannelSet.find(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), unit="bn")
    units = ChannelSet.find(_net())
    with pytest.raises(ConfigError, match="outside layer"):
        units.flat({"block1.1": [99]})
    with pytest.raises(ConfigError, match="not one of the prunable"):
        units.flat({"linear": [0]})


@pytest.mark.parametrize("ablation", ["zero", "mean"])
@pytest.mark.parametrize(
    ("make", "layers", "pruned"),
    [
        (_net, None, {"block1.1": [0, 2], "block3.1": [5, 6, 7]}),
        (_plain_cnn, None, {"0": [1], "2": [0, 4]}),
        (_net, ["linear"], {"linear": [1, 9]}),
    ],
    ids=["bn", "conv", "linear-in"],
)
def test_soft_mask_equals_weight_edit(
    make: Any, layers: list[str] | None, pruned: dict[str, list[int]], ablation: str
) -> None:
    net = make()
    x = torch.rand(6, 3, 16, 16)
    units = ChannelSet.find(net, layers)
    fill = None
    if ablation == "mean":
        fill, _ = ablation_fill(net, units, torch.rand(10, 3, 16, 16))
        assert bool(fill.ne(0).any())
    mask = units.ones()
    mask[units.flat(pruned)] = 0
    with ChannelMask(net, units, mask, fill), torch.no_grad():
        soft = net(x)
    with torch.no_grad():
        plain = net(x)
    edited = copy.deepcopy(net)
    rec = apply_pruning(edited, units, pruned, fill)
    with torch.no_grad():
        hard = edited(x)
    assert torch.allclose(soft, hard, atol=1e-5)
    assert not torch.equal(plain, hard)  # the pruning changed something
    assert rec.ablation == ablation
    assert rec.pruned == sum(len(v) for v in pruned.values())
    assert rec.fraction == pytest.approx(rec.pruned / units.total)
    assert rec.layers == {k: sorted(v) for k, v in pruned.items()}
    # hooks are gone after the context
    with torch.no_grad():
        assert torch.equal(net(x), plain)


class _Mixed(nn.Module):
    """BN → functional ReLU, BN → LeakyReLU module, BN → residual sum, bias-free conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.b2 = nn.BatchNorm2d(4)
        self.act2 = nn.LeakyReLU(0.2)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)
        self.b3 = nn.BatchNorm2d(4)
        self.c4 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.relu(self.b1(self.c1(x)))
        h = self.act2(self.b2(self.c2(h)))
        h = torch.relu(self.b3(self.c3(h)) + h)
        h = torch.relu(self.c4(h))
        return self.head(h.mean((2, 3)))


def test_ablation_fill_finds_the_activation_and_keeps_its_mean() -> None:
    torch.manual_seed(0)
    net = _Mixed().eval()
    with torch.no_grad():
        for b in (net.b1, net.b2, net.b3):
            b.bias.uniform_(-0.5, 0.5)
    x = torch.rand(12, 3, 8, 8)
    units = ChannelSet.find(net, ["b1", "b2", "b3", "c4"])
    fill, acts = ablation_fill(net, units, x, batch_size=5)
    assert acts == {"b1": "relu", "b2": "leaky_relu", "b3": "none", "c4": "no bias"}
    outs: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(net, n).register_forward_hook(lambda _m, _a, o, n=n: outs.__setitem__(n, o))
        for n in ("b1", "b2", "b3")
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    o = units.offsets
    f = {g.layer: slice(o[i], o[i + 1]) for i, g in enumerate(units.groups)}

    def chan_mean(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(0, 1).reshape(t.shape[1], -1).mean(1)

    leaky = torch.nn.functional.leaky_relu
    assert torch.allclose(fill[f["b1"]], chan_mean(outs["b1"].clamp(min=0)), atol=1e-5)
    assert torch.allclose(leaky(fill[f["b2"]], 0.2), chan_mean(leaky(outs["b2"], 0.2)), atol=1e-5)
    assert torch.allclose(fill[f["b3"]], chan_mean(outs["b3"]), atol=1e-5)
    assert torch.equal(fill[f["c4"]], torch.zeros(4))
    # a mean-ablated channel feeds the next layer its mean activation on every input
    edited = copy.deepcopy(net)
    apply_pruning(edited, units, {"b1": [1]}, fill)
    seen: dict[str, torch.Tensor] = {}
    hook = edited.c2.register_forward_pre_hook(lambda _m, a: seen.__setitem__("in", a[0]))
    with torch.no_grad():
        edited(torch.rand(3, 3, 8, 8))
    hook.remove()
    assert torch.allclose(seen["in"][:, 1], fill[f["b1"]][1].expand(3, 8, 8), atol=1e-6)
    with pytest.raises(ModelCompatibilityError, match="no bias"):
        apply_pruning(edited, units, {"c4": [0]}, torch.ones(units.total))
    with pytest.raises(ConfigError, match="at least one image"):
        ablation_fill(net, units, x[:0])


def test_batched_masks_match_one_by_one() -> None:
    net = _net()
    units = ChannelSet.find(net)
    x = torch.rand(3, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(5, units.total, generator=g) > 0.3).float()
    with ChannelMask(net, units, masks), torch.no_grad():
        batched = net(x.repeat(5, 1, 1, 1)).view(5, 3, -1)
    for r in range(5):
        with ChannelMask(net, units, masks[r]), torch.no_grad():
            assert torch.allclose(batched[r], net(x), atol=1e-5)
    with (
        ChannelMask(net, units, masks),
        pytest.raises(ModelCompatibilityError, match="mask groups"),
    ):
        net(x[:2].repeat(2, 1, 1, 1)[:3])


def test_noise_perturbs_bn_scale_and_shift() -> None:
    net = _net()
    units = ChannelSet.find(net)
    x = torch.rand(2, 3, 16, 16)
    with ChannelMask(net, units) as cm, torch.no_grad():
        clean = net(x)
        cm.scale_noise = torch.zeros(units.total)
        cm.shift_noise = torch.zeros(units.total)
        assert torch.allclose(net(x), clean, atol=1e-6)  # zero noise = no change
        cm.shift_noise = torch.full((units.total,), 0.3)
        assert not torch.allclose(net(x), clean, atol=1e-4)


def test_keep_pruned_keeps_weights_zero_during_training() -> None:
    net = _net().train()
    units = ChannelSet.find(net, ["block2.1", "linear"])
    pruned = {"block2.1": [1, 3], "linear": [2]}
    apply_pruning(net, units, pruned)
    handles = keep_pruned(net, units, pruned)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        loss = net(torch.rand(8, 3, 16, 16)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for h in handles:
        h.remove()
    bn = net.block2[1]
    assert torch.all(bn.weight[[1, 3]] == 0)
    assert torch.all(bn.bias[[1, 3]] == 0)
    assert torch.all(net.linear.weight[:, 2] == 0)
    assert torch.all(bn.weight[[0, 2]] != 0)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_pruned_model_exports_to_onnx_with_logit_parity(tmp_path: Any, ablation: str) -> None:
    net = _net()
    units = ChannelSet.find(net)
    fill = ablation_fill(net, units, torch.rand(8, 3, 16, 16))[0] if ablation == "mean" else None
    apply_pruning(net, units, {"block1.1": [0], "block2.1": [2, 5], "block3.1": [1]}, fill)
    x = torch.rand(24, 3, 16, 16)
    y = torch.randint(0, 4, (24,))
    exp = hk.export.to_onnx(net, tmp_path / "pruned.onnx", input_shape=(3, 16, 16))
    ver = hk.export.verify_onnx(exp, net, [(x, y)], providers=["CPUExecutionProvider"])
    assert ver.passed, [c for c in ver.checks if not c.passed]


class _AndGame:
    """Backdoor (value = ASR) at 1 with channels 3 and 7, 0.5 with one of them, 0 with
    neither: Shapley values 0.5, 0.5 and 0 elsewhere."""

    def __init__(self, total: int) -> None:
        self.units = type("U", (), {"total": total})()
        self.xt = torch.zeros(1)
        self.rows = 4
        self.forwards = 0

    def score(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.forwards += 1
        v = 0.5 * masks[:, 3] + 0.5 * masks[:, 7]
        return v, v


def test_shapley_estimate_finds_the_contributing_channels() -> None:
    game = _AndGame(20)
    cfg = ShapleyPruningConfig(max_permutations=30, epsilon=0.2, discard_after=3)
    est, count, info = shapley_estimate(game, cfg, torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    assert est[3] == pytest.approx(0.5)
    assert est[7] == pytest.approx(0.5)
    others = [i for i in range(20) if i not in (3, 7)]
    assert float(est[others].abs().max()) == 0.0
    # truncation: the value hits 0 once 3 and 7 are gone, so every permutation truncates
    assert info["truncated_permutations"] == info["permutations"] == 30
    # discarding: only the two contributors stay in the game, greedy order then puts them first
    assert info["channels_left_in_game"] == 2
    assert info["greedy_permutations"] > 0
    assert count[3] == 30
    assert int(count[others].min()) == 3


def test_shapley_estimate_respects_the_budget() -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    _, _, info = shapley_estimate(
        _AndGame(10),  # type: ignore[arg-type]
        ShapleyPruningConfig(max_permutations=50),
        torch.Generator().manual_seed(0),
        stop=stop,
    )
    assert info["permutations"] == 2


def test_synthesis_returns_class_images_and_leaves_the_model_alone() -> None:
    fx = tiny_backdoored_model(epochs=3)
    model = fx.backdoored.model
    fp = ModelFingerprint.of(model)
    model.train()
    x, y, info = synthesize_class_images(
        model, 4, (3, 32, 32), SynthesisConfig(images_per_class=3, steps=60), seed=1
    )
    assert model.training  # mode restored
    assert ModelFingerprint.of(model) == fp
    assert all(p.requires_grad for p in model.parameters())
    assert x.shape == (12, 3, 32, 32)
    assert float(x.min()) >= 0.0
    assert float(x.max()) <= 1.0
    assert y.tolist() == [c for c in range(4) for _ in range(3)]
    assert info["batchnorm_layers_matched"] == 3
    assert info["class_accuracy"] >= 0.75
    x2, _, _ = synthesize_class_images(
        model, 4, (3, 32, 32), SynthesisConfig(images_per_class=3, steps=60), seed=1
    )
    assert torch.equal(x, x2)  # seeded


def test_synthesis_without_batchnorm() -> None:
    _, _, info = synthesize_class_images(
        _plain_cnn(), 3, (3, 8, 8), SynthesisConfig(images_per_class=1, steps=5)
    )
    assert info["batchnorm_layers_matched"] == 0


def test_purifier_data_free_and_few_shot_guards() -> None:
    from hardenkit.errors import DataError

    fx = tiny_backdoored_model(epochs=2)
    model = fx.backdoored.model
    with pytest.raises(DataError, match="needs clean images") as err:
        hk.Purifier(model, "finetune").run(None)
    assert "shapley-pruning" in str(err.value.hint)
    with pytest.raises(ConfigError, match="input shape"):
        hk.Purifier(model, "shapley-pruning").run(None)
    with pytest.raises(ConfigError, match="input_shape must be"):
        hk.Purifier(model, "shapley-pruning", input_shape=(3, 32))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"holdout_fraction must be in \[0, 1\)"):
        hk.Purifier(model, "finetune", holdout_fraction=1.0)
    one = hk.data.stratified_indices(fx.data.train.labels, per_class=1)
    with pytest.raises(DataError, match="holdout_fraction=0"):
        hk.Purifier(model, "finetune").run(fx.data.train.subset(one).loader())
    res = hk.Purifier(model, "finetune", config={"epochs": 1}, holdout_fraction=0).run(
        fx.data.train.subset(one).loader()
    )
    assert res.report.ba_before is None
    assert res.report.ba_drop is None
    assert "n/a" in res.report.summary()
    assert "n/a" in repr(res)
    assert res.report.clean_images == {"train": 4, "validation": 0, "holdout": 0}
    assert any("no held-out clean images" in n for n in res.report.notes)


def test_fine_pruning_and_anp_report_what_they_pruned() -> None:
    fx = tiny_backdoored_model(epochs=3)
    model = fx.backdoored.model
    loader = fx.data.train.loader(batch_size=64)
    fp = hk.Purifier(model, "fine-pruning", config={"epochs": 1, "acc_ratio": 1.0}).run(loader)
    rec = fp.report.details["pruning"]
    # with no accuracy limit it prunes up to max_fraction of the 64 penultimate channels
    assert rec["pruned"] == int(0.95 * 64)
    assert "pruned" in fp.report.summary()
    named = hk.Purifier(
        model, "fine-pruning", config={"epochs": 1, "layer": "block3.1", "acc_ratio": 0}
    ).run(loader)
    assert named.report.details["pruning"]["unit"] == "bn"
    anp = hk.Purifier(model, "anp", config={"iterations": 20, "threshold": 0.95}).run(loader)
    d = anp.report.details
    assert d["iterations"] == 20
    assert d["threshold"] == 0.95
    assert d["pruning"]["pruned"] == sum(len(v) for v in d["pruning"]["layers"].values())
    assert set(d["mask_quantiles"]) == {"min", "p01", "p05", "median"}
    by_number = hk.Purifier(
        model, "anp", config={"iterations": 20, "pruning_by": "number", "acc_ratio": 1.0}
    ).run(loader)
    d = by_number.report.details
    # no accuracy limit: prunes up to max_fraction (20 %) of the 112 channels, lowest masks first
    assert d["pruning"]["pruned"] == int(0.2 * 112)
    assert d["pruning_by"] == "number"
    assert d["selection"]["thresholds_tried"] == sorted(d["selection"]["thresholds_tried"])


def test_anp_on_a_model_without_batchnorm_masks_conv_filters() -> None:
    fx = tiny_backdoored_model(epochs=1)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    # an untrained network: the check that the model beats a constant guess is switched off
    res = hk.Purifier(
        net, "anp", config={"iterations": 3, "threshold": 0.5}, require_above_chance=False
    ).run(fx.data.train.loader(batch_size=64))
    assert res.report.details["pruning"]["unit"] == "conv"
    assert res.report.details["iterations"] == 3


def test_scan_overrides_merge_into_the_few_shot_defaults() -> None:
    from hardenkit.purify.shapley import _FEW_SHOT_SCAN, _merge

    merged = _merge(_FEW_SHOT_SCAN, {"detector_options": {"neural-cleanse": {"epochs": 50}}})
    assert merged["detector_options"]["neural-cleanse"] == {"epochs": 50, "batch_size": 64}
    assert merged["min_images_per_class"] == 1
    assert _FEW_SHOT_SCAN["detector_options"]["neural-cleanse"]["epochs"] == 300  # untouched


def test_pruning_nothing_is_reported_as_refused_with_the_weights_unchanged() -> None:
    from hardenkit.triggers import MaskPatternTrigger

    fx = tiny_backdoored_model(epochs=2)
    model = fx.backdoored.model
    before = ModelFingerprint.of(model)
    loader = fx.data.train.loader(batch_size=64)
    # no mask falls below a tiny fixed threshold after 3 iterations
    anp = hk.Purifier(model, "anp", config={"iterations": 3, "threshold": 1e-9}).run(loader)
    assert anp.status == "refused"
    assert anp.report.details["pruning"]["pruned"] == 0
    assert any("anp pruned nothing" in n for n in anp.report.notes)
    assert ModelFingerprint.of(anp.model) == before
    # an empty-mask "trigger" does not flip the images: there is nothing to prune
    _, h, w = fx.data.train.images.shape[1:]
    inert = MaskPatternTrigger(torch.zeros(h, w), torch.ones(3, h, w))
    one = fx.data.train.subset(hk.data.stratified_indices(fx.data.train.labels, per_class=2))
    with torch.no_grad():  # the class the model predicts least often on these images
        pred = model(one.images.float() / 255).argmax(1)
    rare = int(torch.bincount(pred, minlength=4).argmin())
    scan = hk.ScanResult.from_triggers({rare: inert}, model=model, num_classes=4)
    sp = hk.Purifier(
        model,
        "shapley-pruning",
        config={"max_permutations": 3, "asr_stop": 0.5},
        holdout_fraction=0,
    )
    res = sp.run(one.loader(), scan=scan)
    assert res.status == "refused"
    assert res.report.details["pruning"]["pruned"] == 0
    assert "already fail" in res.report.details["mitigation"]["stop_reason"]
    assert ModelFingerprint.of(res.model) == before
    assert ModelFingerprint.of(model) == before


def test_shapley_pruning_reports_progress_per_permutation() -> None:
    fx = tiny_backdoored_model(epochs=2)
    bd = fx.backdoored
    one = fx.data.train.subset(hk.data.stratified_indices(fx.data.train.labels, per_class=2))
    scan = hk.ScanResult.from_triggers({int(bd.target): bd.trigger}, model=bd.model, num_classes=4)
    seen: list[tuple[str, int, int]] = []
    hk.Purifier(
        bd.model,
        "shapley-pruning",
        config={"max_permutations": 4},
        holdout_fraction=0,
        progress=lambda phase, step, total, **_: seen.append((phase, step, total)),
    ).run(one.loader(), scan=scan)
    steps = [(s, t) for p, s, t in seen if p == "purify[shapley-pruning]"]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]

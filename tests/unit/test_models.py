"""Unit tests for hardenkit.models: zoo, normalization, registry, feature taps."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hardenkit.errors import ConfigError, HardenkitError, ModelCompatibilityError, RegistryError
from hardenkit.models import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MODELS,
    VGG16BN,
    CifarCNN,
    FeatureExtractor,
    Normalize,
    NormalizedModel,
    PreActResNet18,
    ResNet18,
    SmallCNN,
    build_model,
    create_model,
    find_last_linear,
    list_models,
    load_factory,
    penultimate_features,
    prunable_layers,
    resolve_layer,
    with_normalization,
)

# name -> (zoo class, classifier attribute, penultimate width, number of BatchNorm2d)
ZOO: dict[str, tuple[type[nn.Module], str, int, int]] = {
    "preact-resnet18": (PreActResNet18, "linear", 512, 17),
    "resnet18": (ResNet18, "linear", 512, 20),
    "vgg16-bn": (VGG16BN, "classifier", 512, 13),
    "small-cnn": (SmallCNN, "linear", 64, 3),
    "cifar-cnn": (CifarCNN, "linear", 64, 6),
}

NOT_CALLABLE = 42


def tiny_factory(num_classes: int = 10) -> nn.Module:
    """A user architecture reachable as ``tests.unit.test_models:tiny_factory``."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, num_classes)
    )


def fixed_factory() -> nn.Module:
    """A user factory that does not take ``num_classes``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))


def bad_return_factory(num_classes: int = 10) -> object:
    return {"num_classes": num_classes}


def raising_factory(num_classes: int = 10) -> nn.Module:
    raise RuntimeError("boom")


class Builders:
    @staticmethod
    def tiny(num_classes: int = 10) -> nn.Module:
        return tiny_factory(num_classes)


def _user_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 16), nn.ReLU(), nn.Linear(16, 10))


def _assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- zoo


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_forward_features_and_gradients(name: str) -> None:
    cls, head, width, _ = ZOO[name]
    model = create_model(name, num_classes=7)
    assert isinstance(model, NormalizedModel)
    assert isinstance(model.model, cls)
    x = torch.rand(2, 3, 32, 32)

    layer_name, linear = find_last_linear(model)
    assert layer_name == f"model.{head}"
    assert linear is getattr(model.model, head)
    assert (linear.in_features, linear.out_features) == (width, 7)

    with FeatureExtractor(model) as fx:
        logits, feats = fx(x)
    assert logits.shape == (2, 7)
    assert set(feats) == {"penultimate"}
    assert feats["penultimate"].shape == (2, width)
    torch.testing.assert_close(logits, linear(feats["penultimate"]))

    feats["penultimate"].pow(2).mean().backward()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.grad is not None
    assert conv.weight.grad.abs().sum() > 0
    assert linear.weight.grad is None  # features are the *input* of the head
    _assert_no_hooks(model)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_single_sample_eval(name: str) -> None:
    model = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_bare_in_channels_and_bn_listing(name: str) -> None:
    cls, _, _, n_bn = ZOO[name]
    model = create_model(name, num_classes=2, in_channels=1, normalization=None)
    assert type(model) is cls
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 2)
    bns = prunable_layers(model)
    assert len(bns) == n_bn
    assert all(isinstance(m, nn.BatchNorm2d) for _, m in bns)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [n for n, _ in bns] == names


def test_zoo_uses_relu_modules_and_linear_is_last() -> None:
    for cls, head, _, _ in ZOO.values():
        model = cls()
        assert any(isinstance(m, nn.ReLU) for m in model.modules())
        assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        assert linears == [head]


def test_preact_resnet18_matches_backdoorbench_layout() -> None:
    keys = set(PreActResNet18().state_dict())
    for key in (
        "conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.running_mean",
        "layer1.0.conv2.weight",
        "layer2.0.shortcut.0.weight",
        "layer4.1.conv2.weight",
        "bn.weight",
        "linear.weight",
        "linear.bias",
    ):
        assert key in keys, key
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)
    assert not any(k.startswith("layer2.1.shortcut") for k in keys)


def test_named_intermediate_layers() -> None:
    model = create_model("preact-resnet18")
    x = torch.rand(2, 3, 32, 32)
    with FeatureExtractor(model, ["layer1", "model.layer4", "bn"], penultimate=False) as fx:
        logits, feats = fx(x)
    assert logits.shape == (2, 10)
    assert list(feats) == ["layer1", "model.layer4", "bn"]
    assert feats["layer1"].shape == (2, 64, 32, 32)
    assert feats["model.layer4"].shape == (2, 512, 4, 4)
    assert feats["bn"].shape == (2, 512, 4, 4)
    _assert_no_hooks(model)

    cnn = create_model("small-cnn", normalization=None)
    with FeatureExtractor(cnn, ["block1", "block2", "block3.2"]) as fx:
        _, feats = fx(x)
    assert feats["block1"].shape == (2, 16, 16, 16)
    assert feats["block2"].shape == (2, 32, 8, 8)
    assert feats["block3.2"].shape == (2, 64, 8, 8)
    assert (feats["block3.2"] >= 0).all()  # a ReLU output
    assert feats["penultimate"].shape == (2, 64)


def test_zoo_init_is_deterministic_under_seed() -> None:
    torch.manual_seed(123)
    a = create_model("cifar-cnn").state_dict()
    torch.manual_seed(123)
    b = create_model("cifar-cnn").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_zoo_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        SmallCNN(num_classes=0)
    with pytest.raises(ConfigError, match="width"):
        CifarCNN(width=0)
    with pytest.raises(ConfigError, match="in_channels"):
        create_model("resnet18", in_channels=0, normalization=None)


def test_small_cnn_learns_synthetic_task_quickly() -> None:
    n, k = 1024, 4
    templates = F.interpolate(torch.rand(k, 3, 4, 4), size=32, mode="nearest")
    y = torch.randint(0, k, (n,))
    x = (0.6 * templates[y] + 0.4 * torch.rand(n, 3, 32, 32)).clamp(0, 1)
    model = create_model("small-cnn", num_classes=k)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(5):
        perm = torch.randperm(n)
        for i in range(0, n, 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9


# --------------------------------------------------------------------------- normalization


def test_with_normalization_math_and_no_copy() -> None:
    inner = nn.Identity()
    wrapped = with_normalization(inner, CIFAR10_MEAN, CIFAR10_STD)
    assert wrapped.model is inner
    assert isinstance(wrapped.normalize, Normalize)
    x = torch.rand(4, 3, 5, 5)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(wrapped(x), (x - mean) / std)
    assert wrapped.normalize.mean.shape == (1, 3, 1, 1)
    assert wrapped.normalize.std.shape == (1, 3, 1, 1)
    assert {"normalize.mean", "normalize.std"} <= set(wrapped.state_dict())

    conv = nn.Conv2d(3, 2, 1)
    shared = with_normalization(conv, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert shared.model.weight is conv.weight
    torch.testing.assert_close(shared(x), conv((x - 0.5) / 0.25))


def test_create_model_wraps_cifar_normalization_by_default() -> None:
    model = create_model("small-cnn")
    assert isinstance(model, NormalizedModel)
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor(CIFAR10_MEAN))
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor(CIFAR10_STD))
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model.model(model.normalize(x)))

    custom = create_model("small-cnn", normalization=((0.5,), (0.5,)), in_channels=1)
    assert isinstance(custom, NormalizedModel)
    assert custom.normalize.num_channels == 1


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        ((0.5, 0.5), (0.5, 0.5, 0.5), "same length"),
        ((0.5, 0.5, 0.5), (0.5, 0.0, 0.5), "strictly positive"),
        ((0.5, 0.5, 0.5), (0.5, -1.0, 0.5), "strictly positive"),
        ((), (), "empty"),
        (("a", "b", "c"), (0.5, 0.5, 0.5), "numbers"),
        ((float("nan"), 0.5, 0.5), (0.5, 0.5, 0.5), "finite"),
        ("rgb", (0.5, 0.5, 0.5), "sequence"),
    ],
)
def test_with_normalization_rejects_bad_stats(mean: object, std: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        with_normalization(nn.Identity(), mean, std)  # type: ignore[arg-type]


def test_normalize_rejects_wrong_channel_count() -> None:
    norm = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(ModelCompatibilityError, match="3 channels"):
        norm(torch.rand(2, 1, 8, 8))
    with pytest.raises(ModelCompatibilityError, match="NCHW"):
        norm(torch.rand(3, 8, 8))


def test_with_normalization_rejects_non_module() -> None:
    with pytest.raises(ModelCompatibilityError, match=r"nn\.Module"):
        with_normalization({"w": 1}, CIFAR10_MEAN, CIFAR10_STD)  # type: ignore[arg-type]


def test_create_model_normalization_errors() -> None:
    with pytest.raises(ConfigError, match="in_channels=1"):
        create_model("small-cnn", in_channels=1)
    with pytest.raises(ConfigError, match="preset"):
        create_model("small-cnn", normalization="imagenet21k")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pair"):
        create_model("small-cnn", normalization=((0.5,), (0.5,), (0.5,)))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="strictly positive"):
        create_model("small-cnn", normalization=((0.5, 0.5, 0.5), (0.0, 1.0, 1.0)))


# --------------------------------------------------------------------------- registry


def test_registry_lists_zoo() -> None:
    names = list_models()
    assert set(ZOO) <= set(names)
    assert names == sorted(names)
    for name, (cls, _, _, _) in ZOO.items():
        assert MODELS.get(name) is cls
    assert MODELS.kind == "model"
    assert MODELS.entry_point_group == "hardenkit.models"


def test_create_model_errors_and_kwargs() -> None:
    with pytest.raises(RegistryError, match="Unknown model"):
        create_model("resnet-9000")
    with pytest.raises(ConfigError, match="width"):
        create_model("resnet18", width=8)
    wide = create_model("cifar-cnn", width=8, normalization=None)
    assert isinstance(wide, CifarCNN)
    assert find_last_linear(wide)[1].in_features == 32
    assert isinstance(create_model("  Small-CNN "), NormalizedModel)
    narrow = create_model("preact-resnet18", width=8, normalization=None)
    assert find_last_linear(narrow)[1].in_features == 64  # 8 * width
    assert narrow(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # the default width is the BackdoorBench network, parameter names unchanged
    assert create_model("preact-resnet18", normalization=None).state_dict().keys() == (
        narrow.state_dict().keys()
    )
    with pytest.raises(ConfigError, match="width"):
        PreActResNet18(width=0)


def test_build_model_with_zoo_name_and_spec() -> None:
    zoo = build_model("small-cnn", num_classes=5)
    assert isinstance(zoo, NormalizedModel)
    assert zoo.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 5)
    gray = build_model("small-cnn", num_classes=5, in_channels=1)
    assert isinstance(gray, SmallCNN)  # "auto" normalization: none for 1 channel

    user = build_model("tests.unit.test_models:tiny_factory", num_classes=5)
    assert isinstance(user, nn.Sequential)  # user models are not wrapped by default
    assert user(torch.rand(2, 3, 32, 32)).shape == (2, 5)

    dotted = build_model("tests.unit.test_models:Builders.tiny", num_classes=3)
    assert dotted(torch.rand(2, 3, 32, 32)).shape == (2, 3)

    fixed = build_model("tests.unit.test_models:fixed_factory", num_classes=99)
    assert fixed(torch.rand(2, 3, 32, 32)).shape == (2, 4)

    normed = build_model("tests.unit.test_models:tiny_factory", normalization="cifar10")
    assert isinstance(normed, NormalizedModel)
    assert isinstance(normed.model, nn.Sequential)


def test_build_model_factory_failures() -> None:
    with pytest.raises(ModelCompatibilityError, match="dict"):
        build_model("tests.unit.test_models:bad_return_factory")
    with pytest.raises(ModelCompatibilityError, match="boom"):
        build_model("tests.unit.test_models:raising_factory")
    with pytest.raises(ConfigError, match="depth"):
        build_model("tests.unit.test_models:tiny_factory", depth=3)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_colon_here", "package.module:callable"),
        (":tiny_factory", "package.module:callable"),
        ("tests.unit.test_models:", "package.module:callable"),
        ("a:b:c", "package.module:callable"),
        ("hardenkit_no_such_module_xyz:build", "cannot import"),
        ("tests.unit.test_models:no_such_factory", "no attribute"),
        ("tests.unit.test_models:Builders.nope", "no attribute"),
        ("tests.unit.test_models:NOT_CALLABLE", "not a callable"),
    ],
)
def test_load_factory_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_factory(spec)
    with pytest.raises(HardenkitError):  # a spec without ':' is looked up as a zoo name
        build_model(spec)


def test_load_factory_resolves_callable() -> None:
    assert load_factory("tests.unit.test_models:tiny_factory") is tiny_factory


def test_models_do_not_need_torchvision() -> None:
    code = (
        "import sys\n"
        "sys.modules['torchvision'] = None  # any import of it now fails\n"
        "import torch\n"
        "from hardenkit.models import create_model, list_models\n"
        "for name in list_models():\n"
        "    create_model(name)\n"
        "assert sys.modules['torchvision'] is None\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- features


def test_feature_extractor_on_user_sequential() -> None:
    model = _user_mlp()
    x = torch.rand(3, 3, 32, 32)
    assert find_last_linear(model) == ("3", model[3])
    with FeatureExtractor(model, layers=["1"]) as fx:
        logits, feats = fx(x)
    expected = F.relu(model[1](x.flatten(1)))
    torch.testing.assert_close(feats["penultimate"], expected)
    torch.testing.assert_close(feats["1"], model[1](x.flatten(1)))
    torch.testing.assert_close(logits, model(x))
    feats["penultimate"].sum().backward()
    assert model[1].weight.grad is not None
    _assert_no_hooks(model)
    torch.testing.assert_close(penultimate_features(model, x), expected)
    _assert_no_hooks(model)


def test_feature_extractor_on_normalized_model() -> None:
    model = with_normalization(_user_mlp(), CIFAR10_MEAN, CIFAR10_STD)
    x = torch.rand(2, 3, 32, 32)
    assert find_last_linear(model)[0] == "model.3"
    assert resolve_layer(model, "2") is model.model[2]
    assert resolve_layer(model, "model.2") is model.model[2]
    assert resolve_layer(model, "normalize") is model.normalize
    with FeatureExtractor(model, ["normalize", "2"]) as fx:
        _, feats = fx(x)
    torch.testing.assert_close(feats["normalize"], model.normalize(x))
    assert feats["2"].shape == (2, 16)
    torch.testing.assert_close(feats["penultimate"], feats["2"])
    _assert_no_hooks(model)


def test_feature_extractor_flattens_penultimate() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.linear = nn.Linear(4 * 8 * 8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.conv(x)
            return self.linear(out.reshape(out.shape[0], -1))

    feats = penultimate_features(Head(), torch.rand(5, 3, 8, 8))
    assert feats.shape == (5, 256)


def test_hooks_removed_after_exception_and_close() -> None:
    model = create_model("small-cnn")
    fx = FeatureExtractor(model, ["block1"])

    def use_then_fail() -> None:
        with fx:
            fx(torch.rand(2, 3, 32, 32))
            raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        use_then_fail()
    _assert_no_hooks(model)
    assert fx.closed
    with pytest.raises(RuntimeError, match="closed"):
        fx(torch.rand(2, 3, 32, 32))
    fx.close()  # idempotent

    manual = FeatureExtractor(model, ["block2"])
    assert model.model.block2._forward_hooks
    assert model.model.linear._forward_pre_hooks
    manual.close()
    _assert_no_hooks(model)


def test_feature_extractor_reuse_does_not_leak_between_calls() -> None:
    model = create_model("small-cnn").eval()
    with FeatureExtractor(model, ["block3"]) as fx:
        _, a = fx(torch.rand(2, 3, 32, 32))
        _, b = fx(torch.rand(4, 3, 32, 32))
    assert a["block3"].shape[0] == 2
    assert b["block3"].shape[0] == 4
    assert b["penultimate"].shape == (4, 64)


def test_feature_errors() -> None:
    no_linear = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ModelCompatibilityError, match="layer="):
        find_last_linear(no_linear)
    with pytest.raises(ModelCompatibilityError, match=r"no nn\.Linear"):
        FeatureExtractor(no_linear)
    with pytest.raises(ModelCompatibilityError):
        penultimate_features(no_linear, torch.rand(1, 3, 8, 8))
    _assert_no_hooks(no_linear)
    with FeatureExtractor(no_linear, ["1"], penultimate=False) as fx:
        out, feats = fx(torch.rand(1, 3, 8, 8))
    assert out.shape == (1, 4)
    assert list(feats) == ["1"]

    model = create_model("preact-resnet18")
    with pytest.raises(ModelCompatibilityError, match="layer5") as info:
        resolve_layer(model, "layer5")
    assert "layer4" in str(info.value)
    with pytest.raises(ModelCompatibilityError, match="no layer named"):
        FeatureExtractor(model, ["layer1", "nope"])
    _assert_no_hooks(model)
    with pytest.raises(ConfigError, match="reserved"):
        FeatureExtractor(model, ["penultimate"])


def test_feature_extractor_reports_unused_layers_and_bad_outputs() -> None:
    class AuxHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
            self.aux = nn.Linear(4, 2)  # registered last but never called

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.body(x)
            return out

    aux = AuxHead()
    with FeatureExtractor(aux) as fx, pytest.raises(ModelCompatibilityError, match="did not run"):
        fx(torch.rand(2, 3, 2, 2))
    _assert_no_hooks(aux)

    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    class UsesPair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()
            self.linear = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, _ = self.pair(x)
            out: torch.Tensor = self.linear(a)
            return out

    net = UsesPair()
    with (
        FeatureExtractor(net, ["pair"]) as fx,
        pytest.raises(ModelCompatibilityError, match="not a tensor"),
    ):
        fx(torch.rand(2, 3))
    _assert_no_hooks(net)

    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.linear(x), x

    with (
        FeatureExtractor(TupleOut()) as fx,
        pytest.raises(ModelCompatibilityError, match="logits tensor"),
    ):
        fx(torch.rand(2, 3))


def test_prunable_layers_order_on_preact() -> None:
    model = create_model("preact-resnet18")
    names = [n for n, _ in prunable_layers(model)]
    assert names[0] == "model.layer1.0.bn1"
    assert names[-1] == "model.bn"
    assert prunable_layers(_user_mlp()) == []


def test_penultimate_when_linear_called_with_keyword_input() -> None:
    class KeywordHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.lin(input=x)
            return out

    x = torch.rand(3, 4)
    torch.testing.assert_close(penultimate_features(KeywordHead(), x), x)

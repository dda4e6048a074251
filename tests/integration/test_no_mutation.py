"""Every public call that takes a model leaves the caller's model exactly as it was.

"Unchanged" means: the same state_dict tensors (parameters *and* buffers such as BatchNorm
running statistics), the same training flag on every submodule, the same parameter objects
on the same device with the same ``requires_grad``, and no forward hooks left behind.
The calls run on the session's ``badnets_model`` itself and are compared with a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import hardenkit as hk
from hardenkit.attacks import BackdooredModel
from hardenkit.data import ImageDataset, SyntheticSplits
from hardenkit.io import save_state_dict
from hardenkit.models import FeatureExtractor, penultimate_features
from hardenkit.reports import ModelFingerprint
from hardenkit.validate import (
    GatePolicy,
    Validator,
    attack_success_rate,
    benign_accuracy,
    robust_accuracy,
)

pytestmark = pytest.mark.slow  # needs the session's trained BadNets model

Call = Callable[[nn.Module, BackdooredModel, ImageDataset, Path], object]


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "flags": [(n, m.training) for n, m in model.named_modules()],
        "params": [(n, id(p), p.device, p.requires_grad) for n, p in model.named_parameters()],
        "sha": ModelFingerprint.of(model).sha256,
        # The factory's model still holds .grad from training; calls must not touch it.
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def _assert_unchanged(model: nn.Module, before: dict[str, object], ref: nn.Module) -> None:
    state = model.state_dict()
    expected = before["state"]
    assert isinstance(expected, dict)
    assert list(state) == list(expected)
    for key, tensor in expected.items():
        assert state[key].dtype == tensor.dtype, key
        assert torch.equal(state[key], tensor), f"{key} changed"
    # Against the independent deep copy too (guards against in-place edits of the snapshot).
    for key, tensor in ref.state_dict().items():
        assert torch.equal(state[key], tensor), f"{key} differs from the deep copy"
    assert [(n, m.training) for n, m in model.named_modules()] == before["flags"]
    assert [(n, id(p), p.device, p.requires_grad) for n, p in model.named_parameters()] == before[
        "params"
    ]
    for name, module in model.named_modules():
        assert not module._forward_hooks, f"forward hook left on {name!r}"
        assert not module._forward_pre_hooks, f"forward pre-hook left on {name!r}"
        assert not module._backward_hooks, f"backward hook left on {name!r}"
    grads = before["grads"]
    assert isinstance(grads, list)
    for p, g in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None) == (g is None)
        assert p.grad is None or torch.equal(p.grad, g)
    assert ModelFingerprint.of(model).sha256 == before["sha"]


@pytest.fixture(scope="module")
def test_subset(synthetic: SyntheticSplits) -> ImageDataset:
    return synthetic.test.subset(torch.arange(0, len(synthetic.test), 5))  # 200 images


def _validator_run(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    return Validator(m).run(ds.loader(batch_size=64), trigger=bd.trigger, target=bd.target)


def _validator_run_clean(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    return Validator(m, num_classes=10, runtime={"device": "cpu", "seed": 3}).run(ds)


def _validator_policy(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    rep = hk.Validator(m, policy=GatePolicy(min_ba=0.5, max_asr=0.1)).run(
        ds.loader(), trigger=bd.trigger, target=bd.target, baseline_ba=0.95
    )
    assert rep.passed is False  # the backdoor fires
    return rep


def _validator_run_policy(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    return hk.Validator(m).run(
        ds.loader(), trigger=bd.trigger, target=bd.target, policy={"max_asr": 1.0}
    )


def _benign_accuracy(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    return benign_accuracy(m, ds.loader())


def _asr(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    return attack_success_rate(m, ds.loader(), bd.trigger, bd.target)


def _ra(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    return robust_accuracy(m, ds.loader(), bd.trigger, bd.target)


def _fingerprint(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    return ModelFingerprint.of(m)


def _save_state_dict(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    path = save_state_dict(m, tmp / "m.safetensors", metadata={"arch": "small-cnn"})
    loaded = hk.load_state_dict(path)
    assert all(torch.equal(loaded[k], v.cpu()) for k, v in m.state_dict().items())
    return path


def _hk_save_state_dict(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    return hk.save_state_dict(m, tmp / "sub" / "m2.safetensors")


def _feature_extractor(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    x = ds.pixels()[:16]
    with FeatureExtractor(m, layers=["model.block2", "block3"]) as fx:
        logits, feats = fx(x)
        _, feats_again = fx(bd.trigger(x))
    assert logits.shape == (16, 10)
    assert feats["penultimate"].shape == (16, 64)
    assert set(feats_again) == {"penultimate", "model.block2", "block3"}
    return feats


def _feature_extractor_no_grad(
    m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path
) -> object:
    fx = FeatureExtractor(m, penultimate=True)
    try:
        with torch.no_grad():
            fx(ds.pixels()[:8])
    finally:
        fx.close()
    assert fx.closed
    return fx


def _penultimate(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    with torch.no_grad():
        feats = penultimate_features(m, ds.pixels()[:16])
    assert feats.shape == (16, 64)
    return feats


def _penultimate_with_grad(
    m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path
) -> object:
    """Gradients flow through the features, but backward() only fills .grad of the inputs."""
    x = ds.pixels()[:4].requires_grad_(True)
    feats = penultimate_features(m, x)
    feats.sum().backward(inputs=[x])
    assert x.grad is not None
    return feats


def _scanner_nc(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    cfg = {"max_images": 100, "detector_options": {"neural-cleanse": {"epochs": 1}}}
    return hk.Scanner(m, 10, config=cfg).run(ds.loader(batch_size=64))


def _scanner_mm_bd(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
    cfg = {"detectors": ["mm-bd"], "detector_options": {"mm-bd": {"steps": 2, "starts": 2}}}
    return hk.Scanner(m, 10, config=cfg, input_shape=(3, 32, 32)).run()


def _purify(strategy: str, cfg: dict[str, object]) -> Call:
    def call(m: nn.Module, bd: BackdooredModel, ds: ImageDataset, tmp: Path) -> object:
        scan = hk.ScanResult.from_triggers(
            {0: bd.trigger}, model=m, num_classes=10, trigger_asr={0: 1.0}
        )
        res = hk.Purifier(m, strategy, config=cfg).run(ds.loader(batch_size=64), scan=scan)
        assert res.model is not m
        return res

    return call


CALLS: dict[str, Call] = {
    "Purifier.run-finetune": _purify("finetune", {"epochs": 1}),
    "Purifier.run-nc-unlearn": _purify("nc-unlearn", {"epochs": 1}),
    "Purifier.run-mcl": _purify("mcl", {"epochs": 1}),
    "Purifier.run-d3": _purify("d3", {"epochs": 1}),
    "Purifier.run-auto": _purify(
        "auto", {"trigger_config": {"epochs": 1}, "fallback_config": {"epochs": 1}}
    ),
    "Scanner.run-neural-cleanse": _scanner_nc,
    "Scanner.run-mm-bd": _scanner_mm_bd,
    "Validator.run": _validator_run,
    "Validator.run-clean": _validator_run_clean,
    "hk.Validator(policy).run": _validator_policy,
    "Validator.run(policy=)": _validator_run_policy,
    "benign_accuracy": _benign_accuracy,
    "attack_success_rate": _asr,
    "robust_accuracy": _ra,
    "ModelFingerprint.of": _fingerprint,
    "io.save_state_dict": _save_state_dict,
    "hk.save_state_dict": _hk_save_state_dict,
    "FeatureExtractor": _feature_extractor,
    "FeatureExtractor-no-grad": _feature_extractor_no_grad,
    "penultimate_features": _penultimate,
    "penultimate_features-grad": _penultimate_with_grad,
}


@pytest.mark.parametrize("name", list(CALLS))
def test_call_leaves_model_unchanged(
    name: str, badnets_model: BackdooredModel, test_subset: ImageDataset, tmp_path: Path
) -> None:
    model = badnets_model.model
    assert not model.training  # make_backdoored_model returns an eval-mode model
    ref = copy.deepcopy(model)
    before = _snapshot(model)
    CALLS[name](model, badnets_model, test_subset, tmp_path)
    _assert_unchanged(model, before, ref)


# Calls that promise to evaluate in eval mode must not touch BatchNorm statistics even when
# the caller's model is in training mode.
EVAL_CALLS = [
    "Purifier.run-finetune",
    "Purifier.run-mcl",
    "Purifier.run-d3",
    "Scanner.run-neural-cleanse",
    "Scanner.run-mm-bd",
    "Validator.run",
    "Validator.run-clean",
    "hk.Validator(policy).run",
    "benign_accuracy",
    "attack_success_rate",
    "robust_accuracy",
    "ModelFingerprint.of",
    "io.save_state_dict",
]


@pytest.mark.parametrize("name", EVAL_CALLS)
def test_call_leaves_training_mode_model_unchanged(
    name: str, badnets_model: BackdooredModel, test_subset: ImageDataset, tmp_path: Path
) -> None:
    model = copy.deepcopy(badnets_model.model).train()
    ref = copy.deepcopy(model)
    before = _snapshot(model)
    CALLS[name](model, badnets_model, test_subset, tmp_path)
    _assert_unchanged(model, before, ref)
    assert model.training


def test_repeated_validation_is_identical(
    badnets_model: BackdooredModel, test_subset: ImageDataset
) -> None:
    """No hidden state: two runs give the same counts, and the model fingerprint is stable."""
    a = _validator_run(badnets_model.model, badnets_model, test_subset, Path())
    b = _validator_run(badnets_model.model, badnets_model, test_subset, Path())
    assert isinstance(a, hk.ValidationReport)
    assert isinstance(b, hk.ValidationReport)
    assert a.benign_accuracy == b.benign_accuracy
    assert a.attack_success_rate == b.attack_success_rate
    assert a.model == b.model


def test_the_trigger_and_test_data_are_unchanged(
    badnets_model: BackdooredModel, test_subset: ImageDataset
) -> None:
    images, labels = test_subset.images.clone(), test_subset.labels.clone()
    pattern = badnets_model.trigger.tensors()["pattern"].clone()
    Validator(badnets_model.model).run(
        test_subset.loader(), trigger=badnets_model.trigger, target=badnets_model.target
    )
    assert torch.equal(test_subset.images, images)
    assert torch.equal(test_subset.labels, labels)
    assert torch.equal(badnets_model.trigger.tensors()["pattern"], pattern)

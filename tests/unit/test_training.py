"""Unit tests for hardenkit.training: augmentation, schedules, optimizers, the train loop."""

from __future__ import annotations

import copy
import math
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hardenkit.config import RuntimeConfig
from hardenkit.data import SyntheticSplits
from hardenkit.errors import (
    ConfigError,
    DataError,
    DeviceError,
    ModelCompatibilityError,
    NonFiniteError,
)
from hardenkit.models import create_model
from hardenkit.training import (
    TrainConfig,
    TrainHistory,
    augment_batch,
    build_optimizer,
    build_scheduler,
    evaluate_accuracy,
    predict,
    train_model,
)

CPU = RuntimeConfig(device="cpu", seed=0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """On a shared 2-core machine one intra-op thread is ~10x faster for these tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _linear_model(in_features: int = 3 * 4 * 4, k: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, k))


def _linear_data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 4, 4, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    return x, y


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------
# augment_batch
# --------------------------------------------------------------------------------------


def _arange_images(n: int = 6, c: int = 2, h: int = 5, w: int = 7) -> torch.Tensor:
    return torch.arange(1, 1 + n * c * h * w, dtype=torch.float32).view(n, c, h, w)


def _matching_crops(img: torch.Tensor, out: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """All (dy, dx, flip) whose crop of the zero-padded ``img`` equals ``out``."""
    _, h, w = img.shape
    padded = F.pad(img, (pad, pad, pad, pad))
    found = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for flip in (False, True):
                cand = crop.flip(-1) if flip else crop
                if torch.equal(cand, out):
                    found.append((dy, dx, flip))
    return found


def test_augment_batch_is_a_crop_of_the_padded_image() -> None:
    x = _arange_images(n=40)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    params = []
    for i in range(len(x)):
        values = set(out[i].unique().tolist())
        assert values <= set(x[i].unique().tolist()) | {0.0}, "only image pixels or zero padding"
        found = _matching_crops(x[i], out[i], pad=2)
        assert len(found) == 1, f"sample {i} is not a padded crop (+flip) of its image"
        params.append(found[0])
    # the random parameters actually vary
    assert {f for _, _, f in params} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in params}) > 5


def test_augment_batch_pad_zero_is_identity_or_flip() -> None:
    x = _arange_images(n=20)
    out = augment_batch(x, torch.Generator().manual_seed(3), pad=0)
    flips = 0
    for i in range(len(x)):
        if torch.equal(out[i], x[i].flip(-1)):
            flips += 1
        else:
            assert torch.equal(out[i], x[i])
    assert 0 < flips < len(x)


def test_augment_batch_deterministic_with_generator_seed() -> None:
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = augment_batch(x, torch.Generator().manual_seed(7))
    b = augment_batch(x, torch.Generator().manual_seed(7))
    c = augment_batch(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (16, 3, 8, 8)
    assert torch.equal(x, torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)))


# --------------------------------------------------------------------------------------
# schedules and optimizers
# --------------------------------------------------------------------------------------


def _lrs(schedule: str, total: int, lr: float = 0.1) -> list[float]:
    cfg = TrainConfig(schedule=schedule, lr=lr)  # type: ignore[arg-type]
    opt = build_optimizer([nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg, total)
    out = []
    for _ in range(total + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_schedule() -> None:
    lrs = _lrs("cosine", 100)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[50] == pytest.approx(0.05)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in pairwise(lrs)), "monotonically decaying"


def test_onecycle_schedule_warms_up() -> None:
    lrs = _lrs("onecycle", 100)
    warm = 15  # 15% of the steps
    assert lrs[0] == pytest.approx(0.1 / warm)
    assert all(a < b for a, b in pairwise(lrs[:warm])), "warm-up rises"
    assert max(lrs) == pytest.approx(0.1)
    assert lrs[warm - 1] == pytest.approx(0.1)
    assert lrs[warm] == pytest.approx(0.1)
    assert all(a >= b for a, b in pairwise(lrs[warm:]))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule() -> None:
    assert _lrs("constant", 20) == [pytest.approx(0.1)] * 21


def test_schedule_with_zero_steps() -> None:
    for schedule in ("cosine", "onecycle", "constant"):
        lrs = _lrs(schedule, 0)
        assert lrs
        assert all(math.isfinite(v) for v in lrs)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_build_optimizer(name: str, cls: type) -> None:
    cfg = TrainConfig(optimizer=name, lr=0.01, weight_decay=1e-3)  # type: ignore[arg-type]
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], cfg)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.01)
    assert group["weight_decay"] == pytest.approx(1e-3)
    if name == "sgd":
        assert group["momentum"] == pytest.approx(0.9)
        assert group["nesterov"] is True


def test_sgd_without_momentum_is_not_nesterov() -> None:
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], TrainConfig(momentum=0.0))
    assert opt.param_groups[0]["nesterov"] is False


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_train_with_each_optimizer(optimizer: str) -> None:
    x, y = _linear_data()
    model = _linear_model()
    before = copy.deepcopy(model)
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer=optimizer, lr=0.01, augment=False)  # type: ignore[arg-type]
    hist = train_model(model, x, y, cfg, runtime=CPU)
    assert not _same_weights(model, before)
    assert all(math.isfinite(e.loss) for e in hist.epochs)


# --------------------------------------------------------------------------------------
# train_model
# --------------------------------------------------------------------------------------


def test_train_model_is_deterministic(tiny_synthetic: SyntheticSplits) -> None:
    torch.manual_seed(0)
    init = create_model("small-cnn", 4, width=4)
    x, y = tiny_synthetic.train.images, tiny_synthetic.train.labels
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, augment=True)
    m1, m2, m3 = copy.deepcopy(init), copy.deepcopy(init), copy.deepcopy(init)
    h1 = train_model(m1, x, y, cfg, runtime=RuntimeConfig(device="cpu", seed=3))
    h2 = train_model(m2, x, y, cfg, runtime=RuntimeConfig(device="cpu", seed=3))
    train_model(m3, x, y, cfg, runtime=RuntimeConfig(device="cpu", seed=4))
    assert _same_weights(m1, m2)
    assert h1.epochs[0].loss == h2.epochs[0].loss
    assert not _same_weights(m1, m3)
    assert not _same_weights(m1, init)


def test_a_model_that_ends_in_a_softmax_trains_on_its_logits(
    tiny_synthetic: SyntheticSplits,
) -> None:
    """Cross-entropy on probabilities hardly moves a model; train_model detects a final softmax
    on the first batch and trains on log(p) — the same gradients as the logits (stop 44)."""
    torch.manual_seed(0)
    init = create_model("small-cnn", 4, width=4)
    x, y = tiny_synthetic.train.images, tiny_synthetic.train.labels
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, augment=False)
    plain = copy.deepcopy(init)
    soft = nn.Sequential(copy.deepcopy(init), nn.Softmax(dim=1))
    h1 = train_model(plain, x, y, cfg, runtime=CPU)
    h2 = train_model(soft, x, y, cfg, runtime=CPU)
    assert h2.epochs[0].loss == pytest.approx(h1.epochs[0].loss, rel=1e-4)
    trained = soft[0].state_dict()
    for name, w in plain.state_dict().items():
        assert torch.allclose(w.float(), trained[name].float(), atol=1e-4), name
    assert not _same_weights(plain, init)


def test_train_model_learns(tiny_synthetic: SyntheticSplits) -> None:
    torch.manual_seed(0)
    model = create_model("small-cnn", 4, width=8)
    train, test = tiny_synthetic.train, tiny_synthetic.test
    xt, yt = test.tensors()
    acc_before = evaluate_accuracy(model, xt, yt, runtime=CPU)
    calls: list[tuple[str, int, int]] = []
    hist = train_model(
        model,
        train.images,
        train.labels,
        TrainConfig(epochs=3, batch_size=32, lr=0.05, augment=False),
        runtime=CPU,
        eval_data=(xt, yt),
        progress=lambda phase, step, total, **info: calls.append((phase, step, total)),
        phase="unit",
    )
    assert isinstance(hist, TrainHistory)
    assert [e.epoch for e in hist.epochs] == [1, 2, 3]
    assert hist.steps == 3 * (160 // 32)
    assert hist.final_loss == hist.epochs[-1].loss
    assert hist.epochs[-1].loss < hist.epochs[0].loss
    assert hist.epochs[-1].train_accuracy > hist.epochs[0].train_accuracy
    assert hist.epochs[-1].lr == pytest.approx(0.0, abs=1e-9)  # cosine reaches 0
    acc_after = evaluate_accuracy(model, xt, yt, runtime=CPU)
    assert acc_after >= 0.6
    assert acc_after > acc_before + 0.2
    assert hist.epochs[-1].eval_accuracy == pytest.approx(acc_after)
    assert calls == [("unit", 1, 3), ("unit", 2, 3), ("unit", 3, 3)]
    assert model.training is False
    assert hist.seconds > 0


def test_train_model_small_data_and_options() -> None:
    x, y = _linear_data(10)
    model = _linear_model()
    cfg = TrainConfig(
        epochs=2,
        batch_size=4,
        augment=False,
        grad_clip=0.1,
        label_smoothing=0.1,
        schedule="constant",
    )
    hist = train_model(model, (x * 255).round().to(torch.uint8), y, cfg, runtime=CPU)
    assert hist.steps == 2 * 2  # 10 samples, batch 4: two full batches per epoch
    hist_small = train_model(
        _linear_model(), x, y, TrainConfig(epochs=1, batch_size=64), runtime=CPU
    )
    assert hist_small.steps == 1  # fewer samples than one batch: one step with all of them


def test_train_model_custom_loss_fn() -> None:
    x, y = _linear_data()
    seen: list[int] = []

    def loss_fn(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        seen.append(len(xb))
        return model(xb).pow(2).mean()

    model = _linear_model()
    hist = train_model(
        model,
        x,
        y,
        TrainConfig(epochs=1, batch_size=8, augment=False),
        runtime=CPU,
        loss_fn=loss_fn,
    )
    assert seen == [8, 8, 8, 8]
    assert hist.epochs[0].train_accuracy == 0.0  # no logits to score


def test_train_model_divergence_raises() -> None:
    x, y = _linear_data()

    def nan_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return model(xb).sum() * float("nan")

    with pytest.raises(NonFiniteError, match="diverged"):
        train_model(
            _linear_model(),
            x,
            y,
            TrainConfig(epochs=1, batch_size=8, augment=False),
            runtime=CPU,
            loss_fn=nan_loss,
        )


@pytest.mark.parametrize(
    "model",
    [
        nn.Conv2d(3, 2, 3),  # 4-D output
        nn.Sequential(nn.Flatten(0), nn.Linear(3 * 4 * 4 * 8, 2)),  # batch axis lost
        nn.Sequential(nn.Flatten(), nn.Linear(48, 4), nn.Flatten(0)),  # 1-D output
    ],
    ids=["conv-map", "no-batch", "flat"],
)
def test_wrong_output_shape_raises(model: nn.Module) -> None:
    x, y = _linear_data(8)
    with pytest.raises(ModelCompatibilityError, match="logits"):
        train_model(model, x, y, TrainConfig(epochs=1, batch_size=8, augment=False), runtime=CPU)
    with pytest.raises(ModelCompatibilityError, match="logits"):
        predict(model, x, runtime=CPU)


def test_too_few_logits_for_labels_raises_model_compatibility_error() -> None:
    x = torch.rand(8, 3, 4, 4)
    y = torch.arange(8) % 4  # 4 classes
    model = _linear_model(k=2)  # but only 2 logits
    with pytest.raises(ModelCompatibilityError):
        train_model(model, x, y, TrainConfig(epochs=1, batch_size=8, augment=False), runtime=CPU)


def test_empty_or_misaligned_data_raises() -> None:
    model = _linear_model()
    with pytest.raises(DataError, match="non-empty"):
        train_model(model, torch.empty(0, 3, 4, 4), torch.empty(0, dtype=torch.long), runtime=CPU)
    x, y = _linear_data(8)
    with pytest.raises(DataError, match="8 images, 7 labels"):
        train_model(model, x, y[:7], runtime=CPU)


def test_train_model_rejects_cuda_on_cpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    x, y = _linear_data(8)
    with pytest.raises(DeviceError, match="CUDA"):
        train_model(_linear_model(), x, y, runtime=RuntimeConfig(device="cuda"))


# --------------------------------------------------------------------------------------
# predict / evaluate_accuracy
# --------------------------------------------------------------------------------------


def test_predict_restores_training_flag_and_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    x = torch.rand(10, 3, 4, 4)
    model.train()
    out = predict(model, x, batch_size=3, runtime=CPU)
    assert model.training is True
    model.eval()
    expected = model(x)
    assert torch.allclose(out, expected, atol=1e-6), "dropout was off during predict"
    assert out.shape == (10, 3)
    assert out.device.type == "cpu"
    predict(model, x, runtime=CPU)
    assert model.training is False
    # uint8 inputs are converted to [0, 1] pixels and a transform is applied per batch
    u8 = (x * 255).round().to(torch.uint8)
    seen: list[float] = []

    def transform(xb: torch.Tensor) -> torch.Tensor:
        seen.append(float(xb.max()))
        return xb.clamp(max=0.5)

    out_t = predict(model, u8, batch_size=4, runtime=CPU, transform=transform)
    assert len(seen) == 3
    assert max(seen) <= 1.0
    assert torch.allclose(out_t, model((u8.float() / 255).clamp(max=0.5)), atol=1e-5)
    assert predict(model, x[:0], runtime=CPU).numel() == 0


def test_predict_restores_training_flag_on_error() -> None:
    model = nn.Conv2d(3, 2, 3)
    model.train()
    with pytest.raises(ModelCompatibilityError):
        predict(model, torch.rand(2, 3, 4, 4), runtime=CPU)
    assert model.training is True


def test_evaluate_accuracy() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(len(x), 3)
            logits[:, 1] = 1.0
            return logits

    x = torch.rand(8, 3, 4, 4)
    y = torch.tensor([1, 1, 1, 0, 2, 1, 0, 0])
    assert evaluate_accuracy(Fixed(), x, y, runtime=CPU) == pytest.approx(0.5)
    with pytest.raises(DataError, match="empty"):
        evaluate_accuracy(Fixed(), x[:0], y[:0], runtime=CPU)


# --------------------------------------------------------------------------------------
# TrainConfig
# --------------------------------------------------------------------------------------


def test_train_config_defaults() -> None:
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.schedule) == (10, 128, "sgd", "cosine")
    assert cfg.augment is True
    assert cfg.grad_clip is None
    assert cfg.channels_last == "auto"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", -0.1),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("weight_decay", -1e-4),
        ("optimizer", "rmsprop"),
        ("schedule", "step"),
        ("label_smoothing", 1.0),
        ("grad_clip", 0.0),
        ("channels_last", "sometimes"),
        ("epochs", "many"),
    ],
)
def test_train_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        TrainConfig(**{field: value})
    assert isinstance(info.value, ValueError)


def test_train_config_rejects_unknown_key_and_is_frozen() -> None:
    with pytest.raises(ConfigError, match="epoch"):
        TrainConfig(epoch=3)  # type: ignore[call-arg]
    cfg = TrainConfig(epochs=2)
    with pytest.raises(ValueError, match="frozen"):
        cfg.epochs = 3  # type: ignore[misc]
    assert cfg.with_updates(epochs=4).epochs == 4
    assert cfg.epochs == 2

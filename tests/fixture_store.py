"""Trained test fixtures, committed, so a test session loads weights instead of training them.

The integration tests' backdoored and clean models (``tests/conftest.py``,
``tests/integration/conftest.py``, ``tests/integration/test_pruning_removes.py``) took about
four minutes of single-thread CPU to train, once per pytest-xdist worker. Their weights and
training histories are committed under ``tests/fixtures/models/`` (about 1 MB in all).

:func:`stored_training` wraps :func:`hardenkit.train_model` (and, inside
:func:`hardenkit.make_backdoored_model`, the factory's call to it). Training is a pure function
of the model's initial weights, the images and labels, the :class:`~hardenkit.TrainConfig`,
the runtime seed, and the training code; all of them, with torch's version, are hashed into the
fixture's key. When the stored key matches, the stored weights are loaded into the given model
(same memory format and mode as after training) and the stored history is returned: the
weights are the ones training would produce, bit for bit. When it does not match — the
recipe, the data, the architecture or ``hardenkit/training.py`` changed — the model is trained
as before (correct, only slower) and a :class:`StaleFixtureWarning` names it in pytest's
warnings summary.

Rebuild every stored fixture (about four minutes) after such a change::

    python -m tests.fixture_store

"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import hardenkit as hk
from hardenkit.io import load_model_weights, save_state_dict
from hardenkit.training import EpochStats, TrainHistory
from hardenkit.training import train_model as _real_train_model

STORE = Path(__file__).resolve().parent / "fixtures" / "models"
INDEX = STORE / "index.json"
TRAINING_SOURCE = Path(hk.__file__).resolve().parent / "training.py"
REBUILD_ENV = "HARDENKIT_REBUILD_TEST_FIXTURES"


class StaleFixtureWarning(UserWarning):
    """A stored fixture's key did not match, so it was trained (pytest's warnings summary)."""


def _sha(h: Any, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())


def fixture_key(
    model: nn.Module, x: Tensor, y: Tensor, config: hk.TrainConfig, seed: int, phase: str
) -> str:
    """Hash of everything the trained weights depend on."""
    h = hashlib.sha256()
    h.update(torch.__version__.split("+")[0].encode())
    h.update(TRAINING_SOURCE.read_bytes())
    h.update(config.model_dump_json().encode())
    h.update(f"seed={seed};phase={phase};class={type(model).__qualname__}".encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        _sha(h, v)
    _sha(h, x)
    _sha(h, y)
    return h.hexdigest()[:32]


def _index() -> dict[str, Any]:
    return json.loads(INDEX.read_text()) if INDEX.is_file() else {}


def _history(record: dict[str, Any]) -> TrainHistory:
    epochs = [EpochStats(**e) for e in record["epochs"]]
    return TrainHistory(
        epochs=epochs,
        seconds=record["seconds"],
        steps=record["steps"],
        stopped=record["stopped"],
    )


def _cached_train_model(name: str) -> Callable[..., TrainHistory]:
    def train(
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        config: hk.TrainConfig | dict[str, Any] | None = None,
        **kw: Any,
    ) -> TrainHistory:
        plain = {"runtime", "progress", "phase"}
        if set(kw) - plain or not isinstance(x, Tensor):  # anything else: train for real
            return _real_train_model(model, x, y, config, **kw)
        cfg = hk.TrainConfig.model_validate(config or {})
        rt = hk.RuntimeConfig.model_validate(kw.get("runtime") or {})
        if rt.resolve_device().type != "cpu":
            return _real_train_model(model, x, y, config, **kw)
        key = fixture_key(model, x, y, cfg, rt.seed, kw.get("phase", "train"))
        record = _index().get(name)
        path = STORE / f"{name}.safetensors"
        if record is not None and record["key"] == key and path.is_file() and not _rebuild():
            load_model_weights(model, path)
            if (len(x.shape) == 4) if cfg.channels_last == "auto" else bool(cfg.channels_last):
                model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            return _history(record["history"])
        hist = _real_train_model(model, x, y, config, **kw)
        if _rebuild():
            STORE.mkdir(parents=True, exist_ok=True)
            save_state_dict(model, path)
            index = _index()
            index[name] = {"key": key, "history": dataclasses.asdict(hist)}
            INDEX.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        else:
            warnings.warn(
                f"test fixture {name!r} was trained: its stored weights are missing or stale "
                "(recipe, data, architecture, torch or hardenkit/training.py changed); "
                "rebuild them with `python -m tests.fixture_store`",
                StaleFixtureWarning,
                stacklevel=2,
            )
        return hist

    return train


def _rebuild() -> bool:
    return os.environ.get(REBUILD_ENV) == "1"


@contextlib.contextmanager
def stored_training(name: str) -> Iterator[None]:
    """Inside this block, hardenkit's ``train_model`` loads the stored fixture ``name`` when its
    key matches (see the module docstring), and trains otherwise."""
    import hardenkit.attacks.factory as factory

    train = _cached_train_model(name)
    saved = (hk.train_model, factory.train_model)
    hk.train_model = train  # type: ignore[assignment]
    factory.train_model = train  # type: ignore[assignment]
    try:
        yield
    finally:
        hk.train_model, factory.train_model = saved  # type: ignore[assignment]


def main() -> int:
    """Retrain every stored fixture and rewrite ``tests/fixtures/models/``."""
    os.environ[REBUILD_ENV] = "1"
    torch.set_num_threads(1)  # the tests' setting (tests/conftest.py)
    from tests import conftest
    from tests.integration import conftest as integration
    from tests.integration import test_pruning_removes as pruning

    data = hk.make_synthetic_dataset(num_classes=10, train_per_class=500, test_per_class=100)
    for attack in conftest.ATTACK_EPOCHS:
        conftest.train_backdoored(attack, data)
    conftest.train_clean(data)
    pruning.train_wide(data)
    integration.train_all_to_all(integration.make_all_to_all_data())
    for name, record in sorted(_index().items()):
        print(f"{name}: key {record['key']}, {(STORE / f'{name}.safetensors').stat().st_size} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

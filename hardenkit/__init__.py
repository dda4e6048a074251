"""hardenkit: find and remove backdoors in PyTorch image classifiers, ship them to ONNX.

The public facade. Images are float pixels in [0, 1] (NCHW); normalization lives inside
the model. Nothing here modifies the caller's model.

Example:
    >>> import hardenkit as hk
    >>> data = hk.data.make_synthetic_dataset(num_classes=4, train_per_class=40, test_per_class=10)
    >>> bd = hk.make_backdoored_model("badnets", data.train,
    ...                               train_config=hk.TrainConfig(epochs=1, batch_size=32))
    >>> report = hk.Validator(bd.model).run(
    ...     data.test.loader(), trigger=bd.trigger, target=bd.target
    ... )
    >>> 0.0 <= report.ba <= 1.0
    True
"""

# The names below are imported on first use (PEP 562), so that ``import hardenkit`` (and the
# ``hardenkit`` console script, whose ``--help`` must stay fast) does not import torch.
# ``hk.Purifier``, ``from hardenkit import Purifier`` and ``dir(hardenkit)`` work as before.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from . import attacks, data, export, gate, models, purify, robust, scan, triggers, validate
    from ._utils.progress import ProgressCallback
    from .attacks import BackdooredModel, build_attack, make_backdoored_model
    from .config import HardenkitConfig, Normalization, RuntimeConfig
    from .data import ImageDataset, make_synthetic_dataset
    from .errors import (
        ConfigError,
        DataError,
        DependencyError,
        DeviceError,
        ExecutionProviderError,
        ExportError,
        HardenkitError,
        HardenkitWarning,
        IntegrationError,
        ModelCompatibilityError,
        NonFiniteError,
        ParityError,
        RegistryError,
        UnsafeArtifactError,
    )
    from .export import ExportReport, VerificationReport, to_onnx, verify_onnx
    from .gate import DeploymentPolicy, Gate, GateReport, GateResult
    from .io import load_model_weights, load_state_dict, save_state_dict
    from .logging import configure_logging, get_logger
    from .models import build_model, create_model, list_models, with_normalization
    from .purify import PurificationReport, PurificationResult, Purifier
    from .registry import Registry
    from .reports import BaseReport, EnvironmentInfo, ModelFingerprint
    from .robust import RobustTrainer, TrainingReport, TrainingResult
    from .scan import ScanConfig, Scanner, ScanReport, ScanResult
    from .training import TrainConfig, train_model
    from .triggers import (
        AdditiveTrigger,
        AlternatingTrigger,
        BlendTrigger,
        CallableTrigger,
        MaskPatternTrigger,
        PatchTrigger,
        QuantizeTrigger,
        Trigger,
        WarpTrigger,
    )
    from .validate import (
        GateDecision,
        GatePolicy,
        ValidationReport,
        Validator,
        attack_success_rate,
        benign_accuracy,
        der,
        robust_accuracy,
    )

_LAZY: dict[str, tuple[str, str | None]] = {
    "AdditiveTrigger": (".triggers", "AdditiveTrigger"),
    "attack_success_rate": (".validate", "attack_success_rate"),
    "attacks": (".attacks", None),
    "BackdooredModel": (".attacks", "BackdooredModel"),
    "BaseReport": (".reports", "BaseReport"),
    "benign_accuracy": (".validate", "benign_accuracy"),
    "BlendTrigger": (".triggers", "BlendTrigger"),
    "build_attack": (".attacks", "build_attack"),
    "build_model": (".models", "build_model"),
    "CallableTrigger": (".triggers", "CallableTrigger"),
    "ConfigError": (".errors", "ConfigError"),
    "configure_logging": (".logging", "configure_logging"),
    "create_model": (".models", "create_model"),
    "data": (".data", None),
    "DataError": (".errors", "DataError"),
    "DependencyError": (".errors", "DependencyError"),
    "der": (".validate", "der"),
    "DeviceError": (".errors", "DeviceError"),
    "EnvironmentInfo": (".reports", "EnvironmentInfo"),
    "ExecutionProviderError": (".errors", "ExecutionProviderError"),
    "export": (".export", None),
    "ExportError": (".errors", "ExportError"),
    "ExportReport": (".export", "ExportReport"),
    "DeploymentPolicy": (".gate", "DeploymentPolicy"),
    "Gate": (".gate", "Gate"),
    "gate": (".gate", None),
    "GateDecision": (".validate", "GateDecision"),
    "GatePolicy": (".validate", "GatePolicy"),
    "GateReport": (".gate", "GateReport"),
    "GateResult": (".gate", "GateResult"),
    "get_logger": (".logging", "get_logger"),
    "HardenkitConfig": (".config", "HardenkitConfig"),
    "HardenkitError": (".errors", "HardenkitError"),
    "HardenkitWarning": (".errors", "HardenkitWarning"),
    "ImageDataset": (".data", "ImageDataset"),
    "IntegrationError": (".errors", "IntegrationError"),
    "list_models": (".models", "list_models"),
    "load_model_weights": (".io", "load_model_weights"),
    "load_state_dict": (".io", "load_state_dict"),
    "make_backdoored_model": (".attacks", "make_backdoored_model"),
    "make_synthetic_dataset": (".data", "make_synthetic_dataset"),
    "MaskPatternTrigger": (".triggers", "MaskPatternTrigger"),
    "ModelCompatibilityError": (".errors", "ModelCompatibilityError"),
    "ModelFingerprint": (".reports", "ModelFingerprint"),
    "models": (".models", None),
    "NonFiniteError": (".errors", "NonFiniteError"),
    "Normalization": (".config", "Normalization"),
    "ParityError": (".errors", "ParityError"),
    "PatchTrigger": (".triggers", "PatchTrigger"),
    "QuantizeTrigger": (".triggers", "QuantizeTrigger"),
    "ProgressCallback": ("._utils.progress", "ProgressCallback"),
    "PurificationReport": (".purify", "PurificationReport"),
    "PurificationResult": (".purify", "PurificationResult"),
    "Purifier": (".purify", "Purifier"),
    "purify": (".purify", None),
    "Registry": (".registry", "Registry"),
    "RegistryError": (".errors", "RegistryError"),
    "robust": (".robust", None),
    "RobustTrainer": (".robust", "RobustTrainer"),
    "robust_accuracy": (".validate", "robust_accuracy"),
    "RuntimeConfig": (".config", "RuntimeConfig"),
    "save_state_dict": (".io", "save_state_dict"),
    "scan": (".scan", None),
    "ScanConfig": (".scan", "ScanConfig"),
    "Scanner": (".scan", "Scanner"),
    "ScanReport": (".scan", "ScanReport"),
    "ScanResult": (".scan", "ScanResult"),
    "to_onnx": (".export", "to_onnx"),
    "train_model": (".training", "train_model"),
    "TrainConfig": (".training", "TrainConfig"),
    "TrainingReport": (".robust", "TrainingReport"),
    "TrainingResult": (".robust", "TrainingResult"),
    "Trigger": (".triggers", "Trigger"),
    "triggers": (".triggers", None),
    "UnsafeArtifactError": (".errors", "UnsafeArtifactError"),
    "validate": (".validate", None),
    "ValidationReport": (".validate", "ValidationReport"),
    "Validator": (".validate", "Validator"),
    "VerificationReport": (".export", "VerificationReport"),
    "verify_onnx": (".export", "verify_onnx"),
    "WarpTrigger": (".triggers", "WarpTrigger"),
    "AlternatingTrigger": (".triggers", "AlternatingTrigger"),
    "with_normalization": (".models", "with_normalization"),
}
"""Public name -> (submodule, attribute); attribute None means the submodule itself."""


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    mod = importlib.import_module(module, __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AdditiveTrigger",
    "AlternatingTrigger",
    "BackdooredModel",
    "BaseReport",
    "BlendTrigger",
    "CallableTrigger",
    "ConfigError",
    "DataError",
    "DependencyError",
    "DeploymentPolicy",
    "DeviceError",
    "EnvironmentInfo",
    "ExecutionProviderError",
    "ExportError",
    "ExportReport",
    "Gate",
    "GateDecision",
    "GatePolicy",
    "GateReport",
    "GateResult",
    "HardenkitConfig",
    "HardenkitError",
    "HardenkitWarning",
    "ImageDataset",
    "IntegrationError",
    "MaskPatternTrigger",
    "ModelCompatibilityError",
    "ModelFingerprint",
    "NonFiniteError",
    "Normalization",
    "ParityError",
    "PatchTrigger",
    "ProgressCallback",
    "PurificationReport",
    "PurificationResult",
    "Purifier",
    "QuantizeTrigger",
    "Registry",
    "RegistryError",
    "RobustTrainer",
    "RuntimeConfig",
    "ScanConfig",
    "ScanReport",
    "ScanResult",
    "Scanner",
    "TrainConfig",
    "TrainingReport",
    "TrainingResult",
    "Trigger",
    "UnsafeArtifactError",
    "ValidationReport",
    "Validator",
    "VerificationReport",
    "WarpTrigger",
    "__version__",
    "attack_success_rate",
    "attacks",
    "benign_accuracy",
    "build_attack",
    "build_model",
    "configure_logging",
    "create_model",
    "data",
    "der",
    "export",
    "gate",
    "get_logger",
    "list_models",
    "load_model_weights",
    "load_state_dict",
    "make_backdoored_model",
    "make_synthetic_dataset",
    "models",
    "purify",
    "robust",
    "robust_accuracy",
    "save_state_dict",
    "scan",
    "to_onnx",
    "train_model",
    "triggers",
    "validate",
    "verify_onnx",
    "with_normalization",
]

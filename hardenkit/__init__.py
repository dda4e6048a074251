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

from . import attacks, data, export, models, purify, scan, triggers, validate
from ._utils.progress import ProgressCallback
from ._version import __version__
from .attacks import BackdooredModel, build_attack, make_backdoored_model
from .config import HardenkitConfig, Normalization, RuntimeConfig
from .data import ImageDataset, make_synthetic_dataset
from .errors import (
    ConfigError,
    DataError,
    DeviceError,
    ExecutionProviderError,
    ExportError,
    HardenkitError,
    HardenkitWarning,
    ModelCompatibilityError,
    NonFiniteError,
    ParityError,
    RegistryError,
    UnsafeArtifactError,
)
from .export import ExportReport, VerificationReport, to_onnx, verify_onnx
from .io import load_model_weights, load_state_dict, save_state_dict
from .logging import configure_logging, get_logger
from .models import build_model, create_model, list_models, with_normalization
from .purify import PurificationReport, PurificationResult, Purifier
from .registry import Registry
from .reports import BaseReport, EnvironmentInfo, ModelFingerprint
from .scan import ScanConfig, Scanner, ScanReport, ScanResult
from .training import TrainConfig, train_model
from .triggers import (
    AdditiveTrigger,
    BlendTrigger,
    CallableTrigger,
    MaskPatternTrigger,
    PatchTrigger,
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

__all__ = [
    "AdditiveTrigger",
    "BackdooredModel",
    "BaseReport",
    "BlendTrigger",
    "CallableTrigger",
    "ConfigError",
    "DataError",
    "DeviceError",
    "EnvironmentInfo",
    "ExecutionProviderError",
    "ExportError",
    "ExportReport",
    "GateDecision",
    "GatePolicy",
    "HardenkitConfig",
    "HardenkitError",
    "HardenkitWarning",
    "ImageDataset",
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
    "Registry",
    "RegistryError",
    "RuntimeConfig",
    "ScanConfig",
    "ScanReport",
    "ScanResult",
    "Scanner",
    "TrainConfig",
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
    "get_logger",
    "list_models",
    "load_model_weights",
    "load_state_dict",
    "make_backdoored_model",
    "make_synthetic_dataset",
    "models",
    "purify",
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

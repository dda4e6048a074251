"""Model-level backdoor scanning: trigger inversion batched over classes (Neural Cleanse,
PixelBackdoor, warp, smooth signal), the prediction share (labels the model never predicts on
clean images) and data-free MM-BD.

Example:
    >>> import hardenkit as hk
    >>> from hardenkit.scan import DETECTORS
    >>> DETECTORS.names()
    ['mm-bd', 'neural-cleanse', 'pixel', 'prediction-share', 'signal', 'warp']
"""

from .anomaly import AnomalyStats, gamma_max_pvalue, logistic_score, mad_anomaly
from .base import (
    DETECTORS,
    Detector,
    DetectorConfig,
    DetectorContext,
    DetectorOutput,
    Inversion,
)
from .budget import SCAN_BUDGETS, estimate_scan_seconds, scan_config_for_budget
from .mm_bd import MaxMarginConfig, MaxMarginDetector
from .neural_cleanse import NeuralCleanse, NeuralCleanseConfig
from .pixel import PixelConfig, PixelDetector
from .scanner import (
    ClassScan,
    DetectorClassRow,
    DetectorReport,
    LabelRecheck,
    ScanConfig,
    Scanner,
    ScanReport,
    ScanResult,
    Verdict,
)
from .share import PredictionShareConfig, PredictionShareDetector
from .smooth import SmoothSignalConfig, SmoothSignalDetector
from .warp import WarpConfig, WarpDetector

__all__ = [
    "DETECTORS",
    "SCAN_BUDGETS",
    "AnomalyStats",
    "ClassScan",
    "Detector",
    "DetectorClassRow",
    "DetectorConfig",
    "DetectorContext",
    "DetectorOutput",
    "DetectorReport",
    "Inversion",
    "LabelRecheck",
    "MaxMarginConfig",
    "MaxMarginDetector",
    "NeuralCleanse",
    "NeuralCleanseConfig",
    "PixelConfig",
    "PixelDetector",
    "PredictionShareConfig",
    "PredictionShareDetector",
    "ScanConfig",
    "ScanReport",
    "ScanResult",
    "Scanner",
    "SmoothSignalConfig",
    "SmoothSignalDetector",
    "Verdict",
    "WarpConfig",
    "WarpDetector",
    "estimate_scan_seconds",
    "gamma_max_pvalue",
    "logistic_score",
    "mad_anomaly",
    "scan_config_for_budget",
]

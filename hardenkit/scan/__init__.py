"""Model-level backdoor scanning: Neural Cleanse (batched over classes) and data-free MM-BD.

Example:
    >>> import hardenkit as hk
    >>> from hardenkit.scan import DETECTORS
    >>> DETECTORS.names()
    ['mm-bd', 'neural-cleanse']
"""

from .anomaly import AnomalyStats, gamma_max_pvalue, logistic_score, mad_anomaly
from .base import DETECTORS, Detector, DetectorConfig, DetectorContext, DetectorOutput
from .mm_bd import MaxMarginConfig, MaxMarginDetector
from .neural_cleanse import NeuralCleanse, NeuralCleanseConfig
from .scanner import (
    ClassScan,
    DetectorClassRow,
    DetectorReport,
    ScanConfig,
    Scanner,
    ScanReport,
    ScanResult,
    Verdict,
)

__all__ = [
    "DETECTORS",
    "AnomalyStats",
    "ClassScan",
    "Detector",
    "DetectorClassRow",
    "DetectorConfig",
    "DetectorContext",
    "DetectorOutput",
    "DetectorReport",
    "MaxMarginConfig",
    "MaxMarginDetector",
    "NeuralCleanse",
    "NeuralCleanseConfig",
    "ScanConfig",
    "ScanReport",
    "ScanResult",
    "Scanner",
    "Verdict",
    "gamma_max_pvalue",
    "logistic_score",
    "mad_anomaly",
]

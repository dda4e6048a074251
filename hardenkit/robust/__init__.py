"""Robust training: train a clean model from an untrusted (possibly poisoned) training set.

Strategies are plug-ins (:data:`TRAINERS`): ``plain`` (no defence, the reference), ``abl``
(Anti-Backdoor Learning, the baseline) and ``dlp`` (decoupled learning process: supervised →
active unlearning → active semi-supervised fine-tuning, the default).

Example:
    >>> from hardenkit.robust import TRAINERS, DLPConfig
    >>> TRAINERS.names()[:3]
    ['abl', 'dlp', 'plain']
    >>> DLPConfig(isolation_ratio=0.1).ssl_epochs
    10
"""

from __future__ import annotations

from .abl import ABLConfig, ABLStrategy
from .base import (
    TRAINERS,
    TRUSTED_STATUSES,
    IsolationReport,
    RobustConfig,
    RobustContext,
    RobustOutcome,
    RobustStrategy,
    StageReport,
    TrainingReport,
    TrainingStatus,
    isolation_metrics,
    select_suspects,
)
from .dlp import DLPConfig, DLPStrategy
from .plain import PlainConfig, PlainStrategy
from .trainer import DEFAULT_TRAINER, RobustTrainer, TrainingResult

__all__ = [
    "DEFAULT_TRAINER",
    "TRAINERS",
    "TRUSTED_STATUSES",
    "ABLConfig",
    "ABLStrategy",
    "DLPConfig",
    "DLPStrategy",
    "IsolationReport",
    "PlainConfig",
    "PlainStrategy",
    "RobustConfig",
    "RobustContext",
    "RobustOutcome",
    "RobustStrategy",
    "RobustTrainer",
    "StageReport",
    "TrainingReport",
    "TrainingResult",
    "TrainingStatus",
    "isolation_metrics",
    "select_suspects",
]

"""Purification: repair a copy of a model with a registered strategy and measure the effect.

Example:
    >>> from hardenkit.purify import STRATEGIES
    >>> STRATEGIES.names()
    ['finetune', 'mcl', 'nc-unlearn']
"""

from .base import (
    STRATEGIES,
    Budget,
    PurificationStrategy,
    PurifyContext,
    StrategyConfig,
    StrategyOutcome,
)
from .finetune import FinetuneConfig, FinetuneStrategy, NCUnlearnConfig, NCUnlearnStrategy
from .mcl import MCLConfig, MCLStrategy
from .purifier import (
    DEFAULT_STRATEGY,
    PurificationReport,
    PurificationResult,
    Purifier,
    TriggerASR,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Budget",
    "FinetuneConfig",
    "FinetuneStrategy",
    "MCLConfig",
    "MCLStrategy",
    "NCUnlearnConfig",
    "NCUnlearnStrategy",
    "PurificationReport",
    "PurificationResult",
    "PurificationStrategy",
    "Purifier",
    "PurifyContext",
    "StrategyConfig",
    "StrategyOutcome",
    "TriggerASR",
]

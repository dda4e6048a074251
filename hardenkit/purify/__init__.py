"""Purification: repair a copy of a model with a registered strategy and measure the effect.

Example:
    >>> from hardenkit.purify import STRATEGIES
    >>> STRATEGIES.names()
    ['auto', 'd3', 'finetune', 'mcl', 'nc-unlearn']
"""

from .auto import AutoConfig, AutoStrategy
from .base import (
    STRATEGIES,
    Budget,
    PurificationStrategy,
    PurifyContext,
    StrategyConfig,
    StrategyOutcome,
)
from .d3 import D3Config, D3Strategy
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
    "AutoConfig",
    "AutoStrategy",
    "Budget",
    "D3Config",
    "D3Strategy",
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

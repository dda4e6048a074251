"""Purification: repair a copy of a model with a registered strategy and measure the effect.

Example:
    >>> from hardenkit.purify import STRATEGIES
    >>> STRATEGIES.names()
    ['anp', 'auto', 'd3', 'fine-pruning', 'finetune', 'mcl', 'nc-unlearn', 'sau', 'shapley-pruning']
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
from .channels import ChannelMask, ChannelSet, PruningRecord, ablation_fill, apply_pruning
from .d3 import D3Config, D3Strategy
from .estimate import estimate_repair_seconds, step_seconds
from .finetune import FinetuneConfig, FinetuneStrategy, NCUnlearnConfig, NCUnlearnStrategy
from .mcl import MCLConfig, MCLStrategy
from .pruning import ANPConfig, ANPStrategy, FinePruningConfig, FinePruningStrategy
from .purifier import (
    DEFAULT_STRATEGY,
    PurificationReport,
    PurificationResult,
    Purifier,
    PurifyEstimate,
    Recheck,
    TriggerASR,
)
from .sau import SAUConfig, SAUStrategy, shared_adversarial_examples
from .shapley import ShapleyPruningConfig, ShapleyPruningStrategy
from .synthesis import SynthesisConfig, synthesize_class_images

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "ANPConfig",
    "ANPStrategy",
    "AutoConfig",
    "AutoStrategy",
    "Budget",
    "ChannelMask",
    "ChannelSet",
    "D3Config",
    "D3Strategy",
    "FinePruningConfig",
    "FinePruningStrategy",
    "FinetuneConfig",
    "FinetuneStrategy",
    "MCLConfig",
    "MCLStrategy",
    "NCUnlearnConfig",
    "NCUnlearnStrategy",
    "PruningRecord",
    "PurificationReport",
    "PurificationResult",
    "PurificationStrategy",
    "Purifier",
    "PurifyContext",
    "PurifyEstimate",
    "Recheck",
    "SAUConfig",
    "SAUStrategy",
    "ShapleyPruningConfig",
    "ShapleyPruningStrategy",
    "StrategyConfig",
    "StrategyOutcome",
    "SynthesisConfig",
    "TriggerASR",
    "ablation_fill",
    "apply_pruning",
    "estimate_repair_seconds",
    "shared_adversarial_examples",
    "step_seconds",
    "synthesize_class_images",
]

"""Red-team attacks: BadNets, Blended, WaNet, SIG, BppAttack, FTrojan (+ all-to-all) and factories.

Example:
    >>> from hardenkit.attacks import build_attack
    >>> atk = build_attack("badnets", target=0, poison_rate=0.1)
    >>> atk.trigger.kind
    'patch'
"""

from .base import ATTACKS, Attack, AttackConfig, TargetSpec, build_attack
from .builtin import (
    SIG,
    BadNets,
    BadNetsConfig,
    Blended,
    BlendedConfig,
    Bpp,
    BppConfig,
    FTrojan,
    FTrojanConfig,
    SIGConfig,
    WaNet,
    WaNetConfig,
)
from .factory import BackdooredModel, make_backdoored_model

__all__ = [
    "ATTACKS",
    "SIG",
    "Attack",
    "AttackConfig",
    "BackdooredModel",
    "BadNets",
    "BadNetsConfig",
    "Blended",
    "BlendedConfig",
    "Bpp",
    "BppConfig",
    "FTrojan",
    "FTrojanConfig",
    "SIGConfig",
    "TargetSpec",
    "WaNet",
    "WaNetConfig",
    "build_attack",
    "make_backdoored_model",
]

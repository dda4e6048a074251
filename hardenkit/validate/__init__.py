"""Validation: BA / ASR / RA / DER metrics, the Validator facade and the gate policy."""

from .metrics import (
    ChanceCheck,
    RateEstimate,
    attack_success_rate,
    benign_accuracy,
    chance_check,
    der,
    paired_drop_interval,
    robust_accuracy,
    wilson_interval,
)
from .policy import GateDecision, GatePolicy, RuleResult
from .validator import ClassAccuracy, ValidationReport, Validator

__all__ = [
    "ChanceCheck",
    "ClassAccuracy",
    "GateDecision",
    "GatePolicy",
    "RateEstimate",
    "RuleResult",
    "ValidationReport",
    "Validator",
    "attack_success_rate",
    "benign_accuracy",
    "chance_check",
    "der",
    "paired_drop_interval",
    "robust_accuracy",
    "wilson_interval",
]

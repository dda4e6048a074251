"""Lazy imports of optional dependencies with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, *, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise ``ModuleNotFoundError`` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        why = f" (needed for {purpose})" if purpose else ""
        raise ModuleNotFoundError(
            f"Optional dependency '{module}' is not installed{why}. "
            f'Install it with: pip install "hardenkit[{extra}]"'
        ) from exc


def is_available(module: str) -> bool:
    """Return True when ``module`` can be imported."""
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True

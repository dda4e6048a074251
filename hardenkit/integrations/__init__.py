"""Adapters that hand hardenkit's results to other tools (optional extras).

* :mod:`hardenkit.integrations.mlflow` — log a gate's evidence and ONNX model to an MLflow
  run and register a model version only when the gate passed (``pip install
  "hardenkit[mlflow]"``).

Importing this package imports no optional dependency; each adapter imports its package
when it is called.
"""

from __future__ import annotations

__all__: list[str] = []

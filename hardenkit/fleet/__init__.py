"""Fleet scanning: many models, one independent scan task each, on a process pool or Ray.

``hardenkit scan-fleet fleet.yaml --out DIR`` and :func:`scan_fleet` read a manifest (YAML or
JSON, validated by :class:`FleetManifest`), scan every model with the ``Scanner`` as a
separate task (a ``spawn`` process pool by default, a Ray cluster with ``backend="ray"``),
and write ``DIR/<id>/scan.json`` per model plus ``DIR/fleet.json``, ``fleet.csv`` and
``fleet.md``. A model that fails is listed with its error and never stops the others; a
re-run skips the models whose ``scan.json`` is valid for the same weights (sha256) and
settings. See docs/scale.md.

Example:
    >>> from hardenkit.fleet import FleetManifest
    >>> FleetManifest(models=[{"id": "m1", "weights": "m1.safetensors"}]).defaults.budget
    'quick'
"""

from .manifest import FleetDefaults, FleetManifest, FleetModel, load_manifest
from .report import FleetModelResult, FleetReport, FleetResult, fleet_exit_code
from .runner import (
    FleetPlan,
    FleetStart,
    FleetTask,
    is_flagged,
    plan_fleet,
    require_ray,
    run_fleet,
    run_task,
    scan_fleet,
)

__all__ = [
    "FleetDefaults",
    "FleetManifest",
    "FleetModel",
    "FleetModelResult",
    "FleetPlan",
    "FleetReport",
    "FleetResult",
    "FleetStart",
    "FleetTask",
    "fleet_exit_code",
    "is_flagged",
    "load_manifest",
    "plan_fleet",
    "require_ray",
    "run_fleet",
    "run_task",
    "scan_fleet",
]

"""``python -m hardenkit`` runs the CLI."""

from .cli import entrypoint

entrypoint()

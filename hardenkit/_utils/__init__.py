"""Private helpers shared across hardenkit modules (not part of the public API)."""

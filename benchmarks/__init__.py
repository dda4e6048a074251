"""Reproducible benchmark protocols (not part of the test suite)."""

"""Robustness tests: odd inputs give a typed error or a correct answer, never a silent wrong one."""

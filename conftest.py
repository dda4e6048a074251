"""Repository-level pytest configuration."""

collect_ignore = ["hardenkit/__main__.py", "benchmarks", "examples", "docs"]

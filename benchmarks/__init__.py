"""Reproducible measurements; each prints a ratio against a baseline measured in the same run."""

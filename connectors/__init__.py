"""Connectors: one package or module per outside system, the edges of the pipeline."""

"""Completeness: reading the sources' per-hour receipts and finding the hours with gaps."""

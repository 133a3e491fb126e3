"""Instantly.ai API v2: client, streams, normalizers and the local simulator."""

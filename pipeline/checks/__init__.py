"""Posture checks: vendor-neutral results, exit codes and report formats (table, JSON, SARIF)."""

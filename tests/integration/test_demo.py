"""The demo: no configuration, the scripted incident raises the alerts it is meant to show."""

from __future__ import annotations

import io
import re

from rich.console import Console

from connectors.instantly.demo import run_demo


async def test_demo_shows_the_incident_and_exits_zero() -> None:
    """`instantly-audit demo` plays the incident at 3x speed, prints events and the expected alerts, exits 0."""
    buf = io.StringIO()
    code = await run_demo(speed=3.0, console=Console(file=buf, width=200, color_system=None))
    out = buf.getvalue()
    assert code == 0
    for rule in (
        "api_key.all_scope",
        "member.unexpected",
        "member.privileged",
        "webhook.unauthenticated",
        "webhook.insecure_target",
        "data.lead_export",
    ):
        assert rule in out, f"{rule} missing from demo output"
    assert "api_key.created backup-sync" in out
    m = re.search(r"(\d+) alerts from (\d+) events", out)
    assert m and int(m.group(1)) >= 6

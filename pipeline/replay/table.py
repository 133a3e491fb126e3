"""Replay's terminal output: one line of description per record and the coloured table."""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from rich.box import HEAVY_HEAD
from rich.markup import escape

from pipeline.bus.base import Record
from pipeline.replay.scan import record_kind

if TYPE_CHECKING:
    from rich.console import Console

SEV_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}


def _actor(body: dict[str, Any], narrow: bool = False) -> str:
    """Who, then the API key and the IP they acted with: an investigation pivots on those two. Below
    :data:`NARROW` columns only the first of user name, user id, key id, IP (JSON Lines has them all)."""
    a = body.get("actor") or {}
    who = a.get("user_name") or a.get("user_id")
    if narrow:
        return str(who or a.get("api_key_id") or a.get("ip") or "")
    parts = [str(who)] if who else []
    if a.get("api_key_id"):
        parts.append(f"key {a['api_key_id']}")
    if a.get("ip"):
        parts.append(f"from {a['ip']}")
    return " ".join(parts)


def _target(body: dict[str, Any]) -> str:
    t = body.get("target") or {}
    if t:
        return f"{t.get('kind')}:{t.get('name') or t.get('id') or ''}"
    ents = body.get("entities") or []
    return ", ".join(f"{e.get('kind')}:{e.get('name') or e.get('id')}" for e in ents[:2])


def describe(body: dict[str, Any]) -> str:
    """A one-line summary of an event or alert."""
    if "summary" in body:
        return str(body["summary"])
    if "stage" in body and "error" in body:  # a dead letter
        return f"{body['stage']} {body.get('component') or ''}: {body['error']}"
    attrs = body.get("attributes") or {}
    bits = []
    for k in ("activity_label", "email", "role", "scopes", "target_hook_url", "value", "affected_count"):
        if k in attrs and attrs[k] not in (None, [], ""):
            v = attrs[k]
            bits.append(f"{k}={', '.join(map(str, v)) if isinstance(v, list) else v}")  # spaces: wraps whole
    ch = body.get("change") or {}
    if ch.get("fields"):
        bits.append("changed=" + ",".join(ch["fields"]))
    return " ".join(bits)


NARROW = 100
"""Below this console width the table drops its low-value columns (and wraps the rest)."""


def _when(body: dict[str, Any], narrow: bool) -> str:
    when = str(body.get("time") or body.get("last_seen") or body.get("failed_at") or "")[:19].replace("T", " ")
    return when[:16] if narrow else when  # narrow: no seconds


def print_table(
    items: list[tuple[Record, dict[str, Any]]],
    topic: str,
    file: IO[str] | None = None,
    *,
    console: Console | None = None,
) -> None:
    """Render records as a coloured table that fits the console's width.

    Alerts show their severity and status (a resolved alert must not look new). Long cells wrap
    instead of being cut; below :data:`NARROW` columns the borders go, the time is shortened to
    ``YYYY-MM-DD HH:MM`` and an alert table drops its target column (the summary names it). Colour
    follows the console: none off a terminal or with ``NO_COLOR`` set.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or (Console(file=file) if file is not None else Console())
    narrow = console.width < NARROW
    if topic == "timeline":
        _print_timeline(items, console, narrow)
        return
    alerts = "alerts" in topic
    t = Table(header_style="bold", pad_edge=not narrow, box=None if narrow else HEAVY_HEAD)
    t.add_column("time (UTC)", no_wrap=True)
    if alerts:
        t.add_column("severity", no_wrap=True)
        t.add_column("status", no_wrap=True)
        t.add_column("rule", overflow="fold")
    else:
        t.add_column("type", overflow="fold")
        t.add_column("actor", overflow="fold")
    if not (alerts and narrow):
        t.add_column("target", overflow="fold")
    t.add_column("summary", overflow="fold", ratio=1)
    for _, b in items:
        rule: dict[str, Any] = b["rule"] if isinstance(b.get("rule"), dict) else {}
        row: list[str] = [_when(b, narrow)]
        if alerts:
            sev = str(rule.get("severity") or "")
            style = SEV_STYLE.get(sev, "")
            status = str(b.get("status") or "")
            row += [f"[{style}]{sev}[/]" if style else sev, f"[dim]{status}[/]" if status == "resolved" else status]
            row.append(escape(str(rule.get("id") or "?")))
        else:
            row += [escape(record_kind(b) or "?"), escape(_actor(b, narrow))]
        if not (alerts and narrow):
            row.append(escape(_target(b)))
        row.append(escape(describe(b)))
        t.add_row(*row)
    console.print(t)


WIDE = 150
"""From this console width the timeline table also shows each record's id (to pivot on)."""


def _print_timeline(items: list[tuple[Record, dict[str, Any]]], console: Console, narrow: bool) -> None:
    """Events and alerts in one table, in the order given: an alert's row reads ``alert <rule id>`` with
    its severity and status before its summary, and names its entities as the target."""
    from rich.table import Table

    wide = console.width >= WIDE
    t = Table(header_style="bold", pad_edge=not narrow, box=None if narrow else HEAVY_HEAD)
    t.add_column("time (UTC)", no_wrap=True)
    t.add_column("event / alert", overflow="fold")
    t.add_column("actor", overflow="fold")
    t.add_column("target", overflow="fold")
    t.add_column("summary", overflow="fold", ratio=1)
    if wide:
        t.add_column("id", no_wrap=True)
    for _, b in items:
        rule: dict[str, Any] = b["rule"] if isinstance(b.get("rule"), dict) else {}
        if rule:
            sev = str(rule.get("severity") or "")
            style = SEV_STYLE.get(sev, "")
            status = str(b.get("status") or "")
            head = f"[{style}]{escape(sev)}[/]" if style else escape(sev)
            what = f"[bold]alert[/] {escape(str(rule.get('id') or '?'))}"
            summary = f"{head} {escape(status)}: {escape(describe(b))}"
        else:
            what, summary = escape(str(b.get("type") or "?")), escape(describe(b))
        row = [_when(b, narrow), what, escape(_actor(b, narrow)), escape(_target(b)), summary]
        if wide:
            row.append(escape(str(b.get("id") or "")))
        t.add_row(*row)
    console.print(t)

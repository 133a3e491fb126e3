"""Replay's terminal output: one line of description per record and the coloured table."""

from __future__ import annotations

from typing import IO, Any

from pipeline.bus.base import Record

SEV_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}


def _actor(body: dict[str, Any]) -> str:
    a = body.get("actor") or {}
    return str(a.get("user_name") or a.get("user_id") or a.get("api_key_id") or a.get("ip") or "")


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
    attrs = body.get("attributes") or {}
    bits = []
    for k in ("activity_label", "email", "role", "scopes", "target_hook_url", "value", "affected_count"):
        if k in attrs and attrs[k] not in (None, [], ""):
            v = attrs[k]
            bits.append(f"{k}={','.join(v) if isinstance(v, list) else v}")
    ch = body.get("change") or {}
    if ch.get("fields"):
        bits.append("changed=" + ",".join(ch["fields"]))
    return " ".join(bits)


def print_table(items: list[tuple[Record, dict[str, Any]]], topic: str, file: IO[str] | None = None) -> None:
    """Render records as a coloured table."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file) if file is not None else Console()
    t = Table(show_lines=False, header_style="bold")
    t.add_column("time", no_wrap=True)
    t.add_column("type" if "alerts" not in topic else "rule", no_wrap=True)
    t.add_column("actor")
    t.add_column("target")
    t.add_column("summary")
    for _, b in items:
        when = str(b.get("time") or b.get("last_seen") or "")[:19].replace("T", " ")
        rule = b.get("rule") or {}
        kind = b.get("type") or rule.get("id") or "?"
        style = SEV_STYLE.get(rule.get("severity", ""), "")
        t.add_row(when, f"[{style}]{kind}[/]" if style else str(kind), _actor(b), _target(b), describe(b))
    console.print(t)

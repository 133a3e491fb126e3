"""Cursor pagination: ``{items, next_starting_after}``, cursor = sort key of the last item.

Lists are sorted ascending by their cursor key (the UUIDv7 id, i.e. creation time; the
accounts list uses ``timestamp_created&email``). A page holds the items strictly after
``starting_after``. With ``trailing_cursor`` the last non-empty page still carries a
cursor and the next call returns ``items: []`` without one, as the starter kit warns.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def paginate(
    items: Sequence[T],
    cursor_of: Callable[[T], str],
    starting_after: str | None,
    limit: int,
    *,
    trailing_cursor: bool,
    keep: Callable[[T], bool] | None = None,
) -> tuple[list[T], str | None]:
    """One page of ``items`` (sorted by ``cursor_of``) and the next cursor, if any."""
    start = 0 if not starting_after else bisect.bisect_right(items, starting_after, key=cursor_of)
    found: list[T] = []
    for item in items[start:]:
        if keep is None or keep(item):
            found.append(item)
            if len(found) > limit:
                break
    page = found[:limit]
    more = len(found) > limit
    next_cursor = cursor_of(page[-1]) if page and (more or trailing_cursor) else None
    return page, next_cursor


def envelope(items: list[dict[str, Any]], next_starting_after: str | None) -> dict[str, Any]:
    """The list envelope; ``next_starting_after`` is omitted when there is none."""
    out: dict[str, Any] = {"items": items}
    if next_starting_after is not None:
        out["next_starting_after"] = next_starting_after
    return out

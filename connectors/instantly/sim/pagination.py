"""Cursor pagination: ``{items, next_starting_after}``, cursor = sort key of the last item.

Lists are sorted ascending by their cursor key (the UUIDv7 id, i.e. creation time; the
accounts list uses ``timestamp_created&email``), or descending with ``descending`` (newest
first). A page holds the items strictly after ``starting_after`` in that order. With
``trailing_cursor`` the last non-empty page still carries a cursor and the next call returns
``items: []`` without one, as the starter kit warns.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
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
    descending: bool = False,
) -> tuple[list[T], str | None]:
    """One page of ``items`` (sorted ascending by ``cursor_of``; listed in reverse when
    ``descending``) and the next cursor, if any."""
    if descending:  # newest first: the items after the cursor are those with a smaller key
        end = bisect.bisect_left(items, starting_after, key=cursor_of) if starting_after else len(items)
        order: Iterable[int] = range(end - 1, -1, -1)
    else:
        start = bisect.bisect_right(items, starting_after, key=cursor_of) if starting_after else 0
        order = range(start, len(items))
    found: list[T] = []
    for i in order:
        item = items[i]
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

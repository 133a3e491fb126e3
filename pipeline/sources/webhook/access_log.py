"""Access-log hygiene: aiohttp's access lines lose their query strings (a secret put in a URL
must not reach logs)."""

from __future__ import annotations

import logging
import re

_QUERY = re.compile(r"(\"?[A-Z]+ [^\s?\"]*)\?[^\s\"]*")


class QueryRedactingFilter(logging.Filter):
    """Strip query strings from aiohttp access-log lines (a secret put in a URL must not reach logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the message and the ``first_request_line`` field."""
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not hide the line
            msg = str(record.msg)
        record.msg = _QUERY.sub(r"\1?<redacted>", msg)
        record.args = None
        line = getattr(record, "first_request_line", None)
        if isinstance(line, str):
            record.first_request_line = _QUERY.sub(r"\1?<redacted>", line)
        return True


_ACCESS_FILTER = QueryRedactingFilter()


def install_access_log_filter() -> None:
    """Add :class:`QueryRedactingFilter` to the ``aiohttp.access`` logger (idempotent)."""
    logger = logging.getLogger("aiohttp.access")
    if _ACCESS_FILTER not in logger.filters:
        logger.addFilter(_ACCESS_FILTER)

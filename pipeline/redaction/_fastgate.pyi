"""Types of the C accelerator ``_fastgate.c`` (built at install when a C compiler is present)."""

from typing import Any

def common_case(event: object, /) -> bool:
    """True only when the full gate would return ``event`` itself (see ``_fastgate.c``)."""

def configure(
    event: type,
    source: type,
    workspace: type,
    actor: type,
    target: type,
    memo: set[Any],
    names: set[str],
    names_epoch: list[int],
    synced: list[int],
    state: dict[str, int],
    risky: list[str],
    clean_chars: str,
    /,
) -> None:
    """Give the accelerator the struct types, the memo sets, the registry state and the clean characters."""

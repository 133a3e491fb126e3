"""SIGTERM in a command that runs to an end (``run --once``, ``replay``, ``check``…) stops it as
Ctrl-C does — the running work is cancelled and cleaned up — then the command says ``terminated``
and exits 143 (128 + SIGTERM) instead of dying silently with no output.

A long-running ``run`` has its own handling (:mod:`pipeline.cli.launch`, ``pipeline.topology``):
it flushes, stops and exits 0.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

_state = {"terminated": False}


def mark_terminated() -> None:
    """Record that SIGTERM arrived (for a command that handles the signal on its own event loop)."""
    _state["terminated"] = True


def terminated() -> bool:
    """Whether SIGTERM arrived since :func:`install`."""
    return _state["terminated"]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    mark_terminated()
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # asyncio.run's own: cancel the main task, then KeyboardInterrupt
        return
    raise KeyboardInterrupt


Handler = Callable[[int, FrameType | None], Any] | int | None


def install() -> Handler:
    """Handle SIGTERM like SIGINT until :func:`uninstall` (main thread only); return the previous handler.

    A supervisor may start us with SIGTERM blocked (the mask is inherited): unblock it, so a stop
    sent while starting is handled rather than never.
    """
    _state["terminated"] = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    return previous


def uninstall(previous: Handler) -> None:
    """Put back the SIGTERM handler :func:`install` replaced (the command ended; main() may be called again)."""
    _state["terminated"] = False
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

"""The console script's first step: catch SIGTERM before anything heavy is imported.

``instantly-audit run`` may be stopped by an orchestrator at any moment, even while it is still
importing its modules or loading the config. Until the event loop takes over signal handling
(:func:`pipeline.topology.run_pipeline`), a SIGTERM ends a long-running ``run`` with exit 0 and
no traceback: nothing had started, so nothing is lost.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence


def _stopped_before_start(signum: int, frame: object) -> None:
    # Nothing has started yet (no bus, no transaction, no output): leave at once. Raising
    # SystemExit here could land inside asyncio's start-up and wait on its executor threads.
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Install the early SIGTERM handler for ``run`` (not ``--once``), then run the CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "run" in args and "--once" not in args:
        signal.signal(signal.SIGTERM, _stopped_before_start)
        # A supervisor may exec us with SIGTERM blocked (the mask is inherited): a stop sent
        # before this point is then pending, and is handled here rather than never.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    from pipeline.cli.main import main as cli_main  # imported after the handler is in place

    return cli_main(args)

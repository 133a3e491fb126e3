"""One exit-code contract for every command (documented in ``docs/cli.md``).

======  =====================================================================================
code    meaning
======  =====================================================================================
0       ok: the command did what was asked and found nothing at or above its threshold
1       findings, or a failed run: a check failed, a workspace was refused or unreachable during
        ``run --once``, a sink never confirmed, a rule case failed, or an expected OS error
        (a busy port, an unreadable file, a bus in use)
2       usage or configuration error (bad flags, a config file that does not validate)
3       could not run to the end: nothing failed, but part of the work could not be done
        (a check that could not run, a workspace whose webhooks could not be listed, a key
        rotation waiting for its grace period)
130     interrupted (Ctrl-C)
143     terminated (SIGTERM) in a command that runs to an end (``run --once``, ``replay``, ``check``…)
======  =====================================================================================
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """The exit codes of every ``instantly-audit`` command."""

    OK = 0
    FINDINGS = 1
    USAGE = 2
    INCOMPLETE = 3
    INTERRUPTED = 130
    TERMINATED = 143


FAILED = Exit.FINDINGS
"""A failed run shares code 1 with findings: in both cases someone must look."""

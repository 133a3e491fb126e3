"""The errors of the test broker: one base class, and what failed under it."""

from __future__ import annotations


class BrokerError(RuntimeError):
    """Base class of the errors raised by this module."""


class BrokerAlreadyRunning(BrokerError):
    """A broker is already running with the requested state dir."""


class BrokerStartError(BrokerError):
    """The broker could not be formatted, launched or did not become ready."""


class FetchError(BrokerError):
    """The jars could not be resolved."""

"""YAML loading for the files users write: PyYAML's safe loader, except that a date or time it cannot build
stays the text it was.

PyYAML turns ``2024-13-45`` (or ``modified: 2024-02-30``) into a ``datetime.date`` and raises
``ValueError``, which is no ``yaml.YAMLError``: every reader that caught only the latter ended in a
traceback. Kept as a string, the value reaches the check of the key it belongs to, which names it.

PyYAML also composes nested collections recursively, so a few thousand ``[`` exhaust Python's stack
(``RecursionError``); that is :class:`YAMLNestingError`, a ``yaml.YAMLError``, which the readers report
in one line like any malformed YAML.
"""

from __future__ import annotations

from typing import Any

import yaml


class YAMLNestingError(yaml.YAMLError):
    """The YAML nests collections deeper than Python's stack lets PyYAML compose."""

    problem = "collections nested too deep"

    def __str__(self) -> str:
        return self.problem


class SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with impossible dates and timestamps kept as strings."""

    def construct_lenient_timestamp(self, node: yaml.ScalarNode) -> Any:
        """The date or datetime, or the scalar's text when there is no such day or time."""
        try:
            return self.construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


SafeLoader.add_constructor("tag:yaml.org,2002:timestamp", SafeLoader.construct_lenient_timestamp)


def safe_load(text: str) -> Any:
    """One YAML document (``yaml.safe_load`` with :class:`SafeLoader`).

    Raises:
        yaml.YAMLError: malformed YAML (:class:`YAMLNestingError` when nested too deep).
    """
    try:
        return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a safe loader
    except RecursionError:
        raise YAMLNestingError() from None


def safe_load_all(text: str) -> list[Any]:
    """Every document of a YAML stream (``yaml.safe_load_all`` with :class:`SafeLoader`).

    Raises:
        yaml.YAMLError: malformed YAML (:class:`YAMLNestingError` when nested too deep).
    """
    try:
        return list(yaml.load_all(text, Loader=SafeLoader))
    except RecursionError:
        raise YAMLNestingError() from None

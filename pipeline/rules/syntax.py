"""The YAML rule language's compile errors, collected so a rule's every problem is reported at once.

* :class:`RuleSyntaxError` — one problem (``where`` inside the rule, ``message``), or several.
* :class:`Problems` — compiles each part of a rule, recording its problems and leaving a stand-in
  (:data:`NEVER`, :data:`NOTHING`, :data:`NO_TEXT`) so the rest is still compiled and checked.
* :func:`check_nesting` — refuses a condition nested deeper than :data:`MAX_NESTING`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from schemas.event import Event

Pred = Callable[[Event], bool]
Getter = Callable[[Event], Any]
Template = Callable[[Event], tuple[str, bool]]
T = TypeVar("T")


class RuleSyntaxError(ValueError):
    """A YAML rule does not compile; ``where`` is the path inside the rule.

    A rule with several problems raises one error holding them all (:attr:`problems`, this one's
    ``where`` and ``message`` are the first's; ``str()`` is one line per problem), so a rule file is
    fixed in one pass rather than one typo per run.
    """

    def __init__(self, where: str, message: str, problems: Sequence[RuleSyntaxError] = ()):
        self.where = where
        self.message = message
        self.problems: tuple[RuleSyntaxError, ...] = tuple(problems) or (self,)
        super().__init__("\n".join(f"{p.where}: {p.message}" for p in self.problems))

    def lines(self, prefix: str = "") -> list[str]:
        """One line per problem, each after ``prefix``."""
        return [f"{prefix}{p.where}: {p.message}" for p in self.problems]


class Problems:
    """Collects the rule's problems while every part is still compiled (all reported at once)."""

    def __init__(self) -> None:
        self.found: list[RuleSyntaxError] = []

    def check(self, compile_part: Callable[..., T], *args: Any, fallback: T) -> T:
        """``compile_part(*args)``, or ``fallback`` with its problems recorded."""
        try:
            return compile_part(*args)
        except RuleSyntaxError as err:
            self.found.extend(err.problems)
            return fallback

    def raise_any(self) -> None:
        """Raise every recorded problem as one error.

        Raises:
            RuleSyntaxError: something was recorded.
        """
        if self.found:
            first = self.found[0]
            raise RuleSyntaxError(first.where, first.message, self.found)


MAX_NESTING = 64
"""Parentheses and ``not`` nested deeper than this are refused: the condition parser and the compiled
condition recurse once per level, and Python's stack would end in a ``RecursionError`` traceback."""


def check_nesting(tokens: Sequence[str], where: str) -> None:
    """Refuse a condition's tokens when open parentheses plus pending ``not`` pass :data:`MAX_NESTING`.

    Raises:
        RuleSyntaxError: nested too deep.
    """
    outer: list[int] = []  # per open parenthesis: the ``not`` run before it
    run = deepest = 0
    for tok in tokens:
        if tok == "(":
            outer.append(run)
            run = 0
        elif tok == "not":
            run += 1
        else:
            run = 0
            if tok == ")" and outer:
                outer.pop()
        deepest = max(deepest, len(outer) + sum(outer) + run)
    if deepest > MAX_NESTING:
        raise RuleSyntaxError(where, f"the condition nests parentheses or 'not' deeper than {MAX_NESTING}")


def _false(ev: Event) -> bool:
    return False


def _absent(ev: Event) -> Any:
    return None


def _empty(ev: Event) -> tuple[str, bool]:
    return "", False


# Stand-ins for a part with a problem, so the rest of the rule is still compiled and checked.
NEVER: Pred = _false
NOTHING: Getter = _absent
NO_TEXT: Template = _empty

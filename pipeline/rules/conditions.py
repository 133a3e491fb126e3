"""The ``condition`` of a detection block: ``and``/``or``/``not``, parentheses, ``1 of``/``all of`` a pattern.

:class:`ConditionParser` turns the text into one predicate over the compiled selections
(:func:`pipeline.rules.matcher.compile_detection` calls it); every mistake is a
:class:`~pipeline.rules.syntax.RuleSyntaxError` naming the condition's key path.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence

from pipeline.rules.syntax import Pred, RuleSyntaxError, check_nesting

_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z0-9_*]+)")


class ConditionParser:
    """A recursive-descent parser of a detection's ``condition`` over its compiled selections."""

    def __init__(self, text: str, selections: Mapping[str, Pred], where: str):
        self.where, self.sel = where, selections
        self.toks: list[str] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                if text[pos:].strip():
                    raise RuleSyntaxError(where, f"unexpected character {text[pos:].strip()[0]!r}")
                break
            self.toks.append(m.group(1))
            pos = m.end()
        check_nesting(self.toks, where)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise RuleSyntaxError(self.where, "the condition ends too early")
        self.i += 1
        return tok

    def parse(self) -> Pred:
        p = self.or_()
        if self.peek() is not None:
            raise RuleSyntaxError(self.where, f"unexpected {self.peek()!r}")
        return p

    def or_(self) -> Pred:
        parts = [self.and_()]
        while self.peek() == "or":
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else (lambda ev: any(p(ev) for p in parts))

    def and_(self) -> Pred:
        parts = [self.not_()]
        while self.peek() == "and":
            self.take()
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else (lambda ev: all(p(ev) for p in parts))

    def not_(self) -> Pred:
        if self.peek() == "not":
            self.take()
            inner = self.not_()
            return lambda ev: not inner(ev)
        return self.atom()

    def atom(self) -> Pred:
        tok = self.take()
        if tok == "(":
            p = self.or_()
            if self.take() != ")":
                raise RuleSyntaxError(self.where, "missing ')'")
            return p
        if tok in ("1", "any", "all") and self.peek() == "of":
            self.take()
            pattern = self.take()
            names = list(self.sel) if pattern == "them" else fnmatch.filter(self.sel, pattern)
            if not names:
                raise RuleSyntaxError(self.where, f"no selection matches {pattern!r}")
            preds = [self.sel[n] for n in names]
            if tok == "all":
                return lambda ev: all(p(ev) for p in preds)
            return lambda ev: any(p(ev) for p in preds)
        if tok in ("and", "or", "of", ")") or tok not in self.sel:
            known = ", ".join(self.sel) or "none"
            raise RuleSyntaxError(self.where, f"unknown selection {tok!r} (defined: {known})")
        return self.sel[tok]


def positive_selections(text: object, names: Sequence[str]) -> set[str]:
    """The selections ``names`` that ``text`` (a detection's condition) reaches outside any ``not``.

    A selection reached only under ``not`` (``sel and not filter``) excludes events: one that no
    routed event can satisfy is redundant, not a rule that never fires. With no condition the single
    selection counts; a condition that does not parse counts every selection (the parser reports it).
    """
    if text is None:
        return set(names)
    if not isinstance(text, str):
        return set(names)
    toks = [m.group(1) for m in _TOKEN.finditer(text)]
    out: set[str] = set()
    stack = [False]  # negation of each open parenthesis level
    pending = False  # a 'not' waiting for its operand
    i = 0
    while i < len(toks):
        tok = toks[i]
        neg = stack[-1] ^ pending
        if tok == "not":
            pending = not pending
        elif tok == "(":
            stack.append(neg)
            pending = False
        elif tok == ")":
            if len(stack) == 1:
                return set(names)
            stack.pop()
        elif tok in ("1", "any", "all") and i + 2 < len(toks) and toks[i + 1] == "of":
            pattern = toks[i + 2]
            if not neg:
                out.update(names if pattern == "them" else fnmatch.filter(names, pattern))
            pending = False
            i += 2
        elif tok not in ("and", "or"):
            if not neg:
                out.add(tok)
            pending = False
        i += 1
    return out

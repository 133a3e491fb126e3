"""Sigma ``|re`` values and RE2, the engine pySigma (2.x) compiles them with.

Our matcher runs Python's ``re``; pySigma refuses a rule whose regex RE2 cannot compile, and a SIEM
backend runs its own engine. :func:`re2_problem` names what keeps a pattern Python accepts from
compiling in RE2 (with RE2 itself when ``google-re2`` is installed — it comes with pySigma —, else by
the constructs RE2 lacks: lookarounds, backreferences, atomic groups, possessive quantifiers,
conditionals, comments, the flags ``a L u x``, the escapes ``\\Z \\u \\U \\N`` and ``[\\b]``, counts over
1000). :func:`portable_end` writes Python's ``\\Z`` (the very end of the value) the way RE2 reads it.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

MAX_REPEAT = 1000
"""RE2's largest repetition count; nested counts may not multiply past it either."""
_LACKS = {
    "=": "a lookahead (?=...)",
    "!": "a negative lookahead (?!...)",
    "<=": "a lookbehind (?<=...)",
    "<!": "a negative lookbehind (?<!...)",
    ">": "an atomic group (?>...)",
    "#": "a comment (?#...)",
    "(": "a conditional (?(...)...)",
    "P=": "a named backreference (?P=...)",
}
_FLAGS = re.compile(r"\(\?([aiLmsux]*)(?:-([imsx]+))?([:)])")
_COUNT = re.compile(r"\{(\d+)(,?)(\d*)\}")
_OCT = "01234567"


def _re2_module() -> Any:
    try:
        return importlib.import_module("re2")
    except ImportError:
        return None


def re2_problem(pattern: str, flags: str = "") -> str | None:
    """Why RE2 would refuse ``pattern`` (with the ``i``/``m``/``s`` ``flags``), or None when it compiles.

    A pattern Python cannot compile gives None too: the matcher reports that one.
    """
    try:
        re.compile(pattern)
    except re.error:
        return None
    re2 = _re2_module()
    if re2 is not None:
        options = re2.Options()
        options.log_errors = False
        prefix = "".join(f for f in "ims" if f in flags)
        try:
            re2.compile(f"(?{prefix}){pattern}" if prefix else pattern, options)
        except re2.error as err:
            detail = err.args[0] if err.args else err
            return str(detail.decode() if isinstance(detail, bytes) else detail)
        return None
    return lacking(pattern)


def lacking(pattern: str) -> str | None:
    """The first construct of a Python-valid ``pattern`` that RE2 lacks (or reads otherwise), or None."""
    groups: list[int] = []  # per open group: the largest count product inside so far
    inner = 1  # the product of the atom just read (a group's largest inside it)
    atom = False  # whether a quantifier may follow
    i, n = 0, len(pattern)

    def worst(product: int) -> None:
        if groups:
            groups[-1] = max(groups[-1], product)

    while i < n:
        c = pattern[i]
        if c == "\\":
            esc = pattern[i + 1] if i + 1 < n else ""
            if esc == "Z":
                return "\\Z (RE2 has no \\Z: write $ for the end of the value)"
            if esc in ("u", "U", "N"):
                return f"the escape \\{esc} (RE2 has no \\{esc}: write \\x{{...}} or the character itself)"
            if (
                esc
                and esc in "123456789"
                and not (
                    esc in _OCT and pattern[i + 2 : i + 3] in tuple(_OCT) and pattern[i + 3 : i + 4] in tuple(_OCT)
                )
            ):
                return f"a backreference \\{esc} (RE2 has none)"
            i, atom, inner = i + 2, True, 1
            worst(1)
            continue
        if c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\":
                    esc = pattern[j + 1] if j + 1 < n else ""
                    if esc in ("b", "u", "U", "N"):
                        return f"the escape \\{esc} in a character class (RE2 has none)"
                    j += 2
                else:
                    j += 1
            i, atom, inner = j + 1, True, 1
            worst(1)
            continue
        if c == "(":
            if pattern.startswith("(?", i):
                rest = pattern[i + 2 : i + 4]
                bad = next((k for k in sorted(_LACKS, key=len, reverse=True) if rest.startswith(k)), None)
                if bad is not None:
                    return f"{_LACKS[bad]} (RE2 has none)"
                m = _FLAGS.match(pattern, i)
                if m is not None:
                    odd = sorted(set(m.group(1) + (m.group(2) or "")) & set("aLux"))
                    if odd:
                        return f"the flag {odd[0]} in {m.group(0)} (RE2 knows i, m, s, U)"
                    if m.group(3) == ")":  # global flags: no group
                        i, atom = m.end(), False
                        continue
                    i = m.end()
                    groups.append(1)
                    atom = False
                    continue
                if pattern.startswith("(?P<", i):
                    i = pattern.index(">", i) + 1
                    groups.append(1)
                    atom = False
                    continue
            groups.append(1)
            i, atom = i + 1, False
            continue
        if c == ")":
            inner = groups.pop() if groups else 1
            worst(inner)
            i, atom = i + 1, True
            continue
        if atom and c in "*+?":
            i += 1
            if i < n and pattern[i] == "+":
                return f"a possessive quantifier {c}+ (RE2 has none)"
            if i < n and pattern[i] == "?":
                i += 1
            atom = False
            continue
        if atom and c == "{" and (m := _COUNT.match(pattern, i)):
            low, high = m.group(1), m.group(3)
            count = int(high or low)
            if max(int(low or 0), count) > MAX_REPEAT:
                return f"the count {m.group(0)} (RE2 allows at most {MAX_REPEAT})"
            if count * inner > MAX_REPEAT:
                return f"nested counts multiplying past {MAX_REPEAT} at {m.group(0)} (RE2's limit)"
            worst(count * inner)
            inner = max(count, 1) * inner
            i = m.end()
            if i < n and pattern[i] == "+":
                return f"a possessive quantifier {m.group(0)}+ (RE2 has none)"
            if i < n and pattern[i] == "?":
                i += 1
            atom = False
            continue
        i, atom, inner = i + 1, c not in "|^$", 1
        worst(1)
    return None


def portable_end(pattern: str, flags: str = "") -> str:
    """``pattern`` with Python's ``\\Z`` (end of the value) as RE2 writes it: ``$`` without the ``m`` flag
    (RE2's ``$`` is the end of the text then), ``(?-m:$)`` with it. Escaped backslashes and character
    classes are left alone."""
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    end = "(?-m:$)" if "m" in flags else "$"
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            pair = pattern[i : i + 2]
            out.append(end if pair == "\\Z" and not in_class else pair)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("]")
                i += 1
            continue
        if c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)

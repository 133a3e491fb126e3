"""The trigger-word shortcut of the shape passes changes nothing: same text out as every pass in order.

:func:`pipeline.redaction.text.replace_shapes` skips the case-insensitive patterns for ASCII text
that holds none of their words. Hypothesis builds texts around those words — in any case, with
the Unicode letters ``(?i)`` folds onto ASCII ones (long s, Kelvin sign, dotless i), next to values
the patterns take (``Bearer …``, ``token=…``, JWTs, PEM blocks, Instantly-shaped keys, URLs, Slack
and GitHub tokens, an AWS key pair) —
and the shortcut must give exactly what :func:`pipeline.redaction.text._all_shapes` gives.
"""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import connectors.instantly.redact  # noqa: F401 - registers the Instantly key shape, as the connector does
from pipeline.redaction.text import _TRIGGERS, _all_shapes, _no_trigger, redact_text, replace_shapes

INSTANTLY_KEY = base64.b64encode(b"019a41ff-4c08-7280-ba65-d965cf873b40:AbCdEf123456").decode()
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl"
WORDS = [*_TRIGGERS, "apikey", "api key", "x-api-key", "password", "passwd", "passphrase", "credentials",
         "authorization", "signature", "secret_key", "private-key", "access key"]  # fmt: skip
FOLDS = {"s": "\u017f", "k": "\u212a", "i": "\u0131"}  # letters (?i) also matches outside ASCII


def _spelled(word: str, data: st.DataObject) -> str:
    """``word`` with each letter in a drawn case, or a Unicode letter that folds onto it."""
    out = []
    for ch in word:
        choice = data.draw(st.sampled_from(("lower", "upper", "fold")))
        out.append(FOLDS.get(ch, ch) if choice == "fold" else (ch.upper() if choice == "upper" else ch))
    return "".join(out)


PIECES = st.sampled_from(
    [" ", "=", ": ", '"', "'", " is ", "\t", "%20", "+", "abc123def456ghi789", "Zx9Zx9Zx9Zx9Zx9Zx9", "hunter22",
     JWT, INSTANTLY_KEY, "-----BEGIN PRIVATE KEY-----\nMIIabc\n-----END PRIVATE KEY-----", "https://u:p@h.example/x",
     "Mozilla/5.0 (X11; Linux x86_64)", "019a4219-ba36-7280-ba65-d965cf873b40", "<redacted>", "sha256:0a1b2c3d",
     "xox" + "b-2718281828-3141592653589-Zx9Zx9Zx9Zx9", "gh" + "p_" + "Zx9" * 12, "AKIA" + "Z" * 16,
     "Zx9/Zx9+" * 5, "hooks.slack.com/services/T0/B0/Zx9Zx9", "//h.example/x?a=1"]
)  # fmt: skip


@st.composite
def texts(draw: st.DrawFn) -> str:
    data = draw(st.data())
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(("word", "piece", "free")))
        if kind == "word":
            parts.append(_spelled(draw(st.sampled_from(WORDS)), data))
        elif kind == "piece":
            parts.append(draw(PIECES))
        else:
            parts.append(draw(st.text(alphabet=string.printable + "\u017f\u0131\u212a\u20ac", max_size=12)))
    return "".join(parts)


@settings(max_examples=600, deadline=None)
@given(text=texts())
def test_the_shortcut_gives_what_every_pass_gives(text: str) -> None:
    assert replace_shapes(text) == _all_shapes(text)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40))
def test_arbitrary_text_too(text: str) -> None:
    assert replace_shapes(text) == _all_shapes(text)


@pytest.mark.parametrize(
    "text",
    ["my \u017fecret is Zx9Zx9Zx9Zx9Zx9Zx9", "TOKEN=hunter22", "\u212aey: abcdef", "Bearer abc123def456ghi", JWT,
     f"id {INSTANTLY_KEY}", "pwd=hunter22", "SIG=0123abcd", "xox" + "b-2718281828-3141592653589-Zx9Zx9Zx9Zx9",
     "gh" + "p_" + "Zx9" * 12, "AKIA" + "Z" * 16 + " " + "Zx9/Zx9+" * 5],
)  # fmt: skip
def test_text_with_a_secret_never_takes_the_shortcut_unchanged(text: str) -> None:
    assert replace_shapes(text) != text
    assert redact_text(text) != text


def test_plain_ascii_text_takes_the_shortcut() -> None:
    for text in ("Mozilla/5.0 (X11; Linux x86_64)", "Sam Ortiz", "User login", "campaign launched"):
        assert _no_trigger(text)
        assert replace_shapes(text) is text

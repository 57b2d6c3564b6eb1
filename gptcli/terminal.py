"""The one rule for text from a model, a server or a file on its way to a terminal.

A terminal acts on control characters: ESC ] 0 ; title BEL retitles the window,
ESC [ 2 J clears the screen, OSC 52 writes the clipboard, a carriage return
overwrites the line the user reads, and some terminals take C1 characters
(U+0080..U+009F) as escape introducers. So where the destination is a terminal,
every C0 control except newline and tab, DEL and the C1 range are shown as a
visible escape (`\\x1b`, `\\r`, `\\x9b`); in token views (one token's text on its
own) bidirectional overrides and isolates are too (`\\u202e`), since they reorder
what the user reads. A pipe gets the exact text: it is data.

Every view that writes model, server or file text calls `safe` (or checks
`needs_escaping` first on a hot path): render.stream.TextRenderer, render.tokens
(ProbsRenderer, TextPainter, NextChart, score, token names), the chat REPL
through those renderers, tokenize/inspect, notices and errors.
"""

from __future__ import annotations

import re
from typing import TextIO

# C0 but \t and \n, then DEL and C1.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f"
# Bidirectional marks, embeddings, overrides and isolates.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"

_TEXT_RUN = re.compile(f"[{_CONTROLS}]+")
_TOKEN_RUN = re.compile(f"[{_CONTROLS}{_BIDI}]+")
# JSON strings escape C0 already (json.dumps), but not DEL, C1 or bidi controls.
_JSON_RUN = re.compile(f"[\x7f-\x9f{_BIDI}\u2028\u2029]")

# SGR dim on / normal intensity: how an escape is set apart when colour is on.
DIM = ("\x1b[2m", "\x1b[22m")
PLAIN = ("", "")

_NAMED = {"\r": "\\r"}


def escape_char(ch: str) -> str:
    """One character as a visible escape: \\r, \\x1b, \\x9b, \\u202e."""
    named = _NAMED.get(ch)
    if named:
        return named
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def needs_escaping(text: str, token_view: bool = False) -> bool:
    """Whether `safe` would change `text` (one precompiled regex scan)."""
    return (_TOKEN_RUN if token_view else _TEXT_RUN).search(text) is not None


def safe(text: str, token_view: bool = False, style: tuple[str, str] = PLAIN) -> str:
    """`text` with every character a terminal would act on shown as a visible escape,
    each run wrapped in `style` (render a terminal's DIM when colour is on)."""
    pattern = _TOKEN_RUN if token_view else _TEXT_RUN
    if pattern.search(text) is None:
        return text
    before, after = style
    return pattern.sub(lambda m: before + "".join(escape_char(c) for c in m.group()) + after, text)


def json_safe(line: str) -> str:
    """A JSON text with DEL, C1, bidi controls and line separators written as \\uXXXX:
    the same JSON value, but no raw control character for a terminal to act on."""
    if _JSON_RUN.search(line) is None:
        return line
    return _JSON_RUN.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def is_terminal(out: TextIO | None) -> bool:
    """Whether `out` is a terminal (a closed or odd stream is not)."""
    try:
        return bool(out is not None and out.isatty())
    except (AttributeError, ValueError):
        return False


class Guard:
    """The rule for one output stream, decided once: `guard(text)` is `text` itself
    where `active` is false (a pipe), the escaped text where it is true (a terminal,
    or colour forced: whatever reads colour renders escapes too). `dim` sets the
    escapes apart in dim. The check per call is one regex scan."""

    __slots__ = ("active", "style", "token_view")

    def __init__(self, active: bool, dim: bool = False, token_view: bool = False) -> None:
        self.active = active
        self.style = DIM if dim else PLAIN
        self.token_view = token_view

    @classmethod
    def for_stream(cls, out: TextIO | None, colour: bool, token_view: bool = False) -> Guard:
        """The guard for a view writing to `out` that shows colour (or not)."""
        return cls(colour or is_terminal(out), dim=colour, token_view=token_view)

    def __call__(self, text: str) -> str:
        if not self.active:
            return text
        return safe(text, self.token_view, self.style)

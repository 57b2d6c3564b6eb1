"""Model text made safe and visible for the explorer's panels.

A token's bytes come from the model file: control characters (C0, DEL, C1) and
bidirectional overrides are shown as escapes by gptcli.terminal (its token view:
the panels put pieces of text side by side), never sent to the terminal."""

from __future__ import annotations

from gptcli.render.tokens import token_label
from gptcli.terminal import safe as _terminal_safe


def _escaped(text: str) -> str:
    return _terminal_safe(text.replace("\t", "\\t"), token_view=True)


def safe(text: str) -> str:
    """Text with every control character and bidi override as a visible escape;
    newlines stay newlines, marked with ↵ so they can be seen."""
    return _escaped(text).replace("\n", "↵\n")


def candidate(piece: bytes) -> str:
    """One candidate token on one line, in the notation of every token view
    (render.tokens.token_label: ␣, ↵, <0xE2> for the bytes of a split character)."""
    return token_label(piece)


def span(piece: bytes) -> str:
    """Several tokens' text on one line (a branch in the tree): as `candidate`, but the
    spaces between words stay spaces; only those at its ends show as ␣."""
    text = candidate(piece)
    core = text.strip("␣")
    if not core:
        return text
    lead = len(text) - len(text.lstrip("␣"))
    trail = len(text) - len(text.rstrip("␣"))
    return "␣" * lead + core.replace("␣", " ") + "␣" * trail

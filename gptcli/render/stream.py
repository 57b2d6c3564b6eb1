"""How things look: streaming text on stdout, notices, errors and stats on stderr.

stdout carries content only. Consoles are built lazily (rich fixes its colour
detection when a Console is created), and rich already honours NO_COLOR,
FORCE_COLOR and pipes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gptcli.console import shows_colour, stderr_console
from gptcli.terminal import Guard, is_terminal

if TYPE_CHECKING:
    from gptcli.backends.events import Finish, TokenEvent


class TextRenderer:
    """Plain streaming: each event's released text to stdout, flushed at once."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self._last = ""
        # Model or server text: escaped on a terminal, exact through a pipe.
        tty = is_terminal(self.out)
        if tty:
            self._guard = Guard(True, dim=shows_colour())
        else:
            self._guard = Guard(False)

    def token(self, event: TokenEvent) -> None:
        text = event.text
        if text:
            # Noted before writing: a Ctrl-C raised as flush() returns must still
            # let finish() end the line.
            self._last = text
            self.out.write(self._guard(text) if self._guard.active else text)
            self.out.flush()

    def finish(self, finish: Finish | None) -> None:
        if finish is not None and finish.text:
            self.out.write(self._guard(finish.text))
            self._last = finish.text
        # End on a newline, so the shell prompt and `wc -l` see whole lines.
        if self._last and not self._last.endswith("\n"):
            self.out.write("\n")
        self.out.flush()


def print_stats(finish: Finish, location: str | None = None) -> None:
    """Load, prompt and generation figures on stderr (`--stats`). `location`: the
    server's URL for a remote run, where only what the client measured is known (no
    load; token counts where the server sent them)."""
    from rich.text import Text

    rows = _remote_rows(finish, location) if location else _local_rows(finish)
    for label, value in rows:
        stderr_console().print(Text(f"{label:<12}{value}", style="dim"), soft_wrap=True)


def _local_rows(finish: Finish) -> list[tuple[str, str]]:
    t = finish.timings
    gen_tps = finish.generation_tps()
    return [
        ("load", f"{t.load_s:.3f} s"),
        (
            "prompt",
            f"{finish.prompt_tokens} tokens ({t.prompt_tokens_evaluated} evaluated) "
            f"in {t.prompt_s:.3f} s, {t.prompt_tps():.1f} tokens/s",
        ),
        (
            "generation",
            f"{finish.completion_tokens} tokens in {t.generation_s:.3f} s, {gen_tps:.1f} tokens/s",
        ),
        ("first token", f"{t.ttft_s:.3f} s"),
        ("finish", finish.reason),
    ]


def _remote_rows(finish: Finish, location: str) -> list[tuple[str, str]]:
    t = finish.timings
    n = finish.completion_tokens
    if n is not None and t.generation_s > 0:
        gen = f"{n} tokens in {t.generation_s:.3f} s, {n / t.generation_s:.1f} tokens/s"
    else:
        gen = f"{t.generation_s:.3f} s (the server sent no token count)"
    rows = [
        ("server", location),
        ("first token", f"{t.ttft_s:.3f} s (prompt evaluation and network)"),
        ("generation", gen),
        ("finish", finish.reason),
    ]
    server_tps = getattr(t, "server_tps", None)
    if server_tps is not None:
        rows.insert(3, ("server", f"{server_tps:.1f} tokens/s (as the server measured)"))
    return rows


FINISH_NOTICES = {
    "context": "stopped: the context is full ({n_ctx} tokens); raise --ctx for longer text",
}


def print_in_order(texts: Iterable[str]) -> None:
    out = sys.stdout
    guard = Guard(is_terminal(out))  # model or server text: escaped on a terminal
    for text in texts:
        # One output line per input line: a reply's own line breaks are written as \n.
        out.write(guard(text.strip("\n").replace("\n", "\\n")) + "\n")
        out.flush()

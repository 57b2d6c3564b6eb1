"""Consoles and notices: the ground floor every layer may use.

stdout carries content only; notices, errors and progress go to stderr. Consoles are built
lazily (rich fixes its colour detection when a Console is created), and rich already
honours NO_COLOR, FORCE_COLOR and pipes.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING

from gptcli.terminal import safe

if TYPE_CHECKING:
    from rich.console import Console


def make_console(**options) -> Console:
    """A rich Console whose closed pipe ends gptcli with 141, as every other write does
    (rich's own answer is exit 1)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError  # the CLI turns it into exit 141, silently

    return _Console(**options)


@cache
def _console(stderr: bool) -> Console:
    return make_console(stderr=stderr, highlight=False, soft_wrap=True)


def stderr_console() -> Console:
    return _console(True)


def stdout_console() -> Console:
    return _console(False)


def pipe_width(default: int) -> int:
    """The width of a table written to a pipe: COLUMNS when the user set it, else
    `default` (a pipe has no width of its own)."""
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else default


def print_error(message: str) -> None:
    """One line on stderr: `gptcli: error: ...`."""
    console = stderr_console()
    from rich.text import Text

    line = Text("gptcli: error: ", style="bold red")
    # A message, not data: always one line, nothing in it a terminal acts on.
    line.append(safe(message.replace("\n", " ")))
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def notice(message: str) -> None:
    """A dim informational line on stderr."""
    from rich.text import Text

    stderr_console().print(Text(safe(message), style="dim"), soft_wrap=True)


def shows_colour(console: Console | None = None) -> bool:
    """Whether stdout gets colour: rich decides (terminal, NO_COLOR, FORCE_COLOR)."""
    if console is None:
        from gptcli.console import stdout_console

        console = stdout_console()
    return bool(console.is_terminal and not console.no_color and console.color_system)

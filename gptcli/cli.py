"""The Typer app: parse options, call one function below, hand its events to render.

Nothing heavy is imported at module level: `gptcli --help` must stay fast.
Each command group lives in `gptcli/commands/` and registers itself here.
"""

from __future__ import annotations

import os
import re
import signal
import sys

import typer
from typer.core import TyperGroup

from gptcli.errors import ExitCode, GptcliError, Terminated


def _error_line(message: str) -> None:
    from gptcli.render import print_error

    print_error(message)


def _quiet_broken_pipe() -> None:
    # The reader went away (`| head`): point stdout at /dev/null so the final flush
    # at exit cannot raise again, and leave without a word.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _on_sigterm(signum, frame):
    raise Terminated()


class GptcliGroup(TyperGroup):
    """Translates GptcliError, Ctrl-C, SIGTERM, a closed pipe and usage errors into
    one line on stderr and an exit code, where CliRunner still sees that code."""

    def invoke(self, ctx):
        previous = None
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread (some test runners)
            pass
        try:
            return super().invoke(ctx)
        except GptcliError as e:
            _flush_stdout()
            _error_line(e.message)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            _flush_stdout()
            raise typer.Exit(ExitCode.CTRL_C) from None
        except Terminated:
            _flush_stdout()
            raise typer.Exit(ExitCode.SIGTERM) from None
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(ExitCode.BROKEN_PIPE) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # typer ships its own copy of Click; its exception types live there.
        from typer._click.exceptions import ClickException

        try:
            rv = super().main(
                args=args,
                prog_name=prog_name or "gptcli",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":
                # Typer's rich help is printed while the error is built; plain help is
                # only returned as its message.
                if e.format_message().strip():
                    typer.echo(e.format_message())
                code = 0
            else:
                _error_line(e.format_message())
                code = e.exit_code
            if not standalone_mode:
                raise
            sys.exit(code)
        except typer.Abort:
            if not standalone_mode:
                raise
            sys.exit(ExitCode.CTRL_C)
        except SystemExit as e:
            # Typer answers a closed stdout (EPIPE outside a command: --version, the
            # final flush) with exit 1 after wrapping the streams; we answer it with 141.
            if e.code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":
                _quiet_broken_pipe()
                sys.exit(ExitCode.BROKEN_PIPE)
            raise
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError, ValueError):
        _quiet_broken_pipe()


_INT = re.compile(r"-?[0-9]{1,18}")
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")


class _PlainCoercion:
    """Typer 0.29 checks every option value through a pydantic TypeAdapter: importing
    pydantic and building the adapters costs 0.1-0.2 s on each run. A plain value of a
    plain type (text, an integer or a decimal number as usually written, a list of
    texts) is taken as it is; anything else, errors included, still goes through
    Typer's own coercion, so what is accepted and every message stay the same."""

    def __init__(self, build, descriptor):
        self._build, self._descriptor, self._full = build, descriptor, None

    def _typer(self):
        if self._full is None:
            self._full = self._build(self._descriptor)
        return self._full

    def coerce(self, value, param, ctx):
        kind, t = self._descriptor.annotation, type(value)
        multi = param.multiple or param.nargs == -1
        if value is None:  # as Typer's RuntimeParam.coerce
            return () if multi else None
        if not multi:
            if t is kind and kind in (str, int, float):
                return value
            if t is str and kind is int and _INT.fullmatch(value):
                return int(value)
            if t is str and kind is float and _FLOAT.fullmatch(value):
                return float(value)
        elif kind == list[str] and t in (list, tuple) and all(type(v) is str for v in value):
            return list(value)
        return self._typer().coerce(value, param=param, ctx=ctx)

    def __getattr__(self, name):
        return getattr(self._typer(), name)


def _plain_coercion() -> None:
    import typer.core

    build = getattr(typer.core, "build_runtime_param", None)
    if build is None or getattr(build, "plain", False):  # another Typer, or done already
        return

    def build_plain(descriptor):
        if getattr(descriptor, "file_annotation", True) is None:
            return _PlainCoercion(build, descriptor)
        return build(descriptor)

    build_plain.plain = True
    typer.core.build_runtime_param = build_plain


_plain_coercion()

app = typer.Typer(
    cls=GptcliGroup,
    name="gptcli",
    help="Run, pipe, chat with and look inside a GPT-style language model.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

# One module per command group in gptcli/commands/, each with register(app).
# Imported at start-up: they must import nothing heavy at module level.
COMMAND_MODULES = (
    "generate",
    "doctor",
    "hub",
    "probs",
    "anatomy",
    "chat",
    "inside",
    "explore",
)


def _register_commands() -> None:
    from importlib import import_module

    for name in COMMAND_MODULES:
        import_module(f"gptcli.commands.{name}").register(app)


_register_commands()


def _print_version(value: bool) -> None:
    if value:
        from gptcli import __version__

        typer.echo(f"gptcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the version and exit.",
    ),
) -> None:
    """Run, pipe, chat with and look inside a GPT-style language model."""


def main() -> None:
    app()

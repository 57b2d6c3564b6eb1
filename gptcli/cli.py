"""The Typer app: parse options, call one function below, hand its events to render.

Nothing heavy is imported at module level: `gptcli --help` must stay fast.
Each command group lives in `gptcli/commands/` and registers itself here.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import signal
import sys

import typer
from typer.core import TyperGroup

from gptcli import __version__
from gptcli.console import print_error
from gptcli.errors import ExitCode, GptcliError, Terminated


def _error_line(message: str) -> None:
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


# How `gptcli --help` groups the commands, in this order, with one line each (the
# details live in each command's own help).
COMMAND_PANELS: dict[str, dict[str, str]] = {
    "Run": {
        "generate": "Stream a completion of PROMPT (and piped stdin) to stdout.",
        "chat": "Talk with the model in the terminal.",
        "explore": "Walk the distribution token by token, branch, change the temperature.",
    },
    "Probabilities": {
        "next": "The next-token distribution after PROMPT, under several temperatures.",
        "score": "How surprising each token of a text is to the model; perplexity.",
        "compare": "Where two models (or quantizations) disagree on a text, token by token.",
    },
    "Look inside": {
        "inspect": "The model's anatomy: hyperparameters and parameters by matrix.",
        "tokenize": "The tokens the model sees in a text.",
        "embed": "Nearest tokens and analogies in the embedding matrix.",
        "lens": "What each layer's residual stream would predict (the logit lens).",
        "attention": "Where each attention head looks.",
        "steer": "Control vectors: make, show and sweep directions in the residual stream.",
    },
    "Models": {
        "pull": "Download GGUF weights from the Hugging Face hub, verified.",
        "list": "Local models (with --server: the server's).",
        "rm": "Remove a pulled model and report the space freed.",
        "doctor": "Versions, backend, GPU offload, threads and the default model.",
    },
}
# Each command's options grouped the same way everywhere; unnamed ones stay in "Options".
OPTION_PANELS: dict[str, str] = {
    **dict.fromkeys(
        ("model", "ctx", "threads", "gpu_layers", "verbose", "server", "timeout"),
        "Model and backend",
    ),
    **dict.fromkeys(
        (
            "raw",
            "system",
            "chat",
            "max_tokens",
            "temperature",
            "top_k",
            "top_p",
            "min_p",
            "repeat_penalty",
            "seed",
            "stop",
        ),
        "Prompt and sampling",
    ),
    **dict.fromkeys(
        ("probs", "probs_kind", "alternatives", "json_out", "stats", "top", "steps"),
        "Output and probabilities",
    ),
    **dict.fromkeys(("json_schema", "output_format", "grammar"), "Structured output"),
    **dict.fromkeys(("each_line", "jobs"), "Batch"),
    **dict.fromkeys(("steer", "steer_layers"), "Steering"),
}


_ONE_NEWLINE = re.compile(r"(?<=\S)\n(?=[^\n\s-])")


def _lay_out(command) -> None:
    """Put a command and its options in their help panels, with its one-line summary."""
    for panel, commands in COMMAND_PANELS.items():
        if command.name in commands:
            command.rich_help_panel = panel
            command.short_help = commands[command.name]
    if command.help and not getattr(command, "_reflowed", False):
        # Docstring line breaks are not sentence breaks: let rich wrap each paragraph
        # to the terminal (a line starting with "-" or spaces stays a line).
        command.help = _ONE_NEWLINE.sub(" ", inspect.cleandoc(command.help))
        command._reflowed = True
    for param in command.params:
        if getattr(param, "rich_help_panel", None) is None and param.name in OPTION_PANELS:
            param.rich_help_panel = OPTION_PANELS[param.name]


# Commands that load llama.cpp when they run locally (no --server): libllama is loaded
# before their body imports numpy, the order that kept a CUDA build from crashing
# (gptcli/llama/libllama.py).
LOADS_LLAMA = frozenset(
    ("generate", "chat", "explore", "next", "score", "tokenize", "embed", "lens", "attention")
) | {"doctor"}


def _llama_first(command) -> None:
    """Make `command` (and a group's subcommands) load libllama before its body runs."""
    for sub in getattr(command, "commands", {}).values():
        _llama_first(sub)
    callback = command.callback
    if callback is None or getattr(callback, "_llama_first", False):
        return

    @functools.wraps(callback)
    def run(*args, **params):
        if not params.get("server"):
            from gptcli.llama.libllama import load_first

            load_first()
        return callback(*args, **params)

    run._llama_first = True
    command.callback = run


class GptcliGroup(TyperGroup):
    """Translates GptcliError, Ctrl-C, SIGTERM, a closed pipe and usage errors into
    one line on stderr and an exit code, where CliRunner still sees that code."""

    def list_commands(self, ctx):
        known = [name for panel in COMMAND_PANELS.values() for name in panel]
        mine = super().list_commands(ctx)
        return [n for n in known if n in mine] + [n for n in mine if n not in known]

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            _lay_out(command)
            if name in LOADS_LLAMA:
                _llama_first(command)
        return command

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

# What to type, not a type name: Typer would show <bool> on flags, <int>, <str>, <float>.
_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _readable_metavars() -> None:
    from typer.core import TyperArgument, TyperOption

    def option_metavar(self, ctx):
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.type_descriptor.annotation is bool:
            return None  # a flag takes no value
        kind = self.type_descriptor.annotation
        if self.type_descriptor.is_list:
            kind = str
        return _METAVARS.get(kind, "VALUE")

    TyperOption.display_type_rich = option_metavar
    TyperArgument.display_type_rich = lambda self, ctx: None  # its NAME says it


_readable_metavars()


def _literal_help() -> None:
    """Help strings are shown as written: Typer's rich mode would read `[x]` as a
    style tag and `:B:` as an emoji code (`A:B:` became `A🅱`). rich itself is
    imported only when help is formatted."""
    from typer.core import TyperCommand, TyperGroup

    def patch_rich_utils() -> None:
        from rich.text import Text
        from typer import rich_utils

        if getattr(rich_utils._make_rich_text, "literal", False):
            return

        def make_text(*, text: str, style: str = "", markup_mode) -> Text:
            return rich_utils.highlighter(Text(inspect.cleandoc(text), style=style))

        make_text.literal = True
        rich_utils._make_rich_text = make_text

    for cls in (TyperCommand, TyperGroup):
        original = cls.format_help

        def format_help(self, ctx, formatter, _original=original):
            patch_rich_utils()
            return _original(self, ctx, formatter)

        cls.format_help = format_help


_literal_help()

app = typer.Typer(
    cls=GptcliGroup,
    name="gptcli",
    help="Run, pipe, chat with and look inside a GPT-style language model.",
    no_args_is_help=True,
    add_completion=True,
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
    "compare",
    "anatomy",
    "chat",
    "inside",
    "explore",
    "steer",
)


def _register_commands() -> None:
    from importlib import import_module

    for name in COMMAND_MODULES:
        import_module(f"gptcli.commands.{name}").register(app)


_register_commands()


def _print_version(value: bool) -> None:
    if value:
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

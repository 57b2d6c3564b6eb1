"""Options shared by the commands that run a model, and the code that turns them
into an engine, a sampler and a prompt."""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer

from gptcli.errors import UsageError
from gptcli.limits import MAX_PROMPT_BYTES, MAX_TIMEOUT_S
from gptcli.untrusted import size_text

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "-m",
        "--model",
        metavar="MODEL",
        help="GGUF file or hub reference (owner/repo:QUANT). "
        "Default: $GPTCLI_MODEL, else the embedded SmolLM2-135M-Instruct.",
        autocompletion=lambda incomplete: _complete_model(incomplete),
    ),
]


def _complete_model(incomplete: str) -> list[str]:
    from gptcli.model.completion import complete_model  # only when the shell asks

    return complete_model(incomplete)


CtxOpt = Annotated[
    int, typer.Option("--ctx", help="Context size in tokens (0: the model's, at most 4096).")
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="CPU threads (default: every usable core).")
]
GpuLayersOpt = Annotated[
    int | None,
    typer.Option(
        "-ngl",
        "--gpu-layers",
        help="Layers to offload to the GPU (default: all when the backend "
        "supports it, else 0; -1: all).",
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own log on stderr.")]

TemperatureOpt = Annotated[
    float, typer.Option("-t", "--temperature", help="Softmax temperature; 0 is greedy.")
]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0: off).")]
TopPOpt = Annotated[
    float, typer.Option("--top-p", help="Keep the most likely tokens up to this mass (1: off).")
]
MinPOpt = Annotated[
    float, typer.Option("--min-p", help="Drop tokens below this fraction of the top one.")
]
RepeatPenaltyOpt = Annotated[
    float, typer.Option("--repeat-penalty", help="Penalise the last 64 tokens (1: off).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default: random).")]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "-n",
        "--max-tokens",
        help="Stop after this many tokens (default: end of text or full context).",
    ),
]

_ESCAPE = re.compile(r"\\(n|t|r|\\|x[0-9a-fA-F]{2})")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """`\\n`, `\\t`, `\\r`, `\\\\` and `\\xNN` as the characters they name: shells pass
    "\\n" as two characters, and users write stops that way (as llama.cpp reads them)."""
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), text)


def _unescape_all(values: list[str] | None) -> list[str] | None:
    return None if values is None else [unescape(v) for v in values]


StopOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--stop",
        callback=_unescape_all,
        help="Stop at this text (repeatable); \\n, \\t, \\\\ and \\xNN are read as escapes.",
    ),
]
SystemOpt = Annotated[str | None, typer.Option("--system", help="System prompt (chat models).")]
ChatOpt = Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the chat template.")]
ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        envvar="GPTCLI_SERVER",
        show_envvar=False,
        help="Run on an OpenAI-compatible server (llama-server, vLLM, Ollama) at URL "
        "instead of locally; $GPTCLI_API_KEY is sent as a bearer token. "
        "Default: $GPTCLI_SERVER.",
    ),
]
SteerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--steer",
        metavar="FILE[:SCALE]",
        help="Add a control vector (llama.cpp's GGUF) to the residual stream, times SCALE "
        "(default 1); repeatable, the vectors add. See `gptcli steer`.",
    ),
]
SteerLayersOpt = Annotated[
    str | None,
    typer.Option("--steer-layers", metavar="A-B", help="Steer only layers A to B (inclusive)."),
]


def _check_timeout(value: float | None) -> float | None:
    import math

    if value is not None and not (0 < value <= MAX_TIMEOUT_S and math.isfinite(value)):
        raise typer.BadParameter(f"must be more than 0 and at most {MAX_TIMEOUT_S:g} s")
    return value


TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="S",
        envvar="GPTCLI_TIMEOUT",
        show_envvar=False,
        callback=_check_timeout,
        help="Give up on a server or the hub after S seconds: to connect, and of "
        "silence in the middle of a reply. Default: 10 to connect, 300 of silence "
        "(the hub: 10); $GPTCLI_TIMEOUT.",
    ),
]


def sampling_params(
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    repeat_penalty: float,
    seed: int | None,
):
    from gptcli.sampling.sampler import SamplingParams

    return SamplingParams(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        seed=seed,
    ).validate()


def check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1, got {max_tokens}")


def read_input(prompt: str | None, *, required: bool = True) -> str:
    """The prompt argument and, when stdin is not a terminal, stdin's text after a
    blank line (or stdin alone)."""
    piped = ""
    stdin = sys.stdin
    if stdin is not None and not stdin.isatty():
        try:
            if hasattr(stdin, "buffer"):
                data = stdin.buffer.read(MAX_PROMPT_BYTES + 1)
            else:
                data = stdin.read(MAX_PROMPT_BYTES + 1).encode()
        except OSError:
            data = b""
        if len(data) > MAX_PROMPT_BYTES:  # `< /dev/zero` would fill memory
            raise UsageError(f"stdin holds more than {size_text(MAX_PROMPT_BYTES)} of text")
        try:
            piped = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"stdin is not valid UTF-8 (byte {e.start})") from None
    if prompt:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # undecodable argv bytes arrive as surrogates
            raise UsageError(f"the prompt is not valid UTF-8 (character {e.start})") from None
    if prompt and piped.strip():
        text = f"{prompt}\n\n{piped}"
    else:
        text = prompt if prompt else piped
    if required and not (text or "").strip():
        raise UsageError("empty prompt: give PROMPT or pipe text on stdin")
    return text or ""


# -- structured output ---------------------------------------------------------------
JsonSchemaOpt = Annotated[
    str | None,
    typer.Option(
        "--json-schema",
        metavar="FILE|JSON",
        help="The output is one JSON document valid under this JSON Schema (a file, or "
        "inline JSON starting with `{`).",
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", metavar="json", help="json: the output is one JSON value."),
]
GrammarOpt = Annotated[
    str | None,
    typer.Option(
        "--grammar", metavar="FILE", help="The output matches this GBNF grammar (llama.cpp's)."
    ),
]


def constraint_from(json_schema: str | None, output_format: str | None, grammar: str | None):
    """The constraints.Constraint that --json-schema, --format, --grammar ask for, or None."""
    if json_schema is None and output_format is None and grammar is None:
        return None  # nothing imported: the common case stays as fast as before
    from gptcli.backends.constraints import from_options

    return from_options(json_schema, output_format, grammar)

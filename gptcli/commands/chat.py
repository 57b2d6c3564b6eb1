"""`gptcli chat`: a conversation in the terminal, or driven through stdin."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gptcli.commands.options import (
    CtxOpt,
    FormatOpt,
    GpuLayersOpt,
    GrammarOpt,
    JsonSchemaOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    RepeatPenaltyOpt,
    SeedOpt,
    ServerOpt,
    SteerLayersOpt,
    SteerOpt,
    StopOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    TimeoutOpt,
    TopKOpt,
    TopPOpt,
    VerboseOpt,
    check_max_tokens,
    constraint_from,
    sampling_params,
)
from gptcli.commands.steer import open_steered
from gptcli.sampling import defaults as D

ResumeOpt = Annotated[
    str | None,
    typer.Option("--resume", metavar="FILE", help="Continue a conversation saved with /save."),
]


def chat(
    model: ModelOpt = None,
    system: SystemOpt = None,
    resume: ResumeOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = D.TEMPERATURE,
    top_k: TopKOpt = D.TOP_K,
    top_p: TopPOpt = D.TOP_P,
    min_p: MinPOpt = D.MIN_P,
    repeat_penalty: RepeatPenaltyOpt = D.REPEAT_PENALTY,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    ctx: CtxOpt = 0,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
    server: ServerOpt = None,
    timeout: TimeoutOpt = None,
    json_schema: JsonSchemaOpt = None,
    output_format: FormatOpt = None,
    grammar: GrammarOpt = None,
    steer: SteerOpt = None,
    steer_layers: SteerLayersOpt = None,
) -> None:
    """Chat with the model: replies stream as they are generated; /help lists commands.

    With stdin not a terminal, each line is a user message (\"\"\" blocks span lines)
    and each reply is printed, separated by a blank line.
    """
    from gptcli.chat.conversation import read_transcript
    from gptcli.chat.repl import run_chat

    params = sampling_params(temperature, top_k, top_p, min_p, repeat_penalty, seed)
    check_max_tokens(max_tokens)
    constraint = constraint_from(json_schema, output_format, grammar)
    saved = read_transcript(resume) if resume else None  # bad file: fail before loading
    interactive = sys.stdin is not None and sys.stdin.isatty()
    backend = open_steered(
        server, model, ctx, threads, gpu_layers, verbose, timeout, steer, steer_layers
    )
    try:
        code = run_chat(
            backend,
            params,
            system=system,
            saved=saved,
            resume=resume,
            max_tokens=max_tokens,
            stops=list(stop or []),
            interactive=interactive,
            constraint=constraint,
        )
    finally:
        backend.close()
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)

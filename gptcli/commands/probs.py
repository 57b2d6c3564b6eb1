"""`gptcli next` and `gptcli score`: the softmax at the end of each pass, shown exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gptcli.commands.options import (
    ChatOpt,
    CtxOpt,
    FormatOpt,
    GpuLayersOpt,
    GrammarOpt,
    JsonSchemaOpt,
    ModelOpt,
    ServerOpt,
    SteerLayersOpt,
    SteerOpt,
    SystemOpt,
    ThreadsOpt,
    TimeoutOpt,
    VerboseOpt,
    constraint_from,
    read_input,
)
from gptcli.commands.steer import open_steered
from gptcli.errors import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="JSON Lines on stdout, for scripts.")]


def next_token(
    prompt: Annotated[
        str | None, typer.Argument(help="The text so far; stdin is read too.")
    ] = None,
    model: ModelOpt = None,
    top: Annotated[int, typer.Option("--top", metavar="K", help="Show the K most likely.")] = 10,
    temperature: Annotated[
        str,
        typer.Option(
            "-t",
            "--temperature",
            metavar="T[,T...]",
            help="Temperatures to compare side by side, e.g. 0.5,1,2 (0: greedy).",
        ),
    ] = "1",
    steps: Annotated[
        int, typer.Option("--steps", metavar="N", help="Walk N greedy steps, a chart at each.")
    ] = 1,
    chat: ChatOpt = False,
    system: SystemOpt = None,
    json_out: JsonOpt = False,
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
    """The next-token distribution after PROMPT: the top K with probability,
    log-probability and cumulative mass, and the entropy in bits. Under --json-schema,
    --format or --grammar: the model's and the masked distribution side by side; under
    --steer: the unsteered and the steered distribution side by side."""
    from gptcli.sampling.distribution import parse_temperatures

    try:
        temps = parse_temperatures(temperature)
    except ValueError as e:
        raise UsageError(f"--temperature: {e}") from None
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    if steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")

    constraint = constraint_from(json_schema, output_format, grammar)
    text = read_input(prompt, required=prompt is None)
    backend = open_steered(
        server, model, ctx, threads, gpu_layers, verbose, timeout, steer, steer_layers
    )
    if (steer or steer_layers) and constraint is None:
        from gptcli.commands.steer import next_steered

        return next_steered(backend, text, chat, system, top, steps, temps, json_out, steer)
    if constraint is not None:
        from gptcli.backends.base import require

        require(backend, "full_distribution", f"drop {constraint.option}", exit_code=2)
    if constraint is not None and not json_out:
        from gptcli.render.next import NextMaskedChart

        view = NextMaskedChart(backend.piece)
    elif json_out:
        from gptcli.render.next import NextJsonWriter

        view = NextJsonWriter(backend.piece)
    else:
        from gptcli.render.next import NextChart

        view = NextChart(backend.piece)
    extra = {"constraint": constraint} if constraint is not None else {}
    walk = backend.next_steps(
        text, chat=chat, system=system, top=top, steps=steps, temperatures=temps, **extra
    )
    for step, found in enumerate(walk):
        if found.masked is not None:
            view.step(step, found.position, found.dist, found.masked)
        else:
            view.step(step, found.position, found.dist)


def score(
    file: Annotated[
        Path | None,
        typer.Argument(help="Text file to score ('-' or none: stdin).", show_default=False),
    ] = None,
    model: ModelOpt = None,
    worst: Annotated[
        int, typer.Option("--worst", metavar="N", help="List the N least likely tokens.")
    ] = 10,
    json_out: JsonOpt = False,
    ctx: CtxOpt = 0,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
    server: ServerOpt = None,
    timeout: TimeoutOpt = None,
    steer: SteerOpt = None,
    steer_layers: SteerLayersOpt = None,
) -> None:
    """How surprising a text is to the model: each token coloured by its probability
    given all the tokens before it, the least likely ones, perplexity and surprisal."""
    from gptcli.backends.scoring import read_text

    if worst < 0:
        raise UsageError(f"--worst must be 0 or more, got {worst}")
    text = read_text(file)
    backend = open_steered(
        server, model, ctx, threads, gpu_layers, verbose, timeout, steer, steer_layers
    )
    result = backend.score(text)
    if json_out:
        from gptcli.render.score import score_json

        score_json(result, backend.piece, worst)
    else:
        from gptcli.render.score import score_text

        score_text(result, backend.piece, worst, skip=backend.is_control)


def register(app: typer.Typer) -> None:
    app.command("next")(next_token)
    app.command("score")(score)

"""`gptcli next` and `gptcli score`: the softmax at the end of each pass, shown exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gptcli.commands.options import (
    CtxOpt,
    GpuLayersOpt,
    ModelOpt,
    ServerOpt,
    SystemOpt,
    ThreadsOpt,
    VerboseOpt,
)

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
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the chat template.")] = (
        False
    ),
    system: SystemOpt = None,
    json_out: JsonOpt = False,
    ctx: CtxOpt = 0,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
    server: ServerOpt = None,
) -> None:
    """The next-token distribution after PROMPT: the top K with probability,
    log-probability and cumulative mass, and the entropy in bits."""
    from gptcli.commands.options import load_engine, read_input
    from gptcli.distribution import next_tokens, parse_temperatures
    from gptcli.errors import UsageError
    from gptcli.prompting import chat_prompt, messages_for, raw_prompt
    from gptcli.render import notice

    try:
        temps = parse_temperatures(temperature)
    except ValueError as e:
        raise UsageError(f"--temperature: {e}") from None
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    if steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    text = read_input(prompt, required=prompt is None)
    if server:
        from gptcli.commands import remote_run

        remote_run.ignored_local_options(ctx, threads, gpu_layers, verbose)
        return remote_run.next_remote(
            remote_run.connect(server, model),
            text,
            top=top,
            temperatures=temps,
            steps=steps,
            chat=chat,
            system=system,
            json_out=json_out,
        )
    engine = load_engine(model, ctx, threads, gpu_layers, verbose)
    if top > engine.n_vocab:
        raise UsageError(f"--top must be at most {engine.n_vocab} (the vocabulary), got {top}")
    if chat:
        tokens = chat_prompt(engine, messages_for(text, system))
    else:
        if system:
            notice("--system is ignored without --chat")
        tokens = raw_prompt(engine, text)
    if not tokens:
        bos = engine.bos_id
        if not 0 <= bos < engine.n_vocab:
            raise UsageError("the prompt tokenizes to nothing and the model has no BOS token")
        tokens = [bos]
        piece = engine.piece(bos).decode("utf-8", errors="replace")
        notice(f"empty prompt: showing what follows the BOS token {piece}")

    if json_out:
        from gptcli.render_probs import NextJsonWriter

        view = NextJsonWriter(engine.piece)
    else:
        from gptcli.render_probs import NextChart

        view = NextChart(engine.piece)
    logits = engine.prefill(tokens)
    for step in range(steps):
        # Copy: the logits are a view into llama.cpp's buffer, valid until the next call.
        dist = next_tokens(logits.copy(), top, temps)
        view.step(step, len(tokens), dist)
        if step + 1 == steps:
            break
        chosen = dist.candidates[0].id  # greedy: the most likely token
        if engine.is_eog(chosen):
            notice("the most likely next token ends the text: no more steps")
            break
        tokens.append(chosen)
        if engine.n_past >= engine.n_ctx:
            notice(f"the context is full ({engine.n_ctx} tokens)")
            break
        logits = engine.step(chosen)


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
) -> None:
    """How surprising a text is to the model: each token coloured by its probability
    given all the tokens before it, the least likely ones, perplexity and surprisal."""
    from gptcli.errors import UsageError
    from gptcli.scoring import read_text, score_tokens

    if worst < 0:
        raise UsageError(f"--worst must be 0 or more, got {worst}")
    text = read_text(file)
    if server:
        from gptcli.commands import remote_run

        remote_run.ignored_local_options(ctx, threads, gpu_layers, verbose)
        return remote_run.score_remote(remote_run.connect(server, model), text, worst, json_out)
    from gptcli.commands.options import load_engine
    from gptcli.prompting import raw_prompt

    engine = load_engine(model, ctx, threads, gpu_layers, verbose)
    tokens = raw_prompt(engine, text)
    if len(tokens) < 2:
        raise UsageError("the text is a single token: nothing to score (a token needs a context)")
    result = score_tokens(engine, tokens)
    if json_out:
        from gptcli.render_probs import score_json

        score_json(result, engine.piece, worst)
    else:
        from gptcli.render_probs import score_text

        score_text(result, engine.piece, worst, skip=engine.is_control)


def register(app: typer.Typer) -> None:
    app.command("next")(next_token)
    app.command("score")(score)

"""`gptcli generate`: stream a completion to stdout."""

from __future__ import annotations

from typing import Annotated

import typer

from gptcli.commands.options import (
    CtxOpt,
    GpuLayersOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    RepeatPenaltyOpt,
    SeedOpt,
    StopOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    TopKOpt,
    TopPOpt,
    VerboseOpt,
)


def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt; stdin is read too.")] = None,
    model: ModelOpt = None,
    raw: Annotated[bool, typer.Option("--raw", help="Plain completion, no chat template.")] = False,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 40,
    top_p: TopPOpt = 0.95,
    min_p: MinPOpt = 0.05,
    repeat_penalty: RepeatPenaltyOpt = 1.0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    ctx: CtxOpt = 0,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    stats: Annotated[bool, typer.Option("--stats", help="Timings and tokens/s on stderr.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Generate text from PROMPT (and piped stdin), streaming tokens to stdout."""
    from gptcli.commands.options import (
        check_max_tokens,
        load_engine,
        read_input,
        sampling_params,
    )
    from gptcli.generation import Generation, TokenEvent
    from gptcli.prompting import chat_format, chat_prompt, messages_for, raw_prompt
    from gptcli.render import TextRenderer, notice, print_stats
    from gptcli.sampling import Sampler

    params = sampling_params(temperature, top_k, top_p, min_p, repeat_penalty, seed)
    check_max_tokens(max_tokens)
    text = read_input(prompt)
    engine = load_engine(model, ctx, threads, gpu_layers, verbose)
    stops = list(stop or [])
    if raw:
        if system:
            notice("--system is ignored with --raw")
        tokens = raw_prompt(engine, text)
    else:
        fmt = chat_format(engine)
        if fmt.template is None:
            from gptcli.chat_template import PLAIN_NOTICE

            notice(PLAIN_NOTICE + " (--raw for plain completion)")
        tokens = chat_prompt(engine, messages_for(text, system), fmt)
        stops += fmt.stops
    if not tokens:
        raise_empty()
    generation = Generation(engine, tokens, Sampler(params, engine.n_vocab), max_tokens, stops)
    renderer = TextRenderer()
    finish = None
    try:
        for event in generation:
            if isinstance(event, TokenEvent):
                renderer.token(event)
            else:
                finish = event
    except KeyboardInterrupt:
        renderer.finish(None)
        if stats:
            print_stats(generation.finish("interrupted"))
        raise
    renderer.finish(finish)
    if finish.reason == "context":
        notice(f"stopped: the context is full ({engine.n_ctx} tokens); raise --ctx for more")
    if stats:
        print_stats(finish)


def raise_empty() -> None:
    from gptcli.errors import UsageError

    raise UsageError("the prompt tokenizes to nothing")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)

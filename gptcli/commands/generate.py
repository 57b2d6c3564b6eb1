"""`gptcli generate`: stream a completion to stdout."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperCommand

from gptcli.commands.options import (
    CtxOpt,
    GpuLayersOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    RepeatPenaltyOpt,
    SeedOpt,
    ServerOpt,
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
    probs: Annotated[
        bool,
        typer.Option(
            "--probs",
            help="Colour each token by its probability (`token[0.77]` without colour). "
            "--probs=model: the model's own probability instead of the sampled one.",
        ),
    ] = False,
    probs_kind: Annotated[
        str,
        typer.Option(
            "--probs-kind",
            metavar="sampled|model",
            help="Which probability --probs shows: of the distribution the token was "
            "drawn from (sampled), or the softmax of the raw logits (model).",
        ),
    ] = "sampled",
    alternatives: Annotated[
        int | None,
        typer.Option(
            "--alternatives",
            metavar="K",
            help="With --probs: one line per token with its K most likely alternatives. "
            "With --json: the length of top_logprobs (default 5).",
        ),
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="JSON Lines: one object per token, then a summary."),
    ] = False,
    server: ServerOpt = None,
    each_line: Annotated[
        bool,
        typer.Option(
            "--each-line",
            help="One generation per line of stdin (PROMPT, if given, goes before each), "
            "one output line each, in order.",
        ),
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            "-j", "--jobs", metavar="N", help="With --each-line --server: N requests in flight."
        ),
    ] = 1,
) -> None:
    """Generate text from PROMPT (and piped stdin), streaming tokens to stdout."""
    from gptcli.commands.options import (
        check_max_tokens,
        load_engine,
        read_input,
        sampling_params,
    )
    from gptcli.errors import Terminated
    from gptcli.generation import Generation, TokenEvent
    from gptcli.prompting import chat_format, chat_prompt, messages_for, raw_prompt
    from gptcli.render import TextRenderer, notice, print_stats
    from gptcli.sampling import Sampler

    params = sampling_params(temperature, top_k, top_p, min_p, repeat_penalty, seed)
    check_max_tokens(max_tokens)
    use_model_probs = check_probs_options(probs, probs_kind, alternatives, json_out)
    if each_line or jobs != 1:
        from gptcli.commands.remote_run import check_each_line

        check_each_line(each_line, jobs, server, probs, json_out)
    if server:
        from gptcli.commands import remote_run

        remote_run.ignored_local_options(ctx, threads, gpu_layers, verbose)
        remote = remote_run.connect(server, model)
        request = remote_run.RemoteRequest(raw, system, params, max_tokens, list(stop or []))
        if each_line:
            return remote_run.each_line_remote(remote, prompt, request, jobs)
        return remote_run.generate_remote(
            remote,
            read_input(prompt),
            request,
            probs=probs,
            probs_kind_given=probs_kind != "model",
            alternatives=alternatives,
            json_out=json_out,
            stats=stats,
        )
    text = None if each_line else read_input(prompt)
    engine = load_engine(model, ctx, threads, gpu_layers, verbose)
    stops = list(stop or [])
    if each_line:
        from gptcli.commands.remote_run import each_line_local, local_generation

        return each_line_local(
            lambda line: local_generation(engine, line, raw, system, params, max_tokens, stops),
            prompt,
        )
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
    if alternatives is not None and alternatives > engine.n_vocab - 1:
        raise_alternatives(alternatives, engine.n_vocab - 1)
    if json_out:
        from gptcli.render_probs import JsonRenderer

        k = 5 if alternatives is None else alternatives
        renderer = JsonRenderer(engine.piece, n_top=min(k, engine.n_vocab))
    elif probs:
        from gptcli.render_probs import ProbsRenderer, legend

        renderer = ProbsRenderer(
            use_model_probs=use_model_probs, alternatives=alternatives or 0, piece=engine.piece
        )
        if renderer.colour:
            legend(use_model_probs)
    else:
        renderer = TextRenderer()
    n_top = getattr(renderer, "n_top", 0)
    generation = Generation(
        engine,
        tokens,
        Sampler(params, engine.n_vocab),
        max_tokens,
        stops,
        n_top=n_top,
        model_probs=getattr(renderer, "model_probs", False),
    )
    finish = None
    try:
        for event in generation:
            if isinstance(event, TokenEvent):
                renderer.token(event)
            else:
                finish = event
    except (KeyboardInterrupt, Terminated):
        # Ctrl-C or SIGTERM: end the partial text cleanly; the CLI sets the exit code.
        renderer.finish(None)
        if stats:
            print_stats(generation.finish("interrupted"))
        raise
    renderer.finish(finish)
    if finish.reason == "context":
        notice(f"stopped: the context is full ({engine.n_ctx} tokens); raise --ctx for more")
    if stats:
        print_stats(finish)


PROBS_KINDS = ("sampled", "model")


def check_probs_options(
    probs: bool, probs_kind: str, alternatives: int | None, json_out: bool
) -> bool:
    """Validate the probability options; True when the model's probability is shown."""
    from gptcli.errors import UsageError

    if probs_kind not in PROBS_KINDS:
        raise UsageError(f"--probs-kind must be sampled or model, got {probs_kind!r}")
    if json_out and probs:
        raise UsageError("--json already carries both probabilities: drop --probs")
    if alternatives is not None:
        if not (probs or json_out):
            raise UsageError("--alternatives needs --probs or --json")
        if alternatives < 1:
            raise UsageError(f"--alternatives must be at least 1, got {alternatives}")
    return probs_kind == "model"


def raise_alternatives(k: int, most: int) -> None:
    from gptcli.errors import UsageError

    raise UsageError(f"--alternatives must be at most {most} (the vocabulary), got {k}")


def raise_empty() -> None:
    from gptcli.errors import UsageError

    raise UsageError("the prompt tokenizes to nothing")


class _GenerateCommand(TyperCommand):
    """Accepts `--probs=model` and `--probs=sampled` as `--probs --probs-kind KIND`
    (a flag that also takes a value would swallow the prompt after a bare `--probs`)."""

    def parse_args(self, ctx, args):
        rewritten = []
        for i, arg in enumerate(args):
            if arg == "--":
                rewritten += args[i:]
                break
            if arg.startswith("--probs="):
                rewritten += ["--probs", "--probs-kind", arg.split("=", 1)[1]]
            else:
                rewritten.append(arg)
        return super().parse_args(ctx, rewritten)


def register(app: typer.Typer) -> None:
    app.command("generate", cls=_GenerateCommand)(generate)

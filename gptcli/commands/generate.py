"""`gptcli generate`: stream a completion to stdout."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer
from typer.core import TyperCommand

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
    read_input,
    sampling_params,
)
from gptcli.commands.steer import open_steered
from gptcli.console import notice
from gptcli.errors import GptcliError, Terminated, UsageError
from gptcli.limits import MAX_JOBS
from gptcli.sampling import defaults as D


def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt; stdin is read too.")] = None,
    model: ModelOpt = None,
    raw: Annotated[bool, typer.Option("--raw", help="Plain completion, no chat template.")] = False,
    system: SystemOpt = None,
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
    timeout: TimeoutOpt = None,
    json_schema: JsonSchemaOpt = None,
    output_format: FormatOpt = None,
    grammar: GrammarOpt = None,
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
            "-j",
            "--jobs",
            metavar="N",
            help="With --each-line: N lines in flight (batched locally, requests with "
            "--server); at most 255, and never more than there are lines.",
        ),
    ] = 1,
    steer: SteerOpt = None,
    steer_layers: SteerLayersOpt = None,
) -> None:
    """Generate text from PROMPT (and piped stdin), streaming tokens to stdout."""
    from gptcli.backends.base import Request, lacking
    from gptcli.backends.events import TokenEvent
    from gptcli.render.stream import TextRenderer, print_stats

    params = sampling_params(temperature, top_k, top_p, min_p, repeat_penalty, seed)
    constraint = constraint_from(json_schema, output_format, grammar)  # before any loading
    check_max_tokens(max_tokens)
    probs = probs or (probs_kind == "model" and not json_out)  # asking which implies --probs
    use_model_probs = check_probs_options(probs, probs_kind, alternatives, json_out)
    if each_line or jobs != 1:
        check_each_line(each_line, jobs, server, probs, json_out)
    text = None if each_line else read_input(prompt)
    backend = open_steered(
        server, model, ctx, threads, gpu_layers, verbose, timeout, steer, steer_layers
    )
    request = Request(text or "", raw, system, params, max_tokens, tuple(stop or ()))
    if constraint is not None:
        from gptcli.backends.base import require

        require(backend, "grammar", f"drop {constraint.option}", exit_code=2)
        request = replace(request, constraint=constraint)
    if each_line:
        from gptcli.backends.lines import input_lines
        from gptcli.render.stream import print_in_order

        if probs or json_out:  # one JSON object per line (a local model: checked above)
            from gptcli.render.tokens import write_lines_json

            if constraint is not None:
                raise UsageError("--each-line with a grammar prints text only: drop --probs/--json")

            k = 5 if alternatives is None else alternatives
            request = replace(request, n_top=min(k, backend.n_vocab), model_probs=True)
            results = backend.each_line_results(input_lines(), prompt, request, jobs)
            return write_lines_json(results, backend.piece, request.n_top)
        texts = backend.each_line(input_lines(), prompt, request, jobs)
        if constraint is not None:
            from gptcli.backends.constraints import one_document_per_line

            texts = one_document_per_line(texts, constraint, max_tokens)
        return print_in_order(texts)
    n_vocab = backend.n_vocab
    if alternatives is not None and n_vocab is not None and alternatives > n_vocab - 1:
        raise_alternatives(alternatives, n_vocab - 1)
    if (
        probs
        and not use_model_probs
        and lacking(
            backend, "sampled_distribution", "showing the model's probabilities (--probs=model)"
        )
    ):
        use_model_probs = True
    if json_out:
        from gptcli.render.tokens import JsonRenderer

        k = 5 if alternatives is None else alternatives
        renderer = JsonRenderer(backend.piece, n_top=min(k, n_vocab or k))
    elif probs:
        from gptcli.render.tokens import ProbsRenderer, legend

        renderer = ProbsRenderer(
            use_model_probs=use_model_probs, alternatives=alternatives or 0, piece=backend.piece
        )
        if renderer.colour:
            legend(use_model_probs)
    else:
        renderer = TextRenderer()
    generation = backend.start(
        replace(
            request,
            n_top=getattr(renderer, "n_top", 0),
            model_probs=getattr(renderer, "model_probs", False),
            sampled_probs=probs and not use_model_probs,
        )
    )
    finish = None
    warned = False
    try:
        for event in generation:
            if not isinstance(event, TokenEvent):
                finish = event
                continue
            if (probs or json_out) and not warned and _no_numbers(event.draw, use_model_probs):
                # A server that sent no log probabilities: the text, never invented numbers.
                from gptcli.backends.remote import NO_LOGPROBS

                warned = True
                notice(NO_LOGPROBS.format(what="printing the text without them"))
                if probs:
                    renderer = TextRenderer()
            renderer.token(event)
    except (KeyboardInterrupt, Terminated):
        # Ctrl-C or SIGTERM: end the partial text cleanly; the CLI sets the exit code.
        renderer.finish(None)
        if stats:
            print_stats(generation.finish("interrupted"), backend.location)
        raise
    except GptcliError:
        renderer.finish(None)  # what was printed stays, ending its line
        raise
    renderer.finish(finish)
    if finish.reason == "context":
        notice(f"stopped: the context is full ({backend.n_ctx} tokens); raise --ctx for more")
    if stats:
        print_stats(finish, backend.location)
    if constraint is not None:
        from gptcli.backends.constraints import check_complete

        check_complete(finish, constraint, max_tokens)


def _no_numbers(draw, model: bool) -> bool:
    """True when a token came with no probability to show (a server that sent none)."""
    import math

    if model:
        return draw.model_logprob is None
    return draw.model_logprob is None and math.isnan(draw.prob)


def check_each_line(
    each_line: bool, jobs: int, server: str | None, probs: bool, json_out: bool
) -> None:
    if not each_line:
        raise UsageError("-j needs --each-line")
    if not 1 <= jobs <= MAX_JOBS:
        raise UsageError(f"-j must be from 1 to {MAX_JOBS}, got {jobs}")
    if (probs or json_out) and server:
        raise UsageError("--each-line --server prints text only: drop --probs/--json")


PROBS_KINDS = ("sampled", "model")


def check_probs_options(
    probs: bool, probs_kind: str, alternatives: int | None, json_out: bool
) -> bool:
    """Validate the probability options; True when the model's probability is shown."""
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
    raise UsageError(f"--alternatives must be at most {most} (the vocabulary), got {k}")


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

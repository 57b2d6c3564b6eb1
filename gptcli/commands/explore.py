"""`gptcli explore`: a full-screen walk through the next-token distribution, with branches.

Textual and the explorer are imported only when the command runs (`--help` stays fast).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gptcli.commands.options import (
    CtxOpt,
    GpuLayersOpt,
    ModelOpt,
    SteerLayersOpt,
    SteerOpt,
    SystemOpt,
    ThreadsOpt,
    VerboseOpt,
    sampling_params,
)
from gptcli.commands.steer import steer_engine
from gptcli.errors import UsageError
from gptcli.limits import EXPLORE_MAX_STEPS
from gptcli.sampling import defaults as D

NOT_A_TERMINAL = (
    "explore is a full-screen app and needs a terminal; without one, use "
    "`gptcli next --steps N PROMPT` (the distribution at each step) or "
    "`gptcli generate --probs PROMPT` (the probability of every token taken)"
)


def explore(
    prompt: Annotated[
        str | None, typer.Argument(help="The text to start from (empty: after BOS).")
    ] = None,
    model: ModelOpt = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Plain completion of PROMPT (the default).")
    ] = False,
    chat: Annotated[
        bool, typer.Option("--chat", help="Wrap PROMPT in the model's chat template.")
    ] = False,
    system: SystemOpt = None,
    load: Annotated[
        str | None,
        typer.Option("--load", metavar="FILE", help="Reopen a tree saved with `w`."),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option("-t", "--temperature", help=f"Softmax temperature ({D.TEMPERATURE})."),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help=f"Top-k ({D.TOP_K}; 0: off).")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option("--top-p", help=f"Top-p ({D.TOP_P}; 1: off).")
    ] = None,
    min_p: Annotated[
        float | None, typer.Option("--min-p", help=f"Min-p ({D.MIN_P}; 0: off).")
    ] = None,
    repeat_penalty: Annotated[
        float | None,
        typer.Option(
            "--repeat-penalty",
            help=f"Penalise the last {D.REPEAT_LAST_N} tokens ({D.REPEAT_PENALTY:g}).",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed for `s`.")] = None,
    steps: Annotated[
        int | None,
        typer.Option("-n", "--steps", metavar="N", help="Tokens per `g` or `s` (10)."),
    ] = None,
    ctx: CtxOpt = 0,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
    steer: SteerOpt = None,
    steer_layers: SteerLayersOpt = None,
) -> None:
    """Walk the next-token distribution token by token: see every candidate with its
    probability, take another one, step back, branch, change the temperature and
    truncation and watch the bars move. `?` in the app lists the keys."""
    from gptcli.explorer.tree import TreeFileError
    from gptcli.llama.load import load_engine

    if raw and chat:
        raise UsageError("--raw and --chat exclude each other")
    if load and prompt is not None:
        raise UsageError("give PROMPT or --load FILE, not both")
    if steps is not None and not 1 <= steps <= EXPLORE_MAX_STEPS:
        raise UsageError(f"--steps must be from 1 to {EXPLORE_MAX_STEPS}, got {steps}")
    given = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repeat_penalty": repeat_penalty,
    }
    opts = {k: D.DEFAULTS[k] if v is None else v for k, v in given.items()}
    sampling_params(**opts, seed=seed)  # bad values: one line before anything loads
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        # Textual draws on stderr and reads stdin; stdout stays free for `e`.
        raise UsageError(NOT_A_TERMINAL)

    engine = load_engine(model, ctx, threads, gpu_layers, verbose)
    if steer or steer_layers:
        steer_engine(engine, steer, steer_layers)
    from gptcli.explorer.session import Session, load_tree, model_id

    if load:
        tree = load_tree(load, engine)  # settings checked there: right keys, right types
        saved = tree.settings
        for k in opts:  # the file's settings, unless given on the command line
            if given[k] is None and k in saved:
                opts[k] = saved[k]
        if steps is None:
            steps = saved.get("steps")
    else:
        tree = new_tree(engine, prompt or "", chat or bool(system), system, model_id(engine))
    try:
        params = sampling_params(**opts, seed=seed)
    except UsageError as e:
        raise TreeFileError(load, e.message) from None
    session = Session(engine, tree, params, steps or 10)
    text = run_app(session)
    if text is not None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def new_tree(engine, text: str, chat: bool, system: str | None, mid):
    """A tree holding only the prompt: raw text, or the chat template around it."""
    from gptcli.explorer.session import prompt_tokens
    from gptcli.explorer.tree import Tree

    tokens = prompt_tokens(engine, text, chat, system)
    if len(tokens) >= engine.n_ctx:
        raise UsageError(
            f"the prompt has {len(tokens)} tokens; the context holds {engine.n_ctx} (raise --ctx)"
        )
    return Tree(mid, text, tokens, chat, system)


def run_app(session) -> str | None:
    """Run the app on this terminal; the branch text when quit with `e`."""
    from gptcli.explorer.app import Explorer

    session.view()  # evaluate the prompt before the screen switches (errors stay readable)
    app = Explorer(session)
    result = app.run()
    if app.return_code:  # Textual printed what went wrong
        raise typer.Exit(app.return_code)
    return result


def register(app: typer.Typer) -> None:
    app.command("explore")(explore)

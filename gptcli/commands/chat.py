"""`gptcli chat`: a conversation in the terminal, or driven through stdin."""

from __future__ import annotations

import sys
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
    ServerOpt,
    StopOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    TopKOpt,
    TopPOpt,
    VerboseOpt,
)

ResumeOpt = Annotated[
    str | None,
    typer.Option("--resume", metavar="FILE", help="Continue a conversation saved with /save."),
]


def chat(
    model: ModelOpt = None,
    system: SystemOpt = None,
    resume: ResumeOpt = None,
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
    verbose: VerboseOpt = False,
    server: ServerOpt = None,
) -> None:
    """Chat with the model: replies stream as they are generated; /help lists commands.

    With stdin not a terminal, each line is a user message (\"\"\" blocks span lines)
    and each reply is printed, separated by a blank line.
    """
    from gptcli.commands.options import check_max_tokens, load_engine, sampling_params
    from gptcli.conversation import Conversation, read_transcript
    from gptcli.prompting import chat_format
    from gptcli.render import notice
    from gptcli.repl import Repl

    params = sampling_params(temperature, top_k, top_p, min_p, repeat_penalty, seed)
    check_max_tokens(max_tokens)
    saved = read_transcript(resume) if resume else None  # bad file: fail before loading
    interactive = sys.stdin is not None and sys.stdin.isatty()
    if server:
        from gptcli.commands import remote_run
        from gptcli.remote_repl import run_remote_chat

        remote_run.ignored_local_options(ctx, threads, gpu_layers, verbose)
        code = run_remote_chat(
            remote_run.connect(server, model),
            params,
            system=system,
            saved=saved,
            resume=resume,
            max_tokens=max_tokens,
            stops=list(stop or []),
            interactive=interactive,
        )
        if code:
            raise typer.Exit(code)
        return
    engine = load_engine(model, ctx, threads, gpu_layers, verbose)
    try:
        fmt = chat_format(engine)
        if fmt.template is None:
            from gptcli.chat_template import PLAIN_NOTICE

            notice(PLAIN_NOTICE)
        conversation = Conversation(engine, fmt, system or None)
        if saved is not None:
            saved_system, conversation.messages = saved
            if system and saved_system and system != saved_system:
                notice("(--system replaces the resumed conversation's system prompt)")
            conversation.system = system or saved_system
        conversation.check_template()  # a hostile or broken template stops here
        repl = Repl(
            engine,
            conversation,
            params,
            max_tokens=max_tokens,
            stops=list(stop or []) + list(fmt.stops),
            interactive=interactive,
        )
        if interactive:
            notice(
                f"{engine.name} · context {engine.n_ctx} tokens · "
                "/help for commands, Ctrl-D to quit"
            )
            if saved is not None:
                notice(f"(resumed {conversation.turns} turns from {resume})")
                repl.replay()
        code = repl.run()
    finally:
        engine.close()
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)

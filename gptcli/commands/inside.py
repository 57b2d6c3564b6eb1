"""`gptcli lens` and `gptcli attention`: inside the forward pass, read from llama.cpp's
own intermediate tensors."""

from __future__ import annotations

from typing import Annotated

import typer

from gptcli.commands.options import (
    ChatOpt,
    CtxOpt,
    GpuLayersOpt,
    ModelOpt,
    ServerOpt,
    SteerLayersOpt,
    SteerOpt,
    SystemOpt,
    ThreadsOpt,
    VerboseOpt,
    read_input,
)

PromptArg = Annotated[str | None, typer.Argument(help="The text to look inside; stdin too.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON on stdout, for scripts.")]


def _prepare(prompt, model, chat, system, ctx, threads, gpu_layers, verbose, server, what):
    """The engine and the prompt's tokens, from a backend that gives its internals."""
    from gptcli.backends import open_backend
    from gptcli.backends.base import require
    from gptcli.console import notice, print_error
    from gptcli.errors import ExitCode, UsageError
    from gptcli.llama.prompt import chat_prompt, messages_for, raw_prompt

    text = read_input(prompt)
    backend = open_backend(
        server, model, ctx, threads, gpu_layers, verbose, notify=notice, report_error=print_error
    )
    require(
        backend,
        "internals",
        f"{what} reads them from llama.cpp's graph, which a server does not expose; "
        "run it on a local model (drop --server)",
        exit_code=ExitCode.USAGE,
    )
    engine = backend.engine
    tokens = chat_prompt(engine, messages_for(text, system)) if chat else raw_prompt(engine, text)
    if not tokens:
        raise UsageError("the prompt tokenizes to nothing")
    return engine, tokens


def lens(
    prompt: PromptArg = None,
    model: ModelOpt = None,
    positions: Annotated[
        str | None,
        typer.Option(
            "--positions",
            metavar="WHICH",
            help="last (default), all, a position, or a range A:B: a layers x positions grid.",
        ),
    ] = None,
    mid: Annotated[
        bool,
        typer.Option("--mid", help="Also read the stream after each attention block."),
    ] = False,
    track: Annotated[
        list[str] | None,
        typer.Option(
            "--track",
            metavar="TOKEN",
            help="Follow this token's probability across layers (repeatable).",
        ),
    ] = None,
    chat: ChatOpt = False,
    system: SystemOpt = None,
    json_out: JsonOpt = False,
    ctx: CtxOpt = 0,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
    server: ServerOpt = None,
    steer: SteerOpt = None,
    steer_layers: SteerLayersOpt = None,
) -> None:
    """What each layer's residual stream would predict (the logit lens).

    Each layer's output is put through the model's final norm and unembedding, as if
    the model stopped there. One row per layer for the last position: its top token,
    the probability and rank of the model's final answer, the entropy and the KL
    divergence to the final distribution. `--positions all` shows the grid. With
    --steer: the unsteered and steered lens side by side, and the layer from which the
    answer changes."""
    from gptcli.console import notice
    from gptcli.inside import lens as L
    from gptcli.inside.unembedding import final_step
    from gptcli.llama.capture import capture
    from gptcli.render.inside import lens_grid, lens_json, lens_table

    engine, tokens = _prepare(
        prompt, model, chat, system, ctx, threads, gpu_layers, verbose, server, "lens"
    )
    picked = L.parse_positions(positions, len(tokens))
    tracked = [_track_id(engine, t) for t in track or []]
    step, fresh = final_step(engine.header)
    if fresh:
        notice("dequantized the unembedding matrix once; later runs read it from the cache")
    if steer or steer_layers:
        from gptcli.commands.steer import lens_steered, steer_engine

        steer_engine(engine, steer, steer_layers)
        return lens_steered(engine, step, tokens, picked, json_out, steer, steer_layers)
    captured = capture(engine, tokens, L.wanted(mid))
    # The answer at the last position is what generation computes there (the capture
    # pass runs without flash attention: its probabilities differ by up to ~0.01).
    last = len(tokens) - 1
    reference = {last: engine.prefill(tokens).copy()} if last in picked else {}
    result = L.read_lens(
        step,
        tokens,
        captured.tensors,
        captured.logits,
        picked,
        mid=mid,
        track=tracked,
        reference=reference,
    )
    if result.agreement > L.AGREEMENT_TOLERANCE:
        notice(
            f"the lens of the last layer differs from llama.cpp's own distribution by up to "
            f"{result.agreement:.3f} in probability: this architecture's final step "
            f"({engine.header.architecture}) is not reproduced exactly; read the layers with care"
        )
    if json_out:
        return lens_json(result, engine.piece)
    if len(picked) == 1:
        return lens_table(result, engine.piece)
    return lens_grid(result, engine.piece)


def _track_id(engine, text: str) -> int:
    from gptcli.console import notice
    from gptcli.errors import UsageError

    if text.startswith("#") and text[1:].isdigit():
        tid = int(text[1:])
        if tid >= engine.n_vocab:
            raise UsageError(f"--track {text}: the vocabulary has {engine.n_vocab} tokens")
        return tid
    ids = engine.tokenize(text, add_bos=False, special=False)
    if not ids:
        raise UsageError(f"--track {text!r} is no token")
    if len(ids) > 1:
        notice(
            f"--track {text!r} is {len(ids)} tokens: following the first, {engine.piece(ids[0])!r}"
        )
    return ids[0]


def attention(
    prompt: PromptArg = None,
    model: ModelOpt = None,
    layer: Annotated[
        int | None, typer.Option("--layer", metavar="L", help="Zoom into layer L (with --head).")
    ] = None,
    head: Annotated[
        int | None, typer.Option("--head", metavar="H", help="Zoom into head H of --layer.")
    ] = None,
    stats: Annotated[
        bool,
        typer.Option(
            "--stats",
            help="Per head: entropy, share on the first token, previous-token and "
            "induction scores.",
        ),
    ] = False,
    no_bos: Annotated[
        bool,
        typer.Option("--no-bos", help="Leave the first token out of the colour scale."),
    ] = False,
    chat: ChatOpt = False,
    system: SystemOpt = None,
    json_out: JsonOpt = False,
    ctx: CtxOpt = 0,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
    server: ServerOpt = None,
    steer: SteerOpt = None,
    steer_layers: SteerLayersOpt = None,
) -> None:
    """Where each attention head looks.

    The overview: every layer x head, each cell where that head looks from the last
    token (the key it weighs most, shaded by the weight, and a strip over the keys).
    `--layer L --head H`: the whole query x key matrix of one head as a heat map, and
    the last token's row shown as the prompt shaded by weight."""
    from gptcli.errors import UsageError
    from gptcli.inside import attention as A
    from gptcli.llama.capture import capture
    from gptcli.render.inside import attention_grid, attention_json, attention_stats, head_view

    # --layer alone is allowed with --json (every head of that layer), --head never is
    if head is not None and layer is None or (layer is not None and head is None and not json_out):
        raise UsageError("--layer and --head go together (zoom into one head)")
    engine, tokens = _prepare(
        prompt, model, chat, system, ctx, threads, gpu_layers, verbose, server, "attention"
    )
    n_layers = int(engine.header.get("{arch}.block_count") or 0)
    n_heads = engine.header.get("{arch}.attention.head_count")
    n_heads = n_heads if isinstance(n_heads, int) else (n_heads or [0])[0]
    if layer is not None and not 0 <= layer < n_layers:
        raise UsageError(
            f"--layer must be in 0..{n_layers - 1} (the model has {n_layers}), got {layer}"
        )
    if head is not None and not 0 <= head < n_heads:
        raise UsageError(f"--head must be in 0..{n_heads - 1} ({n_heads} heads), got {head}")
    if steer or steer_layers:
        from gptcli.commands.steer import steer_engine

        steer_engine(engine, steer, steer_layers)
    full = stats or (layer is not None) or json_out
    captured = capture(
        engine,
        tokens,
        A.wanted({layer} if layer is not None else None),
        keep=None if full else A.last_row_only,
    )
    weights = A.by_layer(captured.tensors)
    if json_out:
        return attention_json(tokens, weights, engine.piece, layer, head)
    if layer is not None:
        return head_view(tokens, weights[layer][head], engine.piece, layer, head, no_bos)
    if stats:
        return attention_stats(tokens, weights, engine.piece)
    return attention_grid(tokens, weights, engine.piece, no_bos)


def register(app: typer.Typer) -> None:
    app.command("lens")(lens)
    app.command("attention")(attention)

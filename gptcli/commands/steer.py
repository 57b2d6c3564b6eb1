"""`gptcli steer make|show|sweep`, and `--steer FILE[:SCALE]` for the model commands:
control vectors added to the residual stream (llama.cpp's control-vector GGUF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gptcli.commands.options import (
    ChatOpt,
    CtxOpt,
    GpuLayersOpt,
    ModelOpt,
    SteerLayersOpt,
    ThreadsOpt,
    VerboseOpt,
    read_input,
    unescape,
)
from gptcli.errors import UsageError

steer_app = typer.Typer(
    name="steer",
    help="Control vectors: directions added to the residual stream after each layer, "
    "made from prompt pairs, inspected, and swept over scales. Any model command takes "
    "--steer FILE[:SCALE] to apply one.",
    no_args_is_help=True,
)


# -- --steer on the model commands ------------------------------------------------


def steer_engine(engine, specs: list[str] | None, layers: str | None):
    """Read, check and apply every --steer FILE[:SCALE] to a local engine; the
    [(vector, scale)] applied, or None when there is none."""
    if not specs:
        if layers is not None:
            raise UsageError("--steer-layers needs --steer")
        return None
    from gptcli.inside import steering as S

    vectors = S.load_specs(specs, engine.n_embd, engine.n_layer, engine.name)
    first, last = S.parse_layers(layers, engine.n_layer)
    engine.set_steering(S.combine(vectors, engine.n_embd, engine.n_layer), first, last)
    return vectors


def open_steered(
    server: str | None,
    model: str | None,
    ctx: int,
    threads: int | None,
    gpu_layers: int | None,
    verbose: bool,
    timeout: float | None,
    steer: list[str] | None,
    steer_layers: str | None,
):
    """The backend a command runs on: its notices and per-line errors on the console,
    and --steer applied (a server refuses it)."""
    from gptcli.backends import open_backend
    from gptcli.console import notice, print_error

    backend = open_backend(
        server,
        model,
        ctx,
        threads,
        gpu_layers,
        verbose,
        timeout,
        notify=notice,
        report_error=print_error,
    )
    if steer or steer_layers:
        apply_steer(backend, steer, steer_layers)
    return backend


def apply_steer(backend, specs: list[str] | None, layers: str | None):
    """--steer on any backend: a server refuses it through the capability table."""
    if not specs and layers is None:
        return None
    from gptcli.backends.base import require

    require(backend, "steering", "drop --steer", exit_code=2)
    return steer_engine(backend.engine, specs, layers)


def describe(specs: list[str], layers: str | None) -> str:
    where = f" (layers {layers})" if layers else ""
    return "steered by " + " + ".join(specs) + where


def compare_next(engine, tokens: list[int], top: int, steps: int, temperatures):
    """The unsteered and steered distributions at each greedy step of the steered walk:
    render_steer.Compared per step. Switching the vector drops the KV cache, so each
    step evaluates the prefix twice (a prompt, not a generation: cheap)."""
    import numpy as np

    from gptcli.console import notice
    from gptcli.render.steer import Compared, entropy_bits
    from gptcli.sampling.distribution import probs_at
    from gptcli.sampling.sampler import check_logits, top_k_ids

    steering = engine.steering
    t = temperatures[0]
    tokens = list(tokens)
    for step in range(steps):
        engine.set_steering(None)
        plain = engine.prefill(tokens).astype(np.float64)
        engine.set_steering(*steering)
        steered = engine.prefill(tokens).astype(np.float64)
        check_logits(plain, len(tokens))
        check_logits(steered, len(tokens))
        p, q = probs_at(plain, t), probs_at(steered, t)
        ids = list(dict.fromkeys([*top_k_ids(steered, top), *top_k_ids(plain, top)]))
        ids.sort(key=lambda i: (-q[i], -p[i]))
        yield Compared(
            len(tokens),
            t,
            [int(i) for i in ids],
            [float(p[i]) for i in ids],
            [float(q[i]) for i in ids],
            entropy_bits(p),
            entropy_bits(q),
        )
        chosen = int(np.argmax(steered))
        if step + 1 == steps:
            return
        if engine.is_eog(chosen):
            notice("the most likely next token ends the text: no more steps")
            return
        if len(tokens) + 1 > engine.n_ctx:
            notice(f"the context is full ({engine.n_ctx} tokens)")
            return
        tokens.append(chosen)


def next_steered(backend, text, chat, system, top, steps, temperatures, json_out, specs):
    """`next --steer`: the unsteered and steered distributions side by side."""
    from gptcli.llama.prompt import chat_prompt, messages_for, raw_prompt
    from gptcli.render.steer import next_compared, next_compared_json

    engine = backend.engine
    if top > engine.n_vocab:
        raise UsageError(f"--top must be at most {engine.n_vocab} (the vocabulary), got {top}")
    tokens = chat_prompt(engine, messages_for(text, system)) if chat else raw_prompt(engine, text)
    if not tokens:
        raise UsageError("the prompt tokenizes to nothing")
    layers = engine.steering[1:]
    what = describe(specs, f"{layers[0]}-{layers[1]}")
    for step, c in enumerate(compare_next(engine, tokens, top, steps, temperatures)):
        if json_out:
            next_compared_json(step, c, engine.piece)
        else:
            next_compared(step, c, engine.piece, what)


def lens_steered(engine, step, tokens, picked, json_out, specs, layers):
    """`lens --steer`: the lens without and with the vector at the last picked position,
    and the layer from which the answer changes."""
    from gptcli.console import notice
    from gptcli.inside import lens as L
    from gptcli.llama.capture import capture
    from gptcli.render.steer import lens_compared, lens_compared_json

    if len(picked) > 1:
        notice("with --steer the lens compares one position: the last one picked")
    pos = [picked[-1]]
    steering = engine.steering

    def reference() -> dict:
        # the answer at the last position is what generation computes (as plain lens)
        return {pos[0]: engine.prefill(tokens).copy()} if pos[0] == len(tokens) - 1 else {}

    cap = capture(engine, tokens, L.wanted(False))
    steered = L.read_lens(step, tokens, cap.tensors, cap.logits, pos, reference=reference())
    engine.set_steering(None)
    cap = capture(engine, tokens, L.wanted(False))
    answer = steered.final_ids[pos[0]]
    plain = L.read_lens(
        step, tokens, cap.tensors, cap.logits, pos, track=[answer], reference=reference()
    )
    engine.set_steering(*steering)
    if json_out:
        return lens_compared_json(plain, steered, engine.piece)
    first, last = steering[1:]
    lens_compared(plain, steered, engine.piece, describe(specs, f"{first}-{last}"))


# -- steer make ---------------------------------------------------------------------


def read_pairs(positive: Path, negative: Path) -> list[tuple[str, str]]:
    """Line i of each file is a pair; blank lines skipped and \\n-style escapes read
    (as llama-cvector-generator reads its prompt files)."""

    def lines(path: Path) -> list[str]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"prompt file not found: {path}") from None
        except UnicodeDecodeError as e:
            raise UsageError(f"{path} is not valid UTF-8 (byte {e.start})") from None
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
        return [unescape(line) for line in text.split("\n") if line]

    pos, neg = lines(positive), lines(negative)
    if len(pos) != len(neg):
        raise UsageError(
            f"{positive} has {len(pos)} prompts and {negative} {len(neg)}: line i of each "
            "makes a pair"
        )
    if not pos:
        raise UsageError(f"{positive} holds no prompt")
    return list(zip(pos, neg, strict=True))


@steer_app.command("make")
def make(
    positive: Annotated[
        Path, typer.Option("--positive", metavar="FILE", help="One prompt per line.")
    ],
    negative: Annotated[
        Path,
        typer.Option("--negative", metavar="FILE", help="Line i pairs with --positive's."),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", metavar="OUT.gguf", help="Where to write it.")
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            metavar="mean|pca",
            help="Reduce the differences by their mean, or by PCA's first component "
            "(its sign fixed so positive minus negative projects positively).",
        ),
    ] = "mean",
    positions: Annotated[
        str,
        typer.Option(
            "--positions",
            metavar="all|last",
            help="all: every position where the pair differs, the shorter prompt padded "
            "with a space token (llama-cvector-generator's convention); last: each "
            "prompt's last position only.",
        ),
    ] = "all",
    layers: Annotated[
        str | None,
        typer.Option("--layers", metavar="A-B", help="Only these layers (default: 1 to the last)."),
    ] = None,
    model: ModelOpt = None,
    ctx: CtxOpt = 0,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Make a control vector from paired prompts: per layer N, the difference of the
    residual streams after layer N (positive minus negative), reduced over the pairs,
    scaled to unit length. Writes llama.cpp's control-vector GGUF (llama-cli and
    llama-server load it with --control-vector-scaled)."""
    import time

    from gptcli.console import notice, stderr_console
    from gptcli.inside import steering as S
    from gptcli.llama.load import load_engine

    if method not in S.METHODS:
        raise UsageError(f"--method must be mean or pca, got {method!r}")
    if positions not in S.POSITIONS:
        raise UsageError(f"--positions must be all or last, got {positions!r}")
    pairs = read_pairs(positive, negative)
    engine = load_engine(model, ctx, threads, gpu_layers, verbose)
    picked = S.parse_layers(layers, engine.n_layer) if layers else None
    console = stderr_console()
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if console.is_terminal:
            console.print(f"\rpair {done}/{total}", end="", markup=False, highlight=False)

    vector = S.make_vector(
        engine, pairs, method=method, positions=positions, layers=picked, progress=progress
    )
    if console.is_terminal:
        console.print()
    S.write_vector(output, vector)
    notice(
        f"wrote {output}: {len(vector.directions)} layers ({min(vector.layers)}-"
        f"{max(vector.layers)}) of {vector.n_embd} floats, from {len(pairs)} pairs "
        f"({method}, {positions} positions) in {time.perf_counter() - t0:.1f} s"
    )


@steer_app.command("show")
def show(
    file: Annotated[Path, typer.Argument(help="A control-vector GGUF.")],
    json_out: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
) -> None:
    """A control vector's model hint and per-layer norms."""
    from gptcli.inside import steering as S

    vector = S.read_vector(file)
    if json_out:
        import json

        print(
            json.dumps(
                {
                    "model_hint": vector.model_hint,
                    "n_embd": vector.n_embd,
                    "norms": {str(k): v for k, v in vector.norms().items()},
                }
            )
        )
        return
    from gptcli.render.steer import show_vector

    show_vector(vector)


@steer_app.command("sweep")
def sweep(
    file: Annotated[Path, typer.Argument(help="A control-vector GGUF.")],
    prompt: Annotated[str | None, typer.Argument(help="The prompt; stdin is read too.")] = None,
    scales: Annotated[
        str, typer.Option("--scales", metavar="S,S,...", help="The scales to try.")
    ] = "-8,-4,0,4,8",
    max_tokens: Annotated[
        int, typer.Option("-n", "--max-tokens", help="Tokens per continuation.")
    ] = 24,
    chat: ChatOpt = False,
    steer_layers: SteerLayersOpt = None,
    model: ModelOpt = None,
    ctx: CtxOpt = 0,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """One greedy continuation of PROMPT per scale of the vector, a line each."""
    from gptcli.backends.base import Request, collect_text
    from gptcli.backends.local import LocalBackend
    from gptcli.console import notice, print_error
    from gptcli.inside import steering as S
    from gptcli.llama.load import load_engine
    from gptcli.render.steer import sweep_line
    from gptcli.sampling.sampler import SamplingParams

    try:
        values = [float(s) for s in scales.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--scales must be numbers separated by commas, got {scales!r}") from None
    if not values:
        raise UsageError("--scales names no scale")
    for v in values:
        S.parse_spec(f"x:{v}")  # the same bound as --steer's
    if max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1, got {max_tokens}")
    text = read_input(prompt)
    engine = load_engine(model, ctx, threads, gpu_layers, verbose)
    [(vector, _)] = S.load_specs([str(file)], engine.n_embd, engine.n_layer, engine.name)
    first, last = S.parse_layers(steer_layers, engine.n_layer)
    backend = LocalBackend(engine)
    backend.notify, backend.report_error = notice, print_error
    request = Request(text, not chat, None, SamplingParams(temperature=0.0), max_tokens)
    for scale in values:
        data = S.combine([(vector, scale)], engine.n_embd, engine.n_layer)
        engine.set_steering(data, first, last)
        sweep_line(scale, collect_text(backend.start(request)))


def register(app: typer.Typer) -> None:
    app.add_typer(steer_app, name="steer")

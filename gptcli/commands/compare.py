"""`gptcli compare A B [FILE]`: where two models (or two quantizations of one) part ways
on a text, token by token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gptcli.commands.options import GpuLayersOpt, ServerOpt, ThreadsOpt, VerboseOpt
from gptcli.console import notice, print_error, stderr_console
from gptcli.errors import UsageError

PROGRESS_FROM = 256  # tokens: shorter texts are done before a bar would help


def compare(
    model_a: Annotated[
        str, typer.Argument(metavar="A", help="The reference model (anything -m takes).")
    ],
    model_b: Annotated[str, typer.Argument(metavar="B", help="The model compared with A.")],
    file: Annotated[
        Path | None,
        typer.Argument(help="Text file ('-' or none: stdin).", show_default=False),
    ] = None,
    worst: Annotated[
        int,
        typer.Option(
            "--worst", metavar="N", help="List the N tokens where the models differ most."
        ),
    ] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    ctx: Annotated[
        int,
        typer.Option(
            "--ctx",
            metavar="N",
            help="Cut the text into N-token chunks and score the second half of each, as "
            "llama-perplexity -c N does, so the numbers compare (0: windows of the "
            "model's context, as score).",
        ),
    ] = 0,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    verbose: VerboseOpt = False,
    server: ServerOpt = None,
) -> None:
    """Run two models over the same tokens and show where they disagree: KL(A‖B) per
    token (in bits, as colour), whether their most likely tokens agree, the
    probability each gives the actual next token, and llama-perplexity --kl-divergence's
    summary (mean KL in nats). One model is loaded at a time: A's logits wait in a
    temporary file while B runs."""
    from gptcli.backends.scoring import read_text

    if worst < 0:
        raise UsageError(f"--worst must be 0 or more, got {worst}")
    if ctx < 0 or 0 < ctx < 8:
        raise UsageError(f"--ctx must be 0 (windows) or at least 8, got {ctx}")
    if server:
        _refuse_remote(server, model_a)
    text = read_text(file)

    from gptcli.backends.comparison import compare_models
    from gptcli.llama.load import load_engine

    def open_model(ref: str):
        return lambda n_ctx: load_engine(ref, n_ctx, threads, gpu_layers, verbose)

    with _Progress() as progress:
        compared = compare_models(
            open_model(model_a),
            open_model(model_b),
            lambda: _open_vocabulary(model_b, gpu_layers, verbose),
            text,
            ctx=ctx,
            worst=worst,
            progress=progress,
        )
    if json_out:
        from gptcli.render.compare import compare_json

        compare_json(compared, model_a, model_b)
    else:
        from gptcli.render.compare import compare_text

        compare_text(compared, model_a, model_b)


def _refuse_remote(server: str, model: str) -> None:
    """A server gives 20 log probabilities per token at most: KL needs them all."""
    from gptcli.backends import open_backend
    from gptcli.backends.base import require

    backend = open_backend(server, model, notify=notice, report_error=print_error)
    try:
        require(
            backend,
            "full_distribution",
            "compare needs every token's probability (a server sends 20 at most); "
            "run both models locally",
            exit_code=2,
        )
    finally:
        backend.close()


def _open_vocabulary(ref: str, gpu_layers: int | None, verbose: bool):
    """B's tokenizer alone (no weights read), its file checked as load_engine checks one:
    a broken B is refused before A's pass, not after."""
    from gptcli.llama.engine import Engine, EngineOptions
    from gptcli.llama.loadcheck import check_first_load
    from gptcli.model import resolve as models
    from gptcli.model.gguf_check import read_header

    path = models.resolve(ref).path
    header = read_header(path)
    check_first_load(path, gpu_layers)
    return Engine(path, EngineOptions(vocab_only=True, verbose=verbose), header=header)


class _Progress:
    """A bar per model on stderr for long texts; nothing off a terminal."""

    def __enter__(self):
        self._bar = None
        self._tasks: dict[str, int] = {}
        self._console = stderr_console()
        return self

    def __call__(self, label: str, done: int, total: int) -> None:
        if total < PROGRESS_FROM or not self._console.is_terminal:
            return
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._bar = Progress(
                "{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._bar.start()
        task = self._tasks.get(label)
        if task is None:
            task = self._tasks[label] = self._bar.add_task(f"model {label}", total=total)
        self._bar.update(task, completed=done)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)

"""Loading a model for a command: resolve `-m`, check the file's header, run its first
load in a child process (an abort in llama.cpp ends the child, not gptcli), then load it."""

from __future__ import annotations

from gptcli.errors import UsageError
from gptcli.limits import MAX_THREADS
from gptcli.llama.loadcheck import check_first_load
from gptcli.model import resolve as models
from gptcli.model.gguf_check import read_header


def load_engine(
    model: str | None, ctx: int, threads: int | None, gpu_layers: int | None, verbose: bool
):
    """Resolve -m, check the file, and load it into llama.cpp."""
    from gptcli.llama.engine import Engine, EngineOptions

    if ctx < 0:
        raise UsageError(f"--ctx must be 0 (the model's) or more, got {ctx}")

    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise UsageError(f"--threads must be from 1 to {MAX_THREADS}, got {threads}")
    ref = models.resolve(model)

    header = read_header(ref.path)  # a refused file is refused before any child starts
    check_first_load(ref.path, gpu_layers, verbose)  # an abort ends a child, not us
    return Engine(
        ref.path,
        EngineOptions(n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers, verbose=verbose),
        header=header,
    )

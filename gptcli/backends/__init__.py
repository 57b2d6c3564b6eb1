"""Backends: where the model runs. `open_backend` picks one from the options every
model command shares; commands then talk to the `base.Backend` interface only."""

from __future__ import annotations

from gptcli.backends.base import Backend


def ignored_local_options(
    ctx: int, threads: int | None, gpu_layers: int | None, verbose: bool
) -> None:
    """Options that only shape a local run: say once that the server ignores them."""
    from gptcli.console import notice

    given = {"--ctx": ctx, "--threads": threads, "--gpu-layers": gpu_layers, "--verbose": verbose}
    names = [name for name, value in given.items() if value]
    if names:
        notice(f"{', '.join(names)} only apply to a local model: ignored with --server")


def open_backend(
    server: str | None,
    model: str | None,
    ctx: int = 0,
    threads: int | None = None,
    gpu_layers: int | None = None,
    verbose: bool = False,
    timeout: float | None = None,
) -> Backend:
    """The server at `server` (`-m` names one of its models), else the local model.
    `timeout` (--timeout): seconds to connect and of silence; None for the defaults."""
    if server:
        from gptcli.backends.remote import RemoteBackend

        ignored_local_options(ctx, threads, gpu_layers, verbose)
        return RemoteBackend(server, model=model, timeout=timeout)
    from gptcli.backends.local import LocalBackend
    from gptcli.llama.load import load_engine

    if timeout is not None:
        from gptcli.model.hub import set_timeout

        set_timeout(timeout)  # `-m owner/repo:QUANT` may pull first

    return LocalBackend(load_engine(model, ctx, threads, gpu_layers, verbose))

"""Backends: where the model runs. `open_backend` picks one from the options every
model command shares; commands then talk to the `base.Backend` interface only."""

from __future__ import annotations

from collections.abc import Callable

from gptcli.backends.base import Backend, silent
from gptcli.backends.local import LocalBackend
from gptcli.llama.load import load_engine
from gptcli.model.hub import set_timeout


def ignored_local_options(
    ctx: int,
    threads: int | None,
    gpu_layers: int | None,
    verbose: bool,
    notify: Callable[[str], None],
) -> None:
    """Options that only shape a local run: say once that the server ignores them."""
    given = {"--ctx": ctx, "--threads": threads, "--gpu-layers": gpu_layers, "--verbose": verbose}
    names = [name for name, value in given.items() if value]
    if names:
        notify(f"{', '.join(names)} only apply to a local model: ignored with --server")


def open_backend(
    server: str | None,
    model: str | None,
    ctx: int = 0,
    threads: int | None = None,
    gpu_layers: int | None = None,
    verbose: bool = False,
    timeout: float | None = None,
    *,
    notify: Callable[[str], None] = silent,
    report_error: Callable[[str], None] = silent,
) -> Backend:
    """The server at `server` (`-m` names one of its models), else the local model.
    `timeout` (--timeout): seconds to connect and of silence; None for the defaults. Its
    notices go to `notify`, errors that do not stop it to `report_error`."""
    backend: Backend
    if server:
        from gptcli.backends.remote import RemoteBackend

        ignored_local_options(ctx, threads, gpu_layers, verbose, notify)
        backend = RemoteBackend(server, model=model, timeout=timeout)
    else:
        if timeout is not None:
            set_timeout(timeout)  # `-m owner/repo:QUANT` may pull first
        backend = LocalBackend(load_engine(model, ctx, threads, gpu_layers, verbose))
    backend.notify = notify
    backend.report_error = report_error
    return backend

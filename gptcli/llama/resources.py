"""Will the model fit? A rough check of the file against free memory, before loading.

llama.cpp memory-maps the file, so pages are read on demand and the kernel may
drop clean ones: a model somewhat larger than free RAM can still run, slowly. The
check refuses only what cannot work at all: a file larger than the memory that is
available plus the free swap. Linux only (/proc/meminfo); elsewhere it passes.
"""

from __future__ import annotations

import os
from pathlib import Path

from gptcli.errors import GptcliError, UsageError

MEMINFO = Path("/proc/meminfo")
SKIP_ENV = "GPTCLI_NO_MEMORY_CHECK"


def meminfo(source: Path = MEMINFO) -> dict[str, int] | None:
    """/proc/meminfo as bytes per field, or None where there is none."""
    try:
        text = source.read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if parts[1:2] == ["kB"] else 1
            out[name.strip()] = int(parts[0]) * scale
    return out


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_model_fits(path: Path, file_size: int, source: Path = MEMINFO) -> None:
    """Raise GptcliError when the file clearly cannot fit in RAM plus swap."""
    if os.environ.get(SKIP_ENV):
        return
    info = meminfo(source)
    if not info or "MemAvailable" not in info:
        return
    available = info["MemAvailable"]
    swap = info.get("SwapFree", 0)
    if file_size > available + swap:
        raise GptcliError(
            f"the model file {path} is {human(file_size)}, more than the memory available "
            f"({human(available)} free RAM + {human(swap)} free swap); use a smaller "
            f"quantisation, or set {SKIP_ENV}=1 to try anyway"
        )


def check_context_fits(n_ctx: int, bytes_per_token: int, source: Path = MEMINFO) -> None:
    """Raise UsageError when a context's KV cache (f16 keys and values for every token)
    cannot fit in RAM plus swap: llama.cpp would otherwise try, for a long while, to
    allocate it (`--ctx 999999999`) before failing."""
    if os.environ.get(SKIP_ENV):
        return
    info = meminfo(source)
    if not info or "MemAvailable" not in info:
        return
    available = info["MemAvailable"] + info.get("SwapFree", 0)
    need = n_ctx * bytes_per_token
    if need > available:
        raise UsageError(
            f"a context of {n_ctx} tokens needs about {human(need)} for its KV cache, "
            f"more than the memory available ({human(available)}): lower --ctx or -j "
            f"(or set {SKIP_ENV}=1 to try anyway)"
        )

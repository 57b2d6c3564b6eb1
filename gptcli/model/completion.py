"""Shell completion of model references: catalogue names, models in the Hugging Face
cache (`owner/repo:QUANT`) and GGUF files under the typed path. Cheap by design: no
hub client, no llama.cpp, only directory listings, since the shell waits for it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from gptcli.model import catalogue

_QUANT = re.compile(r"[-.]((?:I?Q\d[A-Z0-9_]*)|F16|BF16|F32)\.gguf$", re.IGNORECASE)


def _hub_cache() -> Path:
    # The same order huggingface_hub uses, without importing it.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def cached_models() -> list[str]:
    """`owner/repo:QUANT` for each GGUF file in the cache's snapshots."""
    out = []
    try:
        repos = [p for p in _hub_cache().iterdir() if p.name.startswith("models--")]
    except OSError:
        return out
    for repo in repos:
        repo_id = repo.name[len("models--") :].replace("--", "/", 1)
        for gguf in (repo / "snapshots").glob("*/**/*.gguf"):
            m = _QUANT.search(gguf.name)
            out.append(f"{repo_id}:{m.group(1).upper()}" if m else f"{repo_id}/{gguf.name}")
    return sorted(set(out))


def catalogue_names() -> list[str]:
    try:
        return sorted(catalogue.entries())
    except Exception:  # a broken catalogue must not break the user's shell
        return []


def gguf_paths(incomplete: str) -> list[str]:
    folder, _, stem = incomplete.rpartition("/")
    base = Path(folder or ".").expanduser()
    try:
        entries = list(base.iterdir())
    except OSError:
        return []
    out = []
    for p in entries:
        if not p.name.startswith(stem) or p.name.startswith("."):
            continue
        shown = f"{folder}/{p.name}" if folder else p.name
        if p.is_dir():
            out.append(shown + "/")
        elif p.suffix == ".gguf":
            out.append(shown)
    return sorted(out)


def complete_model(incomplete: str) -> list[str]:
    """Every model reference that starts with what was typed."""
    names = catalogue_names() + cached_models()
    found = [n for n in names if n.startswith(incomplete)]
    return found + gguf_paths(incomplete)

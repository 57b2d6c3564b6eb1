"""Where gptcli keeps what it derives from model files (embeddings, unembeddings, the
record of files that passed their first load): `$GPTCLI_CACHE_DIR`, else platformdirs'
`user_cache_dir("gptcli")`. Never beside the model file."""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE_DIR = "GPTCLI_CACHE_DIR"


def cache_root() -> Path:
    """Where gptcli keeps what it derives from model files."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gptcli"))

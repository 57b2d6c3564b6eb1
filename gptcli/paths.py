"""Where gptcli keeps what it derives from model files (embeddings, unembeddings, the
record of files that passed their first load): `$GPTCLI_CACHE_DIR`, else platformdirs'
`user_cache_dir("gptcli")`. Never beside the model file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

ENV_CACHE_DIR = "GPTCLI_CACHE_DIR"


def cache_root() -> Path:
    """Where gptcli keeps what it derives from model files."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gptcli"))


def write_atomic(target: Path, write: Callable, *, sync: bool = False) -> None:
    """Write a file whole or not at all: `write(f)` fills a temporary binary file beside
    `target`, which is then renamed over it; on failure the temporary file goes and
    OSError is raised. sync: on disk before the rename (a user's file, not a cache)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

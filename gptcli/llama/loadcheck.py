"""The first load of a model file, in a child process, so an abort cannot end gptcli
without a sentence.

llama.cpp ends the process on a failed GGML_ASSERT (SIGABRT) and keeps gaining
assertions and loaders; gptcli's header check refuses every abort path known today,
but not tomorrow's. So the first time a file is used, a child process loads it
(header, weights, one decode). If the child dies by a signal, gptcli says so in one
line naming the file and the signal, and exits 1. A file that loaded cleanly is
remembered (resolved path, size, modification time) in the user cache directory, so
the cost is paid once per file.

`GPTCLI_NO_LOAD_CHECK=1` skips the check (the caller takes the risk).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from gptcli.errors import GptcliError
from gptcli.llama.libllama import load_first
from gptcli.paths import cache_root, write_atomic  # the cache embeddings use
from gptcli.terminal import safe

ENV_SKIP = "GPTCLI_NO_LOAD_CHECK"
CACHE_NAME = "loaded-models.json"
MAX_ENTRIES = 512  # the oldest are forgotten first
TIMEOUT_S = 900  # a load that hangs this long is reported, not waited on forever


def _cache_file() -> Path:
    return cache_root() / CACHE_NAME


def identity(path: Path) -> dict:
    """What makes a file the same file: resolved path, size, modification time."""
    resolved = path.resolve()
    st = resolved.stat()
    return {"path": str(resolved), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read(cache: Path) -> list[dict]:
    try:
        entries = json.loads(cache.read_text())
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def is_known(path: Path) -> bool:
    """Whether this exact file (same path, size and mtime) has loaded cleanly before."""
    return identity(path) in _read(_cache_file())


def remember(path: Path) -> None:
    """Record a clean load; atomic (a temporary file renamed over the old one)."""
    cache = _cache_file()
    me = identity(path)
    entries = [e for e in _read(cache) if e.get("path") != me["path"]]
    entries = [e for e in entries if os.path.exists(e.get("path", ""))]  # prune the gone
    entries = (entries + [me])[-MAX_ENTRIES:]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, lambda f: f.write(json.dumps(entries).encode()))
    except OSError:  # a read-only cache only costs the check again next time
        pass


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _why(stderr: str) -> str:
    """The assertion llama.cpp printed before aborting, when there is one."""
    for line in stderr.splitlines():
        if "GGML_ASSERT" in line or "error" in line.lower():
            return ": " + safe(line.strip()[:160])
    return ""


def child_command(path: Path, n_gpu_layers: int | None, verbose: bool = False) -> list[str]:
    """The test load: this module run as a script (tests replace it to crash on purpose)."""
    cmd = [sys.executable, "-m", "gptcli.llama.loadcheck", str(path)]
    cmd += [] if n_gpu_layers is None else [str(n_gpu_layers)]
    return [*cmd, "--verbose"] if verbose else cmd


def crash_message(path: Path, returncode: int, stderr: str | None) -> str:
    """What is known about a test load that died by a signal, in one line. The header
    passed gptcli's own check before the child started, so the file is not called
    damaged: the cause may as well be llama.cpp, its backend or the machine."""
    why = _why(stderr) if stderr else ""
    return (
        f"llama.cpp crashed loading {path} ({signal_name(returncode)}{why}) in gptcli's "
        "test load; the file passed gptcli's header check, so the cause is not known: "
        "--verbose shows llama.cpp's own log, "
        f"{ENV_SKIP}=1 skips this check (a crash then ends gptcli itself)"
    )


def check_first_load(
    path: str | Path, n_gpu_layers: int | None = None, verbose: bool = False
) -> None:
    """Load `path` once in a child process unless it loaded cleanly before; raise
    GptcliError (exit 1) if the child dies by a signal or hangs. With `verbose`, the
    child's stderr (llama.cpp's own log) goes straight to ours."""
    path = Path(path)
    if os.environ.get(ENV_SKIP) == "1" or is_known(path):
        return
    cmd = child_command(path, n_gpu_layers, verbose)
    # No gdb backtrace from ggml on an abort: the signal is what counts, and fast.
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    try:
        child = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if verbose else subprocess.PIPE,
            text=True,
            env=env,
            timeout=TIMEOUT_S,
            errors="replace",
        )
    except subprocess.TimeoutExpired:
        raise GptcliError(
            f"loading {path} did not finish in {TIMEOUT_S} s (in a test load); "
            f"set {ENV_SKIP}=1 to load it directly"
        ) from None
    if child.returncode < 0:
        raise GptcliError(crash_message(path, child.returncode, child.stderr))
    if child.returncode == 0:
        remember(path)
    # Any other exit: the child met a GptcliError (a refusal, memory); this process
    # meets the same one next, with its message, when it loads the file itself.


def _child(argv: list[str]) -> int:
    """`python -m gptcli.llama.loadcheck PATH [NGL] [--verbose]`: load, decode one token, exit 0."""
    load_first()  # before numpy, as the CLI does (gptcli/llama/libllama.py says why)
    from gptcli.llama.engine import Engine, EngineOptions

    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    ngl = int(argv[1]) if len(argv) > 1 else None
    try:
        engine = Engine(argv[0], EngineOptions(n_ctx=32, n_gpu_layers=ngl, verbose=verbose))
        bos = engine.bos_id
        engine.prefill([bos if 0 <= bos < engine.n_vocab else 0])
    except GptcliError as e:
        print(e.message, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))

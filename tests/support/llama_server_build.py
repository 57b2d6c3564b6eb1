"""Find or build llama.cpp's `llama-server` from the sources that the installed
llama-cpp-python's sdist vendors (so server and local engine run the same
llama.cpp), into the user cache: ~/.cache/gptcli/llama-server-<version>/.

`python tests/support/llama_server_build.py` builds it (about 8 minutes on 2 cores; `make
test GPTCLI_BUILD_LLAMA_SERVER=1` runs this first); tests only use what is cached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SDIST_CACHE = REPO / "benchmarks" / ".cache"  # where benchmarks/native.py keeps the sdist


def version() -> str:
    return metadata.version("llama-cpp-python")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gptcli" / f"llama-server-{version()}"


# llama.cpp's own tools the tests use as oracles, all built from the same vendored sources:
# the server, perplexity/KL divergence (compare), the control-vector generator (steer),
# quantize (a second quantization of the embedded model).
TOOLS = ("llama-server", "llama-perplexity", "llama-cvector-generator", "llama-quantize")


def binary_path(tool: str = "llama-server") -> Path:
    return cache_dir() / "bin" / tool


def find(tool: str = "llama-server") -> Path | None:
    """The cached binary of one of TOOLS, or None."""
    b = binary_path(tool)
    return b if b.is_file() and os.access(b, os.X_OK) else None


def _source() -> Path:
    v = version()
    for base in (SDIST_CACHE, cache_dir().parent):
        src = base / f"llama_cpp_python-{v}" / "vendor" / "llama.cpp"
        if src.is_dir():
            return src
    base = cache_dir().parent
    base.mkdir(parents=True, exist_ok=True)
    tar = SDIST_CACHE / f"llama_cpp_python-{v}.tar.gz"
    if not tar.exists():
        tar = base / tar.name
        print(f"llama-server: fetching the llama-cpp-python {v} sdist", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
            + [f"llama-cpp-python=={v}", "-d", str(base)],
            check=True,
        )
    with tarfile.open(tar) as t:
        t.extractall(base, filter="data")
    return base / f"llama_cpp_python-{v}" / "vendor" / "llama.cpp"


def build(tools: tuple[str, ...] = TOOLS) -> Path | None:
    """The cached llama-server, after building whichever of `tools` is missing; None where
    it cannot be built (no cmake)."""
    missing = [t for t in tools if find(t) is None]
    if not missing:
        return find()
    if shutil.which("cmake") is None:
        print("llama-server: cmake not found; not building", file=sys.stderr)
        return None
    src, out = _source(), cache_dir()
    print(
        f"llama.cpp tools: building {' '.join(missing)} once into {out} (about 8 minutes)",
        file=sys.stderr,
    )
    subprocess.run(
        ["cmake", "-S", str(src), "-B", str(out), "-DBUILD_SHARED_LIBS=OFF"]
        + ["-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(out), "-j", jobs, "--target", *missing],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return find()


if __name__ == "__main__":
    path = build()
    print(path or "llama-server: not built")
    sys.exit(0 if path else 1)

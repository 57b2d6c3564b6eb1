"""Find or build native `llama-bench` from the llama.cpp sources that the installed
llama-cpp-python's sdist vendors, so both run the same llama.cpp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def _version() -> str:
    return metadata.version("llama-cpp-python")


def _source_dir() -> Path:
    return CACHE / f"llama_cpp_python-{_version()}" / "vendor" / "llama.cpp"


def binary_path() -> Path:
    """benchmarks/.cache's build, else the one beside the tests' llama.cpp tools
    (~/.cache/gptcli/llama-server-VERSION/bin, where `cmake --build DIR --target llama-bench
    llama-batched-bench` adds them to the tests' build in minutes)."""
    own = _source_dir() / "build" / "bin" / "llama-bench"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    shared = Path(base) / "gptcli" / f"llama-server-{_version()}" / "bin" / "llama-bench"
    return shared if shared.exists() and not own.exists() else own


def find_or_build_llama_bench() -> Path | None:
    """The cached binary, or build it (about 8 minutes on 2 cores); None if impossible."""
    binary = binary_path()
    if binary.exists():
        return binary
    if shutil.which("cmake") is None:
        print("native: cmake not found; skipping llama-bench", file=sys.stderr)
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    src = _source_dir()
    if not src.exists():
        version = _version()
        print(f"native: fetching the llama-cpp-python {version} sdist", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                str(CACHE),
            ],
            check=True,
        )
        with tarfile.open(CACHE / f"llama_cpp_python-{version}.tar.gz") as tar:
            tar.extractall(CACHE, filter="data")
    print(
        "native: building llama-bench once into benchmarks/.cache (about 8 minutes)",
        file=sys.stderr,
    )
    build = src / "build"
    subprocess.run(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(build),
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_CURL=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "-j", "2", "--target", "llama-bench"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return binary if binary.exists() else None

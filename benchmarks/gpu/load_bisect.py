"""Which import order or load path crashes llama.cpp's model load: one table, one run.

Each variant is a fresh Python process that loads MODEL with -ngl N and prints OK, or dies
(the signal is the result). On 2026-12-04 a CUDA build crashed (SIGSEGV) in every gptcli
load while a script importing llama_cpp first loaded the same file; the variants separate
import order (numpy, gguf, llama_cpp, libllama alone), llama-cpp-python's stdio
suppression, gptcli's Engine, its first-load child and the CLI with and without
gptcli/llama/libllama.py's fix (numpy imported first by hand reproduces the old order).
usage: load_bisect.py [--only TEXT] MODEL [NGL ...]
(run with the project and llama_cpp on PYTHONPATH)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

LOAD = """
import ctypes, sys, llama_cpp
llama_cpp.llama_backend_init()
p = llama_cpp.llama_model_default_params()
p.n_gpu_layers = int(sys.argv[2])
m = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), p)
print("OK" if m else "NULL (refused)")
"""
DLOPEN = """
import ctypes, importlib.util, os
spec = importlib.util.find_spec("llama_cpp")
ctypes.CDLL(os.path.join(os.path.dirname(spec.origin), "lib", "libllama.so"))
"""
SUPPRESSED = """
import sys, llama_cpp
from llama_cpp._internals import LlamaModel
p = llama_cpp.llama_model_default_params()
p.n_gpu_layers = int(sys.argv[2])
LlamaModel(path_model=sys.argv[1], params=p, verbose=False)
print("OK")
"""
ENGINE = """
import sys
from gptcli.llama.engine import Engine, EngineOptions
e = Engine(sys.argv[1], EngineOptions(n_ctx=64, n_gpu_layers=int(sys.argv[2])))
e.prefill([0]); print("OK")
"""
CLI = """
import sys
sys.argv = ["gptcli", "generate", "-m", sys.argv[1], "-ngl", sys.argv[2], "--raw", "-t", "0",
            "-n", "4", "The capital of France is"]
from gptcli.entry import main
main()
"""
CHILD = """
import runpy, sys
sys.argv = ["loadcheck", sys.argv[1], sys.argv[2]]
runpy.run_module("gptcli.llama.loadcheck", run_name="__main__", alter_sys=True)
print("OK")
"""

VARIANTS = [
    ("llama_cpp, then numpy; load", "import llama_cpp, numpy\n" + LOAD),
    ("numpy, then llama_cpp; load", "import numpy\n" + LOAD),
    ("gguf, then llama_cpp; load", "import gguf\n" + LOAD),
    ("libllama dlopen, numpy, llama_cpp; load", DLOPEN + "import numpy\n" + LOAD),
    ("llama_cpp first; LlamaModel(verbose=False)", SUPPRESSED),
    ("numpy first; LlamaModel(verbose=False)", "import numpy\n" + SUPPRESSED),
    ("llama_cpp first; gptcli Engine", "import llama_cpp\n" + ENGINE),
    ("gptcli Engine as imported (numpy first)", ENGINE),
    ("first-load child, fixed (libllama first)", CHILD),
    ("first-load child, numpy first (the old order)", "import numpy\n" + CHILD),
    ("CLI generate, fixed", CLI),
    ("CLI generate, numpy first (the old order)", "import numpy\n" + CLI),
]


def run(code: str, model: str, ngl: str) -> tuple[str, float]:
    # The CLI variants load directly: a crash must show as this process's signal.
    env = {**os.environ, "GPTCLI_NO_LOAD_CHECK": "1", "GGML_NO_BACKTRACE": "1"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, "-c", code, model, ngl],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            errors="replace",
        )
    except subprocess.TimeoutExpired:
        return "hung (120 s)", time.perf_counter() - t0
    dt = time.perf_counter() - t0
    if p.returncode < 0:
        return signal.Signals(-p.returncode).name, dt
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1][:80]
        return f"exit {p.returncode}: {last}", dt
    return ("NULL (refused)" if "NULL" in p.stdout else "OK"), dt


def main(argv: list[str]) -> int:
    only = None
    if argv[:1] == ["--only"]:  # the rows whose label holds this text
        only, argv = argv[1], argv[2:]
    model, ngls = argv[0], argv[1:] or ["99", "0"]
    print(
        f"| variant ({os.path.basename(model)}) | " + " | ".join(f"-ngl {n}" for n in ngls) + " |"
    )
    print("| --- |" + " --- |" * len(ngls))
    for label, code in VARIANTS:
        if only and only not in label:
            continue
        cells = []
        for ngl in ngls:
            result, dt = run(code, model, ngl)
            cells.append(f"{result} ({dt:.1f} s)")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

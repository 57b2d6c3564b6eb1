"""Speed of gptcli against llama-cpp-python and native llama.cpp, side by side.

Every measure runs several times, interleaved with the others, on the embedded
default model with the same threads; the table reports medians and ratios from
this one run (absolute figures move with the machine's load; ratios much less).

    python benchmarks/run.py            # Markdown table on stdout
    python benchmarks/run.py --json     # the same as JSON
    python benchmarks/run.py --runs 5 --llama-bench PATH

The native `llama-bench` is built once from the llama.cpp sources vendored in the
llama-cpp-python sdist of the installed version (see native.py), into
benchmarks/.cache/, unless --llama-bench points at one or --no-native is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

PROMPT = "The capital of France is"
N_GEN = 128


def model_path() -> Path:
    from gptcli.models import embedded_model_path

    path = embedded_model_path()
    if path is None:
        sys.exit("the embedded model is not installed: make setup")
    return path


def default_threads() -> int:
    from gptcli.engine import usable_cores

    return usable_cores()


# -- one function per measure: each returns tokens/s (or seconds) for one run ----


def llama_cpp_python_stream(model: Path, threads: int) -> float:
    """llama-cpp-python's own streaming API, in a fresh process: generation tokens/s."""
    code = f"""
import time, json
from llama_cpp import Llama
llm = Llama({str(model)!r}, n_threads={threads}, n_threads_batch={threads}, n_ctx=4096,
            verbose=False)
eos = llm.token_eos()
times = []
for chunk in llm.create_completion({PROMPT!r}, max_tokens={N_GEN}, temperature=0.0,
                                   stream=True, logit_bias={{eos: -1e9}}):
    times.append(time.perf_counter())
print(json.dumps({{"n": len(times), "span": times[-1] - times[0]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return (data["n"] - 1) / data["span"]


_GEN_RE = re.compile(r"generation\s+(\d+) tokens in ([\d.]+) s")


def gptcli_generate(model: Path, threads: int, *extra: str) -> float:
    """`gptcli generate` end to end in a subprocess; generation tokens/s from --stats."""
    cmd = [
        sys.executable,
        "-m",
        "gptcli",
        "generate",
        "-m",
        str(model),
        "--raw",
        "-t",
        "0",
        "-n",
        str(N_GEN),
        "--threads",
        str(threads),
        "--stats",
        *extra,
        PROMPT,
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    m = _GEN_RE.search(proc.stderr)
    n, seconds = int(m.group(1)), float(m.group(2))
    if n < N_GEN:
        raise RuntimeError(f"gptcli stopped after {n} tokens; the benchmark needs {N_GEN}")
    return n / seconds


def native_tg(binary: Path, model: Path, threads: int) -> float:
    out = subprocess.run(
        [
            str(binary),
            "-m",
            str(model),
            "-p",
            "0",
            "-n",
            str(N_GEN),
            "-t",
            str(threads),
            "-r",
            "1",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout)[0]["avg_ts"])


def measure(measures: dict, runs: int) -> dict[str, list[float]]:
    """Run each measure `runs` times, interleaved (a, b, c, a, b, c, ...)."""
    results: dict[str, list[float]] = {name: [] for name in measures}
    for i in range(runs):
        for name, fn in measures.items():
            results[name].append(fn())
            print(f"  run {i + 1}/{runs} {name}: {results[name][-1]:.1f}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--llama-bench", type=Path, default=None)
    parser.add_argument("--no-native", action="store_true")
    args = parser.parse_args()

    model, threads = model_path(), args.threads or default_threads()
    measures = {
        "llama-cpp-python stream": lambda: llama_cpp_python_stream(model, threads),
        "gptcli generate": lambda: gptcli_generate(model, threads),
    }
    if not args.no_native:
        from native import find_or_build_llama_bench

        binary = args.llama_bench or find_or_build_llama_bench()
        if binary is not None:
            measures["native llama-bench tg128"] = lambda: native_tg(binary, model, threads)
    started = time.time()
    results = measure(measures, args.runs)
    medians = {name: statistics.median(v) for name, v in results.items()}
    ratios = {
        "gptcli generate / llama-cpp-python stream": medians["gptcli generate"]
        / medians["llama-cpp-python stream"]
    }
    if "native llama-bench tg128" in medians:
        ratios["gptcli generate / native tg128"] = (
            medians["gptcli generate"] / medians["native llama-bench tg128"]
        )
    report = {
        "model": model.name,
        "threads": threads,
        "runs": args.runs,
        "tokens": N_GEN,
        "machine": f"{os.cpu_count()} cores, {sys.platform}",
        "seconds": round(time.time() - started, 1),
        "tokens_per_s": {k: round(v, 1) for k, v in medians.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"model {report['model']}, {threads} threads, {args.runs} runs, medians\n")
    print("| measure | tokens/s |\n| --- | ---: |")
    for name, value in report["tokens_per_s"].items():
        print(f"| {name} | {value} |")
    print("\n| ratio | value |\n| --- | ---: |")
    for name, value in report["ratios"].items():
        print(f"| {name} | {value:.3f} |")


if __name__ == "__main__":
    main()

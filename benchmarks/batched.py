"""Batched local `--each-line -j N`: lines/s for several N, against native
`llama-batched-bench` at the same number of sequences B.

    .venv/bin/python benchmarks/batched.py [--lines 240] [--tokens 32] [--jobs 1 2 4 8 16]

gptcli side: the scheduler gptcli runs for `generate --raw -t 0 -n TOKENS --each-line -j N`
(gptcli.backends.batching.Batcher on the embedded SmolLM2), in process, load excluded, on short
lines (about 16 prompt tokens each), greedy, every line `--tokens` long (end of text is
banned by the prompt shape only, so counts are reported as measured). Native side:
`llama-batched-bench -npp 32 -ntg TOKENS -npl 1,2,4,...` (prompts evaluated together,
then TOKENS steps of B tokens), same threads, a KV stream per sequence (no -kvu) and
flash attention, as gptcli. Both give summed generated tokens/s; gptcli's include prompt
time, native's S_TG excludes it and S (all tokens / all time) counts prompt tokens too:
both shown.
Also: how many greedy lines differ between -j N and -j 1.

Builds `llama-batched-bench` once into benchmarks/.cache (as native.py builds llama-bench).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import native  # noqa: E402

from gptcli.backends.batching import Batcher, BatchSettings  # noqa: E402
from gptcli.llama.engine import Engine, EngineOptions, usable_cores  # noqa: E402
from gptcli.llama.prompt import raw_prompt  # noqa: E402
from gptcli.model.resolve import embedded_model_path  # noqa: E402
from gptcli.sampling.sampler import SamplingParams  # noqa: E402

TARGET = "llama-batched-bench"


def find_or_build_batched_bench() -> Path | None:
    """The cached binary, or build it from the vendored sources (minutes on 2 cores)."""
    binary = native.binary_path().with_name(TARGET)
    if binary.exists():
        return binary
    if shutil.which("cmake") is None:
        print("native: cmake not found; skipping llama-batched-bench", file=sys.stderr)
        return None
    src = native._source_dir()
    if not src.exists():  # fetch and unpack the sdist, as native.py does
        if native.find_or_build_llama_bench() is None:
            return None
    build = src / "build"
    if not (build / "CMakeCache.txt").exists():
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
    print(f"native: building {TARGET} once into benchmarks/.cache", file=sys.stderr)
    subprocess.run(
        ["cmake", "--build", str(build), "-j", "2", "--target", TARGET],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return binary if binary.exists() else None


def corpus(n: int) -> list[str]:
    subjects = ["the sea", "a red kite", "my old bicycle", "winter", "the library", "bread"]
    return [f"Note {i}: a few words about {subjects[i % len(subjects)]} and" for i in range(n)]


def run_gptcli(engine: Engine, lines: list[str], jobs: int, tokens: int):
    settings = BatchSettings(SamplingParams(temperature=0.0), max_tokens=tokens)
    batcher = Batcher(engine, jobs, lambda line: raw_prompt(engine, line), settings)
    try:
        t0 = time.perf_counter()
        results = list(batcher.run(lines))
        wall = time.perf_counter() - t0
    finally:
        batcher.close()
    generated = sum(r.finish.completion_tokens for r in results)
    return wall, generated, [r.text for r in results]


def run_native(binary: Path, model: Path, jobs: list[int], tokens: int, threads: int) -> dict:
    n_ctx = max(jobs) * (32 + tokens) + 256
    proc = subprocess.run(
        [
            str(binary),
            "-m",
            str(model),
            "-c",
            str(n_ctx),
            "-b",
            "512",
            "-ub",
            "512",
            "-npp",
            "32",
            "-ntg",
            str(tokens),
            "-npl",
            ",".join(map(str, jobs)),
            "-t",
            str(threads),
            "-fa",
            "on",
            # no repacked (AMX) weight buffers, as gptcli's engine loads: like with like,
            # and they trap with SIGILL on VMs that list AMX without enabling it
            "--no-repack",
            "--output-format",
            "jsonl",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[row["pl"]] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=240)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--threads", type=int, default=usable_cores())
    ap.add_argument("--no-native", action="store_true")
    a = ap.parse_args()
    model = embedded_model_path()
    threads = a.threads
    lines = corpus(a.lines)
    with Engine(model, EngineOptions(n_ctx=512, n_threads=threads)) as engine:
        run_gptcli(engine, lines[:8], max(a.jobs), 4)  # warm up: page cache, graphs
        ours = {j: run_gptcli(engine, lines, j, a.tokens) for j in a.jobs}
    native_rows = {}
    if not a.no_native:
        binary = find_or_build_batched_bench()
        if binary is not None:
            native_rows = run_native(binary, model, a.jobs, a.tokens, threads)
    base_texts = ours[a.jobs[0]][2]
    base_lps = a.lines / ours[a.jobs[0]][0]
    import os

    print(f"load average {os.getloadavg()[0]:.1f} at the end of the gptcli runs")
    print(
        f"SmolLM2-135M Q4_1, {threads} threads, {a.lines} lines, -n {a.tokens}, greedy; "
        "native: llama-batched-bench -npp 32, -fa on"
    )
    print(
        f"{'-j':>3}  {'lines/s':>8}  {'vs -j1':>6}  {'gen tok/s':>9}  "
        f"{'native S_TG':>11}  {'native S':>8}  {'ours/S_TG':>9}  {'lines differ':>12}"
    )
    for j in a.jobs:
        wall, generated, texts = ours[j]
        lps = a.lines / wall
        tps = generated / wall
        row = native_rows.get(j)
        s_tg = f"{row['speed_tg']:11.1f}" if row else f"{'-':>11}"
        s_all = f"{row['speed']:8.1f}" if row else f"{'-':>8}"
        ratio = f"{tps / row['speed_tg']:9.2f}" if row else f"{'-':>9}"
        differ = sum(x != y for x, y in zip(texts, base_texts, strict=False))
        print(
            f"{j:>3}  {lps:8.2f}  {lps / base_lps:5.2f}x  {tps:9.1f}  {s_tg}  {s_all}  "
            f"{ratio}  {differ:>5} of {a.lines}"
        )


if __name__ == "__main__":
    main()

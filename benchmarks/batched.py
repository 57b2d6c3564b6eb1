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
Also: how many greedy lines differ between -j N and -j 1, and where the time goes:
llama_decode's time split into the lines' prompt decodes and the one-token steps (the
rest is Python), llama.cpp's own gain from stepping N lines at once, and the ratio -j N
would reach if its prompts and Python cost nothing (`--rounds R` runs every -j R times,
interleaved, and gives medians: the machine's speed drifts).

Builds `llama-batched-bench` once into benchmarks/.cache (as native.py builds llama-bench).
"""

from __future__ import annotations

import argparse
import json
import os
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


class DecodeClock:
    """Wall time inside llama_decode, split into prompt decodes (a line's prompt, alone)
    and steps (one token of each generating line), by the number of lines in the step."""

    def __init__(self, batched):
        self.prompt = 0.0
        self.steps: dict[int, list[float]] = {}
        inner = batched.decode

        def decode(spans):
            t0 = time.perf_counter()
            out = inner(spans)
            dt = time.perf_counter() - t0
            if any(len(tokens) > 1 for _, _, tokens, _ in spans):
                self.prompt += dt
            else:
                self.steps.setdefault(len(spans), []).append(dt)
            return out

        batched.decode = decode  # this instance only: the Batcher calls it

    @property
    def step_total(self) -> float:
        return sum(sum(v) for v in self.steps.values())

    def step_mean(self, n: int) -> float | None:
        v = self.steps.get(n)
        return sum(v) / len(v) if v else None


def run_gptcli(engine: Engine, lines: list[str], jobs: int, tokens: int):
    settings = BatchSettings(SamplingParams(temperature=0.0), max_tokens=tokens)
    batcher = Batcher(engine, jobs, lambda line: raw_prompt(engine, line), settings)
    clock = DecodeClock(batcher.batched)
    try:
        t0 = time.perf_counter()
        results = list(batcher.run(lines))
        wall = time.perf_counter() - t0
    finally:
        batcher.close()
    generated = sum(r.finish.completion_tokens for r in results)
    return wall, generated, [r.text for r in results], clock


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


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return (xs[len(xs) // 2] + xs[(len(xs) - 1) // 2]) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=240)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--threads", type=int, default=usable_cores())
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every -j this many times, interleaved (the order reversed each round)",
    )
    ap.add_argument("--no-native", action="store_true")
    a = ap.parse_args()
    model = embedded_model_path()
    threads = a.threads
    lines = corpus(a.lines)
    runs: dict[int, list] = {j: [] for j in a.jobs}
    loads = []
    with Engine(model, EngineOptions(n_ctx=512, n_threads=threads)) as engine:
        run_gptcli(engine, lines[:8], max(a.jobs), 4)  # warm up: page cache, graphs
        for r in range(a.rounds):
            for j in a.jobs if r % 2 == 0 else a.jobs[::-1]:
                runs[j].append(run_gptcli(engine, lines, j, a.tokens))
                loads.append(os.getloadavg()[0])
    native_rows = {}
    if not a.no_native:
        binary = find_or_build_batched_bench()
        if binary is not None:
            native_rows = run_native(binary, model, a.jobs, a.tokens, threads)
    j0 = a.jobs[0]
    base_texts = runs[j0][0][2]
    print(f"load average {min(loads):.1f}-{max(loads):.1f} during the gptcli runs")
    print(
        f"SmolLM2-135M Q4_1, {threads} threads, {a.lines} lines, -n {a.tokens}, greedy, "
        f"{a.rounds} interleaved round(s), medians; native: llama-batched-bench -npp 32, -fa on"
    )
    print(
        f"{'-j':>3}  {'lines/s':>8}  {f'vs -j{j0}':>6}  {'gen tok/s':>9}  "
        f"{'native S_TG':>11}  {'native S':>8}  {'ours/S_TG':>9}  {'lines differ':>12}"
    )
    for j in a.jobs:
        lps = median([a.lines / run[0] for run in runs[j]])
        ratio = median([r0[0] / r[0] for r0, r in zip(runs[j0], runs[j], strict=True)])
        tps = median([run[1] / run[0] for run in runs[j]])
        row = native_rows.get(j)
        s_tg = f"{row['speed_tg']:11.1f}" if row else f"{'-':>11}"
        s_all = f"{row['speed']:8.1f}" if row else f"{'-':>8}"
        vs_native = f"{tps / row['speed_tg']:9.2f}" if row else f"{'-':>9}"
        differ = max(
            sum(x != y for x, y in zip(run[2], base_texts, strict=True)) for run in runs[j]
        )
        print(
            f"{j:>3}  {lps:8.2f}  {ratio:5.2f}x  {tps:9.1f}  {s_tg}  {s_all}  "
            f"{vs_native}  {differ:>5} of {a.lines}"
        )
    if a.rounds > 1:
        for j in a.jobs[1:]:
            each = [r0[0] / r[0] for r0, r in zip(runs[j0], runs[j], strict=True)]
            print(f"-j {j} vs -j {j0}, round by round: " + " ".join(f"{x:.2f}x" for x in each))
    # Where the time goes: llama_decode split into the lines' prompt decodes (each alone,
    # as with -j 1, for equal results) and the one-token steps; the rest is Python.
    # "steps only" is the ratio -j N would reach if its prompts and Python cost nothing;
    # "step gain" is llama.cpp's own: N one-token steps of one line against one step of N.
    print()
    print(
        f"{'-j':>3}  {'wall s':>7}  {'prompts s':>9}  {'steps s':>7}  {'python s':>8}  "
        f"{'prompt share':>12}  {'ms/step':>7}  {'step gain':>9}  {'steps only':>10}"
    )
    base_wall = median([run[0] for run in runs[j0]])
    step1 = median([run[3].step_mean(1) or 0.0 for run in runs[j0]])
    for j in a.jobs:
        wall = median([run[0] for run in runs[j]])
        prompt = median([run[3].prompt for run in runs[j]])
        steps = median([run[3].step_total for run in runs[j]])
        full = [run[3].step_mean(j) for run in runs[j] if run[3].step_mean(j)]
        ms = median(full) if full else float("nan")
        gain = f"{j * step1 / ms:8.2f}x" if full and step1 and j != j0 else f"{'-':>9}"
        only = f"{base_wall / steps:9.2f}x" if j != j0 else f"{'-':>10}"
        print(
            f"{j:>3}  {wall:7.1f}  {prompt:9.1f}  {steps:7.1f}  {wall - prompt - steps:8.2f}  "
            f"{prompt / wall:12.0%}  {1000 * ms:7.1f}  {gain}  {only}"
        )


if __name__ == "__main__":
    main()

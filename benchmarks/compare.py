"""`gptcli compare A B` against the two models' `gptcli score` on the same text: wall
time of each command in a fresh process, as a user runs them, interleaved
(score A, score B, compare, score A, ...), medians and the ratio compare / (A + B).

    .venv/bin/python benchmarks/compare.py [--runs 3] [--bytes 6000] [--threads N]

A is the embedded SmolLM2 Q4_1, B a Q8_0 made from it with llama-quantize (built by
tests/support/llama_server_build.py; skipped with a message when absent). The text: the
first --bytes of the project README. Goal: compare <= score(A) + score(B) + 10%.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import llama_server_build  # noqa: E402

from gptcli.model.resolve import embedded_model_path  # noqa: E402


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gptcli", *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bytes", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    quantize = llama_server_build.find("llama-quantize")
    if quantize is None:
        sys.exit("llama-quantize is not built: python tests/support/llama_server_build.py")
    a = embedded_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        b = Path(tmp) / "q8_0.gguf"
        subprocess.run(
            [str(quantize), "--allow-requantize", str(a), str(b), "Q8_0"],
            check=True,
            capture_output=True,
        )
        text = Path(tmp) / "text.txt"
        text.write_bytes((ROOT / "README.md").read_bytes()[: args.bytes])
        extra = ["--threads", str(args.threads)] if args.threads else []
        runs = {
            "score A": ["score", "-m", str(a), str(text), *extra],
            "score B": ["score", "-m", str(b), str(text), *extra],
            "compare A B": ["compare", str(a), str(b), str(text), *extra],
        }
        for argv in runs.values():  # warm-up: page cache, the first-load check
            timed(argv)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.runs):
            for name, argv in runs.items():
                times[name].append(timed(argv))
    med = {k: statistics.median(v) for k, v in times.items()}
    both = med["score A"] + med["score B"]
    print(f"text: {args.bytes} bytes of README.md, {args.runs} interleaved runs, medians")
    print("| command | wall s |")
    print("| --- | --- |")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| score A + score B | {both:.2f} |")
    print(f"\ncompare / (score A + score B) = {med['compare A B'] / both:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()

"""`gptcli generate --each-line` against a loopback llama-cpp-python server:
throughput with -j 4 relative to -j 1, next to the server's own single-request speed.

    .venv/bin/python benchmarks/each_line.py [--lines 200] [--tokens 16]

Starts `python -m llama_cpp.server` on the embedded SmolLM2 (as the tests do), runs
the CLI as a user would, and prints one table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from serverfixture import LlamaServer  # noqa: E402

from gptcli.models import embedded_model_path  # noqa: E402


def run(args: list[str], stdin: str | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        input=stdin.encode() if stdin is not None else None,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - t0, proc.stdout.decode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 4])
    a = ap.parse_args()
    server = LlamaServer.get(embedded_model_path())
    url = server.url
    try:
        # The server's own limit: one request alone, tokens/s as the client sees them.
        gen = ["generate", "--raw", "-t", "0", "--server", url]
        run([*gen, "-n", "8", "warm up"])
        _, out = run([*gen, "-n", "128", "--json", "Once upon a time"])
        summary = json.loads(out.splitlines()[-1])
        single_tps = summary["timings"]["tokens_per_s"]
        single_ttft = summary["timings"]["ttft_s"]
        lines = "".join(f"Item {i}: a short note about the number {i}.\n" for i in range(a.lines))
        rows = []
        outputs = {}
        for j in a.jobs:
            wall, out = run([*gen, "-n", str(a.tokens), "--each-line", "-j", str(j)], lines)
            outputs[j] = out
            rows.append((j, wall, a.lines / wall, a.lines * a.tokens / wall))
        same = len({*outputs.values()}) == 1
        print(
            f"server: llama-cpp-python {url}, SmolLM2-135M Q4_1, {a.lines} lines x "
            f"{a.tokens} tokens, greedy"
        )
        print(f"single request: {single_tps:.1f} tokens/s, first token {single_ttft:.3f} s")
        print(f"{'-j':>3}  {'wall s':>7}  {'lines/s':>8}  {'tokens/s':>9}  {'vs -j 1':>7}")
        base = rows[0][1]
        for j, wall, lps, tps in rows:
            print(f"{j:>3}  {wall:7.2f}  {lps:8.2f}  {tps:9.1f}  {base / wall:6.2f}x")
        print(f"outputs identical across -j: {same}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""`gptcli generate --each-line -j 1/2/4/8` against llama.cpp's llama-server with 4
slots: lines/s as the client sees them, next to the server's own figures for the
same load (its /metrics: tokens predicted, and its decode tokens/s per slot).

    .venv/bin/python benchmarks/each_line.py [--lines 40] [--tokens 24] [--jobs 1 2 4 8]

Uses the llama-server that tests/support/llama_server_build.py built (builds it when missing,
about 8 minutes), on the embedded SmolLM2; prints one table on stdout.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import llama_server_build  # noqa: E402
from support.serverfixture import NativeLlamaServer  # noqa: E402

from gptcli.model.resolve import embedded_model_path  # noqa: E402


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


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for m in re.finditer(r"^llamacpp:(\w+) ([0-9.eE+-]+)$", text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8])
    a = ap.parse_args()
    binary = llama_server_build.build()
    if binary is None:
        sys.exit("each_line: no llama-server (cmake missing?)")
    server = NativeLlamaServer(binary, embedded_model_path(), 4, "--metrics")
    try:
        gen = ["generate", "--raw", "-t", "0", "--server", server.url]
        run([*gen, "-n", "8", "warm up"])
        lines = "".join(f"Item {i}: a short note about the number {i}.\n" for i in range(a.lines))
        rows, outputs = [], {}
        for j in a.jobs:
            before = metrics(server.url)
            wall, out = run([*gen, "-n", str(a.tokens), "--each-line", "-j", str(j)], lines)
            after = metrics(server.url)
            outputs[j] = out
            n = after["tokens_predicted_total"] - before["tokens_predicted_total"]
            s = after["tokens_predicted_seconds_total"] - before["tokens_predicted_seconds_total"]
            rows.append((j, wall, a.lines / wall, n / wall, n / s if s > 0 else 0.0))
        print(
            f"llama-server -np 4 (llama-cpp-python {llama_server_build.version()}'s llama.cpp), "
            f"SmolLM2-135M Q4_1, {a.lines} lines x {a.tokens} tokens, greedy"
        )
        print(
            f"{'-j':>3}  {'wall s':>7}  {'lines/s':>8}  {'server tok/s':>12}  "
            f"{'per-slot decode tok/s':>21}  {'vs -j 1':>7}"
        )
        base = rows[0][1]
        for j, wall, lps, tps, slot in rows:
            print(
                f"{j:>3}  {wall:7.2f}  {lps:8.2f}  {tps:12.1f}  {slot:21.1f}  {base / wall:6.2f}x"
            )
        print(f"outputs identical across -j: {len({*outputs.values()}) == 1}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""Wall times of `gptcli inspect` and `gptcli embed` end to end, as a user runs them.

Each measure is a fresh subprocess (`python -m gptcli ...`) on the embedded default
model; the figure is the median of several runs. `embed` is timed twice: the first
call (the cache is emptied before each run: dequantize, read the vocabulary, write
the cache) and the cached call (memory-mapped). Targets: inspect 0.5 s, embed
first call 2 s, cached call 0.5 s.

    python benchmarks/anatomy_times.py            # a small table on stdout
    python benchmarks/anatomy_times.py --runs 7 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = {"inspect": 0.5, "embed (first call)": 2.0, "embed (cached)": 0.5}
EMBED = ["embed", "analogy", "king", "man", "woman"]


def wall(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()

    cache = tempfile.mkdtemp(prefix="gptcli-bench-cache-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTCLI_")}
    env.update({"GPTCLI_CACHE_DIR": cache, "NO_COLOR": "1"})
    times: dict[str, list[float]] = {name: [] for name in TARGETS}
    try:
        wall(["inspect"], env)  # warm the page cache: the file is read, not timed
        for _ in range(opts.runs):
            times["inspect"].append(wall(["inspect"], env))
            shutil.rmtree(cache, ignore_errors=True)
            times["embed (first call)"].append(wall(EMBED, env))
            times["embed (cached)"].append(wall(EMBED, env))
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    result = {
        name: {
            "median_s": round(statistics.median(ts), 3),
            "min_s": round(min(ts), 3),
            "target_s": TARGETS[name],
            "runs": len(ts),
        }
        for name, ts in times.items()
    }
    if opts.json:
        print(json.dumps(result, indent=2))
        return
    print(f"| command | median s | min s | target s |  ({opts.runs} runs, {os.cpu_count()} cpus)")
    print("| --- | --- | --- | --- |")
    for name, r in result.items():
        print(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['target_s']} |")


if __name__ == "__main__":
    main()

"""`lens` and `attention` against `next` on the same 64-token prompt, end to end, and
generation speed in a process that has run captures against one that has not.

Each command is a fresh subprocess on the embedded model; figures are medians of
interleaved runs, reported as ratios to `next` (these machines are noisy: absolute
times mean little). The first lens run dequantizes the unembedding matrix into the
cache: it is timed apart, with the cache emptied before it.

The capture runs in a side context of its own; the main context that generates never
has an eval callback. The second part shows it: tokens/s of greedy generation on one
engine before any capture and after several, in one process.

    python benchmarks/inside.py [--runs 5] [--json]
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

from gptcli.llama.capture import capture

PROMPT = " ".join(["The capital of France is Paris, and the capital of Italy is Rome."] * 4)


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


def generation_speed(n_tokens: int = 128, rounds: int = 3) -> dict[str, float]:
    """Greedy tokens/s on one engine: before any capture, then after captures."""
    import numpy as np

    from gptcli.inside import lens
    from gptcli.llama.engine import Engine
    from gptcli.model.resolve import embedded_model_path

    engine = Engine(embedded_model_path())
    prompt = engine.tokenize("Once upon a time", add_bos=False)

    def tps() -> float:
        engine.reset()
        logits = engine.prefill(prompt)
        t0 = time.perf_counter()
        for _ in range(n_tokens):
            logits = engine.step(int(np.argmax(logits)))
        return n_tokens / (time.perf_counter() - t0)

    tps()  # warm-up
    before, after = [], []
    for _ in range(rounds):
        before.append(tps())
    for _ in range(rounds):
        capture(engine, engine.tokenize(PROMPT, add_bos=False), lens.wanted(True))
        after.append(tps())
    engine.close()
    b, a = statistics.median(before), statistics.median(after)
    return {"tokens/s before captures": b, "tokens/s after captures": a, "ratio": a / b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="gptcli-bench-cache-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTCLI_")}
    env.update({"GPTCLI_CACHE_DIR": cache, "NO_COLOR": "1"})
    commands = {
        "next": ["next", PROMPT],
        "lens": ["lens", PROMPT],
        "lens --positions all --mid": ["lens", "--positions", "all", "--mid", PROMPT],
        "attention": ["attention", PROMPT],
        "attention --layer 23 --head 4": ["attention", "--layer", "23", "--head", "4", PROMPT],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    try:
        wall(["next", PROMPT], env)  # the page cache holds the file from here on
        first_lens = wall(["lens", PROMPT], env)  # dequantizes into the empty cache
        for _ in range(opts.runs):
            for name, args in commands.items():
                times[name].append(wall(args, env))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    med = {name: statistics.median(v) for name, v in times.items()}
    result = {
        "prompt_tokens": 64,
        "seconds": med,
        "ratio_to_next": {name: med[name] / med["next"] for name in med},
        "lens first run (dequantization)": first_lens,
        "generation": generation_speed(),
    }
    if opts.json:
        print(json.dumps(result, indent=2))
        return
    print(f"| command (64-token prompt, median of {opts.runs}) | seconds | ratio to next |")
    print("| --- | --- | --- |")
    for name in commands:
        print(f"| {name} | {med[name]:.3f} | {result['ratio_to_next'][name]:.2f} |")
    print(f"| lens, first run (dequantizes the unembedding) | {first_lens:.3f} | |")
    g = result["generation"]
    print(
        f"\ngeneration: {g['tokens/s before captures']:.1f} tokens/s before any capture, "
        f"{g['tokens/s after captures']:.1f} after ({g['ratio']:.3f}x)"
    )


if __name__ == "__main__":
    main()

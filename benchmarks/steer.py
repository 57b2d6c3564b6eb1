"""Control vectors on the embedded model: steered against unsteered generation speed,
measured side by side in one run, and the time `steer make` takes for 32 pairs.

Generation: the same greedy 128 tokens from one engine, rounds alternating unsteered
and steered (scale 4), the median tokens/s of each; the goal is a ratio within 5%.
Making: 32 happy/sad pairs, `--method mean` and `--method pca`, wall time of the
in-process call (model already loaded); the goal is well under a minute on 2 cores.

    python benchmarks/steer.py                 # a small table on stdout
    python benchmarks/steer.py --rounds 7 --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

FEELINGS = [
    ("happy", "sad"),
    ("joyful", "miserable"),
    ("delighted", "heartbroken"),
    ("cheerful", "gloomy"),
    ("glad", "upset"),
    ("thrilled", "devastated"),
    ("content", "depressed"),
    ("excited", "hopeless"),
]
FRAMES = [
    "I feel {} today.",
    "She was {} when she heard the news.",
    "What a {} morning it has been.",
    "We are all so {} about the trip.",
]


def pairs() -> list[tuple[str, str]]:
    return [(f.format(a), f.format(b)) for a, b in FEELINGS for f in FRAMES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()

    from gptcli.backends.base import Request
    from gptcli.backends.events import Finish
    from gptcli.backends.local import LocalBackend
    from gptcli.inside import steering as S
    from gptcli.llama.engine import Engine, EngineOptions
    from gptcli.model import resolve as models
    from gptcli.sampling.sampler import SamplingParams

    engine = Engine(models.resolve(None).path, EngineOptions(n_ctx=512, n_threads=opts.threads))
    made = {}
    for method in ("mean", "pca"):
        t0 = time.perf_counter()
        vector = S.make_vector(engine, pairs(), method=method)
        made[method] = time.perf_counter() - t0
    data = S.combine([(vector, 4.0)], engine.n_embd, engine.n_layer)

    backend = LocalBackend(engine)
    request = Request("Today I feel", True, None, SamplingParams(temperature=0.0), opts.tokens)
    speeds: dict[str, list[float]] = {"unsteered": [], "steered": []}

    def run() -> float:
        finish = None
        for event in backend.start(request):
            if isinstance(event, Finish):
                finish = event
        return finish.generation_tps()

    run()  # warm up
    for _ in range(opts.rounds):
        engine.set_steering(None)
        speeds["unsteered"].append(run())
        engine.set_steering(data)
        speeds["steered"].append(run())
    med = {k: statistics.median(v) for k, v in speeds.items()}
    result = {
        "pairs": len(pairs()),
        "make_seconds": made,
        "tokens_per_s": med,
        "steered_over_unsteered": med["steered"] / med["unsteered"],
        "threads": opts.threads,
        "rounds": opts.rounds,
    }
    if opts.json:
        print(json.dumps(result))
        return
    print(f"steer make, {len(pairs())} pairs: mean {made['mean']:.1f} s, pca {made['pca']:.1f} s")
    print(
        f"generation ({opts.tokens} tokens, median of {opts.rounds}): unsteered "
        f"{med['unsteered']:.1f} tokens/s, steered {med['steered']:.1f} tokens/s, ratio "
        f"{result['steered_over_unsteered']:.3f}"
    )


if __name__ == "__main__":
    main()

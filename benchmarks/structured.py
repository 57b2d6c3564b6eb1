"""Constrained against unconstrained generation on the embedded SmolLM2: tokens/s of the
token loop (prompt excluded), medians over a few runs, default sampling (T 0.8, top-k
40, fixed seeds). The constrained runs use a JSON Schema that asks for a long array
(so a run lasts) and --format json; `masked` counts the steps where the drawn token
was refused and the whole vocabulary was masked. Target: at least 0.8x.

    .venv/bin/python benchmarks/structured.py [--reps 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptcli.backends.constraints import JSON_GBNF, Constraint, from_schema  # noqa: E402
from gptcli.backends.events import Finish, TokenEvent  # noqa: E402
from gptcli.backends.generation import Generation  # noqa: E402
from gptcli.llama.engine import Engine, EngineOptions  # noqa: E402
from gptcli.model.resolve import embedded_model_path  # noqa: E402
from gptcli.sampling.sampler import Sampler, SamplingParams  # noqa: E402

LONG = {
    "type": "object",
    "properties": {
        "cities": {"type": "array", "items": {"type": "string"}, "minItems": 60},
    },
    "required": ["cities"],
}
PROMPT = (
    "<|im_start|>user\nList sixty cities of the world as JSON.<|im_end|>\n<|im_start|>assistant\n"
)


def run(engine: Engine, constraint: Constraint | None, tokens: int, seed: int) -> dict:
    engine.reset()
    grammar = constraint.grammar(engine) if constraint else None
    masked = 0
    gen = Generation(
        engine,
        engine.tokenize(PROMPT, special=True),
        Sampler(SamplingParams(seed=seed), engine.n_vocab),
        tokens,
        grammar=grammar,
    )
    finish = None
    for event in gen:
        if isinstance(event, TokenEvent) and event.forced is not None:
            masked += 1
        elif isinstance(event, Finish):
            finish = event
    if grammar is not None:
        grammar.close()
    return {
        "tokens": finish.completion_tokens,
        "tps": finish.generation_tps(),
        "masked": masked,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    cases = {
        "unconstrained": None,
        "json-schema": from_schema(json.dumps(LONG)),
        "format json": Constraint("json", JSON_GBNF),
    }
    options = EngineOptions(n_ctx=1024, n_threads=args.threads)
    with Engine(embedded_model_path(), options) as engine:
        run(engine, None, 16, 0)  # warm up
        rows = {}
        for name, constraint in cases.items():
            runs = [run(engine, constraint, args.tokens, seed) for seed in range(args.reps)]
            rows[name] = {
                "tps": statistics.median(r["tps"] for r in runs),
                "tokens": statistics.median(r["tokens"] for r in runs),
                "masked": statistics.median(r["masked"] for r in runs),
            }
    base = rows["unconstrained"]["tps"]
    print(f"{'case':<15} {'tokens/s':>9} {'ratio':>6} {'tokens':>7} {'masked':>7}")
    for name, row in rows.items():
        print(
            f"{name:<15} {row['tps']:9.1f} {row['tps'] / base:6.2f} "
            f"{row['tokens']:7.0f} {row['masked']:7.0f}"
        )


if __name__ == "__main__":
    main()

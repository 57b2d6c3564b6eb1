"""The generation loop: logits -> sampled token -> repeat, as a stream of events.

Nothing is printed here; `render` decides how events look. The loop handles
end-of-generation tokens, stop strings (text that might begin one is held back),
the context limit, and UTF-8 assembly (a character split across tokens is
released once it is whole).
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from gptcli.engine import Engine
from gptcli.sampling import Draw, Sampler


@dataclass(frozen=True)
class TokenEvent:
    index: int  # 0 for the first generated token
    id: int
    piece: bytes  # the token's exact bytes
    text: str  # text released for printing at this step (may be "")
    draw: Draw  # the distribution the token was drawn from


@dataclass(frozen=True)
class Timings:
    load_s: float
    prompt_s: float  # evaluating the prompt
    ttft_s: float  # start of prompt evaluation to first token
    generation_s: float  # after the prompt, until the end
    prompt_tokens_evaluated: int  # prompt tokens not found in the cache

    def prompt_tps(self) -> float:
        return self.prompt_tokens_evaluated / self.prompt_s if self.prompt_s > 0 else 0.0


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop", "length", "context" or "interrupted"
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    text: str = ""  # text still held back at the end, to print last
    stop: str | None = None  # the stop string that ended it

    def generation_tps(self) -> float:
        s = self.timings.generation_s
        return self.completion_tokens / s if s > 0 else 0.0


Event = TokenEvent | Finish


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


@dataclass
class Generation:
    """One completion of `prompt` on `engine`. Iterate it for events; the last is Finish."""

    engine: Engine
    prompt: Sequence[int]
    sampler: Sampler
    max_tokens: int | None = None  # None: until end of generation or a full context
    stops: Sequence[str] = ()
    n_top: int = 0  # alternatives to report per token
    model_probs: bool = False
    tokens: list[int] = field(default_factory=list)  # generated so far

    def __post_init__(self) -> None:
        self._t0 = self._t_prompt = self._t_first = None
        self._evaluated = 0

    def __iter__(self) -> Iterator[Event]:
        engine, sampler = self.engine, self.sampler
        stops = [s for s in self.stops if s]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        history = list(self.prompt)
        self._t0 = time.perf_counter()
        logits = engine.prefill(self.prompt)
        self._evaluated = engine.last_prefill_evaluated
        self._t_prompt = time.perf_counter()
        index = 0
        while True:
            draw = sampler.sample(logits, history, n_top=self.n_top, model_probs=self.model_probs)
            tok = draw.token
            if engine.is_eog(tok):
                yield self.finish("stop", pending + decoder.decode(b"", final=True))
                return
            history.append(tok)
            self.tokens.append(tok)
            piece = engine.piece(tok)
            pending += decoder.decode(piece)
            if self._t_first is None:
                self._t_first = time.perf_counter()
            hit = None
            if stops:
                found = [(pending.find(s), s) for s in stops if s in pending]
                if found:
                    hit = min(found)
            if hit is not None:
                yield TokenEvent(index, tok, piece, pending[: hit[0]], draw)
                yield self.finish("stop", "", stop=hit[1])
                return
            keep = _held_back(pending, stops) if stops else 0
            release, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
            yield TokenEvent(index, tok, piece, release, draw)
            index += 1
            if self.max_tokens is not None and index >= self.max_tokens:
                yield self.finish("length", pending + decoder.decode(b"", final=True))
                return
            if engine.n_past >= engine.n_ctx:
                yield self.finish("context", pending + decoder.decode(b"", final=True))
                return
            logits = engine.step(tok)

    def finish(self, reason: str, text: str = "", stop: str | None = None) -> Finish:
        """The summary so far; also for a caller that stopped early (Ctrl-C)."""
        now = time.perf_counter()
        t0 = self._t0 or now
        t_prompt = self._t_prompt or now
        timings = Timings(
            load_s=self.engine.load_seconds,
            prompt_s=t_prompt - t0,
            ttft_s=(self._t_first or now) - t0,
            generation_s=now - t_prompt,
            prompt_tokens_evaluated=self._evaluated,
        )
        return Finish(reason, len(self.prompt), len(self.tokens), timings, text, stop)

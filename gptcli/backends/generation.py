"""The generation loop: logits -> sampled token -> repeat, as a stream of events.

Nothing is printed here; `render` decides how events look. The loop handles
end-of-generation tokens, stop strings (text that might begin one is held back),
the context limit, and UTF-8 assembly (a character split across tokens is
released once it is whole).
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from gptcli.backends.events import Event, Finish, Forced, Timings, TokenEvent
from gptcli.errors import GptcliError
from gptcli.llama.ahead import DecodeAhead
from gptcli.llama.engine import Engine
from gptcli.llama.grammar import Grammar
from gptcli.sampling.sampler import Alternative, Draw, Sampler, check_logits, logsumexp


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
    grammar: Grammar | None = None  # the output must match it
    # A distribution is shown (draw.prob): with llama.cpp's chain drawing, each token's
    # is computed from a copy of its logits, off the decode path. n_top/model_probs imply it.
    describe: bool = False
    # llama.cpp's chain draws in a thread of its own, a token ahead; False: draw, show,
    # then decode, on this thread; None: where a core is free for it (engine.decodes_ahead)
    decode_ahead: bool | None = None

    def __post_init__(self) -> None:
        self._t0 = self._t_prompt = self._t_first = None
        self._evaluated = 0
        self._top_failed = False  # the last refused draw needed the whole-vocabulary mask

    def __iter__(self) -> Iterator[Event]:
        engine, sampler = self.engine, self.sampler
        stops = [s for s in self.stops if s]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        history = list(self.prompt)
        self._t0 = time.perf_counter()
        # llama.cpp's chain draws (and decodes ahead, in a thread of its own) unless a
        # grammar must see each draw first.
        native = getattr(sampler, "draws_in_llama", False)
        if native and self.grammar is not None:
            raise GptcliError("llama.cpp's sampler chain cannot draw under a gptcli grammar")
        describe = self.describe or bool(self.n_top) or self.model_probs
        describer = Sampler(sampler.params, engine.n_vocab) if native and describe else None
        logits = engine.prefill(self.prompt)
        self._evaluated = engine.last_prefill_evaluated
        self._t_prompt = time.perf_counter()
        ahead = drawn = None
        decode_ahead = engine.decodes_ahead if self.decode_ahead is None else self.decode_ahead
        if native and decode_ahead:
            limit = None if self.max_tokens is None else max(1, self.max_tokens)
            ahead = DecodeAhead(engine, sampler, limit, copy_logits=describe)
            drawn = iter(ahead)
        elif native:
            drawn = _drawn_in_turn(engine, sampler, describe)
        index = 0
        try:
            while True:
                if drawn is not None:
                    tok, row = next(drawn, (None, None))
                    if tok is None:
                        raise GptcliError("llama.cpp's decode thread stopped before the end")
                    if describer is not None:
                        draw = describer.sample(
                            row, history, n_top=self.n_top, model_probs=self.model_probs,
                            token=tok,
                        )  # fmt: skip
                    else:
                        draw = sampler.draw_for(tok)
                else:
                    draw = sampler.sample(
                        logits, history, n_top=self.n_top, model_probs=self.model_probs
                    )
                forced = None
                if self.grammar is not None:
                    draw, forced = self._constrain(draw, logits, history)
                    if draw is None:  # the document is complete and the model wants to go on
                        yield self.finish("stop", pending + decoder.decode(b"", final=True))
                        return
                    self.grammar.accept(draw.token)
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
                    yield TokenEvent(index, tok, piece, pending[: hit[0]], draw, forced)
                    yield self.finish("stop", "", stop=hit[1])
                    return
                keep = _held_back(pending, stops) if stops else 0
                release, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
                yield TokenEvent(index, tok, piece, release, draw, forced)
                index += 1
                if self.max_tokens is not None and index >= self.max_tokens:
                    yield self.finish("length", pending + decoder.decode(b"", final=True))
                    return
                # The context holds the prompt and every token but this one (decode-ahead
                # stops by the same count: engine.n_past may be ahead of it).
                if len(self.prompt) + index - 1 >= engine.n_ctx:
                    yield self.finish("context", pending + decoder.decode(b"", final=True))
                    return
                if not native:
                    logits = engine.step(tok)
        finally:
            if ahead is not None:
                ahead.close()

    def _constrain(self, draw: Draw, logits, history) -> tuple[Draw | None, Forced | None]:
        """The draw under the grammar: kept when allowed (its distribution renormalised
        over the allowed candidates), else redrawn from the masked vocabulary. None when
        the grammar is complete and the model drew something past its end."""
        grammar = self.grammar
        if grammar.allows(draw.token):
            self._top_failed = False
            return _restricted(draw, grammar.allowed_among(draw.ids)), None
        if grammar.is_complete():
            return None, None
        masked = None
        p = self.sampler.params
        top_first = p.top_k > 0 and (p.repeat_penalty == 1.0 or not p.repeat_last_n)
        if top_first and not self._top_failed:
            # A top-k draw only needs the k best allowed tokens: check the best logits first.
            masked = grammar.mask_top(logits, p.top_k)
        if masked is None:
            # A model that fights the grammar fails that check step after step: skip it
            # until a draw is allowed again.
            self._top_failed = top_first
            masked = grammar.mask(logits)
        if not np.isfinite(masked).any():
            raise GptcliError("the grammar allows no token here (the vocabulary cannot spell it)")
        again = self.sampler.sample(masked, history, n_top=self.n_top, model_probs=self.model_probs)
        if self.model_probs or self.n_top:
            again = _unmasked_model_probs(again, logits)
        return again, Forced(draw.token, draw.prob)

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
        complete = None if self.grammar is None else self.grammar.is_complete()
        return Finish(reason, len(self.prompt), len(self.tokens), timings, text, stop, complete)


def _drawn_in_turn(engine: Engine, sampler, describe: bool):
    """DecodeAhead's serial twin: (token, logits or None) drawn by llama.cpp's chain; the
    token is decoded only when the next one is asked for (after the consumer's checks)."""
    first = True
    while True:
        tok = engine.draw(sampler)
        logits = engine.last_logits()
        if first or not math.isfinite(logits[tok]):  # as DecodeAhead checks
            check_logits(logits, engine.n_past)
        first = False
        yield tok, (logits if describe else None)
        engine.advance(tok)


def _restricted(draw: Draw, allowed: np.ndarray) -> Draw:
    """The draw's distribution with the forbidden candidates removed, renormalised: what
    the token was drawn from in effect. Exact when nothing was cut (a first draw kept
    when allowed, a redraw from the masked distribution otherwise, gives each allowed
    token this chance); after top-k/top-p a redraw may reach allowed tokens the first
    cut left out, so there it is the first draw's share, not the whole chance."""
    if allowed.all():
        return draw
    probs = draw.probs * allowed
    total = probs.sum()
    keep = np.flatnonzero(allowed)
    probs = probs[keep] / total
    ids = draw.ids[keep]

    def prob_of(token: int) -> float | None:
        at = np.flatnonzero(ids == token)
        return float(probs[at[0]]) if at.size else None

    top = tuple(dataclasses.replace(a, logprob=_log(prob_of(a.id))) for a in draw.top)
    prob = prob_of(draw.token) or 0.0
    return dataclasses.replace(draw, prob=prob, ids=ids, probs=probs, top=top)


def _log(q: float | None) -> float | None:
    return math.log(q) if q else None


def _unmasked_model_probs(draw: Draw, logits: np.ndarray) -> Draw:
    """model_logprob stays the model's own (the raw softmax, no mask) after a redraw."""
    lse = logsumexp(logits)
    top = tuple(Alternative(a.id, float(logits[a.id]) - lse, a.logprob) for a in draw.top)
    model_lp = float(logits[draw.token]) - lse if draw.model_logprob is not None else None
    return dataclasses.replace(draw, model_logprob=model_lp, top=top)

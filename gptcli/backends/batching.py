"""Many lines through one local model at once: continuous batching.

N slots; each line of input is its own llama.cpp sequence with its own sampler,
seeded from the user's seed and the line's index (so a line's text does not depend
on N or on scheduling). Every step decodes one token of each line in flight in one
batch, together with the prompt tokens of lines just admitted; when a line ends,
its cells are freed and the next line takes its slot. The prompt part every line
shares is evaluated once. Results come back in input order, each as soon as the
lines before it are done.

Per line, the loop follows generation.Generation exactly (end of generation, stop
strings with text held back, max tokens, a full context, UTF-8 assembly).
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from gptcli.backends.events import Finish, Timings, TokenEvent
from gptcli.backends.generation import _held_back
from gptcli.errors import GptcliError
from gptcli.llama.batch import BatchedEngine
from gptcli.llama.engine import ContextFull, Engine
from gptcli.llama.prompt import chat_format, chat_prompt, messages_for, raw_prompt
from gptcli.llama.sampler_chain import NativeSampler
from gptcli.sampling.sampler import Sampler, SamplingParams, check_logits


@dataclass(frozen=True)
class LineResult:
    """The outcome of one input line."""

    index: int  # 0-based position in the input
    text: str  # the whole generated text ("" for an empty or failed line)
    finish: Finish | None = None  # None for an empty or failed line
    events: tuple[TokenEvent, ...] = ()  # kept only when asked for (--json)
    error: str | None = None  # why the line failed


@dataclass(frozen=True)
class BatchSettings:
    params: SamplingParams
    max_tokens: int | None = None
    stops: Sequence[str] = ()
    n_top: int = 0
    model_probs: bool = False
    keep_events: bool = False


def line_seed(seed: int, index: int) -> int:
    """The seed of line `index`: a function of the user's seed and the index only."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> list[int]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return list(a[:n])


def shared_tokens(prompt_for: Callable[[str], list[int]]) -> list[int]:
    """The tokens every line's prompt starts with: what two unlike lines have in common.
    Only a guess at where the line begins; each line still checks its own tokens."""
    return common_prefix(prompt_for("A"), prompt_for("0 z"))


@dataclass
class _Line:
    """A line in flight in a slot: its prompt, sampler and text so far."""

    index: int
    prompt: list[int]
    sampler: Sampler | NativeSampler
    pos: int  # tokens its sequence holds
    todo: list[int]  # tokens still to evaluate
    t0: float
    evaluated: int
    history: list[int] = field(default_factory=list)  # prompt and generated tokens
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    pending: str = ""
    parts: list[str] = field(default_factory=list)
    events: list[TokenEvent] = field(default_factory=list)
    generated: int = 0
    t_prompt: float | None = None
    t_first: float | None = None


class Batcher:
    """Runs lines through a BatchedEngine; iterate `run(lines)` for LineResults in order."""

    def __init__(
        self,
        engine: Engine,
        n_seq: int,
        prompt_for: Callable[[str], list[int]],
        settings: BatchSettings,
        shared: Sequence[int] | None = None,
        seed: int | None = None,
    ):
        self.engine = engine
        self.prompt_for = prompt_for
        self.settings = settings
        self.stops = [s for s in settings.stops if s]
        # Only the text wanted: each line's own llama.cpp sampler chain draws, in C.
        self.native = not (settings.n_top or settings.model_probs or settings.keep_events)
        if seed is None:
            seed = settings.params.seed
        if seed is None:  # no --seed: a random one, still one per line
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)
        self.seed = seed
        shared = list(shared if shared is not None else shared_tokens(prompt_for))
        shared = shared[: engine.n_ctx - 1]
        self.batched = BatchedEngine(engine, n_seq, n_shared=len(shared))
        self.batched.set_shared(shared)
        # Read ahead of the line being printed at most this far (bounded memory).
        self.window = max(64, 8 * n_seq)

    def close(self) -> None:
        self.batched.close()

    # -- one line ------------------------------------------------------------------

    def _admit(self, index: int, line: str, seq: int) -> _Line | LineResult:
        if not line.strip():
            return LineResult(index, "")  # a blank line stays a blank line
        t0 = time.perf_counter()
        try:
            prompt = self.prompt_for(line)
            if not prompt:
                raise GptcliError("the line tokenizes to nothing")
            if len(prompt) > self.batched.n_ctx_seq:
                raise ContextFull(len(prompt), self.batched.n_ctx_seq)
        except GptcliError as e:
            return LineResult(index, "", error=str(e))
        held = self.batched.start(seq, prompt)
        params = dataclasses.replace(self.settings.params, seed=line_seed(self.seed, index))
        if self.native:
            sampler = NativeSampler(self.engine, params, prompt)
        else:
            sampler = Sampler(params, self.engine.n_vocab)
        line_ = _Line(index, prompt, sampler, held, prompt[held:], t0, len(prompt) - held)
        line_.history = list(prompt)  # the repetition penalty looks back into the prompt
        return line_

    def _finish(self, ln: _Line, reason: str, text: str = "", stop: str | None = None):
        now = time.perf_counter()
        t_prompt = ln.t_prompt or now
        timings = Timings(
            load_s=self.engine.load_seconds,
            prompt_s=t_prompt - ln.t0,
            ttft_s=(ln.t_first or now) - ln.t0,
            generation_s=now - t_prompt,
            prompt_tokens_evaluated=ln.evaluated,
        )
        ln.parts.append(text)
        finish = Finish(reason, len(ln.prompt), ln.generated, timings, text, stop)
        return LineResult(ln.index, "".join(ln.parts), finish, tuple(ln.events))

    def _token(self, ln: _Line, logits: np.ndarray, span: int) -> LineResult | None:
        """Sample the next token of a line (`span`: its place in the last decode); a
        LineResult when the line is done. Mirrors generation.Generation.__iter__."""
        s, engine = self.settings, self.engine
        if ln.t_prompt is None:
            ln.t_prompt = time.perf_counter()
        if self.native:
            tok = self.batched.draw(ln.sampler, span)
            if not math.isfinite(logits[tok]):  # as Generation: a broken model's NaN
                check_logits(logits, len(ln.history))
            draw = NativeSampler.draw_for(tok)
        else:
            draw = ln.sampler.sample(logits, ln.history, n_top=s.n_top, model_probs=s.model_probs)
        tok = draw.token
        if engine.is_eog(tok):
            return self._finish(ln, "stop", ln.pending + ln.decoder.decode(b"", final=True))
        ln.history.append(tok)
        ln.generated += 1
        piece = engine.piece(tok)
        ln.pending += ln.decoder.decode(piece)
        if ln.t_first is None:
            ln.t_first = time.perf_counter()
        index = ln.generated - 1
        hit = None
        if self.stops:
            found = [(ln.pending.find(x), x) for x in self.stops if x in ln.pending]
            if found:
                hit = min(found)
        if hit is not None:
            self._event(ln, TokenEvent(index, tok, piece, ln.pending[: hit[0]], draw))
            return self._finish(ln, "stop", "", stop=hit[1])
        keep = _held_back(ln.pending, self.stops) if self.stops else 0
        release, ln.pending = (
            ln.pending[: len(ln.pending) - keep],
            ln.pending[len(ln.pending) - keep :],
        )
        self._event(ln, TokenEvent(index, tok, piece, release, draw))
        if s.max_tokens is not None and ln.generated >= s.max_tokens:
            return self._finish(ln, "length", ln.pending + ln.decoder.decode(b"", final=True))
        if ln.pos >= self.batched.n_ctx_seq:
            return self._finish(ln, "context", ln.pending + ln.decoder.decode(b"", final=True))
        ln.todo = [tok]
        return None

    def _event(self, ln: _Line, event: TokenEvent) -> None:
        ln.parts.append(event.text)
        if self.settings.keep_events:
            ln.events.append(event)

    # -- the schedule ----------------------------------------------------------------

    def run(self, lines: Iterable[str]) -> Iterator[LineResult]:
        source = enumerate(lines)
        slots: list[_Line | None] = [None] * self.batched.n_seq
        done: dict[int, LineResult] = {}
        next_out = 0
        fed = 0
        exhausted = False
        while True:
            # Fill free slots with the next lines (continuous batching).
            for seq in range(len(slots)):
                while slots[seq] is None and not exhausted and fed - next_out < self.window:
                    try:
                        index, line = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    fed += 1
                    got = self._admit(index, line, seq)
                    if isinstance(got, LineResult):
                        done[index] = got
                    else:
                        slots[seq] = got
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            active = [(seq, ln) for seq, ln in enumerate(slots) if ln is not None]
            if not active:
                if exhausted:
                    return
                continue
            # A line's prompt runs in decodes of its own, cut at n_batch as with one slot,
            # so its cells hold the same values whatever -j is; then one decode of every
            # generating line's token, in slot order (llama.cpp puts consecutive
            # sequences of separate KV streams in one ubatch), except the steps that
            # round otherwise beside other lines (BatchedEngine.step_alone: a model with
            # float weights, a line past 256 cells): those run one per decode.
            prompting = [(s, ln) for s, ln in active if len(ln.todo) > 1 or ln.t_prompt is None]
            if prompting:
                seq, ln = prompting[0]
                take = ln.todo[: self.engine.n_batch]
                groups = [[(seq, ln, take, len(take) == len(ln.todo))]]
            else:
                together, groups = [], []
                for seq, ln in active:
                    step = (seq, ln, ln.todo, True)
                    if self.batched.step_alone(ln.pos):
                        groups.append([step])
                    else:
                        together.append(step)
                if together:
                    groups.insert(0, together)
            for group in groups:
                rows = self.batched.decode([(seq, ln.pos, t, want) for seq, ln, t, want in group])
                for span, ((seq, ln, tokens, _), logits) in enumerate(
                    zip(group, rows, strict=True)
                ):
                    n = len(tokens)
                    ln.pos += n
                    del ln.todo[:n]
                    if logits is None:
                        continue
                    result = self._token(ln, logits, span)
                    if result is not None:
                        self.batched.drop(seq)
                        slots[seq] = None
                        done[result.index] = result


# -- --each-line on top of it ---------------------------------------------------------


def line_prompts(
    engine: Engine, prefix: str | None, raw: bool, system: str | None
) -> tuple[Callable[[str], list[int]], list[str]]:
    """How a line becomes a prompt, as one `generate` prompt is made (PROMPT, a blank
    line, then the line; raw, or in the chat template), and the stop strings the
    format adds."""

    def text(line: str) -> str:
        return f"{prefix}\n\n{line}" if prefix else line

    if raw:
        return (lambda line: raw_prompt(engine, text(line))), []
    fmt = chat_format(engine)
    return (lambda line: chat_prompt(engine, messages_for(text(line), system), fmt)), list(
        fmt.stops
    )


def run_lines(
    engine: Engine,
    lines: Iterable[str],
    jobs: int,
    prompt_for: Callable[[str], list[int]],
    settings: BatchSettings,
) -> Iterator[LineResult]:
    """Every line's LineResult, in input order, `jobs` lines in flight (never more
    sequences than there are lines: -j 1000 on two lines makes two)."""
    lines = iter(lines)
    first = list(itertools.islice(lines, jobs))  # the run fills every slot first anyway
    batcher = Batcher(engine, max(1, len(first)), prompt_for, settings)
    try:
        yield from batcher.run(itertools.chain(first, lines))
    finally:
        batcher.close()


def report_failures(
    results: Iterable[LineResult], report_error: Callable[[str], None]
) -> Iterator[LineResult]:
    """Pass results through; a failed line is reported (one error line on stderr), and
    once all are through, a failure (non-zero exit) says how many lines failed."""
    failed, total = 0, 0
    for r in results:
        total += 1
        if r.error is not None:
            failed += 1
            report_error(f"line {r.index + 1}: {r.error}")
        yield r
    if failed:
        raise GptcliError(f"{failed} of {total} lines failed (their output lines are empty)")

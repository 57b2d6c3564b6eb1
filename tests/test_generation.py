"""The token loop (gptcli/backends/generation.py) in-process, on real llama.cpp models.

A "chain" GGUF makes the model's choices known in advance: its blocks add nothing and
each listed token's embedding is its own unit vector, which the output matrix maps to
one next token (logit about 16, every other logit 0). So the text it writes, token by
token, is fixed by the test: a euro sign cut into its three bytes, a token that repeats
until the context is full, an end-of-text. Expectations are independent of the loop:
Python's own UTF-8 decoder on the concatenated pieces, the context arithmetic, times
from a clock the test advances. The grammar path runs on the tiny random model, whose
logits are recorded and turned into the expected distributions in float64.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from gptcli.backends import generation
from gptcli.backends.events import Finish, Timings, TokenEvent
from gptcli.backends.generation import Generation
from gptcli.llama.engine import Engine, EngineOptions
from gptcli.llama.grammar import Grammar
from gptcli.sampling.sampler import Sampler, SamplingParams

GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)


def byte_token(tokenizer, b: int) -> int:
    """The id of the byte-level token for one byte (GPT-2's byte-to-character table)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if b in printable:
        ch = chr(b)
    else:
        ch = chr(256 + [x for x in range(256) if x not in printable].index(b))
    return tokenizer.tokens.index(ch.encode())


def write_chain_model(path, tokenizer, edges: dict[int, int], strength: float = 2.0):
    """A tiny llama GGUF whose next token after token a is edges[a] (greedily)."""
    from support.hostile import write_passthrough_model

    n_vocab, d = len(tokenizer.tokens), 64
    assert len(edges) < d
    embd = np.zeros((n_vocab, d), dtype=np.float16)
    embd[:, 0] = 1.0  # tokens not in the chain: direction 0, which predicts nothing
    out = np.zeros((n_vocab, d), dtype=np.float16)
    for j, (a, b) in enumerate(edges.items(), start=1):
        embd[a] = 0.0
        embd[a, j] = 1.0
        out[b, j] = strength
    return write_passthrough_model(path, tokenizer, embd, out, "chain-model")


class Chains(types.SimpleNamespace):
    pass


@pytest.fixture(scope="module")
def chains(tmp_path_factory, tokenizer):
    t = tokenizer.tokens.index
    ids = Chains(
        U=t(b"U"),
        V=t(b"V"),
        L=t(b"L"),
        E=t(b"E"),
        H=t(b"H"),
        Y=t(b"Y"),
        bang=t(b"!"),
        ab=t(b"ab"),
        yes=t(b"yes"),
        maybe=t(b"\xc4\xa0maybe"),
        e2=byte_token(tokenizer, 0xE2),
        x82=byte_token(tokenizer, 0x82),
        xac=byte_token(tokenizer, 0xAC),
        c3=byte_token(tokenizer, 0xC3),
        W=t(b"W"),
        K=t(b"K"),
        ll=t(b"ll"),
        Z=t(b"Z"),
        e3=byte_token(tokenizer, 0xE3),
        f0=byte_token(tokenizer, 0xF0),
        eos=tokenizer.eos_id,
    )
    edges = {
        ids.U: ids.e2,  # U -> E2 82 AC ("€" in three tokens) -> ! -> end of text
        ids.e2: ids.x82,
        ids.x82: ids.xac,
        ids.xac: ids.bang,
        ids.bang: ids.eos,
        ids.V: ids.c3,  # V -> C3 -> !: a character started, never finished
        ids.c3: ids.bang,
        ids.L: ids.L,  # L -> L -> L ... until the context is full
        ids.K: ids.ll,  # K -> "ll" -> end of text: one token holding a stop twice
        ids.ll: ids.eos,
        ids.W: ids.e3,  # W -> E3 -> end of text: the text ends inside a character
        ids.e3: ids.eos,
        ids.Z: ids.f0,  # Z -> F0 -> F0 ...: lead bytes only, until the context is full
        ids.f0: ids.f0,
        ids.E: ids.eos,  # E -> end of text at once
        ids.Y: ids.yes,  # Y -> yes -> " maybe" -> ab -> end of text
        ids.yes: ids.maybe,
        ids.maybe: ids.ab,
        ids.ab: ids.eos,
    }
    path = write_chain_model(tmp_path_factory.mktemp("chain") / "chain.gguf", tokenizer, edges)
    with Engine(path, EngineOptions(n_ctx=32, n_threads=1)) as engine:
        ids.engine = engine
        yield ids


def run(engine, prompt, max_tokens=None, stops=(), sampler=None, **kw):
    sampler = sampler or Sampler(GREEDY, engine.n_vocab)
    gen = Generation(engine, list(prompt), sampler, max_tokens, stops, **kw)
    *tokens, finish = list(gen)
    assert isinstance(finish, Finish) and all(isinstance(t, TokenEvent) for t in tokens)
    return gen, tokens, finish


def assert_released_whole(tokens, finish):
    """What was released, in order, is Python's decoding of the pieces, and no step
    released half a character."""
    pieces = b"".join(t.piece for t in tokens)
    released = [t.text for t in tokens] + [finish.text]
    assert "".join(released) == pieces.decode("utf-8", errors="replace")
    for text in released:
        assert text.encode("utf-8").decode("utf-8") == text


# -- UTF-8 assembly, end of text -------------------------------------------------------


def test_a_character_split_over_three_tokens_is_released_once_whole(chains):
    gen, tokens, finish = run(chains.engine, [chains.U])
    assert [t.id for t in tokens] == [chains.e2, chains.x82, chains.xac, chains.bang]
    assert [t.piece for t in tokens] == [b"\xe2", b"\x82", b"\xac", b"!"]
    assert [t.text for t in tokens] == ["", "", "€", "!"]
    assert [t.index for t in tokens] == [0, 1, 2, 3]
    assert [t.forced for t in tokens] == [None] * 4  # no grammar: nothing was forced
    assert (finish.reason, finish.text, finish.stop, finish.complete) == ("stop", "", None, None)
    assert (finish.prompt_tokens, finish.completion_tokens) == (1, 4)  # end of text not counted
    assert gen.tokens == [t.id for t in tokens]
    assert_released_whole(tokens, finish)


def test_an_unfinished_character_becomes_one_replacement_at_the_end(chains):
    # Stopped by the token limit after E2 82: the decoder's remainder is flushed last.
    gen, tokens, finish = run(chains.engine, [chains.U], max_tokens=2)
    assert [t.text for t in tokens] == ["", ""]
    assert (finish.reason, finish.text, finish.completion_tokens) == ("length", "\ufffd", 2)
    assert_released_whole(tokens, finish)


def test_an_interrupted_character_is_replaced_and_the_text_goes_on(chains):
    gen, tokens, finish = run(chains.engine, [chains.V])
    assert [t.piece for t in tokens] == [b"\xc3", b"!"]
    assert [t.text for t in tokens] == ["", "\ufffd!"]
    assert (finish.reason, finish.text) == ("stop", "")
    assert_released_whole(tokens, finish)


def test_end_of_text_inside_a_character_flushes_one_replacement(chains):
    gen, tokens, finish = run(chains.engine, [chains.W])
    assert [t.text for t in tokens] == [""]
    assert (finish.reason, finish.text) == ("stop", "\ufffd")


def test_end_of_text_first_gives_no_token_and_reason_stop(chains):
    gen, tokens, finish = run(chains.engine, [chains.E])
    assert tokens == [] and gen.tokens == []
    assert (finish.reason, finish.text, finish.completion_tokens) == ("stop", "", 0)


def test_text_held_back_for_a_stop_is_released_at_end_of_text(chains):
    # "ab" could begin the stop "bc": its "b" waits; end of text releases it last.
    gen, tokens, finish = run(chains.engine, [chains.maybe], stops=["bc"])
    assert [t.text for t in tokens] == ["a"]
    assert (finish.reason, finish.stop, finish.text) == ("stop", None, "b")


def test_an_empty_stop_string_is_ignored(chains):
    _, tokens, finish = run(chains.engine, [chains.U], stops=[""])
    assert [t.text for t in tokens] == ["", "", "€", "!"]
    assert (finish.reason, finish.stop) == ("stop", None)


def test_a_stop_spanning_a_split_character(chains):
    # "€!" is found only once "!" arrives; nothing of it is released before.
    _, tokens, finish = run(chains.engine, [chains.U], stops=["€!"])
    assert [t.text for t in tokens] == ["", "", "", ""]
    # The token that completed the stop is reported like any other.
    assert [t.index for t in tokens] == [0, 1, 2, 3]
    assert [t.id for t in tokens] == [chains.e2, chains.x82, chains.xac, chains.bang]
    assert [t.draw.token for t in tokens] == [t.id for t in tokens]
    assert tokens[-1].piece == b"!" and tokens[-1].forced is None
    assert (finish.reason, finish.stop, finish.text, finish.completion_tokens) == (
        "stop",
        "€!",
        "",
        4,
    )


def test_a_stop_twice_in_one_token_cuts_at_the_first(chains):
    _, tokens, finish = run(chains.engine, [chains.K], stops=["l"])
    assert [t.piece for t in tokens] == [b"ll"]
    assert [t.text for t in tokens] == [""]
    assert (finish.reason, finish.stop, finish.text) == ("stop", "l", "")


def test_text_before_a_stop_inside_the_last_token_is_released(chains):
    _, tokens, finish = run(chains.engine, [chains.Y], stops=["ybe"])
    assert [t.text for t in tokens] == ["yes", " ma"]
    assert (finish.reason, finish.stop, finish.text) == ("stop", "ybe", "")


# -- the token limit and the context limit ----------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5])
def test_max_tokens_gives_exactly_n_tokens_and_reason_length(chains, n):
    _, tokens, finish = run(chains.engine, [chains.L] * 3, max_tokens=n)
    assert [t.id for t in tokens] == [chains.L] * n
    assert (finish.reason, finish.prompt_tokens, finish.completion_tokens) == ("length", 3, n)
    assert "".join(t.text for t in tokens) + finish.text == "L" * n


@pytest.mark.parametrize("prompt_len", [1, 10, 32])
def test_a_full_context_ends_with_reason_context(chains, prompt_len):
    # Every position holds a token; the last token is predicted from a full context and
    # never evaluated: n_ctx - prompt + 1 tokens.
    n_ctx = chains.engine.n_ctx
    assert n_ctx == 32
    _, tokens, finish = run(chains.engine, [chains.L] * prompt_len)
    assert finish.reason == "context"
    assert finish.completion_tokens == len(tokens) == n_ctx - prompt_len + 1
    assert chains.engine.n_past == n_ctx


def test_a_full_context_releases_what_was_held_back(chains):
    # Each "L" could begin the stop "LX": the last one waits and comes with Finish.
    _, tokens, finish = run(chains.engine, [chains.L] * 28, stops=["LX"])
    assert [t.text for t in tokens] == ["", "L", "L", "L", "L"]
    assert (finish.reason, finish.text, finish.stop) == ("context", "L", None)
    # Lead bytes that never become a character: each is replaced once the next arrives,
    # the last one at the end.
    _, tokens, finish = run(chains.engine, [chains.Z] * 28)
    assert [t.text for t in tokens] == ["", "\ufffd", "\ufffd", "\ufffd", "\ufffd"]
    assert (finish.reason, finish.text) == ("context", "\ufffd")


def test_the_first_limit_reached_names_the_end(chains):
    # 30 prompt tokens in 32: the context is full after 3 generated tokens.
    _, tokens, finish = run(chains.engine, [chains.L] * 30, max_tokens=4)
    assert (finish.reason, len(tokens)) == ("context", 3)
    _, tokens, finish = run(chains.engine, [chains.L] * 30, max_tokens=2)
    assert (finish.reason, len(tokens)) == ("length", 2)
    _, tokens, finish = run(chains.engine, [chains.L] * 30, max_tokens=3)
    assert (finish.reason, len(tokens)) == ("length", 3)  # both at once: the user's -n


# -- timings (--stats) -------------------------------------------------------------------


class Clock:
    """time.perf_counter for gptcli.backends.generation, moved on by the work the test wraps."""

    def __init__(self):
        self.now = 100.0  # perf_counter's origin is arbitrary, never 0 in practice

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clocked(chains, monkeypatch):
    """Prefill takes 0.5 s, each step 0.25 s, each draw 0.0625 s (binary fractions)."""
    engine = chains.engine
    clock = Clock()
    monkeypatch.setattr(generation, "time", clock)
    prefill, step = engine.prefill, engine.step

    def slow_prefill(tokens):
        clock.now += 0.5
        return prefill(tokens)

    def slow_step(token):
        clock.now += 0.25
        return step(token)

    monkeypatch.setattr(engine, "prefill", slow_prefill)
    monkeypatch.setattr(engine, "step", slow_step)
    sampler = Sampler(GREEDY, engine.n_vocab)
    draw = sampler.sample

    def slow_draw(*a, **kw):
        clock.now += 0.0625
        return draw(*a, **kw)

    sampler.sample = slow_draw
    return engine, sampler


def test_stats_figures_from_known_times(chains, clocked):
    engine, sampler = clocked
    engine.reset()
    _, tokens, finish = run(engine, [chains.L] * 4, max_tokens=5, sampler=sampler)
    t = finish.timings
    assert generation.time.now == 100 + 0.5 + 5 * 0.0625 + 4 * 0.25
    assert t.load_s == engine.load_seconds
    assert t.prompt_s == 0.5
    assert t.ttft_s == 0.5625  # prefill, then the first draw
    assert t.generation_s == 0.5625 - 0.5 + 4 * (0.25 + 0.0625)
    assert t.prompt_tokens_evaluated == 4
    assert t.prompt_tps() == 8.0
    assert finish.generation_tps() == pytest.approx(5 / 1.3125, rel=1e-12)


def test_a_cached_prompt_evaluates_only_its_last_token(chains, clocked):
    engine, sampler = clocked
    engine.reset()
    prompt = [chains.L] * 6
    run(engine, prompt, max_tokens=2, sampler=sampler)
    _, _, finish = run(engine, prompt, max_tokens=2, sampler=sampler)
    assert finish.timings.prompt_tokens_evaluated == 1
    assert finish.timings.prompt_tps() == 2.0  # 1 token in 0.5 s


def test_finish_while_interrupted_counts_what_was_generated(chains, clocked):
    engine, sampler = clocked
    gen = Generation(engine, [chains.L] * 2, sampler, max_tokens=10)
    events = iter(gen)
    first, second = next(events), next(events)
    assert (first.index, second.index) == (0, 1)
    finish = gen.finish("interrupted")
    assert (finish.reason, finish.prompt_tokens, finish.completion_tokens) == ("interrupted", 2, 2)
    assert (finish.text, finish.stop, finish.complete) == ("", None, None)
    # prefill 0.5, draw, step, draw: the clock stands at 0.875
    assert (finish.timings.prompt_s, finish.timings.ttft_s) == (0.5, 0.5625)
    assert finish.timings.generation_s == 0.375
    assert finish.generation_tps() == 2 / 0.375


def test_finish_before_any_work_reports_zero_rates(chains, clocked):
    engine, sampler = clocked
    finish = Generation(engine, [chains.L], sampler).finish("interrupted")
    t = finish.timings
    assert (t.prompt_s, t.ttft_s, t.generation_s, t.prompt_tokens_evaluated) == (0, 0, 0, 0)
    assert (finish.completion_tokens, t.prompt_tps(), finish.generation_tps()) == (0, 0.0, 0.0)


def test_rates_are_counts_over_seconds():
    t = Timings(load_s=1.0, prompt_s=0.25, ttft_s=0.5, generation_s=2.0, prompt_tokens_evaluated=5)
    assert t.prompt_tps() == 20.0
    assert Finish("length", 5, 8, t).generation_tps() == 4.0
    zero = Timings(1.0, 0.0, 0.0, 0.0, 5)
    assert zero.prompt_tps() == 0.0 and Finish("stop", 5, 3, zero).generation_tps() == 0.0


# -- a grammar over the model's draw --------------------------------------------------


def test_a_complete_document_ends_when_the_model_wants_to_go_on(chains):
    # The model writes "yes" then wants " maybe": the grammar is complete, so it ends.
    grammar = Grammar(chains.engine, 'root ::= "yes" | "no"\n')
    gen, tokens, finish = run(chains.engine, [chains.Y], grammar=grammar)
    assert [t.text for t in tokens] == ["yes"]
    assert [t.forced for t in tokens] == [None]
    assert (finish.reason, finish.complete, finish.text, finish.completion_tokens) == (
        "stop",
        True,
        "",
        1,
    )


def test_a_complete_document_releases_text_held_back_for_a_stop(chains):
    grammar = Grammar(chains.engine, 'root ::= "yes" | "no"\n')
    _, tokens, finish = run(chains.engine, [chains.Y], stops=["s!"], grammar=grammar)
    assert [t.text for t in tokens] == ["ye"]
    assert (finish.reason, finish.complete, finish.text) == ("stop", True, "s")


def test_a_forced_token_that_completes_a_stop_keeps_its_mark(chains):
    # The model wants "yes"; the grammar only allows "no": every token is a redraw.
    grammar = Grammar(chains.engine, 'root ::= "no"\n')
    _, tokens, finish = run(chains.engine, [chains.Y], stops=["o"], grammar=grammar)
    assert (finish.reason, finish.stop) == ("stop", "o")
    assert "".join(t.text for t in tokens) == "n"
    assert tokens[0].forced is not None and tokens[0].forced.wanted == chains.yes
    assert all(t.forced is not None for t in tokens)


def test_a_document_cut_by_the_token_limit_is_not_complete(chains):
    grammar = Grammar(chains.engine, 'root ::= "yes maybe" " no"\n')
    _, tokens, finish = run(chains.engine, [chains.Y], max_tokens=2, grammar=grammar)
    assert [t.text for t in tokens] == ["yes", " maybe"]
    assert (finish.reason, finish.complete) == ("length", False)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    with Engine(tiny_model, EngineOptions(n_ctx=128, n_threads=1)) as engine:
        yield engine


def recorded_run(engine, prompt, params, gbnf, max_tokens, **kw):
    """Run (under a grammar unless gbnf is None), keeping a float64 copy of every logits
    row the loop saw."""
    seen = []
    prefill, step = engine.prefill, engine.step

    def keep(logits):
        seen.append(logits.astype(np.float64))
        return logits

    engine.prefill = lambda tokens: keep(prefill(tokens))
    engine.step = lambda token: keep(step(token))
    try:
        gen = Generation(
            engine,
            engine.tokenize(prompt),
            Sampler(params, engine.n_vocab),
            max_tokens,
            grammar=Grammar(engine, gbnf) if gbnf else None,
            **kw,
        )
        events = [e for e in gen if isinstance(e, TokenEvent)]
    finally:
        del engine.prefill, engine.step
    return events, seen


def softmax64(x: np.ndarray, t: float) -> np.ndarray:
    e = np.exp((x - x.max()) / t)
    return e / e.sum()


def top_k(x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-x, kind="stable")[:k] if k else np.flatnonzero(np.isfinite(x))


def dist_of(draw) -> tuple[np.ndarray, np.ndarray]:
    """The draw's distribution as (ids, probabilities) in id order, zeros left out."""
    ids, probs = np.asarray(draw.ids), np.asarray(draw.probs)
    order = np.argsort(ids)
    ids, probs = ids[order], probs[order]
    return ids[probs > 0], probs[probs > 0]


LOWER = 'root ::= [a-z ]+ "!"\n'  # never complete before "!": a refused draw is redrawn


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_k=40, top_p=1.0, min_p=0.0, seed=3),
        SamplingParams(temperature=1.3, top_k=0, top_p=1.0, min_p=0.0, seed=0),
        SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0),
        SamplingParams(temperature=0.9, top_k=40, top_p=1.0, min_p=0.0, repeat_penalty=3, seed=1),
    ],
    ids=["top-k 40, T=0.7", "whole vocabulary, T=1.3", "greedy", "repetition penalty"],
)
def test_the_distribution_under_a_grammar_is_the_allowed_part_renormalised(tiny, params):
    events, seen = recorded_run(
        tiny, "The", params, LOWER, max_tokens=12, n_top=5, model_probs=True
    )
    replay = Grammar(tiny, LOWER)
    t = params.temperature or 1.0  # greedy reports the distribution at T=1
    kinds = set()
    history = tiny.tokenize("The")
    for event, raw in zip(events, seen, strict=False):
        allowed = np.isfinite(replay.mask(raw.astype(np.float32)))
        lsm = raw - np.logaddexp.reduce(raw)
        logits = raw.copy()  # llama.cpp's penalty: each recent token once, by sign
        for tok in set(history[-params.repeat_last_n :]) if params.repeat_penalty != 1 else ():
            x = logits[tok]
            logits[tok] = x / params.repeat_penalty if x > 0 else x * params.repeat_penalty
        cand = top_k(logits, params.top_k)  # the candidates before the grammar
        full = softmax64(logits[cand], t)
        if event.forced is None:
            kinds.add("kept")
            keep = cand[allowed[cand]]
            assert 0 < len(keep) < len(cand)  # the grammar removed some candidates
            want = full[allowed[cand]] / full[allowed[cand]].sum()
            alts = np.argsort(-logits, kind="stable")[:5]
        else:
            kinds.add("forced")
            assert not allowed[event.forced.wanted]
            at = np.flatnonzero(cand == event.forced.wanted)[0]
            assert event.forced.wanted_prob == pytest.approx(full[at], rel=1e-5)
            masked = np.where(allowed, logits, -np.inf)
            keep = top_k(masked, params.top_k)
            want = softmax64(logits[keep], t)
            alts = np.argsort(-masked, kind="stable")[:5]
        order = np.argsort(keep)
        keep, want = keep[order], want[order]
        got_ids, got_probs = dist_of(event.draw)
        assert np.array_equal(got_ids, keep)
        np.testing.assert_allclose(got_probs, want, rtol=1e-5, atol=1e-12)
        p_token = want[np.searchsorted(keep, event.id)]
        assert allowed[event.id] and event.draw.prob == pytest.approx(p_token, rel=1e-5)
        if params.temperature == 0:
            assert event.id == keep[np.argmax(want)]
        # The model's own log probability stays the raw softmax, whatever the mask did.
        assert event.draw.model_logprob == pytest.approx(lsm[event.id], abs=1e-4)
        assert [a.id for a in event.draw.top] == alts.tolist()
        for a in event.draw.top:
            assert a.model_logprob == pytest.approx(lsm[a.id], abs=1e-4)
            if a.id in keep:
                p_alt = want[np.searchsorted(keep, a.id)]
                assert a.logprob == pytest.approx(math.log(p_alt), abs=1e-4)
            else:
                assert a.logprob is None  # cut by the grammar
        replay.accept(event.id)
        history.append(event.id)
    if params.temperature:
        assert kinds == {"kept", "forced"}, kinds
    else:
        assert "forced" in kinds


def test_model_probs_alone_report_the_raw_log_probability(tiny):
    params = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)
    events, seen = recorded_run(tiny, "The", params, None, 4, model_probs=True)
    for event, logits in zip(events, seen, strict=False):
        assert event.id == int(np.argmax(logits)) and event.draw.top == ()
        lsm = logits - np.logaddexp.reduce(logits)
        assert event.draw.model_logprob == pytest.approx(lsm[event.id], abs=1e-4)


def test_model_probs_alone_keep_the_raw_log_probability_after_a_redraw(tiny):
    params = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)
    events, seen = recorded_run(tiny, "The", params, 'root ::= "yes"\n', 1, model_probs=True)
    (event,) = events
    assert event.forced is not None
    lsm = seen[0] - np.logaddexp.reduce(seen[0])
    assert event.draw.model_logprob == pytest.approx(lsm[event.id], abs=1e-4)
    assert event.draw.top == ()


def test_no_report_asked_means_no_model_probability(tiny):
    params = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)
    events, _ = recorded_run(tiny, "The", params, 'root ::= "yes"\n', 1)
    assert events[0].forced is not None and events[0].draw.model_logprob is None


def test_nan_logits_end_the_loop_naming_the_position_after_the_good_tokens(tmp_path, tokenizer):
    # The logit model always wants token 500, whose embedding is NaN: the first draw is
    # fine, the logits after it are NaN, at position 3 (two prompt tokens, then 500).
    from support.hostile import write_logit_model

    from gptcli.sampling.sampler import NonFiniteLogits

    path = write_logit_model(tmp_path / "nan.gguf", tokenizer, favourite=500, poisoned=500)
    with Engine(path, EngineOptions(n_ctx=16, n_threads=1)) as engine:
        gen = Generation(engine, [7, 8], Sampler(GREEDY, engine.n_vocab), max_tokens=5)
        events = iter(gen)
        assert next(events).id == 500
        with pytest.raises(NonFiniteLogits) as e:
            next(events)
    assert e.value.position == 3
    assert gen.tokens == [500]

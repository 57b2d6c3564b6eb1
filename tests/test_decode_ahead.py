"""Decode ahead (gptcli.llama.ahead): llama.cpp's chain draws and decodes in a worker
thread while the main thread shows the token before.

Oracles: the serial loop with gptcli's numpy sampler (draw, show, then decode, on one
thread), itself checked against llama-cpp-python and a float64 forward pass elsewhere;
a fresh engine for what the KV cache must hold after an early stop; the logit model of
support.hostile, whose next token and broken step are known in advance.
"""

from __future__ import annotations

import json
import time

import pytest

from gptcli.backends.events import Finish, TokenEvent
from gptcli.backends.generation import Generation
from gptcli.llama.engine import Engine, EngineOptions
from gptcli.llama.prompt import raw_prompt
from gptcli.llama.sampler_chain import NativeSampler
from gptcli.sampling.sampler import NonFiniteLogits, Sampler, SamplingParams

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def engine(smollm2):
    with Engine(smollm2, EngineOptions(n_ctx=256, n_threads=1)) as e:
        yield e


def events_of(gen):
    events = list(gen)
    assert isinstance(events[-1], Finish)
    return [e for e in events if isinstance(e, TokenEvent)], events[-1]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    # Decodes in well under a millisecond: faster than the numbers are computed, so the
    # worker runs ahead of the main thread as it would on a GPU.
    with Engine(tiny_model, EngineOptions(n_ctx=128, n_threads=1)) as e:
        yield e


def test_shown_numbers_are_those_of_each_tokens_own_logits(tiny):
    engine = tiny
    # The serial numpy loop computes each token's numbers from the logits of its own
    # step; decode ahead computes them from a copy while the next token is decoded. A
    # copy taken after the next decode, a slot given back too early, or a history one
    # token off (the penalty looks back) would show another step's numbers.
    params = SamplingParams(temperature=0.0, repeat_penalty=1.3, repeat_last_n=8)
    prompt = raw_prompt(engine, PROMPT)
    kw = dict(n_top=5, model_probs=True)
    native = NativeSampler(engine, params, prompt)
    ahead, f1 = events_of(Generation(engine, prompt, native, 64, decode_ahead=True, **kw))
    serial, f2 = events_of(Generation(engine, prompt, Sampler(params, engine.n_vocab), 64, **kw))
    assert [e.id for e in ahead] == [e.id for e in serial] and len(ahead) == 64
    for a, s in zip(ahead, serial, strict=True):
        assert a.draw.prob == pytest.approx(s.draw.prob, abs=1e-6)
        assert a.draw.model_logprob == pytest.approx(s.draw.model_logprob, abs=1e-5)
        assert [t.id for t in a.draw.top] == [t.id for t in s.draw.top]
        for x, y in zip(a.draw.top, s.draw.top, strict=True):
            assert x.model_logprob == pytest.approx(y.model_logprob, abs=1e-5)
    assert (f1.reason, f1.completion_tokens) == (f2.reason, f2.completion_tokens)
    # The serial twin (draw, show, then decode on one thread) gives the same events.
    native = NativeSampler(engine, params, prompt)
    turn, f3 = events_of(Generation(engine, prompt, native, 64, decode_ahead=False, **kw))
    assert [(e.id, e.draw.prob) for e in turn] == [(e.id, e.draw.prob) for e in ahead]
    assert f3.completion_tokens == f1.completion_tokens


def test_the_worker_runs_at_most_two_tokens_ahead(engine):
    prompt = raw_prompt(engine, PROMPT)
    sampler = NativeSampler(engine, SamplingParams(0.0), prompt)
    gen = Generation(engine, prompt, sampler, 64, decode_ahead=True)
    events = iter(gen)
    first = next(events)
    time.sleep(0.5)  # long enough for the worker to decode many tokens, were it free to
    ahead = engine.n_past - len(prompt)
    assert first.index == 0 and ahead <= 2
    events.close()  # GeneratorExit: the worker is stopped and joined
    assert engine.ahead is None


def test_an_early_stop_leaves_the_cache_as_engine_tokens_say(engine, smollm2):
    # After a stop the worker may have decoded past it; whatever it decoded must be in
    # engine.tokens, so the next prefill reuses exactly what the cache holds: the next
    # text equals a fresh engine's.
    prompt = raw_prompt(engine, PROMPT)
    greedy = SamplingParams(0.0)

    def ahead(prompt, n, stops=()):
        sampler = NativeSampler(engine, greedy, prompt)
        return Generation(engine, prompt, sampler, n, stops, decode_ahead=True)

    full, _ = events_of(ahead(prompt, 16))
    stop = full[3].piece.decode().strip() or full[5].piece.decode()
    tokens, finish = events_of(ahead(prompt, 16, [stop]))
    assert finish.stop == stop
    # Abandoned mid-way without close(): the engine waits for the worker before reuse.
    gen = iter(ahead(prompt, 16))
    next(gen), next(gen)
    other = raw_prompt(engine, PROMPT + " there")
    again, _ = events_of(ahead(other, 12))
    with Engine(smollm2, EngineOptions(n_ctx=256, n_threads=1)) as fresh:
        sampler = NativeSampler(fresh, greedy, other)
        expected, _ = events_of(Generation(fresh, other, sampler, 12))
    assert [e.id for e in again] == [e.id for e in expected]


def test_a_full_context_ends_as_the_serial_loop_ends(smollm2):
    # The worker stops by the same count as the consumer: one token more and it would
    # decode past the context (ContextFull) instead of finishing with "context".
    with Engine(smollm2, EngineOptions(n_ctx=24, n_threads=1)) as small:
        prompt = raw_prompt(small, PROMPT)
        params = SamplingParams(0.0)
        native = NativeSampler(small, params, prompt)
        a, fa = events_of(Generation(small, prompt, native, None, decode_ahead=True))
        s, fs = events_of(Generation(small, prompt, Sampler(params, small.n_vocab), None))
    assert fa.reason == fs.reason == "context"
    assert [e.id for e in a] == [e.id for e in s] and len(a) == 24 - len(prompt) + 1


def test_nan_logits_in_the_worker_end_the_loop_naming_the_position(tmp_path, tokenizer):
    # The logit model always wants token 500, whose embedding is NaN: the first draw is
    # fine, the logits after it are NaN at position 3 (two prompt tokens, then 500).
    from support.hostile import write_logit_model

    path = write_logit_model(tmp_path / "nan.gguf", tokenizer, favourite=500, poisoned=500)
    with Engine(path, EngineOptions(n_ctx=16, n_threads=1)) as nan:
        sampler = NativeSampler(nan, SamplingParams(0.0), [7, 8])
        gen = Generation(nan, [7, 8], sampler, max_tokens=5, decode_ahead=True)
        events = iter(gen)
        assert next(events).id == 500
        with pytest.raises(NonFiniteLogits) as e:
            next(events)
        assert nan.ahead is None
    assert e.value.position == 3
    assert gen.tokens == [500]


@pytest.mark.parametrize("view", [("--json",), ("--json", "--alternatives", "3")])
def test_sampled_text_with_numbers_shown_is_the_plain_text_for_the_seed(gptcli, view):
    # One chain draws for every view: showing the numbers does not change the story.
    def args(seed):
        return ("generate", "--raw", "-t", "0.9", "--seed", seed, "-n", "20", "--threads", "1")

    plain = gptcli(*args("7"), PROMPT)
    shown = gptcli(*args("7"), *view, PROMPT)
    assert plain.returncode == 0 and shown.returncode == 0, plain.stderr + shown.stderr
    rows = [json.loads(x) for x in shown.stdout.splitlines()]
    text = "".join(r["token"] for r in rows if "token" in r)
    assert plain.stdout.rstrip("\n") == text and len(rows) == 21
    other = gptcli(*args("8"), *view, PROMPT)  # another seed, another story
    assert other.stdout != shown.stdout


def test_decoding_ahead_only_where_a_core_is_free(smollm2):
    # A second busy thread beside llama.cpp's on every core slows decoding (measured
    # 15-20 % on 2 cores): with no GPU, ahead only when llama.cpp leaves a core free.
    from gptcli.llama.engine import usable_cores

    cores = usable_cores()
    options = EngineOptions(n_ctx=64, n_threads=cores, n_gpu_layers=0)
    with Engine(smollm2, options) as every_core:
        assert not every_core.decodes_ahead
        prompt = raw_prompt(every_core, PROMPT)
        gen = iter(
            Generation(
                every_core, prompt, NativeSampler(every_core, SamplingParams(0.0), prompt), 8
            )
        )
        next(gen)
        assert every_core.ahead is None  # the serial loop: no worker
        gen.close()
    if cores > 1:
        with Engine(smollm2, EngineOptions(n_ctx=64, n_threads=cores - 1, n_gpu_layers=0)) as e:
            assert e.decodes_ahead

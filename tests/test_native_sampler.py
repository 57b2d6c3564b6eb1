"""Plain generation draws in llama.cpp's own sampler chain (sampler_chain.NativeSampler).

Oracles: llama-cpp-python's Llama, whose sampler chain (penalties, top-k, top-p, min-p,
temperature, dist(seed)) is built independently of gptcli, for sampled text; gptcli's
numpy sampler (itself proven equal in distribution to llama.cpp's chain by
test_sampler_oracle.py) for greedy text, with and without a repetition penalty.
"""

from __future__ import annotations

import pytest
from conftest import reference_llama

from gptcli.backends.events import Finish
from gptcli.backends.generation import Generation
from gptcli.llama.engine import Engine, EngineOptions
from gptcli.llama.prompt import raw_prompt
from gptcli.llama.sampler_chain import NativeSampler
from gptcli.sampling.sampler import Sampler, SamplingParams

PROMPTS = ["Once upon a time", "The best way to learn Python is", "My favourite colour is"]


@pytest.fixture(scope="module")
def engine(smollm2):
    with Engine(smollm2, EngineOptions(n_ctx=512, n_threads=1)) as e:
        yield e


def text_of(engine, prompt, sampler, n, stops=()):
    events = list(Generation(engine, raw_prompt(engine, prompt), sampler, n, stops))
    assert isinstance(events[-1], Finish)
    return "".join(e.text for e in events[:-1]) + events[-1].text, events[-1]


@pytest.mark.parametrize("repeat_penalty", [1.0, 1.3])
def test_greedy_native_equals_the_numpy_sampler(engine, repeat_penalty):
    params = SamplingParams(temperature=0.0, repeat_penalty=repeat_penalty, repeat_last_n=16)
    for prompt in PROMPTS:
        tokens = raw_prompt(engine, prompt)
        mine, f1 = text_of(engine, prompt, NativeSampler(engine, params, tokens), 40)
        numpy_, f2 = text_of(engine, prompt, Sampler(params, engine.n_vocab), 40)
        assert mine == numpy_ and f1.completion_tokens == f2.completion_tokens > 0


def test_penalty_changes_greedy_text(engine):
    # The penalty reaches the chain (and looks back into the prompt): a different text.
    prompt = PROMPTS[0]
    tokens = raw_prompt(engine, prompt)
    plain = text_of(engine, prompt, NativeSampler(engine, SamplingParams(0.0), tokens), 40)
    params = SamplingParams(temperature=0.0, repeat_penalty=1.3, repeat_last_n=16)
    assert text_of(engine, prompt, NativeSampler(engine, params, tokens), 40)[0] != plain[0]


def test_sampled_text_equals_llama_cpp_pythons_for_the_same_seed(engine, smollm2):
    llama = reference_llama(smollm2, n_ctx=512, n_threads=1, flash_attn=True)
    try:
        texts = set()
        for seed, temperature in [(1, 0.8), (2, 1.0), (3, 1.3), (12345, 0.8)]:
            params = SamplingParams(temperature=temperature, seed=seed)
            tokens = raw_prompt(engine, PROMPTS[0])
            mine, _ = text_of(engine, PROMPTS[0], NativeSampler(engine, params, tokens), 24)
            theirs = llama.create_completion(
                PROMPTS[0], max_tokens=24, temperature=temperature, top_k=params.top_k,
                top_p=params.top_p, min_p=params.min_p, repeat_penalty=1.0, seed=seed,
            )["choices"][0]["text"]  # fmt: skip
            assert mine == theirs
            texts.add(mine)
        assert len(texts) == 4  # other seeds, other stories
    finally:
        llama.close()


def test_same_seed_same_text_and_stops_still_hold(engine):
    params = SamplingParams(temperature=1.0, seed=9)
    tokens = raw_prompt(engine, PROMPTS[1])
    a = text_of(engine, PROMPTS[1], NativeSampler(engine, params, tokens), 30)
    b = text_of(engine, PROMPTS[1], NativeSampler(engine, params, tokens), 30)
    assert a[0] == b[0]
    cut = a[0][len(a[0]) // 2 :][:3]
    if cut.strip():
        text, finish = text_of(engine, PROMPTS[1], NativeSampler(engine, params, tokens), 30, [cut])
        assert finish.stop == cut and a[0].startswith(text) and cut not in text


def test_cli_plain_text_equals_json_text_greedy(gptcli):
    args = ("generate", "--raw", "-t", "0", "-n", "24", "--threads", "1", "Once upon a time")
    plain = gptcli(*args)
    json_ = gptcli(*args, "--json")
    assert plain.returncode == 0 and json_.returncode == 0, plain.stderr + json_.stderr
    import json

    tokens = [json.loads(x) for x in json_.stdout.splitlines()]
    text = "".join(t["token"] for t in tokens if "token" in t)
    assert plain.stdout.rstrip("\n") == text and len(text) > 20

"""Continuous batching (`generate --each-line -j N` locally): gptcli.backends.batching on real
llama.cpp, checked against the single-sequence Generation, one line at a time."""

import json
from dataclasses import replace

import pytest

from gptcli.backends.batching import Batcher, BatchSettings, line_seed, shared_tokens
from gptcli.backends.generation import Generation
from gptcli.llama.batch import steps_round_by_batch
from gptcli.llama.engine import Engine, EngineOptions
from gptcli.llama.prompt import chat_format, chat_prompt, messages_for, raw_prompt
from gptcli.llama.sampler_chain import NativeSampler
from gptcli.sampling.sampler import Sampler, SamplingParams

GREEDY = SamplingParams(temperature=0.0)
LINES = [
    "The capital of France is",
    "Once upon a time",
    "",
    "The best way to learn Python is",
    "My favourite colour is",
    "   ",
    "In 1969, the first man on the Moon",
    "Water boils at",
    "The quick brown fox",
]


@pytest.fixture(scope="module")
def engine(smollm2):
    with Engine(smollm2, EngineOptions(n_ctx=512, n_threads=1)) as e:
        yield e


def raw_for(engine):
    return lambda line: raw_prompt(engine, "Complete: " + line)


def batched(engine, lines, n_seq, settings, prompt_for=None, seed=None):
    batcher = Batcher(engine, n_seq, prompt_for or raw_for(engine), settings, seed=seed)
    try:
        return list(batcher.run(lines)), batcher
    finally:
        batcher.close()


def one_at_a_time(engine, lines, settings, seed, prompt_for=None):
    """The oracle: the single-sequence Generation, each line with its derived seed."""
    prompt_for = prompt_for or raw_for(engine)
    texts = []
    for i, line in enumerate(lines):
        if not line.strip():
            texts.append("")
            continue
        params = replace(settings.params, seed=line_seed(seed, i))
        prompt = prompt_for(line)
        plain = not (settings.n_top or settings.model_probs or settings.keep_events)
        events = Generation(
            engine,
            prompt,
            NativeSampler(engine, params, prompt) if plain else Sampler(params, engine.n_vocab),
            settings.max_tokens,
            settings.stops,
        )
        texts.append("".join(e.text for e in events))
    return texts


def test_greedy_j4_equals_j1(engine):
    settings = BatchSettings(GREEDY, max_tokens=16, keep_events=True)
    one, _ = batched(engine, LINES, 1, settings)
    four, _ = batched(engine, LINES, 4, settings)
    assert [r.index for r in four] == list(range(len(LINES)))
    assert [r.text for r in one] == one_at_a_time(engine, LINES, settings, 0)
    assert four[0].text.startswith(" Paris")
    assert [[e.id for e in r.events] for r in four] == [[e.id for e in r.events] for r in one]


CHAT_LINES = [
    "The capital of France is", "Once upon a time", "The best way to learn Python is",
    "My favourite colour is", "In 1969, the first man on the Moon", "Water boils at",
    "The quick brown fox", "Why is the sky blue?", "Name three fruits.", "What is 2+2?",
    "Tell me a joke.", "Describe a cat.", "How do planes fly?", "Who wrote Hamlet?",
    "What is rain?", "Give me a haiku.", "Translate hello to French.", "What is gravity?",
    "List some colours.", "Why do we sleep?", "What is a prime number?",
    "Explain photosynthesis.", "What is the Moon?", "How are you?",
]  # fmt: skip


def test_greedy_chat_lines_j8_equal_j1_line_for_line(engine):
    # A shared chat prefix, prompts of ~40 tokens, lines that end and free their slot
    # for the next: every greedy line equals its -j 1 twin (a unified KV cache, with
    # lines interleaved in it, gave 15 of 24 equal). 16 lines: each slot serves two.
    fmt = chat_format(engine)

    def prompt_for(line):
        return chat_prompt(engine, messages_for("Answer briefly.\n\n" + line, None), fmt)

    lines = CHAT_LINES[:16]
    settings = BatchSettings(GREEDY, max_tokens=24, stops=tuple(fmt.stops))
    one, _ = batched(engine, lines, 1, settings, prompt_for)
    eight, _ = batched(engine, lines, 8, settings, prompt_for)
    assert len({r.text for r in one}) == len(lines)  # 16 different answers
    assert [r.text for r in eight] == [r.text for r in one]


def test_seed_is_derived_per_line_index(engine):
    settings = BatchSettings(SamplingParams(temperature=1.5, seed=3), max_tokens=12)
    results, _ = batched(engine, ["Once upon a time"] * 4, 2, settings)
    assert len({r.text for r in results}) > 1  # the same text, other seeds: other stories
    again, _ = batched(engine, ["Once upon a time"] * 4, 4, settings)
    assert [r.text for r in again] == [r.text for r in results]


def test_stop_strings_max_tokens_and_utf8_per_line(engine):
    lines = ["The capital of France is", "Write a smiley emoji:", "Count: 1, 2, 3,"]
    settings = BatchSettings(GREEDY, max_tokens=20, stops=(",", "aris"))
    results, _ = batched(engine, lines, 3, settings)
    assert [r.text for r in results] == one_at_a_time(engine, lines, settings, 0)
    assert results[0].text == " P" and results[0].finish.stop == "aris"
    assert all(r.finish.completion_tokens <= 20 for r in results)


def test_empty_lines_give_empty_results_in_place(engine):
    results, _ = batched(engine, ["", "Water boils at", " ", ""], 2, BatchSettings(GREEDY, 4))
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.text == "" for r in results] == [True, False, True, True]
    assert results[0].finish is None and results[0].error is None


def test_a_line_too_long_fails_alone(smollm2):
    with Engine(smollm2, EngineOptions(n_ctx=64, n_threads=1)) as small:
        lines = ["Water boils at", "word " * 200, "The capital of France is"]
        results, _ = batched(small, lines, 2, BatchSettings(GREEDY, max_tokens=4))
    assert [r.index for r in results] == [0, 1, 2]
    assert results[1].text == "" and "context holds 64" in results[1].error
    assert results[0].text and results[2].text.startswith(" Paris")
    assert results[0].error is None and results[2].error is None


def test_shared_prefix_is_evaluated_once(engine):
    fmt = chat_format(engine)

    def prompt_for(line):
        return chat_prompt(
            engine, messages_for("Classify the sentiment:\n\n" + line, "Be brief."), fmt
        )

    lines = [line for line in LINES if line.strip()]
    shared = shared_tokens(prompt_for)
    assert len(shared) > 15  # the template, the system prompt and the instruction
    # One token out per line: only prompts are evaluated, each shared part once.
    results, batcher = batched(engine, lines, 3, BatchSettings(GREEDY, 1), prompt_for)
    prompts = [prompt_for(line) for line in lines]
    assert all(p[: len(shared)] == shared for p in prompts)
    expected = len(shared) + sum(len(p) - len(shared) for p in prompts)
    assert batcher.batched.tokens_decoded == expected
    assert all(
        r.finish.timings.prompt_tokens_evaluated == len(p) - len(shared)
        for r, p in zip(results, prompts, strict=False)
    )


def test_results_stream_before_the_input_ends(engine):
    pulled = []

    def lines():
        for i in range(200):
            pulled.append(i)
            yield f"Line {i} says"

    batcher = Batcher(engine, 2, raw_for(engine), BatchSettings(GREEDY, 2))
    try:
        first = next(batcher.run(lines()))
    finally:
        batcher.close()
    assert first.index == 0 and first.text
    assert len(pulled) < 200


def test_tiny_model_batches_too(tiny_model):
    with Engine(tiny_model, EngineOptions(n_ctx=128, n_threads=1)) as tiny:
        settings = BatchSettings(SamplingParams(temperature=0.9, seed=11), max_tokens=8)
        lines = [f"line {i}" for i in range(7)]
        one, _ = batched(tiny, lines, 1, settings)
        five, _ = batched(tiny, lines, 5, settings)
        assert [r.text for r in five] == [r.text for r in one]
        assert [r.finish.completion_tokens for r in five] == [
            r.finish.completion_tokens for r in one
        ]


STORY_LINES = [
    f"Story {i}: once upon a time there was a {w}"
    for i, w in enumerate(["cat", "dog", "king", "ship", "tree", "star", "boat", "bird"])
]


def test_float_weights_greedy_j8_equal_j1_over_long_lines(tiny_model, engine):
    # The tiny model's weights are F16: llama.cpp multiplies a step of two rows or more
    # with llamafile's GEMM, one row with its own dot product, and the sums round apart
    # (logits moved by up to 0.007 here; the last line parted from -j 1 at token 143
    # when the lines' steps were batched). Such a model steps one line at a time.
    with Engine(tiny_model, EngineOptions(n_ctx=512, n_threads=1)) as tiny:
        settings = BatchSettings(GREEDY, max_tokens=200, keep_events=True)
        prompt_for = lambda line: raw_prompt(tiny, line)  # noqa: E731
        one, _ = batched(tiny, STORY_LINES, 1, settings, prompt_for)
        eight, batcher = batched(tiny, STORY_LINES, 8, settings, prompt_for)
        assert batcher.batched.steps_alone
        assert [r.finish.completion_tokens for r in eight] == [200] * 8
        assert [[e.id for e in r.events] for r in eight] == [[e.id for e in r.events] for r in one]
        assert [r.text for r in one] == one_at_a_time(tiny, STORY_LINES, settings, 0, prompt_for)
    # Quantized weights (Q4_1, and the tied Q8_0 embedding) keep their batched steps.
    assert not steps_round_by_batch(engine.header)


def test_greedy_j8_equals_j1_past_256_cells_on_two_threads(tiny_model_factory):
    # Two threads on purpose: llama.cpp's CPU flash attention splits a lone line's keys
    # over the threads once its stream shows 512 cells (past 256 tokens), which a step of
    # several lines never does. With those steps batched, lines parted from -j 1 soon
    # after their 256th cell (logits moved by up to 0.22); they now run alone.
    q8 = tiny_model_factory("q8", q8_0=True)
    with Engine(q8, EngineOptions(n_ctx=512, n_threads=2)) as tiny:
        settings = BatchSettings(GREEDY, max_tokens=300, keep_events=True)
        prompt_for = lambda line: raw_prompt(tiny, line)  # noqa: E731
        one, _ = batched(tiny, STORY_LINES, 1, settings, prompt_for)
        eight, batcher = batched(tiny, STORY_LINES, 8, settings, prompt_for)
        assert not batcher.batched.steps_alone  # Q8_0: steps below 240 cells batched
        assert [r.finish.completion_tokens for r in eight] == [300] * 8
        assert [[e.id for e in r.events] for r in eight] == [[e.id for e in r.events] for r in one]


# -- the command line ----------------------------------------------------------------


def test_each_line_j4_prints_what_j1_prints(gptcli):
    lines = "The capital of France is\n\nOnce upon a time\nWater boils at\nThe quick brown fox\n"
    args = ("generate", "--raw", "-t", "0", "-n", "8", "--threads", "1", "--each-line")
    one = gptcli(*args, "-j", "1", input=lines)
    four = gptcli(*args, "-j", "4", input=lines)
    assert one.returncode == 0, one.stderr
    assert four.returncode == 0, four.stderr
    assert four.stdout == one.stdout
    out = four.stdout.split("\n")
    assert len(out) == 6 and out[0].startswith(" Paris") and out[1] == ""


def test_each_line_too_long_line_is_one_error_and_an_empty_line(gptcli):
    lines = "Water boils at\n" + "word " * 200 + "\nThe capital of France is\n"
    r = gptcli(
        "generate",
        "--raw",
        "-t",
        "0",
        "-n",
        "4",
        "--ctx",
        "64",
        "--threads",
        "1",
        "--each-line",
        "-j",
        "2",
        input=lines,
    )
    assert r.returncode != 0
    out = r.stdout.split("\n")
    assert len(out) == 4 and out[0] and out[1] == "" and out[2].startswith(" Paris")
    errors = [x for x in r.stderr.splitlines() if x.startswith("gptcli: error:")]
    assert any("line 2" in x and "context" in x for x in errors)
    assert "Traceback" not in r.stderr


def test_each_line_json_is_one_object_per_line(gptcli):
    lines = "The capital of France is\n\nWater boils at\n"
    r = gptcli(
        "generate",
        "--raw",
        "-t",
        "0",
        "-n",
        "3",
        "--threads",
        "1",
        "--each-line",
        "-j",
        "2",
        "--json",
        input=lines,
    )
    assert r.returncode == 0, r.stderr
    objs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["line"] for o in objs] == [1, 2, 3]
    assert objs[0]["text"].startswith(" Paris") and objs[1]["text"] == ""
    assert len(objs[0]["tokens"]) == 3 and objs[1]["tokens"] == []
    tok = objs[0]["tokens"][0]
    assert tok["token"] == " Paris" and tok["model_logprob"] == pytest.approx(-0.264, abs=0.03)
    assert "".join(t["token"] for t in objs[0]["tokens"]) == objs[0]["text"]

"""Stop strings against token boundaries, on SmolLM2's greedy text.

The stops are cut out of the greedy text itself (the end of one token and the start of
the next, or the middle of one token), so the test knows where each must end the text
whatever the model says. The property: what has been released, at every event, is a
prefix of the final answer: held-back text never reaches the output before the stop
is decided, and is released when it turns out not to be a stop."""

from __future__ import annotations

import pytest

from gptcli.backends.events import Finish, TokenEvent
from gptcli.backends.generation import Generation, _held_back
from gptcli.llama.engine import Engine, EngineOptions
from gptcli.sampling.sampler import Sampler, SamplingParams

PROMPT = "Once upon a time, in a small village,"
N = 32


@pytest.fixture(scope="module")
def engine(smollm2):
    with Engine(smollm2, EngineOptions(n_ctx=256)) as e:
        yield e


def run(engine, stops=(), max_tokens=N):
    sampler = Sampler(SamplingParams(temperature=0), engine.n_vocab)
    gen = Generation(engine, engine.tokenize(PROMPT), sampler, max_tokens, stops)
    events = list(gen)
    *tokens, finish = events
    assert isinstance(finish, Finish) and all(isinstance(t, TokenEvent) for t in tokens)
    return tokens, finish


@pytest.fixture(scope="module")
def greedy(engine):
    tokens, finish = run(engine)
    pieces = [t.piece.decode("utf-8") for t in tokens]
    text = "".join(t.text for t in tokens) + finish.text
    assert text == "".join(pieces) and len(pieces) == N
    starts = [sum(len(p) for p in pieces[:i]) for i in range(N)]
    return pieces, text, starts


def spanning_stop(greedy):
    """A stop made of the end of token i and the start of token i+1, first seen there."""
    pieces, text, starts = greedy
    for i in range(2, N - 2):
        a, b = pieces[i], pieces[i + 1]
        if len(a) >= 3 and len(b) >= 3 and a.isascii() and b.isascii():
            stop = a[-2:] + b[:2]
            if text.find(stop) == starts[i] + len(a) - 2:
                return i, stop
    pytest.fail(f"no two long tokens in a row in the greedy text: {pieces}")


def assert_never_leaks(tokens, finish, answer):
    released = ""
    for t in tokens:
        released += t.text
        assert answer.startswith(released), f"token {t.index} released {t.text!r} too early"
    assert released + finish.text == answer


def test_stop_across_a_token_boundary_holds_back_then_cuts(engine, greedy):
    pieces, text, starts = greedy
    i, stop = spanning_stop(greedy)
    tokens, finish = run(engine, [stop])
    answer = text[: text.find(stop)]
    assert (finish.reason, finish.stop, finish.text) == ("stop", stop, "")
    assert len(tokens) == i + 2  # ended by the token that completed the stop
    assert_never_leaks(tokens, finish, answer)
    # Token i's last two characters could begin the stop: they were held back.
    assert "".join(t.text for t in tokens[: i + 1]) == text[: starts[i] + len(pieces[i]) - 2]


def test_stop_inside_one_token(engine, greedy):
    pieces, text, starts = greedy
    j = next(
        j for j in range(1, N) if len(pieces[j]) >= 4 and text.find(pieces[j][1:3]) == starts[j] + 1
    )
    stop = pieces[j][1:3]
    tokens, finish = run(engine, [stop])
    assert (finish.reason, finish.stop) == ("stop", stop)
    assert len(tokens) == j + 1
    assert_never_leaks(tokens, finish, text[: starts[j] + 1])


def test_a_false_start_is_released_whole(engine, greedy):
    pieces, text, starts = greedy
    i, stop = spanning_stop(greedy)
    never = pieces[i][-2:] + "\x00never"
    tokens, finish = run(engine, [never])
    assert finish.reason == "length" and finish.stop is None
    assert_never_leaks(tokens, finish, text)
    upto = [sum(len(t.text) for t in tokens[: k + 1]) for k in range(len(tokens))]
    assert upto[i] == starts[i] + len(pieces[i]) - 2  # held back while it could be the stop
    assert upto[i + 1] >= starts[i + 1]  # then released with the next token


def test_the_earliest_of_several_stops_wins(engine, greedy):
    pieces, text, starts = greedy
    i, late = spanning_stop(greedy)
    early = pieces[1].strip()[:2]
    assume_first = text.find(early)
    assert 0 <= assume_first < text.find(late)
    tokens, finish = run(engine, [late, early])
    assert finish.stop == early
    assert_never_leaks(tokens, finish, text[:assume_first])


def test_text_held_back_at_the_token_limit_is_printed_last(engine, greedy):
    pieces, text, starts = greedy
    i, stop = spanning_stop(greedy)
    tokens, finish = run(engine, [stop], max_tokens=i + 1)  # ends before the stop completes
    assert finish.reason == "length"
    assert finish.text == pieces[i][-2:]
    assert_never_leaks(tokens, finish, text[: starts[i] + len(pieces[i])])


def test_stop_through_the_cli_leaves_exactly_the_text_before_it(gptcli, greedy):
    _, text, _ = greedy
    _, stop = spanning_stop(greedy)
    args = ("generate", "--raw", "-t", "0", "-n", str(N), "--ctx", "256")
    r = gptcli(*args, "--stop", stop, PROMPT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == text[: text.find(stop)] + "\n"
    full = gptcli(*args, PROMPT)
    assert full.stdout == text + "\n"  # the engine and the CLI agree on the greedy text


@pytest.mark.parametrize(
    "text, stops, held",
    [
        ("abc", ["cde"], 1),
        ("abcd", ["cde"], 2),
        ("abcd", ["xyz"], 0),
        ("xab", ["abc", "b"], 2),
        ("xab", ["b", "abc"], 2),
        ("a", ["abc"], 1),
        ("", ["abc"], 0),
        ("aaa", ["aab"], 2),
        ("abc", ["c"], 0),  # a one-character stop is found, never held
    ],
)
def test_held_back_is_the_longest_end_that_could_start_a_stop(text, stops, held):
    assert _held_back(text, stops) == held

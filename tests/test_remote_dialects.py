"""Every server shape on every run: replies recorded from llama.cpp's llama-server,
and written from vLLM's and Ollama's documented shapes, replayed by a loopback
server (tests/fixtures/servers/, see its README), through the real CLI."""

from __future__ import annotations

import json
import math

import pytest
from support.serverfixture import ReplayServer

from gptcli.backends import dialects

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def replay():
    server = ReplayServer()
    yield server
    server.stop()


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# -- the parsers, on their own ---------------------------------------------------------


def test_floors_are_probability_zero():
    assert dialects.logprob(-3.4028234663852886e38) == -math.inf  # llama-server
    assert dialects.logprob(-9999.0) == -math.inf  # vLLM
    assert dialects.logprob(-2.5) == -2.5
    assert dialects.logprob(None) is None and dialects.logprob(True) is None


def test_both_shapes_give_the_same_entries():
    legacy = {"tokens": [" Paris"], "token_logprobs": [-0.25], "top_logprobs": [{" the": -2.0}]}
    chat = {
        "content": [
            {
                "id": 7,
                "token": " Paris",
                "bytes": list(b" Paris"),
                "logprob": -0.25,
                "top_logprobs": [
                    {"id": 3, "token": " the", "bytes": list(b" the"), "logprob": -2.0}
                ],
            }
        ]
    }
    (a,), (b,) = dialects.entries(legacy), dialects.entries(chat)
    assert (a.piece, a.logprob, a.top[0].piece) == (b.piece, b.logprob, b.top[0].piece)
    assert a.id is None and b.id == 7 and b.top[0].id == 3


def test_half_a_character_keeps_its_bytes():
    # llama-server sends "" as the text of a token that is part of a character;
    # its `bytes` are exact.
    (e,) = dialects.entries({"content": [{"token": "", "bytes": [240, 159], "logprob": -1.0}]})
    assert e.piece == b"\xf0\x9f"


def test_post_sampling_probabilities_are_read_as_probabilities():
    (e,) = dialects.entries(
        [{"id": 1, "token": "a", "prob": 0.5, "top_probs": [{"id": 1, "token": "a", "prob": 0.5}]}],
        sampled=True,
    )
    assert e.logprob == pytest.approx(math.log(0.5))


# -- vLLM ------------------------------------------------------------------------------


def test_vllm_stream_in_the_legacy_shape_with_its_floor(replay, gptcli):
    r = gptcli("generate", "--raw", "-t", "0", "--json", PROMPT, "--server", replay.url("vllm"))
    assert r.returncode == 0, r.stderr
    first, second, finish = lines(r.stdout)
    assert first["token"] == " Paris" and first["model_logprob"] == -0.25
    assert first["id"] is None  # vLLM's legacy shape has no ids
    tops = {t["token"]: t["model_logprob"] for t in first["top_logprobs"]}
    assert tops == {" Paris": -0.25, " the": -2.75, " London": None}  # -9999: probability 0
    assert second["token"] == "."
    assert finish["finish_reason"] == "length" and finish["usage"]["completion_tokens"] == 2


def test_vllm_score_reads_the_echoed_prompt(replay, gptcli):
    r = gptcli("score", "--json", "-", "--server", replay.url("vllm-score"), input=PROMPT)
    assert r.returncode == 0, r.stderr
    out = lines(r.stdout)
    assert [o["logprob"] for o in out[:5]] == [None, -7.0, -1.0, -3.0, -0.5]
    assert out[1]["expected"]["token"] == " first"
    assert out[-1]["perplexity"] == pytest.approx(math.exp((7 + 1 + 3 + 0.5) / 4))


# -- Ollama ----------------------------------------------------------------------------


def test_ollama_top_logprobs_are_capped_at_20_with_a_notice(replay, gptcli):
    url = replay.url("ollama")
    r = gptcli("generate", "-t", "0", "--json", "--alternatives", "30", "Hi", "--server", url)
    assert r.returncode == 0, r.stderr
    assert "at most 20" in r.stderr
    sent = [b for name, m, p, b in replay.requests if name == "ollama" and m == "POST"]
    assert sent[-1]["top_logprobs"] == 20
    hello, bang, _ = lines(r.stdout)
    assert hello["bytes"] == list(b"Hello") and hello["model_logprob"] == -0.125
    assert bang["token"] == "!"


# -- quirks ------------------------------------------------------------------------------


def test_a_server_that_ignores_echo_is_one_line(replay, gptcli):
    r = gptcli("score", "-", "--server", replay.url("quirks"), input=PROMPT)
    assert r.returncode == 1
    assert "ignored `echo`" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_a_token_without_logprobs_mid_stream_is_said_once(replay, gptcli):
    r = gptcli("generate", "--raw", "--json", PROMPT, "--server", replay.url("gap"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("returned no log probabilities") == 1
    assert [o.get("token") for o in lines(r.stdout)[:2]] == [" Paris", "."]


def test_a_finish_reason_that_is_a_control_sequence_reaches_stats_escaped(replay, gptcli):
    r = gptcli("generate", "--raw", "--stats", PROMPT, "--server", replay.url("hostile-reason"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == " Paris.\n"
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr  # no retitle, no clear
    assert "finish      \\x1b]0;pwned\\x07\\x1b[2J" in r.stderr  # shown, as escapes


# -- llama-server, recorded --------------------------------------------------------------


def test_llama_server_probs_come_from_post_sampling_probs(replay, gptcli):
    url = replay.url("llama-server-probs")
    r = gptcli("generate", "--raw", "-t", "0", "-n", "6", "--probs", PROMPT, "--server", url)
    assert r.returncode == 0, r.stderr
    sent = [b for name, m, p, b in replay.requests if name == "llama-server-probs" and m == "POST"]
    assert sent[-1]["post_sampling_probs"] is True  # its native /completion
    assert "Paris[1.00]" in r.stdout  # greedy: llama-server reports the chosen token alone


def test_llama_server_json_has_ids_from_the_chat_shape(replay, gptcli):
    url = replay.url("llama-server-json")
    r = gptcli("generate", "--raw", "-t", "0", "-n", "6", "--json", PROMPT, "--server", url)
    assert r.returncode == 0, r.stderr
    first = lines(r.stdout)[0]
    assert first["token"] == " Paris" and first["id"] == 7042
    assert first["model_logprob"] == pytest.approx(math.log(0.78), abs=0.02)


def test_llama_server_score_is_one_line(replay, gptcli):
    r = gptcli("score", "-", "--server", replay.url("llama-server-score"), input=PROMPT)
    assert r.returncode == 1 and "no prompt log probabilities" in r.stderr

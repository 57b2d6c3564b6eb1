"""`chat`, `next` and `score` with --server, against llama-cpp-python's server on the
embedded SmolLM2 (started once per session by serverfixture.LlamaServer), and a
small server that fails on purpose."""

from __future__ import annotations

import json
import math

import pytest
from conftest import reference_probability
from support.serverfixture import ECHO_LOGPROBS, free_port

PROMPT = "The capital of France is"


def one_error_line(stderr: str, needle: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("gptcli: error:")]
    assert len(errors) == 1 and needle in errors[0], stderr
    assert "Traceback" not in stderr


# -- chat ---------------------------------------------------------------------------


def test_piped_chat_sends_the_whole_conversation(server, gptcli):
    args = ("chat", "-t", "0", "-n", "30", "--server", server.url)
    r = gptcli(*args, input="I have a dog called Rex.\nWhat is the name of my dog?\n")
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.split("\n\n")  # one reply per line, a blank line between
    assert first.strip() and "Rex" in second
    # The same question alone does not know the name: the answer came from turn 1.
    alone = gptcli(*args, input="What is the name of my dog?\n")
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.strip() and "Rex" not in alone.stdout


def test_chat_slash_commands_travel_with_the_requests(server, gptcli, tmp_path):
    saved = tmp_path / "talk.json"
    session = "\n".join(
        [
            "/temp 0",  # over -t 0.9: the reply below must be the greedy one
            "/max-tokens 8",
            "Say hi.",
            f"/save {saved}",
            "/reset",
            "/history",
            f"/load {saved}",
            "/history",
            "/stats",
            "/nonsense",
        ]
    )
    r = gptcli("chat", "-t", "0.9", "--server", server.url, input=session + "\n")
    greedy = gptcli("generate", "-t", "0", "-n", "8", "--server", server.url, "Say hi.")
    assert greedy.returncode == 0, greedy.stderr
    assert r.returncode == 2  # the unknown command, in a piped session
    one_error_line(r.stderr, "unknown command /nonsense")
    reply = greedy.stdout.rstrip("\n")
    assert r.stdout.startswith(greedy.stdout)
    data = json.loads(saved.read_text())
    assert data["format"] == "gptcli-chat"
    assert data["messages"] == [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": reply},
    ]
    # /history after /reset is empty; after /load it is the saved exchange.
    assert "(the conversation is empty)" in r.stderr  # piped: not among the replies
    assert f"[user] Say hi.\n[assistant] {reply}" in r.stderr
    assert "server      " + server.url in r.stderr
    assert "first token" in r.stderr and "max-tokens 8" in r.stderr


def test_chat_probs_on_shows_the_servers_model_probabilities(server, gptcli):
    args = ("-t", "0", "-n", "5", "--server", server.url)
    r = gptcli("chat", *args, input="/probs on\nSay hi.\n")
    same = gptcli("generate", *args, "--probs=model", "Say hi.")
    assert r.returncode == same.returncode == 0, r.stderr
    assert "[0." in r.stdout and r.stdout == same.stdout  # "Hello[0.19],[0.45] ..."
    assert "only the model's probabilities" in r.stderr


def test_chat_with_the_server_down_is_one_line(gptcli):
    r = gptcli("chat", "--server", f"127.0.0.1:{free_port()}", input="Hello\n")
    assert r.returncode == 1 and r.stdout == ""
    one_error_line(r.stderr, "connection refused")
    assert len(r.stderr.strip().splitlines()) == 1


def test_chat_reply_dropped_mid_stream_keeps_its_text_and_goes_on(faults, gptcli):
    r = gptcli("chat", "--server", faults.url("drop"), input="Hello\nAgain\n")
    assert r.returncode == 1  # a piped session with errors says so
    assert r.stdout == "one two three\n\none two three\n"
    assert r.stderr.count("ended its reply early") == 2 and "Traceback" not in r.stderr


# -- next ---------------------------------------------------------------------------


def test_next_top_k_matches_local(server, gptcli):
    args = ("next", "--json", "--top", "5", "--steps", "2", PROMPT)
    local = [json.loads(x) for x in gptcli(*args).stdout.splitlines()]
    r = gptcli(*args, "--server", server.url)
    assert r.returncode == 0, r.stderr
    remote = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(remote) == len(local) == 2
    for lo, re_ in zip(local, remote, strict=True):
        assert re_.keys() == lo.keys()
        assert re_["position"] == lo["position"]
        assert re_["temperatures"] == lo["temperatures"] == [1.0]
        assert re_["entropy_bits"] == [None]  # a server's top K cannot give it
        assert [c["bytes"] for c in re_["top"]] == [c["bytes"] for c in lo["top"]]
        for a, b in zip(re_["top"], lo["top"], strict=True):
            assert a.keys() == b.keys() and a["id"] is None
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-3)
            assert a["probs"][0] == pytest.approx(b["probs"][0], abs=1e-3)
            assert a["cumulative"][0] == pytest.approx(b["cumulative"][0], abs=1e-3)
    assert remote[0]["top"][0]["token"] == " Paris"
    assert "entropy" in r.stderr and "not shown" in r.stderr


def test_next_chart_on_a_server_leaves_out_entropy_and_other_temperatures(server, gptcli, smollm2):
    r = gptcli("next", "--top", "3", "-t", "0.5,2", PROMPT, "--server", server.url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "step 1: after 5 tokens · T=1"  # no entropy, no invented columns
    rank, token, prob = lines[2].split()[:3]
    assert (rank, token) == ("1", "␣Paris")
    assert float(prob) == pytest.approx(reference_probability(smollm2, PROMPT, " Paris"), abs=2e-3)
    assert len(lines) == 5
    assert "temperature 1 only" in r.stderr


# -- score --------------------------------------------------------------------------


def test_score_refuses_llama_cpp_pythons_shifted_prompt_logprobs(server, gptcli):
    r = gptcli("score", "--server", server.url, input="The capital of France is Paris.\n")
    assert r.returncode == 1 and r.stdout == ""
    one_error_line(r.stderr, "standard alignment")
    assert len(r.stderr.strip().splitlines()) == 1


def test_score_uses_prompt_logprobs_in_the_standard_alignment(faults, gptcli):
    text = "one two three four"
    r = gptcli("score", "--json", "--worst", "1", "--server", faults.url("echo"), input=text)
    assert r.returncode == 0, r.stderr
    *tokens, summary = [json.loads(x) for x in r.stdout.splitlines()]
    assert [t["token"] for t in tokens] == ["one", " two", " three", " four"]
    assert tokens[0]["logprob"] is None and all(t["id"] is None for t in tokens)
    lps = list(ECHO_LOGPROBS[:3])
    assert [t["logprob"] for t in tokens[1:]] == lps
    assert [t["expected"]["token"] for t in tokens[1:]] == [" the"] * 3
    assert summary["perplexity"] == pytest.approx(math.exp(-sum(lps) / 3))
    assert summary["least_likely"][0]["token"] == " three"  # -2.0, the lowest

"""The remote backend against real servers on 127.0.0.1: llama-cpp-python's own
OpenAI-compatible server on the embedded SmolLM2, and a small server that fails
on purpose (HTTP 500, a reply dropped mid-stream)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import clean_env, reference_probability, run_gptcli
from support.serverfixture import free_port

from gptcli.backends.events import Finish, TokenEvent
from gptcli.backends.remote import RemoteBackend
from gptcli.errors import GptcliError
from gptcli.sampling.sampler import SamplingParams

PROMPT = "The capital of France is"
GREEDY = SamplingParams(temperature=0)


def events(gen) -> tuple[list[TokenEvent], Finish]:
    out = list(gen)
    assert isinstance(out[-1], Finish)
    return out[:-1], out[-1]


# -- the backend -------------------------------------------------------------------


def test_completion_streams_tokens_with_the_models_logprobs(server):
    tokens, finish = events(RemoteBackend(server.url).complete(PROMPT, GREEDY, 3, n_top=3))
    assert "".join(t.text for t in tokens) == " Paris.\n"
    first = tokens[0].draw
    # FACTS.md: " Paris" 0.7677 is the raw softmax on llama.cpp's default attention;
    # the fixture server runs flash attention like the local engine: 0.78.
    assert math.exp(first.model_logprob) == pytest.approx(0.78, abs=0.01)
    assert [a.model_logprob for a in first.top] == sorted(
        (a.model_logprob for a in first.top), reverse=True
    )
    assert math.isnan(first.prob)  # the sampled distribution is not reported
    assert finish.reason == "length" and finish.completion_tokens == 3


def test_chat_applies_the_servers_template(server):
    tokens, finish = events(
        RemoteBackend(server.url).chat([{"role": "user", "content": "Hi"}], GREEDY, 4)
    )
    assert "".join(t.text for t in tokens).startswith("Hello")
    assert finish.reason == "length"


def test_next_steps_match_the_local_distribution(server, smollm2):
    from gptcli.llama.engine import Engine
    from gptcli.sampling.distribution import next_tokens

    remote = RemoteBackend(server.url)
    walk = remote.next_steps(PROMPT, chat=False, system=None, top=3, steps=1, temperatures=[1.0])
    steps = [[(c.id, c.logprob) for c in step.dist.candidates] for step in walk]
    with Engine(smollm2) as engine:
        logits = engine.prefill(engine.tokenize(PROMPT, add_bos=False)).copy()
        local = next_tokens(logits, 3, [1.0])
        names = [engine.piece(c.id) for c in local.candidates]
    assert [remote.piece(i) for i, _ in steps[0]] == names
    for (_, lp), cand in zip(steps[0], local.candidates, strict=True):
        assert lp == pytest.approx(cand.logprob, abs=1e-3)


def test_score_refuses_shifted_echo_logprobs(server):
    # llama-cpp-python 0.3 echoes prompt logprobs one token off for models without a
    # BOS token (SmolLM2): those numbers belong to other tokens and must not be shown.
    with pytest.raises(GptcliError, match="standard alignment"):
        RemoteBackend(server.url).score(PROMPT)


# -- the CLI -----------------------------------------------------------------------


def test_list_server_prints_the_servers_models(server, smollm2):
    r = run_gptcli("list", "--server", server.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == [str(smollm2)]
    assert "1 model at" in r.stderr


def test_remote_greedy_text_matches_local(server, gptcli):
    args = ("generate", "--raw", "-t", "0", "-n", "8", PROMPT)
    local = gptcli(*args)
    remote = gptcli(*args, "--server", server.url)
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout
    assert remote.stdout.startswith(" Paris.")


def test_server_comes_from_the_environment(server, gptcli):
    r = gptcli(
        "generate", "--raw", "-t", "0", "-n", "2", PROMPT, env=clean_env(GPTCLI_SERVER=server.url)
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == " Paris.\n"


def test_json_has_the_local_shape_and_model_logprobs(server, gptcli):
    args = ("generate", "--raw", "-t", "0", "-n", "4", "--json", "--alternatives", "3", PROMPT)
    local = [json.loads(x) for x in gptcli(*args).stdout.splitlines()]
    r = gptcli(*args, "--server", server.url)
    assert r.returncode == 0, r.stderr
    remote = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(remote) == len(local) == 5
    for lo, re_ in zip(local[:-1], remote[:-1], strict=True):
        assert re_.keys() == lo.keys()
        assert (re_["token"], re_["bytes"]) == (lo["token"], lo["bytes"])
        assert re_["model_logprob"] == pytest.approx(lo["model_logprob"], abs=1e-3)
        assert re_["logprob"] is None and re_["id"] is None  # not reported by servers
        assert [a["token"] for a in re_["top_logprobs"]] == [a["token"] for a in lo["top_logprobs"]]
        for a, b in zip(re_["top_logprobs"], lo["top_logprobs"], strict=True):
            assert a.keys() == b.keys()
            assert a["model_logprob"] == pytest.approx(b["model_logprob"], abs=1e-3)
    assert remote[-1].keys() == local[-1].keys()
    assert remote[-1]["timings"].keys() == local[-1]["timings"].keys()
    assert remote[-1]["usage"]["completion_tokens"] == 4


def test_probs_show_the_models_probability(server, gptcli, smollm2):
    args = ("generate", "--raw", "-t", "0", "-n", "3", "--probs=model", PROMPT)
    local = gptcli(*args)
    remote = gptcli(*args, "--server", server.url)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout  # " Paris[0.78].[0.67]\n[0.35]" at two decimals
    # the model's probability, not the greedy sampler's 1.00
    assert remote.stdout.startswith(
        f" Paris[{reference_probability(smollm2, PROMPT, ' Paris'):.2f}]"
    )


def test_each_line_keeps_order_with_4_in_flight(server, gptcli):
    lines = [f"Count: {i}, {i + 1}," for i in range(8)]
    args = ("generate", "--raw", "-t", "0", "-n", "3", "--each-line")
    sequential = gptcli(*args, "--server", server.url, input="\n".join(lines) + "\n")
    parallel = gptcli(*args, "-j", "4", "--server", server.url, input="\n".join(lines) + "\n")
    assert sequential.returncode == parallel.returncode == 0, parallel.stderr
    out = parallel.stdout.splitlines()
    assert len(out) == len(lines)
    assert parallel.stdout == sequential.stdout
    assert out[0].startswith(" 2")  # "Count: 0, 1," goes on with 2


def test_each_line_j_zero_is_a_usage_error(gptcli):
    # -j above 1 runs locally too (batched: tests/test_batching.py); 0 lines in flight is wrong.
    r = gptcli("generate", "--each-line", "-j", "0", input="a\n")
    assert r.returncode == 2
    assert "-j must be from 1 to 255" in r.stderr and "Traceback" not in r.stderr


# -- failures ----------------------------------------------------------------------


def test_server_down_is_one_clear_line(gptcli):
    r = gptcli("generate", "--raw", "-n", "2", PROMPT, "--server", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1 and r.stdout == ""
    assert "connection refused" in r.stderr and "is it running" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_http_500_reports_the_servers_reason(faults, gptcli):
    r = gptcli("generate", "--raw", PROMPT, "--server", faults.url("500"))
    assert r.returncode == 1
    assert "HTTP 500" in r.stderr and "model crashed" in r.stderr
    assert "Traceback" not in r.stderr


def test_dropped_stream_keeps_what_was_printed(faults, gptcli):
    r = gptcli("generate", "--raw", PROMPT, "--server", faults.url("drop"))
    assert r.returncode == 1
    assert r.stdout == "one two three\n"
    assert "ended its reply early" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_api_key_says_which_variable(faults, gptcli):
    r = gptcli("generate", "--raw", PROMPT, "--server", faults.url("auth"))
    assert r.returncode == 1 and "GPTCLI_API_KEY" in r.stderr
    ok = gptcli(
        "generate",
        "--raw",
        PROMPT,
        "--server",
        faults.url("auth"),
        env=clean_env(GPTCLI_API_KEY="sekrit"),
    )
    assert ok.returncode == 0 and ok.stdout == "one two three\n"


def test_probs_without_server_logprobs_degrade_to_text(faults, gptcli):
    r = gptcli("generate", "--raw", "--probs", PROMPT, "--server", faults.url("nologprobs"))
    assert r.returncode == 0
    assert r.stdout == "one two three\n"  # no invented numbers
    assert "returned no log probabilities" in r.stderr

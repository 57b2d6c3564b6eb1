"""gptcli against llama.cpp's own llama-server, built from the llama.cpp that
llama-cpp-python vendors (tests/support/llama_server_build.py), on the embedded SmolLM2:
the same text, the same numbers as the local engine, where the server gives them.
Skipped, with the reason, when the binary is not in the cache."""

from __future__ import annotations

import json
import math

import pytest
from support import llama_server_build
from support.serverfixture import NativeLlamaServer

from gptcli.backends.base import Request
from gptcli.backends.local import LocalBackend
from gptcli.backends.remote import RemoteBackend
from gptcli.sampling.sampler import SamplingParams

BINARY = llama_server_build.find()
pytestmark = pytest.mark.skipif(
    BINARY is None,
    reason="llama-server is not built: `make test GPTCLI_BUILD_LLAMA_SERVER=1` "
    "(or python tests/support/llama_server_build.py) builds it once into ~/.cache/gptcli",
)
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def native(smollm2):
    server = NativeLlamaServer(BINARY, smollm2)
    yield server
    server.stop()


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("mode", [["--raw", PROMPT], ["Name three colours."]])
def test_greedy_text_is_the_local_text(native, gptcli, mode):
    args = ["generate", "-t", "0", "-n", "24", *mode]
    local, remote = gptcli(*args), gptcli(*args, "--server", native.url)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and len(local.stdout) > 20


def test_json_model_logprobs_match_local(native, gptcli):
    args = ["generate", "--raw", "-t", "0", "-n", "8", "--json", PROMPT]
    local, remote = lines(gptcli(*args).stdout), lines(gptcli(*args, "--server", native.url).stdout)
    assert len(local) == len(remote) == 9
    for a, b in zip(local[:-1], remote[:-1], strict=True):
        assert (a["id"], a["bytes"]) == (b["id"], b["bytes"])  # llama-server gives ids
        assert b["model_logprob"] == pytest.approx(a["model_logprob"], abs=1e-3)
        assert [t["id"] for t in b["top_logprobs"]][:3] == [t["id"] for t in a["top_logprobs"]][:3]


def test_next_top_k_equals_local(native, gptcli):
    args = ["next", "--json", "--top", "5", "--steps", "2", PROMPT]
    local, remote = lines(gptcli(*args).stdout), lines(gptcli(*args, "--server", native.url).stdout)
    assert len(local) == len(remote) == 2
    for a, b in zip(local, remote, strict=True):
        assert [c["id"] for c in b["top"]] == [c["id"] for c in a["top"]]
        for ca, cb in zip(a["top"], b["top"], strict=True):
            assert cb["logprob"] == pytest.approx(ca["logprob"], abs=1e-3)


def test_sampled_distribution_matches_local(native, smollm2):
    # At -t 0 llama-server's greedy sampler reports the chosen token alone (1.0) where
    # gptcli shows the truncated distribution at T=1; at T=1 with the same top-k/top-p/
    # min-p the first step's sampled distribution is the same before any draw.
    from gptcli.llama.engine import Engine

    params = SamplingParams(temperature=1.0, top_k=40, top_p=0.95, min_p=0.05, seed=1)
    request = Request(PROMPT, True, None, params, 1, n_top=3, sampled_probs=True)
    with Engine(smollm2) as engine:
        (local,) = [e for e in LocalBackend(engine).start(request) if hasattr(e, "draw")]
    (remote,) = [e for e in RemoteBackend(native.url).start(request) if hasattr(e, "draw")]
    assert list(remote.draw.ids[:3]) == list(local.draw.ids[:3])
    for p_remote, p_local in zip(remote.draw.probs[:3], local.draw.probs[:3], strict=True):
        assert p_remote == pytest.approx(p_local, abs=1e-3)


def test_probs_show_the_sampled_distribution(native, gptcli):
    r = gptcli("generate", "--raw", "-t", "0", "-n", "4", "--probs", PROMPT, "--server", native.url)
    assert r.returncode == 0, r.stderr
    assert "model's probabilities" not in r.stderr  # no fallback: llama-server gives them
    assert "Paris[" in r.stdout


def test_score_says_llama_server_has_no_prompt_logprobs(native, gptcli):
    r = gptcli("score", "-", "--server", native.url, input=PROMPT)
    assert r.returncode == 1 and r.stdout == ""
    assert "no prompt log probabilities" in r.stderr and len(r.stderr.splitlines()) == 1


def test_tokenize_gives_the_local_ids(native, smollm2):
    from gptcli.llama.engine import Engine

    with Engine(smollm2) as engine:
        local = engine.tokenize(PROMPT, add_bos=False)
    assert RemoteBackend(native.url).tokenize(PROMPT) == list(local)


def test_each_line_with_4_in_flight_keeps_the_order(native, gptcli):
    text = "\n".join(f"Count to {n}:" for n in range(1, 9)) + "\n"
    args = ["generate", "--raw", "-t", "0", "-n", "8", "--each-line", "--server", native.url]
    one, four = gptcli(*args, input=text), gptcli(*args, "-j", "4", input=text)
    assert one.returncode == 0 and four.returncode == 0, four.stderr
    assert four.stdout == one.stdout and len(one.stdout.splitlines()) == 8


def test_logprobs_are_finite_or_null(native, gptcli):
    r = gptcli(
        "generate",
        "--raw",
        "-t",
        "0",
        "-n",
        "4",
        "--json",
        "--alternatives",
        "20",
        PROMPT,
        "--server",
        native.url,
    )
    for obj in lines(r.stdout)[:-1]:
        for t in obj["top_logprobs"]:
            assert t["model_logprob"] is None or math.isfinite(t["model_logprob"])

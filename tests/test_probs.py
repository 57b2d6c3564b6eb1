"""Token probabilities: `generate --probs/--json`, `next` and `score`, checked against an
independent computation (llama-cpp-python's own Llama with logits_all, numpy softmax)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import clean_env, reference_llama

PROMPT = "The capital of France is"
MULTIBYTE = "Repeat exactly: 🎉🎉 café 東京 🎉🎉"
SCORE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Tokens are the units a language model "
    "reads; each one gets a probability given everything before it. 東京 🎉\n"
)


@pytest.fixture(scope="module")
def reference(smollm2):
    """llama-cpp-python's high-level Llama, logits for every position.

    flash_attn=True because gptcli's engine keeps llama.cpp's default (auto: on for
    this CPU), while Llama() turns it off: the two differ by up to ~0.9 in a logit."""
    llm = reference_llama(smollm2, logits_all=True, n_ctx=512, flash_attn=True)

    def logprobs(tokens: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(tokens)
        s = np.array(llm.scores[: len(tokens)], dtype=np.float64)
        m = s.max(axis=1, keepdims=True)
        return s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))

    logprobs.tokenize = lambda text: llm.tokenize(text.encode(), add_bos=False)
    yield logprobs
    llm.close()


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


# -- next ---------------------------------------------------------------------------


def test_next_probabilities_equal_an_independent_softmax(gptcli, reference):
    r = gptcli("next", "--json", "--top", "10", "-t", "0.5,1,2", PROMPT)
    assert r.returncode == 0, r.stderr
    [step] = json_lines(r.stdout)
    lp = reference(reference.tokenize(PROMPT))[-1]
    assert step["top"][0]["token"] == " Paris"
    assert step["temperatures"] == [0.5, 1.0, 2.0]
    for j, t in enumerate(step["temperatures"]):
        p = np.exp(lp / t - np.logaddexp.reduce(lp / t))
        want_ids = np.argsort(-p, kind="stable")[:10]
        assert [c["id"] for c in step["top"]] == [int(i) for i in want_ids]
        for c in step["top"]:
            assert c["probs"][j] == pytest.approx(p[c["id"]], abs=1e-4)
        cum = [c["cumulative"][j] for c in step["top"]]
        assert cum == sorted(cum) and cum[-1] <= 1.0
        entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
        assert step["entropy_bits"][j] == pytest.approx(entropy, abs=1e-3)
    for c in step["top"]:
        assert c["logprob"] == pytest.approx(lp[c["id"]], abs=1e-4)


def test_next_chart_shows_paris_first_with_its_numbers(gptcli, reference):
    r = gptcli("next", "--top", "3", PROMPT)
    assert r.returncode == 0, r.stderr
    p_paris = math.exp(reference(reference.tokenize(PROMPT))[-1][reference.tokenize(" Paris")[0]])
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert rows[0][1] == "␣Paris" and float(rows[0][2]) == pytest.approx(p_paris, abs=1e-4)
    assert "entropy" in r.stdout and "bits" in r.stdout


def test_next_steps_walk_greedily(gptcli, reference):
    r = gptcli("next", "--json", "--steps", "3", "--top", "2", PROMPT)
    assert r.returncode == 0, r.stderr
    steps = json_lines(r.stdout)
    assert [s["step"] for s in steps] == [0, 1, 2]
    tokens = reference.tokenize(PROMPT)
    assert [s["position"] for s in steps] == [len(tokens), len(tokens) + 1, len(tokens) + 2]
    # Each step's distribution is the one after the greedy choices before it.
    walked = tokens + [steps[0]["top"][0]["id"], steps[1]["top"][0]["id"]]
    lp = reference(walked)
    for k, s in enumerate(steps):
        row = lp[len(tokens) - 1 + k]
        assert s["top"][0]["id"] == int(np.argmax(row))
        assert s["top"][0]["probs"][0] == pytest.approx(math.exp(row.max()), abs=1e-4)


def test_next_on_an_empty_prompt_uses_bos_and_says_so(gptcli):
    r = gptcli("next", "--top", "2", "")
    assert r.returncode == 0, r.stderr
    assert "BOS" in r.stderr
    assert len([ln for ln in r.stdout.splitlines() if ln.strip()[:1].isdigit()]) == 2


def test_next_reads_stdin_and_chat_template(gptcli):
    piped = gptcli("next", "--json", "--top", "1", input=PROMPT)
    assert piped.returncode == 0, piped.stderr
    assert json_lines(piped.stdout)[0]["top"][0]["token"] == " Paris"
    chat = gptcli("next", "--json", "--chat", "--top", "1", PROMPT)
    assert chat.returncode == 0, chat.stderr
    # The template adds tokens around the prompt.
    assert json_lines(chat.stdout)[0]["position"] > json_lines(piped.stdout)[0]["position"]


# -- generate --json / --probs ----------------------------------------------------------


def test_generate_json_lines_follow_greedy_choices(gptcli, reference):
    r = gptcli("generate", "--json", "--raw", "-t", "0", "-n", "12", "--alternatives", "4", PROMPT)
    assert r.returncode == 0, r.stderr
    *tokens, final = json_lines(r.stdout)
    assert final["finish_reason"] in ("length", "stop")
    assert final["usage"]["completion_tokens"] == len(tokens)
    assert final["usage"]["prompt_tokens"] == len(reference.tokenize(PROMPT))
    assert {"prompt_s", "generation_s", "tokens_per_s"} <= set(final["timings"])
    for obj in tokens:
        assert obj["top_logprobs"][0]["id"] == obj["id"]
        assert len(obj["top_logprobs"]) == 4
        assert bytes(obj["bytes"]).decode("utf-8", "backslashreplace") == obj["token"]
        assert obj["logprob"] <= 0 and obj["model_logprob"] <= 0
        model_mass = sum(math.exp(a["model_logprob"]) for a in obj["top_logprobs"])
        sampled = [a["logprob"] for a in obj["top_logprobs"] if a["logprob"] is not None]
        assert model_mass <= 1 + 1e-9 and sum(math.exp(x) for x in sampled) <= 1 + 1e-9
    # The model's probability is the one at the step that produced the token.
    ids = reference.tokenize(PROMPT) + [t["id"] for t in tokens]
    lp = reference(ids[:-1])
    n = len(reference.tokenize(PROMPT))
    for k, obj in enumerate(tokens):
        assert obj["model_logprob"] == pytest.approx(lp[n - 1 + k][obj["id"]], abs=1e-4)
    plain = gptcli("generate", "--raw", "-t", "0", "-n", "12", PROMPT)
    assert b"".join(bytes(t["bytes"]) for t in tokens).decode() == plain.stdout.rstrip("\n")


def test_multibyte_text_keeps_its_bytes_in_json_and_probs(gptcli):
    args = ("generate", "--raw", "-t", "0", "-n", "24", MULTIBYTE)
    plain = gptcli(*args)
    assert plain.returncode == 0, plain.stderr
    assert any(ord(ch) > 0x2000 for ch in plain.stdout), "the greedy text should hold emoji/CJK"
    js = gptcli(*args, "--json")
    tokens = json_lines(js.stdout)[:-1]
    joined = b"".join(bytes(t["bytes"]) for t in tokens).decode("utf-8")
    # generate ends a line the text left open with one newline of its own
    assert plain.stdout == (joined if joined.endswith("\n") else joined + "\n")
    partial = [t for t in tokens if "\\x" in t["token"]]
    assert partial, "some token should carry part of a character"
    assert all("\ufffd" not in t["token"] for t in tokens)
    probs = gptcli(*args, "--probs")
    assert probs.returncode == 0, probs.stderr
    # Plain rendering: each released piece followed by [p] or [p,q] for a split character.
    stripped = re.sub(r"\[(?:[0-9.e-]+,)*[0-9.e-]+\]", "", probs.stdout)
    assert stripped == plain.stdout
    assert re.search(r"\[[0-9.e-]+,[0-9.e-]+", probs.stdout), "a split character lists each"


def test_probs_model_kind_shows_the_raw_softmax(gptcli, reference):
    p_paris = math.exp(reference(reference.tokenize(PROMPT))[-1].max())
    for flag in (("--probs=model",), ("--probs", "--probs-kind", "model")):
        r = gptcli("generate", "--raw", "-t", "0", "-n", "1", *flag, PROMPT)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f" Paris[{p_paris:.2f}]\n"
    # At temperature 0 the sampled distribution is the truncated one: Paris gets more.
    sampled = gptcli("generate", "--raw", "-t", "0", "-n", "1", "--probs", PROMPT)
    assert float(sampled.stdout.split("[")[1].rstrip("]\n")) > p_paris


def test_probs_alternatives_list_the_runners_up(gptcli):
    r = gptcli("generate", "--raw", "-t", "0", "-n", "3", "--probs", "--alternatives", "3", PROMPT)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("␣Paris") and "␣the" in lines[0].split("│")[1]
    assert all(len(ln.split("│")[1].split()) == 6 for ln in lines)  # 3 x (token, prob)


def test_probs_are_coloured_on_a_terminal(gptcli):
    env = clean_env(FORCE_COLOR="1")
    del env["NO_COLOR"]
    r = gptcli("generate", "--raw", "-t", "0", "-n", "4", "--probs", PROMPT, env=env)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" in r.stdout and "[0." not in r.stdout
    assert "high" in r.stderr and "low" in r.stderr  # the legend


def test_probs_renderer_streams_a_generation(tiny_model):
    """The renderer chat reuses: same interface as TextRenderer, same text."""
    import io

    from gptcli.backends.events import TokenEvent
    from gptcli.backends.generation import Generation
    from gptcli.llama.engine import Engine
    from gptcli.render.stream import TextRenderer
    from gptcli.render.tokens import ProbsRenderer
    from gptcli.sampling.sampler import Sampler, SamplingParams

    with Engine(tiny_model) as engine:
        prompt = engine.tokenize("Hello there")
        outs = []
        for make in (
            lambda o: TextRenderer(o),
            lambda o: ProbsRenderer(o, colour=False),
            lambda o: ProbsRenderer(o, colour=True, use_model_probs=True),
        ):
            out = io.StringIO()
            renderer = make(out)
            gen = Generation(
                engine,
                prompt,
                Sampler(SamplingParams(temperature=1.0, seed=5), engine.n_vocab),
                max_tokens=20,
                n_top=getattr(renderer, "n_top", 0),
                model_probs=getattr(renderer, "model_probs", False),
            )
            finish = None
            for ev in gen:
                if isinstance(ev, TokenEvent):
                    renderer.token(ev)
                else:
                    finish = ev
            renderer.finish(finish)
            outs.append(out.getvalue())
    text, numbered, coloured = outs
    assert re.sub(r"\[(?:[0-9.e-]+,)*[0-9.e-]+\]", "", numbered) == text
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == text and "\x1b[" in coloured


# -- score -------------------------------------------------------------------------------


def test_score_perplexity_equals_an_independent_computation(gptcli, reference):
    r = gptcli("score", "--json", input=SCORE_TEXT)
    assert r.returncode == 0, r.stderr
    *tokens, summary = json_lines(r.stdout)
    ids = [t["id"] for t in tokens]
    assert ids == reference.tokenize(SCORE_TEXT)
    lp = reference(ids)
    nll = -np.array([lp[i - 1][ids[i]] for i in range(1, len(ids))])
    assert summary["perplexity"] == pytest.approx(math.exp(nll.mean()), rel=1e-3)
    assert summary["mean_surprisal_bits"] == pytest.approx(nll.mean() / math.log(2), rel=1e-3)
    assert summary["scored_tokens"] == len(ids) - 1
    assert tokens[0]["logprob"] is None
    worst = min(range(1, len(ids)), key=lambda i: tokens[i]["logprob"])
    assert summary["least_likely"][0]["index"] == worst


def test_score_in_windows_gives_each_token_half_a_context_or_more(gptcli, smollm2):
    text = SCORE_TEXT * 3
    r = gptcli("score", "--json", "--ctx", "32", input=text)
    assert r.returncode == 0, r.stderr
    *tokens, summary = json_lines(r.stdout)
    ids = [t["id"] for t in tokens]
    assert summary["scored_tokens"] == len(ids) - 1 > 64
    # Independently: windows of 32 tokens every 16; a token after the first window
    # is scored in the window where it falls in the second half. The same batch size
    # as the engine's (32), since llama.cpp's numbers move a little with it.
    llm = reference_llama(
        smollm2, logits_all=True, n_ctx=32, n_batch=32, n_ubatch=32, flash_attn=True
    )
    nll, rows, window = [], None, None
    for i in range(1, len(ids)):
        start = 0 if i < 32 else (i // 16 - 1) * 16
        if start != window:  # one evaluation per window, every row kept
            window = start
            llm.reset()
            llm.eval(ids[start : start + 32])
            rows = np.array(llm.scores[: len(ids[start : start + 32])], dtype=np.float64)
        row = rows[i - start - 1]
        want = row[ids[i]] - np.logaddexp.reduce(row)
        assert tokens[i]["logprob"] == pytest.approx(want, abs=1e-3), i
        nll.append(-want)
    llm.close()
    assert summary["perplexity"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-3)


def test_score_text_output_colours_every_token_and_summarises(gptcli, tmp_path):
    f = tmp_path / "text.txt"
    f.write_text(SCORE_TEXT, encoding="utf-8")
    r = gptcli("score", "--worst", "3", str(f))
    assert r.returncode == 0, r.stderr
    body, _, tail = r.stdout.partition("\n\nleast likely")
    assert re.sub(r"\[(?:[0-9.e-]+,)*[0-9.e-]+\]", "", body + "\n") == SCORE_TEXT
    assert len(re.findall(r"^\s+\d+\s", tail, flags=re.M)) == 3
    assert re.search(r"perplexity [0-9.]+ · mean surprisal [0-9.]+ bits", tail)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["generate", "--probs", "--alternatives", "0", "x"], "--alternatives"),
        (["generate", "--probs", "--alternatives", "100000", "x"], "vocabulary"),
        (["generate", "--alternatives", "3", "x"], "--alternatives needs"),
        (["generate", "--probs=maybe", "x"], "--probs-kind"),
        (["generate", "--probs", "--json", "x"], "--json"),
        (["next", "--top", "0", "x"], "--top"),
        (["next", "--top", "100000", "x"], "vocabulary"),
        (["next", "-t", "0.5,-1", "x"], "temperature"),
        (["next", "-t", "0.5,hot", "x"], "temperature"),
        (["next", "--steps", "0", "x"], "--steps"),
        (["next"], "empty prompt"),
        (["score", "/no/such/text.txt"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(gptcli, tiny_model, args, needle):
    r = gptcli(*args, "-m", str(tiny_model))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("text", ["", "   \n", "x"])
def test_score_refuses_empty_or_unscorable_text(gptcli, tiny_model, text):
    r = gptcli("score", "-m", str(tiny_model), input=text)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_score_refuses_text_longer_than_memory_allows(tiny_model, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gptcli.backends import scoring
    from gptcli.cli import app

    # Pretend there is little memory: the refusal must come before reading it all.
    monkeypatch.setattr(scoring, "available_memory", lambda: 64 << 20)
    big = tmp_path / "big.txt"
    big.write_bytes(b"word " * (1 << 20) * 2)
    result = CliRunner().invoke(app, ["score", "-m", str(tiny_model), str(big)])
    assert result.exit_code == 2
    assert "memory" in result.output


def test_distribution_helpers_on_known_cases():
    from gptcli.sampling.distribution import entropy_bits, parse_temperatures, perplexity, probs_at

    assert entropy_bits(np.full(8, 1 / 8)) == pytest.approx(3.0)
    assert perplexity(np.log(np.full(5, 0.25))) == pytest.approx(4.0)
    greedy = probs_at(np.array([0.1, 2.0, 0.5]), 0)
    assert greedy.tolist() == [0.0, 1.0, 0.0]
    assert parse_temperatures("0.5, 1,2") == [0.5, 1.0, 2.0]
    for bad in ("", "a", "1,-2", "nan"):
        with pytest.raises(ValueError):
            parse_temperatures(bad)

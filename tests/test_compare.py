"""`gptcli compare A B`: KL(A‖B) per token, top-token agreement, p(actual) under each,
and llama-perplexity --kl-divergence's summary.

Oracles: llama-perplexity itself (--kl-divergence-base then --kl-divergence, same text and
chunking) on the embedded model and a Q8_0 made from it by llama-quantize; two one-layer
models whose logits are a matrix product written by the test (KL computed in numpy);
`score`'s own log probabilities; numpy's percentile and median; closed forms.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import textwrap as stdlib_textwrap
from pathlib import Path

import numpy as np
import pytest
from support.llama_server_build import find
from support.tinymodel import Tokenizer, write_tiny_model

from gptcli.backends.comparison import (
    chunk_passes,
    compare_models,
    kl_rows,
    median,
    percentile,
    sliding_passes,
    summarize,
    targets,
)
from gptcli.backends.scoring import score_tokens
from gptcli.errors import UsageError
from gptcli.llama.engine import Engine, EngineOptions

# -- which tokens are scored -------------------------------------------------------------


@pytest.mark.parametrize(("n", "window"), [(2, 8), (9, 8), (40, 8), (41, 9), (100, 16)])
def test_windows_score_every_token_but_the_first_once(n, window):
    assert targets(sliding_passes(n, window)).tolist() == list(range(1, n))


@pytest.mark.parametrize(("n", "ctx"), [(256, 64), (300, 64), (129, 8)])
def test_chunks_score_the_second_half_of_each_and_drop_the_rest(n, ctx):
    passes = chunk_passes(n, ctx, bos=None)
    assert len(passes) == n // ctx
    # llama-perplexity: rows first = ctx/2 .. ctx-2, ctx - 1 - ctx/2 of them per chunk
    expected = [c * ctx + j + 1 for c in range(n // ctx) for j in range(ctx // 2, ctx - 1)]
    assert targets(passes).tolist() == expected


# -- the math ------------------------------------------------------------------------------


def test_kl_of_two_coins_is_the_closed_form():
    a, b = 0.8, 0.3
    logits_a = np.log([[a, 1 - a]])
    logits_b = np.log([[b, 1 - b]]) + 5.0  # a shift of the logits changes nothing
    expected = a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
    assert kl_rows(logits_a, logits_b)[0] == pytest.approx(expected, rel=1e-12)


def test_equal_rows_give_exactly_zero():
    rows = np.random.default_rng(1).normal(size=(5, 1000)).astype(np.float32) * 8
    assert kl_rows(rows, rows.copy()).tolist() == [0.0] * 5


def test_percentile_and_median_are_numpys_linear_ones():
    v = np.sort(np.random.default_rng(2).exponential(size=501))
    for q in (0.01, 0.5, 0.9, 0.99, 0.999):
        assert percentile(v, q) == pytest.approx(np.percentile(v, 100 * q), rel=1e-6)
    assert median(v) == np.median(v)
    assert median(v[:-1]) == np.median(v[:-1])


def test_summary_from_known_values():
    kl = np.array([0.0, 0.1, 0.2, 0.3] * 5)
    lp_a = np.log(np.full(20, 0.5))
    lp_b = np.log(np.full(20, 0.25))
    top_a = np.arange(20)
    top_b = np.where(np.arange(20) < 15, top_a, -1)
    s = summarize(kl, lp_a, lp_b, top_a, top_b)
    assert s.mean_kl[0] == pytest.approx(0.15)
    assert s.mean_kl[1] == pytest.approx(math.sqrt(0.0125 / 19))  # population var / (n-1)
    assert s.top1_agreement[0] == 0.75
    assert s.top1_agreement[1] == pytest.approx(math.sqrt(0.75 * 0.25 / 19))
    assert s.rms_dp[0] == pytest.approx(0.25)
    assert (s.ppl_a[0], s.ppl_b[0]) == pytest.approx((2.0, 4.0))
    assert s.ln_ppl_ratio[0] == pytest.approx(math.log(2))
    assert s.max_kl == 0.3 and s.median_kl == pytest.approx(0.15)


# -- real models ----------------------------------------------------------------------------


def engine_opener(path):
    return lambda n_ctx: Engine(path, EngineOptions(n_ctx=n_ctx, n_threads=1))


def run_compare(a, b, text, **kwargs):
    vocab = lambda: Engine(b, EngineOptions(vocab_only=True))  # noqa: E731
    return compare_models(engine_opener(a), engine_opener(b), vocab, text, **kwargs)


TEXT = (
    "The quick brown fox jumps over the lazy dog. A language model reads a text one "
    "token at a time and, at every position, gives each token of its vocabulary a "
    "probability of coming next. Two quantizations of the same model should agree "
    "almost everywhere; where they do not is worth a look.\n"
)


@pytest.fixture(scope="module")
def passthrough_pair(tmp_path_factory, tokenizer):
    """Two one-layer models whose logits after token t are out @ rmsnorm(embd[t]):
    the same embeddings, output matrices that differ by noise."""
    from support.hostile import write_passthrough_model

    rng = np.random.default_rng(7)
    n_vocab, d = len(tokenizer.tokens), 64
    embd = rng.normal(size=(n_vocab, d)).astype(np.float16)
    out_a = (rng.normal(size=(n_vocab, d)) * 0.5).astype(np.float16)
    out_b = (out_a + rng.normal(size=(n_vocab, d)) * 0.15).astype(np.float16)
    folder = tmp_path_factory.mktemp("pair")
    a = write_passthrough_model(folder / "a.gguf", tokenizer, embd, out_a, "pair-a")
    b = write_passthrough_model(folder / "b.gguf", tokenizer, embd, out_b, "pair-b")
    return a, b, embd.astype(np.float64), out_a.astype(np.float64), out_b.astype(np.float64)


def test_kl_and_agreement_are_those_of_the_written_matrices(passthrough_pair):
    a, b, embd, out_a, out_b = passthrough_pair
    c = run_compare(a, b, TEXT).result
    x = embd[c.tokens]
    x = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5)  # the RMS norm
    rows = c.positions - 1  # the token before each scored one
    la = x[rows] @ out_a.T
    lb = x[rows] @ out_b.T
    lpa = la - np.log(np.exp(la).sum(axis=1, keepdims=True))  # float64, directly
    lpb = lb - np.log(np.exp(lb).sum(axis=1, keepdims=True))
    expected = (np.exp(lpa) * (lpa - lpb)).sum(axis=1)
    assert len(c.kl) == len(c.tokens) - 1
    # llama.cpp's activations pass through f16/q8 on the way: about 1% either way
    np.testing.assert_allclose(c.kl, expected, rtol=0.03, atol=1e-4)
    assert c.kl.mean() == pytest.approx(expected.mean(), rel=0.01)
    agree = (la.argmax(axis=1) == lb.argmax(axis=1)).mean()
    assert c.summary().top1_agreement[0] == pytest.approx(agree, abs=2 / len(c.kl))
    ids = np.asarray(c.tokens)[c.positions]
    np.testing.assert_allclose(
        c.logprob_b, lb[np.arange(len(ids)), ids] - np.log(np.exp(lb).sum(axis=1)), atol=0.02
    )


def test_the_worst_positions_are_the_largest_kl_with_both_top_lists(passthrough_pair):
    a, b, *_ = passthrough_pair
    c = run_compare(a, b, TEXT, worst=4).result
    order = np.argsort(-c.kl, kind="stable")[:4]
    assert [w.index for w in c.worst] == c.positions[order].tolist()
    for w in c.worst:
        slot = c.positions.tolist().index(w.index)
        assert w.top_a[0][0] == c.top_a[slot] and w.top_b[0][0] == c.top_b[slot]
        assert [p for _, p in w.top_a] == sorted((p for _, p in w.top_a), reverse=True)


def test_windows_give_scores_own_log_probabilities(tiny_model, tiny_model_factory):
    other = tiny_model_factory("other-seed", seed=3)
    text = TEXT * 12  # past one 512-token context: several windows
    c = run_compare(tiny_model, other, text).result
    with Engine(tiny_model, EngineOptions(n_threads=1)) as e:
        assert c.tokens == e.tokenize(text)
        scores = score_tokens(e, c.tokens)
    assert len(c.tokens) > e.n_ctx
    # the same logits (same windows), one rounding of another log-softmax formula apart
    np.testing.assert_allclose(c.logprob_a, scores.logprobs[1:], rtol=1e-12, atol=0)


def test_identical_files_give_exactly_zero_and_full_agreement(tiny_model, tmp_path):
    twin = tmp_path / "twin.gguf"
    shutil.copyfile(tiny_model, twin)
    c = run_compare(tiny_model, twin, TEXT * 3, ctx=64).result
    assert c.kl.tolist() == [0.0] * len(c.kl)
    s = c.summary()
    assert s.mean_kl == (0.0, 0.0) and s.top1_agreement[0] == 1.0 and s.max_kl == 0.0


def test_a_text_shorter_than_one_chunk_is_refused(tiny_model):
    with pytest.raises(UsageError, match=r"^the text is \d+ tokens: --ctx 512 needs"):
        run_compare(tiny_model, tiny_model, TEXT, ctx=512)


@pytest.fixture(scope="module")
def other_vocabulary(tmp_path_factory, tokenizer) -> Path:
    """The same number of tokens, two of them swapped: same size, another vocabulary."""
    tokens = list(tokenizer.tokens)
    tokens[1000], tokens[1001] = tokens[1001], tokens[1000]
    swapped = Tokenizer(
        tokens, tokenizer.token_types, tokenizer.merges, tokenizer.bos_id, tokenizer.eos_id,
        tokenizer.pre,
    )  # fmt: skip
    return write_tiny_model(tmp_path_factory.mktemp("vocab") / "swapped.gguf", swapped)


# -- the command ------------------------------------------------------------------------------


def test_another_vocabulary_is_refused_in_one_line(gptcli, tiny_model, other_vocabulary):
    r = gptcli("compare", str(tiny_model), str(other_vocabulary), "--threads", "1", input=TEXT)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert "have different vocabularies" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("recorded", ["llama-server-score", "vllm-score", "ollama"])
def test_a_server_is_refused_through_the_capability_table(gptcli, recorded):
    from support.serverfixture import ReplayServer

    server = ReplayServer()  # recorded replies of real servers
    try:
        r = gptcli("compare", "a", "b", "--server", server.url(recorded), input=TEXT)
    finally:
        server.stop()
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert "does not give the whole next-token distribution" in r.stderr
    assert "compare needs every token's probability" in r.stderr


def test_piped_output_is_plain_text_with_the_summary(gptcli, passthrough_pair):
    a, b, *_ = passthrough_pair
    r = gptcli("compare", str(a), str(b), "--worst", "3", "--threads", "1", input=TEXT)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    assert re.search(r"^The\[?", r.stdout)  # the first token: no context, no number
    assert re.search(r"␣fox\S*|fox\[\d", r.stdout)
    rows = r.stdout.split("most different tokens")[1].splitlines()[2:5]
    assert len(rows) == 3 and all("│" in row for row in rows)
    assert re.search(r"^mean KL\(A‖B\) +\d\.\d{6} ± \d\.\d{6} nats", r.stdout, re.M)
    assert re.search(r"^same top token +\d+\.\d{3} ± ", r.stdout, re.M)


def test_json_has_the_summary_and_a_row_per_token(gptcli, passthrough_pair):
    a, b, *_ = passthrough_pair
    r = gptcli("compare", str(a), str(b), "--json", "--worst", "2", "--threads", "1", input=TEXT)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    s = doc["summary"]
    rows = doc["tokens"]
    scored = [t for t in rows if t["kl_bits"] is not None]
    assert rows[0]["kl_bits"] is None and len(scored) == len(rows) - 1
    assert s["mean_kl"] == pytest.approx(np.mean([t["kl_bits"] for t in scored]) * math.log(2))
    assert s["top1_agreement"] == pytest.approx(np.mean([t["same_top"] for t in scored]))
    assert 0 <= s["top1_agreement"] <= 1
    assert len(doc["worst"]) == 2 and len(doc["worst"][0]["top_a"]) == 3


def test_bad_options_are_one_line(gptcli, tiny_model):
    r = gptcli("compare", str(tiny_model), str(tiny_model), "--worst", "-1", input=TEXT)
    assert (r.returncode, r.stderr.strip()) == (
        2,
        "gptcli: error: --worst must be 0 or more, got -1",
    )
    r = gptcli("compare", str(tiny_model), "missing.gguf", input=TEXT)
    assert r.returncode == 1 and "model not found: missing.gguf" in r.stderr


# -- the oracle: llama-perplexity --kl-divergence ---------------------------------------------

PERPLEXITY = find("llama-perplexity")
QUANTIZE = find("llama-quantize")
needs_tools = pytest.mark.skipif(
    PERPLEXITY is None or QUANTIZE is None,
    reason="llama-perplexity/llama-quantize not built (python tests/support/llama_server_build.py)",
)
CTX = 64


@pytest.fixture(scope="module")
def q8_0(smollm2, tmp_path_factory) -> Path:
    """The embedded Q4_1 model re-quantized to Q8_0, once per session."""
    out = tmp_path_factory.mktemp("quant") / "smollm2-q8_0.gguf"
    subprocess.run(
        [str(QUANTIZE), "--allow-requantize", str(smollm2), str(out), "Q8_0", "1"],
        check=True,
        capture_output=True,
    )
    return out


def oracle_text(path: Path) -> Path:
    # Prose and code with a fixed content: the standard library's textwrap module.
    # 1400 characters: 360 tokens, five chunks of 64, 160 tokens scored (100 needed).
    path.write_text(Path(stdlib_textwrap.__file__).read_text()[:1400])
    return path


def llama_kld(base, other, text: Path, folder: Path) -> dict[str, float]:
    """llama-perplexity's own numbers: base logits, then KL of `other` against them. One
    sequence per batch (-b = -c), as gptcli evaluates: packing 2048/c sequences into one
    batch moves llama.cpp's own numbers by about 2%."""
    base_file = folder / "base.kld"
    common = ["-f", str(text), "-c", str(CTX), "-b", str(CTX), "-t", "1"]
    subprocess.run(
        [str(PERPLEXITY), "-m", str(base), *common, "--kl-divergence-base", str(base_file)],
        check=True,
        capture_output=True,
    )
    r = subprocess.run(
        [str(PERPLEXITY), "-m", str(other), *common, "--kl-divergence-base", str(base_file)]
        + ["--kl-divergence"],
        check=True,
        capture_output=True,
        text=True,
    )
    log = r.stdout + r.stderr
    mean = re.search(r"Mean\s+KLD:\s+([0-9.]+)", log)
    same = re.search(r"Same top p:\s+([0-9.]+)", log)
    assert mean and same, log[-2000:]
    return {"mean_kl": float(mean.group(1)), "top1": float(same.group(1)) / 100}


@pytest.fixture(scope="module")
def oracle(smollm2, q8_0, tmp_path_factory):
    """(text file, llama-perplexity's numbers on it)."""
    folder = tmp_path_factory.mktemp("oracle")
    text = oracle_text(folder / "text.txt")
    return text, llama_kld(smollm2, q8_0, text, folder)


@needs_tools
def test_mean_kl_and_same_top_equal_llama_perplexity(gptcli, smollm2, q8_0, oracle):
    # Through the command: it runs compare_models, so one run checks both (the same
    # comparison run in-process as well took 25 s more of the suite).
    text, expected = oracle
    r = gptcli("compare", str(smollm2), str(q8_0), str(text), "--ctx", str(CTX), "--json",
               "--threads", "1", timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    # llama-perplexity prints its summary from 100 tokens on
    assert sum(t["kl_bits"] is not None for t in doc["tokens"]) >= 100
    s = doc["summary"]
    assert s["mean_kl"] == pytest.approx(expected["mean_kl"], rel=0.02)
    assert s["top1_agreement"] == pytest.approx(expected["top1"], rel=0.02)

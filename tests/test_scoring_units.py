"""gptcli/backends/scoring.py in-process: reading the text to score, and scoring in windows and
batches of the context.

Oracles: llama-cpp-python's own logits (conftest.reference_llama) turned into log
probabilities in float64, the documented window rule (windows of a context overlap by
half of one), a model whose one poisoned token makes every later row NaN, and the
messages a user reads.
"""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest
from conftest import reference_llama
from support.hostile import write_logit_model

from gptcli.backends import scoring
from gptcli.backends.scoring import Scores, max_text_bytes, read_text, score_tokens
from gptcli.errors import UsageError
from gptcli.llama.engine import Engine, EngineOptions
from gptcli.sampling.sampler import NonFiniteLogits

# -- reading the text ------------------------------------------------------------------


class Stdin:
    """A piped stdin: bytes under .buffer (or text only, as some wrappers give)."""

    def __init__(self, data: bytes, tty: bool = False, text_only: bool = False):
        if text_only:
            self._text = io.StringIO(data.decode())
        else:
            self.buffer = io.BytesIO(data)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty

    def read(self, n: int) -> str:
        return self._text.read(n)


def refused(match: str):
    return pytest.raises(UsageError, match=f"^{match}$")


def test_a_file_is_read_as_utf8(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes("naïve café\n".encode())
    assert read_text(f) == "naïve café\n"


def test_file_errors_name_the_file(tmp_path):
    with refused(f"no such file: {tmp_path / 'missing.txt'}") as e:
        read_text(tmp_path / "missing.txt")
    assert e.value.exit_code == 2
    with refused(f"{tmp_path} is a directory"):
        read_text(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xffdef")
    with refused(f"{bad} is not valid UTF-8 \\(byte 3\\)"):
        read_text(bad)
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t\n")
    with refused(f"empty text: {blank} holds nothing to score"):
        read_text(blank)


def test_an_unreadable_path_is_one_line(tmp_path):
    looped = tmp_path / "loop"
    looped.symlink_to(looped)  # ELOOP: an OSError that is neither missing nor a directory
    with refused(f"cannot read {looped}: Too many levels of symbolic links"):
        read_text(looped)


def test_stdin_is_read_for_no_file_or_dash(monkeypatch):
    monkeypatch.setattr(sys, "stdin", Stdin("über\n".encode()))
    assert read_text(None) == "über\n"
    monkeypatch.setattr(sys, "stdin", Stdin(b"dash"))
    assert read_text("-") == "dash"
    monkeypatch.setattr(sys, "stdin", Stdin("text only ✓".encode(), text_only=True))
    assert read_text(None) == "text only ✓"


@pytest.mark.parametrize("stdin", [None, Stdin(b"x", tty=True)], ids=["closed", "terminal"])
def test_no_piped_text_is_a_usage_error(monkeypatch, stdin):
    monkeypatch.setattr(sys, "stdin", stdin)
    with refused("no text: give FILE or pipe text on stdin"):
        read_text(None)


def test_stdin_errors_say_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", Stdin(b"ok \xc3("))
    with refused("stdin is not valid UTF-8 \\(byte 3\\)"):
        read_text(None)
    monkeypatch.setattr(sys, "stdin", Stdin(b"\n\n"))
    with refused("empty text: stdin holds nothing to score"):
        read_text(None)


def test_text_beyond_the_memory_limit_is_refused_before_it_is_read(monkeypatch, tmp_path):
    monkeypatch.setattr(scoring, "available_memory", lambda: 0)
    assert max_text_bytes() == 1 << 20  # the floor: 1 MiB whatever memory says
    fits = tmp_path / "fits.txt"
    fits.write_bytes(b"a" * (1 << 20))
    assert len(read_text(fits)) == 1 << 20
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * 1_200_000)
    message = (
        "the text is 1.2 MB; scoring more than 1.0 MB does not fit in the memory "
        "available: split it"
    )
    with refused(message):
        read_text(big)
    monkeypatch.setattr(sys, "stdin", Stdin(b"a" * 1_200_000))
    with pytest.raises(UsageError, match="^the text is 1.0 MB; scoring more than 1.0 MB"):
        read_text(None)  # read up to the limit and one byte: the size shown is that much
    monkeypatch.setattr(sys, "stdin", Stdin(b"a" * (1 << 20)))
    assert len(read_text(None)) == 1 << 20
    # A stdin that gives text only is bounded the same way.
    monkeypatch.setattr(sys, "stdin", Stdin(b"a" * 1_200_000, text_only=True))
    with pytest.raises(UsageError, match="^the text is 1.0 MB; scoring more than 1.0 MB"):
        read_text(None)
    monkeypatch.setattr(sys, "stdin", Stdin(b"a" * (1 << 20), text_only=True))
    assert len(read_text(None)) == 1 << 20


def test_sizes_are_shown_in_megabytes_of_a_million_bytes(monkeypatch, tmp_path):
    # 1,050,000 bytes is 1.05 MB: shown as 1.1 (and the limit, 1,048,576, as 1.0).
    monkeypatch.setattr(scoring, "available_memory", lambda: 0)
    text = tmp_path / "t.txt"
    text.write_bytes(b"a" * 1_050_000)
    with refused("the text is 1.1 MB; scoring more than 1.0 MB .*"):
        read_text(text)
    monkeypatch.setattr(scoring, "available_memory", lambda: 1_050_000 * 64)
    text.write_bytes(b"a" * 1_100_000)
    with refused("the text is 1.1 MB; scoring more than 1.1 MB .*"):
        read_text(text)


def test_the_limit_is_a_64th_of_available_memory(monkeypatch):
    monkeypatch.setattr(scoring, "available_memory", lambda: 64 << 30)
    assert max_text_bytes() == 1 << 30
    monkeypatch.setattr(sys, "stdin", Stdin(b"some text"))
    assert read_text(None) == "some text"  # reading up to the limit works at this size


def test_available_memory_is_free_pages_times_page_size(monkeypatch):
    import os

    real = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert scoring.available_memory() == pytest.approx(real, rel=0.2)  # it moves a little
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(scoring.os, "sysconf", pages.__getitem__)
    assert scoring.available_memory() == 4_096_000

    def missing(name):
        raise ValueError(name)  # as on a platform without SC_AVPHYS_PAGES

    monkeypatch.setattr(scoring.os, "sysconf", missing)
    assert scoring.available_memory() == 8 << 30


# -- the figures from given log probabilities ------------------------------------------------


def test_scores_figures_from_known_log_probabilities():
    lp = np.array([math.nan, -1.0, -3.0, -0.5, -3.0, -2.0])
    s = Scores([5, 6, 7, 8, 9, 10], lp, np.zeros(6, dtype=np.int64), np.zeros(6))
    assert s.scored.tolist() == [-1.0, -3.0, -0.5, -3.0, -2.0]
    assert s.perplexity() == pytest.approx(math.exp(9.5 / 5), rel=1e-12)
    assert s.mean_surprisal_bits() == pytest.approx(9.5 / 5 / math.log(2), rel=1e-12)
    assert s.least_likely(3) == [2, 4, 5]  # equal log probabilities: the earlier first
    assert s.least_likely(10) == [2, 4, 5, 1, 3]
    # Many ties, as a repeated token gives: still in text order.
    lp = np.full(301, -1.0)
    lp[0], lp[150] = math.nan, -2.0
    many = Scores(list(range(301)), lp, np.zeros(301, dtype=np.int64), np.zeros(301))
    assert many.least_likely(4) == [150, 1, 2, 3]


# -- windows and batches -------------------------------------------------------------


N_CTX, N_BATCH = 256, 100  # batches of 100 in windows of 256, rows turned 64 at a time


@pytest.fixture(scope="module")
def long_tokens():
    return np.random.default_rng(11).integers(100, 5000, size=300).tolist()


def reference_rows(path, tokens):
    """(i, llama-cpp-python's logits row predicting token i) for every scored token, in
    score's windows: tokens 1..255 in the first, the others in the window starting half a
    context later, so each sees at least half a context before it."""
    llm = reference_llama(
        path,
        logits_all=True,
        flash_attn=True,
        n_ctx=N_CTX,
        n_batch=N_BATCH,
        n_ubatch=N_BATCH,
        n_threads=1,
    )
    try:
        for start, first, end in [(0, 1, N_CTX), (N_CTX // 2, N_CTX, len(tokens))]:
            llm.reset()
            part = tokens[start : start + N_CTX]
            llm.eval(part)
            rows = np.array(llm.scores[: len(part)], dtype=np.float64)
            for i in range(first, end):
                yield i, rows[i - start - 1]
    finally:
        llm.close()


def test_windows_and_batches_give_llama_cpp_pythons_numbers(tiny_model, long_tokens):
    tokens = long_tokens
    opts = EngineOptions(n_ctx=N_CTX, n_batch=N_BATCH, n_threads=1)
    with Engine(tiny_model, opts) as engine:
        scores = score_tokens(engine, tokens)
        assert engine.n_past == 0  # the context is left empty
    want = np.full(len(tokens), np.nan)
    best = np.full(len(tokens), np.nan)
    for i, row in reference_rows(tiny_model, tokens):
        lsm = row - np.logaddexp.reduce(row)
        want[i], best[i] = lsm[tokens[i]], lsm.max()
    assert scores.tokens == tokens
    assert math.isnan(scores.logprobs[0]) and scores.best_ids[0] == -1
    assert math.isnan(scores.best_logprobs[0])
    np.testing.assert_allclose(scores.logprobs[1:], want[1:], atol=2e-3)
    np.testing.assert_allclose(scores.best_logprobs[1:], best[1:], atol=2e-3)
    # The best token's log probability is the one its id has in the same row.
    assert np.all(scores.best_logprobs[1:] >= scores.logprobs[1:] - 1e-9)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory, tokenizer):
    """The poisoned token (id 500) makes the row it is in NaN, and every row after it."""
    path = tmp_path_factory.mktemp("nan") / "poisoned.gguf"
    return write_logit_model(path, tokenizer, favourite=501, poisoned=500)


# The poison starts a batch: llama.cpp turns a whole batch holding a NaN key to NaN.
@pytest.mark.parametrize(
    "n_ctx, n_batch, at",
    [(256, 100, 0), (256, 100, 100), (64, 16, 80), (64, 32, 96)],
    ids=["first token", "second batch", "second window, fourth batch", "third window"],
)
def test_the_first_nan_row_is_named_by_the_token_it_predicts(poisoned, n_ctx, n_batch, at):
    tokens = [501] * 300
    tokens[at] = 500
    with Engine(poisoned, EngineOptions(n_ctx=n_ctx, n_batch=n_batch, n_threads=1)) as engine:
        with pytest.raises(NonFiniteLogits) as e:
            score_tokens(engine, tokens)
    assert e.value.position == at + 1


def test_a_text_without_nan_scores_every_token_on_the_logit_model(poisoned):
    # The logit model gives token 501 the logit 64 and every other token 0.
    tokens = [501, 501, 7, 501]
    with Engine(poisoned, EngineOptions(n_ctx=16, n_threads=1)) as engine:
        s = score_tokens(engine, tokens)
        n_vocab = engine.n_vocab
    lse = 64 + math.log1p((n_vocab - 1) * math.exp(-64))
    np.testing.assert_allclose(s.logprobs[1:], [64 - lse, 0 - lse, 64 - lse], atol=0.1)
    assert s.best_ids[1:].tolist() == [501, 501, 501]


@pytest.mark.parametrize("at", [164, 260])
def test_the_nan_position_is_the_first_nan_row_llama_cpp_python_computes(poisoned, at):
    # Mid-batch, llama.cpp turns rows before the poison to NaN too (a NaN key): the
    # position named is that of the first scored row its own Python binding gives as NaN,
    # windows of 256 overlapping by 128, batches of 100, rows taken 64 at a time.
    tokens = [501] * 300
    tokens[at] = 500
    with Engine(poisoned, EngineOptions(n_ctx=N_CTX, n_batch=N_BATCH, n_threads=1)) as engine:
        with pytest.raises(NonFiniteLogits) as e:
            score_tokens(engine, tokens)
    rows = reference_rows(poisoned, tokens)
    want = next((i for i, row in rows if np.isnan(row).any()), None)
    rows.close()
    assert want is not None and want <= at + 1
    assert e.value.position == want


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory, tokenizer):
    """Token 600's row overflows to +inf (no NaN anywhere); every other row is finite."""
    from support.hostile import write_passthrough_model

    n_vocab, d = len(tokenizer.tokens), 64
    embd = np.ones((n_vocab, d), dtype=np.float16)
    embd[600] = 0.0
    embd[600, 0] = 1.0  # normalised: 8 in direction 0, where token 501's weight is 3e38
    out = np.zeros((n_vocab, d), dtype=np.float32)
    out[501, 0] = 3e38  # 3e38 x 1 is a float32; 3e38 x 8 is +inf
    path = tmp_path_factory.mktemp("inf") / "overflowing.gguf"
    return write_passthrough_model(path, tokenizer, embd, out, "overflow-model")


def test_an_infinite_row_without_nan_is_named_too(overflowing):
    tokens = [501] * 20
    tokens[10] = 600
    with Engine(overflowing, EngineOptions(n_ctx=32, n_threads=1)) as engine:
        with pytest.raises(NonFiniteLogits) as e:
            score_tokens(engine, tokens)
    assert e.value.position == 11  # the row after token 600 predicts token 11
    llm = reference_llama(overflowing, logits_all=True, n_ctx=32, n_threads=1)
    llm.eval(tokens)
    rows = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    llm.close()
    assert not np.isnan(rows).any()  # +inf alone: a check for NaN only would pass it
    assert np.isposinf(rows[10, 501]) and np.isfinite(np.delete(rows, 10, axis=0)).all()

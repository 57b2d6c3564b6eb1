"""How likely an existing text is to a model: the log probability of every token
given all the tokens before it, evaluated in batches and in windows of the context.

Windows overlap by half a context, so every token after the first window is
predicted from at least half a context of text before it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcli.errors import UsageError
from gptcli.llama.engine import Engine
from gptcli.sampling.distribution import log_softmax_rows, perplexity, surprisal_bits
from gptcli.sampling.sampler import NonFiniteLogits
from gptcli.untrusted import read_input

# Working memory per byte of text while scoring (token ids, three float arrays,
# Python objects for the rendering): a generous estimate, to refuse early.
BYTES_PER_TEXT_BYTE = 64
ROWS_AT_ONCE = 64  # logits rows turned into log probabilities at a time (memory bound)


def available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this platform
        return 8 << 30


def max_text_bytes() -> int:
    return max(1 << 20, available_memory() // BYTES_PER_TEXT_BYTE)


def read_text(file: Path | None) -> str:
    """The text to score, from FILE or stdin, refusing what memory cannot hold."""
    limit = max_text_bytes()
    if file is None or str(file) == "-":
        stdin = sys.stdin
        if stdin is None or stdin.isatty():
            raise UsageError("no text: give FILE or pipe text on stdin")
        src = stdin.buffer if hasattr(stdin, "buffer") else None
        data = src.read(limit + 1) if src else stdin.read(limit + 1).encode()
        where = "stdin"
    else:
        with contextlib.suppress(OSError):  # read_input says why it cannot be read
            size = file.stat().st_size
            if size > limit:
                too_long(size, limit)  # in the words of a text that is too long to score
        data = read_input(file, limit)  # /dev/zero: a size of 0, read for ever
        where = str(file)
    if len(data) > limit:
        too_long(len(data), limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{where} is not valid UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise UsageError(f"empty text: {where} holds nothing to score")
    return text


def too_long(size: int, limit: int) -> None:
    raise UsageError(
        f"the text is {size / 1e6:.1f} MB; scoring more than {limit / 1e6:.1f} MB "
        "does not fit in the memory available: split it"
    )


@dataclass(frozen=True)
class Scores:
    """Per token: its log probability given the tokens before it (NaN for the first,
    which has no context), and the model's most likely token at that position."""

    tokens: list[int]
    logprobs: np.ndarray
    best_ids: np.ndarray
    best_logprobs: np.ndarray

    @property
    def scored(self) -> np.ndarray:
        return self.logprobs[1:]

    def perplexity(self) -> float:
        return perplexity(self.scored)

    def mean_surprisal_bits(self) -> float:
        return surprisal_bits(float(self.scored.mean()))

    def least_likely(self, n: int) -> list[int]:
        """Indices of the n least likely scored tokens, least likely first."""
        order = np.argsort(self.scored, kind="stable")[:n]
        return [int(i) + 1 for i in order]


def score_tokens(engine: Engine, tokens: list[int]) -> Scores:
    """Log probabilities of tokens[1:], each given everything before it (up to a
    context's worth)."""
    n = len(tokens)
    logprobs = np.full(n, np.nan)
    best_ids = np.full(n, -1, dtype=np.int64)
    best_lp = np.full(n, np.nan)
    window = engine.n_ctx
    stride = max(1, window // 2)
    done = 1  # tokens[:done] are scored (the first has nothing to be scored against)
    start = 0
    ids = np.asarray(tokens, dtype=np.int64)
    while done < n:
        part = tokens[start : start + window]
        engine.reset()
        for offset, rows in engine.evaluate_all(part):
            # Row j predicts part[offset + j + 1], i.e. tokens[start + offset + j + 1].
            first = max(0, done - (start + offset + 1))
            # The last row of a window predicts past it: the next window scores that.
            last = min(len(rows), len(part) - offset - 1)
            for a in range(first, last, ROWS_AT_ONCE):
                b = min(last, a + ROWS_AT_ONCE)
                if not rows[a:b].max() < np.inf:  # NaN propagates: one reduction
                    bad = int(np.flatnonzero(~(rows[a:b].max(axis=1) < np.inf))[0])
                    raise NonFiniteLogits(start + offset + a + bad + 1)
                lp = log_softmax_rows(rows[a:b])
                at = np.arange(start + offset + a + 1, start + offset + b + 1)
                logprobs[at] = lp[np.arange(b - a), ids[at]]
                best = lp.argmax(axis=1)
                best_ids[at] = best
                best_lp[at] = lp[np.arange(b - a), best]
        done = start + len(part)
        start += stride
    engine.reset()
    return Scores(tokens, logprobs, best_ids, best_lp)

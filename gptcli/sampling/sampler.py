"""Logits in, a token out: the sampler as small pure numpy functions.

The order follows llama.cpp's default chain: repetition penalty, top-k, top-p,
min-p (these three on the probabilities at temperature 1), then temperature and a
draw. The distribution a token is drawn from is returned with it, so it can be shown.

Temperature 0 means greedy: the most likely candidate is taken, and the distribution
reported is the truncated one at temperature 1 (the numbers stay informative).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.limits import REPEAT_PENALTY_RANGE
from gptcli.sampling import defaults


class NonFiniteLogits(GptcliError):
    """The model computed NaN or infinite logits: no distribution to show or draw from."""

    def __init__(self, position: int | None = None):
        where = f" at position {position}" if position is not None else ""
        super().__init__(
            f"the model produced non-finite logits (NaN or infinity){where}: the weights "
            "or the backend compute garbage; try -ngl 0 (CPU only) or another quantization"
        )
        self.position = position


def check_logits(logits: np.ndarray, position: int | None = None) -> None:
    """Raise NonFiniteLogits unless every logit is a number below +inf.

    One reduction, no copy: the maximum is NaN when any logit is (numpy propagates
    NaN) and +inf when any is; the fastest reduction numpy has (SIMD, ~3x a sum). A
    -inf logit is allowed (a probability of exactly 0, as a grammar's forbidden tokens)."""
    if not logits.max() < math.inf:
        raise NonFiniteLogits(position)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = defaults.TEMPERATURE
    top_k: int = defaults.TOP_K  # 0: off
    top_p: float = defaults.TOP_P  # 1: off
    min_p: float = defaults.MIN_P  # 0: off
    repeat_penalty: float = defaults.REPEAT_PENALTY  # 1: off
    repeat_last_n: int = defaults.REPEAT_LAST_N
    seed: int | None = None

    def validate(self) -> SamplingParams:
        def bad(msg: str) -> None:
            raise UsageError(msg)

        t = self.temperature
        if not math.isfinite(t) or t < 0:
            bad(f"temperature must be 0 (greedy) or more, got {t}")
        if self.top_k < 0:
            bad(f"top-k must be 0 (off) or more, got {self.top_k}")
        if not (0 < self.top_p <= 1):
            bad(f"top-p must be in (0, 1], got {self.top_p}")
        if not (0 <= self.min_p <= 1):
            bad(f"min-p must be in [0, 1], got {self.min_p}")
        lo, hi = REPEAT_PENALTY_RANGE
        if not (lo <= self.repeat_penalty <= hi):  # NaN fails too
            bad(f"repeat penalty must be from {lo:g} to {hi:g}, got {self.repeat_penalty}")
        if self.repeat_last_n < 0:
            bad(f"repeat-last-n must be 0 or more, got {self.repeat_last_n}")
        if self.seed is not None and self.seed < 0:
            bad(f"seed must be 0 or more, got {self.seed}")
        return self


# -- pure functions ------------------------------------------------------------


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities (float64) from logits at a temperature (> 0), computed stably."""
    z = np.asarray(logits, dtype=np.float64)
    # A tiny temperature (-t 1e-320) sends every logit but the largest to -inf: the
    # limit, greedy, is the right answer, so numpy's overflow is not worth a warning.
    with np.errstate(over="ignore"):
        e = np.exp((z - z.max()) / temperature)
    return e / e.sum()


def logsumexp(logits: np.ndarray, out: np.ndarray | None = None) -> float:
    """log(sum(exp(logits))), stably; float32 exponentials, a float64 sum.

    out: a scratch array of the same shape and dtype, so a token loop allocates nothing."""
    m = np.max(logits)
    e = np.subtract(logits, m, out=out)
    np.exp(e, out=e)
    return float(m) + math.log(float(np.sum(e, dtype=np.float64)))


def apply_repetition_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> None:
    """In place, as llama.cpp: positive logits divided by the penalty, negative multiplied."""
    if penalty == 1.0 or not len(recent):
        return
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    v = logits[ids]
    logits[ids] = np.where(v > 0, v / penalty, v * penalty)


_BLOCK = 256  # top_k_ids: logits per block whose maximum bounds the k-th largest


def top_k_ids(
    logits: np.ndarray,
    k: int,
    *,
    maxima: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Ids of the k largest logits, largest first; equal logits by id.

    A partial sort, O(n): the k-th largest block maximum is a lower bound of the k-th
    largest logit (k distinct logits reach it), so one comparison pass leaves a few
    hundred candidates to sort instead of the vocabulary. `maxima` (n // 256 floats) and
    `mask` (n bools) are optional scratch arrays, so a token loop allocates nothing big.
    """
    n = logits.shape[0]
    if k <= 0 or k >= n:
        return np.argsort(-logits, kind="stable")
    nb = n // _BLOCK
    cand = None
    if nb >= k:
        blocks = logits[: nb * _BLOCK].reshape(nb, _BLOCK)
        m = blocks.max(axis=1, out=maxima)
        bound = np.partition(m, nb - k)[nb - k]
        if bound == -math.inf:
            # Mostly forbidden (a grammar's mask): the finite logits are the candidates;
            # fewer than k, and the rest are -inf ones by id, as a stable sort puts them.
            cand = np.flatnonzero(np.greater(logits, bound, out=mask))
            if len(cand) < k:
                ranked = cand[np.argsort(-logits[cand], kind="stable")]
                # The first k ids hold at least k - len(cand) of them: no pass over all.
                rest = np.flatnonzero(logits[:k] == bound)[: k - len(cand)]
                return np.concatenate([ranked, rest])
        else:
            cand = np.flatnonzero(np.greater_equal(logits, bound, out=mask))
        if len(cand) > 16 * k + 1024:  # a flat distribution (many equal logits): no gain
            cand = None
    if cand is None:
        # Every logit equal to the k-th largest is a candidate, not the arbitrary few an
        # argpartition would keep: ties at the cut are then decided by id, as above it.
        kth = np.partition(logits, n - k)[n - k]
        cand = np.flatnonzero(logits >= kth)
    return cand[np.argsort(-logits[cand], kind="stable")[:k]]


def top_p_count(sorted_probs: np.ndarray, p: float) -> int:
    """How many of the most likely candidates make up at least mass p (at least 1)."""
    if p >= 1.0:
        return len(sorted_probs)
    cum = np.cumsum(sorted_probs)
    return int(min(len(sorted_probs), np.searchsorted(cum, p, side="left") + 1))


def min_p_count(sorted_probs: np.ndarray, min_p: float) -> int:
    """How many candidates have probability >= min_p times the top one (at least 1)."""
    if min_p <= 0.0:
        return len(sorted_probs)
    return max(1, int(np.count_nonzero(sorted_probs >= min_p * sorted_probs[0])))


# -- the sampler -----------------------------------------------------------------


@dataclass(frozen=True)
class Alternative:
    """One of the most likely candidates at a step."""

    id: int
    model_logprob: float  # log softmax of the raw logits
    logprob: float | None  # log probability under the sampled distribution; None: cut


@dataclass(frozen=True)
class Draw:
    """A sampled token and the distribution it was drawn from."""

    token: int
    prob: float  # the token's probability under the sampled distribution
    ids: np.ndarray  # the candidates kept: most likely first, or all ids in order if none cut
    probs: np.ndarray  # their probabilities: the distribution drawn from (sums to 1)
    model_logprob: float | None = None  # filled when asked for
    top: tuple[Alternative, ...] = ()

    @property
    def logprob(self) -> float:
        return math.log(self.prob) if self.prob > 0 else float("-inf")


class Sampler:
    """Draws tokens with fixed parameters and a seeded generator."""

    def __init__(self, params: SamplingParams, n_vocab: int):
        self.params = params.validate()
        self.rng = np.random.default_rng(params.seed)
        # Scratch arrays reused every step: the token loop allocates nothing vocabulary-sized.
        self._work = np.empty(n_vocab, dtype=np.float32)  # logits after the penalty
        self._scratch = np.empty(n_vocab, dtype=np.float32)  # exponentials (logsumexp)
        self._mask = np.empty(n_vocab, dtype=bool)
        self._maxima = np.empty(n_vocab // _BLOCK, dtype=np.float32)
        self._where = np.full(n_vocab, -1, dtype=np.int64)  # id -> index in the kept set

    def _top_k(self, x: np.ndarray, k: int) -> np.ndarray:
        return top_k_ids(x, k, maxima=self._maxima, mask=self._mask)

    def _candidates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """The candidates that survive top-k and min-p bounds, most likely first, with the
        probabilities top-p is measured on (and, after top-k, their unnormalised
        exponentials, which the distribution at T=1 reuses); None when nothing can be cut."""
        p = self.params
        if 0 < p.top_k < x.shape[0]:
            ids = self._top_k(x, p.top_k)
            # As llama.cpp: top-p and min-p act on the top-k set, renormalised.
            z = x[ids].astype(np.float64)
            e = np.exp(z - z[0])  # z[0] is the largest: what softmax() computes
            return ids, e / e.sum(), e
        if p.top_p >= 1.0 and p.min_p <= 0.0:
            return None
        lse = logsumexp(x, out=self._scratch)
        if p.min_p > 0.0:
            # p >= min_p * p_max  <=>  x >= x_max + ln(min_p): bounds the set before sorting.
            keep = np.flatnonzero(np.greater_equal(x, x.max() + math.log(p.min_p), out=self._mask))
            ids = keep[np.argsort(-x[keep], kind="stable")]
            return ids, np.exp(x[ids].astype(np.float64) - lse), None
        # top-p alone: grow a partial sort until it holds the mass (exact, rarely full).
        k = 64
        while True:
            ids = self._top_k(x, k)
            probs = np.exp(x[ids].astype(np.float64) - lse)
            if probs.sum() >= p.top_p or k >= x.shape[0]:
                return ids, probs, None
            k *= 16

    def sample(
        self,
        logits: np.ndarray,
        history: Sequence[int] = (),
        *,
        n_top: int = 0,
        model_probs: bool = False,
        token: int | None = None,
    ) -> Draw:
        """Draw the next token from `logits` (the raw last-position row).

        n_top: also report the n_top most likely candidates with both probabilities.
        model_probs: also report the token's log probability under the raw softmax.
        token: drawn already (by llama.cpp's chain, from the same distribution): only
        describe the distribution and its place in it; the generator is not used.
        """
        check_logits(logits, len(history) if history else None)
        p = self.params
        x = logits  # read only, unless the penalty needs a copy to change
        if p.repeat_penalty != 1.0 and p.repeat_last_n:
            x = self._work
            np.copyto(x, logits)
            apply_repetition_penalty(x, history[-p.repeat_last_n :], p.repeat_penalty)
        temperature = p.temperature or 1.0  # greedy reports the distribution at T=1
        found = self._candidates(x)
        if found is None:
            # Nothing cut: the whole vocabulary, in id order.
            ranked = None
            ids = np.arange(x.shape[0])
            probs = softmax(x, temperature)
        else:
            ranked, base, e = found
            n = min(top_p_count(base, p.top_p), min_p_count(base, p.min_p))
            ids = ranked[:n]
            if e is not None and temperature == 1.0:
                # The same numbers softmax(x[ids]) gives, without recomputing them.
                probs = base if n == len(base) else e[:n] / e[:n].sum()
            else:
                probs = softmax(x[ids], temperature)
        if token is not None:
            prob = _prob_of(token, ranked, ids, probs)
        else:
            if p.temperature == 0.0:
                # Ranked candidates come most likely first: the first is the argmax.
                i = 0 if ranked is not None else int(np.argmax(probs))
            else:
                cum = np.cumsum(probs)
                i = int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right"))
                i = min(i, len(probs) - 1)
            token, prob = int(ids[i]), float(probs[i])

        model_lp = None
        top: tuple[Alternative, ...] = ()
        if model_probs or n_top:
            lse = logsumexp(logits, out=self._scratch)
            model_lp = float(logits[token]) - lse
            if n_top:
                top = self._alternatives(x, logits, lse, ranked, ids, probs, n_top)
        return Draw(token, prob, ids, probs, model_lp, top)

    def _alternatives(self, x, logits, lse, ranked, ids, probs, n_top) -> tuple[Alternative, ...]:
        # The most likely candidates in the sampler's order; `ranked` already holds them
        # when it is long enough, else a partial sort of the working logits `x`.
        top_ids = ranked[:n_top] if ranked is not None and len(ranked) >= n_top else None
        if top_ids is None:
            top_ids = self._top_k(x, n_top)
        where = self._where
        where[ids] = np.arange(len(ids))
        out = []
        for t in top_ids.tolist():
            j = where[t]
            q = float(probs[j]) if j >= 0 else 0.0
            out.append(Alternative(t, float(logits[t]) - lse, math.log(q) if q > 0 else None))
        where[ids] = -1
        return tuple(out)


def _prob_of(token: int, ranked, ids: np.ndarray, probs: np.ndarray) -> float:
    """The probability of a token drawn elsewhere (llama.cpp's chain) in the distribution
    sample() computed: 0 only if the chain kept a candidate gptcli's cuts left out (a tie
    exactly at a cut), since the two are proven to give the same distributions."""
    if ranked is None:
        return float(probs[token])  # nothing cut: ids are the vocabulary in order
    if int(ids[0]) == token:
        return float(probs[0])  # greedy, and most draws: the likeliest candidate
    at = np.flatnonzero(ids == token)
    return float(probs[at[0]]) if at.size else 0.0

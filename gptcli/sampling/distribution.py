"""Pure numpy measures of a next-token distribution: probabilities at a temperature,
entropy, surprisal, perplexity. Arrays in, numbers out; no model needed to test them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gptcli.sampling.sampler import top_k_ids

LN2 = math.log(2.0)


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax of a (rows, vocab) array, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


def probs_at(logits: np.ndarray, temperature: float) -> np.ndarray:
    """The full distribution at a temperature; 0 is greedy (all mass on the argmax)."""
    if temperature == 0:
        p = np.zeros(logits.shape[-1], dtype=np.float64)
        p[int(np.argmax(logits))] = 1.0
        return p
    z = np.asarray(logits, dtype=np.float64)
    # Shift before dividing: at a tiny temperature (1e-320) the largest logit stays 0
    # and the rest go to -inf (greedy, the limit), never inf - inf.
    with np.errstate(over="ignore"):
        return np.exp(log_softmax_rows((z - z.max()) / temperature))


def entropy_bits(probs: np.ndarray) -> float:
    """Shannon entropy in bits (0 log 0 = 0)."""
    p = probs[probs > 0]
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: one certain token is 0, not -0


def surprisal_bits(logprob: float) -> float:
    """-log2 p from a natural-log probability."""
    return -logprob / LN2


def perplexity(logprobs: Sequence[float] | np.ndarray) -> float:
    """exp of the mean negative log-likelihood (natural logs)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    return float(math.exp(-lp.mean()))


def parse_temperatures(text: str) -> list[float]:
    """'0.5,1,2' -> [0.5, 1.0, 2.0]; ValueError with a readable reason otherwise."""
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            t = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number") from None
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"{part} must be 0 (greedy) or more")
        out.append(t)
    return out  # never empty: split() yields a part, and "" is not a number


@dataclass(frozen=True)
class Candidate:
    id: int
    logprob: float  # at temperature 1 (the model's own)
    probs: tuple[float, ...]  # one per temperature
    cumulative: tuple[float, ...]  # mass of this and every more likely candidate


@dataclass(frozen=True)
class NextTokens:
    """The top candidates for the next token, under several temperatures."""

    temperatures: tuple[float, ...]
    entropy_bits: tuple[float, ...]
    candidates: tuple[Candidate, ...]


def next_tokens(logits: np.ndarray, top: int, temperatures: Sequence[float]) -> NextTokens:
    """The `top` most likely next tokens, with their probabilities at each temperature.

    A temperature rescales logits without reordering them, so the candidates are
    the same under every temperature."""
    logits = np.asarray(logits, dtype=np.float64)
    n = logits.shape[0]
    k = min(top, n)
    ids = top_k_ids(logits, k)  # the sampler's own: equal logits by id, at the cut too
    lp1 = log_softmax_rows(logits)
    per_t = [probs_at(logits, t) for t in temperatures]
    cols = [p[ids] for p in per_t]
    cums = [np.cumsum(c) for c in cols]
    cands = tuple(
        Candidate(
            int(t),
            float(lp1[t]),
            tuple(float(c[i]) for c in cols),
            tuple(float(min(1.0, c[i])) for c in cums),
        )
        for i, t in enumerate(ids)
    )
    return NextTokens(tuple(temperatures), tuple(entropy_bits(p) for p in per_t), cands)

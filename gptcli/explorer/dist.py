"""The distribution shown at a node, from logits already computed: the model's own
(softmax of the raw logits) and the sampled one (after the repetition penalty, top-k,
top-p, min-p and the temperature, in llama.cpp's order as gptcli.sampling.sampler draws).

Pure numpy. A node's logits are evaluated once; every temperature or truncation
change is recomputed here from them, without the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gptcli.sampling.distribution import entropy_bits
from gptcli.sampling.sampler import (
    SamplingParams,
    apply_repetition_penalty,
    logsumexp,
    min_p_count,
    softmax,
    top_p_count,
)


class NodeLogits:
    """One node's next-token logits (a private copy) and what every view reuses:
    the ranking and the model's log probabilities."""

    def __init__(self, logits: np.ndarray):
        self.logits = np.array(logits, dtype=np.float32, copy=True)
        self.lse = logsumexp(self.logits)
        self._order: np.ndarray | None = None
        self._rank: np.ndarray | None = None

    @property
    def order(self) -> np.ndarray:
        """Token ids, most likely first (equal logits by id, as the sampler ranks)."""
        if self._order is None:
            self._order = np.argsort(-self.logits, kind="stable").astype(np.int32)
        return self._order

    def rank(self, token: int) -> int:
        """1 for the most likely token."""
        if self._rank is None:
            r = np.empty(len(self.order), dtype=np.int32)
            r[self.order] = np.arange(1, len(r) + 1, dtype=np.int32)
            self._rank = r
        return int(self._rank[token])

    def logprob(self, token: int) -> float:
        return float(self.logits[token]) - self.lse

    @property
    def nbytes(self) -> int:
        return self.logits.nbytes * 3  # the logits, the order and the ranks


@dataclass(frozen=True)
class View:
    """What the candidates panel shows at one node under one set of settings."""

    order: np.ndarray  # ids ranked by the working logits (after the penalty)
    model_probs: np.ndarray  # softmax of the raw logits, full vocabulary, by id
    kept: int  # how many of `order` survive truncation
    sampled: np.ndarray  # probabilities of order[:kept] after temperature (sums to 1)
    cut_k: int  # ranks beyond these are cut by top-k / top-p / min-p (len(order): no cut)
    cut_p: int
    cut_m: int
    entropy_model: float  # bits
    entropy_sampled: float

    def sampled_prob(self, rank: int) -> float:
        """Probability under the sampled distribution of the candidate at 0-based rank."""
        return float(self.sampled[rank]) if rank < self.kept else 0.0

    def cut_by(self, rank: int) -> str:
        """Which truncations cut the candidate at 0-based rank: 'k', 'p', 'm' or ''."""
        return "".join(
            c for c, n in (("k", self.cut_k), ("p", self.cut_p), ("m", self.cut_m)) if rank >= n
        )


def view(node: NodeLogits, params: SamplingParams, history: list[int]) -> View:
    """The model's and the sampled distribution at a node.

    history: the tokens before this position (for the repetition penalty)."""
    x = node.logits
    order = node.order
    if params.repeat_penalty != 1.0 and params.repeat_last_n and history:
        x = x.copy()
        apply_repetition_penalty(x, history[-params.repeat_last_n :], params.repeat_penalty)
        order = np.argsort(-x, kind="stable")
    model_probs = np.exp(node.logits.astype(np.float64) - node.lse)
    n = len(order)
    k = params.top_k if 0 < params.top_k < n else n
    # As llama.cpp: top-p and min-p measure the top-k set, renormalised at T=1.
    base = softmax(x[order[:k]])
    cut_p = min(k, top_p_count(base, params.top_p))
    cut_m = min(k, min_p_count(base, params.min_p))
    kept = min(k, cut_p, cut_m)
    if params.temperature == 0:  # greedy: all the mass on the most likely
        sampled = np.zeros(kept)
        sampled[0] = 1.0
    else:
        sampled = softmax(x[order[:kept]], params.temperature)
    return View(
        order,
        model_probs,
        kept,
        sampled,
        k,
        cut_p if params.top_p < 1.0 else n,
        cut_m if params.min_p > 0.0 else n,
        entropy_bits(model_probs),
        entropy_bits(sampled),
    )


def logprob(p: float) -> float:
    return math.log(p) if p > 0 else float("-inf")

"""Where each attention head looks: the weights llama.cpp computes in its softmax
(llama/capture.py's point `kq_soft_max-N`: heads x queries x keys), captured from its
graph, and the usual measures of a head: entropy, the share on the first token,
previous-token and induction scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gptcli.errors import GptcliError
from gptcli.llama.capture import ATTENTION, is_attention, wanting
from gptcli.llama.capture import by_layer as points_by_layer

LN2 = float(np.log(2.0))


def wanted(layers: set[int] | None = None):
    """The capture filter: attention weights of every layer, or of `layers`."""

    return wanting({ATTENTION}, layers)


def last_row_only(name: str, arr: np.ndarray) -> np.ndarray:
    """Capture `keep` hook for the overview: only the last query of each ubatch.

    The stitching keeps every ubatch's rows, so later only the very last is used."""
    return arr[..., -1:, :] if is_attention(name) else arr


def by_layer(captured: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """layer -> (heads, queries, keys) weights."""
    out = points_by_layer(captured, ATTENTION)
    if not out:
        raise GptcliError(
            "llama.cpp's graph for this model has no attention weights (kq_soft_max-N): "
            "attention reads llama-style graphs (llama, qwen2, gemma, phi3, mistral and kin)"
        )
    return out


@dataclass(frozen=True)
class HeadStats:
    layer: int
    head: int
    entropy_bits: float  # of the last query's weights
    first_share: float  # mean weight on the first token, over queries after it
    previous_token: float  # mean weight on the token just before, over queries 1..n-1
    induction: float | None  # mean weight on the token after an earlier copy of the query
    top_key: int  # the key the last query weighs most


def head_stats(layer: int, head: int, w: np.ndarray, tokens: list[int]) -> HeadStats:
    """Measures of one head from its (queries, keys) weight matrix over the whole prompt."""
    n = w.shape[0]
    last = w[-1, :n]
    nz = last > 0
    entropy = float(-(last[nz] * np.log(last[nz])).sum() / LN2)
    first = float(w[1:, 0].mean()) if n > 1 else float(w[0, 0])
    prev = float(np.mean([w[i, i - 1] for i in range(1, n)])) if n > 1 else 0.0
    scores = []
    seen: dict[int, list[int]] = {}
    for i, t in enumerate(tokens[:n]):
        for j in seen.get(t, ()):  # an earlier copy at j: does i look at j + 1?
            if j + 1 < i:
                scores.append(w[i, j + 1])
        seen.setdefault(t, []).append(i)
    induction = float(np.mean(scores)) if scores else None
    return HeadStats(layer, head, entropy, first, prev, induction, int(np.argmax(last)))

"""The logit lens: what the residual stream after each layer would predict.

The residual stream is captured from llama.cpp's own graph (the points of
llama/capture.py: `l_out-N` after layer N, `ffn_inp-N` after layer N's attention,
before its MLP); the model's final norm and unembedding turn each captured vector
into a distribution over the vocabulary. The
last layer's lens should reproduce llama.cpp's own distribution: `agreement` measures
how closely it does, which is how a wrong final step for an architecture shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.inside.unembedding import FinalStep
from gptcli.llama.capture import MID_RESIDUAL, RESIDUAL, parse_name, wanting
from gptcli.sampling.distribution import log_softmax_rows

LN2 = float(np.log(2.0))
# llama.cpp quantizes activations before the output matrix, so a float lens of the
# last layer differs from its own probabilities: by up to 0.008 on SmolLM2 Q4_1
# (measured, capture pass). Past this, the final step is not reproduced.
AGREEMENT_TOLERANCE = 0.02


def wanted(mid: bool):
    """The capture filter: residual streams after every layer (and after attention)."""
    return wanting({RESIDUAL, MID_RESIDUAL} if mid else {RESIDUAL})


@dataclass(frozen=True)
class Row:
    """One lens reading: a layer (or the middle of one) at one position."""

    layer: int
    stage: str  # "attn" (after attention, before the MLP) or "out" (after the layer)
    position: int
    top_id: int
    top_prob: float
    final_id: int  # the token llama.cpp's full model puts first at this position
    final_prob: float  # its probability under this layer's lens
    final_rank: int  # 1 = top
    entropy_bits: float
    kl_bits: float  # KL(final || this layer), in bits
    tracked: tuple[float, ...] = ()  # probabilities of the --track tokens

    @property
    def label(self) -> str:
        return f"{self.layer}" if self.stage == "out" else f"{self.layer} attn"


@dataclass
class Lens:
    tokens: list[int]
    positions: list[int]
    rows: list[Row]  # layer-major, then position
    n_layers: int
    final_ids: dict[int, int]  # position -> llama.cpp's top token
    final_probs: dict[int, float]  # position -> its probability (llama.cpp's own)
    agreement: float  # max |p_lens - p_llama.cpp| over the vocabulary, last layer
    tracked: list[int] = field(default_factory=list)
    # position -> the pass its final distribution comes from: "generation" (the logits
    # `next` and `generate` compute) or "capture" (the capture pass, flash attention off)
    final_pass: dict[int, str] = field(default_factory=dict)

    def emerges(self, position: int) -> int | None:
        """The first layer whose lens puts the final token on top at `position`."""
        for r in self.rows:
            if r.position == position and r.stage == "out" and r.top_id == r.final_id:
                return r.layer
        return None


def residuals(captured: dict[str, np.ndarray], mid: bool) -> list[tuple[int, str, np.ndarray]]:
    """(layer, stage, (tokens, d_model)) in forward order, from the captured tensors."""
    found = []
    kinds = {RESIDUAL, MID_RESIDUAL} if mid else {RESIDUAL}
    for name, arr in captured.items():
        point = parse_name(name)
        if point is not None and point[0] in kinds:
            stage = "out" if point[0] == RESIDUAL else "attn"
            found.append((point[1], 0 if stage == "attn" else 1, stage, arr))
    if not any(s == "out" for _, _, s, _ in found):
        raise GptcliError(
            "llama.cpp's graph for this model names no residual stream (l_out-N): the lens "
            "reads llama-style graphs (llama, qwen2, gemma, phi3, mistral and kin)"
        )
    found.sort(key=lambda x: (x[0], x[1]))
    return [(layer, stage, arr) for layer, _, stage, arr in found]


def read_lens(
    step: FinalStep,
    tokens: list[int],
    captured: dict[str, np.ndarray],
    llama_logits: np.ndarray,
    positions: list[int],
    *,
    mid: bool = False,
    track: list[int] | None = None,
    reference: dict[int, np.ndarray] | None = None,
) -> Lens:
    """Turn captured residual streams at `positions` into lens rows.

    reference: position -> the logits generation computes there (the main context,
    as `next` reads them); the final answer, ranks and KL are measured against them.
    Other positions use the capture pass's logits. `agreement` always compares the
    last layer's lens with its own pass's logits: it checks the final step."""
    track = track or []
    reference = reference or {}
    streams = residuals(captured, mid)
    n_layers = 1 + max(layer for layer, _, _ in streams)
    capture_p = np.exp(log_softmax_rows(llama_logits[positions]))
    final_lp = log_softmax_rows(
        np.stack([reference.get(pos, llama_logits[pos]) for pos in positions])
    )
    final_ids = {pos: int(np.argmax(final_lp[i])) for i, pos in enumerate(positions)}
    final_p = np.exp(final_lp)
    rows: list[Row] = []
    agreement = 0.0
    for layer, stage, arr in streams:
        if arr.shape[0] < max(positions) + 1:
            raise GptcliError(
                f"llama.cpp kept {arr.shape[0]} rows of layer {layer}: cannot read position "
                f"{max(positions)}"
            )
        lp = log_softmax_rows(step.logits(arr[positions]))
        p = np.exp(lp)
        for i, pos in enumerate(positions):
            fid = final_ids[pos]
            top = int(np.argmax(lp[i]))
            rank = int(np.count_nonzero(lp[i] > lp[i, fid])) + 1
            pi = p[i]
            nz = pi > 0
            entropy = float(-(pi[nz] * lp[i][nz]).sum() / LN2)
            q = final_p[i]
            qz = q > 0
            kl = float((q[qz] * (final_lp[i][qz] - lp[i][qz])).sum() / LN2)
            rows.append(
                Row(
                    layer,
                    stage,
                    pos,
                    top,
                    float(pi[top]),
                    fid,
                    float(pi[fid]),
                    rank,
                    entropy,
                    max(0.0, kl),
                    tuple(float(pi[t]) for t in track),
                )
            )
            if layer == n_layers - 1 and stage == "out":
                agreement = max(agreement, float(np.abs(pi - capture_p[i]).max()))
    return Lens(
        tokens,
        positions,
        rows,
        n_layers,
        final_ids,
        {pos: float(final_p[i][final_ids[pos]]) for i, pos in enumerate(positions)},
        agreement,
        list(track),
        {pos: "generation" if pos in reference else "capture" for pos in positions},
    )


def parse_positions(spec: str | None, n: int) -> list[int]:
    """'last' (default), 'all', 'I', 'A:B' (Python slice rules, negatives from the end)."""
    if spec is None or spec == "last":
        return [n - 1]
    if spec == "all":
        return list(range(n))
    try:
        if ":" in spec:
            a, b = spec.split(":", 1)
            picked = list(range(n))[slice(int(a) if a else None, int(b) if b else None)]
        else:
            i = int(spec)
            if not -n <= i < n:
                raise IndexError
            picked = [i % n]
    except (ValueError, IndexError):
        raise UsageError(
            f"--positions must be last, all, a position or a range A:B within the prompt's "
            f"{n} tokens, got {spec!r}"
        ) from None
    if not picked:
        raise UsageError(f"--positions {spec} selects none of the prompt's {n} tokens")
    return picked

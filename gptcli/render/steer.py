"""How steering looks: the unsteered and steered next-token distributions side by
side, the lens of both with the layer where the answer changes, a vector's per-layer
norms, and a sweep of greedy continuations over scales.

Token text comes from the model file: every label goes through render.tokens.token_label
(or terminal.safe for running text)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from gptcli.model.gguf_check import printable
from gptcli.render.tokens import fmt_prob, token_label, token_object
from gptcli.terminal import json_safe, safe

Piece = Callable[[int], bytes]


@dataclass(frozen=True)
class Compared:
    """One position's distributions without and with the vector (first temperature)."""

    position: int
    temperature: float
    ids: list[int]  # the union of both top-K, by steered probability
    p: list[float]
    p_steered: list[float]
    entropy_bits: float
    entropy_bits_steered: float


def _label(piece: Piece, token: int, width: int = 16) -> str:
    text = token_label(piece(token))
    return text if len(text) <= width else text[: width - 1] + "…"


def next_compared(step: int, c: Compared, piece: Piece, what: str, out: TextIO | None = None):
    out = out or sys.stdout
    lines = [""] if step else []
    lines.append(f"step {step + 1}: after {c.position} tokens · {what} · T={c.temperature:g}")
    lines.append(f"{'#':>3}  {'token':<16} {'unsteered':>9} {'steered':>9} {'change':>8}")
    for i, (t, p, q) in enumerate(zip(c.ids, c.p, c.p_steered, strict=True)):
        label = _label(piece, t)
        lines.append(f"{i + 1:>3}  {label:<16} {fmt_prob(p):>9} {fmt_prob(q):>9} {q - p:>+8.4f}")
    lines.append(
        f"     {'entropy (bits)':<16} {c.entropy_bits:>9.2f} {c.entropy_bits_steered:>9.2f} "
        f"{c.entropy_bits_steered - c.entropy_bits:>+8.2f}"
    )
    out.write("\n".join(lines) + "\n")
    out.flush()


def next_compared_json(step: int, c: Compared, piece: Piece, out: TextIO | None = None):
    out = out or sys.stdout
    obj = {
        "step": step,
        "position": c.position,
        "temperature": c.temperature,
        "entropy_bits": c.entropy_bits,
        "entropy_bits_steered": c.entropy_bits_steered,
        "top": [
            {**token_object(t, piece(t)), "p": p, "p_steered": q, "change": q - p}
            for t, p, q in zip(c.ids, c.p, c.p_steered, strict=True)
        ],
    }
    out.write(json_safe(json.dumps(obj, ensure_ascii=False)) + "\n")
    out.flush()


def answer_changes(plain, steered, position: int) -> int | None:
    """The first layer from which the steered lens's top token differs from the
    unsteered one's at every later layer (None: the final answers agree)."""
    a = [r.top_id for r in plain.rows if r.position == position and r.stage == "out"]
    b = [r.top_id for r in steered.rows if r.position == position and r.stage == "out"]
    layers = [r.layer for r in plain.rows if r.position == position and r.stage == "out"]
    if a[-1] == b[-1]:
        return None
    i = len(a) - 1
    while i > 0 and a[i - 1] != b[i - 1]:
        i -= 1
    return layers[i]


def lens_compared(plain, steered, piece: Piece, what: str, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    pos = plain.positions[-1]
    a_id, b_id = plain.final_ids[pos], steered.final_ids[pos]
    a, b = _label(piece, a_id), _label(piece, b_id)
    changes = answer_changes(plain, steered, pos)
    lines = [
        f"after {_label(piece, plain.tokens[pos], 40)} (position {pos}) · {what}: "
        f"unsteered answer {a} {fmt_prob(plain.final_probs[pos])}, "
        f"steered answer {b} {fmt_prob(steered.final_probs[pos])}",
        f"{'layer':>5}  {'unsteered top':<16} {'p':>5}  {'steered top':<16} {'p':>5}  "
        f"{'p(' + b + ')':>12} {'':>6}",
    ]
    rows_a = [r for r in plain.rows if r.position == pos and r.stage == "out"]
    rows_b = [r for r in steered.rows if r.position == pos and r.stage == "out"]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        # p(steered answer) under each lens: the unsteered lens's is its final_prob only
        # when both answers agree, so read it from the row's own rank-free numbers
        pa = _prob_of(plain, ra, b_id)
        mark = " ◀ the answer changes from here on" if ra.layer == changes else ""
        lines.append(
            f"{ra.layer:>5}  {_label(piece, ra.top_id):<16} {fmt_prob(ra.top_prob):>5}  "
            f"{_label(piece, rb.top_id):<16} {fmt_prob(rb.top_prob):>5}  "
            f"{fmt_prob(pa):>5} → {fmt_prob(rb.final_prob):>5}{mark}"
        )
    if changes is None:
        lines.append(f"steering leaves the answer {a} in place")
    else:
        tops = [rb.layer for rb in rows_b if rb.top_id == b_id]
        lines.append(f"the steered answer {b} first tops the steered lens at layer {tops[0]}")
    out.write("\n".join(lines) + "\n")
    out.flush()


def _prob_of(lens, row, token: int) -> float:
    if token in lens.tracked:
        return row.tracked[lens.tracked.index(token)]
    return float("nan")


def lens_compared_json(plain, steered, piece: Piece, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    pos = plain.positions[-1]
    b_id = steered.final_ids[pos]
    rows_a = [r for r in plain.rows if r.position == pos and r.stage == "out"]
    rows_b = [r for r in steered.rows if r.position == pos and r.stage == "out"]
    obj = {
        "position": pos,
        "answer": plain.final_ids[pos],
        "answer_steered": b_id,
        "answer_changes_at_layer": answer_changes(plain, steered, pos),
        "layers": [
            {
                "layer": ra.layer,
                "top": ra.top_id,
                "p": ra.top_prob,
                "top_steered": rb.top_id,
                "p_steered": rb.top_prob,
                "p_answer_steered": _prob_of(plain, ra, b_id),
                "p_answer_steered_steered": rb.final_prob,
            }
            for ra, rb in zip(rows_a, rows_b, strict=True)
        ],
    }
    out.write(json_safe(json.dumps(obj, ensure_ascii=False)) + "\n")


def show_vector(vector, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    norms = vector.norms()
    top = max(norms.values()) or 1.0
    lines = [
        f"{printable(str(vector.path), 200)}: control vector, model hint "
        f"{printable(vector.model_hint or '(none)', 60)}, {len(norms)} layers "
        f"({min(norms)}-{max(norms)}), {vector.n_embd} floats each",
        f"{'layer':>5}  {'norm':>8}",
    ]
    for layer, n in norms.items():
        bar = "█" * int(round(n / top * 30))
        lines.append(f"{layer:>5}  {n:>8.4f}  {bar}")
    out.write("\n".join(lines) + "\n")


def sweep_line(scale: float, text: str, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(f"{scale:>+7g}  {safe(text.replace(chr(10), ' ↵ '))}\n")
    out.flush()


def entropy_bits(p: np.ndarray) -> float:
    nz = p[p > 0]
    return float(-(nz * np.log2(nz)).sum())

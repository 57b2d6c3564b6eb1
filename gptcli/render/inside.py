"""How the inside views look: the lens as a table or a layers x positions grid, the
attention overview, one head's heat map, per-head measures, and JSON for scripts.

Token text comes from the model file: every label goes through render.tokens.token_label
(the terminal-safety rule for token views). Colour is a rendering of numbers only:
without colour the numbers are printed."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable

import numpy as np

from gptcli.console import make_console, notice, pipe_width, stdout_console
from gptcli.inside.attention import head_stats
from gptcli.inside.lens import Lens
from gptcli.limits import PIPE_WIDTH
from gptcli.render.tokens import BANDS, band, fmt_prob, token_label, token_object, token_text
from gptcli.terminal import json_safe

Piece = Callable[[int], bytes]
SPARK = "▁▂▃▄▅▆▇█"
SHADES = " ░▒▓█"


def _console():
    """stdout's console; a pipe gets COLUMNS when it is set, else PIPE_WIDTH."""
    console = stdout_console()
    if console.is_terminal:
        return console

    return make_console(width=pipe_width(PIPE_WIDTH), highlight=False, soft_wrap=True)


def _width(console) -> int:
    return console.width


def _colour(console) -> bool:
    """Colour carries numbers here; without it (a pipe, NO_COLOR, TERM=dumb) the views
    print the numbers instead."""
    return console.is_terminal and not console.no_color and console.color_system is not None


def _label(piece: Piece, token: int, width: int | None = None) -> str:
    text = token_label(piece(token))
    if width is not None and len(text) > width:
        text = text[: max(1, width - 1)] + "…"
    return text


def _band_style(p: float) -> str:
    return BANDS[band(p)][2]


def spark(values, scale: float | None = None) -> str:
    """A sparkline of values in 0..scale (default: their maximum)."""
    vals = [0.0 if v is None or not math.isfinite(v) else float(v) for v in values]
    top = scale if scale else (max(vals) if vals else 0.0)
    if top <= 0:
        return SPARK[0] * len(vals)
    return "".join(SPARK[min(7, int(v / top * 7.999))] for v in vals)


def _notice(message: str) -> None:
    notice(message)


# -- lens ---------------------------------------------------------------------------


def lens_table(result: Lens, piece: Piece) -> None:
    from rich.table import Table
    from rich.text import Text

    pos = result.positions[0]
    fid = result.final_ids[pos]
    final = _label(piece, fid)
    console = _console()
    console.print(
        Text.assemble(
            "after ",
            (_label(piece, result.tokens[pos], 40), "bold"),
            f" (position {pos}): llama.cpp's answer"
            + ("" if result.final_pass.get(pos) == "generation" else " (capture pass)")
            + " is ",
            (final, "bold"),
            f" {fmt_prob(result.final_probs[pos])}",
        ),
        soft_wrap=True,
    )
    emerges = result.emerges(pos)
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("layer", justify="right")
    table.add_column("top token")
    table.add_column("p", justify="right")
    table.add_column(f"p({final})", justify="right")
    table.add_column("rank", justify="right")
    table.add_column("entropy", justify="right")
    table.add_column("KL", justify="right")
    for t in result.tracked:
        table.add_column(f"p({_label(piece, t, 12)})", justify="right")
    table.add_column("")
    for r in result.rows:
        mark = "◀ first on top" if r.layer == emerges and r.stage == "out" else ""
        table.add_row(
            r.label,
            Text(_label(piece, r.top_id, 16), style=_band_style(r.top_prob)),
            fmt_prob(r.top_prob),
            Text(fmt_prob(r.final_prob), style=_band_style(r.final_prob)),
            str(r.final_rank),
            f"{r.entropy_bits:.2f}",
            f"{r.kl_bits:.2f}",
            *[fmt_prob(p) for p in r.tracked],
            Text(mark, style="bold"),
        )
    console.print(table)
    for i, t in enumerate(result.tracked):
        probs = [r.tracked[i] for r in result.rows]
        best = int(np.argmax(probs))
        console.print(
            f"{_label(piece, t, 16):>16} {spark(probs, 1.0)} max {fmt_prob(probs[best])} "
            f"at layer {result.rows[best].label}",
            markup=False,
            highlight=False,
        )
    _notice("entropy and KL (final || layer) in bits; p and rank under each layer's lens")


def lens_grid(result: Lens, piece: Piece) -> None:
    from rich.table import Table
    from rich.text import Text

    console = _console()
    width = _width(console)
    cell = 9
    fits = max(1, (width - 10) // (cell + 1))
    shown = result.positions[-fits:]
    if len(shown) < len(result.positions):
        _notice(
            f"showing the last {len(shown)} of {len(result.positions)} positions "
            f"(the terminal is {width} columns; choose others with --positions A:B)"
        )
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("layer", justify="right")
    for pos in shown:
        table.add_column(_label(piece, result.tokens[pos], cell), width=cell, no_wrap=True)
    by_key = {(r.layer, r.stage, r.position): r for r in result.rows}
    stages = sorted({(r.layer, 0 if r.stage == "attn" else 1, r.stage) for r in result.rows})
    colour = _colour(console)
    for layer, _, stage in stages:
        cells = []
        for pos in shown:
            r = by_key[(layer, stage, pos)]
            text = _label(piece, r.top_id, cell if colour else cell - 5)
            if not colour:
                text = f"{text} {r.top_prob:.2f}"
            cells.append(Text(text, style=_band_style(r.top_prob)))
        table.add_row(f"{layer}" if stage == "out" else f"{layer} attn", *cells)
    console.print(table)
    _notice("each cell: the token that layer's stream predicts next, coloured by probability")


def lens_json(result: Lens, piece: Piece, out=None) -> None:
    rows = [
        {
            "layer": r.layer,
            "stage": "after_attention" if r.stage == "attn" else "after_layer",
            "position": r.position,
            "top": {**token_object(r.top_id, piece(r.top_id)), "prob": r.top_prob},
            "final": {"id": r.final_id, "prob": r.final_prob, "rank": r.final_rank},
            "entropy_bits": r.entropy_bits,
            "kl_bits": r.kl_bits,
            "tracked": [
                {"id": t, "prob": p} for t, p in zip(result.tracked, r.tracked, strict=True)
            ],
        }
        for r in result.rows
    ]
    obj = {
        "tokens": [token_object(t, piece(t)) for t in result.tokens],
        "positions": result.positions,
        "n_layers": result.n_layers,
        "final": [
            {
                "position": p,
                **token_object(result.final_ids[p], piece(result.final_ids[p])),
                "prob": result.final_probs[p],
                "pass": result.final_pass.get(p, "capture"),
            }
            for p in result.positions
        ],
        "agreement": result.agreement,
        "rows": rows,
    }
    _write_json(obj, out)


def _write_json(obj: dict, out=None) -> None:
    """One JSON line, with no raw control character for a terminal to act on."""
    out = out or sys.stdout
    out.write(json_safe(json.dumps(obj, ensure_ascii=False)) + "\n")
    out.flush()


# -- attention ----------------------------------------------------------------------


def _scale(row: np.ndarray, no_bos: bool) -> float:
    part = row[1:] if no_bos and len(row) > 1 else row
    return float(part.max()) if len(part) else 1.0


def attention_grid(tokens, weights: dict[int, np.ndarray], piece: Piece, no_bos: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    console = _console()
    colour = _colour(console)
    width = _width(console)
    layers = sorted(weights)
    n_heads = weights[layers[0]].shape[0]
    n = len(tokens)
    label_min = 6
    number = 0 if colour else 5  # " 0.45": the weight, where colour would shade it
    # Each column pads 1 on both sides; the layer column takes about 8. Heads that do
    # not fit across go into another table below, so nothing is cut.
    per_table = max(1, min(n_heads, (width - 8) // (label_min + number + 2)))
    tables = -(-n_heads // per_table)
    per_table = -(-n_heads // tables)  # as even as the tables can be
    cw = max(label_min + number, (width - 8) // per_table - 2)
    strip = min(n, max(0, cw - label_min - number - 1))
    console.print(
        Text.assemble("from ", (_label(piece, tokens[-1], 30), "bold"), ": where each head looks"),
        soft_wrap=True,
    )
    for first in range(0, n_heads, per_table):
        heads = range(first, min(n_heads, first + per_table))
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("layer", justify="right")
        for h in heads:
            table.add_column(f"head {h}", width=cw, no_wrap=True)
        for layer in layers:
            cells = []
            for h in heads:
                row = weights[layer][h, -1, :n].astype(np.float64)
                look = row.copy()
                if no_bos and n > 1:
                    look[0] = -1
                k = int(np.argmax(look))
                scale = _scale(row, no_bos)
                pic = ""
                if strip:
                    bins = np.array_split(row[1:] if no_bos and n > 1 else row, strip)
                    pic = spark([b.max() if len(b) else 0.0 for b in bins], scale) + " "
                label = _label(piece, tokens[k], cw - len(pic) - number)
                if number:
                    label = f"{label} {row[k]:.2f}"
                shade = min(1.0, row[k] / (scale or 1))
                cells.append(Text(pic + label, style=_band_style(shade)))
            table.add_row(str(layer), *cells)
        console.print(table)
    _notice(
        "each cell: the key the last token weighs most"
        + ("" if colour else " and its weight")
        + (", a strip of the weights over the keys" if strip else "")
        + (" (first token left out of the scale)" if no_bos else "")
        + (f"; heads in {tables} tables to fit {width} columns" if tables > 1 else "")
        + "; --layer L --head H to zoom in, --stats for measures"
    )


def head_view(tokens, w: np.ndarray, piece: Piece, layer: int, head: int, no_bos: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    console = _console()
    colour = _colour(console)
    width = _width(console)
    n = len(tokens)
    w = w[:n, :n].astype(np.float64)
    label_w = 12
    keys = min(n, max(1, (width - label_w - 2) // 2))
    first = n - keys
    if first:
        _notice(f"showing the last {keys} of {n} keys (the terminal is {width} columns)")
    part = w[:, first:]
    scale_part = part[:, 1:] if no_bos and first == 0 and keys > 1 else part
    scale = float(scale_part.max()) or 1.0
    console.print(f"layer {layer}, head {head}: rows are queries, columns keys", style="bold")
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column("query", width=label_w, no_wrap=True, justify="right")
    table.add_column("weights", no_wrap=True)
    for q in range(first, n):
        line = Text()
        for j in range(keys):
            v = min(1.0, part[q, j] / scale)
            if colour:
                grey = 232 + int(round(v * 23))
                line.append("  ", style=f"on color({grey})")
            else:
                line.append(SHADES[min(4, int(v * 4.999))] * 2)
        table.add_row(_label(piece, tokens[q], label_w), line)
    console.print(table)
    console.print(
        "keys: " + " ".join(_label(piece, tokens[j], 8) for j in range(first, n)),
        markup=False,
        highlight=False,
        soft_wrap=False,  # wrapped at the width, between keys
    )
    row = w[-1]
    text = Text()
    rscale = _scale(row, no_bos) or 1.0
    for j in range(n):
        v = min(1.0, row[j] / rscale)
        label = token_text(piece(tokens[j]))
        label = label if label.isprintable() else token_label(piece(tokens[j]))
        if colour:
            text.append(label, style=f"on color({232 + int(round(v * 23))})")
        else:
            text.append(f"{label}[{row[j]:.2f}]")
    console.print(
        Text.assemble("from ", (_label(piece, tokens[-1], 30), "bold"), ": "), text, soft_wrap=True
    )
    top = np.argsort(-row)[:3]
    _notice(
        "most weight: "
        + ", ".join(f"{_label(piece, tokens[j], 16)} {row[j]:.3f}" for j in top)
        + (" (first token left out of the scale)" if no_bos else "")
    )


def attention_stats(tokens, weights: dict[int, np.ndarray], piece: Piece) -> None:
    from rich.table import Table

    console = _console()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("layer", "head", "entropy", "first", "previous", "induction", "top key"):
        table.add_column(name, justify="left" if name == "top key" else "right")
    for layer in sorted(weights):
        for h in range(weights[layer].shape[0]):
            s = head_stats(layer, h, weights[layer][h], tokens)
            table.add_row(
                str(layer),
                str(h),
                f"{s.entropy_bits:.2f}",
                f"{s.first_share:.2f}",
                f"{s.previous_token:.2f}",
                "-" if s.induction is None else f"{s.induction:.2f}",
                _label(piece, tokens[s.top_key], 16),
            )
    console.print(table)
    _notice(
        "entropy (bits) of the last token's weights; first: mean weight on the first token; "
        "previous: on the token just before; induction: on the token after an earlier copy "
        "of the query ('-': no repeated token)"
    )


def attention_json(tokens, weights, piece: Piece, layer: int | None, head: int | None, out=None):
    n = len(tokens)
    layers = []
    for li in sorted(weights):
        heads = range(weights[li].shape[0]) if head is None else [head]
        layers.append(
            {
                "layer": li,
                "heads": [
                    {"head": h, "weights": np.round(weights[li][h, :n, :n], 6).tolist()}
                    for h in heads
                ],
            }
        )
    _write_json({"tokens": [token_object(t, piece(t)) for t in tokens], "layers": layers}, out)

"""How `compare` looks: the text coloured by KL(A‖B) per token (one fixed scale, its
legend on stderr), the positions where the models differ most with both models' top
candidates, and llama-perplexity's summary; or one JSON document for scripts.

Without colour (a pipe, NO_COLOR) the same numbers are text: `token[0.12]`, KL in bits.
"""

from __future__ import annotations

import codecs
import json
import math
import sys
from typing import TextIO

from gptcli.backends.comparison import Compared, Summary
from gptcli.console import shows_colour, stderr_console, stdout_console
from gptcli.render.next import pad
from gptcli.render.tokens import (
    DIM,
    fmt_prob,
    fold,
    out_width,
    style_escapes,
    token_label,
    token_object,
)
from gptcli.terminal import Guard, json_safe

LN2 = math.log(2.0)

# The fixed scale of KL(A‖B) in bits per token, lowest band first: (upper bound, name,
# rich style). 0.05 bits is a barely visible change of one probability; past 0.5 bits
# the two models bet on different tokens.
KL_BANDS: tuple[tuple[float, str, str], ...] = (
    (0.05, "same", "green"),
    (0.5, "apart", "yellow"),
    (math.inf, "far apart", "bold red"),
)


def kl_band(bits: float) -> int:
    for i, (hi, _, _) in enumerate(KL_BANDS):
        if bits < hi:
            return i
    return len(KL_BANDS) - 1


def fmt_bits(bits: float) -> str:
    return f"{bits:.2f}" if bits >= 0.005 or bits == 0 else f"{bits:.0e}".replace("e-0", "e-")


def kl_legend() -> None:
    """The scale, on stderr, in its colours."""
    from rich.text import Text

    line = Text("KL(A‖B) per token, bits:", style="dim")
    lo = 0.0
    for hi, name, style in KL_BANDS:
        span = f"≥ {lo:g}" if hi == math.inf else f"< {hi:g}" if lo == 0 else f"{lo:g}–{hi:g}"
        line.append("  ")
        line.append(f"{name} {span}", style=style)
        lo = hi
    stderr_console().print(line, soft_wrap=True)


class _KlPainter:
    def __init__(self, colour: bool):
        self.colour = colour
        if colour:
            console = stdout_console()
            self.bands = [style_escapes(console, style) for _, _, style in KL_BANDS]
            self.dim = style_escapes(console, DIM)

    def paint(self, text: str, bits: float | None) -> str:
        if bits is None:
            return self.faint(text)
        body = text.rstrip("\n")  # the colour or the number stays on the token's line
        if self.colour:
            before, after = self.bands[kl_band(bits)]
            return f"{before}{body}{after}{text[len(body) :]}" if body else text
        return f"{body}[{fmt_bits(bits)}]{text[len(body) :]}"

    def style(self, text: str, bits: float) -> str:
        """Colour only: where there is none, the number stands in its own column."""
        if not self.colour:
            return text
        before, after = self.bands[kl_band(bits)]
        return f"{before}{text}{after}"

    def faint(self, text: str) -> str:
        return f"{self.dim[0]}{text}{self.dim[1]}" if self.colour else text


def _top(compared: Compared, top) -> str:
    return " ".join(f"{token_label(compared.piece(t))} {fmt_prob(p)}" for t, p in top)


def compare_text(compared: Compared, label_a: str, label_b: str, out: TextIO | None = None) -> None:
    """The coloured text, the most different positions, then the summary."""
    out = out or sys.stdout
    colour = shows_colour()
    if colour:
        kl_legend()
    painter = _KlPainter(colour)
    guard = Guard.for_stream(out, colour)
    r = compared.result
    bits_at = dict(zip(r.positions.tolist(), (r.kl / LN2).tolist(), strict=True))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    held: list[float] = []
    last = ""
    for i, tok in enumerate(r.tokens):
        if compared.is_control(tok):  # BOS and the like: not text
            continue
        text = decoder.decode(compared.piece(tok))
        if i in bits_at:
            held.append(bits_at[i])
        if not text:
            continue  # a character split over tokens: shown with its last token
        out.write(painter.paint(guard(text), max(held) if held else None))
        held, last = [], text
    tail = decoder.decode(b"", final=True)
    if tail:
        out.write(painter.paint(guard(tail), max(held) if held else None))
        last = tail
    if last and not last.endswith("\n"):
        out.write("\n")
    lines: list[str] = []
    if r.worst:
        lines += ["", painter.faint(f"most different tokens (of {len(r.kl)} compared):")]
        names = {w.index: token_label(compared.piece(r.tokens[w.index])) for w in r.worst}
        w_tok = min(20, max(8, *(len(n) for n in names.values())))
        lines.append(
            painter.faint(
                f"{'pos':>6}  {pad('token', w_tok)}  {'KL bits':>7}  {'p(A)':>5}  {'p(B)':>5}  "
                f"top {len(r.worst[0].top_a)} of A │ of B"
            )
        )
        slot = {int(p): s for s, p in enumerate(r.positions.tolist())}
        for w in r.worst:
            s = slot[w.index]
            bits = w.kl / LN2
            lines.append(
                f"{w.index:>6}  {painter.style(pad(names[w.index], w_tok), bits)}  "
                f"{bits:7.3f}  {fmt_prob(math.exp(r.logprob_a[s])):>5}  "
                f"{fmt_prob(math.exp(r.logprob_b[s])):>5}  "
                f"{_top(compared, w.top_a)} {painter.faint('│')} {_top(compared, w.top_b)}"
            )
    lines.append("")
    lines += summary_lines(r.summary(), compared, label_a, label_b, out_width(out))
    out.write("\n".join(lines) + "\n")
    out.flush()


def _pm(value: tuple[float, float], digits: int, scale: float = 1.0, unit: str = "") -> str:
    v, u = value
    return f"{v * scale:.{digits}f} ± {u * scale:.{digits}f}{unit}"


def summary_lines(
    s: Summary, compared: Compared, label_a: str, label_b: str, width: int | None
) -> list[str]:
    """llama-perplexity --kl-divergence's numbers, A as the base and B as Q."""
    how = (
        f"chunks of {compared.window} tokens, second halves scored (llama-perplexity -c)"
        if compared.chunked
        else f"windows of {compared.window} tokens"
    )
    kl = s.mean_kl
    return [
        fold(f"A: {label_a} · B: {label_b} · {s.count} tokens compared, {how}", width),
        f"mean KL(A‖B)       {_pm(kl, 6)} nats ({kl[0] / LN2:.6f} bits)",
        f"median / 99% / max {s.median_kl:.6f} / {s.p99_kl:.6f} / {s.max_kl:.6f} nats",
        f"same top token     {_pm(s.top1_agreement, 3, 100, ' %')}",
        f"RMS Δp             {_pm(s.rms_dp, 3, 100, ' %')}",
        f"PPL(A) / PPL(B)    {_pm(s.ppl_a, 4)} / {_pm(s.ppl_b, 4)}",
        f"ln(PPL(B)/PPL(A))  {_pm(s.ln_ppl_ratio, 6)}",
    ]


def summary_object(s: Summary) -> dict:
    return {
        "tokens_compared": s.count,
        "mean_kl": s.mean_kl[0],  # nats, as llama-perplexity reports it
        "mean_kl_uncertainty": s.mean_kl[1],
        "mean_kl_bits": s.mean_kl[0] / LN2,
        "median_kl": s.median_kl,
        "p99_kl": s.p99_kl,
        "max_kl": s.max_kl,
        "top1_agreement": s.top1_agreement[0],
        "top1_agreement_uncertainty": s.top1_agreement[1],
        "rms_dp": s.rms_dp[0],
        "rms_dp_uncertainty": s.rms_dp[1],
        "ppl_a": s.ppl_a[0],
        "ppl_a_uncertainty": s.ppl_a[1],
        "ppl_b": s.ppl_b[0],
        "ppl_b_uncertainty": s.ppl_b[1],
        "ln_ppl_ratio": s.ln_ppl_ratio[0],
        "ln_ppl_ratio_uncertainty": s.ln_ppl_ratio[1],
    }


def compare_json(compared: Compared, label_a: str, label_b: str, out: TextIO | None = None) -> None:
    """One JSON document: the models, `summary` (KL in nats, agreement as a fraction),
    `worst` (largest KL first, with both models' top candidates) and `tokens`, one row
    per token of the text (`kl_bits` null where the token is not scored)."""
    out = out or sys.stdout
    r = compared.result
    piece = compared.piece

    def top(cands) -> list[dict]:
        return [{**token_object(t, piece(t)), "prob": p} for t, p in cands]

    slot = {p: s for s, p in enumerate(r.positions.tolist())}
    rows = []
    for i, tok in enumerate(r.tokens):
        row = token_object(tok, piece(tok))
        s = slot.get(i)
        if s is None:
            row["kl_bits"] = None
        else:
            row.update(
                kl_bits=float(r.kl[s] / LN2),
                p_a=math.exp(r.logprob_a[s]),
                p_b=math.exp(r.logprob_b[s]),
                top_a=int(r.top_a[s]),
                top_b=int(r.top_b[s]),
                same_top=bool(r.top_a[s] == r.top_b[s]),
            )
        rows.append(row)
    doc = {
        "a": {"model": label_a, "name": compared.name_a},
        "b": {"model": label_b, "name": compared.name_b},
        "window": compared.window,
        "chunked": compared.chunked,
        "summary": summary_object(r.summary()),
        "worst": [
            {
                "index": w.index,
                **token_object(r.tokens[w.index], piece(r.tokens[w.index])),
                "kl_bits": w.kl / LN2,
                "top_a": top(w.top_a),
                "top_b": top(w.top_b),
            }
            for w in r.worst
        ],
        "tokens": rows,
    }
    out.write(json_safe(json.dumps(doc, ensure_ascii=False)) + "\n")
    out.flush()

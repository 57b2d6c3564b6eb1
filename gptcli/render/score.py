"""The `score` view: a text coloured by each token's probability given the text before
it, its perplexity and surprisal, the least likely tokens; or the same as JSON."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import TextIO

from gptcli.console import shows_colour
from gptcli.render.next import pad
from gptcli.render.tokens import (
    TextPainter,
    fmt_prob,
    fold,
    legend,
    out_width,
    token_label,
    token_object,
)
from gptcli.terminal import json_safe


def score_text(
    scores,
    piece: Callable[[int], bytes],
    worst: int,
    skip: Callable[[int], bool] = lambda t: False,
    out: TextIO | None = None,
) -> None:
    """The text coloured token by token, the least likely tokens, then the summary."""
    out = out or sys.stdout
    colour = shows_colour()
    if colour:
        legend()
    painter = TextPainter(out, colour)
    lps = scores.logprobs
    for i, tok in enumerate(scores.tokens):
        if skip(tok):  # BOS and the like: not text
            continue
        painter.add(piece(tok), None if i == 0 else math.exp(lps[i]))
    painter.close()
    p = painter._painter
    lines = []
    picks = scores.least_likely(worst)
    if picks:
        lines.append("")
        lines.append(p.faint(f"least likely tokens (of {len(scores.scored)} scored):"))
        names = {i: token_label(piece(scores.tokens[i])) for i in picks}
        w = min(24, max(8, *(len(n) for n in names.values())))
        lines.append(p.faint(f"{'pos':>6}  {pad('token', w)}  {'prob':>7}  {'bits':>6}  expected"))
        for i in picks:
            q = math.exp(lps[i])
            best = token_label(piece(int(scores.best_ids[i])))
            bq = math.exp(scores.best_logprobs[i])
            lines.append(
                f"{i:>6}  {p.style(pad(names[i], w), q)}  {fmt_prob(q):>7}  "
                f"{-lps[i] / math.log(2):6.2f}  {best} {p.faint(fmt_prob(bq))}"
            )
    lines.append("")
    lines.append(
        fold(
            f"perplexity {scores.perplexity():.3f} · mean surprisal "
            f"{scores.mean_surprisal_bits():.3f} bits/token · {len(scores.scored)} tokens "
            "scored (the first has no context)",
            out_width(out),
        )
    )
    out.write("\n".join(lines) + "\n")
    out.flush()


def score_json(scores, piece: Callable[[int], bytes], worst: int, out: TextIO | None = None):
    """JSON Lines: one object per token (`logprob` null for the first, which has no
    context), then a summary with perplexity, mean surprisal and the least likely."""
    out = out or sys.stdout
    lps = scores.logprobs
    write = out.write
    for i, tok in enumerate(scores.tokens):
        obj = token_object(tok, piece(tok))
        if i == 0:
            obj["logprob"] = None
        else:
            obj["logprob"] = float(lps[i])
            obj["surprisal_bits"] = float(-lps[i] / math.log(2))
            obj["expected"] = {
                **token_object(int(scores.best_ids[i]), piece(int(scores.best_ids[i]))),
                "logprob": float(scores.best_logprobs[i]),
            }
        write(json_safe(json.dumps(obj, ensure_ascii=False)) + "\n")
    summary = {
        "tokens": len(scores.tokens),
        "scored_tokens": len(scores.scored),
        "perplexity": scores.perplexity(),
        "mean_surprisal_bits": scores.mean_surprisal_bits(),
        "least_likely": [
            {
                "index": i,
                **token_object(scores.tokens[i], piece(scores.tokens[i])),
                "logprob": float(lps[i]),
            }
            for i in scores.least_likely(worst)
        ],
    }
    write(json_safe(json.dumps(summary, ensure_ascii=False)) + "\n")
    out.flush()

"""The `next` view: the distribution over the next token, as a chart under one or more
temperatures (with the masked one under a constraint) or as JSON, one object per step."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TextIO

from gptcli.console import shows_colour
from gptcli.render.tokens import _after, _lp, _Painter, bar, out_width, token_label, token_object
from gptcli.terminal import json_safe


def pad(text: str, width: int) -> str:
    from rich.cells import cell_len

    return text + " " * max(0, width - cell_len(text))


def _fmt_t(t: float) -> str:
    return f"{t:g}"


class NextChart:
    """The top candidates as horizontal bars, one column group per temperature."""

    def __init__(self, piece: Callable[[int], bytes], out: TextIO | None = None):
        self.out = out or sys.stdout
        self.piece = piece
        self._painter = _Painter(shows_colour())

    def step(self, step: int, position: int | None, dist) -> None:
        p = self._painter
        temps = dist.temperatures
        single = len(temps) == 1
        names = [token_label(self.piece(c.id)) for c in dist.candidates]
        w = min(24, max(8, *(len(n) for n in names)))
        lines = []
        if step:
            lines.append("")
        head = f"step {step + 1}{_after(position)}"
        width = out_width(self.out)
        room = None if width is None else width - (3 + 2 + w + 2 + 8 + 2)
        if single:
            t = temps[0]
            head += f" · T={_fmt_t(t)}"
            if dist.entropy_bits[0] is not None:  # None: unknown (a server's top-K only)
                head += f" · entropy {dist.entropy_bits[0]:.3f} bits"
            lines.append(p.faint(head))
            lines.append(p.faint(f"{'#':>3}  {pad('token', w)}  {'prob':>6}  {'logprob':>8}  cum"))
            # the bar takes what the terminal leaves after the numbers, up to 30
            bar_w = 30 if room is None else max(0, min(30, room - 17))
            for i, (c, name) in enumerate(zip(dist.candidates, names, strict=True), 1):
                q = c.probs[0]
                lines.append(
                    f"{i:>3}  {p.style(pad(name, w), q)}  {q:6.4f}  {c.logprob:8.3f}  "
                    f"{c.cumulative[0]:5.3f}  {p.style(bar(q, bar_w), q) if bar_w >= 4 else ''}"
                )
        else:
            # one column per temperature, narrowed (bars first) to fit the terminal
            col = 20 if room is None else max(11, min(20, room // len(temps)))
            lines.append(p.faint(head))
            lines.append(
                p.faint(
                    f"{'':>3}  {pad('', w)}  {'':>8}  "
                    + "".join(pad(f"T={_fmt_t(t)}", col) for t in temps)
                )
            )
            lines.append(
                p.faint(
                    f"{'':>3}  {pad('entropy', w)}  {'':>8}  "
                    + "".join(pad(f"{h:.2f} bits", col) for h in dist.entropy_bits)
                )
            )
            lines.append(
                p.faint(
                    f"{'#':>3}  {pad('token', w)}  {'logprob':>8}  "
                    + "".join(pad("prob", col) for _ in temps)
                )
            )
            for i, (c, name) in enumerate(zip(dist.candidates, names, strict=True), 1):
                cells = [f"{i:>3}  {pad(name, w)}  {c.logprob:8.3f}  "]
                for q in c.probs:
                    shown = p.style(bar(q, col - 8), q) if col - 8 >= 3 else pad("", col - 8)
                    cells.append(f"{q:6.4f} " + shown + " ")
                lines.append("".join(cells).rstrip())
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()


class NextJsonWriter:
    """One JSON object per step: `temperatures`, `entropy_bits` (one per temperature)
    and `top`, each candidate with `logprob` at temperature 1 and, per temperature,
    `probs` and `cumulative`."""

    def __init__(self, piece: Callable[[int], bytes], out: TextIO | None = None):
        self.out = out or sys.stdout
        self.piece = piece

    def step(self, step: int, position: int, dist, masked=None) -> None:
        obj = {
            "step": step,
            "position": position,
            "temperatures": list(dist.temperatures),
            "entropy_bits": list(dist.entropy_bits),
            "top": self._top(dist),
        }
        if masked is not None:  # under a grammar: the distribution after its mask
            obj["masked"] = {"entropy_bits": list(masked.entropy_bits), "top": self._top(masked)}
        self.out.write(json_safe(json.dumps(obj, ensure_ascii=False)) + "\n")
        self.out.flush()

    def _top(self, dist) -> list[dict]:
        return [
            {
                **token_object(c.id, self.piece(c.id)),
                "logprob": _lp(c.logprob),  # a server's floor is log 0: null, as above
                "probs": list(c.probs),
                "cumulative": list(c.cumulative),
            }
            for c in dist.candidates
        ]


class NextMaskedChart:
    """`next` under a grammar: the model's own top candidates and those of the masked
    distribution side by side (first temperature), so what the format bends shows."""

    def __init__(self, piece: Callable[[int], bytes], out: TextIO | None = None):
        self.out = out or sys.stdout
        self.piece = piece
        self._painter = _Painter(shows_colour())

    def _cells(self, c, w: int) -> str:
        if c is None:
            return " " * (w + 18)
        q = c.probs[0]
        name = pad(token_label(self.piece(c.id)), w)
        return f"{self._painter.style(name, q)} {q:6.4f} {self._painter.style(bar(q, 10), q)}"

    def step(self, step: int, position: int, dist, masked) -> None:
        p = self._painter
        rows = max(len(dist.candidates), len(masked.candidates))
        w = 14
        t = _fmt_t(dist.temperatures[0])
        lines = [""] if step else []
        lines.append(p.faint(f"step {step + 1}{_after(position)} · T={t}"))
        lines.append(
            p.faint(f"{'#':>3}  {pad('model', w + 18)}  │ {'under the grammar':<{w + 18}}")
        )
        allowed = {c.id for c in masked.candidates}
        for i in range(rows):
            left = dist.candidates[i] if i < len(dist.candidates) else None
            right = masked.candidates[i] if i < len(masked.candidates) else None
            mark = "✗" if left is not None and left.id not in allowed else " "
            lines.append(
                f"{i + 1:>3}  {self._cells(left, w)} {p.faint(mark)}│ {self._cells(right, w)}"
            )
        lines.append(p.faint("     ✗: forbidden by the grammar"))
        self.out.write("\n".join(line.rstrip() for line in lines) + "\n")
        self.out.flush()

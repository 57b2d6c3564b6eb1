"""How probabilities look: tokens coloured on a fixed scale, alternatives beside each
token, bar charts of a next-token distribution, JSON Lines for scripts.

Colour is only a rendering of numbers: where stdout gets no colour (a pipe,
NO_COLOR), the same numbers are printed as text, `token[0.77]`.
Per-token output is plain `write` + `flush` of pre-built escape sequences, so the
token loop pays no rich layout cost.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from gptcli.console import shows_colour, stderr_console, stdout_console
from gptcli.terminal import Guard, escape_char, json_safe, needs_escaping

if TYPE_CHECKING:
    from rich.console import Console

    from gptcli.backends.events import Finish, TokenEvent
    from gptcli.sampling.sampler import Draw

# The fixed scale: (lowest probability, name, rich style), highest band first.
BANDS: tuple[tuple[float, str, str], ...] = (
    (0.7, "high", "green"),
    (0.3, "middle", "yellow"),
    (0.0, "low", "bold red"),
)
DIM = "dim"


def band(p: float) -> int:
    """Index into BANDS of probability p."""
    for i, (lo, _, _) in enumerate(BANDS):
        if p >= lo:
            return i
    return len(BANDS) - 1


def style_escapes(console: Console, style: str) -> tuple[str, str]:
    """The escape sequences rich writes before and after text in `style`."""
    from rich.text import Text

    with console.capture() as cap:
        console.print(Text("\x00", style=style), end="", soft_wrap=True)
    before, _, after = cap.get().partition("\x00")
    return before, after


_SHOWN = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def _hex_bytes(err: UnicodeDecodeError) -> tuple[str, int]:
    # A token may end inside a UTF-8 character: show those bytes as <0xE2>.
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start : err.end]), err.end


codecs.register_error("gptcli-hexbytes", _hex_bytes)


def token_label(piece: bytes) -> str:
    """One token as visible text, the one notation of every token view (tokenize,
    embed, --probs alternatives, next, score, lens, attention): spaces as ␣, line ends
    as ↵, tabs as ⇥, the bytes of an unfinished UTF-8 character as <0xE2>; control
    characters, C1 and bidi controls as the escapes terminal.py shows (\\x1b, \\u202e)."""
    out = []
    for ch in piece.decode("utf-8", errors="gptcli-hexbytes"):
        if ch in _SHOWN:
            out.append(_SHOWN[ch])
        elif needs_escaping(ch, token_view=True):
            out.append(escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def out_width(out: TextIO) -> int | None:
    """The terminal's width when `out` is one; None (no limit) for a pipe."""
    try:
        return os.get_terminal_size(out.fileno()).columns if out.isatty() else None
    except (AttributeError, OSError, ValueError):
        return None


def fold(text: str, width: int | None, indent: str = "") -> str:
    """Break a plain line at spaces to fit `width` (None: as it is)."""
    if width is None or len(text) <= width:
        return text

    return "\n".join(textwrap.wrap(text, width, subsequent_indent=indent))


def token_text(piece: bytes) -> str:
    """A token's exact bytes as text; bytes of an unfinished UTF-8 character as \\xNN."""
    return piece.decode("utf-8", errors="backslashreplace")


def fmt_prob(p: float) -> str:
    if p >= 0.995:
        return "1.00" if p >= 0.99995 else f"{p:.2f}"
    if p >= 0.01 or p == 0:
        return f"{p:.2f}"
    return f"{p:.0e}".replace("e-0", "e-")  # 3e-5: small numbers stay short


class _Painter:
    """Text in the colour of its probability band, or `text[p]` without colour."""

    def __init__(self, colour: bool, console: Console | None = None):
        self.colour = colour
        if colour:
            if console is None:
                console = stdout_console()
            if not shows_colour(console):  # colour asked for where rich would not give it
                from rich.console import Console

                console = Console(force_terminal=True, color_system="standard", no_color=False)
            self.bands = [style_escapes(console, style) for _, _, style in BANDS]
            self.dim = style_escapes(console, DIM)

    def paint(self, text: str, probs: Sequence[float]) -> str:
        """Text released at once, with the probabilities of the tokens that made it."""
        if self.colour:
            joint = math.prod(probs)  # a character split over tokens: their joint probability
            before, after = self.bands[band(joint)]
            return f"{before}{text}{after}"
        numbers = ",".join(fmt_prob(p) for p in probs)
        # The numbers go before trailing newlines so they stay on the token's line.
        body = text.rstrip("\n")
        return f"{body}[{numbers}]{text[len(body) :]}"

    def style(self, text: str, p: float) -> str:
        if not self.colour:
            return text
        before, after = self.bands[band(p)]
        return f"{before}{text}{after}"

    def faint(self, text: str) -> str:
        if not self.colour:
            return text
        return f"{self.dim[0]}{text}{self.dim[1]}"


def legend(use_model_probs: bool = False) -> None:
    """The scale, on stderr, in its colours."""
    from rich.text import Text

    kind = "model (softmax of the raw logits)" if use_model_probs else "sampled distribution"
    console = stderr_console()
    width = out_width(sys.stderr)
    line = Text(f"probability ({kind}):", style="dim")
    for i, (lo, name, style) in enumerate(BANDS):
        hi = BANDS[i - 1][0] if i else None
        if hi is None:
            span = f"≥ {lo:.2f}"
        elif lo == 0:
            span = f"< {hi:.2f}"
        else:
            span = f"{lo:.2f}–{hi:.2f}"
        band_text = f"{name} {span}"
        # a narrow terminal breaks the line between bands, never inside one
        if width is not None and len(line.plain) + 2 + len(band_text) > width:
            console.print(line, soft_wrap=True)
            line = Text("  ")
        else:
            line.append("  ")
        line.append(band_text, style=style)
    console.print(line, soft_wrap=True)


class ProbsRenderer:
    """Streams generated text with each token's probability, like render.TextRenderer.

    alternatives=0: the text flows, each piece coloured by its probability (or
    `piece[0.77]` without colour). alternatives=K: one line per token with its
    probability, a bar, and the K most likely other candidates at that step.
    Give Generation `n_top=renderer.n_top, model_probs=renderer.model_probs`.
    """

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        use_model_probs: bool = False,
        alternatives: int = 0,
        piece: Callable[[int], bytes] | None = None,
        colour: bool | None = None,
    ):
        if alternatives and piece is None:
            raise ValueError("alternatives need piece(token_id) -> bytes (engine.piece)")
        self.out = out or sys.stdout
        self.use_model_probs = use_model_probs
        self.alternatives = alternatives
        self._piece = piece
        self._painter = _Painter(shows_colour() if colour is None else colour)
        self._guard = Guard.for_stream(self.out, self._painter.colour)
        self._held: list[float] = []  # probabilities of tokens whose text is not out yet
        self._marks: list[str] = []  # forced-token marks waiting for their text
        self._last = ""
        self._texts: dict[int, str] = {}

    @property
    def colour(self) -> bool:
        return self._painter.colour

    @property
    def n_top(self) -> int:
        # One more than shown: the chosen token is listed apart from its alternatives.
        return self.alternatives + 1 if self.alternatives else 0

    @property
    def model_probs(self) -> bool:
        return self.use_model_probs

    def prob(self, draw: Draw) -> float:
        if self.use_model_probs and draw.model_logprob is not None:
            return math.exp(draw.model_logprob)
        return draw.prob

    def _text(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = token_label(self._piece(token))
            self._texts[token] = text
        return text

    def forced_mark(self, event: TokenEvent) -> str:
        """`⟨wanted ↵ 0.41⟩`: a grammar refused the model's own draw here."""
        forced = event.forced
        name = self._text(forced.wanted) if self._piece else f"#{forced.wanted}"
        return f"⟨wanted {name} {fmt_prob(forced.wanted_prob)}⟩"

    def token(self, event: TokenEvent) -> None:
        p = self.prob(event.draw)
        if self.alternatives:
            self._line(event, p)
            return
        if getattr(event, "forced", None) is not None:
            self._marks.append(self.forced_mark(event))
        if not event.text:  # an unfinished character (or held back for a stop string)
            self._held.append(p)
            return
        probs = [*self._held, p]
        self._held.clear()
        shown = self._painter.paint(self._guard(event.text), probs)
        if self._marks:  # forced tokens: the model's own choice after the text they made
            body = shown.rstrip("\n")
            shown = body + self._painter.faint("".join(self._marks)) + shown[len(body) :]
            self._marks.clear()
        self.out.write(shown)
        self.out.flush()
        self._last = event.text

    def _line(self, event: TokenEvent, p: float) -> None:
        paint = self._painter
        name = token_label(event.piece)
        cells = [paint.style(f"{name:<14}", p), f" {fmt_prob(p):>5} ", bar(p, 10)]
        others = []
        rank = None
        for i, alt in enumerate(event.draw.top):
            if alt.id == event.id:
                rank = i + 1
                continue
            if len(others) < self.alternatives:
                q = self._alt_prob(alt)
                # "cut": top-k/top-p/min-p removed it from the distribution drawn from.
                shown = fmt_prob(q) if q is not None else "cut"
                q = q or 0.0
                others.append(paint.style(self._text(alt.id), q) + paint.faint(f" {shown}"))
        mark = f"#{rank}" if rank and rank > 1 else ""
        cells.append(paint.faint(f" {mark:>3} │ "))
        cells.append(paint.faint("  ").join(others))
        if getattr(event, "forced", None) is not None:
            cells.append(paint.faint("  forced " + self.forced_mark(event)))
        self.out.write("".join(cells) + "\n")
        self.out.flush()
        self._last = "\n"

    def _alt_prob(self, alt) -> float | None:
        if self.use_model_probs:
            return math.exp(alt.model_logprob)
        return math.exp(alt.logprob) if alt.logprob is not None else None

    def finish(self, finish: Finish | None) -> None:
        if finish is not None and finish.text and not self.alternatives:
            # Text held back to the end (an unfinished character, a stop-string start).
            probs = self._held or [1.0]
            self.out.write(self._painter.paint(self._guard(finish.text), probs))
            self._held.clear()
            self._last = finish.text
        if self._marks:
            self.out.write(self._painter.faint("".join(self._marks)))
            self._marks.clear()
        if self._last and not self._last.endswith("\n"):
            self.out.write("\n")
        self.out.flush()


BLOCKS = " ▏▎▍▌▋▊▉█"


def bar(p: float, width: int) -> str:
    """A horizontal bar of p (0..1) in eighths of a character, padded to width."""
    eighths = int(round(max(0.0, min(1.0, p)) * width * 8))
    full, part = divmod(eighths, 8)
    s = "█" * full + (BLOCKS[part] if part else "")
    return s.ljust(width)


# -- JSON Lines -----------------------------------------------------------------------


def _lp(x: float | None) -> float | None:
    # JSON has no -Infinity: a probability of exactly 0 is written as null.
    return None if x is None or not math.isfinite(x) else x


def token_object(token: int, piece: bytes) -> dict:
    # A negative id is a remote token known only by its text: no id (null).
    return {"token": token_text(piece), "id": token if token >= 0 else None, "bytes": list(piece)}


class JsonRenderer:
    """One JSON object per generated token, then one for the finish (OpenAI's names).

    `logprob` is under the distribution the token was drawn from, `model_logprob`
    under the softmax of the raw logits; in `top_logprobs` a `logprob` of null means
    the candidate was cut from the sampled distribution.
    """

    def __init__(self, piece: Callable[[int], bytes], out: TextIO | None = None, n_top: int = 5):
        self.out = out or sys.stdout
        self.piece = piece
        self.n_top = n_top
        self.model_probs = True
        self._tops: dict[int, dict] = {}

    def _top(self, token: int) -> dict:
        obj = self._tops.get(token)
        if obj is None:
            obj = token_object(token, self.piece(token))
            self._tops[token] = obj
        return obj

    def token(self, event: TokenEvent) -> None:
        obj = self.token_dict(event)
        self.out.write(json_safe(json.dumps(obj, ensure_ascii=False)) + "\n")
        self.out.flush()

    def token_dict(self, event: TokenEvent) -> dict:
        """The object written for one token (--each-line --json gathers them per line)."""
        d = event.draw
        obj = token_object(event.id, event.piece)
        obj["logprob"] = _lp(d.logprob)
        obj["model_logprob"] = _lp(d.model_logprob)
        obj["top_logprobs"] = [
            {**self._top(a.id), "logprob": _lp(a.logprob), "model_logprob": _lp(a.model_logprob)}
            for a in d.top
        ]
        forced = getattr(event, "forced", None)
        if forced is not None:  # a grammar refused the model's own draw
            obj["forced"] = {
                "wanted": self._top(forced.wanted),
                "wanted_prob": forced.wanted_prob,
            }
        return obj

    def finish(self, finish: Finish | None) -> None:
        if finish is None:
            self.out.flush()
            return
        self.out.write(json.dumps(finish_object(finish), ensure_ascii=False) + "\n")
        self.out.flush()


def finish_object(finish: Finish) -> dict:
    """The closing JSON line of a generation, local or remote (unknown counts are null)."""
    t = finish.timings
    gen_tps = None
    if finish.completion_tokens is not None and t.generation_s > 0:
        gen_tps = round(finish.completion_tokens / t.generation_s, 3)
    prompt_tps = t.prompt_tps()
    obj = {
        "finish_reason": finish.reason,
        "usage": {
            "prompt_tokens": finish.prompt_tokens,
            "completion_tokens": finish.completion_tokens,
        },
        "timings": {
            "load_s": round(t.load_s, 6),
            "prompt_s": round(t.prompt_s, 6),
            "ttft_s": round(t.ttft_s, 6),
            "generation_s": round(t.generation_s, 6),
            "prompt_tokens_evaluated": t.prompt_tokens_evaluated,
            "prompt_tokens_per_s": None if prompt_tps is None else round(prompt_tps, 3),
            "tokens_per_s": gen_tps,
        },
    }
    if finish.stop is not None:
        obj["stop"] = finish.stop
    return obj


# -- incremental painting of a whole text (score) -------------------------------------


@dataclass
class TextPainter:
    """Paints a token stream (bytes, probability or None for unscored) as text,
    joining tokens that split a UTF-8 character."""

    out: TextIO
    colour: bool

    def __post_init__(self) -> None:
        self._painter = _Painter(self.colour)
        self._guard = Guard.for_stream(self.out, self.colour)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held: list[float] = []
        self.last = ""

    def add(self, piece: bytes, p: float | None) -> None:
        text = self._decoder.decode(piece)
        if p is not None:
            self._held.append(p)
        if not text:
            return
        shown = self._guard(text)
        if self._held:
            self.out.write(self._painter.paint(shown, self._held))
        else:
            self.out.write(self._painter.faint(shown))
        self._held = []
        self.last = text

    def close(self) -> None:
        text = self._decoder.decode(b"", final=True)
        if text:
            self.out.write(self._painter.paint(self._guard(text), self._held or [1.0]))
            self.last = text
        if self.last and not self.last.endswith("\n"):
            self.out.write("\n")
        self.out.flush()


# -- next: bar charts of the next-token distribution -----------------------------------


# -- score ------------------------------------------------------------------------------


def write_lines_json(
    results, piece: Callable[[int], bytes], n_top: int, out: TextIO | None = None
) -> None:
    """--each-line --json (or --probs): one object per input line, in order: `line`
    (1-based), `text`, `tokens` (each as one `generate --json` line), then the line's
    finish_reason, usage and timings, or its `error`."""
    out = out or sys.stdout
    tokens = JsonRenderer(piece, out=out, n_top=n_top)
    for r in results:  # batching.LineResult
        listed = [tokens.token_dict(e) for e in r.events]
        obj = {"line": r.index + 1, "text": r.text, "tokens": listed}
        if r.error is not None:
            obj["error"] = r.error
        elif r.finish is not None:
            obj.update(finish_object(r.finish))
        out.write(json_safe(json.dumps(obj, ensure_ascii=False)) + "\n")
        out.flush()


def _after(position: int | None) -> str:
    """Where a step is; a server that sent no token count leaves it unknown."""
    return "" if position is None else f": after {position} tokens"

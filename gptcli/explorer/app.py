"""The explorer's full-screen app (Textual): the text so far, the candidates at the
cursor, the branch tree, a status line and the keys in a footer.

Every panel is redrawn from the session: a settings key recomputes the view from
cached logits; only accepting a token (or visiting a node whose logits were
dropped) calls the model."""

from __future__ import annotations

import asyncio
import codecs
import os
import time

from rich.cells import set_cell_size
from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.drivers.linux_driver import LinuxDriver
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Static

from gptcli.errors import GptcliError
from gptcli.explorer.dist import View, logprob
from gptcli.explorer.session import Session
from gptcli.explorer.text import candidate, safe, span
from gptcli.limits import EXPLORE_MAX_STEPS
from gptcli.render.tokens import BANDS, band, bar, fmt_prob

TEMPERATURES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0)
TOP_KS = (1, 2, 5, 10, 20, 40, 100, 1000, 0)  # 0: off, the widest
TOP_PS = (0.1, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0)  # 1: off
MIN_PS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # 0: off
FULL_ROW = 71  # columns of a candidate row with both bars (51 without them)
REDRAW_S = 0.05  # during `g` / `s`: a redraw per token would cost more than the token

HELP = """\
gptcli explore: walk the next-token distribution one token at a time.

  up / down        choose a candidate (the bars on the right)
  enter / right    take it: one token evaluated (an earlier choice: no evaluation)
  left / backspace step back one token (nothing evaluated)
  g / s            continue N tokens greedily / sampled (any key stops);  n  sets N
  t / T            lower / raise the temperature
  k K, p P, m M    narrower / wider top-k, top-p, min-p
  f                force a token: type its text
  v / V / o        with --steer: lower / raise the vector's multiplier, switch it off/on
  [ / ]            previous / next branch;  a click on a token or branch jumps there
  w                save the tree to a file (reopen with --load FILE)
  e                quit and print this branch's text on stdout
  q                quit

Text colour: the model's probability of each token (softmax of the raw logits):
green >= 0.70, yellow >= 0.30, red below. Bars: 'model' is that softmax, 'sampled'
the distribution after top-k, top-p, min-p and the temperature, as `generate` draws.
'cut' marks candidates that top-k (k), top-p (p) or min-p (m) remove.

Press any key to close this help."""


def _step(values: tuple, current: float, direction: int) -> float:
    """The next value of a ladder from `current`, one rung in `direction`."""
    if current in values:
        i = values.index(current) + direction
        return values[max(0, min(len(values) - 1, i))]
    if direction > 0:
        return next((v for v in values if v > current), values[-1])
    return next((v for v in reversed(values) if v < current), values[0])


def _t(x: float) -> str:
    return f"{x:g}"


def tty_size() -> tuple[int, int] | None:
    """(columns, lines) of the terminal the app draws on: stderr's or stdin's, else
    /dev/tty's. stdout may be a file (`explore > story.txt`, for `e`)."""
    for fd in (2, 0):
        try:
            size = os.get_terminal_size(fd)
        except (OSError, ValueError):
            continue
        if size.columns > 0 and size.lines > 0:
            return size.columns, size.lines
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return None
    try:
        size = os.get_terminal_size(fd)
        return (size.columns, size.lines) if size.columns > 0 and size.lines > 0 else None
    except OSError:
        return None
    finally:
        os.close(fd)


class TtyDriver(LinuxDriver):
    """Textual's driver asks shutil, which reads stdout's size: with stdout redirected it
    laid the app out at 80x24 whatever the screen. This one asks the terminal."""

    def _get_terminal_size(self) -> tuple[int, int]:
        return tty_size() or super()._get_terminal_size()


class Ask(ModalScreen[str | None]):
    """One line of input; Enter gives it, Escape gives None."""

    DEFAULT_CSS = """
    Ask { align: center bottom; }
    Ask > Vertical { height: auto; width: 100%; background: $panel; padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, label: str, value: str = ""):
        super().__init__()
        self.label, self.value = label, value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.label))
            yield Input(value=self.value, id="ask")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Help(ModalScreen[None]):
    DEFAULT_CSS = """
    Help { align: center middle; }
    Help > Static { width: 86; max-width: 100%; height: auto; background: $panel; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        yield Static(Text(HELP))

    def on_key(self, event) -> None:
        event.stop()
        self.dismiss(None)

    def on_click(self) -> None:
        self.dismiss(None)


class Pane(VerticalScroll, can_focus=False):
    """A scrolling panel that never takes the keys (they belong to the app)."""


class Explorer(App[str | None]):
    """Returns the branch text when quit with `e`, else None."""

    TITLE = "gptcli explore"
    CSS = """
    #body { height: 1fr; }
    #left { width: 1fr; }
    #textpane { height: 2fr; border: round $primary; }
    #treepane { height: 1fr; border: round $secondary; }
    #candpane { width: 74; max-width: 67%; border: round $accent; }
    #status { height: 1; background: $panel; }
    """
    BINDINGS = [
        Binding("up", "choose(-1)", "choose", show=False),
        Binding("down", "choose(1)", "choose", show=False),
        Binding("enter,right", "accept", "take"),
        Binding("left,backspace", "back", "back"),
        Binding("g", "run(1)", "greedy N"),
        Binding("s", "run(0)", "sample N"),
        Binding("n", "ask_steps", "N", show=False),
        Binding("t", "temperature(-1)", "T-"),
        Binding("T,shift+t", "temperature(1)", "T+"),
        Binding("k", "top_k(-1)", "top-k", show=False),
        Binding("K,shift+k", "top_k(1)", "top-k", show=False),
        Binding("p", "top_p(-1)", "top-p", show=False),
        Binding("P,shift+p", "top_p(1)", "top-p", show=False),
        Binding("m", "min_p(1)", "min-p", show=False),
        Binding("M,shift+m", "min_p(-1)", "min-p", show=False),
        Binding("f", "force", "force"),
        Binding("v", "steer(-0.5)", "steer-", show=False),
        Binding("V,shift+v", "steer(0.5)", "steer+", show=False),
        Binding("o", "steer_off", "steer off", show=False),
        Binding("left_square_bracket", "branch(-1)", "branch", show=False),
        Binding("right_square_bracket", "branch(1)", "branch", show=False),
        Binding("w", "save", "save"),
        Binding("e", "export", "export"),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "interrupt", "quit", show=False, priority=True),
    ]

    def get_driver_class(self):
        driver = super().get_driver_class()
        return TtyDriver if driver is LinuxDriver else driver

    def __init__(self, session: Session):
        super().__init__()
        self.session = session
        self.selected = 0  # 0-based rank of the chosen candidate at the cursor
        self._view: View | None = None
        self._drawn_at: tuple | None = None  # what the text and tree panels show
        self._model_name = safe(session.engine.name)[:32]
        self._run: dict | None = None  # a run in progress: taken, of, why it stopped

    # -- layout ------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            with Vertical(id="left"):
                with Pane(id="textpane"):
                    yield Static(id="text")
                with Pane(id="treepane"):
                    yield Static(id="tree")
            with Pane(id="candpane"):
                yield Static(id="cands")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#textpane").border_title = "text"
        self.query_one("#textpane").border_subtitle = "p(token): green ≥ 0.7, yellow ≥ 0.3, red"
        self.query_one("#treepane").border_title = "branches"
        self.query_one("#candpane").border_title = "next token"
        self._select_followed()
        self.refresh_all()

    def on_resize(self) -> None:
        if self._view is not None:
            self.refresh_all()

    # -- drawing -------------------------------------------------------------

    def refresh_all(self) -> None:
        """Redraw every panel from the session (no model call unless the cursor's
        logits were dropped from the cache)."""
        try:
            self._view = self.session.view()
        except GptcliError as e:
            self._view = None
            self.say(e.message, error=True)
        tree = self.session.tree
        # A settings key changes only the candidates and the status: the text and the
        # tree are redrawn when the cursor or the tree changed (or the size).
        where = (tree.current, len(tree.nodes), tree.leaf(tree.current), self.size)
        if where != self._drawn_at:
            self._drawn_at = where
            self.query_one("#text", Static).update(self.render_text())
            self.query_one("#tree", Static).update(self.render_tree())
            self.query_one("#textpane", Pane).scroll_end(animate=False)
        self.query_one("#cands", Static).update(self.render_candidates())
        self.query_one("#status", Static).update(self.render_status())

    def render_text(self) -> Text:
        s = self.session
        tree = s.tree
        out = Text()
        out.append(safe(tree.prompt_text), style=Style(dim=True, meta={"@click": "app.jump(0)"}))
        path = tree.path(tree.current)
        ahead = tree.path(tree.leaf(tree.current))[len(path) :]  # the branch beyond the cursor
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for nid in path:
            node = tree.nodes[nid]
            p = float(2.718281828459045**node.logprob) if node.logprob > -700 else 0.0
            colour = BANDS[band(p)][2]
            out.append(
                safe(decoder.decode(node.piece)),
                style=Style.parse(colour) + Style(meta={"@click": f"app.jump({nid})"}),
            )
        out.append("▌", style="bold reverse")
        for nid in ahead:
            out.append(
                safe(decoder.decode(tree.nodes[nid].piece)),
                style=Style(dim=True, italic=True, meta={"@click": f"app.jump({nid})"}),
            )
        return out

    def _bars(self) -> bool:
        """Room for the two bars. The pane takes at most two thirds of the screen (at 80
        columns the text had 6); narrower, it keeps every number and drops the bars."""
        width = self.query_one("#candpane").size.width
        return not width or width >= FULL_ROW

    def _rows(self) -> int:
        height = self.query_one("#candpane").size.height
        return max(5, (height or 24) - 6)

    def render_candidates(self) -> Text:
        # One Text with fixed columns: a rich Table is re-measured on every layout pass
        # and cost most of a redraw (0.3 s of 0.4 s under load).
        v = self._view
        if v is None:
            return Text("no distribution here")
        s = self.session
        if s.at_end():
            return Text("end of text: step back (left) to continue", style="dim")
        rows = self._rows()
        start = max(0, min(self.selected - rows // 2, len(v.order) - rows))
        taken = s.tree.follow(s.tree.current)
        taken_token = s.tree.nodes[taken].token if taken is not None else None
        out = Text(no_wrap=True, overflow="crop")
        bars = self._bars()
        if bars:
            head = (
                f"{'#':>5} {'token':<14} {'model':<10} {'p':>5} {'logp':>6} {'cum':>5} "
                f"{'sampled':<10} {'p':>5} cut\n"
            )
        else:
            head = f"{'#':>5} {'token':<14} {'model':>6} {'logp':>6} {'cum':>5}{'sampled':>7} cut\n"
        out.append(head, style="bold")
        cum = float(v.model_probs[v.order[:start]].sum()) if start else 0.0
        for rank in range(start, min(start + rows, len(v.order))):
            tok = int(v.order[rank])
            pm = float(v.model_probs[tok])
            cum += pm
            ps = v.sampled_prob(rank)
            cut = v.cut_by(rank)
            mark = "▶" if rank == self.selected else ("•" if tok == taken_token else " ")
            row = Style(reverse=rank == self.selected, meta={"@click": f"app.pick({rank})"})
            lp = f"{logprob(pm):.2f}" if pm > 0 else "-inf"
            out.append(f"{mark + str(rank + 1):>5} ", style=row)
            out.append(set_cell_size(candidate(s.engine.piece(tok)), 14) + " ", style=row)
            if bars:
                out.append(bar(pm, 10), style=row + Style.parse(BANDS[band(pm)][2]))
            out.append(f" {fmt_prob(pm):>5} {lp:>6} {min(cum, 1.0):>5.2f} ", style=row)
            if bars:
                ps_style = "dim" if cut else BANDS[band(ps)][2]
                out.append(bar(ps, 10), style=row + Style.parse(ps_style))
            out.append(f" {fmt_prob(ps) if not cut else '':>5} {cut:<3}\n", style=row)
        out.append(
            f"entropy: model {v.entropy_model:.2f} bits, sampled {v.entropy_sampled:.2f} bits\n"
        )
        out.append(f"kept {v.kept} of {len(v.order)} candidates", style="dim")
        return out

    def render_tree(self) -> Text:
        tree = self.session.tree
        out = Text(no_wrap=True, overflow="ellipsis")  # one line per branch, cut at the edge
        segments = tree.segments()
        if not segments:
            return Text("no tokens yet: enter takes the highlighted candidate", style="dim")
        on_path = set(tree.path(tree.current)) | {tree.current}
        for seg in segments:
            first = tree.nodes[seg.nodes[0]]
            here = bool(on_path.intersection(seg.nodes))
            p = float(2.718281828459045**first.logprob) if first.logprob > -700 else 0.0
            text = b"".join(tree.nodes[n].piece for n in seg.nodes)
            label = span(text)
            label = label if len(label) <= 40 else label[:39] + "…"
            style = Style(bold=here, meta={"@click": f"app.jump({seg.nodes[-1]})"})
            out.append("  " * seg.level + ("▶ " if here else "├ "), style=style)
            out.append(f"{fmt_prob(p)} ", style=Style.parse(BANDS[band(p)][2]) + style)
            out.append(f"{label}", style=style)
            out.append(f"  ({len(seg.nodes)})\n", style=Style(dim=True) + style)
        return out

    def render_status(self) -> Text:
        s = self.session
        p = s.params
        used = len(s.tree.tokens(s.tree.current))
        speed = ""
        if s.last_eval and s.last_eval[1] > 0:
            speed = f"{s.last_eval[0] / s.last_eval[1]:.0f} tok/s"
        parts = [
            self._model_name,
            f"ctx {used}/{s.engine.n_ctx}",
            speed or "- tok/s",
            f"T {_t(p.temperature)}",
            f"top-k {p.top_k or 'off'}",
            f"top-p {_t(p.top_p) if p.top_p < 1 else 'off'}",
            f"min-p {_t(p.min_p) if p.min_p > 0 else 'off'}",
            f"N {s.steps}",
        ]
        if s.steer_base is not None:
            parts.append(f"steer ×{s.steer_scale:g}" if s.steer_scale else "steer off")
        if self._run is not None:
            parts.insert(0, f"running {self._run['taken']}/{self._run['of']}: any key stops")
        return Text(" │ ".join(parts), no_wrap=True, overflow="ellipsis")

    def say(self, message: str, error: bool = False) -> None:
        """A message in a corner of the screen for a few seconds (the status line is full)."""
        self.notify(safe(message), severity="error" if error else "information", markup=False)

    # -- helpers -------------------------------------------------------------

    def _select_followed(self) -> None:
        """Put the selection on the child `right` follows, else the most likely."""
        s = self.session
        nxt = s.tree.follow(s.tree.current)
        self.selected = 0
        if nxt is not None:
            try:
                v = s.view()
            except GptcliError:
                return
            tok = s.tree.nodes[nxt].token
            idx = (v.order == tok).nonzero()[0]
            self.selected = int(idx[0]) if len(idx) else 0

    def _do(self, fn, *args, **kwargs) -> None:
        """Run a session call; a failure is a notification, not an exit."""
        try:
            fn(*args, **kwargs)
        except GptcliError as e:
            self.say(e.message, error=True)
        self._select_followed()
        self.refresh_all()

    # -- actions -------------------------------------------------------------

    def action_choose(self, delta: int) -> None:
        if self._view is None:
            return
        self.selected = max(0, min(len(self._view.order) - 1, self.selected + delta))
        self.refresh_all()

    def action_pick(self, rank: int) -> None:
        self.selected = rank
        self.refresh_all()

    def action_accept(self) -> None:
        if self._view is None:
            return
        if self.session.at_end():
            self.say("end of text: nothing follows", error=True)
            self.refresh_all()
            return
        self._do(self.session.accept, int(self._view.order[self.selected]))

    def action_back(self) -> None:
        self._do(self.session.back)

    def action_jump(self, node: int) -> None:
        self._do(self.session.goto, node)

    def action_run(self, greedy: int) -> None:
        self._start(lambda: self.session.step(bool(greedy)), self.session.steps)

    def _start(self, step, n: int) -> None:
        """Take up to n tokens with step() (False: no more) as a run a key can stop."""
        if self._run is None:
            self._run = {"taken": 0, "of": n, "stop": None}
            self.run_worker(self._continue(step), group="run", exclusive=True)

    async def _continue(self, step) -> None:
        """`g` / `s` / `f`: one token per turn of the event loop, drawn as it comes (at
        most every REDRAW_S), so keys are read between tokens: any key stops the run."""
        s, run = self.session, self._run
        t0 = drawn = time.perf_counter()
        try:
            while run["taken"] < run["of"] and run["stop"] is None:
                try:
                    if not step():
                        run["stop"] = "end of text or a full context"
                        break
                except GptcliError as e:
                    self.say(e.message, error=True)
                    break
                run["taken"] += 1
                s.last_eval = (run["taken"], time.perf_counter() - t0)
                if time.perf_counter() - drawn >= REDRAW_S:
                    self.refresh_all()
                    drawn = time.perf_counter()
                await asyncio.sleep(0)  # the keys and the screen get their turn
        finally:
            self._run = None
        if run["stop"] is not None:
            self.say(f"stopped after {run['taken']} of {run['of']}: {run['stop']}")
        self._select_followed()
        self.refresh_all()

    async def on_event(self, event: events.Event) -> None:
        # During a run (`g`, `s`, `f`) a key or a mouse press only stops it (Ctrl-C and q
        # still quit): the keys are read between tokens.
        if self._run is not None and (
            (isinstance(event, events.Key) and event.key not in ("ctrl+c", "q"))
            or isinstance(event, events.MouseDown)
        ):
            self._run["stop"] = "a key" if isinstance(event, events.Key) else "a click"
            event.stop()
            return
        await super().on_event(event)

    def action_branch(self, direction: int) -> None:
        tree = self.session.tree
        leaves = tree.leaves()
        here = tree.leaf(tree.current)
        i = leaves.index(here) if here in leaves else 0
        self._do(self.session.goto, leaves[(i + direction) % len(leaves)])

    def _set(self, **change) -> None:
        self._do(self.session.set_params, **change)

    def action_steer(self, delta: float) -> None:
        self._do(self.session.set_steer_scale, round(self.session.steer_scale + delta, 3))

    def action_steer_off(self) -> None:
        self._do(self.session.toggle_steering)

    def action_temperature(self, direction: int) -> None:
        self._set(temperature=_step(TEMPERATURES, self.session.params.temperature, direction))

    def action_top_k(self, direction: int) -> None:
        k = self.session.params.top_k
        k_pos = float("inf") if k == 0 else k  # 0 is off: wider than any k
        ladder = tuple(float("inf") if v == 0 else v for v in TOP_KS)
        new = _step(ladder, k_pos, direction)
        self._set(top_k=0 if new == float("inf") else int(new))

    def action_top_p(self, direction: int) -> None:
        self._set(top_p=_step(TOP_PS, self.session.params.top_p, direction))

    def action_min_p(self, direction: int) -> None:
        self._set(min_p=_step(MIN_PS, self.session.params.min_p, direction))

    def action_ask_steps(self) -> None:
        def done(value: str | None) -> None:
            if value is None:
                return
            try:
                n = int(value)
                if not 1 <= n <= EXPLORE_MAX_STEPS:
                    raise ValueError
            except ValueError:
                self.say(
                    f"N must be a whole number from 1 to {EXPLORE_MAX_STEPS}, not {value!r}",
                    error=True,
                )
            else:
                self.session.steps = n
            self.refresh_all()

        self.push_screen(Ask("continue how many tokens with g / s?", str(self.session.steps)), done)

    def action_force(self) -> None:
        def done(value: str | None) -> None:
            if not value:
                return
            try:
                forced = self.session.force_tokens(value)
            except GptcliError as e:
                self.say(e.message, error=True)
                return
            tokens = iter(forced)

            def take() -> bool:  # a long text runs as `g` does: shown, and a key stops it
                token = next(tokens, None)
                if token is None:
                    return False
                self.session.accept(token, "force")
                return True

            self._start(take, len(forced))

        self.push_screen(Ask("force the text (its tokens are taken one by one):"), done)

    def action_save(self) -> None:
        def done(value: str | None) -> None:
            if not value:
                return

            def save():
                self.session.save(value)
                self.say(f"saved the tree to {value}")

            self._do(save)

        self.push_screen(Ask("save the tree to file:", "tree.json"), done)

    def action_interrupt(self) -> None:
        self.exit(None, return_code=130)  # Ctrl-C: gptcli's exit code for it everywhere

    def action_export(self) -> None:
        self.exit(self.session.branch_text())

    def action_help(self) -> None:
        self.push_screen(Help())

"""The chat REPL: read a line (or a \"\"\" block), run a slash command or stream a
reply, repeat. Interactive on a terminal (readline editing and history); with
piped stdin, each line is a user turn and each reply is printed.

One loop for every backend: what differs between a local model and a server is the
`session.ChatSession` it talks to.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from collections.abc import Callable

from gptcli.backends.base import Backend
from gptcli.backends.constraints import Constraint
from gptcli.backends.events import Finish, TokenEvent
from gptcli.backends.remote import NO_LOGPROBS
from gptcli.chat.session import MODEL_PROBS, ChatSession, LastReply, open_session
from gptcli.console import notice, print_error, stderr_console
from gptcli.errors import ExitCode, GptcliError, UsageError
from gptcli.render.stream import TextRenderer
from gptcli.render.tokens import ProbsRenderer, legend
from gptcli.sampling.sampler import SamplingParams
from gptcli.terminal import Guard, is_terminal

PROMPT = ">>> "
CONTINUATION = "... "
BLOCK = '"""'

HELP = """\
Type a message and press Enter. For several lines, start with \"\"\" and end with \"\"\".
Ctrl-C stops a reply (the part shown stays in the conversation); Ctrl-C at an empty
prompt, Ctrl-D or /exit ends the chat.

/help                 this help
/exit                 end the chat (also /quit, /bye)
/reset                forget the conversation (the system prompt stays)
/undo                 drop the last exchange
/history              show the conversation so far
/system [TEXT]        show or set the system prompt
/temp [X]             show or set the temperature (0: greedy); also /temperature
/top-k [N]            keep the N most likely tokens (0: off)
/top-p [X]            keep the most likely tokens up to mass X (1: off)
/min-p [X]            drop tokens below X times the top one (0: off)
/repeat-penalty [X]   penalise the last 64 tokens (1: off)
/seed [N|random]      random seed for the next replies
/max-tokens [N|off]   longest reply in tokens
/probs on|off         colour each reply by token probability
/steer [FILE [SCALE]|off]  add a control vector (vectors add), switch them off, or show
/stats                tokens, context used, speed of the last reply
/save FILE            save the conversation as JSON
/load FILE            replace the conversation with a saved one
"""


def sampling_summary(p, max_tokens: int | None) -> str:
    """The /stats line that lists the sampling settings."""
    return (
        f"sampling    temperature {p.temperature}, top-k {p.top_k}, top-p {p.top_p}, "
        f"min-p {p.min_p}, repeat-penalty {p.repeat_penalty}, "
        f"seed {p.seed if p.seed is not None else 'random'}, "
        f"max-tokens {max_tokens or 'off'}"
    )


class Repl:
    """The chat loop over one session (local or remote)."""

    def __init__(
        self,
        session: ChatSession,
        params: SamplingParams,
        *,
        max_tokens: int | None = None,
        stops: list[str] | None = None,
        interactive: bool = True,
    ):
        self.session = session
        self.conversation = session.conversation
        self.params = params.validate()
        session.set_params(self.params)
        self.max_tokens = max_tokens
        self.stops = list(stops or [])
        self.interactive = interactive
        self.probs = False
        self.last: LastReply | None = None
        self.exit_code = ExitCode.OK
        self._replies = 0
        self._line_buffer = ""  # what the prompt held when Ctrl-C came
        self._readline = None
        self.commands: dict[str, Callable[[str], bool | None]] = {
            "help": self.cmd_help,
            "exit": self.cmd_exit,
            "quit": self.cmd_exit,
            "bye": self.cmd_exit,
            "reset": self.cmd_reset,
            "undo": self.cmd_undo,
            "history": self.cmd_history,
            "system": self.cmd_system,
            "temp": self._sampling("temperature", float, "temp"),
            "temperature": self._sampling("temperature", float),
            "top-k": self._sampling("top_k", int),
            "top-p": self._sampling("top_p", float),
            "min-p": self._sampling("min_p", float),
            "repeat-penalty": self._sampling("repeat_penalty", float),
            "seed": self.cmd_seed,
            "max-tokens": self.cmd_max_tokens,
            "probs": self.cmd_probs,
            "stats": self.cmd_stats,
            "save": self.cmd_save,
            "load": self.cmd_load,
            "steer": self.cmd_steer,
        }

    # -- the loop -------------------------------------------------------------

    def run(self) -> int:
        """Run until end of input or /exit; return the exit code (1 or 2 when a piped
        session had errors, so scripts notice)."""
        previous = None
        if self.interactive:
            self._setup_readline()
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            while True:
                entry = self.next_entry()
                if entry is None:
                    break
                text, is_block = entry
                try:
                    if self.handle(text, is_block) is False:
                        break
                except GptcliError as e:
                    self.error(e)
                except KeyboardInterrupt:
                    # Ctrl-C outside a reply (tokenizing, a slow command): keep going.
                    self.conversation.discard_last_user()
                    notice("(interrupted)")
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return int(self.exit_code)

    def handle(self, text: str, is_block: bool = False) -> bool | None:
        """One entry: a slash command, or a user message to reply to. False: end."""
        stripped = text.strip()
        if not stripped:
            return None
        if stripped.startswith("/") and not is_block:
            return self.command(stripped)
        self.reply(text.strip("\n"))
        return None

    def error(self, e: GptcliError) -> None:
        print_error(e.message)
        if not self.interactive:
            self.exit_code = max(self.exit_code, e.exit_code)

    # -- input ----------------------------------------------------------------

    def _setup_readline(self) -> None:
        try:
            import readline
        except ImportError:  # Windows without pyreadline: plain input()
            return
        self._readline = readline
        try:
            # readline clears the line on SIGINT before Python sees it; keep it, so
            # Ctrl-C can tell an empty prompt (quit) from a typed line (clear it).
            import ctypes

            lib = ctypes.CDLL(readline.__file__)
            ctypes.c_int.in_dll(lib, "rl_catch_signals").value = 0
        except (OSError, ValueError, AttributeError):
            pass

    def _on_sigint(self, signum, frame) -> None:
        self._line_buffer = self._readline.get_line_buffer() if self._readline else ""
        raise KeyboardInterrupt

    def read_line(self, prompt: str) -> str:
        """One line without its newline; EOFError at the end of input."""
        if not self.interactive:
            raw = sys.stdin.buffer.readline() if hasattr(sys.stdin, "buffer") else b""
            if not raw:
                raise EOFError
            try:
                return raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise UsageError(f"input line is not valid UTF-8 (byte {e.start})") from None
        self._line_buffer = ""
        if sys.stdout.isatty():
            return input(prompt)
        # stdout goes to a file: the prompt is not content, so it goes to stderr.
        sys.stderr.write(prompt)
        sys.stderr.flush()
        return input()

    def next_entry(self) -> tuple[str, bool] | None:
        """The next entry and whether it was a \"\"\" block; None ends the session."""
        while True:
            try:
                line = self.read_line(PROMPT)
            except EOFError:
                if self.interactive:
                    sys.stdout.write("\n")
                return None
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                if self._line_buffer.strip():
                    continue  # Ctrl-C on a typed line clears it, as in a shell
                return None
            except GptcliError as e:
                self.error(e)
                continue
            if line.lstrip().startswith(BLOCK):
                block = self._read_block(line.lstrip()[len(BLOCK) :])
                if block is None:
                    continue
                return block, True
            return line, False

    def _read_block(self, first: str) -> str | None:
        if first.rstrip().endswith(BLOCK) and first.strip() != "":
            return first.rstrip()[: -len(BLOCK)]
        lines = [first] if first.strip() else []
        while True:
            try:
                line = self.read_line(CONTINUATION)
            except EOFError:
                break  # take what was typed
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                notice("(block cancelled)")
                return None
            except GptcliError as e:
                self.error(e)
                return None
            if line.rstrip().endswith(BLOCK):
                lines.append(line.rstrip()[: -len(BLOCK)])
                break
            lines.append(line)
        return "\n".join(lines)

    # -- a reply --------------------------------------------------------------

    def _renderer(self):
        if self.probs:
            return ProbsRenderer(use_model_probs=self.session.only_model_probs)
        return TextRenderer()

    def reply(self, text: str) -> None:
        session, conv = self.session, self.conversation
        renderer = self._renderer()
        turn = session.start(  # on error the conversation is unchanged
            text,
            max_tokens=self.max_tokens,
            stops=self.stops,
            n_top=getattr(renderer, "n_top", 0),
            model_probs=getattr(renderer, "model_probs", False),
            probs=self.probs,
        )
        # A blank line between piped replies, written with the first text: a reply that
        # fails before any leaves no empty reply behind.
        separate = not self.interactive and self._replies > 0
        released: list[str] = []
        finish: Finish | None = None
        warned = False
        try:
            for event in turn.reply:
                if not isinstance(event, TokenEvent):
                    finish = event
                    continue
                if self.probs and session.only_model_probs and event.draw.model_logprob is None:
                    if not warned:  # no numbers to colour by: plain text, none invented
                        warned = True
                        notice(NO_LOGPROBS.format(what="printing the text without them"))
                        renderer = TextRenderer()
                if separate:
                    separate = False
                    sys.stdout.write("\n")
                renderer.token(event)
                released.append(event.text)
        except KeyboardInterrupt:
            renderer.finish(None)
            finish = turn.reply.finish("interrupted")
        except BaseException:
            renderer.finish(None)  # e.g. non-finite logits: the partial line ends whole
            if released:
                self._replies += 1  # the next reply is set apart from this part
            session.failed(turn, released)
            conv.discard_last_user()
            raise
        else:
            if separate and finish.text:
                sys.stdout.write("\n")
            renderer.finish(finish)
            released.append(finish.text)
        self._replies += 1
        began = session.began(turn, released)
        if finish.reason == "interrupted" and not began:
            conv.discard_last_user()
            notice("(stopped before the reply began; the message was dropped)")
        else:
            conv.add_reply(turn.prepared, "".join(released), session.tokens(turn))
        self.last = session.last_reply(turn, finish)
        if finish.reason == "interrupted" and began:
            notice("(stopped: the partial reply stays in the conversation; /undo drops it)")
        elif finish.reason == "context":
            notice(session.context_note())
        elif finish.reason == "length":
            if self.max_tokens:
                notice(f"(the reply reached the limit of {self.max_tokens} tokens; /max-tokens)")
            else:
                notice("(the reply stopped at the server's length limit: its context is full?)")
        if self.interactive:
            notice(session.status(self.last))

    # -- slash commands ---------------------------------------------------------

    def command(self, line: str) -> bool | None:
        name, _, arg = line[1:].partition(" ")
        handler = self.commands.get(name.lower())
        if handler is None:
            raise UsageError(f"unknown command /{name} (/help lists the commands)")
        return handler(arg.strip())

    def info(self, text: str) -> None:
        """Output a command was asked for: on a terminal, stdout; when stdout is a pipe or
        a file, stderr, since only the replies are content there."""
        out = sys.stdout if is_terminal(sys.stdout) else sys.stderr
        text = Guard(is_terminal(out))(text)  # may quote the conversation: model text
        out.write(text if text.endswith("\n") else text + "\n")
        out.flush()

    def cmd_steer(self, arg: str) -> None:
        notice(self.session.steer(arg))

    def cmd_help(self, arg: str) -> None:
        self.info(HELP)

    def cmd_exit(self, arg: str) -> bool:
        return False

    def cmd_reset(self, arg: str) -> None:
        self.conversation.reset()
        notice("(conversation cleared; the system prompt stays)")

    def cmd_undo(self, arg: str) -> None:
        if not self.conversation.undo():
            raise UsageError("nothing to undo")
        notice("(dropped the last exchange)")

    def cmd_history(self, arg: str) -> None:
        conv = self.conversation
        lines = []
        if conv.system:
            lines.append(f"[system] {conv.system}")
        for m in conv.messages:
            lines.append(f"[{m['role']}] {m['content']}")
        self.info("\n".join(lines) if lines else "(the conversation is empty)")

    def cmd_system(self, arg: str) -> None:
        conv = self.conversation
        if not arg:
            self.info(conv.system if conv.system else "(no system prompt)")
            return
        old = conv.system
        conv.system = arg
        try:
            conv.check_template()  # some templates refuse a system message
        except GptcliError:
            conv.system = old
            raise
        notice("(system prompt set)")

    def _sampling(self, field_name: str, kind: type, name: str = "") -> Callable[[str], None]:
        label = field_name.replace("_", "-")
        name = name or label

        def handler(arg: str) -> None:
            if not arg:
                self.info(f"{label} {getattr(self.params, field_name)}")
                return
            try:
                value = kind(arg)
            except ValueError:
                what = "a whole number" if kind is int else "a number"
                raise UsageError(f"/{name} needs {what}, got {arg!r}") from None
            self._set_params(dataclasses.replace(self.params, **{field_name: value}))
            notice(f"({label} {value})")

        return handler

    def _set_params(self, params: SamplingParams) -> None:
        params.validate()  # raises UsageError; the old settings stay
        self.params = params
        self.session.set_params(params)

    def cmd_seed(self, arg: str) -> None:
        if not arg:
            self.info(f"seed {self.params.seed if self.params.seed is not None else 'random'}")
            return
        if arg.lower() in ("random", "off", "none"):
            seed = None
        else:
            try:
                seed = int(arg)
            except ValueError:
                raise UsageError(f"/seed needs a whole number or 'random', got {arg!r}") from None
        self._set_params(dataclasses.replace(self.params, seed=seed))
        notice(f"(seed {seed if seed is not None else 'random'})")

    def cmd_max_tokens(self, arg: str) -> None:
        if not arg:
            self.info(f"max-tokens {self.max_tokens if self.max_tokens else 'off'}")
            return
        if arg.lower() in ("off", "none", "0"):
            self.max_tokens = None
        else:
            try:
                n = int(arg)
            except ValueError:
                raise UsageError(
                    f"/max-tokens needs a whole number or 'off', got {arg!r}"
                ) from None
            if n < 1:
                raise UsageError(f"/max-tokens must be at least 1, got {n}")
            self.max_tokens = n
        notice(f"(max-tokens {self.max_tokens or 'off'})")

    def cmd_probs(self, arg: str) -> None:
        choice = arg.lower()
        if choice not in ("on", "off"):
            raise UsageError(f"/probs takes 'on' or 'off', got {arg!r}" if arg else "/probs on|off")
        self.probs = choice == "on"
        if self.probs:
            if self.session.only_model_probs:
                notice(f"({MODEL_PROBS})")
            legend(use_model_probs=self.session.only_model_probs)
        else:
            notice("(probabilities off)")

    def cmd_stats(self, arg: str) -> None:
        from rich.text import Text

        lines = self.session.stats(self.last)
        lines.append(sampling_summary(self.params, self.max_tokens) + self.session.sampling_note)
        console = stderr_console()
        for line in lines:
            console.print(Text(line, style="dim"), soft_wrap=True)

    def cmd_save(self, arg: str) -> None:
        if not arg:
            raise UsageError("/save needs a file name")
        path = self.conversation.save(arg)
        notice(f"(saved {self.conversation.turns} turns to {path})")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            raise UsageError("/load needs a file name")
        self.conversation.load(arg)
        notice(f"(loaded {self.conversation.turns} turns from {arg})")

    # -- resuming ---------------------------------------------------------------

    def replay(self) -> None:
        """Show a resumed conversation, so the user sees where it left off."""
        if self.conversation.messages:
            self.cmd_history("")


def run_chat(
    backend: Backend,
    params: SamplingParams,
    *,
    system: str | None,
    saved: tuple[str | None, list[dict]] | None,
    resume: str | None,
    max_tokens: int | None,
    stops: list[str],
    interactive: bool,
    constraint: Constraint | None = None,
) -> int:
    """`gptcli chat`: open the session for this backend, then run the REPL until the
    user ends it; its exit code."""
    session, stops = open_session(
        backend, system=system, saved=saved, stops=stops, constraint=constraint
    )
    repl = Repl(session, params, max_tokens=max_tokens, stops=stops, interactive=interactive)
    if interactive:
        notice(session.banner())
        if saved is not None:
            notice(f"(resumed {repl.conversation.turns} turns from {resume})")
            repl.replay()
    return repl.run()

"""The chat REPL: read a line (or a \"\"\" block), run a slash command or stream a
reply, repeat. Interactive on a terminal (readline editing and history); with
piped stdin, each line is a user turn and each reply is printed.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from gptcli.backends.generation import Finish, Generation, TokenEvent
from gptcli.chat.conversation import Conversation
from gptcli.console import notice, print_error, stderr_console
from gptcli.errors import ExitCode, GptcliError, UsageError
from gptcli.llama.engine import Engine
from gptcli.sampling.sampler import Sampler, SamplingParams

PROMPT = ">>> "
CONTINUATION = "... "
BLOCK = '"""'
DEFAULT_RESERVE = 256  # room kept for a reply when -n is not set

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


@dataclass
class LastReply:
    finish: Finish
    prompt_tokens: int
    context_used: int


class Repl:
    """One chat session on a loaded engine."""

    def __init__(
        self,
        engine: Engine,
        conversation: Conversation,
        params: SamplingParams,
        *,
        max_tokens: int | None = None,
        stops: list[str] | None = None,
        interactive: bool = True,
    ):
        self.engine = engine
        self.conversation = conversation
        self.params = params.validate()
        self.sampler = self._make_sampler(self.params)
        self.max_tokens = max_tokens
        self.stops = list(stops or [])
        self.interactive = interactive
        self.grammar = None  # engine.Grammar every reply must match (--json-schema ...)
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
            from gptcli.render.tokens import ProbsRenderer

            return ProbsRenderer()
        from gptcli.render.stream import TextRenderer

        return TextRenderer()

    def reply(self, text: str) -> None:
        engine, conv = self.engine, self.conversation
        reserve = self.max_tokens or min(DEFAULT_RESERVE, engine.n_ctx // 4)
        prepared = conv.prepare(text, reserve)  # on error the conversation is unchanged
        if prepared.dropped_turns:
            n = prepared.dropped_turns
            notice(
                f"(context full: dropped the oldest {n} turn{'s' if n > 1 else ''} "
                "to make room; the system prompt stays)"
            )
        if not self.interactive and self._replies:
            sys.stdout.write("\n")  # a blank line between replies
        renderer = self._renderer()
        if self.grammar is not None:
            self.grammar.reset()  # each reply is one document of its own
        generation = Generation(
            engine,
            prepared.tokens,
            self.sampler,
            self.max_tokens,
            self.stops,
            n_top=getattr(renderer, "n_top", 0),
            model_probs=getattr(renderer, "model_probs", False),
            grammar=self.grammar,
        )
        released: list[str] = []
        finish: Finish | None = None
        try:
            for event in generation:
                if isinstance(event, TokenEvent):
                    renderer.token(event)
                    released.append(event.text)
                else:
                    finish = event
        except KeyboardInterrupt:
            renderer.finish(None)
            finish = generation.finish("interrupted")
        except BaseException:
            renderer.finish(None)  # e.g. non-finite logits: the partial line ends whole
            conv.discard_last_user()
            raise
        else:
            renderer.finish(finish)
            released.append(finish.text)
        self._replies += 1
        reply_text = "".join(released)
        if finish.reason == "interrupted" and not generation.tokens:
            conv.discard_last_user()
            notice("(stopped before the reply began; the message was dropped)")
        else:
            conv.add_reply(prepared, reply_text, generation.tokens)
        used = len(prepared.tokens) + len(generation.tokens)
        self.last = LastReply(finish, len(prepared.tokens), used)
        if finish.reason == "interrupted" and generation.tokens:
            notice("(stopped: the partial reply stays in the conversation; /undo drops it)")
        elif finish.reason == "context":
            notice(
                f"(the reply stopped: the context is full, {engine.n_ctx} tokens; the oldest "
                "turns will be dropped to make room for the next; --ctx raises the limit)"
            )
        elif finish.reason == "length":
            notice(f"(the reply reached the limit of {self.max_tokens} tokens; /max-tokens)")
        if self.interactive:
            notice(
                f"[{engine.name} · {used}/{engine.n_ctx} tokens · "
                f"{finish.generation_tps():.0f} tokens/s]"
            )

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
        from gptcli.terminal import Guard, is_terminal

        out = sys.stdout if is_terminal(sys.stdout) else sys.stderr
        text = Guard(is_terminal(out))(text)  # may quote the conversation: model text
        out.write(text if text.endswith("\n") else text + "\n")
        out.flush()

    def cmd_steer(self, arg: str) -> None:
        if not hasattr(self.engine, "set_steering"):  # a server: no residual stream to add to
            raise UsageError("/steer needs a local model: a server does not take control vectors")
        from gptcli.inside.steering import chat_steer

        notice(chat_steer(self.engine, arg))

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
        self.sampler = self._make_sampler(params)

    def _make_sampler(self, params: SamplingParams) -> Sampler | None:
        # A remote session (remote_repl.RemoteRepl) samples on the server: no Sampler.
        return Sampler(params, self.engine.n_vocab)

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
            from gptcli.render.tokens import legend

            legend()
        else:
            notice("(probabilities off)")

    def cmd_stats(self, arg: str) -> None:
        from rich.text import Text

        engine, conv = self.engine, self.conversation
        lines = [f"model       {engine.name}"]
        last = self.last
        if last is None:
            lines.append(f"context     0 / {engine.n_ctx} tokens")
            lines.append("last reply  none yet")
        else:
            f, t = last.finish, last.finish.timings
            reused = last.prompt_tokens - t.prompt_tokens_evaluated
            lines += [
                f"context     {last.context_used} / {engine.n_ctx} tokens, {conv.turns} "
                f"turn{'' if conv.turns == 1 else 's'}",
                f"prompt      {last.prompt_tokens} tokens, {t.prompt_tokens_evaluated} "
                f"evaluated, {reused} reused from the cache, in {t.prompt_s:.3f} s",
                f"reply       {f.completion_tokens} tokens in {t.generation_s:.3f} s, "
                f"{f.generation_tps():.1f} tokens/s, first token after {t.ttft_s:.3f} s",
                f"finish      {f.reason}",
            ]
        lines.append(sampling_summary(self.params, self.max_tokens))
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

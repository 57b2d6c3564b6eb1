"""A chat conversation: its messages, the tokens the model sees, trimming when the
context is full, and the JSON transcript.

Prefix reuse: after each turn the conversation remembers which text its tokens
spell (the prompt, then the prompt plus the reply exactly as generated). The next
turn's rendered template starts with that text, so its tokens are those same
tokens plus the tokenized rest, and `Engine.prefill` evaluates only the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gptcli.errors import GptcliError, UsageError
from gptcli.limits import MAX_TRANSCRIPT_BYTES
from gptcli.llama.engine import ContextFull, Engine
from gptcli.llama.prompt import tokens_for_text
from gptcli.llama.template import ChatFormat
from gptcli.paths import write_atomic
from gptcli.untrusted import JsonTooDeep, loads, read_bounded

TRANSCRIPT_FORMAT = "gptcli-chat"
TRANSCRIPT_VERSION = 1
ROLES = ("user", "assistant")


@dataclass
class Prepared:
    """The tokens for the next reply, and how many old turns were dropped for room."""

    tokens: list[int]
    text: str  # the rendered prompt the tokens spell
    dropped_turns: int


@dataclass
class Conversation:
    engine: Engine
    fmt: ChatFormat
    system: str | None = None
    messages: list[dict] = field(default_factory=list)  # user/assistant, alternating
    # (text, tokens) pairs known to match exactly, longest last: the reusable prefixes.
    _marks: list[tuple[str, list[int]]] = field(default_factory=list, repr=False)

    # -- rendering ------------------------------------------------------------

    def all_messages(self, extra: list[dict] | None = None) -> list[dict]:
        return self.with_system(self.messages + (extra or []))

    def with_system(self, messages: list[dict]) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + messages

    def render(self, messages: list[dict] | None = None) -> str:
        msgs = self.all_messages() if messages is None else messages
        return self.fmt.render(msgs, add_generation_prompt=True)

    def tokens_for(self, rendered: str) -> list[int]:
        """Tokens for `rendered`, reusing the longest remembered prefix it starts with,
        so the tokens of the previous turn (reply as generated) stay as they were."""
        for text, tokens in reversed(self._marks):
            if text and rendered.startswith(text):
                rest = rendered[len(text) :]
                more = self.engine.tokenize(rest, add_bos=False, special=True) if rest else []
                return tokens + more
        return tokens_for_text(self.engine, rendered, special=True, bos_text=self.fmt.bos_token)

    def check_template(self) -> None:
        """Render a sample conversation once, so a broken or hostile template fails
        at start-up (TemplateError) rather than at the first message."""
        sample = [{"role": "user", "content": "Hello"}]
        self.fmt.render(self.with_system(sample), add_generation_prompt=True)
        sample += [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Bye"}]
        self.fmt.render(self.with_system(sample), add_generation_prompt=True)

    # -- turns ----------------------------------------------------------------

    @property
    def turns(self) -> int:
        return len(self.messages) // 2

    def prepare(self, user_text: str, reserve: int) -> Prepared:
        """Add the user's message and return the prompt tokens, dropping the oldest
        turns (never the system prompt) until the prompt plus `reserve` tokens for the
        reply fit the context. On failure the conversation is left as it was."""
        n_ctx = self.engine.n_ctx
        msgs = self.messages + [{"role": "user", "content": user_text}]
        dropped = 0
        while True:
            text = self.render(self.with_system(msgs))
            tokens = self.tokens_for(text)
            if len(tokens) + reserve <= n_ctx:
                break
            if len(msgs) <= 1:
                if len(tokens) < n_ctx:  # fits, with less room for the reply than hoped
                    break
                raise ContextFull(len(tokens), n_ctx)
            msgs = msgs[2:]
            dropped += 1
        self.messages = msgs
        return Prepared(tokens, text, dropped)

    def add_reply(self, prepared: Prepared, text: str, tokens: list[int]) -> None:
        """Record the assistant's reply to the prompt just prepared. `tokens` are the
        generated ids (without the end-of-turn token); they are reused next turn when
        they spell `text` exactly (not so after a stop string or a Ctrl-C mid-character)."""
        self.messages.append({"role": "assistant", "content": text})
        marks = [(prepared.text, list(prepared.tokens))]
        spelled = self.engine.detokenize(tokens).decode("utf-8", errors="replace")
        if spelled == text:
            marks.append((prepared.text + text, list(prepared.tokens) + list(tokens)))
        self._marks = marks

    def discard_last_user(self) -> None:
        """Undo `prepare` when no reply came (error, or Ctrl-C before any text)."""
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()

    def undo(self) -> bool:
        """Drop the last exchange; False when there is none."""
        if len(self.messages) < 2:
            return False
        del self.messages[-2:]
        return True

    def reset(self) -> None:
        self.messages = []

    # -- transcript -----------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "format": TRANSCRIPT_FORMAT,
            "version": TRANSCRIPT_VERSION,
            "model": self.engine.name,
            "system": self.system,
            "messages": [{"role": m["role"], "content": m["content"]} for m in self.messages],
        }

    def save(self, path: str | Path) -> Path:
        """Write the transcript as JSON, atomically (a temp file, then a rename)."""
        target = Path(path).expanduser()
        data = json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n"
        try:
            write_atomic(target, lambda f: f.write(data.encode("utf-8")), sync=True)
        except OSError as e:
            raise GptcliError(f"cannot save to {target}: {e.strerror or e}") from None
        return target

    def load(self, path: str | Path) -> None:
        """Replace system prompt and messages with a saved transcript's; on any error
        nothing changes."""
        system, messages = read_transcript(path)
        old = self.system, self.messages
        self.system, self.messages = system, messages
        try:
            self.check_template()  # some templates refuse a system message
        except GptcliError:
            self.system, self.messages = old
            raise


@dataclass
class RemoteConversation(Conversation):
    """A conversation whose prompt the server builds: messages only, no tokens."""

    engine: None = None
    fmt: None = None
    model_name: str = ""

    def check_template(self) -> None:
        """The template is the server's: nothing to check here."""

    def prepare(self, user_text: str, reserve: int = 0) -> Prepared:
        self.messages = self.messages + [{"role": "user", "content": user_text}]
        return Prepared([], "", 0)

    def add_reply(self, prepared: Prepared, text: str, tokens: list[int]) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def to_json(self) -> dict:
        # The same transcript as a local session: /load it locally, or the reverse.
        return {
            "format": TRANSCRIPT_FORMAT,
            "version": TRANSCRIPT_VERSION,
            "model": self.model_name,
            "system": self.system,
            "messages": [{"role": m["role"], "content": m["content"]} for m in self.messages],
        }


def read_transcript(path: str | Path) -> tuple[str | None, list[dict]]:
    """Read and validate a transcript: (system prompt, messages)."""
    p = Path(path).expanduser()
    try:
        raw = read_bounded(p, MAX_TRANSCRIPT_BYTES)
    # A file named on the command line is input: missing or unreadable is exit 2, as
    # for score, --grammar, --json-schema and explore --load (models stay exit 1).
    except FileNotFoundError:
        raise UsageError(f"no such transcript: {p}") from None
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e.strerror or e}") from None

    def bad(why: str) -> UsageError:
        return UsageError(f"{p} is not a gptcli chat transcript: {why}")

    try:
        data = loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"invalid JSON ({e})") from None
    except JsonTooDeep as e:
        raise bad(str(e)) from None
    if not isinstance(data, dict) or data.get("format") != TRANSCRIPT_FORMAT:
        raise bad(f'"format" is not "{TRANSCRIPT_FORMAT}"')
    if data.get("version") != TRANSCRIPT_VERSION:
        raise bad(f"unsupported version {data.get('version')!r}")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise bad('"system" must be text or null')
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise bad('"messages" must be a list')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise bad(f"message {i + 1} needs a text 'content'")
        expected = ROLES[i % 2]
        if m.get("role") != expected:
            raise bad(f"message {i + 1} should have role {expected!r}")
        out.append({"role": expected, "content": m["content"]})
    if len(out) % 2:
        raise bad("the last message has no reply")
    return (system or None), out

"""One chat-session protocol, two implementations: what the REPL asks of the model it
talks to, whether it runs here or behind a server.

- `LocalChat`: the conversation stays in llama.cpp's KV cache; gptcli renders the chat
  template, samples, and trims the oldest turns when the context is full.
- `RemoteChat`: the conversation travels as messages to the server's
  `/v1/chat/completions` (the server applies its template, samples and keeps its own
  prompt cache). Sampling settings travel as request parameters; /probs shows the
  model's own probabilities (servers report no others); /stats shows what the client
  measures; a conversation longer than the server's context is the server's to refuse.

The REPL (repl.py) reads lines and slash commands and writes each reply path once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from gptcli.backends.base import Backend
from gptcli.backends.constraints import Constraint
from gptcli.backends.events import Finish, TokenEvent
from gptcli.backends.generation import Generation
from gptcli.backends.local import LocalBackend
from gptcli.backends.remote import RemoteBackend
from gptcli.chat.conversation import Conversation, Prepared, RemoteConversation
from gptcli.console import notice
from gptcli.errors import UsageError
from gptcli.inside.steering import chat_steer
from gptcli.llama.prompt import chat_format
from gptcli.llama.sampler_chain import NativeSampler
from gptcli.llama.template import PLAIN_NOTICE
from gptcli.sampling.sampler import Sampler, SamplingParams

DEFAULT_RESERVE = 256  # room kept for a reply when -n is not set

MODEL_PROBS = (
    "servers report only the model's probabilities (softmax of the raw logits): showing those"
)


class Reply(Protocol):
    """A reply being generated: TokenEvents then one Finish; `finish(reason)` gives the
    summary so far after an interruption."""

    def __iter__(self) -> Iterator[TokenEvent | Finish]: ...

    def finish(self, reason: str, text: str = "", stop: str | None = None) -> Finish: ...


@dataclass
class Turn:
    """One exchange in progress: the prepared prompt and the reply's events."""

    prepared: Prepared
    reply: Reply


@dataclass
class LastReply:
    finish: Finish
    prompt_tokens: int
    context_used: int


class ChatSession(Protocol):
    """What the REPL asks of the model it talks to."""

    conversation: Conversation
    name: str
    only_model_probs: bool  # /probs can show the model's own probabilities only
    sampling_note: str  # after the /stats sampling line: where the settings apply

    def set_params(self, params: SamplingParams) -> None:
        """Use these (validated) settings from the next reply on."""

    def start(
        self,
        text: str,
        *,
        max_tokens: int | None,
        stops: list[str],
        n_top: int,
        model_probs: bool,
        probs: bool,
    ) -> Turn:
        """Add the user's message and start the reply (on error the conversation is as
        it was)."""

    def began(self, turn: Turn, released: list[str]) -> bool:
        """Whether a reply stopped by Ctrl-C had begun (then it stays)."""

    def tokens(self, turn: Turn) -> list[int]:
        """The reply's token ids, where known (kept for prefix reuse)."""

    def last_reply(self, turn: Turn, finish: Finish) -> LastReply: ...

    def failed(self, turn: Turn, released: list[str]) -> None:
        """A reply failed with an error: say what may have caused it."""

    def context_note(self) -> str:
        """What a reply stopped by a full context is told."""

    def status(self, last: LastReply) -> str:
        """The dim line after each interactive reply."""

    def stats(self, last: LastReply | None) -> list[str]:
        """/stats lines about the model, the context and the last reply."""

    def banner(self) -> str: ...

    def steer(self, arg: str) -> str:
        """/steer FILE [SCALE] | off | (nothing): add, drop or show control vectors; what
        to tell the user."""


class LocalChat:
    """A chat on a model loaded here."""

    only_model_probs = False
    sampling_note = ""

    def __init__(self, backend: LocalBackend, conversation: Conversation, grammar=None):
        self.engine = backend.engine
        self.conversation = conversation
        self.name = self.engine.name
        self.grammar = grammar  # llama.grammar.Grammar every reply must match
        self.sampler: Sampler | None = None  # draws under a grammar (llama.cpp's chain else)
        self.params = SamplingParams()
        self._replies = 0  # since the settings last changed: each reply's seed differs

    def set_params(self, params: SamplingParams) -> None:
        if self.grammar is not None:
            self.sampler = Sampler(params, self.engine.n_vocab)
        self.params = params.validate()
        self._replies = 0

    def start(self, text, *, max_tokens, stops, n_top, model_probs, probs) -> Turn:
        engine = self.engine
        reserve = max_tokens or min(DEFAULT_RESERVE, engine.n_ctx // 4)
        prepared = self.conversation.prepare(text, reserve)
        if prepared.dropped_turns:
            n = prepared.dropped_turns
            notice(
                f"(context full: dropped the oldest {n} turn{'s' if n > 1 else ''} "
                "to make room; the system prompt stays)"
            )
        if self.grammar is not None:
            self.grammar.reset()  # each reply is one document of its own
            sampler = self.sampler
        else:
            # llama.cpp's chain draws and decodes ahead, as in generate. A chain lives for
            # one reply: the seed moves on with each, so a chat repeats as a whole, and
            # two replies do not draw the same random numbers.
            params = self.params
            if params.seed is not None:
                params = replace(params, seed=(params.seed + 0x9E3779B1 * self._replies) % 2**32)
            sampler = NativeSampler(engine, params, prepared.tokens)
        self._replies += 1
        reply = Generation(
            engine,
            prepared.tokens,
            sampler,
            max_tokens,
            stops,
            n_top=n_top,
            model_probs=model_probs,
            grammar=self.grammar,
            describe=bool(probs),
        )
        return Turn(prepared, reply)

    def began(self, turn: Turn, released: list[str]) -> bool:
        return bool(turn.reply.tokens)

    def tokens(self, turn: Turn) -> list[int]:
        return turn.reply.tokens

    def _used(self, turn: Turn) -> int:
        return len(turn.prepared.tokens) + len(turn.reply.tokens)

    def last_reply(self, turn: Turn, finish: Finish) -> LastReply:
        return LastReply(finish, len(turn.prepared.tokens), self._used(turn))

    def failed(self, turn: Turn, released: list[str]) -> None:
        pass

    def context_note(self) -> str:
        return (
            f"(the reply stopped: the context is full, {self.engine.n_ctx} tokens; the oldest "
            "turns will be dropped to make room for the next; --ctx raises the limit)"
        )

    def status(self, last: LastReply) -> str:
        return (
            f"[{self.name} · {last.context_used}/{self.engine.n_ctx} tokens · "
            f"{last.finish.generation_tps():.0f} tokens/s]"
        )

    def stats(self, last: LastReply | None) -> list[str]:
        engine, conv = self.engine, self.conversation
        lines = [f"model       {engine.name}"]
        if last is None:
            return lines + [f"context     0 / {engine.n_ctx} tokens", "last reply  none yet"]
        f, t = last.finish, last.finish.timings
        reused = last.prompt_tokens - t.prompt_tokens_evaluated
        return lines + [
            f"context     {last.context_used} / {engine.n_ctx} tokens, {conv.turns} "
            f"turn{'' if conv.turns == 1 else 's'}",
            f"prompt      {last.prompt_tokens} tokens, {t.prompt_tokens_evaluated} "
            f"evaluated, {reused} reused from the cache, in {t.prompt_s:.3f} s",
            f"reply       {f.completion_tokens} tokens in {t.generation_s:.3f} s, "
            f"{f.generation_tps():.1f} tokens/s, first token after {t.ttft_s:.3f} s",
            f"finish      {f.reason}",
        ]

    def banner(self) -> str:
        return (
            f"{self.engine.name} · context {self.engine.n_ctx} tokens · "
            "/help for commands, Ctrl-D to quit"
        )

    def steer(self, arg: str) -> str:
        return chat_steer(self.engine, arg)


class RemoteChat:
    """A chat with a server's model: the conversation is sent as messages."""

    only_model_probs = True
    sampling_note = " (sent with each request)"

    def __init__(self, server: RemoteBackend, conversation: RemoteConversation):
        self.server = server
        self.conversation = conversation
        self.name = conversation.model_name
        self.params: SamplingParams | None = None

    def set_params(self, params: SamplingParams) -> None:
        self.params = params  # the server samples

    def start(self, text, *, max_tokens, stops, n_top, model_probs, probs) -> Turn:
        prepared = self.conversation.prepare(text)
        reply = self.server.chat(
            self.conversation.all_messages(), self.params, max_tokens, stops, logprobs=probs
        )
        return Turn(prepared, reply)

    def began(self, turn: Turn, released: list[str]) -> bool:
        return bool(released)

    def tokens(self, turn: Turn) -> list[int]:
        return []

    def last_reply(self, turn: Turn, finish: Finish) -> LastReply:
        return LastReply(finish, finish.prompt_tokens or 0, 0)

    def failed(self, turn: Turn, released: list[str]) -> None:
        if not released and len(self.conversation.messages) > 1:
            # llama-cpp-python just drops the stream of a prompt over its context.
            notice("(no reply: if the conversation outgrew the server's context, /undo or /reset)")

    def context_note(self) -> str:
        return "(the reply stopped: the server's context is full; /undo or /reset)"

    def status(self, last: LastReply) -> str:
        finish, conv = last.finish, self.conversation
        n, s = finish.completion_tokens, finish.timings.generation_s
        speed = f"{n / s:.0f} tokens/s" if n and s > 0 else f"{s:.1f} s"
        turns = f"{conv.turns} turn{'' if conv.turns == 1 else 's'}"
        return f"[{self.name} · {turns} · {speed}]"

    def stats(self, last: LastReply | None) -> list[str]:
        conv = self.conversation
        lines = [
            f"server      {self.server.url.display}",
            f"model       {self.name}",
            f"context     {conv.turns} turn{'' if conv.turns == 1 else 's'} "
            "(the server counts the tokens)",
        ]
        if last is None:
            return lines + ["last reply  none yet"]
        f, t = last.finish, last.finish.timings
        n = f.completion_tokens
        if n is not None and t.generation_s > 0:
            reply = f"{n} tokens in {t.generation_s:.3f} s, {n / t.generation_s:.1f} tokens/s"
        else:
            reply = f"{t.generation_s:.3f} s (the server sent no token count)"
        prompt = f"{f.prompt_tokens} tokens" if f.prompt_tokens is not None else "not reported"
        return lines + [
            f"prompt      {prompt}",
            f"reply       {reply}",
            f"first token {t.ttft_s:.3f} s after the request (prompt evaluation and network)",
            f"finish      {f.reason}",
        ]

    def banner(self) -> str:
        return f"{self.name} at {self.server.url.display} · /help for commands, Ctrl-D to quit"

    def steer(self, arg: str) -> str:
        # a server: no residual stream to add to
        raise UsageError("/steer needs a local model: a server does not take control vectors")


def _resume(conversation: Conversation, system: str | None, saved) -> None:
    if saved is not None:
        saved_system, conversation.messages = saved
        if system and saved_system and system != saved_system:
            notice("(--system replaces the resumed conversation's system prompt)")
        conversation.system = system or saved_system


def open_session(
    backend: Backend,
    *,
    system: str | None,
    saved: tuple[str | None, list[dict]] | None,
    stops: Iterable[str],
    constraint: Constraint | None = None,
) -> tuple[ChatSession, list[str]]:
    """The session for this backend, with the resumed conversation, and the stop
    strings its replies use."""
    if isinstance(backend, RemoteBackend):
        if constraint is not None:
            raise UsageError(f"chat {constraint.option} runs on a local model only (no --server)")
        models = backend.models()  # a server that is down fails here, before any input
        name = backend.model or (models[0].get("id") if models else None) or "the server's model"
        remote = RemoteConversation(system=system or None, model_name=str(name))
        _resume(remote, system, saved)
        return RemoteChat(backend, remote), list(stops)
    if not isinstance(backend, LocalBackend):
        raise TypeError(f"no chat session for {type(backend).__name__}")
    engine = backend.engine
    fmt = chat_format(engine)
    if fmt.template is None:
        notice(PLAIN_NOTICE)
    conversation = Conversation(engine, fmt, system or None)
    _resume(conversation, system, saved)
    conversation.check_template()  # a hostile or broken template stops here
    grammar = backend.grammar_for(constraint)
    return LocalChat(backend, conversation, grammar), list(stops) + list(fmt.stops)

"""`gptcli chat --server URL`: the same REPL, its conversation sent as messages to
the server's `/v1/chat/completions` (the server applies the chat template and
keeps its own prompt cache), each reply streamed back.

What differs from a local session, and why:
- sampling settings (/temp, /top-k, /seed ...) travel as request parameters;
- /probs shows the model's own probabilities (servers report no others);
- /stats shows what the client measures (time to first token, reply time) and the
  token counts only where the server sends them;
- a conversation longer than the server's context is the server's to refuse (as an
  HTTP error, or, with llama-cpp-python, a stream that ends at once): one line, the
  message is dropped, and a notice suggests /undo or /reset.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gptcli.backends.generation import Finish
from gptcli.backends.remote import NO_LOGPROBS, RemoteBackend
from gptcli.chat.conversation import TRANSCRIPT_FORMAT, TRANSCRIPT_VERSION, Conversation, Prepared
from gptcli.chat.repl import LastReply, Repl
from gptcli.console import notice, stderr_console
from gptcli.errors import UsageError
from gptcli.sampling.sampler import SamplingParams

MODEL_PROBS = (
    "servers report only the model's probabilities (softmax of the raw logits): showing those"
)


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


class RemoteRepl(Repl):
    """The chat REPL on a server: replies come from `server.chat(messages)`."""

    def __init__(
        self,
        server: RemoteBackend,
        conversation: RemoteConversation,
        params: SamplingParams,
        **kwargs,
    ):
        self.server = server
        super().__init__(None, conversation, params, **kwargs)  # type: ignore[arg-type]

    def _make_sampler(self, params: SamplingParams) -> None:
        return None  # the server samples

    def _renderer(self):
        if self.probs:
            from gptcli.render.tokens import ProbsRenderer

            return ProbsRenderer(use_model_probs=True)
        from gptcli.render.stream import TextRenderer

        return TextRenderer()

    def reply(self, text: str) -> None:
        conv = self.conversation
        prepared = conv.prepare(text)
        # A blank line between piped replies, written with the first text: a request
        # that fails before any leaves no empty reply behind.
        separate = not self.interactive and self._replies > 0
        renderer = self._renderer()
        generation = self.server.chat(
            conv.all_messages(),
            self.params,
            self.max_tokens,
            self.stops,
            logprobs=self.probs,
        )
        released: list[str] = []
        finish: Finish | None = None
        warned = False
        try:
            for event in generation:
                if isinstance(event, Finish):
                    finish = event
                    continue
                if self.probs and event.draw.model_logprob is None:
                    if not warned:  # no numbers to colour by: plain text, none invented
                        warned = True
                        notice(NO_LOGPROBS.format(what="printing the text without them"))
                        from gptcli.render.stream import TextRenderer

                        renderer = TextRenderer()
                if separate:
                    separate = False
                    sys.stdout.write("\n")
                renderer.token(event)
                released.append(event.text)
        except KeyboardInterrupt:
            renderer.finish(None)
            finish = generation.finish("interrupted")
        except BaseException:
            renderer.finish(None)  # what was printed stays, ending its line
            if released:
                self._replies += 1  # the next reply is set apart from this part
            elif len(conv.messages) > 1:
                # llama-cpp-python just drops the stream of a prompt over its context.
                notice(
                    "(no reply: if the conversation outgrew the server's context, /undo or /reset)"
                )
            conv.discard_last_user()
            raise
        else:
            renderer.finish(finish)
        self._replies += 1
        if finish.reason == "interrupted" and not released:
            conv.discard_last_user()
            notice("(stopped before the reply began; the message was dropped)")
        else:
            conv.add_reply(prepared, "".join(released), [])
        self.last = LastReply(finish, finish.prompt_tokens or 0, 0)
        if finish.reason == "interrupted" and released:
            notice("(stopped: the partial reply stays in the conversation; /undo drops it)")
        elif finish.reason == "length":
            if self.max_tokens:
                notice(f"(the reply reached the limit of {self.max_tokens} tokens; /max-tokens)")
            else:
                notice("(the reply stopped at the server's length limit: its context is full?)")
        if self.interactive:
            n, s = finish.completion_tokens, finish.timings.generation_s
            speed = f"{n / s:.0f} tokens/s" if n and s > 0 else f"{s:.1f} s"
            turns = f"{conv.turns} turn{'' if conv.turns == 1 else 's'}"
            notice(f"[{conv.model_name} · {turns} · {speed}]")

    def cmd_probs(self, arg: str) -> None:
        choice = arg.lower()
        if choice not in ("on", "off"):
            raise UsageError(f"/probs takes 'on' or 'off', got {arg!r}" if arg else "/probs on|off")
        self.probs = choice == "on"
        if self.probs:
            from gptcli.render.tokens import legend

            notice(f"({MODEL_PROBS})")
            legend(use_model_probs=True)
        else:
            notice("(probabilities off)")

    def cmd_stats(self, arg: str) -> None:
        from rich.text import Text

        conv = self.conversation
        lines = [
            f"server      {self.server.url.display}",
            f"model       {conv.model_name}",
            f"context     {conv.turns} turn{'' if conv.turns == 1 else 's'} "
            "(the server counts the tokens)",
        ]
        last = self.last
        if last is None:
            lines.append("last reply  none yet")
        else:
            f, t = last.finish, last.finish.timings
            n = f.completion_tokens
            if n is not None and t.generation_s > 0:
                reply = f"{n} tokens in {t.generation_s:.3f} s, {n / t.generation_s:.1f} tokens/s"
            else:
                reply = f"{t.generation_s:.3f} s (the server sent no token count)"
            prompt = f"{f.prompt_tokens} tokens" if f.prompt_tokens is not None else "not reported"
            lines += [
                f"prompt      {prompt}",
                f"reply       {reply}",
                f"first token {t.ttft_s:.3f} s after the request (prompt evaluation and network)",
                f"finish      {f.reason}",
            ]
        from gptcli.chat.repl import sampling_summary

        lines.append(sampling_summary(self.params, self.max_tokens) + " (sent with each request)")
        console = stderr_console()
        for line in lines:
            console.print(Text(line, style="dim"), soft_wrap=True)


def run_remote_chat(
    server: RemoteBackend,
    params: SamplingParams,
    *,
    system: str | None,
    saved: tuple[str | None, list[dict]] | None,
    resume: str | None,
    max_tokens: int | None,
    stops: list[str],
    interactive: bool,
) -> int:
    """`gptcli chat --server URL`: check the server answers, then run the REPL."""
    models = server.models()  # a server that is down fails here, in one line, before input
    name = server.model or (models[0].get("id") if models else None) or "the server's model"
    conv = RemoteConversation(system=system or None, model_name=str(name))
    if saved is not None:
        saved_system, conv.messages = saved
        if system and saved_system and system != saved_system:
            notice("(--system replaces the resumed conversation's system prompt)")
        conv.system = system or saved_system
    repl = RemoteRepl(
        server, conv, params, max_tokens=max_tokens, stops=stops, interactive=interactive
    )
    if interactive:
        notice(f"{name} at {server.url.display} · /help for commands, Ctrl-D to quit")
        if saved is not None:
            notice(f"(resumed {conv.turns} turns from {resume})")
            repl.replay()
    return repl.run()

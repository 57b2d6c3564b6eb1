"""The remote backend: a model behind an OpenAI-compatible server (llama.cpp's
llama-server, llama-cpp-python's server, vLLM, Ollama, ...).

It turns replies into the events the local loop yields (TokenEvent, Finish, with
a Draw and its Alternatives), so rendering does not know where the model ran.
What a server can give depends on which server it is (dialects.py): all report
the model's own log probabilities (softmax of the raw logits) for the top few
tokens; llama-server also gives token ids and, on its native `/completion` with
`post_sampling_probs`, the distribution a token was actually drawn from.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from gptcli.backends import dialects
from gptcli.backends.base import Backend, Capabilities, NextStep, Request, collect_text, require
from gptcli.backends.constraints import server_fields
from gptcli.backends.events import Finish, Timings, TokenEvent
from gptcli.backends.http import ConnectionLost, HttpClient, NoAnswer
from gptcli.backends.lines import line_prompt, ordered, report_failures
from gptcli.backends.scoring import Scores
from gptcli.errors import GptcliError, UsageError
from gptcli.limits import LINE_RETRIES, MAX_EMPTY_EVENTS
from gptcli.llama.prompt import messages_for
from gptcli.sampling.distribution import Candidate, NextTokens
from gptcli.sampling.sampler import Alternative, Draw
from gptcli.terminal import safe

UNKNOWN = float("nan")  # a probability the server did not report
_EMPTY_I = np.empty(0, dtype=np.int64)
_EMPTY_F = np.empty(0, dtype=np.float64)

NO_LOGPROBS = (
    "the server returned no log probabilities (it may not offer them, e.g. "
    "llama-cpp-python without --logits_all): {what}"
)


class RemoteVocab:
    """Token texts seen from the server, as ids: the server's own id where it gives
    one (>= 0), else a negative handle per distinct text (rendered as no id)."""

    def __init__(self) -> None:
        self._pieces: dict[int, bytes] = {}
        self._handles: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def id_for(self, piece: bytes, server_id: int | None = None) -> int:
        with self._lock:
            if server_id is not None and server_id >= 0:
                self._pieces.setdefault(server_id, piece)
                return server_id
            handle = self._handles.get(piece)
            if handle is None:
                handle = -1 - len(self._handles)
                self._handles[piece] = handle
                self._pieces[handle] = piece
            return handle

    def piece(self, token: int) -> bytes:
        return self._pieces.get(token, b"")


@dataclass(frozen=True)
class RemoteTimings(Timings):
    """Timings of a remote reply; token counts the server did not send are None.
    `server_tps`: generation tokens/s as the server measured it, where it says."""

    server_tps: float | None = None

    def prompt_tps(self) -> float | None:
        n = self.prompt_tokens_evaluated
        if n is None:
            return None
        return n / self.prompt_s if self.prompt_s > 0 else 0.0


# No server sends the whole vocabulary's logits or llama.cpp's intermediate tensors.
NEVER = frozenset({"full_distribution", "internals"})


class RemoteBackend(Backend):
    """One server. Thread-safe: each request has its own connection."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
    ):
        self.http = HttpClient(url, api_key, timeout)
        self.url = self.http.url
        self.model = model  # the `model` field sent; None: the server's default
        self.vocab = RemoteVocab()
        self.label = f"the server at {self.url.display}"
        self.location = self.url.display
        self.name = model or ""
        self._dialect: dialects.Dialect | None = None
        self._lock = threading.Lock()
        self._said: set[str] = set()  # notices already given (once per run)

    def once(self, message: str) -> None:
        """A notice, once per run (lines and steps share a backend)."""
        with self._lock:
            if message in self._said:
                return
            self._said.add(message)
        self.notify(message)

    # -- what it is --------------------------------------------------------------------

    @property
    def dialect(self) -> dialects.Dialect:
        """Which server this is: llama-server answers /props; others say in /v1/models."""
        with self._lock:
            if self._dialect is None:
                self._dialect = self._detect()
            return self._dialect

    def _detect(self) -> dialects.Dialect:
        # A server that is silent or gone is said at once, not asked a second question.
        try:
            if dialects.is_llama_server_props(self.http.json("GET", "/props")):
                return dialects.LLAMA_SERVER
        except (NoAnswer, ConnectionLost):
            raise
        except GptcliError:
            pass  # no /props: not llama-server
        try:
            return dialects.from_models(self.models())
        except (NoAnswer, ConnectionLost):
            raise
        except GptcliError:
            return dialects.GENERIC

    def has(self, capability: str) -> bool:
        # What no server gives is known without asking it (a server that is down
        # still gets the right refusal).
        if capability in NEVER:
            return False
        return super().has(capability)

    @property
    def capabilities(self) -> Capabilities:
        d = self.dialect
        return Capabilities(
            token_ids=d.token_ids,
            sampled_distribution=d.native_completion,
            model_logprobs=True,
            prompt_logprobs=d.prompt_logprobs is not None,
            grammar=True,  # in the form each server takes (constraints.server_fields)
            parallel=True,
        )

    def piece(self, token: int) -> bytes:
        return self.vocab.piece(token)

    def models(self) -> list[dict]:
        """`/v1/models`: the models the server serves."""
        data = self.http.json("GET", "/v1/models").get("data")
        return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []

    def _top(self, n: int) -> int:
        """n alternatives, or the most the server takes, with a notice."""
        cap = self.dialect.max_top_logprobs if n > 5 else None
        if cap is not None and n > cap:
            self.notify(
                f"{self.dialect.name} gives at most {cap} alternatives per token: showing {cap}"
            )
            return cap
        return n

    # -- requests --------------------------------------------------------------------

    def _sampling(self, params) -> dict:
        # top_k, min_p and repeat_penalty are not OpenAI's, but llama.cpp, vLLM and
        # Ollama's OpenAI endpoints accept them; others ignore unknown fields.
        body = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "min_p": params.min_p,
            "repeat_penalty": params.repeat_penalty,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if self.model:
            body["model"] = self.model
        return body

    def start(self, request: Request) -> RemoteGeneration:
        if request.constraint is not None:
            extra = server_fields(request.constraint, self.dialect.name)
            generation = self.start(replace(request, constraint=None))
            generation.body.update(extra)  # sent when the generation is iterated
            return generation
        want = bool(request.model_probs or request.sampled_probs or request.n_top)
        n_top = self._top(request.n_top) if request.n_top else 0
        if request.sampled_probs and self.dialect.native_completion:
            return self._native(request, n_top)
        if request.raw:
            return self.complete(
                request.text, request.params, request.max_tokens, request.stops, n_top, want
            )
        messages = messages_for(request.text, request.system)
        return self.chat(messages, request.params, request.max_tokens, request.stops, n_top, want)

    def complete(self, prompt, params, max_tokens=None, stops=(), n_top=0, logprobs=False):
        """A plain completion of `prompt` (`/v1/completions`), streamed as events."""
        body = self._sampling(params)
        body.update(prompt=prompt, stream=True, max_tokens=max_tokens)
        if stops:
            body["stop"] = list(stops)
        if logprobs or n_top:
            body["logprobs"] = max(1, n_top)
        want = bool(logprobs or n_top)
        return RemoteGeneration(self, "/v1/completions", body, n_top, want, limit=max_tokens)

    def chat(self, messages, params, max_tokens=None, stops=(), n_top=0, logprobs=False):
        """A reply to `messages` (`/v1/chat/completions`; the server applies the
        model's chat template), streamed as events."""
        body = self._sampling(params)
        body.update(messages=messages, stream=True)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if stops:
            body["stop"] = list(stops)
        if logprobs or n_top:
            body["logprobs"] = True
            body["top_logprobs"] = max(1, n_top)
        want = bool(logprobs or n_top)
        return RemoteGeneration(self, "/v1/chat/completions", body, n_top, want, limit=max_tokens)

    def _native(self, request: Request, n_top: int) -> RemoteGeneration:
        """llama-server's own /completion with post_sampling_probs: the probabilities
        after its sampler chain (top-k, top-p, min-p, temperature), as --probs shows."""
        prompt = request.text
        if not request.raw:
            messages = messages_for(request.text, request.system)
            reply = self.http.json("POST", "/apply-template", {"messages": messages})
            prompt = reply.get("prompt")
            if not isinstance(prompt, str):
                raise GptcliError(f"{self.label} did not apply its chat template")
        body = self._sampling(request.params)
        body.update(prompt=prompt, stream=True, n_probs=max(1, n_top), post_sampling_probs=True)
        body["n_predict"] = request.max_tokens if request.max_tokens is not None else -1
        if request.stops:
            body["stop"] = list(request.stops)
        return RemoteGeneration(
            self, "/completion", body, n_top, True, native=True, limit=request.max_tokens
        )

    def each_line(self, lines, prefix: str | None, request: Request, jobs: int):
        """One request per line, `jobs` at a time. A line whose connection drops is
        sent once more (limits.LINE_RETRIES); a line that still fails is an error line
        on stderr and an empty output line, the others go on, and the run fails at the
        end (as a local line too long for the context)."""

        def work(line: str) -> tuple[str, str | None]:
            if not line.strip():
                return "", None  # a blank line stays a blank line: nothing to ask
            one = replace(request, text=line_prompt(prefix, line))
            for attempt in range(1 + LINE_RETRIES):
                try:
                    return collect_text(self.start(one)), None
                except ConnectionLost as e:
                    if attempt == LINE_RETRIES:
                        return "", f"{e.message} (tried {1 + LINE_RETRIES} times)"
                except GptcliError as e:
                    return "", e.message
            raise AssertionError("unreachable")

        results = (work(line) for line in lines) if jobs == 1 else ordered(lines, work, jobs)
        return report_failures(results, self.report_error)

    # -- next, score, tokenize -------------------------------------------------------------

    def next_steps(
        self, text: str, *, chat: bool, system: str | None, top: int, steps: int, temperatures
    ) -> Iterator[NextStep]:
        """The top candidates at temperature 1 after `text`, for `steps` greedy steps,
        from one greedy completion with log probabilities."""
        if not text:
            raise UsageError(
                "empty prompt: with --server, give the text so far (a server cannot show "
                "what follows the BOS token alone)"
            )
        if list(temperatures) != [1.0]:
            self.notify(ONLY_T1)
        if system and not chat:
            self.notify("--system is ignored without --chat")
        k = self._top(top)
        body: dict = {"max_tokens": steps, "temperature": 0, "top_k": 1, "stream": False}
        if chat:
            body.update(messages=messages_for(text, system), logprobs=True, top_logprobs=k)
            path = "/v1/chat/completions"
        else:
            body.update(prompt=text, logprobs=k)
            path = "/v1/completions"
        if self.model:
            body["model"] = self.model
        reply = self.http.json("POST", path, body)
        choice = dialects.first_choice(reply) or {}
        found = dialects.entries(choice.get("logprobs"))
        if any(e.dropped for e in found[:steps]):
            self.once(dialects.IMPOSSIBLE)
        if not found or not found[0].top:
            raise GptcliError(NO_LOGPROBS.format(what="`next` needs them"))
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        n = dialects.count(usage.get("prompt_tokens"))
        self.notify(NO_ENTROPY.format(k=top))
        short = False
        for step, entry in enumerate(found[:steps]):
            best: dict[int, float] = {}
            for c in entry.top:
                best.setdefault(self.vocab.id_for(c.piece, c.id), c.logprob)
            ranked = sorted(best.items(), key=lambda c: -c[1])[:top]
            cum, cands = 0.0, []
            for token, lp in ranked:
                p = math.exp(lp)
                cum += p
                cands.append(Candidate(token, lp, (p,), (min(1.0, cum),)))
            short = short or len(cands) < top
            yield NextStep(
                None if n is None else n + step, NextTokens((1.0,), (None,), tuple(cands))
            )
        if short:
            self.notify(
                f"the server returned fewer than {top} candidates at some step (it lists each "
                "token text once: tokens that decode alike, or more than it allows, are missing)"
            )
        if len(found) < steps and _reason(choice.get("finish_reason")) == "stop":
            self.notify("the most likely next token ends the text: no more steps")

    def score(self, text: str):
        """Each prompt token's log probability given the ones before it, from
        `/v1/completions` with `echo` (one token generated, then dropped)."""
        require(
            self,
            "prompt_logprobs",
            f"{self.dialect.name} has no prompt log probabilities, so `score` cannot run "
            "there (score locally)",
        )
        body = {"prompt": text, "max_tokens": 1, "temperature": 0, "top_k": 1}
        body.update({"echo": True, "logprobs": 1, "stream": False})
        if self.model:
            body["model"] = self.model
        reply = self.http.json("POST", "/v1/completions", body)
        choice = dialects.first_choice(reply)
        lp = choice.get("logprobs") if choice else None
        if not isinstance(lp, dict) or not isinstance(lp.get("tokens"), list):
            raise GptcliError(NO_LOGPROBS.format(what="`score` needs the prompt's"))
        tokens = lp["tokens"]
        # Lists, or nothing: a server's number or text in their place is no alignment.
        values = lp.get("token_logprobs") if isinstance(lp.get("token_logprobs"), list) else []
        offsets = lp.get("text_offset") if isinstance(lp.get("text_offset"), list) else []
        entries = dialects.legacy_entries(lp)
        if any(e.dropped for e in entries):
            self.once(dialects.IMPOSSIBLE)
        # A server that echoes gives the prompt's tokens first; the one generated
        # token follows at offset >= len(text). One that ignores echo gives only the
        # generated token (count them); llama-cpp-python 0.3 without a BOS token
        # leaves the first out and shifts every value by one: refused, not shown.
        n_prompt = sum(1 for o in offsets if isinstance(o, int) and o < len(text))
        if not offsets or len(tokens) != len(values) or len(entries) != len(tokens):
            raise GptcliError(NO_LOGPROBS.format(what="`score` needs the prompt's"))
        if n_prompt == 0 and len(tokens) <= 1:
            raise GptcliError(
                f"{self.label} ignored `echo` (it sent no prompt tokens back): it gives no "
                "prompt log probabilities; score locally"
            )
        if n_prompt == len(tokens) or "".join(tokens[:n_prompt]) != text:
            raise GptcliError(
                f"the server at {self.url.display} does not report the prompt's log "
                "probabilities in the standard alignment (llama-cpp-python's echo is "
                "shifted by one token for models without a BOS token): score locally, "
                "or use vLLM"
            )
        if n_prompt < 2:
            raise UsageError(
                "the text is a single token: nothing to score (a token needs a context)"
            )
        ids, lps, best_ids, best_lp = [], [], [], []
        for i, e in enumerate(entries[:n_prompt]):
            ids.append(self.vocab.id_for(e.piece, e.id))
            lps.append(UNKNOWN if i == 0 or e.logprob is None else e.logprob)
            if i == 0:
                best_ids.append(-1)
                best_lp.append(UNKNOWN)
            elif not e.top or e.logprob is None:
                raise GptcliError(
                    f"the server at {self.url.display} left out the log probabilities of "
                    "some tokens: nothing to score them by (score locally)"
                )
            else:
                c = max(e.top, key=lambda c: c.logprob)
                best_ids.append(self.vocab.id_for(c.piece, c.id))
                best_lp.append(c.logprob)
        return Scores(
            ids,
            np.array(lps, dtype=np.float64),
            np.array(best_ids, dtype=np.int64),
            np.array(best_lp, dtype=np.float64),
        )

    def tokenize(self, text: str) -> list[int]:
        """Token ids, from llama-server's /tokenize (other servers have no ids to give)."""
        require(self, "token_ids", "tokenize locally")
        reply = self.http.json("POST", "/tokenize", {"content": text, "with_pieces": True})
        out = []
        tokens = reply.get("tokens")
        if not isinstance(tokens, list):
            raise GptcliError(f"{self.label} sent an unexpected /tokenize reply")
        for t in tokens:
            tid = dialects.count(t.get("id") if isinstance(t, dict) else t)  # an id is >= 0
            if tid is None:
                raise GptcliError(f"{self.label} sent an unexpected /tokenize reply")
            if isinstance(t, dict):
                piece = t.get("piece")
                if isinstance(piece, list) and all(
                    isinstance(b, int) and 0 <= b < 256 for b in piece
                ):
                    self.vocab.id_for(bytes(piece), tid)
                elif isinstance(piece, str):
                    self.vocab.id_for(piece.encode("utf-8", errors="surrogatepass"), tid)
            out.append(tid)
        return out


ONLY_T1 = (
    "servers report the model's probabilities at temperature 1 only: showing T=1 "
    "(other temperatures need the whole vocabulary; run locally for them)"
)
NO_ENTROPY = (
    "a server reports only the top {k}: the entropy (over the whole vocabulary) is not shown"
)


# -- a streamed generation ------------------------------------------------------


@dataclass
class RemoteGeneration:
    """One streamed reply, yielding the same events as generation.Generation.

    A chunk with log probabilities holds one token or more: one TokenEvent each,
    the chunk's text going out with the last. Without them a chunk's text may hold
    several tokens; it is still one event, and the token count comes from the
    server's usage, when it sends one."""

    backend: RemoteBackend
    path: str
    body: dict
    n_top: int = 0
    want_logprobs: bool = False
    native: bool = False  # llama-server's /completion, with post-sampling probabilities
    limit: int | None = None  # -n: enforced here too, for a server that ignores max_tokens
    tokens: list[int] = field(default_factory=list)
    logprobs_missing: bool = False  # asked for, and some text came without them

    def __post_init__(self) -> None:
        self._t0 = self._t_first = None
        self._events = 0
        self._usage: dict = {}
        self._server_tps: float | None = None

    def __iter__(self) -> Iterator[TokenEvent | Finish]:
        self._t0 = time.perf_counter()
        index = 0
        reason = None
        body = dict(self.body)
        end = None
        if self.native:
            end = lambda obj: obj.get("stop") is True  # noqa: E731  (no [DONE] there)
        else:
            body["stream_options"] = {"include_usage": True}
        stream = self.backend.http.events(self.path, body, end=end)
        empty = 0
        try:
            for obj in stream:
                text, found, finished = self._read(obj)
                if finished:
                    reason = finished
                more = len(found) or (1 if text else 0)  # tokens this object adds
                empty = 0 if more else empty + 1
                if empty > MAX_EMPTY_EVENTS:
                    raise GptcliError(
                        f"{self.backend.label} sent {MAX_EMPTY_EVENTS} events in a row with "
                        "no text: stopped"
                    )
                if more and self.limit is not None and index + more > self.limit:
                    # Past -n: a server that ignores max_tokens. Keep what fits, then stop.
                    if found:  # the kept tokens' own text, not the whole object's
                        found = found[: self.limit - index]
                        text = b"".join(e.piece for e in found).decode("utf-8", "replace")
                    if index < self.limit:
                        yield from self._events_of(index, text, found)
                        index = self.limit
                    self.backend.once(
                        f"{self.backend.label} sent more than the {self.limit} tokens asked "
                        "for (-n): stopped reading"
                    )
                    reason = "length"
                    break
                for event in self._events_of(index, text, found):
                    index += 1
                    yield event
        finally:
            stream.close()  # an early stop closes the connection
        yield self.finish(_reason(reason))

    def _events_of(self, index: int, text: str, found: list) -> Iterator[TokenEvent]:
        """The TokenEvents of one streamed object's text and token entries."""
        if any(e.dropped for e in found):
            self.backend.once(dialects.IMPOSSIBLE)
        if found:
            for j, e in enumerate(found):
                tok = self.backend.vocab.id_for(e.piece, e.id)
                released = text if j == len(found) - 1 else ""
                self.tokens.append(tok)
                yield self._event(index + j, tok, e.piece, released, self._draw(tok, e))
        elif text:
            if self.want_logprobs:
                self.logprobs_missing = True
            piece = text.encode("utf-8", errors="surrogatepass")
            tok = self.backend.vocab.id_for(piece)
            self.tokens.append(tok)
            yield self._event(index, tok, piece, text, Draw(tok, UNKNOWN, _EMPTY_I, _EMPTY_F))

    def _read(self, obj: dict) -> tuple[str, list, str | None]:
        """(text, token entries, finish reason) of one streamed object."""
        timings = obj.get("timings")
        if isinstance(timings, dict) and dialects.rate(timings.get("predicted_per_second")):
            self._server_tps = dialects.rate(timings["predicted_per_second"])
        if self.native:
            text = obj.get("content") if isinstance(obj.get("content"), str) else ""
            found = dialects.entries(obj.get("completion_probabilities"), sampled=True)
            if obj.get("stop") is True:
                self._usage = {
                    "prompt_tokens": obj.get("tokens_evaluated"),
                    "completion_tokens": obj.get("tokens_predicted"),
                }
                return text, found, str(obj.get("stop_type") or "stop")
            return text, found, None
        if isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]
        choice = dialects.first_choice(obj)
        if choice is None:
            return "", [], None
        if self.path.endswith("/chat/completions"):
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            text = delta.get("content")
        else:
            text = choice.get("text")
        text = text if isinstance(text, str) else ""  # a number or a list is no text
        found = dialects.entries(choice.get("logprobs"))
        return text, found, choice.get("finish_reason") or None

    def _event(self, index, tok, piece, text, draw) -> TokenEvent:
        if self._t_first is None:
            self._t_first = time.perf_counter()
        self._events += 1
        return TokenEvent(index, tok, piece, text, draw)

    def _draw(self, tok: int, e: dialects.Entry) -> Draw:
        vocab = self.backend.vocab
        alts: list[Alternative] = []
        seen = set()
        for c in sorted(e.top, key=lambda c: -c.logprob):
            aid = vocab.id_for(c.piece, c.id)
            if aid in seen:  # texts that decode alike collapse into one entry
                continue
            seen.add(aid)
            if self.native:  # the sampled distribution; the model's own is not sent with it
                alts.append(Alternative(aid, UNKNOWN, c.logprob if c.logprob > -math.inf else None))
            else:  # None: the sampled distribution is unknown
                alts.append(Alternative(aid, c.logprob, None))
        if self.n_top:
            alts = alts[: self.n_top]
        lp = e.logprob
        if self.native:
            prob = math.exp(lp) if lp is not None else UNKNOWN
            ids = np.array([a.id for a in alts], dtype=np.int64)
            probs = np.array([math.exp(a.logprob or -math.inf) for a in alts], dtype=np.float64)
            return Draw(tok, prob, ids, probs, None, tuple(alts))
        model_lp = lp if lp is not None and math.isfinite(lp) else None
        return Draw(tok, UNKNOWN, _EMPTY_I, _EMPTY_F, model_lp, tuple(alts))

    def finish(self, reason: str, text: str = "", stop: str | None = None) -> Finish:
        now = time.perf_counter()
        t0 = self._t0 or now
        first = self._t_first or now
        usage = self._usage
        prompt_tokens = dialects.count(usage.get("prompt_tokens"))
        completion = dialects.count(usage.get("completion_tokens"))
        counted = self.want_logprobs and not self.logprobs_missing
        if counted and (completion is None or reason == "length" and self.limit is not None):
            completion = self._events  # one event per reported token: an exact count
        timings = RemoteTimings(
            load_s=0.0,  # nothing is loaded here
            prompt_s=first - t0,  # request to first token: prompt evaluation and network
            ttft_s=first - t0,
            generation_s=now - first,
            prompt_tokens_evaluated=prompt_tokens,
            server_tps=self._server_tps,
        )
        return Finish(reason, prompt_tokens, completion, timings, text, stop)


def _reason(raw) -> str:
    """gptcli's word for a server's finish reason. Another word passes as the server
    wrote it, made printable: it reaches --stats and the chat REPL on a terminal."""
    text = str(raw)[:100] if raw else "stop"  # a server's word, not a page of it
    return dialects.REASONS.get(text) or safe(text)

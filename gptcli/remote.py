"""The second backend: an OpenAI-compatible server (llama.cpp's llama-server,
llama-cpp-python's server, vLLM, Ollama) instead of a local llama.cpp.

It speaks `/v1/completions`, `/v1/chat/completions` (streamed as server-sent
events) and `/v1/models` over the standard library's http.client, and turns the
replies into the events the local loop yields (`TokenEvent`, `Finish`, with a
`Draw` and its `Alternative`s), so rendering does not know where the model ran.

What a server reports, and what it does not:
- `logprobs` are the model's own probabilities (softmax of the raw logits): they
  become `model_logprob`. The distribution actually drawn from (after top-k, top-p,
  temperature) is not reported, so a remote Draw's `prob` is NaN (JSON: null).
- Tokens come as text, not ids (unless the server adds `id`): each distinct token
  text gets a negative handle, which renders as `"id": null`.
Every network failure is translated here, from one table, into a GptcliError.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.generation import Finish, Timings, TokenEvent
from gptcli.sampling import Alternative, Draw, SamplingParams

ENV_SERVER = "GPTCLI_SERVER"
ENV_API_KEY = "GPTCLI_API_KEY"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0  # a long prompt on a busy server can take minutes to start
UNKNOWN = float("nan")  # a probability the server did not report

NO_LOGPROBS = (
    "the server returned no log probabilities (it may not offer them, e.g. "
    "llama-cpp-python without --logits_all): {what}"
)


# -- token identities ----------------------------------------------------------


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


def _piece_of(entry: dict, text_key: str = "token") -> bytes:
    """A token's bytes: the server's `bytes` when given (exact), else its text."""
    raw = entry.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    text = entry.get(text_key)
    return text.encode("utf-8", errors="surrogatepass") if isinstance(text, str) else b""


# -- the connection ------------------------------------------------------------


@dataclass(frozen=True)
class ServerURL:
    scheme: str
    host: str
    port: int
    base: str  # path prefix before /v1
    display: str

    @classmethod
    def parse(cls, url: str) -> ServerURL:
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--server must be an http(s) URL like http://host:8080, got {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UsageError(f"--server has a bad port: {url!r}") from None
        base = parts.path.rstrip("/")
        if base.endswith("/v1"):  # accept both http://host:8080 and http://host:8080/v1
            base = base[:-3]
        display = f"{parts.scheme}://{parts.hostname}:{port}{base}"
        return cls(parts.scheme, parts.hostname, port, base, display)


class _Reply:
    """An open HTTP response; closes its connection when done."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self.conn, self.resp = conn, resp

    def close(self) -> None:
        self.conn.close()


class RemoteServer:
    """One OpenAI-compatible endpoint. Thread-safe: each request has its own connection."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None):
        self.url = ServerURL.parse(url)
        self.api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY) or None
        self.model = model  # the `model` field sent; None: the server's default
        self.vocab = RemoteVocab()

    def piece(self, token: int) -> bytes:
        return self.vocab.piece(token)

    # -- HTTP, with every failure translated once --------------------------------

    def _open(self, method: str, path: str, body: dict | None = None) -> _Reply:
        u = self.url
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.host, u.port, timeout=CONNECT_TIMEOUT_S)
        headers = {"Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            conn.connect()
            conn.sock.settimeout(READ_TIMEOUT_S)
            conn.request(method, u.base + path, body=data, headers=headers)
            resp = conn.getresponse()
        except BaseException as e:
            conn.close()
            raise self._translate(e, path) from None
        if resp.status >= 400:
            detail = _error_detail(resp)
            conn.close()
            raise self._status_error(resp.status, path, detail)
        return _Reply(conn, resp)

    def _translate(self, e: BaseException, path: str, *, during: str = "") -> BaseException:
        """One table from network exceptions to one-line errors with the fix."""
        where = self.url.display
        if not isinstance(e, Exception):  # KeyboardInterrupt, Terminated: pass through
            return e
        if isinstance(e, ConnectionRefusedError):
            return GptcliError(
                f"cannot reach the server at {where}: connection refused "
                f"(is it running? check --server or ${ENV_SERVER})"
            )
        if isinstance(e, socket.gaierror):
            return GptcliError(f"cannot resolve the server's host in {where} (check --server)")
        if isinstance(e, TimeoutError | socket.timeout):
            return GptcliError(f"the server at {where} did not answer{during} in time")
        if isinstance(e, http.client.IncompleteRead | http.client.RemoteDisconnected):
            return GptcliError(f"the server at {where} closed the connection{during}")
        if isinstance(e, ConnectionError | http.client.HTTPException | OSError):
            reason = getattr(e, "strerror", None) or type(e).__name__
            return GptcliError(f"the connection to the server at {where} failed{during}: {reason}")
        return e

    def _status_error(self, status: int, path: str, detail: str) -> GptcliError:
        where = self.url.display
        tail = f": {detail}" if detail else ""
        if status in (401, 403):
            return GptcliError(
                f"the server at {where} refused the request (HTTP {status}): set "
                f"${ENV_API_KEY} to a valid API key{tail}"
            )
        if status == 404:
            return GptcliError(
                f"the server at {where} has no {path} (HTTP 404): is it an "
                f"OpenAI-compatible server?{tail}"
            )
        if status in (400, 422):
            return GptcliError(f"the server at {where} rejected the request (HTTP {status}){tail}")
        return GptcliError(f"the server at {where} failed (HTTP {status}){tail}")

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        reply = self._open(method, path, body)
        try:
            raw = reply.resp.read()
        except Exception as e:
            raise self._translate(e, path, during=" while replying") from None
        finally:
            reply.close()
        try:
            obj = json.loads(raw)
        except ValueError:
            raise GptcliError(
                f"the server at {self.url.display} sent a reply that is not JSON for {path}"
            ) from None
        if not isinstance(obj, dict):
            raise GptcliError(
                f"the server at {self.url.display} sent an unexpected reply for {path}"
            )
        return obj

    def _events(self, path: str, body: dict) -> Iterator[dict]:
        """The JSON objects of a server-sent-event stream, until `[DONE]`."""
        reply = self._open("POST", path, body)
        done = False
        try:
            while True:
                try:
                    line = reply.resp.readline()
                except Exception as e:
                    raise self._translate(e, path, during=" in the middle of its reply") from None
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # comments, `event:` lines, keep-alives
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise GptcliError(
                        f"the server at {self.url.display} sent a malformed event in its reply"
                    ) from None
                if isinstance(obj, dict) and obj.get("error"):
                    raise GptcliError(
                        f"the server at {self.url.display} failed mid-reply: "
                        f"{_message(obj['error'])}"
                    )
                yield obj
        finally:
            reply.close()
        if not done:
            raise GptcliError(
                f"the server at {self.url.display} ended its reply early (no end-of-stream mark)"
            )

    # -- the API ---------------------------------------------------------------

    def models(self) -> list[dict]:
        """`/v1/models`: the models the server serves."""
        data = self._json("GET", "/v1/models").get("data")
        return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []

    def _sampling(self, params: SamplingParams) -> dict:
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

    def complete(
        self,
        prompt: str,
        params: SamplingParams,
        max_tokens: int | None = None,
        stops: Sequence[str] = (),
        n_top: int = 0,
        logprobs: bool = False,
    ) -> RemoteGeneration:
        """A plain completion of `prompt` (`/v1/completions`), streamed as events."""
        body = self._sampling(params)
        body.update(prompt=prompt, stream=True, max_tokens=max_tokens)
        if stops:
            body["stop"] = list(stops)
        if logprobs or n_top:
            body["logprobs"] = max(1, n_top)
        return RemoteGeneration(self, "/v1/completions", body, n_top, bool(logprobs or n_top))

    def chat(
        self,
        messages: list[dict],
        params: SamplingParams,
        max_tokens: int | None = None,
        stops: Sequence[str] = (),
        n_top: int = 0,
        logprobs: bool = False,
    ) -> RemoteGeneration:
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
        return RemoteGeneration(self, "/v1/chat/completions", body, n_top, bool(logprobs or n_top))

    def next_steps(self, prompt: str | list[dict], top: int, steps: int = 1) -> NextSteps:
        """The top candidates (id, model logprob) after `prompt` (text, or chat
        messages the server wraps in its template), for `steps` greedy steps, from
        one greedy completion with `logprobs`."""
        chat = not isinstance(prompt, str)
        body: dict = {"max_tokens": steps, "temperature": 0, "top_k": 1, "stream": False}
        if chat:
            body.update(messages=prompt, logprobs=True, top_logprobs=top)
            path = "/v1/chat/completions"
        else:
            body.update(prompt=prompt, logprobs=top)
            path = "/v1/completions"
        if self.model:
            body["model"] = self.model
        reply = self._json("POST", path, body)
        choice = _first_choice(reply) or {}
        lp = choice.get("logprobs")
        if chat:
            content = lp.get("content") if isinstance(lp, dict) else None
            tops = [
                [(_piece_of(t), t.get("logprob")) for t in e.get("top_logprobs") or []]
                for e in content or []
                if isinstance(e, dict)
            ]
        else:
            raw = lp.get("top_logprobs") if isinstance(lp, dict) else None
            tops = [
                [(t.encode("utf-8"), v) for t, v in entry.items()]
                for entry in raw or []
                if isinstance(entry, dict)
            ]
        if not tops or not tops[0]:
            raise GptcliError(NO_LOGPROBS.format(what="`next` needs them"))
        out = []
        for entry in tops[:steps]:
            cands = {}
            for piece, v in entry:
                if _num(v):
                    cands.setdefault(self.vocab.id_for(piece), float(v))
            out.append(sorted(cands.items(), key=lambda c: -c[1])[:top])
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        n = usage.get("prompt_tokens")
        return NextSteps(out, n if isinstance(n, int) else None, choice.get("finish_reason"))

    def prompt_logprobs(self, text: str, top: int = 1) -> PromptScores:
        """Each prompt token's log probability given the ones before it, from
        `/v1/completions` with `echo` (one token generated, then dropped)."""
        body = {"prompt": text, "max_tokens": 1, "temperature": 0, "top_k": 1}
        body.update({"echo": True, "logprobs": max(1, top), "stream": False})
        if self.model:
            body["model"] = self.model
        reply = self._json("POST", "/v1/completions", body)
        choice = _first_choice(reply)
        lp = choice.get("logprobs") if choice else None
        if not isinstance(lp, dict) or not isinstance(lp.get("tokens"), list):
            raise GptcliError(NO_LOGPROBS.format(what="`score` needs the prompt's"))
        tokens, values = lp["tokens"], lp.get("token_logprobs") or []
        tops = lp.get("top_logprobs") or []
        offsets = lp.get("text_offset") or []
        # A server that echoes honours the prompt's tokens first; the one generated
        # token follows at offset >= len(text). Some servers leave it out and shift
        # every value by one position (llama-cpp-python 0.3 without a BOS token):
        # their numbers belong to other tokens, so they are refused, not shown.
        n_prompt = sum(1 for o in offsets if isinstance(o, int) and o < len(text))
        if not offsets or len(tokens) != len(values):
            raise GptcliError(NO_LOGPROBS.format(what="`score` needs the prompt's"))
        if n_prompt == len(tokens) or "".join(tokens[:n_prompt]) != text:
            raise GptcliError(
                f"the server at {self.url.display} does not report the prompt's log "
                "probabilities in the standard alignment (llama-cpp-python's echo is "
                "shifted by one token for models without a BOS token): score locally, "
                "or use llama.cpp's llama-server or vLLM"
            )
        ids, lps, best = [], [], []
        for i in range(n_prompt):
            ids.append(self.vocab.id_for(tokens[i].encode("utf-8")))
            v = values[i]
            lps.append(float(v) if isinstance(v, int | float) else UNKNOWN)
            t = tops[i] if i < len(tops) and isinstance(tops[i], dict) else None
            if t:
                tok, blp = max(t.items(), key=lambda kv: kv[1])
                best.append((self.vocab.id_for(tok.encode("utf-8")), float(blp)))
            else:
                best.append((None, UNKNOWN))
        return PromptScores(ids, lps, best)


@dataclass(frozen=True)
class NextSteps:
    """The candidates at each greedy step, best first (fewer steps than asked when
    the text ended), the prompt's length in tokens when the server says, and why
    the completion stopped."""

    steps: list[list[tuple[int, float]]]
    prompt_tokens: int | None
    finish_reason: str | None


@dataclass(frozen=True)
class PromptScores:
    """A prompt's tokens (ids in the server vocabulary), each one's log probability
    given those before it (NaN where the server reports none: the first), and the
    most likely token at each position."""

    tokens: list[int]
    logprobs: list[float]
    best: list[tuple[int | None, float]]


def _first_choice(reply: dict) -> dict | None:
    choices = reply.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def _message(err) -> str:
    if isinstance(err, dict):
        err = err.get("message") or err.get("detail") or json.dumps(err)
    return " ".join(str(err).split())[:300]


def _error_detail(resp: http.client.HTTPResponse) -> str:
    """The server's own reason for an HTTP error, shortened to one line."""
    try:
        raw = resp.read(64 * 1024)
    except Exception:
        return ""
    try:
        obj = json.loads(raw)
    except ValueError:
        return " ".join(raw.decode("utf-8", errors="replace").split())[:300]
    if isinstance(obj, dict):
        return _message(obj.get("error") or obj.get("detail") or obj.get("message") or obj)
    return _message(obj)


# -- a streamed generation ------------------------------------------------------


@dataclass
class RemoteGeneration:
    """One streamed reply, yielding the same events as generation.Generation.

    A chunk with logprobs holds one token: one TokenEvent each. Without them a
    chunk's text may hold several tokens; it is still one event, and the token
    count comes from the server's usage, when it sends one."""

    server: RemoteServer
    path: str
    body: dict
    n_top: int = 0
    want_logprobs: bool = False
    tokens: list[int] = field(default_factory=list)
    logprobs_missing: bool = False  # asked for, and the server sent none

    def __post_init__(self) -> None:
        self._t0 = self._t_first = None
        self._events = 0
        self._usage: dict = {}

    def __iter__(self) -> Iterator[TokenEvent | Finish]:
        vocab = self.server.vocab
        self._t0 = time.perf_counter()
        index = 0
        reason = None
        chat = self.path.endswith("/chat/completions")
        body = dict(self.body)
        body["stream_options"] = {"include_usage": True}
        for obj in self.server._events(self.path, body):
            if isinstance(obj.get("usage"), dict):
                self._usage = obj["usage"]
            choice = _first_choice(obj)
            if choice is None:
                continue
            if chat:
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                lp = choice.get("logprobs")
                entries = lp.get("content") if isinstance(lp, dict) else None
                entries = [_chat_entry(e) for e in entries or [] if isinstance(e, dict)]
            else:
                text = choice.get("text") or ""
                entries = _completion_entries(choice.get("logprobs"))
            if entries:
                # One event per token; the chunk's text goes out with the last one.
                for j, (piece, sid, lp_, top) in enumerate(entries):
                    tok = vocab.id_for(piece, sid)
                    draw = self._draw(tok, lp_, top)
                    released = text if j == len(entries) - 1 else ""
                    self.tokens.append(tok)
                    yield self._event(index, tok, piece, released, draw)
                    index += 1
            elif text:
                if self.want_logprobs:
                    self.logprobs_missing = True
                piece = text.encode("utf-8", errors="surrogatepass")
                tok = vocab.id_for(piece)
                self.tokens.append(tok)
                yield self._event(index, tok, piece, text, Draw(tok, UNKNOWN, _EMPTY_I, _EMPTY_F))
                index += 1
            if choice.get("finish_reason"):
                reason = choice["finish_reason"]
        yield self.finish(_REASONS.get(reason, reason or "stop"))

    def _event(self, index, tok, piece, text, draw) -> TokenEvent:
        if self._t_first is None:
            self._t_first = time.perf_counter()
        self._events += 1
        return TokenEvent(index, tok, piece, text, draw)

    def _draw(self, tok: int, lp: float | None, top: list[tuple[bytes, int | None, float]]) -> Draw:
        vocab = self.server.vocab
        alts = []
        seen = set()
        for piece, sid, v in sorted(top, key=lambda t: -t[2]):
            aid = vocab.id_for(piece, sid)
            if aid in seen:  # texts that decode alike collapse into one entry
                continue
            seen.add(aid)
            alts.append(Alternative(aid, v, None))  # None: the sampled distribution is unknown
        if self.n_top:
            alts = alts[: self.n_top]
        model_lp = lp if lp is not None and math.isfinite(lp) else None
        return Draw(tok, UNKNOWN, _EMPTY_I, _EMPTY_F, model_lp, tuple(alts))

    def finish(self, reason: str, text: str = "", stop: str | None = None) -> Finish:
        now = time.perf_counter()
        t0 = self._t0 or now
        first = self._t_first or now
        usage = self._usage
        prompt_tokens = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if completion is None and self.want_logprobs and not self.logprobs_missing:
            completion = self._events  # one event per reported token: an exact count
        timings = RemoteTimings(
            load_s=0.0,  # nothing is loaded here
            prompt_s=first - t0,  # request to first token: prompt evaluation and network
            ttft_s=first - t0,
            generation_s=now - first,
            prompt_tokens_evaluated=prompt_tokens,
        )
        return Finish(reason, prompt_tokens, completion, timings, text, stop)


_EMPTY_I = np.empty(0, dtype=np.int64)
_EMPTY_F = np.empty(0, dtype=np.float64)
# OpenAI's reasons to gptcli's: "content_filter" and others pass through as they are.
_REASONS = {"stop": "stop", "length": "length", "eos": "stop"}


@dataclass(frozen=True)
class RemoteTimings(Timings):
    """Timings of a remote reply; token counts the server did not send are None."""

    def prompt_tps(self) -> float | None:
        n = self.prompt_tokens_evaluated
        if n is None:
            return None
        return n / self.prompt_s if self.prompt_s > 0 else 0.0


def _completion_entries(lp) -> list[tuple[bytes, int | None, float | None, list]]:
    """Legacy completions logprobs: {tokens, token_logprobs, top_logprobs: [{text: lp}]}."""
    if not isinstance(lp, dict) or not isinstance(lp.get("tokens"), list):
        return []
    values = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or []
    out = []
    for i, text in enumerate(lp["tokens"]):
        if not isinstance(text, str):
            continue
        v = values[i] if i < len(values) else None
        t = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        top = [(k.encode("utf-8"), None, float(x)) for k, x in t.items() if _num(x)]
        out.append((text.encode("utf-8"), None, float(v) if _num(v) else None, top))
    return out


def _chat_entry(e: dict) -> tuple[bytes, int | None, float | None, list]:
    """Chat logprobs: {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}."""
    sid = e.get("id") if isinstance(e.get("id"), int) else None
    top = [
        (_piece_of(t), t.get("id") if isinstance(t.get("id"), int) else None, float(t["logprob"]))
        for t in e.get("top_logprobs") or []
        if isinstance(t, dict) and _num(t.get("logprob"))
    ]
    v = e.get("logprob")
    return _piece_of(e), sid, float(v) if _num(v) else None, top


def _num(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


# -- helpers for the commands ------------------------------------------------------


def server_from(option: str | None) -> RemoteServer | None:
    """The server to use: --server, else $GPTCLI_SERVER, else None (run locally)."""
    url = option or os.environ.get(ENV_SERVER) or None
    return RemoteServer(url) if url else None

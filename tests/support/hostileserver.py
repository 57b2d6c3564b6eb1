"""A server on 127.0.0.1 that misbehaves on purpose, one way per first path segment
of the URL the client is given (`http://127.0.0.1:PORT/MODE`): the server rows of
tests/test_hostile_server.py. Each way is a few lines below, in MODES' order:

- silent: accepts, reads the request, never answers.
- endless: streams three tokens, then neither more nor an end.
- trickle: streams three tokens, then only keep-alive comments, for ever.
- flood: ignores max_tokens: one-word events until the client hangs up.
- emptyflood: events with no text, until the client hangs up.
- hugeline: two tokens, then one event line that never ends (20 MiB and counting).
- deepjson: two tokens, then an event nested 100,000 deep.
- badnumbers: log probabilities 5.0, NaN, 1e308, "x", -inf (streamed and not).
- pastone: alternatives whose probabilities sum to 1.8.
- manytop: 200,000 alternatives for one token.
- wrongtypes: a finish reason that is a list, a token count that is text, and for
  `score` a number where a list is due.
- nousage: a well-behaved stream and reply that carry no token counts.
- reset: resets the connection of a prompt holding "RESET" the first time it comes,
  of one holding "ALWAYS" every time; answers the others `reply to <prompt>`.
- slowbody, bigbody: /v1/models that stops mid-body, or never ends (over 64 MiB).
- Any mode: GET /props is 404 (not llama-server), /v1/models names one model.

`silent` also serves as a hub that never answers (HF_ENDPOINT=URL/silent), `bigbody` as one
whose API replies never end, and `emptypages` as one whose file listing pages on for ever
with empty pages.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = ("one", " two", " three")


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chat_chunk(text: str, entries: list | None = None, finish=None) -> dict:
    lp = {"content": entries} if entries is not None else None
    return {
        "choices": [
            {"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": finish}
        ]
    }


def _text_chunk(text: str) -> dict:
    return {"choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]}


def _entry(token: str, logprob, top: list | None = None) -> dict:
    e = {"token": token, "logprob": logprob, "bytes": None}
    e["top_logprobs"] = top if top is not None else [{"token": token, "logprob": logprob}]
    return e


# The numbers no probability can have, in the shapes a server may send them (JSON's
# Infinity/NaN are not standard, but Python's json writes and reads them).
BAD = (5.0, float("nan"), 1e308, "x", float("-inf"))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the tests read the client's side
        pass

    @property
    def mode(self) -> str:
        return self.path.strip("/").split("/")[0]

    def _send(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream_head(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _hold(self) -> None:
        """Say nothing more until the test server stops (the client gives up first)."""
        self.server.stopping.wait(60)

    def do_GET(self):
        if self.mode == "silent":
            return self._hold()
        if self.mode == "emptypages":
            return self._empty_pages()
        if self.path.endswith("/props"):
            return self._send(404, {"error": {"message": "no such endpoint"}})
        if self.mode == "slowbody":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"data": [')
            self.wfile.flush()
            return self._hold()
        if self.mode == "bigbody":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            model = b'{"id": "' + b"m" * 1000 + b'"},'
            try:
                self.wfile.write(b'{"data": [')
                for _ in range(100_000):  # 100 MB, unless the client hangs up first
                    self.wfile.write(model * 16)
            except OSError:
                pass
            return None
        return self._send(200, {"data": [{"id": "hostile-model", "owned_by": "nobody"}]})

    def _empty_pages(self) -> None:
        """A hub whose model has a commit and whose file listing pages on with empty
        pages, each pointing to the next."""
        path, _, query = self.path.partition("?")
        if "/tree/" not in path:
            info = {"id": "someone/some-model", "sha": "a" * 40, "siblings": []}
            return self._send(200, info)
        from urllib.parse import parse_qs

        page = int(parse_qs(query).get("cursor", ["0"])[0])
        # The body right after the headers, not after a delayed ACK: 1,000 pages in ~1 s.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        host = self.headers.get("Host", "127.0.0.1")
        self.send_header("Link", f'<http://{host}{path}?cursor={page + 1}>; rel="next"')
        self.end_headers()
        self.wfile.write(body)
        return None

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        mode = self.mode
        if mode == "silent":
            return self._hold()
        if not body.get("stream"):
            return self._send(200, self._reply(mode, body))
        if mode == "reset":
            prompt = json.dumps(body.get("messages") or body.get("prompt"))
            seen = self.server.seen
            with self.server.lock:
                seen[prompt] += 1
                first = seen[prompt] == 1
            if "ALWAYS" in prompt or ("RESET" in prompt and first):
                # SO_LINGER 0: close with a TCP reset, as a crashed proxy does.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                return None
        self._stream_head()
        try:
            self._stream(mode, body)
        except OSError:
            pass  # the client hung up: that is how a flood ends
        return None

    def _stream(self, mode: str, body: dict) -> None:
        w = self.wfile
        if mode == "reset":
            text = json.loads(json.dumps(body.get("messages")))[-1]["content"]
            w.write(_sse(_chat_chunk(f"reply to {text}", finish="stop")) + b"data: [DONE]\n\n")
            return
        if mode in ("flood", "emptyflood"):
            text = "w " if mode == "flood" else ""
            chunk = _sse(_chat_chunk(text) if body.get("messages") else _text_chunk(text))
            for _ in range(10_000_000):
                w.write(chunk)
            return
        if mode == "badnumbers":
            for word, bad in zip(WORDS, BAD, strict=False):
                entries = [_entry(word, bad, [{"token": word, "logprob": bad}])]
                w.write(_sse(_chat_chunk(word, entries)))
            w.write(_sse(_chat_chunk("", finish="stop")) + b"data: [DONE]\n\n")
            return
        n = 2 if mode in ("hugeline", "deepjson") else 3
        for word in WORDS[:n]:
            w.write(_sse(_chat_chunk(word)))
            w.flush()
        if mode == "endless":
            return self._hold()
        if mode == "trickle":
            while not self.server.stopping.wait(0.1):
                w.write(b": keep-alive\n\n")
                w.flush()
            return None
        if mode == "deepjson":  # within the line limit, beyond Python's recursion limit
            w.write(b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n")
            return None
        if mode == "hugeline":
            w.write(b"data: ")
            block = b"x" * (1 << 20)
            for _ in range(20):
                w.write(block)
            return self._hold()
        # nousage (and any other mode): a proper end, with no usage.
        w.write(_sse(_chat_chunk("", finish="stop")) + b"data: [DONE]\n\n")
        return None

    def _reply(self, mode: str, body: dict) -> dict:
        """A non-streamed reply (`next`): one token's log probabilities."""
        if mode == "wrongtypes":
            if body.get("echo"):  # score: lists where numbers are due, and the reverse
                lp = {"tokens": ["a", " b"], "token_logprobs": 5, "text_offset": 7}
                choice = {"index": 0, "text": "a b", "logprobs": {**lp, "top_logprobs": "x"}}
                return {"choices": [{**choice, "finish_reason": ["stop"]}]}
            entries = [_entry(" one", -0.5)]
            choice = {"index": 0, "text": " one", "finish_reason": ["stop"]}
            choice["logprobs"] = {"content": entries}
            return {"choices": [choice], "usage": {"prompt_tokens": "12"}}
        if mode == "badnumbers":
            top = [{"token": f" b{i}", "logprob": bad} for i, bad in enumerate(BAD)]
            top.append({"token": " good", "logprob": -0.5})
            entries = [_entry(" bad", 5.0, top)]
        elif mode == "pastone":
            top = [{"token": " a", "logprob": -0.1}, {"token": " b", "logprob": -0.1}]
            entries = [_entry(" a", -0.1, top)]
        elif mode == "manytop":
            top = [{"token": f" t{i}", "logprob": -20.0 - i / 1e5} for i in range(200_000)]
            top.insert(0, {"token": " first", "logprob": -0.25})
            entries = [_entry(" first", -0.25, top)]
        else:  # nousage
            entries = [_entry(" one", -0.5, [{"token": " one", "logprob": -0.5}])]
        choice = {"index": 0, "text": entries[0]["token"], "finish_reason": "length"}
        if body.get("messages"):
            choice = {**choice, "message": {"role": "assistant", "content": choice.pop("text")}}
        choice["logprobs"] = {"content": entries}
        return {"choices": [choice]}  # no "usage": nousage, and every other mode


class HostileServer:
    """The server above, on a free loopback port, in a thread."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.stopping = threading.Event()
        self.httpd.seen = Counter()
        self.httpd.lock = threading.Lock()
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}"

    def stop(self) -> None:
        self.httpd.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

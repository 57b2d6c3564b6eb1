"""Servers on 127.0.0.1 for the remote backend's tests.

- `LlamaServer`: llama-cpp-python's own OpenAI-compatible server (`python -m
  llama_cpp.server`) on a real model, one per model file for the whole session.
- `FaultServer`: a tiny standard-library server that fails on purpose; the first
  path segment chooses how (`/500/...`, `/drop/...`, `/auth/...`, `/nologprobs/...`),
  or `/echo/...`: prompt log probabilities in the standard alignment, which no
  server installed here returns (llama-cpp-python's are shifted), to test `score`'s
  accepting path. Its numbers are fixed and known to the test, not a model's.
"""

from __future__ import annotations

import atexit
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# llama_cpp.server with llama.cpp's extra buffer types off, as llama/engine.py loads models:
# the repacked AMX kernels that -march=native builds trap (invalid opcode) on VMs
# that list AMX but do not enable it, and without them the numbers match the engine's.
_NO_EXTRA_BUFFERS = """
import runpy
import llama_cpp.llama_cpp as llama_cpp
_default = llama_cpp.llama_model_default_params
def _params():
    p = _default()
    p.use_extra_bufts = False
    return p
llama_cpp.llama_model_default_params = _params
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


class _ServerProcess:
    """A server subprocess on a free loopback port; its log stays in /tmp only when it
    did not run cleanly (the error names it)."""

    label = "server"
    ready_path = "/health"

    def _start(self, log_name: str, make_args, timeout: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(f"/tmp/{log_name}-{self.port}.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            make_args(self.port), stdout=self.log, stderr=subprocess.STDOUT
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop(keep_log=True)
        raise RuntimeError(f"{self.label} did not start in {timeout} s: see {self.log.name}")

    def stop(self, keep_log: bool = False) -> None:
        healthy = self.proc.poll() is None
        if healthy:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        if healthy and not keep_log:  # nothing to read in it: leave no file in /tmp
            Path(self.log.name).unlink(missing_ok=True)


class LlamaServer(_ServerProcess):
    """`python -m llama_cpp.server` serving one model, started once and reused."""

    label = "llama_cpp.server"
    ready_path = "/v1/models"
    _running: dict[str, LlamaServer] = {}

    def __init__(self, model: Path, *extra: str):
        def make_args(port: int) -> list[str]:
            args = [sys.executable, "-c", _NO_EXTRA_BUFFERS, "--model", str(model)]
            args += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
            # gptcli's engine lets llama.cpp choose flash attention (on, on a CPU); the
            # server's default is off, which moves log probabilities by ~1e-2.
            args += ["--flash_attn", "true"]
            # By default it cuts a streamed reply short when another request arrives.
            return args + ["--interrupt_requests", "false", *extra]

        self._start("gptcli-llama-server", make_args, 90.0)

    @classmethod
    def get(cls, model: Path, *extra: str) -> LlamaServer:
        key = "\0".join([str(model), *extra])
        server = cls._running.get(key)
        if server is None or server.proc.poll() is not None:
            server = cls._running[key] = cls(model, *extra)
        return server


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunk(text: str, logprob: float | None = None, chat: bool = False) -> dict:
    if chat:
        lp = None
        if logprob is not None:
            entry = {"token": text, "logprob": logprob, "bytes": None}
            lp = {"content": [{**entry, "top_logprobs": [entry]}]}
        delta = {"content": text}
        return {"choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": None}]}
    lp = None
    if logprob is not None:
        lp = {"tokens": [text], "token_logprobs": [logprob], "top_logprobs": [{text: logprob}]}
        lp["text_offset"] = [0]
    return {"choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": None}]}


# The numbers an `/echo/` server reports for its n-th prompt word (after the first),
# each with the best guess " the" at -0.5: together at most probability 1, as a real
# server's are (more is refused as impossible).
ECHO_LOGPROBS = (-1.0, -2.0, -1.5, -3.0, -1.25, -2.5)


def _echo(prompt: str) -> dict:
    """A completion with `echo` in the standard alignment (as llama.cpp's llama-server
    and vLLM return it): one entry per prompt token, from the first, whose text
    joins to the prompt, then the one generated token. Tokens are the prompt's words
    with their leading space; the numbers are ECHO_LOGPROBS, the best guess " the"."""
    words = [w for w in prompt.replace(" ", "\0 ").split("\0") if w]
    tokens, values, tops, offsets, at = [], [], [], [], 0
    for i, w in enumerate(words):
        v = None if i == 0 else ECHO_LOGPROBS[(i - 1) % len(ECHO_LOGPROBS)]
        tokens.append(w)
        values.append(v)
        tops.append(None if i == 0 else {" the": -0.5, w: v})
        offsets.append(at)
        at += len(w)
    tokens.append(" x")
    values.append(-0.7)
    tops.append({" x": -0.7})
    offsets.append(at)
    lp = {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
    choice = {"index": 0, "text": prompt + " x", "logprobs": lp, "finish_reason": "length"}
    return {"choices": [choice], "usage": {"prompt_tokens": len(words), "completion_tokens": 1}}


class _FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the tests read the client's side
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        mode = self.path.strip("/").split("/")[0]
        if mode == "500":
            self._send(500, b'{"error": {"message": "model crashed"}}')
        else:
            self._send(200, json.dumps({"data": [{"id": "fault-model"}]}).encode())

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        mode = self.path.strip("/").split("/")[0]
        chat = self.path.endswith("/chat/completions")
        if mode == "echo":
            self._send(200, json.dumps(_echo(body.get("prompt", ""))).encode())
            return
        if mode == "500":
            self._send(500, b'{"error": {"message": "model crashed", "type": "server_error"}}')
            return
        if mode == "auth" and self.headers.get("Authorization") != "Bearer sekrit":
            self._send(401, b'{"error": {"message": "invalid api key"}}')
            return
        # A streamed reply without a Content-Length: the connection's end ends it.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        logprob = None if mode == "nologprobs" else -0.5
        for word in ("one", " two", " three"):
            self.wfile.write(_sse(_chunk(word, logprob, chat)))
            self.wfile.flush()
            time.sleep(0.02)
        if mode == "drop":
            # Dropped mid-reply: no finish_reason, no [DONE], the socket just closes.
            self.close_connection = True
            return
        end = {"choices": [{"index": 0, "text": "", "delta": {}, "finish_reason": "length"}]}
        self.wfile.write(_sse(end) + b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


class FaultServer:
    """Fails on purpose, by the first path segment of the URL the client was given."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FaultHandler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class NativeLlamaServer(_ServerProcess):
    """llama.cpp's own `llama-server` (built by support/llama_server_build.py) on one model,
    with 4 slots and the local engine's settings (flash attention on, 2 threads)."""

    label = "llama-server"

    def __init__(self, binary: Path, model: Path, slots: int = 4, *extra: str):
        def make_args(port: int) -> list[str]:
            args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
            args += ["-np", str(slots), "-c", str(2048 * slots), "-fa", "on", "-t", "2"]
            return args + ["--no-webui", "-nr", *extra]  # -nr: no extra buffers, as llama/engine.py

        self._start("gptcli-native-server", make_args, 60.0)


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "servers"


class _ReplayHandler(BaseHTTPRequestHandler):
    """Serves tests/fixtures/servers/NAME.json at http://127.0.0.1:PORT/NAME/...:
    each recorded `METHOD /path` answered with its recorded status and body."""

    protocol_version = "HTTP/1.1"
    requests: list = []  # (fixture, method, path, body) as received, for the tests

    def log_message(self, *args):
        pass

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        name, _, rest = self.path.strip("/").partition("/")
        path = "/" + rest
        type(self).requests.append((name, method, path, json.loads(raw) if raw else None))
        try:
            fixture = json.loads((FIXTURES / f"{name}.json").read_text())
            reply = fixture["responses"][f"{method} {path}"]
        except (OSError, KeyError):
            reply = {"status": 404, "content_type": "text/plain", "body": "Not Found"}
        body = reply["body"].encode("utf-8")
        self.send_response(reply["status"])
        self.send_header("Content-Type", reply.get("content_type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer("GET")

    def do_POST(self):
        self._answer("POST")


class ReplayServer:
    """A loopback server that replays recorded server replies (SSE included)."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ReplayHandler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, fixture: str) -> str:
        return f"http://127.0.0.1:{self.port}/{fixture}"

    @property
    def requests(self) -> list:
        return _ReplayHandler.requests

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

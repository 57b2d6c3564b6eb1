"""HTTP for the remote backend: the only module that opens connections.

JSON requests and server-sent-event streams over the standard library's
http.client, each request on its own connection (so threads may share a client),
and every network failure translated here, from one table, into a one-line
GptcliError with the fix. Every read is bounded (gptcli/limits.py): in time, by
--timeout (to connect, and the longest silence between two events of a stream or
before a whole reply), and in size (an event line, a reply, a whole stream).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from gptcli.errors import GptcliError, UsageError
from gptcli.limits import (
    CONNECT_TIMEOUT_S,
    MAX_ERROR_BYTES,
    MAX_EVENT_BYTES,
    MAX_REPLY_BYTES,
    MAX_STREAM_BYTES,
    SILENCE_TIMEOUT_S,
)

ENV_SERVER = "GPTCLI_SERVER"
ENV_API_KEY = "GPTCLI_API_KEY"
_READ = 64 * 1024


class ConnectionLost(GptcliError):
    """The connection failed or dropped (refused, reset, closed early): a request
    worth sending once more, where sending it twice does no harm (--each-line)."""


class NoAnswer(GptcliError):
    """The server was silent past --timeout."""


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
    """An open HTTP response; closes its connection when done. Reads wait at most
    until `deadline` (time.monotonic()), which the caller moves as the reply goes on."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self.conn, self.resp = conn, resp
        self.deadline = math.inf  # set by the reader before its first read

    def read1(self) -> bytes:
        """Some bytes of the body (b"" at its end), waiting no later than the deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if self.conn.sock is not None:
            self.conn.sock.settimeout(left)
        return self.resp.read1(_READ)

    def close(self) -> None:
        self.conn.close()


class HttpClient:
    """One server's base URL and API key, and how long to wait for it: `timeout`
    seconds to connect and of silence (None: limits.CONNECT_TIMEOUT_S to connect,
    limits.SILENCE_TIMEOUT_S of silence)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float | None = None):
        self.url = ServerURL.parse(url)
        self.api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY) or None
        self.connect_s = timeout if timeout is not None else CONNECT_TIMEOUT_S
        self.silence_s = timeout if timeout is not None else SILENCE_TIMEOUT_S

    # -- HTTP, with every failure translated once --------------------------------

    def open(self, method: str, path: str, body: dict | None = None) -> _Reply:
        u = self.url
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.host, u.port, timeout=self.connect_s)
        headers = {"Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise NoAnswer(
                f"the server at {u.display} did not accept a connection in {self.connect_s:g} s "
                "(--timeout S waits longer)"
            ) from None
        except BaseException as e:
            conn.close()
            raise self._translate(e, path) from None
        try:
            conn.sock.settimeout(self.silence_s)
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
            return ConnectionLost(
                f"cannot reach the server at {where}: connection refused "
                f"(is it running? check --server or ${ENV_SERVER})"
            )
        if isinstance(e, socket.gaierror):
            return GptcliError(f"cannot resolve the server's host in {where} (check --server)")
        if isinstance(e, TimeoutError | socket.timeout):
            return NoAnswer(
                f"the server at {where} sent nothing for {self.silence_s:g} s{during} "
                "(--timeout S waits longer)"
            )
        if isinstance(e, http.client.IncompleteRead | http.client.RemoteDisconnected):
            return ConnectionLost(f"the server at {where} closed the connection{during}")
        if isinstance(e, ConnectionError):
            reason = getattr(e, "strerror", None) or type(e).__name__
            return ConnectionLost(
                f"the connection to the server at {where} failed{during}: {reason}"
            )
        if isinstance(e, http.client.HTTPException | OSError):
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

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        """A JSON object, read whole within --timeout of the reply's start and
        refused past limits.MAX_REPLY_BYTES."""
        reply = self.open(method, path, body)
        reply.deadline = time.monotonic() + self.silence_s
        parts, size = [], 0
        try:
            while chunk := reply.read1():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise GptcliError(
                        f"the server at {self.url.display} sent a reply over "
                        f"{MAX_REPLY_BYTES >> 20} MiB for {path}: refused"
                    )
                parts.append(chunk)
        except GptcliError:
            raise
        except Exception as e:
            raise self._translate(e, path, during=" while replying") from None
        finally:
            reply.close()
        try:
            obj = json.loads(b"".join(parts))
        except (ValueError, RecursionError):
            raise GptcliError(
                f"the server at {self.url.display} sent a reply that is not JSON for {path}"
            ) from None
        if not isinstance(obj, dict):
            raise GptcliError(
                f"the server at {self.url.display} sent an unexpected reply for {path}"
            )
        return obj

    def events(self, path: str, body: dict, end=None) -> Iterator[dict]:
        """The JSON objects of a server-sent-event stream, until `[DONE]` (or an
        object for which `end(obj)` is true: llama-server's native stream). Each event
        must come within --timeout of the one before (keep-alive lines do not count),
        each line is at most limits.MAX_EVENT_BYTES, the stream limits.MAX_STREAM_BYTES."""
        reply = self.open("POST", path, body)
        done = False
        try:
            for line in self._lines(reply, path):
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # comments, `event:` lines, keep-alives
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    obj = json.loads(data)
                except (ValueError, RecursionError):
                    raise GptcliError(
                        f"the server at {self.url.display} sent a malformed event in its reply"
                    ) from None
                if isinstance(obj, dict) and obj.get("error"):
                    raise GptcliError(
                        f"the server at {self.url.display} failed mid-reply: "
                        f"{_message(obj['error'])}"
                    )
                yield obj
                # The next event within --timeout of this one (counted from here, so
                # a slow reader of the events is not taken for a silent server).
                reply.deadline = time.monotonic() + self.silence_s
                if end is not None and isinstance(obj, dict) and end(obj):
                    done = True
                    break
        finally:
            reply.close()
        if not done:
            raise ConnectionLost(
                f"the server at {self.url.display} ended its reply early (no end-of-stream mark)"
            )

    def _lines(self, reply: _Reply, path: str) -> Iterator[bytes]:
        """The body's lines, each bounded in size, the stream in total size."""
        reply.deadline = time.monotonic() + self.silence_s
        head: list[bytes] = []  # the pieces of the line not yet ended
        size = total = 0
        where = self.url.display
        while True:
            try:
                chunk = reply.read1()
            except Exception as e:
                raise self._translate(e, path, during=" in the middle of its reply") from None
            if not chunk:
                if head:
                    yield b"".join(head)
                return
            total += len(chunk)
            if total > MAX_STREAM_BYTES:
                raise GptcliError(
                    f"the server at {where} sent over {MAX_STREAM_BYTES >> 20} MiB in one "
                    "reply: stopped"
                )
            lines = chunk.split(b"\n")  # only the new bytes: a long line costs no rescans
            if len(lines) > 1:
                yield b"".join(head) + lines[0]
                yield from lines[1:-1]
                head, size = [], 0
            head.append(lines[-1])
            size += len(lines[-1])
            if size > MAX_EVENT_BYTES:
                raise GptcliError(
                    f"the server at {where} sent a line over {MAX_EVENT_BYTES >> 20} MiB "
                    "in its reply: refused"
                )


def _message(err) -> str:
    if isinstance(err, dict):
        err = err.get("message") or err.get("detail") or json.dumps(err)
    return " ".join(str(err).split())[:300]


def _error_detail(resp: http.client.HTTPResponse) -> str:
    """The server's own reason for an HTTP error, shortened to one line."""
    try:
        raw = resp.read(MAX_ERROR_BYTES)
    except Exception:
        return ""
    try:
        obj = json.loads(raw)
    except ValueError:
        return " ".join(raw.decode("utf-8", errors="replace").split())[:300]
    if isinstance(obj, dict):
        return _message(obj.get("error") or obj.get("detail") or obj.get("message") or obj)
    return _message(obj)

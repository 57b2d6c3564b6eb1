"""HTTP for the remote backend: the only module that opens connections.

JSON requests and server-sent-event streams over the standard library's
http.client, each request on its own connection (so threads may share a client),
and every network failure translated here, from one table, into a one-line
GptcliError with the fix.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from gptcli.errors import GptcliError, UsageError

ENV_SERVER = "GPTCLI_SERVER"
ENV_API_KEY = "GPTCLI_API_KEY"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0  # a long prompt on a busy server can take minutes to start


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


class HttpClient:
    """One server's base URL and API key."""

    def __init__(self, url: str, api_key: str | None = None):
        self.url = ServerURL.parse(url)
        self.api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY) or None

    # -- HTTP, with every failure translated once --------------------------------

    def open(self, method: str, path: str, body: dict | None = None) -> _Reply:
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

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        reply = self.open(method, path, body)
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

    def events(self, path: str, body: dict, end=None) -> Iterator[dict]:
        """The JSON objects of a server-sent-event stream, until `[DONE]` (or an
        object for which `end(obj)` is true: llama-server's native stream)."""
        reply = self.open("POST", path, body)
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
                if end is not None and isinstance(obj, dict) and end(obj):
                    done = True
                    break
        finally:
            reply.close()
        if not done:
            raise GptcliError(
                f"the server at {self.url.display} ended its reply early (no end-of-stream mark)"
            )


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

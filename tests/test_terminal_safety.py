"""No byte from a model or a server changes the terminal's state.

Through a real pseudo-terminal (tmux, on its own socket, at a fixed size), an evil
loopback server speaking the OpenAI streaming API and a tiny GGUF whose model always
emits the ESC byte token: the pane title stays, the screen is not cleared, the
escapes show as text. Through a pipe, the exact bytes arrive.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import clean_env
from support.hostile import byte_token_id, write_logit_model

from gptcli.terminal import Guard, json_safe, needs_escaping, safe

TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J\x1b[H"
CLIPBOARD = "\x1b]52;c;cHduZWQ=\x07"  # OSC 52: write "pwned" to the clipboard
EVIL = ["Hello", TITLE, " world", CLEAR, CLIPBOARD, " cr\rX", " end"]
EVIL_TEXT = "".join(EVIL)


# -- the rule ---------------------------------------------------------------------------


def test_controls_become_visible_escapes():
    assert safe(TITLE) == "\\x1b]0;pwned\\x07"
    assert safe("a\rb\x7f\x9bc\x00") == "a\\rb\\x7f\\x9bc\\x00"
    assert safe("line\n\ttab") == "line\n\ttab"  # newline and tab are text
    assert safe("naïve café 🎉 東京") == "naïve café 🎉 東京"


def test_bidi_overrides_are_escaped_in_token_views_only():
    evil = "abc\u202edcba\u2066x\u2069"
    assert safe(evil, token_view=True) == "abc\\u202edcba\\u2066x\\u2069"
    assert safe(evil) == evil
    assert needs_escaping(evil, token_view=True) and not needs_escaping(evil)


def test_escapes_are_dim_when_colour_is_on():
    assert safe("a\x1bb", style=("<", ">")) == "a<\\x1b>b"
    assert safe("\x1b\x1b", style=("<", ">")) == "<\\x1b\\x1b>"  # one run, one style


def test_json_safe_keeps_the_value_and_drops_raw_controls():
    obj = {"token": "a\x9b\x7f\u202e\u2028b\x1b"}
    line = json_safe(json.dumps(obj, ensure_ascii=False))
    assert json.loads(line) == obj
    assert not any(0x7F <= ord(c) <= 0x9F or c in "\u202e\u2028\x1b" for c in line)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_guard_is_exact_for_a_pipe_and_escapes_for_a_terminal():
    assert Guard.for_stream(io.StringIO(), colour=False)(EVIL_TEXT) == EVIL_TEXT
    shown = Guard.for_stream(_Tty(), colour=False)(EVIL_TEXT)
    assert "\x1b" not in shown and "\\x1b]0;pwned\\x07" in shown


def test_text_renderer_escapes_on_a_terminal_only():
    from gptcli.backends.events import TokenEvent
    from gptcli.render.stream import TextRenderer

    for out, raw in ((_Tty(), False), (io.StringIO(), True)):
        r = TextRenderer(out)
        r.token(TokenEvent(0, 1, b"", EVIL_TEXT, None))
        r.finish(None)
        assert (out.getvalue() == EVIL_TEXT + "\n") is raw
        assert ("\x1b" in out.getvalue()) is raw


def test_probability_views_escape_token_names():
    from gptcli.render.tokens import token_label  # every token view's one path

    assert token_label(b"\x1b]0;x\x07") == "\\x1b]0;x\\x07"
    assert token_label("a\u202eb".encode()) == "a\\u202eb"


# -- an evil server ---------------------------------------------------------------------


class _Evil(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": "evil\x1b]0;pwned-by-id\x07"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for piece in EVIL:
            choice = {"index": 0, "text": piece, "delta": {"content": piece}}
            choice["finish_reason"] = None
            self.wfile.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
            self.wfile.flush()
        end = {"choices": [{"index": 0, "text": "", "delta": {}, "finish_reason": "stop"}]}
        self.wfile.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture(scope="module")
def evil_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Evil)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def esc_model(tmp_path_factory, tokenizer):
    esc = byte_token_id(tokenizer.tokens, 0x1B)
    return write_logit_model(tmp_path_factory.mktemp("esc") / "esc.gguf", tokenizer, esc)


def test_pipe_gets_the_servers_exact_bytes(gptcli, evil_server):
    r = gptcli("generate", "--server", evil_server, "--raw", "hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == EVIL_TEXT + "\n"


def test_pipe_gets_the_models_exact_escape_bytes(gptcli, esc_model):
    r = gptcli("generate", "-m", str(esc_model), "--raw", "-n", "5", "-t", "0", "hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "\x1b" * 5 + "\n"


# -- through a real terminal ------------------------------------------------------------

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Pane:
    """One tmux pane on a private socket, 100x30, running one shell command."""

    _made = 0

    def __init__(self, tmp_path, command: str, env: dict[str, str]):
        Pane._made += 1  # a socket and a script of its own: a test may open two panes
        self.sock = str(tmp_path / f"tmux-{Pane._made}.sock")
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        script = tmp_path / f"run-{Pane._made}.sh"
        ready = tmp_path / f"ready-{Pane._made}"
        # Wait until the title is set (else a fast command could retitle the pane first),
        # a marker (a cleared screen loses it), the command, then an end mark.
        script.write_text(
            f"while [ ! -e {shlex.quote(str(ready))} ]; do sleep 0.05; done\n"
            f"echo KEEP-ME-ON-SCREEN\nenv -i {exports} {command}\necho __END__\n"
        )
        self.tmux(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "100",
            "-y",
            "30",
            f"sh {script}; sleep 60",
        )
        self.tmux("select-pane", "-T", "original-title")
        ready.touch()

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.sock, *args], capture_output=True, text=True, check=True
        ).stdout

    def wait(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.tmux("capture-pane", "-p", "-J")
            if "__END__" in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"no end mark in {timeout} s:\n{screen}")

    def title(self) -> str:
        return self.tmux("display", "-p", "#{pane_title}").strip()

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], capture_output=True)


def _tty_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in clean_env().items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    env.update(TERM="xterm-256color", GPTCLI_CACHE_DIR=str(tmp_path / "cache"))
    env.update(PYTHONPATH=os.pathsep.join(sys.path))
    return env


def _in_pane(tmp_path, args: list[str]) -> tuple[str, str]:
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "gptcli", *args])
    pane = Pane(tmp_path, cmd, _tty_env(tmp_path))
    try:
        return pane.wait(), pane.title()
    finally:
        pane.close()


@needs_tmux
def test_the_oracle_sees_raw_escapes(tmp_path):
    # Without gptcli in between, the same bytes do retitle the pane and clear the
    # screen: the checks below would catch gptcli letting them through.
    raw = tmp_path / "evil.txt"
    raw.write_text(EVIL_TEXT + "\n")
    screen, title = _in_pane_raw(tmp_path, f"cat {shlex.quote(str(raw))}")
    assert title == "pwned"
    assert "KEEP-ME-ON-SCREEN" not in screen


def _in_pane_raw(tmp_path, command: str) -> tuple[str, str]:
    pane = Pane(tmp_path, command, _tty_env(tmp_path))
    try:
        return pane.wait(), pane.title()
    finally:
        pane.close()


@needs_tmux
def test_server_escapes_cannot_touch_the_terminal(tmp_path, evil_server):
    screen, title = _in_pane(tmp_path, ["generate", "--server", evil_server, "--raw", "hi"])
    assert title == "original-title"
    assert "KEEP-ME-ON-SCREEN" in screen  # not cleared
    assert "\\x1b]0;pwned\\x07" in screen and "\\x1b[2J" in screen
    assert "\\x1b]52;c;cHduZWQ=\\x07" in screen
    assert "cr\\rX end" in screen  # the carriage return erased nothing


@needs_tmux
def test_server_model_ids_cannot_touch_the_terminal(tmp_path, evil_server):
    screen, title = _in_pane(tmp_path, ["list", "--server", evil_server])
    assert title == "original-title"
    assert "\\x1b]0;pwned-by-id\\x07" in screen


@needs_tmux
def test_model_escape_tokens_show_as_text(tmp_path, esc_model):
    args = ["generate", "-m", str(esc_model), "--raw", "-n", "5", "-t", "0", "hi"]
    screen, title = _in_pane(tmp_path, args)
    assert "\\x1b" * 5 in screen, screen
    assert title == "original-title"


@needs_tmux
def test_model_escape_tokens_in_probability_views(tmp_path, esc_model):
    args = ["generate", "-m", str(esc_model), "--raw", "-n", "3", "-t", "0", "--probs"]
    args += ["--alternatives", "2", "hi"]
    screen, _ = _in_pane(tmp_path, args)
    assert screen.count("\\x1b") >= 3, screen
    screen, _ = _in_pane(tmp_path, ["next", "-m", str(esc_model), "hi"])
    assert "\\x1b" in screen and "KEEP-ME-ON-SCREEN" in screen

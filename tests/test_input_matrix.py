"""Awkward input to `gptcli generate`: odd stdin, bytes that are not UTF-8, control
characters, a 1 MB prompt, out-of-range sampling values. Each ends with one clear
line on stderr and an exit code, or runs normally; never a traceback.

Cases already pinned in test_generate.py (empty prompt, `\\xff\\xfe` on stdin,
-t -1, --top-p 0 and 1.5, -n 0, --top-k -2, --threads 0, -t abc) are not repeated.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import clean_env
from typer.testing import CliRunner

from gptcli.cli import app


def run_bytes(*args: bytes | str, input: bytes | None = None, timeout: float = 120):
    """Like run_gptcli, but arguments may be raw bytes (argv is bytes on POSIX)."""
    argv = [a if isinstance(a, bytes) else a.encode() for a in args]
    return subprocess.run(
        [sys.executable.encode(), b"-m", b"gptcli", *argv],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env=clean_env(),
        timeout=timeout,
    )


def assert_one_line(proc, code: int, needle: str) -> None:
    err = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode == code, (proc.returncode, err)
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert "Traceback" not in err and proc.stdout == b""


def test_whitespace_only_stdin_is_an_empty_prompt(tiny_model):
    proc = run_bytes("generate", "-m", str(tiny_model), input=b"  \n\t\r\n  ")
    assert_one_line(proc, 2, "empty prompt")


def test_prompt_argument_that_is_not_utf8_is_a_usage_error(tiny_model):
    proc = run_bytes("generate", "-m", str(tiny_model), b"caf\xe9 au lait")
    assert_one_line(proc, 2, "not valid UTF-8")


def test_system_prompt_that_is_not_utf8_is_a_usage_error(tiny_model):
    proc = run_bytes("generate", "-m", str(tiny_model), "--system", b"\xff\xfe", "hi")
    assert_one_line(proc, 2, "not valid UTF-8")


def test_stdin_cut_inside_a_utf8_character_is_a_usage_error(tiny_model):
    proc = run_bytes("generate", "-m", str(tiny_model), input="Résumé: café".encode()[:-1])
    assert_one_line(proc, 2, "UTF-8")


def test_control_characters_in_stdin_are_just_text(tiny_model):
    text = b"Hello\x00 there\x07\x1b[31m red\x1b[0m\r\n\x0c\x08 world"
    proc = run_bytes("generate", "-m", str(tiny_model), "--raw", "-n", "4", "-t", "0", input=text)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.strip() and b"Traceback" not in proc.stderr


def test_one_megabyte_prompt_is_refused_quickly_with_a_context_error(tiny_model):
    prompt = ("All work and no play makes Jack a dull boy. " * 23_832).encode()
    assert len(prompt) >= 1_000_000
    start = time.monotonic()
    proc = run_bytes("generate", "-m", str(tiny_model), "--raw", input=prompt, timeout=120)
    took = time.monotonic() - start
    assert_one_line(proc, 1, "context")
    assert "--ctx" in proc.stderr.decode()
    assert took < 60, f"took {took:.1f} s"  # about 1.5 s of CPU: tokenizing, no evaluation


runner = CliRunner()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-t", "nan"], "temperature"),
        (["-t", "inf"], "temperature"),
        (["--top-p", "nan"], "top-p"),
        (["--min-p", "2"], "min-p"),
        (["--min-p", "-0.1"], "min-p"),
        (["--repeat-penalty", "0"], "repeat penalty"),
        (["--repeat-penalty", "nan"], "repeat penalty"),
        (["--seed", "-1"], "seed"),
        (["--ctx", "-1"], "--ctx"),
        (["--ctx", "4"], "--ctx"),
        (["-n", "-5"], "max-tokens"),
        (["--top-k", "1.5"], "top-k"),
        (["--seed", "12abc"], "seed"),
    ],
)
def test_invalid_sampling_value_is_a_usage_error(tiny_model, args, needle):
    result = runner.invoke(app, ["generate", "-m", str(tiny_model), *args, "hi"])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)

"""The first five minutes: help that reads well, and every command ending 141 silently
when the reader of stdout goes away."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import clean_env


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["tokenize", "Hi"],
        ["tokenize", "--ids", "Hi"],
        ["inspect"],
        ["list"],
        ["next", "Hi"],
        ["lens", "Hi"],
    ],
)
def test_every_command_ends_141_silently_when_stdout_closes(args):
    # `| true`: the reader exits at once, so gptcli's writes (or its last flush) fail.
    proc = subprocess.run(
        f"{sys.executable} -m gptcli {' '.join(args)} | true; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        env=clean_env(),
        timeout=120,
    )
    assert proc.returncode == 141, proc.stderr
    # silently: nothing about the pipe (a first run's cache notice may be there)
    assert b"error" not in proc.stderr and b"Traceback" not in proc.stderr
    assert b"pipe" not in proc.stderr.lower()


def test_no_arguments_prints_the_help_once(gptcli):
    r = gptcli()
    assert r.returncode == 0
    assert r.stdout.count("Usage:") == 1

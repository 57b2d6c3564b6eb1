"""The README's "first five minutes" tour stays true: every example is run as written
and the lines the README shows must be the first lines it prints (trailing spaces
aside). Greedy examples on the embedded model, so the text is exact."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

README = Path(__file__).resolve().parent.parent / "README.md"


def tour() -> list[tuple[str, str | None, list[str]]]:
    text = README.read_text("utf-8")
    section = text.split("## The first five minutes", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```console\n(.*?)```", section, re.S).group(1)
    examples = []
    for chunk in block.strip().split("\n\n$ "):
        command, *shown = chunk.removeprefix("$ ").splitlines()
        stdin = None
        if " | " in command:  # echo "..." | gptcli ...
            echo, command = command.split(" | ", 1)
            stdin = shlex.split(echo)[1] + "\n"
        examples.append((command, stdin, shown))
    return examples


@pytest.mark.parametrize("command, stdin, shown", tour(), ids=lambda x: str(x)[:40])
def test_readme_tour_example_prints_what_the_readme_shows(command, stdin, shown):
    args = shlex.split(command)
    assert args[0] == "gptcli"
    proc = subprocess.run(
        [sys.executable, "-m", "gptcli", *args[1:]],
        input=(stdin or "").encode(),
        capture_output=True,
        env=clean_env(),
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    got = [ln.rstrip() for ln in proc.stdout.decode().splitlines()]
    assert got[: len(shown)] == [ln.rstrip() for ln in shown]

"""The first five minutes: help that reads well, and every command ending 141 silently
when the reader of stdout goes away."""

from __future__ import annotations

import re
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


def _commands():
    import typer.main

    from gptcli.cli import COMMAND_PANELS, app

    group = typer.main.get_command(app)
    names = group.list_commands(None)
    return group, names, COMMAND_PANELS


def test_help_groups_every_command_with_a_one_line_summary(gptcli):
    group, names, panels = _commands()
    grouped = [n for panel in panels.values() for n in panel]
    assert sorted(names) == sorted(grouped), "a command outside the help panels"
    r = gptcli("--help", env=clean_env(COLUMNS="100"))
    assert r.returncode == 0
    out = r.stdout
    for panel, commands in panels.items():
        assert f"─ {panel} ─" in out
        for name, summary in commands.items():
            assert len(f"  {name:<10} {summary}") <= 96, f"{name}: summary too long"
            assert f"{name} " in out and summary in out  # on one line, unbroken


@pytest.mark.parametrize("columns", ["60", "200"])
def test_every_command_help_says_what_to_type_not_a_type_name(columns):
    # In-process (the same bytes as `gptcli NAME --help`, checked once by hand): a
    # process per command and width cost 16 s of the suite.
    from typer.testing import CliRunner

    from gptcli.cli import app

    group, names, _ = _commands()
    env = {"COLUMNS": columns, "LINES": None, "NO_COLOR": "1", "TERM": "dumb"}
    for name in names:
        r = CliRunner().invoke(app, [name, "--help"], env=env)
        assert r.exit_code == 0, name
        assert "Usage: " in r.stdout and "--help" in r.stdout, name
        for word in ("<bool>", "<str>", "<int>", "<float>", "<list[", "<path>"):
            assert word not in r.stdout, f"{name} --help shows {word}"


def test_no_help_text_is_broken_inside_a_sentence():
    import re

    import typer.main

    from gptcli.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("gptcli", ["--help"], resilient_parsing=True)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        # a newline inside a paragraph would be printed as a break mid-sentence
        assert not re.search(r"\S\n[^\n\s-]", command.help or ""), name
        for param in command.params:
            assert "\n" not in (getattr(param, "help", None) or ""), f"{name} {param.name}"


def test_model_names_complete_from_the_catalogue_and_the_cache(tmp_path):
    from gptcli.model.completion import complete_model

    snap = tmp_path / "hub" / "models--owner--repo" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model-Q4_K_M.gguf").write_bytes(b"")
    (tmp_path / "local.gguf").write_bytes(b"")
    import os

    old = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(tmp_path / "hub")
    try:
        assert "smollm2" in complete_model("smol")
        assert complete_model("owner/") == ["owner/repo:Q4_K_M"]
        assert complete_model(str(tmp_path) + "/lo") == [str(tmp_path) + "/local.gguf"]
    finally:
        if old is None:
            del os.environ["HF_HUB_CACHE"]
        else:
            os.environ["HF_HUB_CACHE"] = old


def test_the_model_is_named_as_a_person_writes_it_with_the_quantization_apart(smollm2, gptcli):
    from gptcli.model.gguf_check import read_header
    from gptcli.model.naming import label

    assert label(read_header(smollm2)) == "SmolLM2-135M-Instruct (Q4_1)"  # not general.name
    r = gptcli("inspect")
    assert "SmolLM2-135M-Instruct" in r.stdout and "Smollm2 135M 8k" not in r.stdout
    r = gptcli("doctor")
    assert "SmolLM2-135M-Instruct (Q4_1)" in r.stdout


def test_a_file_without_basename_is_named_by_its_file_name(tmp_path):
    from gptcli.model.gguf_check import GGUFHeader
    from gptcli.model.naming import display_name, quantization

    h = GGUFHeader(tmp_path / "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", 3, 0, {"general.name": "x"})
    assert display_name(h) == "Qwen2.5-0.5B-Instruct" and quantization(h) == "Q4_K_M"
    h = GGUFHeader(
        tmp_path / "model.gguf", 3, 0, {"general.basename": "gemma-3", "general.size_label": "270M"}
    )
    assert display_name(h) == "gemma-3 270M"


def test_stop_strings_read_backslash_escapes(gptcli):
    from gptcli.commands.options import unescape

    assert unescape(r"a\n\nb\t\\n\x41") == "a\n\nb\t\\nA"
    # greedy: " Paris.\n\nThe United States ..." without the stop
    r = gptcli(
        "generate", "--raw", "-t", "0", "-n", "20", "--stop", r"\n\n", "The capital of France is"
    )
    assert r.returncode == 0 and r.stdout == " Paris.\n", r.stdout
    r = gptcli(
        "generate", "--raw", "-t", "0", "-n", "20", "--stop", r"\x2e", "The capital of France is"
    )
    assert r.stdout == " Paris\n"


def test_probs_kind_model_alone_implies_probs(gptcli):
    r = gptcli("generate", "--probs-kind", "model", "--raw", "-t", "0", "-n", "2", "The sky is")
    assert r.returncode == 0
    assert "[0." in r.stdout  # token[0.77] without colour: the probabilities are shown


def test_one_token_notation_in_every_view(gptcli):
    from gptcli.render.tokens import token_label

    assert token_label(b" \xea") == "␣<0xEA>"
    assert token_label(b"a\nb\t\x1b\xe2\x80\xae") == "a↵b⇥\\x1b\\u202e"
    r = gptcli("embed", "neighbors", "cat", "--top", "3")
    assert "␣Cat" in r.stdout and "' Cat'" not in r.stdout  # not a Python repr
    r = gptcli("tokenize", " Cat")
    assert "␣Cat" in r.stdout


@pytest.mark.parametrize("columns", [60, 200])
def test_next_score_and_the_legend_do_not_wrap_in_a_real_terminal(tmp_path, columns):
    import shutil
    import time

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    sock = str(tmp_path / "tmux.sock")
    script = tmp_path / "run.sh"
    py = sys.executable
    script.write_text(
        f"{py} -m gptcli next -t 0.5,1,2 --top 3 'The capital of France is'\n"
        f"echo 'The capital of France is Paris.' | {py} -m gptcli score --worst 2\n"
        f"{py} -m gptcli generate --probs --raw -t 0 -n 2 'The sky is'\n"
        "echo DONE-DONE\n"
    )
    env = " ".join(f"{k}={shlex_quote(v)}" for k, v in clean_env().items() if k != "NO_COLOR")
    tmux = ["tmux", "-S", sock, "-f", "/dev/null"]
    subprocess.run(
        [
            *tmux,
            "new-session",
            "-d",
            "-x",
            str(columns),
            "-y",
            "60",
            f"env {env} sh {script}; sleep 30",
        ],
        check=True,
    )
    try:
        deadline = time.time() + 240
        screen = ""
        while time.time() < deadline and "DONE-DONE" not in screen:
            time.sleep(1)
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p"], capture_output=True, text=True
            ).stdout
        joined = subprocess.run(
            [*tmux, "capture-pane", "-pJ"], capture_output=True, text=True
        ).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert "DONE-DONE" in screen, screen
    assert "␣Paris" in screen and "perplexity" in screen and "low < 0.30" in screen
    # -J joins the lines the terminal wrapped: equal means nothing wrapped
    assert [ln.rstrip() for ln in screen.splitlines()] == [
        ln.rstrip() for ln in joined.splitlines()
    ], screen


def shlex_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


@pytest.mark.parametrize(
    "args",
    [
        ["score", "/nonexistent/file.txt"],
        ["chat", "--resume", "/nonexistent/t.json"],
        ["generate", "--grammar", "/nonexistent/g.gbnf", "hi"],
        ["generate", "--json-schema", "/nonexistent/s.json", "hi"],
    ],
)
def test_a_missing_input_file_is_exit_2_for_every_command(gptcli, args):
    r = gptcli(*args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "/nonexistent/" in r.stderr


def test_a_missing_model_is_exit_1(gptcli):
    r = gptcli("generate", "-m", "/nonexistent/model.gguf", "hi")
    assert r.returncode == 1 and "model not found" in r.stderr


def _every_command():
    """(argv, command) for every command and subcommand, the root included."""
    import typer.main

    from gptcli.cli import app

    root = typer.main.get_command(app)
    out, todo = [], [([], root)]
    while todo:
        argv, cmd = todo.pop()
        out.append((argv, cmd))
        if hasattr(cmd, "list_commands"):
            ctx = cmd.make_context("gptcli", ["--help"], resilient_parsing=True)
            for name in cmd.list_commands(ctx):
                todo.append(([*argv, name], cmd.get_command(ctx, name)))
    return out


_MARKUP_LIKE = re.compile(r"\[[^\]\n]*\]|:[A-Za-z0-9_+-]+:")


def test_every_help_string_is_shown_as_written_no_emoji_codes_or_markup():
    # `lens --help` showed "A🅱" for "A:B:": rich read ":B:" as an emoji code.
    from typer.testing import CliRunner

    from gptcli.cli import app

    env = {"COLUMNS": "400", "LINES": None, "NO_COLOR": "1", "TERM": "dumb"}
    checked = 0
    for argv, cmd in _every_command():
        r = CliRunner().invoke(app, [*argv, "--help"], env=env)
        assert r.exit_code == 0, argv
        written = " ".join([cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params])
        for fragment in _MARKUP_LIKE.findall(written):
            assert fragment in r.stdout, f"{argv} --help lost {fragment!r}"
            checked += 1
        # every character outside the box drawing was written by us (no emoji made up)
        shown = {c for c in r.stdout if ord(c) > 127 and not 0x2500 <= ord(c) <= 0x257F}
        assert shown <= set(written), f"{argv} --help shows {shown - set(written)}"
    assert checked >= 2  # lens's "A:B:" and generate's "token[0.77]" are looked at

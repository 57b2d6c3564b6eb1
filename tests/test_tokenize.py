"""`gptcli tokenize`: the model's own tokens, exact bytes, visible whitespace."""

from __future__ import annotations

import json

import pytest
from conftest import clean_env, run_gptcli
from typer.testing import CliRunner

from gptcli.cli import app

runner = CliRunner()

ROUND_TRIP_TEXTS = [
    "The capital of France is Paris.",
    "emoji 🙂🚀 and a family 👩‍👩‍👧 in one line",
    "  leading spaces, tabs\tand\nnew lines\r\n",
    "accents: café, naïve, Ångström; CJK: 日本語; math: ∑ x²",
]


def tokens_of(model, text: str, *extra: str) -> list[dict]:
    result = runner.invoke(app, ["tokenize", "-m", str(model), "--json", *extra, text])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["count"] == len(data["tokens"])
    return data["tokens"]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_tokens_round_trip_to_the_exact_text(smollm2, text):
    tokens = tokens_of(smollm2, text)
    assert b"".join(bytes.fromhex(t["bytes"]) for t in tokens) == text.encode("utf-8")


def test_stdin_round_trips_through_a_real_pipe(tiny_model):
    text = "piped 🙂 text\nsecond line"
    run = run_gptcli("tokenize", "-m", str(tiny_model), "--json", input=text)
    assert run.returncode == 0, run.stderr
    tokens = json.loads(run.stdout)["tokens"]
    assert b"".join(bytes.fromhex(t["bytes"]) for t in tokens) == text.encode()


def test_special_tokens_are_marked_unless_read_as_text(smollm2):
    tokens = tokens_of(smollm2, "<|im_start|>user")
    assert tokens[0]["special"] is True and tokens[0]["piece"] == "<|im_start|>"
    assert [t["special"] for t in tokens[1:]] == [False] * (len(tokens) - 1)
    as_text = tokens_of(smollm2, "<|im_start|>user", "--no-special")
    assert len(as_text) > len(tokens)
    assert not any(t["special"] for t in as_text)


def test_plain_output_shows_spaces_and_partial_bytes(smollm2):
    # A lone emoji is two tokens in SmolLM2's vocabulary, each half a character.
    result = runner.invoke(app, ["tokenize", "-m", str(smollm2), "🙂 ok"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("[<0xF0><0x9F>] [<0x99><0x82>]")
    assert "␣ok" in lines[0]
    assert lines[-1] == f"{len(tokens_of(smollm2, '🙂 ok'))} tokens"
    assert "\x1b[" not in result.output


def test_ids_are_printed_under_their_tokens(smollm2):
    tokens = tokens_of(smollm2, "Hello world")
    result = runner.invoke(app, ["tokenize", "-m", str(smollm2), "--ids", "Hello world"])
    assert result.exit_code == 0
    chips, ids, count = result.output.splitlines()
    assert ids.split() == [str(t["id"]) for t in tokens]
    # Each id starts in the same column as its chip.
    assert [chips.index("[Hello]"), chips.index("[␣world]")] == [
        ids.index(str(tokens[0]["id"])),
        ids.index(str(tokens[1]["id"]), len(str(tokens[0]["id"]))),
    ]
    assert count == "2 tokens"


def test_colour_chips_in_a_terminal_and_none_with_no_color(tiny_model):
    coloured = run_gptcli(
        "tokenize", "-m", str(tiny_model), "a b", env=clean_env(FORCE_COLOR="1", NO_COLOR="")
    )
    assert coloured.returncode == 0
    assert "\x1b[" in coloured.stdout and "[a]" not in coloured.stdout
    plain = run_gptcli("tokenize", "-m", str(tiny_model), "a b")
    assert "\x1b[" not in plain.stdout and plain.stdout.startswith("[a] [␣b]")


def test_empty_input_is_a_usage_error(tiny_model):
    run = run_gptcli("tokenize", "-m", str(tiny_model))
    assert run.returncode == 2
    assert "empty" in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""


def test_a_model_llama_cpp_cannot_load_is_one_clear_error(tmp_path):
    import numpy as np
    from test_anatomy import write_gguf

    path = write_gguf(tmp_path / "martian.gguf", "martian", {"w.weight": np.ones((4, 32))})
    run = run_gptcli("tokenize", "-m", str(path), "hello")
    assert run.returncode == 1
    assert "llama.cpp could not load" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("columns", [40, None])
def test_piped_chips_fit_columns_when_it_is_set(tiny_model, columns):
    # A pipe took 100 columns whatever COLUMNS said.
    from conftest import clean_env

    text = "The capital of France is Paris, and the capital of Spain is Madrid, and so on."
    env = clean_env(**({"COLUMNS": str(columns)} if columns else {}))
    run = run_gptcli("tokenize", "-m", str(tiny_model), "--ids", text, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()[:-1]  # chips and ids in pairs of lines, then a count
    assert max(len(ln) for ln in lines) <= (columns or 100)
    assert max(len(ln) for ln in lines) > (columns or 100) - 15  # filled, not one per line
    chips = " ".join(lines[0::2]).split()
    assert "".join(c[1:-1].replace("␣", " ") for c in chips) == text  # nothing cut

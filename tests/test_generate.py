"""`gptcli generate` end to end, in real subprocesses, on real llama.cpp."""

import json

import pytest
from conftest import clean_env


def test_greedy_raw_completion_names_paris(gptcli, smollm2):
    r = gptcli("generate", "--raw", "-t", "0", "-n", "3", "The capital of France is")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" Paris")
    assert r.stderr == ""


def test_fixed_seed_gives_the_same_text_twice(gptcli):
    args = ("generate", "--raw", "-t", "1.0", "--seed", "1234", "-n", "24", "Once upon a time")
    first, second = gptcli(*args), gptcli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()


def test_different_seeds_differ(gptcli):
    outs = {
        gptcli(
            "generate", "--raw", "-t", "1.5", "--seed", str(s), "-n", "16", "Once upon a time"
        ).stdout
        for s in (1, 2, 3)
    }
    assert len(outs) > 1


def test_chat_template_is_applied_by_default(gptcli):
    r = gptcli(
        "generate", "-t", "0", "-n", "24", "What is the capital of France? Answer in one word."
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "<|im_start|>" not in r.stdout and "<|im_end|>" not in r.stdout


def test_stop_string_ends_generation_before_it(gptcli):
    full = gptcli("generate", "--raw", "-t", "0", "-n", "12", "The capital of France is")
    assert " Paris" in full.stdout
    cut = gptcli(
        "generate", "--raw", "-t", "0", "-n", "12", "--stop", "aris", "The capital of France is"
    )
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout == " P\n"


def test_piped_stdin_is_the_prompt(gptcli):
    r = gptcli("generate", "--raw", "-t", "0", "-n", "3", input="The capital of France is")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" Paris")


def test_prompt_and_stdin_are_joined_by_a_blank_line(gptcli, tiny_model):
    # The tiny model proves the joined text reaches the model: --stats counts its tokens.
    alone = gptcli("generate", "-m", str(tiny_model), "--raw", "-n", "1", "--stats", "Summarise")
    joined = gptcli(
        "generate",
        "-m",
        str(tiny_model),
        "--raw",
        "-n",
        "1",
        "--stats",
        "Summarise",
        input="one two three",
    )

    def prompt_tokens(stderr):
        line = next(ln for ln in stderr.splitlines() if ln.startswith("prompt"))
        return int(line.split()[1])

    assert prompt_tokens(joined.stderr) > prompt_tokens(alone.stderr)


def test_stats_go_to_stderr_only(gptcli, tiny_model):
    r = gptcli("generate", "-m", str(tiny_model), "--raw", "-n", "8", "--stats", "-t", "0", "Hello")
    assert r.returncode == 0, r.stderr
    assert "tokens/s" in r.stderr and "first token" in r.stderr
    assert "tokens/s" not in r.stdout


def test_model_from_environment(gptcli, tiny_model, smollm2):
    args = ("generate", "--raw", "-t", "0", "-n", "6", "The capital of France is")
    tiny_text = gptcli(*args, "-m", str(tiny_model)).stdout
    assert tiny_text.strip() and not tiny_text.startswith(" Paris")  # random weights
    r = gptcli(*args, env=clean_env(GPTCLI_MODEL=str(tiny_model)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == tiny_text  # the tiny model answered, not the embedded default
    # -m wins over GPTCLI_MODEL, both ways round, even when the variable names no file.
    m_wins = gptcli(*args, "-m", str(smollm2), env=clean_env(GPTCLI_MODEL=str(tiny_model)))
    assert m_wins.stdout.startswith(" Paris") and m_wins.stdout != tiny_text
    bad_env = clean_env(GPTCLI_MODEL="/nonexistent/model.gguf")
    assert gptcli(*args, "-m", str(tiny_model), env=bad_env).stdout == tiny_text
    missing = gptcli("generate", "Hi", env=clean_env(GPTCLI_MODEL="/nonexistent/model.gguf"))
    assert missing.returncode == 1
    assert "GPTCLI_MODEL" in missing.stderr and "/nonexistent/model.gguf" in missing.stderr


def test_utf8_split_across_tokens_is_printed_whole(gptcli, smollm2):
    # Emoji are several byte-level tokens each; none may appear as U+FFFD.
    r = gptcli("generate", "--raw", "-t", "0", "-n", "24", "Repeat exactly: 🎉🎉 café 東京 🎉🎉")
    assert r.returncode == 0, r.stderr
    assert "\ufffd" not in r.stdout


def test_closed_pipe_ends_quietly(tiny_model):
    import subprocess
    import sys

    cmd = f"{sys.executable} -m gptcli generate -m {tiny_model} --raw -n 400 -t 1 Hello | head -c 5"
    proc = subprocess.run(
        ["bash", "-c", cmd],
        capture_output=True,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.stderr == b""
    assert len(proc.stdout) == 5


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["-t", "-1", "x"], 2, "temperature"),
        (["--top-p", "0", "x"], 2, "top-p"),
        (["--top-p", "1.5", "x"], 2, "top-p"),
        (["-n", "0", "x"], 2, "max-tokens"),
        (["--top-k", "-2", "x"], 2, "top-k"),
        (["--threads", "0", "x"], 2, "threads"),
        (["-t", "abc", "x"], 2, "temperature"),
        (["   "], 2, "empty prompt"),
        ([], 2, "empty prompt"),
        (["-m", "/no/such/file.gguf", "x"], 1, "/no/such/file.gguf"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(gptcli, args, code, needle):
    r = gptcli("generate", *args)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_file_that_is_not_gguf_is_refused(gptcli, tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("just some text, not a model\n" * 10)
    r = gptcli("generate", "-m", str(bad), "hello")
    assert r.returncode == 1
    assert "not GGUF" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_non_utf8_stdin_is_a_usage_error(gptcli, tiny_model):
    r = gptcli("generate", "-m", str(tiny_model), input=b"\xff\xfe bad bytes")
    assert r.returncode == 2
    assert "UTF-8" in r.stderr


def test_prompt_longer_than_the_context_is_refused(gptcli, tiny_model):
    r = gptcli("generate", "-m", str(tiny_model), "--raw", "--ctx", "64", "word " * 200)
    assert r.returncode == 1
    assert "context" in r.stderr and "--ctx" in r.stderr


def test_generation_reaching_the_context_end_says_so(gptcli, tiny_model):
    r = gptcli(
        "generate",
        "-m",
        str(tiny_model),
        "--raw",
        "--ctx",
        "32",
        "-t",
        "1",
        "--seed",
        "3",
        "Hello there",
    )
    assert r.returncode == 0, r.stderr
    assert "context is full" in r.stderr


def test_doctor_reports_backend_and_model(gptcli, smollm2):
    r = gptcli("doctor")
    assert r.returncode == 0, r.stderr
    assert "llama-cpp-python" in r.stdout and "gpu offload" in r.stdout
    assert str(smollm2) in r.stdout


def test_help_does_not_import_the_engine():
    import subprocess
    import sys

    code = (
        "import sys; from gptcli.cli import app; "
        "print(json.dumps(sorted(m for m in ('llama_cpp','numpy','huggingface_hub','gguf') "
        "if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []

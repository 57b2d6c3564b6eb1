"""Hostile input from the user's side: grammars, JSON Schemas, chat transcripts, files
that are not files, options that make no sense. Each case runs `gptcli` as a user would,
in a child limited to 4 GiB of address space and a time bound, and must end with its
exit code and exactly one line on stderr (a grammar like `"a"{5,2}` once grew to 24 GB,
JSON nested 1,000 deep raised RecursionError and ended a chat without saving it).

The cases are data: add a line to the tables to add a case.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading

import pytest
from conftest import clean_env

from gptcli.limits import (
    MAX_GRAMMAR_BYTES,
    MAX_GRAMMAR_NESTING,
    MAX_GRAMMAR_REPEAT,
    MAX_GRAMMAR_RULES,
    MAX_JOBS,
    MAX_JSON_DEPTH,
    MAX_SCHEMA_BYTES,
    MAX_THREADS,
)

MEMORY_LIMIT = 4 << 30  # bytes of address space for each child
TIME_LIMIT = 90  # seconds: a case that hangs fails here instead of hanging the suite


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(*args: str, input: bytes | str | None = None, stdin=None, cwd=None):
    """`python -m gptcli ARGS` under the memory limit; (exit code, stdout, stderr)."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        input=data,
        stdin=stdin if stdin is not None else (None if data is not None else subprocess.DEVNULL),
        capture_output=True,
        env=clean_env(),
        timeout=TIME_LIMIT,
        preexec_fn=_limit_memory,
        cwd=cwd,
    )
    return (
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


def one_error_line(err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith("gptcli: error: "), lines[0]
    assert needle in lines[0], lines[0]


# -- grammars -------------------------------------------------------------------------

_CHAIN = "root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} "x"\n' for i in range(20_000))
_CHAIN += 'r20000 ::= "a"\n'  # llama.cpp follows leftmost references recursively: a crash

GRAMMARS = [  # (id, grammar file text, what the one error line says)
    ("min-above-max", 'root ::= "a"{5,2}\n', "repetition {5,2} (line 1) has its minimum above"),
    ("class-min-above-max", "root ::= [a-z]{2,1}\n", "{2,1} (line 1) has its minimum above"),
    ("huge-max", 'root ::= "a"{0,100000000}\n', f"above the limit of {MAX_GRAMMAR_REPEAT}"),
    ("huge-min", 'root ::= "a"{99999999999999999999999,}\n', "above the limit"),
    # llama.cpp reads a maximum above 2000 as no maximum at all: a different grammar
    ("max-above-2000", 'root ::= "a"{0,2001}\n', f"above the limit of {MAX_GRAMMAR_REPEAT}"),
    ("second-line", 'root ::= x\nx ::= "b"{3,1}\n', "{3,1} (line 2)"),
    (
        "deep-parentheses",
        "root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000 + "\n",
        f"parentheses nest more than {MAX_GRAMMAR_NESTING} deep",
    ),
    ("rule-chain", _CHAIN, f"more than {MAX_GRAMMAR_RULES} rules"),
    # llama.cpp sets up every way of matching nothing: x{0,200} took over a minute
    ("empty-repeated", 'x ::= "a"?\nroot ::= x{0,200} "b"\n', "can match nothing more than"),
    ("empty-in-sequence", 'x ::= "a"?\nroot ::= x{0,20} x{0,20} "b"\n', "can match nothing"),
    ("empty-nested", 'root ::= (("a"?){0,6}){0,7} "b"\n', "can match nothing"),
    ("many-megabytes", 'root ::= "' + "a" * (MAX_GRAMMAR_BYTES + 1) + '"\n', "larger than 4 MiB"),
]


@pytest.mark.parametrize("text,needle", [c[1:] for c in GRAMMARS], ids=[c[0] for c in GRAMMARS])
def test_hostile_grammar_is_one_line_at_once(tiny_model, tmp_path, text, needle):
    path = tmp_path / "g.gbnf"
    path.write_text(text)
    rc, out, err = run_limited(
        "generate", "-m", str(tiny_model), "-n", "2", "--grammar", str(path), "x"
    )
    assert rc == 2 and out == ""
    one_error_line(err, needle)


def test_grammar_braces_inside_literals_and_classes_are_text(tiny_model, tmp_path):
    # "{5,2}" and "(" in a literal or a class are characters, not a repetition or a group.
    path = tmp_path / "g.gbnf"
    path.write_text('root ::= "{5,2}(" [{(] "a"{2,3} # {9,1} in a comment\n')
    rc, out, err = run_limited(
        "generate", "-m", str(tiny_model), "-n", "8", "-t", "0", "--grammar", str(path), "x"
    )  # fmt: skip
    assert rc in (0, 1), err  # 1: -n 8 may stop before the text is whole
    assert out.startswith("{5,2}("), out


# -- JSON Schemas ---------------------------------------------------------------------

_DEEP_SCHEMA = '{"items":' * 1000 + "{}" + "}" * 1000
_BIG_SCHEMA = json.dumps({"enum": ["x" * 100] * (MAX_SCHEMA_BYTES // 100)})

SCHEMAS = [  # (id, --json-schema text, what the one error line says)
    (
        "string-min-above-max",
        '{"type":"string","minLength":5,"maxLength":2}',
        "/: minLength 5 is above maxLength 2, so no string can match",
    ),
    ("negative-max", '{"type":"string","maxLength":-1}', "/maxLength is -1"),
    ("fractional-min", '{"type":"string","minLength":1.5}', "/minLength is 1.5"),
    ("empty-enum", '{"enum": []}', "/enum is []: an enum needs at least one value"),
    ("empty-anyof", '{"anyOf": []}', "/anyOf is []"),
    (
        "items-min-above-max",
        '{"type":"array","items":{"type":"integer"},"minItems":3,"maxItems":1}',
        "minItems 3 is above maxItems 1, so no array can match",
    ),
    (
        "number-min-above-max",
        '{"type":"number","minimum":5,"maximum":1}',
        "minimum 5 is above maximum 1, so no number can match",
    ),
    ("huge-length", '{"type":"string","maxLength":100000000}', "/maxLength is 100000000"),
    ("huge-pattern", '{"type":"string","pattern":"a{0,100000000}"}', "/pattern repeats"),
    (
        "wide-range",
        '{"type":"array","items":{"type":"integer"},"maxItems":1001}',
        "/: maxItems 1001 is more than 1000 above minItems 0",
    ),
    ("wide-pattern", '{"type":"string","pattern":"^a{0,1001}$"}', "more than 1000 optional"),
    ("pattern-min-above-max", '{"type":"string","pattern":"a{5,2}"}', "minimum is above"),
    (
        "nested",
        '{"type":"object","properties":{"name":{"type":"string","minLength":5,"maxLength":2}}}',
        "/properties/name: minLength 5 is above maxLength 2",
    ),
    (
        "required-but-forbidden",
        '{"type":"object","properties":{},"required":["a"],"additionalProperties":false}',
        "'a' is required but is not a property",
    ),
    ("deep", _DEEP_SCHEMA, f"nested more than {MAX_JSON_DEPTH} levels deep"),
    ("long-number", '{"type":"string","maxLength":' + "9" * 5000 + "}", "too long"),
    ("many-bytes", _BIG_SCHEMA, "larger than 1 MiB"),
]


@pytest.mark.parametrize("schema,needle", [c[1:] for c in SCHEMAS], ids=[c[0] for c in SCHEMAS])
def test_hostile_schema_is_refused_naming_its_contradiction(tiny_model, tmp_path, schema, needle):
    # Inline, then the same schema in a file (only a file: argv holds 128 KiB an argument).
    for arg in (schema, None) if len(schema) < 100_000 else (None,):
        if arg is None:
            (tmp_path / "s.json").write_text(schema)
            arg = str(tmp_path / "s.json")
        rc, out, err = run_limited(
            "generate", "-m", str(tiny_model), "-n", "2", "--json-schema", arg, "x"
        )  # fmt: skip
        assert rc == 2 and out == ""
        one_error_line(err, needle)
        assert "grammar" not in err  # the user wrote a schema, not a grammar


def test_schemas_and_grammars_at_the_limits_still_run(tiny_model, tmp_path):
    """The bounds refuse only what is beyond them: at the limit, under the same memory
    limit, a schema and a grammar run (exit 0, or 1 when -n cuts the document)."""
    schema = '{"type":"string","minLength":1000,"maxLength":2000}'
    rc, out, err = run_limited(
        "generate", "-m", str(tiny_model), "-n", "4", "-t", "0", "--json-schema", schema, "x"
    )  # fmt: skip
    assert rc in (0, 1) and "Traceback" not in err, err
    assert out.startswith('"'), out
    grammar = tmp_path / "g.gbnf"
    grammar.write_text(
        'root ::= "a"{1,2000} ' + "(" * 200 + '"b"' + ")" * 200 + ' ("c"?){0,32}\n'
    )  # ("c"?){0,32}: at the limit for repeating what can match nothing
    rc, out, err = run_limited(
        "generate", "-m", str(tiny_model), "-n", "4", "-t", "0", "--grammar", str(grammar), "x"
    )  # fmt: skip
    assert rc in (0, 1) and "Traceback" not in err, err
    assert out.startswith("a"), out


# -- chat transcripts -------------------------------------------------------------------


def _deep_transcript() -> str:
    deep = "[" * 1000 + "]" * 1000
    return '{"format": "gptcli-chat", "version": 1, "messages": ' + deep + "}"


TRANSCRIPTS = [  # (id, file text, what the one error line says)
    ("deep-json", _deep_transcript(), f"JSON nested more than {MAX_JSON_DEPTH} levels deep"),
    (
        "deep-content",
        '{"format": "gptcli-chat", "a": ' + '{"b":' * 5000 + "1" + "}" * 5001,
        "nested",
    ),
    ("not-utf8", b"\xff\xfe{}", "invalid JSON"),
    # Python refuses to convert an integer of over 4,300 digits with a bare ValueError
    ("long-number", '{"format": "gptcli-chat", "version": ' + "9" * 5000 + "}", "too long"),
]


@pytest.mark.parametrize("text", [c[1] for c in TRANSCRIPTS], ids=[c[0] for c in TRANSCRIPTS])
def test_resume_of_a_hostile_transcript_is_one_line(tiny_model, tmp_path, text):
    path = tmp_path / "t.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    needle = next(c[2] for c in TRANSCRIPTS if c[1] == text)
    rc, out, err = run_limited("chat", "-m", str(tiny_model), "--resume", str(path))
    assert rc == 2
    one_error_line(err, needle)


def test_load_of_a_deep_transcript_keeps_the_chat_and_its_turns(tiny_model, tmp_path):
    """/load used to end the chat with a RecursionError, losing the unsaved turns."""
    (tmp_path / "deep.json").write_text(_deep_transcript())
    out = tmp_path / "kept.json"
    rc, _, err = run_limited(
        "chat", "-m", str(tiny_model), "-n", "3", "--seed", "1",
        input=f"keep me\n/load deep.json\nand me\n/save {out}\n", cwd=tmp_path,
    )  # fmt: skip
    assert rc == 2  # the failed command sets the exit code, the chat goes on
    errors = [ln for ln in err.splitlines() if "error" in ln or "Traceback" in ln]
    assert len(errors) == 1 and errors[0].startswith("gptcli: error: "), err
    assert f"nested more than {MAX_JSON_DEPTH} levels deep" in errors[0]
    users = [m["content"] for m in json.loads(out.read_text())["messages"] if m["role"] == "user"]
    assert users == ["keep me", "and me"]


# -- files that are not files, stdin that never ends -------------------------------------


@pytest.fixture
def odd_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    yield {"/dev/zero": "/dev/zero", "fifo": str(fifo), "socket": str(sock_path)}
    sock.close()


@pytest.mark.parametrize("which", ["/dev/zero", "fifo", "socket"])
def test_model_that_is_not_a_regular_file_is_named_so(odd_files, which):
    rc, out, err = run_limited("generate", "-m", odd_files[which], "-n", "2", "x")  # never blocks
    assert rc == 1 and out == ""
    one_error_line(err, f"model path is not a regular file: {odd_files[which]}")


@pytest.mark.parametrize("option", ["--grammar", "--json-schema"])
def test_input_files_that_are_devices_or_sockets_are_refused(tiny_model, odd_files, option):
    for which in ("/dev/zero", "socket"):
        rc, out, err = run_limited("generate", "-m", str(tiny_model), option, odd_files[which], "x")
        assert rc == 2
        one_error_line(err, "not a regular file")


def test_a_fifo_nobody_writes_to_is_read_as_empty_not_waited_on(tiny_model, odd_files):
    rc, out, err = run_limited(
        "generate", "-m", str(tiny_model), "--grammar", odd_files["fifo"], "x"
    )
    assert rc == 2
    one_error_line(err, "is empty")


def test_a_grammar_from_a_pipe_is_read(tiny_model, tmp_path):
    # `--grammar <(command)`: a pipe is a file the user means; only devices are refused.
    r, w = os.pipe()
    os.write(w, b'root ::= "yes"\n')
    os.close(w)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gptcli", "generate", "-m", str(tiny_model), "-n", "4",
             "-t", "0", "--grammar", f"/dev/fd/{r}", "x"],
            pass_fds=(r,), capture_output=True, env=clean_env(), timeout=TIME_LIMIT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        os.close(r)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == "yes"


@pytest.mark.parametrize("each_line", [False, True])
def test_endless_stdin_is_refused_within_bounded_memory(tiny_model, each_line):
    args = ["generate", "-m", str(tiny_model), "-n", "2"] + (["--each-line"] if each_line else [])
    with open("/dev/zero", "rb") as zero:
        rc, out, err = run_limited(*args, stdin=zero)
    assert rc == 2 and out == ""
    one_error_line(err, "16 MiB")


def test_score_of_dev_zero_is_refused(tiny_model):
    rc, out, err = run_limited("score", "-m", str(tiny_model), "/dev/zero")
    assert rc == 2
    one_error_line(err, "not a regular file")


# -- numbers on the command line ---------------------------------------------------------


def test_a_denormal_temperature_is_greedy_and_quiet(tiny_model):
    """-t 1e-320 once printed numpy's RuntimeWarning with a source path; the limit of a
    tiny temperature is greedy decoding, so the text must be -t 0's."""
    args = ("generate", "-m", str(tiny_model), "-n", "8", "--seed", "3", "--raw", "Hello")
    rc0, greedy, err0 = run_limited(*args, "-t", "0")
    rc, text, err = run_limited(*args, "-t", "1e-320")
    assert rc == rc0 == 0 and err == "" and err0 == ""
    assert text == greedy


def test_next_at_a_denormal_temperature_shows_numbers_not_nan(tiny_model):
    rc, out, err = run_limited("next", "-m", str(tiny_model), "-t", "1e-320", "--json", "Hello")
    assert rc == 0 and err == "", err
    step = json.loads(out.splitlines()[0])
    probs = [c["probs"][0] for c in step["top"]]
    assert probs[0] == 1.0 and all(p == 0.0 for p in probs[1:])  # greedy: one certain token
    assert step["entropy_bits"] == [0.0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--threads", str(MAX_THREADS + 1)], f"--threads must be from 1 to {MAX_THREADS}"),
        (["--ctx", "999999999"], "needs about"),
    ],
    ids=["threads", "ctx"],
)
def test_numbers_beyond_what_can_run_are_one_line(tiny_model, args, needle):
    rc, out, err = run_limited("generate", "-m", str(tiny_model), "-n", "2", *args, "x")
    assert rc == 2 and out == ""
    one_error_line(err, needle)


def test_jobs_above_the_cap_are_refused(tiny_model):
    rc, _, err = run_limited(
        "generate", "-m", str(tiny_model), "--each-line", "-j", str(MAX_JOBS + 1), input="a\n"
    )  # fmt: skip
    assert rc == 2
    one_error_line(err, f"-j must be from 1 to {MAX_JOBS}")


def test_jobs_make_no_more_sequences_than_lines(tiny_model, monkeypatch):
    from gptcli.backends import batching
    from gptcli.llama.engine import Engine, EngineOptions
    from gptcli.sampling.sampler import SamplingParams

    made = []

    class Recording(batching.BatchedEngine):
        def __init__(self, engine, n_seq, n_shared=0):
            made.append(n_seq)
            super().__init__(engine, n_seq, n_shared)

    monkeypatch.setattr(batching, "BatchedEngine", Recording)
    engine = Engine(tiny_model, EngineOptions(n_ctx=64, n_threads=1))
    try:
        settings = batching.BatchSettings(SamplingParams(temperature=0.0), max_tokens=2)
        prompt_for = lambda line: engine.tokenize(line, add_bos=False)  # noqa: E731
        results = list(batching.run_lines(engine, ["a b", "c d"], MAX_JOBS, prompt_for, settings))
    finally:
        engine.close()
    assert made == [2]
    assert [r.index for r in results] == [0, 1] and all(r.finish for r in results)


def test_server_jobs_start_no_more_threads_than_lines():
    from gptcli.backends.lines import ordered

    before = threading.active_count()
    seen = []

    def work(item: str) -> str:
        seen.append(threading.active_count() - before)
        return item.upper()

    assert list(ordered(["a", "b"], work, MAX_JOBS)) == ["A", "B"]
    assert max(seen) <= 2


def test_verbose_shows_llama_cpp_log(tiny_model):
    rc, out, err = run_limited("generate", "-m", str(tiny_model), "-n", "1", "--verbose", "x")
    assert rc == 0, err[-2000:]
    assert "llama_" in err and "Traceback" not in err


def test_more_lines_in_flight_than_the_batch_has_outputs_run(tiny_model):
    """--ctx 64 makes a batch of 64 outputs; -j 64 then aborted llama.cpp
    (GGML_ASSERT n_outputs_max). (Batched greedy text may differ from -j 1's in a
    rounding: the README says why; so only the run and its line count are checked.)"""
    lines = "".join(f"line {i}\n" for i in range(64))
    args = ("generate", "-m", str(tiny_model), "--ctx", "64", "--each-line", "-n", "2", "-t", "0")
    rc, many, err = run_limited(*args, "-j", "64", input=lines)
    assert rc == 0 and err == "", err[-2000:]
    assert len(many.splitlines()) == 64 and all(line.strip() for line in many.splitlines())

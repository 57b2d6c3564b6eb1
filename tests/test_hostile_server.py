"""Servers that misbehave (tests/support/hostileserver.py, on 127.0.0.1), each met by the real
CLI in a subprocess: a bounded time (a short --timeout, never a long sleep), an exit
code, one line on stderr when it fails, and the text received before the failure kept
on stdout. Each case fails without its bound: the run would hang (the subprocess
timeout), print past -n, or show an impossible number."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from conftest import clean_env, run_gptcli
from support.hostileserver import HostileServer

from gptcli.backends import dialects
from gptcli.limits import LOGPROB_ROUNDING, MAX_CANDIDATES

# A run that still waits this long has hung: the bound did not hold.
HANG_S = 60


@pytest.fixture(scope="module")
def hostile():
    server = HostileServer()
    yield server
    server.stop()


@dataclass(frozen=True)
class Case:
    mode: str  # how the server misbehaves (support/hostileserver.py)
    args: tuple[str, ...]
    code: int  # the exit code
    stdout: str | None  # exactly what stdout holds (None: not checked here)
    error: str | None  # in the one `gptcli: error:` line (None: no error)
    notice: str | None = None  # a notice on stderr, for a run that goes on
    stdin: str | None = None
    errors: int = 1  # --each-line: one per failed line, then the count


T1 = ("--timeout", "1")
CASES = [
    Case("silent", ("generate", *T1, "hi"), 1, "", "sent nothing for 1 s"),
    Case("silent", ("next", *T1, "hi"), 1, "", "sent nothing for 1 s"),
    Case("silent", ("score", *T1), 1, "", "sent nothing for 1 s", stdin="hello there"),
    Case("silent", ("chat", *T1), 1, "", "sent nothing for 1 s", stdin="hello\n"),
    Case("silent", ("list", *T1), 1, "", "sent nothing for 1 s"),
    Case("silent", ("generate", "--each-line", *T1), 1, "\n", "line 1: ", stdin="a\n", errors=2),
    Case("endless", ("generate", *T1, "hi"), 1, "one two three\n", "in the middle of its reply"),
    # The chat goes on after a reply that stalls: each message its line, exit 1 at the end.
    Case(
        "endless",
        ("chat", *T1),
        1,
        "one two three\n\none two three\n",
        "in the middle",
        None,
        "hi\nagain\n",
        errors=2,
    ),
    # Keep-alive comments are not events: they do not keep a stalled reply alive.
    Case("trickle", ("generate", *T1, "hi"), 1, "one two three\n", "sent nothing for 1 s"),
    Case("flood", ("generate", "-n", "5", "hi"), 0, "w w w w w \n", None, "more than the 5 tokens"),
    Case("flood", ("generate", "--raw", "-n", "3", "hi"), 0, "w w w \n", None, "(-n): stopped"),
    Case("emptyflood", ("generate", "hi"), 1, "", "events in a row with no text"),
    Case("hugeline", ("generate", "hi"), 1, "one two\n", "a line over 16 MiB"),
    Case("deepjson", ("generate", "hi"), 1, "one two\n", "a malformed event"),
    Case("slowbody", ("list", *T1), 1, "", "sent nothing for 1 s while replying"),
    Case("bigbody", ("list",), 1, "", "a reply over 64 MiB"),
    Case("nousage", ("generate", "--stats", "hi"), 0, "one two three\n", None, "no token count"),
    Case("nousage", ("next", "hi"), 0, None, None, "only the top 10"),
    Case(
        "nousage", ("chat",), 0, "one two three\n", None, "prompt      not reported", "hi\n/stats\n"
    ),
    Case("badnumbers", ("next", "hi"), 0, None, None, "impossible probabilities"),
    Case("badnumbers", ("generate", "--json", "hi"), 0, None, None, "impossible probabilities"),
    Case(
        "badnumbers", ("generate", "--probs=model", "hi"), 0, "one two three\n", None, "impossible"
    ),
    Case("pastone", ("next", "hi"), 1, "", "no log probabilities", "impossible probabilities"),
    Case("wrongtypes", ("next", "--steps", "3", "hi"), 0, None, None, "fewer than 10"),
    Case("wrongtypes", ("score",), 1, "", "no log probabilities", stdin="a b"),
    Case("manytop", ("next", "--top", "3", "hi"), 0, None, None, "only the top 3"),
]


def _id(case: Case) -> str:
    return f"{case.mode}-{case.args[0]}-" + "-".join(a.strip("-") for a in case.args[1:3])


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_a_hostile_server_is_one_line_in_bounded_time(hostile, case):
    r = run_gptcli(*case.args, "--server", hostile.url(case.mode), input=case.stdin, timeout=HANG_S)
    assert r.returncode == case.code, r.stderr
    if case.stdout is not None:
        assert r.stdout == case.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("gptcli: error:")]
    if case.error is None:
        assert errors == []
    else:
        assert len(errors) == case.errors and case.error in errors[0], r.stderr
    if case.notice is not None:
        assert case.notice in r.stderr
    assert "Traceback" not in r.stderr
    # No Python None and no impossible number reaches a user.
    assert "None" not in r.stdout and "None" not in r.stderr
    assert "148.4" not in r.stdout and "nan" not in r.stdout.lower()


def test_next_shows_only_possible_numbers(hostile):
    # The server's top list: 5.0, NaN, 1e308, "x", -inf and -0.5. Only -inf (log 0)
    # and -0.5 are probabilities: e^5 = 148.4 was shown as a probability before.
    r = run_gptcli("next", "--json", "hi", "--server", hostile.url("badnumbers"), timeout=HANG_S)
    assert r.returncode == 0, r.stderr
    import json

    (step,) = [json.loads(line) for line in r.stdout.splitlines()]
    top = [(c["token"], c["logprob"], c["probs"]) for c in step["top"]]
    # " b4" is log 0 (-inf): probability 0, its logprob null (JSON has no -Infinity).
    assert top == [(" good", -0.5, [pytest.approx(math.exp(-0.5))]), (" b4", None, [0.0])]
    assert "Infinity" not in r.stdout
    assert step["position"] is None  # unknown, and said so in JSON as null


def test_json_never_passes_an_impossible_logprob_through(hostile):
    import json

    r = run_gptcli("generate", "--json", "hi", "--server", hostile.url("badnumbers"))
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    tokens = [row for row in rows if "token" in row]
    assert [t["token"] for t in tokens] == ["one", " two", " three"]
    assert all(t["model_logprob"] is None and t["top_logprobs"] == [] for t in tokens)


def test_many_alternatives_are_read_up_to_the_limit_in_bounded_time(hostile):
    r = run_gptcli("next", "--top", "3", "hi", "--server", hostile.url("manytop"))
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[2]
    assert "first" in first and "0.7788" in first  # e^-0.25, the one real favourite


def test_each_line_retries_a_reset_once_and_fails_only_the_line_that_keeps_failing(hostile):
    lines = [f"line {i}" for i in range(1, 21)]
    lines[4] = "RESET once"  # reset on its first request only: the retry answers it
    lines[11] = "ALWAYS reset"  # reset every time: that line fails, the others go on
    r = run_gptcli(
        "generate",
        "--each-line",
        "-j",
        "8",
        "--server",
        hostile.url("reset"),
        input="".join(line + "\n" for line in lines),
        timeout=HANG_S,
    )
    assert r.returncode == 1
    want = [f"reply to {line}" for line in lines]
    want[11] = ""
    assert r.stdout.splitlines() == want
    errors = r.stderr.splitlines()
    assert len(errors) == 2, r.stderr
    assert errors[0].startswith("gptcli: error: line 12: ") and "tried 2 times" in errors[0]
    assert errors[1] == "gptcli: error: 1 of 20 lines failed (their output lines are empty)"


def test_pull_gives_up_on_a_silent_hub(hostile, tmp_path):
    env = clean_env(
        HF_HUB_OFFLINE="0", HF_ENDPOINT=hostile.url("silent"), HF_HOME=str(tmp_path / "hf")
    )
    r = run_gptcli("pull", "--timeout", "1", "someone/some-model:Q4_0", env=env, timeout=HANG_S)
    assert r.returncode == 1
    assert r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith("gptcli: error: the hub at ") and "nothing for 1 s" in line, r.stderr


@pytest.mark.parametrize(
    "mode, says",
    [
        ("bigbody", "sent an API reply of more than 64 MiB: refused"),
        ("emptypages", "sent more than 1000 pages of file listing: refused"),
    ],
)
def test_pull_refuses_a_hub_api_reply_without_end(hostile, tmp_path, mode, says):
    # huggingface_hub reads an API reply whole and follows the listing's next pages: a hub
    # that never ends the one or the other would fill memory or be asked for ever.
    env = clean_env(HF_HUB_OFFLINE="0", HF_ENDPOINT=hostile.url(mode), HF_HOME=str(tmp_path / "hf"))
    r = run_gptcli("pull", "someone/some-model:Q4_0", env=env, timeout=HANG_S)
    assert r.returncode == 1 and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith("gptcli: error: the hub at ") and line.endswith(says), r.stderr


def test_generate_passes_its_timeout_to_a_pull_that_m_starts(hostile, tmp_path):
    env = clean_env(
        HF_HUB_OFFLINE="0", HF_ENDPOINT=hostile.url("silent"), HF_HOME=str(tmp_path / "hf")
    )
    r = run_gptcli("generate", "--timeout", "1", "-m", "someone/some-model:Q4_0", "hi", env=env)
    assert r.returncode == 1 and r.stdout == ""
    last = r.stderr.splitlines()[-1]
    assert last.startswith("gptcli: error: the hub at ") and "nothing for 1 s" in last, r.stderr


def test_timeout_must_be_a_positive_number_of_seconds():
    for bad in ("0", "-1", "inf", "nan"):
        r = run_gptcli("generate", "--timeout", bad, "--server", "http://127.0.0.1:9", "x")
        assert r.returncode == 2 and r.stderr.startswith("gptcli: error:"), (bad, r.stderr)


# -- the numbers, one by one ---------------------------------------------------------


@pytest.mark.parametrize("bad", [5.0, 1e308, float("nan"), "x", [], {}, True, 2 * LOGPROB_ROUNDING])
def test_an_impossible_log_probability_is_read_as_none(bad):
    assert dialects.logprob(bad) is None


def test_a_possible_log_probability_is_read_as_it_is():
    assert dialects.logprob(-0.5) == -0.5
    assert dialects.logprob(LOGPROB_ROUNDING / 2) == 0.0  # float32 rounding of log 1
    assert dialects.logprob(float("-inf")) == -math.inf


def test_dropped_numbers_are_counted_for_the_notice():
    e = dialects.chat_entry(
        {
            "token": "a",
            "logprob": 5.0,
            "top_logprobs": [{"token": "a", "logprob": 5.0}, {"token": "b", "logprob": -1.0}],
        }
    )
    assert e.logprob is None and [c.piece for c in e.top] == [b"b"] and e.dropped == 2
    # Distinct tokens whose probabilities sum to 1.8: none of them can be believed.
    two = [{"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -0.1}]
    e = dialects.chat_entry({"token": "a", "logprob": -0.1, "top_logprobs": two})
    assert e.top == () and e.dropped == 2
    legacy = dialects.legacy_entries(
        {"tokens": ["a"], "token_logprobs": [float("nan")], "top_logprobs": [{"a": "x"}]}
    )
    assert legacy[0].logprob is None and legacy[0].top == () and legacy[0].dropped == 2


def test_alternatives_are_read_up_to_the_limit():
    top = [{"token": f"t{i}", "logprob": -30.0} for i in range(MAX_CANDIDATES * 3)]
    e = dialects.chat_entry({"token": "t0", "logprob": -30.0, "top_logprobs": top})
    assert len(e.top) == MAX_CANDIDATES


@pytest.mark.parametrize("bad", [None, -1, 1.5, "12", True, float("nan")])
def test_a_token_count_a_server_sends_must_be_a_count(bad):
    assert dialects.count(bad) is None
    assert dialects.count(12) == 12

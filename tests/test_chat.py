"""`gptcli chat`: the REPL through a real pseudo-terminal (pexpect), piped sessions,
and the conversation object on a real engine. Tiny model for mechanics, the
embedded SmolLM2 for content."""

from __future__ import annotations

import json
import re
import sys

import pexpect
import pytest
from conftest import clean_env

from gptcli.backends.generation import Generation
from gptcli.chat.conversation import Conversation
from gptcli.llama.engine import Engine, EngineOptions
from gptcli.llama.prompt import chat_format, tokens_for_text
from gptcli.sampling.sampler import Sampler, SamplingParams

PROMPT = ">>> "


def spawn(*args: str, tmp_path=None, timeout: float = 90) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "gptcli", "chat", *args],
        env=clean_env(),
        encoding="utf-8",
        timeout=timeout,
        dimensions=(40, 200),
        cwd=str(tmp_path) if tmp_path else None,
    )
    child.expect_exact(PROMPT)
    return child


def say(child: pexpect.spawn, line: str) -> str:
    """Send a line, wait for the next prompt, return what was shown in between."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    return child.before


def end(child: pexpect.spawn) -> int:
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


# -- content, on SmolLM2 ------------------------------------------------------------


def test_second_answer_depends_on_the_first(gptcli, smollm2):
    child = spawn("-t", "0", "-n", "30")
    say(child, "I have a dog called Rex.")
    second = say(child, "What is the name of my dog?")
    assert end(child) == 0
    reply = second.split("What is the name of my dog?", 1)[1]
    assert "Rex" in reply
    # The same question alone does not know the name: the answer came from turn 1.
    alone = gptcli("chat", "-t", "0", "-n", "30", input="What is the name of my dog?\n")
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.strip() and "Rex" not in alone.stdout


def test_next_turn_evaluates_only_the_new_tokens(smollm2):
    with Engine(smollm2, EngineOptions(n_ctx=1024)) as engine:
        conv = Conversation(engine, chat_format(engine), "You are brief.")
        sampler = Sampler(SamplingParams(temperature=0), engine.n_vocab)
        first = conv.prepare("Name a colour.", reserve=64)
        gen = Generation(engine, first.tokens, sampler, max_tokens=12)
        text = "".join(getattr(e, "text", "") for e in gen)
        conv.add_reply(first, text, gen.tokens)
        assert engine.last_prefill_evaluated == len(first.tokens)

        second = conv.prepare("Name another one.", reserve=64)
        done = first.tokens + gen.tokens
        assert second.tokens[: len(done)] == done
        # The template re-rendered from text tokenizes to the same sequence.
        assert second.tokens == tokens_for_text(engine, second.text, special=True)
        # The cache holds turn 1 (all but the last reply token when -n cut the reply:
        # that one was sampled but never evaluated).
        cached = engine.n_past
        assert cached >= len(done) - 1 and engine.tokens == second.tokens[:cached]
        engine.prefill(second.tokens)
        assert engine.last_prefill_evaluated == len(second.tokens) - cached
        assert 0 < engine.last_prefill_evaluated < 30


def test_stats_show_the_cache_reuse(gptcli, tiny_model):
    r = gptcli(
        "chat", "-m", str(tiny_model), "-n", "4", "--seed", "1",
        input="Hello there\nAnd again\n/stats\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("prompt"))
    total, evaluated, reused = (int(w) for w in line.replace(",", "").split() if w.isdigit())
    assert reused > 0 and evaluated + reused == total
    assert "tokens/s" not in r.stdout


# -- the terminal: mechanics on the tiny model ------------------------------------------


def test_ctrl_c_mid_reply_keeps_the_session(tiny_model):
    # A random-weight model rarely ends a reply: it runs until the 4096-token context.
    child = spawn("-m", str(tiny_model), "--ctx", "4096", "-t", "1", "--seed", "7")
    child.sendline("Tell me everything")
    child.expect_exact("Tell me everything")
    child.expect(r"\S{5}")  # reply text is streaming
    child.sendintr()
    child.expect("partial reply stays in the conversation")
    child.expect_exact(PROMPT)
    history = say(child, "/history")
    assert "[user] Tell me everything" in history
    say(child, "/max-tokens 3")
    again = say(child, "Still there?")
    assert "tokens" in again  # the status line of a finished reply
    assert end(child) == 0


def test_ctrl_c_on_a_typed_line_clears_it_and_on_an_empty_prompt_quits(tiny_model):
    child = spawn("-m", str(tiny_model))
    child.send("half a thought")
    child.expect_exact("half a thought")  # readline has the text (it echoes it)
    child.sendintr()
    child.expect_exact(PROMPT)  # still running, a fresh prompt
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_probs_on_marks_each_token_with_its_probability(tiny_model):
    child = spawn("-m", str(tiny_model), "-n", "6", "--seed", "5")
    assert "probability" in say(child, "/probs on")  # the legend
    marked = say(child, "Hello")
    # NO_COLOR: each piece is followed by its probability, e.g. `word[0.42]`.
    assert len(re.findall(r"\[(?:0\.\d\d|1\.00|\de-\d+)\]", marked)) >= 3, marked
    say(child, "/probs off")
    plain = say(child, "Hello again")
    assert not re.findall(r"\[0\.\d\d\]", plain.split("Hello again", 1)[1])
    assert end(child) == 0


def test_ctrl_d_ends_the_chat(tiny_model):
    child = spawn("-m", str(tiny_model))
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_triple_quotes_make_one_multi_line_message(tiny_model, tmp_path):
    child = spawn("-m", str(tiny_model), "-n", "2", tmp_path=tmp_path)
    child.sendline('"""first line')
    child.expect_exact("... ")
    child.sendline("second line")
    child.expect_exact("... ")
    child.sendline('/not a command"""')
    child.expect_exact(PROMPT)
    say(child, "/save t.json")
    assert end(child) == 0
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["messages"][0] == {
        "role": "user",
        "content": "first line\nsecond line\n/not a command",
    }
    assert len(saved["messages"]) == 2


def test_save_then_resume_restores_the_same_history(tiny_model, tmp_path):
    child = spawn("-m", str(tiny_model), "-n", "5", "--system", "Be terse.", tmp_path=tmp_path)
    say(child, "first question")
    say(child, "second question")
    say(child, "/save chat.json")
    assert end(child) == 0
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert saved["system"] == "Be terse."
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 2
    assert saved["messages"][2]["content"] == "second question"

    child = spawn("-m", str(tiny_model), "-n", "5", "--resume", "chat.json", tmp_path=tmp_path)
    shown = child.before
    assert "resumed 2 turns" in shown and "[user] first question" in shown
    say(child, "/save again.json")
    assert end(child) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["messages"] == saved["messages"] and again["system"] == "Be terse."


def test_bad_commands_are_one_line_and_the_repl_goes_on(tiny_model, tmp_path):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "gptcli-chat", "version": 1, "messages": [ oops')
    child = spawn("-m", str(tiny_model), "-n", "3", tmp_path=tmp_path)
    say(child, "keep me")
    for line, needle in [
        ("/frobnicate", "unknown command /frobnicate"),
        ("/temp abc", "/temp needs a number"),
        ("/temp -1", "temperature must be 0"),
        ("/top-p 2", "top-p must be in"),
        ("/load missing.json", "no such transcript"),
        (f"/load {corrupt}", "not a gptcli chat transcript"),
        ("/save /nonexistent-dir/x.json", "cannot save"),
        ("/probs maybe", "/probs takes 'on' or 'off'"),
    ]:
        shown = say(child, line)
        errors = [ln for ln in shown.splitlines() if "error:" in ln]
        assert len(errors) == 1 and needle in errors[0], shown
        assert "Traceback" not in shown
    history = say(child, "/history")
    assert "[user] keep me" in history  # the conversation survived every failure
    assert end(child) == 0


# -- context, templates, pipes --------------------------------------------------------


def test_context_overflow_drops_the_oldest_turns_with_a_notice(gptcli, tiny_model, tmp_path):
    questions = [f"question number {i} with a few more words to fill the context" for i in range(8)]
    out = tmp_path / "t.json"
    r = gptcli(
        "chat", "-m", str(tiny_model), "--ctx", "160", "-n", "16", "--seed", "3",
        "--system", "SYSTEM PROMPT",
        input="\n".join(questions) + f"\n/save {out}\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "dropped the oldest" in r.stderr
    saved = json.loads(out.read_text())
    assert saved["system"] == "SYSTEM PROMPT"
    users = [m["content"] for m in saved["messages"] if m["role"] == "user"]
    assert users[-1] == questions[-1] and questions[0] not in users
    assert len(r.stdout.strip().split("\n\n")) >= len(questions) - 1  # every turn replied


def test_reply_filling_the_context_says_so(gptcli, tiny_model):
    r = gptcli("chat", "-m", str(tiny_model), "--ctx", "64", "-t", "1", "--seed", "3", input="Hi\n")
    assert r.returncode == 0, r.stderr
    assert "context is full" in r.stderr


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    ],
)
def test_malicious_chat_template_is_refused_without_running_code(
    gptcli, tiny_model_factory, tmp_path, payload
):
    marker = tmp_path / "pwned"
    template = payload.replace("MARKER", str(marker))
    evil = tiny_model_factory(f"evil{abs(hash(payload))}", chat_template=template)
    r = gptcli("chat", "-m", str(evil), input="Hello\n")
    assert r.returncode == 1
    assert "tried to reach Python internals" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    assert not marker.exists()


def test_model_without_template_gets_the_plain_format_and_a_notice(gptcli, tiny_model_factory):
    bare = tiny_model_factory("bare", chat_template=None)
    r = gptcli(
        "chat", "-m", str(bare), "-n", "4", "--seed", "1", input="Hello\nMore\n/stats\n"
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "no chat template" in r.stderr
    assert len(r.stdout.strip().split("\n\n")) >= 2
    # Turn 2 still reuses the cached prefix (at least the first turn's prompt).
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("prompt"))
    assert int(line.split("evaluated, ")[1].split()[0]) > 0


def test_piped_lines_are_turns_and_errors_set_the_exit_code(gptcli, tiny_model, tmp_path):
    out = tmp_path / "t.json"
    r = gptcli(
        "chat", "-m", str(tiny_model), "-n", "3", "--seed", "2",
        input=f"one\n\ntwo\n/temp nope\nthree\n/save {out}\n",
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.count("gptcli: error:") == 1 and "/temp needs a number" in r.stderr
    users = [m["content"] for m in json.loads(out.read_text())["messages"] if m["role"] == "user"]
    assert users == ["one", "two", "three"]


def test_resume_of_a_missing_file_is_one_line(gptcli, tiny_model, tmp_path):
    r = gptcli("chat", "-m", str(tiny_model), "--resume", str(tmp_path / "nope.json"))
    assert r.returncode == 2  # an input file, as for score: see the README's exit codes
    assert "no such transcript" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- slash commands, piped (each checks the state it changes, not just the exit code) ------


def saved_chat(gptcli, tiny_model, tmp_path, lines: list[str], *args: str):
    out = tmp_path / "t.json"
    text = "\n".join([*lines, f"/save {out}"]) + "\n"
    r = gptcli("chat", "-m", str(tiny_model), "-n", "4", *args, input=text)
    return r, json.loads(out.read_text()) if out.exists() else None


def test_undo_drops_the_last_exchange_and_refuses_on_an_empty_chat(gptcli, tiny_model, tmp_path):
    r, saved = saved_chat(gptcli, tiny_model, tmp_path, ["one", "two", "/undo", "three"])
    assert r.returncode == 0, r.stderr
    assert "dropped the last exchange" in r.stderr
    assert [m["content"] for m in saved["messages"] if m["role"] == "user"] == ["one", "three"]
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 2
    r, saved = saved_chat(gptcli, tiny_model, tmp_path, ["/undo"])
    assert r.returncode == 2 and "gptcli: error: nothing to undo" in r.stderr
    assert saved["messages"] == []


def test_reset_clears_the_turns_and_keeps_the_system_prompt(gptcli, tiny_model, tmp_path):
    r, saved = saved_chat(
        gptcli, tiny_model, tmp_path, ["one", "two", "/reset", "three"], "--system", "SYS"
    )
    assert r.returncode == 0, r.stderr
    assert "conversation cleared" in r.stderr
    assert saved["system"] == "SYS"
    assert [m["content"] for m in saved["messages"] if m["role"] == "user"] == ["three"]


def test_system_sets_shows_and_reaches_the_prompt(gptcli, tiny_model, tmp_path):
    r, saved = saved_chat(
        gptcli, tiny_model, tmp_path, ["/system", "/system Answer in French.", "/system", "hi"]
    )
    assert r.returncode == 0, r.stderr
    # piped: only replies are content; what a command shows goes to stderr
    assert "(no system prompt)\n(system prompt set)\nAnswer in French.\n" in r.stderr
    assert "no system prompt" not in r.stdout
    assert saved["system"] == "Answer in French."
    # The new system prompt is part of the evaluated prompt: more tokens than without it.
    chat = ("chat", "-m", str(tiny_model), "-n", "1")
    with_sys = gptcli(*chat, input="/system Answer in French.\nhi\n/stats\n")
    without = gptcli(*chat, input="hi\n/stats\n")

    def prompt_tokens(r):
        line = next(ln for ln in r.stderr.splitlines() if ln.startswith("prompt"))
        return int(line.split()[1])

    assert prompt_tokens(with_sys) > prompt_tokens(without)


def test_seed_makes_a_reply_repeatable_and_another_seed_changes_it(gptcli, tiny_model):
    def reply(*lines: str) -> str:
        r = gptcli("chat", "-m", str(tiny_model), "-n", "8", input="\n".join(lines) + "\n")
        assert r.returncode == 0, r.stderr
        return r.stdout

    a = reply("/temp 1.5", "/seed 5", "hello")
    assert a == reply("/temp 1.5", "/seed 5", "hello")
    assert a != reply("/temp 1.5", "/seed 6", "hello")
    # /seed changes the sampler mid-session: the same as starting with --seed.
    started = gptcli(
        "chat", "-m", str(tiny_model), "-n", "8", "-t", "1.5", "--seed", "6", input="hello\n"
    )
    assert reply("/temp 1.5", "/seed 6", "hello") == started.stdout
    r = gptcli("chat", "-m", str(tiny_model), input="/seed 9\n/seed\n/seed random\n/seed\n")
    assert r.stdout == "" and "(seed 9)\nseed 9\n(seed random)\nseed random\n" in r.stderr


@pytest.mark.parametrize(
    "command, value, shown",
    [
        ("temp", "0.25", "temperature 0.25"),
        ("temperature", "1.5", "temperature 1.5"),
        ("top-k", "7", "top-k 7"),
        ("top-p", "0.5", "top-p 0.5"),
        ("min-p", "0.2", "min-p 0.2"),
        ("repeat-penalty", "1.3", "repeat-penalty 1.3"),
        ("max-tokens", "3", "max-tokens 3"),
    ],
)
def test_sampling_commands_set_what_they_name(gptcli, tiny_model, command, value, shown):
    r = gptcli(
        "chat", "-m", str(tiny_model), input=f"/{command} {value}\n/{command}\n/stats\n"
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and f"{shown}\n" in r.stderr  # piped: stdout is replies only
    sampling = next(ln for ln in r.stderr.splitlines() if ln.startswith("sampling"))
    assert shown in sampling, sampling


def test_sampling_commands_reach_the_sampler(gptcli, tiny_model):
    def reply(*lines: str) -> str:
        r = gptcli("chat", "-m", str(tiny_model), "-n", "8", input="\n".join(lines) + "\n")
        assert r.returncode == 0, r.stderr
        return r.stdout

    # Greedy by /temp 0 or by /top-k 1: the seed no longer matters, and both agree.
    greedy = reply("/temp 0", "/seed 1", "hello")
    assert greedy == reply("/temp 0", "/seed 2", "hello")
    assert greedy == reply("/temp 1.5", "/top-k 1", "/seed 3", "hello")
    started = gptcli("chat", "-m", str(tiny_model), "-n", "8", "-t", "0", input="hello\n")
    assert greedy == started.stdout
    # /max-tokens 2 cuts the reply at two tokens (the notice names the limit).
    r = gptcli("chat", "-m", str(tiny_model), "-t", "0", input="/max-tokens 2\nhello\n/stats\n")
    assert "limit of 2 tokens" in r.stderr
    assert any(ln.startswith("reply       2 tokens") for ln in r.stderr.splitlines()), r.stderr

"""`gptcli explore`: the app driven by Textual's pilot on real llama.cpp (the tiny model
and the embedded SmolLM2), the tree file and its checks, and one run in tmux."""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import clean_env
from rich.console import Console

from gptcli.commands.explore import NOT_A_TERMINAL, new_tree
from gptcli.errors import UsageError
from gptcli.explorer.app import Explorer
from gptcli.explorer.session import Session, load_tree, model_id
from gptcli.explorer.text import candidate, safe
from gptcli.llama.engine import Engine, EngineOptions
from gptcli.render.tokens import fmt_prob
from gptcli.sampling.distribution import probs_at
from gptcli.sampling.sampler import Sampler, SamplingParams

SIZE = (120, 40)
OFF = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
PARIS = "The capital of France is"


@pytest.fixture(scope="module")
def smol(smollm2):
    with Engine(smollm2, EngineOptions(n_ctx=256, n_threads=1)) as e:
        yield e


@pytest.fixture(scope="module")
def tiny(tiny_model):
    with Engine(tiny_model, EngineOptions(n_ctx=128, n_threads=1)) as e:
        yield e


def session_for(engine, prompt=PARIS, params=OFF) -> Session:
    return Session(engine, new_tree(engine, prompt, False, None, model_id(engine)), params)


def drive(session: Session, *keys: str, check=None):
    """Run the app under the pilot, press keys, then call check(app, pilot) inside."""

    async def go():
        app = Explorer(session)
        async with app.run_test(size=SIZE) as pilot:
            for k in keys:
                await pilot.press(k)
            await pilot.pause()
            if check is not None:
                await check(app, pilot) if asyncio.iscoroutinefunction(check) else check(app)
        return app

    return asyncio.run(go())


def plain(renderable, width: int = 74) -> str:
    console = Console(width=width, color_system=None, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def candidate_rows(app: Explorer) -> list[list[str]]:
    """The candidates panel as text rows: [#, token, model p, logp, cum, sampled p, cut]."""
    rows = []
    for line in plain(app.render_candidates()).splitlines():
        m = re.match(
            r"\s*[▶• ]?(\d+)\s+(\S+)\s+[█▏▎▍▌▋▊▉ ]*\s*([\d.e-]+)\s+(-?[\d.]+|-inf)\s+"
            r"([\d.]+)\s*[█▏▎▍▌▋▊▉ ]*?\s*([\d.e-]*)\s*([kpm]*)\s*$",
            line,
        )
        if m:
            rows.append(list(m.groups()))
    return rows


# -- the distribution panel --------------------------------------------------------


def test_paris_is_the_top_candidate_and_bars_match_the_model(smol):
    s = session_for(smol)
    logits = s.logits(0).logits
    expected = probs_at(logits, 1.0)

    def check(app):
        rows = candidate_rows(app)
        assert rows[0][1] == "␣Paris"
        top = np.argsort(-expected)[: len(rows)]
        for row, tok in zip(rows, top, strict=True):
            assert row[1] == candidate(smol.piece(int(tok)))[:14]
            assert row[2] == fmt_prob(float(expected[tok]))
        assert abs(float(expected[top[0]]) - 0.7677) < 0.02  # FACTS.md: llama.cpp's figure

    drive(s, check=check)


def test_temperature_keys_redraw_from_cached_logits(smol):
    s = session_for(smol)
    s.logits(0)
    before = s.evaluations
    seen = {}

    async def check(app, pilot):
        for key in ("T", "T", "T"):  # 1.0 -> 1.2 -> 1.5 -> 2.0
            await pilot.press(key)
        await pilot.pause()
        seen["T"] = s.params.temperature
        seen["rows"] = candidate_rows(app)
        seen["view"] = app._view
        await pilot.press("t", "t", "t", "t", "t")  # 2.0 -> ... -> 0.7
        await pilot.pause()
        seen["T2"] = s.params.temperature
        seen["rows2"] = candidate_rows(app)

    drive(s, check=check)
    assert s.evaluations == before, "a temperature change must not call the model"
    assert seen["T"] == 2.0 and seen["T2"] == 0.7
    logits = s.logits(0).logits
    for t, rows in ((2.0, seen["rows"]), (0.7, seen["rows2"])):
        p = probs_at(logits, t)  # the oracle: gptcli.sampling.distribution at that temperature
        top = np.argsort(-logits, kind="stable")[: len(rows)]
        for row, tok in zip(rows, top, strict=True):
            assert row[5] == fmt_prob(float(p[tok])), (t, row)
    v = seen["view"]
    np.testing.assert_allclose(v.sampled, probs_at(logits, 2.0)[v.order], rtol=1e-6, atol=1e-12)
    # Flatter: the top bar falls and the entropy rises with the temperature.
    assert float(seen["rows"][0][5]) < float(seen["rows2"][0][5])


def test_truncated_view_is_what_the_sampler_draws_from(smol):
    for params in (
        SamplingParams(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05),
        SamplingParams(temperature=1.5, top_k=0, top_p=0.9, min_p=0.0),
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1),
        SamplingParams(temperature=2.0, top_k=5, top_p=1.0, min_p=0.0),
    ):
        s = session_for(smol, "Once upon a time", params)
        v = s.view()
        draw = Sampler(params, smol.n_vocab).sample(s.logits(0).logits)
        want = dict(zip(draw.ids.tolist(), draw.probs.tolist(), strict=True))
        got = dict(zip(v.order[: v.kept].tolist(), v.sampled.tolist(), strict=True))
        assert set(got) == {k for k, p in want.items() if p > 0}, params
        for k, p in got.items():
            assert p == pytest.approx(want[k], rel=1e-6), params
        for rank in range(v.kept, min(len(v.order), v.kept + 5)):
            assert v.cut_by(rank)  # every candidate beyond the kept set says what cut it


def test_truncation_keys_change_the_cut_without_the_model(smol):
    s = session_for(smol, params=SamplingParams(temperature=1.0, top_k=40, top_p=0.95, min_p=0.05))
    s.logits(0)
    n = s.evaluations
    out = {}

    def check(app):
        out["rows"] = candidate_rows(app)

    drive(s, "k", "k", "k", "k", check=check)  # 40 -> 20 -> 10 -> 5 -> 2
    assert s.params.top_k == 2 and s.evaluations == n
    rows = out["rows"]
    assert rows[2][6].startswith("k") and not rows[1][6].startswith("k")
    drive(s, *"KKKKKKK", "P", "P", "M", "M", "M")  # top-k, top-p, min-p off
    assert (s.params.top_k, s.params.top_p, s.params.min_p) == (0, 1.0, 0.0)
    assert s.view().kept == smol.n_vocab and s.evaluations == n


# -- moving, branching -----------------------------------------------------------------


def test_accept_step_back_branch_and_switch(smol):
    s = session_for(smol)
    paris, the = smol.tokenize(" Paris", add_bos=False)[0], smol.tokenize(" the", add_bos=False)[0]
    out = {}

    async def check(app, pilot):
        tree = s.tree
        await pilot.press("enter")  # take " Paris": one decode
        out["after_accept"] = (tree.nodes[tree.current].token, s.evaluations)
        out["text"] = plain(app.render_text(), 100)
        await pilot.press("left")  # back: nothing evaluated
        out["after_back"] = (tree.current, s.evaluations)
        out["selected_back"] = app.selected  # the cursor stays on the choice taken
        await pilot.press("down", "enter")  # " the" instead: a branch
        out["branch"] = (tree.nodes[tree.current].token, len(tree.nodes[0].children))
        await pilot.press("g")  # greedy N
        out["depth"] = tree.depth(tree.current)
        out["tree_text"] = plain(app.render_tree(), 80)
        n = s.evaluations
        await pilot.press("right_square_bracket")  # the other branch, from the cache
        out["switched"] = (tree.nodes[tree.path(tree.current)[0]].token, s.evaluations - n)
        await pilot.press("left_square_bracket")
        out["back_again"] = tree.nodes[tree.path(tree.current)[0]].token

    drive(s, check=check)
    assert out["after_accept"][0] == paris
    assert "The capital of France is Paris▌" in out["text"].replace("\n", "")
    assert out["after_back"][0] == 0 and out["after_back"][1] == out["after_accept"][1]
    assert out["selected_back"] == 0
    assert out["branch"] == (the, 2)
    assert out["depth"] == 1 + s.steps
    assert re.search(r"0\.7\d ␣Paris", out["tree_text"]) and "␣the capital" in out["tree_text"]
    assert out["switched"] == (paris, 0)
    assert out["back_again"] == the


def test_walking_back_and_forth_gives_the_logits_of_a_fresh_evaluation(tiny_model, tiny):
    s = session_for(tiny, "Hello there, how are you", OFF)
    s.run(6, greedy=True)
    for _ in range(3):
        s.back()
    s.accept(int(s.view().order[3]))  # a branch: the cache keeps the shared prefix
    s.run(3, greedy=True)
    s.goto(s.tree.leaves()[0])
    s.run(2, greedy=False)
    with Engine(tiny_model, EngineOptions(n_ctx=128, n_threads=1)) as fresh:
        for nid in range(len(s.tree.nodes)):
            fresh.reset()
            row = np.array(fresh.prefill(s.tree.tokens(nid)), copy=True)
            # A batch and one token at a time take different kernels: ~3e-3 apart here,
            # where another context moves logits by far more (checked below).
            np.testing.assert_allclose(s.logits(nid).logits, row, atol=0.02)
    a, b = next(n.children for n in s.tree.nodes if len(n.children) == 2)
    assert np.abs(s.logits(a).logits - s.logits(b).logits).max() > 0.2


def test_walking_back_and_forth_on_smollm2_matches_a_fresh_evaluation(smollm2, smol):
    s = session_for(smol)
    s.run(5, greedy=True)
    s.back()
    s.back()
    s.accept(int(s.view().order[2]))
    s.run(2, greedy=True)
    visited = list(range(len(s.tree.nodes)))
    with Engine(smollm2, EngineOptions(n_ctx=256, n_threads=1)) as fresh:
        for nid in visited:
            fresh.reset()
            row = np.array(fresh.prefill(s.tree.tokens(nid)), copy=True)
            got = s.logits(nid).logits
            # A batch and one token at a time take different kernels: logits agree to ~1e-2.
            np.testing.assert_allclose(got, row, atol=0.05)
            assert np.abs(probs_at(got, 1.0) - probs_at(row, 1.0)).max() < 2e-3


def test_click_on_an_earlier_token_jumps_there(smol):
    s = session_for(smol)
    s.run(4, greedy=True)
    target = s.tree.path(s.tree.current)[1]

    def check(app):
        app.action_jump(target)  # what the token's @click meta runs
        assert s.tree.current == target

    drive(s, check=check)
    text = plain(Explorer(s).render_text(), 100)
    assert text.count("▌") == 1


def test_force_a_token_by_text_and_escape_control_characters(smol):
    s = session_for(smol)
    s.force(" Lyon\x1b]0;pwned\x07\x1b[2J")
    out = {}

    def check(app):
        out["text"] = plain(app.render_text(), 118)
        out["tree"] = plain(app.render_tree(), 80)
        out["status"] = plain(app.render_status(), 118)

    drive(s, check=check)
    for part in out.values():
        assert "\x1b" not in part and "\x07" not in part
    assert "Lyon\\x1b]0;pwned\\x07\\x1b[2J" in out["text"].replace("\n", "")
    assert all(n.how == "force" for n in s.tree.nodes[1:])


def test_safe_escapes_controls_and_bidi():
    assert safe("a\x1b[31mb\u202ec\x9bd\x7f") == "a\\x1b[31mb\\u202ec\\x9bd\\x7f"
    assert safe("x\ny") == "x↵\ny"
    assert candidate(b"\n") == "↵" and candidate(b"  a ") == "␣␣a␣"
    assert candidate(b"\xe2\x82") == "<0xE2><0x82>"  # as tokenize shows them


def test_e_exports_the_branch_text(smol):
    s = session_for(smol)
    app = drive(s, "enter", "enter", "e")
    assert app.return_value == PARIS + s.branch_text()[len(PARIS) :]
    assert app.return_value.startswith(PARIS + " Paris")


def test_help_and_steps_prompt(smol):
    s = session_for(smol)
    app_out = {}

    async def check(app, pilot):
        await pilot.press("question_mark")
        app_out["help"] = type(app.screen).__name__
        await pilot.press("x")
        await pilot.press("n")
        for _ in range(3):
            await pilot.press("backspace")
        await pilot.press("3", "enter")
        await pilot.press("g")
        app_out["depth"] = s.tree.depth(s.tree.current)

    drive(s, check=check)
    assert app_out["help"] == "Help"
    assert s.steps == 3 and app_out["depth"] == 3


# -- the tree file -----------------------------------------------------------------------


def test_save_and_reload_the_tree(tmp_path, smol):
    s = session_for(smol, params=SamplingParams(temperature=0.5, seed=7))
    path = tmp_path / "tree.json"

    async def check(app, pilot):
        await pilot.press("enter", "left", "down", "enter", "s", "w")
        for _ in range(len("tree.json")):
            await pilot.press("backspace")
        await pilot.press(*str(path), "enter")

    drive(s, check=check)
    assert path.exists(), "w then a file name saves the tree"
    obj = json.loads(path.read_text())
    assert obj["settings"]["temperature"] == 0.5 and obj["prompt"]["text"] == PARIS
    loaded = load_tree(str(path), smol)
    assert [(n.token, n.parent, n.piece, n.how) for n in loaded.nodes] == [
        (n.token, n.parent, n.piece, n.how) for n in s.tree.nodes
    ]
    assert loaded.current == s.tree.current
    again = Session(smol, loaded, SamplingParams(temperature=0.5))
    assert again.branch_text() == s.branch_text()
    np.testing.assert_allclose(
        again.logits(loaded.current).logits, s.logits(s.tree.current).logits, atol=0.05
    )


def _saved(tmp_path, engine, **edit) -> Path:
    s = session_for(engine)
    s.run(3, greedy=True)
    obj = s.tree.to_json()
    for fn in edit.values():
        fn(obj)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize(
    "name, edit, message",
    [
        ("out_of_vocab", lambda o: o["nodes"][1].update(token=10**9), "outside the vocabulary"),
        ("negative_id", lambda o: o["prompt"]["tokens"].__setitem__(0, -5), "outside the vocab"),
        ("bool_id", lambda o: o["nodes"][0].update(token=True), "outside the vocabulary"),
        ("wrong_bytes", lambda o: o["nodes"][0].update(bytes="41"), "tokenizer"),
        ("parent_loop", lambda o: o["nodes"][0].update(parent=2), "not an earlier node"),
        ("bad_prob", lambda o: o["nodes"][0].update(prob=7), "prob"),
        ("no_nodes", lambda o: o.pop("nodes"), 'no "nodes"'),
        ("version", lambda o: o.update(version=99), "version 99"),
        ("other_model", lambda o: o["model"].update(size=123), "another model"),
        # the text panel would show a prompt the model never saw
        (
            "text_not_tokens",
            lambda o: o["prompt"].update(text="The capital of Spain is"),
            "the prompt's tokens are not its text",
        ),
        (
            "chat_flag_flipped",
            lambda o: o["prompt"].update(chat=True),
            "not its text under the chat template",
        ),
        ("chat_not_bool", lambda o: o["prompt"].update(chat="no"), '"chat" is not true'),
        (
            "hot",
            lambda o: o["settings"].update(temperature="hot"),
            "setting \"temperature\" must be a number, got 'hot'",
        ),
        ("top_k_float", lambda o: o["settings"].update(top_k=2.5), '"top_k" must be a whole'),
        ("unknown_setting", lambda o: o["settings"].update(temprature=1), "unknown setting"),
        ("steps_zero", lambda o: o["settings"].update(steps=0), "steps must be from 1"),
        ("negative_t", lambda o: o["settings"].update(temperature=-1), "temperature must be"),
        ("top_p_2", lambda o: o["settings"].update(top_p=2), "top-p must be in"),
        # the panels would show a probability the model never gave
        ("forged_logprob", lambda o: o["nodes"][1].update(logprob=-0.01), "the model 0."),
        ("forged_none", lambda o: o["nodes"][0].update(logprob=None), "probability 0.0000"),
    ],
)
def test_hostile_tree_is_refused_in_one_line(tmp_path, smol, name, edit, message):
    path = _saved(tmp_path, smol, e=edit)
    with pytest.raises(UsageError) as e:
        load_tree(str(path), smol)
    assert message in e.value.message and "\n" not in e.value.message
    assert e.value.exit_code == 2


def test_a_loaded_tree_shows_this_models_numbers(tmp_path, smol):
    # within the tolerance (another backend), the model's own number replaces the file's
    s = session_for(smol)
    s.run(3, greedy=True)
    obj = s.tree.to_json()
    true = [n["logprob"] for n in obj["nodes"]]
    for n in obj["nodes"]:
        n["logprob"] = math.log(min(1.0, math.exp(n["logprob"]) + 0.05))
        n["rank"] = 7
    path = tmp_path / "t.json"
    path.write_text(json.dumps(obj))
    loaded = load_tree(str(path), smol)
    got = [loaded.nodes[i].logprob for i in range(1, len(loaded.nodes))]
    np.testing.assert_allclose(got, true, atol=1e-5)
    assert [loaded.nodes[i].rank for i in range(1, 4)] == [1, 1, 1]  # greedy: the top


def test_bad_json_and_another_models_tree(tmp_path, smol, tiny):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "gptcli-explore", ')
    with pytest.raises(UsageError, match=r"not JSON \(line 1"):
        load_tree(str(bad), smol)
    # a number Python will not read (over 4,300 digits) was a ValueError traceback
    (tmp_path / "digits.json").write_text(
        '{"format": "gptcli-explore", "version": 1' + "1" * 5000 + "}"
    )
    with pytest.raises(UsageError, match="Exceeds the limit .4300 digits. for integer"):
        load_tree(str(tmp_path / "digits.json"), smol)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_tree(str(tmp_path / "bin.json"), smol)
    with pytest.raises(UsageError, match="No such file"):
        load_tree(str(tmp_path / "missing.json"), smol)
    # The tiny model shares SmolLM2's tokenizer: only the file tells the two apart.
    path = _saved(tmp_path, tiny)
    with pytest.raises(UsageError, match="saved with another model"):
        load_tree(str(path), smol)


# -- the command ---------------------------------------------------------------------------


def test_not_a_terminal_points_to_next_and_generate(gptcli):
    r = gptcli("explore", PARIS)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"gptcli: error: {NOT_A_TERMINAL}"
    assert "next --steps" in r.stderr and "generate --probs" in r.stderr


def test_help_does_not_import_textual():
    code = "import sys, gptcli.cli; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_explore_in_a_real_terminal(tmp_path):
    """A newcomer's walk: Paris on top, take ' the' instead, walk on, go back, raise the
    temperature, save the tree, quit; through tmux at 120x40."""
    name = f"gptcli-explore-{time.time_ns()}"
    rc_file = tmp_path / "rc"
    env = clean_env(TERM="xterm-256color")
    cmd = f"cd {tmp_path} && {sys.executable} -m gptcli explore '{PARIS}' -t 1; echo $? > {rc_file}"
    subprocess.run(
        [
            "tmux",
            "-L",
            name,
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "120",
            "-y",
            "40",
            "-e",
            f"PATH={env['PATH']}",
            "sh",
            "-c",
            cmd,
        ],
        check=True,
        env=env,
    )

    def screen() -> str:
        return _tmux("-L", name, "capture-pane", "-p", "-t", name)

    def wait_for(pred, what: str, timeout: float = 120) -> str:
        end = time.time() + timeout
        while time.time() < end:
            s = screen()
            if pred(s):
                return s
            time.sleep(0.2)
        raise AssertionError(f"no {what} on the screen:\n{s}")

    def keys(*k: str) -> None:
        _tmux("-L", name, "send-keys", "-t", name, *k)

    try:
        first = wait_for(lambda s: "␣Paris" in s, "Paris")
        top = [ln for ln in first.splitlines() if re.search(r"▶1\s", ln)]
        assert top and "␣Paris" in top[0], first
        keys("Down")
        wait_for(lambda s: re.search(r"▶2\s+␣the", s), "the selection on ' the'")
        keys("Enter")
        wait_for(lambda s: "The capital of France is the▌" in s, "' the' taken")
        keys("g")
        wait_for(lambda s: "(11)" in s, "ten greedy tokens")
        keys("Left")
        wait_for(lambda s: "(11)" in s and "▌" in s, "a step back")
        keys("T")
        wait_for(lambda s: "T 1.2" in s, "the temperature raised")
        keys("w")
        wait_for(lambda s: "save the tree" in s, "the file prompt")
        keys("Enter")
        end = time.time() + 60  # the file, not the notice: that fades after a few seconds
        while not (tmp_path / "tree.json").exists() and time.time() < end:
            time.sleep(0.2)
        keys("q")
        end = time.time() + 30
        while not rc_file.exists() and time.time() < end:
            time.sleep(0.2)
        assert rc_file.read_text().strip() == "0"
        saved = json.loads((tmp_path / "tree.json").read_text())
        assert saved["settings"]["temperature"] == 1.2 and len(saved["nodes"]) == 11
    finally:
        subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True)


def test_ctrl_c_quits_with_130(smol):
    s = session_for(smol)
    app = drive(s, "ctrl+c")
    assert app.return_code == 130 and app.return_value is None


def test_hostile_tree_through_a_terminal_is_one_line(tmp_path, smollm2):
    import pexpect

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "gptcli-explore", "version": 1, "nodes": [')
    child = pexpect.spawn(
        sys.executable,
        ["-m", "gptcli", "explore", "--threads", "1", "--load", str(bad)],
        env=clean_env(TERM="xterm-256color"),
        timeout=120,
        dimensions=(40, 120),
    )
    child.expect(pexpect.EOF)
    child.close()
    out = re.sub(r"\x1b\[[0-9;]*m", "", child.before.decode("utf-8", errors="replace")).strip()
    assert child.exitstatus == 2
    assert out == f"gptcli: error: cannot open the tree {bad}: not JSON (line 1, column 54)"


def _screen(stream: bytes, rows: int, cols: int) -> list[str]:
    """The last picture a stream of cursor moves and text leaves on a rows x cols grid
    (enough of a terminal for Textual's output: CSI row;col H, everything else skipped)."""
    grid = [[" "] * cols for _ in range(rows)]
    r = c = 0
    text = stream.decode("utf-8", errors="replace")
    esc = re.compile(
        r"\x1b(?:\[([0-9;?<>=$]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-Za-z]|.)"
    )
    i = 0
    while i < len(text):
        m = esc.match(text, i)
        if m:
            if m.group(2) == "H":
                parts = (m.group(1) or "1;1").split(";")
                r, c = int(parts[0] or 1) - 1, int((parts + ["1"])[1] or 1) - 1
            elif m.group(2) == "J" and m.group(1) == "2":
                grid = [[" "] * cols for _ in range(rows)]
            i = m.end()
            continue
        ch = text[i]
        if ch == "\r":
            c = 0
        elif ch == "\n":
            r += 1
        elif ch >= " ":
            if 0 <= r < rows and 0 <= c < cols:
                grid[r][c] = ch
            c += 1
        i += 1
    return ["".join(row) for row in grid]


def test_explore_with_stdout_redirected_takes_the_terminal_size(tmp_path):
    """The README's `gptcli explore "..." > story.txt` in a 120x40 pty: the app is laid
    out at the tty's size (it was 80x24, from stdout's missing size), and `e` writes
    the branch to the file."""
    import pexpect

    story = tmp_path / "story.txt"
    cmd = f"{sys.executable} -m gptcli explore --threads 1 '{PARIS}' > {story}"
    child = pexpect.spawn(
        "/bin/sh",
        ["-c", cmd],
        env=clean_env(TERM="xterm-256color"),
        timeout=120,
        dimensions=(40, 120),
    )
    out, end = b"", time.time() + 120
    try:
        while time.time() < end:
            try:
                out += child.read_nonblocking(1 << 20, timeout=1)
            except pexpect.TIMEOUT:
                if "␣Paris".encode() in out:
                    break  # drawn, and quiet for a second
        screen = _screen(out, 40, 120)
        # One status line, above the footer at the bottom of 40 rows (the 80x24 frame put
        # a second one on row 22, over the first), and one top border of 120 columns.
        status = [i for i, ln in enumerate(screen) if " │ ctx " in ln]
        assert status == [38], "\n".join(screen)
        assert " │ N 10" in screen[38]
        top = screen[0].rstrip()
        assert top.startswith("╭─ text ─") and top.count("╮") == 2 and len(top) == 120, top
        child.send("e")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert story.read_text() == PARIS + "\n"


@pytest.fixture(scope="module")
def tiny_long(tiny_model):
    with Engine(tiny_model, EngineOptions(n_ctx=1024, n_threads=1)) as e:
        yield e


def _long_run(engine, *after_g: str):
    """Press g with N = 500, then after_g at once; what the app showed and the tree."""
    s = session_for(engine, "Once upon a time")
    s.steps = 500
    seen = {}

    async def check(app, pilot):
        await pilot.press("g")
        seen["during"] = s.tree.depth(s.tree.current)
        seen["status"] = plain(app.render_status(), 200)
        for key in after_g:
            await pilot.press(key)
        await pilot.pause(0.3)
        seen["after"] = s.tree.depth(s.tree.current)
        await pilot.pause(0.3)
        seen["later"] = s.tree.depth(s.tree.current)
        seen["notes"] = [n.message for n in app._notifications]

    app = drive(s, check=check)
    return s, app, seen


def test_a_long_run_shows_its_tokens_and_any_key_stops_it(tiny_long):
    # N = 500 took ~40 s in one blocking call: no token shown, no key read till the end.
    s, app, seen = _long_run(tiny_long, "x")
    assert 0 < seen["during"] < 500, seen  # tokens are in the tree while it runs
    assert "running " in seen["status"] and "/500: any key stops" in seen["status"]
    stopped = seen["after"]
    assert 0 < stopped < 500 and seen["later"] == stopped, seen  # and the key stopped it
    assert f"stopped after {stopped} of 500: a key" in seen["notes"]
    # what was taken is the greedy continuation, as a plain run computes it
    fresh = session_for(tiny_long, "Once upon a time")
    fresh.run(stopped, greedy=True)
    assert s.tree.tokens(s.tree.current) == fresh.tree.tokens(fresh.tree.current)


@pytest.mark.parametrize("key, code", [("ctrl+c", 130), ("q", 0)])
def test_ctrl_c_and_q_quit_during_a_long_run(tiny_long, key, code):
    s = session_for(tiny_long, "Once upon a time")
    s.steps = 500
    seen = {}

    async def check(app, pilot):
        await pilot.press("g", key)
        seen["depth"] = s.tree.depth(s.tree.current)

    app = drive(s, check=check)
    assert app.return_code == code and app.return_value is None
    assert seen["depth"] < 500


def test_forcing_a_long_text_runs_like_g_and_a_key_stops_it(tiny_long):
    from textual.widgets import Input

    text = " the cat sat on the mat" * 80  # ~480 tokens, each one decode
    s = session_for(tiny_long, "Once upon a time")
    want = s.force_tokens(text)
    seen = {}

    async def check(app, pilot):
        await pilot.press("f")
        app.screen.query_one(Input).value = text
        await pilot.press("enter", "x")
        await pilot.pause(0.3)
        seen["stopped"] = s.tree.depth(s.tree.current)
        seen["notes"] = [n.message for n in app._notifications]
        await pilot.press("f")
        app.screen.query_one(Input).value = " and then"
        await pilot.press("enter")
        await pilot.pause(0.3)

    drive(s, check=check)
    k = seen["stopped"]
    assert 0 < k < len(want), seen
    assert f"stopped after {k} of {len(want)}: a key" in seen["notes"]
    short = s.force_tokens(" and then")
    path = s.tree.tokens(s.tree.current)[len(s.tree.prompt_tokens) :]
    assert path == want[:k] + short  # the forced tokens, in order, and nothing else
    assert all(s.tree.nodes[n].how == "force" for n in s.tree.path(s.tree.current))


def test_help_fits_a_narrow_terminal(smol):
    # The help box was 86 columns wide whatever the screen: cut on the right under 86.
    from textual.widgets import Static

    from gptcli.explorer.app import HELP

    seen = {}

    async def go():
        app = Explorer(session_for(smol))
        async with app.run_test(size=(70, 40)) as pilot:
            await pilot.press("question_mark")
            await pilot.pause()
            box = app.screen.query_one(Static)
            seen["screen"], seen["region"] = type(app.screen).__name__, box.content_region

    asyncio.run(go())
    region = seen["region"]
    assert seen["screen"] == "Help" and region.x >= 0 and region.right <= 70, region
    longest = max(len(line) for line in HELP.splitlines())
    assert longest > region.width and region.height > len(HELP.splitlines())  # wrapped, whole


def test_an_80_column_terminal_keeps_the_text_and_every_number(smol):
    # The candidates pane was 74 columns whatever the screen: at 80 the text had 6.
    seen = {}

    async def go(size):
        app = Explorer(session_for(smol))
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            seen[size] = (
                app.query_one("#textpane").size.width,
                app.query_one("#candpane").size.width,
                candidate_rows(app),
                app.render_candidates().plain,  # before any cropping to the pane
            )

    for size in ((80, 24), (120, 40)):
        asyncio.run(go(size))
    text_w, cand_w, rows, shown = seen[(80, 24)]
    assert text_w >= 24 and cand_w <= 54, seen[(80, 24)][:2]
    assert all(len(line) <= cand_w for line in shown.splitlines()), shown  # nothing cut
    wide_rows = seen[(120, 40)][2]
    n = min(len(rows), len(wide_rows))
    assert n >= 5 and rows[:n] == wide_rows[:n]  # the same numbers, without the bars
    assert "█" not in shown and "█" in seen[(120, 40)][3]

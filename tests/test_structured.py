"""Structured output: --json-schema, --format json, --grammar through llama.cpp's grammar
sampler, on the tiny model and the embedded SmolLM2.

Oracles: the jsonschema package validates what a schema-constrained run prints; the set
of tokens a grammar allows first is recomputed from the tokens' bytes; forced-token
marks are checked against the unconstrained argmax of the very logits the loop saw.
"""

from __future__ import annotations

import json
import math
import re
import weakref

import jsonschema
import numpy as np
import pytest
from conftest import reference_llama, run_gptcli

import gptcli.llama.grammar as grammar_module
from gptcli.backends.constraints import (
    JSON_GBNF,
    Constraint,
    from_options,
    server_fields,
    unsupported_keywords,
)
from gptcli.backends.events import TokenEvent
from gptcli.backends.generation import Generation
from gptcli.errors import UsageError
from gptcli.llama.engine import Engine, EngineOptions
from gptcli.llama.grammar import Grammar
from gptcli.render.tokens import token_label
from gptcli.sampling.sampler import Sampler, SamplingParams

REVIEW = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "stars": {"type": "integer"},
        "spam": {"type": "boolean"},
    },
    "required": ["sentiment", "stars", "spam"],
    "additionalProperties": False,
}
YES_NO = 'root ::= "yes" | "no"\n'
GREEDY_FULL = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    with Engine(tiny_model, EngineOptions(n_ctx=512)) as engine:
        yield engine


@pytest.fixture(scope="module")
def smol(smollm2):
    with Engine(smollm2, EngineOptions(n_ctx=1024)) as engine:
        yield engine


def run(engine, prompt: str, constraint: Constraint, params=GREEDY_FULL, max_tokens=64, **kw):
    gen = Generation(
        engine,
        engine.tokenize(prompt, special=True),
        Sampler(params, engine.n_vocab),
        max_tokens,
        grammar=constraint.grammar(engine),
        **kw,
    )
    events = list(gen)
    text = "".join(e.text for e in events)
    return gen, [e for e in events if isinstance(e, TokenEvent)], events[-1], text


# -- the grammar sampler -------------------------------------------------------------


def test_first_tokens_allowed_are_exactly_the_prefixes_of_the_words(tiny):
    grammar = Grammar(tiny, YES_NO)
    allowed = set(grammar.allowed_ids().tolist())
    # Oracle from the bytes: a token may start the text when its piece is a non-empty
    # prefix of "yes" or "no" (no end-of-text before anything is written).
    expected = {
        t
        for t in range(tiny.n_vocab)
        if (p := tiny.piece(t))
        and not tiny.is_eog(t)
        and (b"yes".startswith(p) or b"no".startswith(p))
    }
    assert allowed == expected
    assert all(grammar.allows(t) for t in expected)
    mask = grammar.mask(np.zeros(tiny.n_vocab, dtype=np.float32))
    assert set(np.flatnonzero(np.isfinite(mask)).tolist()) == expected


def test_accept_moves_the_grammar_on_and_completion_allows_the_end(tiny):
    grammar = Grammar(tiny, YES_NO)
    (yes,) = tiny.tokenize("yes", add_bos=False)
    assert not grammar.is_complete()
    grammar.accept(yes)
    assert grammar.is_complete()
    assert not any(grammar.allows(t) for t in tiny.tokenize(" maybe", add_bos=False))
    grammar.reset()
    assert grammar.allows(yes) and not grammar.is_complete()


@pytest.mark.parametrize("text", ["", '{"city": "Par', '{"a": [1, 2'])
def test_the_top_k_shortcut_finds_the_same_best_allowed_tokens(smol, text):
    grammar = Grammar(smol, JSON_GBNF)
    logits = smol.prefill(smol.tokenize("Give the capital of France as JSON: ")).copy()
    for token in smol.tokenize(text, add_bos=False):
        grammar.accept(token)
    full = grammar.mask(logits)
    top = grammar.mask_top(logits, 40)
    if top is None:  # fewer than 40 allowed among the best 1024: the full mask is used
        assert np.isfinite(full[np.argsort(-logits)[:1024]]).sum() < 40
        return
    best = np.argsort(-full, kind="stable")[:40]
    assert set(best.tolist()) == set(np.argsort(-top, kind="stable")[:40].tolist())
    assert np.array_equal(top[best], full[best])


# A grammar of digits: a model with random weights wants something else at every step.
DIGITS = 'root ::= "[" ([0-9] ","){400} "0]"\n'


def whole_masks_only(monkeypatch):
    """Grammars ask llama.cpp about every token, as before the prefix probes."""
    monkeypatch.setattr(grammar_module, "_INDEXES", weakref.WeakKeyDictionary())
    monkeypatch.setattr(grammar_module, "_INDEX_AFTER", 10**9)


def ends_mid_character(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.reason == "unexpected end of data"
    return False


@pytest.mark.parametrize(
    "name", ["digits", "json", "spaced words", "multibyte", "token rule", "literal < and !"]
)
def test_prefix_probed_masks_equal_whole_vocabulary_masks(tiny, name, monkeypatch):
    the = tiny.tokenize(" the", add_bos=False)[0]
    gbnf = {
        "digits": DIGITS,
        "json": JSON_GBNF,
        "spaced words": 'root ::= (" yes" | " no" | " maybe" | "\\n")+ "."\n',
        "multibyte": 'root ::= "é" [à-ÿ]+ "日本語" (" " [a-zß-ü]+ | [一-龥]+)* "。"\n',
        # Token rules match by id: a token's text says nothing there.
        "token rule": f'root ::= "x"? (<[{the}]> [0-9])+\n',
        "literal < and !": 'root ::= ("<" [a-z]+ "!" | " " [<!]+)+\n',
    }[name]
    monkeypatch.setattr(grammar_module, "_INDEX_AFTER", 0)  # probe from the first mask on
    fast, whole = Grammar(tiny, gbnf), Grammar(tiny, gbnf)  # the same grammar, twice
    rng = np.random.default_rng(7)
    asked, mid_character = [], 0
    for _walk in range(2):
        fast.reset()
        whole.reset()
        text = b""
        for _ in range(30):
            logits = rng.standard_normal(tiny.n_vocab).astype(np.float32)
            expected = whole.mask_all(logits)
            assert np.array_equal(fast.mask(logits), expected), text
            asked.append(fast.last_mask_asked)
            mid_character += ends_mid_character(text)
            allowed = [int(t) for t in np.flatnonzero(np.isfinite(expected))]
            allowed = [t for t in allowed if not tiny.is_eog(t)]
            if not allowed:
                break
            token = int(rng.choice(allowed))
            fast.accept(token)
            whole.accept(token)
            text += tiny.piece(token)
    if name == "digits":
        assert max(asked) < 1000  # the probes really cut the question down
    if name == "multibyte":
        assert mid_character > 0  # states partway through a character were checked
    if name == "token rule":
        assert set(asked) == {tiny.n_vocab}


def test_greedy_under_a_grammar_it_fights_is_llama_cpps_grammar_then_greedy(
    tiny_model, monkeypatch
):
    # Oracle: llama-cpp-python's own chain, the grammar sampler first, then greedy.
    from llama_cpp import LlamaGrammar

    monkeypatch.setattr(grammar_module, "_INDEX_AFTER", 0)  # prefix probes at every step
    with Engine(tiny_model, EngineOptions(n_ctx=512, n_threads=1)) as engine:
        digits = Constraint("grammar", DIGITS)
        _, events, _, text = run(engine, "Write JSON:", digits, GREEDY_FULL, max_tokens=48)
    llama = reference_llama(tiny_model, n_ctx=512, n_threads=1, flash_attn=True)
    try:
        out = llama.create_completion(
            "Write JSON:", max_tokens=48, temperature=0.0, repeat_penalty=1.0,
            grammar=LlamaGrammar.from_string(DIGITS, verbose=False),
        )  # fmt: skip
    finally:
        llama.close()
    assert sum(e.forced is not None for e in events) >= 40  # the model fought the grammar
    assert text == out["choices"][0]["text"]
    assert re.fullmatch(r"\[([0-9],){23}[0-9]?", text), text


@pytest.mark.parametrize("gbnf", [DIGITS, JSON_GBNF], ids=["digits", "json"])
def test_prefix_probes_leave_sampled_output_and_reported_draws_unchanged(tiny, gbnf, monkeypatch):
    def sample(seed: int):
        params = SamplingParams(seed=seed)  # T 0.8, top-k 40, top-p 0.95, min-p 0.05
        tiny.reset()  # the prompt evaluated afresh: a cached prefix rounds differently
        _, events, _, _ = run(tiny, "Write JSON:", Constraint("grammar", gbnf), params, 40)
        return [
            (e.id, e.forced, e.draw.prob, e.draw.ids.tolist(), e.draw.probs.tolist())
            for e in events
        ]

    monkeypatch.setattr(grammar_module, "_INDEX_AFTER", 0)
    fast = [sample(seed) for seed in range(3)]
    whole_masks_only(monkeypatch)
    assert [sample(seed) for seed in range(3)] == fast
    assert any(forced for run_ in fast for _, forced, *_ in run_)


@pytest.mark.parametrize("seed", range(8))
def test_yes_no_grammar_gives_only_its_words(tiny, seed):
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
    _, _, finish, text = run(tiny, "Answer:", Constraint("grammar", YES_NO), params)
    assert text in ("yes", "no")
    assert finish.reason == "stop"


# -- forced tokens ---------------------------------------------------------------------


def recording(engine):
    """Copies of the logits the loop receives, in order (the engine itself is real)."""
    seen = []
    prefill, step = engine.prefill, engine.step

    def rec(logits):
        seen.append(logits.copy())
        return logits

    engine.prefill = lambda tokens: rec(prefill(tokens))
    engine.step = lambda token: rec(step(token))
    return seen, (prefill, step)


@pytest.mark.parametrize("which", ["tiny", "smol"])
def test_forced_marks_exactly_where_the_argmax_was_forbidden(which, request):
    engine = request.getfixturevalue(which)
    seen, originals = recording(engine)
    try:
        prompt = "Give the capital of France as JSON: "
        gen, events, finish, _ = run(engine, prompt, Constraint("json", JSON_GBNF), max_tokens=24)
    finally:
        engine.prefill, engine.step = originals
    replay = Grammar(engine, JSON_GBNF)  # the same grammar, advanced token by token
    forced_seen = 0
    for event, logits in zip(events, seen, strict=False):  # one more: the last step
        argmax = int(np.argmax(logits))
        probs = np.exp(logits.astype(np.float64) - logits.max())
        probs /= probs.sum()
        masked = replay.mask(logits)
        if replay.allows(argmax):
            assert event.forced is None
            assert event.id == argmax
        else:
            forced_seen += 1
            assert event.forced is not None
            assert event.forced.wanted == argmax
            assert math.isclose(event.forced.wanted_prob, probs[argmax], rel_tol=1e-4)
            assert event.id == int(np.argmax(masked))  # greedy in the masked distribution
        # The probability shown is the one in the masked distribution.
        allowed = np.isfinite(masked)
        assert math.isclose(event.draw.prob, probs[event.id] / probs[allowed].sum(), rel_tol=1e-4)
        replay.accept(event.id)
    assert forced_seen >= 1  # the model wanted something else than `{` at least once


# -- documents -------------------------------------------------------------------------


def test_schema_constrained_generation_on_smollm2_validates(smol):
    constraint = from_options(json.dumps(REVIEW), None, None)
    prompt = (
        "<|im_start|>user\nExtract the review as JSON: 'Great phone, five stars.'"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    gen, _, finish, text = run(smol, prompt, constraint, max_tokens=60)
    assert gen.grammar.is_complete(), text
    jsonschema.validate(json.loads(text), REVIEW)


def test_format_json_gives_one_json_value(smol):
    prompt = "Give the capital of France as JSON: "
    gen, _, finish, text = run(smol, prompt, Constraint("json", JSON_GBNF), max_tokens=40)
    assert gen.grammar.is_complete(), text
    json.loads(text)


def test_each_line_with_a_schema_gives_valid_json_lines(tiny_model, tmp_path):
    schema = tmp_path / "review.json"
    schema.write_text(json.dumps(REVIEW))
    lines = [f"review number {i}: {'good' if i % 2 else 'bad'} product" for i in range(12)]
    r = run_gptcli(
        "generate", "-m", str(tiny_model), "--each-line", "--json-schema", str(schema),
        "--seed", "1", "-n", "80", "--threads", "1", "Extract the sentiment:",
        input="\n".join(lines) + "\n", timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert len(out) == len(lines)
    for line in out:
        jsonschema.validate(json.loads(line), REVIEW)


def test_yes_no_grammar_on_the_command_line(smollm2, tmp_path):
    grammar = tmp_path / "yn.gbnf"
    grammar.write_text(YES_NO)
    r = run_gptcli("generate", "--grammar", str(grammar), "Is the sky blue? Answer yes or no.")
    assert r.returncode == 0, r.stderr
    assert r.stdout in ("yes\n", "no\n")


def test_probs_json_marks_forced_tokens(smollm2):
    r = run_gptcli(
        "generate", "--raw", "-t", "0", "--format", "json", "-n", "30", "--json",
        "Give the capital of France as JSON: ",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    tokens, summary = objs[:-1], objs[-1]
    assert summary["finish_reason"] == "stop"
    forced = [o for o in tokens if "forced" in o]
    assert forced and forced[0] is tokens[0]  # the model wanted a newline, not `{`
    assert 0 < forced[0]["forced"]["wanted_prob"] <= 1
    assert forced[0]["forced"]["wanted"]["token"] != tokens[0]["token"]
    json.loads("".join(o["token"] for o in tokens))


def test_max_tokens_before_the_document_is_complete_exits_1_with_the_text(smollm2):
    r = run_gptcli("generate", "--json-schema", json.dumps(REVIEW), "-n", "3", "A review: ok")
    assert r.returncode == 1
    assert r.stdout.strip()  # the partial document is printed
    assert "before the JSON document was complete" in r.stderr
    assert r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "files", "message"),
    [
        (["--json-schema", "{not json"], {}, "is not valid JSON"),
        (["--json-schema", "schema.json"], {"schema.json": "[1, 2"}, "is not valid JSON"),
        (["--json-schema", "missing.json"], {}, "no such file"),
        (["--json-schema", '{"type": "integer", "minimum": 3}'], {}, "/minimum"),
        (["--json-schema", '{"type": "frobnicate"}'], {}, "frobnicate"),
        (["--format", "yaml"], {}, "--format takes json"),
        (["--grammar", "g.gbnf"], {"g.gbnf": "root ::= (\n"}, "does not parse"),
        (["--grammar", "g.gbnf"], {"g.gbnf": 'start ::= "x"\n'}, "does not parse"),
        (["--grammar", "g.gbnf"], {"g.gbnf": 'root ::= ""\n'}, "no token can start"),
        (["--grammar", "g.gbnf", "--format", "json"], {"g.gbnf": YES_NO}, "give one of"),
    ],
)
def test_bad_constraints_are_one_line_and_exit_2(tiny_model, tmp_path, args, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [str(tmp_path / a) if a in files or a == "missing.json" else a for a in args]
    r = run_gptcli("generate", "-m", str(tiny_model), *args, "Hello")
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptcli: error: "), r.stderr
    assert message in lines[0]


def test_unsupported_keywords_are_found_where_they_are():
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "maximum": 5}, "minimum": {"type": "string"}},
        "$defs": {"x": {"not": {}}},
        "items": [{"uniqueItems": True}],
    }
    assert sorted(unsupported_keywords(schema)) == [
        "/$defs/x/not",
        "/items/0/uniqueItems",
        "/properties/n/maximum",
    ]
    with pytest.raises(UsageError):
        from_options('{"type": "integer", "multipleOf": 2}', None, None)


# -- next, chat, --probs, servers ----------------------------------------------------------


def test_next_shows_the_masked_distribution_beside_the_model(smollm2):
    r = run_gptcli("next", "--format", "json", "--top", "5", "--json", "The capital of France is")
    assert r.returncode == 0, r.stderr
    (obj,) = [json.loads(line) for line in r.stdout.splitlines()]
    masked = obj["masked"]["top"]
    assert obj["top"][0]["token"] == " Paris"  # the model's own first choice
    assert masked and all(t["token"].lstrip()[:1] in '{["-0123456789tfn' for t in masked)
    assert math.isclose(sum(t["probs"][0] for t in masked), masked[-1]["cumulative"][0])
    chart = run_gptcli("next", "--format", "json", "--top", "5", "The capital of France is")
    assert chart.returncode == 0, chart.stderr
    assert "under the grammar" in chart.stdout and "✗" in chart.stdout


def test_probs_marks_where_the_grammar_overruled_the_model(smollm2):
    r = run_gptcli(
        "generate", "--raw", "-t", "0", "--format", "json", "-n", "30", "--probs",
        "Give the capital of France as JSON: ",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    # The first token, its probability in the masked distribution, then what the model
    # wanted there (a newline, which JSON cannot start with).
    newline = token_label(b"\n")  # the notation every view uses for a newline
    first, _, rest = r.stdout.partition(f"⟨wanted {newline} ")
    assert re.fullmatch(r"\S+\[[01]\.\d\d\]", first), r.stdout
    assert re.match(r"[01]\.\d\d⟩", rest), r.stdout


def test_chat_replies_are_one_json_document_each(smollm2):
    r = run_gptcli(
        "chat", "-t", "0", "-n", "60", "--threads", "1", "--json-schema", json.dumps(REVIEW),
        input="Review: great phone, five stars.\nReview: broken on arrival.\n", timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    replies = [block for block in r.stdout.split("\n\n") if block.strip()]
    assert len(replies) == 2
    for reply in replies:
        jsonschema.validate(json.loads(reply), REVIEW)


def test_server_fields_take_each_servers_form():
    schema = from_options(json.dumps(REVIEW), None, None)
    any_json = from_options(None, "json", None)
    gbnf = Constraint("grammar", YES_NO)
    llama = "llama.cpp's llama-server"
    assert server_fields(schema, llama) == {"json_schema": REVIEW}
    assert server_fields(gbnf, llama) == {"grammar": YES_NO}
    assert server_fields(any_json, "Ollama") == {"format": "json"}
    assert server_fields(schema, "Ollama") == {"format": REVIEW}
    fmt = server_fields(schema, "vLLM")["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == REVIEW
    assert server_fields(any_json, "vLLM") == {"response_format": {"type": "json_object"}}
    for name in ("Ollama", "vLLM"):
        with pytest.raises(UsageError, match="no GBNF grammar"):
            server_fields(gbnf, name)

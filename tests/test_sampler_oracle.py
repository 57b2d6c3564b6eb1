"""gptcli's numpy sampler against an independent oracle: llama.cpp's own sampler chain
(penalties, top-k, top-p, min-p, temperature, dist) applied through llama_cpp's
low-level API to the same logits. Hypothesis draws the logits and the settings.

Tolerance: llama.cpp computes in float32 (expf, a float32 running sum in top-p), gptcli
in float64 from float32 logits, so probabilities agree to about 1e-6 relative; 2e-5
absolute plus 1e-4 relative leaves room for a 49,152-token sum. Cases where a candidate
sits within 1e-4 of a cut-off (a cumulative mass next to top-p, a ratio next to min-p,
two logits tied at the top-k edge) are skipped: there float32 and float64 may
legitimately decide differently, and the decision says nothing about correctness.
"""

from __future__ import annotations

import ctypes
import math
import re

import llama_cpp
import numpy as np
import pytest
from conftest import reference_llama
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gptcli.sampling.sampler import Sampler, SamplingParams, softmax

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)

MARGIN = 1e-4


def oracle_llama(path, **kwargs):
    """llama-cpp-python's Llama with every position's logits (conftest.reference_llama)."""
    return reference_llama(path, logits_all=True, flash_attn=True, **kwargs)


def llama_cpp_chain(logits: np.ndarray, history: list[int], p: SamplingParams, seed: int = 1):
    """The candidates and probabilities llama.cpp's chain leaves, in the order gptcli
    documents: penalties, top-k, top-p, min-p, temperature, then dist (which normalises
    the probabilities it draws from). Returns (ids, probs, selected token)."""
    n = len(logits)
    data = np.zeros(n, dtype=TOKEN_DATA)
    data["id"] = np.arange(n)
    data["logit"] = logits
    arr = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=n, selected=-1, sorted=False
    )
    params = llama_cpp.llama_sampler_chain_default_params()
    chain = llama_cpp.llama_sampler_chain_init(params)
    try:
        last_n = p.repeat_last_n if p.repeat_penalty != 1.0 else 0
        pen = llama_cpp.llama_sampler_init_penalties(n, last_n, p.repeat_penalty, 0.0, 0.0)
        for tok in history:
            llama_cpp.llama_sampler_accept(pen, tok)
        for s in (
            pen,
            llama_cpp.llama_sampler_init_top_k(p.top_k),
            llama_cpp.llama_sampler_init_top_p(p.top_p, 0),
            llama_cpp.llama_sampler_init_min_p(p.min_p, 0),
            llama_cpp.llama_sampler_init_temp(p.temperature),
            llama_cpp.llama_sampler_init_dist(seed),
        ):
            llama_cpp.llama_sampler_chain_add(chain, s)
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
    finally:
        llama_cpp.llama_sampler_free(chain)  # frees the samplers it holds
    size = arr.size
    # The samplers may point `data` at their own buffer: read through the pointer.
    out = np.ctypeslib.as_array(
        ctypes.cast(arr.data, ctypes.POINTER(ctypes.c_uint8)), shape=(size * TOKEN_DATA.itemsize,)
    ).view(TOKEN_DATA)
    out = out.copy()
    return out["id"].astype(np.int64), out["p"].astype(np.float64), int(out["id"][arr.selected])


def near_a_cut(logits: np.ndarray, history: list[int], p: SamplingParams) -> bool:
    """Is any truncation decision within MARGIN of its threshold (float64, independent)?"""
    x = logits.astype(np.float64)
    if p.repeat_penalty != 1.0 and p.repeat_last_n:
        ids = np.unique(np.asarray(history[-p.repeat_last_n :], dtype=np.int64))
        x[ids] = np.where(x[ids] > 0, x[ids] / p.repeat_penalty, x[ids] * p.repeat_penalty)
    order = np.argsort(-x, kind="stable")
    xs = x[order]
    if 0 < p.top_k < len(x):
        if xs[p.top_k - 1] - xs[p.top_k] < MARGIN:
            return True
        xs = xs[: p.top_k]
    probs = softmax(xs)
    if p.top_p < 1.0 and np.min(np.abs(np.cumsum(probs) - p.top_p)) < MARGIN:
        return True
    if p.min_p > 0.0:
        ratio = xs - xs[0]  # log(p_i / p_max)
        if np.min(np.abs(ratio - math.log(p.min_p))) < MARGIN:
            return True
    return False


def as_map(ids, probs) -> dict[int, float]:
    return {int(i): float(q) for i, q in zip(ids, probs, strict=True)}


def assert_same_distribution(ours, theirs):
    a_ids, a_p = np.asarray(ours.ids), np.asarray(ours.probs)
    b_ids, b_p = np.asarray(theirs[0]), np.asarray(theirs[1])
    sa, sb = np.argsort(a_ids), np.argsort(b_ids)
    if not np.array_equal(a_ids[sa], b_ids[sb]):
        only_a, only_b = np.setdiff1d(a_ids, b_ids), np.setdiff1d(b_ids, a_ids)
        raise AssertionError(
            f"kept sets differ: only gptcli {only_a[:10].tolist()}, "
            f"only llama.cpp {only_b[:10].tolist()}"
        )
    diff = np.abs(a_p[sa] - b_p[sb])
    bad = diff > 2e-5 + 1e-4 * np.abs(b_p[sb])
    assert not bad.any(), (
        f"probabilities differ for tokens {a_ids[sa][bad][:10].tolist()}: "
        f"gptcli {a_p[sa][bad][:5].tolist()}, llama.cpp {b_p[sb][bad][:5].tolist()}"
    )


VOCABS = st.sampled_from([2, 7, 300, 1000, 5000, 49152])


@st.composite
def cases(draw, truncation: str = "any"):
    n = draw(VOCABS)
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.5, 2.0, 5.0, 12.0]))
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(n) * scale).astype(np.float32)
    history = rng.integers(0, n, size=draw(st.integers(0, 80))).tolist()
    temperature = draw(st.sampled_from([0.3, 0.7, 1.0, 1.3, 2.5]))
    top_k = draw(st.sampled_from([0, 1, 2, 5, 40, 100]))
    top_p = draw(st.sampled_from([1.0, 0.95, 0.8, 0.5, 0.1]))
    min_p = draw(st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.9]))
    if truncation != "any":  # exactly one truncation on
        top_k = top_k if truncation == "top_k" else 0
        top_p = top_p if truncation == "top_p" else 1.0
        min_p = min_p if truncation == "min_p" else 0.0
    params = SamplingParams(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repeat_penalty=draw(st.sampled_from([1.0, 1.1, 1.5, 0.8])),
        repeat_last_n=draw(st.sampled_from([0, 1, 16, 64])),
        seed=seed,
    )
    return logits, history, params


ORACLE = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(logits, history, params):
    assume(not near_a_cut(logits, history, params))
    draw = Sampler(params, len(logits)).sample(logits, history)
    theirs = llama_cpp_chain(logits, history, params)
    assert_same_distribution(draw, theirs)
    # The reported probability of the drawn token is its probability in that distribution.
    assert draw.prob == pytest.approx(as_map(*theirs[:2])[draw.token], abs=2e-5, rel=1e-4)
    assert draw.probs.sum() == pytest.approx(1.0, abs=1e-9)


@ORACLE
@given(cases())
def test_distribution_equals_llama_cpp_chain(case):
    check(*case)


@pytest.mark.parametrize("truncation", ["top_k", "top_p", "min_p", "none"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_truncation_alone_equals_llama_cpp(truncation, data):
    check(*data.draw(cases(truncation)))


def test_oracle_distinguishes_a_wrong_temperature():
    # The oracle itself must be able to fail: a sampler at T=1 is not llama.cpp at T=0.5.
    logits = np.random.default_rng(3).standard_normal(500).astype(np.float32) * 3
    params = SamplingParams(temperature=0.5, top_k=40, top_p=0.9, min_p=0.05)
    wrong = Sampler(SamplingParams(temperature=1.0, top_k=40, top_p=0.9, min_p=0.05), 500)
    with pytest.raises(AssertionError):
        assert_same_distribution(wrong.sample(logits), llama_cpp_chain(logits, [], params))
    assert_same_distribution(
        Sampler(params, 500).sample(logits), llama_cpp_chain(logits, [], params)
    )


def test_penalty_with_history_matches_and_moves_probabilities():
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal(1000) * 4).astype(np.float32)
    top = np.argsort(-logits)[:5].tolist()
    logits[top[1]] = -abs(logits[top[1]])  # a negative logit in the history too
    params = SamplingParams(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.3)
    history = top * 3
    ours = Sampler(params, 1000).sample(logits, history)
    assert_same_distribution(ours, llama_cpp_chain(logits, history, params))
    plain = Sampler(params, 1000).sample(logits, [])
    assert as_map(ours.ids, ours.probs)[top[0]] < as_map(plain.ids, plain.probs)[top[0]]
    # Tokens older than repeat_last_n are not penalised.
    short = SamplingParams(**{**params.__dict__, "repeat_last_n": 2})
    old = [top[0]] + [top[3], top[4]]
    assert_same_distribution(
        Sampler(short, 1000).sample(logits, old), llama_cpp_chain(logits, old, short)
    )
    got = Sampler(short, 1000).sample(logits, old)
    assert as_map(got.ids, got.probs)[top[0]] == pytest.approx(
        as_map(plain.ids, plain.probs)[top[0]], rel=0.2
    )


# -- the draw ------------------------------------------------------------------------------

# Upper 0.1% points of the chi-square distribution, by degrees of freedom.
CHI2_999 = {3: 16.266, 5: 20.515, 9: 27.877}


@pytest.mark.parametrize(
    "settings_, k",
    [
        (dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), 4),
        (dict(temperature=0.7, top_k=6, top_p=1.0, min_p=0.0), 6),
        (dict(temperature=1.8, top_k=0, top_p=0.9, min_p=0.02), 10),
    ],
)
def test_draw_frequencies_match_the_reported_probabilities(settings_, k):
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal(k if settings_["top_k"] == 0 else 50) * 1.5).astype(np.float32)
    sampler = Sampler(SamplingParams(seed=2024, **settings_), len(logits))
    n = 20_000
    first = sampler.sample(logits)
    ids, probs = first.ids, first.probs
    tokens = [first.token] + [sampler.sample(logits).token for _ in range(n - 1)]
    where = {int(t): j for j, t in enumerate(ids)}
    assert all(t in where for t in tokens), "drew a token outside the reported distribution"
    counts = np.bincount([where[t] for t in tokens], minlength=len(ids))
    expected = probs * n
    big = expected >= 5  # the chi-square approximation needs 5 expected per cell
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    critical = CHI2_999.get(df) or df + 3.1 * math.sqrt(2 * df) + 3  # ~0.1% upper tail
    assert chi2 < critical, (chi2, df, counts.tolist(), expected.round(1).tolist())
    # And the test can fail: the same counts against a flattened distribution.
    flat = np.full(len(obs), n / len(obs))
    if len(obs) > 1:
        assert float(((obs - flat) ** 2 / flat).sum()) > critical


def test_greedy_takes_the_most_likely_candidate_after_the_penalty():
    logits = np.array([5.0, 4.9, 1.0, -2.0], dtype=np.float32)
    params = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.2)
    assert Sampler(params, 4).sample(logits, [0]).token == 1  # 5/1.2 < 4.9
    assert Sampler(params, 4).sample(logits, []).token == 0


# -- through the CLI: the numbers printed are the oracle's -----------------------------------

PROMPT = "The capital of France is"
CLI_SETTINGS = dict(temperature=1.3, top_k=12, top_p=0.9, min_p=0.02, repeat_penalty=1.0)
CLI_ARGS = ("-t", "1.3", "--top-k", "12", "--top-p", "0.9", "--min-p", "0.02", "--seed", "11")


@pytest.fixture(scope="module")
def reference_logits(smollm2):
    """llama-cpp-python's high-level Llama, raw logits at every position (the same flash
    attention setting as gptcli's engine, as in test_probs.py)."""
    llm = oracle_llama(smollm2, n_ctx=512)

    def rows(tokens: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)

    rows.tokenize = lambda text: llm.tokenize(text.encode(), add_bos=False)
    yield rows
    llm.close()


GEN_ARGS = ("generate", "--raw", "-n", "10", *CLI_ARGS)


@pytest.fixture(scope="module")
def json_tokens():
    """One --json run; --probs with 15 alternatives shows the 16 most likely (the drawn
    token and 15 others), so 16 here."""
    import json

    from conftest import run_gptcli

    r = run_gptcli(*GEN_ARGS, "--json", "--alternatives", "16", PROMPT)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()][:-1]


def test_json_logprobs_at_t_1_3_are_the_llama_cpp_chains(json_tokens, reference_logits):
    tokens = json_tokens
    prompt = reference_logits.tokenize(PROMPT)
    ids = prompt + [t["id"] for t in tokens]
    rows = reference_logits(ids[:-1])
    params = SamplingParams(**CLI_SETTINGS)
    for k, obj in enumerate(tokens):
        logits = rows[len(prompt) - 1 + k]
        kept, probs, _ = llama_cpp_chain(logits, ids[: len(prompt) + k], params)
        oracle = as_map(kept, probs)
        assert obj["id"] in oracle, f"token {k} was drawn from outside llama.cpp's kept set"
        # Logits from two llama.cpp runs agree to ~1e-4 (test_probs.py): so do these.
        assert obj["logprob"] == pytest.approx(math.log(oracle[obj["id"]]), abs=2e-3), k
        for alt in obj["top_logprobs"]:
            if alt["id"] in oracle:
                assert alt["logprob"] == pytest.approx(math.log(oracle[alt["id"]]), abs=2e-3)
            else:
                assert alt["logprob"] is None, f"step {k}: {alt['id']} was cut by llama.cpp"
        assert sum(a["logprob"] is None for a in obj["top_logprobs"]) >= 16 - len(oracle)


def test_alternatives_mark_cut_candidates_and_the_rank_drawn(gptcli, json_tokens):
    tokens = json_tokens
    lines = gptcli(*GEN_ARGS, "--probs", "--alternatives", "15", PROMPT).stdout.splitlines()
    assert len(lines) == len(tokens)
    ranks = []
    for line, obj in zip(lines, tokens, strict=True):
        head, _, tail = line.partition("│")
        rank = [a["id"] for a in obj["top_logprobs"]].index(obj["id"]) + 1
        ranks.append(rank)
        mark = re.search(r"#(\d+)\s*$", head)
        assert (int(mark.group(1)) if mark else 1) == rank, line
        others = [a for a in obj["top_logprobs"] if a["id"] != obj["id"]][:15]
        shown = re.findall(r"(cut|\d\.\d\d|\de-\d+|1\.00)(?=\s|$)", tail)
        assert len(shown) == len(others), line
        for s, a in zip(shown, others, strict=True):
            assert (s == "cut") == (a["logprob"] is None), (line, a)
    assert any(r > 1 for r in ranks), "at T=1.3 some token should not be the most likely"
    assert any("cut" in ln for ln in lines)


# -- the alternatives reported with a draw ------------------------------------------------


@pytest.mark.parametrize(
    "settings_",
    [
        dict(temperature=1.4, top_k=0, top_p=1.0, min_p=0.0),  # nothing cut
        dict(temperature=0.8, top_k=4, top_p=1.0, min_p=0.0),  # fewer kept than asked
        dict(temperature=1.2, top_k=0, top_p=0.7, min_p=0.05, repeat_penalty=1.3),
    ],
)
def test_alternatives_carry_the_oracles_probabilities(settings_):
    rng = np.random.default_rng(21)
    sampler = Sampler(SamplingParams(seed=3, **settings_), 3000)
    params = sampler.params
    logits = (rng.standard_normal(3000) * 3).astype(np.float32)
    for step in range(3):  # the same sampler again: no state left from the step before
        if step:
            # The four most likely swap places with the next four: kept a step ago, now
            # ranked 5 to 8 (cut by top-k 4), still among the ten alternatives shown.
            o = np.argsort(-logits, kind="stable")
            logits = logits.copy()
            logits[o[:4]], logits[o[4:8]] = logits[o[4:8]].copy(), logits[o[:4]].copy()
        history = rng.integers(0, 3000, size=20).tolist()
        draw = sampler.sample(logits, history, n_top=10, model_probs=True)
        kept, probs, _ = llama_cpp_chain(logits, history, params)
        oracle = as_map(kept, probs)
        x = logits.astype(np.float64)
        if params.repeat_penalty != 1.0:
            ids = np.unique(history)
            x[ids] = np.where(
                x[ids] > 0, x[ids] / params.repeat_penalty, x[ids] * params.repeat_penalty
            )
        assert [a.id for a in draw.top] == np.argsort(-x, kind="stable")[:10].tolist(), step
        model = logits.astype(np.float64) - np.logaddexp.reduce(logits.astype(np.float64))
        for a in draw.top:
            assert a.model_logprob == pytest.approx(model[a.id], abs=1e-5)
            if a.id in oracle:
                assert a.logprob == pytest.approx(math.log(oracle[a.id]), abs=1e-4), (step, a)
            else:
                assert a.logprob is None, (step, a)
        assert draw.model_logprob == pytest.approx(model[draw.token], abs=1e-5)

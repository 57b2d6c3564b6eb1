"""sampling/distribution.py and backends/scoring.py in-process, against formulas written out here
(plain Python loops, float64) and llama-cpp-python's own logits: the fast, exact
tests a mutation run uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli.sampling.distribution import (
    entropy_bits,
    log_softmax_rows,
    next_tokens,
    parse_temperatures,
    perplexity,
    probs_at,
    surprisal_bits,
)

LOGITS = st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=40)


def softmax_loop(xs: list[float], t: float = 1.0) -> list[float]:
    m = max(xs)
    e = [math.exp((x - m) / t) for x in xs]
    s = sum(e)
    return [v / s for v in e]


@settings(max_examples=60, deadline=None)
@given(LOGITS, st.sampled_from([0.25, 0.5, 1.0, 1.7, 3.0]))
def test_probs_and_log_softmax_equal_the_written_out_formula(xs, t):
    want = softmax_loop(xs, t)
    assert probs_at(np.array(xs), t).tolist() == pytest.approx(want, abs=1e-12)
    lp = log_softmax_rows(np.array([xs, xs[::-1]]))
    assert lp[0].tolist() == pytest.approx([math.log(p) for p in softmax_loop(xs)], abs=1e-9)
    assert lp[1].tolist() == pytest.approx(lp[0][::-1].tolist(), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(LOGITS)
def test_entropy_is_minus_sum_p_log2_p(xs):
    p = softmax_loop(xs)
    want = -sum(q * math.log2(q) for q in p if q > 0)
    assert entropy_bits(np.array(p)) == pytest.approx(want, abs=1e-9)


def test_greedy_and_known_values():
    assert probs_at(np.array([0.1, 2.0, 0.5, 2.0]), 0).tolist() == [0.0, 1.0, 0.0, 0.0]
    assert entropy_bits(np.array([0.5, 0.5, 0.0])) == pytest.approx(1.0)
    assert entropy_bits(np.array([1.0, 0.0])) == 0.0
    assert surprisal_bits(math.log(0.25)) == pytest.approx(2.0)
    assert surprisal_bits(0.0) == 0.0
    assert perplexity([math.log(0.5), math.log(0.125)]) == pytest.approx(4.0)
    assert parse_temperatures("0") == [0.0]
    assert parse_temperatures(" 2 ,0.5") == [2.0, 0.5]
    for bad, why in [("", "is not a number"), ("x", "is not a number"), ("-1", "or more"),
                     ("inf", "or more"), ("1,,2", "is not a number")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            parse_temperatures(bad)


def test_next_tokens_ranks_and_accumulates_per_temperature():
    logits = np.log(np.array([0.1, 0.4, 0.2, 0.3]))
    nt = next_tokens(logits, 3, [1.0, 0.5, 0.0])
    assert [c.id for c in nt.candidates] == [1, 3, 2]
    assert [c.logprob for c in nt.candidates] == pytest.approx(np.log([0.4, 0.3, 0.2]).tolist())
    half = softmax_loop(np.log([0.1, 0.4, 0.2, 0.3]).tolist(), 0.5)
    assert [c.probs[1] for c in nt.candidates] == pytest.approx([half[1], half[3], half[2]])
    assert [c.probs[2] for c in nt.candidates] == [1.0, 0.0, 0.0]
    assert [c.cumulative[0] for c in nt.candidates] == pytest.approx([0.4, 0.7, 0.9])
    assert [c.cumulative[2] for c in nt.candidates] == [1.0, 1.0, 1.0]
    assert nt.entropy_bits[0] == pytest.approx(entropy_bits(np.array([0.1, 0.4, 0.2, 0.3])))
    assert nt.entropy_bits[2] == 0.0 and nt.temperatures == (1.0, 0.5, 0.0)
    assert [c.id for c in next_tokens(logits, 10, [1.0]).candidates] == [1, 3, 2, 0]
    assert len(next_tokens(logits, 4, [1.0]).candidates) == 4


# -- scoring, in windows, against llama-cpp-python ---------------------------------------


def test_score_tokens_in_windows_equals_llama_cpp_python(tiny_model):
    from conftest import reference_llama

    from gptcli.backends.scoring import score_tokens
    from gptcli.llama.engine import Engine, EngineOptions

    rng = np.random.default_rng(4)
    with Engine(tiny_model, EngineOptions(n_ctx=32)) as engine:
        tokens = rng.integers(100, 5000, size=90).tolist()
        scores = score_tokens(engine, tokens)
    llm = reference_llama(
        tiny_model, logits_all=True, flash_attn=True, n_ctx=32, n_batch=32, n_ubatch=32
    )
    want, best = [], []
    window, rows = None, None
    for i in range(1, len(tokens)):
        start = 0 if i < 32 else (i // 16 - 1) * 16  # the token falls in the second half
        if start != window:
            window = start
            llm.reset()
            llm.eval(tokens[start : start + 32])
            rows = np.array(llm.scores[: len(tokens[start : start + 32])], dtype=np.float64)
        row = rows[i - start - 1]
        lse = np.logaddexp.reduce(row)
        want.append(row[tokens[i]] - lse)
        best.append(int(np.argmax(row)))
    llm.close()
    assert math.isnan(scores.logprobs[0])
    assert scores.scored.tolist() == pytest.approx(want, abs=2e-3)
    agree = np.mean(np.array(best) == scores.best_ids[1:])
    assert agree > 0.95, agree
    assert scores.perplexity() == pytest.approx(math.exp(-np.mean(want)), rel=1e-3)
    assert scores.mean_surprisal_bits() == pytest.approx(-np.mean(want) / math.log(2), rel=1e-3)
    worst = sorted(range(1, len(tokens)), key=lambda i: (want[i - 1], i))[:3]
    assert scores.least_likely(3) == worst


def test_next_tokens_top_k_of_many_and_ties_by_id():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal(1000)
    nt = next_tokens(logits, 10, [1.0])
    assert [c.id for c in nt.candidates] == np.argsort(-logits, kind="stable")[:10].tolist()
    tied = np.full(200, -1.0)
    top = np.sort(rng.choice(200, size=40, replace=False))
    tied[top] = 5.0  # forty equal maxima: listed in id order
    assert [c.id for c in next_tokens(tied, 40, [1.0]).candidates] == top.tolist()
    # Ties at the cut: the lowest ids of the equal logits make the list, not any few.
    assert [c.id for c in next_tokens(tied, 45, [1.0]).candidates][40:] == [
        i for i in range(200) if i not in set(top.tolist())
    ][:5]
    # float32 logits give the same numbers as float64 ones.
    as32 = next_tokens(logits.astype(np.float32), 3, [1.0])
    assert as32.candidates[0].probs[0] == pytest.approx(nt.candidates[0].probs[0], rel=1e-6)


def test_float32_logits_give_float64_numbers():
    # llama.cpp hands over float32 logits; every measure is computed in float64, so
    # --json carries the same digits as a float64 computation (math.fsum: exact sums).
    x32 = np.random.default_rng(2).normal(0, 5, 4000).astype(np.float32)
    x = x32.astype(np.float64)
    lse = x.max() + math.log(math.fsum(np.exp(x - x.max())))
    assert np.abs(log_softmax_rows(x32) - (x - lse)).max() < 1e-12
    z = x / 0.7
    want = np.exp(z - z.max()) / math.fsum(np.exp(z - z.max()))
    assert np.abs(probs_at(x32, 0.7) - want).max() < 1e-15
    lp = (x - lse).astype(np.float32)
    assert perplexity(lp) == pytest.approx(
        math.exp(-math.fsum(lp.astype(np.float64)) / len(lp)), rel=1e-13
    )
    nt = next_tokens(x32, 3, [1.0])
    assert nt.candidates[0].logprob == pytest.approx(float(x.max() - lse), abs=1e-12)


def test_rows_of_very_different_scales_each_get_their_own_softmax():
    # score stacks many positions; each row is shifted by its own maximum.
    lp = log_softmax_rows(np.array([[0.0, 1.0], [-1000.0, -999.0]]))
    assert np.isfinite(lp).all()
    assert lp[1].tolist() == pytest.approx(lp[0].tolist(), abs=1e-12)


def test_cumulative_mass_never_exceeds_one():
    # Seed 0: the float64 cumulative sum of these 50 probabilities rounds to 1 + 2e-16.
    logits = np.random.default_rng(0).normal(0, 3, 50)
    nt = next_tokens(logits, 50, [1.0, 0.5])
    assert all(c <= 1.0 for cand in nt.candidates for c in cand.cumulative)
    assert nt.candidates[-1].cumulative[0] == 1.0

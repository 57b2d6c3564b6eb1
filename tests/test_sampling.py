"""The sampler alone: arrays in, arrays out, no model needed."""

import math

import numpy as np
import pytest

from gptcli.errors import UsageError
from gptcli.sampling.sampler import (
    Sampler,
    SamplingParams,
    apply_repetition_penalty,
    min_p_count,
    softmax,
    top_k_ids,
    top_p_count,
)


def test_softmax_sums_to_one_and_is_stable_for_huge_logits():
    p = softmax(np.array([1000.0, 999.0, 0.0]))
    assert p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-9)


def test_temperature_sharpens_and_flattens():
    logits = np.array([2.0, 1.0, 0.0])
    cold, hot = softmax(logits, 0.5), softmax(logits, 2.0)
    assert cold[0] > softmax(logits)[0] > hot[0]


def test_top_k_keeps_exactly_the_k_largest_in_order():
    logits = np.array([0.1, 3.0, -1.0, 2.0, 2.5], dtype=np.float32)
    assert top_k_ids(logits, 3).tolist() == [1, 4, 3]
    assert top_k_ids(logits, 0).tolist() == [1, 4, 3, 0, 2]


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    assert top_p_count(probs, 0.5) == 1
    assert top_p_count(probs, 0.51) == 2
    assert top_p_count(probs, 0.8) == 2
    assert top_p_count(probs, 0.81) == 3
    assert top_p_count(probs, 1.0) == 4
    # 1.0 is "off": a tail the cumulative sum rounds away is still kept.
    assert top_p_count(np.array([0.5, 0.5, 1e-20]), 1.0) == 3


def test_min_p_keeps_tokens_above_a_fraction_of_the_top():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    assert min_p_count(probs, 0.3) == 3  # 0.15 >= 0.15
    assert min_p_count(probs, 0.31) == 2
    assert min_p_count(probs, 0.0) == 4


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    apply_repetition_penalty(logits, [0, 1, 0], 2.0)
    assert logits.tolist() == [1.0, -4.0, 1.0]


def test_temperature_zero_is_argmax():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(1000).astype(np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0), 1000)
    for _ in range(3):
        assert sampler.sample(logits).token == int(np.argmax(logits))


def test_distribution_is_the_truncated_one_and_sums_to_one():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32))
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=0), 4)
    draw = sampler.sample(logits)
    assert draw.ids.tolist() == [0, 1, 2]
    assert draw.probs.sum() == pytest.approx(1.0)
    assert draw.probs.tolist() == pytest.approx([0.4 / 0.9, 0.3 / 0.9, 0.2 / 0.9], rel=1e-6)
    assert draw.prob == pytest.approx(draw.probs[draw.ids.tolist().index(draw.token)])


def test_draws_follow_the_distribution():
    logits = np.log(np.array([0.7, 0.2, 0.1], dtype=np.float32))
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=42), 3)
    counts = np.bincount([sampler.sample(logits).token for _ in range(4000)], minlength=3)
    assert counts / counts.sum() == pytest.approx([0.7, 0.2, 0.1], abs=0.03)


def test_same_seed_same_tokens():
    logits = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=7)
    s1, s2 = Sampler(params, 500), Sampler(params, 500)
    first = [s1.sample(logits).token for _ in range(20)]
    assert first == [s2.sample(logits).token for _ in range(20)]
    # Not trivially equal: the draws vary, and another seed gives another sequence.
    assert len(set(first)) > 5
    other = Sampler(SamplingParams(**{**params.__dict__, "seed": 8}), 500)
    assert [other.sample(logits).token for _ in range(20)] != first


def test_model_logprob_and_alternatives():
    logits = np.array([3.0, 1.0, 0.5, -1.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, top_k=2, top_p=1.0, min_p=0.0), 4)
    draw = sampler.sample(logits, n_top=3, model_probs=True)
    expected = np.log(softmax(logits))
    assert draw.model_logprob == pytest.approx(expected[0])
    assert [a.id for a in draw.top] == [0, 1, 2]
    assert [a.model_logprob for a in draw.top] == pytest.approx(expected[:3].tolist())
    assert draw.top[2].logprob is None  # cut by top-k: could not have been drawn


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "temperature must be 0 (greedy) or more, got -0.1"),
        ({"temperature": float("nan")}, "temperature must be 0 (greedy) or more, got nan"),
        ({"top_p": 0.0}, "top-p must be in (0, 1], got 0.0"),
        ({"top_p": 1.5}, "top-p must be in (0, 1], got 1.5"),
        ({"min_p": -0.1}, "min-p must be in [0, 1], got -0.1"),
        ({"min_p": 1.01}, "min-p must be in [0, 1], got 1.01"),
        ({"top_k": -1}, "top-k must be 0 (off) or more, got -1"),
        ({"repeat_penalty": 0.0}, "repeat penalty must be from 1e-06 to 1e+06, got 0.0"),
        ({"repeat_penalty": float("inf")}, "repeat penalty must be from 1e-06 to 1e+06, got inf"),
        ({"repeat_penalty": 1e-320}, "repeat penalty must be from 1e-06 to 1e+06, got 1e-320"),
        ({"repeat_penalty": 1e308}, "repeat penalty must be from 1e-06 to 1e+06, got 1e+308"),
        ({"repeat_last_n": -1}, "repeat-last-n must be 0 or more, got -1"),
        ({"seed": -1}, "seed must be 0 or more, got -1"),
    ],
)
def test_invalid_parameters_are_usage_errors_that_say_which(kwargs, message):
    with pytest.raises(UsageError) as e:
        SamplingParams(**kwargs).validate()
    assert str(e.value) == message


def test_the_edges_of_every_range_are_valid():
    edges = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 1.0, "repeat_last_n": 0}
    for name, value in edges.items():
        SamplingParams(**{name: value}).validate()
    SamplingParams(min_p=0.0, seed=0, repeat_penalty=1e-3).validate()


@pytest.mark.parametrize("k", [0, 10, 100, 4999, 5000, 6000])
def test_top_k_orders_equal_logits_by_id_at_every_k(k):
    # Thousands of ties: an unstable sort (numpy's default quicksort) scrambles them.
    logits = np.random.default_rng(3).integers(0, 3, 5000).astype(np.float32)
    expected = sorted(range(5000), key=lambda i: (-logits[i], i))
    assert top_k_ids(logits, k).tolist() == expected[: k if 0 < k < 5000 else 5000]


@pytest.mark.parametrize(
    "params",
    [
        {"top_k": 40},
        {"top_k": 0, "top_p": 0.9, "min_p": 0.0},
        {"top_k": 0, "top_p": 1.0, "min_p": 0.05},
        {"top_k": 40, "repeat_penalty": 1.3},
    ],
)
def test_a_token_step_allocates_nothing_vocabulary_sized(params):
    # The scratch arrays are the point of Sampler's __init__: a step that allocated a
    # fresh vocabulary-sized array (4 MB here) would show in the traced peak.
    import tracemalloc

    n = 1_000_000
    logits = np.random.default_rng(0).normal(0, 2, n).astype(np.float32)
    logits[:50] += 25  # peaked, as a model's: top-p reaches its mass in a few candidates
    sampler = Sampler(SamplingParams(seed=1, **params), n)
    sampler.sample(logits, [1, 2, 3], n_top=5, model_probs=True)  # warm numpy's caches
    tracemalloc.start()
    try:
        for _ in range(3):
            sampler.sample(logits, [1, 2, 3], n_top=5, model_probs=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n // 4, f"a step allocated {peak} bytes for a {n}-token vocabulary"


def test_top_k_distribution_is_stable_for_huge_logits():
    logits = np.zeros(100, dtype=np.float32)
    logits[:2] = [400.0, 399.0]  # exp(800) overflows a float64
    draw = Sampler(SamplingParams(temperature=0, top_k=2, top_p=1.0, min_p=0.0), 100).sample(logits)
    assert draw.ids.tolist() == [0, 1]
    assert draw.probs.tolist() == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])


def exact_softmax(logits) -> np.ndarray:
    """The oracle: the formula in float64, one exponential per logit, an exact sum."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / math.fsum(e)


@pytest.mark.parametrize("top_k", [0, 50])
def test_nothing_cut_draws_from_the_whole_vocabulary_in_id_order(top_k):
    # Draw.ids' contract: all ids in order when nothing is cut (top-k 0 or the vocabulary).
    logits = np.random.default_rng(1).normal(0, 1, 50).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=1.0, min_p=0.0, seed=0)
    draw = Sampler(params, 50).sample(logits)
    assert draw.ids.tolist() == list(range(50))
    assert draw.probs.tolist() == pytest.approx(exact_softmax(logits).tolist(), rel=1e-6)


def ranked(logits: np.ndarray) -> list[int]:
    """Ids by logit, ties by id: the order the sampler documents for its candidates."""
    return sorted(range(len(logits)), key=lambda i: (-logits[i], i))


def test_min_p_candidates_keep_ties_in_id_order():
    # Three values, thousands of each: min-p 0.5 keeps the two highest, ties by id.
    logits = np.random.default_rng(5).integers(0, 3, 5000).astype(np.float32) * 0.5
    params = SamplingParams(temperature=0, top_k=0, top_p=1.0, min_p=0.5)
    draw = Sampler(params, 5000).sample(logits)
    kept = [i for i in ranked(logits) if logits[i] >= 0.5]  # e^-0.5 >= 0.5 > e^-1
    assert draw.ids.tolist() == kept
    assert draw.token == kept[0]


def test_top_p_alone_on_a_flat_distribution_keeps_the_smallest_set_reaching_the_mass():
    # Nearly flat: the first partial sorts hold too little mass, the search must grow.
    logits = np.random.default_rng(6).normal(0, 0.1, 5000).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0, seed=0)
    draw = Sampler(params, 5000).sample(logits)
    order = ranked(logits)
    p = exact_softmax(logits)[order]
    n = int(np.searchsorted(np.cumsum(p), 0.9) + 1)
    assert 4000 < n < 5000
    assert draw.ids.tolist() == order[:n]
    assert draw.probs.tolist() == pytest.approx((p[:n] / p[:n].sum()).tolist(), rel=1e-5)


def test_top_k_at_a_temperature_other_than_1_rescales_the_kept_logits():
    logits = np.array([3.0, 2.0, 1.0, 0.0, -1.0], dtype=np.float32)
    for t in (0.5, 2.0):
        params = SamplingParams(temperature=t, top_k=3, top_p=1.0, min_p=0.0, seed=0)
        draw = Sampler(params, 5).sample(logits)
        z = np.exp(np.array([3.0, 2.0, 1.0]) / t)
        assert draw.probs.tolist() == pytest.approx((z / z.sum()).tolist(), rel=1e-6)


@pytest.mark.parametrize("penalty", [2.0, 1.5])
def test_repetition_penalty_changes_the_drawn_distribution(penalty):
    logits = np.array([2.0, 1.0, -1.0, 0.5], dtype=np.float32)
    params = SamplingParams(
        temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=penalty, seed=0
    )
    draw = Sampler(params, 4).sample(logits, [0, 2, 0])
    z = np.array([2.0 / penalty, 1.0, -1.0 * penalty, 0.5])
    assert draw.probs.tolist() == pytest.approx(exact_softmax(z).tolist(), rel=1e-6)
    assert logits.tolist() == [2.0, 1.0, -1.0, 0.5]  # the caller's logits untouched


def test_alternatives_and_model_probability_only_when_asked():
    draw = Sampler(SamplingParams(seed=0), 4).sample(np.array([3.0, 1, 0, -1], np.float32))
    assert draw.top == () and draw.model_logprob is None


@pytest.mark.parametrize("n_allowed", [0, 5, 39, 40, 41, 300])
@pytest.mark.parametrize("k", [1, 40])
def test_top_k_of_a_masked_vocabulary_is_the_stable_sort(n_allowed, k):
    # A grammar's mask leaves a few finite logits among -inf: the shortcut for that case
    # must rank exactly as a stable sort of the whole vocabulary (-inf ones by id).
    rng = np.random.default_rng(n_allowed)
    logits = np.full(49152, -np.inf, dtype=np.float32)
    allowed = rng.choice(49152, n_allowed, replace=False)
    logits[allowed] = rng.integers(-3, 3, n_allowed).astype(np.float32)  # ties too
    expected = np.argsort(-logits, kind="stable")[:k]
    assert top_k_ids(logits, k).tolist() == expected.tolist()

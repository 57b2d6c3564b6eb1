"""NaN and infinite logits never reach the screen as probabilities.

A tiny GGUF whose favourite token has a NaN embedding (a broken quantization, on
purpose): the first step is fine and prints that token, the step after it gives
NaN logits. gptcli stops there with one line naming the position and what to try,
exit 1, and keeps what it printed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from support.hostile import write_logit_model

from gptcli.sampling.sampler import NonFiniteLogits, Sampler, SamplingParams, check_logits

FAVOURITE = b"Paris"


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory, tokenizer):
    fav = tokenizer.tokens.index(FAVOURITE)
    path = tmp_path_factory.mktemp("nan") / "poisoned.gguf"
    return write_logit_model(path, tokenizer, fav, poisoned=fav)


def assert_stopped(r, position: int) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptcli: error:"), r.stderr
    assert f"non-finite logits (NaN or infinity) at position {position}" in lines[0]
    assert "-ngl 0" in lines[0] and "quantization" in lines[0]
    assert "Traceback" not in r.stderr and "nan" not in r.stdout.lower()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_sampler_refuses_non_finite_logits(bad):
    logits = np.zeros(1000, dtype=np.float32)
    logits[777] = bad
    with pytest.raises(NonFiniteLogits) as e:
        Sampler(SamplingParams(temperature=0), 1000).sample(logits, [1, 2, 3])
    assert str(e.value) == (
        "the model produced non-finite logits (NaN or infinity) at position 3: the weights "
        "or the backend compute garbage; try -ngl 0 (CPU only) or another quantization"
    )
    assert e.value.position == 3
    with pytest.raises(NonFiniteLogits) as e:  # the first step: no position to name
        Sampler(SamplingParams(temperature=0), 1000).sample(logits)
    assert "(NaN or infinity): the weights" in str(e.value) and e.value.position is None


def test_minus_infinity_is_a_probability_of_zero():
    logits = np.zeros(1000, dtype=np.float32)
    logits[:500] = -np.inf  # as a grammar's forbidden tokens
    check_logits(logits)
    assert Sampler(SamplingParams(temperature=0), 1000).sample(logits).token >= 500


def test_generate_stops_at_the_first_nan_and_keeps_the_text(gptcli, poisoned):
    r = gptcli("generate", "-m", str(poisoned), "--raw", "-n", "5", "-t", "0", "hi")
    # "hi" is one token: the first step predicts position 1 (Paris), the next NaN.
    assert_stopped(r, 2)
    assert r.stdout == "Paris\n"


def test_generate_probs_and_json_stop_too(gptcli, poisoned):
    r = gptcli("generate", "-m", str(poisoned), "--raw", "-n", "5", "--probs", "hi")
    assert_stopped(r, 2)
    assert r.stdout.startswith("Paris[1.00]")
    r = gptcli("generate", "-m", str(poisoned), "--raw", "-n", "5", "--json", "hi")
    assert_stopped(r, 2)
    assert len(r.stdout.splitlines()) == 1  # the one good token's object


def test_next_shows_no_nan_probabilities(gptcli, poisoned):
    r = gptcli("next", "-m", str(poisoned), "--steps", "3", "hi")
    assert_stopped(r, 2)
    assert "Paris" in r.stdout and "1.0000" in r.stdout  # step 1 is real and shown


def test_score_stops_at_the_first_nan(gptcli, poisoned, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Paris is nice")  # the first token is the poisoned one
    r = gptcli("score", "-m", str(poisoned), str(text))
    assert_stopped(r, 1)
    assert r.stdout == ""


def test_header_refusals_name_the_hyperparameter(gptcli, tiny_model, tmp_path):
    # The bad hyperparameters each have a row in hostile.HOSTILE (test_model_files);
    # this pins that llama.cpp itself does compute NaN on the first of them.
    from support.hostile import HOSTILE, write_hostile

    assert "rope_freq_base_zero" in HOSTILE
    path = write_hostile("rope_freq_base_zero", tiny_model, tmp_path)
    r = gptcli("generate", "-m", str(path), "--raw", "-n", "1", "hi")
    assert r.returncode == 1 and "rope.freq_base" in r.stderr

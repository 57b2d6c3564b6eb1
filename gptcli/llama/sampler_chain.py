"""llama.cpp's own sampler chain, for plain generation: the same chain and seed as
llama.cpp's common sampler, drawing in C instead of gptcli's numpy sampler."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gptcli.llama.engine import Engine
from gptcli.sampling.sampler import Draw

# When no distribution is shown, the token is drawn in C from the context's own logits
# buffer: no numpy pass over the vocabulary per token. The chain is sampling.Sampler's
# order (tests/test_sampler_oracle.py proves the two give the same distributions) and
# llama-cpp-python's Llama's: penalties, top-k, top-p, min-p, temperature, then greedy
# or a draw from llama.cpp's own generator (mt19937) seeded with the seed.

_EMPTY_IDS = np.empty(0, dtype=np.int64)
_EMPTY_PROBS = np.empty(0, dtype=np.float64)


def native_seed(seed: int | None) -> int:
    """The 32-bit seed llama.cpp's dist sampler takes (0xFFFFFFFF would mean random)."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    return seed % 0xFFFFFFFF


class NativeSampler:
    """SamplingParams as a llama.cpp sampler chain. `history`: the tokens before the
    first draw (the repetition penalty looks back into the prompt)."""

    draws_in_llama = True  # generation.Generation: take the fast path

    def __init__(self, engine: Engine, params, history: Sequence[int] = ()):
        lib = engine._lib
        self._lib = lib
        self.params = p = params.validate()
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        self._chain = chain
        add = lib.llama_sampler_chain_add
        penalised = p.repeat_penalty != 1.0 and p.repeat_last_n > 0
        if penalised:
            n_vocab, last_n = engine.n_vocab, p.repeat_last_n
            add(chain, lib.llama_sampler_init_penalties(n_vocab, last_n, p.repeat_penalty, 0, 0))
        if p.temperature == 0.0:
            add(chain, lib.llama_sampler_init_greedy())  # the argmax: the cuts cannot move it
        else:
            if p.top_k > 0:
                add(chain, lib.llama_sampler_init_top_k(p.top_k))
            add(chain, lib.llama_sampler_init_top_p(p.top_p, 1))
            add(chain, lib.llama_sampler_init_min_p(p.min_p, 1))
            add(chain, lib.llama_sampler_init_temp(p.temperature))
            add(chain, lib.llama_sampler_init_dist(native_seed(p.seed)))
        if penalised:
            for tok in list(history)[-p.repeat_last_n :]:
                lib.llama_sampler_accept(chain, tok)
        self._sample = lib.llama_sampler_sample

    def sample_from(self, ctx, idx: int = -1) -> int:
        """Draw from row `idx` of a context's logits; the chain remembers the token."""
        return int(self._sample(self._chain, ctx, idx))

    @staticmethod
    def draw_for(token: int) -> Draw:
        """The event's Draw: the token, with no distribution (none was computed)."""
        return Draw(token, math.nan, _EMPTY_IDS, _EMPTY_PROBS)

    def close(self) -> None:
        chain, self._chain = getattr(self, "_chain", None), None
        if chain:
            self._lib.llama_sampler_free(chain)  # frees the samplers it holds

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the library may be gone already
            pass

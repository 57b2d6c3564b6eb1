"""Several sequences in one llama.cpp context, decoded together (`--each-line -j N`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.llama.engine import Engine, _apply_steering
from gptcli.llama.resources import check_context_fits
from gptcli.llama.sampler_chain import NativeSampler
from gptcli.model.gguf_check import GGUFHeader

# GGML tensor types that llama.cpp's CPU backend multiplies with llamafile's GEMM once a
# matmul has two rows or more, and with its own dot product for one row: the sums run in
# another order, so a line's step rounds otherwise beside other lines than alone (the
# quantized types' two kernels agree bit for bit: Q4_1 and Q8_0 measured).
_GEMM_ROUNDED_TYPES = frozenset({0, 1, 30})  # F32, F16, BF16

# With several threads, llama.cpp's CPU flash attention splits one query's keys over the
# threads and merges the parts (its split-KV path) when a ubatch holds a single stream that
# shows 512 cells or more (shown cells are counted in 256s): a -j 1 line past 256 cells
# rounds that way, and never beside other lines. Such a step runs alone (from 240 cells,
# a margin: alone is always -j 1's rounding).
SPLIT_KV_FROM = 240


def steps_round_by_batch(header: GGUFHeader) -> bool:
    """Whether a weight the model multiplies by is F32, F16 or BF16 (a matrix, not the
    token table looked up by row when the model has an output matrix of its own)."""
    names = {t.name for t in header.tensors}
    for t in header.tensors:
        if len(t.shape) < 2 or t.type not in _GEMM_ROUNDED_TYPES:
            continue
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue  # only looked up (get_rows), never multiplied
        return True
    return False


class BatchedEngine:
    """Several sequences in one llama.cpp context, decoded together (`--each-line -j N`).

    Sequences 0..n_seq-1 are slots, one line each; sequence n_seq holds the prompt part
    every line shares, evaluated once. Each sequence has a KV stream of its own (not a
    unified cache), so a line's cells lie at the same places, in position order, as
    with one slot: llama.cpp's attention kernels tile and accumulate over cell indices,
    and a line interleaved with others in one unified cache rounds differently (greedy
    lines then part from -j 1). A slot gets the prefix as a copy of the shared stream
    (llama_memory_seq_cp across streams) and keeps it for the lines that follow. The
    context is sized up, not split: every slot may hold n_ctx_seq tokens (the
    single-sequence context), so a line fits or not whatever the number of slots.
    `steps_alone`: the model has float weights, whose matmuls round by the number of
    rows (see _GEMM_ROUNDED_TYPES), so each line's step must run in a decode of its own;
    `step_alone(pos)` says it for one line's step.
    """

    def __init__(self, engine: Engine, n_seq: int, n_shared: int = 0):
        if n_seq < 1:
            raise UsageError(f"-j must be at least 1, got {n_seq}")
        llama_cpp = engine._lib
        from llama_cpp._internals import LlamaBatch, LlamaContext

        self.engine = engine
        self.n_seq = n_seq
        self.n_ctx_seq = engine.n_ctx
        self.shared_seq = n_seq
        self.shared: list[int] = []
        self.tokens_decoded = 0  # every token llama_decode evaluated: prefix reuse shows here
        self._held = [0] * n_seq  # shared-prefix tokens each slot's stream holds
        self.steps_alone = steps_round_by_batch(engine.header)
        stream_cells = -(-self.n_ctx_seq // 256) * 256
        self._split_kv = engine.n_threads > 1 and stream_cells > 256
        cparams = llama_cpp.llama_context_default_params()
        # One stream of n_ctx_seq cells per slot and one for the shared prefix (llama.cpp
        # rounds a stream up to 256 cells: counted here, so the memory check sees it).
        cparams.n_ctx = (n_seq + 1) * -(-self.n_ctx_seq // 256) * 256
        check_context_fits(cparams.n_ctx, engine.kv_bytes_per_token())
        # llama.cpp aborts (GGML_ASSERT n_outputs_max) when a context holds more
        # sequences than its batch has outputs: --ctx 64 -j 64 did.
        cparams.n_batch = max(engine.n_batch, n_seq + 1)
        cparams.n_ubatch = cparams.n_batch
        cparams.n_threads = engine.n_threads
        cparams.n_threads_batch = engine.n_threads
        cparams.n_seq_max = n_seq + 1
        cparams.kv_unified = False
        try:
            self._ctx = LlamaContext(model=engine._model, params=cparams, verbose=False)
        except (ValueError, RuntimeError):
            raise GptcliError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens for "
                f"{n_seq} sequences (out of memory? lower -j or --ctx)"
            ) from None
        self.n_batch = int(cparams.n_batch)
        self._batch = LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1)
        self._lib = llama_cpp
        self._mem = self._ctx.memory
        if engine.steering is not None:
            _apply_steering(engine, self._ctx.ctx)

    def step_alone(self, pos: int) -> bool:
        """Whether the one-token step of a line whose sequence holds `pos` tokens must run
        in a decode of its own to round as with -j 1 (see SPLIT_KV_FROM)."""
        return self.steps_alone or (self._split_kv and pos >= SPLIT_KV_FROM)

    def set_shared(self, tokens: Sequence[int]) -> None:
        """Evaluate the prompt part every line starts with, once."""
        self._lib.llama_memory_seq_rm(self._mem, self.shared_seq, -1, -1)
        self.shared = list(tokens[: self.n_ctx_seq])
        self._held = [0] * self.n_seq  # slots copy the new prefix when they next start
        for start in range(0, len(self.shared), self.n_batch):
            chunk = self.shared[start : start + self.n_batch]
            self.decode([(self.shared_seq, start, chunk, False)])

    def start(self, seq: int, tokens: Sequence[int]) -> int:
        """Empty slot `seq` for a new line and give it the shared prefix that `tokens`
        begin with; returns how many tokens it already holds (evaluate the rest)."""
        common, limit = 0, min(len(self.shared), len(tokens) - 1)  # the last must run
        while common < limit and self.shared[common] == tokens[common]:
            common += 1
        lib, mem = self._lib, self._mem
        if common > self._held[seq]:
            # Across streams llama.cpp copies a whole stream (done at the next decode).
            lib.llama_memory_seq_cp(mem, self.shared_seq, seq, -1, -1)
        lib.llama_memory_seq_rm(mem, seq, common, -1)
        self._held[seq] = common
        return common

    def drop(self, seq: int) -> None:
        """Free a finished sequence's KV cells (the slot keeps its shared prefix)."""
        self._lib.llama_memory_seq_rm(self._mem, seq, self._held[seq], -1)

    def decode(
        self, spans: Sequence[tuple[int, int, Sequence[int], bool]]
    ) -> list[np.ndarray | None]:
        """One llama_decode of several sequences' tokens: spans of (seq, first position,
        tokens, logits wanted), at most n_batch tokens in all. Returns, per span, the
        logits after its last token (a view valid until the next decode) or None."""
        batch = self._batch.batch
        n = 0
        last: list[int] = []
        for seq, pos, tokens, want in spans:
            for j, tok in enumerate(tokens):
                batch.token[n] = tok
                batch.pos[n] = pos + j
                batch.seq_id[n][0] = seq
                batch.n_seq_id[n] = 1
                batch.logits[n] = False
                n += 1
            batch.logits[n - 1] = want
            last.append(n - 1)
        batch.n_tokens = n
        rc = self._lib.llama_decode(self._ctx.ctx, batch)
        if rc != 0:
            raise GptcliError(f"llama.cpp failed to evaluate a batch (llama_decode {rc})")
        self.tokens_decoded += n
        self.last_rows = last  # each span's row in the batch (draw() reads it)
        out: list[np.ndarray | None] = []
        for (_, _, _, want), i in zip(spans, last, strict=True):
            if want:
                ptr = self._lib.llama_get_logits_ith(self._ctx.ctx, i)
                out.append(np.ctypeslib.as_array(ptr, shape=(self.engine.n_vocab,)))
            else:
                out.append(None)
        return out

    def draw(self, sampler: NativeSampler, span: int) -> int:
        """The next token of the last decode's span `span`, drawn by llama.cpp's chain."""
        return sampler.sample_from(self._ctx.ctx, self.last_rows[span])

    def close(self) -> None:
        for part in ("_batch", "_ctx"):
            obj = getattr(self, part, None)
            if obj is not None:
                obj.close()

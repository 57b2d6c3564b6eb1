"""Decode ahead: llama.cpp draws and decodes in a thread of its own while Python turns
the token before into text.

At GPU speed a decode takes about a millisecond, and the Python that follows a token
(its text, stop strings, the shown distribution, the terminal) would add to every one
if it ran between two decodes. Here a worker thread runs llama.cpp's sampler chain and
llama_decode back to back (C calls that release the GIL) and hands each token to the
consumer through a queue, at most `depth` tokens ahead. The consumer applies the same
end rules (end of generation, the token limit, a full context) and stops where the
worker stopped; after an early stop (a stop string, Ctrl-C) the tokens the worker
decoded past it stay in the KV cache and in engine.tokens, which a later prefill reuses
or drops.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import queue
import threading
import time
import weakref

import numpy as np

from gptcli.errors import GptcliError
from gptcli.llama.engine import ContextFull, Engine
from gptcli.llama.sampler_chain import NativeSampler
from gptcli.sampling.sampler import check_logits

_END = object()  # the worker stopped: nothing more comes
_running: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # A worker left in a decode (an exception unwound past its generator) must not be
    # inside llama.cpp while the interpreter frees the model at exit.
    for ahead in list(_running):
        ahead.close()


class DecodeAhead:
    """Iterate for (token, logits): the drawn token and, with copy_logits, a copy of the
    logits it was drawn from (valid until the next token is asked for), else None.

    limit: the most tokens to draw (None: until end of generation or a full context).
    """

    def __init__(
        self,
        engine: Engine,
        sampler: NativeSampler,
        limit: int | None,
        *,
        copy_logits: bool = False,
        depth: int = 2,
    ):
        self.engine = engine
        self.sampler = sampler
        self.limit = limit
        self._n_prompt = engine.n_past  # the prefill is done: the first draw reads its logits
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        # One slot per token in flight: the worker copies into a free one, the consumer
        # gives it back when it asks for the next token.
        self._slots = np.empty((depth, engine.n_vocab), dtype=np.float32) if copy_logits else None
        for slot in range(depth):
            self._free.put(slot)
        self._held: int | None = None
        self._stop = False
        self.stalled_s = 0.0  # the worker's time waiting for the consumer to catch up
        self.thread_cpu_s = 0.0  # the worker's CPU time, decodes and draws included
        self.thread_wall_s = 0.0
        self._thread = threading.Thread(target=self._run, name="gptcli-decode", daemon=True)
        engine.ahead = self  # the engine waits for this thread before any other use
        _running.add(self)
        self._thread.start()

    # -- the worker ---------------------------------------------------------------

    def _run(self) -> None:
        t0, w0 = time.thread_time(), time.perf_counter()
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer
            self._ready.put(e)
        finally:
            self.thread_cpu_s = time.thread_time() - t0
            self.thread_wall_s = time.perf_counter() - w0
            self._ready.put(_END)

    def _loop(self) -> None:
        # Everything here runs between two decodes, with the caches cold from the last
        # one: as few Python steps as will do (engine.advance inlined, locals only).
        engine, ready, free = self.engine, self._ready, self._free
        ctx = engine._ctx.ctx
        lib = engine._lib
        chain, sample = self.sampler._chain, lib.llama_sampler_sample
        get_logits, decode = lib.llama_get_logits_ith, lib.llama_decode
        one = (lib.llama_token * 1)()
        batch = lib.llama_batch_get_one(one, 1)  # placed after sequence 0's last position
        is_eog, tokens = engine.is_eog, engine.tokens
        n_vocab, n_ctx, n_prompt = engine.n_vocab, engine.n_ctx, self._n_prompt
        slots = self._slots
        nbytes = n_vocab * 4
        addresses = [row.ctypes.data for row in slots] if slots is not None else None
        last = n_ctx - n_prompt
        if self.limit is not None:
            last = min(last, self.limit - 1)
        eogs = engine._eog  # is_eog's cache: a dict lookup instead of a call, once known
        ptr = None
        for index in itertools.count():
            tok = sample(chain, ctx, -1)
            try:
                slot = free.get_nowait()
            except queue.Empty:
                t = time.perf_counter()
                slot = free.get()
                self.stalled_s += time.perf_counter() - t
                if self._stop:  # close() woke it
                    return
            if ptr is None:
                # The row stays where it is for the whole run: llama.cpp moves its output
                # buffer only for a batch with more outputs than any before, and every
                # decode here outputs one row, as the prefill did.
                ptr = get_logits(ctx, -1)
                if not ptr:
                    raise GptcliError("llama.cpp returned no logits")
            if addresses is not None:
                ctypes.memmove(addresses[slot], ptr, nbytes)  # the consumer checks each copy
            else:
                # A NaN or infinite logit wins (greedy) or poisons the draw: the first row
                # whole, then the drawn token's, without a pass over the vocabulary each step.
                x = ptr[tok]
                if index == 0 or x - x != 0.0:
                    check_logits(np.ctypeslib.as_array(ptr, shape=(n_vocab,)), n_prompt + index)
            ready.put((tok, slot))
            # The consumer's end rules (the token limit, a full context: engine.n_past is
            # n_prompt + index here; end of generation), so neither decodes what the
            # other will not use.
            if index >= last or self._stop:
                return
            eog = eogs.get(tok)
            if eog or (eog is None and is_eog(tok)):
                return
            one[0] = tok
            rc = decode(ctx, batch)
            if rc != 0:
                engine.forget_from(n_prompt + index)
                if rc == 1:
                    raise ContextFull(n_prompt + index + 1, n_ctx)
                raise GptcliError(f"llama.cpp failed to evaluate the tokens (llama_decode {rc})")
            tokens.append(tok)

    # -- the consumer -------------------------------------------------------------

    def __iter__(self):
        ready, slots = self._ready, self._slots
        while True:
            self._give_back()
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            tok, slot = item
            self._held = slot
            yield tok, (slots[slot] if slots is not None else None)

    def _give_back(self) -> None:
        if self._held is not None:
            self._free.put(self._held)
            self._held = None

    def is_worker(self) -> bool:
        return threading.current_thread() is self._thread

    def close(self) -> None:
        """Stop the worker and wait for it (at most the decode it is in)."""
        self._stop = True
        self._free.put(0)  # wakes a worker waiting for a slot; it sees _stop and returns
        if not self.is_worker():
            self._thread.join()
            _running.discard(self)
        if getattr(self.engine, "ahead", None) is self:
            self.engine.ahead = None

"""Grammar-constrained sampling on llama.cpp's grammar sampler: a GBNF grammar over an
engine's vocabulary, and JSON Schema to GBNF."""

from __future__ import annotations

import ctypes
import os
import tempfile

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.llama.engine import Engine, is_verbose, lib, set_verbose
from gptcli.sampling.sampler import top_k_ids

# The numpy sampler draws; a grammar only says which tokens may come next. Checking one
# drawn token costs one small call; the whole vocabulary is masked only when the drawn
# token is refused (as llama.cpp's common sampler does).


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def _grammar_parse_error(captured: str) -> str:
    """llama.cpp's own reason from what it wrote while parsing, made one short line."""
    for line in captured.splitlines():
        for marker in ("error parsing grammar: ", "invalid grammar: ", "unsupported grammar, "):
            if marker in line:
                reason = line.split(marker, 1)[1].strip()
                if marker.startswith("error") and reason.endswith(" at"):
                    reason += " the end of the grammar"  # the rest of it was empty
                elif marker.startswith("error") and " at " in reason:
                    head, rest = reason.split(" at ", 1)  # "at <the rest of the grammar>"
                    reason = f"{head} at {rest[:30]!r}"
                return reason[:160]
        if "does not contain" in line:
            return line.strip()[:160]
    return "llama.cpp refused it"


def _run_capturing_stderr(fn):
    """fn() with file descriptor 2 and llama.cpp's log captured: the grammar parser
    reports with fprintf(stderr), the rest through the log callback."""
    llama_cpp = lib()
    logged: list[str] = []

    @llama_cpp.llama_log_callback
    def _keep(level, text, user_data):
        logged.append(text.decode("utf-8", errors="replace") if text else "")

    llama_cpp.llama_log_set(_keep, ctypes.c_void_p(0))
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 2)
            result = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            set_verbose(is_verbose())
        tmp.seek(0)
        text = tmp.read(64_000).decode("utf-8", errors="replace")
    return result, text + "".join(logged)


class Grammar:
    """A GBNF grammar over an engine's vocabulary: which tokens may come next, and its
    state after each accepted token. Raises UsageError when the grammar does not parse
    or when no token can start it."""

    def __init__(self, engine: Engine, gbnf: str, root: str = "root"):
        llama_cpp = engine._lib
        self._lib = llama_cpp
        self.engine = engine
        self.gbnf = gbnf
        try:
            data = gbnf.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("the grammar is not valid UTF-8") from None
        if b"\0" in data:
            raise UsageError("the grammar contains a NUL byte")
        smpl, log = _run_capturing_stderr(
            lambda: llama_cpp.llama_sampler_init_grammar(engine._vocab, data, root.encode())
        )
        if not smpl:
            raise UsageError(f"the grammar does not parse: {_grammar_parse_error(log)}")
        self._smpl = smpl
        n = engine.n_vocab
        self.n_vocab = n
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._one_arr = self._array(self._one)
        self._all = np.zeros(n, dtype=_TOKEN_DATA)
        self._all["id"] = np.arange(n, dtype=np.int32)
        self._all_arr = self._array(self._all)
        if not any(not engine.is_eog(int(t)) for t in self.allowed_ids()):
            self.close()
            raise UsageError("the grammar matches no text: no token can start it")

    def _eog_candidates(self) -> list[int]:
        ids = {self.engine.eos_id}
        eot = int(self._lib.llama_vocab_eot(self.engine._vocab))
        if eot >= 0:
            ids.add(eot)
        return sorted(t for t in ids if 0 <= t < self.n_vocab)

    def _array(self, buf: np.ndarray):
        lib = self._lib
        ptr = buf.ctypes.data_as(lib.llama_token_data_p)
        return lib.llama_token_data_array(ptr, len(buf), -1, False)

    def _apply(self, arr) -> None:
        self._lib.llama_sampler_apply(self._smpl, ctypes.byref(arr))

    def allows(self, token: int) -> bool:
        """May `token` come next?"""
        one = self._one
        one["id"][0] = token
        one["logit"][0] = 0.0
        self._apply(self._one_arr)
        return bool(np.isfinite(one["logit"][0]))

    def allowed_among(self, ids: np.ndarray) -> np.ndarray:
        """For each id in `ids`, whether it may come next (one call for all of them)."""
        buf = np.zeros(len(ids), dtype=_TOKEN_DATA)
        buf["id"] = ids
        self._apply(self._array(buf))
        return np.isfinite(buf["logit"])

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of the whole vocabulary's logits with forbidden tokens at -inf."""
        arr, buf = self._all_arr, self._all
        buf["logit"] = logits
        arr.size, arr.selected, arr.sorted = self.n_vocab, -1, False
        self._apply(arr)
        return buf["logit"].copy()

    def mask_top(self, logits: np.ndarray, k: int, prefix: int = 1024) -> np.ndarray | None:
        """mask(logits) as far as a top-k draw can tell: only the `prefix` highest logits
        are checked, and the others set to -inf. None when fewer than k of them are
        allowed (then the k best allowed tokens may lie further down: use mask)."""
        n = self.n_vocab
        if prefix >= n:
            return None
        ids = top_k_ids(logits, prefix)  # equal logits at the cut by id, as mask's draw
        ok = ids[self.allowed_among(ids)]
        if len(ok) < k:
            return None
        out = np.full(n, -np.inf, dtype=np.float32)
        out[ok] = logits[ok]
        return out

    def allowed_ids(self) -> np.ndarray:
        """Every token that may come next."""
        return np.flatnonzero(np.isfinite(self.mask(np.zeros(self.n_vocab, dtype=np.float32))))

    def is_complete(self) -> bool:
        """Is the text so far a whole document (may generation end here)?"""
        return any(self.allows(t) for t in self._eog_candidates())

    def accept(self, token: int) -> None:
        """Advance past `token`, which must be allowed (llama.cpp aborts otherwise)."""
        if not self.allows(token):
            raise GptcliError(f"token {token} is not allowed by the grammar here")
        self._lib.llama_sampler_accept(self._smpl, token)

    def reset(self) -> None:
        """Back to the start of the grammar."""
        self._lib.llama_sampler_reset(self._smpl)

    def close(self) -> None:
        smpl, self._smpl = getattr(self, "_smpl", None), None
        if smpl:
            self._lib.llama_sampler_free(smpl)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the library may be gone already
            pass


def json_schema_to_gbnf(schema_text: str) -> str:
    """llama-cpp-python's JSON Schema converter (raises what the converter raises)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf as convert

    return convert(schema_text)

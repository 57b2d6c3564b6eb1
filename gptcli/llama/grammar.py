"""Grammar-constrained sampling on llama.cpp's grammar sampler: a GBNF grammar over an
engine's vocabulary, and JSON Schema to GBNF."""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
import weakref
from collections import Counter

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.llama.engine import Engine, is_verbose, lib, set_verbose
from gptcli.sampling.sampler import top_k_ids

# The numpy sampler draws; a grammar only says which tokens may come next. Checking one
# drawn token costs one small call; the whole vocabulary is masked only when the drawn
# token is refused (as llama.cpp's common sampler does). llama.cpp's mask costs ~0.2 us
# a token, ~10 ms for a 49k vocabulary: the mask asks it only about the tokens that
# the prefix probes below cannot rule out.


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


# UTF-8 sequence length by the first byte's high 4 bits, 0 for a continuation byte:
# llama-grammar.cpp's decode_utf8 table.
_UTF8_LENGTH = (1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4)


def _utf8_remain(piece: bytes, n_remain: int) -> int:
    """Bytes still owed by an unfinished UTF-8 character after `piece`, given `n_remain`
    before it: the n_remain of llama.cpp's grammar state (negative after an invalid
    sequence), computed as its decode_utf8 does, a NUL ending the piece."""
    end = piece.find(0)
    data = piece if end < 0 else piece[:end]
    pos = 0
    while pos < len(data) and n_remain > 0:
        if data[pos] >> 6 != 2:
            return -1
        pos += 1
        n_remain -= 1
    while pos < len(data):
        n_remain = _UTF8_LENGTH[data[pos] >> 4] - 1
        if n_remain < 0:
            return n_remain
        take = min(n_remain, len(data) - pos - 1)  # continuation bytes, not checked
        pos += 1 + take
        n_remain -= take
    return n_remain


def _code_points(piece: bytes) -> str | None:
    """The piece's characters, None unless it is whole, NUL-free UTF-8."""
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text and "\0" not in text else None


_SPLIT = 256  # a prefix with more tokens than this is split by its next character
_DEPTH = 3  # characters of prefix at most


class _PrefixIndex:
    """The vocabulary as a tree of prefixes that are tokens themselves ("probes").

    A grammar made of characters (no token rules) refuses every token that starts with
    a refused token: llama.cpp matches a piece character by character against the same
    stacks, and a shorter piece ends where the longer goes on (one exception: a state
    that is partway through a character, which the caller checks). So a mask asks
    llama.cpp about the probes, depth by depth, and then only about the tokens under the
    probes it allowed: for a grammar of digits, a few hundred tokens instead of the
    whole vocabulary. The result is the same mask, token for token."""

    def __init__(self, pieces: list[bytes], eog: list[bool]):
        n = len(pieces)
        texts = [None if end else _code_points(p) for p, end in zip(pieces, eog, strict=True)]
        probe_of = {text: t for t, text in enumerate(texts) if text is not None}
        # Tokens under each prefix short enough to be split.
        words = [text for text in texts if text]
        counts = Counter({"": n})
        for d in range(1, _DEPTH):
            counts.update(text[:d] for text in words if len(text) >= d)
        node_ids = {"": 0}
        probes, parents, depths = [-1], [-1], [0]  # node 0, the root: the empty prefix
        node_of = []  # the deepest probed prefix of each token
        for text in texts:
            node = 0
            for d in range(1, min(len(text) if text else 0, _DEPTH) + 1):
                if counts[text[: d - 1]] <= _SPLIT:
                    break  # few enough to ask about them all
                prefix = text[:d]
                child = node_ids.get(prefix)
                if child is None:
                    probe = probe_of.get(prefix)
                    if probe is None:
                        break  # no token spells the prefix: its tokens stay with the parent
                    child = node_ids[prefix] = len(probes)
                    probes.append(probe)
                    parents.append(node)
                    depths.append(d)
                node = child
            node_of.append(node)
        node_of = np.array(node_of, dtype=np.int64)
        self.n_nodes = len(probes)
        probes_a, parents_a, depths_a = np.array(probes), np.array(parents), np.array(depths)
        # Depth by depth: the probes there, and the node each one decides.
        self.levels = []
        for d in range(1, int(depths_a.max()) + 1):
            nodes = np.flatnonzero(depths_a == d)
            self.levels.append((nodes, parents_a[nodes], probes_a[nodes].astype(np.int32)))
        # Tokens grouped by node; a node's group is asked about when the node is allowed.
        self.order = np.argsort(node_of, kind="stable").astype(np.int32)
        self.node_of_order = node_of[self.order]
        self.starts = np.searchsorted(self.node_of_order, np.arange(self.n_nodes + 1))
        # Tokens under each node: its own, and its own and its descendants'.
        self.own = np.diff(self.starts)
        self.under = self.own.copy()
        for node in range(self.n_nodes - 1, 0, -1):  # children come after their parents
            self.under[parents_a[node]] += self.under[node]


# One index per engine's vocabulary. Building it reads every token's piece: 0.2-0.7 s
# for 49k tokens (by load), as long as ~30 whole-vocabulary masks. So it is built once
# a grammar has needed that many: a run with a few refused draws never pays for it, a
# run that fights the grammar pays at most twice what the whole masks would have cost.
_INDEXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_INDEX_AFTER = 32

# llama.cpp's GBNF token rules (<[id]>, <name>, !<...>) match a token by its id, not its
# text: a grammar with any of them is masked the whole way. Literals, character classes
# and comments are removed before looking.
_GBNF_TEXT = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*')


def _uses_token_rules(gbnf: str) -> bool:
    rest = _GBNF_TEXT.sub(" ", gbnf)
    return "<" in rest or "!" in rest


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
        self._some = np.zeros(n, dtype=_TOKEN_DATA)  # scratch for asking about a subset
        self._some_arr = self._array(self._some)
        self._by_prefix = not _uses_token_rules(gbnf)
        self._n_remain = 0  # llama.cpp's partial_utf8.n_remain after the accepted tokens
        self._candidates_known = False  # _candidates() is computed for this state
        self._candidates_now: np.ndarray | None = None
        self._whole_masks = 0  # masks that asked llama.cpp about every token
        self.last_mask_asked = 0  # tokens the last mask() asked about, its probes aside
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
        m = len(ids)
        buf, arr = self._some, self._some_arr
        buf["id"][:m] = ids
        buf["logit"][:m] = 0.0
        arr.size, arr.selected, arr.sorted = m, -1, False
        self._apply(arr)
        return np.isfinite(buf["logit"][:m])

    def _index(self) -> _PrefixIndex | None:
        engine = self.engine
        index = _INDEXES.get(engine)
        if index is None and self._whole_masks >= _INDEX_AFTER:
            index = _INDEXES[engine] = _PrefixIndex(*self._vocabulary())
        return index

    def _vocabulary(self) -> tuple[list[bytes], list[bool]]:
        """Every token's piece as the grammar sees it, and whether it ends generation."""
        lib, vocab, engine = self._lib, self.engine._vocab, self.engine
        to_piece, is_eog = lib.llama_token_to_piece, lib.llama_vocab_is_eog
        buf = ctypes.create_string_buffer(256)
        pieces = []
        for t in range(self.n_vocab):  # the hot loop of the build: no cache, no checks
            size = to_piece(vocab, t, buf, 256, 0, True)
            pieces.append(buf.raw[:size] if 0 <= size <= 256 else engine.piece(t))
        return pieces, [bool(is_eog(vocab, t)) for t in range(self.n_vocab)]

    def _candidates(self) -> np.ndarray | None:
        """Every token that may come next and some that may not (ids), or None where only
        the whole vocabulary can tell (token rules; a character left unfinished) or where
        most of it may come next (the probes would not pay)."""
        if not self._by_prefix or self._n_remain > 0:
            return None
        if self._candidates_known:
            return self._candidates_now
        index = self._index()
        if index is None:
            return None
        # Nearly every token may come next (a JSON string): the whole mask is cheaper.
        most = self.n_vocab * 7 // 8
        ok = np.zeros(index.n_nodes, dtype=bool)
        ok[0] = True
        settled = index.starts[1]  # the root's own tokens, always asked about
        for nodes, parents, probes in index.levels:
            live = ok[parents]
            if not live.any():
                break
            ok[nodes[live]] = self.allowed_among(probes[live])
            allowed = nodes[ok[nodes]]
            if settled + index.under[allowed].sum() > most:
                self._candidates_known, self._candidates_now = True, None
                return None
            settled += index.own[allowed].sum()
        chosen = np.flatnonzero(ok)
        if len(chosen) <= 64:
            starts, order = index.starts, index.order
            cand = np.concatenate([order[starts[i] : starts[i + 1]] for i in chosen])
        else:
            cand = index.order[ok[index.node_of_order]]
        self._candidates_known, self._candidates_now = True, cand
        return cand

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of the whole vocabulary's logits with forbidden tokens at -inf."""
        cand = self._candidates()
        if cand is not None:
            self.last_mask_asked = len(cand)
            allowed = cand[self.allowed_among(cand)]
            out = np.full(self.n_vocab, -np.inf, dtype=np.float32)
            out[allowed] = logits[allowed]
            return out
        self._whole_masks += 1
        self.last_mask_asked = self.n_vocab
        return self.mask_all(logits)

    def mask_all(self, logits: np.ndarray) -> np.ndarray:
        """mask(logits) by asking llama.cpp about every token (the reference)."""
        arr, buf = self._all_arr, self._all
        buf["logit"] = logits
        arr.size, arr.selected, arr.sorted = self.n_vocab, -1, False
        self._apply(arr)
        return buf["logit"].copy()

    def mask_top(self, logits: np.ndarray, k: int, prefix: int = 1024) -> np.ndarray | None:
        """mask(logits) as far as a top-k draw can tell: only the `prefix` highest logits
        are checked, and the others set to -inf. None when fewer than k of them are
        allowed (then the k best allowed tokens may lie further down: use mask). The
        whole mask when it is as cheap (few tokens can come next)."""
        n = self.n_vocab
        cand = self._candidates()
        if cand is not None and len(cand) <= 2 * prefix:
            return self.mask(logits)
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
        return np.flatnonzero(np.isfinite(self.mask_all(np.zeros(self.n_vocab, dtype=np.float32))))

    def is_complete(self) -> bool:
        """Is the text so far a whole document (may generation end here)?"""
        return any(self.allows(t) for t in self._eog_candidates())

    def accept(self, token: int) -> None:
        """Advance past `token`, which must be allowed (llama.cpp aborts otherwise)."""
        if not self.allows(token):
            raise GptcliError(f"token {token} is not allowed by the grammar here")
        self._lib.llama_sampler_accept(self._smpl, token)
        self._n_remain = _utf8_remain(self.engine.piece(token), self._n_remain)
        self._candidates_known = False

    def reset(self) -> None:
        """Back to the start of the grammar."""
        self._lib.llama_sampler_reset(self._smpl)
        self._n_remain = 0
        self._candidates_known = False

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

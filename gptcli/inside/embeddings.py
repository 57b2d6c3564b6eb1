"""The model's own token-embedding matrix: dequantized once, cached, and searched
by cosine similarity (`gptcli embed neighbors`, `gptcli embed analogy`).

The matrix is read from the GGUF file with the `gguf` package and dequantized with
`gguf.quants.dequantize`. The float32 matrix, its row norms and the text of every
token are cached under the user cache directory (`$GPTCLI_CACHE_DIR`, else
platformdirs' `user_cache_dir("gptcli")`), never beside the model file, so the next
call only memory-maps them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gptcli.errors import GptcliError, UsageError
from gptcli.paths import cache_root

if TYPE_CHECKING:
    import numpy as np

    from gptcli.model.gguf_check import GGUFHeader

EMBEDDING_TENSOR = "token_embd.weight"
CACHE_FORMAT = 1  # bump when the files below change
_FILES = ("matrix.npy", "norms.npy", "pieces.bin", "offsets.npy", "control.npy", "meta.json")


def _cache_dir(model: Path) -> tuple[Path, str]:
    """(this file's cache folder, the prefix every version of the same path shares).

    Keyed by file identity: resolved path, size and modification time, so a file
    replaced in place gets a fresh entry without hashing 100s of MB."""
    resolved = model.resolve()
    st = resolved.stat()
    prefix = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    ident = f"{CACHE_FORMAT}:{st.st_size}:{st.st_mtime_ns}".encode()
    version = hashlib.sha256(ident).hexdigest()[:16]
    return cache_root() / "embeddings" / f"{prefix}-{version}", prefix


@dataclass
class Query:
    """The vector a word stands for: one token's row, or the mean of several."""

    word: str
    form: str  # the text actually tokenized, e.g. " king"
    ids: list[int]
    pieces: list[str]

    @property
    def is_mean(self) -> bool:
        return len(self.ids) > 1

    def describe(self) -> str:
        toks = ", ".join(f"{p!r} ({i})" for p, i in zip(self.pieces, self.ids, strict=True))
        if self.is_mean:
            return f"{self.word!r}: mean of {len(self.ids)} tokens of {self.form!r}: {toks}"
        return f"{self.word!r}: token {toks}"

    def to_dict(self) -> dict:
        return {
            "word": self.word,
            "form": self.form,
            "ids": self.ids,
            "pieces": self.pieces,
            "mean_of_tokens": self.is_mean,
        }


@dataclass
class Neighbour:
    id: int
    piece: str
    cosine: float


class EmbeddingSpace:
    """The dequantized token-embedding matrix (rows: tokens) and each token's text."""

    def __init__(
        self,
        matrix: np.ndarray,
        norms: np.ndarray,
        blob: bytes,
        offsets: np.ndarray,
        control: np.ndarray,
        unknown_id: int | None = None,
    ):
        self.matrix = matrix
        self.norms = norms
        # Every token's bytes, concatenated: token i is blob[offsets[i]:offsets[i + 1]].
        # Sliced on demand: a list or dict of 50k pieces costs more than a query.
        self._blob = blob
        self._offsets = offsets
        self.control = control
        self.unknown_id = unknown_id  # what the tokenizer emits for text it cannot encode

    @property
    def n_vocab(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.matrix.shape[1])

    def piece(self, token: int) -> bytes:
        return self._blob[int(self._offsets[token]) : int(self._offsets[token + 1])]

    def text(self, token: int) -> str:
        return self.piece(token).decode("utf-8", errors="backslashreplace")

    def single_token(self, text: str) -> int | None:
        """The id of the (non-special) token whose text is exactly `text`, if any."""
        import numpy as np

        want = text.encode("utf-8")
        if not want:
            return None
        pos = self._blob.find(want)
        while pos >= 0:
            # A match counts only where a token starts and the same token ends.
            i = int(np.searchsorted(self._offsets, pos, side="right")) - 1
            if (
                self._offsets[i] == pos
                and self._offsets[i + 1] == pos + len(want)
                and not self.control[i]
            ):
                return i
            pos = self._blob.find(want, pos + 1)
        return None

    def vector(self, ids: Sequence[int]) -> np.ndarray:
        """One token's row, or the mean of several rows."""
        import numpy as np

        return np.asarray(self.matrix[list(ids)], dtype=np.float32).mean(axis=0)

    def nearest(self, vec: np.ndarray, k: int, exclude: Sequence[int] = ()) -> list[Neighbour]:
        """The k tokens whose rows have the highest cosine similarity with `vec`;
        special tokens and `exclude` left out."""
        import numpy as np

        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            raise GptcliError("the query vector is zero: cosine similarity is undefined")
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = (self.matrix @ vec.astype(np.float32)) / (self.norms * norm)
        scores = np.where(np.isfinite(scores), scores, -np.inf)  # all-zero rows
        scores[self.control] = -np.inf
        scores[list(exclude)] = -np.inf
        k = max(0, min(k, int(np.isfinite(scores).sum())))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Neighbour(int(i), self.text(int(i)), float(scores[i])) for i in top]


def word_query(
    space: EmbeddingSpace,
    word: str,
    tokenize: Callable[[str], list[int]],
    *,
    exact: bool = False,
) -> Query:
    """The token(s) a word stands for.

    In a byte-level BPE vocabulary a word inside a sentence is the token with its
    leading space (" king"); the bare form ("king") is usually the piece that ends
    another word ("mak|king"). So a bare word is looked up as " word" first, then
    as typed; when neither is one token, the tokens of " word" are averaged.
    `exact` (or a word that already starts with a space) takes the text as typed.
    `tokenize` (text -> ids, no BOS) is only called when no single token matches.
    """
    if not word.strip():
        raise UsageError("empty word: give a word or a piece of text")
    forms = [word] if exact or word[0].isspace() else [" " + word, word]
    for form in forms:
        tid = space.single_token(form)
        if tid is not None:
            return Query(word, form, [tid], [space.text(tid)])
    form = forms[0]
    ids = tokenize(form)
    bad = [
        i for i in ids if not 0 <= i < space.n_vocab or space.control[i] or i == space.unknown_id
    ]
    if not ids or bad:
        raise UsageError(f"the model cannot encode {word!r} as tokens of its vocabulary")
    return Query(word, form, list(ids), [space.text(i) for i in ids])


def load_cached(model: Path) -> EmbeddingSpace | None:
    """The cached space for this exact file, memory-mapped, or None."""
    import numpy as np

    folder, _ = _cache_dir(model)
    if not (folder / "meta.json").is_file():
        return None
    try:
        matrix = np.load(folder / "matrix.npy", mmap_mode="r")
        norms = np.load(folder / "norms.npy")
        control = np.load(folder / "control.npy")
        offsets = np.load(folder / "offsets.npy")
        blob = (folder / "pieces.bin").read_bytes()
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None  # damaged entry: rebuild it
    n = matrix.shape[0]
    if matrix.ndim != 2 or norms.shape != (n,) or control.shape != (n,) or len(offsets) != n + 1:
        return None
    if int(offsets[-1]) != len(blob):
        return None
    unk = meta.get("unknown_token_id") if isinstance(meta, dict) else None
    unk = unk if isinstance(unk, int) else None
    return EmbeddingSpace(matrix, norms, blob, offsets, control, unk)


def dequantized_embedding(header: GGUFHeader) -> np.ndarray:
    """The token-embedding matrix as float32, shape (vocabulary, d_model)."""
    import numpy as np
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    info = next((t for t in header.tensors if t.name == EMBEDDING_TENSOR), None)
    if info is None:
        raise GptcliError(f"{header.path.name} has no token embedding ({EMBEDDING_TENSOR})")
    if len(info.shape) != 2:
        raise GptcliError(f"{EMBEDDING_TENSOR} has shape {info.shape}, not a matrix")
    try:
        qtype = GGMLQuantizationType(info.type)
    except ValueError:
        raise GptcliError(f"{EMBEDDING_TENSOR} has an unknown type {info.type}") from None
    d_model, n_vocab = info.shape  # GGUF order: the row length comes first
    raw = np.memmap(header.path, dtype=np.uint8, mode="r", offset=info.offset, shape=info.nbytes)
    try:
        matrix = dequantize(np.asarray(raw).reshape(n_vocab, -1), qtype)
    except (NotImplementedError, ValueError, TypeError):
        raise GptcliError(
            f"the gguf package cannot dequantize {EMBEDDING_TENSOR} of type {qtype.name}"
        ) from None
    return np.ascontiguousarray(matrix.reshape(n_vocab, d_model), dtype=np.float32)


def build(
    model: Path,
    header: GGUFHeader,
    matrix: np.ndarray,
    pieces: Sequence[bytes],
    control: Sequence[bool],
) -> EmbeddingSpace:
    """Write the cache entry for `matrix` (from `dequantized_embedding`) atomically
    and return the space.

    `pieces` and `control` come from the tokenizer (llama.cpp): each token's exact
    bytes and whether it is a special token. Rows past the tokenizer's vocabulary
    (padding some models carry) count as special, so no search returns them."""
    import numpy as np

    n = matrix.shape[0]
    pieces = [bytes(pieces[i]) if i < len(pieces) else b"" for i in range(n)]
    control_arr = np.array([bool(control[i]) if i < len(control) else True for i in range(n)])
    norms = np.linalg.norm(matrix, axis=1).astype(np.float32)
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in pieces])
    unk = header.metadata.get("tokenizer.ggml.unknown_token_id")
    unk = unk if isinstance(unk, int) and not isinstance(unk, bool) else None
    folder, prefix = _cache_dir(model)
    try:
        _write_atomically(folder, prefix, matrix, norms, pieces, offsets, control_arr, header, unk)
    except OSError as e:  # a read-only or full cache must not stop the command
        from gptcli.console import notice

        notice(f"could not write the embedding cache in {folder.parent}: {e.strerror or e}")
    return EmbeddingSpace(matrix, norms, b"".join(pieces), offsets, control_arr, unk)


def _write_atomically(folder, prefix, matrix, norms, pieces, offsets, control, header, unk):
    import numpy as np

    folder.parent.mkdir(parents=True, exist_ok=True)
    # Fill a private folder, then rename it into place in one step: a reader sees a
    # complete entry or none, and two writers racing both end with a valid one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        np.save(tmp / "matrix.npy", matrix)
        np.save(tmp / "norms.npy", norms)
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "control.npy", control)
        (tmp / "pieces.bin").write_bytes(b"".join(pieces))
        info = next(t for t in header.tensors if t.name == EMBEDDING_TENSOR)
        meta = {
            "format": CACHE_FORMAT,
            "model": str(header.path.resolve()),
            "file_size": header.file_size,
            "tensor": {"name": info.name, "type": info.type, "shape": list(info.shape)},
            "unknown_token_id": unk,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
            # Another process finished first: its entry is as good as ours.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Entries for earlier versions of the same file are stale now.
    for old in folder.parent.glob(f"{prefix}-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def cache_files(model: Path) -> list[Path]:
    """The files of this model's cache entry (for tests and `--verbose` notes)."""
    folder, _ = _cache_dir(model)
    return [folder / f for f in _FILES]

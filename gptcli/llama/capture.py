"""Named points inside llama.cpp's forward pass, and a capture pass that copies them.

llama.cpp names the nodes of its graph; the ones gptcli reads are listed once, in
POINTS, with their shapes (as TransformerLens names its hook points). `capture`
evaluates tokens in a side context and hands back copies of the named tensors;
`wanting` builds its filter, `by_layer` sorts what came back.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.llama.engine import ContextFull, Engine, _apply_steering, _ggml_base


@dataclass(frozen=True)
# llama.cpp hands every node of its graph to an eval callback. A capture runs in a
# side context of its own (flash attention off, so the attention weights exist as a
# tensor; every position's logits requested, so the last layer keeps every row), which
# is why generation in the main context pays nothing for it.


class CapturePoint:
    """One named tensor of llama.cpp's graph, `{kind}-{layer}`."""

    kind: str
    what: str
    shape: str


POINTS = {
    p.kind: p
    for p in (
        CapturePoint("l_out", "the residual stream after layer N", "(tokens, d_model)"),
        CapturePoint(
            "ffn_inp",
            "the residual stream after layer N's attention, before its MLP",
            "(tokens, d_model)",
        ),
        CapturePoint(
            "kq_soft_max",
            "layer N's attention weights (only with flash attention off)",
            "(heads, queries, keys)",
        ),
    )
}
RESIDUAL = "l_out"
MID_RESIDUAL = "ffn_inp"
ATTENTION = "kq_soft_max"


def point_name(kind: str, layer: int) -> str:
    """`l_out-3`: the graph's name for a point at a layer."""
    return f"{POINTS[kind].kind}-{layer}"


def parse_name(name: str) -> tuple[str, int] | None:
    """(kind, layer) of a graph tensor name that is one of POINTS, else None."""
    kind, sep, layer = name.rpartition("-")
    if sep and kind in POINTS and layer.isdigit():
        return kind, int(layer)
    return None


def is_attention(name: str) -> bool:
    parsed = parse_name(name)
    return parsed is not None and parsed[0] == ATTENTION


def wanting(kinds: set[str], layers: set[int] | None = None) -> Callable[[str], bool]:
    """The capture filter: these kinds of point, at every layer or at `layers`."""
    unknown = kinds - set(POINTS)
    if unknown:
        raise ValueError(f"no capture point named {sorted(unknown)}")

    def want(name: str) -> bool:
        parsed = parse_name(name)
        return parsed is not None and parsed[0] in kinds and (layers is None or parsed[1] in layers)

    return want


def by_layer(tensors: dict[str, np.ndarray], kind: str) -> dict[int, np.ndarray]:
    """layer -> array, for the captured points of one kind."""
    out = {}
    for name, arr in tensors.items():
        parsed = parse_name(name)
        if parsed is not None and parsed[0] == kind:
            out[parsed[1]] = arr
    return out


class _TensorHead(ctypes.Structure):
    """The leading fields of ggml's `struct ggml_tensor` (stable since 2023)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    ]


_GGML_F32, _GGML_F16 = 0, 1


@dataclass
class Captured:
    """What one capture pass saw: tensors by name, and the logits of every position.

    Activations are (tokens, width) arrays; attention weights (heads, queries, keys)
    with keys cut to the tokens evaluated."""

    tokens: list[int]
    tensors: dict[str, np.ndarray]
    logits: np.ndarray  # (tokens, vocabulary)


def _tensor_array(lib, t: int) -> np.ndarray | None:
    """A copy of a computed tensor as a numpy array in row-major order, or None when
    its element type is not a float type we read."""
    head = _TensorHead.from_address(t)
    if head.type not in (_GGML_F32, _GGML_F16):
        return None
    dtype = np.float32 if head.type == _GGML_F32 else np.float16
    shape = tuple(int(n) for n in reversed(head.ne))  # ggml: fastest dimension first
    size = int(lib.ggml_nbytes(t))
    out = np.empty(shape, dtype=dtype)
    if out.nbytes != size:  # a non-contiguous view: not something we can copy plainly
        return None
    lib.ggml_backend_tensor_get(t, out.ctypes.data, 0, size)
    return out.astype(np.float32, copy=False)


def _stitch(name: str, parts: list[np.ndarray], n_tokens: int) -> np.ndarray:
    """Join what each ubatch produced into one array over all positions."""
    if is_attention(name):  # attention: (streams, heads, queries, keys)
        rows = []
        for p in parts:
            p = p.reshape(-1, *p.shape[-2:])[:, :, :n_tokens]
            if p.shape[2] < n_tokens:  # an early ubatch saw fewer keys: the rest are 0
                p = np.pad(p, ((0, 0), (0, 0), (0, n_tokens - p.shape[2])))
            rows.append(p)
        return np.concatenate(rows, axis=1)
    flat = [p.reshape(-1, p.shape[-1]) for p in parts]  # activations: (tokens, width)
    return np.concatenate(flat, axis=0)


def capture(self: Engine, tokens: Sequence[int], wanted, keep=None) -> Captured:
    """Evaluate `tokens` from an empty context of their own and return copies of the
    graph tensors whose names `wanted(name)` accepts.

    keep(name, array) may shrink each copy as it arrives (for example to the last
    query's attention row), so long prompts do not hold every matrix."""
    lib = _ggml_base()
    llama_cpp = self._lib
    tokens = list(tokens)
    n = len(tokens)
    if n == 0:
        raise UsageError("nothing to evaluate: the prompt is empty")
    if n > self.n_ctx:
        raise ContextFull(n, self.n_ctx)
    parts: dict[str, list[np.ndarray]] = {}

    def on_tensor(t, ask, user_data):
        name = lib.ggml_get_name(t)
        name = name.decode("utf-8", "replace") if name else ""
        if ask:
            return bool(wanted(name))
        arr = _tensor_array(lib, t)
        if arr is not None:
            if keep is not None:
                arr = keep(name, arr)
            parts.setdefault(name, []).append(arr)
        return True  # False would stop the computation

    callback = llama_cpp.ggml_backend_sched_eval_callback(on_tensor)
    from llama_cpp._internals import LlamaBatch, LlamaContext

    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = max(256, -(-n // 256) * 256)
    cparams.n_batch = cparams.n_ctx
    cparams.n_ubatch = min(512, cparams.n_ctx)
    cparams.n_threads = cparams.n_threads_batch = self.n_threads
    cparams.n_seq_max = 1
    if hasattr(cparams, "flash_attn_type"):
        cparams.flash_attn_type = 0  # disabled: the softmax must exist as a tensor
    else:
        cparams.flash_attn = False
    cparams.cb_eval = callback
    cparams.cb_eval_user_data = None
    try:
        side = LlamaContext(model=self._model, params=cparams, verbose=False)
    except (ValueError, RuntimeError):
        raise GptcliError(
            f"llama.cpp could not create a capture context of {n} tokens (out of memory?)"
        ) from None
    if self.steering is not None:  # what the user steers is what the lens sees
        _apply_steering(self, side.ctx)
    batch = LlamaBatch(n_tokens=n, embd=0, n_seq_max=1)
    try:
        b = batch.batch
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = i
            b.seq_id[i][0] = 0
            b.n_seq_id[i] = 1
            b.logits[i] = True
        b.n_tokens = n
        rc = llama_cpp.llama_decode(side.ctx, b)
        if rc != 0:
            raise GptcliError(f"llama.cpp failed to evaluate the tokens (llama_decode {rc})")
        ptr = llama_cpp.llama_get_logits(side.ctx)
        logits = np.array(np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab)), copy=True)
    finally:
        batch.close()
        side.close()
        del callback  # referenced until llama.cpp can no longer call it
    tensors = {name: _stitch(name, p, n) for name, p in parts.items()}
    return Captured(tokens, tensors, logits)

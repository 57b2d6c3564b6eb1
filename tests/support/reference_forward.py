"""An independent float64 forward pass of a llama-architecture GGUF, in numpy.

The oracle for `lens` and `attention`: it shares no code with gptcli. Weights are
read with gguf's own reader and dequantized with `gguf.quants.dequantize`; every
activation is float64. It returns what llama.cpp's graph names `l_out-N` (the residual
stream after layer N), `ffn_inp-N` (after attention, before the MLP), the attention
weights of every layer and head, and the final logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Forward:
    l_out: list[np.ndarray]  # per layer: (tokens, d_model)
    ffn_inp: list[np.ndarray]  # per layer: (tokens, d_model)
    attention: list[np.ndarray]  # per layer: (heads, queries, keys)
    logits: np.ndarray  # (tokens, vocab)
    final_norm: np.ndarray  # (d_model,)
    unembedding: np.ndarray  # (vocab, d_model)
    eps: float


def weights(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """The dequantized weights (float64, read-only) and hyperparameters, read once per
    file and process for the tiny models: gguf's reader spends ~8 s parsing the 49k-token
    vocabulary, and a test runs several passes over one file. Keyed on size and mtime, so
    a rewritten file is read again. SmolLM2 (1 GB in float64) is not kept. With
    share_weights_in(folder), other processes (the xdist workers) read what one wrote."""
    p = Path(path).resolve()
    st = p.stat()
    if st.st_size > _CACHE_MAX_BYTES:
        return _read_weights(p)
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        w, meta = _read_shared(p) if _SHARED else _read_weights(p)
        for a in w.values():
            a.flags.writeable = False  # shared by every later pass: a write would raise
        _CACHE[key] = w, meta
    return _CACHE[key]


_CACHE: dict[tuple, tuple[dict[str, np.ndarray], dict[str, object]]] = {}
_CACHE_MAX_BYTES = 64 << 20
_SHARED: list[Path] = []


def share_weights_in(folder: Path) -> None:
    _SHARED[:] = [Path(folder)]


def _read_shared(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """gguf's reading of `path`, kept as .npz under the shared folder by the file's
    content: the same tiny model written by two workers is read once."""
    import hashlib
    import json

    from filelock import FileLock

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:24]
    out = _SHARED[0] / f"weights-{digest}.npz"
    with FileLock(str(out) + ".lock"):
        if not out.exists():
            w, meta = _read_weights(path)
            part = out.with_name(out.name + ".part.npz")
            np.savez(part, __meta__=np.array(json.dumps(meta)), **w)
            part.rename(out)
    with np.load(out) as z:
        meta = json.loads(str(z["__meta__"]))
        return {k: z[k] for k in z.files if k != "__meta__"}, meta


def _read_weights(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    weights = {}
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape))  # numpy order: rows first
        weights[t.name] = np.asarray(data, dtype=np.float64).reshape(shape)
    meta = {}
    for key, field in reader.fields.items():
        if field.types and len(field.data) == 1 and key.startswith("llama."):
            meta[key] = field.parts[field.data[0]][0].item()
    return weights, meta


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, base: float) -> np.ndarray:
    """ggml's normal RoPE: adjacent pairs (2i, 2i+1) rotated by pos * base^(-2i/d)."""
    n, heads, d = x.shape
    pos = np.arange(n, dtype=np.float64)[:, None]
    theta = pos * base ** (-np.arange(0, d, 2, dtype=np.float64) / d)[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(path: Path, tokens: list[int], add: dict[int, np.ndarray] | None = None) -> Forward:
    """`add`: a vector added to layer N's output (a control vector), by layer."""
    w, meta = weights(path)
    n_layers = int(meta["llama.block_count"])
    n_head = int(meta["llama.attention.head_count"])
    n_kv = int(meta["llama.attention.head_count_kv"])
    eps = float(meta["llama.attention.layer_norm_rms_epsilon"])
    base = float(meta.get("llama.rope.freq_base", 10000.0))
    emb = w["token_embd.weight"]
    x = emb[tokens]
    n, d = x.shape
    hd = d // n_head
    causal = np.triu(np.full((n, n), -np.inf), k=1)
    l_out, ffn_inp, attention = [], [], []
    for i in range(n_layers):
        p = f"blk.{i}."
        h = _rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = _rope((h @ w[p + "attn_q.weight"].T).reshape(n, n_head, hd), base)
        k = _rope((h @ w[p + "attn_k.weight"].T).reshape(n, n_kv, hd), base)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, n_kv, hd)
        group = n_head // n_kv
        probs = np.empty((n_head, n, n))
        out = np.empty((n, n_head, hd))
        for hh in range(n_head):
            kk, vv = k[:, hh // group], v[:, hh // group]
            s = q[:, hh] @ kk.T / np.sqrt(hd) + causal
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            probs[hh] = s
            out[:, hh] = s @ vv
        attention.append(probs)
        x = x + out.reshape(n, d) @ w[p + "attn_output.weight"].T
        ffn_inp.append(x.copy())
        h = _rms_norm(x, w[p + "ffn_norm.weight"], eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        up = h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        if add is not None and i in add:
            x = x + np.asarray(add[i], dtype=np.float64)
        l_out.append(x.copy())
    norm = w["output_norm.weight"]
    unemb = w.get("output.weight", emb)
    logits = _rms_norm(x, norm, eps) @ unemb.T
    return Forward(l_out, ffn_inp, attention, logits, norm, unemb, eps)


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def lens_probs(fwd: Forward, residual: np.ndarray) -> np.ndarray:
    """The logit lens in float64: final norm, then the unembedding, then softmax."""
    return softmax(_rms_norm(residual, fwd.final_norm, fwd.eps) @ fwd.unembedding.T)

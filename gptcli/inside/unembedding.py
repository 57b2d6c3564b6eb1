"""The model's last step, read from the weights: the final norm and the unembedding
matrix, so any residual-stream vector can be turned into next-token logits (the
logit lens).

Which norm, which matrix and which scalings come from the file, as data: an RMS norm
when the header gives `{arch}.attention.layer_norm_rms_epsilon`, a layer norm (with
its bias) when it gives `layer_norm_epsilon`; `output.weight` or, when the model ties
them, the token embedding; Gemma 2's final soft-capping; the logit scales of Granite
and Cohere. The dequantized matrix is cached as float32 like `embed` caches its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from gptcli.errors import GptcliError
from gptcli.model.gguf_check import GGUFHeader
from gptcli.paths import cache_root, write_atomic

CACHE_FORMAT = 1

# Architectures whose logits are scaled after the unembedding: (key, how).
LOGIT_SCALES = {"granite": "divide", "granitemoe": "divide", "cohere": "multiply"}


@dataclass
class FinalStep:
    """Final norm + unembedding (+ scalings) of one model."""

    norm: str  # "rms" or "layer"
    weight: np.ndarray | None
    bias: np.ndarray | None
    eps: float
    unembedding: np.ndarray  # (vocabulary, d_model), float32, usually memory-mapped
    softcap: float | None = None
    scale: tuple[str, float] | None = None
    tied: bool = True

    @property
    def n_vocab(self) -> int:
        return self.unembedding.shape[0]

    def normed(self, h: np.ndarray) -> np.ndarray:
        x = np.asarray(h, dtype=np.float64)
        if self.norm == "rms":
            x = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps)
        else:
            x = x - x.mean(axis=-1, keepdims=True)
            x = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps)
        if self.weight is not None:
            x = x * self.weight
        if self.bias is not None:
            x = x + self.bias
        return x

    def logits(self, h: np.ndarray) -> np.ndarray:
        """(rows, d_model) residual vectors -> (rows, vocabulary) logits, float64."""
        x = self.normed(np.atleast_2d(h)).astype(np.float32)
        z = (x @ self.unembedding.T).astype(np.float64)
        if self.scale is not None:
            how, s = self.scale
            z = z / s if how == "divide" else z * s
        if self.softcap:
            z = self.softcap * np.tanh(z / self.softcap)
        return z


def _tensor(header: GGUFHeader, name: str):
    return next((t for t in header.tensors if t.name == name), None)


def dequantize(header: GGUFHeader, name: str) -> np.ndarray:
    """A tensor of the (already checked) file as float32, numpy order (rows first)."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    info = _tensor(header, name)
    if info is None:
        raise GptcliError(f"{header.path.name} has no tensor {name}")
    try:
        qtype = GGMLQuantizationType(info.type)
    except ValueError:
        raise GptcliError(f"{name} has an unknown type {info.type}") from None
    shape = tuple(reversed(info.shape))
    raw = np.memmap(header.path, dtype=np.uint8, mode="r", offset=info.offset, shape=info.nbytes)
    rows = shape[0] if len(shape) > 1 else 1
    try:
        data = gguf_dequantize(np.asarray(raw).reshape(rows, -1), qtype)
    except (NotImplementedError, ValueError, TypeError):
        raise GptcliError(f"the gguf package cannot dequantize {name} ({qtype.name})") from None
    return np.ascontiguousarray(data.reshape(shape), dtype=np.float32)


def _cached_matrix(header: GGUFHeader, name: str) -> tuple[np.ndarray, bool]:
    """(the matrix, whether it had to be dequantized now)."""
    path = header.path.resolve()
    st = path.stat()
    key = f"{CACHE_FORMAT}:{path}:{st.st_size}:{st.st_mtime_ns}:{name}".encode()
    file = cache_root() / "unembedding" / (hashlib.sha256(key).hexdigest()[:24] + ".npy")
    if file.is_file():
        try:
            return np.load(file, mmap_mode="r"), False
        except (OSError, ValueError):
            pass  # damaged: rebuild it
    matrix = dequantize(header, name)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(file, lambda f: np.save(f, matrix))
    except OSError:
        pass  # a read-only cache costs the next run a dequantization, nothing more
    return matrix, True


def final_step(header: GGUFHeader) -> tuple[FinalStep, bool]:
    """The model's final step, and whether the unembedding was dequantized just now."""
    arch = header.architecture
    rms_eps = header.get("{arch}.attention.layer_norm_rms_epsilon")
    ln_eps = header.get("{arch}.attention.layer_norm_epsilon")
    if isinstance(rms_eps, float):
        norm, eps = "rms", rms_eps
    elif isinstance(ln_eps, float):
        norm, eps = "layer", ln_eps
    else:
        raise GptcliError(
            f"cannot read the final norm of a {arch!r} model (no layer_norm epsilon in its "
            "header); the lens supports RMS-norm and layer-norm transformers"
        )
    if _tensor(header, "output_norm.weight") is None:
        raise GptcliError(f"a {arch!r} model without output_norm.weight: the lens cannot run")
    weight = dequantize(header, "output_norm.weight").astype(np.float64).reshape(-1)
    bias = None
    if _tensor(header, "output_norm.bias") is not None:
        bias = dequantize(header, "output_norm.bias").astype(np.float64).reshape(-1)
    tied = _tensor(header, "output.weight") is None
    matrix, fresh = _cached_matrix(header, "token_embd.weight" if tied else "output.weight")
    softcap = header.get("{arch}.final_logit_softcapping")
    scale = None
    how = LOGIT_SCALES.get(arch)
    value = header.get("{arch}.logit_scale")
    if how and isinstance(value, float) and value:
        scale = (how, value)
    step = FinalStep(
        norm,
        weight,
        bias,
        float(eps),
        matrix,
        float(softcap) if isinstance(softcap, float) and softcap > 0 else None,
        scale,
        tied,
    )
    return step, fresh

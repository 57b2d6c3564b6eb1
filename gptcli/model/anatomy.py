"""What `gptcli inspect` reads from a GGUF file: the hyperparameters and the
parameter tally by matrix kind, the way the explanation counts GPT-3's 175 billion.

Everything comes from the header that `gguf_check.read_header` has validated:
no weights are read and no inference is run.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gptcli.errors import GptcliError
from gptcli.model.gguf_check import GGUFHeader, TensorInfo, _file_type_name, read_header, type_name
from gptcli.model.naming import display_name

# (kind, label) in the order the explanation walks through a transformer.
KINDS: list[tuple[str, str]] = [
    ("token_embedding", "token embedding"),
    ("position_embedding", "position embedding"),
    ("attn_query", "attention: query"),
    ("attn_key", "attention: key"),
    ("attn_value", "attention: value"),
    ("attn_qkv", "attention: query+key+value (fused)"),
    ("attn_output", "attention: output"),
    ("mlp_router", "MLP: expert router"),
    ("mlp_gate", "MLP: gate"),
    ("mlp_up", "MLP: up"),
    ("mlp_down", "MLP: down"),
    ("norm", "norms"),
    ("unembedding", "unembedding"),
]
_LABELS = dict(KINDS)

# GGUF tensor base names (after `blk.N.` and before `.weight`/`.bias`) by kind.
# The names are shared by every architecture llama.cpp writes (gguf.constants).
_BASE_KINDS = {
    "token_embd": "token_embedding",
    "pos_embd": "position_embedding",
    "attn_q": "attn_query",
    "attn_q_a": "attn_query",
    "attn_q_b": "attn_query",
    "attn_k": "attn_key",
    "attn_k_b": "attn_key",
    "attn_v": "attn_value",
    "attn_v_b": "attn_value",
    "attn_qkv": "attn_qkv",
    "attn_kv_a_mqa": "attn_qkv",
    "attn_kv_b": "attn_qkv",
    "attn_output": "attn_output",
    "attn_out": "attn_output",
    "ffn_gate_inp": "mlp_router",
    "ffn_gate": "mlp_gate",
    "ffn_gate_exps": "mlp_gate",
    "ffn_gate_shexp": "mlp_gate",
    "ffn_up": "mlp_up",
    "ffn_up_exps": "mlp_up",
    "ffn_up_shexp": "mlp_up",
    "ffn_down": "mlp_down",
    "ffn_down_exps": "mlp_down",
    "ffn_down_shexp": "mlp_down",
    "output": "unembedding",
}
_BLOCK = re.compile(r"^blk\.\d+\.")
_SUFFIX = re.compile(r"\.(weight|bias|scale)$")


@dataclass
class Group:
    """The tensors of one matrix kind, summed over every layer."""

    kind: str
    label: str
    shapes: str  # e.g. "30 x (576 x 576)": numpy order, rows x columns
    tensors: int
    parameters: int
    share: float  # of the file's total parameters
    bytes: int
    note: str = ""


@dataclass
class QuantShare:
    type: str
    tensors: int
    parameters: int
    bytes: int


@dataclass
class Anatomy:
    path: str
    name: str
    architecture: str
    layers: int | None
    d_model: int | None
    heads: int | list[int] | None
    kv_heads: int | list[int] | None
    head_size: int | None
    ffn: int | list[int] | None
    vocabulary: int | None
    context: int | None
    rope_base: float | None
    file_type: str | None
    file_size: int
    tensor_count: int
    parameters: int
    tensor_bytes: int
    quantization: list[QuantShare] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)

    @property
    def bytes_per_weight(self) -> float:
        return self.tensor_bytes / self.parameters if self.parameters else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["bytes_per_weight"] = round(self.bytes_per_weight, 4)
        return out


def numpy_shape(t: TensorInfo) -> tuple[int, ...]:
    """GGUF lists the fastest-varying dimension first; numpy (rows, cols) is reversed."""
    return tuple(reversed(t.shape))


def base_name(tensor_name: str) -> str:
    """`blk.3.attn_q.weight` -> `attn_q`."""
    return _SUFFIX.sub("", _BLOCK.sub("", tensor_name))


def kind_of(tensor_name: str) -> tuple[str, str]:
    """(kind, label) of a tensor; unknown names get a group of their own."""
    base = base_name(tensor_name)
    kind = _BASE_KINDS.get(base)
    if kind is None and "norm" in base:
        kind = "norm"
    if kind is None:
        return f"other:{base}", f"other: {base}"
    return kind, _LABELS[kind]


def _shape_pattern(shapes: list[tuple[int, ...]]) -> str:
    counts = Counter(shapes)
    parts = []
    for shape, n in counts.items():
        dims = " x ".join(str(d) for d in shape)
        if n == 1:
            parts.append(dims)
        else:
            parts.append(f"{n} x ({dims})" if len(shape) > 1 else f"{n} x {dims}")
    return ", ".join(parts)


def tally(tensors: list[TensorInfo]) -> list[Group]:
    """Parameters by matrix kind. The groups partition the tensors, so their counts
    sum exactly to the file's total."""
    members: dict[str, list[TensorInfo]] = {}
    labels: dict[str, str] = {}
    for t in tensors:
        kind, label = kind_of(t.name)
        members.setdefault(kind, []).append(t)
        labels[kind] = label
    total = sum(t.n_elements for t in tensors) or 1
    order = [k for k, _ in KINDS] + sorted(k for k in members if k not in _LABELS)
    groups = []
    for kind in order:
        ts = members.get(kind)
        if not ts:
            continue
        n = sum(t.n_elements for t in ts)
        groups.append(
            Group(
                kind=kind,
                label=labels[kind],
                shapes=_shape_pattern([numpy_shape(t) for t in ts]),
                tensors=len(ts),
                parameters=n,
                share=n / total,
                bytes=sum(t.nbytes for t in ts),
            )
        )
    if "unembedding" not in members and "token_embedding" in members:
        # Tied weights: the logits come from the token-embedding matrix itself.
        groups.append(
            Group(
                kind="unembedding",
                label="unembedding",
                shapes="",
                tensors=0,
                parameters=0,
                share=0.0,
                bytes=0,
                note="tied to the token embedding",
            )
        )
    return groups


def _int_or_list(value: object) -> int | list[int] | None:
    """Some architectures store a per-layer array (head counts, FFN sizes)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        distinct = sorted(set(value))
        return distinct[0] if len(distinct) == 1 else list(value)
    return None


def _as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _vocab_size(header: GGUFHeader) -> int | None:
    n = _as_int(header.get("{arch}.vocab_size"))
    if n is not None:
        return n
    tokens = header.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list):
        return len(tokens)
    count = getattr(tokens, "count", None)
    if count is not None:
        return int(count)
    embd = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
    return embd.shape[-1] if embd is not None else None


def _display_name(header: GGUFHeader) -> str:
    return display_name(header)


def anatomy_of(header: GGUFHeader) -> Anatomy:
    """Hyperparameters and the parameter tally of a validated header."""
    arch = header.metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GptcliError(
            f"{header.path} has no general.architecture: not a model file llama.cpp can load"
        )
    if not any(key.startswith(f"{arch}.") for key in header.metadata):
        # Every architecture llama.cpp loads keeps its hyperparameters under its name.
        raise GptcliError(
            f"unknown architecture {arch!r} in {header.path.name}: "
            f"the file has no {arch}.* hyperparameters"
        )
    d_model = _as_int(header.get("{arch}.embedding_length"))
    heads = _int_or_list(header.get("{arch}.attention.head_count"))
    head_size = _as_int(header.get("{arch}.attention.key_length"))
    if head_size is None and d_model and isinstance(heads, int) and heads:
        head_size = d_model // heads
    rope = header.get("{arch}.rope.freq_base")
    quant: dict[str, QuantShare] = {}
    for t in header.tensors:
        name = type_name(t.type)
        q = quant.setdefault(name, QuantShare(name, 0, 0, 0))
        q.tensors += 1
        q.parameters += t.n_elements
        q.bytes += t.nbytes
    return Anatomy(
        path=str(header.path),
        name=_display_name(header),
        architecture=arch,
        layers=_as_int(header.get("{arch}.block_count")),
        d_model=d_model,
        heads=heads,
        kv_heads=_int_or_list(header.get("{arch}.attention.head_count_kv")) or heads,
        head_size=head_size,
        ffn=_int_or_list(header.get("{arch}.feed_forward_length")),
        vocabulary=_vocab_size(header),
        context=_as_int(header.get("{arch}.context_length")),
        rope_base=float(rope) if isinstance(rope, (int, float)) else None,
        file_type=_file_type_name(header),
        file_size=header.file_size,
        tensor_count=len(header.tensors),
        parameters=sum(t.n_elements for t in header.tensors),
        tensor_bytes=sum(t.nbytes for t in header.tensors),
        quantization=sorted(quant.values(), key=lambda q: -q.parameters),
        groups=tally(header.tensors),
    )


def read_anatomy(path: str | Path) -> Anatomy:
    """Validate the header of a GGUF file and read its anatomy."""
    return anatomy_of(read_header(path))

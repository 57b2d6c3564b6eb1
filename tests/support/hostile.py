"""Hostile GGUF files for the tests: a round-trip parser and writer for GGUF files
we wrote ourselves (trusted), and variants of the tiny model that lie about
counts, lengths, types and offsets.

Values are kept as the raw bytes that follow their type field, so a variant can
change one thing and leave every other byte as the writer produced it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY = 4, 5, 6, 7, 8, 9


def enc_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def enc_array(etype: int, items: list, count: int | None = None) -> bytes:
    """An array value; `count` lets the header lie about its length."""
    n = len(items) if count is None else count
    out = struct.pack("<IQ", etype, n)
    for item in items:
        if etype == T_STRING:
            out += enc_string(item)
        else:
            out += struct.pack({T_UINT32: "<I", T_INT32: "<i", T_FLOAT32: "<f"}[etype], item)
    return out


@dataclass
class KV:
    key: bytes
    vtype: int
    raw: bytes  # the encoded value, after its type field


@dataclass
class Tensor:
    name: bytes
    shape: list[int]
    ttype: int
    offset: int


@dataclass
class Gguf:
    version: int
    kvs: list[KV]
    tensors: list[Tensor]
    data: bytes
    alignment: int = 32
    extra_header: dict = field(default_factory=dict)

    def kv(self, key: str) -> KV:
        return next(k for k in self.kvs if k.key == key.encode())

    def set(self, key: str, vtype: int, raw: bytes) -> Gguf:
        """A copy with key set (replaced in place, or appended)."""
        kvs = [replace(k) for k in self.kvs]
        for k in kvs:
            if k.key == key.encode():
                k.vtype, k.raw = vtype, raw
                break
        else:
            kvs.append(KV(key.encode(), vtype, raw))
        return replace(self, kvs=kvs)

    def without(self, key: str) -> Gguf:
        return replace(self, kvs=[k for k in self.kvs if k.key != key.encode()])

    def with_tensor(self, i: int, **changes) -> Gguf:
        tensors = [replace(t) for t in self.tensors]
        tensors[i] = replace(tensors[i], **changes)
        return replace(self, tensors=tensors)

    def to_bytes(self, *, n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
        """Serialise; n_tensors and n_kv let the header lie about the counts."""
        out = bytearray(b"GGUF")
        out += struct.pack("<I", self.version)
        out += struct.pack("<Q", len(self.tensors) if n_tensors is None else n_tensors)
        out += struct.pack("<Q", len(self.kvs) if n_kv is None else n_kv)
        for k in self.kvs:
            out += enc_string(k.key) + struct.pack("<I", k.vtype) + k.raw
        for t in self.tensors:
            out += enc_string(t.name) + struct.pack("<I", len(t.shape))
            out += b"".join(struct.pack("<Q", d) for d in t.shape)
            out += struct.pack("<IQ", t.ttype, t.offset)
        out += b"\0" * (-len(out) % self.alignment)
        return bytes(out) + self.data


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def parse(path: Path) -> Gguf:
    """Parse a GGUF file the tests wrote themselves (trusted: no bounds checks)."""
    buf = Path(path).read_bytes()
    pos = 4
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, pos)
    pos += 20

    def string() -> bytes:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        s = buf[pos + 8 : pos + 8 + n]
        pos += 8 + n
        return s

    def skip_value(vtype: int) -> None:
        nonlocal pos
        if vtype == T_STRING:
            string()
        elif vtype == T_ARRAY:
            etype, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            for _ in range(count):
                skip_value(etype)
        else:
            pos += _SCALAR_SIZES[vtype]

    kvs = []
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        start = pos
        skip_value(vtype)
        kvs.append(KV(key, vtype, buf[start:pos]))
    alignment = 32
    for k in kvs:
        if k.key == b"general.alignment":
            (alignment,) = struct.unpack("<I", k.raw)
    tensors = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        shape = list(struct.unpack_from(f"<{n_dims}Q", buf, pos + 4))
        pos += 4 + 8 * n_dims
        ttype, offset = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        tensors.append(Tensor(name, shape, ttype, offset))
    pos += -pos % alignment
    return Gguf(version, kvs, tensors, buf[pos:], alignment)


def key_offset(data: bytes, key: str) -> int:
    """Byte offset of a metadata key's length field in a serialised file."""
    return data.index(enc_string(key))


# -- the matrix of hostile variants --------------------------------------------
# Each builder takes the tiny model's bytes and its parsed form and returns the
# bytes of a hostile file. The names are the rows of tests/README.md.


def _truncate_at(fraction_or_key):
    def build(raw: bytes, g: Gguf) -> bytes:
        if isinstance(fraction_or_key, str):
            return raw[: key_offset(raw, fraction_or_key) + 20]
        return raw[: int(len(raw) * fraction_or_key)]

    return build


def _tokens_wrong_type(raw, g):
    n = len(_token_list(g))
    return g.set("tokenizer.ggml.tokens", T_ARRAY, enc_array(T_INT32, list(range(n)))).to_bytes()


def _token_list(g: Gguf) -> list[bytes]:
    raw = g.kv("tokenizer.ggml.tokens").raw
    (count,) = struct.unpack_from("<Q", raw, 4)
    pos, out = 12, []
    for _ in range(count):
        (n,) = struct.unpack_from("<Q", raw, pos)
        out.append(raw[pos + 8 : pos + 8 + n])
        pos += 8 + n
    return out


def _token_types(g: Gguf) -> list[int]:
    raw = g.kv("tokenizer.ggml.token_type").raw
    (count,) = struct.unpack_from("<Q", raw, 4)
    return list(struct.unpack_from(f"<{count}i", raw, 12))


def _token_type_as_float(raw, g):
    types = [float(t) for t in _token_types(g)]
    return g.set("tokenizer.ggml.token_type", T_ARRAY, enc_array(T_FLOAT32, types)).to_bytes()


def _token_type_short(raw, g):
    types = _token_types(g)[:-1]
    return g.set("tokenizer.ggml.token_type", T_ARRAY, enc_array(T_INT32, types)).to_bytes()


def _scores_as_strings(raw, g):
    n = len(_token_list(g))
    return g.set("tokenizer.ggml.scores", T_ARRAY, enc_array(T_STRING, ["0"] * n)).to_bytes()


def _scores_too_long(raw, g):
    n = len(_token_list(g))
    return g.set("tokenizer.ggml.scores", T_ARRAY, enc_array(T_FLOAT32, [0.0] * (n + 7))).to_bytes()


def _tokens_lie_about_count(raw, g):
    # The array header claims one token more than the file holds after it.
    tokens = _token_list(g)
    lying = enc_array(T_STRING, tokens, count=len(tokens) + 1)
    return g.set("tokenizer.ggml.tokens", T_ARRAY, lying).to_bytes()


def _duplicate_token(raw, g):
    tokens = _token_list(g)
    tokens[200] = tokens[100]
    return g.set("tokenizer.ggml.tokens", T_ARRAY, enc_array(T_STRING, tokens)).to_bytes()


def _array_2_63(raw, g):
    # A token list claiming 2**63 strings: gguf 0.19's reader loops for ever on this.
    return g.set("tokenizer.ggml.tokens", T_ARRAY, struct.pack("<IQ", T_STRING, 2**63)).to_bytes()


def _tiny_array_2_63(raw, g):
    # The 43-byte file from FACTS.md: one metadata array claiming 2**63 uint8s.
    body = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + enc_string("a")
    return body + struct.pack("<IIQ", T_ARRAY, 0, 2**63) + b"\0" * 2


def _huge_string(raw, g):
    out = bytearray(raw)
    at = key_offset(raw, "general.name")
    struct.pack_into("<Q", out, at, 2**62)  # the key's length
    return bytes(out)


def _huge_value_string(raw, g):
    return g.set("general.name", T_STRING, struct.pack("<Q", 2**40) + b"tiny").to_bytes()


def _offset_beyond_end(raw, g):
    return g.with_tensor(len(g.tensors) - 1, offset=2**40).to_bytes()


def _overlapping(raw, g):
    return g.with_tensor(2, offset=g.tensors[1].offset).to_bytes()


def _tensor_type(ttype):
    return lambda raw, g: g.with_tensor(1, ttype=ttype).to_bytes()


def _shape(shape):
    return lambda raw, g: g.with_tensor(1, shape=shape).to_bytes()


def _set(key, vtype, raw_value):
    return lambda raw, g: g.set(key, vtype, raw_value).to_bytes()


def _version(v):
    def build(raw, g):
        return raw[:4] + struct.pack("<I", v) + raw[8:]

    return build


EPS = "llama.attention.layer_norm_rms_epsilon"
ROPE_DIMS = "llama.rope.dimension_count"
ROPE_BASE = "llama.rope.freq_base"
EXPERTS, USED = "llama.expert_count", "llama.expert_used_count"


def _experts(n: int, used: int):
    def build(raw, g):
        g = g.set(EXPERTS, T_UINT32, struct.pack("<I", n))
        return g.set(USED, T_UINT32, struct.pack("<I", used)).to_bytes()

    return build


HOSTILE = {
    # name: (builder, a word the one-line message must contain)
    "zero_bytes": (lambda raw, g: b"", "not GGUF"),
    "png_not_gguf": (lambda raw, g: b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not GGUF"),
    "truncated_in_magic": (lambda raw, g: raw[:3], "not GGUF"),
    "truncated_in_counts": (lambda raw, g: raw[:20], "truncated"),
    "truncated_in_metadata": (_truncate_at("tokenizer.ggml.merges"), "past the end"),
    "truncated_in_token_list": (_truncate_at(0.05), "past the end"),
    "truncated_in_tensor_data": (_truncate_at(0.7), "past the end"),
    "truncated_last_byte": (lambda raw, g: raw[:-1], "past the end"),
    "version_1": (_version(1), "version"),
    "version_4": (_version(4), "version"),
    "version_big_endian_3": (_version(3 << 24), "version"),
    "huge_tensor_count": (lambda raw, g: g.to_bytes(n_tensors=2**60), "tensors"),
    "huge_metadata_count": (lambda raw, g: g.to_bytes(n_kv=2**63 + 5), "metadata"),
    "more_metadata_than_present": (lambda raw, g: g.to_bytes(n_kv=len(g.kvs) + 3), "GGUF"),
    "huge_key_length": (_huge_string, "metadata key"),
    "huge_string_value": (_huge_value_string, "general.name"),
    "array_2_63_tokens": (_array_2_63, "2"),
    "array_2_63_43_byte_file": (_tiny_array_2_63, "array"),
    "nested_array": (_set("x.nested", T_ARRAY, struct.pack("<IQ", T_ARRAY, 1)), "element type"),
    "unknown_value_type": (_set("x.odd", 77, b"\0" * 8), "unknown type"),
    "empty_key": (_set("", T_UINT32, b"\0" * 4), "empty"),
    # A key that would clear the screen and retitle the terminal if echoed raw.
    "escape_sequence_in_key": (_set("x\x1b[2J\x1b]0;pwned\x07\ny", 77, b"\0" * 4), "\\x1b[2J"),
    "duplicate_key": (
        lambda raw, g: replace(g, kvs=g.kvs + [g.kvs[1]]).to_bytes(),
        "duplicate metadata key",
    ),
    "alignment_not_power_of_two": (_set("general.alignment", T_UINT32, b"\x21\0\0\0"), "power"),
    "alignment_wrong_type": (_set("general.alignment", T_STRING, enc_string("32")), "uint32"),
    "tensor_offset_beyond_end": (_offset_beyond_end, "past the end"),
    "overlapping_tensors": (_overlapping, "overlap"),
    "tensor_type_removed_q4_2": (_tensor_type(4), "unknown type"),
    "tensor_type_unknown_99": (_tensor_type(99), "unknown type"),
    "tensor_zero_dims": (_shape([]), "dimensions"),
    "tensor_five_dims": (_shape([64, 1, 1, 1, 1]), "dimensions"),
    "tensor_negative_dim": (_shape([64, 2**64 - 1]), "dimension"),
    "tensor_element_overflow": (_shape([2**32, 2**32]), "elements"),
    "tensor_name_64_bytes": (lambda raw, g: g.with_tensor(1, name=b"n" * 64).to_bytes(), "name"),
    "tokens_wrong_element_type": (_tokens_wrong_type, "tokenizer.ggml.tokens"),
    "tokens_not_an_array": (_set("tokenizer.ggml.tokens", T_STRING, enc_string("a")), "tokens"),
    "token_type_float32": (_token_type_as_float, "token_type"),
    "token_type_one_short": (_token_type_short, "token_type"),
    "scores_as_strings": (_scores_as_strings, "scores"),
    "scores_longer_than_tokens": (_scores_too_long, "scores"),
    "tokens_count_lies": (_tokens_lie_about_count, "claims"),
    "duplicate_token": (_duplicate_token, "appears twice"),
    "block_count_zero": (_set("llama.block_count", T_UINT32, b"\0\0\0\0"), "block_count"),
    "block_count_1000": (_set("llama.block_count", T_UINT32, struct.pack("<I", 1000)), "block"),
    "rope_scaling_unknown": (_set("llama.rope.scaling.type", T_STRING, enc_string("warp")), "rope"),
    "rope_dimension_odd": (_set(ROPE_DIMS, T_UINT32, struct.pack("<I", 15)), "even"),
    # Both make ggml abort on the first token (GGML_ASSERT(eps >= 0.0f)), after loading.
    "norm_epsilon_nan": (_set(EPS, T_FLOAT32, struct.pack("<f", float("nan"))), "nan"),
    "norm_epsilon_negative": (_set(EPS, T_FLOAT32, struct.pack("<f", -1e-5)), "negative"),
    # These load in llama.cpp and compute garbage (NaN logits) instead of failing.
    "norm_epsilon_zero": (_set(EPS, T_FLOAT32, struct.pack("<f", 0.0)), "epsilon is 0"),
    "rope_freq_base_zero": (_set(ROPE_BASE, T_FLOAT32, struct.pack("<f", 0.0)), "freq_base is 0"),
    "rope_freq_base_negative": (_set(ROPE_BASE, T_FLOAT32, struct.pack("<f", -1e4)), "least 1"),
    "rope_freq_base_tiny": (_set(ROPE_BASE, T_FLOAT32, struct.pack("<f", 1e-45)), "least 1"),
    "rope_freq_base_nan": (_set(ROPE_BASE, T_FLOAT32, struct.pack("<f", float("nan"))), "nan"),
    "rope_freq_base_inf": (_set(ROPE_BASE, T_FLOAT32, struct.pack("<f", float("inf"))), "inf"),
    # Found by the hyperparameter sweep: each aborts llama-model.cpp (GGML_ASSERT).
    "expert_count_without_used": (_set(EXPERTS, T_UINT32, struct.pack("<I", 1)), "no expert"),
    "expert_used_without_experts": (_set(USED, T_UINT32, struct.pack("<I", 1)), "more than"),
    "expert_count_1025": (_experts(1025, 1), "at most 1024"),
}


def write_hostile(name: str, tiny_model: Path, folder: Path) -> Path:
    raw = Path(tiny_model).read_bytes()
    data = HOSTILE[name][0](raw, parse(tiny_model))
    out = Path(folder) / f"{name}.gguf"
    out.write_bytes(data)
    return out


def structure_fields(raw: bytes) -> tuple[list[tuple[int, int, str]], int]:
    """The integer fields of a GGUF file we wrote ourselves: (offset, width in bytes,
    label) for counts, lengths, types, scalar values, shapes and tensor offsets, and
    where the tensor data starts. The fuzzer aims mutations at these."""
    fields = [(4, 4, "version"), (8, 8, "tensor count"), (16, 8, "metadata count")]
    pos = 24
    (n_tensors, n_kv) = struct.unpack_from("<QQ", raw, 8)

    def string(label: str) -> None:
        nonlocal pos
        fields.append((pos, 8, f"{label} length"))
        (n,) = struct.unpack_from("<Q", raw, pos)
        pos += 8 + n

    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", raw, pos)
        key = raw[pos + 8 : pos + 8 + n].decode()
        string(f"key {key}")
        fields.append((pos, 4, f"type of {key}"))
        (vtype,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if vtype == T_STRING:
            string(f"value of {key}")
        elif vtype == T_ARRAY:
            etype, count = struct.unpack_from("<IQ", raw, pos)
            fields += [(pos, 4, f"element type of {key}"), (pos + 4, 8, f"length of {key}")]
            pos += 12
            for i in range(count):
                if etype == T_STRING:
                    if i < 4 or i == count - 1:  # a few element lengths are enough
                        fields.append((pos, 8, f"element {i} length of {key}"))
                    (n,) = struct.unpack_from("<Q", raw, pos)
                    pos += 8 + n
                else:
                    pos += _SCALAR_SIZES[etype]
        else:
            fields.append((pos, _SCALAR_SIZES[vtype], f"value of {key}"))
            pos += _SCALAR_SIZES[vtype]
    for i in range(n_tensors):
        string(f"tensor {i} name")
        (n_dims,) = struct.unpack_from("<I", raw, pos)
        fields.append((pos, 4, f"tensor {i} dimension count"))
        pos += 4
        for d in range(n_dims):
            fields.append((pos, 8, f"tensor {i} dimension {d}"))
            pos += 8
        fields += [(pos, 4, f"tensor {i} type"), (pos + 4, 8, f"tensor {i} offset")]
        pos += 12
    return fields, pos + (-pos % 32)


# -- models whose output is fixed by construction --------------------------------------


def byte_token_id(tokens: list[bytes], byte: int) -> int:
    """The id of the byte-level token for one raw byte (GPT-2's byte-to-unicode map:
    printable bytes stand for themselves, the others for chr(256 + n) in order)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if byte in printable:
        char = chr(byte)
    else:
        char = chr(256 + [b for b in range(256) if b not in printable].index(byte))
    return tokens.index(char.encode())


def write_logit_model(
    path: Path, tokenizer, favourite: int, poisoned: int | None = None, d_model: int = 64
) -> Path:
    """A tiny llama GGUF whose next token is always `favourite`.

    Every token embedding is the same vector of ones, and the output matrix is zero but
    for the row of `favourite`: its logit is d_model, every other logit 0, at every
    position. With `poisoned`, that token's embedding is NaN: the step after it is
    generated gives NaN logits (a broken quantization, made on purpose)."""
    import numpy as np

    embd = np.ones((len(tokenizer.tokens), d_model), dtype=np.float16)
    if poisoned is not None:
        embd[poisoned] = np.nan
    out = np.zeros_like(embd)
    out[favourite] = 1.0
    return write_passthrough_model(path, tokenizer, embd, out, "logit-model")


def write_passthrough_model(path: Path, tokenizer, embd, out, name: str) -> Path:
    """A one-layer llama GGUF whose block adds nothing (zero attention output and FFN
    down weights): the logits of a token are `out` times its normalised embedding row,
    so a test chooses every next-token distribution by writing two matrices."""
    import gguf
    import numpy as np

    d, n_ff, n_heads, n_kv = embd.shape[1], 128, 4, 2
    head = d // n_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokenizer.pre)
    w.add_token_list(tokenizer.tokens)
    w.add_token_types(tokenizer.token_types)
    w.add_token_merges(tokenizer.merges)
    w.add_bos_token_id(tokenizer.bos_id)
    w.add_eos_token_id(tokenizer.eos_id)
    w.add_add_bos_token(False)
    small = np.full((d, d), 0.01, dtype=np.float16)
    tensors = {
        "token_embd.weight": embd,
        "output_norm.weight": np.ones(d, dtype=np.float32),
        "output.weight": out,
        "blk.0.attn_norm.weight": np.ones(d, dtype=np.float32),
        "blk.0.attn_q.weight": small,
        "blk.0.attn_k.weight": small[: n_kv * head],
        "blk.0.attn_v.weight": small[: n_kv * head],
        "blk.0.attn_output.weight": np.zeros((d, d), dtype=np.float16),  # attention adds 0
        "blk.0.ffn_norm.weight": np.ones(d, dtype=np.float32),
        "blk.0.ffn_gate.weight": np.full((n_ff, d), 0.01, dtype=np.float16),
        "blk.0.ffn_up.weight": np.full((n_ff, d), 0.01, dtype=np.float16),
        "blk.0.ffn_down.weight": np.zeros((d, n_ff), dtype=np.float16),  # the MLP adds 0
    }
    for tensor, data in tensors.items():
        w.add_tensor(tensor, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

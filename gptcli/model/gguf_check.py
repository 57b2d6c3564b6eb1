"""Read and validate a GGUF header before anything else trusts the file.

A model file is untrusted input. llama.cpp and the `gguf` package both trust
counts and lengths from the file (gguf 0.19 loops for ever on an array that
claims 2**63 elements), so every count, length and offset is checked here
against the file size first, with a bounded parser of our own.

Beyond the format itself, the checks refuse what the vendored llama.cpp
(llama-cpp-python 0.3.36) is known to abort or misread on: duplicate tokens
(a GGML_ASSERT in llama-vocab), tokenizer arrays of the wrong element type or
length (CVE-2025-49847 and later fixes), a block count outside 1..512 or an
unknown rope scaling type (GGML_ASSERTs in llama-model), tensors that are not
laid out one after the other, tensor names of 64 bytes or more.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gptcli.errors import GptcliError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
MAX_KEY_BYTES = 65_536
MAX_TENSOR_NAME_BYTES = 63  # GGML_MAX_NAME is 64, with the terminating NUL
MAX_STRING_BYTES = 1 << 30  # llama.cpp's GGUF_MAX_STRING_LENGTH
MAX_ARRAY_ELEMENTS = 1 << 30  # llama.cpp's GGUF_MAX_ARRAY_ELEMENTS
MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS: more aborts the process
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS in the vendored llama.cpp (1025 aborts, measured)
MAX_TOKENS = (1 << 31) - 1  # token ids are int32
INT64_MAX = (1 << 63) - 1
DEFAULT_ALIGNMENT = 32

# Metadata value types (gguf spec): struct format, or None for variable size.
_SCALARS = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
T_UINT32, T_INT32, T_FLOAT32 = 4, 5, 6
T_STRING, T_ARRAY = 8, 9
_INTEGER_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
_FLOAT_TYPES = {6, 12}

# Arrays longer than this are kept as a summary, not as Python values.
KEEP_ARRAY_MAX = 64

# Array keys llama.cpp reads with a fixed element type (tokenizer CVEs): the
# element types llama-vocab.cpp accepts for each.
_EXPECTED_ARRAY_TYPES = {
    "tokenizer.ggml.tokens": {T_STRING},
    "tokenizer.ggml.merges": {T_STRING},
    "tokenizer.ggml.scores": {T_FLOAT32, T_INT32},
    "tokenizer.ggml.token_type": {T_INT32},
}
TOKENS_KEY = "tokenizer.ggml.tokens"

# (block size, bytes per block) of every tensor type the vendored ggml can read
# from a file (ggml.c type_traits). Removed types (4, 5, 31-33, 36-38) have a
# block size of 0 there and are refused. Kept here rather than taken from the
# gguf package, whose table may name types this llama.cpp does not know.
TENSOR_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1 (two fp16 and 32 int8: the gguf package still says 40)
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
    40: (64, 36),  # NVFP4
    41: (128, 18),  # Q1_0
    42: (64, 18),  # Q2_0
}

# llama-model.cpp: any other value of {arch}.rope.scaling.type aborts.
ROPE_SCALING_TYPES = {"none", "linear", "yarn", "longrope"}
# RoPE bases (after `{arch}.`): below 1, llama.cpp computes NaN (0, -1, 1e-45 measured).
ROPE_BASES = {"rope.freq_base", "rope.freq_base_swa"}


class GGUFError(GptcliError):
    """The file is not a GGUF file llama.cpp can be trusted to load."""


@dataclass(frozen=True)
class ArrayInfo:
    """A long metadata array, summarised: element type and count."""

    element_type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    type: int
    offset: int  # absolute offset of the data in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFHeader:
    path: Path
    version: int
    file_size: int
    metadata: dict[str, object] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    # GGUF value type of each key, and the element type for arrays.
    types: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def get(self, key: str, default: object = None) -> object:
        """A metadata value; `{arch}` in the key is replaced by the architecture."""
        return self.metadata.get(key.replace("{arch}", self.architecture), default)


def printable(text: str, limit: int = 200) -> str:
    """Text from the file made safe for one terminal line: control characters (escape
    sequences, newlines) shown escaped, and the length bounded."""
    if len(text) > limit:
        text = text[: limit // 2] + "..." + text[-limit // 2 :]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_U64 = struct.Struct("<Q").unpack_from


class _Reader:
    def __init__(self, buf, size: int, name: str):
        self.buf, self.size, self.pos, self.name = buf, size, 0, name

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"model file is not valid GGUF: {printable(what)} ({self.name})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} runs past the end of the file at byte {self.pos}")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)

    def raw_string(self, what: str, limit: int = MAX_STRING_BYTES) -> bytes:
        n = self.u64(f"{what} length")
        if n > limit:
            raise self.fail(f"{what} claims {n} bytes")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        return self.raw_string(what, limit).decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        n = self.u64(f"{what} length")
        if n > MAX_STRING_BYTES:
            raise self.fail(f"{what} claims {n} bytes")
        self.need(n, what)
        self.pos += n

    def value(self, vtype: int, key: str):
        """One metadata value; returns (value, element type for arrays or None)."""
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], f"value of {key}"), None
        if vtype == T_STRING:
            return self.string(f"value of {key}"), None
        if vtype != T_ARRAY:
            raise self.fail(f"metadata {key} has unknown type {vtype}")
        etype = self.u32(f"array type of {key}")
        count = self.u64(f"array length of {key}")
        if count > MAX_ARRAY_ELEMENTS:
            raise self.fail(f"array {key} claims {count} elements")
        if etype in _SCALARS:
            width = struct.calcsize(_SCALARS[etype])
            self.need(count * width, f"array {key} ({count} elements)")
            if count <= KEEP_ARRAY_MAX:
                fmt = f"<{count}{_SCALARS[etype][1]}"
                values = list(struct.unpack_from(fmt, self.buf, self.pos))
                self.pos += count * width
                return values, etype
            self.pos += count * width
            return ArrayInfo(etype, count), etype
        if etype == T_STRING:
            # Each string takes at least its 8-byte length: bound the count first.
            self.need(count * 8, f"array {key} ({count} strings)")
            if key == TOKENS_KEY:
                return self._tokens(count), etype
            if count <= KEEP_ARRAY_MAX:
                return [self.string(f"element of {key}") for _ in range(count)], etype
            self._skip_strings(count, key)
            return ArrayInfo(etype, count), etype
        # Nested arrays (etype 9) and unknown types: llama.cpp refuses them too.
        raise self.fail(f"array {key} has unsupported element type {etype}")

    def _next_string(self, pos: int) -> int:
        """The end of the string at pos when it is well within bounds, else -1 (the
        caller then takes the checked path, which raises the precise error). Inlined
        loops over 50,000 tokens and merges keep the check fast."""
        if pos + 8 > self.size:
            return -1
        n = _U64(self.buf, pos)[0]
        if n > MAX_STRING_BYTES or pos + 8 + n > self.size:
            return -1
        return pos + 8 + n

    def _skip_strings(self, count: int, key: str) -> None:
        end = self._next_string
        for _ in range(count):
            after = end(self.pos)
            if after < 0:
                self.skip_string(f"element of {key}")  # raises the precise error
                continue
            self.pos = after

    def _tokens(self, count: int) -> ArrayInfo:
        """The vocabulary: every token must be distinct, or llama-vocab.cpp aborts
        (GGML_ASSERT id_to_token.size() == token_to_id.size())."""
        seen: set[bytes] = set()
        buf, end = self.buf, self._next_string
        for i in range(count):
            after = end(self.pos)
            if after < 0:
                token = self.raw_string(f"token {i}")  # raises the precise error
            else:
                token = bytes(buf[self.pos + 8 : after])
                self.pos = after
            if not token:  # llama.cpp renames empty tokens before it indexes them
                token = f"[EMPTY_{i}]".encode()
            if token in seen:
                shown = token[:40].decode("utf-8", errors="replace")
                raise self.fail(f"token {i} ({shown!r}) appears twice in the vocabulary")
            seen.add(token)
        return ArrayInfo(T_STRING, count)


def read_header(path: str | Path) -> GGUFHeader:
    """Parse and check the header of a GGUF file; raise GGUFError if it is unsafe."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            if size < 24:
                if f.read(4) != GGUF_MAGIC:
                    raise GGUFError(f"model file is not GGUF: {path} (wrong magic number)")
                raise GGUFError(f"model file is not valid GGUF: truncated header ({path})")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(mm, size, path)
    except GGUFError:
        raise
    except IsADirectoryError:
        raise GGUFError(f"model path is a directory, not a GGUF file: {path}") from None
    except FileNotFoundError:
        raise GGUFError(f"model file not found: {path}") from None
    except PermissionError:
        raise GGUFError(f"model file is not readable (permission denied): {path}") from None
    except OSError as e:
        raise GGUFError(f"cannot read model file {path}: {e.strerror or e}") from None


def _parse(buf, size: int, path: Path) -> GGUFHeader:
    r = _Reader(buf, size, str(path))
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFError(f"model file is not GGUF: {path} (wrong magic number)")
    r.pos = 4
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise r.fail(f"unsupported GGUF version {version} (gptcli reads versions 2 and 3)")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    # Each metadata entry needs at least 13 bytes, each tensor info at least 29.
    if n_kv * 13 > size or n_tensors * 29 > size:
        raise r.fail(
            f"header claims {n_tensors} tensors and {n_kv} metadata entries, "
            f"more than {size} bytes can hold (truncated?)"
        )

    header = GGUFHeader(path=path, version=version, file_size=size)
    for _ in range(n_kv):
        key = r.string("metadata key", limit=MAX_KEY_BYTES)
        if not key:
            raise r.fail("a metadata key is empty")
        vtype = r.u32(f"type of {key}")
        if key in header.metadata:
            raise r.fail(f"duplicate metadata key {key}")
        value, etype = r.value(vtype, key)
        expected = _EXPECTED_ARRAY_TYPES.get(key)
        if expected is not None and (vtype != T_ARRAY or etype not in expected):
            raise r.fail(f"{key} has the wrong type")
        header.metadata[key] = value
        header.types[key] = (vtype, etype)

    alignment = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in header.metadata and header.types["general.alignment"][0] != T_UINT32:
        raise r.fail("general.alignment is not a uint32")
    if alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"alignment {alignment} is not a power of two")

    raw_tensors = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = r.string("tensor name", limit=MAX_TENSOR_NAME_BYTES)
        if name in names:
            raise r.fail(f"duplicate tensor {name}")
        names.add(name)
        n_dims = r.u32(f"dimension count of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {name} has {n_dims} dimensions")
        shape = tuple(r.u64(f"shape of {name}") for _ in range(n_dims))
        ttype = r.u32(f"type of {name}")
        offset = r.u64(f"offset of {name}")
        raw_tensors.append((name, shape, ttype, offset))

    data_offset = (r.pos + alignment - 1) // alignment * alignment
    header.data_offset = data_offset
    data_size = size - data_offset
    if raw_tensors and data_size < 0:
        raise r.fail("tensor data starts past the end of the file (truncated)")
    for name, shape, ttype, offset in raw_tensors:
        header.tensors.append(_tensor(r, name, shape, ttype, offset, data_offset, alignment))
    _check_layout(header, r, alignment)
    _check_vocab(header, r)
    _check_hparams(header, r)
    return header


def _tensor(r: _Reader, name, shape, ttype, offset, data_offset, alignment) -> TensorInfo:
    if ttype not in TENSOR_TYPES:
        raise r.fail(f"tensor {name} has unknown type {ttype}")
    block, type_size = TENSOR_TYPES[ttype]
    if any(d <= 0 or d > INT64_MAX for d in shape):
        raise r.fail(f"tensor {name} has an empty or negative dimension {shape}")
    if shape[0] % block:
        raise r.fail(f"tensor {name}: row of {shape[0]} is not a multiple of {block}")
    n = 1
    for d in shape:
        n *= d
    if n > INT64_MAX:
        raise r.fail(f"tensor {name} has too many elements {shape}")
    nbytes = n // block * type_size
    if offset % alignment:
        raise r.fail(f"tensor {name} is not aligned")
    if data_offset + offset + nbytes > r.size:
        raise r.fail(f"tensor {name} lies past the end of the file (truncated?)")
    return TensorInfo(name, shape, ttype, data_offset + offset, nbytes)


def _check_layout(header: GGUFHeader, r: _Reader, alignment: int) -> None:
    """No two tensors may share bytes, and llama.cpp wants them one after the other,
    in header order, each padded to the alignment (gguf.cpp refuses anything else)."""
    by_start = sorted(header.tensors, key=lambda t: t.offset)
    for a, b in zip(by_start, by_start[1:], strict=False):
        if a.offset + a.nbytes > b.offset:
            raise r.fail(f"tensors {a.name} and {b.name} overlap")
    expected = header.data_offset
    for t in header.tensors:
        if t.offset != expected:
            raise r.fail(f"tensor {t.name} is not where the layout puts it (gap or reordering)")
        expected += (t.nbytes + alignment - 1) // alignment * alignment


def _count(value: object) -> int | None:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, ArrayInfo):
        return value.count
    return None


def _check_vocab(header: GGUFHeader, r: _Reader) -> None:
    """Tokenizer arrays must agree in length; llama.cpp indexes one by the other."""
    n_tokens = _count(header.metadata.get(TOKENS_KEY))
    if n_tokens is None:
        return
    if not 1 <= n_tokens <= MAX_TOKENS:
        raise r.fail(f"the vocabulary has {n_tokens} tokens")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        n = _count(header.metadata.get(key))
        if n is not None and n != n_tokens:
            raise r.fail(f"{key} has {n} entries for {n_tokens} tokens")


def _check_experts(header: GGUFHeader, r: _Reader, arch: str) -> None:
    """The expert counts llama-model.cpp asserts on (found by the hyperparameter sweep:
    `expert_count = 1` alone aborts a dense llama model)."""
    values = {}
    for name in ("expert_count", "expert_used_count"):
        v = header.metadata.get(f"{arch}.{name}", 0)
        if isinstance(v, list):  # per layer: llama.cpp checks the largest
            v = max((x for x in v if isinstance(x, int)), default=0)
        if not isinstance(v, int) or isinstance(v, bool):
            return  # another type: llama.cpp refuses it with an error of its own
        values[name] = v
    n, used = values["expert_count"], values["expert_used_count"]
    if n > MAX_EXPERTS:
        raise r.fail(f"{arch}.expert_count is {n} (llama.cpp takes at most {MAX_EXPERTS})")
    if used > n:
        raise r.fail(f"{arch}.expert_used_count is {used}, more than the {n} experts")
    if n > 0 and used == 0:
        raise r.fail(f"{arch}.expert_count is {n} but no expert is used (expert_used_count)")


def _check_hparams(header: GGUFHeader, r: _Reader) -> None:
    """Hyperparameters llama.cpp checks with an assertion (an abort, not an error)."""
    arch = header.metadata.get("general.architecture")
    if arch is None:
        return
    if not isinstance(arch, str) or header.types["general.architecture"][0] != T_STRING:
        raise r.fail("general.architecture is not a string")
    blocks = header.metadata.get(f"{arch}.block_count")
    if blocks is not None:
        if header.types[f"{arch}.block_count"][0] not in _INTEGER_TYPES:
            raise r.fail(f"{arch}.block_count is not an integer")
        if not 1 <= blocks <= MAX_LAYERS:
            raise r.fail(f"{arch}.block_count is {blocks} (llama.cpp takes 1 to {MAX_LAYERS})")
        nextn = header.metadata.get(f"{arch}.nextn_predict_layers", 0)
        if isinstance(nextn, int) and not 0 <= nextn <= blocks:
            raise r.fail(f"{arch}.nextn_predict_layers is {nextn} for {blocks} blocks")
    scaling = header.metadata.get(f"{arch}.rope.scaling.type")
    if isinstance(scaling, str) and scaling not in ROPE_SCALING_TYPES:
        raise r.fail(f"{arch}.rope.scaling.type {scaling!r} is unknown")
    _check_experts(header, r, arch)
    for key in (f"{arch}.rope.dimension_count", f"{arch}.rope.dimension_count_swa"):
        n_rot = header.metadata.get(key)
        if isinstance(n_rot, int) and n_rot % 2:  # ggml's rope asserts an even count
            raise r.fail(f"{key} is {n_rot}, not even")
    for key, value in header.metadata.items():
        if not key.startswith(f"{arch}.") or header.types[key][0] not in _FLOAT_TYPES:
            continue
        # A NaN or infinite hyperparameter poisons every logit; a negative norm
        # epsilon aborts ggml (GGML_ASSERT(eps >= 0.0f)) on the first token.
        if not math.isfinite(value):
            raise r.fail(f"{key} is {value}")
        if key.endswith("epsilon") and value < 0:
            raise r.fail(f"{key} is negative ({value})")
        # Loaded without complaint, then garbage: a RoPE base below 1 gives NaN logits
        # on every step; a zero norm epsilon divides by zero on a zero vector.
        if key.endswith("epsilon") and value == 0:
            raise r.fail(f"{key} is 0 (a norm epsilon must be positive)")
        if key.split(".", 1)[1] in ROPE_BASES and not value >= 1:
            raise r.fail(f"{key} is {value:g} (a RoPE base must be at least 1)")


# Names of GGUF tensor types and file types (gguf.constants GGMLQuantizationType and
# LlamaFileType), kept here so `inspect` need not import gguf (0.2 s): it must be fast.
TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0", 42: "Q2_0",
}  # fmt: skip


FILE_TYPE_NAMES = {
    0: "ALL_F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 1024: "GUESSED",
}  # fmt: skip


def type_name(ttype: int) -> str:
    return TYPE_NAMES.get(ttype, f"type {ttype}")


def _file_type_name(header: GGUFHeader) -> str | None:
    ft = header.get("general.file_type")
    if not isinstance(ft, int) or isinstance(ft, bool):
        return None
    return FILE_TYPE_NAMES.get(ft, f"type {ft}")

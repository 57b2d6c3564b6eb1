"""Read and validate a GGUF header before anything else trusts the file.

A model file is untrusted input. llama.cpp and the `gguf` package both trust
counts and lengths from the file (gguf 0.19 loops for ever on an array that
claims 2**63 elements), so every count, length and offset is checked here
against the file size first, with a bounded parser of our own.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gptcli.errors import GptcliError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
MAX_KEY_BYTES = 65_536
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
T_STRING, T_ARRAY = 8, 9

# Arrays longer than this are kept as a summary, not as Python values.
KEEP_ARRAY_MAX = 64

# Keys whose element type llama.cpp assumes without checking (tokenizer CVEs).
_EXPECTED_ARRAY_TYPES = {
    "tokenizer.ggml.tokens": {T_STRING},
    "tokenizer.ggml.merges": {T_STRING},
    "tokenizer.ggml.scores": {6},
    "tokenizer.ggml.token_type": {5, 4},
}


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

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def get(self, key: str, default: object = None) -> object:
        """A metadata value; `{arch}` in the key is replaced by the architecture."""
        return self.metadata.get(key.replace("{arch}", self.architecture), default)


class _Reader:
    def __init__(self, buf, size: int, name: str):
        self.buf, self.size, self.pos, self.name = buf, size, 0, name

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"model file is not valid GGUF: {what} ({self.name})")

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

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.u64(f"{what} length")
        if limit is not None and n > limit:
            raise self.fail(f"{what} is {n} bytes long")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        n = self.u64(f"{what} length")
        self.need(n, what)
        self.pos += n

    def value(self, vtype: int, key: str, depth: int = 0):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], f"value of {key}")
        if vtype == T_STRING:
            return self.string(f"value of {key}")
        if vtype == T_ARRAY:
            if depth > 0:
                raise self.fail(f"nested array in {key}")
            etype = self.u32(f"array type of {key}")
            count = self.u64(f"array length of {key}")
            if etype in _SCALARS:
                width = struct.calcsize(_SCALARS[etype])
                self.need(count * width, f"array {key} ({count} elements)")
                if count <= KEEP_ARRAY_MAX:
                    values = list(
                        struct.unpack_from(f"<{count}{_SCALARS[etype][1]}", self.buf, self.pos)
                    )
                    self.pos += count * width
                    return values
                self.pos += count * width
                return ArrayInfo(etype, count)
            if etype == T_STRING:
                # Each string takes at least its 8-byte length: bound the count first.
                self.need(count * 8, f"array {key} ({count} strings)")
                if count <= KEEP_ARRAY_MAX:
                    return [self.string(f"element of {key}") for _ in range(count)]
                for _ in range(count):
                    self.skip_string(f"element of {key}")
                return ArrayInfo(etype, count)
            raise self.fail(f"array {key} has unsupported element type {etype}")
        raise self.fail(f"metadata {key} has unknown type {vtype}")


def _quant_sizes() -> dict[int, tuple[int, int]]:
    """(block size, bytes per block) for each tensor type the gguf package knows."""
    from gguf.constants import GGML_QUANT_SIZES

    return {int(k): v for k, v in GGML_QUANT_SIZES.items()}


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
        raise r.fail(f"unsupported GGUF version {version}")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    # Each metadata entry needs at least 12 bytes, each tensor info at least 28.
    if n_kv * 12 > size or n_tensors * 28 > size:
        raise r.fail(f"header claims {n_tensors} tensors and {n_kv} metadata entries")

    header = GGUFHeader(path=path, version=version, file_size=size)
    for _ in range(n_kv):
        key = r.string("metadata key", limit=MAX_KEY_BYTES)
        vtype = r.u32(f"type of {key}")
        if key in header.metadata:
            raise r.fail(f"duplicate metadata key {key}")
        value = r.value(vtype, key)
        expected = _EXPECTED_ARRAY_TYPES.get(key)
        if expected is not None:
            etype = value.element_type if isinstance(value, ArrayInfo) else None
            if vtype != T_ARRAY or (etype is not None and etype not in expected):
                raise r.fail(f"{key} has the wrong type")
        header.metadata[key] = value

    alignment = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"alignment {alignment!r} is not a power of two")

    raw_tensors = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = r.string("tensor name", limit=MAX_KEY_BYTES)
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
    sizes = _quant_sizes()
    for name, shape, ttype, offset in raw_tensors:
        if ttype not in sizes:
            raise r.fail(f"tensor {name} has unknown type {ttype}")
        block, type_size = sizes[ttype]
        if any(d <= 0 for d in shape):
            raise r.fail(f"tensor {name} has an empty or negative dimension {shape}")
        if shape[0] % block:
            raise r.fail(f"tensor {name}: row of {shape[0]} is not a multiple of {block}")
        n = 1
        for d in shape:
            n *= d
        nbytes = n // block * type_size
        if offset % alignment:
            raise r.fail(f"tensor {name} is not aligned")
        if offset + nbytes > data_size:
            raise r.fail(f"tensor {name} lies past the end of the file (truncated?)")
        header.tensors.append(TensorInfo(name, shape, ttype, data_offset + offset, nbytes))
    _check_vocab(header, r)
    return header


def _check_vocab(header: GGUFHeader, r: _Reader) -> None:
    """Tokenizer arrays must agree in length; llama.cpp indexes one by the other."""
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens) if isinstance(tokens, list) else getattr(tokens, "count", None)
    if n_tokens is None:
        return
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        other = header.metadata.get(key)
        n = len(other) if isinstance(other, list) else getattr(other, "count", None)
        if n is not None and n != n_tokens:
            raise r.fail(f"{key} has {n} entries for {n_tokens} tokens")

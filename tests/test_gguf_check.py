"""The header check in-process: every hostile file of support/hostile.py refused by
read_header() itself with the message the CLI shows, and real files read exactly.
(test_model_files.py runs the same files through the CLI in subprocesses; these are
the fast twins a mutation run can use.)"""

from __future__ import annotations

import ctypes
import os
import struct

import numpy as np
import pytest
from support.hostile import HOSTILE, KV, Gguf, Tensor, enc_string, write_hostile

from gptcli.model.gguf_check import ArrayInfo, GGUFError, read_header


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile-inprocess")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_read_header_refuses_each_hostile_file(tiny_model, hostile_dir, name):
    path = write_hostile(name, tiny_model, hostile_dir)
    with pytest.raises(GGUFError) as e:
        read_header(path)
    assert HOSTILE[name][1] in e.value.message, e.value.message
    assert "\x1b" not in e.value.message


def test_read_header_reads_the_embedded_model_exactly(smollm2):
    h = read_header(smollm2)
    assert len(h.tensors) == 272
    md = h.metadata
    assert md["general.architecture"] == "llama"
    assert md["llama.block_count"] == 30
    assert md["llama.embedding_length"] == 576
    assert md["llama.attention.head_count"] == 9
    assert md["llama.attention.head_count_kv"] == 3
    assert md["llama.context_length"] == 8192
    assert md["tokenizer.ggml.add_bos_token"] is False
    assert "<|im_start|>" in md["tokenizer.chat_template"]
    assert sum(t.n_elements for t in h.tensors) == 134_515_008
    embd = next(t for t in h.tensors if t.name == "token_embd.weight")
    assert embd.shape == (576, 49152)
    # The last tensor ends inside the file, within one alignment step of its end.
    end = max(t.offset + t.nbytes for t in h.tensors)
    assert h.file_size - 32 < end <= h.file_size == 98_362_432


# -- small GGUF files built byte by byte ---------------------------------------------
# Each test below writes a file of a few hundred bytes holding the field it is about,
# so a refusal is checked at its boundary: the last valid value read, the first bad one
# refused with the exact line the user sees.

# Value types and their little-endian layout, from the GGUF specification.
SPEC_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
SPEC_FORMATS |= {10: "<Q", 11: "<q", 12: "<d"}
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
INT64_MAX = 2**63 - 1
F32_TENSOR, I8_TENSOR, Q4_0_TENSOR = 0, 24, 2


def scalar(vtype: int, value) -> tuple[int, bytes]:
    return vtype, struct.pack(SPEC_FORMATS[vtype], value)


def text(value: str | bytes) -> tuple[int, bytes]:
    return STR, enc_string(value)


def array(etype: int, values: list, count: int | None = None) -> tuple[int, bytes]:
    n = len(values) if count is None else count
    if etype == STR:
        body = b"".join(enc_string(v) for v in values)
    else:
        body = b"".join(struct.pack(SPEC_FORMATS[etype], v) for v in values)
    return ARR, struct.pack("<IQ", etype, n) + body


def _b(s: str | bytes) -> bytes:
    return s.encode() if isinstance(s, str) else s


def build(kvs: dict | None = None, tensors=(), data: bytes = b"", *, alignment=32, **lie) -> bytes:
    """A GGUF file: metadata {key: (type, raw value)}, tensors (name, shape, type,
    offset), the header padded to `alignment`, then data. `lie` sets n_kv/n_tensors."""
    kv = [KV(_b(k), t, raw) for k, (t, raw) in (kvs or {}).items()]
    ts = [Tensor(_b(n), list(s), t, o) for n, s, t, o in tensors]
    return Gguf(3, kv, ts, data, alignment=alignment).to_bytes(**lie)


def header_end(kvs: dict | None = None, tensors=()) -> int:
    """Where the header ends, before its padding: summed from the spec's field sizes."""
    n = 24
    for k, (_, raw) in (kvs or {}).items():
        n += 8 + len(_b(k)) + 4 + len(raw)
    for name, shape, _, _ in tensors:
        n += 8 + len(_b(name)) + 4 + 8 * len(shape) + 4 + 8
    return n


def exact(kvs: dict) -> bytes:
    """A file of metadata only that ends with its last value: not one byte of padding."""
    return build(kvs)[: header_end(kvs)]


@pytest.fixture
def write(tmp_path):
    def _write(data: bytes, name: str = "m.gguf"):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _write


def refusal(path) -> str:
    with pytest.raises(GGUFError) as e:
        read_header(path)
    return e.value.message


def invalid(path, what: str) -> str:
    """The one line the user sees for a file that is not valid GGUF."""
    return f"model file is not valid GGUF: {what} ({path})"


def no_kv(n_tensors=0, n_kv=0, version=3) -> bytes:
    return struct.pack("<4sIQQ", b"GGUF", version, n_tensors, n_kv)


# -- the file as a whole ----------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_the_smallest_gguf_file_is_24_bytes_and_valid(write, version):
    path = write(no_kv(version=version))
    h = read_header(path)
    assert (h.version, h.file_size, h.metadata, h.tensors, h.types) == (version, 24, {}, [], {})
    assert h.data_offset == 32  # the data would start at the next multiple of 32
    assert h.architecture == "unknown"


def test_23_bytes_and_a_wrong_magic_number_are_refused(write):
    path = write(no_kv()[:23])
    assert refusal(path) == invalid(path, "truncated header")
    for data in (b"GGU", b"GGUG" + no_kv()[4:], b"\x89PNG\r\n\x1a\n" + bytes(64)):
        path = write(data)
        assert refusal(path) == f"model file is not GGUF: {path} (wrong magic number)"


@pytest.mark.parametrize("version", [0, 1, 4, 3 << 24])
def test_other_versions_are_refused(write, version):
    path = write(no_kv(version=version))
    expected = f"unsupported GGUF version {version} (gptcli reads versions 2 and 3)"
    assert refusal(path) == invalid(path, expected)


def test_read_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing.gguf"
    assert refusal(missing) == f"model file not found: {missing}"
    assert refusal(tmp_path) == f"model path is a directory, not a GGUF file: {tmp_path}"
    (tmp_path / "file").write_bytes(no_kv())
    under_a_file = tmp_path / "file" / "m.gguf"
    assert refusal(under_a_file) == f"cannot read model file {under_a_file}: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_named(write):
    path = write(no_kv())
    path.chmod(0)
    assert refusal(path) == f"model file is not readable (permission denied): {path}"


def test_counts_are_bounded_by_the_file_size(write):
    # At least 13 bytes per metadata entry and 29 per tensor: a count the size allows
    # is parsed (and fails on what follows); one more is refused before any loop.
    path = write(no_kv(n_kv=100) + bytes(1300 - 24))
    assert refusal(path) == invalid(path, "a metadata key is empty")
    path = write(no_kv(n_kv=101) + bytes(1300 - 24))
    expected = "header claims 0 tensors and 101 metadata entries, more than 1300 bytes can hold"
    assert refusal(path) == invalid(path, expected + " (truncated?)")
    path = write(no_kv(n_tensors=50) + bytes(1450 - 24))
    assert refusal(path) == invalid(path, "tensor  has 0 dimensions")
    path = write(no_kv(n_tensors=51) + bytes(1450 - 24))
    expected = "header claims 51 tensors and 0 metadata entries, more than 1450 bytes can hold"
    assert refusal(path) == invalid(path, expected + " (truncated?)")


def f32_tensor(name: str, n: int, offset: int = 0):
    return (name, (n,), F32_TENSOR, offset)


def _full_file():
    kvs = {
        "general.architecture": text("llama"),
        "llama.block_count": scalar(U32, 2),
        "general.tags": array(STR, ["a", "bb", "ccc"]),
        "tokenizer.ggml.tokens": array(STR, ["x", "y", "z"]),
        "tokenizer.ggml.token_type": array(I32, [1, 1, 3]),
        "llama.rope.freq_base": scalar(F32, 10000.0),
    }
    tensors = [f32_tensor("a", 9, 0), f32_tensor("b", 1, 64)]
    return build(kvs, tensors, bytes(64) + bytes(4))


def test_every_truncation_is_refused_with_one_clear_line(write):
    data = _full_file()
    assert len(read_header(write(data)).tensors) == 2
    path = write(data)
    for n in reversed(range(len(data))):  # every prefix, cut in place (fast)
        os.truncate(path, n)
        message = refusal(path)
        assert message.endswith(f"({path})") or message.endswith(f"{path} (wrong magic number)")
        assert "truncated" in message or "past the end" in message or "not GGUF" in message


def test_each_truncation_point_is_named(write):
    kvs = {"k": text("value"), "n": scalar(U32, 7)}
    data = exact(kvs)
    path = write(data[:30])  # inside the first key's length
    assert refusal(path) == invalid(
        path, "metadata key length runs past the end of the file at byte 24"
    )
    path = write(data[:33])  # key read, its type cut
    assert refusal(path) == invalid(path, "type of k runs past the end of the file at byte 33")
    path = write(data[:40])  # inside the value's length
    assert refusal(path) == invalid(
        path, "value of k length runs past the end of the file at byte 37"
    )
    path = write(data[:49])  # the value's bytes cut
    assert refusal(path) == invalid(path, "value of k runs past the end of the file at byte 45")
    path = write(data[:-1])  # the last scalar cut by one byte
    at = len(data) - 4
    assert refusal(path) == invalid(path, f"value of n runs past the end of the file at byte {at}")
    assert read_header(write(data)).metadata == {"k": "value", "n": 7}


# -- metadata values ----------------------------------------------------------------------

EXTREMES = {
    U8: 255,
    I8: -128,
    U16: 65535,
    I16: -32768,
    U32: 2**32 - 1,
    I32: -(2**31),
    F32: -1.5,
    BOOL: True,
    U64: 2**64 - 1,
    I64: -(2**63),
    F64: 0.1,
}


def test_every_scalar_type_reads_its_value_up_to_the_last_byte(write):
    kvs = {f"t{t}": scalar(t, v) for t, v in EXTREMES.items()}
    kvs["s"] = text("héllo")
    kvs["z"] = scalar(BOOL, False)
    h = read_header(write(exact(kvs)))
    assert h.metadata == {**{f"t{t}": v for t, v in EXTREMES.items()}, "s": "héllo", "z": False}
    assert h.types == {
        **{f"t{t}": (t, None) for t in EXTREMES},
        "s": (STR, None),
        "z": (BOOL, None),
    }


def _values(etype: int, n: int) -> list:
    if etype == BOOL:
        return [i % 3 == 0 for i in range(n)]
    if etype in (F32, F64):
        return [i * 0.5 for i in range(n)]
    if etype in (I8, I16, I32, I64):
        return [-i for i in range(n)]
    return [i * 3 for i in range(n)]


def test_arrays_keep_64_values_and_summarise_longer_ones(write):
    kvs, expected = {}, {}
    for t in EXTREMES:
        for n in (0, 64, 65):
            kvs[f"a{t}.{n}"] = array(t, _values(t, n))
            expected[f"a{t}.{n}"] = _values(t, n) if n <= 64 else ArrayInfo(t, 65)
        kvs[f"after{t}"] = scalar(U8, t)  # read from where the array ends
        expected[f"after{t}"] = t
    words = [f"w{i}" for i in range(65)]
    kvs["s64"], expected["s64"] = array(STR, words[:64]), words[:64]
    kvs["s65"], expected["s65"] = array(STR, words), ArrayInfo(STR, 65)
    kvs["s66"], expected["s66"] = array(STR, [""] * 66), ArrayInfo(STR, 66)
    h = read_header(write(exact(kvs)))
    assert h.metadata == expected
    assert h.types["a4.65"] == (ARR, U32) and h.types["s64"] == (ARR, STR)


def test_invalid_utf8_in_keys_and_strings_is_replaced_not_fatal(write):
    kvs = {b"k\xff": text(b"v\xfe"), "a": array(STR, [b"\xc3"])}
    h = read_header(write(build(kvs)))
    assert h.metadata == {"k\ufffd": "v\ufffd", "a": ["\ufffd"]}


@pytest.mark.parametrize(("key_bytes", "ok"), [(1, True), (65_536, True), (65_537, False)], ids=str)
def test_a_key_may_have_65536_bytes(write, key_bytes, ok):
    kvs = {"k" * key_bytes: scalar(U8, 1)}
    path = write(build(kvs))
    if ok:
        assert read_header(path).metadata == {"k" * key_bytes: 1}
    else:
        assert refusal(path) == invalid(path, "metadata key claims 65537 bytes")


def test_a_string_may_claim_2_30_bytes_not_more(write):
    at = 24 + 8 + 1 + 4 + 8
    path = write(build({"s": (STR, struct.pack("<Q", 2**30) + b"abc")}))
    assert refusal(path) == invalid(path, f"value of s runs past the end of the file at byte {at}")
    path = write(build({"s": (STR, struct.pack("<Q", 2**30 + 1) + b"abc")}))
    assert refusal(path) == invalid(path, "value of s claims 1073741825 bytes")


def test_an_array_may_claim_2_30_elements_not_more(write):
    at = 24 + 8 + 1 + 4 + 12
    for etype, unit in ((U8, "elements"), (STR, "strings")):
        path = write(build({"a": array(etype, [], count=2**30)}))
        what = f"array a (1073741824 {unit}) runs past the end of the file at byte {at}"
        assert refusal(path) == invalid(path, what)
        path = write(build({"a": array(etype, [], count=2**30 + 1)}))
        assert refusal(path) == invalid(path, "array a claims 1073741825 elements")


def test_an_array_of_n_uint32_needs_4n_bytes(write):
    # Three elements claimed, two present: cut at the exact end of the file.
    kvs = {"a": (ARR, struct.pack("<IQ", U32, 3) + struct.pack("<2I", 1, 2))}
    path = write(exact(kvs))
    at = header_end(kvs) - 8
    assert refusal(path) == invalid(
        path, f"array a (3 elements) runs past the end of the file at byte {at}"
    )


def test_an_array_header_cut_short_is_named(write):
    at = 24 + 8 + 1 + 4
    path = write(no_kv(n_kv=1) + enc_string("a") + struct.pack("<IH", ARR, STR))
    assert refusal(path) == invalid(
        path, f"array type of a runs past the end of the file at byte {at}"
    )
    path = write(no_kv(n_kv=1) + enc_string("a") + struct.pack("<IIH", ARR, STR, 1))
    what = f"array length of a runs past the end of the file at byte {at + 4}"
    assert refusal(path) == invalid(path, what)


def test_a_string_array_needs_8_bytes_a_string(write):
    # Ten strings claimed, three of 9 bytes present: refused on the count, before any string.
    kvs = {"a": array(STR, ["x", "y", "z"], count=10)}
    path = write(exact(kvs))
    what = f"array a (10 strings) runs past the end of the file at byte {24 + 8 + 1 + 4 + 12}"
    assert refusal(path) == invalid(path, what)


@pytest.mark.parametrize(
    ("kv", "what"),
    [
        ((13, b"\0" * 8), "metadata a has unknown type 13"),
        ((ARR, struct.pack("<IQ", ARR, 1)), "array a has unsupported element type 9"),
        ((ARR, struct.pack("<IQ", 13, 1) + b"\0" * 8), "array a has unsupported element type 13"),
    ],
)
def test_unknown_types_and_nested_arrays_are_refused(write, kv, what):
    path = write(build({"a": kv}))
    assert refusal(path) == invalid(path, what)


def test_empty_and_duplicate_keys_are_refused(write):
    path = write(build({"": scalar(U8, 1)}))
    assert refusal(path) == invalid(path, "a metadata key is empty")
    raw = build({"k": scalar(U8, 1), "j": scalar(U8, 2)})
    dup = raw.replace(b"\x01\0\0\0\0\0\0\0j", b"\x01\0\0\0\0\0\0\0k")
    path = write(dup)
    assert refusal(path) == invalid(path, "duplicate metadata key k")


@pytest.mark.parametrize("count", [3, 65])  # kept as values / skipped over
def test_each_string_array_element_is_bounded(write, count):
    head = struct.pack("<IQ", STR, count) + b"".join(enc_string(f"e{i}") for i in range(count - 1))

    def file_with(last: bytes) -> bytes:
        return exact({"a": (ARR, head + last)})

    start = header_end({"a": (ARR, head)})  # where the last element's length starts
    path = write(file_with(struct.pack("<Q", 2**30 + 1) + b"x"))
    assert refusal(path) == invalid(path, "element of a claims 1073741825 bytes")
    what = f"element of a runs past the end of the file at byte {start + 8}"
    for claim in (5, 2**30):  # the limit itself is allowed: the file is too short
        path = write(file_with(struct.pack("<Q", claim) + b"xy"))
        assert refusal(path) == invalid(path, what)
    path = write(file_with(b"\0" * 7))
    what = f"element of a length runs past the end of the file at byte {start}"
    assert refusal(path) == invalid(path, what)
    path = write(file_with(struct.pack("<Q", 2) + b"xy"))
    read = read_header(path).get("a")
    assert read == (
        [*(f"e{i}" for i in range(count - 1)), "xy"] if count <= 64 else ArrayInfo(STR, count)
    )


# -- the vocabulary -----------------------------------------------------------------------

TOKENS = "tokenizer.ggml.tokens"


def test_the_vocabulary_is_summarised_and_types_checked(write):
    h = read_header(write(build({TOKENS: array(STR, ["a", "b", "", ""])})))
    assert h.metadata[TOKENS] == ArrayInfo(STR, 4)  # two empty tokens: renamed apart
    assert h.types[TOKENS] == (ARR, STR)
    path = write(build({TOKENS: array(STR, [])}))
    assert refusal(path) == invalid(path, "the vocabulary has 0 tokens")
    assert read_header(write(build({TOKENS: array(STR, ["only"])}))).metadata[TOKENS].count == 1


@pytest.mark.parametrize(
    ("tokens", "what"),
    [
        (["a", "b", "a"], "token 2 ('a') appears twice in the vocabulary"),
        # llama.cpp renames an empty token i to "[EMPTY_i]" before it indexes it.
        (["a", "", "b", "[EMPTY_1]"], "token 3 ('[EMPTY_1]') appears twice in the vocabulary"),
        (["[EMPTY_1]", ""], "token 1 ('[EMPTY_1]') appears twice in the vocabulary"),
        (["x" * 50, "x" * 50], f"token 1 ('{'x' * 40}') appears twice in the vocabulary"),
        ([b"\xff\xfe", b"\xff\xfe"], "token 1 ('\ufffd\ufffd') appears twice in the vocabulary"),
    ],
)
def test_a_token_twice_is_refused(write, tokens, what):
    path = write(build({TOKENS: array(STR, tokens)}))
    assert refusal(path) == invalid(path, what)


def test_each_token_is_bounded(write):
    head = struct.pack("<IQ", STR, 3) + enc_string("a") + enc_string("b")
    start = header_end({TOKENS: (ARR, head)})
    for last, what in (
        (struct.pack("<Q", 2**30 + 1) + b"x" * 8, "token 2 claims 1073741825 bytes"),
        (
            struct.pack("<Q", 9) + b"xy",
            f"token 2 runs past the end of the file at byte {start + 8}",
        ),
        (
            struct.pack("<Q", 2**30) + b"x",
            f"token 2 runs past the end of the file at byte {start + 8}",
        ),
        (b"\0" * 7, f"token 2 length runs past the end of the file at byte {start}"),
    ):
        path = write(exact({TOKENS: (ARR, head + last)}))
        assert refusal(path) == invalid(path, what)


@pytest.mark.parametrize(
    ("key", "kv", "ok"),
    [
        (TOKENS, array(STR, ["a", "b"]), True),
        (TOKENS, array(I32, [1, 2]), False),
        (TOKENS, text("a"), False),
        ("tokenizer.ggml.merges", array(STR, ["a b"]), True),
        ("tokenizer.ggml.merges", array(I32, [1]), False),
        ("tokenizer.ggml.scores", array(F32, [0.5, -1.0]), True),
        ("tokenizer.ggml.scores", array(I32, [1, 2]), True),
        ("tokenizer.ggml.scores", array(F64, [0.5, -1.0]), False),
        ("tokenizer.ggml.scores", array(STR, ["0", "0"]), False),
        ("tokenizer.ggml.token_type", array(I32, [1, 3]), True),
        ("tokenizer.ggml.token_type", array(U32, [1, 3]), False),
        ("tokenizer.ggml.token_type", scalar(I32, 1), False),
    ],
)
def test_tokenizer_arrays_have_the_element_types_llama_cpp_reads(write, key, kv, ok):
    kvs = {TOKENS: array(STR, ["a", "b"]), key: kv}
    path = write(build(kvs))
    if ok:
        read_header(path)
    else:
        assert refusal(path) == invalid(path, f"{key} has the wrong type")


@pytest.mark.parametrize("n_tokens", [3, 65])  # kept as lists / summarised
def test_tokenizer_arrays_agree_in_length(write, n_tokens):
    tokens = array(STR, [f"t{i}" for i in range(n_tokens)])
    for key, etype in (("tokenizer.ggml.scores", F32), ("tokenizer.ggml.token_type", I32)):
        for n in (n_tokens - 1, n_tokens + 1):
            path = write(build({TOKENS: tokens, key: array(etype, [0] * n)}))
            assert refusal(path) == invalid(path, f"{key} has {n} entries for {n_tokens} tokens")
        read_header(write(build({TOKENS: tokens, key: array(etype, [0] * n_tokens)})))
    # Without a vocabulary there is nothing to agree with.
    read_header(write(build({"tokenizer.ggml.scores": array(F32, [0.0] * 5)})))


# -- tensors and their layout -----------------------------------------------------------


def test_tensor_fields_and_data_offset(write):
    kvs = {"k": scalar(U8, 1)}
    tensors = [("a", (8, 1, 1, 2), F32_TENSOR, 0), ("b", (32, 3), Q4_0_TENSOR, 64)]
    data = bytes(range(118))
    path = write(build(kvs, tensors, data))
    h = read_header(path)
    # What embed and unembedding do with a tensor: map its bytes where the header says.
    for t, expected in zip(h.tensors, (data[:64], data[64:]), strict=True):
        assert (
            np.memmap(path, dtype=np.uint8, mode="r", offset=t.offset, shape=t.nbytes).tobytes()
            == expected
        )
    start = -(-header_end(kvs, tensors) // 32) * 32
    assert h.data_offset == start
    assert h.path == path and h.file_size == len(data) + start
    a, b = h.tensors
    assert (a.name, a.shape, a.type, a.offset, a.nbytes, a.n_elements) == (
        "a",
        (8, 1, 1, 2),
        0,
        start,
        64,
        16,
    )
    assert (b.name, b.shape, b.type, b.offset, b.nbytes, b.n_elements) == (
        "b",
        (32, 3),
        2,
        start + 64,
        54,
        96,
    )


def test_a_tensor_info_cut_short_is_named(write):
    kvs = {"pad": text("x" * 60)}  # room for the count check: 29 bytes a tensor
    tensors = [("a", (4, 2), F32_TENSOR, 0)]
    data = build(kvs, tensors, bytes(32))
    name_at = header_end(kvs)
    for cut, what, at in (
        (name_at + 4, "tensor name length", name_at),
        (name_at + 10, "dimension count of a", name_at + 9),
        (name_at + 20, "shape of a", name_at + 13),
        (name_at + 29 + 3, "type of a", name_at + 29),
        (name_at + 33 + 7, "offset of a", name_at + 33),
    ):
        path = write(data[:cut])
        assert refusal(path) == invalid(path, f"{what} runs past the end of the file at byte {at}")


@pytest.mark.parametrize("remainder", [0, 1, 31])
def test_the_data_starts_at_the_next_multiple_of_the_alignment(write, remainder):
    # Key lengths chosen so the header ends `remainder` bytes past a multiple of 32.
    tensors = [f32_tensor("t", 1)]
    base = header_end({"k": scalar(U8, 1)}, tensors)
    key = "k" * (1 + (remainder - base) % 32)
    kvs = {key: scalar(U8, 1)}
    end = header_end(kvs, tensors)
    assert end % 32 == remainder
    h = read_header(write(build(kvs, tensors, bytes(4))))
    assert h.data_offset == h.tensors[0].offset == end + (-end % 32)


@pytest.mark.parametrize("alignment", [1, 2, 64, 1 << 31])
def test_a_power_of_two_alignment_is_used(write, alignment):
    kvs = {"general.alignment": scalar(U32, alignment)}
    tensors = [f32_tensor("a", 3, 0), f32_tensor("b", 1, -(-12 // alignment) * alignment)]
    if alignment > 64:  # a header of 2 GiB of padding: only the check itself is read
        path = write(build(kvs, [], alignment=32))
        assert read_header(path).metadata["general.alignment"] == alignment
        return
    data = bytes(-(-12 // alignment) * alignment + 4)
    h = read_header(write(build(kvs, tensors, data, alignment=alignment)))
    end = header_end(kvs, tensors)
    assert h.data_offset == end + (-end % alignment)
    assert [t.offset for t in h.tensors] == [h.data_offset, h.data_offset + len(data) - 4]


@pytest.mark.parametrize(
    ("kv", "what"),
    [
        (scalar(U32, 0), "alignment 0 is not a power of two"),
        (scalar(U32, 48), "alignment 48 is not a power of two"),
        (scalar(U32, 2**32 - 1), "alignment 4294967295 is not a power of two"),
        (scalar(U64, 32), "general.alignment is not a uint32"),
        (scalar(I32, 32), "general.alignment is not a uint32"),
    ],
)
def test_a_bad_alignment_is_refused(write, kv, what):
    path = write(build({"general.alignment": kv}))
    assert refusal(path) == invalid(path, what)


@pytest.mark.parametrize(("name_bytes", "ok"), [(0, True), (63, True), (64, False)], ids=str)
def test_a_tensor_name_may_have_63_bytes(write, name_bytes, ok):
    path = write(build({}, [f32_tensor("n" * name_bytes, 1)], bytes(4)))
    if ok:
        assert read_header(path).tensors[0].name == "n" * name_bytes
    else:
        assert refusal(path) == invalid(path, "tensor name claims 64 bytes")


@pytest.mark.parametrize(
    ("shape", "ttype", "what"),
    [
        ((), F32_TENSOR, "tensor a has 0 dimensions"),
        ((1, 1, 1, 1, 1), F32_TENSOR, "tensor a has 5 dimensions"),
        ((8, 0), F32_TENSOR, "tensor a has an empty or negative dimension (8, 0)"),
        ((2**63,), I8_TENSOR, f"tensor a has an empty or negative dimension ({2**63},)"),
        (
            (2**64 - 1, 1),
            I8_TENSOR,
            f"tensor a has an empty or negative dimension ({2**64 - 1}, 1)",
        ),
        ((INT64_MAX,), I8_TENSOR, "tensor a lies past the end of the file (truncated?)"),
        ((2**62, 2), I8_TENSOR, f"tensor a has too many elements ({2**62}, 2)"),
        ((2**31, 2**31, 2), I8_TENSOR, f"tensor a has too many elements ({2**31}, {2**31}, 2)"),
        ((48, 2), Q4_0_TENSOR, "tensor a: row of 48 is not a multiple of 32"),
        ((16,), Q4_0_TENSOR, "tensor a: row of 16 is not a multiple of 32"),
        ((1,), 4, "tensor a has unknown type 4"),
        ((1,), 43, "tensor a has unknown type 43"),
        ((1,), 2**32 - 1, "tensor a has unknown type 4294967295"),
    ],
    ids=str,
)
def test_a_bad_tensor_is_refused(write, shape, ttype, what):
    path = write(build({}, [("a", shape, ttype, 0)], bytes(64)))
    assert refusal(path) == invalid(path, what)


def test_one_to_four_dimensions_are_read(write):
    shapes = [(4,), (4, 2), (4, 1, 2), (4, 1, 1, 2)]
    tensors = [(f"t{i}", s, F32_TENSOR, 32 * i) for i, s in enumerate(shapes)]
    h = read_header(write(build({}, tensors, bytes(96 + 32))))
    assert [t.shape for t in h.tensors] == shapes
    assert [t.nbytes for t in h.tensors] == [16, 32, 32, 32]


def test_duplicate_and_misaligned_tensors_are_refused(write):
    path = write(build({}, [f32_tensor("a", 1, 0), f32_tensor("a", 1, 32)], bytes(36)))
    assert refusal(path) == invalid(path, "duplicate tensor a")
    path = write(build({}, [f32_tensor("a", 1, 1)], bytes(36)))
    assert refusal(path) == invalid(path, "tensor a is not aligned")


def test_a_tensor_may_end_at_the_last_byte_of_the_file(write):
    tensors = [f32_tensor("a", 8, 0), f32_tensor("b", 3, 32)]
    data = build({}, tensors, bytes(32 + 12))
    assert read_header(write(data)).tensors[1].nbytes == 12
    path = write(data[:-1])
    assert refusal(path) == invalid(path, "tensor b lies past the end of the file (truncated?)")
    end = header_end({}, tensors)
    path = write(data[: end + (-end % 32)])  # the header, its padding, no data
    assert refusal(path) == invalid(path, "tensor a lies past the end of the file (truncated?)")
    path = write(data[: end + (-end % 32) - 1])  # cut in the padding
    assert refusal(path) == invalid(path, "tensor data starts past the end of the file (truncated)")


@pytest.mark.parametrize(
    ("tensors", "what"),
    [
        # Adjacent, padded to 32, then adjacent again: the layout llama.cpp writes.
        ([f32_tensor("a", 8, 0), f32_tensor("b", 1, 32), f32_tensor("c", 9, 64)], None),
        (
            [f32_tensor("a", 8, 0), f32_tensor("b", 1, 64)],
            "tensor b is not where the layout puts it",
        ),
        (
            [f32_tensor("a", 1, 32), f32_tensor("b", 1, 0)],
            "tensor a is not where the layout puts it",
        ),
        ([f32_tensor("a", 9, 0), f32_tensor("b", 1, 32)], "tensors a and b overlap"),
        ([f32_tensor("b", 1, 32), f32_tensor("a", 9, 0)], "tensors a and b overlap"),
        ([f32_tensor("a", 1, 0), f32_tensor("b", 1, 0)], "tensors a and b overlap"),
    ],
    ids=["packed", "gap", "reordered", "overlap", "overlap-reordered", "same-offset"],
)
def test_tensors_lie_one_after_the_other(write, tensors, what):
    path = write(build({}, tensors, bytes(128)[: max(o for *_, o in tensors) + 36]))
    if what is None:
        h = read_header(path)
        assert [t.offset - h.data_offset for t in h.tensors] == [0, 32, 64]
    elif "layout" in what:
        assert refusal(path) == invalid(path, what + " (gap or reordering)")
    else:
        assert refusal(path) == invalid(path, what)


def test_every_tensor_type_has_ggml_block_and_type_size(write):
    """Each type the vendored ggml reads from a file, sized as ggml sizes it (its own
    ggml_blck_size and ggml_type_size); the removed ones (block size 0) refused."""
    from llama_cpp import llama_cpp as lc
    from llama_cpp._ggml import libggml

    libggml.ggml_blck_size.restype = libggml.ggml_type_size.restype = ctypes.c_size_t
    libggml.ggml_blck_size.argtypes = libggml.ggml_type_size.argtypes = [ctypes.c_int]
    for ttype in range(lc.GGML_TYPE_COUNT + 1):
        block = libggml.ggml_blck_size(ttype) if ttype < lc.GGML_TYPE_COUNT else 0
        size = libggml.ggml_type_size(ttype) if block else 0
        tensors = [("t", (2 * block or 1, 3), ttype, 0)]
        path = write(build({}, tensors, bytes(6 * size)), name=f"type{ttype}.gguf")
        if block == 0:
            assert refusal(path) == invalid(path, f"tensor t has unknown type {ttype}")
        else:
            assert read_header(path).tensors[0].nbytes == 6 * size, ttype


# -- hyperparameters llama.cpp asserts on ---------------------------------------------------

LLAMA = {"general.architecture": text("llama")}


def hparams(**kvs) -> dict:
    return {**LLAMA, **{k.replace("__", "."): v for k, v in kvs.items()}}


def test_the_architecture_must_be_a_string(write):
    for kv in (scalar(U32, 1), array(STR, ["llama"])):
        path = write(build({"general.architecture": kv}))
        assert refusal(path) == invalid(path, "general.architecture is not a string")
    # Without an architecture, no key is a hyperparameter.
    h = read_header(write(build({"llama.block_count": scalar(U32, 0)})))
    assert h.get("{arch}.block_count") is None and h.get("llama.block_count") == 0


@pytest.mark.parametrize("vtype", [U8, I8, U16, I16, U32, I32, U64, I64])
def test_block_count_of_every_integer_type(write, vtype):
    h = read_header(write(build(hparams(llama__block_count=scalar(vtype, 3)))))
    assert h.get("{arch}.block_count") == 3 and h.get("{arch}.missing", "d") == "d"


@pytest.mark.parametrize(
    ("kv", "what"),
    [
        (scalar(F32, 2.0), "llama.block_count is not an integer"),
        (scalar(BOOL, True), "llama.block_count is not an integer"),
        (text("2"), "llama.block_count is not an integer"),
        (scalar(U32, 0), "llama.block_count is 0 (llama.cpp takes 1 to 512)"),
        (scalar(I32, -1), "llama.block_count is -1 (llama.cpp takes 1 to 512)"),
        (scalar(U32, 513), "llama.block_count is 513 (llama.cpp takes 1 to 512)"),
        (scalar(U32, 1), None),
        (scalar(U32, 512), None),
    ],
)
def test_block_count_is_1_to_512(write, kv, what):
    path = write(build(hparams(llama__block_count=kv)))
    assert (refusal(path) if what else None) == (invalid(path, what) if what else None)
    if what is None:
        read_header(path)


@pytest.mark.parametrize(
    ("nextn", "what"),
    [
        (scalar(U32, 0), None),
        (scalar(U32, 4), None),
        (scalar(U32, 5), "llama.nextn_predict_layers is 5 for 4 blocks"),
        (scalar(I32, -1), "llama.nextn_predict_layers is -1 for 4 blocks"),
        (scalar(F32, 9.0), None),  # not an integer: llama.cpp refuses it by itself
    ],
)
def test_nextn_layers_are_at_most_the_blocks(write, nextn, what):
    kvs = hparams(llama__block_count=scalar(U32, 4), llama__nextn_predict_layers=nextn)
    path = write(build(kvs))
    if what is None:
        read_header(path)
    else:
        assert refusal(path) == invalid(path, what)


@pytest.mark.parametrize("scaling", ["none", "linear", "yarn", "longrope"])
def test_known_rope_scaling_types_pass(write, scaling):
    h = read_header(write(build(hparams(llama__rope__scaling__type=text(scaling)))))
    assert h.get("{arch}.rope.scaling.type") == scaling


@pytest.mark.parametrize(
    ("key", "kv", "what"),
    [
        ("llama.rope.scaling.type", text("warp"), "llama.rope.scaling.type 'warp' is unknown"),
        ("llama.rope.scaling.type", text("YARN"), "llama.rope.scaling.type 'YARN' is unknown"),
        ("llama.rope.scaling.type", text(""), "llama.rope.scaling.type '' is unknown"),
        (
            "llama.rope.dimension_count",
            scalar(U32, 15),
            "llama.rope.dimension_count is 15, not even",
        ),
        (
            "llama.rope.dimension_count_swa",
            scalar(I32, -3),
            "llama.rope.dimension_count_swa is -3, not even",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            scalar(F32, float("nan")),
            "llama.attention.layer_norm_rms_epsilon is nan",
        ),
        (
            "llama.attention.layer_norm_epsilon",
            scalar(F64, float("inf")),
            "llama.attention.layer_norm_epsilon is inf",
        ),
        (
            "llama.attention.layer_norm_epsilon",
            scalar(F32, -0.5),
            "llama.attention.layer_norm_epsilon is negative (-0.5)",
        ),
        (
            "llama.attention.layer_norm_epsilon",
            scalar(F64, -0.25),
            "llama.attention.layer_norm_epsilon is negative (-0.25)",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            scalar(F32, 0.0),
            "llama.attention.layer_norm_rms_epsilon is 0 (a norm epsilon must be positive)",
        ),
        (
            "llama.rope.freq_base",
            scalar(F32, 0.5),
            "llama.rope.freq_base is 0.5 (a RoPE base must be at least 1)",
        ),
        (
            "llama.rope.freq_base",
            scalar(F64, 0.0),
            "llama.rope.freq_base is 0 (a RoPE base must be at least 1)",
        ),
        (
            "llama.rope.freq_base_swa",
            scalar(F32, -4.0),
            "llama.rope.freq_base_swa is -4 (a RoPE base must be at least 1)",
        ),
        (
            "llama.expert_weights_scale",
            scalar(F32, float("-inf")),
            "llama.expert_weights_scale is -inf",
        ),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_a_hyperparameter_llama_cpp_aborts_on_is_refused(write, key, kv, what):
    path = write(build({**LLAMA, key: kv}))
    assert refusal(path) == invalid(path, what)


@pytest.mark.parametrize(
    ("key", "kv"),
    [
        ("llama.rope.dimension_count", scalar(U32, 64)),
        ("llama.rope.dimension_count_swa", scalar(U32, 0)),
        ("llama.rope.dimension_count", scalar(F32, 15.0)),  # llama.cpp refuses the type itself
        ("llama.rope.scaling.type", scalar(U32, 7)),
        ("llama.attention.layer_norm_rms_epsilon", scalar(F32, 1e-45)),  # the smallest float32
        ("llama.rope.freq_base", scalar(F32, 1.0)),
        ("llama.rope.freq_base_swa", scalar(F64, 1.0)),
        ("llama.rope.freq_base", scalar(U32, 0)),  # not a float: llama.cpp's own type check
        # 0 means "not set" for a scaling factor; keys llama.cpp does not read cannot hurt it.
        ("llama.rope.scaling.factor", scalar(F32, 0.0)),
        ("llama.custom", scalar(F32, -1.0)),
        ("general.x", scalar(F32, float("nan"))),
        ("llamax.rope.freq_base", scalar(F32, 0.0)),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_a_valid_or_unread_hyperparameter_passes(write, key, kv):
    read_header(write(build({**LLAMA, key: kv})))


@pytest.mark.parametrize(
    ("count", "used", "what"),
    [
        (None, None, None),  # a dense model
        (0, 0, None),
        (8, 2, None),
        (8, 8, None),
        (1024, 1, None),
        ([0, 8], 2, None),  # per layer: the largest counts
        ([8, 0], [2, 1], None),
        ([], [], None),  # per layer, no layer: no expert
        ([], 1, "llama.expert_used_count is 1, more than the 0 experts"),
        (1, None, "llama.expert_count is 1 but no expert is used (expert_used_count)"),
        (8, 9, "llama.expert_used_count is 9, more than the 8 experts"),
        (None, 1, "llama.expert_used_count is 1, more than the 0 experts"),
        ([2, 8], [1, 9], "llama.expert_used_count is 9, more than the 8 experts"),
        (1025, 1, "llama.expert_count is 1025 (llama.cpp takes at most 1024)"),
        ([1025, 0], 1, "llama.expert_count is 1025 (llama.cpp takes at most 1024)"),
        (4, None, "llama.expert_count is 4 but no expert is used (expert_used_count)"),
        ([0, 4], [0, 0], "llama.expert_count is 4 but no expert is used (expert_used_count)"),
    ],
)
def test_expert_counts(write, count, used, what):
    kvs = dict(LLAMA)
    for key, v in (("llama.expert_count", count), ("llama.expert_used_count", used)):
        if v is not None:
            kvs[key] = array(U32, v) if isinstance(v, list) else scalar(U32, v)
    path = write(build(kvs))
    if what is None:
        read_header(path)
    else:
        assert refusal(path) == invalid(path, what)


def test_expert_counts_of_another_type_are_left_to_llama_cpp(write):
    # llama.cpp refuses a count that is not an integer with an error of its own.
    for kv in (scalar(BOOL, True), scalar(F32, 4.0), text("4")):
        read_header(write(build({**LLAMA, "llama.expert_count": kv})))


# -- what reaches the terminal ------------------------------------------------------------------


def test_printable_escapes_control_characters_and_bounds_the_length():
    from gptcli.model.gguf_check import printable

    assert printable("a\x1b[2Jb\n\té") == "a\\x1b[2Jb\\n\\té"
    assert printable("C:\\models\\'x'.gguf") == "C:\\models\\'x'.gguf"  # shown as is
    assert printable("x" * 200) == "x" * 200
    long = "".join(chr(0x4E00 + i) for i in range(201))
    assert printable(long) == long[:100] + "..." + long[-100:]
    assert printable("abcdefg", limit=4) == "ab...fg"


def test_a_hostile_key_reaches_the_message_escaped_and_bounded(write):
    key = "\x1b]0;pwned\x07" + "k" * 300
    raw = build({key: scalar(U8, 1), "j" * len(key): scalar(U8, 2)})
    path = write(raw.replace(enc_string("j" * len(key)), enc_string(key)))
    message = refusal(path)
    what = "duplicate metadata key " + key
    shown = (what[:100] + "..." + what[-100:]).replace("\x1b", "\\x1b").replace("\x07", "\\x07")
    assert message == invalid(path, shown)

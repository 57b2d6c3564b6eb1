"""`gptcli inspect`: hyperparameters and the parameter tally, read off real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.tinymodel import TinyShape, tensor_shapes
from typer.testing import CliRunner

from gptcli.cli import app
from gptcli.model.anatomy import read_anatomy
from gptcli.model.gguf_check import FILE_TYPE_NAMES, TYPE_NAMES, read_header

runner = CliRunner()


def write_gguf(
    path: Path, arch: str, tensors: dict[str, np.ndarray], metadata: dict | None = None
) -> Path:
    """A small GGUF file with exactly these tensors (numpy shapes) and uint32 metadata."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in (metadata or {}).items():
        writer.add_uint32(key, value)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def by_kind(anatomy) -> dict[str, int]:
    return {g.kind: g.parameters for g in anatomy.groups}


def test_tiny_model_tally_is_exact(tiny_model, tokenizer):
    shape = TinyShape()
    n_vocab = len(tokenizer.tokens)
    a = read_anatomy(tiny_model)
    expected = sum(int(np.prod(s)) for s in tensor_shapes(shape, n_vocab).values())
    assert a.parameters == expected
    assert sum(g.parameters for g in a.groups) == expected
    d, kv, ff, n = shape.d_model, shape.n_kv_heads * shape.head_dim, shape.d_ff, shape.n_layers
    assert by_kind(a) == {
        "token_embedding": n_vocab * d,
        "attn_query": n * d * d,
        "attn_key": n * kv * d,
        "attn_value": n * kv * d,
        "attn_output": n * d * d,
        "mlp_gate": n * ff * d,
        "mlp_up": n * ff * d,
        "mlp_down": n * d * ff,
        "norm": (2 * n + 1) * d,
        "unembedding": 0,
    }
    groups = {g.kind: g for g in a.groups}
    assert groups["token_embedding"].shapes == f"{n_vocab} x {d}"
    assert groups["attn_key"].shapes == f"{n} x ({kv} x {d})"
    assert groups["unembedding"].note == "tied to the token embedding"
    assert sum(g.share for g in a.groups) == pytest.approx(1.0)


def test_tiny_model_hyperparameters(tiny_model, tokenizer):
    shape = TinyShape()
    a = read_anatomy(tiny_model)
    assert (a.architecture, a.layers, a.d_model) == ("llama", shape.n_layers, shape.d_model)
    assert (a.heads, a.kv_heads, a.head_size) == (shape.n_heads, shape.n_kv_heads, shape.head_dim)
    assert (a.ffn, a.context, a.rope_base) == (shape.d_ff, shape.n_ctx_train, 10000.0)
    assert a.vocabulary == len(tokenizer.tokens)
    assert a.file_type == "F16"
    assert {q.type for q in a.quantization} == {"F16", "F32"}
    assert a.file_size == tiny_model.stat().st_size


def test_smollm2_tally_sums_to_its_134m_parameters(smollm2):
    a = read_anatomy(smollm2)
    header = read_header(smollm2)
    total = sum(t.n_elements for t in header.tensors)
    assert a.parameters == total == 134_515_008  # FACTS.md, re-measured
    assert sum(g.parameters for g in a.groups) == total
    groups = {g.kind: g for g in a.groups}
    assert groups["token_embedding"].shapes == "49152 x 576"
    assert groups["attn_query"].shapes == "30 x (576 x 576)"
    assert groups["attn_key"].shapes == "30 x (192 x 576)"
    assert groups["mlp_down"].shapes == "30 x (576 x 1536)"
    assert groups["unembedding"].note == "tied to the token embedding"
    assert (a.layers, a.d_model, a.heads, a.kv_heads, a.head_size) == (30, 576, 9, 3, 64)
    assert (a.ffn, a.vocabulary, a.context) == (1536, 49152, 8192)
    assert {q.type: q.tensors for q in a.quantization} == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert a.tensor_bytes / a.parameters == pytest.approx(a.bytes_per_weight)


def test_inspect_json_and_plain_text(smollm2):
    result = runner.invoke(app, ["inspect", "-m", str(smollm2), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["parameters"] == sum(g["parameters"] for g in data["groups"])
    assert data["architecture"] == "llama"
    plain = runner.invoke(app, ["inspect", "-m", str(smollm2)], env={"NO_COLOR": "1"})
    assert plain.exit_code == 0
    assert "\x1b[" not in plain.output
    assert "tied to the token embedding" in plain.output
    assert "134,515,008" in plain.output
    assert "attention: query" in plain.output and "MLP: down" in plain.output


def test_unknown_tensor_names_get_groups_of_their_own(tmp_path):
    f32 = np.float32
    path = write_gguf(
        tmp_path / "odd.gguf",
        "llama",
        {
            "token_embd.weight": np.ones((40, 32), f32),
            "blk.0.ssm_conv1d.weight": np.ones((8, 32), f32),
            "blk.1.ssm_conv1d.weight": np.ones((8, 32), f32),
            "blk.0.attn_q.bias": np.ones((32,), f32),
            "output.weight": np.ones((40, 32), f32),
        },
        {"llama.block_count": 2},
    )
    a = read_anatomy(path)
    kinds = by_kind(a)
    assert kinds["other:ssm_conv1d"] == 2 * 8 * 32
    assert kinds["attn_query"] == 32
    assert kinds["unembedding"] == 40 * 32
    assert sum(kinds.values()) == a.parameters == 40 * 32 * 2 + 2 * 8 * 32 + 32
    result = runner.invoke(app, ["inspect", "-m", str(path)])
    assert result.exit_code == 0, result.output
    assert "other: ssm_conv1d" in result.output


def test_unknown_architecture_is_one_clear_error(tmp_path):
    path = write_gguf(tmp_path / "martian.gguf", "martian", {"w.weight": np.ones((4, 32))})
    result = runner.invoke(app, ["inspect", "-m", str(path)])
    assert result.exit_code == 1
    assert "unknown architecture 'martian'" in result.output
    assert "Traceback" not in result.output


def test_not_a_gguf_file_is_one_clear_error(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("hello, not a model at all, but long enough to have a header")
    result = runner.invoke(app, ["inspect", "-m", str(path)])
    assert result.exit_code == 1
    assert "not GGUF" in result.output


def test_type_name_tables_agree_with_the_gguf_package():
    from gguf.constants import GGMLQuantizationType, LlamaFileType

    for t in GGMLQuantizationType:
        assert TYPE_NAMES[int(t)] == t.name
    for f in LlamaFileType:
        assert FILE_TYPE_NAMES[int(f)] == f.name.removeprefix("MOSTLY_")


def test_inspect_imports_neither_gguf_nor_numpy(smollm2):
    # `inspect` must stay fast: the header parser and the name tables suffice.
    import subprocess
    import sys

    code = (
        "import sys; from gptcli.model.anatomy import read_anatomy; "
        f"read_anatomy({str(smollm2)!r}); "
        "print(sorted(m for m in ('gguf', 'numpy', 'llama_cpp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

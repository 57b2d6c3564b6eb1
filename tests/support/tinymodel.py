"""Write a tiny llama GGUF with the `gguf` package: SmolLM2's real tokenizer,
seeded random weights, small shapes. llama.cpp runs it in milliseconds.

The shapes are fixed here so tests can compute parameter counts exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyShape:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 128
    n_ctx_train: int = 512

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class Tokenizer:
    tokens: list[bytes]
    token_types: list[int]
    merges: list[bytes]
    bos_id: int
    eos_id: int
    pre: str


def read_tokenizer(source: Path) -> Tokenizer:
    """SmolLM2's tokenizer arrays, read from the (trusted) embedded model."""
    from gguf import GGUFReader

    reader = GGUFReader(str(source))

    def strings(key: str) -> list[bytes]:
        field = reader.fields[key]
        return [bytes(field.parts[i]) for i in field.data]

    def scalar(key: str):
        field = reader.fields[key]
        return field.parts[field.data[0]][0]

    types = reader.fields["tokenizer.ggml.token_type"]
    return Tokenizer(
        tokens=strings("tokenizer.ggml.tokens"),
        token_types=[int(types.parts[i][0]) for i in types.data],
        merges=strings("tokenizer.ggml.merges"),
        bos_id=int(scalar("tokenizer.ggml.bos_token_id")),
        eos_id=int(scalar("tokenizer.ggml.eos_token_id")),
        pre=bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode(),
    )


def tensor_shapes(shape: TinyShape, n_vocab: int) -> dict[str, tuple[int, ...]]:
    """numpy shapes (rows, cols) of every tensor the tiny model holds."""
    d, kv = shape.d_model, shape.n_kv_heads * shape.head_dim
    out: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (n_vocab, d),
        "output_norm.weight": (d,),
    }
    for i in range(shape.n_layers):
        out.update(
            {
                f"blk.{i}.attn_norm.weight": (d,),
                f"blk.{i}.attn_q.weight": (d, d),
                f"blk.{i}.attn_k.weight": (kv, d),
                f"blk.{i}.attn_v.weight": (kv, d),
                f"blk.{i}.attn_output.weight": (d, d),
                f"blk.{i}.ffn_norm.weight": (d,),
                f"blk.{i}.ffn_gate.weight": (shape.d_ff, d),
                f"blk.{i}.ffn_up.weight": (shape.d_ff, d),
                f"blk.{i}.ffn_down.weight": (d, shape.d_ff),
            }
        )
    return out


def write_tiny_model(
    path: Path,
    tokenizer: Tokenizer,
    *,
    shape: TinyShape = TinyShape(),
    chat_template: str | None = TINY_CHAT_TEMPLATE,
    seed: int = 0,
    name: str = "tiny-test-llama",
    q8_0: bool = False,
) -> Path:
    """A llama GGUF with random weights: F16 matrices, or Q8_0 with `q8_0`."""
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.d_model)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(shape.d_ff)
    writer.add_head_count(shape.n_heads)
    writer.add_head_count_kv(shape.n_kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if q8_0 else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer.pre)
    writer.add_token_list(tokenizer.tokens)
    writer.add_token_types(tokenizer.token_types)
    writer.add_token_merges(tokenizer.merges)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for name_, tshape in tensor_shapes(shape, len(tokenizer.tokens)).items():
        if len(tshape) == 1:
            data = np.ones(tshape, dtype=np.float32)
        else:
            data = (rng.standard_normal(tshape) * 0.5).astype(np.float16)
            if q8_0:
                q8 = gguf.GGMLQuantizationType.Q8_0
                data = gguf.quants.quantize(data.astype(np.float32), q8)
                writer.add_tensor(name_, data, raw_dtype=q8)
                continue
        writer.add_tensor(name_, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

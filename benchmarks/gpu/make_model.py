"""Write a llama-architecture GGUF with random weights and SmolLM2's tokenizer (read from a
small seed GGUF), for speed and CPU-vs-GPU agreement checks where no real weights can travel.
usage: make_model.py SEED.gguf OUT.gguf d_model n_layers n_heads n_kv_heads d_ff"""

import sys

import gguf
import numpy as np

seed, out = sys.argv[1], sys.argv[2]
d, L, H, KV, F = (int(x) for x in sys.argv[3:8])
r = gguf.GGUFReader(seed)


def strings(key):
    f = r.fields[key]
    return [bytes(f.parts[i]) for i in f.data]


def scalar(key):
    f = r.fields[key]
    return f.parts[f.data[0]][0]


tokens = strings("tokenizer.ggml.tokens")
types = r.fields["tokenizer.ggml.token_type"]
ttypes = [int(types.parts[i][0]) for i in types.data]
w = gguf.GGUFWriter(out, "llama")
w.add_name("random-llama")
w.add_context_length(4096)
w.add_embedding_length(d)
w.add_block_count(L)
w.add_feed_forward_length(F)
w.add_head_count(H)
w.add_head_count_kv(KV)
w.add_rope_dimension_count(d // H)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre(bytes(r.fields["tokenizer.ggml.pre"].parts[-1]).decode())
w.add_token_list(tokens)
w.add_token_types(ttypes)
w.add_token_merges(strings("tokenizer.ggml.merges"))
w.add_bos_token_id(int(scalar("tokenizer.ggml.bos_token_id")))
w.add_eos_token_id(int(scalar("tokenizer.ggml.eos_token_id")))
w.add_add_bos_token(False)
rng = np.random.default_rng(0)
kvd = KV * (d // H)


def mat(rows, cols, std):
    return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16)


w.add_tensor("token_embd.weight", mat(len(tokens), d, 2.0 / np.sqrt(d)))
w.add_tensor("output_norm.weight", np.ones(d, np.float32))
for i in range(L):
    s = 1.0 / np.sqrt(d)
    w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
    w.add_tensor(f"blk.{i}.attn_q.weight", mat(d, d, s))
    w.add_tensor(f"blk.{i}.attn_k.weight", mat(kvd, d, s))
    w.add_tensor(f"blk.{i}.attn_v.weight", mat(kvd, d, s))
    w.add_tensor(f"blk.{i}.attn_output.weight", mat(d, d, s / np.sqrt(2 * L)))
    w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
    w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(F, d, s))
    w.add_tensor(f"blk.{i}.ffn_up.weight", mat(F, d, s))
    w.add_tensor(f"blk.{i}.ffn_down.weight", mat(d, F, 1.0 / np.sqrt(F) / np.sqrt(2 * L)))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote", out)

"""The header check in-process: every hostile file of hostile.py refused by
read_header() itself with the message the CLI shows, and real files read exactly.
(test_model_files.py runs the same files through the CLI in subprocesses; these are
the fast twins a mutation run can use.)"""

from __future__ import annotations

import pytest
from hostile import HOSTILE, write_hostile

from gptcli.gguf_check import GGUFError, read_header


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

"""The verification part of model/hub.py in-process: the digest of a cached blob against the
hub's sha256 (LFS) or git blob id, the removal of a damaged blob, the GGUF header
check. Oracles: hashlib on the whole file, and `git hash-object`'s definition of a blob
id. (test_hub.py runs the same paths end to end through a loopback hub.)"""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest

from gptcli.errors import GptcliError
from gptcli.model import hub
from gptcli.model.refs import RemoteFile


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def blob(tmp_path):
    # Larger than one read chunk, so a digest of only the first chunk differs.
    data = bytes(range(256)) * ((hub._CHUNK * 2 + 1000) // 256)
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, data


def test_digest_is_sha256_of_every_byte_for_lfs_files(blob):
    path, data = blob
    want = hashlib.sha256(data).hexdigest()
    f = RemoteFile("m.gguf", len(data), sha256=want, blob_id="0" * 40)
    assert hub._digest(path, f, None, "m") == (want, want)


def test_digest_is_the_git_blob_id_for_plain_files(blob):
    path, data = blob
    want = git_blob_id(data)
    f = RemoteFile("README.md", len(data), sha256=None, blob_id=want)
    assert hub._digest(path, f, None, "r") == (want, want)
    assert hub._digest(path, RemoteFile("x", 1, None, None), None, "r") == ("", want)


def test_verified_blob_keeps_an_intact_copy(blob):
    path, data = blob
    f = RemoteFile("m.gguf", len(data), sha256=hashlib.sha256(data).hexdigest())
    assert hub._verified_blob(path, f, None, "m") is True
    assert path.read_bytes() == data


def test_verified_blob_removes_a_damaged_copy_and_says_so(blob, capsys):
    path, data = blob
    f = RemoteFile("m.gguf", len(data), sha256=hashlib.sha256(data).hexdigest())
    damaged = bytearray(data)
    damaged[-1] ^= 1  # the last byte: only a digest of the whole file sees it
    path.write_bytes(bytes(damaged))
    assert hub._verified_blob(path, f, None, "org/repo/m.gguf") is False
    assert not path.exists()
    err = capsys.readouterr().err
    assert "the cached copy of org/repo/m.gguf is damaged (checksum mismatch)" in err


def test_verified_blob_of_a_missing_file_is_false(tmp_path):
    assert hub._verified_blob(tmp_path / "none", RemoteFile("m", 1, "a" * 64), None, "m") is False


def test_check_gguf_accepts_a_model_and_refuses_a_cut_header(tiny_model, tmp_path):
    hub._check_gguf(tiny_model, "org/repo/tiny.gguf")  # no error
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[:4096])
    with pytest.raises(GptcliError) as e:
        hub._check_gguf(cut, "org/repo/cut.gguf")
    assert str(e.value).startswith("org/repo/cut.gguf is not a valid GGUF file (")
    assert e.value.exit_code == 1


@pytest.mark.parametrize("extra, shown", [(0, False), (1, True)])
def test_hashing_a_large_cached_file_shows_every_byte_on_a_bar(tmp_path, extra, shown):
    # Files over 64 MB get a "verify" bar (hashing takes seconds there); smaller ones none.
    size = 64 * hub._CHUNK + extra
    path = tmp_path / "big.gguf"
    with open(path, "wb") as fh:
        fh.truncate(size)  # sparse: zeros, no disk
    f = RemoteFile("big.gguf", size, sha256=hashlib.sha256(b"\0" * size).hexdigest())
    progress = hub._Progress()  # not started: rich tracks the tasks, draws nothing
    tracemalloc.start()
    try:
        assert hub._verified_blob(path, f, progress, "org/repo/big.gguf") is True
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * hub._CHUNK  # read chunk by chunk: a 20 GB model is not read into memory
    tasks = progress.progress.tasks
    if not shown:
        assert tasks == []
        return
    (task,) = tasks
    assert task.description == "verify org/repo/big.gguf"
    assert (task.total, task.completed) == (size, size)

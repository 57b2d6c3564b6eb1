"""Hostile model files: each one is refused by gptcli's own header check with one
line on stderr and exit 1, before llama.cpp reads it. `gptcli generate` runs in a
subprocess, so a segfault or an abort would show as a negative return code."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from conftest import clean_env
from support.hostile import HOSTILE, T_ARRAY, T_STRING, T_UINT32, enc_string, write_hostile

from gptcli.errors import GptcliError
from gptcli.llama.resources import check_model_fits, meminfo


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


def assert_refused(r, needle: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)  # not negative: no signal
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gptcli: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert "\x1b" not in r.stderr  # nothing from the file reaches the terminal raw


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_model_file_is_refused_in_one_line(gptcli, tiny_model, hostile_dir, name):
    path = write_hostile(name, tiny_model, hostile_dir)
    r = gptcli("generate", "-m", str(path), "--raw", "-n", "1", "hi", timeout=60)
    assert_refused(r, HOSTILE[name][1])


# Files that abort llama.cpp itself (SIGABRT from a GGML_ASSERT) when it is handed
# them directly: the reason gptcli's own check must run first.
ABORTS_LLAMA_CPP = ["duplicate_token", "block_count_zero", "block_count_1000"]
ABORTS_LLAMA_CPP += ["rope_scaling_unknown", "expert_count_without_used"]
ABORTS_LLAMA_CPP += ["expert_used_without_experts", "expert_count_1025"]

_RAW_LOAD = """
import ctypes, sys, llama_cpp
@llama_cpp.llama_log_callback
def quiet(level, text, data):
    return None
llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_default_params()
model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), params)
print("loaded" if model else "refused")
"""


@pytest.mark.parametrize("name", ABORTS_LLAMA_CPP)
def test_llama_cpp_alone_aborts_where_gptcli_refuses(tiny_model, hostile_dir, name):
    path = write_hostile(name, tiny_model, hostile_dir)
    raw = subprocess.run(
        [sys.executable, "-c", _RAW_LOAD, str(path)],
        capture_output=True,
        env=clean_env(GGML_NO_BACKTRACE="1"),
        timeout=60,
    )
    # gptcli's refusal of the same file is a row of the matrix above.
    assert raw.returncode < 0, "llama.cpp no longer aborts here: the check may be relaxed"


def test_unmutated_tiny_model_passes_the_check_and_runs(gptcli, tiny_model):
    # The round trip in support/hostile.py must not itself damage a file.
    from support.hostile import parse

    rebuilt = tiny_model.parent / "rebuilt.gguf"
    rebuilt.write_bytes(parse(tiny_model).to_bytes())
    assert rebuilt.read_bytes() == tiny_model.read_bytes()
    r = gptcli("generate", "-m", str(rebuilt), "--raw", "-n", "2", "-t", "0", "hi")
    assert r.returncode == 0, r.stderr


def test_directory_as_model_is_refused(gptcli, tmp_path):
    assert_refused(gptcli("generate", "-m", str(tmp_path), "hi"), "directory")


def test_unreadable_model_is_refused(gptcli, tiny_model, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    locked = tmp_path / "locked.gguf"
    locked.write_bytes(tiny_model.read_bytes())
    locked.chmod(0)
    assert_refused(gptcli("generate", "-m", str(locked), "hi"), "permission")


def _sparse_model(path, size: int):
    """A valid GGUF whose one F32 tensor fills a sparse file of `size` bytes."""
    kvs = enc_string("general.architecture") + struct.pack("<I", T_STRING) + enc_string("llama")
    kvs += enc_string("general.alignment") + struct.pack("<II", T_UINT32, 32)
    head = struct.pack("<4sIQQ", b"GGUF", 3, 1, 2) + kvs
    n = (size - len(head) - 200) // 4 // 32 * 32
    info = enc_string("token_embd.weight") + struct.pack("<IQIQ", 1, n, 0, 0)
    body = head + info
    body += b"\0" * (-len(body) % 32)
    with open(path, "wb") as f:
        f.write(body)
        f.truncate(len(body) + n * 4)  # a hole: no disk space used
    return path


@pytest.mark.skipif(meminfo() is None, reason="needs /proc/meminfo")
def test_model_larger_than_memory_is_refused_naming_both_sizes(gptcli, tmp_path):
    info = meminfo()
    size = info["MemAvailable"] + info.get("SwapFree", 0) + (16 << 30)
    path = _sparse_model(tmp_path / "huge.gguf", size)
    r = gptcli("generate", "-m", str(path), "--raw", "hi")
    assert_refused(r, "more than the memory available")
    assert "GiB" in r.stderr and "free RAM" in r.stderr


def test_memory_check_reads_meminfo(tmp_path):
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal: 8000 kB\nMemAvailable: 1000 kB\nSwapFree: 500 kB\n")
    check_model_fits(tmp_path / "m.gguf", 1_500 * 1024, fake)  # fits exactly
    with pytest.raises(GptcliError, match=r"1\.5 MiB.*1000\.0 KiB free RAM \+ 500\.0 KiB"):
        check_model_fits(tmp_path / "m.gguf", 1_500 * 1024 + 1, fake)


def test_array_element_type_recorded_for_callers(tiny_model):
    from gptcli.model.gguf_check import read_header

    header = read_header(tiny_model)
    assert header.types["tokenizer.ggml.tokens"] == (T_ARRAY, T_STRING)
    assert header.types["general.architecture"] == (T_STRING, None)


# -- the first load, in a child process ------------------------------------------------


def _load_engine(path):
    from gptcli.llama.load import load_engine

    return load_engine(str(path), 64, 1, 0, False)


@pytest.fixture
def load_cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(folder))
    monkeypatch.delenv("GPTCLI_NO_LOAD_CHECK", raising=False)
    return folder


def test_a_crash_in_the_first_load_is_one_line(gptcli, tiny_model, tmp_path, load_cache):
    # No file known today passes the header check and still aborts llama.cpp (each one
    # found was added to the check), so the child is handed a real one that does:
    # llama.cpp's own loader on duplicate_token.gguf dies by SIGABRT.
    from gptcli.llama import loadcheck

    aborts = write_hostile("duplicate_token", tiny_model, tmp_path)
    child = [sys.executable, "-c", _RAW_LOAD, str(aborts)]
    mp = pytest.MonkeyPatch()
    mp.setattr(loadcheck, "child_command", lambda path, ngl, verbose=False: child)
    try:
        with pytest.raises(GptcliError) as e:
            loadcheck.check_first_load(tiny_model)
    finally:
        mp.undo()
    message = e.value.message
    assert e.value.exit_code == 1 and "\n" not in message
    assert f"llama.cpp crashed loading {tiny_model} (SIGABRT" in message
    assert_says_what_is_known(message)
    assert not loadcheck.is_known(tiny_model)  # a crash is never remembered


def assert_says_what_is_known(message: str) -> None:
    # The header passed gptcli's check: the cause is not known, so no guess about the file.
    assert "damaged" not in message and "passed gptcli's header check" in message
    assert "--verbose shows llama.cpp's own log" in message
    assert "GPTCLI_NO_LOAD_CHECK=1 skips this check" in message


_SEGFAULT = "import os, signal, sys; sys.stderr.write('llama_model_loader: loading\\n'); "
_SEGFAULT += "sys.stderr.flush(); os.kill(os.getpid(), signal.SIGSEGV)"


def test_a_segfault_in_the_first_load_names_the_signal_and_the_way_out(
    tiny_model, load_cache, capfd
):
    # A child that dies as the CUDA build's loads did (docs/gpu.md): SIGSEGV, no assertion.
    from gptcli.llama import loadcheck

    calls = []

    def child(path, ngl, verbose=False):
        calls.append(verbose)
        return [sys.executable, "-c", _SEGFAULT]

    mp = pytest.MonkeyPatch()
    mp.setattr(loadcheck, "child_command", child)
    try:
        with pytest.raises(GptcliError) as quiet:
            loadcheck.check_first_load(tiny_model, 0)
        assert "llama_model_loader" not in capfd.readouterr().err  # captured, not shown
        with pytest.raises(GptcliError) as loud:
            loadcheck.check_first_load(tiny_model, 0, verbose=True)
        # --verbose: the child's stderr (llama.cpp's log) reaches ours as it is written
        assert "llama_model_loader: loading" in capfd.readouterr().err
    finally:
        mp.undo()
    assert calls == [False, True]
    for e in (quiet.value, loud.value):
        assert e.message.startswith(f"llama.cpp crashed loading {tiny_model} (SIGSEGV)")
        assert_says_what_is_known(e.message)
    assert loadcheck.child_command(tiny_model, 0, True)[-2:] == ["0", "--verbose"]


def test_a_clean_first_load_is_remembered(tiny_model_factory, load_cache):
    import time

    from gptcli.llama import loadcheck

    path = tiny_model_factory("remembered", seed=3)
    assert not loadcheck.is_known(path)
    t0 = time.perf_counter()
    _load_engine(path).close()
    first = time.perf_counter() - t0
    assert loadcheck.is_known(path)
    entries = __import__("json").loads((load_cache / loadcheck.CACHE_NAME).read_text())
    assert entries == [loadcheck.identity(path)]
    # The second load starts no child: make starting one fail loudly.
    mp = pytest.MonkeyPatch()
    mp.setattr(loadcheck, "child_command", lambda path, ngl, verbose=False: ["false-no-such"])
    try:
        t0 = time.perf_counter()
        _load_engine(path).close()
        second = time.perf_counter() - t0
    finally:
        mp.undo()
    print(f"first load with the check {first:.3f} s, later loads {second:.3f} s")


def test_a_changed_file_is_checked_again(tiny_model_factory, load_cache):
    import os

    from gptcli.llama import loadcheck

    path = tiny_model_factory("changed", seed=4)
    loadcheck.check_first_load(path)
    assert loadcheck.is_known(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not loadcheck.is_known(path)
    loadcheck.check_first_load(path)
    assert loadcheck.is_known(path)

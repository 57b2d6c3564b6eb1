"""llama.cpp's runtime as gptcli meets it: its own log with --verbose, libllama loaded
before numpy in every process that loads a model (the order a CUDA build needed, see
docs/gpu.md), and the devices `doctor` reports as llama.cpp's registry sees them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import clean_env

LLAMA_LOG = ("llama_model_loader:", "print_info:")

# Records, in order, the first import of numpy, gguf and llama_cpp and the dlopen of
# libllama (CPython audit events), then runs what follows `--` as `python -m`.
_ORDER = """
import runpy, sys
seen = []
def hook(event, args):
    if event == "import" and args[0] in ("numpy", "gguf", "llama_cpp") and args[0] not in seen:
        seen.append(args[0])
    elif event == "ctypes.dlopen" and "libllama" in str(args[0]) and "libllama" not in seen:
        seen.append("libllama")
sys.addaudithook(hook)
module, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    sys.stderr.write("ORDER " + " ".join(seen) + "\\n")
"""


def _order(module: str, *args: str, env=None) -> tuple[int, list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _ORDER, module, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env or clean_env(),
        timeout=120,
    )
    line = [x for x in proc.stderr.splitlines() if x.startswith("ORDER")][-1]
    return proc.returncode, line.split()[1:], proc.stderr


def test_verbose_shows_llama_cpp_log_on_stderr_and_only_the_text_on_stdout(
    gptcli, tiny_model, tmp_path
):
    args = ("generate", "-m", str(tiny_model), "--raw", "-t", "0", "-n", "6", "--threads", "1")
    quiet = gptcli(*args, "Hello")
    assert quiet.returncode == 0, quiet.stderr
    assert not any(marker in quiet.stderr for marker in LLAMA_LOG), quiet.stderr
    # A fresh cache: the first-load check runs too, and its child logs with --verbose.
    env = clean_env(GPTCLI_CACHE_DIR=str(tmp_path / "cache"))
    loud = gptcli(*args, "--verbose", "Hello", env=env)
    assert loud.returncode == 0, loud.stderr
    assert "Traceback" not in loud.stderr
    for marker in LLAMA_LOG:  # from the test load's child, then from the load itself
        assert loud.stderr.count(marker) >= 2, marker
    assert loud.stdout == quiet.stdout and loud.stdout.strip()


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "-m", "TINY", "--threads", "1", "-n", "1", "--raw", "Hi"],
        ["lens", "-m", "TINY", "--threads", "1", "Hi"],
        ["tokenize", "-m", "TINY", "Hi"],
        ["embed", "neighbors", "cat"],
        ["doctor"],
    ],
)
def test_commands_that_load_a_model_load_libllama_before_numpy(args, tiny_model):
    # Without gptcli/llama/libllama.py the CLI imports numpy first (llama.engine, gguf_check).
    args = [str(tiny_model) if a == "TINY" else a for a in args]
    rc, order, err = _order("gptcli", *args)
    assert rc == 0, err
    assert "libllama" in order and "numpy" in order, order
    assert order.index("libllama") < order.index("numpy"), order
    if "gguf" in order:
        assert order.index("libllama") < order.index("gguf"), order


def test_the_first_load_check_child_loads_libllama_before_numpy(tiny_model):
    rc, order, err = _order("gptcli.llama.loadcheck", str(tiny_model), "0")
    assert rc == 0, err
    assert order.index("libllama") < order.index("numpy"), order


def test_a_command_sent_to_a_server_does_not_load_llama_cpp():
    rc, order, err = _order("gptcli", "generate", "--server", "http://127.0.0.1:9", "Hi")
    assert rc == 1 and "cannot reach the server" in err, err
    assert "llama_cpp" not in order and "libllama" not in order, order


def _cpu_model_name() -> str | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def test_doctor_shows_the_devices_and_the_layers_it_would_offload(gptcli, tiny_model, smollm2):
    from gptcli.llama import engine
    from gptcli.llama.resources import human

    devices = engine.devices()
    cpu = [d for d in devices if d.kind == "cpu"]
    assert len(cpu) == 1 and cpu[0].backend == "CPU" and cpu[0].name == "CPU"
    # Independent of llama.cpp: what the kernel says about RAM and the processor.
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert cpu[0].total == ram
    if _cpu_model_name():
        assert cpu[0].description == _cpu_model_name()
    offload = engine.supports_gpu_offload()
    assert offload == any(d.kind in ("gpu", "igpu") for d in devices)

    r = gptcli("doctor")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    device_lines = [x for x in lines if x.startswith("device ")]
    assert len(device_lines) == len(devices)
    cpu_line = next(x for x in device_lines if x.split()[1] == "CPU")
    assert f"{human(ram)} RAM" in cpu_line and "(CPU backend, cpu)" in cpu_line
    assert cpu[0].description in cpu_line
    layers = next(x for x in lines if x.startswith("gpu layers"))
    # SmolLM2-135M has 30 layers (FACTS); the tiny test model 2 (tests/support/tinymodel.py)
    if offload:
        assert "all 30 layers of SmolLM2-135M-Instruct.Q4_1.gguf" in layers
    else:
        assert "0 of 30 layers of SmolLM2-135M-Instruct.Q4_1.gguf" in layers
        assert "no GPU backend" in layers and "gpu offload       no (CPU build)" in r.stdout
        assert [x.split()[1] for x in device_lines] == ["CPU"]
    r = gptcli("doctor", "-m", str(tiny_model))
    layers = next(x for x in r.stdout.splitlines() if x.startswith("gpu layers"))
    assert ("all 2 layers" if offload else "0 of 2 layers") in layers, layers


def test_a_command_imports_llama_cpps_bindings_not_its_high_level_package(tiny_model):
    # llama_cpp's __init__ also imports its Llama class, chat formats and jinja2 (~80 ms
    # of every start); gptcli needs only the ctypes bindings. The import log shows which.
    env = clean_env()
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    args = ["generate", "--raw", "-n", "2", "-m", str(tiny_model), "Hi"]
    r = subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "llama_cpp.llama_cpp" in imported and "llama_cpp._internals" in imported
    assert not imported & {"llama_cpp.llama", "llama_cpp.llama_chat_format", "jinja2"}


def test_the_rest_of_llama_cpp_is_there_when_asked_for(tiny_model):
    # After gptcli loaded the bindings alone, code in the same process that wants the
    # whole package (the tests' llama-cpp-python oracles) still gets it.
    script = (
        "from gptcli.llama.engine import Engine, EngineOptions\n"
        f"e = Engine({str(tiny_model)!r}, EngineOptions(n_ctx=64, n_threads=1))\n"
        "import sys; assert 'llama_cpp.llama' not in sys.modules\n"
        "from llama_cpp import Llama\n"
        "import llama_cpp\n"
        "print(llama_cpp.__version__, Llama.__name__, llama_cpp.llama_cpp.llama_decode.__name__)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=clean_env(),
        stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    from importlib import metadata

    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [metadata.version("llama-cpp-python"), "Llama", "llama_decode"]

"""Pull, list and rm against a hub served on 127.0.0.1, through the real huggingface_hub
client (HF_ENDPOINT), into a fresh HF cache per test (HF_HOME)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clean_env, restore_sigint, run_gptcli
from support.hubserver import GOOD_TOKEN, Fault, start_hub

from gptcli.model import refs as hub_refs
from gptcli.model.refs import HubRef, RemoteFile, parse_ref

SMOL = "test-org/SmolLM2-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = "test-org/Tiny-GGUF"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def split_parts(tmp_path_factory, tokenizer) -> list[Path]:
    """A tiny model written as two GGUF parts (`-00001-of-00002`)."""
    import gguf
    from support.tinymodel import write_tiny_model

    class SplitWriter(gguf.GGUFWriter):
        def __init__(self, path, arch, **kwargs):
            super().__init__(path, arch, split_max_tensors=12, **kwargs)

    # write_tiny_model builds its own GGUFWriter: swap in a splitting one while it runs.
    folder = tmp_path_factory.mktemp("split")
    original, gguf.GGUFWriter = gguf.GGUFWriter, SplitWriter
    try:
        write_tiny_model(folder / "Tiny-Q6_K.gguf", tokenizer, seed=3)
    finally:
        gguf.GGUFWriter = original
    return sorted(folder.glob("*.gguf"))


@pytest.fixture(scope="module")
def hub(smollm2, tiny_model_factory, split_parts, tmp_path_factory):
    q4 = tiny_model_factory("hub-q4", seed=1)
    q8 = tiny_model_factory("hub-q8", seed=2)
    junk = tmp_path_factory.mktemp("junk") / "README.md"
    junk.write_text("# not a model\n")

    server = start_hub()
    server.repo(SMOL).add(SMOL_FILE, smollm2)
    tiny = server.repo(TINY)
    tiny.add("Tiny-Q8_0.gguf", q8)
    tiny.add("Tiny-Q4_K_M.gguf", q4)
    for part in split_parts:
        tiny.add(part.name, part)
    tiny.add("README.md", junk)
    server.repo("test-org/Gated-GGUF", gated=True).add("Gated-Q4_K_M.gguf", q4)
    nogguf = server.repo("test-org/NoGGUF")
    nogguf.add("README.md", junk)
    nogguf.add("model.safetensors", junk)
    server.repo("test-org/Evil-GGUF").add("../../evil-Q4_K_M.gguf", q4)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_leftover_faults(request):
    yield
    if "hub" in request.fixturenames:
        server = request.getfixturevalue("hub")
        for fault in server.faults.values():
            fault.release.set()
        server.faults.clear()


def hub_env(server, home: Path, **extra: str) -> dict[str, str]:
    settings = {"HF_HOME": str(home), "HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0"}
    env = clean_env(**{**settings, **extra})
    for key in ("HF_TOKEN", "HF_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_XET"):
        if key not in extra:
            env.pop(key, None)
    return env


def dead_endpoint() -> str:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def repo_dir(home: Path, repo_id: str) -> Path:
    return home / "hub" / ("models--" + repo_id.replace("/", "--"))


def cache_files(home: Path) -> list[str]:
    """Every file and link under the cache, relative: what a test may compare."""
    root = home / "hub"
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("gptcli: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def smol_home(hub, tmp_path_factory):
    """One cache where `generate -m owner/repo:Q4_1` pulled SmolLM2 first."""
    home = tmp_path_factory.mktemp("hf-smol")
    run = run_gptcli(
        "generate",
        "-m",
        f"{SMOL}:Q4_1",
        "--raw",
        "-t",
        "0",
        "-n",
        "3",
        "The capital of France is",
        env=hub_env(hub, home),
    )
    return home, run


# --------------------------------------------------------------------------- references


def test_references_parse_like_llama_cpp_and_ollama():
    assert parse_ref("bartowski/Llama-3.2-1B-Instruct-GGUF:q4_k_m") == HubRef(
        "bartowski/Llama-3.2-1B-Instruct-GGUF", quant="Q4_K_M"
    )
    assert parse_ref("hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q8_0").quant == "Q8_0"
    assert parse_ref("o/r/sub/model-Q4_0.gguf") == HubRef("o/r", filename="sub/model-Q4_0.gguf")
    assert parse_ref("o/r") == HubRef("o/r")


@pytest.mark.parametrize(
    "text",
    ["o/r/../../etc/passwd.gguf", "o/r/./x.gguf", "o/r:NOTAQUANT", "o/r/readme.md", "../r", "o/"],
)
def test_bad_references_are_usage_errors(text):
    with pytest.raises(hub_refs.UsageError):
        parse_ref(text)


def test_quant_and_split_names_are_read_from_file_names():
    assert hub_refs.quant_of("qwen2.5-0.5b-instruct-q4_k_m.gguf") == "Q4_K_M"
    assert hub_refs.quant_of("Llama-3.2-1B-Instruct-IQ4_XS.gguf") == "IQ4_XS"
    assert hub_refs.quant_of("SmolLM2-135M-Instruct.Q4_1.gguf") == "Q4_1"
    assert hub_refs.quant_of("Q4_K_M/Big-Q4_K_M-00002-of-00003.gguf") == "Q4_K_M"
    assert hub_refs.quant_of("model.gguf") is None
    assert hub_refs.split_of("Big-Q8_0-00002-of-00003.gguf") == (2, 3)


def test_default_choice_is_q4_k_m_then_nearest_and_splits_group():
    files = [
        RemoteFile("m-Q8_0.gguf", 8),
        RemoteFile("m-Q5_K_M.gguf", 5),
        RemoteFile("mmproj-m-f16.gguf", 1),
        RemoteFile("m-Q4_K_M-00001-of-00002.gguf", 2),
        RemoteFile("m-Q4_K_M-00002-of-00002.gguf", 2),
        RemoteFile("m-Q2_K-00001-of-00002.gguf", 1),  # a part is missing: not loadable
    ]
    variants = hub_refs.group_variants(files)
    assert [v.quant for v in variants] == ["Q4_K_M", "Q5_K_M", "Q8_0"]
    chosen, by_default = hub_refs.choose(variants, HubRef("o/r"))
    assert by_default and chosen.size == 4 and len(chosen.parts) == 2
    without = hub_refs.group_variants(files[:3])
    assert hub_refs.choose(without, HubRef("o/r"))[0].quant == "Q5_K_M"


def test_catalogue_is_valid_and_ships_with_the_package():
    from gptcli.model import catalogue

    entries = catalogue.entries()
    assert {"smollm2", "qwen2.5-0.5b", "llama3.2-1b", "gemma3-270m", "phi-3.5-mini"} <= set(entries)
    assert entries["smollm2"].embedded
    assert entries["qwen2.5-0.5b"].ref == HubRef("Qwen/Qwen2.5-0.5B-Instruct-GGUF", quant="Q4_K_M")
    # models/catalogue.json (where people look) is the packaged file itself.
    top = Path(__file__).parents[1] / "models" / "catalogue.json"
    packaged = Path(__file__).parents[1] / "gptcli" / "model" / "catalogue.json"
    assert top.resolve() == packaged.resolve()


def test_smollm2_name_is_the_embedded_model_without_network(smollm2, hub, tmp_path):
    env = hub_env(hub, tmp_path, HF_ENDPOINT=dead_endpoint())
    run = run_gptcli("pull", "smollm2", env=env)
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()) == smollm2
    code = "from gptcli.model import resolve as models; print(models.resolve('smollm2').path)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert Path(proc.stdout.strip()) == smollm2, proc.stderr
    assert cache_files(tmp_path) == []


# --------------------------------------------------------------------------- pull


def test_generate_pulls_a_hub_reference_then_says_paris(smol_home):
    home, run = smol_home
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(" Paris"), run.stdout
    assert "not in the cache: pulling it" in run.stderr
    assert "sha256 and GGUF header verified" in run.stderr


def test_pulled_file_sits_verified_in_the_shared_hf_cache(smol_home, hub, smollm2):
    from huggingface_hub import try_to_load_from_cache

    home, _ = smol_home
    served = hub.repos[SMOL].files[SMOL_FILE]
    # huggingface_hub itself finds the file where gptcli put it.
    found = try_to_load_from_cache(SMOL, SMOL_FILE, cache_dir=home / "hub")
    assert found is not None
    found = Path(found)
    assert found.parent.name == hub.repos[SMOL].commit
    assert found.resolve() == repo_dir(home, SMOL) / "blobs" / served.sha256
    assert hashlib.sha256(found.read_bytes()).hexdigest() == served.sha256
    assert (repo_dir(home, SMOL) / "refs" / "main").read_text() == hub.repos[SMOL].commit
    assert not [f for f in cache_files(home) if f.endswith(".incomplete")]


def test_pull_again_checks_the_hub_and_downloads_nothing(smol_home, hub):
    home, _ = smol_home
    before = len(hub.requests("GET", "/resolve/"))
    run = run_gptcli("pull", f"{SMOL}:Q4_1", env=hub_env(hub, home))
    assert run.returncode == 0, run.stderr
    assert "already up to date" in run.stderr
    assert len(hub.requests("GET", "/resolve/")) == before
    assert run.stdout.strip().endswith(SMOL_FILE)


def test_list_shows_pulled_and_embedded_models_from_their_headers(smol_home, hub):
    home, _ = smol_home
    run = run_gptcli("list", env=hub_env(hub, home))
    assert run.returncode == 0, run.stderr
    header, *rows = run.stdout.splitlines()
    assert header.split("\t") == ["name", "arch", "params", "quant", "size", "path"]
    pulled = [r.split("\t") for r in rows if r.startswith(f"{SMOL}:Q4_1")]
    assert len(pulled) == 1
    name, arch, params, quant, size, path = pulled[0]
    assert (arch, params, quant, size) == ("llama", "134.5M", "Q4_1", "98.4 MB")
    assert path.startswith(str(home))
    assert any(r.startswith("smollm2 (embedded default)") for r in rows)


def test_cached_copy_serves_when_offline_or_unreachable(smol_home, hub):
    home, _ = smol_home
    ref = f"{SMOL}:Q4_1"
    down = hub_env(hub, home, HF_ENDPOINT=dead_endpoint())
    run = run_gptcli("pull", ref, env=down)
    assert run.returncode == 0, run.stderr
    assert "hub unreachable" in run.stderr and run.stdout.strip().endswith(SMOL_FILE)
    offline = hub_env(hub, home, HF_ENDPOINT=dead_endpoint(), HF_HUB_OFFLINE="1")
    code = f"from gptcli.model import resolve as models; print(models.resolve({ref!r}).path)"
    proc = subprocess.run([sys.executable, "-c", code], env=offline, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(SMOL_FILE)


def test_default_quant_is_q4_k_m_and_said(hub, tmp_path):
    run = run_gptcli("pull", TINY, env=hub_env(hub, tmp_path))
    assert run.returncode == 0, run.stderr
    assert "picked Q4_K_M" in run.stderr
    assert run.stdout.strip().endswith("Tiny-Q4_K_M.gguf")


def test_pull_list_shows_gguf_files_with_quant_and_size(hub, tmp_path):
    run = run_gptcli("pull", TINY, "--list", env=hub_env(hub, tmp_path))
    assert run.returncode == 0, run.stderr
    rows = [line.split("\t") for line in run.stdout.splitlines()[1:]]
    assert [(r[1], r[3]) for r in rows] == [("Q4_K_M", "default"), ("Q6_K", ""), ("Q8_0", "")]
    assert rows[1][0] == "Tiny-Q6_K-00001-of-00002.gguf (+1 parts)"
    assert all(r[2].endswith("MB") for r in rows)
    assert cache_files(tmp_path) == []  # --list downloads nothing
    assert f"gptcli compare {TINY}:Q4_K_M {TINY}:Q6_K FILE" in run.stderr  # how to choose


def test_split_model_pulls_every_part_and_loads(hub, tmp_path, split_parts):
    env = hub_env(hub, tmp_path)
    run = run_gptcli("pull", f"{TINY}:Q6_K", env=env)
    assert run.returncode == 0, run.stderr
    first = Path(run.stdout.strip())
    assert first.name == "Tiny-Q6_K-00001-of-00002.gguf"
    assert (first.parent / "Tiny-Q6_K-00002-of-00002.gguf").is_file()
    listed = run_gptcli("list", env=env)
    row = next(r for r in listed.stdout.splitlines() if r.startswith(f"{TINY}:Q6_K"))
    size = sum(p.stat().st_size for p in split_parts)
    assert row.split("\t")[4] == hub_refs.human_size(size)
    gen = run_gptcli("generate", "-m", f"{TINY}:Q6_K", "--raw", "-n", "2", "Hi", env=env)
    assert gen.returncode == 0, gen.stderr
    assert "pulling" not in gen.stderr  # found in the cache


def test_pull_resumes_after_the_connection_is_cut(hub, tmp_path):
    hub.faults[(SMOL, SMOL_FILE)] = Fault("cut", cut_at=25 << 20)
    run = run_gptcli("pull", f"{SMOL}:Q4_1", env=hub_env(hub, tmp_path))
    assert run.returncode == 0, run.stderr
    gets = [r for r in hub.requests("GET", "/resolve/") if SMOL_FILE in r["path"]][-2:]
    assert gets[0]["range"] is None
    start = int(gets[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 25 << 20  # resumed, not restarted
    served = hub.repos[SMOL].files[SMOL_FILE]
    assert hashlib.sha256(Path(run.stdout.strip()).read_bytes()).hexdigest() == served.sha256


def test_interrupted_pull_resumes_in_the_next_run(hub, tmp_path):
    fault = hub.faults[(SMOL, SMOL_FILE)] = Fault("stall", cut_at=30 << 20)
    served = hub.repos[SMOL].files[SMOL_FILE]
    partial = repo_dir(tmp_path, SMOL) / "blobs" / f"{served.sha256}.incomplete"
    env = hub_env(hub, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "pull", f"{SMOL}:Q4_1"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=restore_sigint,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if partial.exists() and partial.stat().st_size >= 20 << 20:
                break
            time.sleep(0.05)
        assert partial.exists(), "the download never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        fault.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert b"run the same command again to resume" in err
    kept = partial.stat().st_size
    assert kept >= 20 << 20
    assert not (repo_dir(tmp_path, SMOL) / "blobs" / served.sha256).exists()
    assert not (repo_dir(tmp_path, SMOL) / "snapshots").exists()

    del hub.faults[(SMOL, SMOL_FILE)]
    run = run_gptcli("pull", f"{SMOL}:Q4_1", env=env)
    assert run.returncode == 0, run.stderr
    assert hub.requests("GET", SMOL_FILE)[-1]["range"] == f"bytes={kept}-"
    assert not partial.exists()


# --------------------------------------------------------------------------- faults


def test_checksum_mismatch_fails_and_leaves_nothing_in_the_cache(hub, tmp_path):
    hub.faults[(TINY, "Tiny-Q8_0.gguf")] = Fault("corrupt")
    run = run_gptcli("pull", f"{TINY}:Q8_0", env=hub_env(hub, tmp_path))
    assert run.returncode == 1
    line = one_error_line(run.stderr)
    assert "checksum mismatch" in line and hub.repos[TINY].files["Tiny-Q8_0.gguf"].sha256 in line
    assert run.stdout == ""
    assert not [f for f in cache_files(tmp_path) if "/blobs/" in f or "/snapshots/" in f]


@pytest.mark.parametrize(
    "ref, message",
    [
        ("test-org/Missing-GGUF", "no such model repo on the hub: test-org/Missing-GGUF"),
        (f"{TINY}:Q2_K", "no Q2_K file in test-org/Tiny-GGUF; available: Q4_K_M, Q6_K, Q8_0"),
        ("test-org/NoGGUF", "test-org/NoGGUF has no GGUF model files"),
        (f"{TINY}/Nope-Q4_0.gguf", "no file Nope-Q4_0.gguf in test-org/Tiny-GGUF"),
        ("test-org/Evil-GGUF", "the hub lists a file name that leaves the repo"),
    ],
)
def test_hub_side_problems_are_one_line_exit_1(hub, tmp_path, ref, message):
    run = run_gptcli("pull", ref, env=hub_env(hub, tmp_path))
    assert run.returncode == 1
    assert message in one_error_line(run.stderr)
    assert not [f for f in cache_files(tmp_path) if "/blobs/" in f]
    assert not list(tmp_path.parent.glob("evil*"))


def test_a_file_name_leaving_the_cache_is_refused(hub, tmp_path):
    run = run_gptcli("pull", f"{TINY}/../../../escape-Q4_0.gguf", env=hub_env(hub, tmp_path))
    assert run.returncode == 2
    assert "unsafe file name" in one_error_line(run.stderr)
    assert cache_files(tmp_path) == []


def test_gated_repo_needs_a_token(hub, tmp_path):
    ref = "test-org/Gated-GGUF:Q4_K_M"
    run = run_gptcli("pull", ref, env=hub_env(hub, tmp_path))
    assert run.returncode == 1
    line = one_error_line(run.stderr)
    assert "gated" in line and "licence" in line and "HF_TOKEN" in line
    ok = run_gptcli("pull", ref, env=hub_env(hub, tmp_path, HF_TOKEN=GOOD_TOKEN))
    assert ok.returncode == 0, ok.stderr
    assert hub.requests("GET", "Gated-Q4_K_M.gguf")[-1]["auth"] == f"Bearer {GOOD_TOKEN}"


def test_offline_or_unreachable_without_a_cached_copy_fails_clearly(hub, tmp_path):
    offline = hub_env(hub, tmp_path, HF_HUB_OFFLINE="1")
    run = run_gptcli("generate", "-m", f"{TINY}:Q8_0", "hi", env=offline)
    assert run.returncode == 1
    assert "not in the cache and HF_HUB_OFFLINE is set" in one_error_line(run.stderr)
    down = hub_env(hub, tmp_path, HF_ENDPOINT=dead_endpoint())
    run = run_gptcli("pull", f"{TINY}:Q8_0", env=down)
    assert run.returncode == 1
    assert "cannot reach the hub" in one_error_line(run.stderr)
    assert cache_files(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_one_line_and_no_file(hub, tmp_path):
    sha = hub.repos[TINY].files["Tiny-Q8_0.gguf"].sha256
    blobs = repo_dir(tmp_path, TINY) / "blobs"
    blobs.mkdir(parents=True)
    # Every write to /dev/full fails with ENOSPC: a disk that is full right now.
    (blobs / f"{sha}.incomplete").symlink_to("/dev/full")
    run = run_gptcli("pull", f"{TINY}:Q8_0", env=hub_env(hub, tmp_path))
    assert run.returncode == 1
    assert "disk full" in one_error_line(run.stderr)
    assert not (blobs / sha).exists()
    assert not (repo_dir(tmp_path, TINY) / "snapshots").exists()


# --------------------------------------------------------------------------- list and rm


def test_rm_frees_the_space_and_touches_nothing_else(hub, tmp_path, smollm2):
    env = hub_env(hub, tmp_path)
    assert run_gptcli("pull", f"{TINY}:Q8_0", env=env).returncode == 0
    assert run_gptcli("pull", f"{TINY}:Q4_K_M", env=env).returncode == 0
    size = hub.repos[TINY].files["Tiny-Q8_0.gguf"].size
    run = run_gptcli("rm", f"{TINY}:Q8_0", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"removed {TINY}:Q8_0: {hub_refs.human_size(size)} freed\n"
    files = cache_files(tmp_path)
    assert not [
        f for f in files if "Q8_0" in f or hub.repos[TINY].files["Tiny-Q8_0.gguf"].sha256 in f
    ]
    assert [f for f in files if f.endswith("Tiny-Q4_K_M.gguf")]

    again = run_gptcli("rm", f"{TINY}:Q8_0", env=env)
    assert again.returncode == 1 and "not in the cache" in one_error_line(again.stderr)
    embedded = run_gptcli("rm", "smollm2", env=env)
    assert embedded.returncode == 1 and "embedded default" in one_error_line(embedded.stderr)
    assert smollm2.is_file()
    outside = tmp_path / "mine-Q4_0.gguf"
    shutil.copyfile(hub.repos[TINY].files["Tiny-Q8_0.gguf"].source, outside)
    refused = run_gptcli("rm", str(outside), env=env)
    assert refused.returncode == 1 and "not in the hub cache" in one_error_line(refused.stderr)
    assert outside.is_file()

    last = run_gptcli("rm", TINY, env=env)
    assert last.returncode == 0, last.stderr
    assert not repo_dir(tmp_path, TINY).exists()


def test_list_available_shows_the_catalogue(hub, tmp_path):
    run = run_gptcli("list", "--available", env=hub_env(hub, tmp_path))
    assert run.returncode == 0, run.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in run.stdout.splitlines()[1:]}
    assert rows["smollm2"][2] == "embedded"
    assert rows["qwen2.5-0.5b"][1] == "Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"


# --------------------------------------------------------------------------- verification


def test_damaged_cached_copy_is_re_verified_and_downloaded_again(hub, tmp_path):
    ref, name = f"{TINY}:Q8_0", "Tiny-Q8_0.gguf"
    served = hub.repos[TINY].files[name]
    assert run_gptcli("pull", ref, env=hub_env(hub, tmp_path)).returncode == 0
    blob = repo_dir(tmp_path, TINY) / "blobs" / served.sha256
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the tensor data: only the hash can tell
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    before = len(hub.requests("GET", name))
    run = run_gptcli("pull", ref, env=hub_env(hub, tmp_path))
    assert run.returncode == 0, run.stderr
    assert f"the cached copy of {TINY}/{name} is damaged (checksum mismatch)" in run.stderr
    assert len(hub.requests("GET", name)) == before + 1  # fetched again, once
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == served.sha256
    # An intact cached copy is hashed too, and then not fetched.
    again = run_gptcli("pull", ref, env=hub_env(hub, tmp_path))
    assert again.returncode == 0 and "damaged" not in again.stderr
    assert len(hub.requests("GET", name)) == before + 1


def test_file_with_the_right_checksum_but_a_bad_header_is_refused(hub, tmp_path, tiny_model):
    # The hub's sha256 matches these bytes: only the GGUF header check can refuse them.
    bad = tmp_path / "served" / "Broken-Q4_K_M.gguf"
    bad.parent.mkdir()
    bad.write_bytes(tiny_model.read_bytes()[:4096])  # GGUF magic, header cut short
    hub.repo("test-org/Broken-GGUF").add(bad.name, bad)
    home = tmp_path / "home"
    run = run_gptcli("pull", "test-org/Broken-GGUF", env=hub_env(hub, home))
    assert run.returncode == 1
    line = one_error_line(run.stderr)
    assert f"test-org/Broken-GGUF/{bad.name} is not a valid GGUF file" in line, line
    assert run.stdout == ""
    assert not [f for f in cache_files(home) if "/blobs/" in f or "/snapshots/" in f]

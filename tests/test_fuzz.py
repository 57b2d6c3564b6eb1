"""Seeded random mutations of the tiny model's header and metadata, each loaded by
`gptcli generate` in its own subprocess (a crash must stay isolated): no mutant
may kill gptcli with a signal, hang, or end with anything but a clean load or a
one-line refusal.

The normal suite runs a small fixed set; `pytest --slow` runs the full 600.
"""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import clean_env
from support.hostile import T_FLOAT32, T_UINT32, parse, structure_fields

INTERESTING = [0, 1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 255, 256, 511, 512, 513, 4096]
INTERESTING += [2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63]
INTERESTING += [2**64 - 1, 2**64 - 2]


FLOAT_BITS = [struct.unpack("<I", struct.pack("<f", x))[0] for x in (0.0, -1.0, 1e38, 1e-38)]
FLOAT_BITS += [0x7FC00000, 0x7F800000, 0xFF800000]  # NaN, inf, -inf


def mutate(raw: bytes, fields, header_end: int, rng: random.Random) -> tuple[bytes, str]:
    """One mutant of `raw` and a description of what was done to it."""
    out = bytearray(raw)
    kinds = ["value"] * 3 + ["field"] * 2 + ["delta", "flip", "flip", "truncate", "splice"]
    kind = rng.choice(kinds)
    if kind in ("value", "field", "delta"):
        # "value": the hyperparameters and other scalar metadata llama.cpp acts on.
        pool = [f for f in fields if f[2].startswith("value of")] if kind == "value" else fields
        offset, width, label = rng.choice(pool)
        limit = 1 << (8 * width)
        (old,) = struct.unpack_from(f"<{'BHIQ'[(1, 2, 4, 8).index(width)]}", raw, offset)
        if kind == "delta":
            new = old + rng.choice([-2, -1, 1, 2, 16, -16])
        elif width == 4 and rng.random() < 0.3:
            new = rng.choice(FLOAT_BITS)
        else:
            new = rng.choice(INTERESTING + [rng.randrange(limit)])
        new %= limit
        out[offset : offset + width] = new.to_bytes(width, "little")
        return bytes(out), f"{label}: {old} -> {new}"
    if kind == "flip":
        # Mostly the structural first kilobyte, sometimes anywhere in the header.
        end = 1024 if rng.random() < 0.3 else header_end
        spots = [rng.randrange(end) for _ in range(rng.randint(1, 8))]
        for at in spots:
            out[at] ^= 1 << rng.randrange(8)
        return bytes(out), f"bits flipped at {sorted(spots)}"
    if kind == "truncate":
        at = rng.randrange(header_end) if rng.random() < 0.7 else rng.randrange(len(raw))
        return bytes(out[:at]), f"truncated at {at}"
    # splice: drop or duplicate a run of header bytes, shifting everything after it
    at, n = rng.randrange(24, header_end), rng.randint(1, 64)
    if rng.random() < 0.5:
        del out[at : at + n]
        return bytes(out), f"{n} bytes removed at {at}"
    out[at:at] = out[at : at + n]
    return bytes(out), f"{n} bytes duplicated at {at}"


# Hyperparameters llama.cpp reads for a llama model, present in the tiny model or not,
# and the values a hostile file might give them (not only random bytes).
HPARAM_FLOATS = ["rope.freq_base", "attention.layer_norm_rms_epsilon", "rope.scaling.factor"]
HPARAM_FLOATS += ["rope.freq_base_swa", "attention.scale", "logit_scale", "embedding_scale"]
HPARAM_FLOATS += ["rope.scaling.attn_factor", "residual_scale", "attn_logit_softcapping"]
HPARAM_FLOATS += ["final_logit_softcapping", "rope.scaling.yarn_log_multiplier"]
HPARAM_INTS = ["attention.head_count", "attention.head_count_kv", "rope.dimension_count"]
HPARAM_INTS += ["embedding_length", "feed_forward_length", "context_length", "block_count"]
HPARAM_INTS += ["attention.key_length", "attention.value_length", "expert_count", "vocab_size"]
HPARAM_INTS += [
    "expert_used_count",
    "attention.sliding_window",
    "rope.scaling.original_context_length",
]
FLOAT_VALUES = [0.0, -0.0, -1.0, 1e-45, 1e-30, 0.5, 2.0, 1e6, 1e38, -1e38]
FLOAT_VALUES += [float("nan"), float("inf"), float("-inf")]
INT_VALUES = [0, 1, 2, 3, 5, 7, 16, 63, 65, 128, 4096, 2**31 - 1, 2**31, 2**32 - 1]


def mutate_hparam(g, rng: random.Random) -> tuple[bytes, str]:
    """The tiny model with one hyperparameter set to an odd value, typed as llama.cpp
    expects it (added when the model lacks it)."""
    if rng.random() < 0.5:
        key, value = "llama." + rng.choice(HPARAM_FLOATS), rng.choice(FLOAT_VALUES)
        data = g.set(key, T_FLOAT32, struct.pack("<f", value)).to_bytes()
    else:
        key, value = "llama." + rng.choice(HPARAM_INTS), rng.choice(INT_VALUES)
        data = g.set(key, T_UINT32, struct.pack("<I", value)).to_bytes()
    return data, f"{key} = {value}"


@dataclass
class Outcome:
    description: str
    verdict: str  # "loaded", "refused", or what went wrong
    detail: str = ""


def run_mutant(data: bytes, description: str, folder: Path, index: int) -> Outcome:
    path = folder / f"mutant-{index}.gguf"
    path.write_bytes(data)
    cmd = [sys.executable, "-m", "gptcli", "generate", "-m", str(path)]
    cmd += ["--raw", "-n", "2", "-t", "0", "--ctx", "64", "--threads", "1", "hi"]
    # No gdb backtrace if ggml aborts: the signal is what we look for. Each mutant
    # pays the first-load check (a child process), as a new file would.
    env = clean_env(GGML_NO_BACKTRACE="1", GPTCLI_CACHE_DIR=str(folder / "cache"))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, stdin=subprocess.DEVNULL, env=env, timeout=60, text=True
        )
    except subprocess.TimeoutExpired:
        return Outcome(description, "hang")
    finally:
        path.unlink(missing_ok=True)
    err = proc.stderr.strip()
    if proc.returncode < 0:
        return Outcome(description, f"killed by signal {-proc.returncode}", err[-300:])
    if "Traceback" in err:
        return Outcome(description, "traceback", err[-300:])
    if proc.returncode == 0:
        if "nan" in proc.stdout.lower():  # a NaN shown as if it were a number
            return Outcome(description, "nan shown", proc.stdout[-300:])
        return Outcome(description, "loaded")
    one_line = len(err.splitlines()) == 1 and err.startswith("gptcli: error:")
    if proc.returncode == 1 and one_line and "non-finite logits" in err:
        return Outcome(description, "non-finite", err)  # caught at the sampler
    if proc.returncode == 1 and one_line and "crashed loading" in err:
        return Outcome(description, "crash caught", err)  # the child load died, not us
    if proc.returncode in (1, 2) and one_line:  # 2: a usage error the odd model provoked
        return Outcome(description, "refused", err)
    return Outcome(description, f"exit {proc.returncode}", err[-300:])


def fuzz(
    tiny_model: Path, seed: int, count: int, workers: int = 2, hparams: bool = False
) -> list[Outcome]:
    raw = Path(tiny_model).read_bytes()
    fields, header_end = structure_fields(raw)
    rng = random.Random(seed)
    if hparams:
        g = parse(tiny_model)
        mutants = [mutate_hparam(g, rng) for _ in range(count)]
    else:
        mutants = [mutate(raw, fields, header_end, rng) for _ in range(count)]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        jobs = [
            pool.submit(run_mutant, data, desc, Path(tmp), i)
            for i, (data, desc) in enumerate(mutants)
        ]
        return [job.result() for job in jobs]


# "crash caught" is not a failure of gptcli (one line, exit 1) but a hole in the header
# check: the test prints it so it can be added there.
ACCEPTED = ("loaded", "refused", "non-finite", "crash caught")


def summarise(outcomes: list[Outcome]) -> str:
    counts = Counter(o.verdict for o in outcomes)
    bad = [o for o in outcomes if o.verdict not in ACCEPTED]
    lines = [f"{len(outcomes)} mutants: {dict(counts)}"]
    lines += [f"  {o.verdict}: {o.description} | {o.detail}" for o in bad]
    return "\n".join(lines)


def check(outcomes: list[Outcome]) -> None:
    report = summarise(outcomes)
    print(report)
    assert all(o.verdict in ACCEPTED for o in outcomes), report
    # A fuzz run that never reaches llama.cpp, or never trips a check, tests little.
    verdicts = {o.verdict for o in outcomes}
    assert {"loaded", "refused"} <= verdicts, report


def test_mutated_headers_never_crash_gptcli(tiny_model):
    check(fuzz(tiny_model, seed=8, count=16))


def test_odd_hyperparameter_values_never_crash_gptcli(tiny_model):
    outcomes = fuzz(tiny_model, seed=15, count=12, hparams=True)
    check(outcomes)
    assert not [o for o in outcomes if o.verdict == "crash caught"], summarise(outcomes)


@pytest.mark.slow
def test_three_hundred_hyperparameter_mutants(tiny_model):
    outcomes = fuzz(tiny_model, seed=2027, count=300, hparams=True)
    check(outcomes)
    assert not [o for o in outcomes if o.verdict == "crash caught"], summarise(outcomes)


@pytest.mark.slow
def test_six_hundred_mutants_never_crash_gptcli(tiny_model):
    check(fuzz(tiny_model, seed=2026, count=600))

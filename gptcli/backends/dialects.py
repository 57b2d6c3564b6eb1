"""What each OpenAI-compatible server really sends, as data and small functions.

A new server quirk is one change here: a `Dialect` row, or a branch in the parsers.

- Two log-probability shapes, on either endpoint: the legacy completions one
  (`tokens`, `token_logprobs`, `top_logprobs` as {text: logprob} dicts; what
  llama-cpp-python's server sends) and the chat one (`content: [{id, token, bytes,
  logprob, top_logprobs: [...]}]`; llama-server sends it on both endpoints, and
  llama-server's native `/completion` sends it as `completion_probabilities`, with
  `prob`/`top_probs` instead when asked for `post_sampling_probs`).
- Floors: a probability of 0 comes as -3.4e38 (llama-server, the lowest float) or
  -9999 (vLLM): both are read as log 0.
- Caps on `top_logprobs`: vLLM and Ollama refuse more than 20 (HTTP 400), TGI 5.
- Numbers that cannot be (a log probability above 0, NaN, text, alternatives whose
  probabilities sum past 1) are dropped here and counted in `Entry.dropped`, so the
  caller says so once; they are never shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gptcli.limits import LOGPROB_ROUNDING, MAX_CANDIDATES, PROB_SUM_SLACK

NEG_INF = float("-inf")
VLLM_FLOOR = -9999.0
FLOAT_FLOOR = -1e30  # anything this low is llama-server's -FLT_MAX: probability 0


@dataclass(frozen=True)
class Dialect:
    name: str
    max_top_logprobs: int | None = None  # more is refused (HTTP 400): clamp with a notice
    native_completion: bool = False  # llama-server's /completion, /tokenize, /apply-template
    prompt_logprobs: str | None = "echo"  # "echo", "prompt_logprobs" (vLLM) or None
    token_ids: bool = False  # ids in its logprobs


GENERIC = Dialect("an OpenAI-compatible server")
LLAMA_SERVER = Dialect(
    "llama.cpp's llama-server", native_completion=True, prompt_logprobs=None, token_ids=True
)
LLAMA_CPP_PYTHON = Dialect("llama-cpp-python's server")
VLLM = Dialect("vLLM", max_top_logprobs=20, prompt_logprobs="prompt_logprobs")
OLLAMA = Dialect("Ollama", max_top_logprobs=20, prompt_logprobs=None)
TGI = Dialect("Text Generation Inference", max_top_logprobs=5, prompt_logprobs=None)
SGLANG = Dialect("SGLang")

# `owned_by` in /v1/models, as each server fills it.
OWNED_BY = {
    "llamacpp": LLAMA_SERVER,
    "me": LLAMA_CPP_PYTHON,
    "vllm": VLLM,
    "library": OLLAMA,
    "ollama": OLLAMA,
    "tgi": TGI,
    "sglang": SGLANG,
}


def is_llama_server_props(props: object) -> bool:
    """llama-server's GET /props (other servers have none, or something else there)."""
    return isinstance(props, dict) and (
        "default_generation_settings" in props or "build_info" in props
    )


def from_models(models: list[dict]) -> Dialect:
    for m in models:
        d = OWNED_BY.get(str(m.get("owned_by", "")).lower())
        if d is not None:
            return d
    return GENERIC


# -- numbers ---------------------------------------------------------------------------


def num(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def logprob(x) -> float | None:
    """A reported log probability: None when absent or impossible (above 0, NaN,
    not a number), log 0 for the servers' floors (and -inf)."""
    if not num(x):
        return None
    v = float(x)
    if math.isnan(v) or v > LOGPROB_ROUNDING:
        return None
    if v <= FLOAT_FLOOR or v == VLLM_FLOOR:
        return NEG_INF
    return min(v, 0.0)  # float32 rounding just above 0: probability 1


def prob_as_logprob(x) -> float | None:
    """A reported probability (post_sampling_probs) as a log probability."""
    if not num(x) or not 0.0 <= float(x) <= 1.0:
        return None
    return math.log(x) if x > 0 else NEG_INF


def count(x) -> int | None:
    """A token count a server reports: a whole number >= 0, else None (not shown)."""
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


def rate(x) -> float | None:
    """A speed a server reports (tokens/s): finite and > 0, else None."""
    return float(x) if num(x) and math.isfinite(x) and x > 0 else None


IMPOSSIBLE = (
    "the server sent impossible probabilities (a log probability above 0, NaN or not "
    "a number, or alternatives summing past 1): dropped, not shown"
)


# -- token entries -------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    piece: bytes
    id: int | None  # the server's id, when it gives one
    logprob: float  # may be -inf


@dataclass(frozen=True)
class Entry:
    """One generated (or echoed) token as a server reported it."""

    piece: bytes
    id: int | None
    logprob: float | None
    top: tuple[Candidate, ...]
    dropped: int = 0  # impossible numbers left out of this entry


def _checked(piece: bytes, id_: int | None, raw, value, top: list[Candidate], bad: int) -> Entry:
    """An Entry, its impossible numbers dropped and counted: `raw` is the chosen
    token's number as sent (absent is not impossible), `value` as read."""
    if raw is not None and value is None:
        bad += 1
    if sum(math.exp(c.logprob) for c in top) > 1.0 + PROB_SUM_SLACK:
        bad += len(top)  # which of them is wrong cannot be told: none is shown
        top = []
    return Entry(piece, id_, value, tuple(top), bad)


def piece_of(entry: dict, text_key: str = "token") -> bytes:
    """A token's bytes: the server's `bytes` when given (exact, even half a
    character), else its text."""
    raw = entry.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    text = entry.get(text_key)
    return text.encode("utf-8", errors="surrogatepass") if isinstance(text, str) else b""


def _id(entry: dict) -> int | None:
    v = entry.get("id")
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def legacy_entries(lp: dict) -> list[Entry]:
    """{tokens, token_logprobs, top_logprobs: [{text: logprob}]}"""
    values = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or []
    values = values if isinstance(values, list) else []
    tops = tops if isinstance(tops, list) else []
    out = []
    for i, text in enumerate(lp.get("tokens") or []):
        if not isinstance(text, str):
            continue
        raw = values[i] if i < len(values) else None
        t = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        top, bad = [], 0
        for k, x in list(t.items())[:MAX_CANDIDATES]:
            v = logprob(x)
            if v is None:
                bad += x is not None
            else:
                top.append(Candidate(k.encode("utf-8", errors="surrogatepass"), None, v))
        piece = text.encode("utf-8", errors="surrogatepass")
        out.append(_checked(piece, None, raw, logprob(raw), top, bad))
    return out


def chat_entry(e: dict, sampled: bool = False) -> Entry:
    """{id, token, bytes, logprob, top_logprobs: [{id, token, bytes, logprob}]}, or
    with `sampled` llama-server's post-sampling {prob, top_probs: [{prob}]}."""
    value = prob_as_logprob if sampled else logprob
    key, top_key = ("prob", "top_probs") if sampled else ("logprob", "top_logprobs")
    top, bad = [], 0
    listed = e.get(top_key)
    for t in listed[:MAX_CANDIDATES] if isinstance(listed, list) else ():
        if isinstance(t, dict):
            v = value(t.get(key))
            if v is not None:
                top.append(Candidate(piece_of(t), _id(t), v))
            elif t.get(key) is not None:
                bad += 1
    raw = e.get(key)
    return _checked(piece_of(e), _id(e), raw, value(raw), top, bad)


def entries(lp, sampled: bool = False) -> list[Entry]:
    """Either shape, whichever the server sent (none: [])."""
    if isinstance(lp, list):  # native /completion: completion_probabilities
        return [chat_entry(e, sampled) for e in lp if isinstance(e, dict)]
    if not isinstance(lp, dict):
        return []
    if isinstance(lp.get("content"), list):
        return [chat_entry(e, sampled) for e in lp["content"] if isinstance(e, dict)]
    if isinstance(lp.get("tokens"), list):
        return legacy_entries(lp)
    return []


def first_choice(reply: dict) -> dict | None:
    choices = reply.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


# Finish reasons to gptcli's: OpenAI's, and llama-server's native stop_type.
REASONS = {"stop": "stop", "length": "length", "eos": "stop", "word": "stop", "limit": "length"}

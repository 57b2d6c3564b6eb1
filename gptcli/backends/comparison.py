"""Where two models part ways on one text: for every scored token, KL(A‖B) between
their next-token distributions, whether their most likely tokens agree, and the
probability each gives the token that actually comes next; then the statistics
`llama-perplexity --kl-divergence` prints, computed the same way.

Memory: one model at a time. A runs over the whole text first and the logits of every
scored position go to an unlinked temporary file, memory-mapped (vocabulary x 4 bytes
per scored token: 192 KiB for a 49,152-token vocabulary); A is closed; then B runs over
the same tokens and reads A's rows back ROWS_AT_ONCE at a time. RAM holds one model and
two small blocks of rows; the disk holds A's rows until the comparison ends.

Which positions are scored (`Pass`): by default the windows `score` uses (a context
each, overlapping by half: every token after the first is scored once); with
`chunk_passes` llama-perplexity's chunks (`-c N`: the text cut into N-token chunks,
the remainder dropped, each evaluated from an empty cache with its first token made
BOS when the model adds one, the second half of each chunk scored).
"""

from __future__ import annotations

import heapq
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.llama.prompt import raw_prompt
from gptcli.sampling.sampler import NonFiniteLogits

ROWS_AT_ONCE = 64  # rows of each model's logits turned into distributions at a time
TOP = 3  # candidates listed for each model at the most different positions
DISK_MARGIN = 256 << 20  # free space left over after A's rows are written

Progress = Callable[[str, int, int], None]  # (which model, tokens done, total)


@dataclass(frozen=True)
class Pass:
    """One evaluation from an empty cache: tokens[start : start + length] (the first
    one replaced by `bos` when that is not None); rows first .. length-2 are scored,
    row j predicting tokens[start + j + 1]."""

    start: int
    length: int
    first: int
    bos: int | None = None

    @property
    def scored(self) -> int:
        return max(0, self.length - 1 - self.first)


def sliding_passes(n: int, window: int) -> list[Pass]:
    """`score`'s windows (scoring.score_tokens): a context each, overlapping by half,
    every token but the first scored exactly once."""
    stride = max(1, window // 2)
    passes, done, start = [], 1, 0
    while done < n:
        length = min(window, n - start)
        passes.append(Pass(start, length, max(0, done - start - 1)))
        done = start + length
        start += stride
    return passes


def chunk_passes(n: int, ctx: int, bos: int | None) -> list[Pass]:
    """llama-perplexity's chunks (tools/perplexity/perplexity.cpp, `-c ctx`):
    n // ctx chunks, the rest of the text dropped; each scores its second half."""
    return [Pass(i * ctx, ctx, ctx // 2, bos) for i in range(n // ctx)]


def targets(passes: list[Pass]) -> np.ndarray:
    """The index in the text of the token each scored row predicts, in order."""
    parts = [np.arange(p.start + p.first + 1, p.start + p.length) for p in passes]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _shifted(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows less their maximum (z, float64), exp(z), and ln sum exp(z): ln p = z - lse."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return z, e, np.log(e.sum(axis=1))


def _kl(za, ea, lse_a, zb, lse_b) -> np.ndarray:
    # sum p_A ln p_A - sum p_A ln p_B, both sides computed alike: equal rows give exactly 0
    sa = ea.sum(axis=1)
    return (np.einsum("ij,ij->i", ea, za) / sa - lse_a) - (
        np.einsum("ij,ij->i", ea, zb) / sa - lse_b
    )


def kl_rows(logits_a: np.ndarray, logits_b: np.ndarray) -> np.ndarray:
    """KL(A‖B) in nats of each row pair: sum over the vocabulary of p_A (ln p_A - ln p_B)."""
    za, ea, lse_a = _shifted(logits_a)
    zb, _, lse_b = _shifted(logits_b)
    return _kl(za, ea, lse_a, zb, lse_b)


def top_ids(logprobs: np.ndarray, k: int) -> np.ndarray:
    """The k largest entries of one row, largest first (equal values by id)."""
    k = min(k, logprobs.shape[0])
    part = np.argpartition(-logprobs, k - 1)[:k]
    return part[np.lexsort((part, -logprobs[part]))]


@dataclass(frozen=True)
class Worst:
    """One of the positions where the models differ most: both models' top candidates
    as (token id, probability)."""

    index: int  # in the text
    kl: float  # nats
    top_a: tuple[tuple[int, float], ...]
    top_b: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Comparison:
    """Per scored token (in the order of `positions`, its index in `tokens`)."""

    tokens: list[int]
    positions: np.ndarray
    kl: np.ndarray  # KL(A‖B) in nats
    logprob_a: np.ndarray  # ln p(actual token) under A
    logprob_b: np.ndarray
    top_a: np.ndarray  # each model's most likely token id
    top_b: np.ndarray
    worst: tuple[Worst, ...]  # largest KL first

    def summary(self) -> Summary:
        return summarize(self.kl, self.logprob_a, self.logprob_b, self.top_a, self.top_b)


# -- the statistics llama-perplexity prints ---------------------------------------------


def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """The mean and its standard error, as llama-perplexity computes them (0 with 10
    values or fewer)."""
    n = len(values)
    if n < 1:
        return 0.0, 0.0
    f = float(np.mean(values))
    df = float(np.mean(np.square(values))) - f * f
    return f, math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama-perplexity's percentile: linear between the two nearest sorted values."""
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = fraction * (len(sorted_values) - 1)
    i = int(p)
    p -= i
    j = min(i + 1, len(sorted_values) - 1)
    return float((1 - p) * sorted_values[i] + p * sorted_values[j])


def median(sorted_values: np.ndarray) -> float:
    n = len(sorted_values)
    if n % 2 == 0:
        return float(0.5 * (sorted_values[n // 2] + sorted_values[n // 2 - 1]))
    return float(sorted_values[n // 2])


@dataclass(frozen=True)
class Summary:
    """llama-perplexity --kl-divergence's summary with A as the base and B as Q.
    KL in nats; probabilities as fractions; (value, standard error) pairs."""

    count: int
    mean_kl: tuple[float, float]
    median_kl: float
    p99_kl: float
    max_kl: float
    top1_agreement: tuple[float, float]
    rms_dp: tuple[float, float]
    ppl_a: tuple[float, float]
    ppl_b: tuple[float, float]
    ln_ppl_ratio: tuple[float, float]  # ln(PPL(B)/PPL(A))


def summarize(
    kl: np.ndarray,
    logprob_a: np.ndarray,
    logprob_b: np.ndarray,
    top_a: np.ndarray,
    top_b: np.ndarray,
) -> Summary:
    n = len(kl)
    if n == 0:
        raise UsageError("no token was compared")
    nll_a, nll_b = -np.asarray(logprob_a), -np.asarray(logprob_b)
    mean_a, unc_a = mean_and_uncertainty(nll_a)
    mean_b, unc_b = mean_and_uncertainty(nll_b)
    cov = 0.0
    if n >= 10:  # as llama-perplexity: the covariance of the two mean log-likelihoods
        cov = (float(np.mean(nll_a * nll_b)) - mean_a * mean_b) / (n - 1)
    ratio_unc = math.sqrt(max(0.0, unc_a * unc_a + unc_b * unc_b - 2 * cov))
    dp = np.exp(logprob_b) - np.exp(logprob_a)
    mse, mse_unc = mean_and_uncertainty(dp * dp)
    rms = math.sqrt(mse)
    same = float(np.mean(np.asarray(top_a) == np.asarray(top_b)))
    same_unc = math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0
    ordered = np.sort(kl)
    return Summary(
        count=n,
        mean_kl=mean_and_uncertainty(kl),
        median_kl=median(ordered),
        p99_kl=percentile(ordered, 0.99),
        max_kl=float(ordered[-1]),
        top1_agreement=(same, same_unc),
        rms_dp=(rms, 0.5 / rms * mse_unc if rms > 0 else 0.0),
        ppl_a=(math.exp(mean_a), math.exp(mean_a) * unc_a),
        ppl_b=(math.exp(mean_b), math.exp(mean_b) * unc_b),
        ln_ppl_ratio=(mean_b - mean_a, ratio_unc),
    )


# -- the two passes -----------------------------------------------------------------------


def _rows(engine, tokens: list[int], passes: list[Pass], progress: Progress | None, label: str):
    """Yield (slot, logits rows) of every scored row, in order, ROWS_AT_ONCE at most."""
    total = sum(p.scored for p in passes)
    slot = 0
    for p in passes:
        part = tokens[p.start : p.start + p.length]
        if p.bos is not None:
            part = [p.bos, *part[1:]]
        engine.reset()
        for offset, rows in engine.evaluate_all(part):
            first = max(0, p.first - offset)
            last = min(len(rows), p.length - 1 - offset)
            for a in range(first, last, ROWS_AT_ONCE):
                b = min(last, a + ROWS_AT_ONCE)
                block = rows[a:b]
                if not block.max() < np.inf:  # NaN propagates: one reduction
                    bad = int(np.flatnonzero(~(block.max(axis=1) < np.inf))[0])
                    raise NonFiniteLogits(p.start + offset + a + bad + 1)
                yield slot, block
                slot += b - a
            if progress is not None:
                progress(label, slot, total)
    engine.reset()


def _check_disk(folder: str, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed + DISK_MARGIN > free:
        raise GptcliError(
            f"comparing needs {needed / 1e9:.1f} GB for the first model's logits in {folder} "
            f"({free / 1e9:.1f} GB free): set TMPDIR to a roomier folder, shorten the text "
            "or pass a smaller --ctx"
        )


def spill(engine, tokens: list[int], passes: list[Pass], progress: Progress | None = None):
    """Run A: its logits for every scored row, in an unlinked memory-mapped file."""
    total = sum(p.scored for p in passes)
    folder = tempfile.gettempdir()
    _check_disk(folder, total * engine.n_vocab * 4)
    handle = tempfile.TemporaryFile(dir=folder, prefix="gptcli-compare-")
    try:
        rows = np.memmap(handle, dtype=np.float32, mode="w+", shape=(total, engine.n_vocab))
    except (OSError, ValueError) as e:
        handle.close()
        raise GptcliError(
            f"cannot map a temporary file for the first model's logits: {e}"
        ) from None
    for slot, block in _rows(engine, tokens, passes, progress, "A"):
        rows[slot : slot + len(block)] = block
    rows.flush()
    handle.close()  # the mapping keeps the file; it goes when `rows` does
    return rows


def against(
    engine,
    rows_a: np.ndarray,
    tokens: list[int],
    passes: list[Pass],
    worst: int = 10,
    progress: Progress | None = None,
) -> Comparison:
    """Run B over the same passes and compare each row with A's."""
    where = targets(passes)
    n = len(where)
    ids = np.asarray(tokens, dtype=np.int64)
    kl = np.empty(n)
    lp_a, lp_b = np.empty(n), np.empty(n)
    top_a, top_b = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    heap: list[tuple[float, int, Worst]] = []  # the `worst` largest KL so far (a min-heap)
    for slot, block in _rows(engine, tokens, passes, progress, "B"):
        s = slice(slot, slot + len(block))
        raw_a = rows_a[s]
        za, ea, lse_a = _shifted(raw_a)
        zb, _, lse_b = _shifted(block)
        k = _kl(za, ea, lse_a, zb, lse_b)
        r = np.arange(len(block))
        want = ids[where[s]]
        kl[s], lp_a[s], lp_b[s] = k, za[r, want] - lse_a, zb[r, want] - lse_b
        top_a[s], top_b[s] = raw_a.argmax(axis=1), block.argmax(axis=1)
        if worst <= 0:
            continue
        floor = heap[0][0] if len(heap) >= worst else -math.inf
        for j in np.flatnonzero(k > floor):  # top candidates only where a row enters
            la, lb = za[j] - lse_a[j], zb[j] - lse_b[j]
            entry = Worst(
                int(where[slot + j]),
                float(k[j]),
                tuple((int(t), float(math.exp(la[t]))) for t in top_ids(la, TOP)),
                tuple((int(t), float(math.exp(lb[t]))) for t in top_ids(lb, TOP)),
            )
            item = (float(k[j]), -int(where[slot + j]), entry)  # ties: the earlier first
            if len(heap) < worst:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
    ranked = tuple(e for _, _, e in sorted(heap, key=lambda x: x[:2], reverse=True))
    return Comparison(list(tokens), where, kl, lp_a, lp_b, top_a, top_b, ranked)


@dataclass(frozen=True)
class Compared:
    """A finished comparison and what the views name: the models and the chunking."""

    result: Comparison
    name_a: str
    name_b: str
    window: int  # the context each pass had
    chunked: bool  # llama-perplexity's chunks (else score's windows)
    piece: Callable[[int], bytes]
    is_control: Callable[[int], bool]


def compare_models(
    open_a: Callable[[int], object],
    open_b: Callable[[int], object],
    open_b_vocab: Callable[[], object],
    text: str,
    *,
    ctx: int = 0,
    worst: int = 10,
    progress: Progress | None = None,
) -> Compared:
    """Compare two models on `text`, one loaded at a time. open_a(n_ctx) and
    open_b(n_ctx) load a model with that context (0: its own); open_b_vocab() loads
    only B's tokenizer, to refuse another vocabulary before A runs."""
    vocab_b = open_b_vocab()
    try:
        known_b, tokens_b, name_b = vocab_b.vocabulary(), raw_prompt(vocab_b, text), vocab_b.name
    finally:
        vocab_b.close()
    a = open_a(ctx)
    try:
        if a.vocabulary() != known_b:
            raise UsageError(
                f"{a.name} and {name_b} have different vocabularies "
                "(token ids mean different text): nothing to compare token by token"
            )
        tokens = raw_prompt(a, text)
        if tokens != tokens_b:  # the same tokens, other pre-tokenizer rules
            raise UsageError(f"{a.name} and {name_b} split this text into different tokens")
        if len(tokens) < 2:
            raise UsageError("the text is a single token: nothing to compare")
        window = a.n_ctx
        if ctx:
            bos = a.bos_id if a.add_bos else None
            passes = chunk_passes(len(tokens), ctx, bos)
            if not passes:
                raise UsageError(
                    f"the text is {len(tokens)} tokens: --ctx {ctx} needs at least {ctx}"
                )
        else:
            passes = sliding_passes(len(tokens), window)
        name_a = a.name
        # The same vocabulary: a token's bytes from A are its bytes in B.
        pieces = {t: a.piece(t) for t in set(tokens)}
        controls = {t: a.is_control(t) for t in pieces}
        rows_a = spill(a, tokens, passes, progress)
    finally:
        a.close()
    b = open_b(window)
    try:
        result = against(b, rows_a, tokens, passes, worst, progress)
        listed = {t for w in result.worst for t, _ in w.top_a + w.top_b}
        listed |= set(result.top_a.tolist()) | set(result.top_b.tolist())
        pieces.update({t: b.piece(t) for t in listed - pieces.keys()})
    finally:
        b.close()
        del rows_a  # unmaps A's rows: the temporary file goes with them
    return Compared(
        result,
        name_a,
        name_b,
        window,
        bool(ctx),
        lambda t: pieces[int(t)],
        lambda t: controls.get(int(t), False),
    )

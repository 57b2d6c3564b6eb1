"""The command side of `--server`: run generate against an OpenAI-compatible server
with the same renderers as a local run, list the server's models, and run one
generation per input line (`--each-line`), several in flight with `-j`.

Imported only when a command runs (it pulls in numpy through the backend).
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from gptcli.errors import GptcliError, UsageError
from gptcli.remote import NO_LOGPROBS, RemoteServer


def connect(url: str, model: str | None = None) -> RemoteServer:
    """The server for --server URL; `-m` names one of its models (else its default)."""
    return RemoteServer(url, model=model)


def ignored_local_options(
    ctx: int, threads: int | None, gpu_layers: int | None, verbose: bool
) -> None:
    """Options that only shape a local run: say once that the server ignores them."""
    from gptcli.render import notice

    given = {"--ctx": ctx, "--threads": threads, "--gpu-layers": gpu_layers, "--verbose": verbose}
    names = [name for name, value in given.items() if value]
    if names:
        notice(f"{', '.join(names)} only apply to a local model: ignored with --server")


def print_models(url: str) -> None:
    """`gptcli list --server URL`: the ids of the server's models, one a line."""
    from gptcli.render import notice

    server = RemoteServer(url)
    models = server.models()
    for m in models:
        print(m.get("id", "?"), flush=True)
    notice(f"{len(models)} model{'s' if len(models) != 1 else ''} at {server.url.display}")


# -- generate ---------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteRequest:
    """What every line (or the one prompt) is sent with."""

    raw: bool
    system: str | None
    params: object  # sampling.SamplingParams
    max_tokens: int | None
    stops: list[str]

    def start(self, server: RemoteServer, text: str, n_top: int = 0, logprobs: bool = False):
        if self.raw:
            return server.complete(
                text, self.params, self.max_tokens, self.stops, n_top=n_top, logprobs=logprobs
            )
        from gptcli.prompting import messages_for

        messages = messages_for(text, self.system)
        return server.chat(
            messages, self.params, self.max_tokens, self.stops, n_top=n_top, logprobs=logprobs
        )


class RemoteJsonRenderer:
    """render_probs.JsonRenderer's shape for a remote run: the same keys; `id` is null
    where the server gave no id, and `logprob` (the sampled distribution) is null:
    servers report only the model's own probabilities (`model_logprob`)."""

    def __init__(self, server: RemoteServer, n_top: int, out=None):
        self.out = out or sys.stdout
        self.server = server
        self.n_top = n_top
        self.model_probs = True

    def _token(self, token: int, piece: bytes) -> dict:
        from gptcli.render_probs import token_text

        return {
            "token": token_text(piece),
            "id": token if token >= 0 else None,
            "bytes": list(piece),
        }

    def token(self, event) -> None:
        d = event.draw
        obj = self._token(event.id, event.piece)
        obj["logprob"] = _finite(d.logprob)
        obj["model_logprob"] = _finite(d.model_logprob)
        obj["top_logprobs"] = [
            {
                **self._token(a.id, self.server.piece(a.id)),
                "logprob": _finite(a.logprob),
                "model_logprob": _finite(a.model_logprob),
            }
            for a in d.top
        ]
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.flush()

    def finish(self, finish) -> None:
        if finish is None:
            self.out.flush()
            return
        from gptcli.render_probs import finish_object

        self.out.write(json.dumps(finish_object(finish), ensure_ascii=False) + "\n")
        self.out.flush()


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def print_remote_stats(finish, server: RemoteServer) -> None:
    """--stats for a remote run: what the client measured (no load; counts where known)."""
    from rich.text import Text

    from gptcli.render import stderr_console

    t = finish.timings
    n = finish.completion_tokens
    if n is not None and t.generation_s > 0:
        gen = f"{n} tokens in {t.generation_s:.3f} s, {n / t.generation_s:.1f} tokens/s"
    else:
        gen = f"{t.generation_s:.3f} s (the server sent no token count)"
    rows = [
        ("server", server.url.display),
        ("first token", f"{t.ttft_s:.3f} s (prompt evaluation and network)"),
        ("generation", gen),
        ("finish", finish.reason),
    ]
    for label, value in rows:
        stderr_console().print(Text(f"{label:<12}{value}", style="dim"), soft_wrap=True)


def generate_remote(
    server: RemoteServer,
    text: str,
    request: RemoteRequest,
    *,
    probs: bool,
    probs_kind_given: bool,
    alternatives: int | None,
    json_out: bool,
    stats: bool,
) -> None:
    """`gptcli generate --server URL`: stream one reply through the usual renderers."""
    from gptcli.generation import Finish
    from gptcli.render import TextRenderer, notice

    if json_out:
        renderer = RemoteJsonRenderer(server, 5 if alternatives is None else alternatives)
    elif probs:
        from gptcli.render_probs import ProbsRenderer, legend

        if probs_kind_given:
            notice("servers report only the model's probabilities: showing those (--probs=model)")
        renderer = ProbsRenderer(
            use_model_probs=True, alternatives=alternatives or 0, piece=server.piece
        )
        if renderer.colour:
            legend(True)
    else:
        renderer = TextRenderer()
    n_top = getattr(renderer, "n_top", 0)
    generation = request.start(server, text, n_top=n_top, logprobs=bool(probs or json_out))
    finish = None
    warned = False
    try:
        for event in generation:
            if isinstance(event, Finish):
                finish = event
                continue
            if (probs or json_out) and event.draw.model_logprob is None and not warned:
                warned = True
                notice(NO_LOGPROBS.format(what="printing the text without them"))
                if probs:  # no numbers to colour by: plain text, never invented ones
                    renderer = TextRenderer()
            renderer.token(event)
    except KeyboardInterrupt:
        renderer.finish(None)
        raise
    except GptcliError:
        renderer.finish(None)  # what was printed stays, ending its line
        raise
    renderer.finish(finish)
    if stats:
        print_remote_stats(finish, server)


# -- --each-line ------------------------------------------------------------------


def input_lines(stream=None) -> Iterator[str]:
    """stdin's lines, without their line ends, decoded as UTF-8 one at a time."""
    stream = stream or sys.stdin
    src = stream.buffer if hasattr(stream, "buffer") else None
    for n, raw in enumerate(src if src is not None else stream, 1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UsageError(f"stdin line {n} is not valid UTF-8 (byte {e.start})") from None
        yield raw.rstrip("\r\n")


def line_prompt(prefix: str | None, line: str) -> str:
    """As read_input joins an argument and stdin: PROMPT, a blank line, then the line."""
    return f"{prefix}\n\n{line}" if prefix else line


def ordered(items: Iterable[str], work: Callable[[str], str], jobs: int) -> Iterator[str]:
    """work(item) for every item, `jobs` at a time on daemon threads, results in input
    order. The first failure is raised once every result before it has been yielded."""
    lock = threading.Condition()
    results: dict[int, tuple[bool, object]] = {}
    queue: list[tuple[int, str]] = []
    state = {"fed": 0, "closed": False, "stop": False}
    source = iter(items)

    def worker() -> None:
        while True:
            with lock:
                while not queue and not state["closed"] and not state["stop"]:
                    lock.wait()
                if state["stop"] or (not queue and state["closed"]):
                    return
                i, item = queue.pop(0)
            try:
                out = (True, work(item))
            except BaseException as e:  # handed to the main thread, raised there
                out = (False, e)
            with lock:
                results[i] = out
                lock.notify_all()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(jobs)]
    for t in threads:
        t.start()
    ahead = max(2 * jobs, jobs + 1)  # lines read ahead of the one being printed
    nxt = 0
    try:
        while True:
            with lock:
                while not state["closed"] and state["fed"] - nxt < ahead:
                    try:
                        item = next(source)
                    except StopIteration:
                        state["closed"] = True
                        break
                    queue.append((state["fed"], item))
                    state["fed"] += 1
                lock.notify_all()
                if state["closed"] and nxt >= state["fed"]:
                    return
                while nxt not in results:
                    lock.wait()
                ok, value = results.pop(nxt)
            nxt += 1
            if not ok:
                raise value
            yield value
    finally:
        with lock:
            state["stop"] = True  # requests in flight finish on their daemon threads
            lock.notify_all()


def collect_text(events) -> str:
    """The whole text of a generation's events (for -j, where lines print whole)."""
    from gptcli.generation import Finish

    parts = []
    for event in events:
        parts.append(event.text)
        if isinstance(event, Finish):
            break
    return "".join(parts)


def each_line_remote(server: RemoteServer, prefix: str | None, request: RemoteRequest, jobs: int):
    """One reply per stdin line, `jobs` requests in flight, printed in input order."""

    def work(line: str) -> str:
        if not line.strip():
            return ""  # a blank line stays a blank line: nothing to ask
        return collect_text(request.start(server, line_prompt(prefix, line)))

    _print_in_order(ordered(input_lines(), work, jobs))


def each_line_local(make_generation: Callable[[str], object], prefix: str | None) -> None:
    """One generation per stdin line on the one local engine, in turn."""

    def work(line: str) -> str:
        if not line.strip():
            return ""
        return collect_text(make_generation(line_prompt(prefix, line)))

    _print_in_order(work(line) for line in input_lines())


def _print_in_order(texts: Iterable[str]) -> None:
    out = sys.stdout
    for text in texts:
        # One output line per input line: a reply's own line breaks are written as \n.
        out.write(text.strip("\n").replace("\n", "\\n") + "\n")
        out.flush()


def check_each_line(
    each_line: bool, jobs: int, server: str | None, probs: bool, json_out: bool
) -> None:
    if not each_line:
        raise UsageError("-j needs --each-line")
    if jobs < 1:
        raise UsageError(f"-j must be at least 1, got {jobs}")
    if jobs > 1 and not server:
        raise UsageError(
            "-j above 1 needs --server: a local model runs one generation at a time "
            "(drop -j, or serve the model and pass --server URL)"
        )
    if probs or json_out:
        raise UsageError("--each-line prints text only: drop --probs/--json")


def local_generation(engine, text: str, raw: bool, system, params, max_tokens, stops):
    """A local Generation of one --each-line prompt, formatted as generate formats one."""
    from gptcli.generation import Generation
    from gptcli.prompting import chat_format, chat_prompt, messages_for, raw_prompt
    from gptcli.sampling import Sampler

    stops = list(stops)
    if raw:
        tokens = raw_prompt(engine, text)
    else:
        fmt = chat_format(engine)
        tokens = chat_prompt(engine, messages_for(text, system), fmt)
        stops += fmt.stops
    if not tokens:
        raise UsageError("a line tokenizes to nothing")
    return Generation(engine, tokens, Sampler(params, engine.n_vocab), max_tokens, stops)


# -- next and score -----------------------------------------------------------------

ONLY_T1 = (
    "servers report the model's probabilities at temperature 1 only: showing T=1 "
    "(other temperatures need the whole vocabulary; run locally for them)"
)
NO_ENTROPY = (
    "a server reports only the top {k}: the entropy (over the whole vocabulary) is not shown{json}"
)


def next_remote(
    server: RemoteServer,
    text: str,
    *,
    top: int,
    temperatures: list[float],
    steps: int,
    chat: bool,
    system: str | None,
    json_out: bool,
) -> None:
    """`gptcli next --server URL`: the server's top-K after the text, at temperature 1,
    in the local chart and JSON shapes; what a server cannot give (entropy, other
    temperatures, token ids) is left out or null, with a notice."""
    from gptcli.distribution import Candidate, NextTokens
    from gptcli.prompting import messages_for
    from gptcli.render import notice

    if not text:
        raise UsageError(
            "empty prompt: with --server, give the text so far (a server cannot show what "
            "follows the BOS token alone)"
        )
    if list(temperatures) != [1.0]:
        notice(ONLY_T1)
    if system and not chat:
        notice("--system is ignored without --chat")
    result = server.next_steps(messages_for(text, system) if chat else text, top, steps)
    notice(NO_ENTROPY.format(k=top, json=" (entropy_bits: null)" if json_out else ""))
    if json_out:
        from gptcli.render_probs import NextJsonWriter

        view = NextJsonWriter(server.piece)
    else:
        from gptcli.render_probs import NextChart

        view = NextChart(server.piece)
    short = False
    for step, candidates in enumerate(result.steps):
        cum = 0.0
        cands = []
        for token, lp in candidates:
            p = math.exp(lp)
            cum += p
            cands.append(Candidate(token, lp, (p,), (min(1.0, cum),)))
        short = short or len(cands) < top
        position = None if result.prompt_tokens is None else result.prompt_tokens + step
        view.step(step, position, NextTokens((1.0,), (None,), tuple(cands)))
    if short:
        notice(
            f"the server returned fewer than {top} candidates at some step (it lists each "
            "token text once: tokens that decode alike, or more than it allows, are missing)"
        )
    if len(result.steps) < steps and result.finish_reason == "stop":
        notice("the most likely next token ends the text: no more steps")


def score_remote(server: RemoteServer, text: str, worst: int, json_out: bool) -> None:
    """`gptcli score --server URL`: the prompt's log probabilities as the server echoes
    them; refused where they are known to be misaligned (remote.prompt_logprobs)."""
    import numpy as np

    from gptcli.scoring import Scores

    scored = server.prompt_logprobs(text, top=1)
    n = len(scored.tokens)
    if n < 2:
        raise UsageError("the text is a single token: nothing to score (a token needs a context)")
    logprobs = np.array(scored.logprobs, dtype=np.float64)
    logprobs[0] = np.nan  # the first token has no context
    best = scored.best[1:]
    if np.isnan(logprobs[1:]).any() or any(b is None for b, _ in best):
        raise GptcliError(
            f"the server at {server.url.display} left out the log probabilities of some "
            "tokens: nothing to score them by (score locally)"
        )
    best_ids = np.array([-1] + [b for b, _ in best], dtype=np.int64)
    best_lp = np.array([np.nan] + [v for _, v in best], dtype=np.float64)
    result = Scores(list(scored.tokens), logprobs, best_ids, best_lp)
    if json_out:
        from gptcli.render_probs import score_json

        score_json(result, server.piece, worst)
    else:
        from gptcli.render_probs import score_text

        score_text(result, server.piece, worst)

"""--each-line: stdin's lines as prompts, and replies printed one line each, in order
(`ordered` runs several at once on threads, for backends that take them)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator

from gptcli.errors import GptcliError, UsageError
from gptcli.limits import MAX_PROMPT_BYTES
from gptcli.untrusted import size_text


def input_lines(stream=None) -> Iterator[str]:
    """stdin's lines, without their line ends, decoded as UTF-8 one at a time."""
    stream = stream or sys.stdin
    src = stream.buffer if hasattr(stream, "buffer") else stream
    n = 0
    while raw := src.readline(MAX_PROMPT_BYTES + 1):  # a line is read whole: bounded
        n += 1
        if len(raw) > MAX_PROMPT_BYTES:
            raise UsageError(f"stdin line {n} is longer than {size_text(MAX_PROMPT_BYTES)}")
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

    threads: list[threading.Thread] = []  # started as lines come: never more than lines
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
                    if len(threads) < jobs:
                        threads.append(threading.Thread(target=worker, daemon=True))
                        threads[-1].start()
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


def report_failures(
    results: Iterable[tuple[str, str | None]], report_error: Callable[[str], None]
) -> Iterator[str]:
    """(text, error) per line to the texts; a failed line is reported (one error line on
    stderr) and gives an empty output line, and once all are through, a failure (non-zero
    exit) says how many lines failed."""
    failed = total = 0
    for text, error in results:
        total += 1
        if error is not None:
            failed += 1
            report_error(f"line {total}: {error}")
        yield text
    if failed:
        raise GptcliError(f"{failed} of {total} lines failed (their output lines are empty)")

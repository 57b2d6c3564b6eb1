"""Reading what the user hands us (grammar, schema, transcript and text files, JSON)
with a bound on its size and its nesting, so no file can exhaust memory or the stack.

Imports nothing of gptcli but the limits and the error types.
"""

from __future__ import annotations

import errno
import json
import os
import stat

from gptcli.errors import UsageError
from gptcli.limits import MAX_JSON_DEPTH


def size_text(n: int) -> str:
    """A byte count as a person reads a limit: "4 MiB", "640 KiB", "100 bytes"."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a file, at most `limit` of them.

    Regular files and pipes are read (a pipe is `<(command)` or a named FIFO, opened
    without waiting for a writer); a device, a socket or a directory raises OSError
    (IsADirectoryError for a directory), as does a file larger than `limit`: /dev/zero
    would otherwise be read until memory runs out."""
    st = os.stat(path)  # FileNotFoundError as it is
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    if st.st_size > limit:
        raise OSError(errno.EFBIG, f"larger than {size_text(limit)}", str(path))
    # O_NONBLOCK: opening a FIFO no one writes to returns at once (then reads nothing).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)  # a writer is there: wait for its bytes
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > limit:
        raise OSError(errno.EFBIG, f"larger than {size_text(limit)}", str(path))
    return b"".join(chunks)


def read_input(path: str | os.PathLike, limit: int, prefix: str = "") -> bytes:
    """read_bounded for a file the user named: each way it fails is one UsageError (exit
    2), after `prefix` (the option, e.g. "--grammar: ")."""
    try:
        return read_bounded(path, limit)
    except FileNotFoundError:
        raise UsageError(f"{prefix}no such file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{prefix}{path} is a directory") from None
    except OSError as e:
        raise UsageError(f"{prefix}cannot read {path}: {e.strerror}") from None


class JsonTooDeep(ValueError):
    """JSON nested deeper than MAX_JSON_DEPTH."""

    def __init__(self, limit: int = MAX_JSON_DEPTH):
        super().__init__(f"JSON nested more than {limit} levels deep")


def json_depth(obj: object, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep objects and arrays nest in `obj` (a scalar: 0), counted without
    recursion; stops counting past `limit` (returns limit + 1)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            return limit + 1
        stack.extend((child, depth + 1) for child in children)
    return deepest


def loads(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> object:
    """json.loads, refusing nesting deeper than `limit` with JsonTooDeep (never a
    RecursionError); JSONDecodeError and UnicodeDecodeError as json.loads raises them,
    and JSONDecodeError for a number too long to convert (a bare ValueError otherwise)."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise JsonTooDeep(limit) from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # a number past Python's 4,300-digit conversion limit
        doc = text if isinstance(text, str) else ""
        raise json.JSONDecodeError(f"a number too long to read ({e})", doc, 0) from None
    if json_depth(obj, limit) > limit:
        raise JsonTooDeep(limit)
    return obj

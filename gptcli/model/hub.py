"""Everything that talks to huggingface_hub: pull a GGUF into the standard HF cache,
verify it, find it again, list and remove what was pulled.

Why not plain `hf_hub_download`: huggingface-hub 2.4 accepts bytes that do not match the
hub's sha256, and it downloads into a per-process temporary file that it deletes when
interrupted, so an interrupted pull restarts from zero. Here the bytes go to
`blobs/<sha256>.incomplete` (resumed with a Range request next time), are hashed and
GGUF-checked, and only then renamed to `blobs/<sha256>` and linked from
`snapshots/<commit>/<file>`: the cache layout huggingface_hub itself writes and reads,
so other tools share the files. The HTTP itself is huggingface_hub's (`model_info`,
`list_repo_tree`, `get_hf_file_metadata`, `http_get`): HF_TOKEN, HF_ENDPOINT, HF_HOME and
HF_HUB_OFFLINE work as everywhere else. Xet storage is not used: without an `X-Xet-Hash`
header a download is plain HTTP, and the hub serves every file over plain HTTP too.

huggingface_hub's exceptions are translated in one place, `_translate`. Every hub
request waits at most --timeout (else $GPTCLI_TIMEOUT, else limits.HUB_TIMEOUT_S) to
connect and between two reads: `_bounded` sets it on huggingface_hub's client, whose
own calls sometimes ask for no timeout at all.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from gptcli.console import notice, stderr_console
from gptcli.errors import GptcliError, UsageError
from gptcli.limits import (
    HUB_TIMEOUT_S,
    MAX_HUB_FILES,
    MAX_HUB_PAGES,
    MAX_HUB_REPLY_BYTES,
    MAX_TIMEOUT_S,
)
from gptcli.model.gguf_check import GGUFError, read_header
from gptcli.model.refs import (
    HubRef,
    RemoteFile,
    Variant,
    check_filename,
    choose,
    group_variants,
    human_size,
    is_commit_hash,
    is_sha256,
    parse_ref,
)

_CHUNK = 1 << 20
# Retries of our own around huggingface_hub's, for errors it does not retry (a reset).
_MAX_STALLED_ATTEMPTS = 2


# --------------------------------------------------------------------------- results


@dataclass
class LocalModel:
    """A GGUF model in the HF cache: one variant of one snapshot of a repo."""

    repo_id: str
    commit: str
    variant: Variant
    paths: list[Path]
    current: bool = True  # the snapshot the branch points at

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def name(self) -> str:
        return model_name(self.repo_id, self.variant)


@dataclass
class Pulled:
    model: LocalModel
    picked_default: bool = False
    downloaded: int = 0  # bytes fetched by this pull
    checked_hub: bool = True  # False: the hub was unreachable, the cached copy was used
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.model.path


@dataclass
class Removed:
    names: list[str]
    freed: int


def model_name(repo_id: str, variant: Variant) -> str:
    """How gptcli names a pulled model: `owner/repo:QUANT`, else `owner/repo/file`."""
    if variant.quant:
        return f"{repo_id}:{variant.quant}"
    return f"{repo_id}/{variant.first.path}"


# --------------------------------------------------------------------------- settings


def cache_dir() -> Path:
    """The HF hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def is_offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _repo_dir(repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model")


# --------------------------------------------------------------------------- time


_timeout: dict = {"s": HUB_TIMEOUT_S, "installed": False, "chosen": None}
_pages = {"n": 0}  # pages of the file listing in progress (limits.MAX_HUB_PAGES)


def set_timeout(timeout: float | None) -> None:
    """The command's --timeout, for a pull that `-m REF` starts later."""
    _timeout["chosen"] = timeout


def hub_timeout(timeout: float | None = None) -> float:
    """--timeout, else $GPTCLI_TIMEOUT, else limits.HUB_TIMEOUT_S."""
    if timeout is None:
        timeout = _timeout["chosen"]
    if timeout is not None:
        return timeout
    try:
        env = float(os.environ.get("GPTCLI_TIMEOUT", ""))
    except ValueError:
        return HUB_TIMEOUT_S
    return env if 0 < env <= MAX_TIMEOUT_S else HUB_TIMEOUT_S


def _bounded(timeout: float | None) -> None:
    """Give every later hub request `timeout` seconds (connect, read, write, pool)."""
    _timeout["s"] = hub_timeout(timeout)
    if _timeout["installed"]:
        return
    import httpx2
    from huggingface_hub.utils import _http

    def clamp(request) -> None:
        # huggingface_hub passes timeout=None (no limit) on some calls, 10 s on others.
        request.extensions["timeout"] = httpx2.Timeout(_timeout["s"]).as_dict()
        if "/api/" in request.url.path:
            # An API reply is read whole and parsed: uncompressed, so its size is what
            # the cap counts (a gzip of a few MB can inflate to gigabytes).
            request.headers["Accept-Encoding"] = "identity"

    def capped(response) -> None:
        path = response.request.url.path
        if "/api/" not in path:
            return  # a file download: streamed to disk, checked against its hash
        if "/tree/" in path:
            _pages["n"] += 1
            if _pages["n"] > MAX_HUB_PAGES:
                raise GptcliError(
                    f"the hub at {endpoint()} sent more than {MAX_HUB_PAGES} pages of file "
                    "listing: refused"
                )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise GptcliError(
                f"the hub at {endpoint()} compressed an API reply ({encoding[:40]}) it was asked "
                "not to: refused"
            )
        response.stream = _Capped(response.stream, endpoint())

    class _Capped(httpx2.SyncByteStream):
        """The reply's bytes, refused past MAX_HUB_REPLY_BYTES."""

        def __init__(self, inner, where: str):
            self._inner, self._where = inner, where

        def __iter__(self):
            n = 0
            for chunk in self._inner:
                n += len(chunk)
                if n > MAX_HUB_REPLY_BYTES:
                    raise GptcliError(
                        f"the hub at {self._where} sent an API reply of more than "
                        f"{MAX_HUB_REPLY_BYTES >> 20} MiB: refused"
                    )
                yield chunk

        def close(self) -> None:
            self._inner.close()

    def factory():
        client = _http.default_client_factory()
        hooks = client.event_hooks
        hooks["request"] = [*hooks.get("request", []), clamp]
        hooks["response"] = [*hooks.get("response", []), capped]
        client.event_hooks = hooks
        return client

    _http.set_client_factory(factory)
    _timeout["installed"] = True


# --------------------------------------------------------------------------- errors


def _translate(exc: BaseException, what: str) -> GptcliError | None:
    """The one table from huggingface_hub and network exceptions to a user message."""
    import httpx2
    from huggingface_hub import errors as hf

    repo = what.split(":")[0]
    if isinstance(exc, GptcliError):
        return exc
    if isinstance(exc, hf.GatedRepoError):
        return GptcliError(
            f"{repo} is gated: accept its licence at {endpoint()}/{repo} while logged in, "
            "then set HF_TOKEN to an access token of that account"
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return GptcliError(
            f"no such model repo on the hub: {repo} (check the name; a private repo needs HF_TOKEN)"
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return GptcliError(f"revision not found on the hub: {what}")
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return GptcliError(
            f"{what} is not in the cache and HF_HUB_OFFLINE is set "
            f"(unset it and run: gptcli pull {what})"
        )
    if isinstance(exc, hf.LocalEntryNotFoundError):
        return GptcliError(f"{what} is not in the cache and the hub at {endpoint()} is unreachable")
    if isinstance(exc, hf.EntryNotFoundError):
        return GptcliError(f"file not found on the hub: {what}")
    if isinstance(exc, hf.HFValidationError):
        return UsageError(f"not a valid hub reference: {what} ({exc})")
    if isinstance(exc, hf.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            return GptcliError(
                f"the hub refused access to {repo} (HTTP {status}): check HF_TOKEN, "
                "and accept the model's licence on its page if it is gated"
            )
        return GptcliError(f"the hub answered HTTP {status} for {what}; try again later")
    if isinstance(exc, (httpx2.TimeoutException, TimeoutError)):
        return GptcliError(
            f"the hub at {endpoint()} sent nothing for {_timeout['s']:g} s (--timeout S "
            "waits longer; HF_HUB_OFFLINE=1 uses cached models only)"
        )
    if isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError)):
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return GptcliError(
            f"cannot reach the hub at {endpoint()} ({reason}): check the network or "
            "HF_ENDPOINT (HF_HUB_OFFLINE=1 uses cached models only)"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return GptcliError(
            f"disk full while writing {what} to {cache_dir()}: free some space "
            "(gptcli rm ...) or point HF_HOME at a bigger disk"
        )
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return GptcliError(f"download of {what} ended early; run the same command to resume")
    return None


@contextmanager
def _hub_errors(what: str) -> Iterator[None]:
    try:
        yield
    except GptcliError:
        raise
    except Exception as e:
        translated = _translate(e, what)
        if translated is None:
            raise
        raise translated from None


def _is_unreachable(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError))


# --------------------------------------------------------------------------- progress


class _Progress:
    """Download and hashing progress on stderr (bytes, rate, time left); nothing when
    stderr is not a terminal."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = stderr_console()
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def task(self, description: str, total: int | None, done: int = 0) -> int:
        return self.progress.add_task(description, total=total, completed=done)

    def bar_class(self, task_id: int) -> type:
        """A tqdm stand-in for huggingface_hub's `http_get`, drawing on our rich bar."""
        progress = self.progress

        class _Bar:
            def __init__(self, *args, total=None, initial=0, **kwargs):
                progress.update(task_id, total=total, completed=initial)

            def update(self, n=1):
                progress.advance(task_id, n or 0)

            def close(self):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        return _Bar


def _notice(message: str) -> None:
    notice(message)


# --------------------------------------------------------------------------- hashing


def _digest(path: Path, f: RemoteFile, progress: _Progress | None, label: str) -> tuple[str, str]:
    """(expected, actual) digest of a file: sha256 for LFS files, else the git blob id."""
    size = path.stat().st_size
    if f.sha256:
        h, expected = hashlib.sha256(), f.sha256
    else:
        h, expected = hashlib.sha1(f"blob {size}\0".encode()), f.blob_id or ""
    task = progress.task(f"verify {label}", size) if progress and size > 64 * _CHUNK else None
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            if task is not None:
                progress.progress.advance(task, len(chunk))
    return expected, h.hexdigest()


def _check_gguf(path: Path, label: str) -> None:
    try:
        read_header(path)
    except GGUFError as e:
        raise GptcliError(f"{label} is not a valid GGUF file ({e.message})") from None


# --------------------------------------------------------------------------- cache layout


def _snapshot_path(repo_dir: Path, commit: str, filename: str) -> Path:
    check_filename(filename, "the hub")
    base = repo_dir / "snapshots" / commit
    pointer = base / filename
    # Defence in depth: the name was checked, the joined path must stay in the snapshot.
    if not os.path.normpath(pointer).startswith(os.path.normpath(base) + os.sep):
        raise GptcliError(f"refusing a file name that leaves the cache: {filename!r}")
    return pointer


def _link(blob: Path, pointer: Path) -> None:
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        # No symlinks here (Windows without developer mode): huggingface_hub copies too.
        shutil.copyfile(blob, pointer)


def _read_ref(repo_dir: Path, revision: str) -> str | None:
    if is_commit_hash(revision):
        return revision
    try:
        commit = (repo_dir / "refs" / revision).read_text().strip()
    except OSError:
        return None
    return commit if is_commit_hash(commit) else None


def _write_ref(repo_dir: Path, revision: str, commit: str) -> None:
    if is_commit_hash(revision):
        return
    check_filename(revision, "a revision")
    ref = repo_dir / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)


def _local_files(snapshot: Path) -> list[RemoteFile]:
    """The complete GGUF files of a snapshot (a dangling link is not a file)."""
    out = []
    for p in sorted(snapshot.rglob("*")):
        if p.suffix.lower() == ".gguf" and p.is_file():
            out.append(RemoteFile(p.relative_to(snapshot).as_posix(), p.stat().st_size))
    return out


def _snapshots(repo_dir: Path, revision: str) -> list[tuple[str, bool]]:
    """(commit, is current) for each snapshot, the branch's own first, then newest first."""
    root = repo_dir / "snapshots"
    if not root.is_dir():
        return []
    current = _read_ref(repo_dir, revision)
    others = sorted(
        (d for d in root.iterdir() if d.is_dir() and d.name != current),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    out = [(current, True)] if current and (root / current).is_dir() else []
    return out + [(d.name, False) for d in others]


def find_cached(ref: HubRef) -> LocalModel | None:
    """The model `ref` names, if every part of it is in the cache; no network."""
    repo_dir = _repo_dir(ref.repo_id)
    for commit, current in _snapshots(repo_dir, ref.revision):
        snapshot = repo_dir / "snapshots" / commit
        variants = group_variants(_local_files(snapshot))
        try:
            variant, _ = choose(variants, ref)
        except GptcliError:
            continue
        paths = [snapshot / p.path for p in variant.parts]
        return LocalModel(ref.repo_id, commit, variant, paths, current)
    return None


# --------------------------------------------------------------------------- the hub


def remote_variants(ref: HubRef) -> tuple[str, list[Variant]]:
    """(commit, GGUF variants) of a repo on the hub, checked for unsafe names."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    info = api.model_info(ref.repo_id, revision=ref.revision)
    commit = info.sha or ""
    if not is_commit_hash(commit):
        raise GptcliError(f"the hub at {endpoint()} gave no valid commit for {ref.repo_id}")
    files = []
    _pages["n"] = 0
    for n, item in enumerate(api.list_repo_tree(ref.repo_id, revision=commit, recursive=True)):
        if n >= MAX_HUB_FILES:
            raise GptcliError(
                f"the hub at {endpoint()} lists more than {MAX_HUB_FILES} files in "
                f"{ref.repo_id}: refused"
            )
        if not isinstance(item, RepoFile):
            continue
        if item.path.lower().endswith(".gguf"):
            try:
                check_filename(item.path, ref.repo_id)
            except UsageError:
                raise GptcliError(
                    f"refusing {ref.repo_id}: the hub lists a file name that leaves the repo "
                    f"({item.path!r})"
                ) from None
        sha256 = item.lfs.sha256 if item.lfs is not None else None
        files.append(RemoteFile(item.path, item.size, sha256, item.blob_id))
    return commit, group_variants(files)


def list_remote(
    text: str, timeout: float | None = None
) -> tuple[HubRef, list[Variant], Variant | None]:
    """The GGUF files of a repo, and the one `pull` would choose for `text`."""
    ref = parse_ref(text)
    _bounded(timeout)
    with _hub_errors(str(ref)):
        if is_offline():
            raise GptcliError("HF_HUB_OFFLINE is set: listing a repo needs the hub")
        _, variants = remote_variants(ref)
    chosen = None
    if variants:
        try:
            chosen, _ = choose(variants, ref)
        except GptcliError:
            chosen = None
    return ref, variants, chosen


def pull(ref: HubRef, *, label: str | None = None, timeout: float | None = None) -> Pulled:
    """Download `ref` into the HF cache (resuming a partial download), verify every part's
    checksum and GGUF header, and return where it is. Falls back to the cached copy when
    the hub cannot be reached. `timeout`: see hub_timeout."""
    label = label or str(ref)
    _bounded(timeout)
    cached = find_cached(ref)
    if is_offline():
        if cached is None:
            raise GptcliError(
                f"{label} is not in the cache and HF_HUB_OFFLINE is set "
                f"(unset it and run: gptcli pull {label})"
            )
        return Pulled(cached, checked_hub=False, notes=["HF_HUB_OFFLINE is set: cached copy"])
    try:
        commit, variants = remote_variants(ref)
    except Exception as e:
        if cached is not None and _is_unreachable(e):
            return Pulled(
                cached,
                checked_hub=False,
                notes=[f"hub unreachable ({endpoint()}): using the cached copy, not re-checked"],
            )
        translated = _translate(e, label)
        if translated is None:
            raise
        raise translated from None
    variant, picked_default = choose(variants, ref)
    repo_dir = _repo_dir(ref.repo_id)
    downloaded = 0
    with _hub_errors(label), _Progress() as progress:
        for part in variant.parts:
            downloaded += _fetch(ref.repo_id, commit, part, progress)
    _write_ref(repo_dir, ref.revision, commit)
    paths = [_snapshot_path(repo_dir, commit, p.path) for p in variant.parts]
    model = LocalModel(ref.repo_id, commit, variant, paths, current=True)
    return Pulled(model, picked_default=picked_default, downloaded=downloaded)


def _fetch(repo_id: str, commit: str, f: RemoteFile, progress: _Progress) -> int:
    """Put one file in the cache, verified; the number of bytes downloaded."""
    from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    etag = f.etag or ""
    if not (is_sha256(etag) or is_commit_hash(etag)):
        raise GptcliError(f"the hub gave no usable checksum for {repo_id}/{f.path}")
    repo_dir = _repo_dir(repo_id)
    blob = repo_dir / "blobs" / etag
    pointer = _snapshot_path(repo_dir, commit, f.path)
    label = f"{repo_id}/{f.path}"

    if _verified_blob(blob, f, progress, label):
        _link(blob, pointer)
        return 0

    url = hf_hub_url(repo_id, f.path, revision=commit)
    headers = build_hf_headers()
    # HEAD first: it checks access (a gated repo answers here) and the hub's checksum.
    meta = get_hf_file_metadata(url, headers=headers)
    if meta.etag != etag:
        raise GptcliError(
            f"the hub disagrees with itself about {label}: the listing says {etag}, "
            f"the download says {meta.etag}; try again later"
        )
    size = f.size if meta.size is None else meta.size
    location = meta.location or url
    if _origin(location) != _origin(url):
        headers.pop("authorization", None)  # a signed CDN URL: the token stays on the hub

    lock = cache_dir() / ".locks" / repo_dir.name / f"{etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    blob.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):
        if _verified_blob(blob, f, progress, label):  # another process finished it
            _link(blob, pointer)
            return 0
        partial = blob.with_name(f"{etag}.incomplete")
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink()
            have = 0
        free = shutil.disk_usage(blob.parent).free
        if size - have > free:
            raise OSError(errno.ENOSPC, f"needs {human_size(size - have)}")
        start = have
        task = progress.task(f.path.rsplit("/", 1)[-1], size, have)
        bar = progress.bar_class(task)
        stalled = 0
        try:
            while True:
                try:
                    with open(partial, "ab") as out:
                        _http_get(location, out, have, headers, size, f.path, bar)
                    break
                except Exception as e:
                    now = partial.stat().st_size if partial.exists() else 0
                    stalled = 0 if now > have else stalled + 1
                    if not _is_unreachable(e):
                        raise
                    if stalled >= _MAX_STALLED_ATTEMPTS:
                        raise GptcliError(
                            f"the connection to {endpoint()} keeps dropping while downloading "
                            f"{label}; {human_size(now)} of {human_size(size)} are kept as a "
                            "partial download: run the same command again to resume"
                        ) from None
                    have = now  # the connection dropped after some bytes: resume
        except KeyboardInterrupt:
            done = partial.stat().st_size if partial.exists() else 0
            _notice(
                f"interrupted: {human_size(done)} of {human_size(size)} kept as a partial "
                "download; run the same command again to resume"
            )
            raise
        expected, actual = _digest(partial, f, progress, label)
        if expected != actual:
            partial.unlink(missing_ok=True)
            raise GptcliError(
                f"checksum mismatch for {label}: got {actual}, the hub says {expected}; "
                "the download was removed from the cache, try again"
            )
        try:
            _check_gguf(partial, label)
        except GptcliError:
            partial.unlink(missing_ok=True)
            raise
        os.chmod(partial, 0o644)
        os.replace(partial, blob)
    _link(blob, pointer)
    return size - start


def _http_get(url, out, resume_size, headers, size, name, bar) -> None:
    from huggingface_hub.file_download import http_get

    http_get(
        url,
        out,
        resume_size=resume_size,
        headers=headers,
        expected_size=size,
        displayed_filename=name,
        tqdm_class=bar,
    )


def _verified_blob(blob: Path, f: RemoteFile, progress: _Progress | None, label: str) -> bool:
    """True when the cache already holds these exact bytes; a wrong blob is removed."""
    if not blob.is_file():
        return False
    expected, actual = _digest(blob, f, progress, label)
    if expected == actual:
        return True
    _notice(f"the cached copy of {label} is damaged (checksum mismatch): downloading it again")
    blob.unlink()
    return False


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlparse(url)
    return u.scheme, (u.hostname or "").lower(), u.port


# --------------------------------------------------------------------------- for model/resolve.py


def cached_or_pulled(ref: HubRef, label: str | None = None) -> LocalModel:
    """`-m REF`: the cached model, else pull it first (progress on stderr)."""
    label = label or str(ref)
    cached = find_cached(ref)
    if cached is None:
        if is_offline():
            raise GptcliError(
                f"{label} is not in the cache and HF_HUB_OFFLINE is set "
                f"(unset it and run: gptcli pull {label})"
            )
        _notice(f"{label} is not in the cache: pulling it from {endpoint()}")
        pulled = pull(ref, label=label)
        announce(pulled)
        cached = pulled.model
    return cached


def announce(pulled: Pulled) -> None:
    """What a pull did, on stderr."""
    m = pulled.model
    for note in pulled.notes:
        _notice(note)
    if pulled.picked_default:
        _notice(f"no quant given: picked {m.variant.quant or m.variant.first.path}")
    if pulled.checked_hub:
        what = (
            f"downloaded {human_size(pulled.downloaded)}"
            if pulled.downloaded
            else "already up to date"
        )
        _notice(f"{m.name}: {what}, sha256 and GGUF header verified")


# --------------------------------------------------------------------------- list and rm


def cached_models() -> list[LocalModel]:
    """Every GGUF model in the HF cache (pulled by gptcli or by another tool)."""
    root = cache_dir()
    out: list[LocalModel] = []
    if not root.is_dir():
        return out
    for repo_dir in sorted(root.glob("models--*")):
        repo_id = repo_dir.name[len("models--") :].replace("--", "/")
        for commit, current in _snapshots(repo_dir, "main"):
            snapshot = repo_dir / "snapshots" / commit
            for variant in group_variants(_local_files(snapshot)):
                paths = [snapshot / p.path for p in variant.parts]
                out.append(LocalModel(repo_id, commit, variant, paths, current))
    return out


def remove(text: str) -> Removed:
    """Remove a pulled model (every part, every snapshot holding it) from the cache;
    never a file outside it."""
    root = cache_dir()
    path = Path(text).expanduser()
    if path.exists():
        if not _inside(path.absolute(), root):
            raise GptcliError(
                f"not in the hub cache: {text} (gptcli rm removes pulled models only; "
                f"the cache is {root})"
            )
        raise UsageError(f"name the model, not its path: gptcli list shows names ({text})")
    ref = parse_ref(text)
    targets = [
        m
        for m in cached_models()
        if m.repo_id == ref.repo_id and _matches(m.variant, ref) and _inside(m.path, root)
    ]
    if not targets:
        raise GptcliError(f"not in the cache: {text} (gptcli list shows the pulled models)")
    repo_dir = _repo_dir(ref.repo_id)
    pointers = [p for m in targets for p in m.paths]
    freed = _delete(repo_dir, pointers, root)
    names = sorted({m.name for m in targets})
    return Removed(names, freed)


def _matches(variant: Variant, ref: HubRef) -> bool:
    if ref.filename:
        return any(p.path == ref.filename for p in variant.parts)
    if ref.quant:
        return variant.quant == ref.quant
    return True  # owner/repo: every GGUF model of the repo


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
        return True
    except ValueError:
        return False


def _delete(repo_dir: Path, pointers: list[Path], root: Path) -> int:
    """Unlink snapshot entries, then the blobs no other entry points at; tidy empty
    folders and refs. Returns the bytes freed."""
    freed = 0
    blobs: set[Path] = set()
    for p in pointers:
        if not _inside(p, repo_dir):
            continue
        if p.is_symlink():
            target = Path(os.path.abspath(p.parent / os.readlink(p)))
            if _inside(target, repo_dir / "blobs"):
                blobs.add(target)
        elif p.is_file():
            freed += p.stat().st_size  # a copy, where symlinks are not supported
        p.unlink(missing_ok=True)
    still_used = set()
    for p in (repo_dir / "snapshots").rglob("*"):
        if p.is_symlink():
            still_used.add(Path(os.path.abspath(p.parent / os.readlink(p))))
    for blob in blobs - still_used:
        if blob.is_file() and not blob.is_symlink():
            freed += blob.stat().st_size
        blob.unlink(missing_ok=True)
        blob.with_name(blob.name + ".incomplete").unlink(missing_ok=True)
        (root / ".locks" / repo_dir.name / f"{blob.name}.lock").unlink(missing_ok=True)
    _tidy(repo_dir, root)
    return freed


def _tidy(repo_dir: Path, root: Path) -> None:
    snapshots = repo_dir / "snapshots"
    for d in sorted(snapshots.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            d.rmdir()
    live = {d.name for d in snapshots.iterdir()} if snapshots.is_dir() else set()
    refs = repo_dir / "refs"
    if refs.is_dir():
        for ref in refs.rglob("*"):
            if ref.is_file() and ref.read_text().strip() not in live:
                ref.unlink()
    if not live and _inside(repo_dir, root) and repo_dir.name.startswith("models--"):
        blobs = repo_dir / "blobs"
        if not blobs.is_dir() or not any(blobs.iterdir()):
            shutil.rmtree(repo_dir, ignore_errors=True)
            shutil.rmtree(root / ".locks" / repo_dir.name, ignore_errors=True)

"""What a hub reference means, without touching the network: parsing `owner/repo:QUANT`,
`owner/repo/file.gguf` and `owner/repo`, reading quant types and split parts from file
names, and choosing a file. Pure functions: no huggingface_hub import here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gptcli.errors import GptcliError, UsageError

DEFAULT_REVISION = "main"

# Q4_K_M first (the usual size/quality balance), then the nearest in size and quality.
QUANT_PREFERENCE = (
    "Q4_K_M",
    "Q4_K_S",
    "Q4_K_L",
    "Q5_K_M",
    "Q4_0",
    "Q4_1",
    "IQ4_XS",
    "IQ4_NL",
    "Q5_K_S",
    "Q5_0",
    "Q5_1",
    "Q3_K_L",
    "Q6_K",
    "Q3_K_M",
    "Q8_0",
    "Q3_K_S",
    "IQ3_M",
    "Q2_K",
    "F16",
    "BF16",
    "F32",
)

_HUB_PREFIXES = (
    "https://huggingface.co/",
    "http://huggingface.co/",
    "https://hf.co/",
    "http://hf.co/",
    "huggingface.co/",
    "hf.co/",
)
# The hub's own rule for owner and repo names (huggingface_hub.utils.validate_repo_id).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q[1-8]_(?:K(?:_XXL|_XL|_[SML])?|[01](?:_\d_\d)?|NL|XXS|XS|S|M|L)"
    r"|TQ[12]_0|BF16|F16|F32|MXFP4(?:_MOE)?))(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HubRef:
    """A model on the hub: a repo, and optionally a quant or an exact file."""

    repo_id: str
    quant: str | None = None
    filename: str | None = None
    revision: str = DEFAULT_REVISION

    def __str__(self) -> str:
        if self.filename:
            return f"{self.repo_id}/{self.filename}"
        return f"{self.repo_id}:{self.quant}" if self.quant else self.repo_id


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo, with what the hub says about its bytes."""

    path: str
    size: int
    sha256: str | None = None  # LFS files: the sha256 of the content
    blob_id: str | None = None  # the git blob id (sha1 of the git object)

    @property
    def etag(self) -> str | None:
        """The name the HF cache gives the blob: sha256 for LFS files, else the git id."""
        return self.sha256 or self.blob_id


@dataclass
class Variant:
    """One loadable model in a repo: a single GGUF, or all parts of a split one."""

    quant: str | None
    parts: list[RemoteFile] = field(default_factory=list)

    @property
    def first(self) -> RemoteFile:
        return self.parts[0]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def label(self) -> str:
        """The file name users see; a split model shows its first part and the count."""
        name = self.first.path
        return f"{name} (+{len(self.parts) - 1} parts)" if len(self.parts) > 1 else name


def parse_ref(text: str) -> HubRef:
    """Parse `owner/repo`, `owner/repo:QUANT` or `owner/repo/path/file.gguf`
    (a `hf.co/` or `https://huggingface.co/` prefix is accepted)."""
    raw = text.strip()
    for prefix in _HUB_PREFIXES:
        if raw.lower().startswith(prefix):
            raw = raw[len(prefix) :]
            break
    quant = None
    parts = raw.split("/")
    if len(parts) == 2 and ":" in parts[1]:
        name, quant = parts[1].split(":", 1)
        parts[1] = name
        if not _QUANT.fullmatch(quant):
            raise UsageError(
                f"not a quant type: {quant!r} in {text!r} (for example Q4_K_M, Q8_0, F16)"
            )
    if len(parts) < 2 or not all(parts[:2]):
        raise UsageError(
            f"not a hub reference: {text!r} (expected owner/repo, owner/repo:QUANT "
            "or owner/repo/file.gguf)"
        )
    for name in parts[:2]:
        if not _NAME.match(name) or ".." in name or "--" in name:
            raise UsageError(f"not a valid hub repo name: {parts[0]}/{parts[1]!s} (in {text!r})")
    repo_id = f"{parts[0]}/{parts[1]}"
    if len(parts) == 2:
        return HubRef(repo_id, quant=normalise_quant(quant) if quant else None)
    filename = "/".join(parts[2:])
    check_filename(filename, text)
    if not filename.lower().endswith(".gguf"):
        raise UsageError(f"a file reference must name a .gguf file: {text!r}")
    return HubRef(repo_id, filename=filename)


def check_filename(filename: str, origin: str) -> None:
    """Refuse a repo path that could leave the cache folder it is stored in."""
    pieces = filename.split("/")
    if (
        not filename
        or filename.startswith("/")
        or "\\" in filename
        or "\0" in filename
        or any(p in ("", ".", "..") for p in pieces)
        or re.match(r"^[A-Za-z]:", filename)
    ):
        raise UsageError(f"unsafe file name {filename!r} (from {origin}): it must stay in the repo")


def is_commit_hash(text: str) -> bool:
    return bool(_HEX40.match(text or ""))


def is_sha256(text: str) -> bool:
    return bool(_HEX64.match(text or ""))


def normalise_quant(quant: str) -> str:
    q = quant.upper()
    return "UD-" + q[3:] if q.startswith("UD-") else q


def quant_of(filename: str) -> str | None:
    """The quant type written in a GGUF file name (`...-Q4_K_M.gguf` -> `Q4_K_M`)."""
    base = filename.rsplit("/", 1)[-1]
    base = _SPLIT.sub("", base)
    base = re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    found = _QUANT.findall(base)
    return normalise_quant(found[-1]) if found else None


def split_of(filename: str) -> tuple[int, int] | None:
    """(part, total) for a split GGUF (`-00001-of-00003.gguf`), else None."""
    m = _SPLIT.search(filename)
    return (int(m.group(1)), int(m.group(2))) if m else None


def is_projector(filename: str) -> bool:
    # mmproj files hold a vision encoder, not a language model: never a default choice.
    return filename.rsplit("/", 1)[-1].lower().startswith("mmproj")


def group_variants(files: list[RemoteFile]) -> list[Variant]:
    """GGUF files grouped into loadable models: split parts joined, incomplete split
    sets dropped, projectors left out."""
    singles: list[Variant] = []
    splits: dict[tuple[str, int], list[RemoteFile]] = {}
    for f in files:
        if not f.path.lower().endswith(".gguf") or is_projector(f.path):
            continue
        split = split_of(f.path)
        if split is None:
            singles.append(Variant(quant_of(f.path), [f]))
        else:
            stem = _SPLIT.sub("", f.path)
            splits.setdefault((stem, split[1]), []).append(f)
    for (_, total), parts in splits.items():
        parts.sort(key=lambda p: split_of(p.path)[0])
        if [split_of(p.path)[0] for p in parts] == list(range(1, total + 1)):
            singles.append(Variant(quant_of(parts[0].path), parts))
    return sorted(singles, key=lambda v: (_rank(v.quant), v.size, v.first.path))


def _rank(quant: str | None) -> int:
    if quant in QUANT_PREFERENCE:
        return QUANT_PREFERENCE.index(quant)
    return len(QUANT_PREFERENCE)


def choose(variants: list[Variant], ref: HubRef) -> tuple[Variant, bool]:
    """The variant `ref` asks for, and whether it was picked by default (no quant,
    no file given). Raises a GptcliError that lists what there is."""
    if not variants:
        raise GptcliError(f"{ref.repo_id} has no GGUF model files (gptcli runs GGUF only)")
    if ref.filename:
        for v in variants:
            if any(p.path == ref.filename for p in v.parts):
                return v, False
        names = ", ".join(v.first.path for v in variants)
        raise GptcliError(f"no file {ref.filename} in {ref.repo_id}; its GGUF files: {names}")
    if ref.quant:
        matches = [v for v in variants if v.quant == ref.quant]
        if matches:
            return matches[0], False
        raise GptcliError(
            f"no {ref.quant} file in {ref.repo_id}; available: {available_quants(variants)}"
        )
    return variants[0], True


def available_quants(variants: list[Variant]) -> str:
    seen: list[str] = []
    for v in variants:
        name = v.quant or v.first.path
        if name not in seen:
            seen.append(name)
    return ", ".join(seen)


def human_size(n: int) -> str:
    """Decimal units, as the hub shows sizes."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"

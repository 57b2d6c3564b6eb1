"""A model's name as a person would write it, the same in every view.

A GGUF's `general.name` is often a training-run label ("Smollm2 135M 8k Lc100K Mix1
Ep2"). The file name usually carries the name its authors wrote, with the
quantization as a suffix ("SmolLM2-135M-Instruct.Q4_1.gguf"): that is preferred when
it names the same model as `general.basename`; else basename and size label; the
quantization is shown apart."""

from __future__ import annotations

import re

from gptcli.model.gguf_check import GGUFHeader, _file_type_name

_QUANT_SUFFIX = re.compile(
    r"[-._](?P<q>(?:I?Q\d[A-Z0-9_]*)|F16|BF16|F32|FP16)(?:-\d{5}-of-\d{5})?$", re.IGNORECASE
)


def _stem(header: GGUFHeader) -> tuple[str, str | None]:
    stem = header.path.name
    if stem.lower().endswith(".gguf"):
        stem = stem[:-5]
    m = _QUANT_SUFFIX.search(stem)
    if m:
        return stem[: m.start()], m.group("q").upper()
    return stem, None


def display_name(header: GGUFHeader) -> str:
    stem, _ = _stem(header)
    base = header.metadata.get("general.basename")
    size = header.metadata.get("general.size_label")
    squash = re.compile(r"[^a-z0-9]")
    if isinstance(base, str) and base.strip():
        if squash.sub("", base.lower()) in squash.sub("", stem.lower()):
            return stem
        return f"{base} {size}" if isinstance(size, str) and size.strip() else base
    return stem or str(header.metadata.get("general.name") or header.path.name)


def quantization(header: GGUFHeader) -> str | None:
    """Q4_1, Q8_0, F16...: from the file name, else the header's file type."""
    _, quant = _stem(header)
    if quant:
        return quant

    name = _file_type_name(header)
    return name.split()[-1] if name else None


def label(header: GGUFHeader) -> str:
    """`SmolLM2-135M-Instruct (Q4_1)`: the name with the quantization apart."""
    quant = quantization(header)
    return f"{display_name(header)} ({quant})" if quant else display_name(header)

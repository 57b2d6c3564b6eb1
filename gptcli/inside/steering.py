"""Control vectors: one direction per layer, added to the residual stream.

The file format is llama.cpp's own (common/common.cpp reads it, tools/cvector-generator
writes it), so vectors go both ways: a GGUF with `general.architecture =
controlvector`, `controlvector.model_hint`, `controlvector.layer_count` and one F32 1-D
tensor `direction.N` of n_embd floats per layer N >= 1. Direction N is added to the
output of layer N (`l_out-N`); llama.cpp never steers layer 0.

Making a vector (`make_vector`): for each pair of prompts, the difference of their
residual streams after each layer, reduced over pairs by the mean or by PCA's first
component, then scaled to unit length per layer (as llama.cpp's generator does, so a
scale means the same in both tools).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.llama.capture import RESIDUAL, by_layer, capture, wanting
from gptcli.model.gguf_check import GGUFError, printable, read_header

ARCH = "controlvector"
_DIRECTION = re.compile(r"^direction\.([0-9]{1,4})$")
MAX_SCALE = 1000.0  # past this every logit is noise; a typo more likely than an intent
# llama.cpp's generator drops the rows where positive and negative agree (the shared
# prefix of a pair: causal attention makes them identical): every element <= this.
ZERO_ROW = 1e-6


@dataclass
class ControlVector:
    directions: dict[int, np.ndarray]  # layer N >= 1 -> (n_embd,) float32
    n_embd: int
    model_hint: str = ""
    path: Path | None = None

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def norms(self) -> dict[int, float]:
        return {n: float(np.linalg.norm(d)) for n, d in sorted(self.directions.items())}


# -- the file ---------------------------------------------------------------------


def read_vector(path: str | Path) -> ControlVector:
    """A control-vector GGUF, after the project's bounded header check; the tensors
    are read at the offsets that check validated."""
    path = Path(path)
    try:
        header = read_header(path)
    except GGUFError as e:
        raise GptcliError(f"control vector {path}: {e.message}") from None
    arch = header.metadata.get("general.architecture", ARCH)
    if arch != ARCH:
        raise GptcliError(
            f"{path} is not a control vector (general.architecture is "
            f"{printable(str(arch), 40)}): give a file made by `gptcli steer make` or "
            "llama-cvector-generator"
        )
    directions: dict[int, np.ndarray] = {}
    n_embd = None
    with open(path, "rb") as f:
        for t in header.tensors:
            m = _DIRECTION.match(t.name)
            if not m or int(m.group(1)) == 0:
                raise GptcliError(
                    f"control vector {path}: tensor {printable(t.name, 64)} is not direction.N "
                    "with N >= 1"
                )
            if t.type != 0 or len(t.shape) != 1:
                raise GptcliError(f"control vector {path}: {t.name} is not a 1-D F32 tensor")
            if n_embd is None:
                n_embd = t.shape[0]
            elif t.shape[0] != n_embd:
                raise GptcliError(
                    f"control vector {path}: {t.name} has {t.shape[0]} floats, the others {n_embd}"
                )
            f.seek(t.offset)
            data = np.frombuffer(f.read(t.nbytes), dtype="<f4").astype(np.float32)
            if not np.isfinite(data).all():
                raise GptcliError(f"control vector {path}: {t.name} holds NaN or infinity")
            layer = int(m.group(1))
            # llama.cpp adds tensors that name the same layer twice; so do we
            directions[layer] = directions.get(layer, 0) + data
    if n_embd is None:
        raise GptcliError(f"control vector {path} holds no direction tensor")
    hint = header.metadata.get(f"{ARCH}.model_hint", "")
    return ControlVector(directions, n_embd, hint if isinstance(hint, str) else "", path)


def write_vector(path: str | Path, vector: ControlVector) -> None:
    """Write llama.cpp's control-vector GGUF (as tools/cvector-generator does)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_string(f"{ARCH}.model_hint", vector.model_hint)
    writer.add_int32(f"{ARCH}.layer_count", len(vector.directions))
    for layer in vector.layers:
        writer.add_tensor(
            f"direction.{layer}", np.ascontiguousarray(vector.directions[layer], np.float32)
        )
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except OSError as e:
        raise GptcliError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        writer.close()


# -- applying ------------------------------------------------------------------------


@dataclass(frozen=True)
class SteerSpec:
    path: Path
    scale: float

    @property
    def label(self) -> str:
        return f"{self.path.name}:{self.scale:g}"


def parse_spec(text: str) -> SteerSpec:
    """`FILE[:SCALE]` (scale 1 when absent)."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            pass  # a colon in the file name
        else:
            path = head
    if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
        raise UsageError(f"--steer {text}: the scale must be a number within ±{MAX_SCALE:g}")
    return SteerSpec(Path(path), scale)


def parse_layers(text: str | None, n_layer: int) -> tuple[int, int]:
    """`A-B` (both inclusive) within the layers llama.cpp steers, 1..n_layer-1."""
    last = n_layer - 1
    if text is None:
        return 1, last
    m = re.fullmatch(r"\s*([0-9]{1,4})\s*-\s*([0-9]{1,4})\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)) <= last:
        raise UsageError(
            f"--steer-layers must be A-B with 1 <= A <= B <= {last} (the model has "
            f"{n_layer} layers; layer 0 is never steered), got {text!r}"
        )
    return int(m.group(1)), int(m.group(2))


def check_fits(vector: ControlVector, n_embd: int, n_layer: int, model: str) -> None:
    """One line when the vector was made for another shape of model."""
    top = max(vector.layers)
    if vector.n_embd != n_embd or top > n_layer - 1:
        hint = f" (made for {printable(vector.model_hint, 40)})" if vector.model_hint else ""
        raise GptcliError(
            f"control vector {vector.path} does not fit {model}: its directions are "
            f"{vector.n_embd} wide for layers {min(vector.layers)}-{top}{hint}, the model's "
            f"residual stream is {n_embd} wide with layers 1-{n_layer - 1} to steer"
        )


def combine(
    vectors: Sequence[tuple[ControlVector, float]], n_embd: int, n_layer: int
) -> np.ndarray:
    """llama_set_adapter_cvec's buffer: (n_layer - 1, n_embd), row N-1 for layer N, the
    sum of each vector times its scale."""
    data = np.zeros((n_layer - 1, n_embd), dtype=np.float64)
    for vector, scale in vectors:
        for layer, d in vector.directions.items():
            data[layer - 1] += scale * d.astype(np.float64)
    return data.astype(np.float32)


def load_specs(specs: Sequence[str], n_embd: int, n_layer: int, model: str):
    """Parse, read and check every `--steer FILE[:SCALE]`: [(vector, scale)]."""
    out = []
    for text in specs:
        spec = parse_spec(text)
        vector = read_vector(spec.path)
        check_fits(vector, n_embd, n_layer, model)
        out.append((vector, spec.scale))
    return out


# -- making -----------------------------------------------------------------------

POSITIONS = ("all", "last")
METHODS = ("mean", "pca")


def _l_out(engine, tokens: list[int]) -> dict[int, np.ndarray]:
    return by_layer(capture(engine, tokens, wanting({RESIDUAL})).tensors, RESIDUAL)


def pair_differences(
    engine, pos: list[int], neg: list[int], positions: str, pad: int
) -> dict[int, np.ndarray]:
    """Per layer, positive minus negative residual stream: (rows, n_embd).

    `last`: one row, each prompt's last position. `all`: llama.cpp's convention, the
    shorter prompt padded with the `pad` token, every position whose difference is not
    zero (the shared prefix drops out)."""
    if positions == "last":
        a, b = _l_out(engine, pos), _l_out(engine, neg)
        return {n: (a[n][-1] - b[n][-1])[None, :] for n in a}
    n = max(len(pos), len(neg))
    a = _l_out(engine, pos + [pad] * (n - len(pos)))
    b = _l_out(engine, neg + [pad] * (n - len(neg)))
    out = {}
    for layer in a:
        diff = a[layer] - b[layer]
        out[layer] = diff[~(diff <= ZERO_ROW).all(axis=1)]
    return out


def reduce(rows: np.ndarray, method: str) -> np.ndarray:
    """One unit direction from the difference rows (rows, n_embd)."""
    rows = rows.astype(np.float64)
    if method == "mean":
        d = rows.mean(axis=0)
    else:
        # PCA's first component of the differences (not centred: the mean difference is
        # the signal), with its sign fixed so positive minus negative projects positively
        # (llama.cpp's generator leaves it random, its issue #8724).
        _, _, vt = np.linalg.svd(rows, full_matrices=False)
        d = vt[0]
        if (rows @ d).mean() < 0:
            d = -d
    norm = np.linalg.norm(d)
    return (d / norm if norm > 0 else d).astype(np.float32)


def make_vector(
    engine,
    pairs: Sequence[tuple[str, str]],
    *,
    method: str = "mean",
    positions: str = "all",
    layers: tuple[int, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ControlVector:
    """A control vector from (positive, negative) prompt pairs; direction N is read
    from the residual stream after layer N (`l_out-N`), where it will be added."""
    if method not in METHODS:
        raise UsageError(f"--method must be mean or pca, got {method!r}")
    if positions not in POSITIONS:
        raise UsageError(f"--positions must be all or last, got {positions!r}")
    n_layer = engine.n_layer
    first, last = layers or (1, n_layer - 1)
    pad = engine.tokenize(" ", add_bos=False)[-1]
    rows: dict[int, list[np.ndarray]] = {n: [] for n in range(first, last + 1)}
    for i, (p, q) in enumerate(pairs):
        pos = engine.tokenize(p, special=True)
        neg = engine.tokenize(q, special=True)
        if not pos or not neg:
            raise UsageError(f"pair {i + 1} has an empty prompt")
        diffs = pair_differences(engine, pos, neg, positions, pad)
        for n in rows:
            rows[n].append(diffs[n])
        if progress is not None:
            progress(i + 1, len(pairs))
    directions = {}
    for n, parts in rows.items():
        stacked = np.concatenate(parts, axis=0)
        if len(stacked) == 0:
            raise UsageError(
                "every pair's prompts give the same residual stream: nothing tells them apart"
            )
        directions[n] = reduce(stacked, method)
    return ControlVector(directions, engine.n_embd, engine.header.architecture)


def chat_steer(engine, arg: str) -> str:
    """The chat's `/steer FILE [SCALE]` (adds a vector to the current ones), `/steer off`
    and `/steer` (what is applied); returns the line to show."""
    current = engine.steering
    if not arg:
        if current is None:
            return "(no control vector)"
        data, first, last = current
        norms = np.linalg.norm(data, axis=1)
        return f"(steering layers {first}-{last}, largest norm {norms.max():.2f})"
    if arg.lower() == "off":
        engine.set_steering(None)
        return "(steering off)"
    parts = arg.rsplit(None, 1)
    spec = f"{parts[0]}:{parts[1]}" if len(parts) == 2 and _is_number(parts[1]) else arg
    [(vector, scale)] = load_specs([spec], engine.n_embd, engine.n_layer, engine.name)
    data = combine([(vector, scale)], engine.n_embd, engine.n_layer)
    first, last = 1, engine.n_layer - 1
    if current is not None:
        data, first, last = data + current[0], current[1], current[2]
    engine.set_steering(data, first, last)
    return f"(steering with {vector.path.name} × {scale:g}; the conversation is re-read under it)"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

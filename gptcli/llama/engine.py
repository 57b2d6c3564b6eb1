"""The only module that touches llama.cpp (through llama-cpp-python).

Load a GGUF file (memory-mapped), tokenize and detokenize, evaluate tokens in
batches, hand back the last position's logits, and keep the evaluated prefix in
the KV cache so the next call only evaluates what is new.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.llama.resources import check_context_fits, check_model_fits
from gptcli.model.gguf_check import GGUFHeader, read_header
from gptcli.sampling.sampler import Draw, top_k_ids

DEFAULT_CTX = 4096


def usable_cores() -> int:
    """Cores this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass
class EngineOptions:
    n_ctx: int = 0  # 0: the model's trained context, capped at DEFAULT_CTX
    n_threads: int | None = None  # None: every usable core
    n_gpu_layers: int | None = None  # None: all layers when the backend can offload
    n_batch: int = 512
    verbose: bool = False
    vocab_only: bool = False  # tokenizer only: no weights read, no context (tokenize)


_log_callback = None  # keep the ctypes callback alive for the process
_verbose = False  # what set_verbose last chose (a grammar's parse restores it)


def _llama():
    """Import llama_cpp once, silence its logging, initialise the backend."""
    global _log_callback
    import llama_cpp

    if _log_callback is None:

        @llama_cpp.llama_log_callback
        def _quiet(level, text, user_data):  # llama.cpp writes to stderr otherwise
            return None

        _log_callback = _quiet
        llama_cpp.llama_backend_init()
    return llama_cpp


def set_verbose(verbose: bool) -> None:
    """Let llama.cpp's own log through to stderr (`--verbose`), or silence it."""
    global _verbose
    _verbose = verbose
    llama_cpp = _llama()
    if verbose:
        # A NULL pointer of the callback type (ctypes refuses None here): llama.cpp's
        # own logger, which writes to stderr.
        llama_cpp.llama_log_set(llama_cpp.llama_log_callback(), ctypes.c_void_p(0))
    else:
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def supports_gpu_offload() -> bool:
    return bool(_llama().llama_supports_gpu_offload())


def system_info() -> str:
    return _llama().llama_print_system_info().decode("utf-8", errors="replace").strip()


def backend_version() -> str:
    import llama_cpp

    return getattr(llama_cpp, "__version__", "unknown")


class Engine:
    """A loaded model and one context (sequence 0) with its evaluated tokens."""

    def __init__(
        self,
        path: str | Path,
        options: EngineOptions | None = None,
        header: GGUFHeader | None = None,
    ):
        options = options or EngineOptions()
        self.path = Path(path)
        # Untrusted file: our own bounded header check runs before llama.cpp reads it.
        self.header = header or read_header(self.path)
        if not options.vocab_only:  # a tokenizer-only load reads no weights
            check_model_fits(self.path, self.header.file_size)
        llama_cpp = _llama()
        set_verbose(options.verbose)
        from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel

        t0 = time.perf_counter()
        mparams = llama_cpp.llama_model_default_params()
        mparams.use_mmap = True
        n_gpu = options.n_gpu_layers
        if n_gpu is None:
            n_gpu = -1 if llama_cpp.llama_supports_gpu_offload() else 0
        mparams.n_gpu_layers = n_gpu
        mparams.vocab_only = options.vocab_only
        # The AMX weight buffers that -march=native builds add on Sapphire Rapids die with
        # SIGILL (tilezero) where the sandbox or kernel does not grant AMX: plain CPU buffers.
        mparams.use_extra_bufts = False
        try:
            self._model = LlamaModel(
                path_model=str(self.path), params=mparams, verbose=options.verbose
            )
        except (ValueError, RuntimeError):
            # The header passed gptcli's check: llama.cpp's reason is in its log only.
            raise GptcliError(
                f"llama.cpp could not load {self.path} (it refused what gptcli's header "
                "check let through, often an architecture or tensor type this llama.cpp "
                "does not know; --verbose shows llama.cpp's own reason)"
            ) from None
        self.n_ctx_train = int(self._model.n_ctx_train())
        if options.vocab_only:
            self._init_vocab(llama_cpp, n_gpu, t0)
            return
        n_ctx = options.n_ctx or min(self.n_ctx_train or DEFAULT_CTX, DEFAULT_CTX)
        if n_ctx < 8:
            raise UsageError(f"--ctx must be at least 8 tokens, got {n_ctx}")
        self.n_threads = options.n_threads or usable_cores()
        check_context_fits(n_ctx, self.kv_bytes_per_token())
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = min(options.n_batch, n_ctx)
        cparams.n_ubatch = min(options.n_batch, n_ctx)
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.n_seq_max = 1
        try:
            self._ctx = LlamaContext(model=self._model, params=cparams, verbose=options.verbose)
        except (ValueError, RuntimeError):
            self._model.close()
            raise GptcliError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {self.path} "
                "(out of memory? try a smaller --ctx)"
            ) from None
        # llama.cpp may round the context up (to 256); keep to what the user asked for.
        self.n_ctx = min(n_ctx, int(llama_cpp.llama_n_ctx(self._ctx.ctx)))
        self.n_batch = int(cparams.n_batch)
        self._batch = LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1)
        self._init_vocab(llama_cpp, n_gpu, t0)

    def kv_bytes_per_token(self) -> int:
        """Bytes of f16 keys and values one token takes in the KV cache."""
        lib, m = _llama(), self._model.model
        n_head = max(1, int(lib.llama_model_n_head(m)))
        head_dim = int(lib.llama_model_n_embd(m)) // n_head
        return (
            2 * 2 * int(lib.llama_model_n_layer(m)) * int(lib.llama_model_n_head_kv(m)) * head_dim
        )

    def _init_vocab(self, llama_cpp, n_gpu: int, t0: float) -> None:
        """State for tokenizing and detokenizing; all a vocab-only engine has."""
        self._vocab = self._model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.n_gpu_layers = n_gpu
        self.load_seconds = time.perf_counter() - t0
        self.tokens: list[int] = []  # what the KV cache holds, in order
        self.last_prefill_evaluated = 0  # tokens the last prefill had to evaluate
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._logits_view: tuple[int, np.ndarray] | None = None  # (address, array over it)
        self._one = None  # advance()'s one-token batch, made on first use
        self._piece_buf = ctypes.create_string_buffer(256)
        self._lib = llama_cpp

    # -- model facts -------------------------------------------------------

    @property
    def name(self) -> str:
        from gptcli.model.naming import label  # as a person writes it, quantization apart

        return label(self.header)

    @property
    def chat_template(self) -> str | None:
        tpl = self.header.metadata.get("tokenizer.chat_template")
        return tpl if isinstance(tpl, str) and tpl.strip() else None

    @property
    def bos_id(self) -> int:
        return int(self._lib.llama_vocab_bos(self._vocab))

    @property
    def eos_id(self) -> int:
        return int(self._lib.llama_vocab_eos(self._vocab))

    @property
    def add_bos(self) -> bool:
        return bool(self._lib.llama_vocab_get_add_bos(self._vocab))

    def is_eog(self, token: int) -> bool:
        """End of generation: EOS, EOT and the like."""
        eog = self._eog.get(token)
        if eog is None:  # asked once per token id: the loop skips a ctypes call each step
            eog = self._eog[token] = bool(self._lib.llama_vocab_is_eog(self._vocab, token))
        return eog

    def is_control(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_control(self._vocab, token))

    def vocabulary(self) -> tuple[list[bytes], list[int]]:
        """Every token's text as the file stores it and its attributes (control,
        user-defined, ...), by id: what two models must share for their token ids to mean
        the same text (compare)."""
        lib, vocab, ids = self._lib, self._vocab, range(self.n_vocab)
        texts = [lib.llama_vocab_get_text(vocab, t) for t in ids]
        return texts, [lib.llama_vocab_get_attr(vocab, t) for t in ids]

    # -- text <-> tokens ---------------------------------------------------

    def tokenize(
        self, text: str, *, add_bos: bool | None = None, special: bool = False
    ) -> list[int]:
        """Text to token ids. `special` parses special tokens such as `<|im_start|>`."""
        if add_bos is None:
            add_bos = self.add_bos
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:  # undecodable argv bytes arrive as surrogates
            raise UsageError(f"the text is not valid UTF-8 (character {e.start})") from None
        n_max = len(data) + 8
        buf = (self._lib.llama_token * n_max)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_bos, special)
        if n < 0:  # buffer too small: llama.cpp says how much it needs
            n_max = -n
            buf = (self._lib.llama_token * n_max)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_bos, special)
            if n < 0:
                raise GptcliError("llama.cpp failed to tokenize the text")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The exact bytes of one token (special tokens rendered as their text)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        if not 0 <= token < self.n_vocab:
            raise GptcliError(f"token id {token} is outside the vocabulary (0..{self.n_vocab - 1})")
        buf = self._piece_buf
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        piece = bytes(buf.raw[:n])
        self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        return b"".join(self.piece(t) for t in tokens)

    # -- evaluation --------------------------------------------------------

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def _check_room(self, n_new: int) -> None:
        if self.n_past + n_new > self.n_ctx:
            raise ContextFull(self.n_past + n_new, self.n_ctx)

    def _decode(self, tokens: Sequence[int], logits_all: bool = False) -> None:
        """Evaluate tokens after the current ones, in batches of n_batch."""
        self._check_room(len(tokens))
        batch = self._batch.batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            n_past = self.n_past
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = n_past + i
                batch.seq_id[i][0] = 0
                batch.n_seq_id[i] = 1
                batch.logits[i] = logits_all
            batch.logits[len(chunk) - 1] = True
            batch.n_tokens = len(chunk)
            rc = self._lib.llama_decode(self._ctx.ctx, batch)
            if rc != 0:
                self.forget_from(n_past)
                if rc == 1:
                    raise ContextFull(n_past + len(chunk), self.n_ctx)
                raise GptcliError(f"llama.cpp failed to evaluate the tokens (llama_decode {rc})")
            self.tokens.extend(chunk)

    def last_logits(self) -> np.ndarray:
        """The logits of the last evaluated position: a view, valid until the next call."""
        ptr = self._lib.llama_get_logits_ith(self._ctx.ctx, -1)
        address = ctypes.cast(ptr, ctypes.c_void_p).value
        view = self._logits_view
        if view is None or view[0] != address:  # llama.cpp reuses one output buffer
            view = (address, np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))
            self._logits_view = view
        return view[1]

    def forget_from(self, n: int) -> None:
        """Drop evaluated tokens from position n on, in the KV cache too.

        Runs even when n == n_past: an interrupt between a decode and its bookkeeping
        can leave a cell in the cache that `tokens` does not list."""
        mem = self._ctx.memory
        ok = self._lib.llama_memory_seq_rm(mem, 0, n, -1) if mem is not None else False
        if not ok:  # some caches (recurrent, SWA) cannot drop a tail: start over
            if mem is not None:
                self._lib.llama_memory_clear(mem, True)
            n = 0
        del self.tokens[n:]

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Make the context hold exactly `tokens`, evaluating only what is not cached
        yet, and return the logits for the next token."""
        if not tokens:
            raise UsageError("nothing to evaluate: the prompt is empty")
        if len(tokens) > self.n_ctx:
            raise ContextFull(len(tokens), self.n_ctx)
        common = 0
        limit = min(len(tokens), self.n_past)
        while common < limit and self.tokens[common] == tokens[common]:
            common += 1
        common = min(common, len(tokens) - 1)  # the last token must run to give logits
        self.forget_from(common)
        self.last_prefill_evaluated = len(tokens) - common
        self._decode(list(tokens[common:]))
        return self.last_logits()

    def advance(self, token: int) -> None:
        """step() without the logits: for a NativeSampler, which reads them in C. One
        token through llama_batch_get_one (llama.cpp places it after sequence 0's last
        position), so the loop costs two ctypes calls per token."""
        n_past = len(self.tokens)
        if n_past >= self.n_ctx:
            raise ContextFull(n_past + 1, self.n_ctx)
        one = self._one
        if one is None:
            arr = (self._lib.llama_token * 1)()
            one = self._one = (arr, self._lib.llama_batch_get_one(arr, 1))
        one[0][0] = token
        rc = self._lib.llama_decode(self._ctx.ctx, one[1])
        if rc != 0:
            self.forget_from(n_past)
            if rc == 1:
                raise ContextFull(n_past + 1, self.n_ctx)
            raise GptcliError(f"llama.cpp failed to evaluate the tokens (llama_decode {rc})")
        self.tokens.append(token)

    def draw(self, sampler: NativeSampler) -> int:
        """The next token, drawn by llama.cpp's sampler chain from the last logits."""
        return sampler.sample_from(self._ctx.ctx, -1)

    def step(self, token: int) -> np.ndarray:
        """Evaluate one more token and return the logits for the next."""
        self._decode((token,))
        return self.last_logits()

    def evaluate_all(self, tokens: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Evaluate `tokens` after the current context, yielding (index, logits rows) per
        batch: row j predicts the token after tokens[index + j]."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = list(tokens[start : start + self.n_batch])
            self._decode(chunk, logits_all=True)
            ptr = self._lib.llama_get_logits(self._ctx.ctx)
            yield start, np.ctypeslib.as_array(ptr, shape=(len(chunk), self.n_vocab))

    # -- steering: a control vector added to the residual stream -------------

    @property
    def n_embd(self) -> int:
        return int(self._lib.llama_model_n_embd(self._model.model))

    @property
    def n_layer(self) -> int:
        return int(self._lib.llama_model_n_layer(self._model.model))

    def set_steering(self, data: np.ndarray | None, first: int = 1, last: int = -1) -> None:
        """Add data[N-1] to the output of layer N for first <= N <= last (-1: the last
        layer), through llama_set_adapter_cvec; None switches steering off. Capture
        contexts get the same vector. The KV cache was computed under the old vector,
        so it is dropped."""
        if data is None:
            self._steering = None
        else:
            data = np.ascontiguousarray(data, dtype=np.float32)
            if data.shape != (self.n_layer - 1, self.n_embd):
                raise GptcliError(f"a steering buffer must be {self.n_layer - 1} x {self.n_embd}")
            self._steering = (data, first, self.n_layer - 1 if last < 0 else last)
        _apply_steering(self, self._ctx.ctx)
        self.forget_from(0)

    @property
    def steering(self) -> tuple[np.ndarray, int, int] | None:
        return getattr(self, "_steering", None)

    def capture(self, tokens: Sequence[int], wanted, keep=None) -> Captured:
        """Copies of llama.cpp's intermediate tensors for `tokens` (see `_capture`)."""
        return _capture(self, tokens, wanted, keep)

    def reset(self) -> None:
        self.forget_from(0)

    def close(self) -> None:
        for part in ("_batch", "_ctx", "_model"):
            obj = getattr(self, part, None)
            if obj is not None:
                obj.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _apply_steering(engine: Engine, ctx) -> None:
    """Give llama.cpp context `ctx` the engine's control vector (or none)."""
    steering = engine.steering
    lib = engine._lib
    if steering is None:
        rc = lib.llama_set_adapter_cvec(ctx, None, 0, engine.n_embd, -1, -1)
    else:
        data, first, last = steering
        ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rc = lib.llama_set_adapter_cvec(ctx, ptr, data.size, data.shape[1], first, last)
    if rc != 0:
        raise GptcliError("llama.cpp refused the control vector (llama_set_adapter_cvec)")


class ContextFull(GptcliError):
    """More tokens than the context holds."""

    def __init__(self, needed: int, n_ctx: int):
        super().__init__(
            f"the text needs {needed} tokens but the context holds {n_ctx} "
            "(raise --ctx or shorten the input)"
        )
        self.needed, self.n_ctx = needed, n_ctx


# -- inside the forward pass -------------------------------------------------------
# llama.cpp hands every node of its graph to an eval callback. A capture runs in a
# side context of its own (flash attention off, so the attention weights exist as a
# tensor; every position's logits requested, so the last layer keeps every row), which
# is why generation in the main context pays nothing for it.


class _TensorHead(ctypes.Structure):
    """The leading fields of ggml's `struct ggml_tensor` (stable since 2023)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    ]


_GGML_F32, _GGML_F16 = 0, 1
_ggml = None


def _ggml_base():
    """libggml-base, loaded from beside libllama, for a tensor's name and bytes."""
    global _ggml
    if _ggml is None:
        import llama_cpp

        folder = Path(llama_cpp.__file__).parent / "lib"
        candidates = sorted(folder.glob("libggml-base.*")) + sorted(folder.glob("ggml-base.*"))
        if not candidates:
            raise GptcliError(f"libggml-base is missing from {folder}: cannot read tensors")
        lib = ctypes.CDLL(str(candidates[0]))
        lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_tensor_get.restype = None
        lib.ggml_backend_tensor_get.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_size_t,
        ]
        _ggml = lib
    return _ggml


@dataclass
class Device:
    """A ggml backend device as llama.cpp reports it."""

    backend: str  # the registry it belongs to: CPU, CUDA, Metal, Vulkan, BLAS, ...
    name: str  # CPU, CUDA0, ...
    description: str  # the CPU's model name, the GPU's product name
    kind: str  # cpu, gpu, igpu, accel
    free: int  # bytes; for the CPU, llama.cpp reports all of RAM as free
    total: int


_DEVICE_KINDS = ("cpu", "gpu", "igpu", "accel", "meta")  # enum ggml_backend_dev_type


def devices() -> list[Device]:
    """Every device llama.cpp's backend registry holds (ggml_backend_dev_*), in its order."""
    llama_cpp = _llama()
    default = Path(llama_cpp.__file__).parent / "lib"
    folder = Path(getattr(llama_cpp.llama_cpp, "_base_path", default))  # LLAMA_CPP_LIB_PATH
    # The registry lives in libggml, the device accessors in libggml-base: both already
    # loaded as libllama's dependencies, so these are the same copies llama.cpp uses.
    reg = _open_lib(folder, "ggml")
    base = _open_lib(folder, "ggml-base")
    vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    reg.ggml_backend_dev_count.restype, reg.ggml_backend_dev_count.argtypes = sz, []
    reg.ggml_backend_dev_get.restype, reg.ggml_backend_dev_get.argtypes = vp, [sz]
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(base, fn).restype, getattr(base, fn).argtypes = cp, [vp]
    base.ggml_backend_dev_type.restype, base.ggml_backend_dev_type.argtypes = ctypes.c_int, [vp]
    base.ggml_backend_dev_memory.restype = None
    base.ggml_backend_dev_memory.argtypes = [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]
    base.ggml_backend_dev_backend_reg.restype, base.ggml_backend_dev_backend_reg.argtypes = vp, [vp]
    base.ggml_backend_reg_name.restype, base.ggml_backend_reg_name.argtypes = cp, [vp]

    def text(raw: bytes | None) -> str:
        return (raw or b"").decode("utf-8", errors="replace").strip()

    out = []
    for i in range(int(reg.ggml_backend_dev_count())):
        dev = reg.ggml_backend_dev_get(i)
        free, total = sz(0), sz(0)
        base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = int(base.ggml_backend_dev_type(dev))
        out.append(
            Device(
                backend=text(base.ggml_backend_reg_name(base.ggml_backend_dev_backend_reg(dev))),
                name=text(base.ggml_backend_dev_name(dev)),
                description=text(base.ggml_backend_dev_description(dev)),
                kind=_DEVICE_KINDS[kind] if 0 <= kind < len(_DEVICE_KINDS) else f"type {kind}",
                free=int(free.value),
                total=int(total.value),
            )
        )
    return out


def _open_lib(folder: Path, name: str) -> ctypes.CDLL:
    candidates = sorted(folder.glob(f"lib{name}.*")) + sorted(folder.glob(f"{name}.*"))
    if not candidates:
        raise GptcliError(f"lib{name} is missing from {folder}")
    return ctypes.CDLL(str(candidates[0]))


@dataclass
class Captured:
    """What one capture pass saw: tensors by name, and the logits of every position.

    Activations are (tokens, width) arrays; attention weights (heads, queries, keys)
    with keys cut to the tokens evaluated."""

    tokens: list[int]
    tensors: dict[str, np.ndarray]
    logits: np.ndarray  # (tokens, vocabulary)


def _tensor_array(lib, t: int) -> np.ndarray | None:
    """A copy of a computed tensor as a numpy array in row-major order, or None when
    its element type is not a float type we read."""
    head = _TensorHead.from_address(t)
    if head.type not in (_GGML_F32, _GGML_F16):
        return None
    dtype = np.float32 if head.type == _GGML_F32 else np.float16
    shape = tuple(int(n) for n in reversed(head.ne))  # ggml: fastest dimension first
    size = int(lib.ggml_nbytes(t))
    out = np.empty(shape, dtype=dtype)
    if out.nbytes != size:  # a non-contiguous view: not something we can copy plainly
        return None
    lib.ggml_backend_tensor_get(t, out.ctypes.data, 0, size)
    return out.astype(np.float32, copy=False)


def _stitch(name: str, parts: list[np.ndarray], n_tokens: int) -> np.ndarray:
    """Join what each ubatch produced into one array over all positions."""
    if name.startswith("kq_soft_max"):  # attention: (streams, heads, queries, keys)
        rows = []
        for p in parts:
            p = p.reshape(-1, *p.shape[-2:])[:, :, :n_tokens]
            if p.shape[2] < n_tokens:  # an early ubatch saw fewer keys: the rest are 0
                p = np.pad(p, ((0, 0), (0, 0), (0, n_tokens - p.shape[2])))
            rows.append(p)
        return np.concatenate(rows, axis=1)
    flat = [p.reshape(-1, p.shape[-1]) for p in parts]  # activations: (tokens, width)
    return np.concatenate(flat, axis=0)


def _capture(self: Engine, tokens: Sequence[int], wanted, keep=None) -> Captured:
    """Evaluate `tokens` from an empty context of their own and return copies of the
    graph tensors whose names `wanted(name)` accepts.

    keep(name, array) may shrink each copy as it arrives (for example to the last
    query's attention row), so long prompts do not hold every matrix."""
    lib = _ggml_base()
    llama_cpp = self._lib
    tokens = list(tokens)
    n = len(tokens)
    if n == 0:
        raise UsageError("nothing to evaluate: the prompt is empty")
    if n > self.n_ctx:
        raise ContextFull(n, self.n_ctx)
    parts: dict[str, list[np.ndarray]] = {}

    def on_tensor(t, ask, user_data):
        name = lib.ggml_get_name(t)
        name = name.decode("utf-8", "replace") if name else ""
        if ask:
            return bool(wanted(name))
        arr = _tensor_array(lib, t)
        if arr is not None:
            if keep is not None:
                arr = keep(name, arr)
            parts.setdefault(name, []).append(arr)
        return True  # False would stop the computation

    callback = llama_cpp.ggml_backend_sched_eval_callback(on_tensor)
    from llama_cpp._internals import LlamaBatch, LlamaContext

    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = max(256, -(-n // 256) * 256)
    cparams.n_batch = cparams.n_ctx
    cparams.n_ubatch = min(512, cparams.n_ctx)
    cparams.n_threads = cparams.n_threads_batch = self.n_threads
    cparams.n_seq_max = 1
    if hasattr(cparams, "flash_attn_type"):
        cparams.flash_attn_type = 0  # disabled: the softmax must exist as a tensor
    else:
        cparams.flash_attn = False
    cparams.cb_eval = callback
    cparams.cb_eval_user_data = None
    try:
        side = LlamaContext(model=self._model, params=cparams, verbose=False)
    except (ValueError, RuntimeError):
        raise GptcliError(
            f"llama.cpp could not create a capture context of {n} tokens (out of memory?)"
        ) from None
    if self.steering is not None:  # what the user steers is what the lens sees
        _apply_steering(self, side.ctx)
    batch = LlamaBatch(n_tokens=n, embd=0, n_seq_max=1)
    try:
        b = batch.batch
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = i
            b.seq_id[i][0] = 0
            b.n_seq_id[i] = 1
            b.logits[i] = True
        b.n_tokens = n
        rc = llama_cpp.llama_decode(side.ctx, b)
        if rc != 0:
            raise GptcliError(f"llama.cpp failed to evaluate the tokens (llama_decode {rc})")
        ptr = llama_cpp.llama_get_logits(side.ctx)
        logits = np.array(np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab)), copy=True)
    finally:
        batch.close()
        side.close()
        del callback  # referenced until llama.cpp can no longer call it
    tensors = {name: _stitch(name, p, n) for name, p in parts.items()}
    return Captured(tokens, tensors, logits)


class BatchedEngine:
    """Several sequences in one llama.cpp context, decoded together (`--each-line -j N`).

    Sequences 0..n_seq-1 are slots, one line each; sequence n_seq holds the prompt part
    every line shares, evaluated once. Each sequence has a KV stream of its own (not a
    unified cache), so a line's cells lie at the same places, in position order, as
    with one slot: llama.cpp's attention kernels tile and accumulate over cell indices,
    and a line interleaved with others in one unified cache rounds differently (greedy
    lines then part from -j 1). A slot gets the prefix as a copy of the shared stream
    (llama_memory_seq_cp across streams) and keeps it for the lines that follow. The
    context is sized up, not split: every slot may hold n_ctx_seq tokens (the
    single-sequence context), so a line fits or not whatever the number of slots.
    """

    def __init__(self, engine: Engine, n_seq: int, n_shared: int = 0):
        if n_seq < 1:
            raise UsageError(f"-j must be at least 1, got {n_seq}")
        llama_cpp = engine._lib
        from llama_cpp._internals import LlamaBatch, LlamaContext

        self.engine = engine
        self.n_seq = n_seq
        self.n_ctx_seq = engine.n_ctx
        self.shared_seq = n_seq
        self.shared: list[int] = []
        self.tokens_decoded = 0  # every token llama_decode evaluated: prefix reuse shows here
        self._held = [0] * n_seq  # shared-prefix tokens each slot's stream holds
        cparams = llama_cpp.llama_context_default_params()
        # One stream of n_ctx_seq cells per slot and one for the shared prefix (llama.cpp
        # rounds a stream up to 256 cells: counted here, so the memory check sees it).
        cparams.n_ctx = (n_seq + 1) * -(-self.n_ctx_seq // 256) * 256
        check_context_fits(cparams.n_ctx, engine.kv_bytes_per_token())
        # llama.cpp aborts (GGML_ASSERT n_outputs_max) when a context holds more
        # sequences than its batch has outputs: --ctx 64 -j 64 did.
        cparams.n_batch = max(engine.n_batch, n_seq + 1)
        cparams.n_ubatch = cparams.n_batch
        cparams.n_threads = engine.n_threads
        cparams.n_threads_batch = engine.n_threads
        cparams.n_seq_max = n_seq + 1
        cparams.kv_unified = False
        try:
            self._ctx = LlamaContext(model=engine._model, params=cparams, verbose=False)
        except (ValueError, RuntimeError):
            raise GptcliError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens for "
                f"{n_seq} sequences (out of memory? lower -j or --ctx)"
            ) from None
        self.n_batch = int(cparams.n_batch)
        self._batch = LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1)
        self._lib = llama_cpp
        self._mem = self._ctx.memory
        if engine.steering is not None:
            _apply_steering(engine, self._ctx.ctx)

    def set_shared(self, tokens: Sequence[int]) -> None:
        """Evaluate the prompt part every line starts with, once."""
        self._lib.llama_memory_seq_rm(self._mem, self.shared_seq, -1, -1)
        self.shared = list(tokens[: self.n_ctx_seq])
        self._held = [0] * self.n_seq  # slots copy the new prefix when they next start
        for start in range(0, len(self.shared), self.n_batch):
            chunk = self.shared[start : start + self.n_batch]
            self.decode([(self.shared_seq, start, chunk, False)])

    def start(self, seq: int, tokens: Sequence[int]) -> int:
        """Empty slot `seq` for a new line and give it the shared prefix that `tokens`
        begin with; returns how many tokens it already holds (evaluate the rest)."""
        common, limit = 0, min(len(self.shared), len(tokens) - 1)  # the last must run
        while common < limit and self.shared[common] == tokens[common]:
            common += 1
        lib, mem = self._lib, self._mem
        if common > self._held[seq]:
            # Across streams llama.cpp copies a whole stream (done at the next decode).
            lib.llama_memory_seq_cp(mem, self.shared_seq, seq, -1, -1)
        lib.llama_memory_seq_rm(mem, seq, common, -1)
        self._held[seq] = common
        return common

    def drop(self, seq: int) -> None:
        """Free a finished sequence's KV cells (the slot keeps its shared prefix)."""
        self._lib.llama_memory_seq_rm(self._mem, seq, self._held[seq], -1)

    def decode(
        self, spans: Sequence[tuple[int, int, Sequence[int], bool]]
    ) -> list[np.ndarray | None]:
        """One llama_decode of several sequences' tokens: spans of (seq, first position,
        tokens, logits wanted), at most n_batch tokens in all. Returns, per span, the
        logits after its last token (a view valid until the next decode) or None."""
        batch = self._batch.batch
        n = 0
        last: list[int] = []
        for seq, pos, tokens, want in spans:
            for j, tok in enumerate(tokens):
                batch.token[n] = tok
                batch.pos[n] = pos + j
                batch.seq_id[n][0] = seq
                batch.n_seq_id[n] = 1
                batch.logits[n] = False
                n += 1
            batch.logits[n - 1] = want
            last.append(n - 1)
        batch.n_tokens = n
        rc = self._lib.llama_decode(self._ctx.ctx, batch)
        if rc != 0:
            raise GptcliError(f"llama.cpp failed to evaluate a batch (llama_decode {rc})")
        self.tokens_decoded += n
        self.last_rows = last  # each span's row in the batch (draw() reads it)
        out: list[np.ndarray | None] = []
        for (_, _, _, want), i in zip(spans, last, strict=True):
            if want:
                ptr = self._lib.llama_get_logits_ith(self._ctx.ctx, i)
                out.append(np.ctypeslib.as_array(ptr, shape=(self.engine.n_vocab,)))
            else:
                out.append(None)
        return out

    def draw(self, sampler: NativeSampler, span: int) -> int:
        """The next token of the last decode's span `span`, drawn by llama.cpp's chain."""
        return sampler.sample_from(self._ctx.ctx, self.last_rows[span])

    def close(self) -> None:
        for part in ("_batch", "_ctx"):
            obj = getattr(self, part, None)
            if obj is not None:
                obj.close()


# -- grammars: llama.cpp's grammar sampler ------------------------------------------
# The numpy sampler draws; a grammar only says which tokens may come next. Checking one
# drawn token costs one small call; the whole vocabulary is masked only when the drawn
# token is refused (as llama.cpp's common sampler does).

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def _grammar_parse_error(captured: str) -> str:
    """llama.cpp's own reason from what it wrote while parsing, made one short line."""
    for line in captured.splitlines():
        for marker in ("error parsing grammar: ", "invalid grammar: ", "unsupported grammar, "):
            if marker in line:
                reason = line.split(marker, 1)[1].strip()
                if marker.startswith("error") and reason.endswith(" at"):
                    reason += " the end of the grammar"  # the rest of it was empty
                elif marker.startswith("error") and " at " in reason:
                    head, rest = reason.split(" at ", 1)  # "at <the rest of the grammar>"
                    reason = f"{head} at {rest[:30]!r}"
                return reason[:160]
        if "does not contain" in line:
            return line.strip()[:160]
    return "llama.cpp refused it"


def _run_capturing_stderr(fn):
    """fn() with file descriptor 2 and llama.cpp's log captured: the grammar parser
    reports with fprintf(stderr), the rest through the log callback."""
    import tempfile

    llama_cpp = _llama()
    logged: list[str] = []

    @llama_cpp.llama_log_callback
    def _keep(level, text, user_data):
        logged.append(text.decode("utf-8", errors="replace") if text else "")

    llama_cpp.llama_log_set(_keep, ctypes.c_void_p(0))
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 2)
            result = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            set_verbose(_verbose)
        tmp.seek(0)
        text = tmp.read(64_000).decode("utf-8", errors="replace")
    return result, text + "".join(logged)


class Grammar:
    """A GBNF grammar over an engine's vocabulary: which tokens may come next, and its
    state after each accepted token. Raises UsageError when the grammar does not parse
    or when no token can start it."""

    def __init__(self, engine: Engine, gbnf: str, root: str = "root"):
        llama_cpp = engine._lib
        self._lib = llama_cpp
        self.engine = engine
        self.gbnf = gbnf
        try:
            data = gbnf.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("the grammar is not valid UTF-8") from None
        if b"\0" in data:
            raise UsageError("the grammar contains a NUL byte")
        smpl, log = _run_capturing_stderr(
            lambda: llama_cpp.llama_sampler_init_grammar(engine._vocab, data, root.encode())
        )
        if not smpl:
            raise UsageError(f"the grammar does not parse: {_grammar_parse_error(log)}")
        self._smpl = smpl
        n = engine.n_vocab
        self.n_vocab = n
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._one_arr = self._array(self._one)
        self._all = np.zeros(n, dtype=_TOKEN_DATA)
        self._all["id"] = np.arange(n, dtype=np.int32)
        self._all_arr = self._array(self._all)
        if not any(not engine.is_eog(int(t)) for t in self.allowed_ids()):
            self.close()
            raise UsageError("the grammar matches no text: no token can start it")

    def _eog_candidates(self) -> list[int]:
        ids = {self.engine.eos_id}
        eot = int(self._lib.llama_vocab_eot(self.engine._vocab))
        if eot >= 0:
            ids.add(eot)
        return sorted(t for t in ids if 0 <= t < self.n_vocab)

    def _array(self, buf: np.ndarray):
        lib = self._lib
        ptr = buf.ctypes.data_as(lib.llama_token_data_p)
        return lib.llama_token_data_array(ptr, len(buf), -1, False)

    def _apply(self, arr) -> None:
        self._lib.llama_sampler_apply(self._smpl, ctypes.byref(arr))

    def allows(self, token: int) -> bool:
        """May `token` come next?"""
        one = self._one
        one["id"][0] = token
        one["logit"][0] = 0.0
        self._apply(self._one_arr)
        return bool(np.isfinite(one["logit"][0]))

    def allowed_among(self, ids: np.ndarray) -> np.ndarray:
        """For each id in `ids`, whether it may come next (one call for all of them)."""
        buf = np.zeros(len(ids), dtype=_TOKEN_DATA)
        buf["id"] = ids
        self._apply(self._array(buf))
        return np.isfinite(buf["logit"])

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of the whole vocabulary's logits with forbidden tokens at -inf."""
        arr, buf = self._all_arr, self._all
        buf["logit"] = logits
        arr.size, arr.selected, arr.sorted = self.n_vocab, -1, False
        self._apply(arr)
        return buf["logit"].copy()

    def mask_top(self, logits: np.ndarray, k: int, prefix: int = 1024) -> np.ndarray | None:
        """mask(logits) as far as a top-k draw can tell: only the `prefix` highest logits
        are checked, and the others set to -inf. None when fewer than k of them are
        allowed (then the k best allowed tokens may lie further down: use mask)."""
        n = self.n_vocab
        if prefix >= n:
            return None
        ids = top_k_ids(logits, prefix)  # equal logits at the cut by id, as mask's draw
        ok = ids[self.allowed_among(ids)]
        if len(ok) < k:
            return None
        out = np.full(n, -np.inf, dtype=np.float32)
        out[ok] = logits[ok]
        return out

    def allowed_ids(self) -> np.ndarray:
        """Every token that may come next."""
        return np.flatnonzero(np.isfinite(self.mask(np.zeros(self.n_vocab, dtype=np.float32))))

    def is_complete(self) -> bool:
        """Is the text so far a whole document (may generation end here)?"""
        return any(self.allows(t) for t in self._eog_candidates())

    def accept(self, token: int) -> None:
        """Advance past `token`, which must be allowed (llama.cpp aborts otherwise)."""
        if not self.allows(token):
            raise GptcliError(f"token {token} is not allowed by the grammar here")
        self._lib.llama_sampler_accept(self._smpl, token)

    def reset(self) -> None:
        """Back to the start of the grammar."""
        self._lib.llama_sampler_reset(self._smpl)

    def close(self) -> None:
        smpl, self._smpl = getattr(self, "_smpl", None), None
        if smpl:
            self._lib.llama_sampler_free(smpl)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the library may be gone already
            pass


def json_schema_to_gbnf(schema_text: str) -> str:
    """llama-cpp-python's JSON Schema converter (raises what the converter raises)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf as convert

    return convert(schema_text)


# -- llama.cpp's own sampler chain: plain generation ----------------------------------
# When no distribution is shown, the token is drawn in C from the context's own logits
# buffer: no numpy pass over the vocabulary per token. The chain is sampling.Sampler's
# order (tests/test_sampler_oracle.py proves the two give the same distributions) and
# llama-cpp-python's Llama's: penalties, top-k, top-p, min-p, temperature, then greedy
# or a draw from llama.cpp's own generator (mt19937) seeded with the seed.

_EMPTY_IDS = np.empty(0, dtype=np.int64)
_EMPTY_PROBS = np.empty(0, dtype=np.float64)


def native_seed(seed: int | None) -> int:
    """The 32-bit seed llama.cpp's dist sampler takes (0xFFFFFFFF would mean random)."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    return seed % 0xFFFFFFFF


class NativeSampler:
    """SamplingParams as a llama.cpp sampler chain. `history`: the tokens before the
    first draw (the repetition penalty looks back into the prompt)."""

    draws_in_llama = True  # generation.Generation: take the fast path

    def __init__(self, engine: Engine, params, history: Sequence[int] = ()):
        lib = engine._lib
        self._lib = lib
        self.params = p = params.validate()
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        self._chain = chain
        add = lib.llama_sampler_chain_add
        penalised = p.repeat_penalty != 1.0 and p.repeat_last_n > 0
        if penalised:
            n_vocab, last_n = engine.n_vocab, p.repeat_last_n
            add(chain, lib.llama_sampler_init_penalties(n_vocab, last_n, p.repeat_penalty, 0, 0))
        if p.temperature == 0.0:
            add(chain, lib.llama_sampler_init_greedy())  # the argmax: the cuts cannot move it
        else:
            if p.top_k > 0:
                add(chain, lib.llama_sampler_init_top_k(p.top_k))
            add(chain, lib.llama_sampler_init_top_p(p.top_p, 1))
            add(chain, lib.llama_sampler_init_min_p(p.min_p, 1))
            add(chain, lib.llama_sampler_init_temp(p.temperature))
            add(chain, lib.llama_sampler_init_dist(native_seed(p.seed)))
        if penalised:
            for tok in list(history)[-p.repeat_last_n :]:
                lib.llama_sampler_accept(chain, tok)
        self._sample = lib.llama_sampler_sample

    def sample_from(self, ctx, idx: int = -1) -> int:
        """Draw from row `idx` of a context's logits; the chain remembers the token."""
        return int(self._sample(self._chain, ctx, idx))

    @staticmethod
    def draw_for(token: int) -> Draw:
        """The event's Draw: the token, with no distribution (none was computed)."""
        return Draw(token, math.nan, _EMPTY_IDS, _EMPTY_PROBS)

    def close(self) -> None:
        chain, self._chain = getattr(self, "_chain", None), None
        if chain:
            self._lib.llama_sampler_free(chain)  # frees the samplers it holds

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the library may be gone already
            pass

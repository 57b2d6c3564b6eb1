"""The only module that touches llama.cpp (through llama-cpp-python).

Load a GGUF file (memory-mapped), tokenize and detokenize, evaluate tokens in
batches, hand back the last position's logits, and keep the evaluated prefix in
the KV cache so the next call only evaluates what is new.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gptcli.errors import GptcliError, UsageError
from gptcli.llama.libllama import bindings
from gptcli.llama.resources import check_context_fits, check_model_fits
from gptcli.model.gguf_check import GGUFHeader, read_header
from gptcli.model.naming import label  # as a person writes it, quantization apart

if TYPE_CHECKING:  # a type only: sampler_chain imports this module
    from gptcli.llama.sampler_chain import NativeSampler

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
    llama_cpp = bindings()

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


def is_verbose() -> bool:
    """Whether llama.cpp's log goes to stderr (what set_verbose last chose)."""
    return _verbose


def lib():
    """llama_cpp, imported once, its logging set and its backend initialised."""
    return _llama()


def supports_gpu_offload() -> bool:
    return bool(_llama().llama_supports_gpu_offload())


def system_info() -> str:
    return _llama().llama_print_system_info().decode("utf-8", errors="replace").strip()


def backend_version() -> str:
    from importlib import metadata

    try:  # not llama_cpp.__version__: that would run the rest of the package's __init__
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "unknown"


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
        self.ahead = None  # a running ahead.DecodeAhead: it owns the context until closed
        self._piece_buf = ctypes.create_string_buffer(256)
        self._lib = llama_cpp

    # -- model facts -------------------------------------------------------

    @property
    def name(self) -> str:
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

    @property
    def decodes_ahead(self) -> bool:
        """Whether a generation should decode in a thread of its own (ahead.DecodeAhead):
        only where that thread does not take a core from llama.cpp's. With every core
        computing (the CPU default), a second busy thread and a second OpenMP team slowed
        2-thread decoding on 2 cores by 15-20 % (benchmarks/token_loop.py --clock wall),
        more than the Python it moves off the path costs."""
        return self.n_gpu_layers != 0 or self.n_threads < usable_cores()

    def _settle(self) -> None:
        """Wait for a decode-ahead worker still running: one context, one user at a time
        (a consumer that stopped early, or Ctrl-C, may leave it in a decode)."""
        ahead = self.ahead
        if ahead is not None and not ahead.is_worker():
            ahead.close()

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
        self._settle()
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
        self._settle()
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
        self._settle()
        return sampler.sample_from(self._ctx.ctx, -1)

    def step(self, token: int) -> np.ndarray:
        """Evaluate one more token and return the logits for the next."""
        self._settle()
        self._decode((token,))
        return self.last_logits()

    def evaluate_all(self, tokens: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Evaluate `tokens` after the current context, yielding (index, logits rows) per
        batch: row j predicts the token after tokens[index + j]."""
        self._settle()
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
        self._settle()
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

    def reset(self) -> None:
        self.forget_from(0)

    def close(self) -> None:
        if getattr(self, "ahead", None) is not None:
            self._settle()
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

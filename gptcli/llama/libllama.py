"""libllama before numpy: the import order of every process that loads a model.

On a CUDA build of llama-cpp-python 0.3.36 (an H200, CUDA 13; docs/gpu.md), every model
load by gptcli died by SIGSEGV inside `llama_model_load_from_file`, `-ngl 0` too, while
the same `Engine` loaded the same files from a script that had imported `llama_cpp`
first; in every crashing process numpy had been imported before libllama. Importing
`llama_cpp` (which loads libllama, then numpy) before anything of gptcli imports numpy
gives the CLI the order that worked. It costs nothing: each caller loads llama_cpp anyway.
`benchmarks/gpu/` tells the candidate causes apart on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import sys


def load_first() -> None:
    """Load libllama now, unless it is in already. Call it before numpy or gguf."""
    if "llama_cpp" in sys.modules:
        return
    try:
        bindings()
    except (ImportError, OSError, RuntimeError):
        pass  # the engine meets the same error later and reports it in its own words


def bindings():
    """The llama_cpp package with its ctypes bindings in it (libllama loaded), the rest of
    its __init__ run only when a name from there is asked for (Llama, __version__).

    gptcli calls libllama through the bindings alone; the package's __init__ also imports
    its high-level Llama class, its chat formats and jinja2: about 80 ms of every command's
    start-up spent on code gptcli never runs."""
    pkg = sys.modules.get("llama_cpp")
    if pkg is not None:
        return pkg
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.loader is None:
        raise ImportError("No module named 'llama_cpp'", name="llama_cpp")
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["llama_cpp"] = pkg  # the package, not yet run: its submodules import
    try:
        from llama_cpp import llama_cpp as low
    except BaseException:
        del sys.modules["llama_cpp"]
        raise
    # What the package's `from .llama_cpp import *` would put there.
    pkg.__dict__.update((k, v) for k, v in vars(low).items() if not k.startswith("_"))

    def __getattr__(name: str):
        if name.startswith("__") and name != "__version__":
            raise AttributeError(name)
        del pkg.__dict__["__getattr__"]
        spec.loader.exec_module(pkg)  # the real __init__, once: everything else it defines
        return getattr(pkg, name)

    pkg.__getattr__ = __getattr__
    return pkg

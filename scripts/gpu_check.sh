#!/usr/bin/env bash
# One call on a GPU machine: build the extension, run the tests, run compute-sanitizer on a small case,
# benchmark. Every step runs even when an earlier one failed; each step's exit code goes to
# OUTDIR/summary.txt, and the script exits non-zero at the end if any step failed.
#
#   scripts/gpu_check.sh OUTDIR [--quick]
#
# Environment:
#   FLASHCORE_GPU_CHECK_QUICK=1      same as --quick (bench --quick: 2 seqlens per head dim)
#   FLASHCORE_GPU_CHECK_SKIP=a,b     skip steps by name: build, tests, sanitizer, bench
#   FLASHCORE_GPU_CHECK_BUDGET_S=N   total seconds (default 540); the bench gets what the others leave
#   FLASHCORE_GIT_COMMIT=<sha>       recorded in bench.json when the copy has no .git
#   PYTHON=python3                   the interpreter holding torch (no pip install of torch here)
#
# OUTDIR stays flat with at most 8 files (the device tool returns no more): build.log, tests.log,
# tests.xml, sanitizer.log, bench.log, bench.json, bench.png, summary.txt.
set -u
cd "$(dirname "$0")/.."

OUT=${1:?usage: scripts/gpu_check.sh OUTDIR [--quick]}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
QUICK=${FLASHCORE_GPU_CHECK_QUICK:-0}
[[ "${2:-}" == "--quick" ]] && QUICK=1
SKIP=",${FLASHCORE_GPU_CHECK_SKIP:-},"
PY=${PYTHON:-python3}

BUDGET_S=${FLASHCORE_GPU_CHECK_BUDGET_S:-540}  # 9 minutes: inside the device tool's 10-minute command limit
BUILD_CAP_S=240      # a cold build of a few instantiations per head dim with 16 jobs; a warm one is seconds
TESTS_CAP_S=120      # the GPU tests are meant to be small; a hang must not eat the bench's time
SANITIZER_CAP_S=75   # per tool: torch's CUDA start-up alone is slow under compute-sanitizer
BENCH_RESERVE_S=40   # kept back from --time-budget: torch start-up and the peak (~10 s), the 16k shape in flight, the PNG
BENCH_MIN_S=45       # below this the bench runs --quick whatever was asked

START=$(date +%s)
FAILED=()
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

remaining() { echo $((START + BUDGET_S - $(date +%s))); }
cap() {  # cap SECONDS: the smaller of SECONDS and what is left, at least 1
  local r; r=$(remaining)
  ((r < $1)) && set -- "$r"
  echo $(($1 < 1 ? 1 : $1))
}
note() { echo "$*" | tee -a "$SUMMARY"; }
skipped() { [[ "$SKIP" == *",$1,"* ]] && note "$(printf '%-10s skipped (FLASHCORE_GPU_CHECK_SKIP)' "$1")"; }
record() {  # record NAME RC SECONDS [DETAIL]
  local verdict=ok
  if (($2 != 0)); then verdict="FAILED rc=$2"; FAILED+=("$1"); fi
  (($2 == 124)) && verdict+=" (timed out)"
  note "$(printf '%-10s %-24s %4ss %s' "$1" "$verdict" "$3" "${4:-}")"
}

COMMIT=${FLASHCORE_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
note "flashcore gpu_check $(date -u +%FT%TZ) commit $COMMIT quick=$QUICK"
nvidia-smi 2>&1 | tee -a "$SUMMARY"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "hip", torch.version.hip)' \
  2>&1 | tee -a "$SUMMARY"
command -v nvcc >/dev/null && nvcc --version | tail -n 2 | tee -a "$SUMMARY"
note "---- steps (budget ${BUDGET_S}s) ----"

# 1. Build: the editable install compiles the extension (compiler output, ptxas reports, in build.log).
if ! skipped build; then
  t0=$(date +%s)
  MAX_JOBS=16 CUDA_HOME=/usr/local/cuda timeout "$(cap $BUILD_CAP_S)" \
    "$PY" -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  echo "build time ${secs}s, exit code $rc" >>"$OUT/build.log"
  spills=$(grep -cE '[1-9][0-9]* bytes spill (stores|loads)' "$OUT/build.log")
  record build "$rc" "$secs" "(ptxas lines reporting spills: $spills)"
fi

# 2. Tests: GPU tests select themselves when a GPU is present.
if ! skipped tests; then
  t0=$(date +%s)
  timeout "$(cap $TESTS_CAP_S)" "$PY" -m pytest -q -rfEs tests -p no:cacheprovider \
    --junitxml="$OUT/tests.xml" >"$OUT/tests.log" 2>&1
  rc=$?
  record tests "$rc" "$(($(date +%s) - t0))" "($(tail -n 1 "$OUT/tests.log"))"
fi

# 3. compute-sanitizer on a small forward+backward through flashcore (tail tiles, causal, Sq != Sk,
#    every head dim), plus torch.ops.flashcore_sm90.bwd_preprocess called directly when it exists.
#    PYTORCH_NO_CUDA_MEMORY_CACHING makes every tensor its own cudaMalloc, so memcheck sees
#    out-of-bounds accesses that would otherwise land inside the caching allocator's blocks.
if ! skipped sanitizer; then
  CASE=$(mktemp /tmp/flashcore_sanitize.XXXXXX.py)
  cat >"$CASE" <<'EOF'
import torch, flashcore
dev = torch.device("cuda")
print("flashcore backend:", flashcore.backend(dev))
gen = torch.Generator(device=dev).manual_seed(0)
rand = lambda *shape: torch.randn(*shape, generator=gen, device=dev, dtype=torch.bfloat16)
for head_dim in (64, 128, 256):
    # 193 and 97 are multiples of no tile size: the last tiles are partial; 97 != 193 tests Sq != Sk.
    for seqlen_q, seqlen_k, causal in ((193, 193, False), (193, 193, True), (97, 193, True)):
        q, k, v = (rand(2, s, 2, head_dim).requires_grad_() for s in (seqlen_q, seqlen_k, seqlen_k))
        out, lse = flashcore.attention(q, k, v, causal=causal, return_lse=True)
        dout = rand(*out.shape)
        out.backward(dout)
        torch.cuda.synchronize()
        print(f"fwd+bwd D={head_dim} Sq={seqlen_q} Sk={seqlen_k} causal={causal}: ok")
ns = torch.ops.flashcore_sm90
if hasattr(ns, "bwd_preprocess"):
    op = ns.bwd_preprocess
    schema = op.default._schema
    print("bwd_preprocess schema:", schema)
    pool = {"out": out, "o": out, "dout": dout, "do": dout, "grad_out": dout, "lse": lse, "softmax_lse": lse,
            "q": q, "k": k, "v": v}
    args = []
    for arg in schema.arguments:
        if arg.name in pool:
            args.append(pool[arg.name].detach())
        elif not arg.has_default_value():
            print(f"bwd_preprocess: cannot bind argument {arg.name!r} by name; not called directly")
            break
    else:
        op(*args)
        torch.cuda.synchronize()
        print("bwd_preprocess called directly: ok")
else:
    print("torch.ops.flashcore_sm90.bwd_preprocess does not exist (yet): only the attention calls ran")
EOF
  SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  : >"$OUT/sanitizer.log"
  for tool in memcheck racecheck; do
    t0=$(date +%s)
    echo "==== compute-sanitizer --tool $tool ====" >>"$OUT/sanitizer.log"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(cap $SANITIZER_CAP_S)" \
      "$SAN" --tool "$tool" --error-exitcode 3 --print-limit 30 "$PY" "$CASE" >"$CASE.log" 2>&1
    rc=$?
    cat "$CASE.log" >>"$OUT/sanitizer.log"
    verdict=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$CASE.log" | tail -n 1)
    record "$tool" "$rc" "$(($(date +%s) - t0))" "($verdict)"
  done
  rm -f "$CASE" "$CASE.log"
fi

# 4. Benchmark into OUTDIR with whatever time is left.
if ! skipped bench; then
  left=$(($(remaining) - BENCH_RESERVE_S))
  args=(--out "$OUT" --stem bench --time-budget "$((left > 1 ? left : 1))")
  ((QUICK == 1 || left < BENCH_MIN_S)) && args+=(--quick)
  t0=$(date +%s)
  PYTHONUNBUFFERED=1 timeout "$(cap $((left + BENCH_RESERVE_S)))" "$PY" -m flashcore.bench "${args[@]}" \
    >"$OUT/bench.log" 2>&1
  rc=$?
  record bench "$rc" "$(($(date +%s) - t0))" "($(grep -m1 "^wrote" "$OUT/bench.log" | sed "s/.* in //" | cut -c1-80))"
fi

note "---- total $(($(date +%s) - START))s; failed: ${FAILED[*]:-none} ----"
((${#FAILED[@]} == 0))

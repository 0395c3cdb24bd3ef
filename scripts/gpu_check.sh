#!/usr/bin/env bash
# One call on a GPU machine: build the extension, run the tests, run compute-sanitizer on a small case,
# benchmark. Every step runs even when an earlier one failed; each step's exit code goes to
# OUTDIR/summary.txt, and the script exits non-zero at the end if any step failed.
#
#   scripts/gpu_check.sh OUTDIR [--quick]
#
# Environment:
#   FLASHCORE_GPU_CHECK_QUICK=1      same as --quick (bench --quick: 2 seqlens per head dim)
#   FLASHCORE_GPU_CHECK_SKIP=a,b     skip steps by name: build, tests, sanitizer, gemm, bwdop, profile, bench,
#                                    variants
#   FLASHCORE_GPU_CHECK_BUDGET_S=N   total seconds (default 540); the bench gets what the others leave
#   FLASHCORE_GPU_CHECK_TESTS_CAP_S=N  seconds for the tests step (default 120)
#   FLASHCORE_GPU_CHECK_VARIANTS=".."  the build switches the variants step builds, tests and times (default:
#                                    FLASHCORE_BWD_SM90_DQ_LAG FLASHCORE_BWD_SM90_DQ_LAG_PINGPONG; any backward or
#                                    forward switch the README lists, e.g. FLASHCORE_FWD_SM90_D128_N176; two per
#                                    call fit)
#   FLASHCORE_GPU_CHECK_TESTS_ARGS=".."  arguments for scripts/gpu_tests.py (word-split): a subset to rerun,
#                                    e.g. "-k fwd_varlen" or "tests/test_cuda_sm90.py::test_gemm_matches_torch_matmul",
#                                    or "--all" for the whole suite (the CPU-model tests take ~8 min on their own)
#   FLASHCORE_GPU_TESTS_TIMEOUT_S=N  seconds one test may take before it counts as hung (default 30)
#   FLASHCORE_GPU_CHECK_WATCHDOG=1   build with -DFLASHCORE_SM90_WATCHDOG (csrc/cuda/ptx/watchdog.cuh): an mbarrier
#                                    wait or dQ-semaphore spin past 10 s prints block, thread and the barrier's
#                                    shared offset and parity (or the flag's address and value), then traps, so a
#                                    deadlock is a launch failure naming its barrier. Off, the SASS is unchanged;
#                                    on, ptxas drops setmaxnreg (the report's printf is a call) and the consumers
#                                    spill: slower, same protocol. Not for the bench or resources.json.
#                                    Turning it on or off rebuilds from scratch (build/ and the .so removed: ninja
#                                    does not see flags given through the environment). By hand, the same is
#                                    rm -rf build flashcore/_C*.so && NVCC_APPEND_FLAGS=-DFLASHCORE_SM90_WATCHDOG \
#                                      MAX_JOBS=16 CUDA_HOME=/usr/local/cuda python3 -m pip install -v \
#                                      --no-build-isolation --no-deps -e .
#
# The tests step runs scripts/gpu_tests.py, not a bare pytest: only the tests that use CUDA (CI runs the rest),
# the smallest kernels first (wgmma probe, bwd_preprocess, gemm, fwd, bwd, the training loop), each under a
# watchdog. A test that hangs, crashes the process or leaves CUDA unusable (an illegal address poisons the
# context) is named in tests.log with its stacks, and pytest restarts on the tests after it; tests.log ends with
# every failure's first line and a one-line count (summary.txt's tests line). `python scripts/gpu_tests.py -h`.
#
# With the forward and backward kernels the full matrix of GPU tests can outgrow one 10-minute call. Split it
# over calls (the device keeps ignored build outputs between calls, so only the first builds):
#   call 1: FLASHCORE_GPU_CHECK_SKIP=sanitizer,gemm,bwdop,profile,bench FLASHCORE_GPU_CHECK_TESTS_CAP_S=420 \
#           scripts/gpu_check.sh $OUT
#   call 2: FLASHCORE_GPU_CHECK_SKIP=tests,variants scripts/gpu_check.sh $OUT
#   call 3: FLASHCORE_GPU_CHECK_SKIP=build,tests,sanitizer,gemm,profile,bench FLASHCORE_GPU_CHECK_BUDGET_S=580 \
#           scripts/gpu_check.sh $OUT
#           (the default backward op at D=128, then the backward's v3 switches built, tested and timed beside it;
#           ~2 x (1-1.5 min build + tests + 30 s bench): if the second is cut off, rerun with
#           FLASHCORE_GPU_CHECK_VARIANTS=FLASHCORE_BWD_SM90_DQ_LAG_PINGPONG)
#   FLASHCORE_GIT_COMMIT=<sha>       recorded in bench.json when the copy has no .git
#   PYTHON=python3                   the interpreter holding torch (no pip install of torch here)
#
# OUTDIR stays flat, and one call writes at most 8 files (the device tool returns no more): build.log, tests.log,
# gemm.json, sanitizer.log, profile.log, bench.log, bench.json, bench.png, summary.txt, of which either call of
# the split above writes at most 7.
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
TESTS_CAP_S=${FLASHCORE_GPU_CHECK_TESTS_CAP_S:-120}  # a hang must not eat the bench's time
TESTS_WRAP_UP_S=10   # the test runner stops its pytest and writes the summary in this much
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
#    build/watchdog_stamp holds the FLASHCORE_GPU_CHECK_WATCHDOG the objects under build/ were compiled with.
if ! skipped build; then
  t0=$(date +%s)
  WATCHDOG=${FLASHCORE_GPU_CHECK_WATCHDOG:-0}
  if [[ "$(cat build/watchdog_stamp 2>/dev/null || echo 0)" != "$WATCHDOG" ]]; then
    rm -rf build flashcore/_C*.so
  fi
  ((WATCHDOG == 1)) && export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-DFLASHCORE_SM90_WATCHDOG"
  MAX_JOBS=16 CUDA_HOME=/usr/local/cuda timeout "$(cap $BUILD_CAP_S)" \
    "$PY" -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
  rc=$?
  mkdir -p build && echo "$WATCHDOG" >build/watchdog_stamp
  secs=$(($(date +%s) - t0))
  echo "build time ${secs}s, exit code $rc, watchdog $WATCHDOG" >>"$OUT/build.log"
  spills=$(grep -cE '[1-9][0-9]* bytes spill (stores|loads)' "$OUT/build.log")
  record build "$rc" "$secs" "(ptxas lines reporting spills: $spills; watchdog $WATCHDOG)"
fi

# 2. Tests: the CUDA tests through scripts/gpu_tests.py (a hang or crash costs one test, not the step). Its own
#    time cap ends TESTS_WRAP_UP_S early, so the summary is written before `timeout` would stop it.
if ! skipped tests; then
  t0=$(date +%s)
  tests_cap=$(cap "$TESTS_CAP_S")
  runner_cap=$((tests_cap > TESTS_WRAP_UP_S ? tests_cap - TESTS_WRAP_UP_S : 1))
  # shellcheck disable=SC2086  # FLASHCORE_GPU_CHECK_TESTS_ARGS is a list of arguments
  timeout "$tests_cap" "$PY" scripts/gpu_tests.py --time-cap "$runner_cap" ${FLASHCORE_GPU_CHECK_TESTS_ARGS:-} \
    >"$OUT/tests.log" 2>&1
  rc=$?
  record tests "$rc" "$(($(date +%s) - t0))" "($(tail -n 1 "$OUT/tests.log"))"
  # Every MN-major wgmma form with the kernels' descriptor, and where one fails the descriptor readings that give
  # the right product (seconds; bench/notes/gpu_playbook.md). Appended to tests.log: informational, not a step.
  if [[ -z "${FLASHCORE_GPU_CHECK_TESTS_ARGS:-}" ]]; then
    { echo "==== tests/wgmma_diagnose.py ===="
      timeout "$(cap 60)" "$PY" tests/wgmma_diagnose.py 2>&1 | tail -n 40; } >>"$OUT/tests.log"
    grep -E "MN-major cases fail" "$OUT/tests.log" | tail -n 1 >>"$SUMMARY"
  fi
fi

# 3. compute-sanitizer on a small forward+backward through flashcore (tail tiles, causal, Sq != Sk,
#    every head dim), plus the flashcore_sm90 kernel ops (fwd, bwd_preprocess, gemm, bwd) called directly; the
#    forward and the backward both in single waves and over several (the dynamic scheduler's counter and hand-off).
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
# First the wgmma probes (one warpgroup: TMA -> mbarrier -> wgmma, nothing else): a racecheck or memcheck report here
# says how the tools treat the async proxy, which is how to read any report on the attention kernels below.
ns = torch.ops.flashcore_sm90
ns.wgmma_probe(rand(64, 64), rand(64, 128), 64, 64, False, True, False)
ns.wgmma_probe(rand(64, 64), rand(64, 64), 32, 32, False, True, True)
ns.wgmma_probe_chain(rand(64, 128), rand(128, 128), rand(128, 128))
torch.cuda.synchronize()
print("wgmma probes: ok")
for head_dim in (64, 128, 256):
    # 193 and 97 are multiples of no tile size: the last tiles are partial; 97 != 193 tests Sq != Sk.
    for seqlen_q, seqlen_k, causal in ((193, 193, False), (193, 193, True), (97, 193, True)):
        q, k, v = (rand(2, s, 2, head_dim).requires_grad_() for s in (seqlen_q, seqlen_k, seqlen_k))
        out, lse = flashcore.attention(q, k, v, causal=causal, return_lse=True)
        dout = rand(*out.shape)
        out.backward(dout)
        torch.cuda.synchronize()
        print(f"fwd+bwd D={head_dim} Sq={seqlen_q} Sk={seqlen_k} causal={causal}: ok")
# The kernel ops themselves, on ragged shapes: bwd_preprocess (with and without dlse) and the PTX-layer GEMM.
# (2048, 4096, 320): 256 tiles on 132 SMs and 5 K steps, so barrier phases wrap and blocks run several tiles.
d = ns.bwd_preprocess(out.detach(), dout, None)
ns.bwd_preprocess(out.detach(), dout, torch.randn_like(d))
torch.cuda.synchronize()
print("bwd_preprocess called directly: ok")
# The sm_90a attention forward, called directly (it is opt-in until proven, so flashcore.attention above may route
# to the reference): every head dim, ragged lengths, Sq != Sk both ways, causal / window / softcap, GQA, and a
# varlen batch whose sequences end mid-tile (the register-store path) and one with no keys.
if hasattr(ns, "fwd"):
    for head_dim in (64, 96, 128, 192, 256):
        for sq, sk, causal, wl, wr, cap in ((193, 193, False, -1, -1, 0.0), (97, 193, True, -1, -1, 0.0),
                                            (193, 97, False, 40, 7, 30.0), (1, 1, False, -1, -1, 0.0)):
            q, k, v = rand(2, sq, 4, head_dim), rand(2, sk, 2, head_dim), rand(2, sk, 2, head_dim)
            ns.fwd(q, k, v, None, None, 0, 0, head_dim ** -0.5, causal, wl, wr, cap, False)
        lens_q, lens_k = (1, 129, 200), (70, 0, 263)
        cu = lambda lens: torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
        q, k, v = rand(sum(lens_q), 4, head_dim), rand(sum(lens_k), 2, head_dim), rand(sum(lens_k), 2, head_dim)
        ns.fwd(q, k, v, cu(lens_q), cu(lens_k), max(lens_q), max(lens_k), head_dim ** -0.5, True, -1, -1, 0.0, False)
        torch.cuda.synchronize()
        print(f"fwd kernel D={head_dim} called directly: ok")
    # The dynamic tile scheduler (the default): more tiles than SMs, so CTAs claim tiles from the counter and the
    # producer hands each index to the consumers through shared memory. Causal GQA with 2 x 5 blocks x 16 heads =
    # 160 tiles; varlen with 64 heads (384 tiles) hands out blocks past a short sequence and a key-less sequence.
    for head_dim in (128, 256):
        q, k, v = rand(2, 640, 16, head_dim), rand(2, 640, 4, head_dim), rand(2, 640, 4, head_dim)
        ns.fwd(q, k, v, None, None, 0, 0, head_dim ** -0.5, True, -1, -1, 0.0, False)
        q, k, v = rand(sum(lens_q), 64, head_dim), rand(sum(lens_k), 8, head_dim), rand(sum(lens_k), 8, head_dim)
        ns.fwd(q, k, v, cu(lens_q), cu(lens_k), max(lens_q), max(lens_k), head_dim ** -0.5, True, -1, -1, 0.0, False)
        torch.cuda.synchronize()
        print(f"fwd kernel D={head_dim}, dynamic schedule over several waves: ok")
for m, n, kk in ((1, 1, 8), (127, 257, 72), (2048, 4096, 320)):
    a, b = rand(m, kk), rand(n, kk)
    c = ns.gemm(a, b)
    torch.cuda.synchronize()
    ref = a.float() @ b.float().T
    assert (c.float() - ref).norm() <= 1e-2 * ref.norm(), (m, n, kk)
    print(f"gemm {m}x{n}x{kk}: ok")
# The sm_90a attention backward op directly (out / lse from the reference forward): every head dim, ragged tiles,
# causal with Sq < Sk, a window, GQA / MQA, deterministic, softcap, and varlen with an empty sequence.
if hasattr(ns, "bwd"):
    from flashcore import reference
    cases = ((193, 193, True, -1, 4, 2, False, 0.0), (97, 193, False, 33, 2, 2, True, 0.0),
             (1, 65, True, -1, 2, 1, True, 5.0))
    for head_dim in (64, 96, 128, 192, 256):
        scale = head_dim ** -0.5
        for sq, sk, causal, left, hq, hkv, det, cap in cases:
            q, k, v = rand(2, sq, hq, head_dim), rand(2, sk, hkv, head_dim), rand(2, sk, hkv, head_dim)
            right = 0 if causal else -1
            out, lse = reference.forward(q, k, v, softmax_scale=scale, window_left=left, window_right=right,
                                         softcap=cap)
            grads = ns.bwd(rand(*out.shape), q, k, v, out, lse, None, None, None, sq, sk, scale, causal, left,
                           right, cap, det)
            torch.cuda.synchronize()
            assert all(torch.isfinite(g).all() for g in grads), (head_dim, sq, sk)
            print(f"bwd D={head_dim} Sq={sq} Sk={sk} causal={causal} left={left} heads={hq}/{hkv} det={det}: ok")
        cu_q = torch.tensor([0, 0, 70, 71, 200], device=dev, dtype=torch.int32)
        cu_k = torch.tensor([0, 5, 135, 135, 300], device=dev, dtype=torch.int32)
        q, k, v = rand(200, 4, head_dim), rand(300, 2, head_dim), rand(300, 2, head_dim)
        out, lse = reference.forward_varlen(q, k, v, cu_q, cu_k, softmax_scale=scale, window_right=0)
        grads = ns.bwd(rand(*out.shape), q, k, v, out, lse, None, cu_q, cu_k, 129, 165, scale, True, -1, 0, 0.0,
                       True)
        torch.cuda.synchronize()
        print(f"bwd varlen D={head_dim}: ok")
    # The dynamic item scheduler (the default): more K/V-block items than SMs, so CTAs claim items from the counter
    # in the workspace and the producer hands each index to the consumers through shared memory. Causal GQA with
    # 10 blocks x 8 K/V heads x 2 sequences = 160 items, in atomic and deterministic mode (the ordered dQ adds under
    # claimed items); D = 128 (128-key blocks) and D = 256 (64-key blocks, both consumers share a block).
    for head_dim, seqlen in ((128, 1280), (256, 640)):
        scale = head_dim ** -0.5
        q, k, v = rand(2, seqlen, 16, head_dim), rand(2, seqlen, 8, head_dim), rand(2, seqlen, 8, head_dim)
        out, lse = reference.forward(q, k, v, softmax_scale=scale, window_right=0)
        for det in (False, True):
            grads = ns.bwd(rand(*out.shape), q, k, v, out, lse, None, None, None, seqlen, seqlen, scale, True, -1, 0,
                           0.0, det)
            torch.cuda.synchronize()
            assert all(torch.isfinite(g).all() for g in grads), (head_dim, det)
            print(f"bwd D={head_dim}, dynamic schedule over several waves, det={det}: ok")
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

# 4. The PTX-layer GEMM against cuBLAS (torch.matmul) at 8192^3 and 4096^3 (issue 3's proof) -> gemm.json.
if ! skipped gemm; then
  t0=$(date +%s)
  PYTHONUNBUFFERED=1 timeout "$(cap 90)" "$PY" -m flashcore.bench --gemm --out "$OUT" --stem gemm \
    >"$OUT/gemm.log" 2>&1
  rc=$?
  tail -n 5 "$OUT/gemm.log" >>"$SUMMARY"
  rm -f "$OUT/gemm.log"
  record gemm "$rc" "$(($(date +%s) - t0))" ""
fi

# 5. The sm_90a backward op alone vs SDPA flash / cuDNN backward at D=128 (issue 5), lines into summary.txt (the
#    directory already holds the 8 files the device tool returns; `python -m flashcore.bench --bwd-op` for the JSON).
if ! skipped bwdop; then
  t0=$(date +%s)
  BWD_DIR=$(mktemp -d /tmp/flashcore_bwd_op.XXXXXX)
  PYTHONUNBUFFERED=1 timeout "$(cap 90)" "$PY" -m flashcore.bench --bwd-op --quick --head-dims 128 \
    --out "$BWD_DIR" >"$BWD_DIR/log" 2>&1
  rc=$?
  grep -E "^bwd |^wrote|Error" "$BWD_DIR/log" | tail -n 20 >>"$SUMMARY"
  rm -rf "$BWD_DIR"
  record bwdop "$rc" "$(($(date +%s) - t0))" ""
fi

# 6. Nsight Compute on one forward and two backward launches (atomic, deterministic) at D = 128 -> profile.log:
#    tensor-pipe utilisation (how much the backward's two lockstep consumers leave idle: bench/notes/bwd_sm90.md,
#    v3), warp stall reasons, shared-memory bank conflicts of the dQ staging stores, and each launch's duration
#    (the deterministic mode's cost). --clock-control none leaves the clocks as they are (device README).
if ! skipped profile; then
  t0=$(date +%s)
  PROF=$(mktemp /tmp/flashcore_profile.XXXXXX.py)
  cat >"$PROF" <<'EOF'
import torch
dev = torch.device("cuda")
ns = torch.ops.flashcore_sm90
gen = torch.Generator(device=dev).manual_seed(0)
b, s, h, d = 1, 8192, 16, 128  # ~0.9 ms forward, ~2.3 ms backward at the targets: a few replays each
q, k, v, dout = (torch.randn(b, s, h, d, generator=gen, device=dev, dtype=torch.bfloat16) for _ in range(4))
out, lse = ns.fwd(q, k, v, None, None, 0, 0, d ** -0.5, False, -1, -1, 0.0, False)
for det in (False, True):
    ns.bwd(dout, q, k, v, out, lse, None, None, None, s, s, d ** -0.5, False, -1, -1, 0.0, det)
torch.cuda.synchronize()
print("profiled: fwd, bwd, bwd deterministic at", (b, s, h, d))
EOF
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  metrics=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum
  metrics+=,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum
  metrics+=,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum
  # Issue slots: the backward's tiles were issue-bound on paper before v2.3 (bench/notes/bwd_sm90.md); these say
  # whether they still are (issue-active near 100 % with the tensor pipe well below it) and how many instructions
  # a launch executes against the static loop counts in the notes.
  metrics+=,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum
  timeout "$(cap 120)" "$NCU" --clock-control none -k 'regex:fwd_kernel|bwd_sm90_kernel' -c 3 \
    --section SpeedOfLight --section WarpStateStats --metrics "$metrics" "$PY" "$PROF" >"$OUT/profile.log" 2>&1
  rc=$?
  grep -E 'sm90_kernel|fwd_kernel|hmma_cycles_active|issue_active|gpu__time_duration' "$OUT/profile.log" | head -n 15 >>"$SUMMARY"
  rm -f "$PROF"
  record profile "$rc" "$(($(date +%s) - t0))" ""
fi

# 7. Benchmark into OUTDIR with whatever time is left.
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

# 8. Build switches against the default (bench/notes: the backward's v3 switches by default; any of the forward's
#    too), each built in a copy of the tree with its -D flag (ninja does not see flags given through the
#    environment), then the GPU tests of its kernel and a quick timing of the head dims it changes; lines into
#    summary.txt, prefixed with the switch, beside the default build's from the same call (step 5 for the
#    backward; for the forward, variant_baseline below). The copies leave this tree's build alone.
VARIANT_BUILD_CAP_S=150  # one build of the whole extension with 16 jobs: the backward file is the longest
FWD_PEERS=flashcore_sm90,sdpa_flash,sdpa_cudnn
variant_plan() {  # SWITCH -> "pytest -k expression|bench arguments"
  case "$1" in
    *_BWD_*) echo "bwd|--bwd-op --quick --head-dims 128" ;;
    *D64_TWO_CONSUMERS) echo "fwd|--mode fwd --quick --json-only --head-dims 64 --peers $FWD_PEERS" ;;
    *D128_N176) echo "fwd|--mode fwd --quick --json-only --head-dims 128 --peers $FWD_PEERS" ;;
    # the item boundaries it removes weigh most in short sequences: 512 (5 turns per consumer and item at D = 128)
    *ITEM_PIPELINE)
      echo "fwd|--mode fwd --quick --json-only --head-dims 64,128 --seqlens 512,1024,8192 --peers $FWD_PEERS" ;;
    *_FWD_*) echo "fwd|--mode fwd --quick --json-only --head-dims 64,128 --peers $FWD_PEERS" ;;
    *) echo "|" ;;
  esac
}
# A forward switch's timing is compared with the default build timed the same way in the same call (no other step
# of a variants call times the forward, and another call may land on another machine): once per argument set, from
# this tree's build, lines prefixed "default:". The backward's comparison is the bwdop step of the same call.
declare -A BASELINED=()  # bench argument sets already timed on the default build
variant_baseline() {  # variant_baseline BENCH_ARGS
  [[ -n "${BASELINED[$1]:-}" ]] && return 0
  BASELINED[$1]=1
  if ! compgen -G "flashcore/_C*.so" >/dev/null; then
    echo "default: no build in this tree (a fresh machine with the build step skipped): no same-call baseline" \
      >>"$SUMMARY"
    return 0
  fi
  local dir; dir=$(mktemp -d "$OUT/variant_baseline.XXXX")
  # shellcheck disable=SC2086  # a list of arguments
  PYTHONUNBUFFERED=1 timeout "$(cap 90)" "$PY" -m flashcore.bench $1 --out "$dir" >"$dir/bench.log" 2>&1
  grep -E "^\[|Error" "$dir/bench.log" | tail -n 16 | sed "s/^/default: /" >>"$SUMMARY"
}
if ! skipped variants; then
  # shellcheck disable=SC2086  # a list of switch names
  for switch in ${FLASHCORE_GPU_CHECK_VARIANTS:-FLASHCORE_BWD_SM90_DQ_LAG FLASHCORE_BWD_SM90_DQ_LAG_PINGPONG}; do
    t0=$(date +%s)
    plan=$(variant_plan "$switch")
    select=${plan%%|*} bench_args=${plan#*|}
    if [[ -z "$select" ]]; then
      record "${switch#FLASHCORE_}" 2 0 "(unknown switch: no tests or timing for it)"
      continue
    fi
    if ! grep -rqw -- "$switch" csrc; then  # a misspelt name would build, and time, the default under its name
      record "${switch#FLASHCORE_}" 2 0 "(no source in csrc/ reads this switch: a typo?)"
      continue
    fi
    [[ "$select" == fwd ]] && variant_baseline "$bench_args"
    VDIR=$(mktemp -d /tmp/flashcore_variant.XXXXXX)
    tar --exclude=./build --exclude='./flashcore/_C*' --exclude=./.git -cf - . | tar -xf - -C "$VDIR"
    (cd "$VDIR" && NVCC_APPEND_FLAGS="-D$switch" MAX_JOBS=16 CUDA_HOME=/usr/local/cuda \
      timeout "$(cap $VARIANT_BUILD_CAP_S)" "$PY" setup.py build_ext --inplace >"$VDIR/build.log" 2>&1)
    rc=$?
    detail="(build rc $rc)"
    if ((rc == 0)); then
      (cd "$VDIR" && timeout "$(cap 150)" "$PY" scripts/gpu_tests.py --time-cap "$(cap 140)" -k "$select" \
        >"$VDIR/tests.log" 2>&1)
      rc=$?
      detail="(tests: $(tail -n 1 "$VDIR/tests.log"))"
      tail -n 6 "$VDIR/tests.log" | sed "s/^/$switch: /" >>"$SUMMARY"
      # shellcheck disable=SC2086  # bench_args is a list of arguments
      (cd "$VDIR" && PYTHONUNBUFFERED=1 timeout "$(cap 90)" "$PY" -m flashcore.bench $bench_args --out "$VDIR" \
        >"$VDIR/bench.log" 2>&1) || rc=$((rc == 0 ? 1 : rc))
      grep -E "^\[|^bwd |Error" "$VDIR/bench.log" | tail -n 16 | sed "s/^/$switch: /" >>"$SUMMARY"
    else
      tail -n 5 "$VDIR/build.log" >>"$SUMMARY"
    fi
    rm -rf "$VDIR"
    record "${switch#FLASHCORE_}" "$rc" "$(($(date +%s) - t0))" "$detail"
  done
fi

note "---- total $(($(date +%s) - START))s; failed: ${FAILED[*]:-none} ----"
((${#FAILED[@]} == 0))

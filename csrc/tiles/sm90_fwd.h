// Tile shapes of the sm_90a attention forward (csrc/cuda/fwd/), one row per head dim: the single source of truth.
// The kernel's constants come from this table (fwd/traits.cuh); the shape advisor parses it as text, so keep the
// X(...) rows one per line with plain integers.
//
// Budgets (H100, sm_90a): 227 KB shared memory per block; 64K registers per SM, 384 threads (1 producer + 2
// consumer warpgroups) -> 168 per thread at launch, redistributed by setmaxnreg to 24 (producer) and 240
// (consumers): 24 x 128 + 240 x 256 = 64512 = the whole pool. Per consumer thread the live registers peak while
// the P*V GEMM of one tile runs under the softmax of the next: O accumulator D/2 + S (then fp32 P) of the next tile
// N/2 + the 16-bit P operand of the running GEMM N/4 = D/2 + 3N/4 (N = block_n), plus ~40 for addresses, row
// state and loop control; ptxas must fit that in 240 without spilling (checked: no LDL/STL in any instantiation).
// Shared memory: Q block_m x Dp, and per stage one K and one V tile of block_n x Dp (Dp = D rounded up to 64: tiles
// are stored as 64-column, 128-byte-swizzled panels; the output reuses Q's buffer), + 1 KB barriers, + 1 KB slack.
//   D=64:  N=128: 32 + 96 = 128 regs. Q 16 KB + 3 stages x 32 KB = 112 KB; the third stage is free at this size and
//          hides more load latency (D=64 has the least math per byte loaded). 114 KB.
//   D=96:  N=128: 48 + 96 = 144 regs. Dp = 128 (96 + a zero-filled half panel): Q 32 KB + 2 x 64 KB = 160 KB;
//          3 stages would need 224 KB + Q.
//   D=128: N=128: 64 + 96 = 160 regs. Q 32 KB + 2 x 64 KB = 160 KB (3 stages: 256 KB, over). N=176 (FA3's
//          choice) also fits (64 + 132 regs; Q 32 + 2 x 88 = 208 KB): the first thing to measure on a GPU; 128
//          keeps tiles aligned with the 128-row query blocks, so the causal diagonal cuts one tile per block.
//   D=192: N=96: 96 + 72 = 168 regs. Q 48 KB + 2 x 72 KB = 192 KB (N=128 would be 240 KB: over).
//   D=256: N=80: 128 + 60 = 188 regs. Q 64 KB + 2 x 80 KB = 224 KB, the largest N whose two stages fit.
// block_m = 128 everywhere: two consumer warpgroups x 64 rows (the M of one wgmma); ctas_per_sm = 1 (registers).
//
// columns: head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm
#define FLASHCORE_TILES_SM90_FWD(X) \
  X(64, 128, 128, 3, 3, 1) \
  X(96, 128, 128, 2, 3, 1) \
  X(128, 128, 128, 2, 3, 1) \
  X(192, 128, 96, 2, 3, 1) \
  X(256, 128, 80, 2, 3, 1)

// Tile shapes of the sm_90a attention forward (csrc/cuda/fwd/), one row per head dim: the single source of truth.
// The kernel's constants come from this table (fwd/traits.cuh); the shape advisor parses it as text, so keep the
// X(...) rows one per line with plain integers.
//
// Budgets (H100, sm_90a): 227 KB shared memory per block; 64K registers per SM, redistributed by setmaxnreg from
// the producer warpgroup (lowered to 24, setmaxnreg's minimum: it only computes coordinates) to the consumers.
//   2 consumers (384 threads): 168 per thread at launch; 24 x 128 + 240 x 256 = 64512 <= 168 x 384 = 64512.
//   3 consumers (512 threads): 128 per thread at launch; 24 x 128 + 160 x 384 = 64512 <= 128 x 512 = 65536
//   (168 would be 67584: over the pool; 160 is the largest multiple of 8 that fits).
// Per consumer thread the live registers peak while the P*V GEMM of one tile runs under the softmax of the next:
// O accumulator D/2 + S (then fp32 P) of the next tile N/2 + the 16-bit P operand of the running GEMM N/4 = D/2 +
// 3N/4 (N = block_n), plus ~40 for addresses, row state and loop control; ptxas must fit that in the consumers'
// budget without spilling (checked: no LDL/STL in any instantiation).
// Shared memory: Q block_m x Dp, and per stage one K and one V tile of block_n x Dp (Dp = D rounded up to 64: tiles
// are stored as 64-column, 128-byte-swizzled panels), + 1 KB barriers, + 1 KB slack; where it fits (D <= 128) a
// separate output buffer of Q's size (fwd/traits.cuh kSeparateOut), else the output reuses Q's buffer.
//   D=64:  block_m = 192, 3 consumer warpgroups (bench/notes/fwd_sm90.md v4). D=64 is bound by the exponentials
//          and the other softmax ALU work, not the tensor cores: a 64-row warpgroup's softmax of a tile takes about
//          as long as its two GEMMs, so with two consumers the tensor cores idle whenever one softmax runs late;
//          a third gives the ping-pong that slack (two softmaxes under each warpgroup's GEMMs). N=128: 32 + 64 + 32
//          + ~40 = ~168 regs estimated against 160: ptxas fits it in 157 without spills (the ~40 is ~30 here; the
//          same 157 as under the 240 cap of 2 consumers). Q 24 KB + output 24 KB + 4 stages x 32 KB = 176 KB + 2 KB = 178 KB;
//          the fourth stage is free at this size: a stage is now held from the first consumer's S GEMM to the
//          third's, two turns later, and D=64 has the least math per byte loaded.
//          (-DFLASHCORE_FWD_SM90_D64_TWO_CONSUMERS builds the previous 128 x 128, 3 stages, 2 consumers instead:
//          a switch for bisecting on a GPU, fwd/traits.cuh.)
//   D=96:  N=128: 48 + 96 = 144 regs. Dp = 128 (96 + a zero-filled half panel): Q 32 KB + 2 x 64 KB = 160 KB;
//          3 stages would need 224 KB + Q.
//   D=128: N=128: 64 + 96 = 160 regs. Q 32 KB + 2 x 64 KB = 160 KB (3 stages: 256 KB, over). N=176 (FA3's
//          choice) also fits (64 + 132 regs; Q 32 + 2 x 88 = 208 KB): the first thing to measure on a GPU; 128
//          keeps tiles aligned with the 128-row query blocks, so the causal diagonal cuts one tile per block.
//          (-DFLASHCORE_FWD_SM90_D128_N176 builds 128 x 176, output staged in Q's buffer: a switch to time against
//          this row on a GPU, fwd/traits.cuh; bench/notes/fwd_sm90.md v5 candidate.)
//   D=192: N=96: 96 + 72 = 168 regs. Q 48 KB + 2 x 72 KB = 192 KB (N=128 would be 240 KB: over).
//   D=256: N=80: 128 + 60 = 188 regs. Q 64 KB + 2 x 80 KB = 224 KB, the largest N whose two stages fit.
// block_m = 64 x consumer warpgroups (the M of one wgmma each); warpgroups = 1 producer + the consumers;
// ctas_per_sm = 1 (registers).
//
// columns: head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm
#define FLASHCORE_TILES_SM90_FWD(X) \
  X(64, 192, 128, 4, 4, 1) \
  X(96, 128, 128, 2, 3, 1) \
  X(128, 128, 128, 2, 3, 1) \
  X(192, 128, 96, 2, 3, 1) \
  X(256, 128, 80, 2, 3, 1)

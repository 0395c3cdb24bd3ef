// Tile shapes of the gfx942 (MI300X) attention backward, one row per head dim: the single source of truth. The
// kernel (csrc/hip/bwd_kernel.h, BwdTile) reads its constants from this table and static_asserts what its design
// needs; tools parse this file as text, so keep one X(...) row per line in the format below.
//
//   block_m         query rows per streamed Q/dO tile (a multiple of 32: one 32x32 MFMA block per 32 rows)
//   block_n         keys per K/V block = one workgroup's keys; each wave owns 32 of them (block_n = 32 * waves)
//   waves           waves per workgroup
//   waves_per_simd  occupancy the register allocator must keep (amdgpu_waves_per_eu); csrc/hip/isa_budget.json
//                   records what it reached
//
// Per wave the K/V block lives in registers for the whole kernel: K and V as MFMA B operands (D/4 VGPRs each),
// K^T fragments for dQ (D/4 per dQ tile slot), and the dK^T, dV^T accumulators (D/2 each); per Q tile the S and
// dP accumulators (16 per 32 rows each) come on top. LDS holds Q, dO (row-major) and Q^T, dO^T of one tile:
// 4 * block_m * D * 2 bytes (dS for dQ reuses the Q and dO space).
//
//   D    block_m  LDS      VGPR plan          waves/SIMD  why
//   64   64       32 KiB   ~1.5 D + 2 tiles   2           64 rows give each of the 4 waves one dQ tile (2 row x 2 dim
//                                                         blocks) and halve the barriers per query row
//   96   32       24 KiB   ~1.5 D + 1 tile    2           3 dim blocks: waves 0-2 take a dQ tile each
//   128  32       32 KiB   1.75 D + 1 tile    1           K, V, K^T (96) + dK^T, dV^T (128) leave no room in 256
//   192  32       48 KiB   2 D + 1 tile       1           as D = 128; two dQ slots for waves 0 and 1
//   256  32       64 KiB   1.75 D + 1 tile    1           LDS is full (4 x 16 KiB); accumulators live in AGPRs
//
// columns: head_dim, block_m, block_n, waves, waves_per_simd
#define FLASHCORE_TILES_GFX942_BWD(X) \
  X(64, 64, 128, 4, 1) \
  X(96, 32, 128, 4, 1) \
  X(128, 32, 128, 4, 1) \
  X(192, 32, 128, 4, 1) \
  X(256, 32, 128, 4, 1)

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
// K^T fragments for dQ (32 per dQ tile slot) and the dK^T, dV^T accumulators (D/2 each); per Q tile the S and
// dP accumulators (16 per 32 rows each) and the P / dS operands come on top. LDS holds Q, dO (row-major) and
// Q^T, dO^T of one tile: 4 * block_m * D * 2 bytes (dS for dQ reuses the Q and dO space). Every head dim runs at
// one wave per SIMD: two would cap a wave at 256 registers, and the K/V state alone is 1.75 D (csrc/hip/
// isa_budget.json has the counts the allocator reached, 384..512 of 512).
//
//   D    block_m  LDS      why this block_m
//   64   64       32 KiB   64 rows give each of the 4 waves one 32x32 dQ tile (2 row x 2 dim blocks) and halve
//                          the barriers per query row; S and dP for 64 rows still fit beside the K/V state
//   96   32       24 KiB   3 dim blocks: waves 0-2 take a dQ tile each, wave 3 none
//   128  32       32 KiB   one dQ tile per wave; 64 rows would fill all 64 KiB and add ~48 VGPRs (not tried)
//   192  32       48 KiB   K and V re-read per tile (the accumulators are 192 VGPRs); 6 dQ tiles over 4 waves
//   256  32       64 KiB   LDS full (4 x 16 KiB); accumulators fill the AGPRs; K^T re-gathered per dQ slot
//
// columns: head_dim, block_m, block_n, waves, waves_per_simd
#define FLASHCORE_TILES_GFX942_BWD(X) \
  X(64, 64, 128, 4, 1) \
  X(96, 32, 128, 4, 1) \
  X(128, 32, 128, 4, 1) \
  X(192, 32, 128, 4, 1) \
  X(256, 32, 128, 4, 1)

// LDS on gfx942: the bank model, the XOR swizzle flashcore's tiles use, and 16/8-byte LDS accesses.
//
// Bank model (CDNA3): 64 KiB per CU, 32 banks of 4 bytes; address a lives in bank (a / 4) % 32. An LDS
// instruction of a wave is served in phases of 128 bytes (32 banks x 4 B); lanes of one phase that touch the
// same bank at different addresses serialise (an n-way conflict costs n cycles instead of one). Which lanes
// share a phase depends on the access width:
//   ds_write_b128          8 phases of 8 consecutive lanes (0-7, 8-15, ...)
//   ds_read_b128           8 phases of 8 lanes: {0-3, 20-23}, {4-7, 16-19}, {8-11, 28-31}, {12-15, 24-27} and the
//                          same +32 (Composable Kernel's LDS documentation for CDNA3)
//   ds_read/write_b64      4 phases of 16 consecutive lanes
// So a 16-byte access is conflict-free when the 8 lanes of each phase hit 8 different 16-byte "bank groups"
// (address / 16 mod 8), an 8-byte one when the 16 lanes cover all 32 banks.
//
// Tiles here are row-major with rows of R 16-byte chunks (R = row bytes / 16). The MFMA operand reads in
// csrc/hip/fwd_kernel.h make the 8 lanes of a ds_read_b128 phase read the same chunk column c of 8 different
// rows, and those rows come in two runs of 4 consecutive rows whose row numbers differ in bit 4 (rows r..r+3 and
// r'..r'+3 with r' = r ^ 16 or r ^ 24, see the kernel). Unswizzled, a row of 128, 256 or 512 bytes puts all 8 in
// one bank group: an 8-way conflict. The swizzle stores chunk c of row r at chunk c ^ s(r):
//   R % 8 == 0 (rows of a multiple of 128 B):  s(r) = (r & 3) | (bit 4 of r) << 2    -- 8 distinct groups
//   R % 8 == 4 (rows of 64 B + k * 128 B):     s(r) = ((r >> 1) & 1) | (bit 4 of r) << 1
//     (rows r and r + 1 already sit 64 B = 4 groups apart; s separates the 4 rows of equal parity.)
// The XOR only touches the low 3 (or 2) bits of c, so a chunk stays in its row and no padding is needed: the
// LDS budget stays exactly rows x row bytes. Writes (8 or 16 consecutive lanes along one row) stay
// conflict-free because XOR with a per-row constant permutes the chunks of that row. tests/test_hip_emulated.py
// replays every LDS access of the forward kernel against this model and requires zero conflicts.
#pragma once

#include "compat.h"
#include "types.h"

namespace flashcore::gfx942 {

// Chunk permutation of row `row` of a tile with `row_chunks` 16-byte chunks per row.
constexpr int lds_swizzle(int row_chunks, int row) {
  return row_chunks % 8 == 0 ? (row & 3) | ((row >> 4) & 1) << 2 : ((row >> 1) & 1) | ((row >> 4) & 1) << 1;
}

// Byte offset of 16-byte chunk `chunk` of row `row`. Written as (aligned group of the chunk) + (XOR within the
// group) so that, when `chunk` is a compile-time step plus a lane term, the group part folds into the
// instruction's immediate offset and a lane needs one address register per distinct (chunk % group), not one
// per chunk.
template <int kRowChunks>
constexpr uint32_t lds_offset(int row, int chunk) {
  static_assert(kRowChunks % 4 == 0, "the swizzle permutes chunks within aligned groups of 4 or 8");
  constexpr int kGroup = kRowChunks % 8 == 0 ? 8 : 4;
  const int in_group = (chunk & (kGroup - 1)) ^ lds_swizzle(kRowChunks, row);
  return static_cast<uint32_t>((row * kRowChunks + (chunk & ~(kGroup - 1)) + in_group) * 16);
}

FLASHCORE_DEVICE u32x4 lds_load16(const uint8_t* lds, uint32_t offset) {  // ds_read_b128
  return *reinterpret_cast<const u32x4*>(lds + offset);
}

FLASHCORE_DEVICE void lds_store16(uint8_t* lds, uint32_t offset, u32x4 v) {  // ds_write_b128
  *reinterpret_cast<u32x4*>(lds + offset) = v;
}

FLASHCORE_DEVICE void lds_store2(uint8_t* lds, uint32_t offset, uint32_t v) {  // ds_write_b16: bits 15:0 of v
  *reinterpret_cast<uint16_t*>(lds + offset) = static_cast<uint16_t>(v);
}

// A lane's LDS address of 16-byte chunk 2t + half (t = 0, 1, ...) of row 32 block + row (row < 32) in a swizzled
// tile of kRowChunks chunks per row, as (lane part) + (immediate part): the swizzle depends on row bits 0..4 only
// and XORs within aligned groups of kGroup chunks, so the lane part depends on t only through t % kVariants and a
// lane keeps kVariants address registers for all blocks and steps. at(block, t) == base + lds_offset(...).
template <int kRowChunks>
struct LanePairAddress {
  static constexpr int kGroup = kRowChunks % 8 == 0 ? 8 : 4;
  static constexpr int kVariants = kGroup / 2;
  uint32_t lane[kVariants];
  FLASHCORE_DEVICE LanePairAddress(uint32_t base, int row, int half) {
#pragma unroll
    for (int v = 0; v < kVariants; ++v) lane[v] = base + lds_offset<kRowChunks>(row, 2 * v + half);
  }
  static constexpr uint32_t step(int block, int t) {
    return static_cast<uint32_t>((32 * block * kRowChunks + 2 * (t - t % kVariants)) * 16);
  }
  FLASHCORE_DEVICE uint32_t at(int block, int t) const { return lane[t % kVariants] + step(block, t); }
};

FLASHCORE_DEVICE void lds_store8(uint8_t* lds, uint32_t offset, u32x2 v) {  // ds_write_b64
  *reinterpret_cast<u32x2*>(lds + offset) = v;
}

}  // namespace flashcore::gfx942

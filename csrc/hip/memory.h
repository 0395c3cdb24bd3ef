// Global memory accesses of the gfx942 kernels: raw-buffer loads for K/V tiles, 16-byte vector loads and stores,
// 4-byte stores.
//
// Bounds, two ways, both without a branch around a load:
// - K/V tiles go through a raw buffer resource (V#) whose base is the tile's first row and whose size covers
//   only the rows of the sequence: the hardware range check returns zeros for the rows of a ragged tail, and
//   the per-thread offsets are the same for every tile (no per-tile address arithmetic in VGPRs; the base is
//   scalar).
// - Q rows and the output: a row past the end of the sequence is read at a clamped row of the same sequence (the
//   caller passes that address) and zeroed (load16_or_zero: one global_load_dwordx4 and a mask), and never
//   stored.
// The CPU harness checks every access against the launched tensors' extents, and models the buffer range check.
#pragma once

#include "compat.h"
#include "types.h"

namespace flashcore::gfx942 {

// The 16 bytes at p (16-byte aligned, always a readable address) when `valid`, else zeros.
FLASHCORE_DEVICE u32x4 load16_or_zero(const void* p, bool valid) {
#if defined(FLASHCORE_HIP_EMU)
  emu::check_global(p, 16, false);
#endif
  const u32x4 v = *static_cast<const u32x4*>(p);
  const uint32_t keep = valid ? ~0u : 0u;
  return v & keep;
}

FLASHCORE_DEVICE float load_f32(const float* p) {
#if defined(FLASHCORE_HIP_EMU)
  emu::check_global(p, 4, false);
#endif
  return *p;
}

// A raw buffer: `bytes` from `base`; a load at an offset at or past `bytes` returns zeros.
#if defined(FLASHCORE_HIP_EMU)
struct GlobalBuffer {
  const uint8_t* base;
  uint32_t bytes;
};
#else
struct GlobalBuffer {
  __amdgpu_buffer_rsrc_t rsrc;
};
// Word 3 of a gfx9 buffer resource: DATA_FORMAT = 32 (a valid format, so the unit does not treat the buffer as
// disabled), no swizzle, no index stride; the same value Composable Kernel uses for gfx90a/gfx94x.
constexpr int kBufferWord3 = 0x00020000;
#endif

// `base` must be wave-uniform (it lives in SGPRs).
FLASHCORE_DEVICE GlobalBuffer make_buffer(const void* base, uint32_t bytes) {
#if defined(FLASHCORE_HIP_EMU)
  return GlobalBuffer{static_cast<const uint8_t*>(base), bytes};
#else
  return GlobalBuffer{__builtin_amdgcn_make_buffer_rsrc(const_cast<void*>(base), 0, static_cast<int>(bytes), kBufferWord3)};
#endif
}

// buffer_load_dwordx4 at byte offset + scalar_offset (16-byte aligned): the data, or zeros past the buffer's end.
// `scalar_offset` must be wave-uniform (an SGPR operand: a per-lane offset shared by several loads costs one VGPR).
FLASHCORE_DEVICE u32x4 buffer_load16(const GlobalBuffer& buffer, uint32_t offset, uint32_t scalar_offset = 0) {
#if defined(FLASHCORE_HIP_EMU)
  offset += scalar_offset;
  if (offset >= buffer.bytes) return u32x4{0u, 0u, 0u, 0u};
  if (offset + 16 > buffer.bytes) emu::fail("buffer load straddles the end of its buffer (undefined here)");
  emu::check_global(buffer.base + offset, 16, false);
  return *reinterpret_cast<const u32x4*>(buffer.base + offset);
#else
  return bit_cast<u32x4>(__builtin_amdgcn_raw_buffer_load_b128(buffer.rsrc, static_cast<int>(offset),
                                                               static_cast<int>(scalar_offset), 0));
#endif
}

// buffer_load_ushort at byte offset + scalar_offset (2-byte aligned): the element in bits 15:0, or 0 past the end.
FLASHCORE_DEVICE uint32_t buffer_load2(const GlobalBuffer& buffer, uint32_t offset, uint32_t scalar_offset = 0) {
#if defined(FLASHCORE_HIP_EMU)
  offset += scalar_offset;
  if (offset >= buffer.bytes) return 0u;
  if (offset + 2 > buffer.bytes) emu::fail("buffer load straddles the end of its buffer (undefined here)");
  emu::check_global(buffer.base + offset, 2, false);
  return *reinterpret_cast<const uint16_t*>(buffer.base + offset);
#else
  return __builtin_amdgcn_raw_buffer_load_b16(buffer.rsrc, static_cast<int>(offset), static_cast<int>(scalar_offset), 0);
#endif
}

FLASHCORE_DEVICE void store16(void* p, u32x4 v) {
#if defined(FLASHCORE_HIP_EMU)
  emu::check_global(p, 16, true);
#endif
  *static_cast<u32x4*>(p) = v;
}

FLASHCORE_DEVICE void store_f32(float* p, float v) {
#if defined(FLASHCORE_HIP_EMU)
  emu::check_global(p, 4, true);
#endif
  *p = v;
}

FLASHCORE_DEVICE int load_i32(const int32_t* p) {  // cu_seqlens entries
#if defined(FLASHCORE_HIP_EMU)
  emu::check_global(p, 4, false);
#endif
  return *p;
}

}  // namespace flashcore::gfx942

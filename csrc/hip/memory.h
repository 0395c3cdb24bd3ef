// Global memory accesses of the gfx942 kernels: 16-byte vector loads and stores, 4-byte stores.
//
// Bounds: the kernels never form an address outside a tensor. A row past the end of a sequence (a ragged tail
// of a tile) is not loaded at all -- load16_or_zero's predicate turns the load off for that lane (the compiler
// emits it under an exec mask) and the lane gets zeros -- and is not stored. So no buffer descriptor's range
// check is needed for safety; the CPU harness checks every access against the launched tensors' extents.
#pragma once

#include "compat.h"
#include "types.h"

namespace flashcore::gfx942 {

// 16 bytes at p (16-byte aligned) when `valid`, else zeros and no memory access.
FLASHCORE_DEVICE u32x4 load16_or_zero(const void* p, bool valid) {
  u32x4 v = {0u, 0u, 0u, 0u};
  if (valid) {
#if defined(FLASHCORE_HIP_EMU)
    emu::check_global(p, 16, false);
#endif
    v = *static_cast<const u32x4*>(p);
  }
  return v;
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

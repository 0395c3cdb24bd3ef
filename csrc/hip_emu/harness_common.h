// What the attention harness entry points (harness_fwd.cpp, harness_bwd.cpp) share: the element type each build
// runs (-DFLASHCORE_EMU_ELEMENT=Bf16 or Fp16, one object per type so the two compile in parallel), token pasting
// for the per-type C symbol names, and the byte extent of a strided view for the harness's bounds checks.
// Include after the kernel header (it names gfx942::Bf16 / Fp16 and flashcore::Strided).
#pragma once

#include <cstddef>
#include <cstdint>

#ifndef FLASHCORE_EMU_ELEMENT
#error "compile with -DFLASHCORE_EMU_ELEMENT=Bf16 or Fp16"
#endif
#define FLASHCORE_CAT_(a, b) a##b
#define FLASHCORE_CAT(a, b) FLASHCORE_CAT_(a, b)

namespace flashcore::emu_harness {

using Element = gfx942::FLASHCORE_EMU_ELEMENT;

inline size_t extent_bytes(const Strided& t, size_t element_bytes) {  // bytes from data to the view's last element
  int64_t last = 0;
  for (int d = 0; d < t.dim; ++d) {
    if (t.size[d] == 0) return 0;
    last += (t.size[d] - 1) * t.stride[d];
  }
  return static_cast<size_t>(last + 1) * element_bytes;
}

}  // namespace flashcore::emu_harness

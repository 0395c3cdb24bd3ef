// What the attention harness entry points (harness_fwd.cpp, harness_bwd.cpp) share: the element type each build
// runs (-DFLASHCORE_EMU_ELEMENT=Bf16 or Fp16, one object per type so the two compile in parallel); token pasting
// for the per-type C symbol names and the views of ctypes tensors come from csrc/emu_harness_views.h (shared with
// the sm_90a harness).
// Include after the kernel header (it names gfx942::Bf16 / Fp16 and flashcore::Strided).
#pragma once

#include "../emu_harness_views.h"

#ifndef FLASHCORE_EMU_ELEMENT
#error "compile with -DFLASHCORE_EMU_ELEMENT=Bf16 or Fp16"
#endif

namespace flashcore::emu_harness {

using Element = gfx942::FLASHCORE_EMU_ELEMENT;

}  // namespace flashcore::emu_harness

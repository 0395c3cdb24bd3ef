// The special-function unit (MUFU) approximations the attention kernels use, as named functions so that the CPU
// model (csrc/cuda_emu, FLASHCORE_SM90_EMU) can give them a host body while nvcc keeps the single instruction.
//
// PTX ISA references (section titles): "tanh", "ex2" (floating-point instructions, .approx forms).
#pragma once

#if defined(FLASHCORE_SM90_EMU)
#include <cmath>
#endif

namespace flashcore::sm90::ptx {

// MUFU.TANH: one instruction, ~2^-11 relative error. The model uses the exact tanh: the tests' tolerances are set
// by the 16-bit outputs, far above either error.
__device__ __forceinline__ float tanh_approx(float x) {
#if defined(FLASHCORE_SM90_EMU)
  return std::tanh(x);
#else
  float y;
  asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

// MUFU.EX2 with flush-to-zero: exp2(-inf) = 0, results below FLT_MIN are 0 (modelled: the exact exp2, then the
// flush).
__device__ __forceinline__ float exp2_approx(float x) {
#if defined(FLASHCORE_SM90_EMU)
  const float y = std::exp2(x);
  return std::fpclassify(y) == FP_SUBNORMAL ? 0.0f : y;
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

}  // namespace flashcore::sm90::ptx

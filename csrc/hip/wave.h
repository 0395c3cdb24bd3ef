// Cross-lane exchange and the per-lane transcendental math of the gfx942 kernels.
#pragma once

#include "compat.h"
#include "types.h"

#if defined(FLASHCORE_HIP_EMU)
#include <cmath>

#include "../hip_emu/builtins.h"
#endif

namespace flashcore::gfx942 {

// The value lane l ^ 32 holds. A 32x32 MFMA accumulator column (one attention query row in the forward kernel)
// is split over lanes l and l + 32, so one exchange completes a row reduction. ds_bpermute_b32 pulls through
// the LDS crossbar without touching LDS memory; DPP row operations stay within 16 lanes and cannot do this.
FLASHCORE_DEVICE float swap_halves(float v) {
  const int lane = thread_id() % kWaveSize;
  const int address = (lane ^ 32) * 4;
#if defined(FLASHCORE_HIP_EMU)
  return bit_cast<float>(emu::ds_bpermute(address, bit_cast<int>(v)));
#else
  return bit_cast<float>(__builtin_amdgcn_ds_bpermute(address, bit_cast<int>(v)));
#endif
}

// The value lane `source` holds (ds_bpermute_b32 with a per-lane source; no LDS memory is touched).
FLASHCORE_DEVICE float lane_value(float v, int source) {
#if defined(FLASHCORE_HIP_EMU)
  return bit_cast<float>(emu::ds_bpermute(source * 4, bit_cast<int>(v)));
#else
  return bit_cast<float>(__builtin_amdgcn_ds_bpermute(source * 4, bit_cast<int>(v)));
#endif
}

// True in every lane when `pred` holds in at least one lane of the wave (v_cmp into a 64-bit lane mask, then a
// scalar test): a wave-uniform branch condition.
FLASHCORE_DEVICE bool wave_any(bool pred) {
#if defined(FLASHCORE_HIP_EMU)
  return emu::ballot(pred) != 0;
#else
  return __builtin_amdgcn_ballot_w64(pred) != 0;
#endif
}

// 2^x: v_exp_f32 (1 ULP; 2^-inf = 0, which the online softmax relies on).
FLASHCORE_DEVICE float exp2_fast(float x) {
#if defined(FLASHCORE_HIP_EMU)
  return std::exp2(x);
#else
  return __builtin_amdgcn_exp2f(x);
#endif
}

// log2(x): v_log_f32.
FLASHCORE_DEVICE float log2_fast(float x) {
#if defined(FLASHCORE_HIP_EMU)
  return std::log2(x);
#else
  return __builtin_amdgcn_logf(x);
#endif
}

// 1 / x: v_rcp_f32 (1 ULP), instead of the ~10-instruction IEEE division sequence.
FLASHCORE_DEVICE float rcp_fast(float x) {
#if defined(FLASHCORE_HIP_EMU)
  return 1.0f / x;
#else
  return __builtin_amdgcn_rcpf(x);
#endif
}

// tanh(x) = (1 - e^-2|x|) / (1 + e^-2|x|) with the sign of x: one exp2, one rcp. Absolute error a few 1e-7
// (what softcap needs: it multiplies by softcap and feeds exp); NaN stays NaN.
FLASHCORE_DEVICE float tanh_fast(float x) {
  constexpr float kMinus2Log2e = -2.0f * 1.4426950408889634f;
  const float t = exp2_fast(kMinus2Log2e * __builtin_fabsf(x));
  return __builtin_copysignf((1.0f - t) * rcp_fast(1.0f + t), x);
}

// max that ignores a NaN operand (v_max_f32 semantics, IEEE maxNum), the same on host and device.
FLASHCORE_DEVICE float max_num(float a, float b) { return __builtin_fmaxf(a, b); }

}  // namespace flashcore::gfx942

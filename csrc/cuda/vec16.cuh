// 16-byte vectors of eight fp16/bf16 values: the global load that reads them and the fp32 dot product over them.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#if defined(FLASHCORE_SM90_EMU)
#include <cstring>
#endif

#include "../bwd_preprocess_params.h"  // HalfType

namespace flashcore::sm90 {

constexpr int kElemsPerVec = 8;  // 16 bytes / 2 bytes per fp16/bf16 value

struct Vec16 {
  uint32_t w[4];  // element 2i in the low half of w[i], element 2i+1 in the high half
};

// 16 bytes at ptr when `valid`, zeros otherwise (ptr is then never dereferenced), as one predicated PTX load:
// with no branch around it, ptxas can hoist all of a thread's loads above the math that consumes them.
// ld.global.nc: read-only for the whole kernel, so the non-coherent path may serve it.
// L1::no_allocate: each byte is read exactly once; caching it in L1 only evicts data someone would reuse.
// ptr must be 16-byte aligned (the host checks, see rows_vectorizable in csrc/checks.h).
// The CPU model (FLASHCORE_SM90_EMU) reads the same 16 bytes with a plain copy.
__device__ __forceinline__ Vec16 ld_global_nc_v4_or_zero(const void* ptr, bool valid) {
#if defined(FLASHCORE_SM90_EMU)
  Vec16 v{};
  if (valid) std::memcpy(&v, ptr, sizeof(v));
  return v;
#else
  Vec16 v;
  asm("{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %5, 0;\n"
      "  mov.b32 %0, 0;\n"
      "  mov.b32 %1, 0;\n"
      "  mov.b32 %2, 0;\n"
      "  mov.b32 %3, 0;\n"
      "  @p ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      "}\n"
      : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3])
      : "l"(ptr), "r"(static_cast<int>(valid)));
  return v;
#endif
}

// The two values packed in a 32-bit word, widened to fp32 (exact for both types).
template <HalfType kType>
__device__ __forceinline__ float2 to_float2(uint32_t w) {
  if constexpr (kType == HalfType::kBf16) {
    // bf16 is the top half of an fp32: shifting it into place is the whole conversion.
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  } else {
    return __half22float2(reinterpret_cast<const __half2&>(w));
  }
}

// acc + sum_i a[i] * b[i] over the eight values, in fp32.
template <HalfType kType>
__device__ __forceinline__ float dot_vec16(const Vec16& a, const Vec16& b, float acc) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = to_float2<kType>(a.w[i]);
    const float2 y = to_float2<kType>(b.w[i]);
    acc = fmaf(x.x, y.x, acc);
    acc = fmaf(x.y, y.y, acc);
  }
  return acc;
}

}  // namespace flashcore::sm90

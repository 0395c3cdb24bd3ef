// Register types of the gfx942 kernels: short vectors of 32-bit words and fp32, and the two 16-bit element types.
//
// On the device they are clang ext_vector_types (what the MFMA builtins take); in the CPU harness (g++) the GCC
// vector_size types, which have the same size, element order and subscripting. Kernels move 16-bit data as
// packed 32-bit words (two elements per word, the lower-addressed element in bits 15:0, as a 32-bit load from
// memory would give) and only ever do arithmetic on it after converting to fp32.
#pragma once

#include <cstdint>

#include "compat.h"

#if defined(FLASHCORE_HIP_EMU)
#define FLASHCORE_VEC(T, N) __attribute__((vector_size(sizeof(T) * (N))))
#else
#define FLASHCORE_VEC(T, N) __attribute__((ext_vector_type(N)))
#endif

namespace flashcore::gfx942 {

typedef uint32_t u32x2 FLASHCORE_VEC(uint32_t, 2);  // 8 bytes: one MFMA A or B operand (4 x 16-bit)
typedef uint32_t u32x4 FLASHCORE_VEC(uint32_t, 4);  // 16 bytes: one global or LDS vector transfer (8 x 16-bit)
typedef float f32x4 FLASHCORE_VEC(float, 4);        // 16x16 MFMA accumulator: 4 fp32 per lane
typedef float f32x16 FLASHCORE_VEC(float, 16);      // 32x32 MFMA accumulator: 16 fp32 per lane

template <class To, class From>
FLASHCORE_DEVICE To bit_cast(const From& from) {  // std::bit_cast without <bit>, which the device-only compile lacks
  static_assert(sizeof(To) == sizeof(From));
  return __builtin_bit_cast(To, from);
}

constexpr float kInf = __builtin_inff();

// Bits 31:16 of `lo` in bits 15:0, bits 31:16 of `hi` in bits 31:16: one v_perm_b32.
FLASHCORE_DEVICE uint32_t high_halves(uint32_t lo, uint32_t hi) {
#if defined(FLASHCORE_HIP_EMU)
  return (lo >> 16) | (hi & 0xffff0000u);
#else
  return __builtin_amdgcn_perm(hi, lo, 0x07060302u);  // bytes 2, 3 of lo, then bytes 2, 3 of hi
#endif
}

// bfloat16: the upper half of an fp32. Conversion from fp32 rounds to nearest even (gfx942 has no bf16 convert
// instruction; this is 4 integer ops). A NaN stays a NaN: its quiet bit is in the upper half and the rounding
// increment cannot carry out of an all-ones exponent into the sign.
struct Bf16 {
  static constexpr bool kIsBf16 = true;
  static FLASHCORE_DEVICE float to_float(uint32_t bits16) { return bit_cast<float>(bits16 << 16); }
  static FLASHCORE_DEVICE uint32_t from_float(float x) {
    const uint32_t u = bit_cast<uint32_t>(x);
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  }
  // Two values packed (lo in bits 15:0), rounded half away from zero: one add per value and one v_perm per pair
  // instead of RNE's three ops per value; the two roundings differ only on exact ties. For the softmax
  // probabilities fed to the second MFMA; NaN and inf stay NaN and inf.
  static FLASHCORE_DEVICE uint32_t pack2_fast(float lo, float hi) {
    return high_halves(bit_cast<uint32_t>(lo) + 0x8000u, bit_cast<uint32_t>(hi) + 0x8000u);
  }
};

// IEEE binary16, converted by the hardware (v_cvt_f16_f32 rounds to nearest even) or by the host compiler.
struct Fp16 {
  static constexpr bool kIsBf16 = false;
  static FLASHCORE_DEVICE float to_float(uint32_t bits16) {
    return static_cast<float>(bit_cast<_Float16>(static_cast<uint16_t>(bits16)));
  }
  static FLASHCORE_DEVICE uint32_t from_float(float x) { return bit_cast<uint16_t>(static_cast<_Float16>(x)); }
  static FLASHCORE_DEVICE uint32_t pack2_fast(float lo, float hi) { return from_float(lo) | from_float(hi) << 16; }
};

FLASHCORE_DEVICE int min_int(int a, int b) { return a < b ? a : b; }
FLASHCORE_DEVICE int max_int(int a, int b) { return a > b ? a : b; }

// Two 16-bit elements into one word: `lo` to bits 15:0 (the lower address), `hi` to bits 31:16.
FLASHCORE_DEVICE uint32_t pack16(uint32_t lo, uint32_t hi) { return (lo & 0xffffu) | (hi << 16); }

}  // namespace flashcore::gfx942

// The CPU model of csrc/cuda/ptx/smem.cuh's instructions (included there under FLASHCORE_SM90_EMU): shared-window
// addresses, stmatrix, st.shared.v2.f32, and the fp32 -> 16-bit packing conversions. Written from the PTX ISA
// ("stmatrix", "st", "cvt"), independently of the kernel-side comments; tests/test_cuda_emu_ptx.py checks it against
// a third copy in Python.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "emu.h"
#include "ptx_proxy.h"

namespace flashcore::cuda_emu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

constexpr uint16_t kCanonicalNan16 = 0x7fff;  // the NaN the model returns for a NaN input (tests check NaN-ness only)
constexpr uint32_t kF32AbsMask = 0x7fffffffu;
constexpr uint32_t kF32Inf = 0x7f800000u;

// cvt.rn.bf16.f32: round to nearest, ties to even; overflow rounds to infinity; NaN stays NaN.
inline uint16_t f32_to_bf16_rn(float f) {
  const uint32_t x = float_bits(f);
  if ((x & kF32AbsMask) > kF32Inf) return kCanonicalNan16;
  constexpr uint32_t kHalfUlp = 0x7fff;  // just below half of the dropped 16 bits; +1 on odd results = ties to even
  return static_cast<uint16_t>((x + kHalfUlp + ((x >> 16) & 1u)) >> 16);
}

// cvt.rn.f16.f32: round to nearest even, subnormal results kept, overflow -> infinity, NaN stays NaN.
inline uint16_t f32_to_f16_rn(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & kF32AbsMask;
  if (ax > kF32Inf) return kCanonicalNan16;
  constexpr uint32_t kF16Overflow = 0x477ff000u;  // 65520 = 65504 + half an ulp: ties go to even = infinity
  constexpr uint16_t kF16Inf = 0x7c00;
  if (ax >= kF16Overflow) return sign | kF16Inf;
  constexpr uint32_t kF16MinNormal = 0x38800000u;  // 2^-14 as fp32
  if (ax < kF16MinNormal) {
    // Subnormal (or zero) result: a multiple of 2^-24; x * 2^24 is exact, nearbyint rounds half to even.
    const float units = std::nearbyint(bits_float(ax) * 16777216.0f);
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(units));  // 1024 units = the smallest normal
  }
  constexpr uint32_t kRebias = (127u - 15u) << 23;  // fp32 exponent bias 127, fp16 15
  constexpr int kDropped = 13;                      // mantissa bits 23 -> 10
  const uint32_t r = ax - kRebias;
  return static_cast<uint16_t>(sign | ((r + 0xfffu + ((r >> kDropped) & 1u)) >> kDropped));
}

inline double bf16_to_double(uint16_t h) { return static_cast<double>(bits_float(static_cast<uint32_t>(h) << 16)); }

inline double f16_to_double(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0x1f) return mant ? std::nan("") : sign * HUGE_VAL;
  if (exp == 0) return sign * std::ldexp(static_cast<double>(mant), -24);  // subnormal: mant * 2^-24
  return sign * std::ldexp(static_cast<double>(mant | 0x400), exp - 25);  // (1.mant) * 2^(exp - 15)
}

// stmatrix.sync.aligned.m8n8.x4.shared.b16 (PTX ISA "stmatrix"): a warp collective. Matrix i (0..3) is stored from
// register r[i] of every lane: lane l holds row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 (low half first).
// The row addresses come from lanes 8 i .. 8 i + 7 (row j of matrix i from lane 8 i + j), 16 bytes each.
inline void stmatrix_x4_model(uint32_t row_addr, const uint32_t (&r)[4]) {
  struct In {
    uint32_t addr;
    uint32_t regs[4];
  };
  struct Out {};
  const In in{row_addr, {r[0], r[1], r[2], r[3]}};
  group_collective<In, Out>(kWarpSize, "stmatrix.sync.aligned.m8n8.x4.shared.b16", in,
                            [](const In* const* ins, Out* const*) {
                              constexpr int kMatrices = 4, kRows = 8, kCols = 8, kRowBytes = 16;
                              for (int i = 0; i < kMatrices; ++i) {
                                for (int j = 0; j < kRows; ++j) {
                                  const uint32_t addr = ins[kRows * i + j]->addr;
                                  if (addr % kRowBytes != 0) {
                                    fail("stmatrix: row address " + std::to_string(addr) + " of lane " +
                                         std::to_string(kRows * i + j) + " is not 16-byte aligned");
                                  }
                                  uint16_t row[kCols];
                                  for (int c = 0; c < kCols; ++c) {
                                    const uint32_t reg = ins[4 * j + c / 2]->regs[i];
                                    row[c] = static_cast<uint16_t>(reg >> (16 * (c % 2)));
                                  }
                                  std::memcpy(smem_pointer(addr, kRowBytes), row, kRowBytes);
                                  // The row's data comes from lanes 4 j .. 4 j + 3: their fences must follow.
                                  constexpr uint32_t kRowLanes = 0xfu;
                                  proxy_generic_write(addr, linear_thread() / kWarpSize, kRowLanes << (4 * j));
                                }
                              }
                            });
}

// st.shared.v2.f32 (PTX ISA "st"): one thread's 8 bytes, naturally aligned (a vector store needs its full size).
inline void st_shared_v2_f32_model(uint32_t addr, float x, float y) {
  constexpr uint32_t kBytes = 8;
  if (addr % kBytes != 0) fail("st.shared.v2.f32: address " + std::to_string(addr) + " is not 8-byte aligned");
  const float v[2] = {x, y};
  std::memcpy(smem_pointer(addr, kBytes), v, kBytes);
  const int t = linear_thread();
  proxy_generic_write(addr, t / kWarpSize, 1u << (t % kWarpSize), /*whole_chunk=*/false);
}

inline void st_shared_zero16_model(uint32_t addr) {
  constexpr uint32_t kBytes = 16;
  if (addr % kBytes != 0) fail("st.shared.v4.b32: address " + std::to_string(addr) + " is not 16-byte aligned");
  std::memset(smem_pointer(addr, kBytes), 0, kBytes);
  const int t = linear_thread();
  proxy_generic_write(addr, t / kWarpSize, 1u << (t % kWarpSize));  // one thread writes the whole chunk
}

}  // namespace flashcore::cuda_emu

namespace flashcore::sm90::ptx {

inline uint32_t smem_u32(const void* ptr) { return cuda_emu::smem_address(ptr); }

// The CTA's dynamic shared memory (the emulator places it kDynamicSmemOffset into the window).
inline uint8_t* dynamic_smem() { return cuda_emu::dynamic_smem(); }

inline void stmatrix_x4(uint32_t row_addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  const uint32_t regs[4] = {r0, r1, r2, r3};
  cuda_emu::stmatrix_x4_model(row_addr, regs);
}

inline void st_shared_v2_f32(uint32_t addr, float x, float y) { cuda_emu::st_shared_v2_f32_model(addr, x, y); }

inline void st_shared_zero16(uint32_t addr) { cuda_emu::st_shared_zero16_model(addr); }

inline uint32_t pack_bf16x2(float lo, float hi) {
  return cuda_emu::f32_to_bf16_rn(lo) | (static_cast<uint32_t>(cuda_emu::f32_to_bf16_rn(hi)) << 16);
}

inline uint32_t pack_f16x2(float lo, float hi) {
  return cuda_emu::f32_to_f16_rn(lo) | (static_cast<uint32_t>(cuda_emu::f32_to_f16_rn(hi)) << 16);
}

}  // namespace flashcore::sm90::ptx

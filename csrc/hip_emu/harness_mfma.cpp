// C entry points of the CPU harness for the MFMA layer (loaded with ctypes by tests/test_hip_emulated.py):
//   emu_mfma_lanes   one wave, each lane passes its own operand registers to csrc/hip/mfma.h's wrapper
//   emu_mfma_probe   csrc/hip/probe/mfma_probe.hip: row-major matrices in, one MFMA, row-major D out
// Each returns 0, or -1 with the harness's error message in `error`.
#include <string>

#include "../hip/probe/mfma_probe.hip"
#include "emu.h"

namespace {

using namespace flashcore;
using gfx942::Bf16;
using gfx942::Fp16;

template <int M, class E>
void lane_body(const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  constexpr int kAcc = M * M / 64;
  using Acc = std::conditional_t<M == 32, gfx942::f32x16, gfx942::f32x4>;
  const int l = gfx942::thread_id();
  const gfx942::u32x2 ra = {a[2 * l], a[2 * l + 1]}, rb = {b[2 * l], b[2 * l + 1]};
  Acc acc;
  for (int r = 0; r < kAcc; ++r) acc[r] = c[kAcc * l + r];
  if constexpr (M == 32) {
    acc = gfx942::mfma_32x32x8<E>(ra, rb, acc);
  } else {
    acc = gfx942::mfma_16x16x16<E>(ra, rb, acc);
  }
  for (int r = 0; r < kAcc; ++r) d[kAcc * l + r] = acc[r];
}

template <class F>
int run_one_wave(const F& body, char* error, int error_bytes) {
  const std::function<void()> kernel = body;
  return emu::to_c_status(emu::launch(emu::Dim3{}, 64, kernel, nullptr, 0, 1, nullptr), error, error_bytes);
}

}  // namespace

extern "C" {

// a, b: (64, 2) words (lane l's operand registers); c, d: (64, M*M/64) fp32 accumulator registers per lane.
int emu_mfma_lanes(int m, int bf16, const uint32_t* a, const uint32_t* b, const float* c, float* d, char* error,
                   int error_bytes) {
  if (m == 32 && bf16) return run_one_wave([=] { lane_body<32, Bf16>(a, b, c, d); }, error, error_bytes);
  if (m == 32) return run_one_wave([=] { lane_body<32, Fp16>(a, b, c, d); }, error, error_bytes);
  if (m == 16 && bf16) return run_one_wave([=] { lane_body<16, Bf16>(a, b, c, d); }, error, error_bytes);
  if (m == 16) return run_one_wave([=] { lane_body<16, Fp16>(a, b, c, d); }, error, error_bytes);
  return emu::to_c_status("m must be 32 or 16", error, error_bytes);
}

// a (M, K), b (K, M) 16-bit; c, d (M, M) fp32; all row-major.
int emu_mfma_probe(int m, int bf16, const uint16_t* a, const uint16_t* b, const float* c, float* d, char* error,
                   int error_bytes) {
  using gfx942::mfma_probe_kernel;
  if (m == 32 && bf16) return run_one_wave([=] { mfma_probe_kernel<32, Bf16>(a, b, c, d); }, error, error_bytes);
  if (m == 32) return run_one_wave([=] { mfma_probe_kernel<32, Fp16>(a, b, c, d); }, error, error_bytes);
  if (m == 16 && bf16) return run_one_wave([=] { mfma_probe_kernel<16, Bf16>(a, b, c, d); }, error, error_bytes);
  if (m == 16) return run_one_wave([=] { mfma_probe_kernel<16, Fp16>(a, b, c, d); }, error, error_bytes);
  return emu::to_c_status("m must be 32 or 16", error, error_bytes);
}

}  // extern "C"

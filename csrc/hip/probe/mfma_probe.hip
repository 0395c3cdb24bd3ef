// A one-wave kernel that multiplies one MFMA tile: A, B and C are read from row-major global memory into
// registers by the layouts of csrc/hip/mfma.h (MfmaLayout), one MFMA runs, D is written back row-major.
//
// Not part of the extension (setup.py builds csrc/hip/*.hip, not this folder). It is the smallest kernel that
// exercises the MFMA layer end to end: tests/test_hip_isa.py compiles it for gfx942 (it must contain the
// v_mfma instruction), tests/test_hip_emulated.py runs it in the CPU harness and compares D with A * B + C.
#include <type_traits>

#include "../mfma.h"

namespace flashcore::gfx942 {

template <int M, class E>
FLASHCORE_GLOBAL void FLASHCORE_LAUNCH_BOUNDS(kWaveSize, 1)
    mfma_probe_kernel(const uint16_t* a,  // (M, K) 16-bit elements of type E, row-major
                      const uint16_t* b,  // (K, M) row-major
                      const float* c,     // (M, M) row-major
                      float* d) {         // (M, M) row-major: a * b + c
  using L = MfmaLayout<M>;
  using Acc = std::conditional_t<M == 32, f32x16, f32x4>;
  const int lane = thread_id();
  u32x2 ra, rb;
  for (int w = 0; w < 2; ++w) {  // operand word w holds elements i = 2w (bits 15:0) and 2w + 1 (bits 31:16)
    ra[w] = pack16(a[L::a_row(lane) * L::kK + L::a_k(lane, 2 * w)], a[L::a_row(lane) * L::kK + L::a_k(lane, 2 * w + 1)]);
    rb[w] = pack16(b[L::b_k(lane, 2 * w) * M + L::b_col(lane)], b[L::b_k(lane, 2 * w + 1) * M + L::b_col(lane)]);
  }
  Acc acc;
  for (int r = 0; r < L::kAcc; ++r) acc[r] = c[L::c_row(lane, r) * M + L::c_col(lane)];
  if constexpr (M == 32) {
    acc = mfma_32x32x8<E>(ra, rb, acc);
  } else {
    acc = mfma_16x16x16<E>(ra, rb, acc);
  }
  for (int r = 0; r < L::kAcc; ++r) d[L::c_row(lane, r) * M + L::c_col(lane)] = acc[r];
}

template FLASHCORE_GLOBAL void mfma_probe_kernel<32, Bf16>(const uint16_t*, const uint16_t*, const float*, float*);
template FLASHCORE_GLOBAL void mfma_probe_kernel<32, Fp16>(const uint16_t*, const uint16_t*, const float*, float*);
template FLASHCORE_GLOBAL void mfma_probe_kernel<16, Bf16>(const uint16_t*, const uint16_t*, const float*, float*);
template FLASHCORE_GLOBAL void mfma_probe_kernel<16, Fp16>(const uint16_t*, const uint16_t*, const float*, float*);

}  // namespace flashcore::gfx942

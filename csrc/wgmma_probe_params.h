// What the host side of flashcore_sm90::wgmma_probe / wgmma_probe_chain (csrc/wgmma_probe.cpp) hands to the probe
// kernels (csrc/cuda/wgmma_probe.cu, csrc/cuda/wgmma_probe_kernel.cuh). CUDA builds only; test ops, not public API.
#pragma once

#include <cstdint>

namespace flashcore {

// D (64 x n, fp32) = A B over k, one wgmma form. 16-bit operands, row-major and contiguous:
//   a  (64, k) K-major, or (k, 64) MN-major (trans_a)
//   b  (n, k) K-major, or (k, b_cols) MN-major (trans_b), of which the columns [b_col0, b_col0 + n) are B
// reg_a: A from registers (RS form, K-major A read from global memory into the register-A layout).
// mn_*: the MN-major operands' LBO / SBO / base offset instead of the kernels' (wgmma_probe_kernel.cuh).
struct WgmmaProbeParams {
  const void* a;
  const void* b;
  int n, k, b_cols, b_col0;
  int trans_a, trans_b;
  bool reg_a;
  bool bf16;
  int mn_lbo = -1, mn_sbo = -1, mn_base_offset = 0;  // MN-major descriptor override (bytes); mn_lbo < 0: none
};

// The forward consumer's pair on one tile: S = Q K^T (64 x ns), O = P V (64 x d). q (64, d), k and v (ns, d).
struct WgmmaChainParams {
  const void* q;
  const void* k;
  const void* v;
  int ns, d;
  bool bf16;
};

// Each writes every thread's accumulator registers raw: out[thread * n/2 + register] (128 threads).
void launch_wgmma_probe(const WgmmaProbeParams& p, float* d_out);
void launch_wgmma_chain(const WgmmaChainParams& p, float* s_out, float* o_out);

}  // namespace flashcore

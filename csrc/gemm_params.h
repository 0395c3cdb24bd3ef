// What the host side of flashcore_sm90::gemm (csrc/gemm.cpp) hands to the sm_90a kernel (csrc/cuda/gemm_sm90.cu).
// CUDA builds only. The GEMM is a test and benchmark op proving the PTX layer (csrc/cuda/ptx/), not public API.
#pragma once

#include <cstdint>

namespace flashcore {

// C = A * B^T, bf16 in, fp32 accumulate, bf16 out. Row strides are in elements; the host guarantees each is a
// multiple of 8 (16 bytes, the TMA stride granule) and every base pointer is 16-byte aligned.
struct GemmParams {
  const void* a;    // (m, k) bf16, row stride lda
  const void* b;    // (n, k) bf16, row stride ldb
  void* c;          // (m, n) bf16, row stride ldc
  int64_t m, n, k;  // each in [1, 2^31 - 1]
  int64_t lda, ldb, ldc;
};

// Launches on the current device and stream (the caller holds a DeviceGuard for the tensors' device).
void launch_gemm_sm90(const GemmParams& p);

}  // namespace flashcore

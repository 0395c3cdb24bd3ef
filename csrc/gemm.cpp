// Host side of flashcore_sm90::gemm (CUDA builds only): C = A * B^T on the sm_90a TMA + wgmma kernel
// (csrc/cuda/gemm_sm90.cu). A test and benchmark op that proves the PTX layer; not part of the public API.
#if defined(FLASHCORE_CUDA)

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>

#include <cstdint>

#include "checks.h"
#include "gemm_params.h"
#include "ops.h"

namespace flashcore {
namespace {

constexpr const char* kOp = "flashcore gemm";
constexpr int64_t kTmaStrideElems = kVecBytes / 2;  // TMA row strides are multiples of 16 bytes = 8 bf16

// The tensor as TMA can read it: unit stride along K, rows that do not overlap and start a whole number of 16
// bytes apart, a 16-byte aligned base. Other layouts (transposed or expanded views, odd offsets) are copied once;
// a K that no layout can satisfy is an error naming the argument.
at::Tensor tma_readable(const at::Tensor& t, const char* name) {
  const int64_t k = t.size(1);
  TORCH_CHECK(k % kTmaStrideElems == 0, kOp, ": ", name, ".size(1) (K) is ", k, ", so a row of ", name, " is ",
              2 * k, " bytes; the TMA loads need row strides that are multiples of 16 bytes: K must be a multiple of ",
              kTmaStrideElems);
  const bool rows_ok = t.size(0) == 1 || (t.stride(0) >= k && t.stride(0) % kTmaStrideElems == 0);
  const bool ok = t.stride(1) == 1 && rows_ok && reinterpret_cast<std::uintptr_t>(t.data_ptr()) % kVecBytes == 0;
  return ok ? t : t.contiguous();
}

}  // namespace

at::Tensor gemm(const at::Tensor& a,  // (M, K) bf16
                const at::Tensor& b   // (N, K) bf16
) {
  check_rank(a, 2, kOp, "a", "(M, K)");
  check_rank(b, 2, kOp, "b", "(N, K)");
  check_on_accelerator(a, kOp, "a");
  check_same_device(b, a, kOp, "b", "a");
  TORCH_CHECK(a.scalar_type() == at::kBFloat16, kOp, ": a must be bfloat16, got ", a.scalar_type());
  TORCH_CHECK(b.scalar_type() == at::kBFloat16, kOp, ": b must be bfloat16, got ", b.scalar_type());
  TORCH_CHECK(a.size(1) == b.size(1), kOp, ": a is ", a.sizes(), " and b is ", b.sizes(),
              "; expected (M, K) and (N, K) with the same K (C = a @ b.T)");
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  check_fits_int32(m, kOp, "M = a.size(0)");  // TMA coordinates are 32-bit
  check_fits_int32(n, kOp, "N = b.size(0)");
  check_fits_int32(k, kOp, "K = a.size(1)");

  const c10::DeviceGuard device_guard(a.device());
  if (m == 0 || n == 0) return at::empty({m, n}, a.options());
  if (k == 0) return at::zeros({m, n}, a.options());  // an empty sum

  const at::Tensor a_ok = tma_readable(a, "a");
  const at::Tensor b_ok = tma_readable(b, "b");
  // The TMA store needs C's row stride in whole 16 bytes too: for N not a multiple of 8 the kernel writes into
  // rows padded to the next multiple and the result is copied out (only these ragged shapes pay the copy).
  const int64_t ldc = (n + kTmaStrideElems - 1) / kTmaStrideElems * kTmaStrideElems;
  at::Tensor c = at::empty({m, ldc}, a.options());

  GemmParams p{};
  p.a = a_ok.data_ptr();
  p.b = b_ok.data_ptr();
  p.c = c.data_ptr();
  p.m = m, p.n = n, p.k = k;
  p.lda = a_ok.size(0) == 1 ? k : a_ok.stride(0);  // a single row's stride is never used; any legal value does
  p.ldb = b_ok.size(0) == 1 ? k : b_ok.stride(0);
  p.ldc = ldc;
  launch_gemm_sm90(p);
  return ldc == n ? c : c.narrow(1, 0, n).contiguous();
}

}  // namespace flashcore

#endif  // FLASHCORE_CUDA

// Argument checks shared by every host entry point, CUDA and HIP alike. Each failure names the op, the argument,
// what was given and what is expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace flashcore {

constexpr int64_t kVecBytes = 16;  // kernels read head_dim rows with 16-byte vector loads

inline void check_rank(const at::Tensor& t, int64_t rank, const char* op, const char* name, const char* layout) {
  TORCH_CHECK(t.dim() == rank, op, ": ", name, " must be ", layout, " (", rank, " dims), got shape ", t.sizes());
}

inline void check_on_accelerator(const at::Tensor& t, const char* op, const char* name) {
  // HIP builds of torch present AMD GPUs as device type "cuda" too, so this one test serves both vendors.
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be on a GPU (device type cuda), got ", t.device());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), "; expected the same device");
}

inline void check_half_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf, op, ": ", name,
              " must be bfloat16 or float16, got ", t.scalar_type());
}

inline void check_fits_int32(int64_t value, const char* op, const char* what) {
  TORCH_CHECK(value <= std::numeric_limits<int32_t>::max(), op, ": ", what, " is ", value,
              "; at most 2^31 - 1 is supported");
}

// True when every row along the last dim can be read with aligned 16-byte loads: last dim contiguous, base
// pointer 16-byte aligned, every other stride a whole number of 16-byte vectors.
inline bool rows_vectorizable(const at::Tensor& t) {
  const int64_t elems_per_vec = kVecBytes / static_cast<int64_t>(t.element_size());
  if (t.stride(-1) != 1 || reinterpret_cast<std::uintptr_t>(t.data_ptr()) % kVecBytes != 0) return false;
  for (int64_t dim = 0; dim + 1 < t.dim(); ++dim) {
    if (t.size(dim) > 1 && t.stride(dim) % elems_per_vec != 0) return false;
  }
  return true;
}

}  // namespace flashcore

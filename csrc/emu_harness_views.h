// What the CPU harnesses of both vendors (csrc/hip_emu/harness_*.cpp, csrc/cuda_emu/harness_*.cpp) share at their
// C boundary: token pasting for per-build symbol names, and tensors passed from ctypes as flat arrays (data
// pointers; sizes and strides, 4 per tensor in elements; ranks) turned into the Strided views make_fwd_params and
// make_bwd_params take. Plain C++, no vendor types.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fwd_params.h"  // Strided

#define FLASHCORE_CAT_(a, b) a##b
#define FLASHCORE_CAT(a, b) FLASHCORE_CAT_(a, b)

namespace flashcore::emu_harness {

constexpr int kViewDims = 4;  // sizes / strides per tensor in the flat arrays (unused trailing dims: size 1)

// views[i] = tensor i of n.
inline void strided_views(int n, const void* const* tensors, const int64_t* sizes, const int64_t* strides,
                          const int* dims, Strided* views) {
  for (int i = 0; i < n; ++i) {
    views[i].data = tensors[i];
    views[i].dim = dims[i];
    for (int d = 0; d < kViewDims; ++d) {
      views[i].size[d] = sizes[kViewDims * i + d];
      views[i].stride[d] = strides[kViewDims * i + d];
    }
  }
}

inline size_t extent_bytes(const Strided& t, size_t element_bytes) {  // bytes from data to the view's last element
  int64_t last = 0;
  for (int d = 0; d < t.dim; ++d) {
    if (t.size[d] == 0) return 0;
    last += (t.size[d] - 1) * t.stride[d];
  }
  return static_cast<size_t>(last + 1) * element_bytes;
}

}  // namespace flashcore::emu_harness

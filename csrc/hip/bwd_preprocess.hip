// Backward preprocess for gfx942 (MI300X), the HIP twin of csrc/cuda/bwd_preprocess.cu:
// D[b, h, s] = sum_k dout[b, s, h, k] * out[b, s, h, k] - dlse[b, h, s], in fp32.
//
// Same plan as the CUDA kernel: kLanesPerRow adjacent lanes own a row, issue all their 16-byte loads, then
// combine partial sums with cross-lane shuffles. Differences: wavefronts are 64 lanes (8 rows per wavefront) and
// the loads/conversions use clang vector types, so the device code needs no vendor headers beyond hip_runtime.
#include <hip/hip_runtime.h>

#include <ATen/hip/impl/HIPStreamMasqueradingAsCUDA.h>
#include <c10/hip/HIPException.h>

#include <cstdint>

#include "../bwd_preprocess_params.h"

namespace flashcore::gfx942 {
namespace {

typedef uint32_t u32x4 __attribute__((ext_vector_type(4)));    // one 16-byte global load
typedef _Float16 f16x2 __attribute__((ext_vector_type(2)));    // two fp16 values in a 32-bit word

constexpr int kElemsPerVec = 8;  // 16 bytes / 2 bytes per fp16/bf16 value
constexpr int kThreads = kBwdPreprocessThreads;
constexpr int kRowsPerBlock = kBwdPreprocessRowsPerBlock;
constexpr int kLanesPerRow = kThreads / kRowsPerBlock;  // 8 lanes x 16 B = one 128-byte line of a row per step
constexpr int kMaxHeadDim = kBwdPreprocessMaxHeadDim;
constexpr int kMaxSteps = kMaxHeadDim / (kLanesPerRow * kElemsPerVec);  // 4 load steps cover head_dim 256
constexpr int kWaveSize = 64;                           // CDNA3 wavefront

static_assert(kWaveSize % kLanesPerRow == 0, "a row's lanes must sit in one wavefront");

template <HalfType kType>
__device__ __forceinline__ float2 to_float2(uint32_t w) {
  if constexpr (kType == HalfType::kBf16) {
    // bf16 is the top half of an fp32: shifting it into place is the whole conversion.
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  } else {
    const f16x2 h = __builtin_bit_cast(f16x2, w);
    return make_float2(static_cast<float>(h.x), static_cast<float>(h.y));
  }
}

template <HalfType kType>
__device__ __forceinline__ float dot_vec16(const u32x4& a, const u32x4& b, float acc) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = to_float2<kType>(a[i]);
    const float2 y = to_float2<kType>(b[i]);
    acc = fmaf(x.x, y.x, acc);
    acc = fmaf(x.y, y.y, acc);
  }
  return acc;
}

template <HalfType kType>
__global__ void __launch_bounds__(kThreads) bwd_preprocess_kernel(const BwdPreprocessParams p) {
  // Block -> (batch b, head h, tile of kRowsPerBlock positions); the tiles of one (b, h) are adjacent blocks.
  const uint32_t tiles_per_seq = (static_cast<uint32_t>(p.seqlen) + kRowsPerBlock - 1) / kRowsPerBlock;
  const uint32_t bh = blockIdx.x / tiles_per_seq;  // b * heads + h
  const uint32_t tile = blockIdx.x - bh * tiles_per_seq;
  const uint32_t b = bh / static_cast<uint32_t>(p.heads);
  const uint32_t h = bh - b * static_cast<uint32_t>(p.heads);
  const uint32_t s = tile * kRowsPerBlock + threadIdx.x / kLanesPerRow;  // unsigned: no overflow near 2^31
  const int lane = static_cast<int>(threadIdx.x % kLanesPerRow);
  const bool row_valid = s < static_cast<uint32_t>(p.seqlen);

  float acc = 0.f;
  if (row_valid) {
    const uint16_t* o = static_cast<const uint16_t*>(p.out) + b * p.out_stride_b + s * p.out_stride_s +
                        h * p.out_stride_h;
    const uint16_t* g = static_cast<const uint16_t*>(p.dout) + b * p.dout_stride_b + s * p.dout_stride_s +
                        h * p.dout_stride_h;
    u32x4 ov[kMaxSteps], gv[kMaxSteps];  // all loads in flight before the first FMA
#pragma unroll
    for (int step = 0; step < kMaxSteps; ++step) {
      const int col = (step * kLanesPerRow + lane) * kElemsPerVec;
      const bool in_row = col < p.head_dim;
      ov[step] = in_row ? *reinterpret_cast<const u32x4*>(o + col) : u32x4{0u, 0u, 0u, 0u};
      gv[step] = in_row ? *reinterpret_cast<const u32x4*>(g + col) : u32x4{0u, 0u, 0u, 0u};
    }
#pragma unroll
    for (int step = 0; step < kMaxSteps; ++step) acc = dot_vec16<kType>(ov[step], gv[step], acc);
  }

  // Sum the kLanesPerRow partial sums of each row; every lane of the wavefront takes part (no mask on AMD).
#pragma unroll
  for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) acc += __shfl_xor(acc, offset, kWaveSize);

  if (row_valid && lane == 0) {
    if (p.dlse != nullptr) acc -= p.dlse[b * p.dlse_stride_b + h * p.dlse_stride_h + s * p.dlse_stride_s];
    p.d[static_cast<int64_t>(bh) * p.seqlen + s] = acc;
  }
}

}  // namespace
}  // namespace flashcore::gfx942

namespace flashcore {

void launch_bwd_preprocess(const BwdPreprocessParams& p, int32_t num_blocks) {
  using namespace gfx942;
  const hipStream_t stream = at::hip::getCurrentHIPStreamMasqueradingAsCUDA().stream();
  const auto kernel = p.dtype == HalfType::kBf16 ? bwd_preprocess_kernel<HalfType::kBf16>
                                                 : bwd_preprocess_kernel<HalfType::kFp16>;
  kernel<<<static_cast<unsigned>(num_blocks), kThreads, 0, stream>>>(p);
  C10_HIP_KERNEL_LAUNCH_CHECK();
}

}  // namespace flashcore

// What the host passes to the backward-preprocess kernel: D = rowsum(dO * O) - dlse, in fp32.
// Plain data only (no torch types): included by the shared host code (bwd_preprocess.cpp), by the CUDA kernel
// (cuda/bwd_preprocess.cu) and by its HIP twin (hip/bwd_preprocess.hip).
#pragma once

#include <cstdint>

namespace flashcore {

// Launch shape, the same for both vendors so the host computes the grid once (bwd_preprocess.cpp):
// each block handles kBwdPreprocessRowsPerBlock consecutive positions s of one (batch, head), so consecutive
// blocks write consecutive stretches of D. 256 threads = 8 warps (CUDA) or 4 wavefronts (HIP): several blocks fit
// per SM/CU at once, so a block ending early leaves the rest of the machine busy.
constexpr int kBwdPreprocessThreads = 256;
constexpr int kBwdPreprocessRowsPerBlock = 32;  // => 8 lanes per row: 8 x 16 B loads = one 128-byte line per step

constexpr int kBwdPreprocessHeadDimStep = 8;   // head_dim is a whole number of 16-byte vectors of fp16/bf16
constexpr int kBwdPreprocessMaxHeadDim = 256;  // the largest head_dim flashcore supports; kernels size loops by it

enum class HalfType : int32_t { kFp16 = 0, kBf16 = 1 };  // element type of out/dout

struct BwdPreprocessParams {
  const void* out;   // (batch, seqlen, heads, head_dim) fp16/bf16; head_dim contiguous, 16-byte aligned rows
  const void* dout;  // (batch, seqlen, heads, head_dim) same dtype as out; head_dim contiguous, 16-byte aligned
  const float* dlse;  // (batch, heads, seqlen) float32, any strides; nullptr when not given
  float* d;           // (batch, heads, seqlen) float32, contiguous: the result

  // Strides in elements. Row (b, s, h) of out starts at out + b*out_stride_b + s*out_stride_s + h*out_stride_h.
  int64_t out_stride_b, out_stride_s, out_stride_h;
  int64_t dout_stride_b, dout_stride_s, dout_stride_h;
  int64_t dlse_stride_b, dlse_stride_h, dlse_stride_s;

  int32_t batch, seqlen, heads, head_dim;
  HalfType dtype;
};

// Implemented once per vendor (cuda/bwd_preprocess.cu, hip/bwd_preprocess.hip): launches num_blocks blocks of
// kBwdPreprocessThreads on the current stream of the current device and checks the launch. The caller has checked
// every argument, set the device and computed num_blocks = batch * heads * ceil(seqlen / kBwdPreprocessRowsPerBlock).
void launch_bwd_preprocess(const BwdPreprocessParams& params, int32_t num_blocks);

}  // namespace flashcore

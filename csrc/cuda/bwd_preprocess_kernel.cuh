// Backward preprocess for sm_90a: D[b, h, s] = sum_k dout[b, s, h, k] * out[b, s, h, k] - dlse[b, h, s], in fp32.
//
// A memory-bound stream: each row (b, s, h) of head_dim values is read once from out and once from dout.
// A row is owned by kLanesPerRow adjacent lanes; each lane issues all of its 16-byte loads before any math, then
// the lanes combine their partial sums with warp shuffles and the first lane writes D.
// Launched by bwd_preprocess.cu (the extension) and by csrc/cuda_emu/harness_bwd.cpp (the CPU model).
#pragma once

#include <cstdint>

#include "../bwd_preprocess_params.h"
#include "vec16.cuh"

namespace flashcore::sm90::preprocess {

constexpr int kThreads = kBwdPreprocessThreads;
constexpr int kRowsPerBlock = kBwdPreprocessRowsPerBlock;
constexpr int kLanesPerRow = kThreads / kRowsPerBlock;  // 8 lanes x 16 B = one 128-byte line of a row per step
constexpr int kMaxHeadDim = kBwdPreprocessMaxHeadDim;
constexpr int kMaxSteps = kMaxHeadDim / (kLanesPerRow * kElemsPerVec);  // 4 load steps cover head_dim 256
constexpr int kWarpSize = 32;
// Register budget: 4 resident blocks per SM allow 64 registers per thread, enough for ptxas to keep all 8 of a
// thread's 16-byte loads in flight before the first FMA (48 used). With 8 blocks (32 registers) it staggers them,
// one step's loads waiting on the previous step's math. 5 blocks of 8 warps fit at 48 registers: 40 warps per SM.
constexpr int kMinBlocksPerSm = 4;
constexpr unsigned kFullWarp = 0xffffffffu;  // every lane takes part in the shuffles

static_assert(kMaxSteps * kLanesPerRow * kElemsPerVec == kMaxHeadDim, "steps must cover kMaxHeadDim exactly");
static_assert(kWarpSize % kLanesPerRow == 0, "a row's lanes must sit in one warp");

template <HalfType kType>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    bwd_preprocess_kernel(const __grid_constant__ BwdPreprocessParams p) {
  // Block -> (batch b, head h, tile of kRowsPerBlock positions). The tiles of one (b, h) are adjacent blocks,
  // so consecutive blocks write consecutive stretches of D, which is (batch, heads, seqlen).
  const uint32_t tiles_per_seq = (static_cast<uint32_t>(p.seqlen) + kRowsPerBlock - 1) / kRowsPerBlock;
  const uint32_t bh = blockIdx.x / tiles_per_seq;  // b * heads + h
  const uint32_t tile = blockIdx.x - bh * tiles_per_seq;
  const uint32_t b = bh / static_cast<uint32_t>(p.heads);
  const uint32_t h = bh - b * static_cast<uint32_t>(p.heads);
  const uint32_t s = tile * kRowsPerBlock + threadIdx.x / kLanesPerRow;  // unsigned: no overflow near 2^31
  const int lane = static_cast<int>(threadIdx.x % kLanesPerRow);  // position within the row's lane group
  const bool row_valid = s < static_cast<uint32_t>(p.seqlen);

  float acc = 0.f;
  if (row_valid) {
    const uint16_t* o = static_cast<const uint16_t*>(p.out) + b * p.out_stride_b + s * p.out_stride_s +
                        h * p.out_stride_h;
    const uint16_t* g = static_cast<const uint16_t*>(p.dout) + b * p.dout_stride_b + s * p.dout_stride_s +
                        h * p.dout_stride_h;
    Vec16 ov[kMaxSteps], gv[kMaxSteps];  // all loads in flight before the first FMA
#pragma unroll
    for (int step = 0; step < kMaxSteps; ++step) {
      const int col = (step * kLanesPerRow + lane) * kElemsPerVec;
      const bool in_row = col < p.head_dim;
      ov[step] = ld_global_nc_v4_or_zero(o + col, in_row);
      gv[step] = ld_global_nc_v4_or_zero(g + col, in_row);
    }
#pragma unroll
    for (int step = 0; step < kMaxSteps; ++step) acc = dot_vec16<kType>(ov[step], gv[step], acc);
  }

  // Sum the kLanesPerRow partial sums of each row (xor offsets stay inside the aligned lane group).
#pragma unroll
  for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) acc += __shfl_xor_sync(kFullWarp, acc, offset);

  if (row_valid && lane == 0) {
    if (p.dlse != nullptr) acc -= p.dlse[b * p.dlse_stride_b + h * p.dlse_stride_h + s * p.dlse_stride_s];
    p.d[static_cast<int64_t>(bh) * p.seqlen + s] = acc;
  }
}

}  // namespace flashcore::sm90::preprocess

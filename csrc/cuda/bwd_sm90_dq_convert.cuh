// The sm_90a backward's postprocess: dq = dq_accum (fp32, the main kernel's workspace) -> bf16 / fp16. Launched by
// bwd_sm90.cu (the extension) and by csrc/cuda_emu/harness_bwd.cpp (the CPU model) from the same plan
// (bwd_sm90_launch_plan.cuh).
// Both are (rows, heads_q, head_dim) contiguous with the same element order, so this is a flat stream: 8 values
// per thread (two 16-byte loads, one 16-byte store). The scale is already in the accumulator (folded into dS).
#pragma once

#include <cstdint>

#include "bwd_sm90_common.cuh"  // pack_half2

namespace flashcore::sm90::bwd {

constexpr int kConvertThreads = 256;
constexpr int kConvertVec = 8;           // fp32 values per thread per step: one 16-byte bf16 / fp16 store
constexpr int kConvertBlocksPerSm = 8;   // grid-stride cap: enough blocks in flight to saturate DRAM

template <HalfType kType>
__global__ void __launch_bounds__(kConvertThreads) bwd_dq_convert_kernel(const float* __restrict__ acc,
                                                                         uint16_t* __restrict__ dq, int64_t vecs) {
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < vecs; v += int64_t(gridDim.x) * blockDim.x) {
    const float4 lo = __ldcs(reinterpret_cast<const float4*>(acc) + 2 * v);  // streamed once: evict first
    const float4 hi = __ldcs(reinterpret_cast<const float4*>(acc) + 2 * v + 1);
    uint4 out;
    out.x = pack_half2<kType>(lo.x, lo.y), out.y = pack_half2<kType>(lo.z, lo.w);
    out.z = pack_half2<kType>(hi.x, hi.y), out.w = pack_half2<kType>(hi.z, hi.w);
    reinterpret_cast<uint4*>(dq)[v] = out;
  }
}

}  // namespace flashcore::sm90::bwd

// What every part of the sm_90a backward main kernel shares: its arguments, the named barriers between its
// consumers, where a sequence lives, and small register / packing helpers.
#pragma once

#include <cuda.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "../fwd_params.h"  // HalfType, kLog2e
#include "bwd_sm90_config.cuh"
#include "bwd_sm90_plan.h"
#include "ptx/ptx.cuh"
#include "ptx/sync_ext.cuh"
#include "ptx/wgmma_mn.cuh"

namespace flashcore::sm90::bwd {

using namespace ptx;

// Everything the kernel reads besides the tensor maps (by value, __grid_constant__).
struct BwdArgs {
  const float* lse;    // dense (batch, heads_q, seqlen_q), varlen (heads_q, total_q): the forward's, natural log
  const float* delta;  // laid out like lse: rowsum(dO * O) - dlse
  int64_t lse_stride_b, lse_stride_h;
  const int32_t* cu_seqlens_q;  // (batch + 1,) or nullptr (dense)
  const int32_t* cu_seqlens_k;
  float* dq_accum;      // (total_q, heads_q, head_dim) fp32, zero-filled: dq's layout, row = b * seqlen_q + s or
                        // cu_seqlens_q[b] + s
  int32_t* semaphores;  // deterministic: (batch, heads_q, m_tiles) int32, zero-filled; else nullptr
  int32_t* item_counter;  // (1,) int32, zero-filled (in the workspace): dynamic schedule; nullptr: static
  void* dk;             // like k: (batch, seqlen_k, heads_kv, head_dim) | (total_k, heads_kv, head_dim)
  void* dv;
  int64_t dk_stride_b, dk_stride_s, dk_stride_h;
  int64_t dv_stride_b, dv_stride_s, dv_stride_h;
  int32_t heads_q, heads_kv, head_dim;
  int32_t seqlen_q, seqlen_k;  // dense lengths (varlen: unused, cu_seqlens give them)
  int32_t window_left, window_right;
  int32_t m_tiles;      // ceil(max_seqlen_q / block_m): semaphores per (batch, head)
  float score_mul;      // no softcap: softmax_scale * log2(e), signed (a negative scale needs no q negation here);
                        // softcap: 1 (the tanh pass has already scaled the scores to log2 units)
  float tanh_in;        // softcap: softmax_scale / softcap
  float softcap_log2;   // softcap: softcap * log2(e)
  float inv_softcap_log2;  // softcap: 1 / softcap_log2 (tanh recovered from P, see consume)
  float dscale;         // softmax_scale: d score / d(q.k), times (1 - tanh^2) with softcap
  int32_t softcap;      // 0 / 1
  int32_t deterministic;
  WorkGrid grid;
};

// Named barriers (id 0 is __syncthreads). Counts are consumer threads only: the producer never joins them.
constexpr uint32_t kBarPFree = 1;     // block_n = 64: both consumers done reading the previous tile's P^T
constexpr uint32_t kBarDsFree = 2;    // both consumers done reading the previous tile's dS^T (the dQ GEMM reads all)
constexpr uint32_t kBarDsReady = 3;   // both consumers wrote their P^T / dS^T rows or halves
constexpr uint32_t kBarDetGo = 4;     // deterministic: the tile's semaphore reached this block's rank
constexpr uint32_t kBarDetDone = 5;   // deterministic: every adding thread has fenced its adds
constexpr uint32_t kBarDqStaged = 6;  // + consumer (6, 7): its warpgroup wrote and fenced its dQ staging boxes
constexpr uint32_t kBarKvZeroed = 8;  // varlen: both consumers zeroed and fenced the item's K / V rows past its end
constexpr uint32_t kBarStageZeroed = 9;  // both consumers zeroed and fenced a sequence's last tile's delta values
                                         // past its end (and, varlen, its Q / dO rows)
constexpr uint32_t kConsumerThreads = 2 * kWarpgroupThreads;
// kDqLag (bwd_sm90_config.cuh): per dS^T buffer b and writing consumer w, a "written" barrier (10 + 2b + w: the
// writer's bar.arrive, the reader's bar.sync) and a "read" barrier (2 + 2b + w: the reader's bar.arrive after its
// dQ GEMM, the writer's bar.sync before its next write there). Two, not one used in alternation: the writer does
// not wait for its "written" phase to complete, so its next bar.sync could land in that same phase. With two, each
// side arrives again only after a wait that the other's previous phase made possible. Ids 2..5 are kBarDsFree,
// kBarDsReady, kBarDetGo and kBarDetDone elsewhere: kDqLag builds use none of them (no lockstep, dQ by TMA).
constexpr uint32_t kBarDsWritten = 10;
constexpr uint32_t kBarDsRead = 2;
__device__ __forceinline__ uint32_t ds_written_barrier(uint32_t buffer, int writer) {
  return kBarDsWritten + 2 * buffer + static_cast<uint32_t>(writer);
}
__device__ __forceinline__ uint32_t ds_read_barrier(uint32_t buffer, int writer) {
  return kBarDsRead + 2 * buffer + static_cast<uint32_t>(writer);
}
constexpr uint32_t kBarSTurn = 14;  // + consumer (14, 15), kPingPong: this consumer may issue its S^T GEMM

// Where sequence b lives: dense sequences are whole tensors' slices (the tensor map's batch coordinate), varlen
// ones are row ranges of the flat (total, heads, head_dim) tensors.
struct SeqInfo {
  SeqGeom g;
  int32_t start_q, start_k;  // first row in the (flattened) tensors' sequence dimension
  int32_t tma_batch;         // the tensor map's batch coordinate (0 for varlen)
  int32_t dq_row0;           // row of query 0 in dq_accum / dq (< 2^31: the host checks total_q)
};

__device__ __forceinline__ SeqInfo seq_info(const BwdArgs& a, int32_t b) {
  SeqInfo s;
  s.g.window_left = a.window_left;
  s.g.window_right = a.window_right;
  if (a.cu_seqlens_q != nullptr) {
    s.start_q = a.cu_seqlens_q[b];
    s.start_k = a.cu_seqlens_k[b];
    s.g.seqlen_q = a.cu_seqlens_q[b + 1] - s.start_q;
    s.g.seqlen_k = a.cu_seqlens_k[b + 1] - s.start_k;
    s.tma_batch = 0;
    s.dq_row0 = s.start_q;
  } else {
    s.start_q = s.start_k = 0;
    s.g.seqlen_q = a.seqlen_q;
    s.g.seqlen_k = a.seqlen_k;
    s.tma_batch = b;
    s.dq_row0 = b * a.seqlen_q;
  }
  return s;
}

// gridDim.x read where it is used: held in a register across the item loop, it was the one value D = 256 spilled.
__device__ __forceinline__ int32_t grid_ctas() {
#if defined(FLASHCORE_SM90_EMU)
  return static_cast<int32_t>(gridDim.x);  // the CPU model: no registers to save
#else
  uint32_t n;
  asm volatile("mov.u32 %0, %%nctaid.x;" : "=r"(n));
  return static_cast<int32_t>(n);
#endif
}

// The same value, but opaque to the optimizer: values derived from it are recomputed where used instead of being
// hoisted out of the loop into registers.
__device__ __forceinline__ uint32_t opaque(uint32_t v) {
#if !defined(FLASHCORE_SM90_EMU)  // the CPU model: nothing to hide from
  asm volatile("" : "+r"(v));
#endif
  return v;
}

template <HalfType kType>
__device__ __forceinline__ float2 unpack_half2(uint32_t v) {
  if constexpr (kType == HalfType::kBf16) {
    return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));  // bf16 = high half of fp32
  } else {
    __half2_raw raw;
    raw.x = static_cast<unsigned short>(v & 0xffffu), raw.y = static_cast<unsigned short>(v >> 16);
    return __half22float2(__half2(raw));
  }
}

template <HalfType kType>
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  return kType == HalfType::kBf16 ? pack_bf16x2(lo, hi) : pack_f16x2(lo, hi);
}

// Calls f(std::integral_constant<int, p>) for each column piece p of the columns [kC0, kC0 + kCols).
template <int kC0, int kCols, class F>
__device__ __forceinline__ void for_each_piece(F&& f) {
  [&]<int... P>(std::integer_sequence<int, P...>) {
    (f(std::integral_constant<int, P>{}), ...);
  }(std::make_integer_sequence<int, piece_count(kC0, kCols)>{});
}

// The accumulator registers of piece p inside a consumer's kCols-wide accumulator.
template <int kWidth, int kCols>
__device__ __forceinline__ float (&piece_regs(float (&acc)[kCols / 2], int reg0))[kWidth / 2] {
  return *reinterpret_cast<float(*)[kWidth / 2]>(&acc[reg0]);
}

constexpr uint32_t kK16Bytes = kWgmmaK * kElemBytes;  // next 16 values inside a K-major 128-byte row
constexpr uint32_t kK16Rows = kWgmmaK * kRowBytes;     // next 16 rows of an MN-major tile (two 1024 B atoms)

}  // namespace flashcore::sm90::bwd

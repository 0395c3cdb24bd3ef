// Epilogue of one consumer warpgroup (its 64 query rows): finish the row sums, write LSE, normalize O and store it.
//   * LSE: lane 0 of each quad writes its two rows (fp32, a few bytes per row: plain stores).
//   * O: bf16/fp16 through shared memory and a TMA store: stmatrix into the consumer's 64 rows of a staging buffer
//     (128B swizzle, the Q panel layout), then one thread stores each 64-column panel with one bulk tensor copy.
//     The staging buffer is a separate output buffer where shared memory allows (traits.cuh kSeparateOut: Q is
//     then released right after the last S GEMM), else the consumer's own 64 rows of Q, dead by then. The tensor
//     map clips at the tensor's edge: for dense inputs the sequence is its own map dimension, so rows past seqlen_q
//     are dropped by the hardware. A packed varlen tensor has no such edge between sequences, so a warpgroup whose
//     rows run past its sequence's end stores from registers instead (4-byte stores, masked per row): one
//     warpgroup per sequence at most.
#pragma once

#include "softmax.cuh"
#include "work.cuh"

namespace flashcore::sm90::fwd {

template <int D, bool kBf16>
__device__ __forceinline__ void store_rows_direct(const float (&o)[FwdTraits<D>::kORegs], const FwdParams& p,
                                                  const WorkTile& w, int wg_row0, int tid) {
  uint16_t* const out = static_cast<uint16_t*>(p.out) + static_cast<int64_t>(w.batch) * p.o_stride_b +
                        static_cast<int64_t>(w.head) * p.o_stride_h;
#pragma unroll
  for (int i = 0; i < FwdTraits<D>::kORegs; i += 2) {
    const int row = wg_row0 + frag::acc_row(tid, i);
    if (row < w.band.seqlen_q) {
      const uint32_t packed = kBf16 ? ptx::pack_bf16x2(o[i], o[i + 1]) : ptx::pack_f16x2(o[i], o[i + 1]);
      *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(w.q_start + row) * p.o_stride_s +
                                   frag::acc_col(tid, i)) = packed;
    }
  }
}

__device__ __forceinline__ void store_lse(const float (&lse)[kRowsPerThread], const FwdParams& p, const WorkTile& w,
                                          int wg_row0, int tid) {
  if (tid % frag::kQuad != 0) return;
  float* const base = p.lse + static_cast<int64_t>(w.batch) * p.lse_stride_b +
                      static_cast<int64_t>(w.head) * p.lse_stride_h + w.q_start;
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) {
    const int row = wg_row0 + frag::acc_row(tid, 2 * h);
    if (row < w.band.seqlen_q) base[row] = lse[h];
  }
}

// Rows that see no key at all (an empty key span): out = 0, lse = -inf, no shared memory involved.
template <int D, bool kBf16>
__device__ __forceinline__ void store_empty_rows(const FwdParams& p, const WorkTile& w, int wg_row0, int tid) {
  float o[FwdTraits<D>::kORegs];
#pragma unroll
  for (int i = 0; i < FwdTraits<D>::kORegs; ++i) o[i] = 0.0f;
  const float lse[kRowsPerThread] = {kNegInf, kNegInf};
  store_lse(lse, p, w, wg_row0, tid);
  store_rows_direct<D, kBf16>(o, p, w, wg_row0, tid);
}

template <int D, bool kBf16>
__device__ __forceinline__ void epilogue(float (&o)[FwdTraits<D>::kORegs], const float (&m)[kRowsPerThread],
                                         const float (&l)[kRowsPerThread], SharedStorage<D>& s,
                                         const CUtensorMap* tmap_o, const FwdParams& p, const WorkTile& w,
                                         int consumer, int tid) {
  using T = FwdTraits<D>;
  using namespace ptx;
  const int wg_row0 = w.row0 + consumer * frag::kWgmmaM;
  float inv[kRowsPerThread], lse[kRowsPerThread];
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) {
    const float sum = frag::quad_allreduce_sum(l[h]);
    inv[h] = sum == 0.0f ? 0.0f : 1.0f / sum;  // a row that saw nothing: out 0
    lse[h] = sum == 0.0f ? kNegInf : (m[h] + __log2f(sum)) * kLn2;
  }
  store_lse(lse, p, w, wg_row0, tid);
  rescale_rows(o, inv);

  const bool tma_store = p.cu_seqlens_q == nullptr || wg_row0 + frag::kWgmmaM <= w.band.seqlen_q;
  const uint32_t bar = T::kEpilogueBarrier + consumer;
  uint8_t* staging;  // this consumer's 64 rows of the output buffer, or of Q's (T::kSeparateOut)
  if constexpr (T::kSeparateOut) {
    staging = s.out + consumer * frag::kWgmmaM * kSwizzle128Row;
  } else {
    staging = s.q[0] + consumer * frag::kWgmmaM * kSwizzle128Row;  // no output buffer: one Q buffer (traits.cuh)
  }
  const uint32_t rows_base = smem_u32(staging);
  if (tma_store) {
    // Separate buffer: the previous tile's store from it must have read it (one thread issued and waits for it).
    // Staging in Q: every warp of this warpgroup must be past its last wgmma, which read these Q rows.
    if (T::kSeparateOut && tid == 0) bulk_wait_group_read<0>();
    named_barrier_sync(bar, frag::kWarpgroupThreads);
    const int warp = tid / frag::kWarpSize, lane = tid % frag::kWarpSize;
#pragma unroll
    for (int blk = 0; blk < D / 16; ++blk) {  // 16 columns = 8 accumulator registers = one stmatrix.x4
      const int panel = blk / 4, chunk16 = 2 * (blk % 4);
      const int r = frag::kAccRegsPerK16 * blk;
      auto pack = [&](float lo, float hi) { return kBf16 ? pack_bf16x2(lo, hi) : pack_f16x2(lo, hi); };
      stmatrix_x4(rows_base + panel * T::kQPanelBytes +
                      frag::stmatrix_sw128_offset(lane, warp * frag::kRowsPerWarp, chunk16),
                  pack(o[r], o[r + 1]), pack(o[r + 2], o[r + 3]), pack(o[r + 4], o[r + 5]), pack(o[r + 6], o[r + 7]));
    }
    fence_proxy_async_shared();  // each writer: its stmatrix before the TMA store's (async proxy) read
    named_barrier_sync(bar, frag::kWarpgroupThreads);
    if (tid == 0) {
      for (int panel = 0; panel < T::kPanels; ++panel) {
        tma_store_4d(tmap_o, staging + panel * T::kQPanelBytes, panel * T::kPanelCols, w.q_start + wg_row0, w.head,
                     w.tma_batch);
      }
      bulk_commit_group();
      if constexpr (!T::kSeparateOut) {
        bulk_wait_group_read<0>();  // Q's buffer is read: the producer may load the next Q into it
        mbarrier_arrive(&s.q_empty[0]);
      }  // else the next epilogue waits, so the store's read overlaps the next tile
    }
  } else {
    store_rows_direct<D, kBf16>(o, p, w, wg_row0, tid);
    if constexpr (!T::kSeparateOut) {
      named_barrier_sync(bar, frag::kWarpgroupThreads);  // every warp is past its last wgmma reading Q
      if (tid == 0) mbarrier_arrive(&s.q_empty[0]);
    }
  }
}

}  // namespace flashcore::sm90::fwd

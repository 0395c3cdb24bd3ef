// The sm_90a attention backward main kernel: one work item = one K/V block (block_n keys) of one (batch, K/V head);
// K and V are loaded once, the query tiles that see the block stream through a ring, dK and dV stay in registers.
//
// Roles (BwdConfig, csrc/tiles/sm90_bwd.h):
//   producer  thread 0 of warpgroup 0 (registers lowered; the other 127 threads leave at once). Per item: K, V by
//             TMA on kv_full. Per query tile: waits for a free stage, announces its bytes and issues the TMA loads
//             of Q, dO and of the tile's LSE and delta rows (flat 2D maps: any row offset, no alignment needed).
//             Dynamic schedule (default, tile_handoff.h): after an item's last loads it claims the next item from
//             the global counter and publishes every index, then the end sentinel, to the consumers through a
//             2-slot shared-memory ring; FLASHCORE_SM90_STATIC_SCHEDULE=1: all roles walk the static round-robin.
//   consumers warpgroups 1 and 2 (registers raised). Per query tile, each on its 64 keys (and, for block_n = 64,
//             its half of the queries / head-dim columns):
//               S^T = K Q^T, dP^T = V dO^T                  (SS, K-major operands: as TMA wrote them)
//               P^T = exp2(S^T * scale * log2e - lse * log2e),  dS^T = P^T (dP^T - delta) * dscore/d(qk)
//               dS^T (and, with shared keys, P^T) -> shared memory (stmatrix, bf16/fp16)
//               dV += P^T dO, dK += dS^T Q                  (own keys: RS, P^T / dS^T from registers; shared
//                                                           keys: SS; dO and Q are MN-major B operands)
//               dQ_tile[:, half c] = dS K[:, half c]        (SS over all block_n keys; dS^T an MN-major A, K an
//                                                           MN-major B; consumer c takes half of the columns)
//               dQ_tile -> fp32 workspace, each value once per CTA: staged in shared memory (st.shared.v2.f32,
//               128B-swizzled [64][32] fp32 boxes) and reduce-added by TMA (cp.reduce.async.bulk.tensor, one
//               thread per consumer; deterministic: each thread in turn, behind the tile's semaphore);
//               red.global.add.v2.f32 where the staging does not fit (D = 256; deterministic: in turn, with
//               ld.cg / st.cg)
//             Where a tile overhangs its sequence's end, the rows past it are zeroed in shared memory before the
//             GEMMs (varlen: K / V per item, Q / dO per tile; dense and varlen: delta; zero_rows_past_end).
//             After the item: dK, dV -> global (row-predicated stores: varlen blocks end mid-block).
//             -DFLASHCORE_BWD_SM90_DQ_LAG[_PINGPONG] (D <= 128, BwdConfig::kDqLag): each tile's dQ in the next
//             iteration, from a second dS^T buffer, the halves handed over by one-way named barriers.
// softmax_scale and the softcap derivative are folded into dS, so dK and the dQ workspace need no scaling after.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "../fwd_params.h"  // HalfType, kLog2e
#include "bwd_sm90_common.cuh"
#include "bwd_sm90_dq.cuh"
#include "bwd_sm90_plan.h"
#include "ptx/ptx.cuh"

namespace flashcore::sm90::bwd {

using namespace ptx;

// tanh(x) = 1 - 2 / (exp(2x) + 1), with ex2.approx (relative error ~2^-22) and a fast division: absolute error
// ~1e-7. --use_fast_math turns tanhf into MUFU.TANH, whose ~5e-4 error times a softcap of 30-50 would move the
// recomputed scores by 0.015-0.025, i.e. P by 1.5-2.5%. Saturates correctly: exp2 -> inf gives 1, -> 0 gives -1.
constexpr float kTwoLog2e = 2.0f * kLog2e;
__device__ __forceinline__ float tanh_accurate(float x) {
  return 1.0f - __fdividef(2.0f, exp2f(x * kTwoLog2e) + 1.0f);
}

// ---- producer --------------------------------------------------------------------------------------------------
// One thread: everything it moves goes by TMA, so it only walks the schedule (its registers can drop to 24). The
// walk is compiled once per schedule, so that each keeps only the loop state it needs (dynamic: the hand-off
// cursor; static: nothing more than the item index).
template <class C, bool kDynamic>
__device__ __forceinline__ void produce_items(SharedStorage<C>& s, const CUtensorMap* tmap_q,
                                              const CUtensorMap* tmap_k, const CUtensorMap* tmap_v,
                                              const CUtensorMap* tmap_do, const CUtensorMap* tmap_lse,
                                              const CUtensorMap* tmap_delta, const BwdArgs& a) {
  const int32_t group = a.heads_q / a.heads_kv;
  int stage = 0;
  uint32_t parity = 0;  // bit 0: the ring lap's parity; bit 1: the K/V barrier's
  HandoffCursor handoff;  // dynamic: the item-index ring to the consumers (tile_handoff.cuh)
  const int32_t items = static_cast<int32_t>(work_items(a.grid));
  // Dynamic: the next item is claimed once this one's loads are issued (the consumers are then still about a
  // stage's worth of query tiles from its end, which hides the claim's round trip, and the claim comes as late as
  // it can to balance best). Every item is published, skipped ones included: all roles walk one sequence.
#pragma unroll 1
  for (int32_t item = blockIdx.x; item != kNoTile; item = claim_next_tile<kDynamic>(a.item_counter, item, items)) {
    if constexpr (kDynamic) publish_tile(s, handoff, item);
    int32_t n, hk, b;
    decode_item(a.grid, item, n, hk, b);
    const SeqInfo si = seq_info(a, b);
    const Range tiles = query_tile_range(si.g, n, C::kBlockM, C::kBlockN);
    if (tiles.begin >= tiles.end) continue;  // the consumers skip it too: no K/V load, dK = dV = 0
    mbarrier_wait(&s.kv_empty, ((parity >> 1) & 1) ^ 1);  // the first item passes at once (fresh barrier)
    mbarrier_arrive_expect_tx(&s.kv_full, C::kKvBytes);
    const int32_t key0 = si.start_k + n * C::kBlockN;
#pragma unroll
    for (int c = 0; c < C::kColBlocks; ++c) {
      tma_load_4d(s.k[c], tmap_k, &s.kv_full, c * kColBlock, hk, key0, si.tma_batch);
      tma_load_4d(s.v[c], tmap_v, &s.kv_full, c * kColBlock, hk, key0, si.tma_batch);
    }
    parity ^= 2;
#pragma unroll 1
    for (int32_t hq = hk * group; hq < (hk + 1) * group; ++hq) {
      // Flat index of the head's first LSE / delta row (the host checks the arrays hold < 2^31 values).
      const int32_t stat0 = static_cast<int32_t>(si.start_q + b * a.lse_stride_b + hq * a.lse_stride_h);
#pragma unroll 1
      for (int32_t m = tiles.begin; m < tiles.end; ++m) {
        mbarrier_wait(&s.empty[stage], (parity & 1) ^ 1);
        mbarrier_arrive_expect_tx(&s.full[stage], C::kStageTmaBytes);
        const int32_t row0 = si.start_q + m * C::kBlockM;
#pragma unroll
        for (int c = 0; c < C::kColBlocks; ++c) {
          tma_load_4d(s.q[stage][c], tmap_q, &s.full[stage], c * kColBlock, hq, row0, si.tma_batch);
          tma_load_4d(s.dout[stage][c], tmap_do, &s.full[stage], c * kColBlock, hq, row0, si.tma_batch);
        }
        tma_load_2d(s.lse[stage], tmap_lse, &s.full[stage], stat0 + m * C::kBlockM, 0);
        tma_load_2d(s.delta[stage], tmap_delta, &s.full[stage], stat0 + m * C::kBlockM, 0);
        if (++stage == C::kStages) stage = 0, parity ^= 1;
      }
    }
  }
  if constexpr (kDynamic) publish_tile(s, handoff, kNoTile);  // the consumers' end of work
}

template <class C>
__device__ __forceinline__ void produce(SharedStorage<C>& s, const CUtensorMap* tmap_q, const CUtensorMap* tmap_k,
                                        const CUtensorMap* tmap_v, const CUtensorMap* tmap_do,
                                        const CUtensorMap* tmap_lse, const CUtensorMap* tmap_delta,
                                        const BwdArgs& a) {
  prefetch_tensor_map(tmap_q), prefetch_tensor_map(tmap_k), prefetch_tensor_map(tmap_v);
  prefetch_tensor_map(tmap_do), prefetch_tensor_map(tmap_lse), prefetch_tensor_map(tmap_delta);
  if (a.item_counter != nullptr) {
    produce_items<C, true>(s, tmap_q, tmap_k, tmap_v, tmap_do, tmap_lse, tmap_delta, a);
  } else {
    produce_items<C, false>(s, tmap_q, tmap_k, tmap_v, tmap_do, tmap_lse, tmap_delta, a);
  }
}

// ---- consumer pieces -------------------------------------------------------------------------------------------
// The wgmmas of a consumer's dV / dK GEMMs (K = block_m queries): f(kq, width, reg0, b_off) for every K step kq
// (16 queries) and column piece, whose accumulator registers start at reg0 (width and reg0 as integral constants)
// and whose MN-major B operand (dO or Q) starts b_off bytes into the stage's tile.
template <class C, int kPart, class F>
__device__ __forceinline__ void for_each_dkv_wgmma(F&& f) {
  constexpr int kC0 = kPart * C::kCols;
#pragma unroll
  for (int kq = 0; kq < C::kBlockM / kWgmmaK; ++kq) {
    for_each_piece<kC0, C::kCols>([&](auto piece) {
      constexpr int kStart = piece_start(kC0, C::kCols, decltype(piece)::value);
      constexpr uint32_t kOff = (kStart / kColBlock) * C::kQColBlockBytes + (kStart % kColBlock) * kElemBytes;
      f(kq, std::integral_constant<int, piece_width(kC0, C::kCols, decltype(piece)::value)>{},
        std::integral_constant<int, (kStart - kC0) / 2>{}, kOff + kq * kK16Rows);
    });
  }
}

// dV += P^T dO and dK += dS^T Q for this consumer's 64 keys and column pieces, A from shared memory (SS): one wgmma
// group, the only one that reads the stage (Q, dO) after S^T / dP^T, so the stage is released when it completes.
template <class C, MmaType kMma, int kPart>
__device__ __forceinline__ void dkv_gemms(float (&dk)[C::kCols / 2], float (&dv)[C::kCols / 2], uint32_t p_base,
                                          uint32_t ds_base, uint32_t q_stage, uint32_t do_stage,
                                          uint32_t key_row0_bytes) {
  const uint64_t a_p0 = kmajor_sw128_desc(p_base + key_row0_bytes);  // base descriptors, advanced per step
  const uint64_t a_ds0 = kmajor_sw128_desc(ds_base + key_row0_bytes);
  const uint64_t b_do0 = mnmajor_sw128_desc(do_stage, C::kQColBlockBytes);
  const uint64_t b_q0 = mnmajor_sw128_desc(q_stage, C::kQColBlockBytes);
  wgmma_fence();
  for_each_dkv_wgmma<C, kPart>([&](int kq, auto width, auto reg0, uint32_t b_off) {
    constexpr int kWidth = decltype(width)::value;
    wgmma_ss_n<kWidth, kMma, 0, 1>(piece_regs<kWidth, C::kCols>(dv, reg0), desc_advance(a_p0, kq * kK16Bytes),
                                   desc_advance(b_do0, b_off), true);
    wgmma_ss_n<kWidth, kMma, 0, 1>(piece_regs<kWidth, C::kCols>(dk, reg0), desc_advance(a_ds0, kq * kK16Bytes),
                                   desc_advance(b_q0, b_off), true);
  });
  wgmma_commit();
}

// The RS form (C::kRsDkv): acc += A^T-tile B for this consumer's column pieces, A = its packed P^T (dV, B = dO) or
// dS^T (dK, B = Q) in registers: K step kq (16 queries) takes a[4 kq .. 4 kq + 3], the accumulator layout's 16
// columns being wgmma's register-A layout (layout.cuh, a_frag_from_acc). One wgmma group; `a` belongs to the tensor
// core until the wait that completes it, and the caller pins it there (fence_operands) so that its registers are
// not reused before.
template <class C, MmaType kMma, int kPart>
__device__ __forceinline__ void dkv_gemm_rs(float (&acc)[C::kCols / 2], const uint32_t (&a)[C::kBlockM / 4],
                                            uint32_t b_stage) {
  const uint64_t b0 = mnmajor_sw128_desc(b_stage, C::kQColBlockBytes);  // base descriptor, advanced per step
  wgmma_fence();
  for_each_dkv_wgmma<C, kPart>([&](int kq, auto width, auto reg0, uint32_t b_off) {
    constexpr int kWidth = decltype(width)::value;
    const uint32_t(&a_k)[4] = *reinterpret_cast<const uint32_t(*)[4]>(&a[4 * kq]);
    wgmma_rs_n<kWidth, kMma, 1>(piece_regs<kWidth, C::kCols>(acc, reg0), a_k, desc_advance(b0, b_off), true);
  });
  wgmma_commit();
}

// dK or dV (64 keys x this consumer's columns) -> global, rows past seqlen_k dropped.
template <class C, HalfType kType, int kPart>
__device__ __forceinline__ void store_rows(const float (&acc)[C::kCols / 2], uint16_t* head, int64_t row_stride,
                                           int32_t key0, int32_t seqlen_k, int tid) {
  constexpr int kC0 = kPart * C::kCols;
#pragma unroll
  for (int i = 0; i < C::kCols / 2; i += 2) {
    const int32_t key = key0 + frag::acc_row(tid, i);
    if (key >= seqlen_k) continue;
    *reinterpret_cast<uint32_t*>(head + key * row_stride + kC0 + frag::acc_col(tid, i)) =
        pack_half2<kType>(acc[i], acc[i + 1]);
  }
}

// Varlen: the tiles are loaded whole from the packed tensors, so a K/V block or query tile that runs past its
// sequence's end holds the next sequence's rows. Their scores are masked (P = 0, dS = 0), but the tensor cores
// still multiply those rows (dQ = dS K, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q), and 0 x inf = NaN: one
// non-finite value in a neighbour would reach this sequence's gradients. The overhanging rows [row0, kRows) of
// `blocks` column blocks are zeroed in shared memory instead (ptx::zero_swizzled_rows), by both consumers' 256
// threads (`thread` in [0, 256)). Each writer fences; the caller's barrier orders the zeros before every wgmma.
template <int kRows>
__device__ __forceinline__ void zero_rows_past_end(uint32_t first, uint32_t block_bytes, int blocks, int row0,
                                                   int thread) {
  zero_swizzled_rows(first, block_bytes, blocks, row0, kRows, thread, kConsumerThreads);
}

// ---- consumer --------------------------------------------------------------------------------------------------
template <class C, HalfType kType, int kPart>
__device__ __forceinline__ void consume(SharedStorage<C>& s, const BwdArgs& a, const CUtensorMap* tmap_dq,
                                        int consumer) {
  constexpr MmaType kMma = kType == HalfType::kBf16 ? MmaType::kBf16 : MmaType::kF16;
  constexpr int kQ0 = kPart * C::kSQueries;  // this consumer's first query column of S^T / dP^T
  constexpr int kSRegs = C::kSQueries / 2;
  constexpr int kKSteps16 = C::kKSteps;
  constexpr int kC0 = kPart * C::kCols;
  constexpr uint32_t kQStageBytes = C::kColBlocks * C::kQColBlockBytes;
  const int tid = threadIdx.x % kWarpgroupThreads;
  const int lane = tid % frag::kWarpSize;
  const int kg = consumer / C::kParts;  // this consumer's 64-key group
  const uint32_t key_row0_bytes = kg * kWgmmaM * kRowBytes;
  using S = SharedStorage<C>;
  const uint32_t smem0 = smem_u32(&s);  // one base: the tiles' addresses are constant offsets from it
  const int32_t group = a.heads_q / a.heads_kv;

  float dk[C::kCols / 2], dv[C::kCols / 2];
  // Ring position and both barrier parities in two registers (D = 128 has none to spare): stage, and `parity`
  // with bit 0 = the ring lap's parity, bit 1 = the K/V barrier's.
  int stage = 0;
  uint32_t parity = 0;
  // Dynamic schedule: every item index, and the end, comes from the producer (tile_handoff.cuh take_tile);
  // static: the same round-robin the producer computes.
  const bool dynamic = a.item_counter != nullptr;
  HandoffCursor handoff;
  const int32_t items = static_cast<int32_t>(work_items(a.grid));
  // kDqLag: dS^T tiles written so far (both consumers count the same sequence): tile number w goes to buffer
  // w % 2, and from the third on the writer first waits for the other's dQ GEMM to have read the buffer.
  uint32_t ds_writes = 0;
  constexpr uint32_t kDsBytes = C::kBlockN * C::kBlockM * kElemBytes;  // one dS^T buffer
  // kPingPong: consumer 0 issues first; each S^T issue opens the other's turn, the last one is absorbed at exit.
  if constexpr (C::kPingPong) {
    if (consumer == 1) named_barrier_arrive(kBarSTurn, kConsumerThreads);
  }
  auto next_item = [&](int32_t item) {
    return dynamic ? take_tile(s, handoff, lane) : static_next_tile(item, grid_ctas(), items);
  };
#pragma unroll 1
  for (int32_t item = dynamic ? take_tile(s, handoff, lane) : static_cast<int32_t>(blockIdx.x);
       item != kNoTile; item = next_item(item)) {
    int32_t n, hk, b;
    decode_item(a.grid, item, n, hk, b);
    const SeqInfo si = seq_info(a, b);
    if (n * C::kBlockN >= si.g.seqlen_k) continue;  // this sequence has no keys here
    const Range tiles = query_tile_range(si.g, n, C::kBlockM, C::kBlockN);
#pragma unroll
    for (int i = 0; i < C::kCols / 2; ++i) dk[i] = 0.0f, dv[i] = 0.0f;  // keys no query sees: dK = dV = 0
    const int32_t key0 = n * C::kBlockN + kg * kWgmmaM;

    // dQ of query tile m of head hq: consumer c computes and adds columns dq_cols(c) of the tile over all block_n
    // keys, from the dS^T tile at ds_base.
    auto dq_of = [&](auto releases_stage, int32_t hq_x, int32_t m_x, uint32_t ds_base, uint32_t k_base,
                     uint64_t* empty, int t, int ln, auto&& dkv_done, auto&& ds_read) {
      constexpr bool kReleases = decltype(releases_stage)::value;
      int32_t* sem = a.deterministic ? a.semaphores + semaphore_index(b, hq_x, m_x, a.heads_q, a.m_tiles) : nullptr;
      const float* dq_stage = reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(&s) + offsetof(S, dq)) +
                              consumer * C::kDqBoxes * kWgmmaM * kDqBoxCols;
      const int32_t turn =
          sem != nullptr ? det_rank(si.g, m_x, n, C::kBlockM, C::kBlockN) * C::kDqReleasesPerBlock : 0;
      const DqTile tile{a, si.dq_row0, hq_x, m_x * C::kBlockM, si.g.seqlen_q, t, ln, sem, turn,
                        &s.dq_turn[consumer], tmap_dq, dq_stage};
      if (consumer == 0) {
        dq_phase<C, kMma, 0, kReleases>(tile, ds_base, k_base, empty, consumer, dkv_done, ds_read);
      } else {
        dq_phase<C, kMma, 1, kReleases>(tile, ds_base, k_base, empty, consumer, dkv_done, ds_read);
      }
    };
    // kDqLag: the query tile whose dQ is still to do (prev_m < 0: none), one tile behind; its dQ from dS^T buffer
    // `buf` (at ds_base) once the other consumer's half is in it, then the signal that this consumer has read it.
    int32_t prev_hq = 0, prev_m = -1;
    auto lagged_dq = [&](auto releases_stage, uint32_t buf, uint32_t ds_base, uint32_t k_base, uint64_t* empty,
                         int t, int ln, auto&& dkv_done) {
      named_barrier_sync(ds_written_barrier(buf, 1 - consumer), kConsumerThreads);
      dq_of(releases_stage, prev_hq, prev_m, ds_base, k_base, empty, t, ln, dkv_done,
            [&] { named_barrier_arrive(ds_read_barrier(buf, 1 - consumer), kConsumerThreads); });
    };

    if (tiles.begin < tiles.end) {
      mbarrier_wait(&s.kv_full, parity >> 1);
      parity ^= 2;
      // Varlen, the block holding the sequence's end: its K and V rows past it zeroed (see zero_rows_past_end),
      // once per item, before any wgmma reads them (both consumers read each other's K rows in the dQ GEMM).
      // K and V column blocks are adjacent in SharedStorage, so one walk over 2 x kColBlocks blocks covers both.
      const int32_t kv_row0 = si.g.seqlen_k - n * C::kBlockN;
      if (a.cu_seqlens_k != nullptr && kv_row0 < C::kBlockN) {
        static_assert(offsetof(S, v) == offsetof(S, k) + C::kColBlocks * C::kKColBlockBytes, "V right after K");
        zero_rows_past_end<C::kBlockN>(smem0 + offsetof(S, k), C::kKColBlockBytes, 2 * C::kColBlocks, kv_row0,
                                       consumer * kWarpgroupThreads + tid);
        fence_proxy_async_shared();  // each writer, before the barrier that precedes the readers' wgmmas
        named_barrier_sync(kBarKvZeroed, kConsumerThreads);
      }
#pragma unroll 1
      for (int32_t hq = hk * group; hq < (hk + 1) * group; ++hq) {
#pragma unroll 1
        for (int32_t m = tiles.begin; m < tiles.end; ++m) {
          mbarrier_wait(&s.full[stage], parity & 1);
          // Rebuild the shared-memory bases each tile: otherwise the compiler hoists every (loop-invariant)
          // 64-bit descriptor of the K, V, P and dS operands out of the loop, ~50 registers the accumulators need.
          // Through a shuffle, the bases are warp-uniform as far as ptxas can tell: the descriptors built from
          // them then live in uniform registers, not in vector registers moved over by R2UR before each wgmma.
          const uint32_t base = __shfl_sync(frag::kFullWarpMask, opaque(smem0), 0);
          const uint32_t stage_bytes = __shfl_sync(frag::kFullWarpMask, stage * kQStageBytes, 0);
          const uint32_t k_tile = base + offsetof(S, k), v_tile = base + offsetof(S, v);
          const uint32_t p_tile = base + offsetof(S, p), ds_tile = base + offsetof(S, ds);
          const uint32_t q_stage = base + offsetof(S, q) + stage_bytes;
          const uint32_t do_stage = base + offsetof(S, dout) + stage_bytes;
          const int t = static_cast<int>(opaque(static_cast<uint32_t>(tid)));  // likewise the per-thread offsets
          const int ln = t % frag::kWarpSize, wp = t / frag::kWarpSize;
          // A sequence's last query tile, when partial: the delta values past its end zeroed (the flat 2D map
          // loads other rows' there, dense or varlen: the next head's or sequence's, possibly non-finite, and
          // dS = 0 x (dP - delta)); varlen, its Q and dO rows too (dense maps zero-fill them). The LSE needs
          // nothing (P is selected to 0). Both consumers read the whole stage, so both write and both pass the
          // barrier; the producer refills the stage only after every consumer warp's empty arrival, later in this
          // tile. Dense sequences of a multiple of block_m never get here.
          const int32_t q_row0 = si.g.seqlen_q - m * C::kBlockM;
          if (q_row0 < C::kBlockM) {
            const int thread = consumer * kWarpgroupThreads + t;
            if (a.cu_seqlens_q != nullptr) {
              zero_rows_past_end<C::kBlockM>(q_stage, C::kQColBlockBytes, C::kColBlocks, q_row0, thread);
              zero_rows_past_end<C::kBlockM>(do_stage, C::kQColBlockBytes, C::kColBlocks, q_row0, thread);
            }
            if (thread < C::kBlockM - q_row0) s.delta[stage][q_row0 + thread] = 0.0f;
            fence_proxy_async_shared();  // each writer: the zeros before the wgmmas and the stage's next TMA fill
            named_barrier_sync(kBarStageZeroed, kConsumerThreads);
          }

          // S^T = K Q^T and dP^T = V dO^T over the head dim (K-major A and B); P^T from S^T in place, packed to
          // 16-bit pairs (the stmatrix operands). Where the registers allow both fp32 tiles next to dK and dV
          // (C::kOverlapSdP), dP^T runs on the tensor cores while the exponentials are computed; at D = 128
          // (128 + 64 + addresses > 240) it is issued after P^T, overlapping only P's shared-memory store.
          const int32_t q0 = m * C::kBlockM + kQ0;  // query of S^T column 0
          const bool masked = tile_needs_mask(si.g, m, n, C::kBlockM, C::kBlockN);
          const TileMask mask = tile_mask(si.g, q0, key0);
          auto issue_gemm = [&](float (&acc)[kSRegs], uint32_t a_tile, uint32_t b_stage) {
            // Base descriptors once, then compile-time advances: built per step, each cost ~10 instructions.
            const uint64_t a0 = kmajor_sw128_desc(a_tile + key_row0_bytes);
            const uint64_t b0 = kmajor_sw128_desc(b_stage + kQ0 * kRowBytes);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kKSteps16; ++kk) {
              const uint32_t col = (kk / 4) * C::kKColBlockBytes + (kk % 4) * kK16Bytes;
              const uint32_t qcol = (kk / 4) * C::kQColBlockBytes + (kk % 4) * kK16Bytes;
              wgmma_ss_n<C::kSQueries, kMma, 0, 0>(acc, desc_advance(a0, col), desc_advance(b0, qcol), kk > 0);
            }
            wgmma_commit();
          };
          uint32_t pk[kSRegs / 2];
          float dpt[kSRegs];
          {
            float st[kSRegs];
            if constexpr (C::kPingPong) named_barrier_sync(kBarSTurn + consumer, kConsumerThreads);
            issue_gemm(st, k_tile, q_stage);
            fence_operands(st);
            if constexpr (C::kOverlapSdP) {
              issue_gemm(dpt, v_tile, do_stage);
              fence_operands(dpt);
            }
            if constexpr (C::kPingPong) named_barrier_arrive(kBarSTurn + (1 - consumer), kConsumerThreads);
            if constexpr (C::kDqByTma) {
              // Deterministic: one look at this tile's dQ turn while the GEMMs run, where the load's L2 latency
              // hides under them (in dq_phase it would hold up the warpgroup's next wgmma). Only a look: waiting
              // here, before the previous tile's turn is passed on, could deadlock (pass_dq_turn).
              // kDqLag: the tile whose dQ this iteration adds is the previous one.
              const int32_t look_hq = C::kDqLag ? prev_hq : hq, look_m = C::kDqLag ? prev_m : m;
              if (a.deterministic && t == 0 && (!C::kDqLag || look_m >= 0)) {
                s.dq_turn[consumer].seen =
                    dq_turn_came(a.semaphores + semaphore_index(b, look_hq, look_m, a.heads_q, a.m_tiles),
                                 det_rank(si.g, look_m, n, C::kBlockM, C::kBlockN) * C::kDqReleasesPerBlock);
              }
            }
            if constexpr (C::kOverlapSdP) {
              wgmma_wait<1>();  // S^T done; dP^T still running
            } else {
              wgmma_wait<0>();
            }
            fence_operands(st);
            // P = exp2(score_log2 - lse * log2(e)): one FFMA. A row with lse = -inf (it saw no key in the forward)
            // gives +inf here, but such a row sees no key of this block either, so its tile is masked and the
            // mask pass below makes it 0; the rows past seqlen_q (other rows' LSE values) likewise.
            // Softcap scores are tanh(s * tanh_in) * softcap_log2, computed in place (a.score_mul is then 1), in a
            // pass of their own where C::kSoftcapPass says so (why: there), else per score.
            auto softcap_score = [&](int i) { st[i] = tanh_accurate(st[i] * a.tanh_in) * a.softcap_log2; };
            if constexpr (C::kSoftcapPass) {
              if (a.softcap) {
#pragma unroll
                for (int i = 0; i < kSRegs; ++i) softcap_score(i);
              }
            }
            // P in place of S^T, then the mask behind one branch (ptxas had predicated its ~6 instructions per score
            // on `masked`: issued, and discarded, on every unmasked tile), then the packing.
            const float* lse = s.lse[stage] + kQ0;
#pragma unroll
            for (int i = 0; i < kSRegs; ++i) {
              if constexpr (!C::kSoftcapPass) {
                if (a.softcap) softcap_score(i);
              }
              st[i] = exp2f(fmaf(lse[frag::acc_col(t, i)], -kLog2e, st[i] * a.score_mul));
            }
            if (masked) {
#pragma unroll
              for (int i = 0; i < kSRegs; ++i) {
                if (!mask.visible(frag::acc_row(t, i), frag::acc_col(t, i))) st[i] = 0.0f;
              }
            }
#pragma unroll
            for (int i = 0; i < kSRegs; i += 2) pk[i / 2] = pack_half2<kType>(st[i], st[i + 1]);
          }
          if constexpr (!C::kOverlapSdP) {
            issue_gemm(dpt, v_tile, do_stage);
            fence_operands(dpt);
          }
          if constexpr (C::kRsDkv) {
            // dV += P^T dO straight from the registers, on the tensor cores behind dP^T.
            fence_operands(dv);
            dkv_gemm_rs<C, kMma, kPart>(dv, pk, do_stage);
            fence_operands(dv);
          } else {
            // P^T rows are read by their own consumer only when it owns its keys (block_n = 128); with shared keys
            // (block_n = 64) the other consumer's dV GEMM of the previous tile may still be reading them.
            if constexpr (C::kParts > 1) named_barrier_sync(kBarPFree, kConsumerThreads);
#pragma unroll
            for (int j = 0; j < C::kSQueries / 16; ++j) {
              const uint32_t off = frag::stmatrix_sw128_offset(ln, kg * kWgmmaM + wp * frag::kRowsPerWarp,
                                                               (kQ0 + 16 * j) / 8);
              stmatrix_x4(p_tile + off, pk[4 * j], pk[4 * j + 1], pk[4 * j + 2], pk[4 * j + 3]);
            }
          }
          wgmma_wait<0>();
          fence_operands(dpt);
          if constexpr (C::kRsDkv) fence_operands(pk);  // the dV GEMM has read P^T: its registers become dS^T

          // dS^T = P^T (dP^T - delta) * d score / d(q.k), from the 16-bit P (the rounding dS gets anyway). With
          // softcap, tanh is recovered from P: score_log2 = log2(P) + lse log2(e) = softcap_log2 tanh, one MUFU.LG2
          // instead of keeping a tile of (1 - tanh^2) in registers; P = 0 (masked, underflow) gives dS = 0.
          {
            const float* lse = s.lse[stage] + kQ0;
            const float* delta = s.delta[stage] + kQ0;
            auto ds_from_p = [&](auto softcap) {
#pragma unroll
              for (int i = 0; i < kSRegs; i += 2) {
                const float2 p = unpack_half2<kType>(pk[i / 2]);
                float ds2[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const int col = frag::acc_col(t, i + h);
                  const float pv = h == 0 ? p.x : p.y;
                  float dscore = a.dscale;
                  if constexpr (decltype(softcap)::value) {
                    const float th = fmaf(lse[col], kLog2e, __log2f(pv)) * a.inv_softcap_log2;
                    dscore = pv > 0.0f ? a.dscale * (1.0f - th * th) : 0.0f;
                  }
                  ds2[h] = pv * (dpt[i + h] - delta[col]) * dscore;
                }
                pk[i / 2] = pack_half2<kType>(ds2[0], ds2[1]);
              }
            };
            if (a.softcap) {
              ds_from_p(std::true_type{});
            } else {
              ds_from_p(std::false_type{});
            }
          }
          fence_operands(dk);
          fence_operands(dv);
          if constexpr (C::kRsDkv) {
            // dK += dS^T Q straight from the registers: it needs no other warp's data, so it runs on the tensor
            // cores while this warpgroup stores dS^T and meets the other at the two barriers below.
            dkv_gemm_rs<C, kMma, kPart>(dk, pk, q_stage);
            fence_operands(dk);
          }
          auto store_ds = [&](uint32_t ds_base) {
#pragma unroll
            for (int j = 0; j < C::kSQueries / 16; ++j) {
              const uint32_t off = frag::stmatrix_sw128_offset(ln, kg * kWgmmaM + wp * frag::kRowsPerWarp,
                                                               (kQ0 + 16 * j) / 8);
              stmatrix_x4(ds_base + off, pk[4 * j], pk[4 * j + 1], pk[4 * j + 2], pk[4 * j + 3]);
            }
            fence_proxy_async_shared();  // this thread's dS^T stores before the readers' wgmmas
          };
          // The RS form's dS^T registers stay the tensor core's until the dK group completes (in dq_phase).
          auto dkv_done = [&] {
            if constexpr (C::kRsDkv) fence_operands(pk);
          };
          if constexpr (C::kDqLag) {
            // This tile's dS^T half into buffer w % 2 (once the other's dQ GEMM two tiles ago has read it), then
            // the previous tile's dQ from the other buffer, once the other consumer's half is there.
            // Through a shuffle, as the stage: warp-uniform, so the dQ GEMM's descriptors stay in uniform registers.
            const uint32_t buf = __shfl_sync(frag::kFullWarpMask, ds_writes % 2, 0);
            if (ds_writes >= 2) named_barrier_sync(ds_read_barrier(buf, consumer), kConsumerThreads);
            store_ds(ds_tile + buf * kDsBytes);
            named_barrier_arrive(ds_written_barrier(buf, consumer), kConsumerThreads);
            ++ds_writes;
            // The previous tile's dQ boxes have been read (issued a tile ago: no wait in practice), its turn passed
            // on (deterministic). The bulk wait is thread 0's: the "written" bar.sync below, which all of this
            // warpgroup's threads join, orders it before their staging writes in dq_phase.
            if (t == 0) pass_dq_turn(s.dq_turn[consumer]);
            if (prev_m >= 0) {
              lagged_dq(std::true_type{}, buf ^ 1, ds_tile + (buf ^ 1) * kDsBytes, k_tile, &s.empty[stage], t, ln,
                        dkv_done);
            } else {
              wgmma_wait<0>();  // the item's first tile: no dQ yet; the dV / dK group frees the stage
              dkv_done();
              if (lane == 0) mbarrier_arrive(&s.empty[stage]);
            }
            prev_hq = hq, prev_m = m;
          } else {
            // dS^T is read by both consumers' dQ GEMMs: wait until the previous tile's have completed (each
            // consumer reaches this barrier only after its last wgmma_wait of that tile).
            named_barrier_sync(kBarDsFree, kConsumerThreads);
            store_ds(ds_tile);
            if constexpr (C::kDqByTma) {
              // The previous tile's dQ boxes have been read (issued a tile ago: no wait in practice); the barrier
              // tells the warpgroup, which rewrites them in dq_phase. Deterministic: that tile's adds are
              // complete and its turn goes on to the next block.
              if (t == 0) pass_dq_turn(s.dq_turn[consumer]);
            }
            named_barrier_sync(kBarDsReady, kConsumerThreads);

            if constexpr (!C::kRsDkv) {
              dkv_gemms<C, kMma, kPart>(dk, dv, p_tile, ds_tile, q_stage, do_stage, key_row0_bytes);
              fence_operands(dk);
              fence_operands(dv);
            }
            dq_of(std::true_type{}, hq, m, ds_tile, k_tile, &s.empty[stage], t, ln, dkv_done, [] {});
          }
          fence_operands(dk);
          fence_operands(dv);
          if (++stage == C::kStages) stage = 0, parity ^= 1;
        }
      }
      if constexpr (C::kDqLag) {
        // The item's last tile's dQ, before K is released (bases and buffer warp-uniform, as in the loop).
        const int t = static_cast<int>(opaque(static_cast<uint32_t>(tid)));
        const uint32_t base = __shfl_sync(frag::kFullWarpMask, opaque(smem0), 0);
        const uint32_t buf = __shfl_sync(frag::kFullWarpMask, (ds_writes - 1) % 2, 0);
        const uint32_t ds_tile = base + offsetof(S, ds) + buf * kDsBytes, k_tile = base + offsetof(S, k);
        if (t == 0) {
          pass_dq_turn(s.dq_turn[consumer]);
          s.dq_turn[consumer].seen = 0;  // no early look for this tile: dq_phase waits for the turn itself
        }
        lagged_dq(std::false_type{}, buf, ds_tile, k_tile, nullptr, t, t % frag::kWarpSize, [] {});
      }
      if (lane == 0) mbarrier_arrive(&s.kv_empty);  // the last dQ GEMM (reading K) has completed
    }

    uint16_t* dk_head = static_cast<uint16_t*>(a.dk) + int64_t(b) * a.dk_stride_b +
                        int64_t(si.start_k) * a.dk_stride_s + int64_t(hk) * a.dk_stride_h;
    uint16_t* dv_head = static_cast<uint16_t*>(a.dv) + int64_t(b) * a.dv_stride_b +
                        int64_t(si.start_k) * a.dv_stride_s + int64_t(hk) * a.dv_stride_h;
    store_rows<C, kType, kPart>(dk, dk_head, a.dk_stride_s, key0, si.g.seqlen_k, tid);
    store_rows<C, kType, kPart>(dv, dv_head, a.dv_stride_s, key0, si.g.seqlen_k, tid);
  }
  if constexpr (C::kDqLag) {
    // Every dS^T buffer's last phase is the reader's arrival after its dQ GEMM: consumed here, so that no named
    // barrier is left mid-phase when the CTA exits.
    for (uint32_t w = ds_writes > 2 ? ds_writes - 2 : 0; w < ds_writes; ++w) {
      named_barrier_sync(ds_read_barrier(w % 2, consumer), kConsumerThreads);
    }
  }
  if constexpr (C::kPingPong) {
    if (consumer == 0) named_barrier_sync(kBarSTurn, kConsumerThreads);  // consumer 1's last S^T issue
  }
  if constexpr (C::kDqByTma) {
    // The last dQ reduce-adds done before the CTA's shared memory is released, and their turn passed on.
    if (tid == 0) pass_dq_turn<true>(s.dq_turn[consumer]);
  }
}

// ---- kernel ----------------------------------------------------------------------------------------------------
template <int kHeadDim, HalfType kType>
__global__ void __launch_bounds__(BwdConfig<kHeadDim>::kThreads, 1)
    bwd_sm90_kernel(const __grid_constant__ CUtensorMap tmap_q, const __grid_constant__ CUtensorMap tmap_k,
                    const __grid_constant__ CUtensorMap tmap_v, const __grid_constant__ CUtensorMap tmap_do,
                    const __grid_constant__ CUtensorMap tmap_lse, const __grid_constant__ CUtensorMap tmap_delta,
                    const __grid_constant__ CUtensorMap tmap_dq, const __grid_constant__ BwdArgs args) {
  using C = BwdConfig<kHeadDim>;  // its layout checks: launch_main (host constexpr functions)
  FLASHCORE_SM90_DYNAMIC_SMEM(smem_raw);
  SharedStorage<C>& s = smem_storage<SharedStorage<C>>(smem_raw);

  if (threadIdx.x == 0) {
    for (int i = 0; i < C::kStages; ++i) {
      mbarrier_init(&s.full[i], 1);                    // the producer's arrive.expect_tx; bytes from TMA
      mbarrier_init(&s.empty[i], C::kConsumerWarps);   // lane 0 of every consumer warp
    }
    mbarrier_init(&s.kv_full, 1);                      // the producer's arrive.expect_tx; bytes from TMA
    mbarrier_init(&s.kv_empty, C::kConsumerWarps);
    init_tile_ring(s, C::kConsumerWarps);        // item indices: the producer / lane 0 of each consumer warp
    for (int c = 0; c < C::kConsumers; ++c) s.dq_turn[c] = DqTurn{nullptr, 0};
    fence_mbarrier_init();
  }
  __syncthreads();

  // Read through a shuffle so that ptxas knows the role, and so the consumer index and every shared-memory address
  // derived from it, is warp-uniform: the wgmma descriptors are then built in uniform registers (without it, each
  // was built in vector registers and moved over by R2UR, ~100 per tile at D = 128).
  const int warpgroup = __shfl_sync(frag::kFullWarpMask, static_cast<int>(threadIdx.x) / kWarpgroupThreads, 0);
  if (warpgroup == 0) {
    setmaxnreg_dec<C::kProducerRegs>();
    if (threadIdx.x == 0) produce<C>(s, &tmap_q, &tmap_k, &tmap_v, &tmap_do, &tmap_lse, &tmap_delta, args);
  } else {
    setmaxnreg_inc<C::kConsumerRegs>();
    const int consumer = warpgroup - 1;
    if constexpr (C::kParts == 1) {
      consume<C, kType, 0>(s, args, &tmap_dq, consumer);
    } else {
      if (consumer % C::kParts == 0) {
        consume<C, kType, 0>(s, args, &tmap_dq, consumer);
      } else {
        consume<C, kType, 1>(s, args, &tmap_dq, consumer);
      }
    }
  }
}

}  // namespace flashcore::sm90::bwd
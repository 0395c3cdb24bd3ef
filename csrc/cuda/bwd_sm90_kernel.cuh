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
//               thread per consumer); red.global.add.v2.f32 where the staging does not fit (D = 256); in a fixed
//               order with ld.cg / st.cg (deterministic)
//             After the item: dK, dV -> global (row-predicated stores: varlen blocks end mid-block).
// softmax_scale and the softcap derivative are folded into dS, so dK and the dQ workspace need no scaling after.
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
  float score_mul;      // no softcap: softmax_scale * log2(e), signed (a negative scale needs no q negation here)
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
constexpr uint32_t kConsumerThreads = 2 * kWarpgroupThreads;

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

// tanh(x) = 1 - 2 / (exp(2x) + 1), with ex2.approx (relative error ~2^-22) and a fast division: absolute error
// ~1e-7. --use_fast_math turns tanhf into MUFU.TANH, whose ~5e-4 error times a softcap of 30-50 would move the
// recomputed scores by 0.015-0.025, i.e. P by 1.5-2.5%. Saturates correctly: exp2 -> inf gives 1, -> 0 gives -1.
constexpr float kTwoLog2e = 2.0f * kLog2e;
__device__ __forceinline__ float tanh_accurate(float x) {
  return 1.0f - __fdividef(2.0f, exp2f(x * kTwoLog2e) + 1.0f);
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
  wgmma_fence();
  for_each_dkv_wgmma<C, kPart>([&](int kq, auto width, auto reg0, uint32_t b_off) {
    constexpr int kWidth = decltype(width)::value;
    const uint64_t a_p = kmajor_sw128_desc(p_base + key_row0_bytes + kq * kK16Bytes);
    const uint64_t a_ds = kmajor_sw128_desc(ds_base + key_row0_bytes + kq * kK16Bytes);
    const uint64_t b_do = mnmajor_sw128_desc(do_stage + b_off, C::kQColBlockBytes);
    const uint64_t b_q = mnmajor_sw128_desc(q_stage + b_off, C::kQColBlockBytes);
    wgmma_ss_n<kWidth, kMma, 0, 1>(piece_regs<kWidth, C::kCols>(dv, reg0), a_p, b_do, true);
    wgmma_ss_n<kWidth, kMma, 0, 1>(piece_regs<kWidth, C::kCols>(dk, reg0), a_ds, b_q, true);
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
  wgmma_fence();
  for_each_dkv_wgmma<C, kPart>([&](int kq, auto width, auto reg0, uint32_t b_off) {
    constexpr int kWidth = decltype(width)::value;
    const uint32_t(&a_k)[4] = *reinterpret_cast<const uint32_t(*)[4]>(&a[4 * kq]);
    wgmma_rs_n<kWidth, kMma, 1>(piece_regs<kWidth, C::kCols>(acc, reg0), a_k,
                                mnmajor_sw128_desc(b_stage + b_off, C::kQColBlockBytes), true);
  });
  wgmma_commit();
}

// dQ_tile[:, piece] = dS K[:, piece] over all block_n keys (K = block_n): one wgmma group. Each consumer computes
// its own columns of the tile (dq_cols), one piece (<= 64 columns, 32 registers) at a time, so that the
// accumulator never coexists with more than dK + dV (a whole 64 x 128 dQ tile next to them would need 256
// registers), and every dQ value is added to the workspace once per CTA.
template <class C, MmaType kMma, int kStart, int kWidth>
__device__ __forceinline__ void dq_piece_gemm(float (&dq)[kWidth / 2], uint32_t ds_base, uint32_t k_base) {
  constexpr uint32_t kOff = (kStart / kColBlock) * C::kKColBlockBytes + (kStart % kColBlock) * kElemBytes;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < C::kBlockN / kWgmmaK; ++kk) {
    const uint64_t a_ds = mnmajor_sw128_desc(ds_base + kk * kK16Rows, C::kBlockN * kRowBytes);
    const uint64_t b_k = mnmajor_sw128_desc(k_base + kOff + kk * kK16Rows, C::kKColBlockBytes);
    wgmma_ss_n<kWidth, kMma, 1, 1>(dq, a_ds, b_k, kk > 0);
  }
  wgmma_commit();
}

// One dQ piece (64 queries x kWidth columns) into this consumer's staging boxes, at column kCol0 of its dQ
// columns: box kCol0 / 32 on, row = query, one 128-byte row per query with the 128B swizzle of the map that
// reduces them (tmap_dq), one st.shared.v2.f32 per register pair (columns c, c + 1 of one row).
// Bank conflicts: an STS.64 is served per half-warp, 16 lanes = 4 query rows x the 2 16-byte chunks of one 8-column
// group. The swizzle puts chunk k of row r at position k ^ (r % 8), so rows r and r ^ 1 would hit the same two
// positions (2-way). Lanes of odd rows store, at the same step, the pair 16 columns over (register i ^ 8: column
// group ^ 2, same box), whose chunks sit at positions ^ 4: the half-warp covers all 8, conflict free.
// Rows from valid_rows on (queries past seqlen_q: the next sequence's or batch's rows of dq_accum, which the map
// does not clip) are staged as zeros: their dS is 0 times dP, and a non-finite dP there (an inf in this block's V,
// or in the neighbour's dO) must not turn into NaN in another sequence's dQ.
template <int kCol0, int kWidth>
__device__ __forceinline__ void stage_dq(const float (&dq)[kWidth / 2], uint32_t stage, int tid, int32_t valid_rows) {
  static_assert(kCol0 % kDqBoxCols == 0 && kWidth % kDqBoxCols == 0, "pieces are whole staging boxes");
  constexpr uint32_t kFloatBytes = sizeof(float);
  constexpr int kSwapRegs = 8;                        // 16 columns over: 4 registers per 8-column group
  constexpr uint32_t kSwapBytes = 16 * kFloatBytes;   // ... = column ^ 16 = byte ^ 64 = chunk position ^ 4
  static_assert(kWidth / 2 >= 2 * kSwapRegs, "the swapped pair stays in the piece (pieces are >= 32 columns)");
  const bool odd_row = frag::acc_row(tid, 0) % 2 != 0;
  const uint32_t swap = odd_row ? kSwapBytes : 0u;
#pragma unroll
  for (int i = 0; i < kWidth / 2; i += 2) {
    const int col = kCol0 + frag::acc_col(tid, i);
    const uint32_t byte = (col % kDqBoxCols) * kFloatBytes;  // within the query's 128-byte row
    const uint32_t addr = stage + (col / kDqBoxCols) * kDqBoxBytes +
                          swizzle128_offset(frag::acc_row(tid, i), byte / kSwizzleChunk) + byte % kSwizzleChunk;
    const bool valid = frag::acc_row(tid, i) < valid_rows;  // the swapped pair is on the same row
    const float x = odd_row ? dq[i ^ kSwapRegs] : dq[i], y = odd_row ? dq[(i ^ kSwapRegs) + 1] : dq[i + 1];
    st_shared_v2_f32(addr ^ swap, valid ? x : 0.0f, valid ? y : 0.0f);
  }
}

// One dQ piece (64 queries x kWidth columns from kStart) into the fp32 workspace. Rows past seqlen_q are dropped
// (their values are 0 anyway; for varlen they would be the next sequence's rows).
template <int kStart, int kWidth, bool kOrdered>
__device__ __forceinline__ void add_dq(const float (&dq)[kWidth / 2], const BwdArgs& a, int32_t dq_row0, int32_t hq,
                                       int32_t q0, int32_t seqlen_q, int tid) {
#pragma unroll
  for (int i = 0; i < kWidth / 2; i += 2) {
    const int32_t q = q0 + frag::acc_row(tid, i);
    if (q >= seqlen_q) continue;
    float* ptr = a.dq_accum + (int64_t(dq_row0 + q) * a.heads_q + hq) * a.head_dim + kStart + frag::acc_col(tid, i);
    if constexpr (kOrdered) {
      float2 v = __ldcg(reinterpret_cast<const float2*>(ptr));  // L2: another SM wrote it last
      v.x += dq[i], v.y += dq[i + 1];
      __stcg(reinterpret_cast<float2*>(ptr), v);
    } else {
      red_add_f32x2(ptr, dq[i], dq[i + 1]);
    }
  }
}

// Where one query tile's dQ goes, and its deterministic turn.
struct DqTile {
  const BwdArgs& a;
  int32_t dq_row0, hq, q0, seqlen_q;
  int t, lane;
  int32_t* sem;  // deterministic: the tile's semaphore; nullptr: TMA reduce-add (or red.global.add)
  int32_t rank;  // deterministic: adds when *sem == rank
  const CUtensorMap* tmap_dq;  // dq_accum as (head_dim, heads_q, rows) fp32, [64][32] boxes, 128B swizzle
  const float* stage;          // this consumer's staging boxes (C::kDqByTma)
};

// Consumer kDqPart's dQ columns: the head dim split at a multiple of 32 (64 / 96: 32 + 32 / 64 + 32).
template <class C, int kDqPart>
struct DqCols {
  static constexpr int kSplit = C::kDqSplit;
  static constexpr int kC0 = kDqPart == 0 ? 0 : kSplit;
  static constexpr int kCols = kDqPart == 0 ? kSplit : C::kHeadDim - kSplit;
};

// The dQ GEMMs of one tile, piece by piece, each added to the workspace as soon as it completes. The first wait
// also completes the dV / dK group, which frees the stage; dkv_done() runs right after it (the RS form pins its
// A registers up to there). By TMA: the warpgroup stages the piece, fences it for the async proxy and syncs;
// thread 0 issues one reduce-add per box and commits (its wait_group.read before the next tile's kBarDsReady frees
// the boxes, consume). Deterministic: the block's turn comes when the tile's semaphore equals its rank (the
// contributing blocks add in increasing n); the two consumers add disjoint columns at once, then one thread
// releases the next block.
template <class C, MmaType kMma, int kDqPart, class F>
__device__ __forceinline__ void dq_phase(const DqTile& d, uint32_t ds_base, uint32_t k_base, uint64_t* empty,
                                         int consumer, F&& dkv_done) {
  using Cols = DqCols<C, kDqPart>;
  for_each_piece<Cols::kC0, Cols::kCols>([&](auto piece) {
    constexpr int kP = decltype(piece)::value;
    constexpr int kStart = piece_start(Cols::kC0, Cols::kCols, kP);
    constexpr int kWidth = piece_width(Cols::kC0, Cols::kCols, kP);
    float dq[kWidth / 2];
    dq_piece_gemm<C, kMma, kStart, kWidth>(dq, ds_base, k_base);
    fence_operands(dq);
    if constexpr (kP == 0) {
      wgmma_wait<1>();  // dV / dK group done: Q and dO of this stage are no longer read
      dkv_done();
      if (d.lane == 0) mbarrier_arrive(empty);
      if (d.sem != nullptr) {
        if (consumer == 0 && d.t == 0) {
          while (ld_acquire_gpu(d.sem) != d.rank) {
          }
        }
        named_barrier_sync(kBarDetGo, kConsumerThreads);
      }
    }
    wgmma_wait<0>();
    fence_operands(dq);
    if (d.sem != nullptr) {
      add_dq<kStart, kWidth, true>(dq, d.a, d.dq_row0, d.hq, d.q0, d.seqlen_q, d.t);
    } else if constexpr (C::kDqByTma) {
      // Rows past seqlen_q are added too, as zeros (stage_dq), and the map clips rows past the workspace's end;
      // other columns / heads are never touched (boxes inside head_dim).
      constexpr int kCol0 = kStart - Cols::kC0;
      stage_dq<kCol0, kWidth>(dq, smem_u32(d.stage), d.t, d.seqlen_q - d.q0);
      fence_proxy_async_shared();  // each writer: its generic stores before the TMA unit reads them
      named_barrier_sync(kBarDqStaged + kDqPart, kWarpgroupThreads);  // kDqPart = consumer: a constant id
      if (d.t == 0) {
#pragma unroll
        for (int box = kCol0 / kDqBoxCols; box < (kCol0 + kWidth) / kDqBoxCols; ++box) {
          tma_reduce_add_3d(d.tmap_dq, d.stage + box * kWgmmaM * kDqBoxCols, Cols::kC0 + box * kDqBoxCols, d.hq,
                            d.dq_row0 + d.q0);
        }
        bulk_commit_group();
      }
    } else {
      add_dq<kStart, kWidth, false>(dq, d.a, d.dq_row0, d.hq, d.q0, d.seqlen_q, d.t);
    }
  });
  if (d.sem != nullptr) {
    __threadfence();  // each adding thread: its adds before the release below (across the barrier)
    named_barrier_sync(kBarDetDone, kConsumerThreads);
    if (consumer == 0 && d.t == 0) red_release_gpu_add(d.sem, 1);
  }
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

    if (tiles.begin < tiles.end) {
      mbarrier_wait(&s.kv_full, parity >> 1);
      parity ^= 2;
#pragma unroll 1
      for (int32_t hq = hk * group; hq < (hk + 1) * group; ++hq) {
#pragma unroll 1
        for (int32_t m = tiles.begin; m < tiles.end; ++m) {
          mbarrier_wait(&s.full[stage], parity & 1);
          // Rebuild the shared-memory bases each tile: otherwise the compiler hoists every (loop-invariant)
          // 64-bit descriptor of the K, V, P and dS operands out of the loop, ~50 registers the accumulators need.
          const uint32_t base = opaque(smem0);
          const uint32_t k_tile = base + offsetof(S, k), v_tile = base + offsetof(S, v);
          const uint32_t p_tile = base + offsetof(S, p), ds_tile = base + offsetof(S, ds);
          const uint32_t q_stage = base + offsetof(S, q) + stage * kQStageBytes;
          const uint32_t do_stage = base + offsetof(S, dout) + stage * kQStageBytes;
          const int t = static_cast<int>(opaque(static_cast<uint32_t>(tid)));  // likewise the per-thread offsets
          const int ln = t % frag::kWarpSize, wp = t / frag::kWarpSize;

          // S^T = K Q^T and dP^T = V dO^T over the head dim (K-major A and B); P^T from S^T in place, packed to
          // 16-bit pairs (the stmatrix operands). Where the registers allow both fp32 tiles next to dK and dV
          // (C::kOverlapSdP), dP^T runs on the tensor cores while the exponentials are computed; at D = 128
          // (128 + 64 + addresses > 240) it is issued after P^T, overlapping only P's shared-memory store.
          const int32_t q0 = m * C::kBlockM + kQ0;  // query of S^T column 0
          const bool masked = tile_needs_mask(si.g, m, n, C::kBlockM, C::kBlockN);
          const TileMask mask = tile_mask(si.g, q0, key0);
          auto issue_gemm = [&](float (&acc)[kSRegs], uint32_t a_tile, uint32_t b_stage) {
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kKSteps16; ++kk) {
              const uint32_t col = (kk / 4) * C::kKColBlockBytes + (kk % 4) * kK16Bytes;
              const uint32_t qcol = (kk / 4) * C::kQColBlockBytes + (kk % 4) * kK16Bytes + kQ0 * kRowBytes;
              wgmma_ss_n<C::kSQueries, kMma, 0, 0>(acc, kmajor_sw128_desc(a_tile + col + key_row0_bytes),
                                                   kmajor_sw128_desc(b_stage + qcol), kk > 0);
            }
            wgmma_commit();
          };
          uint32_t pk[kSRegs / 2];
          float dpt[kSRegs];
          {
            float st[kSRegs];
            issue_gemm(st, k_tile, q_stage);
            fence_operands(st);
            if constexpr (C::kOverlapSdP) {
              issue_gemm(dpt, v_tile, do_stage);
              fence_operands(dpt);
              wgmma_wait<1>();  // S^T done; dP^T still running
            } else {
              wgmma_wait<0>();
            }
            fence_operands(st);
            // P = exp2(score_log2 - lse * log2(e)): one FFMA. A row with lse = -inf (it saw no key in the forward)
            // gives +inf here, but such a row sees no key of this block either, so its tile is masked and the
            // select below makes it 0; the rows past seqlen_q (other rows' LSE values) likewise.
            const float* lse = s.lse[stage] + kQ0;
#pragma unroll
            for (int i = 0; i < kSRegs; i += 2) {
              float p2[2];
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const int col = frag::acc_col(t, i + h);
                const float score = a.softcap ? tanh_accurate(st[i + h] * a.tanh_in) * a.softcap_log2
                                              : st[i + h] * a.score_mul;
                p2[h] = exp2f(fmaf(lse[col], -kLog2e, score));
                if (masked && !mask.visible(frag::acc_row(t, i + h), col)) p2[h] = 0.0f;
              }
              pk[i / 2] = pack_half2<kType>(p2[0], p2[1]);
            }
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
#pragma unroll
            for (int i = 0; i < kSRegs; i += 2) {
              const float2 p = unpack_half2<kType>(pk[i / 2]);
              float ds2[2];
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const int col = frag::acc_col(t, i + h);
                const float pv = h == 0 ? p.x : p.y;
                float dscore = a.dscale;
                if (a.softcap) {
                  const float th = fmaf(lse[col], kLog2e, __log2f(pv)) * a.inv_softcap_log2;
                  dscore = pv > 0.0f ? a.dscale * (1.0f - th * th) : 0.0f;
                }
                ds2[h] = pv * (dpt[i + h] - delta[col]) * dscore;
              }
              pk[i / 2] = pack_half2<kType>(ds2[0], ds2[1]);
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
          // dS^T is read by both consumers' dQ GEMMs: wait until the previous tile's have completed (each consumer
          // reaches this barrier only after its last wgmma_wait of that tile).
          named_barrier_sync(kBarDsFree, kConsumerThreads);
#pragma unroll
          for (int j = 0; j < C::kSQueries / 16; ++j) {
            const uint32_t off = frag::stmatrix_sw128_offset(ln, kg * kWgmmaM + wp * frag::kRowsPerWarp,
                                                             (kQ0 + 16 * j) / 8);
            stmatrix_x4(ds_tile + off, pk[4 * j], pk[4 * j + 1], pk[4 * j + 2], pk[4 * j + 3]);
          }
          fence_proxy_async_shared();  // this thread's P^T and dS^T stores before the readers' wgmmas
          if constexpr (C::kDqByTma) {
            // The previous tile's dQ boxes have been read (issued a tile ago: no wait in practice); the barrier
            // tells the warpgroup, which rewrites them in dq_phase.
            if (t == 0) bulk_wait_group_read<0>();
          }
          named_barrier_sync(kBarDsReady, kConsumerThreads);

          if constexpr (!C::kRsDkv) {
            dkv_gemms<C, kMma, kPart>(dk, dv, p_tile, ds_tile, q_stage, do_stage, key_row0_bytes);
            fence_operands(dk);
            fence_operands(dv);
          }
          // The RS form's dS^T registers stay the tensor core's until the dK group completes (in dq_phase).
          auto dkv_done = [&] {
            if constexpr (C::kRsDkv) fence_operands(pk);
          };

          // dQ: consumer c computes and adds columns dq_cols(c) of the tile over all block_n keys.
          int32_t* sem = a.deterministic ? a.semaphores + semaphore_index(b, hq, m, a.heads_q, a.m_tiles) : nullptr;
          const float* dq_stage = reinterpret_cast<const float*>(reinterpret_cast<const uint8_t*>(&s) + offsetof(S, dq)) +
                                  consumer * C::kDqBoxes * kWgmmaM * kDqBoxCols;
          const DqTile tile{a, si.dq_row0, hq, m * C::kBlockM, si.g.seqlen_q, t, ln, sem,
                            sem != nullptr ? det_rank(si.g, m, n, C::kBlockM, C::kBlockN) : 0, tmap_dq, dq_stage};
          if (consumer == 0) {
            dq_phase<C, kMma, 0>(tile, ds_tile, k_tile, &s.empty[stage], consumer, dkv_done);
          } else {
            dq_phase<C, kMma, 1>(tile, ds_tile, k_tile, &s.empty[stage], consumer, dkv_done);
          }
          fence_operands(dk);
          fence_operands(dv);
          if (++stage == C::kStages) stage = 0, parity ^= 1;
        }
      }
      if (lane == 0) mbarrier_arrive(&s.kv_empty);  // the last dQ GEMM (reading K) has completed
    }

    uint16_t* dk_head = static_cast<uint16_t*>(a.dk) + int64_t(b) * a.dk_stride_b + int64_t(si.start_k) * a.dk_stride_s +
                        int64_t(hk) * a.dk_stride_h;
    uint16_t* dv_head = static_cast<uint16_t*>(a.dv) + int64_t(b) * a.dv_stride_b + int64_t(si.start_k) * a.dv_stride_s +
                        int64_t(hk) * a.dv_stride_h;
    store_rows<C, kType, kPart>(dk, dk_head, a.dk_stride_s, key0, si.g.seqlen_k, tid);
    store_rows<C, kType, kPart>(dv, dv_head, a.dv_stride_s, key0, si.g.seqlen_k, tid);
  }
  if constexpr (C::kDqByTma) {
    if (tid == 0) bulk_wait_group<0>();  // the last dQ reduce-adds done before the CTA's shared memory is released
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
    fence_mbarrier_init();
  }
  __syncthreads();

  const int warpgroup = threadIdx.x / kWarpgroupThreads;
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

// A consumer warpgroup of the sm_90a forward: 64 query rows of the CTA's block_m (128 or 192), the whole key walk
// in registers.
//
// Per key tile j (walked last-first, schedule.h), with S_j = Q K_j^T and P_j = softmax-step(S_j):
//   prologue      issue S_first                      | wait | softmax -> P_first
//   loop          issue S_j, then O += P_{j+1} V_{j+1} | wait S_j | softmax -> fp32 P_j (overlaps the P V GEMM)
//                                                     | wait P V | pack P_j to 16 bits, O *= rescale
//   tail          issue O += P_last V_last            | wait
// (within a warpgroup the next S GEMM is issued before this tile's softmax: the tensor cores work on S_j and P V
// while the warpgroup's ALUs and MUFU run the exponentials).
//
// Ping-pong between the consumers (2, or 3 at D = 64): each issues its GEMMs only between sched_wait (its turn) and
// sched_pass (the next consumer's turn, cyclically 0 -> 1 -> ... -> last -> 0), so while one warpgroup's GEMMs own
// the tensor cores the others run their softmax. The last consumer opens by passing the first turn to consumer 0;
// consumer 0 absorbs the last consumer's final pass at the very end. Every consumer walks the same tiles (under the
// dynamic schedule all read every index from the same hand-off slot, which is not reused before every consumer warp
// has read it) and the same key spans (the CTA's, not their own), so their turn counts always match.
// Why no barrier is left with a pending arrival: with T turns each, barrier i > 0 gets T passes (from consumer i - 1)
// against T waits of consumer i; barrier 0 gets the opening pass + T passes from the last consumer against T waits +
// the final absorb. And no pass piles onto a phase still pending: each wait needs the previous consumer's pass, so
// the turns form one chain (turn k of consumers 0, 1, ..., last, then turn k + 1 of consumer 0, ...), and the pass
// that opens consumer i's turn k + 1 is sent after a turn that comes later in the chain than consumer i's turn k.
// -DFLASHCORE_FWD_SM90_ITEM_PIPELINE (traits.cuh kItemPipeline) merges each item's tail turn with the next item's
// prologue turn (the second branch of consume); the argument above is unchanged, the turns per item one fewer.
#pragma once

#include "epilogue.cuh"
#include "softmax.cuh"
#include "work.cuh"

namespace flashcore::sm90::fwd {

template <int D>
__device__ __forceinline__ void sched_wait(int consumer) {
  using T = FwdTraits<D>;
  ptx::named_barrier_sync(T::kSchedBarrier + consumer, T::kPingPongThreads);
}
template <int D>
__device__ __forceinline__ void sched_pass(int consumer) {
  using T = FwdTraits<D>;
  const int next = consumer + 1 == T::kConsumers ? 0 : consumer + 1;
  ptx::named_barrier_arrive(T::kSchedBarrier + next, T::kPingPongThreads);
}

// Lane 0 of each consumer warp arrives (the barrier counts kConsumerWarps): every warp's wgmmas reading the stage
// have completed when its lane 0 gets here.
__device__ __forceinline__ void release(uint64_t* bar, int lane) {
  if (lane == 0) ptx::mbarrier_arrive(bar);
}

// S = Q K^T: Q rows of this consumer (K-major, 128B swizzle, 64-column panels), K tile (keys x head_dim, K-major).
// D / 16 wgmmas m64 n(block_n) k16; the 16-column slice k of a panel starts 32 bytes after slice k - 1.
template <int D, ptx::MmaType kType>
__device__ __forceinline__ void issue_qk(float (&s)[FwdTraits<D>::kSRegs], uint32_t q_rows, uint32_t k_tile) {
  using T = FwdTraits<D>;
  constexpr uint32_t kSliceBytes = 16 * T::kElemBytes;
  constexpr int kSlicesPerPanel = T::kPanelCols / 16;
  // Base descriptors once, then compile-time advances (one uniform add per operand and step, not a rebuild).
  const uint64_t desc_q0 = ptx::kmajor_sw128_desc(q_rows), desc_k0 = ptx::kmajor_sw128_desc(k_tile);
#pragma unroll
  for (int ks = 0; ks < T::kQkSteps; ++ks) {
    const int panel = ks / kSlicesPerPanel, slice = ks % kSlicesPerPanel;
    const uint64_t desc_q = ptx::desc_advance(desc_q0, panel * T::kQPanelBytes + slice * kSliceBytes);
    const uint64_t desc_k = ptx::desc_advance(desc_k0, panel * T::kKvPanelBytes + slice * kSliceBytes);
    ptx::wgmma_ss<T::kBlockN, kType>(s, desc_q, desc_k, ks > 0);  // the first slice overwrites S
  }
  ptx::wgmma_commit();
}

// O += P V: P from registers (4 per 16 keys, softmax.cuh), V tile (keys x head_dim, head_dim contiguous) read as an
// MN-major B operand (imm-trans-b = 1): rows along K (keys), 64-wide N panels kKvPanelBytes apart. No transpose of
// V is needed in memory or in shared memory; 16 keys = 16 rows = 2048 bytes, two whole swizzle atoms.
template <int D, ptx::MmaType kType>
__device__ __forceinline__ void issue_pv(float (&o)[FwdTraits<D>::kORegs], const uint32_t (&p)[FwdTraits<D>::kPRegs],
                                         uint32_t v_tile) {
  using T = FwdTraits<D>;
  constexpr uint32_t kSliceBytes = 16 * ptx::kSwizzle128Row;
  const uint64_t desc_v0 = ptx::mnmajor_sw128_desc(v_tile, T::kKvPanelBytes);  // advanced per step, as above
#pragma unroll
  for (int j = 0; j < T::kPvSteps; ++j) {
    // P's own registers, not a copy: the tensor core reads them until the wait (the CPU model checks that array).
    const auto& a = *reinterpret_cast<const uint32_t(*)[frag::kARegs]>(&p[frag::kARegs * j]);
    ptx::wgmma_rs<D, kType, /*kTransB=*/1>(o, a, ptx::desc_advance(desc_v0, j * kSliceBytes), true);
  }
  ptx::wgmma_commit();
}

// Varlen: the key tile holding a sequence's end is loaded whole from the packed K / V tensors, so its rows past the
// end are the next sequence's keys. Their scores are masked (P = 0), but P V still multiplies those V rows, and
// 0 x inf = NaN: one non-finite value in the next sequence would reach every row of this one. The walk's first
// tile is the one the sequence end cuts; consumer 0, whose turn comes first on every stage, waits for its V and
// zeroes those rows before the work tile's first GEMM. Each writer's fence, then the ping-pong barrier that opens
// every turn (its own and, through its pass, every later one), order the zeros before all reads of the stage.
// Here and not before the first P V, where D = 256 spilled; V was loaded right behind K. (Pipelined across items,
// D <= 128, it is before the first P V: the item's first S shares a turn with the previous item's last P V.) The
// first row comes from resolve_tile (w.v_clear_row): computing it here also tipped D = 256's allocation (237 of 240)
// into a spill. Dense sequences need none: their maps zero-fill past the end.
template <int D>
__device__ __forceinline__ void zero_v_rows_past_end(SharedStorage<D>& s, const WorkTile& w, int stage, uint32_t phase,
                                                     uint32_t v_tile, int consumer, int tid) {
  using T = FwdTraits<D>;
  if (consumer != 0 || w.v_clear_row >= T::kBlockN) return;
  ptx::mbarrier_wait(&s.v_full[stage], phase);
  ptx::zero_swizzled_rows(v_tile, T::kKvPanelBytes, T::kPanels, w.v_clear_row, T::kBlockN, tid,
                          frag::kWarpgroupThreads);
  ptx::fence_proxy_async_shared();  // each writer, before the barrier that opens the turns (sched_wait)
}

template <int D, bool kBf16>
__device__ void consume(SharedStorage<D>& s, const CUtensorMap* tmap_o, const KernelArgs& a, int consumer) {
  using T = FwdTraits<D>;
  using namespace ptx;
  constexpr MmaType kType = kBf16 ? MmaType::kBf16 : MmaType::kF16;
  const int tid = threadIdx.x % frag::kWarpgroupThreads;
  const int lane = tid % frag::kWarpSize;
  const FwdParams& p = a.p;
  const ScoreOps ops{p.q_sign != 0u, p.tanh_out > 0.0f, p.tanh_in, p.tanh_out};
  const float score_mul = p.score_mul;
  // This consumer's rows of Q buffer 0, 8 KB in: whole atoms (buffer 1, kItemPipeline: kQBytes further).
  const uint32_t q_rows = smem_u32(s.q[0]) + consumer * frag::kWgmmaM * kSwizzle128Row;
  const uint32_t k_base = smem_u32(s.k[0]), v_base = smem_u32(s.v[0]);
  if (tid == 0 && consumer == 0) prefetch_tensor_map(tmap_o);

  if (consumer == T::kConsumers - 1) sched_pass<D>(consumer);  // consumer 0 issues first
  int stage = 0, v_stage = 0;  // K/V ring: the stage of the next S, and of the P V after it
  uint32_t phase = 0, v_phase = 0;
  uint32_t q_phase = 0;  // parity of the Q buffer's use count (kItemPipeline: of the current buffer's)
  int q_buf = 0;         // kItemPipeline: the current item's Q buffer (items alternate); else always 0
  // Dynamic schedule: every tile index, and the end, comes from the producer (tile_handoff.cuh take_tile); static: the
  // same round-robin the producer computes.
  const bool dynamic = a.tile_counter != nullptr;
  const int num_tiles = a.order.num_tiles();
  HandoffCursor handoff;
  auto next_tile = [&](int t) {
    return dynamic ? take_tile(s, handoff, lane) : static_next_tile(t, static_cast<int>(gridDim.x), num_tiles);
  };

  // The item's row state (O, running max m, row sum l) and the tiles in flight: S (then fp32 P) of the tile in its
  // softmax, P (16-bit) of the tile in its P V GEMM.
  float o[T::kORegs];
  float m[kRowsPerThread], l[kRowsPerThread], rescale[kRowsPerThread];
  float sc[T::kSRegs];
  uint32_t pc[T::kPRegs];
  auto start_rows = [&]() {
#pragma unroll
    for (int i = 0; i < T::kORegs; ++i) o[i] = 0.0f;
#pragma unroll
    for (int h = 0; h < kRowsPerThread; ++h) m[h] = kNegInf, l[h] = 0.0f;
  };
  auto issue_s = [&]() { issue_qk<D, kType>(sc, q_rows + q_buf * T::kQBytes, k_base + stage * T::kKvTileBytes); };
  auto advance_stage = [&]() {  // the S just done is the next P V's tile
    v_stage = stage;
    v_phase = phase;
    if (++stage == T::kStages) stage = 0, phase ^= 1;
  };
  // Key tile kt's S GEMM is complete: K is free (and Q after the item's last S), one online-softmax step.
  auto softmax_of = [&](const WorkTile& w, const RowKeys& keys, int wg_row0, int kt) {
    fence_operands(sc);
    release(&s.k_empty[stage], lane);
    if (T::kSeparateOut && kt == w.span.first) release(&s.q_empty[q_buf], lane);  // the last S: Q is dead
    const bool masked = !tile_unmasked(w.band, wg_row0, frag::kWgmmaM, kt * T::kBlockN, T::kBlockN);
    transform_scores(sc, ops, masked, keys, kt * T::kBlockN, tid);
    softmax_step(sc, score_mul, m, l, rescale);  // in the loop, the exponentials run while P V does
  };
  // The item's first S is complete: its softmax (O is still 0: nothing to rescale).
  auto first_softmax = [&](const WorkTile& w, const RowKeys& keys, int wg_row0) {
    softmax_of(w, keys, wg_row0, w.span.end - 1);
    pack_p<kBf16>(sc, pc);
    advance_stage();
  };
  // Steady state: S of tile kt while P V of tile kt + 1.
  auto walk = [&](const WorkTile& w, const RowKeys& keys, int wg_row0) {
#pragma unroll 1
    for (int kt = w.span.end - 2; kt >= w.span.first; --kt) {
      mbarrier_wait(&s.k_full[stage], phase);
      mbarrier_wait(&s.v_full[v_stage], v_phase);  // before the fence: no wait loop inside a wgmma batch
      sched_wait<D>(consumer);
      fence_operands(o);
      fence_operands(pc);
      wgmma_fence();
      issue_s();
      issue_pv<D, kType>(o, pc, v_base + v_stage * T::kKvTileBytes);
      sched_pass<D>(consumer);
      wgmma_wait<1>();  // S done; P V may still run
      softmax_of(w, keys, wg_row0, kt);
      wgmma_wait<0>();
      fence_operands(o);
      fence_operands(pc);
      release(&s.v_empty[v_stage], lane);
      pack_p<kBf16>(sc, pc);  // only now: pc was the operand of the P V GEMM that just completed
      rescale_rows(o, rescale);
      advance_stage();
    }
  };
  // The turn of an item's first S alone (its Q and K tile have landed), until it completes.
  auto first_s_turn = [&]() {
    mbarrier_wait(&s.q_full[q_buf], q_phase);
    mbarrier_wait(&s.k_full[stage], phase);
    sched_wait<D>(consumer);
    wgmma_fence();
    issue_s();
    sched_pass<D>(consumer);
    wgmma_wait<0>();
  };
  // The item's last P V has completed.
  auto pv_done = [&]() {
    fence_operands(o);
    fence_operands(pc);
    release(&s.v_empty[v_stage], lane);
  };
  // The turn of the item's last P V alone (its V tile has landed), until it completes.
  auto last_pv_turn = [&]() {
    sched_wait<D>(consumer);
    fence_operands(o);
    fence_operands(pc);
    wgmma_fence();
    issue_pv<D, kType>(o, pc, v_base + v_stage * T::kKvTileBytes);
    sched_pass<D>(consumer);
    wgmma_wait<0>();
    pv_done();
  };

  if constexpr (!T::kItemPipeline) {
    for (int t = dynamic ? take_tile(s, handoff, lane) : static_cast<int>(blockIdx.x); t != kNoTile;
         t = next_tile(t)) {
      const WorkTile w = resolve_tile<D>(a, t);
      if (!w.valid) continue;
      const int wg_row0 = w.row0 + consumer * frag::kWgmmaM;
      if (w.span.first == w.span.end) {
        store_empty_rows<D, kBf16>(p, w, wg_row0, tid);
        continue;
      }
      zero_v_rows_past_end<D>(s, w, stage, phase, v_base + stage * T::kKvTileBytes, consumer, tid);
      const RowKeys keys = row_keys(w.band, wg_row0, tid);
      start_rows();

      first_s_turn();  // ---- prologue: S of the first tile
      first_softmax(w, keys, wg_row0);

      walk(w, keys, wg_row0);

      // ---- tail: P V of the last tile
      mbarrier_wait(&s.v_full[v_stage], v_phase);
      last_pv_turn();

      epilogue<D, kBf16>(o, m, l, s, tmap_o, p, w, consumer, tid);
      q_phase ^= 1;
    }
  } else {
    // Pipelined across items: the turn that issues an item's last P V issues the next item's first S too, and the
    // epilogue runs under that S, so an item boundary costs the tensor cores no idle turn (a consumer's epilogue and
    // set-up would otherwise delay the other consumer's next turn as well: the turns form one chain). The turn counts
    // still match: every consumer walks the same items, one turn per key tile, plus the first item's S turn.
    int t = dynamic ? take_tile(s, handoff, lane) : static_cast<int>(blockIdx.x);
    // From t on, the first tile with keys to walk (its index stays in t); rows that see no key get out 0 and
    // lse -inf on the way. The next item is sought before the tail turn: only its index is kept across the turn
    // and the epilogue (the tile is resolved again after them, not held in registers).
    auto seek = [&]() {
      for (; t != kNoTile; t = next_tile(t)) {
        const WorkTile x = resolve_tile<D>(a, t);
        if (!x.valid) continue;
        if (x.span.first != x.span.end) return true;
        store_empty_rows<D, kBf16>(p, x, x.row0 + consumer * frag::kWgmmaM, tid);
      }
      return false;
    };
    if (seek()) {
      first_s_turn();  // ---- the first item's prologue
      for (;;) {
        const WorkTile w = resolve_tile<D>(a, t);
        const int wg_row0 = w.row0 + consumer * frag::kWgmmaM;
        const RowKeys keys = row_keys(w.band, wg_row0, tid);
        start_rows();
        first_softmax(w, keys, wg_row0);
        // Its first V tile is first read in the next turn: the zeros still precede every read (zero_v_rows_past_end).
        zero_v_rows_past_end<D>(s, w, v_stage, v_phase, v_base + v_stage * T::kKvTileBytes, consumer, tid);
        walk(w, keys, wg_row0);

        // ---- tail: P V of the last tile, and S of the next item's first tile
        t = next_tile(t);
        const bool more = seek();
        mbarrier_wait(&s.v_full[v_stage], v_phase);
        if (!more) {  // the last item: its P V alone (a branch of its own: S must not be merged with stale values)
          last_pv_turn();
          epilogue<D, kBf16>(o, m, l, s, tmap_o, p, w, consumer, tid);
          break;
        }
        q_buf ^= 1;
        if (q_buf == 0) q_phase ^= 1;
        mbarrier_wait(&s.q_full[q_buf], q_phase);
        mbarrier_wait(&s.k_full[stage], phase);
        sched_wait<D>(consumer);
        fence_operands(o);
        fence_operands(pc);
        wgmma_fence();
        issue_pv<D, kType>(o, pc, v_base + v_stage * T::kKvTileBytes);
        issue_s();
        sched_pass<D>(consumer);
        wgmma_wait<1>();  // P V done (groups complete in order); the next S may still run
        pv_done();
        epilogue<D, kBf16>(o, m, l, s, tmap_o, p, w, consumer, tid);  // under the next item's S
        wgmma_wait<0>();
      }
    }
  }
  if (consumer == 0) sched_wait<D>(consumer);  // absorb the last consumer's final pass: barriers end balanced
  if (tid == 0) bulk_wait_group<0>();       // shared memory must outlive the output stores reading it
}

}  // namespace flashcore::sm90::fwd

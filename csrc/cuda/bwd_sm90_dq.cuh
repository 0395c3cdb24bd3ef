// The sm_90a backward's dQ phase: per query tile, each consumer computes its columns of dQ = dS K over the
// block's keys, piece by piece, and adds them to the fp32 workspace: by TMA reduce-add from 128B-swizzled
// shared-memory boxes (C::kDqByTma), by red.global.add (D = 256), or in a fixed order behind a semaphore
// (deterministic). Used by consume() in bwd_sm90_kernel.cuh.
#pragma once

#include <cstdint>

#include "bwd_sm90_common.cuh"
#include "ptx/watchdog.cuh"

namespace flashcore::sm90::bwd {

using namespace ptx;

// dQ_tile[:, piece] = dS K[:, piece] over all block_n keys (K = block_n): one wgmma group. Each consumer computes
// its own columns of the tile (dq_cols), one piece (<= 64 columns, 32 registers) at a time, so that the
// accumulator never coexists with more than dK + dV (a whole 64 x 128 dQ tile next to them would need 256
// registers), and every dQ value is added to the workspace once per CTA.
template <class C, MmaType kMma, int kStart, int kWidth>
__device__ __forceinline__ void dq_piece_gemm(float (&dq)[kWidth / 2], uint32_t ds_base, uint32_t k_base) {
  constexpr uint32_t kOff = (kStart / kColBlock) * C::kKColBlockBytes + (kStart % kColBlock) * kElemBytes;
  const uint64_t a0 = mnmajor_sw128_desc(ds_base, C::kBlockN * kRowBytes);  // base descriptors, advanced per step
  const uint64_t b0 = mnmajor_sw128_desc(k_base + kOff, C::kKColBlockBytes);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < C::kBlockN / kWgmmaK; ++kk) {
    wgmma_ss_n<kWidth, kMma, 1, 1>(dq, desc_advance(a0, kk * kK16Rows), desc_advance(b0, kk * kK16Rows), kk > 0);
  }
  wgmma_commit();
}

namespace dq_staging {
constexpr uint32_t kFloatBytes = sizeof(float);
constexpr int kSwapRegs = 8;                   // 16 columns over: 4 registers per 8-column group
constexpr uint32_t kSwapPositions = 4;         // ... = byte ^ 64 = chunk position ^ 4
constexpr int kGroupCols = 8;                  // columns of one accumulator register group (4 registers)
constexpr int kGroupsPerBox = kDqBoxCols / kGroupCols;
constexpr uint32_t kSecondRowBytes = frag::kRowHalf * kRowBytes;  // row + 8: the same swizzle phase

// Byte offset (from the staging area) of 8-column group g (within a box) of thread `tid`'s first row, for the pair
// the thread stores at that group's steps: its own, or for an odd row the pair 16 columns over (the swap).
__host__ __device__ constexpr uint32_t group_offset(int tid, int g) {
  const uint32_t row = frag::acc_row(tid, 0);
  const uint32_t phase = (row % kSwizzle128Rows) ^ (row % 2 != 0 ? kSwapPositions : 0u);
  const uint32_t lane_chunk = (tid % frag::kQuad) / 2;  // columns 2 (lane % 4): chunk (lane % 4) / 2 of the group
  return row * kRowBytes + (tid % 2) * 2 * kFloatBytes + ((2 * g + lane_chunk) ^ phase) * kSwizzleChunk;
}

// Step i's offset from group_offset(tid, its group % 4): the box and the second row, the same for every thread.
__host__ __device__ constexpr uint32_t step_offset(int col0, int i) {
  const int group = col0 / kGroupCols + i / frag::kRegsPerColBlock;
  return (group / kGroupsPerBox) * kDqBoxBytes + ((i / 2) % 2) * kSecondRowBytes;
}

// The register pair thread `tid` stores at step i.
__host__ __device__ constexpr int stored_pair(int tid, int i) {
  return frag::acc_row(tid, 0) % 2 != 0 ? i ^ kSwapRegs : i;
}

// Compile-time proof over every thread and step of a 64-column piece: each stored pair lands where the 128B-swizzled
// box layout wants it (swizzle128_offset of its row and chunk), and each half-warp's STS.64 covers 32 distinct
// banks twice over (16 lanes x 8 bytes = 128 bytes: one wavefront).
constexpr bool layout_is_right_and_conflict_free() {
  constexpr int kCols = 64;
  for (int i = 0; i < kCols / 2; i += 2) {
    for (int half = 0; half < frag::kWarpgroupThreads / 16; ++half) {
      bool bank_used[frag::kBanks] = {};
      for (int tid = 16 * half; tid < 16 * half + 16; ++tid) {
        const int pair = stored_pair(tid, i);
        const int col = frag::acc_col(tid, pair), row = frag::acc_row(tid, pair);
        const uint32_t byte = (col % kDqBoxCols) * kFloatBytes;
        const uint32_t want = (col / kDqBoxCols) * kDqBoxBytes + swizzle128_offset(row, byte / kSwizzleChunk) +
                              byte % kSwizzleChunk;
        const uint32_t got = group_offset(tid, (i / frag::kRegsPerColBlock) % kGroupsPerBox) + step_offset(0, i);
        if (got != want) return false;
        for (uint32_t b = 0; b < 2 * kFloatBytes / frag::kBankBytes; ++b) {  // an 8-byte store: 2 banks
          const uint32_t bank = (got / frag::kBankBytes + b) % frag::kBanks;
          if (bank_used[bank]) return false;
          bank_used[bank] = true;
        }
      }
    }
  }
  return true;
}
static_assert(layout_is_right_and_conflict_free(), "dQ staging: a pair off its swizzled place, or a bank conflict");
}  // namespace dq_staging

// One dQ piece (64 queries x kWidth columns) into this consumer's staging boxes, at column kCol0 of its dQ
// columns: box kCol0 / 32 on, row = query, one 128-byte row per query with the 128B swizzle of the map that
// reduces them (tmap_dq), one st.shared.v2.f32 per register pair (columns c, c + 1 of one row).
// Bank conflicts: an STS.64 is served per half-warp, 16 lanes = 4 query rows x the 2 16-byte chunks of one 8-column
// group. The swizzle puts chunk k of row r at position k ^ (r % 8), so rows r and r ^ 1 would hit the same two
// positions (2-way). Lanes of odd rows store, at the same step, the pair 16 columns over (register i ^ 8: column
// group ^ 2, same box), whose chunks sit at positions ^ 4: the half-warp covers all 8, conflict free.
// Addresses: a thread's two rows (r, r + 8) share r % 8, so of the swizzled position only the 8-column group within
// the box varies with the register: four addresses per thread (dq_staging::group_offset, the swap folded in), and
// every store is one of them plus a constant (step_offset: box, second row), i.e. STS [reg + imm]. Proven against
// swizzle128_offset, and conflict free, at compile time (layout_is_right_and_conflict_free).
// Rows from valid_rows on (queries past seqlen_q: the next sequence's or batch's rows of dq_accum, which the map
// does not clip) are staged as zeros: their dS is 0 times dP, and a non-finite dP there (an inf in this block's V,
// or in the neighbour's dO) must not turn into NaN in another sequence's dQ. Only a sequence's last tile has such
// rows: one branch, not a select per value.
template <int kCol0, int kWidth>
__device__ __forceinline__ void stage_dq(float (&dq)[kWidth / 2], uint32_t stage, int tid, int32_t valid_rows) {
  using namespace dq_staging;
  static_assert(kCol0 % kDqBoxCols == 0 && kWidth % kDqBoxCols == 0, "pieces are whole staging boxes");
  static_assert(kWidth / 2 >= 2 * kSwapRegs, "the swapped pair stays in the piece (pieces are >= 32 columns)");
  if (valid_rows < kWgmmaM) {
#pragma unroll
    for (int i = 0; i < kWidth / 2; ++i) {
      if (frag::acc_row(tid, i) >= valid_rows) dq[i] = 0.0f;
    }
  }
  uint32_t group_addr[kGroupsPerBox];
#pragma unroll
  for (int g = 0; g < kGroupsPerBox; ++g) group_addr[g] = stage + group_offset(tid, g);
  const bool odd_row = frag::acc_row(tid, 0) % 2 != 0;
#pragma unroll
  for (int i = 0; i < kWidth / 2; i += 2) {
    const uint32_t addr = group_addr[(kCol0 / kGroupCols + i / frag::kRegsPerColBlock) % kGroupsPerBox] +
                          step_offset(kCol0, i);
    const float x = odd_row ? dq[i ^ kSwapRegs] : dq[i], y = odd_row ? dq[(i ^ kSwapRegs) + 1] : dq[i + 1];
    st_shared_v2_f32(addr, x, y);
  }
}

// One dQ piece (64 queries x kWidth columns from kStart) into the fp32 workspace. Rows past seqlen_q are dropped
// (their values are 0 anyway; for varlen they would be the next sequence's rows).
// The thread's two row addresses are computed once, then every pair is one of them plus a constant column offset
// (acc_col(t, i) = acc_col(t, 0) + acc_col(0, i)): computed per pair, the 64-bit index arithmetic cost ~20
// instructions per REDG (D = 256: ~650 per tile and thread, 2.5x the tile's tensor time in issue slots).
template <int kStart, int kWidth, bool kOrdered>
__device__ __forceinline__ void add_dq(const float (&dq)[kWidth / 2], const BwdArgs& a, int32_t dq_row0, int32_t hq,
                                       int32_t q0, int32_t seqlen_q, int tid) {
  constexpr int kRowsPerThread = 2;  // accumulator rows l/4 and l/4 + 8 of the warp's 16 (layout.cuh)
  float* row_ptr[kRowsPerThread];
  bool row_ok[kRowsPerThread];
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) {
    const int32_t q = q0 + frag::acc_row(tid, 2 * h);  // register 2h: row half h
    row_ok[h] = q < seqlen_q;
    row_ptr[h] = a.dq_accum + (int64_t(dq_row0 + (row_ok[h] ? q : 0)) * a.heads_q + hq) * a.head_dim + kStart +
                 frag::acc_col(tid, 0);
  }
#pragma unroll
  for (int i = 0; i < kWidth / 2; i += 2) {
    const int h = frag::acc_row_half(i);
    if (!row_ok[h]) continue;
    float* ptr = row_ptr[h] + frag::acc_col(0, i);
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
  int32_t* sem;   // deterministic: the tile's semaphore; nullptr: TMA reduce-add (or red.global.add)
  int32_t turn;   // deterministic: adds once *sem >= turn = rank x C::kDqReleasesPerBlock
  DqTurn* turn_state;  // deterministic by TMA: thread 0's early look and the turn it owes (shared memory)
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

// Deterministic by TMA, thread 0 of a consumer. The tile's semaphore counts both consumers of every earlier
// contributing block (turn = rank x 2), so the blocks add in increasing n. dq_turn_came: one acquire, early in the
// tile (the turn only moves forward, so a yes stays true). wait_dq_turn, before the first reduce-add: spins unless
// the look said yes, then orders what the acquire made visible (the earlier blocks' adds) before its own
// async-proxy adds. Every wait comes after pass_dq_turn has released this consumer's previous tile, so a turn
// owed is never held by a thread that waits: blocks wait only on smaller n (bwd_sm90_plan.h), no deadlock.
__device__ __forceinline__ bool dq_turn_came(const int32_t* sem, int32_t turn) {
  return ld_acquire_gpu(sem) >= turn;
}

// Spins until the tile's semaphore reaches `turn` (acquire). With -DFLASHCORE_SM90_WATCHDOG a wait past
// kWatchdogNs reports the semaphore and traps (ptx/watchdog.cuh).
__device__ __forceinline__ void spin_until_turn(const int32_t* sem, int32_t turn) {
#if defined(FLASHCORE_SM90_WATCHDOG) && !defined(FLASHCORE_SM90_EMU)
  Watchdog watchdog;
  for (int32_t seen; (seen = ld_acquire_gpu(sem)) < turn;) {
    if (watchdog.expired()) watchdog_trap_flag(sem, seen, turn);
  }
#else
  while (ld_acquire_gpu(sem) < turn) {
  }
#endif
}

__device__ __forceinline__ void wait_dq_turn(const int32_t* sem, int32_t turn, bool seen) {
  if (!seen) spin_until_turn(sem, turn);
  fence_proxy_async_global();
}

// By TMA, thread 0 of a consumer: waits for its earlier reduce-adds, then (deterministic) passes on the turn of the
// tile they added to. Called before the next tile's kBarDsReady (the boxes are rewritten after it: reading them is
// enough) and, kExit, before the consumer exits (the adds must complete while the CTA's shared memory exists).
// A turn owed needs the adds complete: their completion is followed by an implicit generic-async proxy fence (PTX
// ISA, "async proxy"), and the release orders them before the next block's acquire.
template <bool kExit = false>
__device__ __forceinline__ void pass_dq_turn(DqTurn& turn) {
  int32_t* sem = turn.owed;
  if (kExit || sem != nullptr) {
    bulk_wait_group<0>();
  } else {
    bulk_wait_group_read<0>();
  }
  if (sem != nullptr) {
    red_release_gpu_add(sem, 1);
    turn.owed = nullptr;
  }
}

// The dQ GEMMs of one tile, piece by piece, each added to the workspace as soon as it completes. The first wait
// also completes the dV / dK group, which frees the stage; dkv_done() runs right after it (the RS form pins its
// A registers up to there).
// By TMA (C::kDqByTma): the warpgroup stages the piece, fences it for the async proxy and syncs; thread 0 issues
// one reduce-add per box and commits (before the next tile's kBarDsReady it waits for them, pass_dq_turn, which
// frees the boxes). Deterministic, too: thread 0 waits for the tile's turn before its first reduce-add (usually
// seen already by a look earlier in the tile, dq_turn_came) and passes it on a tile later, when its adds are known
// complete (pass_dq_turn): no barrier between the consumers.
// Otherwise deterministic (D = 256): the two consumers wait for the turn together, add their disjoint columns with
// plain L2 loads / stores, fence, and one thread passes the turn on.
// ds_read() runs once the last dQ GEMM has completed (dS^T is no longer read). kDqLag's flush after an item's last
// tile (kReleasesStage = false) has no dV / dK group in flight and no stage to release.
template <class C, MmaType kMma, int kDqPart, bool kReleasesStage = true, class F, class G>
__device__ __forceinline__ void dq_phase(const DqTile& d, uint32_t ds_base, uint32_t k_base, uint64_t* empty,
                                         int consumer, F&& dkv_done, G&& ds_read) {
  using Cols = DqCols<C, kDqPart>;
  constexpr int kPieces = piece_count(Cols::kC0, Cols::kCols);
  for_each_piece<Cols::kC0, Cols::kCols>([&](auto piece) {
    constexpr int kP = decltype(piece)::value;
    constexpr int kStart = piece_start(Cols::kC0, Cols::kCols, kP);
    constexpr int kWidth = piece_width(Cols::kC0, Cols::kCols, kP);
    float dq[kWidth / 2];
    dq_piece_gemm<C, kMma, kStart, kWidth>(dq, ds_base, k_base);
    fence_operands(dq);
    if constexpr (kP == 0) {
      if constexpr (kReleasesStage) {
        wgmma_wait<1>();  // dV / dK group done: Q and dO of this stage are no longer read
        dkv_done();
        if (d.lane == 0) mbarrier_arrive(empty);
      }
      if constexpr (!C::kDqByTma) {
        if (d.sem != nullptr) {
          if (consumer == 0 && d.t == 0) spin_until_turn(d.sem, d.turn);
          named_barrier_sync(kBarDetGo, kConsumerThreads);
        }
      }
    }
    wgmma_wait<0>();
    fence_operands(dq);
    if constexpr (kP == kPieces - 1) ds_read();
    if constexpr (C::kDqByTma) {
      // Rows past seqlen_q are added too, as zeros (stage_dq), and the map clips rows past the workspace's end;
      // other columns / heads are never touched (boxes inside head_dim).
      constexpr int kCol0 = kStart - Cols::kC0;
      stage_dq<kCol0, kWidth>(dq, smem_u32(d.stage), d.t, d.seqlen_q - d.q0);
      fence_proxy_async_shared();  // each writer: its generic stores before the TMA unit reads them
      named_barrier_sync(kBarDqStaged + kDqPart, kWarpgroupThreads);  // kDqPart = consumer: a constant id
      if (d.t == 0) {
        if (kP == 0 && d.sem != nullptr) wait_dq_turn(d.sem, d.turn, d.turn_state->seen != 0);
#pragma unroll
        for (int box = kCol0 / kDqBoxCols; box < (kCol0 + kWidth) / kDqBoxCols; ++box) {
          tma_reduce_add_3d(d.tmap_dq, d.stage + box * kWgmmaM * kDqBoxCols, Cols::kC0 + box * kDqBoxCols, d.hq,
                            d.dq_row0 + d.q0);
        }
        bulk_commit_group();
      }
    } else if (d.sem != nullptr) {
      add_dq<kStart, kWidth, true>(dq, d.a, d.dq_row0, d.hq, d.q0, d.seqlen_q, d.t);
    } else {
      add_dq<kStart, kWidth, false>(dq, d.a, d.dq_row0, d.hq, d.q0, d.seqlen_q, d.t);
    }
  });
  if (d.sem != nullptr) {
    if constexpr (C::kDqByTma) {
      if (d.t == 0) d.turn_state->owed = d.sem;  // passed on by pass_dq_turn once the adds complete
    } else {
      __threadfence();  // each adding thread: its adds before the release below (across the barrier)
      named_barrier_sync(kBarDetDone, kConsumerThreads);
      if (consumer == 0 && d.t == 0) red_release_gpu_add(d.sem, 1);
    }
  }
}

}  // namespace flashcore::sm90::bwd

// Attention forward for gfx942 (MI300X): one kernel template per head dim and element type; causal, sliding
// window, softcap, GQA/MQA and varlen are runtime parameters (FwdParams, csrc/fwd_params.h).
//
// Block = 4 waves x 32 query rows = 128 rows of one (sequence, head). Each wave keeps its 32 rows of Q and of the
// output accumulator in registers for the whole kernel and walks the K/V tiles of the keys its block can see:
//
//   S^T = K . Q^T    32x32x8 MFMAs, A = K rows from LDS, B = Q^T from registers. Transposed on purpose: the
//                    accumulator column is a query, so lane pair (l, l + 32) holds all of query l % 32's scores
//                    (16 keys each per 32-key block) and the row max needs one ds_bpermute; the row sum none
//                    (each lane sums its own keys; the halves are added once at the end).
//   P = exp2(S^T * scale * log2 e - m)   one FMA + one v_exp per score (scale folded into the FMA); m moves
//                    only when a tile's max exceeds it by 2^8, and O^T is rescaled only then (lazy rescale).
//   O^T += V^T . P^T 32x32x8 MFMAs, A = V^T rows from LDS, B = P^T straight from the S^T registers: the layout
//                    that puts S^T row m in lane l's register 4j+i is exactly the B-operand layout of a
//                    32x32x8 MFMA whose k-step j covers those keys, so P needs no shuffle at all. O^T's column
//                    is again the query, so the online-softmax rescale is one multiply per register.
//
// Two free permutations (see mfma.h) make every LDS read 16 bytes and the output store contiguous:
//   key_of_row(m): A row m of S^T holds key (m with bits 2 and 3 swapped). Lane half h's accumulator registers
//                  of k-steps 2t and 2t+1 then hold keys 16t + 8h + 0..7, so one ds_read_b128 of V^T feeds two
//                  MFMAs of O^T; and K's contraction (head dim) is split so one ds_read_b128 of K feeds two MFMAs.
//   dim_of_row(m): A row m of O^T holds head-dim 16 (bit 2 of m) + 8 (bit 4) + 4 (bit 3) + (m & 3), so lane
//                  half h's 16 accumulator registers are the 16 consecutive dims 16h..16h+15 (two 16-byte stores).
//
// Pipeline per K/V tile (registers stage the global loads; LDS holds one K and one V^T tile):
//   issue buffer loads of the next K tile | S^T MFMAs | barrier | next K -> LDS | issue loads of the next V
//   | softmax | O^T MFMAs | barrier | next V^T -> LDS
// The barriers fence LDS only (compat.h), so the next tile's loads stay in flight across them. K/V tiles are
// read through buffer resources (memory.h): scalar tile base, per-thread offsets fixed for the whole loop, the
// hardware range check zero-fills the ragged tail. LDS operand reads use one address register per lane and
// step class plus immediate offsets (k_load_step / vt_load_step).
// Tiles entirely outside the causal / window band of the block are never visited; a wave whose 32 rows see
// nothing of a tile skips its MFMAs for it; per-element masks run only on tiles that cut the band or the
// sequence end.
#pragma once

#include "../fwd_params.h"
#include "../tiles/gfx942_fwd.h"
#include "compat.h"
#include "lds.h"
#include "memory.h"
#include "mfma.h"
#include "types.h"
#include "wave.h"

namespace flashcore::gfx942 {

// Tile shapes per head dim D: the rows of csrc/tiles/gfx942_fwd.h (the register/LDS/occupancy reasoning for each
// row is written next to the table; flashcore/advise.py reads the same file).
struct FwdTileRow {
  int head_dim, block_m, block_n, waves, waves_per_simd;
};
inline constexpr FwdTileRow kFwdTiles[] = {
#define FLASHCORE_FWD_TILE_ROW(d, m, n, w, o) FwdTileRow{d, m, n, w, o},
    FLASHCORE_TILES_GFX942_FWD(FLASHCORE_FWD_TILE_ROW)
#undef FLASHCORE_FWD_TILE_ROW
};
// The row of head dim D; head_dim 0 when the table has none (FwdTile's static_assert then names the problem).
constexpr FwdTileRow fwd_tile_row(int d) {
  for (const FwdTileRow& row : kFwdTiles) {
    if (row.head_dim == d) return row;
  }
  return FwdTileRow{0, 0, 0, 0, 0};
}

template <int D>
struct FwdTile {
  static constexpr FwdTileRow kRow = fwd_tile_row(D);
  static_assert(kRow.head_dim == D, "head dims with kernels: the rows of csrc/tiles/gfx942_fwd.h");
  static constexpr int kWaves = kRow.waves;
  static constexpr int kThreads = kWaves * kWaveSize;
  static constexpr int kRowsPerWave = 32;  // one 32x32 MFMA column block: query = lane % 32
  static constexpr int kBlockRows = kRow.block_m;
  static_assert(kBlockRows == kWaves * kRowsPerWave, "block_m is waves x 32 rows");
  static constexpr int kKeys = kRow.block_n;
  static_assert(kKeys == 32 || kKeys == 64, "S^T is one or two 32-key MFMA blocks");
  // Occupancy the register allocator must keep (waves per SIMD); the ISA checks record what it achieved.
  static constexpr int kMinWavesPerSimd = kRow.waves_per_simd;

  // Grid: x = query tiles of the longest sequence (seqlen_q is max_seqlen_q for varlen), y = query heads,
  // z = sequences, mapped tile slowest (compat.h tile_slowest): a sequence's heads run their last (causal:
  // longest) query tile first, then the next; concurrent blocks read the K/V of all the sequence's heads, which the
  // 256 MB Infinity Cache holds for the usual shapes (16 heads x 16k x D 128: 128 MB).
  static constexpr int grid_x(const FwdParams& p) { return (p.seqlen_q + kBlockRows - 1) / kBlockRows; }

  static constexpr float kMaxGrowth = 8.0f;  // lazy rescale threshold, log2 units: P <= 2^8
  static constexpr int kPvGroup = D <= 128 ? D / 32 : 2;  // O^T dim blocks whose MFMAs interleave

  static constexpr int kKChunks = D / 8;      // 16-byte chunks per K row (LDS: [key][dim])
  static constexpr int kVChunks = kKeys / 8;  // 16-byte chunks per V^T row (LDS: [dim][key])
  static constexpr uint32_t kKBytes = kKeys * D * 2;
  static constexpr uint32_t kLdsBytes = 2 * kKBytes;  // K tile, then V^T tile

  // Global -> LDS staging. K: 16-byte chunks, 8 (or 4) consecutive threads along a row (128-byte lines,
  // conflict-free ds_write_b128). V: units of 4 keys x 8 dims (four 16-byte loads), written transposed as eight
  // 8-byte rows of V^T; consecutive threads take consecutive key quads of the same 8 dims.
  static constexpr int kKLoads = kKeys * kKChunks / kThreads;
  static constexpr int kKLanesPerRow = kKChunks % 8 == 0 ? 8 : 4;
  static constexpr int kKRowsPerPass = kThreads / kKLanesPerRow;
  static constexpr int kKChunkSteps = kKChunks / kKLanesPerRow;
  static constexpr int kVUnits = kKeys * D / 32;
  static constexpr int kVLoads = (kVUnits + kThreads - 1) / kThreads;
  static_assert(kKeys * kKChunks % kThreads == 0 && kVUnits % kWaveSize == 0, "whole waves load or idle");
  static_assert(kKChunks % kKLanesPerRow == 0 && kKeys % kKRowsPerPass == 0, "K chunks tile the K tile");

  // --- LDS addresses: the kernel uses these, and the harness replays them against the bank model (lds.h)
  static constexpr int key_of_row(int m) { return swap_bits_2_3(m); }
  static constexpr int dim_of_row(int m) { return contiguous_16(m); }
  // Key (within the tile) of S^T register r of 32-key block `blk` in lane half `half`.
  static constexpr int key_of_register(int blk, int half, int r) {
    return 32 * blk + key_of_row(8 * (r / 4) + 4 * half + r % 4);
  }

  // K chunk i of thread tid: kKLanesPerRow consecutive threads share a row (8: a 128-byte line per row per load,
  // and 8 distinct chunks per ds_write_b128 phase; 4 for 192-byte rows, where rows of opposite parity already sit
  // 4 bank groups apart). Load i = pass * kKChunkSteps + step: row tid / kKLanesPerRow + pass * kKRowsPerPass,
  // chunk tid % kKLanesPerRow + step * kKLanesPerRow. The row/chunk part depending on tid is one VGPR offset; the
  // part depending on i is a scalar offset.
  static constexpr int k_unit_row(int tid, int i) { return tid / kKLanesPerRow + i / kKChunkSteps * kKRowsPerPass; }
  static constexpr int k_unit_chunk(int tid, int i) { return tid % kKLanesPerRow + i % kKChunkSteps * kKLanesPerRow; }
  static constexpr uint32_t k_store(int tid, int i) {
    return lds_offset<kKChunks>(k_unit_row(tid, i), k_unit_chunk(tid, i));
  }
  // S^T operand A, 32-key block `blk`, head-dim chunk pair t (dims 16t..16t+15): 8 dims at 16t + 8 * half.
  static constexpr uint32_t k_load(int lane, int blk, int t) {
    return lds_offset<kKChunks>(32 * blk + key_of_row(lane % 32), 2 * t + lane / 32);
  }

  static constexpr int v_unit_quad(int unit) { return unit % (kKeys / 4); }
  static constexpr int v_unit_oct(int unit) { return unit / (kKeys / 4); }
  // With 32-key tiles a V^T row is 64 bytes, so 16 lanes writing 8 bytes cover two rows, and rows 8 apart share
  // banks; odd dim-octets write their columns in the order c ^ 1 to put the two rows at opposite parities.
  static constexpr int v_column_swap(int unit) { return kKeys / 4 < 16 ? v_unit_oct(unit) & 1 : 0; }
  static constexpr uint32_t vt_store(int unit, int c) {  // c-th of the 8 dim rows of a unit, 4 keys = 8 bytes
    return lds_offset<kVChunks>(8 * v_unit_oct(unit) + (c ^ v_column_swap(unit)), v_unit_quad(unit) / 2) +
           8 * (v_unit_quad(unit) % 2);
  }
  // O^T operand A, 32-dim block `db`, key chunk pair t (keys 16t..16t+15): 8 keys at 16t + 8 * half.
  static constexpr uint32_t vt_load(int lane, int db, int t) {
    return lds_offset<kVChunks>(32 * db + dim_of_row(lane % 32), 2 * t + lane / 32);
  }

  // The operand reads split into a lane part that depends on t only through t % variants, and a part the same
  // for every lane, which becomes the ds_read_b128 immediate offset:
  //   k_load(lane, blk, t)  == k_load(lane, 0, t % kKVariants)  + k_load_step(blk, t)
  //   vt_load(lane, db, t)  == vt_load(lane, 0, t % kVVariants) + vt_load_step(db, t)
  // (the swizzle depends on row bits 0..4 only, and XORs within aligned groups of 8 or 4 chunks, i.e. 4 or 2
  // chunk pairs). So a lane keeps 4 + 4 address registers at most instead of one per step; the harness checks
  // both identities for every lane and step.
  static constexpr int kKVariants = kKChunks % 8 == 0 ? 4 : 2;
  static constexpr int kVVariants = kVChunks % 8 == 0 ? 4 : 2;
  static constexpr uint32_t k_load_step(int blk, int t) {
    return static_cast<uint32_t>((32 * blk * kKChunks + 2 * (t - t % kKVariants)) * 16);
  }
  static constexpr uint32_t vt_load_step(int db, int t) {
    return static_cast<uint32_t>((32 * db * kVChunks + 2 * (t - t % kVVariants)) * 16);
  }
};

template <int D, class E>
FLASHCORE_GLOBAL void FLASHCORE_LAUNCH_BOUNDS(FwdTile<D>::kThreads, FwdTile<D>::kMinWavesPerSimd)
    fwd_kernel(const FwdParams p) {
  using T = FwdTile<D>;
  constexpr int kKeys = T::kKeys;
  FLASHCORE_LDS(lds, T::kLdsBytes);
  uint8_t* const lds_k = lds;
  uint8_t* const lds_vt = lds + T::kKBytes;

  const int tid = thread_id();
  const int wave = readfirstlane(tid / kWaveSize);
  const int lane = tid % kWaveSize;
  const int half = lane / 32;

  // ---- which sequence, head and rows
  const int b = block_id_z();
  const TileHead slot = tile_slowest(T::grid_x(p), p.heads_q);
  const int head = slot.head;
  const int head_kv = head / (p.heads_q / p.heads_kv);  // GQA/MQA: query heads share a K/V head, no copies
  int q_start = 0, k_start = 0, seqlen_q = p.seqlen_q, seqlen_k = p.seqlen_k;
  if (p.cu_seqlens_q != nullptr) {
    q_start = load_i32(p.cu_seqlens_q + b);
    seqlen_q = load_i32(p.cu_seqlens_q + b + 1) - q_start;
    k_start = load_i32(p.cu_seqlens_k + b);
    seqlen_k = load_i32(p.cu_seqlens_k + b + 1) - k_start;
  }
  const int q_tiles = (seqlen_q + T::kBlockRows - 1) / T::kBlockRows;
  if (slot.tile >= q_tiles) return;  // the grid covers max_seqlen_q; this sequence is shorter
  const int block_q0 = (q_tiles - 1 - slot.tile) * T::kBlockRows;  // last rows first: causal's longest blocks
  const int wave_q0 = block_q0 + wave * T::kRowsPerWave;
  const int q = wave_q0 + lane % 32;  // this lane's query row (lanes l and l + 32 share it)
  const bool q_valid = q < seqlen_q;

  // ---- keys the block and the wave can see: [begin, end)
  const int offset = seqlen_k - seqlen_q;  // bottom-right alignment
  const bool bounded_left = p.window_left >= 0, bounded_right = p.window_right >= 0;
  // Window sides clamped to 2^30 (the host passes up to INT32_MAX): a side plus a row or key index below cannot
  // overflow, and nothing changes, as no index reaches 2^30.
  constexpr int kFar = 1 << 30;
  const int window_left = min_int(p.window_left, kFar), window_right = min_int(p.window_right, kFar);
  auto first_key = [&](int first_row) { return bounded_left ? max_int(0, first_row + offset - window_left) : 0; };
  auto end_key = [&](int last_row) {
    return bounded_right ? min_int(seqlen_k, last_row + offset + window_right + 1) : seqlen_k;
  };
  const int block_last = min_int(block_q0 + T::kBlockRows, seqlen_q) - 1;
  const int wave_last = min_int(wave_q0 + T::kRowsPerWave, seqlen_q) - 1;
  const int k_begin = first_key(block_q0), k_end = end_key(block_last);
  const int wave_k_begin = first_key(wave_q0), wave_k_end = wave_last >= wave_q0 ? end_key(wave_last) : 0;

  const uint16_t* const k_base = static_cast<const uint16_t*>(p.k) + b * p.k_stride_b + k_start * p.k_stride_s +
                                 head_kv * p.k_stride_h;
  const uint16_t* const v_base = static_cast<const uint16_t*>(p.v) + b * p.v_stride_b + k_start * p.v_stride_s +
                                 head_kv * p.v_stride_h;

  // ---- Q^T fragments: lane half h holds dims 16t + 8h .. +7 of its query for every t (B operand of S^T)
  u32x4 q_frag[D / 16];
  {
    const uint16_t* const q_row = static_cast<const uint16_t*>(p.q) + b * p.q_stride_b +
                                  (q_start + (q_valid ? q : 0)) * p.q_stride_s + head * p.q_stride_h;
#pragma unroll
    for (int t = 0; t < D / 16; ++t) q_frag[t] = load16_or_zero(q_row + 16 * t + 8 * half, q_valid) ^ p.q_sign;
  }

  // ---- staging of K / V tiles: global -> registers -> LDS. A tile is read through a buffer resource whose base
  // is its first key (scalar) and whose size ends at the sequence's last key, so a thread's byte offsets are the
  // same in every tile and keys past the end read as zeros.
  auto tile_buffer = [&](const uint16_t* base, int64_t stride_s, int k0) {  // rows k0 .. min(k0 + kKeys, seqlen_k)
    const int rows = min_int(kKeys, seqlen_k - k0);
    return make_buffer(base + k0 * stride_s, static_cast<uint32_t>(((rows - 1) * stride_s + D) * 2));
  };
  auto load_k = [&](int k0, u32x4 (&staged)[T::kKLoads]) {
    const GlobalBuffer tile = tile_buffer(k_base, p.k_stride_s, k0);
    const int64_t lane_element = T::k_unit_row(tid, 0) * p.k_stride_s + 8 * T::k_unit_chunk(tid, 0);
#pragma unroll
    for (int i = 0; i < T::kKLoads; ++i) {
      const int64_t step_element = (T::k_unit_row(0, i) * p.k_stride_s + 8 * T::k_unit_chunk(0, i));
      staged[i] = buffer_load16(tile, static_cast<uint32_t>(lane_element * 2), static_cast<uint32_t>(step_element * 2));
    }
  };
  auto store_k = [&](const u32x4 (&staged)[T::kKLoads]) {
#pragma unroll
    for (int i = 0; i < T::kKLoads; ++i) lds_store16(lds_k, T::k_store(tid, i), staged[i]);
  };
  auto load_v = [&](int k0, u32x4 (&staged)[T::kVLoads][4]) {
    const GlobalBuffer tile = tile_buffer(v_base, p.v_stride_s, k0);
#pragma unroll
    for (int i = 0; i < T::kVLoads; ++i) {
      const int unit = tid + i * T::kThreads;
      if (unit >= T::kVUnits) break;  // whole waves
      const int64_t element = 4 * T::v_unit_quad(unit) * p.v_stride_s + 8 * T::v_unit_oct(unit);
#pragma unroll
      for (int r = 0; r < 4; ++r) {  // key r of the quad: a scalar offset on the same lane offset
        staged[i][r] = buffer_load16(tile, static_cast<uint32_t>(element * 2), static_cast<uint32_t>(r * p.v_stride_s * 2));
      }
    }
  };
  auto store_v = [&](const u32x4 (&staged)[T::kVLoads][4]) {  // transpose 4 keys x 8 dims into V^T rows
#pragma unroll
    for (int i = 0; i < T::kVLoads; ++i) {
      const int unit = tid + i * T::kThreads;
      if (unit >= T::kVUnits) break;
      const uint32_t upper = static_cast<uint32_t>(T::v_column_swap(unit));  // 1: take the other dim of a word
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const int w = c / 2;  // word of each key's 16 bytes holding dims c and c ^ 1
        const bool hi = ((c & 1) ^ upper) != 0;
        auto column = [&](uint32_t key_a, uint32_t key_b) {  // the chosen dim of two keys, packed
          return hi ? (key_a >> 16) | (key_b & 0xffff0000u) : (key_a & 0xffffu) | (key_b << 16);
        };
        lds_store8(lds_vt, T::vt_store(unit, c),
                   u32x2{column(staged[i][0][w], staged[i][1][w]), column(staged[i][2][w], staged[i][3][w])});
      }
    }
  };

  // ---- LDS operand addresses of this lane (see k_load_step / vt_load_step)
  uint32_t k_addr[T::kKVariants], vt_addr[T::kVVariants];
#pragma unroll
  for (int v = 0; v < T::kKVariants; ++v) k_addr[v] = T::k_load(lane, 0, v);
#pragma unroll
  for (int v = 0; v < T::kVVariants; ++v) vt_addr[v] = T::kKBytes + T::vt_load(lane, 0, v);

  // ---- online softmax state (base 2; m includes the scale) and the O^T accumulator
  f32x16 o[D / 32];
#pragma unroll
  for (int db = 0; db < D / 32; ++db) o[db] = f32x16{};
  float m = -kInf, l = 0.0f;
  const bool softcap = p.tanh_out > 0.0f;
  const float score_mul = p.score_mul;

  const int kt_begin = k_begin / kKeys, kt_end = (k_end + kKeys - 1) / kKeys;
  if (kt_begin < kt_end) {
    {
      u32x4 staged_k[T::kKLoads];
      u32x4 staged_v[T::kVLoads][4];
      load_k(kt_begin * kKeys, staged_k);
      load_v(kt_begin * kKeys, staged_v);
      store_k(staged_k);
      store_v(staged_v);
    }
    block_barrier();
    for (int kt = kt_begin; kt < kt_end; ++kt) {
      const int k0 = kt * kKeys;
      const bool next = kt + 1 < kt_end;
      const bool active = k0 < wave_k_end && k0 + kKeys > wave_k_begin;  // wave-uniform
      u32x4 staged_k[T::kKLoads];
      if (next) load_k(k0 + kKeys, staged_k);

      f32x16 s[kKeys / 32];
      if (active) {
        // K fragments are read one step ahead of the MFMAs that use them, so an LDS read's latency hides
        // behind the previous step's MFMAs.
        u32x4 k_frag[2][kKeys / 32];
#pragma unroll
        for (int blk = 0; blk < kKeys / 32; ++blk) {
          s[blk] = f32x16{};
          k_frag[0][blk] = lds_load16(lds, k_addr[0] + T::k_load_step(blk, 0));
        }
#pragma unroll
        for (int t = 0; t < D / 16; ++t) {
#pragma unroll
          for (int blk = 0; blk < kKeys / 32; ++blk) {
            if (t + 1 < D / 16) {
              k_frag[(t + 1) % 2][blk] = lds_load16(lds, k_addr[(t + 1) % T::kKVariants] + T::k_load_step(blk, t + 1));
            }
          }
#pragma unroll
          for (int blk = 0; blk < kKeys / 32; ++blk) {
            s[blk] = mfma_32x32x8<E>(low8(k_frag[t % 2][blk]), low8(q_frag[t]), s[blk]);
            s[blk] = mfma_32x32x8<E>(high8(k_frag[t % 2][blk]), high8(q_frag[t]), s[blk]);
          }
        }
      }
      block_barrier();  // every wave is done with this K tile
      if (next) store_k(staged_k);
      u32x4 staged_v[T::kVLoads][4];
      if (next) load_v(k0 + kKeys, staged_v);

      if (active) {
        // Masks only where the tile cuts the sequence end or the band of this wave's rows.
        const bool masked = k0 + kKeys > seqlen_k ||
                            (bounded_right && k0 + kKeys - 1 > wave_q0 + offset + window_right) ||
                            (bounded_left && k0 < wave_q0 + T::kRowsPerWave - 1 + offset - window_left);
        // One wave-uniform branch per option, each around a whole loop (a test per element would be a branch
        // per element: the loops are unrolled and the compiler does not unswitch them).
        if (softcap) {
#pragma unroll
          for (int blk = 0; blk < kKeys / 32; ++blk) {
#pragma unroll
            for (int r = 0; r < 16; ++r) s[blk][r] = p.tanh_out * tanh_fast(s[blk][r] * p.tanh_in);
          }
        }
        if (masked) {
#pragma unroll
          for (int blk = 0; blk < kKeys / 32; ++blk) {
#pragma unroll
            for (int r = 0; r < 16; ++r) {
              const int key = k0 + T::key_of_register(blk, half, r);
              const bool visible = key < seqlen_k && (!bounded_right || key <= q + offset + window_right) &&
                                   (!bounded_left || key >= q + offset - window_left);
              s[blk][r] = visible ? s[blk][r] : -kInf;
            }
          }
        }
        float row_max = -kInf;
#pragma unroll
        for (int blk = 0; blk < kKeys / 32; ++blk) {
#pragma unroll
          for (int r = 0; r < 16; ++r) row_max = max_num(row_max, s[blk][r]);
        }
        row_max = max_num(row_max, swap_halves(row_max));
        // Lazy rescaling: the running max m only moves when the tile's max exceeds it by more than kMaxGrowth
        // (log2 units), so P may reach 2^kMaxGrowth -- harmless in fp32 and in bf16/fp16 P -- and O^T is
        // rescaled only when some lane of the wave moved a finite m. Late tiles of long rows rarely do, and
        // for D = 256, where O^T lives in AGPRs, a rescale costs two register moves per accumulator.
        const float m_tile = row_max * score_mul;
        const bool grow = m_tile > m + T::kMaxGrowth;  // m = -inf: any visible key grows it
        const float m_new = grow ? m_tile : m;
        const float shift = m_new == -kInf ? 0.0f : m_new;  // nothing visible yet: exp2(-inf - 0) = 0, no NaN
        const float rescale = exp2_fast(m - shift);
        float sum = 0.0f;
        u32x2 p_frag[kKeys / 8];  // B operand of O^T, one per k-step of 8 keys
#pragma unroll
        for (int blk = 0; blk < kKeys / 32; ++blk) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            float pr[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              pr[i] = exp2_fast(__builtin_fmaf(s[blk][4 * j + i], score_mul, -shift));
              sum += pr[i];
            }
            p_frag[4 * blk + j] = u32x2{E::pack2_fast(pr[0], pr[1]), E::pack2_fast(pr[2], pr[3])};
          }
        }
        l = l * rescale + sum;
        if (wave_any(grow && m != -kInf)) {  // m is still the old max here; O^T is zero while it is -inf
#pragma unroll
          for (int db = 0; db < D / 32; ++db) o[db] *= rescale;
        }
        m = m_new;
        // Per 16 keys and group of dim blocks: the group's V^T fragments, then their low-half MFMAs, then the
        // high halves, so consecutive MFMAs accumulate into different registers (groups of 2 for D = 192/256
        // keep the fragments within the register budget).
#pragma unroll
        for (int t = 0; t < kKeys / 16; ++t) {
#pragma unroll
          for (int db0 = 0; db0 < D / 32; db0 += T::kPvGroup) {
            u32x4 v_frag[T::kPvGroup];
#pragma unroll
            for (int g = 0; g < T::kPvGroup; ++g) {
              v_frag[g] = lds_load16(lds, vt_addr[t % T::kVVariants] + T::vt_load_step(db0 + g, t));
            }
#pragma unroll
            for (int g = 0; g < T::kPvGroup; ++g) {
              o[db0 + g] = mfma_32x32x8<E>(low8(v_frag[g]), p_frag[2 * t], o[db0 + g]);
            }
#pragma unroll
            for (int g = 0; g < T::kPvGroup; ++g) {
              o[db0 + g] = mfma_32x32x8<E>(high8(v_frag[g]), p_frag[2 * t + 1], o[db0 + g]);
            }
          }
        }
      }
      block_barrier();  // every wave is done with this V^T tile; the next K tile is visible
      if (next) store_v(staged_v);
    }
  }

  // ---- epilogue: out = O^T / l (lane half h writes dims 32db + 16h .. +15 of its row), lse
  const float l_row = l + swap_halves(l);
  if (q_valid) {
    const float inv = l_row == 0.0f ? 0.0f : rcp_fast(l_row);  // a row that saw nothing: out 0
    uint16_t* const out_row = static_cast<uint16_t*>(p.out) + b * p.o_stride_b + (q_start + q) * p.o_stride_s +
                              head * p.o_stride_h;
#pragma unroll
    for (int db = 0; db < D / 32; ++db) {
#pragma unroll
      for (int part = 0; part < 2; ++part) {
        u32x4 packed;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          packed[w] = pack16(E::from_float(o[db][8 * part + 2 * w] * inv), E::from_float(o[db][8 * part + 2 * w + 1] * inv));
        }
        store16(out_row + 32 * db + 16 * half + 8 * part, packed);
      }
    }
    if (half == 0) {
      store_f32(p.lse + b * p.lse_stride_b + head * p.lse_stride_h + q_start + q,
                l_row == 0.0f ? -kInf : (m + log2_fast(l_row)) * kLn2);
    }
  }
}

}  // namespace flashcore::gfx942

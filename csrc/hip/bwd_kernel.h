// Attention backward for gfx942 (MI300X): one kernel template per head dim and element type, plus the dQ
// postprocess; causal, sliding window, softcap, GQA/MQA, varlen and deterministic mode are runtime parameters
// (BwdParams, csrc/bwd_params.h, whose header gives the math). Tile shapes: csrc/tiles/gfx942_bwd.h.
//
// Workgroup = one K/V block of block_n keys of one (sequence, K/V head); wave w owns keys 32w..32w+31 and keeps,
// for the whole kernel, their dK^T, dV^T accumulators and (D <= 128; D >= 192 re-reads them per Q tile) their K
// and V rows as MFMA B operands in registers. The workgroup walks the query heads of its GQA group (dK/dV
// reduced in registers: no expanded K/V, no partials) and, per head, the Q tiles of block_m rows whose causal /
// window band meets its keys. Per Q tile:
//
//   S  = Q . K^T       32x32x8 MFMAs, A = Q rows from LDS, B = K from registers. The accumulator column is the
//                      lane's key; row m holds query swap_bits_2_3(m) (mfma.h), so lane half h's registers of
//                      k-steps 2t, 2t + 1 are queries 16t + 8h + 0..7.
//   P  = exp2(S * scale * log2 e - lse * log2 e)     one FMA + v_exp; lse and delta reach the lanes that need
//                      them by ds_bpermute (no LDS space: at D = 256 the four tiles below fill all 64 KiB).
//   dP = dO . V^T      as S, A = dO rows from LDS, B = V from registers.
//   dS = P * (dP - delta)   (softcap: times 1 - tanh^2), fp32, then packed to 16 bits.
//   dV^T += dO^T . P   A = dO^T rows (dims) from LDS, B = P straight from the S registers: the accumulator layout
//   dK^T += Q^T . dS   of S *is* the B layout of an MFMA contracting over queries, so no shuffle; the A rows use
//                      contiguous_16 so a lane's 16 accumulator registers are 16 consecutive dims of its key.
//   dQ  += dS . K      contracts over keys, which S's layout spreads over lanes: dS goes through LDS ([query][key],
//                      over the then-dead Q/dO tiles), B = K^T fragments kept in registers; the waves share the
//                      (row block, dim block) tiles of dQ and add them into an fp32 workspace with
//                      global_atomic_add_f32 (coalesced: a lane per dim). Deterministic mode takes the tile's
//                      ticket (atomics.h) first, so K/V blocks add in block order.
// After the last tile, dK = dK^T * scale and dV^T are written, 16 bytes per store; keys no query sees get 0.
// The postprocess (bwd_dq_kernel) converts the fp32 dQ to dq with the softmax scale.
//
// LDS per tile (4 x block_m x D x 2 bytes, XOR-swizzled, csrc/hip/lds.h): Q, dO row-major (S, dP operands) and
// Q^T, dO^T (dK, dV operands), written from the same staged global loads (units of 4 rows x 8 dims, as the
// forward's V^T); the next tile's loads are issued before this tile's MFMAs (kPrefetch) and written to LDS after
// the tile's last barrier. Barriers per tile: tile visible | Q, dO free (dS may overwrite) | dS visible | tile free.
#pragma once

#include "../bwd_params.h"
#include "../tiles/gfx942_bwd.h"
#include "atomics.h"
#include "compat.h"
#include "lds.h"
#include "memory.h"
#include "mfma.h"
#include "types.h"
#include "wave.h"

namespace flashcore::gfx942 {

struct BwdShape {
  int block_m, block_n, waves, waves_per_simd;
};

// The row of csrc/tiles/gfx942_bwd.h for head dim d (all zeros if there is none).
constexpr BwdShape bwd_shape(int d) {
#define FLASHCORE_BWD_ROW(head_dim, block_m, block_n, waves, waves_per_simd) \
  if (d == head_dim) return BwdShape{block_m, block_n, waves, waves_per_simd};
  FLASHCORE_TILES_GFX942_BWD(FLASHCORE_BWD_ROW)
#undef FLASHCORE_BWD_ROW
  return BwdShape{0, 0, 0, 0};
}

template <int D>
struct BwdTile {
  static constexpr BwdShape kShape = bwd_shape(D);
  static_assert(kShape.block_m > 0, "head dim without a row in csrc/tiles/gfx942_bwd.h");
  static constexpr int kBlockM = kShape.block_m;
  static constexpr int kBlockN = kShape.block_n;
  static constexpr int kWaves = kShape.waves;
  static constexpr int kWavesPerSimd = kShape.waves_per_simd;
  static constexpr int kThreads = kWaves * kWaveSize;
  static constexpr int kKeysPerWave = 32;  // one 32x32 MFMA column block: key = lane % 32
  static_assert(kBlockN == kKeysPerWave * kWaves, "each wave owns 32 keys of the block");
  static_assert(kBlockM % 32 == 0 && D % 32 == 0, "32-row / 32-dim MFMA blocks");
  static constexpr int kRowBlocks = kBlockM / 32;
  static constexpr int kDimBlocks = D / 32;
  // dQ tiles (32 rows x 32 dims) of one Q tile, dealt round robin: slot s of wave w is tile w + kWaves * s.
  static constexpr int kDqTiles = kRowBlocks * kDimBlocks;
  static constexpr int kDqSlots = (kDqTiles + kWaves - 1) / kWaves;
  // What stays in registers beyond the accumulators (the rest of 512 / waves_per_simd; isa_budget.json holds
  // the counts). D <= 128: K and V B operands for the whole kernel, and the next Q/dO tile's loads in flight
  // during this tile's MFMAs. D >= 192: dK^T + dV^T alone are D = 192..256 VGPRs, so K and V are re-read
  // (L1/L2 hits: the block's own 32 keys per wave) right before the MFMAs that use them, and the next tile is
  // loaded after this one's MFMAs.
  static constexpr bool kKeepKV = D <= 128;
  static constexpr bool kPrefetch = D <= 128;
  // D = 256: K^T for dQ (64 VGPRs) does not fit beside dK^T + dV^T (256) and S / dP either; it is gathered again
  // per Q tile between the dK/dV MFMAs and the dQ ones (L1 hits; 128 two-byte loads per lane and tile).
  static constexpr bool kKeepKt = D <= 192;

  // Grid: x = K/V blocks of the longest sequence, y = K/V heads, z = sequences, mapped block slowest
  // (compat.h tile_slowest): every head's block 0 (causal: the longest) is dispatched before any head's block 1.
  static constexpr int grid_x(const FwdParams& f) { return (f.seqlen_k + kBlockN - 1) / kBlockN; }
  static constexpr int q_tiles(int seqlen_q) { return (seqlen_q + kBlockM - 1) / kBlockM; }

  // ---- LDS: Q | dO | Q^T | dO^T; dS ([query][key]) over Q | dO once both are read
  static constexpr int kRowChunks = D / 8;        // 16-byte chunks per Q / dO row
  static constexpr int kColChunks = kBlockM / 8;  // per Q^T / dO^T row (a dim)
  static constexpr int kDsChunks = kBlockN / 8;   // per dS row (a query)
  static constexpr uint32_t kTileBytes = kBlockM * D * 2;
  static constexpr uint32_t kQ = 0, kDo = kTileBytes, kQt = 2 * kTileBytes, kDot = 3 * kTileBytes, kDs = 0;
  static constexpr uint32_t kLdsBytes = 4 * kTileBytes;
  static_assert(kBlockM * kBlockN * 2 <= 2 * kTileBytes, "dS fits where Q and dO were");
  static_assert(kLdsBytes <= 65536, "gfx942 has 64 KiB of LDS per CU");

  // ---- staging: a unit is 4 rows x 8 dims (four 16-byte loads); consecutive threads take consecutive row quads
  // of the same 8 dims. Written row-major as four 16-byte chunks and transposed as eight 8-byte rows of Q^T.
  static constexpr int kUnits = kBlockM * D / 32;
  static constexpr int kUnitLoads = (kUnits + kThreads - 1) / kThreads;
  static constexpr int unit_quad(int unit) { return unit % (kBlockM / 4); }
  static constexpr int unit_oct(int unit) { return unit / (kBlockM / 4); }
  static constexpr uint32_t row_store(int unit, int r) {
    return lds_offset<kRowChunks>(4 * unit_quad(unit) + r, unit_oct(unit));
  }
  // 64-byte Q^T rows (block_m = 32): odd dim octets write their rows in the order c ^ 1 (as the forward's V^T).
  static constexpr int column_swap(int unit) { return kBlockM / 4 < 16 ? unit_oct(unit) & 1 : 0; }
  static constexpr uint32_t col_store(int unit, int c) {
    return lds_offset<kColChunks>(8 * unit_oct(unit) + (c ^ column_swap(unit)), unit_quad(unit) / 2) +
           8 * (unit_quad(unit) % 2);
  }
  // dS element (row, key): 2-byte writes from the S layout (a lane per key).
  static constexpr uint32_t ds_store(int row, int key) {
    return kDs + lds_offset<kDsChunks>(row, key / 8) + 2 * (key % 8);
  }
  // Query (within its 32-row block) that row m of S / dP holds, and the S row register r of lane half h is.
  static constexpr int query_of_row(int m) { return swap_bits_2_3(m); }
  static constexpr int row_of_register(int half, int r) { return 8 * (r / 4) + 4 * half + r % 4; }
  // The dS write of register r (row block rb) of lane `lane` in wave `wave`, split as (lane part of one of 8
  // variants) + (immediate): the swizzle of a dS row depends on row bits 0, 1, 4, which for these rows are
  // register bits 0, 1, 3; so the registers r and r & ~4 differ by a constant. Without the split the compiler
  // hoists all 16 kRowBlocks addresses out of the tile loop into VGPRs.
  static constexpr int kDsVariants = 8;
  static constexpr int ds_variant_register(int v) { return (v & 3) | (v & 4) << 1; }  // 0..3, 8..11
  static constexpr int ds_variant(int r) { return (r & 3) | (r & 8) >> 1; }
  static constexpr uint32_t ds_store_of(int lane, int wave, int rb, int r) {
    return ds_store(32 * rb + query_of_row(row_of_register(lane / 32, r)), kKeysPerWave * wave + lane % 32);
  }
  static constexpr uint32_t ds_store_step(int rb, int r) {
    return ds_store_of(0, 0, rb, r) - ds_store_of(0, 0, 0, ds_variant_register(ds_variant(r)));
  }
  static constexpr bool ds_store_split_holds() {
    for (int w = 0; w < kWaves; ++w) {
      for (int lane = 0; lane < kWaveSize; ++lane) {
        for (int rb = 0; rb < kRowBlocks; ++rb) {
          for (int r = 0; r < 16; ++r) {
            if (ds_store_of(lane, w, rb, r) !=
                ds_store_of(lane, w, 0, ds_variant_register(ds_variant(r))) + ds_store_step(rb, r)) {
              return false;
            }
          }
        }
      }
    }
    return true;
  }
};

// ---- the workspace (zero-filled by the host): the fp32 dQ accumulator, laid out like q but fp32 with rows
// numbered like lse (b * lse_stride_b + head * lse_stride_h + start + s), then, in deterministic mode, one int32
// ticket counter per (sequence, query head, Q tile).
constexpr int64_t bwd_dq_accum_bytes(const FwdParams& f) {
  const int64_t rows = f.cu_seqlens_q != nullptr ? f.lse_stride_h : int64_t{f.batch} * f.seqlen_q;  // varlen: total_q
  const int64_t bytes = int64_t{f.heads_q} * rows * f.head_dim * 4;
  return (bytes + kBwdWorkspaceAlign - 1) / kBwdWorkspaceAlign * kBwdWorkspaceAlign;
}

template <int D>
constexpr int64_t bwd_workspace_bytes_for(const BwdParams& p) {
  const FwdParams& f = p.fwd;
  const int64_t counters = p.deterministic ? int64_t{f.batch} * f.heads_q * BwdTile<D>::q_tiles(f.seqlen_q) * 4 : 0;
  return bwd_dq_accum_bytes(f) + counters;
}

// kFault: fault injection for the CPU harness's negative tests only (tests/test_hip_emulated_bwd.py): 1 drops the
// barrier that makes dS visible before the dQ MFMAs read it, 2 drops the ticket wait of deterministic mode.
template <int D, class E, int kFault = 0>
FLASHCORE_GLOBAL void FLASHCORE_LAUNCH_BOUNDS(BwdTile<D>::kThreads, BwdTile<D>::kWavesPerSimd)
    bwd_kernel(const BwdParams params) {
  // Fields read here are held in SGPRs to their last use; the head loop (D >= 192: the tile loop) and the epilogue
  // read theirs again (reread_args, compat.h), so that none is held through the loops: ~100 SGPRs, no spills.
  const BwdParams& p = params;
  using T = BwdTile<D>;
  constexpr int kBlockM = T::kBlockM, kBlockN = T::kBlockN;
  const FwdParams& f = p.fwd;
  FLASHCORE_LDS(lds, T::kLdsBytes);

  const int tid = thread_id();
  const int wave = readfirstlane(tid / kWaveSize);
  const int lane = tid % kWaveSize;
  const int half = lane / 32;

  // ---- which sequence, K/V head and keys
  const int b = block_id_z();
  const TileHead slot = tile_slowest(T::grid_x(f), f.heads_kv);  // K/V block 0 (causal: the longest) of every head first
  const int head_kv = slot.head, n = slot.tile;
  const int group = f.heads_q / f.heads_kv;
  int q_start = 0, k_start = 0, seqlen_q = f.seqlen_q, seqlen_k = f.seqlen_k;
  if (f.cu_seqlens_q != nullptr) {
    q_start = load_i32(f.cu_seqlens_q + b);
    seqlen_q = load_i32(f.cu_seqlens_q + b + 1) - q_start;
    k_start = load_i32(f.cu_seqlens_k + b);
    seqlen_k = load_i32(f.cu_seqlens_k + b + 1) - k_start;
  }
  const int k0 = n * kBlockN;
  if (k0 >= seqlen_k) return;  // the grid covers max_seqlen_k; this sequence is shorter
  const int k1 = min_int(k0 + kBlockN, seqlen_k);
  const int wave_k0 = k0 + wave * T::kKeysPerWave;
  const int key = wave_k0 + lane % 32;  // this lane's key (lanes l and l + 32 share it)
  const bool key_valid = key < seqlen_k;

  // ---- the band: query i sees key j when i + offset - window_left <= j <= i + offset + window_right
  const int offset = seqlen_k - seqlen_q;
  const bool bounded_left = f.window_left >= 0, bounded_right = f.window_right >= 0;
  // Window sides clamped to kFar (the host passes up to INT32_MAX): sums of a side and a row or key index below
  // cannot overflow, and nothing changes, as no index reaches 2^30.
  constexpr int kFar = 1 << 30;
  const int window_left = min_int(f.window_left, kFar), window_right = min_int(f.window_right, kFar);
  auto first_key = [&](int first_row) { return bounded_left ? max_int(0, first_row + offset - window_left) : 0; };
  auto end_key = [&](int last_row) {
    return bounded_right ? min_int(seqlen_k, last_row + offset + window_right + 1) : seqlen_k;
  };
  // Queries that see any of keys [k0, k1), and so the Q tiles to walk (each of them meets the band).
  const int q_lo = bounded_right ? max_int(0, k0 - offset - window_right) : 0;
  const int q_hi = bounded_left ? min_int(seqlen_q - 1, k1 - 1 - offset + window_left) : seqlen_q - 1;
  const int t_lo = q_lo / kBlockM, t_hi = q_lo <= q_hi ? q_hi / kBlockM : t_lo - 1;

  // ---- K, V rows of this lane's key as B operands (lane half h: dims 16t + 8h .. + 7), K^T for dQ
  const int64_t key_row = k_start + (key_valid ? key : 0);  // a key past the end reads row 0, zeroed
  const uint16_t* const k_head = static_cast<const uint16_t*>(f.k) + b * f.k_stride_b + head_kv * f.k_stride_h;
  const uint16_t* const v_head = static_cast<const uint16_t*>(f.v) + b * f.v_stride_b + head_kv * f.v_stride_h;
  auto load_key_row = [&](const uint16_t* head_base, int64_t stride_s, u32x4 (&frag)[D / 16]) {
#pragma unroll
    for (int t = 0; t < D / 16; ++t) frag[t] = load16_or_zero(head_base + key_row * stride_s + 16 * t + 8 * half, key_valid);
  };
  u32x4 k_frag[D / 16], v_frag[D / 16];
  if (T::kKeepKV) {
    load_key_row(k_head, f.k_stride_s, k_frag);
    load_key_row(v_head, f.v_stride_s, v_frag);
  }
  // dQ B operand of slot s: K[k0 + 16t + 8h + e][32 db + lane % 32], e = 0..7 packed as 8 x 16 bits.
  u32x4 kt_frag[T::kDqSlots][kBlockN / 16];
  // Gathered through a buffer over the block's keys (scalar base, one lane offset, a scalar offset per key, the
  // range check zeroing keys past the end): loop-invariant per-load addresses would otherwise take a VGPR each.
  const int block_rows = k1 - k0;
  const GlobalBuffer k_block = make_buffer(k_head + (k_start + k0) * f.k_stride_s,
                                           static_cast<uint32_t>(((block_rows - 1) * f.k_stride_s + D) * 2));
  auto load_kt = [&](const GlobalBuffer& buffer, int s) {
    // Per-tile gathers (D = 256) compute their 64 scalar offsets where they load (opaque), not once for the loop.
    const int64_t row_bytes = (T::kKeepKt ? f.k_stride_s : opaque(f.k_stride_s)) * 2;
    const int tile = wave + T::kWaves * s;
    const int dim = 32 * (tile % T::kDimBlocks) + lane % 32;
    const uint32_t lane_offset = static_cast<uint32_t>((8 * half * f.k_stride_s + dim) * 2);
#pragma unroll
    for (int t = 0; t < kBlockN / 16; ++t) {
      uint32_t e[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) e[i] = buffer_load2(buffer, lane_offset, static_cast<uint32_t>((16 * t + i) * row_bytes));
      kt_frag[s][t] = u32x4{pack16(e[0], e[1]), pack16(e[2], e[3]), pack16(e[4], e[5]), pack16(e[6], e[7])};
    }
  };
  if (T::kKeepKt) {
#pragma unroll
    for (int s = 0; s < T::kDqSlots; ++s) load_kt(k_block, s);
  }

  f32x16 dk[D / 32], dv[D / 32];
#pragma unroll
  for (int db = 0; db < D / 32; ++db) dk[db] = dv[db] = f32x16{};

  // Rows that see this lane's key: q_min <= q <= q_max (i + offset - window_left <= key <= i + offset +
  // window_right, solved for i), so the mask is one unsigned compare of q - q_min with q_span. A key past the end
  // gets q_min = kFar, which no row reaches; an unbounded side is kFar away.
  const int q_min = key_valid ? (bounded_right ? key - offset - window_right : -kFar) : kFar;
  const int q_max = bounded_left ? key - offset + window_left : kFar;
  const uint32_t q_span = key_valid ? static_cast<uint32_t>(q_max) - static_cast<uint32_t>(q_min) : 0u;
  const bool softcap = f.tanh_out > 0.0f;
  const float score_mul = f.score_mul;
  // d score / d(q.k) beyond the softcap factor: without softcap q was negated for a negative scale (q_sign), so
  // dK = |scale| dS^T q'; with softcap q is as given and the scale keeps its sign.
  const float dk_mul = softcap ? f.softmax_scale : __builtin_fabsf(f.softmax_scale);

  // ---- LDS operand addresses of this lane
  const LanePairAddress<T::kRowChunks> q_addr(T::kQ, T::query_of_row(lane % 32), half);
  const LanePairAddress<T::kRowChunks> do_addr(T::kDo, T::query_of_row(lane % 32), half);
  const LanePairAddress<T::kColChunks> qt_addr(T::kQt, contiguous_16(lane % 32), half);
  const LanePairAddress<T::kColChunks> dot_addr(T::kDot, contiguous_16(lane % 32), half);
  const LanePairAddress<T::kDsChunks> ds_addr(T::kDs, lane % 32, half);
  static_assert(T::ds_store_split_holds(), "dS write addresses: lane variant + immediate");
  uint32_t ds_lane[T::kDsVariants];
#pragma unroll
  for (int v = 0; v < T::kDsVariants; ++v) ds_lane[v] = T::ds_store_of(lane, wave, 0, T::ds_variant_register(v));

  const int q_tiles_max = T::q_tiles(f.seqlen_q);
  float* const dq_accum = static_cast<float*>(p.workspace);
  int32_t* const counters = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(p.workspace) +
                                                       bwd_dq_accum_bytes(f));

  for (int head = head_kv * group; head < (head_kv + 1) * group; ++head) {
    if (t_lo > t_hi) break;
    const BwdParams& head_params = reread_args(params);  // this head's fields (and the tile loop's), loaded here
    const BwdParams& p = head_params;
    const FwdParams& f = p.fwd;
    const uint16_t* const q_base = static_cast<const uint16_t*>(f.q) + b * f.q_stride_b + q_start * f.q_stride_s +
                                   head * f.q_stride_h;
    const uint16_t* const do_base = static_cast<const uint16_t*>(p.dout) + b * p.do_stride_b +
                                    q_start * p.do_stride_s + head * p.do_stride_h;
    const int64_t row_base = b * f.lse_stride_b + head * f.lse_stride_h + q_start;  // lse, delta, dQ rows

    // Global -> registers: rows past the end read row 0 of the sequence and are zeroed.
    auto load_tile = [&](const uint16_t* base, int64_t stride_s, int row0, uint32_t sign,
                         u32x4 (&staged)[T::kUnitLoads][4]) {
#pragma unroll
      for (int i = 0; i < T::kUnitLoads; ++i) {
        const int unit = tid + i * T::kThreads;
        if (unit >= T::kUnits) break;  // D = 96: part of a wave idles (no wave collective in here)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int row = row0 + 4 * T::unit_quad(unit) + r;
          const bool valid = row < seqlen_q;
          staged[i][r] = load16_or_zero(base + (valid ? row : 0) * stride_s + 8 * T::unit_oct(unit), valid) ^ sign;
        }
      }
    };
    auto store_tile = [&](uint32_t rows, uint32_t columns, const u32x4 (&staged)[T::kUnitLoads][4]) {
#pragma unroll
      for (int i = 0; i < T::kUnitLoads; ++i) {
        const int unit = tid + i * T::kThreads;
        if (unit >= T::kUnits) break;
#pragma unroll
        for (int r = 0; r < 4; ++r) lds_store16(lds, rows + T::row_store(unit, r), staged[i][r]);
        const uint32_t upper = static_cast<uint32_t>(T::column_swap(unit));  // 1: take the other dim of a word
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          const int w = c / 2;  // word of each row's 16 bytes holding dims c and c ^ 1
          // The chosen dim of two rows, packed; a shift by 0 or 16 rather than a select (which the compiler
          // turns into a branch per store when `upper` varies across the wave).
          const uint32_t shift = 16 * ((c & 1) ^ upper);
          auto column = [&](uint32_t row_a, uint32_t row_b) {
            return ((row_a >> shift) & 0xffffu) | ((row_b >> shift) << 16);
          };
          lds_store8(lds, columns + T::col_store(unit, c),
                     u32x2{column(staged[i][0][w], staged[i][1][w]), column(staged[i][2][w], staged[i][3][w])});
        }
      }
    };

    u32x4 staged_q[T::kUnitLoads][4], staged_do[T::kUnitLoads][4];
    load_tile(q_base, f.q_stride_s, t_lo * kBlockM, f.q_sign, staged_q);
    load_tile(do_base, p.do_stride_s, t_lo * kBlockM, 0u, staged_do);

    for (int t = t_lo; t <= t_hi; ++t) {
      // D >= 192 (no prefetch; K/V re-read per tile) reads the tile's fields per tile too: without that, D = 256
      // has no SGPR headroom at all. D <= 128 keeps the head's, so no scalar load delays its prefetch.
      const BwdParams& p = T::kPrefetch ? head_params : reread_args(params);
      const FwdParams& f = p.fwd;
      const int tile_q0 = t * kBlockM;
      store_tile(T::kQ, T::kQt, staged_q);
      store_tile(T::kDo, T::kDot, staged_do);

      // lse (log2 units; +inf for rows past the end or that saw no key, so P = 0) and delta of the query row
      // lane m % 32 stands for in each 32-row block; lane_value hands them to the lanes whose registers hold it.
      float lse_own[T::kRowBlocks], delta_own[T::kRowBlocks];
#pragma unroll
      for (int rb = 0; rb < T::kRowBlocks; ++rb) {
        const int q = tile_q0 + 32 * rb + T::query_of_row(lane % 32);
        const bool valid = q < seqlen_q;
        const int64_t row = row_base + (valid ? q : 0);
        const float lse = load_f32(f.lse + row);
        lse_own[rb] = valid && lse != -kInf ? lse * kLog2e : kInf;
        delta_own[rb] = valid ? load_f32(p.delta + row) : 0.0f;
      }
      block_barrier();  // the tile is in LDS

      const bool next = t < t_hi;
      if (T::kPrefetch && next) {
        load_tile(q_base, f.q_stride_s, tile_q0 + kBlockM, f.q_sign, staged_q);
        load_tile(do_base, p.do_stride_s, tile_q0 + kBlockM, 0u, staged_do);
      }

      // Does this wave's key range meet the tile's band? (wave-uniform)
      const int tile_last = min_int(tile_q0 + kBlockM, seqlen_q) - 1;
      const bool active = wave_k0 < min_int(k1, end_key(tile_last)) &&
                          wave_k0 + T::kKeysPerWave > first_key(tile_q0);
      u32x2 ds_frag[T::kRowBlocks][4];  // dS, packed: B operand of dK^T and the dQ tile's source
      if (active) {
        f32x16 s[T::kRowBlocks], dp[T::kRowBlocks];
#pragma unroll
        for (int rb = 0; rb < T::kRowBlocks; ++rb) s[rb] = dp[rb] = f32x16{};
        if (!T::kKeepKV) load_key_row(k_head, f.k_stride_s, k_frag);
#pragma unroll
        for (int t2 = 0; t2 < D / 16; ++t2) {
#pragma unroll
          for (int rb = 0; rb < T::kRowBlocks; ++rb) {
            const u32x4 a = lds_load16(lds, q_addr.at(rb, t2));
            s[rb] = mfma_32x32x8<E>(low8(a), low8(k_frag[t2]), s[rb]);
            s[rb] = mfma_32x32x8<E>(high8(a), high8(k_frag[t2]), s[rb]);
          }
        }
        if (!T::kKeepKV) {
          schedule_fence();  // V's registers are K's: its loads must not start before S's MFMAs are issued
          load_key_row(v_head, f.v_stride_s, v_frag);
        }
#pragma unroll
        for (int t2 = 0; t2 < D / 16; ++t2) {
#pragma unroll
          for (int rb = 0; rb < T::kRowBlocks; ++rb) {
            const u32x4 a = lds_load16(lds, do_addr.at(rb, t2));
            dp[rb] = mfma_32x32x8<E>(low8(a), low8(v_frag[t2]), dp[rb]);
            dp[rb] = mfma_32x32x8<E>(high8(a), high8(v_frag[t2]), dp[rb]);
          }
        }

        // Masks only where the tile cuts the sequence end or the band of this wave's keys.
        const bool masked = wave_k0 + T::kKeysPerWave > seqlen_k ||
                            (bounded_right && wave_k0 + T::kKeysPerWave - 1 > tile_q0 + offset + window_right) ||
                            (bounded_left && wave_k0 < tile_q0 + kBlockM - 1 + offset - window_left);
        u32x2 p_frag[T::kRowBlocks][4];  // P, packed: B operand of dV^T
#pragma unroll
        for (int rb = 0; rb < T::kRowBlocks; ++rb) {
          // One wave-uniform branch per option, each around a whole loop (a test per element would split the
          // unrolled code into a basic block per element).
          float x[16], dscale[16], pr[16], dsr[16];
#pragma unroll
          for (int r = 0; r < 16; ++r) x[r] = s[rb][r];
          if (softcap) {
            // Read here (opaque): the products pair up into v_pk_mul_f32, and clang would otherwise hoist a
            // {tanh_out, tanh_out} SGPR pair per instruction (7-8 per row block) out of the loops.
            const float tanh_in = opaque(f.tanh_in), tanh_out = opaque(f.tanh_out);
#pragma unroll
            for (int r = 0; r < 16; ++r) {
              const float th = tanh_fast(x[r] * tanh_in);
              x[r] = tanh_out * th;
              dscale[r] = 1.0f - th * th;
            }
          }
          if (masked) {
            // q of register r = q_first + a constant (query_of_row(row_of_register(h, r)) = c(r) + 8h)
            const int q_first = tile_q0 + 32 * rb + 8 * half;
#pragma unroll
            for (int r = 0; r < 16; ++r) {
              const int q = q_first + T::query_of_row(T::row_of_register(0, r));
              x[r] = static_cast<uint32_t>(q) - static_cast<uint32_t>(q_min) <= q_span ? x[r] : -kInf;
            }
          }
          // S-register r (row 8(r/4) + 4h + r%4) of every lane needs the lse / delta that lane row holds.
#pragma unroll
          for (int r = 0; r < 16; ++r) {
            const int source = T::row_of_register(half, r);
            pr[r] = exp2_fast(__builtin_fmaf(x[r], score_mul, -lane_value(lse_own[rb], source)));
            dsr[r] = pr[r] * (dp[rb][r] - lane_value(delta_own[rb], source));
          }
          if (softcap) {
#pragma unroll
            for (int r = 0; r < 16; ++r) dsr[r] *= dscale[r];
          }
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            p_frag[rb][j] = u32x2{E::pack2_fast(pr[4 * j], pr[4 * j + 1]), E::pack2_fast(pr[4 * j + 2], pr[4 * j + 3])};
            ds_frag[rb][j] = u32x2{E::pack2_fast(dsr[4 * j], dsr[4 * j + 1]),
                                   E::pack2_fast(dsr[4 * j + 2], dsr[4 * j + 3])};
          }
        }

        // dV^T += dO^T . P and dK^T += Q^T . dS: k-steps 2c, 2c + 1 of row block rb are queries 32rb + 16c + 8h + 0..7
#pragma unroll
        for (int db = 0; db < D / 32; ++db) {
#pragma unroll
          for (int rb = 0; rb < T::kRowBlocks; ++rb) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const u32x4 a = lds_load16(lds, dot_addr.at(db, 2 * rb + c));
              dv[db] = mfma_32x32x8<E>(low8(a), p_frag[rb][2 * c], dv[db]);
              dv[db] = mfma_32x32x8<E>(high8(a), p_frag[rb][2 * c + 1], dv[db]);
            }
          }
        }
#pragma unroll
        for (int db = 0; db < D / 32; ++db) {
#pragma unroll
          for (int rb = 0; rb < T::kRowBlocks; ++rb) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const u32x4 a = lds_load16(lds, qt_addr.at(db, 2 * rb + c));
              dk[db] = mfma_32x32x8<E>(low8(a), ds_frag[rb][2 * c], dk[db]);
              dk[db] = mfma_32x32x8<E>(high8(a), ds_frag[rb][2 * c + 1], dk[db]);
            }
          }
        }
      } else {
#pragma unroll
        for (int rb = 0; rb < T::kRowBlocks; ++rb) {
#pragma unroll
          for (int j = 0; j < 4; ++j) ds_frag[rb][j] = u32x2{0u, 0u};
        }
      }
      block_barrier();  // every wave is done with Q and dO: dS goes over them

#pragma unroll
      for (int rb = 0; rb < T::kRowBlocks; ++rb) {
#pragma unroll
        for (int r = 0; r < 16; ++r) {
          const uint32_t word = ds_frag[rb][r / 4][(r % 4) / 2];
          lds_store2(lds, ds_lane[T::ds_variant(r)] + T::ds_store_step(rb, r), r % 2 ? word >> 16 : word);
        }
      }
      if (kFault != 1) block_barrier();  // dS is visible

      // dQ tile (rb, db) of each slot: 32 rows x 32 dims, contraction over the block's keys
      f32x16 dq[T::kDqSlots];
#pragma unroll
      for (int s = 0; s < T::kDqSlots; ++s) {
        const int tile = wave + T::kWaves * s;
        dq[s] = f32x16{};
        if (!T::kKeepKt) {
          schedule_fence();  // one slot's K^T at a time, loaded after S, dP (and the previous slot) are dead
          load_kt(k_block, s);
        }
        if (tile < T::kDqTiles) {
          const int rb = tile / T::kDimBlocks;
#pragma unroll
          for (int t2 = 0; t2 < kBlockN / 16; ++t2) {
            const u32x4 a = lds_load16(lds, ds_addr.at(rb, t2));
            dq[s] = mfma_32x32x8<E>(low8(a), low8(kt_frag[s][t2]), dq[s]);
            dq[s] = mfma_32x32x8<E>(high8(a), high8(kt_frag[s][t2]), dq[s]);
          }
        }
      }
      int32_t* const counter = counters + (static_cast<int64_t>(b) * f.heads_q + head) * q_tiles_max + t;
      const int rank = n - first_key(tile_q0) / kBlockN;  // K/V blocks before this one that touch the tile
      if (p.deterministic) {
        if (tid == 0 && kFault != 2) wait_counter(counter, rank);
        block_barrier_global();
      }
#pragma unroll
      for (int s = 0; s < T::kDqSlots; ++s) {
        const int tile = wave + T::kWaves * s;
        if (tile < T::kDqTiles) {
          // Wave-uniform base (an SGPR pair) + a 32-bit lane offset + the register's row as an immediate.
          const int rb = tile / T::kDimBlocks, db = tile % T::kDimBlocks;
          float* const base = dq_accum + (row_base + tile_q0 + 32 * rb) * D + 32 * db;
          const int rows_left = seqlen_q - (tile_q0 + 32 * rb + 4 * half);  // rows of this lane half in the sequence
          const uint32_t lane_offset = static_cast<uint32_t>(4 * half * D + lane % 32);
#pragma unroll
          for (int r = 0; r < 16; ++r) {
            const int row = T::row_of_register(0, r);  // + 4 * half, in lane_offset
            if (row < rows_left) atomic_add_f32(base + lane_offset + row * D, dq[s][r]);
          }
        }
      }
      if (p.deterministic) {
        block_barrier_global();  // every add of the block is done
        if (tid == 0) release_counter(counter, rank + 1);
      }
      if (!T::kPrefetch && next) {
        load_tile(q_base, f.q_stride_s, tile_q0 + kBlockM, f.q_sign, staged_q);
        load_tile(do_base, p.do_stride_s, tile_q0 + kBlockM, 0u, staged_do);
      }
      block_barrier();  // every wave is done with dS, Q^T and dO^T: the next tile may be stored
    }
  }

  // ---- epilogue: lane half h writes dims 32db + 16h .. + 15 of its key's dK and dV rows
  if (key_valid) {
    const BwdParams& p = reread_args(params);  // dk, dv and their strides: loaded here, not held through the loops
    uint16_t* const dk_row = static_cast<uint16_t*>(p.dk) + b * p.dk_stride_b + (k_start + key) * p.dk_stride_s +
                             head_kv * p.dk_stride_h;
    uint16_t* const dv_row = static_cast<uint16_t*>(p.dv) + b * p.dv_stride_b + (k_start + key) * p.dv_stride_s +
                             head_kv * p.dv_stride_h;
#pragma unroll
    for (int db = 0; db < D / 32; ++db) {
#pragma unroll
      for (int part = 0; part < 2; ++part) {
        u32x4 packed_k, packed_v;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          const int r = 8 * part + 2 * w;
          packed_k[w] = pack16(E::from_float(dk[db][r] * dk_mul), E::from_float(dk[db][r + 1] * dk_mul));
          packed_v[w] = pack16(E::from_float(dv[db][r]), E::from_float(dv[db][r + 1]));
        }
        store16(dk_row + 32 * db + 16 * half + 8 * part, packed_k);
        store16(dv_row + 32 * db + 16 * half + 8 * part, packed_v);
      }
    }
  }
}

// ---- dQ postprocess: dq = softmax_scale * (fp32 accumulator), rounded to E; every row of every sequence.
constexpr int kDqPostRows = 64;     // rows per block: 64 x D / 8 16-byte outputs over 256 threads
constexpr int kDqPostThreads = 256;

template <int D, class E>
FLASHCORE_GLOBAL void FLASHCORE_LAUNCH_BOUNDS(kDqPostThreads, 1) bwd_dq_kernel(const BwdParams p) {
  const FwdParams& f = p.fwd;
  const int b = block_id_z(), head = block_id_y();
  int q_start = 0, seqlen_q = f.seqlen_q;
  if (f.cu_seqlens_q != nullptr) {
    q_start = load_i32(f.cu_seqlens_q + b);
    seqlen_q = load_i32(f.cu_seqlens_q + b + 1) - q_start;
  }
  const float* const accum = static_cast<const float*>(p.workspace);
  const int64_t row_base = b * f.lse_stride_b + head * f.lse_stride_h + q_start;
  for (int c = thread_id(); c < kDqPostRows * D / 8; c += kDqPostThreads) {
    const int q = block_id_x() * kDqPostRows + c / (D / 8), chunk = c % (D / 8);
    if (q >= seqlen_q) continue;
    const float* const src = accum + (row_base + q) * D + 8 * chunk;
    const u32x4 lo = load16_or_zero(src, true), hi = load16_or_zero(src + 4, true);
    u32x4 packed;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const u32x4& v = w < 2 ? lo : hi;
      packed[w] = pack16(E::from_float(bit_cast<float>(v[2 * (w % 2)]) * f.softmax_scale),
                         E::from_float(bit_cast<float>(v[2 * (w % 2) + 1]) * f.softmax_scale));
    }
    store16(static_cast<uint16_t*>(p.dq) + b * p.dq_stride_b + (q_start + q) * p.dq_stride_s + head * p.dq_stride_h +
                8 * chunk,
            packed);
  }
}

}  // namespace flashcore::gfx942

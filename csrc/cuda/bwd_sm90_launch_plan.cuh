// Host side of one sm_90a backward launch, without torch or the CUDA runtime: the workspace layout, the tensor
// maps, the kernel arguments, the persistent grid for a given SM count and the dq postprocess's grid. The
// extension's launch (bwd_sm90.cu) and the CPU model's harness (csrc/cuda_emu/harness_bwd.cpp) both call plan_bwd,
// so the model runs the real host code; errors come back as text for each to report its way.
#pragma once

#include <cstdint>
#include <string>

#include "../bwd_params.h"
#include "bwd_sm90_dq_convert.cuh"
#include "bwd_sm90_kernel.cuh"

namespace flashcore::sm90::bwd {

// ---- workspace: [dq_accum | semaphores (deterministic) | item counter] --------------------------------------------
inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

inline int32_t block_m_for(int32_t head_dim) { return tile_row(head_dim).block_m; }

inline int64_t dq_accum_bytes(const BwdParams& p) {
  const int64_t values = p.total_q * p.fwd.heads_q * p.fwd.head_dim;
  return round_up(values * static_cast<int64_t>(sizeof(float)), kBwdWorkspaceAlign);
}

inline int32_t m_tiles(const BwdParams& p) {
  const int32_t bm = block_m_for(p.fwd.head_dim);
  return (p.fwd.seqlen_q + bm - 1) / bm;
}

inline int64_t semaphore_bytes(const BwdParams& p) {
  if (!p.deterministic) return 0;
  return int64_t(p.fwd.batch) * p.fwd.heads_q * m_tiles(p) * static_cast<int64_t>(sizeof(int32_t));
}

// The dynamic schedule's item counter (tile_handoff.h), after the semaphores: the workspace is zero-filled per call
// (at::zeros on the launch stream, captured into CUDA graphs as a memset), so the counter starts at 0 with no
// memset of its own and nothing outlives a launch. 4 bytes always: the launch decides whether it is used.
constexpr int64_t kItemCounterBytes = sizeof(int32_t);

inline int64_t workspace_bytes(const BwdParams& p) {
  return dq_accum_bytes(p) + semaphore_bytes(p) + kItemCounterBytes;
}

// ---- tensor maps -----------------------------------------------------------------------------------------------
// 4D (head_dim, heads, rows, batch), innermost first; box (64, 1, rows_per_box, 1) lands as one [rows][64]
// column block with the 128-byte swizzle the wgmma descriptors assume. Varlen: the flat (total, heads, head_dim)
// tensor with a unit batch. Columns past head_dim (D = 96's second block) and rows past the tensor read as 0.
inline std::string encode_qkv_map(CUtensorMap* map, const BwdParams& p, const void* base, int32_t heads,
                                  int64_t rows_dense, int64_t rows_total, int64_t stride_b, int64_t stride_s,
                                  int64_t stride_h, uint32_t box_rows, const char* name) {
  const bool varlen = p.fwd.cu_seqlens_q != nullptr;
  const uint64_t elem = kElemBytes;
  const uint64_t rows = static_cast<uint64_t>(varlen ? rows_total : rows_dense);
  const uint64_t dims[4] = {static_cast<uint64_t>(p.fwd.head_dim), static_cast<uint64_t>(heads), rows,
                            varlen ? 1u : static_cast<uint64_t>(p.fwd.batch)};
  const uint64_t strides[3] = {static_cast<uint64_t>(stride_h) * elem, static_cast<uint64_t>(stride_s) * elem,
                               varlen ? rows * static_cast<uint64_t>(stride_s) * elem
                                      : static_cast<uint64_t>(stride_b) * elem};
  const uint32_t box[4] = {static_cast<uint32_t>(kColBlock), 1, box_rows, 1};
  const TmaElem type = p.fwd.dtype == HalfType::kBf16 ? TmaElem::kBf16 : TmaElem::kFp16;
  const std::string problem = encode_tensor_map(map, type, 4, base, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B);
  return problem.empty() ? problem : std::string("cannot describe ") + name + " to TMA: " + problem;
}

// LSE or delta, (batch, heads_q, seqlen_q) or (heads_q, total_q) fp32 contiguous, as a flat 2D map {values, 1}:
// a tile's rows are a box of 64 values at any flat offset (varlen rows start anywhere, TMA needs no alignment of
// the box start), values past the end read as 0.
inline std::string encode_row_stat_map(CUtensorMap* map, const float* base, int64_t values, uint32_t box_rows,
                                       const char* name) {
  const uint64_t dims[2] = {static_cast<uint64_t>(values), 1};
  const uint64_t strides[1] = {static_cast<uint64_t>(round_up(values * static_cast<int64_t>(sizeof(float)), 16))};
  const uint32_t box[2] = {box_rows, 1};
  const std::string problem = encode_tensor_map(map, TmaElem::kFp32, 2, base, dims, strides, box,
                                                CU_TENSOR_MAP_SWIZZLE_NONE);
  return problem.empty() ? problem : std::string("cannot describe ") + name + " to TMA: " + problem;
}

// dq_accum (total_q, heads_q, head_dim) fp32 as a 3D map {head_dim, heads_q, total_q} for the consumers' dQ
// reduce-adds: box {32, 1, 64} = one staging box (64 queries x 32 columns, 128-byte rows, 128B swizzle). Rows
// past total_q are clipped by the map; a tile's rows past its sequence's end (the next sequence's or batch's rows)
// get exact zeros.
inline std::string encode_dq_accum_map(CUtensorMap* map, const BwdParams& p, float* dq_accum, uint32_t box_rows) {
  const uint64_t elem = sizeof(float);
  const uint64_t dims[3] = {static_cast<uint64_t>(p.fwd.head_dim), static_cast<uint64_t>(p.fwd.heads_q),
                            static_cast<uint64_t>(p.total_q)};
  const uint64_t strides[2] = {dims[0] * elem, dims[0] * dims[1] * elem};
  const uint32_t box[3] = {static_cast<uint32_t>(kDqBoxCols), 1, box_rows};
  const std::string problem =
      encode_tensor_map(map, TmaElem::kFp32, 3, dq_accum, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B);
  return problem.empty() ? problem : std::string("cannot describe the dq workspace to TMA: ") + problem;
}

// ---- the plan --------------------------------------------------------------------------------------------------
struct BwdLaunchPlan {
  CUtensorMap tmap_q, tmap_k, tmap_v, tmap_do, tmap_lse, tmap_delta;
  CUtensorMap tmap_dq;  // dq_accum for the dQ reduce-adds (C::kDqByTma; unused, zero, otherwise)
  BwdArgs args;         // dq_accum, semaphores and item_counter point into p.workspace
  int blocks;           // main kernel: persistent CTAs, one per SM at most; 0: no work item
  int threads;          // main kernel, per CTA
  int smem_bytes;       // main kernel, dynamic shared memory per CTA
  int64_t convert_vecs;  // postprocess: 8-value vectors of dq; 0: nothing to convert
  int convert_blocks;    // postprocess CTAs of kConvertThreads (grid-stride loop)
};

// The plan for params p (p.workspace: workspace_bytes(p) zero-filled bytes) on num_sms SMs; static_schedule: the
// round-robin instead of the dynamic schedule (FLASHCORE_SM90_STATIC_SCHEDULE=1). Returns "" or the error.
template <int kHeadDim>
std::string plan_bwd(const BwdParams& p, int num_sms, bool static_schedule, BwdLaunchPlan& plan) {
  using C = BwdConfig<kHeadDim>;
  static_assert(smem_layout_ok<C>(), "a swizzled tile is not 1024-byte aligned");
  static_assert(smem_bytes<C>() <= kMaxSmemPerBlock, "shared memory over the 227 KB per-block limit");
  static_assert(frag::stmatrix_sw128_conflict_free(), "P / dS stmatrix would have bank conflicts");
  static_assert(frag::acc_layout_is_consistent<C::kSQueries>(), "accumulator layout formulas disagree");
  plan = BwdLaunchPlan{};
  if (p.workspace == nullptr) return "no workspace";
  const FwdParams& f = p.fwd;
  std::string error = encode_qkv_map(&plan.tmap_q, p, f.q, f.heads_q, f.seqlen_q, p.total_q, f.q_stride_b,
                                     f.q_stride_s, f.q_stride_h, C::kBlockM, "q");
  if (error.empty()) {
    error = encode_qkv_map(&plan.tmap_do, p, p.dout, f.heads_q, f.seqlen_q, p.total_q, p.do_stride_b,
                           p.do_stride_s, p.do_stride_h, C::kBlockM, "dout");
  }
  if (error.empty()) {
    error = encode_qkv_map(&plan.tmap_k, p, f.k, f.heads_kv, f.seqlen_k, p.total_k, f.k_stride_b, f.k_stride_s,
                           f.k_stride_h, C::kBlockN, "k");
  }
  if (error.empty()) {
    error = encode_qkv_map(&plan.tmap_v, p, f.v, f.heads_kv, f.seqlen_k, p.total_k, f.v_stride_b, f.v_stride_s,
                           f.v_stride_h, C::kBlockN, "v");
  }
  if (!error.empty()) return error;

  const bool varlen = f.cu_seqlens_q != nullptr;
  const int64_t stat_values = varlen ? int64_t(f.heads_q) * p.total_q : int64_t(f.batch) * f.heads_q * f.seqlen_q;
  if (stat_values >= (int64_t(1) << 31)) {
    return "lse has " + std::to_string(stat_values) + " values; the kernel indexes it in int32 (at most 2^31 - 1)";
  }
  error = encode_row_stat_map(&plan.tmap_lse, f.lse, stat_values, C::kBlockM, "lse");
  if (error.empty()) error = encode_row_stat_map(&plan.tmap_delta, p.delta, stat_values, C::kBlockM, "delta");
  if (!error.empty()) return error;

  BwdArgs& a = plan.args;
  a.lse = f.lse, a.delta = p.delta;
  a.lse_stride_b = f.lse_stride_b, a.lse_stride_h = f.lse_stride_h;
  a.cu_seqlens_q = f.cu_seqlens_q, a.cu_seqlens_k = f.cu_seqlens_k;
  a.dq_accum = static_cast<float*>(p.workspace);
  if constexpr (C::kDqByTma) {
    error = encode_dq_accum_map(&plan.tmap_dq, p, a.dq_accum, C::kBlockM);
    if (!error.empty()) return error;
  }
  a.semaphores = p.deterministic
                     ? reinterpret_cast<int32_t*>(static_cast<uint8_t*>(p.workspace) + dq_accum_bytes(p))
                     : nullptr;
  a.dk = p.dk, a.dv = p.dv;
  a.dk_stride_b = p.dk_stride_b, a.dk_stride_s = p.dk_stride_s, a.dk_stride_h = p.dk_stride_h;
  a.dv_stride_b = p.dv_stride_b, a.dv_stride_s = p.dv_stride_s, a.dv_stride_h = p.dv_stride_h;
  a.heads_q = f.heads_q, a.heads_kv = f.heads_kv, a.head_dim = f.head_dim;
  a.seqlen_q = f.seqlen_q, a.seqlen_k = f.seqlen_k;
  a.window_left = f.window_left, a.window_right = f.window_right;
  a.m_tiles = m_tiles(p);
  a.softcap = f.softcap > 0.0f ? 1 : 0;
  a.score_mul = a.softcap ? 1.0f : f.softmax_scale * kLog2e;  // with softcap the kernel scales in its tanh pass
  a.tanh_in = a.softcap ? f.softmax_scale / f.softcap : 0.0f;
  a.softcap_log2 = a.softcap ? f.softcap * kLog2e : 0.0f;
  a.inv_softcap_log2 = a.softcap ? 1.0f / a.softcap_log2 : 0.0f;
  a.dscale = f.softmax_scale;
  a.deterministic = p.deterministic ? 1 : 0;
  a.grid.n_blocks = (f.seqlen_k + C::kBlockN - 1) / C::kBlockN;
  a.grid.heads_kv = f.heads_kv;
  a.grid.batch = f.batch;

  // Persistent: at most one resident CTA per SM (ctas_per_sm = 1), so every CTA the deterministic mode waits on
  // is running (bwd_sm90_plan.h: no deadlock, static or dynamic schedule).
  const int64_t items = work_items(a.grid);
  if (items >= (int64_t(1) << 31) || p.total_q >= (int64_t(1) << 31) || p.total_k >= (int64_t(1) << 31)) {
    return std::to_string(items) + " K/V blocks, " + std::to_string(p.total_q) + " query rows, " +
           std::to_string(p.total_k) + " key rows; the kernel indexes them in int32 (at most 2^31 - 1 each)";
  }
  const int64_t resident = int64_t(num_sms) * C::kRow.ctas_per_sm;
  plan.blocks = static_cast<int>(items < resident ? items : resident);
  plan.threads = C::kThreads;
  plan.smem_bytes = smem_bytes<C>();
  // Dynamic schedule unless one wave holds every item (nothing to balance) or the static one is asked for.
  if (items > plan.blocks && !static_schedule) {
    a.item_counter = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(p.workspace) + dq_accum_bytes(p) +
                                                semaphore_bytes(p));
  }

  plan.convert_vecs = p.total_q * f.heads_q * f.head_dim / kConvertVec;  // head_dim % 8 == 0
  const int64_t wanted = (plan.convert_vecs + kConvertThreads - 1) / kConvertThreads;
  const int64_t cap = int64_t(num_sms) * kConvertBlocksPerSm;
  plan.convert_blocks = static_cast<int>(wanted < cap ? wanted : cap);
  return "";
}

}  // namespace flashcore::sm90::bwd

// Host side of one sm_90a GEMM launch, without torch or the CUDA runtime: the tensor maps of A, B and C and the
// persistent grid for a given SM count. The extension's launch (gemm_sm90.cu) and the CPU model's harness
// (csrc/cuda_emu/harness_gemm.cpp) both call plan_gemm; errors come back as text.
#pragma once

#include <cstdint>
#include <string>

#include "../gemm_params.h"
#include "gemm_sm90_kernel.cuh"

namespace flashcore::sm90::gemm_bf16 {

struct GemmLaunchPlan {
  CUtensorMap tmap_a, tmap_b, tmap_c;
  GemmGrid grid;
  int blocks;      // persistent CTAs, one per SM at most (at 227 KB of shared memory only one fits)
  int threads;
  int smem_bytes;
};

// A 2D bf16 map (cols contiguous, rows ld elements apart) with boxes of box_cols x box_rows, 128B swizzle (what
// kmajor_sw128_desc / swizzle128_offset assume). Returns "" or what is wrong, naming the tensor.
inline std::string encode_matrix_map(CUtensorMap* map, const void* base, int64_t rows, int64_t cols, int64_t ld,
                                     uint32_t box_cols, uint32_t box_rows, const char* name) {
  const uint64_t dims[2] = {static_cast<uint64_t>(cols), static_cast<uint64_t>(rows)};
  const uint64_t strides[1] = {static_cast<uint64_t>(ld) * kElemBytes};
  const uint32_t box[2] = {box_cols, box_rows};
  const std::string problem = encode_tensor_map(map, TmaElem::kBf16, 2, base, dims, strides, box,
                                                CU_TENSOR_MAP_SWIZZLE_128B);
  return problem.empty() ? problem : std::string("cannot describe ") + name + " to TMA: " + problem;
}

inline std::string plan_gemm(const GemmParams& p, int num_sms, GemmLaunchPlan& plan) {
  plan = GemmLaunchPlan{};
  std::string error = encode_matrix_map(&plan.tmap_a, p.a, p.m, p.k, p.lda, kBlockK, kBlockM, "a (m, k)");
  if (error.empty()) error = encode_matrix_map(&plan.tmap_b, p.b, p.n, p.k, p.ldb, kBlockK, kBlockN, "b (n, k)");
  if (error.empty()) {
    error = encode_matrix_map(&plan.tmap_c, p.c, p.m, p.n, p.ldc, kEpiCols, kEpiRows, "the output (m, n)");
  }
  if (!error.empty()) return error;
  GemmGrid& grid = plan.grid;
  grid.tiles_m = static_cast<int32_t>((p.m + kBlockM - 1) / kBlockM);
  grid.tiles_n = static_cast<int32_t>((p.n + kBlockN - 1) / kBlockN);
  const int64_t num_tiles = static_cast<int64_t>(grid.tiles_m) * grid.tiles_n;
  if (num_tiles > INT32_MAX) return std::to_string(num_tiles) + " output tiles of 128 x 256; at most 2^31 - 1";
  grid.num_tiles = static_cast<int32_t>(num_tiles);
  grid.k_steps = static_cast<int32_t>((p.k + kBlockK - 1) / kBlockK);
  plan.blocks = static_cast<int>(num_tiles < num_sms ? num_tiles : num_sms);
  plan.threads = kThreads;
  plan.smem_bytes = kSmemBytes;
  return "";
}

}  // namespace flashcore::sm90::gemm_bf16

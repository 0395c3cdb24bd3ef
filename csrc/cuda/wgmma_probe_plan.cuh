// Host side of the wgmma probes (wgmma_probe_kernel.cuh), without torch or the CUDA runtime: argument checks, the
// tensor maps, shared-memory size and which instantiation runs. The extension's launch (wgmma_probe.cu) and the CPU
// model's harness (csrc/cuda_emu/harness_ptx.cpp) both call these; errors come back as text.
#pragma once

#include <cstdint>
#include <string>

#include "../wgmma_probe_params.h"
#include "wgmma_probe_kernel.cuh"

namespace flashcore::sm90::wgmma_probe {

using ProbeKernel = void (*)(CUtensorMap, CUtensorMap, const void*, ProbeGeom, float*);
using ChainKernel = void (*)(CUtensorMap, CUtensorMap, CUtensorMap, float*, float*);

constexpr int kMaxK = 2 * static_cast<int>(kPanelCols);  // two K-major panels: the panel step of the descriptors
constexpr int kMaxBCols = 256;                            // the widest head dim: four MN-major panels
constexpr int kChunkCols = kSwizzleChunk / 2;             // MN-major pieces start on whole 16-byte chunks

struct ProbePlan {
  CUtensorMap map_a, map_b;
  ProbeGeom geom;
  int smem_bytes;
  ProbeKernel kernel;
};

struct ChainPlan {
  CUtensorMap map_q, map_k, map_v;
  int smem_bytes;
  ChainKernel kernel;
};

// A 2D map of a contiguous row-major [rows][cols] 16-bit matrix, boxes of 64 columns x `rows` rows, 128B swizzle:
// how the kernels bring every operand in.
inline std::string panel_map(CUtensorMap* map, bool bf16, const void* base, int cols, int rows, const char* name) {
  const uint64_t dims[2] = {static_cast<uint64_t>(cols), static_cast<uint64_t>(rows)};
  const uint64_t strides[1] = {static_cast<uint64_t>(cols) * 2};
  const uint32_t box[2] = {kPanelCols, static_cast<uint32_t>(rows)};
  const std::string problem = encode_tensor_map(map, bf16 ? TmaElem::kBf16 : TmaElem::kFp16, 2, base, dims, strides,
                                                box, CU_TENSOR_MAP_SWIZZLE_128B);
  return problem.empty() ? problem : std::string("cannot describe ") + name + " to TMA: " + problem;
}

// The instantiations: every N of wgmma.cuh and wgmma_mn.cuh, in the four forms of the header comment.
template <int N, MmaType kType>
ProbeKernel select_form(int trans_a, int trans_b, bool reg_a) {
  if (reg_a) return trans_a == 0 && trans_b == 1 ? &wgmma_probe_kernel<N, kType, 0, 1, true> : nullptr;
  if (trans_a == 0 && trans_b == 0) return &wgmma_probe_kernel<N, kType, 0, 0, false>;
  if (trans_a == 0 && trans_b == 1) return &wgmma_probe_kernel<N, kType, 0, 1, false>;
  if (trans_a == 1 && trans_b == 1) return &wgmma_probe_kernel<N, kType, 1, 1, false>;
  return nullptr;  // MN-major A with K-major B: no kernel multiplies that way
}

template <int N>
ProbeKernel select_type(bool bf16, int trans_a, int trans_b, bool reg_a) {
  return bf16 ? select_form<N, MmaType::kBf16>(trans_a, trans_b, reg_a)
              : select_form<N, MmaType::kF16>(trans_a, trans_b, reg_a);
}

inline ProbeKernel select_probe(int n, bool bf16, int trans_a, int trans_b, bool reg_a) {
  switch (n) {
    case 32: return select_type<32>(bf16, trans_a, trans_b, reg_a);
    case 64: return select_type<64>(bf16, trans_a, trans_b, reg_a);
    case 80: return select_type<80>(bf16, trans_a, trans_b, reg_a);
    case 96: return select_type<96>(bf16, trans_a, trans_b, reg_a);
    case 112: return select_type<112>(bf16, trans_a, trans_b, reg_a);
    case 128: return select_type<128>(bf16, trans_a, trans_b, reg_a);
    case 176: return select_type<176>(bf16, trans_a, trans_b, reg_a);
    case 192: return select_type<192>(bf16, trans_a, trans_b, reg_a);
    case 256: return select_type<256>(bf16, trans_a, trans_b, reg_a);
    default: return nullptr;
  }
}

inline std::string plan_wgmma_probe(const WgmmaProbeParams& p, ProbePlan& plan) {
  plan = ProbePlan{};
  plan.kernel = select_probe(p.n, p.bf16, p.trans_a, p.trans_b, p.reg_a);
  if (plan.kernel == nullptr) {
    return "no probe for n = " + std::to_string(p.n) + ", trans (a, b) = (" + std::to_string(p.trans_a) + ", " +
           std::to_string(p.trans_b) + "), register A = " + std::to_string(p.reg_a) +
           ": n is a wgmma N the kernels use (32, 64, 80, 96, 112, 128, 176, 192, 256) and the form one they use";
  }
  if (p.k < kWgmmaK || p.k > kMaxK || p.k % kWgmmaK != 0) {
    return "k = " + std::to_string(p.k) + ": expected a multiple of 16 in [16, " + std::to_string(kMaxK) + "]";
  }
  if (p.trans_b && (p.b_cols % kChunkCols != 0 || p.b_cols > kMaxBCols || p.b_col0 < 0 ||
                    p.b_col0 % kChunkCols != 0 || p.b_col0 + p.n > p.b_cols)) {
    return "MN-major b: b_cols = " + std::to_string(p.b_cols) + ", b_col0 = " + std::to_string(p.b_col0) +
           ": expected b_cols a multiple of 8 up to 256 and [b_col0, b_col0 + n) inside it, b_col0 a multiple of 8";
  }
  if (p.trans_b && p.b_col0 % static_cast<int>(kPanelCols) != 0 &&
      p.b_col0 % static_cast<int>(kPanelCols) + p.n > static_cast<int>(kPanelCols)) {
    return "MN-major b: a piece that starts inside a 64-column panel must end in it (b_col0 = " +
           std::to_string(p.b_col0) + ", n = " + std::to_string(p.n) + ")";
  }
  ProbeGeom& g = plan.geom;
  g.k = p.k;
  g.b_col0 = p.trans_b ? p.b_col0 : 0;
  g.lda = p.k;
  if (p.mn_lbo >= 0 && (p.mn_lbo % 16 != 0 || p.mn_sbo < 0 || p.mn_sbo % 16 != 0 || p.mn_base_offset < 0 ||
                        p.mn_base_offset > 7)) {
    return "MN-major descriptor override: lbo = " + std::to_string(p.mn_lbo) + ", sbo = " + std::to_string(p.mn_sbo) +
           ", base offset = " + std::to_string(p.mn_base_offset) +
           ": expected multiples of 16 bytes and a base offset in [0, 7]";
  }
  g.mn_lbo = p.mn_lbo;
  g.mn_sbo = p.mn_sbo;
  g.mn_base_offset = p.mn_base_offset;
  const int a_rows = p.trans_a ? p.k : frag::kWgmmaM, a_cols = p.trans_a ? frag::kWgmmaM : p.k;
  const int b_rows = p.trans_b ? p.k : p.n, b_cols = p.trans_b ? p.b_cols : p.k;
  std::string error = panel_map(&plan.map_a, p.bf16, p.a, a_cols, a_rows, "a");
  if (error.empty()) error = panel_map(&plan.map_b, p.bf16, p.b, b_cols, b_rows, "b");
  if (!error.empty()) return error;
  g.a_panels = (a_cols + kPanelCols - 1) / kPanelCols;
  g.b_panels = (b_cols + kPanelCols - 1) / kPanelCols;
  g.a_panel_bytes = a_rows * kRowBytes;
  g.b_panel_bytes = b_rows * kRowBytes;
  g.tx_bytes = g.a_panels * g.a_panel_bytes + g.b_panels * g.b_panel_bytes;
  plan.smem_bytes = static_cast<int>(kTileBase + g.tx_bytes);
  return "";
}

// (NS, D) pairs: every N of wgmma.cuh appears as S's N, and every head dim as O's N.
#define FC_WGMMA_CHAIN_PAIRS(X) X(64, 64) X(80, 96) X(96, 128) X(112, 192) X(128, 128) X(176, 256) X(192, 96) X(256, 64)

inline std::string plan_wgmma_chain(const WgmmaChainParams& p, ChainPlan& plan) {
  plan = ChainPlan{};
#define FC_CHAIN_CASE(NS, D)                                                                                   \
  if (p.ns == NS && p.d == D) {                                                                                \
    plan.kernel = p.bf16 ? &wgmma_probe_chain_kernel<NS, D, true> : &wgmma_probe_chain_kernel<NS, D, false>; \
  }
  FC_WGMMA_CHAIN_PAIRS(FC_CHAIN_CASE)
#undef FC_CHAIN_CASE
  if (plan.kernel == nullptr) {
    return "no chain probe for (ns, d) = (" + std::to_string(p.ns) + ", " + std::to_string(p.d) +
           "): expected one of (64, 64), (80, 96), (96, 128), (112, 192), (128, 128), (176, 256), (192, 96), (256, 64)";
  }
  std::string error = panel_map(&plan.map_q, p.bf16, p.q, p.d, frag::kWgmmaM, "q");
  if (error.empty()) error = panel_map(&plan.map_k, p.bf16, p.k, p.d, p.ns, "k");
  if (error.empty()) error = panel_map(&plan.map_v, p.bf16, p.v, p.d, p.ns, "v");
  if (!error.empty()) return error;
  const int panels = (p.d + kPanelCols - 1) / kPanelCols;
  plan.smem_bytes = static_cast<int>(kTileBase + panels * (frag::kWgmmaM + 2 * p.ns) * kRowBytes);
  return "";
}

}  // namespace flashcore::sm90::wgmma_probe

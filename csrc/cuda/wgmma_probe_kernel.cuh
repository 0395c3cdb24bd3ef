// Probe kernels: one warpgroup runs one tile of each wgmma form the attention kernels use, with the operands brought
// in by TMA as 64-column 128B-swizzled panels and described exactly as the kernels describe them, and writes every
// thread's accumulator registers out raw. The same kernels run on the CPU model (csrc/cuda_emu/harness_ptx.cpp,
// tests/test_cuda_emu_ptx.py) and on the GPU (flashcore_sm90::wgmma_probe, tests/test_cuda_sm90.py, run first):
// where the attention kernels give wrong numbers on a GPU, these say whether a descriptor form, a fragment layout
// or the protocol around them is at fault. Not public API.
//
// Forms (B is the operand the kernels transpose; A is the M = 64 side):
//   SS, A and B K-major       S = Q K^T, S^T = K Q^T, dP = dO V^T: A [64][K], B [N][K], K in 64-wide panels
//   SS, B MN-major            dV = P^T dO, dK = dS^T Q pieces: B [K][b_cols], the piece [b_col0, b_col0 + N),
//                             which may start 32 columns into a panel (N = 32) or span panels (LBO)
//   SS, A and B MN-major      dQ = dS K with dS^T [K][64] as A
//   RS, B MN-major            O += P V (N = head dim, across panels), the backward's register-A dV / dK pieces
//   chain                     the forward consumer's pair: S = Q K^T (SS), P packed by a_frag_from_acc, O = P V (RS)
// Host side: wgmma_probe_plan.cuh (tensor maps, validation, the instantiation table), shared by the extension's
// launch (wgmma_probe.cu) and the CPU model's harness.
#pragma once

#include <cstdint>

#include "ptx/ptx.cuh"
#include "ptx/wgmma_mn.cuh"

namespace flashcore::sm90::wgmma_probe {

using namespace ptx;

constexpr int kThreads = frag::kWarpgroupThreads;   // one warpgroup issues every wgmma
constexpr uint32_t kPanelCols = 64;                 // 16-bit values per 128-byte swizzled row: the kernels' box width
constexpr uint32_t kRowBytes = kSwizzle128Row;
constexpr uint32_t kTileBase = kSwizzle128Atom;     // tiles start one swizzle atom in; the mbarrier lives below
constexpr uint32_t kK16Bytes = 32;                  // K-major: the next 16 K values inside a swizzled row
constexpr uint32_t kK16Rows = 16 * kRowBytes;       // MN-major: the next 16 K rows (two whole 1024-byte atoms)
constexpr int kWgmmaK = 16;
constexpr int kK16PerPanel = kPanelCols / kWgmmaK;  // K-major slices per 64-wide panel

// Where the operands sit in shared memory; filled by plan_wgmma_probe.
struct ProbeGeom {
  int32_t k;               // K, a multiple of 16
  int32_t b_col0;          // MN-major B: first column of the piece (a multiple of 8: whole 16-byte chunks)
  int32_t a_panels, b_panels;
  uint32_t a_panel_bytes;  // rows x 128 B
  uint32_t b_panel_bytes;
  uint32_t tx_bytes;       // every box of A and B, zero fill included: what the mbarrier waits for
  int64_t lda;             // register-A form: row stride of A in global memory (elements)
  // MN-major descriptors as the kernels build them (mnmajor_sw128_desc) when mn_lbo < 0; otherwise these fields,
  // so that a GPU session can try other readings of the ISA without a rebuild (scripts/wgmma_diagnose.py).
  int32_t mn_lbo, mn_sbo;  // bytes
  int32_t mn_base_offset;  // bits 49-51
};

constexpr int kDescBaseOffsetShift = 49;  // PTX ISA "Matrix Descriptor": bits 49-51, the matrix base offset

// An MN-major 128B-swizzled descriptor at `addr` whose panels lie `panel_bytes` apart: the kernels' own, or the
// override in g.
__device__ __forceinline__ uint64_t probe_mn_desc(uint32_t addr, uint32_t panel_bytes, const ProbeGeom& g) {
  if (g.mn_lbo < 0) return mnmajor_sw128_desc(addr, panel_bytes);
  return make_smem_desc(addr, static_cast<uint32_t>(g.mn_lbo), static_cast<uint32_t>(g.mn_sbo), SmemSwizzle::k128B) |
         (static_cast<uint64_t>(g.mn_base_offset & 7) << kDescBaseOffsetShift);
}

// Thread 0 initialises the barrier (offset 0 of dynamic shared memory), loads every panel of A and B, and all wait.
__device__ __forceinline__ void load_panels(uint8_t* smem, const CUtensorMap* map_a, const CUtensorMap* map_b,
                                            const ProbeGeom& g) {
  auto* bar = reinterpret_cast<uint64_t*>(smem);
  uint8_t* a_tile = smem + kTileBase;
  uint8_t* b_tile = a_tile + g.a_panels * g.a_panel_bytes;
  if (threadIdx.x == 0) {
    mbarrier_init(bar, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(bar, g.tx_bytes);
    for (int p = 0; p < g.a_panels; ++p) tma_load_2d(a_tile + p * g.a_panel_bytes, map_a, bar, p * kPanelCols, 0);
    for (int p = 0; p < g.b_panels; ++p) tma_load_2d(b_tile + p * g.b_panel_bytes, map_b, bar, p * kPanelCols, 0);
  }
  mbarrier_wait(bar, 0);
}

// The register-A fragment of K slice s, read straight from A (64, K) row-major in global memory (layout.cuh's a_row /
// a_col: the ISA's figure for register A), 16-bit values packed low column first.
__device__ __forceinline__ void a_frag_from_global(const uint16_t* a, int64_t lda, int s, uint32_t (&frag_a)[4]) {
  const int t = threadIdx.x;
#pragma unroll
  for (int r = 0; r < frag::kARegs; ++r) {
    const uint16_t* p = a + frag::a_row(t, r) * lda + s * kWgmmaK + frag::a_col(t, r, 0);
    frag_a[r] = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 16);
  }
}

// D = A B over K (one accumulator chain), written raw: d_out[thread * N/2 + register].
template <int N, MmaType kType, int kTransA, int kTransB, bool kRegA>
__global__ void __launch_bounds__(kThreads, 1)
    wgmma_probe_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                       const void* a_global, ProbeGeom g, float* d_out) {
  static_assert(!(kRegA && kTransA), "a register A is always K-major");
  FLASHCORE_SM90_DYNAMIC_SMEM(smem);
  load_panels(smem, &map_a, &map_b, g);
  const uint32_t a0 = smem_u32(smem + kTileBase), b0 = a0 + g.a_panels * g.a_panel_bytes;
  // The MN-major piece: whole panels, then 2 bytes per column inside the panel's swizzled rows.
  const uint32_t b_piece = (g.b_col0 / kPanelCols) * g.b_panel_bytes + (g.b_col0 % kPanelCols) * 2;
  // Base descriptors advanced per step (desc_advance), as the kernels build them.
  const uint64_t desc_a0 = kTransA ? probe_mn_desc(a0, g.a_panel_bytes, g) : kmajor_sw128_desc(a0);
  const uint64_t desc_b0 = kTransB ? probe_mn_desc(b0, g.b_panel_bytes, g) : kmajor_sw128_desc(b0);
  float d[N / 2];
#pragma unroll 1
  for (int s = 0; s < g.k / kWgmmaK; ++s) {
    uint64_t desc_b;
    if constexpr (kTransB == 0) {  // [N][K] panels: slice s of panel s / 4, 32 bytes per slice
      desc_b = desc_advance(desc_b0, (s / kK16PerPanel) * g.b_panel_bytes + (s % kK16PerPanel) * kK16Bytes);
    } else {                       // [K][b_cols] panels: 16 K rows per step, LBO = one panel
      desc_b = desc_advance(desc_b0, b_piece + s * kK16Rows);
    }
    if constexpr (kRegA) {
      // A fresh fragment per step, so each step waits for its wgmma before the registers are reused.
      uint32_t a[frag::kARegs];
      a_frag_from_global(static_cast<const uint16_t*>(a_global), g.lda, s, a);
      fence_operands(d);
      fence_operands(a);
      wgmma_fence();
      wgmma_rs_n<N, kType, kTransB>(d, a, desc_b, s > 0);
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(a);
      fence_operands(d);
    } else {
      uint64_t desc_a;
      if constexpr (kTransA == 0) {  // [64][K] panels
        desc_a = desc_advance(desc_a0, (s / kK16PerPanel) * g.a_panel_bytes + (s % kK16PerPanel) * kK16Bytes);
      } else {                       // [K][64]: one panel (M = 64)
        desc_a = desc_advance(desc_a0, s * kK16Rows);
      }
      fence_operands(d);
      wgmma_fence();
      wgmma_ss_n<N, kType, kTransA, kTransB>(d, desc_a, desc_b, s > 0);
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(d);
    }
  }
  float* out = d_out + threadIdx.x * (N / 2);
#pragma unroll
  for (int i = 0; i < N / 2; ++i) out[i] = d[i];
}

// The forward consumer's GEMM pair on one tile: S = Q K^T (Q [64][D], K [NS][D], D / 16 K-major slices), then
// O = P V with P = 16-bit S packed by a_frag_from_acc and V [NS][D] read MN-major across 64-wide panels (LBO = NS
// rows x 128 B). Writes S's registers to s_out (thread * NS/2 + i) and O's to o_out (thread * D/2 + i).
template <int NS, int D, bool kBf16>
__global__ void __launch_bounds__(kThreads, 1)
    wgmma_probe_chain_kernel(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
                             const __grid_constant__ CUtensorMap map_v, float* s_out, float* o_out) {
  constexpr MmaType kType = kBf16 ? MmaType::kBf16 : MmaType::kF16;
  constexpr int kPanels = (D + kPanelCols - 1) / kPanelCols;  // D = 96: the second panel's last 32 columns are zeros
  constexpr uint32_t kQPanel = frag::kWgmmaM * kRowBytes, kKvPanel = NS * kRowBytes;
  FLASHCORE_SM90_DYNAMIC_SMEM(smem);
  auto* bar = reinterpret_cast<uint64_t*>(smem);
  uint8_t* q = smem + kTileBase;
  uint8_t* k = q + kPanels * kQPanel;
  uint8_t* v = k + kPanels * kKvPanel;
  if (threadIdx.x == 0) {
    mbarrier_init(bar, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    mbarrier_arrive_expect_tx(bar, kPanels * (kQPanel + 2 * kKvPanel));
    for (int p = 0; p < kPanels; ++p) {
      tma_load_2d(q + p * kQPanel, &map_q, bar, p * kPanelCols, 0);
      tma_load_2d(k + p * kKvPanel, &map_k, bar, p * kPanelCols, 0);
      tma_load_2d(v + p * kKvPanel, &map_v, bar, p * kPanelCols, 0);
    }
  }
  mbarrier_wait(bar, 0);
  float s[NS / 2];
  const uint64_t dq0 = kmajor_sw128_desc(smem_u32(q)), dk0 = kmajor_sw128_desc(smem_u32(k));
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < D / kWgmmaK; ++ks) {  // as fwd/consumer.cuh issue_qk
    const uint32_t slice = (ks % kK16PerPanel) * kK16Bytes;
    wgmma_ss<NS, kType>(s, desc_advance(dq0, (ks / kK16PerPanel) * kQPanel + slice),
                        desc_advance(dk0, (ks / kK16PerPanel) * kKvPanel + slice), ks > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(s);
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  const uint64_t dv0 = mnmajor_sw128_desc(smem_u32(v), kKvPanel);  // as issue_pv
#pragma unroll
  for (int j = 0; j < NS / kWgmmaK; ++j) {  // as issue_pv, one K slice per group (the probe is not about overlap)
    uint32_t a[frag::kARegs];
    frag::a_frag_from_acc<kBf16>(s, j, a);
    fence_operands(o);
    fence_operands(a);
    wgmma_fence();
    wgmma_rs<D, kType, 1>(o, a, desc_advance(dv0, j * kK16Rows), true);
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(a);
    fence_operands(o);
  }
#pragma unroll
  for (int i = 0; i < NS / 2; ++i) s_out[threadIdx.x * (NS / 2) + i] = s[i];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o_out[threadIdx.x * (D / 2) + i] = o[i];
}

}  // namespace flashcore::sm90::wgmma_probe

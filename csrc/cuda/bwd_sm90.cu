// Host side of the sm_90a attention backward: the vendor's bwd_workspace_bytes and launch_bwd (bwd_params.h).
// The main kernel (bwd_sm90_kernel.cuh) adds dQ in fp32 into the workspace; the postprocess here converts it to
// dq's dtype. One main-kernel instantiation per head dim x dtype: causal / window / softcap / GQA / varlen /
// deterministic are runtime arguments.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#include "../bwd_params.h"
#include "bwd_sm90_kernel.cuh"

namespace flashcore::sm90::bwd {
namespace {

// ---- postprocess: dq = dq_accum (fp32) -> bf16 / fp16 ------------------------------------------------------------
// Both are (rows, heads_q, head_dim) contiguous with the same element order, so this is a flat stream: 8 values
// per thread (two 16-byte loads, one 16-byte store). The scale is already in the accumulator (folded into dS).
constexpr int kConvertThreads = 256;
constexpr int kConvertVec = 8;           // fp32 values per thread per step: one 16-byte bf16 / fp16 store
constexpr int kConvertBlocksPerSm = 8;   // grid-stride cap: enough blocks in flight to saturate DRAM

template <HalfType kType>
__global__ void __launch_bounds__(kConvertThreads) bwd_dq_convert_kernel(const float* __restrict__ acc,
                                                                         uint16_t* __restrict__ dq, int64_t vecs) {
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < vecs; v += int64_t(gridDim.x) * blockDim.x) {
    const float4 lo = __ldcs(reinterpret_cast<const float4*>(acc) + 2 * v);  // streamed once: evict first
    const float4 hi = __ldcs(reinterpret_cast<const float4*>(acc) + 2 * v + 1);
    uint4 out;
    out.x = pack_half2<kType>(lo.x, lo.y), out.y = pack_half2<kType>(lo.z, lo.w);
    out.z = pack_half2<kType>(hi.x, hi.y), out.w = pack_half2<kType>(hi.z, hi.w);
    reinterpret_cast<uint4*>(dq)[v] = out;
  }
}

// ---- workspace -------------------------------------------------------------------------------------------------
int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

int32_t block_m_for(int32_t head_dim) { return tile_row(head_dim).block_m; }

int64_t dq_accum_bytes(const BwdParams& p) {
  const int64_t values = p.total_q * p.fwd.heads_q * p.fwd.head_dim;
  return round_up(values * static_cast<int64_t>(sizeof(float)), kBwdWorkspaceAlign);
}

int32_t m_tiles(const BwdParams& p) {
  const int32_t bm = block_m_for(p.fwd.head_dim);
  return (p.fwd.seqlen_q + bm - 1) / bm;
}

int64_t semaphore_bytes(const BwdParams& p) {
  if (!p.deterministic) return 0;
  return int64_t(p.fwd.batch) * p.fwd.heads_q * m_tiles(p) * static_cast<int64_t>(sizeof(int32_t));
}

// The dynamic schedule's item counter (tile_handoff.h), after the semaphores: the workspace is zero-filled per call
// (at::zeros on the launch stream, captured into CUDA graphs as a memset), so the counter starts at 0 with no
// memset of its own and nothing outlives a launch. 4 bytes always: the launch decides whether it is used.
constexpr int64_t kItemCounterBytes = sizeof(int32_t);

// ---- tensor maps -----------------------------------------------------------------------------------------------
// 4D (head_dim, heads, rows, batch), innermost first; box (64, 1, rows_per_box, 1) lands as one [rows][64]
// column block with the 128-byte swizzle the wgmma descriptors assume. Varlen: the flat (total, heads, head_dim)
// tensor with a unit batch. Columns past head_dim (D = 96's second block) and rows past the tensor read as 0.
void encode_qkv_map(CUtensorMap* map, const BwdParams& p, const void* base, int32_t heads, int64_t rows_dense,
                    int64_t rows_total, int64_t stride_b, int64_t stride_s, int64_t stride_h, uint32_t box_rows,
                    const char* name) {
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
  TORCH_CHECK(problem.empty(), "flashcore bwd (sm_90a): cannot describe ", name, " to TMA: ", problem);
}

// LSE or delta, (batch, heads_q, seqlen_q) or (heads_q, total_q) fp32 contiguous, as a flat 2D map {values, 1}:
// a tile's rows are a box of 64 values at any flat offset (varlen rows start anywhere, TMA needs no alignment of
// the box start), values past the end read as 0.
void encode_row_stat_map(CUtensorMap* map, const float* base, int64_t values, uint32_t box_rows, const char* name) {
  const uint64_t dims[2] = {static_cast<uint64_t>(values), 1};
  const uint64_t strides[1] = {static_cast<uint64_t>(round_up(values * static_cast<int64_t>(sizeof(float)), 16))};
  const uint32_t box[2] = {box_rows, 1};
  const std::string problem = encode_tensor_map(map, TmaElem::kFp32, 2, base, dims, strides, box,
                                                CU_TENSOR_MAP_SWIZZLE_NONE);
  TORCH_CHECK(problem.empty(), "flashcore bwd (sm_90a): cannot describe ", name, " to TMA: ", problem);
}

template <int kHeadDim, HalfType kType>
void launch_main(const BwdParams& p) {
  using C = BwdConfig<kHeadDim>;
  static_assert(smem_layout_ok<C>(), "a swizzled tile is not 1024-byte aligned");
  static_assert(smem_bytes<C>() <= kMaxSmemPerBlock, "shared memory over the 227 KB per-block limit");
  static_assert(frag::stmatrix_sw128_conflict_free(), "P / dS stmatrix would have bank conflicts");
  static_assert(frag::acc_layout_is_consistent<C::kSQueries>(), "accumulator layout formulas disagree");
  const FwdParams& f = p.fwd;
  CUtensorMap tmap_q, tmap_k, tmap_v, tmap_do;
  encode_qkv_map(&tmap_q, p, f.q, f.heads_q, f.seqlen_q, p.total_q, f.q_stride_b, f.q_stride_s, f.q_stride_h,
                 C::kBlockM, "q");
  encode_qkv_map(&tmap_do, p, p.dout, f.heads_q, f.seqlen_q, p.total_q, p.do_stride_b, p.do_stride_s,
                 p.do_stride_h, C::kBlockM, "dout");
  encode_qkv_map(&tmap_k, p, f.k, f.heads_kv, f.seqlen_k, p.total_k, f.k_stride_b, f.k_stride_s, f.k_stride_h,
                 C::kBlockN, "k");
  encode_qkv_map(&tmap_v, p, f.v, f.heads_kv, f.seqlen_k, p.total_k, f.v_stride_b, f.v_stride_s, f.v_stride_h,
                 C::kBlockN, "v");

  const bool varlen = f.cu_seqlens_q != nullptr;
  const int64_t stat_values = varlen ? int64_t(f.heads_q) * p.total_q : int64_t(f.batch) * f.heads_q * f.seqlen_q;
  TORCH_CHECK(stat_values < (int64_t(1) << 31), "flashcore bwd (sm_90a): lse has ", stat_values,
              " values; the kernel indexes it in int32 (at most 2^31 - 1)");
  CUtensorMap tmap_lse, tmap_delta;
  encode_row_stat_map(&tmap_lse, f.lse, stat_values, C::kBlockM, "lse");
  encode_row_stat_map(&tmap_delta, p.delta, stat_values, C::kBlockM, "delta");

  BwdArgs a{};
  a.lse = f.lse, a.delta = p.delta;
  a.lse_stride_b = f.lse_stride_b, a.lse_stride_h = f.lse_stride_h;
  a.cu_seqlens_q = f.cu_seqlens_q, a.cu_seqlens_k = f.cu_seqlens_k;
  a.dq_accum = static_cast<float*>(p.workspace);
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
  a.score_mul = f.softmax_scale * kLog2e;
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
  int device = 0, num_sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t items = work_items(a.grid);
  TORCH_CHECK(items < (int64_t(1) << 31) && p.total_q < (int64_t(1) << 31) && p.total_k < (int64_t(1) << 31),
              "flashcore bwd (sm_90a): ", items, " K/V blocks, ", p.total_q, " query rows, ", p.total_k,
              " key rows; the kernel indexes them in int32 (at most 2^31 - 1 each)");
  const int64_t resident = int64_t(num_sms) * C::kRow.ctas_per_sm;
  const int blocks = static_cast<int>(items < resident ? items : resident);
  if (blocks == 0) return;
  // Dynamic schedule unless one wave holds every item (nothing to balance) or FLASHCORE_SM90_STATIC_SCHEDULE=1.
  if (items > blocks && !static_schedule_requested()) {
    a.item_counter = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(p.workspace) + dq_accum_bytes(p) +
                                                semaphore_bytes(p));
  }

  const auto kernel = bwd_sm90_kernel<kHeadDim, kType>;
  constexpr int kSmem = smem_bytes<C>();
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  kernel<<<blocks, C::kThreads, kSmem, stream>>>(tmap_q, tmap_k, tmap_v, tmap_do, tmap_lse, tmap_delta, a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <HalfType kType>
void launch_typed(const BwdParams& p) {
  switch (p.fwd.head_dim) {
    case 64: return launch_main<64, kType>(p);
    case 96: return launch_main<96, kType>(p);
    case 128: return launch_main<128, kType>(p);
    case 192: return launch_main<192, kType>(p);
    case 256: return launch_main<256, kType>(p);
    default: TORCH_CHECK(false, "flashcore bwd (sm_90a): no kernel for head_dim ", p.fwd.head_dim);
  }
}

template <HalfType kType>
void launch_convert(const BwdParams& p) {
  const int64_t vecs = p.total_q * p.fwd.heads_q * p.fwd.head_dim / kConvertVec;  // head_dim % 8 == 0
  if (vecs == 0) return;
  int device = 0, num_sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t wanted = (vecs + kConvertThreads - 1) / kConvertThreads;
  const int64_t cap = int64_t(num_sms) * kConvertBlocksPerSm;
  const int blocks = static_cast<int>(wanted < cap ? wanted : cap);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  bwd_dq_convert_kernel<kType><<<blocks, kConvertThreads, 0, stream>>>(static_cast<const float*>(p.workspace),
                                                                       static_cast<uint16_t*>(p.dq), vecs);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace flashcore::sm90::bwd

namespace flashcore {

int64_t bwd_workspace_bytes(const BwdParams& p) {
  using namespace sm90::bwd;
  return dq_accum_bytes(p) + semaphore_bytes(p) + kItemCounterBytes;
}

void launch_bwd(const BwdParams& p) {
  using namespace sm90::bwd;
  TORCH_CHECK(p.workspace != nullptr, "flashcore bwd (sm_90a): no workspace");
  if (p.fwd.dtype == HalfType::kBf16) {
    launch_typed<HalfType::kBf16>(p);
    launch_convert<HalfType::kBf16>(p);
  } else {
    launch_typed<HalfType::kFp16>(p);
    launch_convert<HalfType::kFp16>(p);
  }
}

}  // namespace flashcore

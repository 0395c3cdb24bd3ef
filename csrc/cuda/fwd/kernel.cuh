// The sm_90a attention forward: kernel (roles, barriers) and host launch (tensor maps, persistent grid), one
// template per head dim; csrc/cuda/fwd_sm90_d<D>.cu instantiate it, csrc/cuda/fwd_sm90.cu dispatches.
//
//   warpgroup 0  producer (producer.cuh): registers lowered to 24, one thread issues every TMA load
//   warpgroups 1, 2  consumers (consumer.cuh): registers raised to 240, 64 query rows each: S = Q K^T (SS wgmma),
//                online softmax (softmax.cuh), O += P V (RS wgmma, P from registers), epilogue (epilogue.cuh)
// Causal, window, softcap, GQA and varlen are runtime parameters (FwdParams); tile shapes come from
// csrc/tiles/sm90_fwd.h; the tile order, key spans and masking decisions from schedule.h (checked on the CPU).
// Tiles go to CTAs dynamically (a global counter, the producer hands indices to the consumers: tile_handoff.h,
// tile_handoff.cuh); FLASHCORE_SM90_STATIC_SCHEDULE=1 selects the static round-robin instead, for bisecting on a GPU.
#pragma once

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "consumer.cuh"
#include "producer.cuh"

namespace flashcore::sm90::fwd {

template <int D, bool kBf16>
__global__ void __launch_bounds__(FwdTraits<D>::kThreads, 1)
    fwd_kernel(const __grid_constant__ CUtensorMap tmap_q, const __grid_constant__ CUtensorMap tmap_k,
               const __grid_constant__ CUtensorMap tmap_v, const __grid_constant__ CUtensorMap tmap_o,
               const KernelArgs args) {
  using T = FwdTraits<D>;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = ptx::smem_u32(smem_raw);
  const uint32_t pad = ((raw + kSmemAlign - 1) & ~static_cast<uint32_t>(kSmemAlign - 1)) - raw;
  SharedStorage<D>& s = *reinterpret_cast<SharedStorage<D>*>(smem_raw + pad);

  if (threadIdx.x == 0) {
    ptx::mbarrier_init(&s.q_full, 1);            // the producer's arrive.expect_tx; the bytes come from TMA
    ptx::mbarrier_init(&s.q_empty, T::kQEmptyArrivals);
    for (int i = 0; i < T::kStages; ++i) {
      ptx::mbarrier_init(&s.k_full[i], 1);
      ptx::mbarrier_init(&s.v_full[i], 1);
      ptx::mbarrier_init(&s.k_empty[i], T::kConsumerWarps);  // lane 0 of every consumer warp
      ptx::mbarrier_init(&s.v_empty[i], T::kConsumerWarps);
    }
    init_tile_ring(s, T::kConsumerWarps);  // the tile-index hand-off (tile_handoff.cuh)
    ptx::fence_mbarrier_init();
  }
  __syncthreads();

  // Read through a shuffle so that ptxas knows the role is warp-uniform: wgmma in a branch it thinks divergent gets
  // serialized behind compiler-inserted warpgroup arrives (warning C7520).
  const int warpgroup = __shfl_sync(frag::kFullWarpMask, static_cast<int>(threadIdx.x) / T::kWgThreads, 0);
  if (warpgroup == 0) {
    ptx::setmaxnreg_dec<T::kProducerRegs>();
    if (threadIdx.x == 0) produce<D>(s, &tmap_q, &tmap_k, &tmap_v, args);  // the other 127 threads are done
  } else {
    ptx::setmaxnreg_inc<T::kConsumerRegs>();
    consume<D, kBf16>(s, &tmap_o, args, warpgroup - 1);
  }
}

// ---- host ------------------------------------------------------------------------------------------------------

inline void check_encoded(const std::string& problem, const char* tensor) {
  TORCH_CHECK(problem.empty(), "flashcore fwd (sm_90a): cannot describe ", tensor, " to TMA: ", problem);
}

// A (rows, heads, head_dim) slab per batch entry as a 4D map (head_dim, rows, heads, batch), boxes of 64 columns x
// box_rows rows of one head. The sequence is its own dimension, so boxes hanging past a dense sequence's end read
// zeros and store nothing. Strides of size-1 dimensions are never followed; TMA still wants them multiples of 16
// below 2^40, so they get the slab's byte extent.
inline void encode_rows_map(CUtensorMap* map, ptx::TmaElem elem, const void* base, int64_t head_dim, int64_t rows,
                            int64_t heads, int64_t batch, int64_t stride_s, int64_t stride_h, int64_t stride_b,
                            uint32_t box_rows, const char* name) {
  constexpr uint64_t kElemBytes = 2;
  const uint64_t dims[4] = {static_cast<uint64_t>(head_dim), static_cast<uint64_t>(rows < 1 ? 1 : rows),
                            static_cast<uint64_t>(heads), static_cast<uint64_t>(batch)};
  uint64_t extent = 16;
  const int64_t strides_el[3] = {stride_s, stride_h, stride_b};
  for (int d = 0; d < 3; ++d) {
    const uint64_t reach = static_cast<uint64_t>(strides_el[d]) * kElemBytes * dims[d + 1];
    if (dims[d + 1] > 1 && reach > extent) extent = reach;
  }
  extent = (extent + 15) / 16 * 16;
  uint64_t strides[3];
  for (int d = 0; d < 3; ++d) {
    strides[d] = dims[d + 1] > 1 ? static_cast<uint64_t>(strides_el[d]) * kElemBytes : extent;
  }
  const uint32_t box[4] = {64, box_rows, 1, 1};
  check_encoded(ptx::encode_tensor_map(map, elem, 4, base, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B), name);
}

template <int D>
void launch(const FwdParams& p) {
  using T = FwdTraits<D>;
  static_assert(smem_bytes<D>() <= kMaxSmemPerBlock, "shared memory over the 227 KB per-block limit");
  static_assert(sizeof(SharedStorage<D>) + kSmemAlign <= T::kFixedSmemBytes + T::kQBytes * (T::kSeparateOut ? 2 : 1) +
                                                          2 * T::kStages * T::kKvTileBytes,
                "kSeparateOut's estimate of shared memory is below the real layout");
  const ptx::TmaElem elem = p.dtype == HalfType::kBf16 ? ptx::TmaElem::kBf16 : ptx::TmaElem::kFp16;
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int64_t batch_dim = varlen ? 1 : p.batch;  // varlen: one packed sequence of rows_q / rows_k rows

  CUtensorMap tmap_q{}, tmap_k{}, tmap_v{}, tmap_o{};
  encode_rows_map(&tmap_q, elem, p.q, D, p.rows_q, p.heads_q, batch_dim, p.q_stride_s, p.q_stride_h, p.q_stride_b,
                  T::kBlockM, "q");
  encode_rows_map(&tmap_o, elem, p.out, D, p.rows_q, p.heads_q, batch_dim, p.o_stride_s, p.o_stride_h, p.o_stride_b,
                  T::kOutRows, "out");
  if (p.rows_k > 0) {  // no keys at all: every row is empty and nothing is loaded (and an empty k may be null)
    encode_rows_map(&tmap_k, elem, p.k, D, p.rows_k, p.heads_kv, batch_dim, p.k_stride_s, p.k_stride_h,
                    p.k_stride_b, T::kBlockN, "k");
    encode_rows_map(&tmap_v, elem, p.v, D, p.rows_k, p.heads_kv, batch_dim, p.v_stride_s, p.v_stride_h,
                    p.v_stride_b, T::kBlockN, "v");
  }

  int device = 0, num_sms = 0, l2_bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));

  KernelArgs args{};
  args.p = p;
  const int64_t m_blocks = (static_cast<int64_t>(p.seqlen_q) + T::kBlockM - 1) / T::kBlockM;
  const int64_t pairs = static_cast<int64_t>(p.batch) * p.heads_q;
  const int64_t num_tiles = m_blocks * pairs;
  TORCH_CHECK(num_tiles <= INT32_MAX, "flashcore fwd (sm_90a): ", num_tiles, " tiles of ", T::kBlockM,
              " query rows; at most 2^31 - 1");
  args.q_per_kv = p.heads_q / p.heads_kv;
  // K and V of one (sequence, K/V head), shared by heads_q / heads_kv query heads; half of L2 for the group in flight.
  const int64_t kv_bytes_per_pair = 2 * static_cast<int64_t>(p.seqlen_k) * D * T::kElemBytes / args.q_per_kv;
  args.order = TileOrder{static_cast<int>(m_blocks), static_cast<int>(pairs),
                         heads_per_group(l2_bytes / 2, kv_bytes_per_pair, static_cast<int>(pairs))};
  const int blocks = static_cast<int>(num_tiles < num_sms ? num_tiles : num_sms);  // one CTA per SM, persistent
  if (blocks == 0) return;

  const auto kernel = p.dtype == HalfType::kBf16 ? fwd_kernel<D, true> : fwd_kernel<D, false>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes<D>()));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  // The dynamic schedule's counter: a fresh zeroed int per launch, from the caching allocator on this stream.
  // Freeing it when launch returns is safe: the allocator hands the block out again only to work ordered after
  // this kernel on the same stream. Chosen over a counter the last CTA resets: no state survives a launch, so
  // concurrent streams, CUDA graphs and a kernel killed mid-way cannot leave a stale count behind; the price is a
  // 4-byte memset node per launch. A single wave (tiles <= CTAs) has nothing to balance and takes neither.
  c10::DataPtr counter;
  if (num_tiles > blocks && !static_schedule_requested()) {
    counter = c10::cuda::CUDACachingAllocator::get()->allocate(sizeof(int));
    C10_CUDA_CHECK(cudaMemsetAsync(counter.get(), 0, sizeof(int), stream));
    args.tile_counter = static_cast<int*>(counter.get());
  }
  kernel<<<blocks, T::kThreads, smem_bytes<D>(), stream>>>(tmap_q, tmap_k, tmap_v, tmap_o, args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace flashcore::sm90::fwd

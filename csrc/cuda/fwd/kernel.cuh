// The sm_90a attention forward kernel (roles, barriers), one template per head dim. Its host side: launch_plan.cuh
// (tensor maps, arguments, persistent grid; no torch) and launch.cuh (the extension's launch); fwd_sm90_d<D>.cu
// instantiate it, fwd_sm90.cu dispatches, csrc/cuda_emu/harness_fwd.cpp runs it on the CPU model.
//
//   warpgroup 0  producer (producer.cuh): registers lowered to 24, one thread issues every TMA load
//   warpgroups 1 .. kConsumers  consumers (consumer.cuh; 2, or 3 at D = 64): registers raised to 240 (2) or 160 (3),
//                64 query rows each: S = Q K^T (SS wgmma), online softmax (softmax.cuh), O += P V (RS wgmma, P from
//                registers), epilogue (epilogue.cuh)
// Causal, window, softcap, GQA and varlen are runtime parameters (FwdParams); tile shapes come from
// csrc/tiles/sm90_fwd.h; the tile order, key spans and masking decisions from schedule.h (checked on the CPU).
// Tiles go to CTAs dynamically (a global counter, the producer hands indices to the consumers: tile_handoff.h,
// tile_handoff.cuh); FLASHCORE_SM90_STATIC_SCHEDULE=1 selects the static round-robin instead, for bisecting on a GPU.
#pragma once

#include "consumer.cuh"
#include "producer.cuh"

namespace flashcore::sm90::fwd {

template <int D, bool kBf16>
__global__ void __launch_bounds__(FwdTraits<D>::kThreads, 1)
    fwd_kernel(const __grid_constant__ CUtensorMap tmap_q, const __grid_constant__ CUtensorMap tmap_k,
               const __grid_constant__ CUtensorMap tmap_v, const __grid_constant__ CUtensorMap tmap_o,
               const KernelArgs args) {
  using T = FwdTraits<D>;
  FLASHCORE_SM90_DYNAMIC_SMEM(smem_raw);
  SharedStorage<D>& s = ptx::smem_storage<SharedStorage<D>>(smem_raw);

  if (threadIdx.x == 0) {
    for (int i = 0; i < T::kQBuffers; ++i) {
      ptx::mbarrier_init(&s.q_full[i], 1);  // the producer's arrive.expect_tx; the bytes come from TMA
      ptx::mbarrier_init(&s.q_empty[i], T::kQEmptyArrivals);
    }
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

}  // namespace flashcore::sm90::fwd

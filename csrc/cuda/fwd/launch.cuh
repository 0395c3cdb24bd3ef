// The extension's launch of the sm_90a forward (one instantiation per head dim in fwd_sm90_d<D>.cu): the device's
// SM count and L2 size into plan_fwd (launch_plan.cuh), the dynamic schedule's counter, the kernel on torch's
// current stream.
#pragma once

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include "launch_plan.cuh"

namespace flashcore::sm90::fwd {

template <int D>
void launch(const FwdParams& p) {
  int device = 0, num_sms = 0, l2_bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  FwdLaunchPlan plan;
  const std::string error = plan_fwd<D>(p, num_sms, l2_bytes, static_schedule_requested(), plan);
  TORCH_CHECK(error.empty(), "flashcore fwd (sm_90a): ", error);
  if (plan.blocks == 0) return;

  const auto kernel = p.dtype == HalfType::kBf16 ? fwd_kernel<D, true> : fwd_kernel<D, false>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem_bytes));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  // The dynamic schedule's counter: a fresh zeroed int per launch, from the caching allocator on this stream.
  // Freeing it when launch returns is safe: the allocator hands the block out again only to work ordered after
  // this kernel on the same stream. Chosen over a counter the last CTA resets: no state survives a launch, so
  // concurrent streams, CUDA graphs and a kernel killed mid-way cannot leave a stale count behind; the price is a
  // 4-byte memset node per launch.
  c10::DataPtr counter;
  if (plan.needs_counter) {
    counter = c10::cuda::CUDACachingAllocator::get()->allocate(sizeof(int));
    C10_CUDA_CHECK(cudaMemsetAsync(counter.get(), 0, sizeof(int), stream));
    plan.args.tile_counter = static_cast<int*>(counter.get());
  }
  kernel<<<plan.blocks, plan.threads, plan.smem_bytes, stream>>>(plan.tmap_q, plan.tmap_k, plan.tmap_v, plan.tmap_o,
                                                                 plan.args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace flashcore::sm90::fwd

// Backward preprocess for sm_90a: the launch of bwd_preprocess_kernel.cuh on torch's current stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "bwd_preprocess_kernel.cuh"

namespace flashcore {

void launch_bwd_preprocess(const BwdPreprocessParams& p, int32_t num_blocks) {
  using namespace sm90::preprocess;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto kernel = p.dtype == HalfType::kBf16 ? bwd_preprocess_kernel<HalfType::kBf16>
                                                 : bwd_preprocess_kernel<HalfType::kFp16>;
  kernel<<<static_cast<unsigned>(num_blocks), kThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace flashcore

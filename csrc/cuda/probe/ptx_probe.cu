// Kernels that instantiate every form the PTX layer (csrc/cuda/ptx/) offers, so ptxas assembles each of them even
// though the extension's kernels use only some (the GEMM: wgmma SS m64n256k16 bf16, 2D TMA).
//
// Not part of the extension (setup.py builds csrc/cuda/*.cu, not this folder): tests/test_ptx_probe.py compiles
// it for sm_90a and checks its SASS. The kernels are never launched; their results go to `out` only so that
// nothing is dead code.
#include <cstdint>

#include "../ptx/ptx.cuh"

namespace flashcore::sm90::probe {

using namespace ptx;

// wgmma m64nNk16 of one type: SS (both transposes), SS with a negated A, RS, each issuing into the same
// accumulators; then fence, commit, wait and the register fence around them, as a kernel would.
template <int N, MmaType kType>
__global__ void __launch_bounds__(frag::kWarpgroupThreads, 1)
    wgmma_probe_kernel(float* out, uint64_t desc_a, uint64_t desc_b) {
  float d[N / 2];
  uint32_t a[frag::kARegs];
#pragma unroll
  for (int r = 0; r < frag::kARegs; ++r) a[r] = threadIdx.x * (r + 1);
  fence_operands(d);
  fence_operands(a);
  wgmma_fence();
  wgmma_ss<N, kType>(d, desc_a, desc_b, false);
  wgmma_ss<N, kType, 1, 1>(d, desc_advance(desc_a, 32), desc_advance(desc_b, 32), true);
  wgmma_ss<N, kType, 0, 0, -1>(d, desc_a, desc_b, true);
  wgmma_rs<N, kType>(d, a, desc_b, true);
  wgmma_rs<N, kType, 1>(d, a, desc_b, true);
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(d);
  // Convert the accumulators into register-A fragments as attention's P * V would, and store everything.
  uint32_t p[frag::kARegs];
  frag::a_frag_from_acc<kType == MmaType::kBf16>(d, 0, p);
#pragma unroll
  for (int i = 0; i < N / 2; ++i) out[threadIdx.x * (N / 2) + i] = d[i] + frag::quad_allreduce_max(d[i]);
  out[0] += __uint_as_float(p[0] ^ p[1] ^ p[2] ^ p[3]) + frag::quad_allreduce_sum(d[0]);
}

template __global__ void wgmma_probe_kernel<64, MmaType::kBf16>(float*, uint64_t, uint64_t);
template __global__ void wgmma_probe_kernel<128, MmaType::kBf16>(float*, uint64_t, uint64_t);
template __global__ void wgmma_probe_kernel<256, MmaType::kBf16>(float*, uint64_t, uint64_t);
template __global__ void wgmma_probe_kernel<64, MmaType::kF16>(float*, uint64_t, uint64_t);
template __global__ void wgmma_probe_kernel<128, MmaType::kF16>(float*, uint64_t, uint64_t);
template __global__ void wgmma_probe_kernel<256, MmaType::kF16>(float*, uint64_t, uint64_t);

constexpr int kProbeThreads = 2 * frag::kWarpgroupThreads;  // a producer and a consumer warpgroup
constexpr uint32_t kTileBytes = 8192;
constexpr uint32_t kProbeRegsLow = 24, kProbeRegsHigh = 240;  // setmaxnreg's floor; 24 x 128 + 240 x 128 <= pool

// TMA loads and stores of every rank, reduce-adds of rank 2 and 3, mbarriers, fences, named barriers, stmatrix,
// st.shared.v2.f32, setmaxnreg.
__global__ void __launch_bounds__(kProbeThreads, 1)
    tma_sync_probe_kernel(const __grid_constant__ CUtensorMap m2, const __grid_constant__ CUtensorMap m3,
                          const __grid_constant__ CUtensorMap m4, const __grid_constant__ CUtensorMap m5, int c) {
  __shared__ alignas(kSwizzle128Atom) uint8_t tile[kTileBytes];
  __shared__ uint64_t bar;
  if (threadIdx.x == 0) {
    mbarrier_init(&bar, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x < frag::kWarpgroupThreads) {
    setmaxnreg_dec<kProbeRegsLow>();
    if (threadIdx.x == 0) {
      prefetch_tensor_map(&m2);
      mbarrier_arrive_expect_tx(&bar, 4 * kTileBytes);
      tma_load_2d(tile, &m2, &bar, c, c);
      tma_load_3d(tile, &m3, &bar, c, c, c);
      tma_load_4d(tile, &m4, &bar, c, c, c, c);
      tma_load_5d(tile, &m5, &bar, c, c, c, c, c);
    }
    named_barrier_arrive(1, kProbeThreads);
  } else {
    setmaxnreg_inc<kProbeRegsHigh>();
    named_barrier_sync(1, kProbeThreads);
    mbarrier_wait(&bar, 0);
    const int lane = threadIdx.x % frag::kWarpSize;
    stmatrix_x4(smem_u32(tile) + frag::stmatrix_sw128_offset(lane, 0, 0), lane, lane + 1, lane + 2, lane + 3);
    constexpr uint32_t kPairBytes = 8;  // st.shared.v2.f32: the fp32 staging of the backward's dQ
    st_shared_v2_f32(smem_u32(tile) + kTileBytes / 2 + lane * kPairBytes, __int_as_float(c), __int_as_float(lane));
    fence_proxy_async_shared();
    named_barrier_sync(2, frag::kWarpgroupThreads);
    if (threadIdx.x == frag::kWarpgroupThreads) {
      tma_store_2d(&m2, tile, c, c);
      tma_store_3d(&m3, tile, c, c, c);
      tma_store_4d(&m4, tile, c, c, c, c);
      tma_store_5d(&m5, tile, c, c, c, c, c);
      tma_reduce_add_2d(&m2, tile, c, c);
      tma_reduce_add_3d(&m3, tile, c, c, c);
      bulk_commit_group();
      bulk_wait_group_read<0>();
      bulk_wait_group<0>();
      mbarrier_arrive(&bar);
    }
  }
}

}  // namespace flashcore::sm90::probe

// C entry point of the sm_90a CPU harness for the GEMM (loaded with ctypes by tests/test_cuda_sm90_emulated.py):
// C = A B^T planned by the extension's own plan_gemm (csrc/cuda/gemm_sm90_launch_plan.cuh: tensor maps, persistent
// grid for the pretend SM count) and csrc/cuda/gemm_sm90_kernel.cuh run by the model (csrc/cuda_emu/emu.h).
#include <string>

#include "../cuda/gemm_sm90_launch_plan.cuh"
#include "harness_common.h"

extern "C" {

// a (m, k), b (n, k), c (m, n) bf16 with row strides lda, ldb, ldc (elements). stats: kStats values, or null.
int emu_sm90_gemm(const void* a, const void* b, void* c, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                  int64_t ldc, const flashcore::emu_harness::EmuRun* run, uint64_t* stats, char* error,
                  int error_bytes) {
  using namespace flashcore::sm90::gemm_bf16;
  namespace h = flashcore::emu_harness;
  const flashcore::GemmParams p{a, b, c, m, n, k, lda, ldb, ldc};
  GemmLaunchPlan plan;
  std::string message = plan_gemm(p, run->num_sms, plan);
  if (message.empty() && plan.blocks > 0) {
    message = h::launch_1d(
        plan.blocks, plan.threads, plan.smem_bytes,
        [&plan] { gemm_bf16_kernel(plan.tmap_a, plan.tmap_b, plan.tmap_c, plan.grid); }, *run,
        run->registers, stats);
  }
  return h::emu::to_c_status(message, error, error_bytes);
}

}  // extern "C"

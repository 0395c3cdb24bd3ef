// C entry point of the sm_90a CPU harness for the attention forward (loaded with ctypes by
// tests/test_cuda_sm90_emulated.py): FwdParams from the extension's make_fwd_params (csrc/fwd_params.h), the launch
// planned by its plan_fwd (csrc/cuda/fwd/launch_plan.cuh: tensor maps, arguments, the persistent grid for the
// pretend SM count), the dynamic schedule's counter zero-filled as the real launch does, and fwd_kernel run by the
// model (csrc/cuda_emu/emu.h). One object per head dim and element type: -DFLASHCORE_EMU_HEAD_DIM=<D>
// -DFLASHCORE_EMU_BF16=<0|1>; the symbol is emu_sm90_fwd_d<D>_<bf16|fp16>.
#include <string>

#include "../cuda/fwd/launch_plan.cuh"
#include "harness_common.h"

#ifndef FLASHCORE_EMU_HEAD_DIM
#error "compile with -DFLASHCORE_EMU_HEAD_DIM=<64|96|128|192|256> -DFLASHCORE_EMU_BF16=<0|1>"
#endif

extern "C" {

// tensors: q, k, v, out (sizes / strides: 4 x 4 int64 in elements, dims: 4 ints; the layouts make_fwd_params
// takes); lse float32 contiguous. stats: kStats values, or null.
int FLASHCORE_EMU_SYMBOL(emu_sm90_fwd)(const void* const* tensors, const int64_t* sizes, const int64_t* strides,
                                       const int* dims, float* lse, const int32_t* cu_seqlens_q,
                                       const int32_t* cu_seqlens_k, int batch, int max_seqlen_q, int max_seqlen_k,
                                       float softmax_scale, int causal, int window_left, int window_right,
                                       float softcap, const flashcore::emu_harness::EmuRun* run, uint64_t* stats,
                                       char* error, int error_bytes) {
  using namespace flashcore;
  namespace h = emu_harness;
  constexpr int D = FLASHCORE_EMU_HEAD_DIM;
  constexpr bool kBf16 = FLASHCORE_EMU_BF16 != 0;
  Strided t[4];
  h::strided_views(4, tensors, sizes, strides, dims, t);
  const FwdParams p = make_fwd_params(t[0], t[1], t[2], t[3], lse, cu_seqlens_q, cu_seqlens_k, batch, max_seqlen_q,
                                      max_seqlen_k, softmax_scale, causal != 0, window_left, window_right, softcap,
                                      kBf16 ? HalfType::kBf16 : HalfType::kFp16);
  if (p.head_dim != D) {
    return h::emu::to_c_status("head_dim " + std::to_string(p.head_dim) + " given to the d" + std::to_string(D) +
                                   " build",
                               error, error_bytes);
  }
  sm90::fwd::FwdLaunchPlan plan;
  std::string message = sm90::fwd::plan_fwd<D>(p, run->num_sms, run->l2_bytes, run->static_schedule != 0, plan);
  constexpr size_t kCounterAlign = 512;  // what the caching allocator gives; the kernel needs 4
  h::ZeroBuffer counter(sizeof(int), kCounterAlign);
  if (plan.needs_counter) plan.args.tile_counter = static_cast<int*>(counter.get());
  if (message.empty() && plan.blocks > 0) {
    message = h::launch_1d(
        plan.blocks, plan.threads, plan.smem_bytes,
        [&plan] {
          sm90::fwd::fwd_kernel<D, kBf16>(plan.tmap_q, plan.tmap_k, plan.tmap_v, plan.tmap_o, plan.args);
        },
        *run, run->registers, stats);
  }
  return h::emu::to_c_status(message, error, error_bytes);
}

}  // extern "C"

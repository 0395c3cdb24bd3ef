// C entry point of the sm_90a CPU harness for the attention backward (loaded with ctypes by
// tests/test_cuda_sm90_emulated.py). The three kernels the extension launches, in its order, on the model
// (csrc/cuda_emu/emu.h):
//   1. the preprocess (csrc/cuda/bwd_preprocess_kernel.cuh): delta = rowsum(dout * out) - dlse, with the
//      parameters and grid csrc/bwd.cpp / bwd_preprocess.cpp give it (varlen: out viewed as one sequence);
//   2. the main kernel (bwd_sm90_kernel.cuh), BwdParams from the extension's make_fwd_params + make_bwd_params,
//      the workspace sized by its workspace_bytes and zero-filled like bwd.cpp's at::zeros, the launch planned by
//      its plan_bwd (bwd_sm90_launch_plan.cuh) for the pretend SM count;
//   3. the dq postprocess (bwd_sm90_dq_convert.cuh) over the plan's grid.
// One object per head dim and element type: -DFLASHCORE_EMU_HEAD_DIM=<D> -DFLASHCORE_EMU_BF16=<0|1>; the symbol
// is emu_sm90_bwd_d<D>_<bf16|fp16>.
#include <string>

#include "../cuda/bwd_preprocess_kernel.cuh"
#include "../cuda/bwd_sm90_launch_plan.cuh"
#include "harness_common.h"

#ifndef FLASHCORE_EMU_HEAD_DIM
#error "compile with -DFLASHCORE_EMU_HEAD_DIM=<64|96|128|192|256> -DFLASHCORE_EMU_BF16=<0|1>"
#endif

namespace {

using namespace flashcore;
namespace h = emu_harness;
constexpr int D = FLASHCORE_EMU_HEAD_DIM;
constexpr HalfType kType = FLASHCORE_EMU_BF16 ? HalfType::kBf16 : HalfType::kFp16;
constexpr size_t kAllocatorAlign = 512;  // the caching allocator's block alignment (bwd.cpp relies on >= 256)

// delta = rowsum(dout * out) - dlse into `delta` (laid out like lse), as bwd.cpp computes it: dense out / dout
// (batch, seqlen_q, heads, d); varlen (total, heads, d) as one sequence (unsqueeze(0)), delta (1, heads, total).
std::string run_preprocess(const FwdParams& f, const Strided& out, const Strided& dout, const float* dlse,
                           float* delta, const h::EmuRun& run) {
  const bool varlen = f.cu_seqlens_q != nullptr;
  BwdPreprocessParams pp{};
  pp.out = out.data, pp.dout = dout.data, pp.dlse = dlse, pp.d = delta;
  const int s = varlen ? 0 : 1;  // the sequence dim of out / dout
  pp.out_stride_b = varlen ? out.size[0] * out.stride[0] : out.stride[0];
  pp.out_stride_s = out.stride[s], pp.out_stride_h = out.stride[s + 1];
  pp.dout_stride_b = varlen ? dout.size[0] * dout.stride[0] : dout.stride[0];
  pp.dout_stride_s = dout.stride[s], pp.dout_stride_h = dout.stride[s + 1];
  pp.batch = varlen ? 1 : f.batch;
  pp.seqlen = static_cast<int32_t>(varlen ? out.size[0] : out.size[1]);
  pp.heads = f.heads_q;
  pp.head_dim = f.head_dim;
  pp.dtype = kType;
  if (dlse != nullptr) {  // contiguous like lse
    pp.dlse_stride_b = int64_t(pp.heads) * pp.seqlen, pp.dlse_stride_h = pp.seqlen, pp.dlse_stride_s = 1;
  }
  const int64_t tiles = (int64_t(pp.seqlen) + kBwdPreprocessRowsPerBlock - 1) / kBwdPreprocessRowsPerBlock;
  const int64_t blocks = int64_t(pp.batch) * pp.heads * tiles;
  if (blocks == 0) return "";
  // Not persistent: a large grid runs in waves on the model, as on the hardware.
  return h::launch_1d(
      static_cast<int>(blocks), kBwdPreprocessThreads, 0,
      [&pp] { sm90::preprocess::bwd_preprocess_kernel<kType>(pp); }, run, 0, nullptr);
}

}  // namespace

extern "C" {

// tensors: q, k, v, out, dout, dq, dk, dv (sizes / strides: 8 x 4 int64 in elements, dims: 8 ints; the layouts
// make_fwd_params / make_bwd_params take); lse the forward's, dlse (or null) and delta (written here) float32
// laid out like lse. stats: kStats values of the main kernel, or null.
int FLASHCORE_EMU_SYMBOL(emu_sm90_bwd)(const void* const* tensors, const int64_t* sizes, const int64_t* strides,
                                       const int* dims, float* lse, const float* dlse, float* delta,
                                       const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_k, int batch,
                                       int max_seqlen_q, int max_seqlen_k, float softmax_scale, int causal,
                                       int window_left, int window_right, float softcap, int deterministic,
                                       const h::EmuRun* run, uint64_t* stats, char* error, int error_bytes) {
  Strided t[8];
  h::strided_views(8, tensors, sizes, strides, dims, t);
  const FwdParams f = make_fwd_params(t[0], t[1], t[2], t[3], lse, cu_seqlens_q, cu_seqlens_k, batch, max_seqlen_q,
                                      max_seqlen_k, softmax_scale, causal != 0, window_left, window_right, softcap,
                                      kType);
  if (f.head_dim != D) {
    return h::emu::to_c_status("head_dim " + std::to_string(f.head_dim) + " given to the d" + std::to_string(D) +
                                   " build",
                               error, error_bytes);
  }
  std::string message = run_preprocess(f, t[3], t[4], dlse, delta, *run);
  BwdParams p = make_bwd_params(f, t[4], delta, t[5], t[6], t[7], deterministic != 0);
  h::ZeroBuffer workspace(static_cast<size_t>(sm90::bwd::workspace_bytes(p)), kAllocatorAlign);
  p.workspace = workspace.get();
  sm90::bwd::BwdLaunchPlan plan;
  if (message.empty()) message = sm90::bwd::plan_bwd<D>(p, run->num_sms, run->static_schedule != 0, plan);
  if (message.empty() && plan.blocks > 0) {
    message = h::launch_1d(
        plan.blocks, plan.threads, plan.smem_bytes,
        [&plan] {
          sm90::bwd::bwd_sm90_kernel<D, kType>(plan.tmap_q, plan.tmap_k, plan.tmap_v, plan.tmap_do, plan.tmap_lse,
                                               plan.tmap_delta, plan.tmap_dq, plan.args);
        },
        *run, run->registers, stats);
  }
  if (message.empty() && plan.convert_vecs > 0) {
    const float* acc = static_cast<const float*>(p.workspace);
    uint16_t* dq = static_cast<uint16_t*>(p.dq);
    const int64_t vecs = plan.convert_vecs;
    message = h::launch_1d(
        plan.convert_blocks, sm90::bwd::kConvertThreads, 0,
        [acc, dq, vecs] { sm90::bwd::bwd_dq_convert_kernel<kType>(acc, dq, vecs); }, *run, 0, nullptr);
  }
  return h::emu::to_c_status(message, error, error_bytes);
}

}  // extern "C"

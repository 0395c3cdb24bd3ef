// Host side of the backward preprocess, shared by CUDA and HIP builds: check the arguments, allocate D, fill
// BwdPreprocessParams, hand over to the vendor's launch_bwd_preprocess.
#include "bwd_preprocess_params.h"
#include "checks.h"
#include "ops.h"

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

namespace flashcore {

at::Tensor bwd_preprocess(const at::Tensor& out,                 // (batch, seqlen, heads, head_dim) bf16/fp16
                          const at::Tensor& dout,                // (batch, seqlen, heads, head_dim) like out
                          const std::optional<at::Tensor>& dlse  // (batch, heads, seqlen) float32, optional
) {
  constexpr const char* kOp = "flashcore bwd_preprocess";
  check_rank(out, 4, kOp, "out", "(batch, seqlen, heads, head_dim)");
  check_on_accelerator(out, kOp, "out");
  check_half_dtype(out, kOp, "out");
  TORCH_CHECK(dout.sizes() == out.sizes(), kOp, ": dout has shape ", dout.sizes(), "; expected out's shape ",
              out.sizes());
  TORCH_CHECK(dout.scalar_type() == out.scalar_type(), kOp, ": dout is ", dout.scalar_type(), "; expected out's dtype ",
              out.scalar_type());
  check_same_device(dout, out, kOp, "dout", "out");

  const int64_t batch = out.size(0), seqlen = out.size(1), heads = out.size(2), head_dim = out.size(3);
  constexpr int64_t kStep = kBwdPreprocessHeadDimStep, kMax = kBwdPreprocessMaxHeadDim;
  TORCH_CHECK(head_dim % kStep == 0 && head_dim >= kStep && head_dim <= kMax, kOp, ": out.size(-1) (head_dim) is ",
              head_dim, "; expected a multiple of ", kStep, " in [", kStep, ", ", kMax, "]");
  check_fits_int32(batch, kOp, "batch");
  check_fits_int32(seqlen, kOp, "seqlen");
  check_fits_int32(heads, kOp, "heads");

  if (dlse.has_value()) {
    const at::Tensor& dl = *dlse;
    TORCH_CHECK(dl.dim() == 3 && dl.size(0) == batch && dl.size(1) == heads && dl.size(2) == seqlen, kOp,
                ": dlse has shape ", dl.sizes(), "; expected (batch, heads, seqlen) = (", batch, ", ", heads, ", ",
                seqlen, ")");
    TORCH_CHECK(dl.scalar_type() == at::kFloat, kOp, ": dlse is ", dl.scalar_type(), "; expected float32");
    check_same_device(dl, out, kOp, "dlse", "out");
  }

  const c10::DeviceGuard device_guard(out.device());
  at::Tensor d = at::empty({batch, heads, seqlen}, out.options().dtype(at::kFloat));
  if (d.numel() == 0) return d;

  // Rows the kernel cannot read with aligned 16-byte loads (an odd offset or stride, a stride-0 last dim from
  // expand) are copied once into a contiguous buffer; the usual layouts, q-like strided views included, are not.
  const at::Tensor o = rows_vectorizable(out) ? out : out.contiguous();
  const at::Tensor dO = rows_vectorizable(dout) ? dout : dout.contiguous();

  BwdPreprocessParams p{};
  p.out = o.data_ptr();
  p.dout = dO.data_ptr();
  p.dlse = dlse.has_value() ? dlse->data_ptr<float>() : nullptr;
  p.d = d.data_ptr<float>();
  p.out_stride_b = o.stride(0), p.out_stride_s = o.stride(1), p.out_stride_h = o.stride(2);
  p.dout_stride_b = dO.stride(0), p.dout_stride_s = dO.stride(1), p.dout_stride_h = dO.stride(2);
  if (dlse.has_value()) {
    p.dlse_stride_b = dlse->stride(0), p.dlse_stride_h = dlse->stride(1), p.dlse_stride_s = dlse->stride(2);
  }
  p.batch = static_cast<int32_t>(batch);
  p.seqlen = static_cast<int32_t>(seqlen);
  p.heads = static_cast<int32_t>(heads);
  p.head_dim = static_cast<int32_t>(head_dim);
  p.dtype = out.scalar_type() == at::kBFloat16 ? HalfType::kBf16 : HalfType::kFp16;

  const int64_t tiles_per_seq = (seqlen + kBwdPreprocessRowsPerBlock - 1) / kBwdPreprocessRowsPerBlock;
  const int64_t num_blocks = batch * heads * tiles_per_seq;
  check_fits_int32(num_blocks, kOp, "the block count batch * heads * ceil(seqlen / rows per block)");
  launch_bwd_preprocess(p, static_cast<int32_t>(num_blocks));
  return d;
}

}  // namespace flashcore

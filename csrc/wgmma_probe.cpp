// Host side of flashcore_sm90::wgmma_probe and wgmma_probe_chain (CUDA builds only): one tile of a wgmma form the
// attention kernels use, on the GPU (csrc/cuda/wgmma_probe.cu), returning every thread's accumulator registers raw
// so that a test reads them through the ISA's fragment figure. Test ops: where the attention kernels fail on a GPU,
// these say whether a descriptor form or a fragment layout is at fault. Not public API.
#if defined(FLASHCORE_CUDA)

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include "checks.h"
#include "ops.h"
#include "wgmma_probe_params.h"

namespace flashcore {
namespace {

constexpr const char* kProbeOp = "flashcore wgmma_probe";
constexpr const char* kChainOp = "flashcore wgmma_probe_chain";
constexpr int64_t kWarpgroupThreads = 128;  // one warpgroup: registers are returned per thread
constexpr int64_t kWgmmaM = 64;

void check_operand(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name, const char* layout) {
  check_rank(t, 2, op, name, layout);
  check_on_accelerator(t, op, name);
  check_same_device(t, ref, op, name, "the first operand");
  check_half_dtype(t, op, name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " is ", t.scalar_type(),
              " but the first operand is ", ref.scalar_type(), "; expected one dtype");
}

}  // namespace

at::Tensor wgmma_probe(const at::Tensor& a,  // (64, k), or (k, 64) when trans_a
                       const at::Tensor& b,  // (n, k), or (k, b_cols) when trans_b
                       int64_t n, int64_t b_col0, bool trans_a, bool trans_b, bool reg_a, int64_t mn_lbo,
                       int64_t mn_sbo, int64_t mn_base_offset) {
  check_operand(a, a, kProbeOp, "a", trans_a ? "(k, 64)" : "(64, k)");
  check_operand(b, a, kProbeOp, "b", trans_b ? "(k, b_cols)" : "(n, k)");
  const int64_t k = trans_a ? a.size(0) : a.size(1);
  TORCH_CHECK(a.size(trans_a ? 1 : 0) == kWgmmaM, kProbeOp, ": a is ", a.sizes(), "; expected ",
              trans_a ? "(k, 64)" : "(64, k)");
  TORCH_CHECK(trans_b ? b.size(0) == k : (b.size(0) == n && b.size(1) == k), kProbeOp, ": b is ", b.sizes(),
              " with k = ", k, " and n = ", n, "; expected ", trans_b ? "(k, b_cols)" : "(n, k)");
  TORCH_CHECK(n > 0 && n <= 256 && k <= 256 && b.size(1) <= 256, kProbeOp, ": n = ", n, ", k = ", k,
              ", b is ", b.sizes(), "; expected sizes of one tile (at most 256)");
  const c10::DeviceGuard device_guard(a.device());
  const at::Tensor a_c = a.contiguous(), b_c = b.contiguous();
  at::Tensor out = at::empty({kWarpgroupThreads, n / 2}, a.options().dtype(at::kFloat));
  WgmmaProbeParams p{};
  p.a = a_c.data_ptr();
  p.b = b_c.data_ptr();
  p.n = static_cast<int>(n), p.k = static_cast<int>(k);
  p.b_cols = static_cast<int>(trans_b ? b.size(1) : 0);
  p.b_col0 = static_cast<int>(b_col0);
  p.trans_a = trans_a ? 1 : 0, p.trans_b = trans_b ? 1 : 0;
  p.reg_a = reg_a;
  p.bf16 = a.scalar_type() == at::kBFloat16;
  TORCH_CHECK(mn_lbo < (1 << 18) && mn_sbo < (1 << 18), kProbeOp, ": mn_lbo = ", mn_lbo, ", mn_sbo = ", mn_sbo,
              "; expected byte offsets inside shared memory (below 2^18)");
  p.mn_lbo = static_cast<int>(mn_lbo), p.mn_sbo = static_cast<int>(mn_sbo);
  p.mn_base_offset = static_cast<int>(mn_base_offset);
  launch_wgmma_probe(p, out.data_ptr<float>());
  return out;
}

std::tuple<at::Tensor, at::Tensor> wgmma_probe_chain(const at::Tensor& q,  // (64, d)
                                                     const at::Tensor& k,  // (ns, d)
                                                     const at::Tensor& v   // (ns, d)
) {
  check_operand(q, q, kChainOp, "q", "(64, d)");
  check_operand(k, q, kChainOp, "k", "(ns, d)");
  check_operand(v, q, kChainOp, "v", "(ns, d)");
  TORCH_CHECK(q.size(0) == kWgmmaM && k.sizes() == v.sizes() && k.size(1) == q.size(1), kChainOp, ": q is ",
              q.sizes(), ", k is ", k.sizes(), ", v is ", v.sizes(), "; expected (64, d), (ns, d), (ns, d)");
  const c10::DeviceGuard device_guard(q.device());
  const at::Tensor q_c = q.contiguous(), k_c = k.contiguous(), v_c = v.contiguous();
  const int64_t ns = k.size(0), d = q.size(1);
  at::Tensor s = at::empty({kWarpgroupThreads, ns / 2}, q.options().dtype(at::kFloat));
  at::Tensor o = at::empty({kWarpgroupThreads, d / 2}, q.options().dtype(at::kFloat));
  WgmmaChainParams p{q_c.data_ptr(), k_c.data_ptr(), v_c.data_ptr(), static_cast<int>(ns), static_cast<int>(d),
                     q.scalar_type() == at::kBFloat16};
  launch_wgmma_chain(p, s.data_ptr<float>(), o.data_ptr<float>());
  return {s, o};
}

}  // namespace flashcore

#endif  // FLASHCORE_CUDA

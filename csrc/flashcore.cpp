// The one binding file: every operator flashcore registers with the PyTorch dispatcher is named here.
//
//   flashcore::fwd / flashcore::bwd   public schemas only. flashcore/_ops.py registers one Python router for
//                                     them (CompositeExplicitAutograd) that sends each call to the backend
//                                     serving the tensors' device.
//   flashcore_sm90::*    (CUDA build) the kernel library of the sm_90a backend
//   flashcore_gfx942::*  (HIP build)  the kernel library of the gfx942 backend, the same ops
//
// Both kernel libraries hold the same ops (except flashcore_sm90::gemm and the wgmma probes, CUDA-only test and
// bench ops proving the sm_90a PTX layer), declared once in define_backend_ops / impl_backend_ops; a new op is
// one m.def line plus one m.impl line there (fwd: m.def(kFwdSchema) and m.impl("fwd", &fwd); bwd likewise).
// `import flashcore._C` loads this library and runs the registrations.
#include <Python.h>
#include <torch/library.h>

#include "bwd_params.h"  // FLASHCORE_HAS_BWD
#include "fwd_params.h"  // FLASHCORE_HAS_FWD
#include "ops.h"
#include "schema.h"

namespace flashcore {
namespace {

void define_backend_ops(torch::Library& m) {
  m.def("bwd_preprocess(Tensor out, Tensor dout, Tensor? dlse) -> Tensor");
  m.def("build_info() -> str", &build_info);  // takes no tensors: one kernel for every device
#if FLASHCORE_HAS_FWD
  m.def(kFwdSchema);
#endif
#if FLASHCORE_HAS_BWD
  m.def(kBwdSchema);
#endif
#if defined(FLASHCORE_CUDA)
  m.def("gemm(Tensor a, Tensor b) -> Tensor");  // test/bench op proving the sm_90a PTX layer: a @ b.T
  // test ops: one tile of a wgmma form the kernels use, registers raw (csrc/wgmma_probe.cpp)
  m.def(
      "wgmma_probe(Tensor a, Tensor b, int n, int b_col0, bool trans_a, bool trans_b, bool reg_a, int mn_lbo=-1, "
      "int mn_sbo=-1, int mn_base_offset=0) -> Tensor");
  m.def("wgmma_probe_chain(Tensor q, Tensor k, Tensor v) -> (Tensor, Tensor)");
#endif
}

void impl_backend_ops(torch::Library& m) {  // the GPU kernels (dispatch key CUDA, which HIP builds use too)
  m.impl("bwd_preprocess", &bwd_preprocess);
#if FLASHCORE_HAS_FWD
  m.impl("fwd", &fwd);
#endif
#if FLASHCORE_HAS_BWD
  m.impl("bwd", &bwd);
#endif
#if defined(FLASHCORE_CUDA)
  m.impl("gemm", &gemm);
  m.impl("wgmma_probe", &wgmma_probe);
  m.impl("wgmma_probe_chain", &wgmma_probe_chain);
#endif
}

}  // namespace
}  // namespace flashcore

TORCH_LIBRARY(flashcore, m) {
  m.def(flashcore::kFwdSchema);
  m.def(flashcore::kBwdSchema);
}

#if defined(FLASHCORE_CUDA)
TORCH_LIBRARY(flashcore_sm90, m) { flashcore::define_backend_ops(m); }
TORCH_LIBRARY_IMPL(flashcore_sm90, CUDA, m) { flashcore::impl_backend_ops(m); }
#elif defined(FLASHCORE_HIP)
TORCH_LIBRARY(flashcore_gfx942, m) { flashcore::define_backend_ops(m); }
TORCH_LIBRARY_IMPL(flashcore_gfx942, CUDA, m) { flashcore::impl_backend_ops(m); }
#endif

// A bare Python module with no functions: importing it is what loads the shared library, which runs the static
// registrations above. No pybind11: every entry point goes through torch.ops.
PyMODINIT_FUNC PyInit__C(void) {  // PyMODINIT_FUNC: extern "C", exported
  static PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",                                                          // m_name
      "flashcore kernels; use them through torch.ops.flashcore_*",  // m_doc
      -1,                                                            // m_size: no per-module state
      nullptr,                                                       // m_methods
  };
  return PyModule_Create(&module_def);
}

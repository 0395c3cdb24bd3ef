// launch_fwd for CUDA builds: the sm_90a attention forward (csrc/cuda/fwd/kernel.cuh), one instantiation per head
// dim in fwd_sm90_d<D>.cu. fwd.cpp has checked every argument (head_dim one of these five) and set the device.
#include "../fwd_params.h"

namespace flashcore {
namespace sm90::fwd {
template <int D>
void launch(const FwdParams& p);  // defined in fwd/launch.cuh, instantiated in fwd_sm90_d<D>.cu
}  // namespace sm90::fwd

void launch_fwd(const FwdParams& p) {
  switch (p.head_dim) {
    case 64: return sm90::fwd::launch<64>(p);
    case 96: return sm90::fwd::launch<96>(p);
    case 128: return sm90::fwd::launch<128>(p);
    case 192: return sm90::fwd::launch<192>(p);
    default: return sm90::fwd::launch<256>(p);  // fwd.cpp admits only the five head dims
  }
}

}  // namespace flashcore

// The sm_90a attention forward for head_dim 64 (bf16 and fp16): one file per head dim so that a parallel build
// compiles the heavy instantiations side by side. Tile shape: csrc/tiles/sm90_fwd.h.
#include "fwd/launch.cuh"

namespace flashcore::sm90::fwd {
template void launch<64>(const FwdParams& p);
}  // namespace flashcore::sm90::fwd

// The device compiler's name and version, read from its own predefined macros. Implemented once per vendor
// (cuda/build_info.cu, hip/build_info.hip) because only the device compiler sees those macros.
#pragma once

namespace flashcore {

const char* device_compiler_version();  // e.g. "nvcc 13.0.88", "hipcc (clang 19.0.0) HIP 6.4.1"

}  // namespace flashcore

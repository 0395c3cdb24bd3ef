// hipcc's version, from the macros it predefines (no torch headers here).
#include <hip/hip_runtime.h>  // HIP_VERSION_MAJOR / _MINOR / _PATCH

#include "../build_info.h"

#define FLASHCORE_STR_(x) #x
#define FLASHCORE_STR(x) FLASHCORE_STR_(x)  // two steps: expand the macro, then quote its value

const char* flashcore::device_compiler_version() {
  return "hipcc HIP " FLASHCORE_STR(HIP_VERSION_MAJOR) "." FLASHCORE_STR(HIP_VERSION_MINOR) "." FLASHCORE_STR(
      HIP_VERSION_PATCH) " (clang " __clang_version__ ")";
}

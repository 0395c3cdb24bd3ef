// nvcc's own version, from the macros it predefines (no torch headers here: this file compiles in seconds).
#include "../build_info.h"

#define FLASHCORE_STR_(x) #x
#define FLASHCORE_STR(x) FLASHCORE_STR_(x)  // two steps: expand the macro, then quote its value

const char* flashcore::device_compiler_version() {
  return "nvcc " FLASHCORE_STR(__CUDACC_VER_MAJOR__) "." FLASHCORE_STR(__CUDACC_VER_MINOR__) "." FLASHCORE_STR(
      __CUDACC_VER_BUILD__);
}

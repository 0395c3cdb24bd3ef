// build_info(): a JSON object saying how this extension was built. setup.py passes the vendor
// (FLASHCORE_CUDA / FLASHCORE_HIP) and the arch list (FLASHCORE_ARCHS, comma-separated, e.g. sm_90a,sm_100a).
#include "build_info.h"
#include "ops.h"

#include <torch/version.h>

#include <string>

// Two steps: expand the macro, then quote its value (variadic, so the commas of an arch list survive).
#define FLASHCORE_STR_(...) #__VA_ARGS__
#define FLASHCORE_STR(...) FLASHCORE_STR_(__VA_ARGS__)

#if defined(FLASHCORE_CUDA)
#define FLASHCORE_VENDOR "cuda"
#define FLASHCORE_BACKEND_LIB "flashcore_sm90"
#elif defined(FLASHCORE_HIP)
#define FLASHCORE_VENDOR "hip"
#define FLASHCORE_BACKEND_LIB "flashcore_gfx942"
#else
#error "setup.py defines FLASHCORE_CUDA or FLASHCORE_HIP"
#endif

#ifndef FLASHCORE_ARCHS
#error "setup.py defines FLASHCORE_ARCHS"
#endif

namespace flashcore {

std::string build_info() {
  // "sm_90a,sm_100a" -> ["sm_90a", "sm_100a"]
  const std::string archs = FLASHCORE_STR(FLASHCORE_ARCHS);
  std::string list = "[\"";
  for (const char c : archs) list += (c == ',') ? std::string("\", \"") : std::string(1, c);
  list += "\"]";
  return std::string("{\"vendor\": \"") + FLASHCORE_VENDOR + "\", \"backend\": \"" + FLASHCORE_BACKEND_LIB +
         "\", \"archs\": " + list + ", \"compiler\": \"" + device_compiler_version() + "\", \"torch\": \"" +
         TORCH_VERSION + "\"}";
}

}  // namespace flashcore

// The Tensor Memory Accelerator (TMA, "bulk tensor copy"): host-side tensor maps and device-side tiled copies.
//
// PTX ISA references (section titles):
//   "Tensor Copy instructions: cp.async.bulk.tensor" (loads and stores, .tile mode)
//   "Tensor Copy instructions: cp.reduce.async.bulk.tensor" (shared -> global element-wise reduction, .tile mode)
//   "cp.async.bulk.commit_group", "cp.async.bulk.wait_group" (completion of stores and reductions, per thread)
//   "prefetch, prefetch.tensormap"
//   "Tensor-map" / "Tensor Memory Accelerator" (what a tensor map describes; CUDA driver API cuTensorMapEncodeTiled)
//
// A tensor map (CUtensorMap, 128 opaque bytes) describes a global tensor of rank 1-5: base address, dims
// (innermost first), byte strides of the outer dims, the box (tile) one copy moves, the shared-memory swizzle, and
// what out-of-bounds elements read as (here: zero). A copy names the box by the coordinates of its first element;
// boxes hanging over the tensor's edge are legal: loads fill the outside with zeros (and still count the full box
// toward complete_tx), stores skip it. That is how kernels handle ragged M/N/K without masks.
//
// The map is passed to the kernel as `const __grid_constant__ CUtensorMap` (a by-value kernel parameter whose
// address may be taken): the copy instructions take its generic address.
#pragma once

#include <cuda.h>             // CUtensorMap and its enums: types only, libcuda is not linked
#if !defined(FLASHCORE_SM90_EMU)
#include <cudaTypedefs.h>     // PFN_cuTensorMapEncodeTiled_v12000
#include <cuda_runtime_api.h> // cudaGetDriverEntryPointByVersion
#endif

#include <cstdint>
#include <string>

#include "smem.cuh"

namespace flashcore::sm90::ptx {

// =============================================================================================================
// Host: building tensor maps
// =============================================================================================================

enum class TmaElem { kBf16, kFp16, kFp32 };

constexpr int kTmaMinRank = 2;          // the kernels here copy 2D to 5D tiles (the hardware also does rank 1)
constexpr int kTmaMaxRank = 5;          // hardware limit
constexpr uint32_t kTmaMaxBoxDim = 256; // hardware limit on each box dimension, in elements
constexpr uint64_t kTmaAlign = 16;      // global base address and every outer stride: multiples of 16 bytes
constexpr uint64_t kTmaMaxStride = 1ull << 40;  // outer strides must be < 2^40 bytes
constexpr uint64_t kTmaMaxDim = 1ull << 32;     // each global dim in [1, 2^32]

inline uint32_t tma_elem_bytes(TmaElem e) { return e == TmaElem::kFp32 ? 4u : 2u; }

inline CUtensorMapDataType tma_cu_dtype(TmaElem e) {
  switch (e) {
    case TmaElem::kBf16: return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    case TmaElem::kFp16: return CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    default: return CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  }
}

// Bytes one swizzled row spans (the box's inner dimension may be at most this wide); 0 for no swizzle.
inline uint32_t tma_swizzle_span(CUtensorMapSwizzle s) {
  switch (s) {
    case CU_TENSOR_MAP_SWIZZLE_32B: return 32;
    case CU_TENSOR_MAP_SWIZZLE_64B: return 64;
    case CU_TENSOR_MAP_SWIZZLE_128B: return 128;
    default: return 0;
  }
}

// The documented limits of cuTensorMapEncodeTiled, checked before encoding so that the message says which one
// (the driver only returns CUDA_ERROR_INVALID_VALUE). Shared by the driver-backed encoder and the CPU model's.
inline std::string check_tensor_map_args(TmaElem elem, int rank, const void* base, const uint64_t* dims,
                                         const uint64_t* strides_bytes, const uint32_t* box,
                                         CUtensorMapSwizzle swizzle) {
  if (rank < kTmaMinRank || rank > kTmaMaxRank) return "rank " + std::to_string(rank) + " is not in [2, 5]";
  if (reinterpret_cast<uintptr_t>(base) % kTmaAlign != 0) return "base address is not 16-byte aligned";
  const uint32_t elem_bytes = tma_elem_bytes(elem);
  for (int d = 0; d < rank; ++d) {
    if (dims[d] == 0 || dims[d] > kTmaMaxDim) return "dim " + std::to_string(d) + " is 0 or above 2^32";
    if (box[d] == 0 || box[d] > kTmaMaxBoxDim) return "box dim " + std::to_string(d) + " is not in [1, 256]";
  }
  for (int d = 0; d + 1 < rank; ++d) {
    if (strides_bytes[d] % kTmaAlign != 0 || strides_bytes[d] >= kTmaMaxStride) {
      return "stride of dim " + std::to_string(d + 1) + " is " + std::to_string(strides_bytes[d]) +
             " bytes; expected a multiple of 16 below 2^40";
    }
  }
  const uint32_t inner_bytes = box[0] * elem_bytes;
  if (inner_bytes % kTmaAlign != 0) return "the box's inner extent is not a multiple of 16 bytes";
  const uint32_t span = tma_swizzle_span(swizzle);
  if (span != 0 && inner_bytes > span) {
    return "the box's inner extent (" + std::to_string(inner_bytes) + " bytes) exceeds the swizzle span (" +
           std::to_string(span) + " bytes)";
  }
  return "";
}

}  // namespace flashcore::sm90::ptx

#if defined(FLASHCORE_SM90_EMU)
#include "../../cuda_emu/ptx_tma.h"  // the CPU model: encoder and copies (csrc/cuda_emu)
#else
namespace flashcore::sm90::ptx {

// The driver version whose cuTensorMapEncodeTiled signature PFN_cuTensorMapEncodeTiled_v12000 describes.
constexpr unsigned kEncodeTiledAbiVersion = 12000;

// cuTensorMapEncodeTiled is a driver (libcuda) function. Fetching it through the runtime's entry-point query
// keeps libcuda out of the extension's link line (torch's CUDA runtime already loaded the driver). The pointer is
// looked up once per process (a function-local static: thread-safe, one copy across translation units).
// cudaGetDriverEntryPoint is deprecated in CUDA 13; the ByVersion form pins the ABI we were written against.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, kEncodeTiledAbiVersion,
                                                            cudaEnableDefault, &found);
    return (err == cudaSuccess && found == cudaDriverEntryPointSuccess)
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr)
               : nullptr;
  }();
  return fn;
}

// Fills *map for a tiled copy of a `rank`-dimensional tensor. All arrays are innermost dimension first:
//   dims[rank]            extent of each dimension, in elements (the innermost must be contiguous)
//   strides_bytes[rank-1] byte stride of dimensions 1..rank-1
//   box[rank]             tile extent copied per instruction, in elements
// Out-of-bounds box elements read as zero. Returns "" on success, else what is wrong (the caller adds which
// tensor it was). Checks the documented limits first so the message says which one, not just the CUresult.
inline std::string encode_tensor_map(CUtensorMap* map, TmaElem elem, int rank, const void* base,
                                     const uint64_t* dims, const uint64_t* strides_bytes, const uint32_t* box,
                                     CUtensorMapSwizzle swizzle) {
  const std::string problem = check_tensor_map_args(elem, rank, base, dims, strides_bytes, box, swizzle);
  if (!problem.empty()) return problem;
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr) return "the CUDA driver does not provide cuTensorMapEncodeTiled (driver too old?)";

  cuuint64_t dims_cu[kTmaMaxRank], strides_cu[kTmaMaxRank - 1];
  cuuint32_t box_cu[kTmaMaxRank], elem_strides[kTmaMaxRank];
  for (int d = 0; d < rank; ++d) {
    dims_cu[d] = dims[d];
    box_cu[d] = box[d];
    elem_strides[d] = 1;  // copy every element of the box (>1 would subsample)
  }
  for (int d = 0; d + 1 < rank; ++d) strides_cu[d] = strides_bytes[d];
  const CUresult res = encode(map, tma_cu_dtype(elem), static_cast<cuuint32_t>(rank), const_cast<void*>(base),
                              dims_cu, strides_cu, box_cu, elem_strides,
                              CU_TENSOR_MAP_INTERLEAVE_NONE,       // plain row-major tiles
                              swizzle,                             // must match the consumer's smem layout
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B,  // fetch whole 256 B L2 sectors: rows are >= 128 B
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);  // out-of-bounds elements read as zero
  if (res != CUDA_SUCCESS) return "cuTensorMapEncodeTiled failed with CUresult " + std::to_string(res);
  return "";
}

// =============================================================================================================
// Device: copies
// =============================================================================================================

// Warms the tensor map's 128 bytes into the constant/descriptor cache before the first copy uses it.
__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Loads: global -> shared, completion signalled on `bar` (mbarrier::complete_tx::bytes lowers its pending byte
// count by the box size). .shared::cluster with a CTA-local address targets this CTA. Coordinates are in
// elements, innermost first, and may be negative or past the end (zero fill). One thread issues each copy.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t c0, int32_t c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(
          smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
      : "memory");
}

__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t c0, int32_t c1,
                                            int32_t c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t c0, int32_t c1,
                                            int32_t c2, int32_t c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

__device__ __forceinline__ void tma_load_5d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t c0, int32_t c1,
                                            int32_t c2, int32_t c3, int32_t c4) {
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6, %7}], "
      "[%2];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4)
      : "memory");
}

// Stores: shared -> global, tracked in this thread's bulk async-group (commit_group / wait_group below). The
// shared tile must have been written by the generic proxy and then fenced (fence_proxy_async_shared) by every
// writer before the issuing thread got past a barrier with them. Out-of-bounds parts of the box are not written.
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(smem_u32(src)), "r"(c0), "r"(c1)
               : "memory");
}

__device__ __forceinline__ void tma_store_3d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1,
                                             int32_t c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}

__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1,
                                             int32_t c2, int32_t c3) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}

__device__ __forceinline__ void tma_store_5d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1,
                                             int32_t c2, int32_t c3, int32_t c4) {
  asm volatile("cp.async.bulk.tensor.5d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5, %6}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4)
               : "memory");
}

// Reductions: shared -> global like the stores, but each in-bounds element of the box is ADDED to the global
// element (atomically per element: boxes of several CTAs may overlap). The element type and the add's precision
// come from the tensor map (here fp32 maps: an fp32 add). Same contract as the stores: the shared tile written and
// fenced before the issue, tracked in the issuing thread's bulk async-group (bulk_commit_group; wait_group.read
// frees the tile, wait_group makes the adds visible), out-of-bounds elements skipped. SASS: UTMAREDG.{2D,3D}.ADD.
__device__ __forceinline__ void tma_reduce_add_2d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1) {
  asm volatile("cp.reduce.async.bulk.tensor.2d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(smem_u32(src)), "r"(c0), "r"(c1)
               : "memory");
}

__device__ __forceinline__ void tma_reduce_add_3d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1,
                                                  int32_t c2) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(smem_u32(src)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// Closes this thread's pending bulk stores and reductions into one bulk async-group.
__device__ __forceinline__ void bulk_commit_group() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

// Waits until at most kPending of this thread's bulk groups still READ their shared source: after it, the shared
// buffers of the older groups may be overwritten (their global writes may still be in flight).
template <int kPending>
__device__ __forceinline__ void bulk_wait_group_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
}

// Waits until at most kPending of this thread's bulk groups are incomplete (global writes / adds done and visible).
template <int kPending>
__device__ __forceinline__ void bulk_wait_group() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace flashcore::sm90::ptx
#endif  // FLASHCORE_SM90_EMU

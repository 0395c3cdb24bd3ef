// Shared-memory addressing for the Hopper PTX layer: 32-bit shared-window addresses, the 128-byte swizzle that TMA
// and wgmma agree on, stmatrix (registers -> shared memory in the mma fragment layout), the fp32 pair store
// st.shared.v2.f32, and bf16 packing.
//
// PTX ISA references (section titles; numbers drift between ISA versions):
//   "cvta"                                  generic -> shared-window address conversion
//   "stmatrix"                              warp-wide store of 8x8 b16 matrices
//   "st"                                    st.shared.v2.f32, a per-thread vector store
//   "Tensor copy ... swizzling modes"       the 128B swizzle pattern (also CUDA programming guide, "TMA swizzle")
#pragma once

#include <cstdint>

namespace flashcore::sm90::ptx {

// ---------------------------------------------------------------------------------------------------------------
// 128-byte swizzle. A tile stored with it is a sequence of 128-byte rows; within each group of 8 rows (1024 bytes,
// the "swizzle atom"), the 16-byte chunk c of row r is stored at chunk position c ^ (r % 8). Equivalently, with
// the tile base 1024-byte aligned: byte-address bits [4:6] ^= bits [7:9]. Consequences used in this layer:
//   * the 8 rows of an 8x8 b16 matrix (one 16-byte chunk per row, same logical chunk c) land in 8 distinct
//     chunk positions = all 32 banks: stmatrix / ldmatrix on such a tile are bank-conflict free;
//   * TMA (CU_TENSOR_MAP_SWIZZLE_128B) and wgmma (descriptor swizzle mode 1) apply the same XOR in hardware, so a
//     tile TMA wrote is what wgmma reads, and a tile we write with swizzle128_offset is what a TMA store reads.
constexpr uint32_t kSwizzle128Row = 128;     // bytes per swizzled row: 64 bf16 values
constexpr uint32_t kSwizzle128Atom = 1024;   // 8 rows x 128 B: the pattern repeats, tiles start on this alignment
constexpr uint32_t kSwizzleChunk = 16;       // bytes per swizzled unit (one 8-value b16 chunk)
constexpr uint32_t kSwizzle128Rows = kSwizzle128Atom / kSwizzle128Row;  // 8 rows per atom

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 128B-swizzled tile whose base is 1024-aligned.
__host__ __device__ constexpr uint32_t swizzle128_offset(uint32_t row, uint32_t chunk) {
  return row * kSwizzle128Row + ((chunk ^ (row % kSwizzle128Rows)) * kSwizzleChunk);
}

}  // namespace flashcore::sm90::ptx

#if defined(FLASHCORE_SM90_EMU)
#include "../../cuda_emu/ptx_smem.h"  // the CPU model of the functions below (csrc/cuda_emu)
#else
namespace flashcore::sm90::ptx {

// The 32-bit address of `ptr` in the CTA's shared-memory window: what every .shared:: instruction and every wgmma
// descriptor takes. A generic pointer is 64 bits; the window is < 2^18 bytes, so 32 bits always hold it.
__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// The CTA's dynamic shared memory (the size the launch asked for). Every extern __shared__ array names the same
// bytes; declaring it here, 1024-byte aligned (the 128B swizzle atom), keeps the kernels from each declaring their
// own. The alignment is what the declaration asks of the compiler; kernels that need it at run time still check
// or round up (the runtime only promises 16 bytes for the dynamic base).
__device__ __forceinline__ uint8_t* dynamic_smem() {
  extern __shared__ __align__(1024) uint8_t flashcore_dynamic_smem[];
  return flashcore_dynamic_smem;
}

// ---------------------------------------------------------------------------------------------------------------
// stmatrix.sync.aligned.x4.m8n8.shared.b16: the warp stores four 8x8 matrices of 16-bit values.
//   * register r[i] of lane l holds row l/4, columns 2*(l%4) and 2*(l%4)+1 of matrix i (low half = lower column);
//     this is exactly the mma / wgmma accumulator fragment of an 8-row x 8-column block (see layout.cuh);
//   * lane l supplies the shared address of row l%8 of matrix l/8 (16 contiguous bytes).
// One instruction moves 512 bytes; with a swizzled destination it is conflict free.
__device__ __forceinline__ void stmatrix_x4(uint32_t row_addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.x4.m8n8.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(row_addr), "r"(r0),
               "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

// st.shared.v2.f32: two fp32 values to 8 consecutive bytes at window address `addr` (8-byte aligned); one STS.64.
// A helper, not a C++ store, for tiles an async-proxy access (TMA store / reduce) reads next: the CPU model sees the
// write and checks the writer's fence.proxy.async (csrc/cuda_emu/ptx_proxy.h).
__device__ __forceinline__ void st_shared_v2_f32(uint32_t addr, float x, float y) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(x), "f"(y) : "memory");
}

// st.shared.v4.b32 of zeros: the 16 bytes at window address `addr` (16-byte aligned) cleared; one STS.128. Modelled
// like st_shared_v2_f32, for tiles a wgmma or TMA access reads next.
__device__ __forceinline__ void st_shared_zero16(uint32_t addr) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0u) : "memory");
}

// Two fp32 values rounded (to nearest even) to bf16 and packed: `lo` in bits 0-15, `hi` in bits 16-31, the order
// in which consecutive columns sit in a fragment register. cvt.rn.bf16x2.f32 d, a, b puts a in the HIGH half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  uint32_t packed;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(packed) : "f"(hi), "f"(lo));
  return packed;
}

// The same for fp16 (cvt.rn.f16x2.f32 has the same operand order).
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  uint32_t packed;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(packed) : "f"(hi), "f"(lo));
  return packed;
}

}  // namespace flashcore::sm90::ptx
#endif  // FLASHCORE_SM90_EMU

// The kernel's dynamic shared memory as `uint8_t name[]`. A declaration macro because under nvcc the extern
// __shared__ array must be declared in the kernel itself: read through dynamic_smem()'s returned pointer, ptxas
// scheduled the sm_90a kernels differently. The CPU model has no __shared__ and hands out the CTA's buffer.
#if defined(FLASHCORE_SM90_EMU)
#define FLASHCORE_SM90_DYNAMIC_SMEM(name) uint8_t* const name = ::flashcore::sm90::ptx::dynamic_smem()
#else
#define FLASHCORE_SM90_DYNAMIC_SMEM(name) extern __shared__ uint8_t name[]
#endif

namespace flashcore::sm90::ptx {

// The kernel's shared-storage struct S at the first swizzle-atom boundary of dynamic shared memory: the base is
// only 16-byte aligned by contract (launches ask for kSwizzle128Atom bytes more), 128B-swizzled tiles need 1024.
template <class S>
__device__ __forceinline__ S& smem_storage(uint8_t* raw) {
  const uint32_t base = smem_u32(raw);
  const uint32_t pad = ((base + kSwizzle128Atom - 1) & ~(kSwizzle128Atom - 1)) - base;
  return *reinterpret_cast<S*>(raw + pad);
}

// Zeroes rows [row0, rows) of `tiles` 128B-swizzled tiles of `rows` rows each, `tile_bytes` apart from window address
// `first`: the swizzle only permutes 16-byte chunks within a row, so those rows are one contiguous byte range per
// tile. Thread `thread` of `threads` clears every threads-th chunk with st_shared_zero16; the caller fences
// (fence_proxy_async_shared) and synchronises before an async-proxy reader. The kernels use it for rows a tile
// loads past its sequence's end (masked, but 0 x inf = NaN in a wgmma). Rolled loops: rare work, and unrolled they
// held enough addresses to push a tight kernel (forward D = 256) into spills.
__device__ __forceinline__ void zero_swizzled_rows(uint32_t first, uint32_t tile_bytes, int tiles, int row0, int rows,
                                                   int thread, int threads) {
  constexpr int kChunksPerRow = kSwizzle128Row / kSwizzleChunk;
  const int chunks = (rows - row0) * kChunksPerRow;
#pragma unroll 1
  for (int tile = 0; tile < tiles; ++tile) {
    const uint32_t base = first + tile * tile_bytes + row0 * kSwizzle128Row;
#pragma unroll 1
    for (int c = thread; c < chunks; c += threads) st_shared_zero16(base + c * kSwizzleChunk);
  }
}

}  // namespace flashcore::sm90::ptx

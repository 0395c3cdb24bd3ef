// wgmma: warpgroup-level asynchronous matrix multiply-accumulate (sm_90a), D(64 x N, fp32) (+)= A(64 x 16) * B(16 x N).
//
// PTX ISA references (section titles, under "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions"):
//   "Matrix Descriptor" (anchor #asynchronous-warpgroup-level-matrix-shared-memory-layout-matrix-descriptor)
//   "Shared Memory Matrix Layout" (core matrices, K-major / MN-major, swizzling modes)
//   "wgmma.mma_async", "wgmma.fence", "wgmma.commit_group", "wgmma.wait_group"
//   "Register Fragments" (the accumulator and register-A layouts: see layout.cuh)
//
// One wgmma is issued by a whole warpgroup (4 consecutive warps, the first at a warp index divisible by 4) and runs
// asynchronously on the SM's tensor cores. Protocol, per batch of wgmmas:
//   wgmma_fence()        before the first wgmma that touches accumulator (or A) registers written by other code
//   wgmma_ss / wgmma_rs  issue (the instructions return at once)
//   wgmma_commit()       close the batch into a wgmma-group
//   wgmma_wait<n>()      block until at most n groups are pending; only then may the accumulators be read, and
//                        only then may the shared-memory operands of the completed groups be overwritten.
// Between issue and wait the accumulator registers belong to the tensor core. The compiler does not know that:
// fence_operands() (below) pins every accumulator register at a point in program order so that no ordinary
// instruction reading or writing them is moved across the issue or the wait.
#pragma once

#include <cstdint>

namespace flashcore::sm90::ptx {

// =============================================================================================================
// Shared-memory matrix descriptors
// =============================================================================================================
// A and B operands in shared memory are described by a 64-bit descriptor (PTX ISA "Matrix Descriptor"):
//
//   bits  0-13  start address >> 4     (shared-window byte address of the operand's first core matrix; the
//                                       address is 16-byte aligned, so its low 4 bits are dropped; 14 bits
//                                       reach 256 KB)
//   bits 16-29  leading byte offset >> 4  (LBO)
//   bits 32-45  stride byte offset >> 4   (SBO)
//   bits 49-51  matrix base offset     (the swizzle phase when the operand does not start on a swizzle-pattern
//                                       boundary; 0 for tiles aligned to the pattern: 1024 B for 128B swizzle)
//   bits 62-63  swizzle mode           0: none (interleaved 8x16 B core matrices), 1: 128B, 2: 64B, 3: 32B
//   other bits  0
//
// The unit of the layout is the core matrix: 8 rows x 16 bytes (8 x 8 for 16-bit types). For a K-major operand
// (rows along M or N, K contiguous - how both A and B of C = A * B^T sit after a TMA load) with 128B swizzle:
//   * each row of the tile is 128 bytes = 64 bf16 along K, rows stored one after another, swizzled per 8-row atom;
//   * SBO = 1024 B: the distance between consecutive groups of 8 rows (M or N direction);
//   * LBO is ignored: one wgmma reads K = 16 (32 bytes), which lies inside one 128-byte swizzled row, so there is
//     no second core matrix along K to locate. We store 1 (16 bytes).
//   * the k-th 16-wide K slice of a 64-wide tile starts 32*k bytes further: add 2*k to the descriptor (start
//     address field, 16-byte units). The hardware applies the swizzle XOR to the final addresses, which is why
//     stepping the start address inside a swizzled row is legal when the tile base is 1024-byte aligned.
// For an MN-major (transposed, imm-trans = 1) 128B-swizzled operand, rows run along K and each holds 64 consecutive
// M/N values (128 bytes); the swizzle atom is 64 (M/N) x 8 (K) values = 1024 bytes. The PTX ISA ("Strides",
// leading dimension stride table) defines LBO for MN-major swizzled layouts as the stride "from the first
// (swizzle-byte-size/16) rows to the next (swizzle-byte-size/16) rows" of the 128-bit-normalized matrix, i.e. from
// one 64-wide M/N panel to the next; SBO is then the stride between 8-row groups along K. For a tile stored as
// 64-column panels of R rows each (what a TMA box of 64 columns writes, panel after panel): LBO = R * 128 bytes,
// SBO = 1024. The attention forward reads V (keys x head_dim, head_dim contiguous) this way as the B operand of
// O += P * V, with K = keys. (Assembled and checked in SASS, not yet run on a GPU.)

enum class SmemSwizzle : uint64_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };  // encoding of bits 62-63

constexpr uint32_t kDescAddrShift = 4;           // addresses and offsets are stored in 16-byte units
constexpr uint64_t kDescFieldMask = 0x3FFF;      // 14-bit fields
constexpr int kDescLboShift = 16;
constexpr int kDescSboShift = 32;
constexpr int kDescSwizzleShift = 62;
constexpr uint32_t kSw128KMajorSbo = 1024;       // 8 rows x 128 B: next 8-row group of a 128B-swizzled K-major tile
constexpr uint32_t kSw128KMajorLbo = 16;         // ignored for swizzled K-major tiles (see above); encodes as 1

__host__ __device__ constexpr uint64_t make_smem_desc(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes,
                                                      SmemSwizzle swizzle) {
  return (static_cast<uint64_t>(smem_addr >> kDescAddrShift) & kDescFieldMask) |
         ((static_cast<uint64_t>(lbo_bytes >> kDescAddrShift) & kDescFieldMask) << kDescLboShift) |
         ((static_cast<uint64_t>(sbo_bytes >> kDescAddrShift) & kDescFieldMask) << kDescSboShift) |
         (static_cast<uint64_t>(swizzle) << kDescSwizzleShift);  // base offset (bits 49-51) = 0: aligned tiles
}

// Descriptor of a K-major, 128B-swizzled tile (what TMA writes with CU_TENSOR_MAP_SWIZZLE_128B and a 64-element
// bf16/fp16 inner box) starting at shared address `smem_addr` (1024-byte aligned).
__host__ __device__ constexpr uint64_t kmajor_sw128_desc(uint32_t smem_addr) {
  return make_smem_desc(smem_addr, kSw128KMajorLbo, kSw128KMajorSbo, SmemSwizzle::k128B);
}

// Descriptor of an MN-major, 128B-swizzled operand whose 64-wide M/N panels lie `panel_bytes` apart (see above);
// starts at shared address `smem_addr` (1024-byte aligned).
constexpr uint32_t kSw128MnMajorSbo = 1024;  // 8 K-rows x 128 B: the next 8-row group along K
__host__ __device__ constexpr uint64_t mnmajor_sw128_desc(uint32_t smem_addr, uint32_t panel_bytes) {
  return make_smem_desc(smem_addr, panel_bytes, kSw128MnMajorSbo, SmemSwizzle::k128B);
}

// The same descriptor moved `bytes` further (a multiple of 16 that keeps the address field below 2^14 units, i.e.
// inside shared memory: no carry into the next field). Only the low word changes, so a kernel that builds a base
// descriptor once and advances it per K step pays one 32-bit add per wgmma operand (a 64-bit add would carry).
__host__ __device__ constexpr uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  constexpr uint64_t kHighWord = 0xFFFFFFFF00000000ull;
  return (desc & kHighWord) | static_cast<uint32_t>(static_cast<uint32_t>(desc) + (bytes >> kDescAddrShift));
}

enum class MmaType { kBf16, kF16 };  // the 16-bit input types of the forms below

}  // namespace flashcore::sm90::ptx

#if defined(FLASHCORE_SM90_EMU)
#include "../../cuda_emu/ptx_wgmma.h"  // the CPU model of everything up to the wgmma_ss / wgmma_rs wrappers
#else
namespace flashcore::sm90::ptx {

// =============================================================================================================
// Ordering: fence / commit / wait and the register fence
// =============================================================================================================

// wgmma.fence: orders this warpgroup's earlier register accesses (accumulators, A fragments) and shared-memory
// writes before the wgmmas that follow. Required before the first wgmma of a batch when those registers were
// written by ordinary instructions (zeroing, rescaling, converting S into P).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  static_assert(kPending >= 0 && kPending <= 7, "wgmma.wait_group takes an immediate in [0, 7]");
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// The register fence: an empty asm that claims to read and write each register. It emits no instruction, but
// volatile asms keep their relative order, so a use of an accumulator cannot be hoisted above the fence, nor a
// def sunk below it. Call it on the accumulators right before wgmma_fence() and right after wgmma_commit() /
// wgmma_wait<>(); without it, ptxas may schedule e.g. the epilogue's reads of d before wgmma.wait_group.
template <int kRegs>
__device__ __forceinline__ void fence_operands(float (&regs)[kRegs]) {
#pragma unroll
  for (int i = 0; i < kRegs; ++i) asm volatile("" : "+f"(regs[i])::"memory");
}

template <int kRegs>
__device__ __forceinline__ void fence_operands(uint32_t (&regs)[kRegs]) {
#pragma unroll
  for (int i = 0; i < kRegs; ++i) asm volatile("" : "+r"(regs[i])::"memory");
}

// =============================================================================================================
// wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}.{bf16,f16}
// =============================================================================================================
//   SS form: d, a-desc, b-desc, scale-d, imm-scale-a, imm-scale-b, imm-trans-a, imm-trans-b
//   RS form: d, {a0, a1, a2, a3}, b-desc, scale-d, imm-scale-a, imm-scale-b, imm-trans-b
// d: N/2 fp32 registers per thread (layout.cuh). scale-d: predicate, false => D = A*B (the accumulators are not
// read: no need to zero them), true => D += A*B. imm-scale-a/b: +1 or -1 (negate an operand for free).
// imm-trans-a/b: 0 = K-major operand, 1 = MN-major (16-bit types only). For C = A * B^T with A (M, K) and B (N, K)
// both row-major, both operands are K-major: trans 0, 0.

// Accumulator register lists: FC_WGMMA_REGS_<R> is "%0, ..., %(R-1)" (asm templates need literal operand
// numbers), built from blocks of 8; FC_WGMMA_OPS_<R>(d) is the matching "+f" operand list over an array d.
#define FC_WGMMA_R8_0 "%0, %1, %2, %3, %4, %5, %6, %7"
#define FC_WGMMA_R8_1 ", %8, %9, %10, %11, %12, %13, %14, %15"
#define FC_WGMMA_R8_2 ", %16, %17, %18, %19, %20, %21, %22, %23"
#define FC_WGMMA_R8_3 ", %24, %25, %26, %27, %28, %29, %30, %31"
#define FC_WGMMA_R8_4 ", %32, %33, %34, %35, %36, %37, %38, %39"
#define FC_WGMMA_R8_5 ", %40, %41, %42, %43, %44, %45, %46, %47"
#define FC_WGMMA_R8_6 ", %48, %49, %50, %51, %52, %53, %54, %55"
#define FC_WGMMA_R8_7 ", %56, %57, %58, %59, %60, %61, %62, %63"
#define FC_WGMMA_R8_8 ", %64, %65, %66, %67, %68, %69, %70, %71"
#define FC_WGMMA_R8_9 ", %72, %73, %74, %75, %76, %77, %78, %79"
#define FC_WGMMA_R8_10 ", %80, %81, %82, %83, %84, %85, %86, %87"
#define FC_WGMMA_R8_11 ", %88, %89, %90, %91, %92, %93, %94, %95"
#define FC_WGMMA_R8_12 ", %96, %97, %98, %99, %100, %101, %102, %103"
#define FC_WGMMA_R8_13 ", %104, %105, %106, %107, %108, %109, %110, %111"
#define FC_WGMMA_R8_14 ", %112, %113, %114, %115, %116, %117, %118, %119"
#define FC_WGMMA_R8_15 ", %120, %121, %122, %123, %124, %125, %126, %127"
#define FC_WGMMA_REGS_32 FC_WGMMA_R8_0 FC_WGMMA_R8_1 FC_WGMMA_R8_2 FC_WGMMA_R8_3
#define FC_WGMMA_REGS_40 FC_WGMMA_R8_0 FC_WGMMA_R8_1 FC_WGMMA_R8_2 FC_WGMMA_R8_3 FC_WGMMA_R8_4
#define FC_WGMMA_REGS_48 FC_WGMMA_R8_0 FC_WGMMA_R8_1 FC_WGMMA_R8_2 FC_WGMMA_R8_3 FC_WGMMA_R8_4 FC_WGMMA_R8_5
#define FC_WGMMA_REGS_56 FC_WGMMA_R8_0 FC_WGMMA_R8_1 FC_WGMMA_R8_2 FC_WGMMA_R8_3 FC_WGMMA_R8_4 FC_WGMMA_R8_5 FC_WGMMA_R8_6
#define FC_WGMMA_REGS_64 FC_WGMMA_R8_0 FC_WGMMA_R8_1 FC_WGMMA_R8_2 FC_WGMMA_R8_3 FC_WGMMA_R8_4 FC_WGMMA_R8_5 FC_WGMMA_R8_6 FC_WGMMA_R8_7
#define FC_WGMMA_REGS_88 FC_WGMMA_R8_0 FC_WGMMA_R8_1 FC_WGMMA_R8_2 FC_WGMMA_R8_3 FC_WGMMA_R8_4 FC_WGMMA_R8_5 FC_WGMMA_R8_6 FC_WGMMA_R8_7 FC_WGMMA_R8_8 FC_WGMMA_R8_9 FC_WGMMA_R8_10
#define FC_WGMMA_REGS_96 FC_WGMMA_R8_0 FC_WGMMA_R8_1 FC_WGMMA_R8_2 FC_WGMMA_R8_3 FC_WGMMA_R8_4 FC_WGMMA_R8_5 FC_WGMMA_R8_6 FC_WGMMA_R8_7 FC_WGMMA_R8_8 FC_WGMMA_R8_9 FC_WGMMA_R8_10 FC_WGMMA_R8_11
#define FC_WGMMA_REGS_128 FC_WGMMA_R8_0 FC_WGMMA_R8_1 FC_WGMMA_R8_2 FC_WGMMA_R8_3 FC_WGMMA_R8_4 FC_WGMMA_R8_5 FC_WGMMA_R8_6 FC_WGMMA_R8_7 FC_WGMMA_R8_8 FC_WGMMA_R8_9 FC_WGMMA_R8_10 FC_WGMMA_R8_11 FC_WGMMA_R8_12 FC_WGMMA_R8_13 FC_WGMMA_R8_14 FC_WGMMA_R8_15
#define FC_WGMMA_OPS_8(d, i)                                                                                   \
  "+f"(d[(i) + 0]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]), "+f"(d[(i) + 5]), \
      "+f"(d[(i) + 6]), "+f"(d[(i) + 7])
#define FC_WGMMA_OPS_32(d) FC_WGMMA_OPS_8(d, 0), FC_WGMMA_OPS_8(d, 8), FC_WGMMA_OPS_8(d, 16), FC_WGMMA_OPS_8(d, 24)
#define FC_WGMMA_OPS_40(d) FC_WGMMA_OPS_8(d, 0), FC_WGMMA_OPS_8(d, 8), FC_WGMMA_OPS_8(d, 16), FC_WGMMA_OPS_8(d, 24), FC_WGMMA_OPS_8(d, 32)
#define FC_WGMMA_OPS_48(d) FC_WGMMA_OPS_8(d, 0), FC_WGMMA_OPS_8(d, 8), FC_WGMMA_OPS_8(d, 16), FC_WGMMA_OPS_8(d, 24), FC_WGMMA_OPS_8(d, 32), FC_WGMMA_OPS_8(d, 40)
#define FC_WGMMA_OPS_56(d) FC_WGMMA_OPS_8(d, 0), FC_WGMMA_OPS_8(d, 8), FC_WGMMA_OPS_8(d, 16), FC_WGMMA_OPS_8(d, 24), FC_WGMMA_OPS_8(d, 32), FC_WGMMA_OPS_8(d, 40), FC_WGMMA_OPS_8(d, 48)
#define FC_WGMMA_OPS_64(d) FC_WGMMA_OPS_8(d, 0), FC_WGMMA_OPS_8(d, 8), FC_WGMMA_OPS_8(d, 16), FC_WGMMA_OPS_8(d, 24), FC_WGMMA_OPS_8(d, 32), FC_WGMMA_OPS_8(d, 40), FC_WGMMA_OPS_8(d, 48), FC_WGMMA_OPS_8(d, 56)
#define FC_WGMMA_OPS_88(d) FC_WGMMA_OPS_8(d, 0), FC_WGMMA_OPS_8(d, 8), FC_WGMMA_OPS_8(d, 16), FC_WGMMA_OPS_8(d, 24), FC_WGMMA_OPS_8(d, 32), FC_WGMMA_OPS_8(d, 40), FC_WGMMA_OPS_8(d, 48), FC_WGMMA_OPS_8(d, 56), FC_WGMMA_OPS_8(d, 64), FC_WGMMA_OPS_8(d, 72), FC_WGMMA_OPS_8(d, 80)
#define FC_WGMMA_OPS_96(d) FC_WGMMA_OPS_8(d, 0), FC_WGMMA_OPS_8(d, 8), FC_WGMMA_OPS_8(d, 16), FC_WGMMA_OPS_8(d, 24), FC_WGMMA_OPS_8(d, 32), FC_WGMMA_OPS_8(d, 40), FC_WGMMA_OPS_8(d, 48), FC_WGMMA_OPS_8(d, 56), FC_WGMMA_OPS_8(d, 64), FC_WGMMA_OPS_8(d, 72), FC_WGMMA_OPS_8(d, 80), FC_WGMMA_OPS_8(d, 88)
#define FC_WGMMA_OPS_128(d) FC_WGMMA_OPS_8(d, 0), FC_WGMMA_OPS_8(d, 8), FC_WGMMA_OPS_8(d, 16), FC_WGMMA_OPS_8(d, 24), FC_WGMMA_OPS_8(d, 32), FC_WGMMA_OPS_8(d, 40), FC_WGMMA_OPS_8(d, 48), FC_WGMMA_OPS_8(d, 56), FC_WGMMA_OPS_8(d, 64), FC_WGMMA_OPS_8(d, 72), FC_WGMMA_OPS_8(d, 80), FC_WGMMA_OPS_8(d, 88), FC_WGMMA_OPS_8(d, 96), FC_WGMMA_OPS_8(d, 104), FC_WGMMA_OPS_8(d, 112), FC_WGMMA_OPS_8(d, 120)

// Instruction text. The operand numbers after the accumulators are passed in (they depend on N). scale-d arrives
// as a 32-bit register and becomes the predicate p.
#define FC_WGMMA_SS_TEXT(N, TYPE, REGS, A, B, SD, SA, SB, TA, TB)                                          \
  "{\n"                                                                                                   \
  "  .reg .pred p;\n"                                                                                     \
  "  setp.ne.b32 p, %" #SD ", 0;\n"                                                                       \
  "  wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " {" REGS "}, %" #A ", %" #B ", p, %" #SA \
  ", %" #SB ", %" #TA ", %" #TB ";\n"                                                                     \
  "}\n"
#define FC_WGMMA_RS_TEXT(N, TYPE, REGS, A0, A1, A2, A3, B, SD, SA, SB, TB)                                       \
  "{\n"                                                                                                         \
  "  .reg .pred p;\n"                                                                                           \
  "  setp.ne.b32 p, %" #SD ", 0;\n"                                                                             \
  "  wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " {" REGS "}, {%" #A0 ", %" #A1 ", %" #A2 \
  ", %" #A3 "}, %" #B ", p, %" #SA ", %" #SB ", %" #TB ";\n"                                                    \
  "}\n"

template <int N>
struct Wgmma;  // specialized below for N = 64, 80, 96, 112, 128, 176, 192, 256 (the attention tiles' N)

// One specialization per N: the SS and RS forms, each for bf16 and f16 (the type is part of the opcode text).
// Operand numbering: accumulators 0..R-1 (R = N/2), then the SS tail R..R+6 or the RS tail R..R+8.
#define FC_DEFINE_WGMMA(N, REGS, OPS, R0, R1, R2, R3, R4, R5, R6, R7, R8)                                         \
  template <>                                                                                                   \
  struct Wgmma<N> {                                                                                             \
    static constexpr int kAccRegs = (N) / 2;                                                                    \
    template <MmaType kType, int kScaleA, int kScaleB, int kTransA, int kTransB>                                \
    __device__ static __forceinline__ void ss(float (&d)[kAccRegs], uint64_t desc_a, uint64_t desc_b,           \
                                              uint32_t scale_d) {                                               \
      if constexpr (kType == MmaType::kBf16) {                                                                  \
        asm volatile(FC_WGMMA_SS_TEXT(N, "bf16", REGS, R0, R1, R2, R3, R4, R5, R6)                              \
                     : OPS(d)                                                                                   \
                     : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kScaleA), "n"(kScaleB), "n"(kTransA),        \
                       "n"(kTransB));                                                                           \
      } else {                                                                                                  \
        asm volatile(FC_WGMMA_SS_TEXT(N, "f16", REGS, R0, R1, R2, R3, R4, R5, R6)                               \
                     : OPS(d)                                                                                   \
                     : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kScaleA), "n"(kScaleB), "n"(kTransA),        \
                       "n"(kTransB));                                                                           \
      }                                                                                                         \
    }                                                                                                           \
    template <MmaType kType, int kScaleA, int kScaleB, int kTransB>                                             \
    __device__ static __forceinline__ void rs(float (&d)[kAccRegs], const uint32_t (&a)[4], uint64_t desc_b,    \
                                              uint32_t scale_d) {                                               \
      if constexpr (kType == MmaType::kBf16) {                                                                  \
        asm volatile(FC_WGMMA_RS_TEXT(N, "bf16", REGS, R0, R1, R2, R3, R4, R5, R6, R7, R8)                      \
                     : OPS(d)                                                                                   \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kScaleA),     \
                       "n"(kScaleB), "n"(kTransB));                                                             \
      } else {                                                                                                  \
        asm volatile(FC_WGMMA_RS_TEXT(N, "f16", REGS, R0, R1, R2, R3, R4, R5, R6, R7, R8)                       \
                     : OPS(d)                                                                                   \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kScaleA),     \
                       "n"(kScaleB), "n"(kTransB));                                                             \
      }                                                                                                         \
    }                                                                                                           \
  };

FC_DEFINE_WGMMA(64, FC_WGMMA_REGS_32, FC_WGMMA_OPS_32, 32, 33, 34, 35, 36, 37, 38, 39, 40)
FC_DEFINE_WGMMA(80, FC_WGMMA_REGS_40, FC_WGMMA_OPS_40, 40, 41, 42, 43, 44, 45, 46, 47, 48)
FC_DEFINE_WGMMA(96, FC_WGMMA_REGS_48, FC_WGMMA_OPS_48, 48, 49, 50, 51, 52, 53, 54, 55, 56)
FC_DEFINE_WGMMA(112, FC_WGMMA_REGS_56, FC_WGMMA_OPS_56, 56, 57, 58, 59, 60, 61, 62, 63, 64)
FC_DEFINE_WGMMA(128, FC_WGMMA_REGS_64, FC_WGMMA_OPS_64, 64, 65, 66, 67, 68, 69, 70, 71, 72)
FC_DEFINE_WGMMA(176, FC_WGMMA_REGS_88, FC_WGMMA_OPS_88, 88, 89, 90, 91, 92, 93, 94, 95, 96)
FC_DEFINE_WGMMA(192, FC_WGMMA_REGS_96, FC_WGMMA_OPS_96, 96, 97, 98, 99, 100, 101, 102, 103, 104)
FC_DEFINE_WGMMA(256, FC_WGMMA_REGS_128, FC_WGMMA_OPS_128, 128, 129, 130, 131, 132, 133, 134, 135, 136)

#undef FC_DEFINE_WGMMA
#undef FC_WGMMA_RS_TEXT
#undef FC_WGMMA_SS_TEXT
#undef FC_WGMMA_OPS_32
#undef FC_WGMMA_OPS_40
#undef FC_WGMMA_OPS_48
#undef FC_WGMMA_OPS_56
#undef FC_WGMMA_OPS_64
#undef FC_WGMMA_OPS_88
#undef FC_WGMMA_OPS_96
#undef FC_WGMMA_OPS_128
#undef FC_WGMMA_OPS_8
#undef FC_WGMMA_REGS_32
#undef FC_WGMMA_REGS_40
#undef FC_WGMMA_REGS_48
#undef FC_WGMMA_REGS_56
#undef FC_WGMMA_REGS_64
#undef FC_WGMMA_REGS_88
#undef FC_WGMMA_REGS_96
#undef FC_WGMMA_REGS_128
#undef FC_WGMMA_R8_0
#undef FC_WGMMA_R8_1
#undef FC_WGMMA_R8_2
#undef FC_WGMMA_R8_3
#undef FC_WGMMA_R8_4
#undef FC_WGMMA_R8_5
#undef FC_WGMMA_R8_6
#undef FC_WGMMA_R8_7
#undef FC_WGMMA_R8_8
#undef FC_WGMMA_R8_9
#undef FC_WGMMA_R8_10
#undef FC_WGMMA_R8_11
#undef FC_WGMMA_R8_12
#undef FC_WGMMA_R8_13
#undef FC_WGMMA_R8_14
#undef FC_WGMMA_R8_15

}  // namespace flashcore::sm90::ptx
#endif  // FLASHCORE_SM90_EMU

namespace flashcore::sm90::ptx {

// D (+)= A * B, A and B from shared memory. `accumulate` false overwrites D (scale-d = 0).
template <int N, MmaType kType = MmaType::kBf16, int kTransA = 0, int kTransB = 0, int kScaleA = 1, int kScaleB = 1>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  static_assert(kScaleA == 1 || kScaleA == -1, "imm-scale-a is +1 or -1");
  static_assert(kScaleB == 1 || kScaleB == -1, "imm-scale-b is +1 or -1");
  Wgmma<N>::template ss<kType, kScaleA, kScaleB, kTransA, kTransB>(d, desc_a, desc_b, accumulate ? 1u : 0u);
}

// D (+)= A * B, A from registers (four b32 registers of packed 16-bit values: layout.cuh, a_frag_from_acc),
// B from shared memory. There is no trans-a: a register A is always K-major.
template <int N, MmaType kType = MmaType::kBf16, int kTransB = 0, int kScaleA = 1, int kScaleB = 1>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                         bool accumulate) {
  static_assert(kScaleA == 1 || kScaleA == -1, "imm-scale-a is +1 or -1");
  static_assert(kScaleB == 1 || kScaleB == -1, "imm-scale-b is +1 or -1");
  Wgmma<N>::template rs<kType, kScaleA, kScaleB, kTransB>(d, a, desc_b, accumulate ? 1u : 0u);
}

}  // namespace flashcore::sm90::ptx

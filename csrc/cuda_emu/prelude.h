// The CUDA language for a host compiler: force-included (g++ -std=c++20 -include csrc/cuda_emu/prelude.h
// -DFLASHCORE_SM90_EMU -I $CUDA_HOME/include) before a kernel source so that it compiles unchanged as host C++
// and runs on the engine (emu.h): one fiber per CUDA thread.
//
// The CUDA headers come first: without __CUDACC__ they compile for the host and give the vector types (uint3,
// dim3, float2, ...), __nv_bfloat16 / __half with host conversions, and __host__ / __device__ / __global__ /
// __shared__ / __grid_constant__ defined empty. This file fills the gaps: the built-in variables, barriers and warp
// collectives, atomics, load/store hints, and the device math the host lacks under CUDA's names.
#pragma once

#if !defined(FLASHCORE_SM90_EMU)
#error "prelude.h is for the CPU model of sm_90a: compile with -DFLASHCORE_SM90_EMU"
#endif

#include <cuda_runtime.h>
#include <device_launch_parameters.h>  // extern "C" threadIdx, blockIdx, ... (defined by engine.cpp)
#include <math.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "emu.h"

#undef __launch_bounds__
#define __launch_bounds__(...)  // the register cap it implies reaches the model as LaunchOptions::registers_per_thread
#undef __forceinline__
#define __forceinline__ inline  // always_inline on whole kernel bodies would only slow the host build

namespace flashcore::cuda_emu::lang {

constexpr unsigned kFullWarpMask = 0xffffffffu;  // every lane: the only mask the model accepts

inline void require_full_mask(unsigned mask, const char* op) {
  if (mask != kFullWarpMask) {
    fail(std::string(op) + " with member mask " + std::to_string(mask) +
         ": the model runs whole warps only (mask 0xffffffff)");
  }
}

inline int lane() { return linear_thread() % kWarpSize; }

inline void check_width(int width, const char* op) {
  if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0) {
    fail(std::string(op) + " with width " + std::to_string(width) + " (a power of two in 1..32)");
  }
}

// One shuffle: every lane names the lane it reads (computed before the rendezvous from its own operands).
template <class T>
T shuffle(const char* name, unsigned mask, T value, int source) {
  static_assert(std::is_default_constructible_v<T> && std::is_copy_assignable_v<T>, "shuffles copy values");
  require_full_mask(mask, name);
  struct In {
    T value;
    int source;
  };
  return group_collective<In, T>(kWarpSize, name, In{value, source}, [](const In* const* ins, T* const* outs) {
    for (int l = 0; l < kWarpSize; ++l) *outs[l] = ins[ins[l]->source]->value;
  });
}

// One vote: every lane's predicate to every lane.
inline unsigned ballot(const char* name, unsigned mask, int predicate) {
  require_full_mask(mask, name);
  return group_collective<int, unsigned>(kWarpSize, name, predicate, [](const int* const* ins, unsigned* const* outs) {
    unsigned bits = 0;
    for (int l = 0; l < kWarpSize; ++l) bits |= (*ins[l] != 0 ? 1u : 0u) << l;
    for (int l = 0; l < kWarpSize; ++l) *outs[l] = bits;
  });
}

template <class T>
T atomic_add(T* address, T value) {
  const T old = std::atomic_ref<T>(*address).fetch_add(value);
  progress();  // a waiter polling this word may proceed
  return old;
}

}  // namespace flashcore::cuda_emu::lang

// ---- built-in variables -----------------------------------------------------------------------------------------
// threadIdx, blockIdx, blockDim, gridDim and warpSize are the CUDA headers' own extern "C" declarations, defined by
// engine.cpp and set by its scheduler for the fiber it resumes.
static_assert(sizeof(uint3) == 3 * sizeof(unsigned) && sizeof(dim3) == 3 * sizeof(unsigned));

// ---- barriers and warp collectives ------------------------------------------------------------------------------
inline void __syncthreads() { ::flashcore::cuda_emu::named_barrier_sync(0, 0); }

inline void __syncwarp(unsigned mask = ::flashcore::cuda_emu::lang::kFullWarpMask) {
  namespace lang = ::flashcore::cuda_emu::lang;
  lang::require_full_mask(mask, "__syncwarp");
  ::flashcore::cuda_emu::group_sync(::flashcore::cuda_emu::kWarpSize, "__syncwarp", nullptr, nullptr,
                                    [](const void*, const void* const*, void* const*) {}, nullptr);
}

// Shuffles, with CUDA's width semantics: the warp splits into segments of `width` lanes; up / down / xor that
// leave the lane's segment return the lane's own value, idx wraps within the segment.
template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  namespace lang = ::flashcore::cuda_emu::lang;
  lang::check_width(width, "__shfl_sync");
  const int lane = lang::lane();
  return lang::shuffle("shfl.sync.idx", mask, var, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}

template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  namespace lang = ::flashcore::cuda_emu::lang;
  lang::check_width(width, "__shfl_up_sync");
  const int lane = lang::lane();
  const bool inside = static_cast<unsigned>(lane & (width - 1)) >= delta;
  return lang::shuffle("shfl.sync.up", mask, var, inside ? lane - static_cast<int>(delta) : lane);
}

template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  namespace lang = ::flashcore::cuda_emu::lang;
  lang::check_width(width, "__shfl_down_sync");
  const int lane = lang::lane();
  const bool inside = static_cast<unsigned>(lane & (width - 1)) + delta < static_cast<unsigned>(width);
  return lang::shuffle("shfl.sync.down", mask, var, inside ? lane + static_cast<int>(delta) : lane);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  namespace lang = ::flashcore::cuda_emu::lang;
  lang::check_width(width, "__shfl_xor_sync");
  const int lane = lang::lane();
  const int source = lane ^ lane_mask;
  const bool inside = source >= 0 && source < (lane & ~(width - 1)) + width;  // earlier segments are readable
  return lang::shuffle("shfl.sync.bfly", mask, var, inside ? source : lane);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return ::flashcore::cuda_emu::lang::ballot("vote.sync.ballot", mask, predicate);
}
inline int __all_sync(unsigned mask, int predicate) {
  return ::flashcore::cuda_emu::lang::ballot("vote.sync.all", mask, predicate) == 0xffffffffu;
}
inline int __any_sync(unsigned mask, int predicate) {
  return ::flashcore::cuda_emu::lang::ballot("vote.sync.any", mask, predicate) != 0;
}
inline unsigned __activemask() { return ::flashcore::cuda_emu::lang::kFullWarpMask; }

// ---- memory ordering, atomics, load / store hints ---------------------------------------------------------------
// Everything runs on one OS thread, so the fences order nothing the host could reorder across fibers; they stay
// real fences (cheap) and count as progress for the deadlock detector (a fence usually precedes a release).
inline void __threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  ::flashcore::cuda_emu::progress();
}
inline void __threadfence_block() { __threadfence(); }
inline void __threadfence_system() { __threadfence(); }

inline int atomicAdd(int* address, int value) { return ::flashcore::cuda_emu::lang::atomic_add(address, value); }
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return ::flashcore::cuda_emu::lang::atomic_add(address, value);
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return ::flashcore::cuda_emu::lang::atomic_add(address, value);
}
inline float atomicAdd(float* address, float value) { return ::flashcore::cuda_emu::lang::atomic_add(address, value); }
inline int atomicExch(int* address, int value) {
  const int old = std::atomic_ref<int>(*address).exchange(value);
  ::flashcore::cuda_emu::progress();
  return old;
}
inline int atomicCAS(int* address, int compare, int value) {
  std::atomic_ref<int>(*address).compare_exchange_strong(compare, value);
  ::flashcore::cuda_emu::progress();
  return compare;  // the old value either way
}
inline int atomicMax(int* address, int value) {
  std::atomic_ref<int> a(*address);
  int old = a.load();
  while (old < value && !a.compare_exchange_weak(old, value)) {
  }
  ::flashcore::cuda_emu::progress();
  return old;
}

// Cache-policy loads and stores: plain accesses on the host.
template <class T>
T __ldg(const T* p) {
  return *p;
}
template <class T>
T __ldcg(const T* p) {
  return *p;
}
template <class T>
T __ldca(const T* p) {
  return *p;
}
template <class T>
T __ldcs(const T* p) {
  return *p;
}
template <class T>
T __ldlu(const T* p) {
  return *p;
}
template <class T>
T __ldcv(const T* p) {
  return *p;
}
template <class T>
void __stcg(T* p, T v) {
  *p = v;
}
template <class T>
void __stcs(T* p, T v) {
  *p = v;
}
template <class T>
void __stwb(T* p, T v) {
  *p = v;
}
template <class T>
void __stwt(T* p, T v) {
  *p = v;
}

inline size_t __cvta_generic_to_shared(const void* p) { return ::flashcore::cuda_emu::smem_address(p); }

inline void __nanosleep(unsigned) { ::flashcore::cuda_emu::spin("__nanosleep"); }

// ---- device math under CUDA's names ------------------------------------------------------------------------------
// The fast approximations (__expf, __fdividef, ...) are computed exactly: their hardware error (a few ulp) is far
// below the tolerances the tests derive from the 16-bit outputs.
inline float __fdividef(float x, float y) { return x / y; }
inline float __expf(float x) { return ::expf(x); }
inline float __exp10f(float x) { return ::exp10f(x); }
inline float __logf(float x) { return ::logf(x); }
inline float __log2f(float x) { return ::log2f(x); }
inline float __log10f(float x) { return ::log10f(x); }
inline float __sinf(float x) { return ::sinf(x); }
inline float __cosf(float x) { return ::cosf(x); }
inline float __tanf(float x) { return ::tanf(x); }
inline float __powf(float x, float y) { return ::powf(x, y); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }  // NaN -> 0
inline float rsqrtf(float x) { return 1.0f / ::sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / ::sqrtf(x); }
inline float __fsqrt_rn(float x) { return ::sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fmaf_rn(float x, float y, float z) { return ::fmaf(x, y, z); }

inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline int __float2int_rn(float x) { return static_cast<int>(::nearbyintf(x)); }  // default rounding: to nearest even
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(::nearbyintf(x)); }

inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned>(x)) + 1; }
inline int __ffsll(long long x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(x)) + 1; }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

// CUDA's global min / max overloads (int, unsigned, float, ... and mixed): the usual arithmetic conversions.
template <class A, class B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
constexpr std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmin(static_cast<C>(a), static_cast<C>(b));  // fminf
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
constexpr std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmax(static_cast<C>(a), static_cast<C>(b));  // fmaxf
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

// The CPU model of wgmma (csrc/cuda/ptx/wgmma.cuh and wgmma_mn.cuh, included there under FLASHCORE_SM90_EMU after
// the shared descriptor builders and MmaType). Written from the PTX ISA, "Asynchronous Warpgroup Level Matrix
// Multiply-Accumulate Instructions", independently of the kernel-side comments:
//
// * Matrix descriptor ("Matrix Descriptor Format"): bits 0-13 start address >> 4, 16-29 leading dimension byte
//   offset (LBO) >> 4, 32-45 stride dimension byte offset (SBO) >> 4, 49-51 matrix base offset, 62-63 swizzle
//   (0 none, 1 128B, 2 64B, 3 32B). Base offset 0 "when the repeating pattern of the specified swizzling mode starts"
//   on its boundary (1024 / 512 / 256 B); the model takes that case only and fails on a non-zero base offset.
// * Layouts ("Canonical Layouts", CuTe notation in elements, T = 8 16-bit elements = 16 bytes, S = swizzle bytes):
//     K-major,  none:     ((8,m),(T,2k)) : ((1T,SBO),(1,LBO))
//     K-major,  swizzled: ((8,m),(T,2k)) : ((S/16 T,SBO),(1,T))          row of S bytes, K contiguous in it
//     MN-major, none:     ((T,1,m),(8,k)) : ((1,T,SBO),(1T,LBO))
//     MN-major, swizzled: ((T,S/16,m),(8,k)) : ((1,T,LBO),(S/16 T,SBO))  S/2 MN values per row, LBO to the next
//   then Swizzle<log2(S/16),4,3> on the byte address: the 16-byte chunk bits 4.. XOR the 128-byte line bits 7..,
//   the same pattern TMA writes (ptx_tma.h swizzle_address). The swizzle is applied to the absolute shared address,
//   which is what makes "advance the start address inside a swizzled row" (K slices, MN pieces) meaningful; the
//   model requires such an operand not to run past the end of its swizzled row.
// * Fragments ("Register Fragments", figures for m64nNk16): thread t = lane l of warp w of the warpgroup;
//     accumulator register i: row 16 w + l / 4 + 8 ((i / 2) % 2), column 8 (i / 4) + 2 (l % 4) + i % 2;
//     A register r (two 16-bit values, low half first): row 16 w + l / 4 + 8 (r % 2), column 8 (r / 2) + 2 (l % 4) + h.
// * Asynchrony: mma_async only records the operation; commit_group closes the warpgroup's open operations into a
//   group; wait_group N executes, in order, every committed group but the newest N. Shared memory and the
//   accumulators are read at that time (the ISA forbids touching the accumulators in between; reading shared memory
//   late exposes a kernel that frees an operand buffer before its wgmma completed). Register A values are taken at
//   issue and must be unchanged at the wait (the ISA forbids writing them in between too). Products are exact in
//   double; the sum is rounded to fp32 once.
// * Ordering ("wgmma.fence"): the fence is required before the first mma_async and between any register access by
//   a thread of the warpgroup and an mma_async that uses those registers as accumulator or A fragment (except
//   accumulators chained between mma_asyncs of the same shape). The model observes register writes by value: per
//   thread and register array (keyed by address) it keeps the values the model last knew -- at the previous
//   mma_async that used the array, updated when a wait executes the op that writes it -- and the thread's count of
//   wgmma.fence at that time. An mma_async that finds the values changed with no fence since fails; one that finds
//   an array it never saw needs at least one fence by the thread before. Blind spots: a write that leaves the value
//   unchanged, a write made before a fence that came after the last mma_async but then more writes after the
//   fence, register reads (WAR), and a fence long ago before an array's first use.
// * Shared operands are async-proxy reads: a chunk written by stmatrix and not yet fenced with fence.proxy.async
//   fails the issue (ptx_proxy.h).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu.h"
#include "ptx_proxy.h"
#include "ptx_smem.h"

namespace flashcore::cuda_emu {

constexpr int kWgmmaM = 64, kWgmmaK = 16;  // m64nNk16
constexpr int kDescFieldBits = 14;
constexpr uint64_t kDescField = (1ull << kDescFieldBits) - 1;
constexpr int kDescLbo = 16, kDescSbo = 32, kDescBase = 49, kDescSwizzle = 62;
constexpr uint64_t kDescUsedBits = kDescField | (kDescField << kDescLbo) | (kDescField << kDescSbo) |
                                   (7ull << kDescBase) | (3ull << kDescSwizzle);
constexpr uint32_t kDescUnit = 16;   // addresses and offsets are encoded >> 4
constexpr uint32_t kElemBytes = 2;   // the 16-bit types (bf16, f16) are the only ones modelled
constexpr uint32_t kCoreRowBytes = 16;  // one row of an 8 x 16-byte core matrix
constexpr uint32_t kSwizzleLineBytes = 128;  // the swizzle XORs chunk bits with the index of this line

struct SmemOperand {
  uint32_t start, lbo, sbo, span;  // bytes; span: 0 (no swizzle), 32, 64, 128
};

inline SmemOperand decode_descriptor(uint64_t desc, const char* which) {
  if (desc & ~kDescUsedBits) {
    char hex[24];
    std::snprintf(hex, sizeof hex, "0x%016llx", static_cast<unsigned long long>(desc));
    fail(std::string("wgmma: descriptor of ") + which + " (" + hex +
         ") has bits set outside its fields (an address advance that carried out of the 14-bit start field?)");
  }
  const uint32_t base_offset = static_cast<uint32_t>((desc >> kDescBase) & 7);
  if (base_offset != 0) {
    fail(std::string("wgmma: descriptor of ") + which + " has matrix base offset " + std::to_string(base_offset) +
         "; only 0 (patterns on their 1024/512/256-byte boundary) is modelled");
  }
  static constexpr uint32_t kSpan[4] = {0, 128, 64, 32};  // encoding of bits 62-63
  return SmemOperand{static_cast<uint32_t>(desc & kDescField) * kDescUnit,
                     static_cast<uint32_t>((desc >> kDescLbo) & kDescField) * kDescUnit,
                     static_cast<uint32_t>((desc >> kDescSbo) & kDescField) * kDescUnit,
                     kSpan[desc >> kDescSwizzle]};
}

// Window address of element (mn, k) of an operand (mn along M or N, k along K), per the canonical layouts above.
inline uint32_t operand_address(const SmemOperand& o, bool mn_major, int mn, int k) {
  const uint32_t m = static_cast<uint32_t>(mn), kk = static_cast<uint32_t>(k);
  constexpr uint32_t kT = kCoreRowBytes / kElemBytes, kRows = 8;  // 8 elements per 16 bytes; 8 rows per core matrix
  uint32_t offset;
  if (!mn_major && o.span == 0) {
    offset = (m % kRows) * kCoreRowBytes + (m / kRows) * o.sbo + (kk % kT) * kElemBytes + (kk / kT) * o.lbo;
  } else if (!mn_major) {
    offset = (m % kRows) * o.span + (m / kRows) * o.sbo + kk * kElemBytes;
  } else if (o.span == 0) {
    offset = (m % kT) * kElemBytes + (m / kT) * o.sbo + (kk % kRows) * kCoreRowBytes + (kk / kRows) * o.lbo;
  } else {
    const uint32_t per_row = o.span / kElemBytes;
    offset = (m % per_row) * kElemBytes + (m / per_row) * o.lbo + (kk % kRows) * o.span + (kk / kRows) * o.sbo;
  }
  const uint32_t addr = o.start + offset;
  if (o.span == 0) return addr;
  const uint32_t mask = o.span / kCoreRowBytes - 1;  // log2(S / 16) chunk bits; as ptx_tma.h's swizzle_address
  return addr ^ (((addr / kSwizzleLineBytes) & mask) * kCoreRowBytes);
}

// An operand in shared memory: the window address of each of its rows x 16 elements, and the memory they span
// (resolved and range-checked at issue; read at the wait).
struct OperandView {
  std::vector<uint32_t> addr;  // [row][k]
  uint32_t lo = 0;             // lowest address
  const uint8_t* mem = nullptr;  // pointer of address lo

  double load(size_t i, bool bf16) const {
    uint16_t h;
    std::memcpy(&h, mem + (addr[i] - lo), kElemBytes);
    return bf16 ? bf16_to_double(h) : f16_to_double(h);
  }
};

// An operand's addresses, checked: inside the launch's shared memory, and (swizzled) starting on line 0 of a
// pattern and not running past the end of the swizzled row the start address points into.
inline OperandView operand_view(uint64_t desc, bool mn_major, int rows, const char* which) {
  const SmemOperand o = decode_descriptor(desc, which);
  if (o.span != 0) {
    // Bytes read along one swizzled row: the K slice (K-major), or the MN values up to a row's worth (MN-major).
    const uint32_t row_values = o.span / kElemBytes;
    const uint32_t along = mn_major ? (static_cast<uint32_t>(rows) < row_values ? rows : row_values) : kWgmmaK;
    const uint32_t used = along * kElemBytes;
    // A start inside a pattern's later lines is where "swizzle the absolute address" (this model) and "swizzle
    // relative to a pattern that starts at the operand, corrected by the base offset" differ; the ISA does not
    // settle which the hardware does, so the model refuses rather than guess. (Starts inside the first line --
    // K slices, MN pieces -- and on whole patterns agree under both readings.)
    const uint32_t line = (o.start / kSwizzleLineBytes) % (o.span / kCoreRowBytes);
    if (line != 0) {
      fail(std::string("wgmma: ") + which + " starts at line " + std::to_string(line) + " of its " +
           std::to_string(o.span / kCoreRowBytes * kSwizzleLineBytes) + "-byte swizzle pattern (window address " +
           std::to_string(o.start) + "): not modelled; start operands on a line-0 address");
    }
    if (o.start % o.span + used > o.span) {
      fail(std::string("wgmma: ") + which + " starts " + std::to_string(o.start % o.span) + " bytes into a " +
           std::to_string(o.span) + "-byte swizzled row but reads " + std::to_string(used) +
           " bytes along it: the operand would wrap into the next row");
    }
  }
  OperandView v;
  v.addr.resize(static_cast<size_t>(rows) * kWgmmaK);
  uint32_t lo = UINT32_MAX, hi = 0;
  for (int r = 0; r < rows; ++r) {
    for (int k = 0; k < kWgmmaK; ++k) {
      const uint32_t a = operand_address(o, mn_major, r, k);
      v.addr[static_cast<size_t>(r) * kWgmmaK + k] = a;
      lo = a < lo ? a : lo;
      hi = a > hi ? a : hi;
    }
  }
  v.lo = lo;
  v.mem = smem_pointer(lo, hi + kElemBytes - lo);  // fails past the window / the launch's shared memory
  return v;
}

// The SS operand's chunks as async-proxy reads (ptx_proxy.h); consecutive elements share a chunk, checked once.
inline void check_operand_proxy(const OperandView& v, const char* which) {
  const ProxyState& s = proxy_state();
  uint32_t last = UINT32_MAX;
  for (uint32_t a : v.addr) {
    if (a / kProxyChunk == last) continue;
    last = a / kProxyChunk;
    proxy_check_chunk(s, a, which);
  }
}

struct WgmmaOp {
  int n = 0;
  bool bf16 = true, a_in_regs = false, scale_d = false;
  int scale_a = 1, scale_b = 1;
  OperandView a, b;                       // SS: A's 64 x 16 elements; always B's N x 16
  std::vector<uint32_t> a_regs;           // RS: 128 threads x 4 registers, taken at issue
  std::vector<const uint32_t*> a_ptr;     // RS: each thread's A array, compared with a_regs at the wait
  std::vector<float*> d;                  // each thread's accumulator array (N / 2 floats)
  std::vector<float> expected;            // what the accumulators must still hold when the op executes
};

// What the model last knew of one register array of one thread (see "Ordering" above).
struct KnownRegs {
  std::vector<uint32_t> bits;
  uint64_t fences = 0;  // the thread's wgmma.fence count when `bits` was recorded
};

struct WgmmaState {
  struct Warpgroup {
    std::vector<WgmmaOp> open;
    std::deque<std::vector<WgmmaOp>> committed;
    uint64_t fences[kWarpgroupSize] = {};  // wgmma.fence executed, per thread
    std::unordered_map<const void*, KnownRegs> known[kWarpgroupSize];
  };
  std::unordered_map<int, Warpgroup> warpgroups;
};
inline const char kWgmmaStateKey = 0;

inline WgmmaState::Warpgroup& my_warpgroup_state() {
  return cta_state<WgmmaState>(&kWgmmaStateKey).warpgroups[linear_thread() / kWarpgroupSize];
}

// The accumulators belong to the tensor core from mma_async to wait_group: a kernel that writes one in between
// (rescaling O before the P V wgmma completed, say) gets undefined results on the GPU. The model remembers the
// values at issue (or the values an earlier in-flight wgmma on the same registers will leave) and fails if the
// registers differ when the operation executes.
inline void check_untouched(const WgmmaOp& op) {
  if (!op.scale_d) return;  // D is not read: the kernel may have left anything there
  const int regs = op.n / 2;
  for (int t = 0; t < kWarpgroupSize; ++t) {
    if (std::memcmp(op.d[t], &op.expected[static_cast<size_t>(t) * regs], sizeof(float) * regs) != 0) {
      fail("wgmma: thread " + std::to_string(t) + " of the warpgroup changed its accumulator registers between "
           "wgmma.mma_async and the wgmma.wait_group that completes it");
    }
  }
}

inline void remember_accumulators(WgmmaOp& op) {
  const int regs = op.n / 2;
  op.expected.resize(static_cast<size_t>(kWarpgroupSize) * regs);
  for (int t = 0; t < kWarpgroupSize; ++t) {
    std::memcpy(&op.expected[static_cast<size_t>(t) * regs], op.d[t], sizeof(float) * regs);
  }
}

// RS: the A fragment registers are read by the tensor core until the wait too.
inline void check_a_untouched(const WgmmaOp& op) {
  if (!op.a_in_regs) return;
  for (int t = 0; t < kWarpgroupSize; ++t) {
    if (std::memcmp(op.a_ptr[t], &op.a_regs[static_cast<size_t>(t) * 4], sizeof(uint32_t) * 4) != 0) {
      fail("wgmma: thread " + std::to_string(t) + " of the warpgroup changed its A-fragment registers between "
           "wgmma.mma_async and the wgmma.wait_group that completes it");
    }
  }
}

// The register-write check of one thread's array at mma_async, then the record of what it holds now.
inline void check_fenced(WgmmaState::Warpgroup& wg, int t, const void* regs, size_t bytes, const char* which) {
  auto [it, fresh] = wg.known[t].try_emplace(regs);
  KnownRegs& k = it->second;
  const bool changed = !fresh && (k.bits.size() * sizeof(uint32_t) != bytes ||
                                  std::memcmp(k.bits.data(), regs, bytes) != 0);
  if ((fresh && wg.fences[t] == 0) || (changed && k.fences == wg.fences[t])) {
    fail("wgmma.mma_async: thread " + std::to_string(t) + " of the warpgroup " +
         (fresh ? std::string("issues its first wgmma with no wgmma.fence before it")
                : std::string("wrote its ") + which + " registers since they were last used by a wgmma with no "
                  "wgmma.fence in between"));
  }
  k.bits.resize(bytes / sizeof(uint32_t));
  std::memcpy(k.bits.data(), regs, bytes);
  k.fences = wg.fences[t];
}

// After `op` executed: its accumulators hold values the async proxy wrote (no fence needed for them).
inline void note_results(WgmmaState::Warpgroup& wg, const WgmmaOp& op) {
  const size_t bytes = sizeof(float) * static_cast<size_t>(op.n / 2);
  for (int t = 0; t < kWarpgroupSize; ++t) {
    auto it = wg.known[t].find(op.d[t]);
    if (it == wg.known[t].end()) continue;
    it->second.bits.resize(bytes / sizeof(uint32_t));
    std::memcpy(it->second.bits.data(), op.d[t], bytes);
  }
}

inline void execute(const WgmmaOp& op) {
  check_untouched(op);
  check_a_untouched(op);
  const int n = op.n;
  std::vector<double> a(kWgmmaM * kWgmmaK), b(static_cast<size_t>(kWgmmaK) * n);  // A[m][k], B[k][n]
  for (int k = 0; k < kWgmmaK; ++k) {
    for (int c = 0; c < n; ++c) {
      b[static_cast<size_t>(k) * n + c] = op.b.load(static_cast<size_t>(c) * kWgmmaK + k, op.bf16);
    }
  }
  if (op.a_in_regs) {
    for (int t = 0; t < kWarpgroupSize; ++t) {
      const int w = t / kWarpSize, l = t % kWarpSize;
      for (int r = 0; r < 4; ++r) {
        for (int h = 0; h < 2; ++h) {
          const int row = 16 * w + l / 4 + 8 * (r % 2), col = 8 * (r / 2) + 2 * (l % 4) + h;
          const uint16_t bits = static_cast<uint16_t>(op.a_regs[t * 4 + r] >> (16 * h));
          a[row * kWgmmaK + col] = op.bf16 ? bf16_to_double(bits) : f16_to_double(bits);
        }
      }
    }
  } else {
    for (int m = 0; m < kWgmmaM; ++m) {
      for (int k = 0; k < kWgmmaK; ++k) a[m * kWgmmaK + k] = op.a.load(static_cast<size_t>(m) * kWgmmaK + k, op.bf16);
    }
  }
  const double scale = static_cast<double>(op.scale_a * op.scale_b);
  for (int t = 0; t < kWarpgroupSize; ++t) {
    const int w = t / kWarpSize, l = t % kWarpSize;
    float* d = op.d[t];
    for (int i = 0; i < n / 2; ++i) {
      const int row = 16 * w + l / 4 + 8 * ((i / 2) % 2), col = 8 * (i / 4) + 2 * (l % 4) + i % 2;
      double sum = op.scale_d ? static_cast<double>(d[i]) : 0.0;
      for (int k = 0; k < kWgmmaK; ++k) sum += scale * a[row * kWgmmaK + k] * b[static_cast<size_t>(k) * n + col];
      d[i] = static_cast<float>(sum);
    }
  }
}

struct WgmmaIssue {
  float* d;
  const uint32_t* a_ptr;  // RS: the thread's A array
  uint64_t desc_a, desc_b;
  uint32_t a[4];
  uint32_t scale_d;
  int n, a_in_regs, bf16, scale_a, scale_b, trans_a, trans_b;
  bool same_instruction(const WgmmaIssue& o) const {
    return desc_a == o.desc_a && desc_b == o.desc_b && (scale_d != 0) == (o.scale_d != 0) && n == o.n &&
           a_in_regs == o.a_in_regs && bf16 == o.bf16 && scale_a == o.scale_a && scale_b == o.scale_b &&
           trans_a == o.trans_a && trans_b == o.trans_b;
  }
};
struct Nothing {};

// wgmma.mma_async: a warpgroup collective that validates the operands and records the operation.
inline void wgmma_record(const WgmmaIssue& in) {
  group_collective<WgmmaIssue, Nothing>(
      kWarpgroupSize, "wgmma.mma_async.sync.aligned", in, [](const WgmmaIssue* const* ins, Nothing* const*) {
        const WgmmaIssue& first = *ins[0];
        for (int t = 1; t < kWarpgroupSize; ++t) {
          if (!ins[t]->same_instruction(first)) {
            fail("wgmma.mma_async: thread " + std::to_string(t) +
                 " of the warpgroup passed different descriptors, scale-d, shape or flags than thread 0");
          }
        }
        WgmmaOp op;
        op.n = first.n;
        op.bf16 = first.bf16 != 0;
        op.a_in_regs = first.a_in_regs != 0;
        op.scale_d = first.scale_d != 0;
        op.scale_a = first.scale_a;
        op.scale_b = first.scale_b;
        if (!op.a_in_regs) op.a = operand_view(first.desc_a, first.trans_a != 0, kWgmmaM, "operand A");
        op.b = operand_view(first.desc_b, first.trans_b != 0, op.n, "operand B");
        if (!proxy_all_clean()) {
          if (!op.a_in_regs) check_operand_proxy(op.a, "wgmma.mma_async operand A");
          check_operand_proxy(op.b, "wgmma.mma_async operand B");
        }
        WgmmaState::Warpgroup& wg = my_warpgroup_state();
        op.d.resize(kWarpgroupSize);
        if (op.a_in_regs) op.a_regs.resize(kWarpgroupSize * 4), op.a_ptr.resize(kWarpgroupSize);
        for (int t = 0; t < kWarpgroupSize; ++t) {
          op.d[t] = ins[t]->d;
          for (int r = 0; r < 4 && op.a_in_regs; ++r) op.a_regs[t * 4 + r] = ins[t]->a[r];
          if (op.a_in_regs) op.a_ptr[t] = ins[t]->a_ptr;
          check_fenced(wg, t, op.d[t], sizeof(float) * static_cast<size_t>(op.n / 2), "accumulator");
          if (op.a_in_regs) check_fenced(wg, t, op.a_ptr[t], sizeof(uint32_t) * 4, "A-fragment");
        }
        remember_accumulators(op);
        wg.open.push_back(std::move(op));
      });
}

inline void wgmma_commit_model() {
  group_collective<Nothing, Nothing>(kWarpgroupSize, "wgmma.commit_group.sync.aligned", Nothing{},
                                     [](const Nothing* const*, Nothing* const*) {
                                       WgmmaState::Warpgroup& wg = my_warpgroup_state();
                                       wg.committed.push_back(std::move(wg.open));
                                       wg.open.clear();
                                     });
}

// After `done` executed: the later in-flight operations on the same accumulators expect its results.
inline void handed_on(WgmmaState::Warpgroup& wg, const WgmmaOp& done) {
  auto update = [&](WgmmaOp& later) {
    if (&later == &done || later.n != done.n || later.d[0] != done.d[0]) return;
    remember_accumulators(later);
  };
  bool after = false;
  for (auto& group : wg.committed) {
    for (WgmmaOp& op : group) {
      if (after) update(op);
      after = after || &op == &done;
    }
  }
  for (WgmmaOp& op : wg.open) update(op);
}

inline void wgmma_wait_model(int pending) {
  group_collective<int, Nothing>(kWarpgroupSize, "wgmma.wait_group.sync.aligned", pending,
                                 [](const int* const* ins, Nothing* const*) {
                                   for (int t = 1; t < kWarpgroupSize; ++t) {
                                     if (*ins[t] != *ins[0]) fail("wgmma.wait_group: threads differ in the count");
                                   }
                                   WgmmaState::Warpgroup& wg = my_warpgroup_state();
                                   while (static_cast<int>(wg.committed.size()) > *ins[0]) {
                                     for (const WgmmaOp& op : wg.committed.front()) {
                                       execute(op);
                                       note_results(wg, op);
                                       handed_on(wg, op);
                                     }
                                     wg.committed.pop_front();
                                   }
                                 });
}

// Pending (uncommitted + committed) wgmma operations of the caller's warpgroup: for the harness's tests.
inline int wgmma_pending_ops() {
  WgmmaState::Warpgroup& wg = my_warpgroup_state();
  size_t n = wg.open.size();
  for (const auto& g : wg.committed) n += g.size();
  return static_cast<int>(n);
}

}  // namespace flashcore::cuda_emu

namespace flashcore::sm90::ptx {

// Counted per thread (not a rendezvous: the model needs only "did this thread fence since", see Ordering).
inline void wgmma_fence() {
  ++cuda_emu::my_warpgroup_state().fences[cuda_emu::linear_thread() % cuda_emu::kWarpgroupSize];
}
inline void wgmma_commit() { cuda_emu::wgmma_commit_model(); }

template <int kPending>
inline void wgmma_wait() {
  static_assert(kPending >= 0 && kPending <= 7, "wgmma.wait_group takes an immediate in [0, 7]");
  cuda_emu::wgmma_wait_model(kPending);
}

template <int kRegs>
inline void fence_operands(float (&)[kRegs]) {}
template <int kRegs>
inline void fence_operands(uint32_t (&)[kRegs]) {}

// The m64nNk16 forms for any N; Wgmma<N> (wgmma.cuh's N) and WgmmaExtra<32> (wgmma_mn.cuh) derive from it.
template <int N>
struct WgmmaEmu {
  static_assert(N % 8 == 0 && N >= 8 && N <= 256, "wgmma N is a multiple of 8 in [8, 256]");
  static constexpr int kAccRegs = N / 2;
  template <MmaType kType, int kScaleA, int kScaleB, int kTransA, int kTransB>
  static void ss(float (&d)[kAccRegs], uint64_t desc_a, uint64_t desc_b, uint32_t scale_d) {
    cuda_emu::wgmma_record(cuda_emu::WgmmaIssue{d, nullptr, desc_a, desc_b, {0, 0, 0, 0}, scale_d, N, 0,
                                                kType == MmaType::kBf16, kScaleA, kScaleB, kTransA, kTransB});
  }
  template <MmaType kType, int kScaleA, int kScaleB, int kTransB>
  static void rs(float (&d)[kAccRegs], const uint32_t (&a)[4], uint64_t desc_b, uint32_t scale_d) {
    cuda_emu::wgmma_record(cuda_emu::WgmmaIssue{d, a, 0, desc_b, {a[0], a[1], a[2], a[3]}, scale_d, N, 1,
                                                kType == MmaType::kBf16, kScaleA, kScaleB, 0, kTransB});
  }
};

// The N that wgmma.cuh instantiates; another N fails to compile here as it would with nvcc.
template <int N>
struct Wgmma : WgmmaEmu<N> {
  static_assert(N == 64 || N == 80 || N == 96 || N == 112 || N == 128 || N == 176 || N == 192 || N == 256,
                "wgmma.cuh defines Wgmma<N> for N = 64, 80, 96, 112, 128, 176, 192, 256 only");
};

}  // namespace flashcore::sm90::ptx

// The CPU model of csrc/cuda/ptx/mbarrier.cuh (included there under FLASHCORE_SM90_EMU): the same functions, with
// the PTX ISA's semantics on the engine (emu.h). See mbarrier.cuh for what each one is for.
//
// mbarrier ("Parallel Synchronization and Communication Instructions: mbarrier"): per barrier, the current phase
// number, the pending arrival count (reset to the init count when a phase completes) and a signed transaction
// count (expect_tx raises it, the copy engine's complete_tx lowers it, in [-(2^20-1), 2^20-1]). A phase completes
// when both counts are zero. try_wait.parity(p) is true when the phase of parity p has completed, i.e. when p is
// not the parity of the current phase: a fresh barrier (phase 0) passes try_wait(1) at once.
// The state lives in the engine's per-CTA state, keyed by the barrier's address; the barrier's 8 bytes of shared
// memory hold a tag written by init, so a store that lands on a live barrier (data overlapping it) is reported.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu.h"
#include "ptx_proxy.h"

namespace flashcore::cuda_emu {
namespace mbarrier_model {

constexpr int64_t kMaxTxCount = (int64_t(1) << 20) - 1;  // tx-count range: +-(2^20 - 1) (PTX ISA, mbarrier)
constexpr uint32_t kMaxArrivals = (1u << 20) - 1;         // mbarrier.init's count range: [1, 2^20 - 1]
constexpr uint64_t kTagMagic = 0x6d62617272696572ull;     // "mbarrier" in ASCII, xor'd with the address
constexpr size_t kMessageBytes = 192;                     // one spin description / error line

struct State {
  uint32_t arrivals = 0;  // the init count
  int32_t pending = 0;    // arrivals still missing in the current phase
  int64_t tx = 0;         // transaction bytes still missing in the current phase
  uint32_t phase = 0;     // phases completed so far: the current phase's parity is phase & 1
};
using Table = std::unordered_map<const void*, State>;
inline const char kTableKey = 0;  // the per-CTA state's key: this object's address

inline uint64_t tag(const uint64_t* bar) { return kTagMagic ^ reinterpret_cast<uintptr_t>(bar); }

inline std::string describe(const uint64_t* bar, int cta) {
  char text[kMessageBytes];
  if (cta == linear_block()) {
    std::snprintf(text, sizeof text, "mbarrier at shared address %u", smem_address(bar));
  } else {
    std::snprintf(text, sizeof text, "mbarrier %p of CTA %d", static_cast<const void*>(bar), cta);
  }
  return text;
}

// The barrier's state in CTA `cta`; fails for a barrier that was never initialized or whose word was overwritten.
inline State& lookup(const uint64_t* bar, int cta, const char* op) {
  Table& table = cta_state_of<Table>(cta, &kTableKey);
  const auto it = table.find(bar);
  if (it == table.end()) fail(std::string(op) + " on " + describe(bar, cta) + " before its mbarrier.init");
  if (*bar != tag(bar)) {
    fail(std::string(op) + " on " + describe(bar, cta) +
         ": its 8 bytes were overwritten since mbarrier.init (a store or TMA write overlaps the barrier)");
  }
  return it->second;
}

inline int own_cta(const uint64_t* bar, const char* op) {  // checks that `bar` is this CTA's, 8-byte aligned
  const uint32_t address = smem_address(bar);             // fails outside this CTA's shared memory
  if (address % 8 != 0) fail(std::string(op) + ": mbarrier at shared address " + std::to_string(address) +
                             " is not 8-byte aligned");
  return linear_block();
}

inline void complete_if_done(State& s) {
  if (s.pending == 0 && s.tx == 0) {
    ++s.phase;
    s.pending = static_cast<int32_t>(s.arrivals);
    progress();
  }
}

inline void add_tx(State& s, int64_t delta, const uint64_t* bar, int cta, const char* op) {
  s.tx += delta;
  if (s.tx > kMaxTxCount || s.tx < -kMaxTxCount) {
    fail(std::string(op) + " on " + describe(bar, cta) + ": transaction count " + std::to_string(s.tx) +
         " leaves the range +-(2^20 - 1)");
  }
  if (s.pending == 0 && s.tx < 0) {
    fail(std::string(op) + " on " + describe(bar, cta) + ": " + std::to_string(-s.tx) +
         " more bytes completed than expect_tx announced in phase " + std::to_string(s.phase) +
         " (every arrival is in: the phase can never complete)");
  }
}

inline void arrive(uint64_t* bar, const char* op) {
  const int cta = own_cta(bar, op);
  State& s = lookup(bar, cta, op);
  if (s.pending == 0) {
    fail(std::string(op) + " on " + describe(bar, cta) + ": more arrivals than its init count " +
         std::to_string(s.arrivals) + " in phase " + std::to_string(s.phase) + " (" + std::to_string(s.tx) +
         " transaction bytes still pending)");
  }
  std::atomic_thread_fence(std::memory_order_release);
  --s.pending;
  progress();
  complete_if_done(s);
}

}  // namespace mbarrier_model

// The copy engine's side (for the TMA model, from asynchronous work with no fiber current): `bytes` of the
// current phase's transactions have landed.
inline void mbarrier_complete_tx(uint64_t* bar, uint32_t bytes) {
  namespace m = mbarrier_model;
  const int cta = smem_owner(bar);
  if (cta < 0) fail("complete_tx on " + std::to_string(reinterpret_cast<uintptr_t>(bar)) +
                    ", which is in no CTA's shared memory");
  m::State& s = m::lookup(bar, cta, "complete_tx");
  m::add_tx(s, -static_cast<int64_t>(bytes), bar, cta, "complete_tx");
  progress();
  m::complete_if_done(s);
}

}  // namespace flashcore::cuda_emu

namespace flashcore::sm90::ptx {

inline void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
  namespace m = ::flashcore::cuda_emu::mbarrier_model;
  const int cta = m::own_cta(bar, "mbarrier.init");
  if (arrivals < 1 || arrivals > m::kMaxArrivals) {
    cuda_emu::fail("mbarrier.init with a count of " + std::to_string(arrivals) + " (1 .. 2^20 - 1)");
  }
  m::Table& table = cuda_emu::cta_state<m::Table>(&m::kTableKey);
  const auto it = table.find(bar);
  if (it != table.end() && *bar == m::tag(bar) &&
      (it->second.pending != static_cast<int32_t>(it->second.arrivals) || it->second.tx != 0)) {
    cuda_emu::fail("mbarrier.init on " + m::describe(bar, cta) + " while its phase " +
                   std::to_string(it->second.phase) + " is in flight");
  }
  table[bar] = m::State{arrivals, static_cast<int32_t>(arrivals), 0, 0};
  *bar = m::tag(bar);
  cuda_emu::progress();
}

inline void fence_mbarrier_init() { std::atomic_thread_fence(std::memory_order_seq_cst); }

inline void mbarrier_arrive(uint64_t* bar) { cuda_emu::mbarrier_model::arrive(bar, "mbarrier.arrive"); }

inline void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  namespace m = ::flashcore::cuda_emu::mbarrier_model;
  const char* op = "mbarrier.arrive.expect_tx";
  const int cta = m::own_cta(bar, op);
  m::State& s = m::lookup(bar, cta, op);
  if (s.pending > 0) m::add_tx(s, bytes, bar, cta, op);  // with no arrival left, arrive() reports the excess
  m::arrive(bar, op);
}

inline bool mbarrier_try_wait(uint64_t* bar, uint32_t parity) {
  namespace m = ::flashcore::cuda_emu::mbarrier_model;
  const char* op = "mbarrier.try_wait.parity";
  const int cta = m::own_cta(bar, op);
  if (parity > 1) cuda_emu::fail(std::string(op) + " with parity " + std::to_string(parity) + " (0 or 1)");
  const m::State& s = m::lookup(bar, cta, op);
  if (parity != (s.phase & 1)) {  // the phase of that parity is the one before the current: complete
    std::atomic_thread_fence(std::memory_order_acquire);
    return true;
  }
  char what[m::kMessageBytes];
  std::snprintf(what, sizeof what, "%s %u on mbarrier at shared address %u (phase %u: %d arrivals, %lld tx bytes "
                "pending)", op, parity, cuda_emu::smem_address(bar), s.phase, s.pending, static_cast<long long>(s.tx));
  cuda_emu::spin(what);
  return false;
}

inline void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  while (!mbarrier_try_wait(bar, parity)) {
  }
}

inline void fence_proxy_async_shared() { cuda_emu::proxy_fence(); }  // ptx_proxy.h

inline void check_named_barrier(uint32_t id, uint32_t threads, const char* op) {
  const cuda_emu::Dim3 b = cuda_emu::block_dim();
  const uint32_t block = b.x * b.y * b.z;
  if (id >= static_cast<uint32_t>(cuda_emu::kNamedBarriers) || threads == 0 ||
      threads % cuda_emu::kWarpSize != 0 || threads > block) {
    cuda_emu::fail(std::string(op) + " " + std::to_string(id) + ", " + std::to_string(threads) +
                   ": needs an id in 0..15 and a thread count that is a multiple of 32, at most the block's " +
                   std::to_string(block));
  }
}

inline void named_barrier_sync(uint32_t id, uint32_t threads) {
  check_named_barrier(id, threads, "bar.sync");
  cuda_emu::named_barrier_sync(static_cast<int>(id), static_cast<int>(threads));
}

inline void named_barrier_arrive(uint32_t id, uint32_t threads) {
  check_named_barrier(id, threads, "bar.arrive");
  cuda_emu::named_barrier_arrive(static_cast<int>(id), static_cast<int>(threads));
}

// setmaxnreg: a warpgroup rendezvous that moves registers between the warpgroup and the CTA's pool
// (registers_per_thread() x block threads, when the launch says how many the kernel starts with).
namespace setmaxnreg_model {

struct Pool {
  bool ready = false;
  int64_t free = 0;            // registers in the pool no warpgroup holds
  std::vector<int> held;       // per warpgroup: registers per thread now
  std::vector<int> requested;  // per warpgroup: a pending inc's target, 0 when none
};
inline const char kPoolKey = 0;

inline Pool& pool() {
  Pool& p = cuda_emu::cta_state<Pool>(&kPoolKey);
  if (!p.ready) {
    const cuda_emu::Dim3 b = cuda_emu::block_dim();
    const int threads = static_cast<int>(b.x * b.y * b.z);
    const int groups = (threads + cuda_emu::kWarpgroupSize - 1) / cuda_emu::kWarpgroupSize;
    p.held.assign(groups, cuda_emu::registers_per_thread());  // 0: unknown, no pool check
    p.requested.assign(groups, 0);
    p.free = 0;
    p.ready = true;
  }
  return p;
}

inline bool try_grant(Pool& p, int group) {
  const int target = p.requested[group];
  if (target == 0) return true;
  const int64_t need = int64_t(target - p.held[group]) * cuda_emu::kWarpgroupSize;
  if (need > p.free) return false;
  p.free -= need;
  p.held[group] = target;
  p.requested[group] = 0;
  cuda_emu::progress();
  return true;
}

template <bool kInc>
void run(uint32_t regs) {
  const char* op = kInc ? "setmaxnreg.inc" : "setmaxnreg.dec";
  const int group = cuda_emu::linear_thread() / cuda_emu::kWarpgroupSize;
  struct In {
    uint32_t regs;
    int group;
  };
  cuda_emu::group_collective<In, int>(cuda_emu::kWarpgroupSize, op, In{regs, group},
                                      [op](const In* const* ins, int* const*) {
    for (int t = 1; t < cuda_emu::kWarpgroupSize; ++t) {
      if (ins[t] != nullptr && ins[t]->regs != ins[0]->regs) {
        cuda_emu::fail(std::string(op) + ": threads of one warpgroup ask for " + std::to_string(ins[0]->regs) +
                       " and " + std::to_string(ins[t]->regs) + " registers");
      }
    }
    Pool& p = pool();
    const int g = ins[0]->group, now = p.held[g], target = static_cast<int>(ins[0]->regs);
    if (now == 0) return;  // registers at entry unknown: no pool to check
    if (kInc ? target < now : target > now) {
      cuda_emu::fail(std::string(op) + " " + std::to_string(target) + " while the warpgroup holds " +
                     std::to_string(now) + " registers per thread");
    }
    if (kInc) {
      p.requested[g] = target;
    } else {
      p.free += int64_t(now - target) * cuda_emu::kWarpgroupSize;
      p.held[g] = target;
      cuda_emu::progress();
    }
  });
  if constexpr (kInc) {
    Pool& p = pool();
    while (!try_grant(p, group)) {  // inc blocks until other warpgroups' dec freed enough
      char what[cuda_emu::mbarrier_model::kMessageBytes];
      std::snprintf(what, sizeof what, "setmaxnreg.inc %u: the pool has %lld registers free, needs %lld", regs,
                    static_cast<long long>(p.free),
                    static_cast<long long>(int64_t(p.requested[group] - p.held[group]) * cuda_emu::kWarpgroupSize));
      cuda_emu::spin(what);
    }
  }
}

}  // namespace setmaxnreg_model

template <uint32_t kRegs>
void setmaxnreg_inc() {
  static_assert(kRegs >= kMinRegsPerThread && kRegs <= kMaxRegsPerThread && kRegs % kRegAllocGranule == 0,
                "setmaxnreg takes a multiple of 8 in [24, 256]");
  setmaxnreg_model::run<true>(kRegs);
}

template <uint32_t kRegs>
void setmaxnreg_dec() {
  static_assert(kRegs >= kMinRegsPerThread && kRegs <= kMaxRegsPerThread && kRegs % kRegAllocGranule == 0,
                "setmaxnreg takes a multiple of 8 in [24, 256]");
  setmaxnreg_model::run<false>(kRegs);
}

}  // namespace flashcore::sm90::ptx

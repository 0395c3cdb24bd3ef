// The model of the generic -> async proxy ordering of shared memory (PTX ISA, "Memory Consistency Model: Proxies"
// and "membar / fence": fence.proxy.async). The tensor core (wgmma operands) and the TMA unit (bulk tensor copies)
// access shared memory through the async proxy; a thread's st.shared / stmatrix go through the generic proxy. A
// generic write is visible to a later async-proxy access only if the writing thread executed
// fence.proxy.async.shared::cta after it (and then synchronised with the thread that issues the async operation).
// On the GPU a missing fence reads stale bytes now and then; the model's single OS thread would always see the new
// ones, so it tracks the rule instead of the effect:
//
// * every 16-byte chunk of a CTA's shared window has a record: which lanes of which warp wrote it through the
//   generic proxy and have not fenced since (stmatrix: the 4 lanes whose registers make up the row, replacing the
//   record; st.shared.v2.f32: its single thread, added to the record, since it writes half a chunk);
// * fence.proxy.async by thread t clears t's lane in every chunk t wrote (a per-thread list, so a fence costs what
//   the thread wrote since its last one);
// * an async-proxy access -- a TMA store reading its source, a TMA load writing its destination, a wgmma reading an
//   SS operand -- fails at issue if any chunk it covers still has a pending lane. Checking at issue is sound: the
//   record holds only writes that already happened, and the writer's fence has to precede the issue (through the
//   barrier that orders writer and issuer) for the access to be ordered at all.
//
//
// The other direction (WAR across proxies), for the bulk copies that READ shared memory (TMA stores and reduces):
// from issue until the issuing thread's cp.async.bulk.wait_group{.read} covers it, the source range is held; a
// generic write (stmatrix, st.shared.v2.f32) into a held chunk fails, whether or not the model's copy has read it
// yet (on the GPU it may not have). Holding until the issuer's wait, not until the model's read, makes the check
// independent of when the asynchronous read happens to run.
//
// What it cannot see: plain C++ stores to shared memory (the host compiler emits them; no hook). The kernels write
// every async-read tile with stmatrix or st_shared_v2_f32 (P^T / dS^T in the backward, the epilogue staging of the
// forward and the GEMM, the backward's dQ staging); a kernel that switches such a tile to a plain store must route
// it through a modelled helper, or the model stays silent about its fence. One warp's unfenced writes per chunk are
// recorded: a partial write by another warp into a chunk with unfenced lanes stops the launch (not modelled).
// Generic reads followed by async writes (a TMA load over a tile still being read generically) are not modelled.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu.h"

namespace flashcore::cuda_emu {

constexpr uint32_t kProxyChunk = 16;  // the record's granularity: one stmatrix row, one TMA swizzle chunk
constexpr size_t kProxyCompactAt = 4096;  // a thread's pending list is pruned of overwritten entries past this size

struct ProxyState {
  struct Chunk {
    uint32_t lanes = 0;  // writer lanes that have not fenced since their write (0: clean)
    int warp = -1;       // the writer's warp (linear thread / 32)
    uint64_t gen = 0;    // which write: a later write to the chunk replaces the record
  };
  std::vector<Chunk> chunks;  // indexed by window address / kProxyChunk; sized on the first generic write
  std::vector<uint16_t> held;  // per chunk: bulk copies issued that read it and that their issuer has not waited for
  size_t held_chunks = 0;      // chunks with held != 0: generic writes skip the check when 0
  std::unordered_map<int, std::vector<std::pair<uint32_t, uint64_t>>> pending;  // thread -> (chunk, gen) it wrote
  uint64_t next_gen = 0;
  size_t dirty = 0;  // chunks with lanes != 0: the checks return at once when 0
};
inline const char kProxyStateKey = 0;

inline ProxyState& proxy_state() { return cta_state<ProxyState>(&kProxyStateKey); }

// A generic-proxy write into the chunk holding window address `addr` by lanes `lanes` of warp `warp`: the whole
// chunk (stmatrix: the record is replaced) or part of it (st.shared: the lanes are added to the record).
inline void proxy_generic_write(uint32_t addr, int warp, uint32_t lanes, bool whole_chunk = true) {
  ProxyState& s = proxy_state();
  if (s.chunks.empty()) s.chunks.resize(kSmemWindowBytes / kProxyChunk);
  const uint32_t index = addr / kProxyChunk;
  if (s.held_chunks != 0 && s.held[index] != 0) {
    fail("generic-proxy write of shared window address " + std::to_string(index * kProxyChunk) +
         " while a bulk copy (TMA store / reduce) still reads it: its issuing thread has not passed the "
         "cp.async.bulk.wait_group.read that covers it");
  }
  ProxyState::Chunk& c = s.chunks[index];
  if (!whole_chunk && c.lanes != 0) {
    if (c.warp != warp) {
      fail("st.shared into shared window address " + std::to_string(index * kProxyChunk) + " by warp " +
           std::to_string(warp) + ", whose 16-byte chunk warp " + std::to_string(c.warp) +
           " wrote with no fence.proxy.async since: two warps' unfenced writes to one chunk are not modelled");
    }
    c.lanes |= lanes;  // same record (gen): each lane's own fence clears its bit
  } else {
    if (c.lanes == 0) ++s.dirty;
    c = ProxyState::Chunk{lanes, warp, ++s.next_gen};
  }
  for (int l = 0; l < kWarpSize; ++l) {
    if (!(lanes >> l & 1u)) continue;
    auto& list = s.pending[warp * kWarpSize + l];
    list.emplace_back(addr / kProxyChunk, c.gen);
    if (list.size() > kProxyCompactAt) {  // a thread that never fences (its tiles are read generically only)
      list.erase(std::remove_if(list.begin(), list.end(),
                                [&](const auto& e) { return s.chunks[e.first].gen != e.second; }),
                 list.end());
    }
  }
}

// fence.proxy.async by the current thread.
inline void proxy_fence() {
  ProxyState& s = proxy_state();
  const int t = linear_thread();
  auto it = s.pending.find(t);
  if (it == s.pending.end()) return;
  const uint32_t bit = 1u << (t % kWarpSize);
  for (const auto& [chunk, gen] : it->second) {
    ProxyState::Chunk& c = s.chunks[chunk];
    if (c.gen != gen || !(c.lanes & bit)) continue;
    c.lanes &= ~bit;
    if (c.lanes == 0) --s.dirty;
  }
  it->second.clear();
}

// An async-proxy access to the chunk holding window address `addr`: fails if a generic write to it is unfenced.
inline void proxy_check_chunk(const ProxyState& s, uint32_t addr, const char* reader) {
  const ProxyState::Chunk& c = s.chunks[addr / kProxyChunk];
  if (c.lanes == 0) return;
  std::string lanes;
  for (int l = 0; l < kWarpSize; ++l) {
    if (c.lanes >> l & 1u) lanes += (lanes.empty() ? "" : ",") + std::to_string(l);
  }
  fail(std::string(reader) + " (async proxy) accesses shared window address " +
       std::to_string(addr / kProxyChunk * kProxyChunk) + ", written through the generic proxy (stmatrix / st.shared) by warp " +
       std::to_string(c.warp) + " lanes " + lanes + " with no fence.proxy.async by them since");
}

inline bool proxy_all_clean() {
  const ProxyState& s = proxy_state();
  return s.dirty == 0;
}

// An async-proxy access to the window bytes [addr, addr + bytes).
inline void proxy_check_range(uint32_t addr, uint32_t bytes, const char* reader) {
  if (proxy_all_clean()) return;
  const ProxyState& s = proxy_state();
  for (uint32_t a = addr / kProxyChunk * kProxyChunk; a < addr + bytes; a += kProxyChunk) {
    proxy_check_chunk(s, a, reader);
  }
}

// A bulk copy reading the window bytes [addr, addr + bytes) was issued (hold = true) / its issuer's wait covered it.
inline void proxy_hold_range(uint32_t addr, uint32_t bytes, bool hold) {
  ProxyState& s = proxy_state();
  if (s.held.empty()) s.held.resize(kSmemWindowBytes / kProxyChunk);
  for (uint32_t a = addr / kProxyChunk; a * kProxyChunk < addr + bytes; ++a) {
    if (hold) {
      if (s.held[a]++ == 0) ++s.held_chunks;
    } else if (--s.held[a] == 0) {
      --s.held_chunks;
    }
  }
}

// Global memory across CTAs (the deterministic backward's dQ chain): an ld.acquire.gpu orders this thread's later
// generic-proxy accesses after what the releasing CTA did before its release; for a later async-proxy access to
// global memory (a TMA load, store or reduce) the thread must also execute fence.proxy.async.global in between
// (PTX ISA, "Memory Consistency Model": causality order relates async-proxy accesses of different CTAs only through
// proxy fences). On the GPU a missing fence lets the TMA unit act on a stale view now and then; the model has one
// view of memory, so it tracks the rule: an acquire marks its thread, fence.proxy.async.global clears the mark,
// and an async-proxy global access by a marked thread stops the launch.
struct GlobalAcquireState {
  std::unordered_map<int, bool> marked;  // thread -> acquired with no fence.proxy.async.global since
};
inline const char kGlobalAcquireKey = 0;

inline void proxy_global_acquire() { cta_state<GlobalAcquireState>(&kGlobalAcquireKey).marked[linear_thread()] = true; }

inline void proxy_global_fence() { cta_state<GlobalAcquireState>(&kGlobalAcquireKey).marked.erase(linear_thread()); }

inline void proxy_global_check(const char* access) {
  const GlobalAcquireState& s = cta_state<GlobalAcquireState>(&kGlobalAcquireKey);
  if (s.marked.empty() || s.marked.count(linear_thread()) == 0) return;
  fail(std::string(access) + " (async proxy, global memory) by thread " + std::to_string(linear_thread()) +
       " after its ld.acquire.gpu with no fence.proxy.async.global since: the acquire orders generic-proxy "
       "accesses only");
}

}  // namespace flashcore::cuda_emu

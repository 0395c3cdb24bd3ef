// The model of the generic -> async proxy ordering of shared memory (PTX ISA, "Memory Consistency Model: Proxies"
// and "membar / fence": fence.proxy.async). The tensor core (wgmma operands) and the TMA unit (bulk tensor copies)
// access shared memory through the async proxy; a thread's st.shared / stmatrix go through the generic proxy. A
// generic write is visible to a later async-proxy access only if the writing thread executed
// fence.proxy.async.shared::cta after it (and then synchronised with the thread that issues the async operation).
// On the GPU a missing fence reads stale bytes now and then; the model's single OS thread would always see the new
// ones, so it tracks the rule instead of the effect:
//
// * every 16-byte chunk of a CTA's shared window has a record: which lanes of which warp wrote it through the
//   generic proxy and have not fenced since (stmatrix: the 4 lanes whose registers make up the row; a plain store
//   would be its single thread, see below);
// * fence.proxy.async by thread t clears t's lane in every chunk t wrote (a per-thread list, so a fence costs what
//   the thread wrote since its last one);
// * an async-proxy access -- a TMA store reading its source, a TMA load writing its destination, a wgmma reading an
//   SS operand -- fails at issue if any chunk it covers still has a pending lane. Checking at issue is sound: the
//   record holds only writes that already happened, and the writer's fence has to precede the issue (through the
//   barrier that orders writer and issuer) for the access to be ordered at all.
//
// What it cannot see: plain C++ stores to shared memory (the host compiler emits them; no hook). The kernels write
// every async-read tile with stmatrix (P^T / dS^T in the backward, the epilogue staging of the forward and the
// GEMM); a kernel that switches such a tile to st.shared must route the store through a modelled helper, or the
// model stays silent about its fence. Generic reads followed by async writes (WAR across proxies) are not modelled.
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
  std::unordered_map<int, std::vector<std::pair<uint32_t, uint64_t>>> pending;  // thread -> (chunk, gen) it wrote
  uint64_t next_gen = 0;
  size_t dirty = 0;  // chunks with lanes != 0: the checks return at once when 0
};
inline const char kProxyStateKey = 0;

inline ProxyState& proxy_state() { return cta_state<ProxyState>(&kProxyStateKey); }

// A generic-proxy write of chunk `addr` (window address, 16-byte aligned) by lanes `lanes` of warp `warp`.
inline void proxy_generic_write(uint32_t addr, int warp, uint32_t lanes) {
  ProxyState& s = proxy_state();
  if (s.chunks.empty()) s.chunks.resize(kSmemWindowBytes / kProxyChunk);
  ProxyState::Chunk& c = s.chunks[addr / kProxyChunk];
  if (c.lanes == 0) ++s.dirty;
  c = ProxyState::Chunk{lanes, warp, ++s.next_gen};
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
       std::to_string(addr / kProxyChunk * kProxyChunk) + ", written through the generic proxy (stmatrix) by warp " +
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

}  // namespace flashcore::cuda_emu

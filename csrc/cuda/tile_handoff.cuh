// Device side of the dynamic scheduler shared by the sm_90a forward and backward (protocol: tile_handoff.h): the
// producer's claims, the shared-memory ring that hands each index to the consumer warps, and the host switch back
// to the static round-robin.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "ptx/layout.cuh"
#include "ptx/mbarrier.cuh"
#include "tile_handoff.h"

namespace flashcore::sm90 {

// The ring lives in the kernel's shared-storage struct S as three members (the helpers below are generic over S):
//   uint64_t tile_full[kTileSlots];   1 arrival: the producer, after storing the index
//   uint64_t tile_empty[kTileSlots];  lane 0 of each consumer warp, once its warp has read it
//   int tile[kTileSlots];
// (Members of S rather than a struct of their own: addressed from S's base, the forward's producer keeps the exact
// code it had, which fits in its 24 registers; through a nested struct ptxas spilled one register.)

// One thread, with the kernel's other barrier inits (before fence_mbarrier_init and __syncthreads).
template <class S>
__device__ __forceinline__ void init_tile_ring(S& s, int consumer_warps) {
  for (int i = 0; i < kTileSlots; ++i) {
    ptx::mbarrier_init(&s.tile_full[i], 1);
    ptx::mbarrier_init(&s.tile_empty[i], consumer_warps);
  }
}

// Producer: the index after t. Dynamic: a claim on the counter, a relaxed atomic (only the values' uniqueness
// matters: the work's data moves through TMA and mbarriers, and the backward's dQ order through its semaphores).
// Static: the round-robin successor.
template <bool kDynamic>
__device__ __forceinline__ int claim_next_tile(int* counter, int t, int num_tiles) {
  if constexpr (kDynamic) return claimed_tile(atomicAdd(counter, 1), static_cast<int>(gridDim.x), num_tiles);
  return static_next_tile(t, static_cast<int>(gridDim.x), num_tiles);
}

// Producer: hand index t (or kNoTile) to the consumers. The slot is free once every consumer warp read its
// previous index (a fresh ring passes at once: parity of the "previous" phase); the full arrival releases the store.
template <class S>
__device__ __forceinline__ void publish_tile(S& s, HandoffCursor& c, int t) {
  ptx::mbarrier_wait(&s.tile_empty[c.slot()], c.phase() ^ 1);
  s.tile[c.slot()] = t;
  ptx::mbarrier_arrive(&s.tile_full[c.slot()]);
  c.advance();
}

// Consumer warp: the next index the producer published. Every lane reads it; __syncwarp orders all 32 reads
// before lane 0's arrival frees the slot. The broadcast from lane 0 tells ptxas the value is warp-uniform (the
// loops holding the wgmmas depend on it: a branch it thinks divergent serializes them, warning C7520).
template <class S>
__device__ __forceinline__ int take_tile(S& s, HandoffCursor& c, int lane) {
  ptx::mbarrier_wait(&s.tile_full[c.slot()], c.phase());
  const int t = s.tile[c.slot()];
  __syncwarp();
  if (lane == 0) ptx::mbarrier_arrive(&s.tile_empty[c.slot()]);
  c.advance();
  return __shfl_sync(frag::kFullWarpMask, t, 0);
}

// FLASHCORE_SM90_STATIC_SCHEDULE=1: both sm_90a kernels walk the static round-robin (no counter, no hand-off), for
// bisecting on a GPU; outputs are bit-identical either way. Read once per process: a launch must not pay for getenv.
inline bool static_schedule_requested() {
  static const bool requested = [] {
    const char* v = std::getenv("FLASHCORE_SM90_STATIC_SCHEDULE");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return requested;
}

}  // namespace flashcore::sm90

// Dynamic assignment of a persistent kernel's work order to its CTAs, shared by the sm_90a forward (tiles,
// fwd/schedule.h) and backward (K/V-block items, bwd_sm90_plan.h): plain integer logic, __host__ __device__ under
// nvcc, so that the CPU checks (tests/cpp/fwd_sm90_schedule_check.cpp, tests/cpp/bwd_sm90_plan_check.cpp) compile it
// with g++. The device side of the hand-off (shared-memory ring, claims) is tile_handoff.cuh.
//
// CTA c runs index c first; each further index is claimed from a global counter zeroed before the launch: claim k
// (the counter's old value) is index gridDim.x + k. Claims are made in time order, so index t starts on whichever
// CTA asks first once t - gridDim.x earlier claims are out: greedy list scheduling of the kernel's own order, and
// every CTA's indices increase. Only the producer thread claims; it hands each index (and, at the end, kNoTile) to
// the consumer warps through a ring of kTileSlots shared-memory slots, each with a full barrier (1 arrival: the
// producer, after its store) and an empty barrier (one arrival per consumer warp, after the warp has read the slot).
// The producer publishes every index it gets, empty work included, so all roles of a CTA walk one sequence.
// The static round-robin (index c, c + gridDim.x, ...) stays reachable: FLASHCORE_SM90_STATIC_SCHEDULE=1.
#pragma once

#include <cstdint>

#ifndef FLASHCORE_HD
#if defined(__CUDACC__)
#define FLASHCORE_HD __host__ __device__ __forceinline__
#else
#define FLASHCORE_HD inline
#endif
#endif

namespace flashcore::sm90 {

constexpr int kTileSlots = 2;  // the producer can run one index ahead of the consumers' current one: it claims
                               // after issuing the current work's last loads, while the consumers may still
                               // finish the previous; with one slot it would wait until they start the current
constexpr int kNoTile = -1;    // the end-of-work sentinel: no index left for this CTA

// A position in the ring of hand-off slots: how many indices passed so far, from which the slot and the parity of
// its lap (the phase a waiter names) follow. One register (the producers run in 24); only passed % 4 matters.
struct HandoffCursor {
  uint32_t passed = 0;
  FLASHCORE_HD int slot() const { return static_cast<int>(passed % kTileSlots); }
  FLASHCORE_HD uint32_t phase() const { return (passed / kTileSlots) & 1u; }
  FLASHCORE_HD void advance() { ++passed; }
};

// The index that the counter's old value `claimed` grants, or kNoTile once the order is used up. Written so that
// it cannot overflow: claimed < num_tiles - grid is checked before grid + claimed is formed.
FLASHCORE_HD int claimed_tile(int claimed, int grid, int num_tiles) {
  return claimed < num_tiles - grid ? grid + claimed : kNoTile;
}

// Static round-robin successor of index t, or kNoTile (overflow-free like claimed_tile).
FLASHCORE_HD int static_next_tile(int t, int grid, int num_tiles) {
  return t < num_tiles - grid ? t + grid : kNoTile;
}

}  // namespace flashcore::sm90

// LDS bank-conflict replay (loaded with ctypes by tests/test_hip_emulated.py): the CDNA3 bank model of
// csrc/hip/lds.h applied to every LDS access of the forward kernel, with the addresses computed by the kernel's
// own functions (FwdTile<D>::k_store / k_load / vt_store / vt_load).
#include <algorithm>
#include <cstdint>
#include <set>
#include <vector>

#include "../hip/fwd_kernel.h"

namespace {

using flashcore::gfx942::FwdTile;
constexpr int kLanes = 64;

// Lanes served together for one access of `width` bytes (lds.h): 128 bytes per phase.
std::vector<std::vector<int>> phases(int width, bool read) {
  std::vector<std::vector<int>> groups;
  if (width == 16 && read) {
    const int starts[4][2] = {{0, 20}, {4, 16}, {8, 28}, {12, 24}};
    for (int base : {0, 32}) {
      for (const auto& s : starts) {
        std::vector<int> g;
        for (int part = 0; part < 2; ++part) {
          for (int i = 0; i < 4; ++i) g.push_back(base + s[part] + i);
        }
        groups.push_back(g);
      }
    }
    return groups;
  }
  const int per = 128 / width;
  for (int s = 0; s < kLanes; s += per) {
    std::vector<int> g;
    for (int i = 0; i < per; ++i) g.push_back(s + i);
    groups.push_back(g);
  }
  return groups;
}

// Worst number of distinct 4-byte words one bank must serve in one phase (1 = conflict-free). offsets[l] < 0:
// lane l does not access.
int degree(const int64_t* offsets, int width, bool read) {
  int worst = 1;
  for (const auto& group : phases(width, read)) {
    std::set<int64_t> words[32];
    for (int l : group) {
      if (offsets[l] < 0) continue;
      for (int w = 0; w < width / 4; ++w) {
        const int64_t word = offsets[l] / 4 + w;
        words[word % 32].insert(word);
      }
    }
    for (const auto& s : words) worst = std::max<int>(worst, static_cast<int>(s.size()));
  }
  return worst;
}

// The kernel computes operand addresses as (lane part) + (immediate step part); both must equal the plain
// address functions for every lane and step.
template <int D>
bool address_split_holds() {
  using T = FwdTile<D>;
  for (int l = 0; l < kLanes; ++l) {
    for (int blk = 0; blk < T::kKeys / 32; ++blk) {
      for (int t = 0; t < D / 16; ++t) {
        if (T::k_load(l, blk, t) != T::k_load(l, 0, t % T::kKVariants) + T::k_load_step(blk, t)) return false;
      }
    }
    for (int db = 0; db < D / 32; ++db) {
      for (int t = 0; t < T::kKeys / 16; ++t) {
        if (T::vt_load(l, db, t) != T::vt_load(l, 0, t % T::kVVariants) + T::vt_load_step(db, t)) return false;
      }
    }
  }
  return true;
}

template <int D>
int kernel_degrees(int* worst) {  // worst[0..3]: K store, K load, V^T store, V^T load
  using T = FwdTile<D>;
  if (!address_split_holds<D>()) return -2;
  int64_t off[kLanes];
  for (int i = 0; i < 4; ++i) worst[i] = 1;
  for (int wave = 0; wave < T::kWaves; ++wave) {
    for (int i = 0; i < T::kKLoads; ++i) {
      for (int l = 0; l < kLanes; ++l) off[l] = T::k_store(wave * kLanes + l, i);
      worst[0] = std::max(worst[0], degree(off, 16, false));
    }
    for (int i = 0; i < T::kVLoads; ++i) {
      for (int c = 0; c < 8; ++c) {
        for (int l = 0; l < kLanes; ++l) {
          const int unit = wave * kLanes + l + i * T::kThreads;
          off[l] = unit < T::kVUnits ? static_cast<int64_t>(T::vt_store(unit, c)) : -1;
        }
        worst[2] = std::max(worst[2], degree(off, 8, false));
      }
    }
  }
  for (int blk = 0; blk < T::kKeys / 32; ++blk) {
    for (int t = 0; t < D / 16; ++t) {
      for (int l = 0; l < kLanes; ++l) off[l] = T::k_load(l, blk, t);
      worst[1] = std::max(worst[1], degree(off, 16, true));
    }
  }
  for (int db = 0; db < D / 32; ++db) {
    for (int t = 0; t < T::kKeys / 16; ++t) {
      for (int l = 0; l < kLanes; ++l) off[l] = T::vt_load(l, db, t);
      worst[3] = std::max(worst[3], degree(off, 16, true));
    }
  }
  return 0;
}

}  // namespace

extern "C" {

// The bank model on one wave-wide access: offsets (64 byte addresses, -1 = lane idle), width 4/8/16 bytes.
int emu_lds_conflict_degree(const int64_t* offsets, int width, int read) { return degree(offsets, width, read != 0); }

// worst[0..3] = conflict degree of the forward kernel's K store, K load, V^T store, V^T load for head dim d.
// Returns 0, -1 (no such head dim) or -2 (the kernel's split operand addresses differ from k_load / vt_load).
int emu_fwd_lds_conflicts(int d, int* worst) {
  switch (d) {
    case 64: return kernel_degrees<64>(worst);
    case 96: return kernel_degrees<96>(worst);
    case 128: return kernel_degrees<128>(worst);
    case 192: return kernel_degrees<192>(worst);
    case 256: return kernel_degrees<256>(worst);
    default: return -1;
  }
}

}  // extern "C"

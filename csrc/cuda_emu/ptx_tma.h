// The CPU model of the Tensor Memory Accelerator behind csrc/cuda/ptx/tma.cuh (included there under
// FLASHCORE_SM90_EMU, after the shared TmaElem / limits / tma_swizzle_span): the host encoder and the device copies.
//
// Sources (not our kernel-side comments):
//   * cuda.h, cuTensorMapEncodeTiled: the validation rules encode_tensor_map enforces (map 64-byte aligned, rank
//     <= 5, base 16-byte aligned, dims in [1, 2^32], strides multiples of 16 below 2^40, box dims in [1, 256],
//     inner box bytes a multiple of 16 and <= the swizzle span);
//   * PTX ISA "Tensor copy ... Swizzling Modes": 16-byte chunks permuted per 128-byte shared-memory line; the
//     pattern is a function of the shared address (32B: bit 4 ^= bit 7; 64B: bits 4-5 ^= bits 7-8; 128B: bits 4-6
//     ^= bits 7-9), repeating every 256 / 512 / 1024 bytes. A destination not on that boundary is legal: the
//     hardware's "swizzle base offset" is (dstMem / 128) % (pattern rows), i.e. the pattern stays locked to the
//     absolute address. So the model swizzles absolute window addresses and requires only the 128-byte alignment
//     of the CUDA programming guide's TMA table ("Shared memory address: must be 128 byte aligned");
//   * cp.async.bulk.tensor: loads complete_tx the FULL box's bytes on the mbarrier (out-of-bounds elements are
//     zero-filled and still counted); stores write only in-bounds elements and belong to the issuing thread's bulk
//     async-group; cp.async.bulk.wait_group.read N waits until all but the newest N committed groups have read
//     shared memory, wait_group N until they have completed (the model does the two steps as separate work);
//   * cp.reduce.async.bulk.tensor .add: a store whose write step adds each in-bounds element to the global one (the
//     type from the map; modelled for fp32 maps). Each element's add is atomic; the model's write step is one
//     indivisible unit, so overlapping boxes of several CTAs sum in whatever order their steps run.
//
// What the model stores in the 128-byte CUtensorMap is its own description (TensorMapModel), marked so that a map
// the real driver (or nobody) encoded is rejected by the copies.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu.h"
#include "ptx_proxy.h"
#include "ptx_mbarrier.h"  // cuda_emu::mbarrier_complete_tx

namespace flashcore::cuda_emu {

constexpr uint32_t kTensorMapMagic = 0x464d4150u;  // "FMAP": a map encoded by this model
constexpr uint32_t kTensorMapAlign = 64;            // cuTensorMapEncodeTiled: "tensorMap address ... 64 bytes"
constexpr uint32_t kTmaSmemAlign = 128;             // programming guide: TMA shared memory address 128-byte aligned
constexpr uint32_t kSwizzleUnit = 16;               // swizzling permutes 16-byte chunks
constexpr uint32_t kSwizzleLine = 128;              // ... within each 128-byte shared-memory line
constexpr int kMaxRank = 5;

struct TensorMapModel {
  uint32_t magic;
  uint32_t rank;
  uint32_t elem_bytes;
  uint32_t swizzle_span;  // 0 (none), 32, 64 or 128
  uint64_t base;          // global address of element (0, ..., 0)
  uint64_t dims[kMaxRank];
  uint64_t strides[kMaxRank];  // bytes; strides[0] = elem_bytes
  uint32_t box[kMaxRank];
};
static_assert(sizeof(TensorMapModel) <= sizeof(CUtensorMap), "the model's map must fit the opaque 128 bytes");

// The shared-window address where the byte at (unswizzled) window address `addr` lands with a `span`-byte swizzle:
// XOR the 16-byte chunk index (bits 4..) with the 128-byte line index (bits 7..), log2(span / 16) bits of each.
inline uint32_t swizzle_address(uint32_t addr, uint32_t span) {
  if (span == 0) return addr;
  const uint32_t mask = span / kSwizzleUnit - 1;  // 1, 3 or 7
  return addr ^ (((addr / kSwizzleLine) & mask) * kSwizzleUnit);
}

inline const TensorMapModel& tensor_map_model(const CUtensorMap* map, const char* what) {
  const auto* m = reinterpret_cast<const TensorMapModel*>(map);
  if (map == nullptr || m->magic != kTensorMapMagic) {
    fail(std::string(what) + ": the tensor map was not encoded by encode_tensor_map (or is corrupted)");
  }
  return *m;
}

// Calls fn(row, inside, offset, lo, hi) for every row of the box at `coords` (rows: the outer box indices 1..rank-1
// linearised, dimension 1 fastest): inside = the row lies in the tensor, offset = global byte offset of the row's
// inner element 0 (coords[0] may be negative), [lo, hi) = its in-bounds inner elements.
template <class Fn>
void for_each_box_row(const TensorMapModel& m, const int32_t* coords, Fn&& fn) {
  uint32_t rows = 1;
  for (uint32_t d = 1; d < m.rank; ++d) rows *= m.box[d];
  const int64_t c0 = coords[0];
  const int64_t lo = c0 < 0 ? -c0 : 0;
  int64_t hi = static_cast<int64_t>(m.dims[0]) - c0;
  if (hi > m.box[0]) hi = m.box[0];
  for (uint32_t row = 0; row < rows; ++row) {
    uint32_t rest = row;
    bool inside = lo < hi;
    int64_t offset = c0 * static_cast<int64_t>(m.elem_bytes);
    for (uint32_t d = 1; d < m.rank; ++d) {
      const int64_t c = static_cast<int64_t>(coords[d]) + rest % m.box[d];
      rest /= m.box[d];
      if (c < 0 || c >= static_cast<int64_t>(m.dims[d])) inside = false;
      offset += c * static_cast<int64_t>(m.strides[d]);
    }
    fn(row, inside, offset, inside ? lo : 0, inside ? hi : 0);
  }
}

inline uint32_t box_bytes(const TensorMapModel& m) {
  uint32_t n = m.elem_bytes;
  for (uint32_t d = 0; d < m.rank; ++d) n *= m.box[d];
  return n;
}

// Moves one box between global memory and shared memory: the box is dense (inner dimension fastest) from window
// address `smem_addr`, then swizzled by address. `tile` holds the box's bytes as they lie from `smem_addr` (the
// swizzle permutes within whole groups: encode_tensor_map guarantees the box fills them).
inline void tma_copy_box(const TensorMapModel& m, const int32_t* coords, uint8_t* tile, uint32_t smem_addr,
                         bool to_shared) {
  const uint32_t row_bytes = m.box[0] * m.elem_bytes;
  auto* global = reinterpret_cast<uint8_t*>(m.base);
  for_each_box_row(m, coords, [&](uint32_t row, bool inside, int64_t offset, int64_t lo, int64_t hi) {
    const uint32_t row_addr = smem_addr + row * row_bytes;
    // 16-byte chunks stay whole under every swizzle (rows start 16-byte aligned): one move per chunk, element by
    // element only where the tensor's edge cuts a chunk.
    for (uint32_t c = 0; c < row_bytes; c += kSwizzleUnit) {
      uint8_t* smem = tile + (swizzle_address(row_addr + c, m.swizzle_span) - smem_addr);
      const int64_t first = c / m.elem_bytes, last = (c + kSwizzleUnit) / m.elem_bytes;  // elements [first, last)
      if (inside && first >= lo && last <= hi) {
        if (to_shared) {
          std::memcpy(smem, global + offset + c, kSwizzleUnit);
        } else {
          std::memcpy(global + offset + c, smem, kSwizzleUnit);
        }
        continue;
      }
      for (uint32_t b = 0; b < kSwizzleUnit; ++b) {
        const int64_t element = (c + b) / m.elem_bytes;
        const bool in_bounds = inside && element >= lo && element < hi;
        if (to_shared) {
          smem[b] = in_bounds ? global[offset + c + b] : 0;  // out-of-bounds elements read as zero
        } else if (in_bounds) {
          global[offset + c + b] = smem[b];  // stores skip out-of-bounds elements
        }
      }
    }
  });
}

// The write step of a reduce-add on an fp32 map: global element += the shared element, in-bounds elements only.
// `tile` holds the box's bytes as they lay from window address `smem_addr` (swizzled, as tma_copy_box reads them).
inline void tma_add_box_f32(const TensorMapModel& m, const int32_t* coords, const uint8_t* tile, uint32_t smem_addr) {
  const uint32_t row_bytes = m.box[0] * m.elem_bytes;
  auto* global = reinterpret_cast<uint8_t*>(m.base);
  for_each_box_row(m, coords, [&](uint32_t row, bool inside, int64_t offset, int64_t lo, int64_t hi) {
    if (!inside) return;
    const uint32_t row_addr = smem_addr + row * row_bytes;
    for (int64_t e = lo; e < hi; ++e) {
      const uint32_t b = static_cast<uint32_t>(e) * m.elem_bytes;  // a 4-byte element never straddles a 16-byte chunk
      float add, sum;
      std::memcpy(&add, tile + (swizzle_address(row_addr + b, m.swizzle_span) - smem_addr), sizeof add);
      uint8_t* dst = global + offset + b;
      std::memcpy(&sum, dst, sizeof sum);
      sum += add;
      std::memcpy(dst, &sum, sizeof sum);
    }
  });
}

// A TMA store or reduce in two asynchronous steps: the read of shared memory (what cp.async.bulk.wait_group.read
// waits for), which then queues the write of global memory (what the full wait_group waits for). The source range
// stays held against generic writes (ptx_proxy.h) until the issuing thread's wait covers it.
struct PendingStore {
  uint64_t read = 0, write = 0;  // tickets; write is 0 until the read ran
  uint32_t addr = 0, bytes = 0;  // the shared source
  bool held = true;
};

// Per-thread bulk async-groups of TMA stores (PTX "cp.async.bulk.commit_group"): the open (uncommitted) stores and
// the committed groups, oldest first.
struct BulkGroups {
  using Group = std::vector<std::shared_ptr<PendingStore>>;
  struct Thread {
    Group open;
    std::deque<Group> committed;
  };
  std::unordered_map<int, Thread> threads;
};
inline const char kBulkGroupsKey = 0;

inline BulkGroups::Thread& my_bulk_groups() {
  return cta_state<BulkGroups>(&kBulkGroupsKey).threads[linear_thread()];
}

// Checks a TMA shared-memory operand (this CTA's, 128-byte aligned, inside the launch's shared memory) and returns
// its pointer and window address.
inline uint8_t* tma_tile(const char* what, const void* smem, uint32_t bytes, uint32_t& addr) {
  addr = smem_address(smem);
  if (addr % kTmaSmemAlign != 0) {
    fail(std::string(what) + ": shared address " + std::to_string(addr) + " is not 128-byte aligned");
  }
  return smem_pointer(addr, bytes);
}

inline void tma_load(int rank, void* dst, const CUtensorMap* map, uint64_t* bar, const int32_t* coords) {
  const TensorMapModel& m = tensor_map_model(map, "cp.async.bulk.tensor (load)");
  proxy_global_check("cp.async.bulk.tensor (load)");
  if (static_cast<uint32_t>(rank) != m.rank) {
    fail("cp.async.bulk.tensor." + std::to_string(rank) + "d on a rank-" + std::to_string(m.rank) + " tensor map");
  }
  const uint32_t bar_addr = smem_address(bar);
  if (bar_addr % sizeof(uint64_t) != 0) fail("cp.async.bulk.tensor: the mbarrier is not 8-byte aligned");
  const uint32_t bytes = box_bytes(m);
  uint32_t addr;
  uint8_t* tile = tma_tile("cp.async.bulk.tensor (load) destination", dst, bytes, addr);
  proxy_check_range(addr, bytes, "cp.async.bulk.tensor (load) destination");
  const TensorMapModel copy = m;  // the copy engine read the map at issue
  int32_t c[kMaxRank] = {};
  for (int d = 0; d < rank; ++d) c[d] = coords[d];
  enqueue_async([copy, tile, addr, bar, bytes, c] {
    tma_copy_box(copy, c, tile, addr, true);
    mbarrier_complete_tx(bar, bytes);
  });
}

// A store (add = false: cp.async.bulk.tensor) or an fp32 reduce-add (add = true: cp.reduce.async.bulk.tensor .add).
inline void tma_store(int rank, const CUtensorMap* map, const void* src, const int32_t* coords, bool add = false) {
  const char* what = add ? "cp.reduce.async.bulk.tensor (add)" : "cp.async.bulk.tensor (store)";
  const TensorMapModel& m = tensor_map_model(map, what);
  proxy_global_check(what);
  if (static_cast<uint32_t>(rank) != m.rank) {
    fail(std::string(add ? "cp.reduce.async.bulk.tensor." : "cp.async.bulk.tensor.") + std::to_string(rank) +
         "d on a rank-" + std::to_string(m.rank) + " tensor map");
  }
  if (add && m.elem_bytes != sizeof(float)) fail(std::string(what) + ": modelled for fp32 tensor maps only");
  uint32_t addr;
  const uint32_t bytes = box_bytes(m);
  const std::string source = std::string(what) + " source";
  const uint8_t* tile = tma_tile(source.c_str(), src, bytes, addr);
  proxy_check_range(addr, bytes, source.c_str());
  proxy_hold_range(addr, bytes, true);
  const TensorMapModel copy = m;
  int32_t c[kMaxRank] = {};
  for (int d = 0; d < rank; ++d) c[d] = coords[d];
  // Shared memory is read when the read step runs, not at issue: a kernel that reuses the buffer before
  // bulk_wait_group_read stores what it wrote later; global memory changes only in the later write step.
  auto store = std::make_shared<PendingStore>();
  store->addr = addr;
  store->bytes = bytes;
  store->read = enqueue_async([copy, tile, addr, bytes, c, store, add] {
    auto data = std::make_shared<std::vector<uint8_t>>(tile, tile + bytes);
    store->write = enqueue_async([copy, addr, c, data, add] {
      if (add) {
        tma_add_box_f32(copy, c, data->data(), addr);
      } else {
        tma_copy_box(copy, c, data->data(), addr, false);
      }
    });
  });
  my_bulk_groups().open.push_back(std::move(store));
}

// cp.async.bulk.wait_group{.read}: every committed group but the newest `pending` has read its shared memory
// (read_only) or has completed (its global writes done; the group is retired).
inline void bulk_wait(int pending, bool read_only) {
  BulkGroups::Thread& t = my_bulk_groups();
  const int older = static_cast<int>(t.committed.size()) - pending;
  for (int g = 0; g < older; ++g) {
    for (const auto& store : t.committed[g]) {
      run_async_now(store->read);  // queues the write
      if (!read_only) run_async_now(store->write);
      if (store->held) proxy_hold_range(store->addr, store->bytes, false);  // the source may be rewritten now
      store->held = false;
    }
  }
  if (!read_only) {
    for (int g = 0; g < older; ++g) t.committed.pop_front();
  }
}

}  // namespace flashcore::cuda_emu

namespace flashcore::sm90::ptx {

// Same contract as the driver-backed encoder of the real build: "" or what is wrong.
inline std::string encode_tensor_map(CUtensorMap* map, TmaElem elem, int rank, const void* base,
                                     const uint64_t* dims, const uint64_t* strides_bytes, const uint32_t* box,
                                     CUtensorMapSwizzle swizzle) {
  using cuda_emu::TensorMapModel;
  if (reinterpret_cast<uintptr_t>(map) % cuda_emu::kTensorMapAlign != 0) return "the tensor map is not 64-byte aligned";
  if (elem != TmaElem::kBf16 && elem != TmaElem::kFp16 && elem != TmaElem::kFp32) return "unknown element type";
  if (swizzle != CU_TENSOR_MAP_SWIZZLE_NONE && swizzle != CU_TENSOR_MAP_SWIZZLE_32B &&
      swizzle != CU_TENSOR_MAP_SWIZZLE_64B && swizzle != CU_TENSOR_MAP_SWIZZLE_128B) {
    return "swizzle mode " + std::to_string(static_cast<int>(swizzle)) +
           " is not modelled by the emulator (none, 32B, 64B, 128B are)";
  }
  // the driver's documented limits: the same checks as the real build's encoder
  const std::string problem = check_tensor_map_args(elem, rank, base, dims, strides_bytes, box, swizzle);
  if (!problem.empty()) return problem;
  const uint32_t elem_bytes = tma_elem_bytes(elem);
  const uint32_t inner_bytes = box[0] * elem_bytes;
  const uint32_t span = tma_swizzle_span(swizzle);
  uint64_t total = inner_bytes;
  for (int d = 1; d < rank; ++d) total *= box[d];
  if (span != 0 && total % span != 0) {  // a partial swizzle group would scatter bytes past the box: unknown
    return "the box (" + std::to_string(total) + " bytes) does not fill whole " + std::to_string(span) +
           "-byte swizzle groups: not modelled by the emulator";
  }
  TensorMapModel m{};
  m.magic = cuda_emu::kTensorMapMagic;
  m.rank = static_cast<uint32_t>(rank);
  m.elem_bytes = elem_bytes;
  m.swizzle_span = span;
  m.base = reinterpret_cast<uint64_t>(base);
  m.strides[0] = elem_bytes;
  for (int d = 0; d < rank; ++d) {
    m.dims[d] = dims[d];
    m.box[d] = box[d];
    if (d > 0) m.strides[d] = strides_bytes[d - 1];
  }
  std::memset(map, 0, sizeof(CUtensorMap));
  std::memcpy(map, &m, sizeof m);
  return "";
}

inline void prefetch_tensor_map(const CUtensorMap* map) { cuda_emu::tensor_map_model(map, "prefetch.tensormap"); }

inline void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t c0, int32_t c1) {
  const int32_t c[] = {c0, c1};
  cuda_emu::tma_load(2, dst, map, bar, c);
}
inline void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t c0, int32_t c1, int32_t c2) {
  const int32_t c[] = {c0, c1, c2};
  cuda_emu::tma_load(3, dst, map, bar, c);
}
inline void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t c0, int32_t c1, int32_t c2,
                        int32_t c3) {
  const int32_t c[] = {c0, c1, c2, c3};
  cuda_emu::tma_load(4, dst, map, bar, c);
}
inline void tma_load_5d(void* dst, const CUtensorMap* map, uint64_t* bar, int32_t c0, int32_t c1, int32_t c2,
                        int32_t c3, int32_t c4) {
  const int32_t c[] = {c0, c1, c2, c3, c4};
  cuda_emu::tma_load(5, dst, map, bar, c);
}

inline void tma_store_2d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1) {
  const int32_t c[] = {c0, c1};
  cuda_emu::tma_store(2, map, src, c);
}
inline void tma_store_3d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1, int32_t c2) {
  const int32_t c[] = {c0, c1, c2};
  cuda_emu::tma_store(3, map, src, c);
}
inline void tma_store_4d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1, int32_t c2, int32_t c3) {
  const int32_t c[] = {c0, c1, c2, c3};
  cuda_emu::tma_store(4, map, src, c);
}
inline void tma_store_5d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1, int32_t c2, int32_t c3,
                         int32_t c4) {
  const int32_t c[] = {c0, c1, c2, c3, c4};
  cuda_emu::tma_store(5, map, src, c);
}

inline void tma_reduce_add_2d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1) {
  const int32_t c[] = {c0, c1};
  cuda_emu::tma_store(2, map, src, c, true);
}
inline void tma_reduce_add_3d(const CUtensorMap* map, const void* src, int32_t c0, int32_t c1, int32_t c2) {
  const int32_t c[] = {c0, c1, c2};
  cuda_emu::tma_store(3, map, src, c, true);
}

inline void bulk_commit_group() {
  cuda_emu::BulkGroups::Thread& t = cuda_emu::my_bulk_groups();
  t.committed.push_back(std::move(t.open));  // an empty group is legal and completes at once
  t.open.clear();
}

template <int kPending>
inline void bulk_wait_group_read() {
  cuda_emu::bulk_wait(kPending, true);
}

template <int kPending>
inline void bulk_wait_group() {
  cuda_emu::bulk_wait(kPending, false);
}

}  // namespace flashcore::sm90::ptx

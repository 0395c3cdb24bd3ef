// C entry points of the CPU harness for the sm_90a data-movement and tensor-core models (loaded with ctypes by
// tests/test_cuda_emu_ptx.py). Every kernel below goes through the kernel-side headers csrc/cuda/ptx/*.cuh, so it
// runs the same calls the real kernels make (the descriptor builders, the fragment helpers of layout.cuh), with the
// instructions themselves modelled by csrc/cuda_emu/ptx_*.h:
//   emu_tma_encode       encode_tensor_map's validation (message on failure)
//   emu_tma_load         one box, global -> shared, mbarrier completion; returns the raw (swizzled) shared bytes
//   emu_tma_store        raw shared bytes -> one box in global memory (in-bounds elements only)
//   emu_tma_reduce       several CTAs reduce-add fp32 boxes staged with st.shared.v2.f32 into one region; the
//                        staging buffer reused after the read-wait; a missing fence / an early reuse (reported);
//                        optionally in CTA order behind a semaphore, as the deterministic backward adds dQ
//   emu_wgmma_ss         the probe kernel of csrc/cuda/wgmma_probe_kernel.cuh (the one flashcore_sm90::wgmma_probe
//                        runs on a GPU): A and B brought in by TMA as 64-column 128B-swizzled panels, K-major or
//                        MN-major with the kernels' descriptors, SS or register A, K / 16 wgmmas into one
//                        accumulator; returns every thread's registers
//   emu_wgmma_fwd        its chain kernel, the forward's consumer GEMMs: S = Q K^T (SS), P = bf16/f16(S) by
//                        a_frag_from_acc, O = P V (RS, V MN-major across panels)
//   emu_wgmma_raw        one wgmma on a shared-memory image and descriptors the test builds (all swizzle modes)
//   emu_wgmma_semantics  wait_group ordering and the late read of shared memory
//   emu_wgmma_bad        descriptors the model must reject
//   emu_fence_case       proxy fences, wgmma.fence and RS A registers: each broken kernel next to its correct twin
//   emu_stmatrix         the epilogue's packs + stmatrix of a 64 x 64 accumulator into a 128B-swizzled tile
//   emu_layout           layout.cuh's (thread, register) -> (row, col) tables, for the Python copy of the ISA
//   emu_descriptors      smem.cuh / wgmma.cuh's swizzle offset and descriptor builders
//   emu_pack             pack_bf16x2 / pack_f16x2
//   emu_set_schedule     the engine's Schedule for the launches that follow
// Each launching entry returns 0, or -1 with the launch's error message in `error`.
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "../cuda/ptx/ptx.cuh"
#include "../cuda/ptx/sync_ext.cuh"
#include "../cuda/ptx/wgmma_mn.cuh"
#include "../cuda/wgmma_probe_plan.cuh"
#include "emu.h"

namespace {

using namespace flashcore;
using namespace flashcore::sm90::ptx;
namespace frag = flashcore::sm90::frag;
namespace emu = flashcore::cuda_emu;
namespace wgmma_probe = flashcore::sm90::wgmma_probe;

constexpr uint32_t kPanelCols = 64;      // 16-bit values per 128-byte swizzled row: the kernels' TMA box width
constexpr uint32_t kRowBytes = 128;      // one swizzled row
constexpr uint32_t kTileBase = 1024;     // tiles start one swizzle atom into dynamic smem (the barrier lives below)

emu::Schedule g_schedule = emu::Schedule::kRandom;  // emu_set_schedule: for every launch that follows

int launch_block(int threads, size_t smem, const std::function<void()>& body, uint64_t seed, char* error,
                 int error_bytes) {
  emu::LaunchOptions options;
  options.seed = seed;
  options.schedule = g_schedule;
  return emu::to_c_status(emu::launch(emu::Dim3{1, 1, 1}, emu::Dim3{static_cast<unsigned>(threads), 1, 1}, smem,
                                      body, options),
                          error, error_bytes);
}

int fail_status(const std::string& message, char* error, int error_bytes) {
  return emu::to_c_status(message.empty() ? "error" : message, error, error_bytes);
}

CUtensorMapSwizzle swizzle_mode(int span) {
  switch (span) {
    case 32: return CU_TENSOR_MAP_SWIZZLE_32B;
    case 64: return CU_TENSOR_MAP_SWIZZLE_64B;
    case 128: return CU_TENSOR_MAP_SWIZZLE_128B;
    case 0: return CU_TENSOR_MAP_SWIZZLE_NONE;
    default: return static_cast<CUtensorMapSwizzle>(span);  // raw enum values (e.g. the 128B_ATOM_* modes) pass through
  }
}

// 2D map of a row-major [rows][cols] 16-bit matrix, box of 64 columns x box_rows rows, 128B swizzle.
std::string panel_map(CUtensorMap* map, bool bf16, const void* base, uint64_t cols, uint64_t rows, uint32_t box_rows) {
  const uint64_t dims[2] = {cols, rows};
  const uint64_t strides[1] = {cols * 2};
  const uint32_t box[2] = {kPanelCols, box_rows};
  return encode_tensor_map(map, bf16 ? TmaElem::kBf16 : TmaElem::kFp16, 2, base, dims, strides, box,
                           CU_TENSOR_MAP_SWIZZLE_128B);
}

void tma_load_rank(int rank, void* dst, const CUtensorMap* map, uint64_t* bar, const int32_t* c) {
  switch (rank) {
    case 2: tma_load_2d(dst, map, bar, c[0], c[1]); break;
    case 3: tma_load_3d(dst, map, bar, c[0], c[1], c[2]); break;
    case 4: tma_load_4d(dst, map, bar, c[0], c[1], c[2], c[3]); break;
    default: tma_load_5d(dst, map, bar, c[0], c[1], c[2], c[3], c[4]); break;
  }
}

void tma_store_rank(int rank, const CUtensorMap* map, const void* src, const int32_t* c) {
  switch (rank) {
    case 2: tma_store_2d(map, src, c[0], c[1]); break;
    case 3: tma_store_3d(map, src, c[0], c[1], c[2]); break;
    case 4: tma_store_4d(map, src, c[0], c[1], c[2], c[3]); break;
    default: tma_store_5d(map, src, c[0], c[1], c[2], c[3], c[4]); break;
  }
}

// Thread 0 initialises the CTA's barrier (dynamic smem offset 0) for one arrival and publishes it.
uint64_t* init_barrier() {
  auto* bar = reinterpret_cast<uint64_t*>(dynamic_smem());
  if (emu::linear_thread() == 0) {
    mbarrier_init(bar, 1);
    fence_mbarrier_init();
  }
  emu::named_barrier_sync(0, 0);
  return bar;
}

// ---- the probe kernels (csrc/cuda/wgmma_probe_kernel.cuh): the same code flashcore_sm90::wgmma_probe runs on a GPU
int launch_probe(const std::string& problem, int smem, const std::function<void()>& kernel, uint64_t seed,
                 char* error, int error_bytes) {
  if (!problem.empty()) return fail_status(problem, error, error_bytes);
  return launch_block(wgmma_probe::kThreads, static_cast<size_t>(smem), kernel, seed, error, error_bytes);
}

// Two K-major 64 x 64 tiles (A: rows = M, B: rows = N) by TMA, as one panel each; the first 16-column slice is used.
struct TwoTiles {
  uint8_t *a, *b;
};

TwoTiles load_two_tiles(const CUtensorMap* map_a, const CUtensorMap* map_b) {
  constexpr uint32_t kPanel = 64 * kRowBytes;
  uint64_t* bar = init_barrier();
  TwoTiles t{dynamic_smem() + kTileBase, dynamic_smem() + kTileBase + kPanel};
  if (emu::linear_thread() == 0) {
    mbarrier_arrive_expect_tx(bar, 2 * kPanel);
    tma_load_2d(t.a, map_a, bar, 0, 0);
    tma_load_2d(t.b, map_b, bar, 0, 0);
  }
  mbarrier_wait(bar, 0);
  return t;
}

constexpr size_t kTwoTilesSmem = kTileBase + 2 * 64 * kRowBytes;

// ---- wgmma on a shared-memory image and descriptors built by the test (every swizzle mode, both majors) --------
struct RawArgs {
  const uint8_t* image;
  uint32_t bytes;
  uint64_t desc_a, desc_b;
  float* d_out;
};

template <int N, MmaType kType, int kTransA, int kTransB>
int run_raw(const RawArgs& g, uint64_t seed, char* error, int error_bytes) {
  auto body = [&] {
    uint8_t* tile = dynamic_smem() + kTileBase;
    const int tid = emu::linear_thread();
    if (tid == 0) {
      if (smem_u32(tile) != 2 * kTileBase) emu::fail("the test's image assumes its tile at window address 2048");
      std::memcpy(tile, g.image, g.bytes);
    }
    emu::named_barrier_sync(0, 0);
    float d[N / 2];
    wgmma_fence();
    wgmma_ss_n<N, kType, kTransA, kTransB>(d, g.desc_a, g.desc_b, false);
    wgmma_commit();
    wgmma_wait<0>();
    std::memcpy(g.d_out + tid * (N / 2), d, sizeof d);
  };
  return launch_block(128, kTileBase + g.bytes, body, seed, error, error_bytes);
}

template <int N, MmaType kType>
int dispatch_raw(const RawArgs& g, int form, uint64_t seed, char* error, int error_bytes) {
  switch (form) {
    case 0: return run_raw<N, kType, 0, 0>(g, seed, error, error_bytes);
    case 1: return run_raw<N, kType, 0, 1>(g, seed, error, error_bytes);
    case 2: return run_raw<N, kType, 1, 0>(g, seed, error, error_bytes);
    default: return run_raw<N, kType, 1, 1>(g, seed, error, error_bytes);
  }
}

}  // namespace

extern "C" {

void emu_set_schedule(int schedule) { g_schedule = static_cast<emu::Schedule>(schedule); }

int emu_tma_encode(int elem, int rank, const void* base, const uint64_t* dims, const uint64_t* strides,
                   const uint32_t* box, int swizzle, int map_offset, char* error, int error_bytes) {
  alignas(64) unsigned char storage[2 * sizeof(CUtensorMap)];
  auto* map = reinterpret_cast<CUtensorMap*>(storage + map_offset);
  const std::string problem =
      encode_tensor_map(map, static_cast<TmaElem>(elem), rank, base, dims, strides, box, swizzle_mode(swizzle));
  return problem.empty() ? 0 : fail_status(problem, error, error_bytes);
}

// One box at `coords` into shared memory `dst_offset` bytes past the tile base; `out` gets the box's bytes as
// they lie in shared memory and *tile_addr the window address they start at (the swizzle is a function of it).
int emu_tma_load(int elem, int rank, const void* base, const uint64_t* dims, const uint64_t* strides,
                 const uint32_t* box, int swizzle, const int32_t* coords, int dst_offset, uint8_t* out,
                 uint32_t out_bytes, uint32_t* tile_addr, uint64_t seed, char* error, int error_bytes) {
  alignas(64) CUtensorMap map;
  const std::string problem =
      encode_tensor_map(&map, static_cast<TmaElem>(elem), rank, base, dims, strides, box, swizzle_mode(swizzle));
  if (!problem.empty()) return fail_status("encode: " + problem, error, error_bytes);
  auto body = [&] {
    uint64_t* bar = init_barrier();
    uint8_t* tile = dynamic_smem() + kTileBase + dst_offset;
    if (emu::linear_thread() == 0) {
      mbarrier_arrive_expect_tx(bar, out_bytes);
      tma_load_rank(rank, tile, &map, bar, coords);
      mbarrier_wait(bar, 0);
      std::memcpy(out, tile, out_bytes);
      *tile_addr = smem_u32(tile);
    }
  };
  return launch_block(32, kTileBase + dst_offset + out_bytes, body, seed, error, error_bytes);
}

// `smem` (box bytes, already in the swizzled order the store reads) is stored as one box at `coords`. The thread
// overwrites the tile with 0x5a bytes either after bulk_wait_group_read (early_overwrite = 0: must not reach global
// memory) or right after issuing the store, with no scheduling point in between (1: the copy has not run yet, so
// the model stores the overwritten bytes -- how it exposes a buffer reused before the read-wait). `after_read`
// gets the `global_bytes` at `base` as they are right after the read-wait (the global write has not run yet).
int emu_tma_store(int elem, int rank, void* base, const uint64_t* dims, const uint64_t* strides, const uint32_t* box,
                  int swizzle, const int32_t* coords, const uint8_t* smem, uint32_t bytes, int early_overwrite,
                  uint8_t* after_read, size_t global_bytes, uint64_t seed, char* error, int error_bytes) {
  alignas(64) CUtensorMap map;
  const std::string problem =
      encode_tensor_map(&map, static_cast<TmaElem>(elem), rank, base, dims, strides, box, swizzle_mode(swizzle));
  if (!problem.empty()) return fail_status("encode: " + problem, error, error_bytes);
  auto body = [&] {
    uint8_t* tile = dynamic_smem() + kTileBase;
    if (emu::linear_thread() == 0) {
      std::memcpy(tile, smem, bytes);
      fence_proxy_async_shared();
      tma_store_rank(rank, &map, tile, coords);
      if (early_overwrite) std::memset(tile, 0x5a, bytes);
      bulk_commit_group();
      bulk_wait_group_read<0>();
      std::memcpy(after_read, base, global_bytes);
      if (!early_overwrite) std::memset(tile, 0x5a, bytes);  // after the read: must not be stored
      bulk_wait_group<0>();
    }
  };
  return launch_block(32, kTileBase + bytes, body, seed, error, error_bytes);
}

// `ctas` CTAs of one warpgroup each reduce-add (fp32) into one rank-2 or rank-3 tensor at `coords`, `rounds` times:
// round r of CTA b stages tiles[(b * rounds + r) * box elements ...] (dense box order, innermost first) with
// st_shared_v2_f32 at the map's swizzle (0 or 128: the swizzle128_offset the kernels use), fences, syncs the
// warpgroup, and thread 0 issues the reduce and commits; before the next round rewrites the buffer thread 0 waits
// wait_group.read and the warpgroup syncs. After the last round the buffer is overwritten with 0x5a5a5a5a floats
// after the read-wait (must not be added), then thread 0 waits for completion. `bug`: 1 no fence.proxy.async before
// the reduce, 2 the next round written with no read-wait before it (both must stop the launch). 3 / 4: the CTAs add
// in order, as the deterministic backward's dQ chain does: thread 0 of CTA b spins with ld.acquire.gpu until a
// semaphore reads b, executes fence.proxy.async.global (4; 3 leaves it out: must stop the launch), adds, and after
// its final wait releases the semaphore (red.release.gpu).
int emu_tma_reduce(int rank, float* base, const uint64_t* dims, const uint64_t* strides, const uint32_t* box,
                   int swizzle, const int32_t* coords, const float* tiles, int ctas, int rounds, int bug,
                   uint64_t seed, char* error, int error_bytes) {
  alignas(64) CUtensorMap map;
  const std::string problem =
      encode_tensor_map(&map, TmaElem::kFp32, rank, base, dims, strides, box, swizzle_mode(swizzle));
  if (!problem.empty()) return fail_status("encode: " + problem, error, error_bytes);
  if (swizzle != 0 && swizzle != 128) return fail_status("the harness stages with no swizzle or 128B", error, error_bytes);
  uint32_t elems = 1;
  for (int d = 0; d < rank; ++d) elems *= box[d];
  constexpr int kThreads = 128;          // one warpgroup stages and syncs, as a backward consumer does
  constexpr uint32_t kPairBytes = 8;     // one st.shared.v2.f32
  constexpr uint32_t kGarbage = 0x5a5a5a5au;
  const uint32_t bytes = elems * sizeof(float);
  const bool ordered = bug == 3 || bug == 4;
  int32_t turn = 0;  // the ordered variant's semaphore: CTAs add in index order
  auto body = [&] {
    const int tid = emu::linear_thread(), cta = emu::linear_block();
    uint8_t* tile = dynamic_smem() + kTileBase;
    const uint32_t tile_addr = smem_u32(tile);
    auto stage = [&](const float* values) {
      for (uint32_t b = tid * kPairBytes; b < bytes; b += kThreads * kPairBytes) {
        const uint32_t at = swizzle == 0 ? b : swizzle128_offset(b / kSwizzle128Row, b % kSwizzle128Row / kSwizzleChunk) +
                                                   b % kSwizzleChunk;
        float x = emu::bits_float(kGarbage), y = x;
        if (values != nullptr) x = values[b / sizeof(float)], y = values[b / sizeof(float) + 1];
        st_shared_v2_f32(tile_addr + at, x, y);
      }
    };
    for (int r = 0; r < rounds; ++r) {
      if (r > 0 && bug != 2) {
        if (tid == 0) bulk_wait_group_read<0>();
        emu::named_barrier_sync(1, kThreads);
      }
      stage(tiles + (static_cast<size_t>(cta) * rounds + r) * elems);
      if (bug != 1) fence_proxy_async_shared();
      emu::named_barrier_sync(1, kThreads);
      if (tid == 0) {
        if (ordered && r == 0) {
          while (ld_acquire_gpu(&turn) != cta) {
          }
          if (bug == 4) fence_proxy_async_global();
        }
        if (rank == 2) {
          tma_reduce_add_2d(&map, tile, coords[0], coords[1]);
        } else {
          tma_reduce_add_3d(&map, tile, coords[0], coords[1], coords[2]);
        }
        bulk_commit_group();
      }
    }
    if (tid == 0) bulk_wait_group_read<0>();
    emu::named_barrier_sync(1, kThreads);
    stage(nullptr);  // after the read-wait: never added
    if (tid == 0) {
      bulk_wait_group<0>();
      if (ordered) red_release_gpu_add(&turn, 1);
    }
  };
  emu::LaunchOptions options;
  options.seed = seed;
  options.schedule = g_schedule;
  return emu::to_c_status(emu::launch(emu::Dim3{static_cast<unsigned>(ctas), 1, 1}, emu::Dim3{kThreads, 1, 1},
                                      kTileBase + bytes, body, options),
                          error, error_bytes);
}

int emu_wgmma_ss(int n, int k, int bf16, int trans_a, int trans_b, int reg_a, const void* a, const void* b,
                 int b_cols, int b_col0, int mn_lbo, int mn_sbo, int mn_base_offset, float* d_out, uint64_t seed,
                 char* error, int error_bytes) {
  const WgmmaProbeParams p{a, b, n, k, b_cols, b_col0, trans_a, trans_b, reg_a != 0, bf16 != 0,
                           mn_lbo, mn_sbo, mn_base_offset};
  wgmma_probe::ProbePlan plan;
  const std::string problem = wgmma_probe::plan_wgmma_probe(p, plan);
  return launch_probe(
      problem, plan.smem_bytes, [&] { plan.kernel(plan.map_a, plan.map_b, a, plan.geom, d_out); }, seed, error,
      error_bytes);
}

int emu_wgmma_fwd(int ns, int d, int bf16, const void* q, const void* k, const void* v, float* s_out, float* o_out,
                  uint64_t seed, char* error, int error_bytes) {
  const WgmmaChainParams p{q, k, v, ns, d, bf16 != 0};
  wgmma_probe::ChainPlan plan;
  const std::string problem = wgmma_probe::plan_wgmma_chain(p, plan);
  return launch_probe(
      problem, plan.smem_bytes, [&] { plan.kernel(plan.map_q, plan.map_k, plan.map_v, s_out, o_out); }, seed,
      error, error_bytes);
}

// One SS wgmma (scale-d = 0) on `image` placed at window address 2048, with the test's descriptors.
int emu_wgmma_raw(int n, int bf16, int trans_a, int trans_b, const uint8_t* image, uint32_t bytes, uint64_t desc_a,
                  uint64_t desc_b, float* d_out, uint64_t seed, char* error, int error_bytes) {
  const RawArgs g{image, bytes, desc_a, desc_b, d_out};
  const int form = trans_a * 2 + trans_b;
  if (n == 32) {
    return bf16 ? dispatch_raw<32, MmaType::kBf16>(g, form, seed, error, error_bytes)
                : dispatch_raw<32, MmaType::kF16>(g, form, seed, error, error_bytes);
  }
  if (n == 64) {
    return bf16 ? dispatch_raw<64, MmaType::kBf16>(g, form, seed, error, error_bytes)
                : dispatch_raw<64, MmaType::kF16>(g, form, seed, error, error_bytes);
  }
  return fail_status("emu_wgmma_raw: N is 32 or 64", error, error_bytes);
}

// wait_group ordering, late reads and imm-scale, on A (64 x 64) and B (64 x 64, K-major): out gets six 128 x 32
// register sets: d1 after wait<1> (done), d2 after wait<1> (still its initial 7.0), d2 after wait<0> (7 + A B),
// d3 whose A tile was zeroed between commit and wait (the model reads shared memory at the wait: 0), then
// imm-scale-a = -1 (-A B) and imm-scale-a = imm-scale-b = -1 onto 7 (7 + A B), both before the zeroing.
// pending[0]: the operations still pending after wait<1>.
int emu_wgmma_semantics(const void* a, const void* b, float* out, int* pending, uint64_t seed, char* error,
                        int error_bytes) {
  alignas(64) CUtensorMap map_a, map_b;
  std::string problem = panel_map(&map_a, true, a, 64, 64, 64);
  if (problem.empty()) problem = panel_map(&map_b, true, b, 64, 64, 64);
  if (!problem.empty()) return fail_status("encode: " + problem, error, error_bytes);
  auto body = [&] {
    const TwoTiles t = load_two_tiles(&map_a, &map_b);
    const int tid = emu::linear_thread();
    const uint64_t da = kmajor_sw128_desc(smem_u32(t.a)), db = kmajor_sw128_desc(smem_u32(t.b));
    float d1[32], d2[32], d3[32], d4[32], d5[32];
    for (int i = 0; i < 32; ++i) d1[i] = d2[i] = d3[i] = d4[i] = d5[i] = 7.0f;
    wgmma_fence();
    wgmma_ss<64, MmaType::kBf16, 0, 0, -1, 1>(d4, da, db, false);
    wgmma_ss<64, MmaType::kBf16, 0, 0, -1, -1>(d5, da, db, true);
    wgmma_commit();
    wgmma_wait<0>();
    std::memcpy(out + (512 + tid) * 32, d4, sizeof d4);
    std::memcpy(out + (640 + tid) * 32, d5, sizeof d5);
    wgmma_ss<64>(d1, da, db, false);
    wgmma_commit();
    wgmma_ss<64>(d2, da, db, true);
    wgmma_commit();
    wgmma_wait<1>();
    std::memcpy(out + tid * 32, d1, sizeof d1);
    std::memcpy(out + (128 + tid) * 32, d2, sizeof d2);
    if (tid == 0) pending[0] = emu::wgmma_pending_ops();
    wgmma_wait<0>();
    std::memcpy(out + (256 + tid) * 32, d2, sizeof d2);
    wgmma_ss<64>(d3, da, db, false);
    wgmma_commit();
    emu::named_barrier_sync(1, 128);
    if (tid == 0) std::memset(t.a, 0, 64 * kRowBytes);
    emu::named_barrier_sync(1, 128);
    wgmma_wait<0>();
    std::memcpy(out + (384 + tid) * 32, d3, sizeof d3);
  };
  return launch_block(128, kTwoTilesSmem, body, seed, error, error_bytes);
}

// A wgmma the model must reject (the launch's error comes back): 0 B past the launch's shared memory, 1 non-zero
// base offset, 2 a K slice wrapping past its swizzled row, 3 a start address carried into the reserved bits,
// 4 a thread with a different descriptor, 5 an MN-major piece wrapping past its row, 6 a TMA load through a map
// nobody encoded, 7 an accumulator written between mma_async and wait_group, 8 a start in a pattern's line 4.
int emu_wgmma_bad(int which, uint64_t seed, char* error, int error_bytes) {
  static std::vector<uint16_t> host(64 * 64, 0x3f80);  // bf16 ones
  alignas(64) CUtensorMap map_a, map_b, unencoded;
  std::memset(&unencoded, 0, sizeof unencoded);
  panel_map(&map_a, true, host.data(), 64, 64, 64);
  panel_map(&map_b, true, host.data(), 64, 64, 64);
  auto body = [&] {
    if (which == 6) {
      uint64_t* bar = init_barrier();
      if (emu::linear_thread() == 0) tma_load_2d(dynamic_smem() + kTileBase, &unencoded, bar, 0, 0);
      return;
    }
    const TwoTiles t = load_two_tiles(&map_a, &map_b);
    uint64_t da = kmajor_sw128_desc(smem_u32(t.a)), db = kmajor_sw128_desc(smem_u32(t.b));
    if (which == 0) db = kmajor_sw128_desc(smem_u32(t.b) + 64 * 1024);
    if (which == 1) da |= 1ull << 49;
    if (which == 2) da = desc_advance(da, 112);
    if (which == 3) da = kmajor_sw128_desc(0x3fff0) + 0x10;  // 0x3fff + 1 units: the carry lands in bit 14
    if (which == 8) da = kmajor_sw128_desc(smem_u32(t.a) + 4 * kRowBytes);  // row 4 of an 8-row pattern
    if (which == 4 && emu::linear_thread() == 5) db = desc_advance(db, 32);
    float d[32] = {};
    wgmma_fence();
    if (which == 5) {
      wgmma_ss_n<64, MmaType::kBf16, 0, 1>(d, da, mnmajor_sw128_desc(smem_u32(t.b) + 64, 8192), false);
    } else {
      wgmma_ss<64>(d, da, db, which == 7);
    }
    wgmma_commit();
    if (which == 7 && emu::linear_thread() == 77) d[3] += 1.0f;  // e.g. a rescale before the wait
    wgmma_wait<0>();
  };
  return launch_block(128, kTwoTilesSmem, body, seed, error, error_bytes);
}

// The ordering rules (ptx_proxy.h, ptx_wgmma.h "Ordering"): a kernel that breaks one (odd `which`) and its
// correct twin (the even one before it):
//   0 / 1   stmatrix a 64 x 64 tile, fence.proxy.async, barrier, wgmma reads it as A / no fence
//   2 / 3   the same tile read by a TMA store / no fence
//   4 / 5   accumulators rescaled after a wait, wgmma.fence, the next mma_async / no fence
//   6 / 7   RS: A registers kept until the wait / rewritten between mma_async and the wait
//   8 / 9   a fence before the first mma_async / none at all
int emu_fence_case(int which, uint64_t seed, char* error, int error_bytes) {
  static std::vector<uint16_t> host(64 * 64, 0x3f80);  // bf16 ones
  static std::vector<uint16_t> sink(64 * 64);           // the TMA store's destination
  alignas(64) CUtensorMap map_a, map_b, map_out;
  panel_map(&map_a, true, host.data(), 64, 64, 64);
  panel_map(&map_b, true, host.data(), 64, 64, 64);
  panel_map(&map_out, true, sink.data(), 64, 64, 64);
  const bool bug = which % 2 == 1;
  auto body = [&] {
    const TwoTiles t = load_two_tiles(&map_a, &map_b);
    const int tid = emu::linear_thread(), warp = tid / 32, lane = tid % 32;
    const uint64_t da = kmajor_sw128_desc(smem_u32(t.a)), db = kmajor_sw128_desc(smem_u32(t.b));
    float d[32] = {};
    if (which < 4) {  // overwrite A with stmatrix (ones as bf16), as the backward's P^T / the epilogue's staging
      const uint32_t ones = pack_bf16x2(1.0f, 1.0f);
      for (int blk = 0; blk < 4; ++blk) {
        stmatrix_x4(smem_u32(t.a) + frag::stmatrix_sw128_offset(lane, warp * frag::kRowsPerWarp, 2 * blk), ones,
                    ones, ones, ones);
      }
      if (!bug) fence_proxy_async_shared();
      emu::named_barrier_sync(1, 128);
      if (which >= 2) {
        if (tid == 0) {
          tma_store_2d(&map_out, t.a, 0, 0);
          bulk_commit_group();
          bulk_wait_group<0>();
        }
        return;
      }
    }
    if (which != 9) wgmma_fence();
    if (which < 6 || which > 7) {
      wgmma_ss<64>(d, da, db, false);
    } else {
      uint32_t a[frag::kARegs] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};
      wgmma_rs<64, MmaType::kBf16, 0>(d, a, db, false);
      wgmma_commit();
      if (bug) a[2] = 0;  // e.g. the next P packed before the P V wgmma completed
      wgmma_wait<0>();
      return;
    }
    wgmma_commit();
    wgmma_wait<0>();
    if (which == 4 || which == 5) {
      for (float& x : d) x *= 0.5f;  // a rescale (O by exp(m_old - m_new))
      if (!bug) wgmma_fence();
      wgmma_ss<64>(d, da, db, true);
      wgmma_commit();
      wgmma_wait<0>();
    }
  };
  return launch_block(128, kTwoTilesSmem, body, seed, error, error_bytes);
}

// The epilogue's store of a 64 x 64 fp32 accumulator (regs: 128 threads x 32) as 16-bit values: packs, then
// stmatrix.x4 per 16 columns at layout.cuh's stmatrix_sw128_offset, into a 128B-swizzled tile. out: the tile's
// 8192 bytes as they lie in shared memory, *tile_addr: its window address.
int emu_stmatrix(const float* regs, int bf16, uint8_t* out, uint32_t* tile_addr, uint64_t seed, char* error,
                 int error_bytes) {
  constexpr int kTileBytes = 64 * kRowBytes;
  auto body = [&] {
    uint8_t* tile = dynamic_smem() + kTileBase;
    const int tid = emu::linear_thread(), warp = (tid % 128) / 32, lane = tid % 32;
    const float* o = regs + tid * 32;
    auto pack = [&](float lo, float hi) { return bf16 ? pack_bf16x2(lo, hi) : pack_f16x2(lo, hi); };
    for (int blk = 0; blk < 4; ++blk) {
      const int r = frag::kAccRegsPerK16 * blk;
      stmatrix_x4(smem_u32(tile) + frag::stmatrix_sw128_offset(lane, warp * frag::kRowsPerWarp, 2 * blk),
                  pack(o[r], o[r + 1]), pack(o[r + 2], o[r + 3]), pack(o[r + 4], o[r + 5]), pack(o[r + 6], o[r + 7]));
    }
    emu::named_barrier_sync(0, 0);
    if (tid == 0) {
      std::memcpy(out, tile, kTileBytes);
      *tile_addr = smem_u32(tile);
    }
  };
  return launch_block(128, kTileBase + kTileBytes, body, seed, error, error_bytes);
}

// layout.cuh's tables: acc (128 x n/2 registers), register A (128 x 4 registers x 2 halves), stmatrix row
// offsets (32 lanes x chunk pairs 0, 2, 4, 6, first row 0).
void emu_layout(int n, int* acc_row, int* acc_col, int* a_row, int* a_col, uint32_t* stm) {
  for (int t = 0; t < 128; ++t) {
    for (int i = 0; i < n / 2; ++i) {
      acc_row[t * (n / 2) + i] = frag::acc_row(t, i);
      acc_col[t * (n / 2) + i] = frag::acc_col(t, i);
    }
    for (int r = 0; r < 4; ++r) {
      for (int h = 0; h < 2; ++h) {
        a_row[(t * 4 + r) * 2 + h] = frag::a_row(t, r);
        a_col[(t * 4 + r) * 2 + h] = frag::a_col(t, r, h);
      }
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    for (int c = 0; c < 4; ++c) stm[lane * 4 + c] = frag::stmatrix_sw128_offset(lane, 0, 2 * c);
  }
}

// The kernel-side descriptor builders and swizzle offset, for the test's copy of the ISA's encodings.
void emu_descriptors(uint32_t addr, uint32_t panel_bytes, uint64_t* kmajor, uint64_t* mnmajor, uint32_t* swizzle128) {
  *kmajor = kmajor_sw128_desc(addr);
  *mnmajor = mnmajor_sw128_desc(addr, panel_bytes);
  for (uint32_t row = 0; row < 16; ++row) {
    for (uint32_t chunk = 0; chunk < 8; ++chunk) swizzle128[row * 8 + chunk] = swizzle128_offset(row, chunk);
  }
}

void emu_pack(const float* lo, const float* hi, int count, int bf16, uint32_t* out) {
  for (int i = 0; i < count; ++i) out[i] = bf16 ? pack_bf16x2(lo[i], hi[i]) : pack_f16x2(lo[i], hi[i]);
}

}  // extern "C"

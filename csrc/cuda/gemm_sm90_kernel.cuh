// C = A * B^T on sm_90a, the proof of the PTX layer (csrc/cuda/ptx/): A (M, K) and B (N, K) bf16 row-major (both
// K-major, the layout TMA and wgmma take without transposes), fp32 accumulation, C (M, N) bf16 row-major.
//
// One persistent CTA per SM, three warpgroups:
//   producer  (warpgroup 0, registers lowered to kProducerRegs): one thread walks the tiles and, per K step, waits
//             until a ring stage is free, announces its byte count on the stage's "full" mbarrier and issues two
//             TMA loads (the A and B tiles) that complete on that barrier.
//   consumers (warpgroups 1 and 2, registers raised to kConsumerRegs): each owns 64 of the tile's 128 rows. Per K
//             step: wait for the stage to be full, issue 4 wgmma m64n256k16 (K = 64) from shared memory, keep one
//             wgmma group in flight, and release the previous stage (its "empty" mbarrier) once its group is done.
//             After the last K step: fp32 -> bf16, stmatrix into a per-warp swizzled buffer, TMA store.
// Ragged M/N/K need no code: TMA loads zero-fill outside the tensors (zeros add nothing to the dot products) and
// TMA stores drop what falls outside C.
// Host side: gemm_sm90_launch_plan.cuh (tensor maps, grid; no torch), shared by the extension's launch
// (gemm_sm90.cu) and the CPU model's harness (csrc/cuda_emu/harness_gemm.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ptx/ptx.cuh"

namespace flashcore::sm90::gemm_bf16 {


using namespace ptx;

// ---- tile shape ----------------------------------------------------------------------------------------------
constexpr int kBlockM = 128;  // two consumer warpgroups x 64 rows, the M of one wgmma
constexpr int kBlockN = 256;  // widest wgmma N: each consumer's B reads are shared by 64 rows, 128 fp32 acc regs
constexpr int kBlockK = 64;   // 64 bf16 = 128 bytes: one 128B-swizzle row, the widest inner TMA box it allows
constexpr int kWgmmaK = 16;   // K of one wgmma for 16-bit inputs
constexpr int kWgmmasPerStage = kBlockK / kWgmmaK;
constexpr int kElemBytes = 2;  // bf16

// ---- warpgroup roles -----------------------------------------------------------------------------------------
constexpr int kConsumers = 2;
constexpr int kWarpgroupThreads = frag::kWarpgroupThreads;
constexpr int kThreads = kWarpgroupThreads * (1 + kConsumers);  // 384: the cap at entry is 65536 / 384 -> 168
constexpr int kConsumerWarps = kConsumers * kWarpgroupThreads / frag::kWarpSize;
constexpr int kRowsPerConsumer = kBlockM / kConsumers;
// Register budget: the CTA's pool is 168 x 384 = 64512. The producer only computes coordinates (40 is ample, and
// frees 128 x 128 registers); the consumers hold 64 x 256 fp32 accumulators = 128 registers per thread plus
// descriptors, addresses and the epilogue's packed values: 232. 40 x 128 + 232 x 256 = 64512, the whole pool.
constexpr uint32_t kProducerRegs = 40;
constexpr uint32_t kConsumerRegs = 232;
constexpr uint32_t kRegFile = 65536;  // 32-bit registers per SM
constexpr uint32_t kRegsAtEntry = kRegFile / kThreads / 8 * 8;  // __launch_bounds__(384, 1): 168 (granule 8)
constexpr uint32_t kRegPool = kRegsAtEntry * kThreads;
static_assert(kProducerRegs * kWarpgroupThreads + kConsumerRegs * kConsumers * kWarpgroupThreads <= kRegPool,
              "setmaxnreg.inc would wait forever for registers the pool does not have");
static_assert(kRowsPerConsumer == frag::kWgmmaM, "each consumer issues one 64-row wgmma per K slice");

// ---- shared memory ---------------------------------------------------------------------------------------------
// Stages: each holds a 128x64 A tile (16 KB) and a 256x64 B tile (32 KB). 4 stages = 192 KB keep ~3 K steps of
// loads in flight behind the one being multiplied (a K step is ~1000 tensor-core cycles per SM, about the L2 / DRAM
// latency of a TMA load under load). The epilogue needs 32 KB more (below); 5 stages would not fit in 227 KB.
constexpr int kStages = 4;
constexpr int kATileBytes = kBlockM * kBlockK * kElemBytes;
constexpr int kBTileBytes = kBlockN * kBlockK * kElemBytes;
constexpr uint32_t kStageBytes = kATileBytes + kBTileBytes;  // complete_tx count of one stage: TMA counts whole boxes
// Epilogue: each consumer warp stores its 16 x 256 slab as 4 chunks of 16 x 64 (a 128-byte swizzled row each),
// double-buffered so the warp writes one chunk while TMA still reads the previous: 8 warps x 2 x 2 KB = 32 KB.
constexpr int kEpiCols = 64;  // one 128-byte row of bf16: the 128B swizzle span
constexpr int kEpiRows = frag::kRowsPerWarp;
constexpr int kEpiBuffers = 2;
constexpr int kEpiChunks = kBlockN / kEpiCols;
constexpr int kEpiBufferBytes = kEpiRows * kEpiCols * kElemBytes;
constexpr int kMaxSmemPerBlock = 227 * 1024;  // sm_90 opt-in limit (228 KB per SM minus 1 KB reserved per CTA)
constexpr int kSmemAlign = static_cast<int>(kSwizzle128Atom);  // 128B-swizzled tiles start on a 1024 B boundary

struct SharedStorage {
  uint16_t a[kStages][kBlockM * kBlockK];
  uint16_t b[kStages][kBlockN * kBlockK];
  uint16_t epi[kConsumerWarps][kEpiBuffers][kEpiRows * kEpiCols];
  uint64_t full[kStages];   // TMA -> consumers: the stage's bytes have landed (1 arrival + kStageBytes)
  uint64_t empty[kStages];  // consumers -> producer: every consumer warp is done reading the stage
};
static_assert(offsetof(SharedStorage, a) % kSmemAlign == 0 && kATileBytes % kSmemAlign == 0, "A tiles misaligned");
static_assert(offsetof(SharedStorage, b) % kSmemAlign == 0 && kBTileBytes % kSmemAlign == 0, "B tiles misaligned");
static_assert(offsetof(SharedStorage, epi) % kSmemAlign == 0 && kEpiBufferBytes % kSmemAlign == 0,
              "epilogue buffers misaligned");
// The dynamic shared-memory base is only 16-byte aligned by contract: ask for kSmemAlign more and round up.
constexpr int kSmemBytes = static_cast<int>(sizeof(SharedStorage)) + kSmemAlign;
static_assert(kSmemBytes <= kMaxSmemPerBlock, "shared memory over the 227 KB per-block limit");

// ---- layouts the code below relies on, proven at compile time --------------------------------------------------
static_assert(frag::acc_layout_is_consistent<kBlockN>(), "accumulator / register-A layout formulas disagree");
static_assert(frag::stmatrix_sw128_conflict_free(), "epilogue stmatrix would have bank conflicts");
static_assert(kBlockK * kElemBytes == static_cast<int>(kSwizzle128Row), "a K step must be one 128B-swizzle row");

// ---- tile scheduler --------------------------------------------------------------------------------------------
// Persistent: CTA b takes tiles b, b + gridDim.x, ... . The ~132 tiles in flight at once read ~132 A row-blocks and
// B column-blocks' K slices; walking tiles in plain row-major order, they would span 4 tile-rows but all of N
// (e.g. 528 A rows + 8192 B rows at N = 8192). Grouped order walks down a band of kGroupM tile-rows before moving
// to the next column: the tiles in flight then form a ~16 x 8 block (2048 A rows + ~2100 B rows), the squarest
// footprint (128-row A tiles, 256-column B tiles: 16 x 128 ~ 8.25 x 256), so each K slice is fetched from DRAM
// into L2 fewer times.
constexpr int kGroupM = 16;

struct GemmGrid {
  int32_t tiles_m, tiles_n, num_tiles, k_steps;
};

__device__ __forceinline__ void tile_coords(const GemmGrid& g, int tile, int& m_blk, int& n_blk) {
  const int tiles_per_group = kGroupM * g.tiles_n;
  const int group = tile / tiles_per_group;
  const int first_m = group * kGroupM;
  const int group_rows = min(g.tiles_m - first_m, kGroupM);  // the last band may be shorter
  const int in_group = tile - group * tiles_per_group;
  m_blk = first_m + in_group % group_rows;
  n_blk = in_group / group_rows;
}

// ---- producer --------------------------------------------------------------------------------------------------
__device__ __forceinline__ void produce(SharedStorage& s, const CUtensorMap* tmap_a, const CUtensorMap* tmap_b,
                                        const GemmGrid& g) {
  prefetch_tensor_map(tmap_a);
  prefetch_tensor_map(tmap_b);
  int stage = 0;
  uint32_t phase = 0;  // parity of the ring lap: flips each time `stage` wraps
  for (int tile = blockIdx.x; tile < g.num_tiles; tile += gridDim.x) {
    int m_blk, n_blk;
    tile_coords(g, tile, m_blk, n_blk);
#pragma unroll 1
    for (int ks = 0; ks < g.k_steps; ++ks) {
      mbarrier_wait(&s.empty[stage], phase ^ 1);  // lap 0 passes at once: a fresh barrier's "previous" phase
      mbarrier_arrive_expect_tx(&s.full[stage], kStageBytes);
      tma_load_2d(s.a[stage], tmap_a, &s.full[stage], ks * kBlockK, m_blk * kBlockM);
      tma_load_2d(s.b[stage], tmap_b, &s.full[stage], ks * kBlockK, n_blk * kBlockN);
      if (++stage == kStages) stage = 0, phase ^= 1;
    }
  }
}

// ---- consumer epilogue -----------------------------------------------------------------------------------------
// The warp's 16 x 256 slab of acc -> bf16 -> C, in 4 chunks of 64 columns through two 2 KB swizzled buffers.
// Bulk async-groups are per thread, so lane 0 both issues the stores and waits for them; __syncwarp orders the
// other lanes around it.
__device__ __forceinline__ void store_tile(float (&acc)[kBlockN / 2], SharedStorage& s, const CUtensorMap* tmap_c,
                                           int consumer_warp, int lane, int row0, int col0) {
#pragma unroll
  for (int chunk = 0; chunk < kEpiChunks; ++chunk) {
    uint16_t* buf = s.epi[consumer_warp][chunk % kEpiBuffers];
    if (lane == 0) bulk_wait_group_read<kEpiBuffers - 1>();  // the store that last read `buf` is done reading
    __syncwarp();
    const uint32_t buf_addr = smem_u32(buf);
    constexpr int kBlocksPerChunk = kEpiCols / 16;  // 16x16 blocks = stmatrix.x4 per chunk
#pragma unroll
    for (int j = 0; j < kBlocksPerChunk; ++j) {
      const int blk = chunk * kBlocksPerChunk + j;  // 16-column block of the slab: acc[8 blk .. 8 blk + 7]
      const int r = frag::kAccRegsPerK16 * blk;
      stmatrix_x4(buf_addr + frag::stmatrix_sw128_offset(lane, 0, 2 * j), pack_bf16x2(acc[r], acc[r + 1]),
                  pack_bf16x2(acc[r + 2], acc[r + 3]), pack_bf16x2(acc[r + 4], acc[r + 5]),
                  pack_bf16x2(acc[r + 6], acc[r + 7]));
    }
    fence_proxy_async_shared();  // each writer: its stmatrix before the TMA store's (async proxy) read
    __syncwarp();
    if (lane == 0) {
      tma_store_2d(tmap_c, buf, col0 + chunk * kEpiCols, row0);
      bulk_commit_group();
    }
  }
}

// ---- consumer --------------------------------------------------------------------------------------------------
__device__ __forceinline__ void consume(SharedStorage& s, const CUtensorMap* tmap_c, const GemmGrid& g,
                                        int consumer) {
  const int warp = (threadIdx.x % kWarpgroupThreads) / frag::kWarpSize;
  const int lane = threadIdx.x % frag::kWarpSize;
  const int consumer_warp = consumer * (kWarpgroupThreads / frag::kWarpSize) + warp;
  if (consumer_warp == 0 && lane == 0) prefetch_tensor_map(tmap_c);
  // This consumer's 64 rows of each A stage start 64 x 128 B = 8 KB in: a whole number of swizzle atoms.
  const uint32_t a_base = smem_u32(s.a[0]) + consumer * kRowsPerConsumer * kSwizzle128Row;
  const uint32_t b_base = smem_u32(s.b[0]);
  constexpr uint32_t kK16Bytes = kWgmmaK * kElemBytes;  // 32 B: next K slice inside the swizzled row

  float acc[kBlockN / 2];
  int stage = 0;
  uint32_t phase = 0;
  for (int tile = blockIdx.x; tile < g.num_tiles; tile += gridDim.x) {
    int m_blk, n_blk;
    tile_coords(g, tile, m_blk, n_blk);
    int prev_stage = -1;
#pragma unroll 1
    for (int ks = 0; ks < g.k_steps; ++ks) {
      mbarrier_wait(&s.full[stage], phase);
      const uint64_t desc_a = kmajor_sw128_desc(a_base + stage * kATileBytes);
      const uint64_t desc_b = kmajor_sw128_desc(b_base + stage * kBTileBytes);
      fence_operands(acc);
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < kWgmmasPerStage; ++k) {
        // The first wgmma of a tile overwrites acc (scale-d = 0): no zeroing, and the previous tile's values, already
        // stored, are dead.
        wgmma_ss<kBlockN>(acc, desc_advance(desc_a, k * kK16Bytes), desc_advance(desc_b, k * kK16Bytes),
                          ks > 0 || k > 0);
      }
      wgmma_commit();
      fence_operands(acc);
      wgmma_wait<1>();  // the group of the previous K step has finished reading its stage
      if (prev_stage >= 0 && lane == 0) mbarrier_arrive(&s.empty[prev_stage]);
      prev_stage = stage;
      if (++stage == kStages) stage = 0, phase ^= 1;
    }
    wgmma_wait<0>();
    fence_operands(acc);
    if (lane == 0) mbarrier_arrive(&s.empty[prev_stage]);
    const int row0 = m_blk * kBlockM + consumer * kRowsPerConsumer + warp * frag::kRowsPerWarp;
    store_tile(acc, s, tmap_c, consumer_warp, lane, row0, n_blk * kBlockN);
  }
  if (lane == 0) bulk_wait_group<0>();  // shared memory must outlive the stores reading it
}

__global__ void __launch_bounds__(kThreads, 1)
    gemm_bf16_kernel(const __grid_constant__ CUtensorMap tmap_a, const __grid_constant__ CUtensorMap tmap_b,
                     const __grid_constant__ CUtensorMap tmap_c, const GemmGrid grid) {
  FLASHCORE_SM90_DYNAMIC_SMEM(smem_raw);
  SharedStorage& s = smem_storage<SharedStorage>(smem_raw);

  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      mbarrier_init(&s.full[i], 1);  // the producer's arrive.expect_tx; the bytes come from TMA
      mbarrier_init(&s.empty[i], kConsumerWarps);  // lane 0 of every consumer warp
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  const int warpgroup = threadIdx.x / kWarpgroupThreads;
  if (warpgroup == 0) {
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 0) produce(s, &tmap_a, &tmap_b, grid);  // the other 127 threads are done
  } else {
    setmaxnreg_inc<kConsumerRegs>();
    consume(s, &tmap_c, grid, warpgroup - 1);
  }
}

}  // namespace flashcore::sm90::gemm_bf16

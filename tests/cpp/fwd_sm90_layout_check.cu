// CPU check of the fragment and shared-memory address math the sm_90a forward relies on; compiled by nvcc for
// sm_90a (the headers hold device code) but run on the host, by tests/test_fwd_sm90_schedule.py.
//   1. acc_row / acc_col against the PTX ISA figure "WGMMA .m64nNk16 register fragment layout for accumulator
//      matrix D" re-encoded independently, for every N the kernel uses;
//   2. the masking shortcut acc_col(t, i) = acc_col(t, 0) + acc_col(0, i) (softmax.cuh);
//   3. pack_p's register order = the register-A fragment layout of P * V (figure for matrix A, 16-bit types);
//   4. the epilogue: every O element written by stmatrix.x4 at stmatrix_sw128_offset lands where a TMA store of the
//      128B-swizzled panel reads element (row, col) - simulated byte by byte;
//   5. descriptor fields of the K-major and MN-major operands; shared-memory budgets per head dim (printed).
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda/fwd/traits.cuh"

using namespace flashcore::sm90;

static long failures = 0, checks = 0;
#define EXPECT(cond, ...)                                   \
  do {                                                      \
    ++checks;                                               \
    if (!(cond) && ++failures <= 20) {                      \
      std::printf("FAIL %s: ", #cond);                      \
      std::printf(__VA_ARGS__);                             \
      std::printf("\n");                                    \
    }                                                       \
  } while (0)

// The PTX ISA figure for D of m64nNk16, as printed: warp w of the warpgroup owns rows 16w..16w+15; within a warp,
// lane l, register pair {d[4k], d[4k+1]} is row l/4, columns 8k + 2(l%4) + {0, 1}; {d[4k+2], d[4k+3]} is the same
// columns of row l/4 + 8.
static void figure_d(int t, int i, int& row, int& col) {
  const int w = t / 32, l = t % 32, k = i / 4, within = i % 4;
  row = 16 * w + l / 4 + (within >= 2 ? 8 : 0);
  col = 8 * k + 2 * (l % 4) + (within % 2);
}

// The PTX ISA figure for A of m64k16 (16-bit): a0,a1: row l/4, cols 2(l%4)+{0,1}; a2,a3: row l/4+8, same cols;
// a4,a5: row l/4, cols 8+2(l%4)+{0,1}; a6,a7: row l/4+8, cols 8+... (a0..a7 = the 8 halves of 4 registers, low
// half first).
static void figure_a(int t, int half_index, int& row, int& col) {
  const int w = t / 32, l = t % 32;
  row = 16 * w + l / 4 + ((half_index / 2) % 2 ? 8 : 0);
  col = (half_index >= 4 ? 8 : 0) + 2 * (l % 4) + half_index % 2;
}

template <int N>
static void check_fragments() {
  for (int t = 0; t < 128; ++t) {
    for (int i = 0; i < N / 2; ++i) {
      int row, col;
      figure_d(t, i, row, col);
      EXPECT(frag::acc_row(t, i) == row && frag::acc_col(t, i) == col, "N %d t %d i %d", N, t, i);
      EXPECT(frag::acc_col(t, i) == frag::acc_col(t, 0) + frag::acc_col(0, i), "mask shortcut N %d t %d i %d", N, t, i);
      EXPECT(frag::acc_row_half(i) == (row - 16 * (t / 32) - (t % 32) / 4) / 8, "row half N %d i %d", N, i);
      // pack_p: p[i/2] holds (d[i], d[i+1]) as (low, high); K slice j = i / 8 uses p[4j .. 4j+3] as a[0..3].
      if (i % 2 == 0) {
        const int j = i / 8, r = (i % 8) / 2;  // a[r] of slice j
        for (int half = 0; half < 2; ++half) {
          int arow, acol;
          figure_a(t, 2 * r + half, arow, acol);
          int drow, dcol;
          figure_d(t, i + half, drow, dcol);
          EXPECT(arow == drow && 16 * j + acol == dcol, "P fragment N %d t %d i %d half %d", N, t, i, half);
        }
      }
    }
  }
}

// Epilogue of one consumer: warp w's lane l stores, for 16-column block blk, matrices m = 0..3 with register m =
// pack(o[8 blk + 2m], o[8 blk + 2m + 1]); stmatrix puts lane l's register m at row l/4, columns 2(l%4) + {0,1} of
// matrix m, whose row r is at the address lane 8m + r supplied. A TMA store of a 128B-swizzled 64-column panel reads
// element (row, col) at row * 128 + ((col / 8) ^ (row % 8)) * 16 + (col % 8) * 2.
template <int D>
static void check_epilogue() {
  using T = fwd::FwdTraits<D>;
  const int panels = T::kPanels;
  std::vector<int> smem(panels * 64 * 64, -1);  // one consumer's 64 rows; value = index of the O element stored
  for (int t = 0; t < 128; ++t) {
    const int w = t / 32, l = t % 32;
    for (int blk = 0; blk < D / 16; ++blk) {
      const int panel = blk / 4, chunk16 = 2 * (blk % 4);
      for (int m = 0; m < 4; ++m) {
        // The lane supplying row (l/4) of matrix m:
        const int lane_addr = 8 * m + l / 4;
        const uint32_t row_addr = frag::stmatrix_sw128_offset(lane_addr, w * 16, chunk16);
        for (int half = 0; half < 2; ++half) {
          const int reg = 8 * blk + 2 * m + half;
          const uint32_t byte = panel * 64 * 128 + row_addr + (2 * (l % 4) + half) * 2;
          smem[byte / 2] = t * 1000 + reg;
        }
      }
    }
  }
  for (int t = 0; t < 128; ++t) {
    for (int i = 0; i < D / 2; ++i) {
      const int row = frag::acc_row(t, i), col = frag::acc_col(t, i);
      const int panel = col / 64, c = col % 64;
      const int byte = panel * 64 * 128 + row * 128 + (((c / 8) ^ (row % 8)) * 16) + (c % 8) * 2;
      EXPECT(smem[byte / 2] == t * 1000 + i, "epilogue D %d: O(%d, %d) from t %d reg %d found %d", D, row, col, t, i,
             smem[byte / 2]);
    }
  }
}

template <int D>
static void report() {
  using T = fwd::FwdTraits<D>;
  const int smem = fwd::smem_bytes<D>();
  std::printf("D=%d block_m=%d block_n=%d stages=%d panels=%d smem=%d (limit %d) regs O=%d S=%d P=%d\n", D, T::kBlockM,
              T::kBlockN, T::kStages, T::kPanels, smem, fwd::kMaxSmemPerBlock, T::kORegs, T::kSRegs, T::kPRegs);
  EXPECT(smem <= fwd::kMaxSmemPerBlock, "smem D %d", D);
  std::printf("D=%d consumers=%d threads=%d regs at entry %u, producer %u, consumers %u\n", D, T::kConsumers,
              T::kThreads, T::kRegsAtEntry, T::kProducerRegs, T::kConsumerRegs);
  EXPECT(T::kProducerRegs * 128 + T::kConsumerRegs * 128 * T::kConsumers <= T::kRegsAtEntry * T::kThreads &&
             T::kBlockM == 64 * T::kConsumers && T::kEpilogueBarrier + T::kConsumers <= 16,
         "register pool, rows per consumer, named barriers D %d", D);
  // Every TMA / wgmma tile starts on a 1024-byte boundary (128B swizzle atoms), given a 1024-aligned base.
  alignas(1024) static fwd::SharedStorage<D> st;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 1024 == 0; };
  bool ok = T::kKvPanelBytes % 1024 == 0 && T::kQPanelBytes % 1024 == 0;
  for (int i = 0; i < T::kQBuffers; ++i) ok = ok && aligned(st.q[i]);
  for (int i = 0; i < T::kStages; ++i) ok = ok && aligned(st.k[i]) && aligned(st.v[i]);
  if constexpr (T::kSeparateOut) ok = ok && aligned(st.out);
  EXPECT(ok, "1024-byte aligned panels D %d", D);
  std::printf("D=%d separate output buffer: %d\n", D, int(T::kSeparateOut));
  std::printf("D=%d Q buffers: %d\n", D, T::kQBuffers);
  EXPECT(T::kQBuffers == (T::kItemPipeline ? 2 : 1) && (!T::kItemPipeline || T::kSeparateOut),
         "Q buffers D %d: two exactly when pipelined across items, which needs the output buffer", D);
  // V as MN-major B: LBO = the next 64-wide head-dim panel, SBO = the next 8 keys; start address in 16 B units.
  const uint64_t desc = ptx::mnmajor_sw128_desc(0x4000, T::kKvPanelBytes);
  EXPECT((desc & 0x3FFF) == (0x4000 >> 4) && ((desc >> 16) & 0x3FFF) == (T::kKvPanelBytes >> 4) &&
             ((desc >> 32) & 0x3FFF) == (1024 >> 4) && (desc >> 62) == 1 && ((desc >> 49) & 7) == 0,
         "MN-major descriptor fields D %d", D);
  check_fragments<T::kBlockN>();
  check_fragments<D>();
  check_epilogue<D>();
}

int main() {
  const uint64_t k = ptx::kmajor_sw128_desc(0x8000 + 64);
  EXPECT((k & 0x3FFF) == ((0x8000 + 64) >> 4) && ((k >> 16) & 0x3FFF) == 1 && ((k >> 32) & 0x3FFF) == 64 &&
             (k >> 62) == 1,
         "K-major descriptor fields");
  report<64>();
  report<96>();
  report<128>();
  report<192>();
  report<256>();
  std::printf("checked %ld, %ld failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}

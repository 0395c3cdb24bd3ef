// The CPU harness's model of the wave-level gfx942 instructions flashcore's kernels use, each a rendezvous of the
// 64 lanes of a wave (emu.h). Written from the CDNA3 ISA's operand layouts -- the same tables AMD's matrix
// instruction calculator prints for CDNA3 -- independently of the kernel-side helpers in csrc/hip/mfma.h, so
// tests/test_hip_emulated.py can check the two against each other and against a third copy in Python.
#pragma once

#include "../hip/types.h"
#include "emu.h"

namespace flashcore::emu {

using gfx942::u32x2;

inline double mfma_element(u32x2 operand, int i, bool bf16) {  // element i (0..3) of a 4 x 16-bit operand
  const uint32_t half = (operand[i / 2] >> (16 * (i % 2))) & 0xffffu;
  return bf16 ? gfx942::Bf16::to_float(half) : gfx942::Fp16::to_float(half);
}

// v_mfma_f32_{32x32x8, 16x16x16}{bf16_1k, f16}: D = A (M x K) * B (K x M) + C, fp32 accumulate.
// Operands: lane l holds 4 consecutive k of one row of A and of one column of B:
//   a[i] = A[l % M][4 (l / M) + i],   b[i] = B[4 (l / M) + i][l % M],   i = 0..3, K = 4 * 64 / M.
// Accumulator, column l % M:
//   32x32: c[4 j + i] = C[8 j + 4 (l / 32) + i][l % 32]    16x16: c[i] = C[4 (l / 16) + i][l % 16].
// Products of 16-bit floats are exact in double; the sum is rounded to fp32 once (the hardware's internal
// summation order is not specified; any order is within fp32 rounding of this).
template <int M, class Acc>
Acc mfma(const char* name, bool bf16, u32x2 a, u32x2 b, const Acc& c) {
  constexpr int kK = 4 * kWaveSize / M;
  constexpr int kAcc = M * M / kWaveSize;
  struct In {
    u32x2 a, b;
    Acc c;
  };
  return wave_collective<In, Acc>(name, In{a, b, c}, [bf16](const In* const* ins, Acc* const* outs) {
    double A[M][kK], B[kK][M];
    for (int l = 0; l < kWaveSize; ++l) {
      for (int i = 0; i < 4; ++i) {
        A[l % M][4 * (l / M) + i] = mfma_element(ins[l]->a, i, bf16);
        B[4 * (l / M) + i][l % M] = mfma_element(ins[l]->b, i, bf16);
      }
    }
    for (int l = 0; l < kWaveSize; ++l) {
      for (int r = 0; r < kAcc; ++r) {
        const int row = M == 32 ? 8 * (r / 4) + 4 * (l / 32) + r % 4 : 4 * (l / 16) + r;
        const int col = l % M;
        double sum = ins[l]->c[r];
        for (int k = 0; k < kK; ++k) sum += A[row][k] * B[k][col];
        (*outs[l])[r] = static_cast<float>(sum);
      }
    }
  });
}

// ds_bpermute_b32: lane l receives `data` of lane (byte_address[l] / 4) mod 64 (a pull through the LDS crossbar;
// no LDS memory is touched).
inline int ds_bpermute(int byte_address, int data) {
  struct In {
    int address, data;
  };
  return wave_collective<In, int>("ds_bpermute_b32", In{byte_address, data}, [](const In* const* ins, int* const* outs) {
    for (int l = 0; l < kWaveSize; ++l) *outs[l] = ins[(ins[l]->address >> 2) & (kWaveSize - 1)]->data;
  });
}

// v_cmp ... / s_ballot: the 64-bit mask of lanes whose `pred` is true, in every lane.
inline uint64_t ballot(bool pred) {
  return wave_collective<bool, uint64_t>("ballot", pred, [](const bool* const* ins, uint64_t* const* outs) {
    uint64_t mask = 0;
    for (int l = 0; l < kWaveSize; ++l) mask |= static_cast<uint64_t>(*ins[l]) << l;
    for (int l = 0; l < kWaveSize; ++l) *outs[l] = mask;
  });
}

}  // namespace flashcore::emu

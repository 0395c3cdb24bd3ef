// Tile table of the sm_90a attention backward (csrc/cuda/bwd_sm90.cu): the single source of truth for its tile
// shapes. The kernel's constants come from here (bwd_sm90_config.cuh), and the shape advisor parses this file as
// text, so keep the X-macro rows one per line in exactly this format.
//
// block_m: query rows per streamed Q / dO tile. 64 everywhere: the dQ GEMM has the queries as its M, and wgmma's M
//          is 64; P and dS are stored as [keys][64 queries] = one 128-byte swizzled row per key.
// block_n: keys per K/V block (one CTA work item). 128 = two consumer warpgroups x 64 keys each, every warpgroup
//          holding dK and dV of its 64 keys in registers (2 x 64 x D fp32 / 128 threads = D registers per thread):
//          fits up to D = 128. For D = 192 / 256 that would be 192 / 256 registers, so block_n drops to 64 and the
//          two warpgroups share the 64 keys, each holding dK and dV for half of the head dim (D / 2 registers).
// stages:  depth of the Q / dO / LSE / delta ring. Shared memory (K + V + stages x (Q + dO) + P + dS):
//            D=64:  32 + 3 x 16 + 32 = 112 KB  (3 stages: cheap, hides more TMA latency)
//            D=96:  64 + 2 x 32 + 32 = 160 KB  (tiles padded to 128 columns: TMA boxes are 64 columns)
//            D=128: 64 + 2 x 32 + 32 = 160 KB
//            D=192: 48 + 2 x 48 + 16 = 160 KB
//            D=256: 64 + 2 x 64 + 16 = 208 KB  (3 stages would need 272 KB: over the 227 KB per-block limit)
// warpgroups: 1 producer (TMA + LSE/delta loads, registers lowered to 24) + 2 consumers (registers raised to 240).
// ctas_per_sm: 1. Three warpgroups at 240 registers per consumer thread use the whole 64K register file.
//
// columns: head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm
#pragma once

#define FLASHCORE_TILES_SM90_BWD(X) \
  X(64, 64, 128, 3, 3, 1) \
  X(96, 64, 128, 2, 3, 1) \
  X(128, 64, 64, 3, 3, 1) \
  X(192, 64, 64, 2, 3, 1) \
  X(256, 64, 64, 2, 3, 1)

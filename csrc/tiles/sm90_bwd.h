// Tile table of the sm_90a attention backward (csrc/cuda/bwd_sm90.cu): the single source of truth for its tile
// shapes. The kernel's constants come from here (bwd_sm90_config.cuh), and the shape advisor parses this file as
// text, so keep the X-macro rows one per line in exactly this format.
//
// block_m: query rows per streamed Q / dO tile. 64 everywhere: the dQ GEMM has the queries as its M, and wgmma's M
//          is 64; P and dS are stored as [keys][64 queries] = one 128-byte swizzled row per key.
// block_n: keys per K/V block (one CTA work item). 128 = two consumer warpgroups x 64 keys each (the M of wgmma),
//          each holding dK and dV of its 64 keys for all D columns in registers (2 x 64 x D fp32 / 128 threads = D
//          registers per thread): fits up to D = 128, with 240 - 128 = 112 registers left at D = 128 for the S^T
//          tile (32) and its packed P (16), or the dP^T tile, or one dQ piece (32), plus addresses. For D = 192 /
//          256 it would be 192 / 256 registers, so block_n drops to 64: both warpgroups share the 64 keys, each
//          holds dK and dV for half of the head dim (D / 2 registers) and computes S^T / dP^T for half of the
//          queries. (block_n = 64 reads each Q / dO tile and adds each dQ tile twice as often per key.)
// stages:  depth of the Q / dO / LSE / delta ring. Shared memory (K + V + stages x (Q + dO) + dS^T [+ P^T] + dQ
//          staging; P^T is stored only where dV / dK are SS GEMMs, block_n = 64: with block_n = 128 each consumer
//          feeds its own P^T and dS^T to them from registers; the dQ staging boxes, 2 consumers x their dQ columns
//          / 32 x 8 KB, where they fit (bwd_sm90_config.cuh kDqByTma; dQ by TMA reduce-add):
//            D=64:  32 + 3 x 16 + 16 + 16 = 112 KB
//            D=96:  64 + 2 x 32 + 16 + 32 = 176 KB  (stored as 128 columns: TMA boxes are 64 columns, the rest is 0)
//            D=128: 64 + 2 x 32 + 16 + 32 = 176 KB  (3 stages: 208 KB, fits; 2 until a GPU says the ring runs dry)
//            D=192: 48 + 2 x 48 + 16 + 48 = 208 KB  (3 stages: 256 KB, over: the dQ staging took that room)
//            D=256: 64 + 2 x 64 + 16      = 208 KB  (no dQ staging: 64 KB more would be 272 KB; dQ by red.global.add;
//                                                    3 stages would need 272 KB: over the 227 KB per-block limit)
//          plus 0.5 KB of LSE / delta rows per stage and the 1 KB alignment pad. A stage is one query tile of work
//          ahead of the consumers (five 64 x block_n x D GEMMs, ~1-2 us): 2 hide a TMA round trip; a third where
//          it is free.
// warpgroups: 1 producer (one thread issuing every load by TMA; registers lowered to 24) + 2 consumers (raised to
//          240): 24 x 128 + 240 x 256 = 64512, all the registers the 384 threads start with.
// ctas_per_sm: 1: the consumers take the whole register file.
//
// columns: head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm
#pragma once

#define FLASHCORE_TILES_SM90_BWD(X) \
  X(64, 64, 128, 3, 3, 1) \
  X(96, 64, 128, 2, 3, 1) \
  X(128, 64, 128, 2, 3, 1) \
  X(192, 64, 64, 2, 3, 1) \
  X(256, 64, 64, 2, 3, 1)

"""flashcore.advise (the shape advisor): tile counting on shapes worked out by hand, the tile tables, suggestions,
calibration state, validation statistics, the CLI, and the bench's odd-shapes sweep. CPU only."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flashcore
from flashcore import _advise_model as model
from flashcore import _tiles, advise as advise_mod, bench

REPO = Path(__file__).resolve().parent.parent
TILES = REPO / "csrc" / "tiles"

# sm90 tables in the format the kernels will land with (values FA3-like, made up for the tests: the real ones
# come from csrc/tiles/sm90_*.h when the kernels land, and nothing below depends on their values).
SM90_FWD = """// columns: head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm
#define FLASHCORE_TILES_SM90_FWD(X) \\
  X(64, 192, 128, 2, 4, 1) \\
  X(96, 128, 128, 2, 3, 1) \\
  X(128, 128, 128, 2, 3, 1) \\
  X(192, 128, 96, 2, 3, 1) \\
  X(256, 128, 80, 2, 3, 1)
"""
SM90_BWD = """// a comment before the table is fine
// columns: head_dim, block_m, block_n, stages, warpgroups, ctas_per_sm
#define FLASHCORE_TILES_SM90_BWD(X) \\
  X(64, 128, 128, 2, 3, 1) \\
  X(96, 64, 128, 2, 3, 1) \\
  X(128, 64, 128, 2, 3, 1) \\
  X(192, 64, 96, 2, 3, 1) \\
  X(256, 64, 64, 2, 3, 1)
"""


@pytest.fixture()
def with_sm90(tmp_path, monkeypatch):
    """A tiles directory holding the real gfx942 table and the sm90 fixtures; the advisor reads it via the env."""
    shutil.copy(TILES / "gfx942_fwd.h", tmp_path / "gfx942_fwd.h")
    (tmp_path / "sm90_fwd.h").write_text(SM90_FWD)
    (tmp_path / "sm90_bwd.h").write_text(SM90_BWD)
    monkeypatch.setenv(_tiles.TILES_ENV, str(tmp_path))
    return tmp_path


@pytest.fixture()
def no_results(tmp_path):
    empty = tmp_path / "results"
    empty.mkdir()
    return empty


# ---- tile tables --------------------------------------------------------------------------------------
def test_every_table_present_parses():
    headers = sorted(TILES.glob("*.h"))
    assert any(h.name == "gfx942_fwd.h" for h in headers)
    by_file = {spec.file: spec for spec in model.KERNELS.values()}
    for header in headers:
        spec = by_file.get(header.name)
        table = _tiles.parse_table(header.read_text(), str(header), spec.columns if spec else ("head_dim",))
        assert table.rows and all(d == row["head_dim"] for d, row in table.rows.items())


def test_gfx942_fwd_table_is_the_kernels_tiles():
    # What csrc/hip/fwd_kernel.h's FwdTile had before the table (4 waves x 32 rows; 64 keys up to D=128, else 32;
    # waves/SIMD 3/2/2/2/1), so the model reads what the kernel compiles.
    table = _tiles.load("gfx942_fwd.h", "gfx942 forward", model.AMD_COLUMNS, TILES)
    assert table.name == "GFX942_FWD" and table.columns == model.AMD_COLUMNS
    assert {d: (r["block_m"], r["block_n"], r["waves"], r["waves_per_simd"]) for d, r in table.rows.items()} == {
        64: (128, 64, 4, 3), 96: (128, 64, 4, 2), 128: (128, 64, 4, 2), 192: (128, 32, 4, 2), 256: (128, 32, 4, 1)}


def test_sm90_fixture_formats_parse():
    fwd = _tiles.parse_table(SM90_FWD, "sm90_fwd.h", model.NV_COLUMNS)
    bwd = _tiles.parse_table(SM90_BWD, "sm90_bwd.h", model.NV_COLUMNS)
    assert fwd.name == "SM90_FWD" and fwd.head_dims == (64, 96, 128, 192, 256)
    assert fwd.row(64) == dict(head_dim=64, block_m=192, block_n=128, stages=2, warpgroups=4, ctas_per_sm=1)
    assert bwd.row(256)["block_n"] == 64


@pytest.mark.parametrize("text, message", [
    (SM90_FWD.replace("// columns: head_dim, ", "// columns: "), "lack ['head_dim']"),
    (SM90_FWD.replace("X(96, 128, 128, 2, 3, 1)", "X(96, 128, 2, 3, 1)"), "sm90_fwd.h:4: row X(96, 128, 2, 3, 1)"),
    (SM90_FWD.replace("X(96, 128, 128, 2, 3, 1)", "X(96, kM, 128, 2, 3, 1)"), "must have 6 integers"),
    (SM90_FWD.replace("X(96,", "X(64,"), "head_dim 64 appears twice"),
    (SM90_FWD.replace("// columns", "// cols"), "exactly one '// columns"),
    (SM90_FWD + SM90_BWD, "exactly one '// columns"),
])
def test_malformed_tables_name_the_problem(text, message):
    with pytest.raises(_tiles.TileTableError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        _tiles.parse_table(text, "sm90_fwd.h", model.NV_COLUMNS)


def test_rows_after_the_macro_are_not_read():
    # The macro ends at the first line without a trailing backslash; an X(...) after it is not a row.
    table = _tiles.parse_table(SM90_FWD.replace("X(256, 128, 80, 2, 3, 1)\n", "X(256, 128, 80, 2, 3, 1)\nX(1, 2, 3, 4, 5, 6)\n"))
    assert table.head_dims == (64, 96, 128, 192, 256)


def test_missing_tables_say_so(tmp_path, no_results):
    shutil.copy(TILES / "gfx942_fwd.h", tmp_path / "gfx942_fwd.h")
    with pytest.raises(_tiles.TileTableMissing, match="no sm90 forward tile table in this build") as err:
        flashcore.advise(gpu="h100", batch=1, seqlen=1024, heads=8, head_dim=128, tiles_dir=tmp_path,
                         results_dir=no_results)
    assert "no sm90 backward tile table in this build" in str(err.value)
    # One of two present: the other is reported missing, not invented.
    adv = flashcore.advise(gpu="mi300x", batch=1, seqlen=1024, heads=8, head_dim=128, tiles_dir=tmp_path,
                           results_dir=no_results)
    assert adv.kernels["bwd"] is None and "no gfx942 backward tile table in this build" in adv.missing["bwd"]
    assert adv.training_tflops is None and adv.kernels["fwd"].tflops > 0


def test_table_location_installed_then_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv(_tiles.TILES_ENV, raising=False)
    assert _tiles.tiles_dir() == (_tiles.PACKAGE_TILES if _tiles.PACKAGE_TILES.is_dir() else TILES)
    assert _tiles.tiles_dir(tmp_path) == tmp_path


def test_setup_ships_the_tables_in_the_package(tmp_path):
    # build_py (what pip install runs) copies csrc/tiles/*.h to flashcore/tiles/, where _tiles looks first.
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=REPO, check=True,
                   capture_output=True, text=True)
    shipped = sorted(p.name for p in (tmp_path / "flashcore" / "tiles").glob("*.h"))
    assert shipped == sorted(p.name for p in TILES.glob("*.h"))


# ---- counting, by hand -----------------------------------------------------------------------------------
def test_noncausal_tiles_waves_padding_by_hand(no_results):
    # MI300X forward, D=128: block 128 rows x 64 keys, 4 waves at 2 waves/SIMD -> 2 blocks per CU -> 608 slots.
    # batch 2, seqlen 1000, 12 heads: ceil(1000/128) = 8 query tiles (the last 104 rows), 2*12*8 = 192 tiles,
    # 192/608 = 0.3158 waves: one wave, 31.6% full. Key tiles ceil(1000/64) = 16 (the last 40 keys), so each
    # (sequence, head) computes 8*16*128*64 = 1024^2 scores for 1000^2 needed: padding 1 - 10^6/2^20 = 4.63%.
    k = flashcore.advise(gpu="mi300x", batch=2, seqlen=1000, heads=12, head_dim=128, suggest=False,
                         results_dir=no_results).kernels["fwd"]
    assert (k.block_m, k.block_n, k.slots_per_unit, k.slots) == (128, 64, 2, 608)
    assert k.units == 192 and k.full_waves == 1
    assert k.waves == pytest.approx(192 / 608) and k.last_wave_fill == pytest.approx(192 / 608)
    assert k.padding_waste == pytest.approx(1 - 1000 ** 2 / 1024 ** 2)
    assert k.mask_waste == 0 and k.work_imbalance == 1
    assert k.align == 128 and k.gqa_group == 1


def test_occupancy_sets_slots_per_cu(no_results):
    # D=64: 3 waves/SIMD x 4 SIMDs / 4 waves per block = 3 blocks per CU = 912 slots; D=256: 1 per CU = 304.
    for d, per_cu in ((64, 3), (256, 1)):
        k = flashcore.advise(gpu="mi300x", batch=1, seqlen=512, heads=4, head_dim=d, suggest=False,
                             results_dir=no_results).kernels["fwd"]
        assert (k.slots_per_unit, k.slots) == (per_cu, 304 * per_cu)


def test_causal_tile_steps_by_hand():
    # Forward, n=1000, 128-row query tiles, 64-key tiles, causal: tile i's last row is 128i+127 (the last tile's
    # is 999), so it visits keys 0..last: last//64 + 1 key tiles = 2, 4, ..., 14 and, for i=7, 999//64+1 = 16.
    tiles = model.tile_steps("query", 1000, 128, 64, causal=True)
    assert [s for s, _ in tiles] == [2, 4, 6, 8, 10, 12, 14, 16]
    # In-range area: tiles 0-6 cover 128 rows x 128(i+1) keys (16384 * 28 = 458752), tile 7 104 rows x 1000 keys.
    assert sum(a for _, a in tiles) == 458752 + 104000
    # Backward, 128-key blocks streaming 64-row query tiles: ceil(1000/64) = 16 query tiles, block j's first
    # visible row is 128j, i.e. query tile 2j: 16 - 2j steps.
    assert [s for s, _ in model.tile_steps("kv", 1000, 64, 128, causal=True)] == [16, 14, 12, 10, 8, 6, 4, 2]
    assert [s for s, _ in model.tile_steps("kv", 1000, 64, 128, causal=False)] == [16] * 8


def test_causal_waste_and_imbalance_by_hand(no_results):
    # The tiles above: 72 steps x 128 x 64 = 589824 scores computed per (sequence, head), 562752 in range,
    # 1000*1001/2 = 500500 needed: padding 1 - 562752/589824 = 4.59%, mask (562752 - 500500)/589824 = 10.55%;
    # steps max/mean = 16 / 9.
    k = flashcore.advise(gpu="mi300x", batch=1, seqlen=1000, heads=4, head_dim=128, causal=True, suggest=False,
                         results_dir=no_results).kernels["fwd"]
    assert k.padding_waste == pytest.approx(1 - 562752 / 589824)
    assert k.mask_waste == pytest.approx((562752 - 500500) / 589824)
    assert k.work_imbalance == pytest.approx(16 / 9)
    assert k.flops == 4 * 4 * 1000 * 1000 * 128 * 0.5  # the convention halves causal work


def test_gfx942_causal_schedule_runs_the_last_query_tile_first(no_results):
    # csrc/hip/fwd_kernel.h maps its blocks tile slowest (compat.h tile_slowest) and runs query tile (tiles - 1 - t):
    # per sequence, all 20 heads' last (causal: longest) tile launch first, then all heads' next-to-last, ...
    k = flashcore.advise(gpu="mi300x", batch=3, seqlen=3000, heads=20, head_dim=128, causal=True, suggest=False,
                         results_dir=no_results).kernels["fwd"]
    durations = [s + model.OVERHEAD_STEPS for s, _ in model.tile_steps("query", 3000, 128, 64, True)]
    slots = 304 * 2  # 304 CUs x 2 blocks of 4 waves (2 waves per SIMD)
    launch = [t for t in durations[::-1] for _head in range(20)] * 3
    assert k.schedule_efficiency == pytest.approx(sum(launch) / (slots * model.schedule(launch, slots, "dynamic")))
    # better than each head walking its own tiles last-first (the mapping before tile_slowest), and than tile order
    per_head = durations[::-1] * 60
    assert model.schedule(launch, slots, "dynamic") < model.schedule(per_head, slots, "dynamic")
    assert model.schedule(per_head, slots, "dynamic") < model.schedule(durations * 60, slots, "dynamic")


def test_schedule_kinds_by_hand():
    # Two slots. Dynamic, in launch order [1,1,1,1,4]: slot A 1, B 1, A 2, B 2, then the 4 lands at 2 -> 6.
    # Longest first [4,1,1,1,1]: A 4, B takes the four 1s -> 4.
    # Static round-robin: slot 0 runs items 0, 2, 4 = 1+1+4 = 6, slot 1 items 1, 3 = 2 -> 6; in the order
    # [4,1,1,1,1]: slot 0 4+1+1 = 6 as well (static cannot move the short ones next to the long one).
    assert model.schedule([1, 1, 1, 1, 4], 2, "dynamic") == 6
    assert model.schedule([1, 1, 1, 1, 4], 2, "longest_first") == 4
    assert model.schedule([1, 1, 1, 1, 4], 2, "static") == 6
    assert model.schedule([4, 1, 1, 1, 1], 2, "static") == 6
    assert model.schedule([4, 1, 1, 1, 1], 3, "static") == 5  # slot 0: items 0, 3 = 4+1
    # Equal items: whole waves, ceil(5/2) = 3 waves of 5, either way.
    assert model.schedule([5] * 5, 2, "dynamic") == model.schedule([5] * 5, 2, "static") == 15


def test_sm90_fwd_order_by_hand():
    # csrc/cuda/fwd/schedule.h: pairs in groups of heads_per_group; in a group, the reverse query block index is
    # slowest and the pairs fastest. Three pairs with blocks of work [1,2,3] (causal), groups of 2:
    # group {0,1}: m_rev 0 -> 3,3; m_rev 1 -> 2,2; m_rev 2 -> 1,1; then group {2}: 3, 2, 1.
    pairs = [[1, 2, 3]] * 3
    assert model.sm90_fwd_order(pairs, 2) == [3, 3, 2, 2, 1, 1, 3, 2, 1]
    # Varlen: a shorter sequence's missing blocks are empty tiles that keep their place.
    assert model.sm90_fwd_order([[1, 2, 3], [5]], 2) == [3, 5, 2, 0, 1, 0]
    # Group size: half of a 50 MB L2 over the K/V bytes one pair stands for (2*seqlen*D*2 / group).
    assert model.heads_per_group(50e6, 2 * 4096 * 128 * 2 / 4, 256) == 25e6 // 524288 == 47
    assert model.heads_per_group(50e6, 1e9, 256) == 1 and model.heads_per_group(50e6, 1.0, 6) == 6


def test_sm90_waves_and_last_wave_by_hand(with_sm90, no_results):
    # H100: 132 SMs x 1 CTA. batch 4, seqlen 4096, 16 heads, D=128 (128-row tiles): 4*16*32 = 2048 tiles,
    # 2048/132 = 15.52 waves: 15 full (1980 tiles) and a 16th holding 68 tiles, 68/132 = 51.5% full.
    adv = flashcore.advise(gpu="h100", batch=4, seqlen=4096, heads=16, head_dim=128, suggest=False,
                           results_dir=no_results)
    k = adv.kernels["fwd"]
    assert (k.units, k.slots, k.full_waves) == (2048, 132, 16)
    assert k.last_wave_fill == pytest.approx(68 / 132) and k.wave_efficiency == pytest.approx(2048 / (16 * 132))
    assert k.padding_waste == 0 and k.schedule_efficiency == pytest.approx(k.wave_efficiency)
    # Backward: 128-key blocks, 4096/128 = 32 per (sequence, head): also 2048 tiles; FLOPs 2.5x the forward's.
    b = adv.kernels["bwd"]
    assert b.units == 2048 and b.flops == 2.5 * k.flops
    assert adv.training_tflops == pytest.approx((k.flops + b.flops) / ((k.time_us + b.time_us) * 1e-6) / 1e12)


def test_sm90_causal_schedule_follows_the_kernel_order(with_sm90, no_results):
    # The forward hands out its own tile order (checked above and against schedule.h below) dynamically: CTA c starts
    # with tile c and claims the next one from a counter, which is greedy list scheduling of that order. On causal
    # shapes it beats the static round-robin of the same order (FLASHCORE_SM90_STATIC_SCHEDULE=1), which restarts
    # each L2 group with long tiles on CTAs that may already hold long ones, and that order beats the plain launch
    # order (shortest first).
    k = flashcore.advise(gpu="h100", batch=3, seqlen=3000, heads=20, head_dim=128, causal=True, suggest=False,
                         results_dir=no_results).kernels["fwd"]
    assert model.KERNELS[("sm90", "fwd")].scheduler == "dynamic"
    durations = [s + model.OVERHEAD_STEPS for s, _ in model.tile_steps("query", 3000, 128, 128, True)]
    hpg = model.heads_per_group(model.GPUS["h100"].cache_mb * 1e6, 2 * 3000 * 128 * 2, 60)
    order = model.sm90_fwd_order([durations] * 60, hpg)
    assert k.schedule_efficiency == pytest.approx(sum(order) / (132 * model.schedule(order, 132, "dynamic")))
    assert model.schedule(order, 132, "dynamic") < model.schedule(order, 132, "static")
    assert model.schedule(order, 132, "dynamic") < model.schedule(durations * 60, 132, "dynamic")
    lpt = sum(order) / (132 * model.schedule(durations * 60, 132, "longest_first"))
    assert k.longest_first_efficiency == pytest.approx(lpt) and lpt >= k.schedule_efficiency


def _run_cpp(tmp_path, header: str, namespace: str, body: str) -> list:
    """Compiles `int main() { body }` against csrc/<header> with g++; returns its output lines as int tuples."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) on PATH")
    src, exe = tmp_path / "order.cpp", tmp_path / "order"
    src.write_text(f'#include <cstdio>\n#include "{header}"\nusing namespace {namespace};\n'
                   f"int main() {{\n{body}}}\n")
    subprocess.run([cxx, "-std=c++20", f"-I{REPO / 'csrc'}", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return [tuple(map(int, line.split())) for line in out.split("\n") if line]


def test_sm90_fwd_order_is_the_kernels(tmp_path):
    """sm90_fwd_order against schedule.h's tile_at itself (g++): for each linear tile index the kernel hands out,
    the same (pair, query block), on shapes with a partial last group."""
    shapes = [(5, 7, 3), (4, 6, 6), (1, 3, 1), (9, 13, 4)]  # (query blocks, pairs, pairs per group)
    body = "".join(f"  {{ const TileOrder o{{{m}, {p}, {g}}};\n"
                   f"    for (int t = 0; t < o.num_tiles(); ++t) {{\n"
                   f"      const TileCoord c = tile_at(o, t);\n"
                   f"      std::printf(\"%d %d\\n\", c.pair, {m} - 1 - c.m_rev);\n"
                   f"    }}\n  }}\n" for m, p, g in shapes)
    kernel = _run_cpp(tmp_path, "cuda/fwd/schedule.h", "flashcore::sm90::fwd", body)
    modelled = []
    for m, p, g in shapes:  # items named by (pair, query block) instead of durations
        modelled += model.sm90_fwd_order([[(pair, block) for block in range(m)] for pair in range(p)], g)
    assert kernel == modelled


def test_sm90_bwd_causal_schedule_is_dynamic(with_sm90, no_results):
    # The backward hands out its items (K/V block fastest: causal's longest first) like the forward: CTA c starts
    # with item c and claims the next from a counter (bwd_sm90_plan.h, tile_handoff.h). At 1 x 16k x 16 heads the
    # static round-robin of the same order leaves 36% of the machine idle; greedy claims leave under 1%.
    b = flashcore.advise(gpu="h100", batch=1, seqlen=16384, heads=16, head_dim=128, causal=True, suggest=False,
                         results_dir=no_results).kernels["bwd"]
    assert model.KERNELS[("sm90", "bwd")].scheduler == "dynamic"
    assert model.KERNELS[("sm90", "bwd")].order == "blocks"
    durations = [s + model.OVERHEAD_STEPS for s, _ in model.tile_steps("kv", 16384, 64, 128, True)]
    order = durations * 16
    assert b.schedule_efficiency == pytest.approx(sum(order) / (132 * model.schedule(order, 132, "dynamic")))
    static = sum(order) / (132 * model.schedule(order, 132, "static"))
    assert b.schedule_efficiency > 0.99 and static < 0.65


def test_sm90_bwd_order_is_the_kernels(tmp_path):
    """The "blocks" order against bwd_sm90_plan.h's decode_item itself (g++): for each linear item index the kernel
    hands out (statically or by claims), the same (sequence, K/V head, K/V block)."""
    shapes = [(5, 3, 2), (1, 1, 4), (7, 2, 1)]  # (K/V blocks, K/V heads, sequences)
    body = "".join(f"  {{ const WorkGrid w{{{n}, {h}, {b}}};\n"
                   f"    for (int32_t i = 0; i < int32_t(work_items(w)); ++i) {{\n"
                   f"      int32_t n, hk, b;\n      decode_item(w, i, n, hk, b);\n"
                   f"      std::printf(\"%d %d %d\\n\", b, hk, n);\n"
                   f"    }}\n  }}\n" for n, h, b in shapes)
    kernel = _run_cpp(tmp_path, "cuda/bwd_sm90_plan.h", "flashcore::sm90::bwd", body)
    modelled = []
    for n, h, b in shapes:  # kernel_order's "blocks": pairs (sequence, K/V head) in launch order, blocks fastest
        pairs = [[(seq, head, block) for block in range(n)] for seq in range(b) for head in range(h)]
        modelled += [t for p in pairs for t in p]
    assert kernel == modelled
    spec = model.KERNELS[("sm90", "bwd")]
    ragged = [[1.0, 2.0], [3.0]]  # a shorter sequence's missing block is an empty item that keeps its place
    assert model.kernel_order(spec, model.GPUS["h100"], None, ragged) == [1.0, 2.0, 3.0, 0.0]


def test_backward_items_walk_the_gqa_group(with_sm90, no_results):
    # sm90 and gfx942 backward: one item per (K/V block, K/V head, sequence) walking the group's query heads.
    # batch 2, seqlen 1024, 16 heads over 4 K/V heads, D=128: sm90 fixture 128-key blocks -> 8 per sequence,
    # 8*4*2 = 64 items, each 4 heads x 1024/64 = 16 query tiles = 64 steps.
    b = flashcore.advise(gpu="h100", batch=2, seqlen=1024, heads=16, kv_heads=4, head_dim=128, suggest=False,
                         results_dir=no_results).kernels["bwd"]
    assert (b.units, b.work_imbalance, b.gqa_group) == (64, 1.0, 4)
    assert b.padding_waste == 0 and b.streamed == "Q/dO"


def test_gqa_reuse_by_hand(no_results):
    # MI300X fwd, batch 8, seqlen 4096, 32 heads over 8 K/V heads, D=128: K and V once = 2 * 32768 tokens * 8 *
    # 128 * 2 bytes = 128 MiB; without reuse each of the 8*32*32 = 8192 query tiles reads 64 key tiles of
    # K + V (2 * 64 * 128 * 2 bytes): 8192 * 64 * 32768 = 16 GiB, i.e. 4 heads x 32 query tiles = 128x more.
    # 64 (sequence, K/V head) groups of 128 tiles; 608 slots hold ceil(608/128) + 1 = 6 groups: 6 * 2 MiB.
    k = flashcore.advise(gpu="mi300x", batch=8, seqlen=4096, heads=32, kv_heads=8, head_dim=128, suggest=False,
                         results_dir=no_results).kernels["fwd"]
    assert k.gqa_group == 4 and k.streamed == "K/V"
    assert k.stream_bytes_once == 2 * 32768 * 8 * 128 * 2
    assert k.stream_bytes_no_reuse == 128 * k.stream_bytes_once
    assert k.l2_working_set_mb == pytest.approx(6 * 2 * 2 ** 20 / 1e6) and k.l2_fits
    # Fitting: DRAM = Q + O + LSE + K/V once.
    assert k.dram_bytes == 2 * 32768 * 32 * 128 * 2 + 32768 * 32 * 4 + k.stream_bytes_once


def test_varlen_tiles_per_sequence(tmp_path, no_results):
    # Lengths 100 and 300: ceil(100/128) + ceil(300/128) = 1 + 3 query tiles per head; 4 heads -> 16 tiles.
    adv = flashcore.advise(gpu="mi300x", heads=4, head_dim=128, varlen_lengths=[100, 300], suggest=False,
                           results_dir=no_results)
    assert adv.shape.batch == 2 and adv.shape.seqlen == 300 and adv.kernels["fwd"].units == 16
    assert adv.kernels["fwd"].flops == 4 * 4 * (100 ** 2 + 300 ** 2) * 128
    (tmp_path / "a.txt").write_text("100\n# comment\n\n300\n")
    (tmp_path / "b.json").write_text("[100, 300]")
    assert advise_mod.read_lengths(tmp_path / "a.txt") == advise_mod.read_lengths(tmp_path / "b.json") == [100, 300]
    (tmp_path / "c.txt").write_text("100\nlots\n")
    with pytest.raises(ValueError, match="--varlen-lengths"):
        advise_mod.read_lengths(tmp_path / "c.txt")


@pytest.mark.parametrize("kwargs, message", [
    (dict(gpu="a100"), "gpu: expected one of h100, h200, mi300x"),
    (dict(heads=30, kv_heads=7), "kv_heads: 7 must divide heads"),
    (dict(heads=0), "heads: expected an integer >= 1"),
    (dict(head_dim=80), "head_dim: 80 has no tile in GFX942_FWD"),
    (dict(seqlen=None), "seqlen: required"),
    (dict(batch=2.5), "batch: expected an integer"),
    (dict(tolerance=1.5), "tolerance: expected a fraction"),
    (dict(varlen_lengths=[10, 0]), r"varlen_lengths\[1\]"),
])
def test_bad_arguments_name_the_argument(kwargs, message, no_results):
    args = dict(gpu="mi300x", batch=2, seqlen=1000, heads=8, head_dim=128, results_dir=no_results)
    with pytest.raises(ValueError, match=message):
        flashcore.advise(**{**args, **kwargs})


# ---- suggestions --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [dict(batch=2, seqlen=1000, heads=12, kv_heads=4, head_dim=96),
                                   dict(batch=8, seqlen=4097, heads=30, kv_heads=6, head_dim=128, causal=True)])
def test_suggestions_keep_the_budget_and_raise_throughput(shape, with_sm90, no_results):
    for gpu in ("h100", "mi300x"):
        adv = flashcore.advise(gpu=gpu, results_dir=no_results, **shape)
        assert adv.suggestions, gpu
        gains = [s.gain for s in adv.suggestions]
        assert gains == sorted(gains, reverse=True) and min(gains) >= advise_mod.MIN_GAIN
        for s in adv.suggestions:
            for width in ("q_o_width", "k_v_width"):
                before, after = s.budget["before"][width], s.budget["after"][width]
                assert abs(after - before) <= adv.tolerance * before
            assert s.shape.heads % s.shape.kv_heads == 0
            assert s.shape.head_dim in adv.kernels["fwd"].table_head_dims


def test_padding_suggestion_for_an_odd_seqlen(tmp_path, no_results):
    # gfx942 forward alone (the backward's table would change the sum): 4097 leaves a 1-row query tile in each
    # of the 8*32 (sequence, head) pairs, 33 tiles instead of 32; causal, that tile is the longest of its head.
    # 4096 (the tile multiple below) must be suggested, with less time.
    shutil.copy(TILES / "gfx942_fwd.h", tmp_path / "gfx942_fwd.h")
    adv = flashcore.advise(gpu="mi300x", batch=8, seqlen=4097, heads=32, kv_heads=8, head_dim=128, causal=True,
                           results_dir=no_results, tiles_dir=tmp_path)
    four_k = [s for s in adv.suggestions if s.shape.seqlen == 4096 and s.shape.batch == 8]
    assert four_k and four_k[0].time_change < 0


def test_zero_tolerance_changes_no_head_shape(no_results):
    adv = flashcore.advise(gpu="mi300x", batch=2, seqlen=1000, heads=12, head_dim=96, tolerance=0.0,
                           results_dir=no_results)
    assert all((s.shape.heads, s.shape.kv_heads, s.shape.head_dim) == (12, 12, 96) for s in adv.suggestions)


# ---- calibration and validation ------------------------------------------------------------------------------
def _bench_doc(device: str, backend: str, cases: list) -> dict:
    return {"schema": bench.SCHEMA, "device": {"name": device}, "cases": [
        {"impl": "flashcore", "backend": backend, "status": "ok", "check": {"passed": True}, "kv_heads": c[3],
         **dict(zip(("mode", "batch", "seqlen", "heads", "head_dim", "causal", "median_ms"), c[:3] + c[4:]))}
        for c in cases]}


def test_uncalibrated_says_so(no_results):
    adv = flashcore.advise(gpu="mi300x", batch=1, seqlen=2048, heads=16, head_dim=128, results_dir=no_results)
    assert not adv.calibration.calibrated
    assert adv.calibration.status.startswith(f"uncalibrated: no measurements in {no_results} for mi300x")
    assert adv.kernels["fwd"].efficiency_source.startswith("assumed")
    assert adv.kernels["fwd"].efficiency == pytest.approx(model.GFX942_FWD_MFMA_SHARE[128])


def test_uncalibrated_sm90_reproduces_the_published_anchor(with_sm90, no_results):
    # HARDWARE.md: FA3 on an H100, 16k non-causal, heads*head_dim = 2048: fwd D=128 648 TFLOP/s, bwd 561; D=64
    # fwd 497. Uncalibrated, the sm90 efficiency is chosen so the model says exactly that there with our tiles.
    for d, fwd, bwd in ((128, 648.0, 561.0), (64, 497.0, 497.0 * 561 / 648)):
        adv = flashcore.advise(gpu="h100", batch=1, seqlen=16384, heads=2048 // d, head_dim=d, suggest=False,
                               results_dir=no_results)
        assert adv.kernels["fwd"].tflops == pytest.approx(fwd, rel=1e-6)
        assert adv.kernels["bwd"].tflops == pytest.approx(bwd, rel=1e-6)
        assert adv.kernels["fwd"].efficiency_source.startswith("assumed: reproduces FA3")


def test_calibration_fits_efficiency_from_measurements(tmp_path):
    # A measurement that takes exactly twice the uncalibrated compute time at efficiency 1 fits efficiency 0.5.
    shape = model.Shape(batch=2, seqlen=4096, heads=16, kv_heads=16, head_dim=128)
    spec = model.KERNELS[("gfx942", "fwd")]
    table = _tiles.load(spec.file, spec.label, spec.columns)
    unit = model.predict_kernel(model.GPUS["mi300x"], spec, table, shape, model._Fixed(1.0))
    ms = (2 * unit.compute_us + model.LAUNCH_US) / 1e3
    doc = _bench_doc("AMD Instinct MI300X", "hip_gfx942", [("fwd", 2, 4096, 16, 16, 128, False, ms)])
    (tmp_path / "run.json").write_text(json.dumps(doc))
    (tmp_path / "cpu.json").write_text(json.dumps(_bench_doc("cpu", "reference", [("fwd", 2, 4096, 16, 16, 128, False, 1.0)])))
    calib = model.calibrate("mi300x", tmp_path)
    assert calib.calibrated and calib.cases == 1 and calib.status.startswith("calibrated from 1 measured")
    assert calib.efficiency("gfx942", "fwd", 128) == (pytest.approx(0.5), "measured, 1 cases")
    assert calib.efficiency("gfx942", "fwd", 64)[1] == "interpolated from measured head dims"
    assert not model.calibrate("h100", tmp_path).calibrated  # an MI300X run says nothing about an H100
    # A direct kernel peer's row (no backend) counts; the same shape from "flashcore" is kept instead.
    direct = dict(doc["cases"][0], impl="flashcore_gfx942", backend=None, median_ms=5 * ms)
    both = dict(doc, cases=[direct] + doc["cases"])
    assert [c["impl"] for c in model.measured_cases(both, "mi300x")] == ["flashcore"]
    assert model.measured_cases(dict(doc, cases=[direct]), "mi300x") == [direct]
    assert not model.calibrate("mi300x", tmp_path, exclude=[tmp_path / "run.json"]).calibrated


def test_spearman_known_values():
    # x = 1..5, y = 5,6,7,8,7: ranks of y 1,2,3.5,5,3.5; deviations from 3: x -2,-1,0,1,2, y -2,-1,.5,2,.5;
    # sum xy = 4+1+0+2+1 = 8, sum x^2 = 10, sum y^2 = 9.5: rho = 8/sqrt(95) = 0.82078.
    assert model.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert model.ranks([10, 30, 20, 20]) == [1, 4, 2.5, 2.5]
    assert model.spearman([1, 2, 3], [10, 20, 300]) == pytest.approx(1.0)
    assert model.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="constant"):
        model.spearman([1, 2, 3], [4, 4, 4])
    # within 15%: 1/1.1 (-9%) yes, 2/2.5 (-20%) no, 3/3 yes, 4/4 yes -> 3 of 4; ranks agree -> passes.
    got = model.compare([1, 2, 3, 4], [1.1, 2.5, 3.0, 4.0])
    assert got["spearman"] == pytest.approx(1.0) and got["within_15pct"] == 0.75 and got["passes"]


def test_validate_on_synthetic_measurements(tmp_path, no_results):
    # Measurements = the model's own prediction x a deterministic +-10% wobble: ranks hold, all within 15%.
    rows = []
    for i, (s, h, d, causal) in enumerate([(1000, 12, 64, False), (1900, 20, 96, True), (3000, 28, 128, False),
                                           (4097, 36, 192, True), (6100, 40, 256, False), (777, 16, 128, True)]):
        adv = flashcore.advise(gpu="mi300x", batch=2, seqlen=s, heads=h, head_dim=d, causal=causal, suggest=False,
                               results_dir=no_results)
        rows.append(("fwd", 2, s, h, h, d, causal, adv.kernels["fwd"].time_us / 1e3 * (1 + 0.1 * (-1) ** i)))
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(_bench_doc("AMD Instinct MI300X", "hip_gfx942", rows)))
    report = model.validate(path, results_dir=no_results)
    fwd = report["modes"]["fwd"]
    assert report["gpu"] == "mi300x" and list(report["modes"]) == ["fwd"] and fwd["n"] == 6
    assert fwd["within_15pct"] == 1.0 and fwd["spearman"] > 0.9 and report["passes"]
    assert "uncalibrated" in report["calibration"]
    # Reversing the measured order must fail the ranking.
    reversed_rows = [r[:-1] + (m,) for r, m in zip(sorted(rows, key=lambda r: r[-1]),
                                                   sorted((r[-1] for r in rows), reverse=True))]
    bad = model.validate(_bench_doc("AMD Instinct MI300X", "hip_gfx942", reversed_rows), results_dir=no_results)
    assert bad["modes"]["fwd"]["spearman"] == pytest.approx(-1.0) and not bad["passes"]
    out = subprocess.run([sys.executable, "-m", "flashcore.advise", "--validate", str(path), "--results",
                          str(no_results)], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "mi300x: fwd 6 shapes: Spearman" in out and "PASS" in out
    with pytest.raises(ValueError, match="needs >= 2 passing flashcore kernel rows"):
        model.validate(_bench_doc("AMD Instinct MI300X", "reference", rows), results_dir=no_results)


# ---- CLI ----------------------------------------------------------------------------------------------------
def _cli(*args, check=True):
    return subprocess.run([sys.executable, "-m", "flashcore.advise", *args], cwd=REPO, capture_output=True, text=True,
                          check=check)


def test_cli_table_json_png(tmp_path, no_results):
    args = ["--gpu", "mi300x", "--batch", "8", "--seqlen", "4097", "--heads", "32", "--kv-heads", "8",
            "--head-dim", "128", "--causal", "--results", str(no_results)]
    table = _cli(*args).stdout
    for text in ("MI300X: batch 8 x seqlen 4097", "uncalibrated: no measurements", "waves / last wave fill",
                 "padding waste", "K/V reuse (GQA group)", "predicted TFLOP/s", "nearby shapes"):
        assert text in table, text
    doc = json.loads(_cli(*args, "--json").stdout)
    assert doc["gpu"] == "mi300x" and doc["kernels"]["fwd"]["units"] == 8 * 32 * 33
    assert doc["calibration"]["calibrated"] is False and doc["suggestions"]
    png = tmp_path / "advice.png"
    _cli(*args, "--png", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lengths = tmp_path / "lengths.txt"
    lengths.write_text("100\n300\n5000\n")
    varlen = json.loads(_cli("--gpu", "mi300x", "--heads", "8", "--varlen-lengths", str(lengths), "--json",
                             "--results", str(no_results)).stdout)
    assert varlen["shape"]["lengths"] == [100, 300, 5000]


def test_cli_errors_name_the_argument(no_results):
    bad = _cli("--gpu", "mi300x", "--seqlen", "1000", "--heads", "30", "--kv-heads", "7", check=False)
    assert bad.returncode == 2 and "kv_heads: 7 must divide heads (30)" in bad.stderr
    missing = _cli("--gpu", "mi300x", "--heads", "8", check=False)
    assert missing.returncode == 2 and "--seqlen is required" in missing.stderr


def test_import_flashcore_stays_cheap():
    code = ("import sys, flashcore; assert 'flashcore.advise' not in sys.modules; "
            "assert 'matplotlib' not in sys.modules; r = flashcore.advise(gpu='mi300x', seqlen=512, heads=4, "
            "suggest=False); import flashcore.advise as m; assert callable(flashcore.advise); "
            "assert 'matplotlib' not in sys.modules; print(type(r).__name__)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip() == "Advice"


# ---- bench: the odd-shapes sweep ------------------------------------------------------------------------------
def test_odd_shapes_cover_the_issue():
    shapes = bench.odd_shapes()
    assert len(shapes) == 25
    assert {s.head_dim for s in shapes} == {64, 96, 128, 192, 256}
    assert all(s.seqlen % 128 for s in shapes) and all(12 <= s.heads <= 40 for s in shapes)
    for d in bench.ODD_HEAD_DIMS:  # each head dim meets every head count and every seqlen once
        mine = [s for s in shapes if s.head_dim == d]
        assert {s.heads for s in mine} == set(bench.ODD_HEADS) and {s.seqlen for s in mine} == set(bench.ODD_SEQLENS)


def test_odd_shapes_cpu_smoke(tmp_path):
    # fwd only: keeps the CPU smoke short (the backward rows run the same code as the standard sweep's)
    assert bench.main(["--odd-shapes", "--out", str(tmp_path), "--json-only", "--causal", "1", "--mode", "fwd"]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["settings"]["sweep"] == "odd_shapes" and doc["settings"]["peers"] == ["flashcore"]
    got = {(c["batch"], c["seqlen"], c["heads"], c["head_dim"]) for c in doc["cases"]}
    assert got == set(bench.CPU_ODD_SHAPES)
    assert bench.default_stem(dict(doc, git={"commit": "0123456789abc", "dirty": False})).endswith("_0123456789_odd")

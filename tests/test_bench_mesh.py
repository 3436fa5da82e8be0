"""The mesh benchmark's report (scripts/bench_mesh.py) and the demo's area table that reads it
(scripts/demo.py), on made-up synthesis results: no simulation, no synthesis."""

from scripts import bench_mesh, demo
from synth.flow import SynthResult, markdown_table, overuse


def _tiles():
    # The default tile's real Yosys counts (docs/tile.md), which overuse() finds over the 85F,
    # and a tile that fits with a place-and-route result.
    big = SynthResult("tile", "ecp5", luts=85_000, ffs=60_000, carries=6_000, dsps=252,
                      brams=16, lutrams=3_000)
    big.over = overuse(big)
    big.fits = not big.over
    small = SynthResult("tile_no_vector", "ecp5", luts=39_303, ffs=43_271,
                        carries=4_898, dsps=148, brams=16, lutrams=1_949, fmax_mhz=40.5)
    return big, small


def test_report_lists_what_is_over_and_the_demo_reads_both_tiles(tmp_path):
    big, small = _tiles()
    assert big.over and not small.over
    text = bench_mesh.report({}, [big, small], 12.0)
    lines = text.splitlines()
    assert "| tile | ecp5 | 85,000 | 60,000 | 6,000 | 252 | 16 | 3,000 | does not fit |" in lines
    assert ("| tile_no_vector | ecp5 | 39,303 | 43,271 | 4,898 | 148 | 16 | 1,949 "
            "| 40.5 |") in lines
    assert any(line.startswith("- tile: ") and "MULT18X18D: 252 of 156" in line
               for line in lines)
    assert not any(line.startswith("- tile_no_vector:") for line in lines)
    (tmp_path / "tile_performance.md").write_text(text)
    # The SRAM's row comes from its own benchmark's table, not from area.md's.
    (tmp_path / "sram_performance.md").write_text(
        "| sram_ecc | ecp5 | 3,976 | 3,199 | 72 | 0 | 16 | 52 | 88.2 |\n")
    (tmp_path / "area.md").write_text(markdown_table([
        SynthResult("sram", "ecp5", luts=1, ffs=2, carries=3, dsps=0, brams=16, lutrams=0,
                    fmax_mhz=999.0),
        SynthResult("unpack", "ecp5", luts=2_457, ffs=1_017, carries=22, dsps=0, brams=0,
                    lutrams=76, fmax_mhz=132.1, abc9_dff=True)]))
    rows = {row[0]: row for row in demo.area_rows(tmp_path)}
    assert "sram" not in rows
    # A block the flow mapped with -dff keeps its row, and says so.
    assert rows["unpack"][1:] == ("2,457", "1,017", "0", "0", "132.1",
                                  "area.md (synth_ecp5 -dff)")
    assert rows["sram_ecc"][1:6] == ("3,976", "3,199", "0", "16", "88.2")
    assert rows["tile"][1:6] == ("85,000", "60,000", "252", "16", "does not fit")
    assert rows["tile_no_vector"][1:6] == ("39,303", "43,271", "148", "16", "40.5")


def test_report_of_yosys_counts_says_there_is_no_fmax(tmp_path):
    big, _ = _tiles()
    counted = SynthResult("tile_no_vector", "ecp5", luts=48_238, ffs=47_410, carries=4_972,
                          dsps=148, brams=32, lutrams=2_105)
    text = bench_mesh.report({}, [big, counted], 7.0, place_and_route=False)
    lines = text.splitlines()
    assert ("| tile_no_vector | ecp5 | 48,238 | 47,410 | 4,972 | 148 | 32 | 2,105 "
            "| — |") in lines
    assert any(line.startswith("Yosys's counts only (`--no-pnr`), so no Fmax") for line in lines)
    assert "Yosys's counts only" not in bench_mesh.report({}, [big, counted], 7.0)
    (tmp_path / "tile_performance.md").write_text(text)
    rows = {row[0]: row for row in demo.area_rows(tmp_path)}
    assert rows["tile_no_vector"][1:6] == ("48,238", "47,410", "148", "32", "—")


def test_report_without_synthesis_has_no_area_section():
    text = bench_mesh.report({}, [], 3.0)
    assert "## One tile on ECP5" not in text
    assert text.rstrip().endswith("Benchmark time: 3 s.")


def test_report_while_the_synthesis_runs_says_so():
    text = bench_mesh.report({}, [], 5.0, pending=True)
    assert "The tiles' synthesis was still running" in text
    assert text.rstrip().endswith("Simulations' time: 5 s.")
    assert "Benchmark time" not in text


def test_tile_block_names_are_identifiers():
    # synth.flow.synthesize refuses other names, and only after the simulations would the
    # benchmark find out.
    assert all(name.isidentifier() for name, _ in bench_mesh.TILES)

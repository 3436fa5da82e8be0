"""The `tessera` command: configuration errors are one line, not a traceback."""

import pytest

from scripts.tessera import area_report, main
from rtl.config import TesseraConfig
from synth.flow import SynthResult


def test_bad_override_exits_with_the_parameter_named(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["config", "--set", "buffer_depth=0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == \
        "tessera: error: buffer_depth must be an integer from 1 to 64, not 0\n"


def test_unknown_block_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        main(["verilog", "crossbar"])
    assert "Unknown block 'crossbar'; known blocks: fifo, arbiter, router" in capsys.readouterr().err


def test_config_prints_overrides(capsys):
    main(["config", "--set", "mesh_x=3", "--set", "weight_formats=Q4_0,Q8_0"])
    out = capsys.readouterr().out.splitlines()
    assert "mesh_x = 3" in out and "weight_formats = Q4_0,Q8_0" in out


def test_verilog_follows_the_configuration(tmp_path):
    path = tmp_path / "fifo.v"
    main(["verilog", "fifo", "--set", "flit_width=48", "-o", str(path)])
    text = path.read_text()
    assert "module fifo(" in text
    assert "input [47:0] i__payload;" in text


def test_synth_prints_a_table_row(capsys, tmp_path):
    main(["synth", "arbiter", "--target", "generic", "--json", str(tmp_path / "r.json")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| arbiter")]
    assert len(rows) == 1 and "| generic |" in rows[0]
    assert '"block": "arbiter"' in (tmp_path / "r.json").read_text()


def test_area_report_names_its_configuration_and_how_to_regenerate():
    text = area_report([SynthResult(block="fifo", target="generic", ffs=3)], TesseraConfig())
    assert "make docs" in text and "buffer_depth=4" in text and "| fifo | generic |" in text


def test_docs_synthesizes_every_block_but_the_slow_ones(monkeypatch, tmp_path):
    import scripts.tessera as tessera
    from rtl.blocks import BLOCKS, SLOW_BLOCKS
    from synth.flow import TARGETS
    jobs = []

    def fake(given, *, progress=True):
        jobs.extend(given)
        return [SynthResult(block=block, target=target, ffs=1) for block, target, _ in given]
    monkeypatch.setattr(tessera, "_synthesize_all", fake)
    monkeypatch.setattr(tessera, "DOCS_AREA", tmp_path / "area.md")
    monkeypatch.setattr(tessera, "REPO", tmp_path)
    assert main(["docs"]) in (None, 0)
    assert {(block, target) for block, target, _ in jobs} == \
        {(block, target) for block in BLOCKS if block not in SLOW_BLOCKS for target in TARGETS}
    text = (tmp_path / "area.md").read_text()
    assert "tile_performance.md" in text and "vector_performance.md" in text

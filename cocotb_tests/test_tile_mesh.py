"""The tile mesh under Verilator: distributed matmuls (sim/mesh_program.py) entering at the
edge port as micro-op packets, every result bit-exact with sim.dequant.matmul and every packet
the tiles send equal to the golden mesh model's, with random idle and stalls at the edge.
"""

import cocotb
import numpy as np
import pytest
from cocotb.triggers import ClockCycles, RisingEdge

from . import harness
from .streams import start_clock_and_reset


def _pack(fields, offsets):
    word = 0
    for name, value in fields.items():
        word |= int(value) << offsets[name]
    return word


def program_entries(program, offsets, mesh_x, *, items=None, answers=None):
    """The program's packets and waits as edge-player entries (cocotb_tests/edge_player.py),
    ending with a wait for every answer and END. ``items`` replaces ``program.items`` and
    ``answers`` (tile: count) the answers its SENDs make."""
    from sim.mesh_program import Packet, Wait
    from .edge_player import END, HEADER, WAIT, WORD
    h = offsets["header"]
    b = offsets["data_bits"]
    entries = []
    totals = {}
    for item in program.items if items is None else items:
        if isinstance(item, Wait):
            tile = (item.tile[1] - 1) * mesh_x + item.tile[0] - 1
            entries.append((WAIT << b) | tile | (item.answers << 8))
            continue
        assert isinstance(item, Packet)
        last = item.last if item.multicast else item.dst
        header = _pack({"dst_x": item.dst[0], "dst_y": item.dst[1], "last_x": last[0],
                        "last_y": last[1], "multicast": int(item.multicast),
                        "kind": int(item.kind), "length": len(item.words)}, h)
        entries.append((HEADER << b) | header)
        entries += [(WORD << b) | int(w) for w in item.words]
    for t, *_ in program.sends:
        totals[t] = totals.get(t, 0) + 1
    for t, count in (totals if answers is None else answers).items():
        entries.append((WAIT << b) | ((t[1] - 1) * mesh_x + t[0] - 1) | (count << 8))
    entries.append(END << b)
    return entries


def parse_capture(entries, offsets):
    """(src, kind, words) of every packet the edge player captured."""
    from .edge_player import HEADER
    o = offsets
    b = o["data_bits"]
    field = lambda value, name: (value >> o["received"][name]) & ((1 << o["bits"][name]) - 1)  # noqa: E731,E501
    packets = []
    i = 0
    while i < len(entries):
        kind, value = entries[i] >> b, entries[i] & ((1 << b) - 1)
        assert kind == HEADER, f"capture entry {i} is not a header"
        length = field(value, "length")
        words = [e & ((1 << o["width"]) - 1) for e in entries[i + 1:i + 1 + length]]
        packets.append(((field(value, "src_x"), field(value, "src_y")), field(value, "kind"),
                        words))
        i += 1 + length
    return packets


async def play(dut, entries, *, idle=0, stall=0, progress=None, limit=10_000_000):
    """Load ``entries``, run them to END and until the mesh is idle; returns (cycles, captured
    packets' entries). ``progress(fraction)`` is called every few thousand cycles."""
    depth = len(dut.program_ram.mem)
    assert len(entries) <= depth, f"a program of {len(entries)} entries; the player holds {depth}"
    for i, entry in enumerate(entries):
        dut.program_ram.mem[i].value = entry
    dut.idle.value, dut.stall.value = idle, stall
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    waited = 0
    while True:
        await ClockCycles(dut.clk, 2000)
        waited += 2000
        if progress:
            progress(int(dut.position.value) / len(entries))
        if int(dut.done.value):
            break
        assert waited < limit, f"the program did not finish in {limit} cycles"
    cycles = int(dut.cycles.value)
    while int(dut.busy.value):
        await ClockCycles(dut.clk, 100)
    await ClockCycles(dut.clk, 20)
    count = int(dut.captured.value)
    assert count <= len(dut.capture_ram.mem), f"the edge received {count} entries; the " \
        f"player's capture holds {len(dut.capture_ram.mem)}"
    captured = [int(dut.capture_ram.mem[i].value) for i in range(count)]
    return cycles, captured


def _weights(rng, fmt, n, k):
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 1.0, (n, 1))).astype(np.float32)
    return quantize(w, getattr(GGMLQuantizationType, fmt))


def with_bad_micro_ops(program, geometry):
    """``program.items`` with four bad micro-ops, the issue's bad input, dealt to the tiles in
    turn, each right behind the first MATMUL its tile receives (so the tile drains it while a
    MATMUL runs, then serves the rest of the program): an unknown micro-op; a MATMUL whose
    activations run past the end of the SRAM; a MATMUL of so many weight rows that its
    weights do not fit the SRAM; a MATMUL of more activation rows than the array has. Each
    adds an ERROR answer from its tile, so that tile's later waits count one answer more."""
    from dataclasses import replace
    from sim.mesh_program import Packet, Wait
    from sim.tile import Kind, pack_fields, unpack_fields
    items = list(program.items)
    tiles = [(x + 1, y + 1) for y in range(program.mesh_y) for x in range(program.mesh_x)]

    def reaches(item, t):
        last = item.last if item.multicast else item.dst
        return item.dst[0] <= t[0] <= last[0] and item.dst[1] <= t[1] <= last[1]

    bad = [lambda f: None, lambda f: f.update(x_addr=geometry.words - 1),
           lambda f: f.update(tiles=geometry.words), lambda f: f.update(rows=geometry.rows + 1)]
    for i, change in enumerate(bad):
        t = tiles[i % len(tiles)]
        at = next(j for j, item in enumerate(items) if isinstance(item, Packet)
                  and item.kind == Kind.MATMUL and reaches(item, t))
        if i == 0:
            packet = Packet(t, 7, (0x5A5A,))
        else:
            fields = unpack_fields(Kind.MATMUL, items[at].words)
            change(fields)
            packet = Packet(t, Kind.MATMUL, tuple(pack_fields(Kind.MATMUL, fields)))
        items = [*items[:at + 1], packet,
                 *(replace(item, answers=item.answers + 1)
                   if isinstance(item, Wait) and item.tile == t else item
                   for item in items[at + 1:])]
    return items


def _real_operands(nrng, name, m, chunks, geometry, tiles):
    """(fmt, w_raw, x): ``chunks`` groups per tile of consecutive rows of SmolLM2's tensor
    ``name`` as the GGUF file stores them, from a random first row, times the first ``m``
    tokens of the real prompt's layer-0 input (sim/smollm2.py)."""
    from sim.smollm2 import prompt_activations, tensors
    tensor = {t.name: t for t in tensors()}[name]
    fmt = tensor.tensor_type.name
    n = chunks * geometry.outputs_per_tile(fmt) * tiles
    first = int(nrng.integers(0, tensor.data.shape[0] - n + 1))
    x = prompt_activations()[:m]
    assert len(x) == m, f"the prompt has {len(x)} tokens, not {m}"
    return fmt, np.array(tensor.data[first:first + n]), x


@cocotb.test()
async def mesh_matmul(dut):
    """The ``jobs`` parameter's matmuls, each ``[source, m, chunks, k, idle, stall]`` and
    optionally ``"bad"``: ``source`` a weight format (random weights, ``k`` columns, random
    activations) or the name of a SmolLM2 tensor (real rows times the real prompt's first
    ``m`` tokens, ``k`` unused); ``chunks`` groups of output rows per tile; edge idle and
    stall in 256ths; ``"bad"`` adds :func:`with_bad_micro_ops`, whose ERROR answers and
    error bits must be the golden model's while every result stays bit-exact."""
    import time
    from sim import dequant
    from sim.mesh_program import MatmulProgram, MeshModel
    from sim.tile import Kind, TileGeometry
    from rtl.config import WEIGHT_FORMATS
    p = harness.params()
    seed = harness.seed()
    nrng = np.random.default_rng(seed)
    geometry = TileGeometry(**p["geometry"])
    dut.start.value = dut.clear.value = 0
    await start_clock_and_reset(dut)
    for source, m, chunks, k, idle, stall, *bad in p["jobs"]:
        tiles = p["mesh_x"] * p["mesh_y"]
        if source in WEIGHT_FORMATS:
            fmt = source
            n = chunks * geometry.outputs_per_tile(fmt) * tiles
            w_raw = _weights(nrng, fmt, n, k)
            x = nrng.standard_normal((m, k)).astype(np.float32)
        else:
            fmt, w_raw, x = _real_operands(nrng, source, m, chunks, geometry, tiles)
            n, k = w_raw.shape[0], x.shape[1]
        program = MatmulProgram(fmt, w_raw, x, p["mesh_x"], p["mesh_y"], geometry)
        assert bad in ([], ["bad"]), f"a job's seventh field is 'bad' or nothing, not {bad}"
        items = with_bad_micro_ops(program, geometry) if bad else program.items
        expected = MeshModel(p["mesh_x"], p["mesh_y"], geometry).run(items)
        errors = [packet for packet in expected if packet[1] == Kind.ERROR]
        assert len(errors) == (4 if bad else 0), f"the golden model answered {errors}"
        answers = {}
        for src, _, _ in expected:
            answers[src] = answers.get(src, 0) + 1
        entries = program_entries(program, p["offsets"], p["mesh_x"], items=items,
                                  answers=answers)
        wall = time.monotonic()
        cycles, captured = await play(dut, entries, idle=idle, stall=stall)
        wall = time.monotonic() - wall
        received = parse_capture(captured, p["offsets"])
        name = fmt if source == fmt else f"{source} ({fmt})"
        label = f"{name} M={m} N={n} K={k} on {p['mesh_x']}x{p['mesh_y']}"
        assert len(received) == len(expected), \
            f"{label}: {len(received)} packets at the edge, expected {len(expected)}"
        for tile in sorted({src for src, _, _ in expected}):
            got = [(kind, words) for src, kind, words in received if src == tile]
            want = [(kind, words) for src, kind, words in expected if src == tile]
            assert len(got) == len(want), f"{label}: tile {tile} sent {len(got)} packets"
            for i, (g, e) in enumerate(zip(got, want)):
                if g != e:
                    raise AssertionError(f"{label}: packet {i} from tile {tile}: got kind "
                                         f"{g[0]} with {len(g[1])} words, expected kind {e[0]} "
                                         f"with {len(e[1])}; first words {g[1][:3]} vs "
                                         f"{e[1][:3]}")
        y = program.result([packet for packet in received if packet[1] != Kind.ERROR])
        reference = dequant.matmul(fmt, w_raw, x).view(np.uint32)
        mismatch = np.argwhere(y != reference)
        assert mismatch.size == 0, (f"{label}: y{tuple(mismatch[0])} = "
                                    f"{y[tuple(mismatch[0])]:#x}, expected "
                                    f"{reference[tuple(mismatch[0])]:#x}")
        # Each tile's sticky errors are the bits of the ERRORs it answered, no more.
        tile_errors = int(dut.tile_errors.value)
        for y_ in range(p["mesh_y"]):
            for x_ in range(p["mesh_x"]):
                t = y_ * p["mesh_x"] + x_
                want = 0
                for src, _, words in errors:
                    if src == (x_ + 1, y_ + 1):
                        want |= int(words[0]) & 0xFF
                got = (tile_errors >> 8 * t) & 0xFF
                assert got == want, f"{label}: tile {(x_ + 1, y_ + 1)} errors {got:#x}, " \
                    f"expected {want:#x}"
        dut.clear.value = 1
        await RisingEdge(dut.clk)
        dut.clear.value = 0
        await RisingEdge(dut.clk)
        assert int(dut.errors.value) == 0, f"{label}: errors {int(dut.errors.value):#x} " \
            f"after clear"
        print(f"[tessera] {label}, idle {idle}/256, stall {stall}/256"
              f"{', with bad micro-ops' if bad else ''}: {len(program.packets())} packets, "
              f"{cycles} cycles, bit-exact ({cycles / wall:,.0f} cycles/s)")


@cocotb.test()
async def demo_run(dut):
    """scripts/demo.py's jobs: each a saved (fmt, w_raw, x), played at full rate. Writes each
    job's y bits and cycles, and a progress file the demo's progress bar reads."""
    import json
    import time
    from pathlib import Path
    from sim.mesh_program import MatmulProgram
    from sim.tile import TileGeometry
    p = harness.params()
    geometry = TileGeometry(**p["geometry"])
    dut.start.value = dut.clear.value = 0
    await start_clock_and_reset(dut)
    progress_file = Path(p["progress"])
    for index, job in enumerate(p["jobs"]):
        data = np.load(job)
        program = MatmulProgram(str(data["fmt"]), data["w_raw"], data["x"], p["mesh_x"],
                                p["mesh_y"], geometry)
        entries = program_entries(program, p["offsets"], p["mesh_x"])

        def progress(fraction):
            progress_file.write_text(json.dumps({"job": index, "fraction": fraction}))

        wall = time.monotonic()
        cycles, captured = await play(dut, entries, progress=progress)
        seconds = time.monotonic() - wall
        y = program.result(parse_capture(captured, p["offsets"]))
        flits = sum(1 + len(item.words) for item in program.packets())
        np.savez(Path(job).with_suffix(".out.npz"), y=y, cycles=cycles, seconds=seconds,
                 flits=flits, errors=int(dut.errors.value))
        progress(1.0)


# ---- pytest runners ----------------------------------------------------------------------------

def _offsets(fmt):
    from amaranth.hdl import Shape
    from rtl.noc.interface import NetworkInterface
    from .edge_player import data_bits
    header = fmt.header
    received = NetworkInterface.received_header_layout(fmt)
    return {
        "header": {name: header[name].offset for name, _ in header},
        "received": {name: received["header"].offset + header[name].offset
                     for name, _ in header},
        "bits": {name: Shape.cast(header[name].shape).width for name, _ in header},
        "width": fmt.flit_width,
        "data_bits": data_bits(fmt.flit_width),
    }


#: The tile's Verilog module in a simulation build of the mesh: the tile is converted and
#: compiled once for all the mesh's positions (rtl.external.ExternalModule).
TILE_MODULE = "tessera_tile"


def run_mesh(config, jobs, testcase="mesh_matmul", **extra):
    """Build the edge player on ``config`` and run ``testcase`` on ``jobs`` (with ``extra``
    parameters); scripts/demo.py runs its jobs through it too."""
    from dataclasses import asdict
    from rtl.noc.flit import FlitFormat
    from rtl.tiles.tile import Tile
    from sim.tile import TileGeometry
    from .edge_player import VERILOG, EdgePlayer
    harness.run(EdgePlayer(config, tile_module=TILE_MODULE), toplevel="tile_mesh_player",
                test_module="cocotb_tests.test_tile_mesh", testcase=testcase, quick_build=True,
                verilog_sources=[VERILOG],
                modules=[(TILE_MODULE, lambda: Tile(config), ("Tile", config))],
                parameters={"offsets": _offsets(FlitFormat.from_config(config)),
                            "mesh_x": config.mesh_x,
                            "mesh_y": config.mesh_y,
                            "geometry": asdict(TileGeometry.from_config(config)),
                            "jobs": jobs, **extra})


@pytest.mark.slow
@pytest.mark.parametrize("mesh_x, mesh_y", [(1, 1), (2, 1)])
def test_tile_mesh_small(mesh_x, mesh_y):
    from rtl.config import WEIGHT_FORMATS, TesseraConfig
    # 2 × 2 arrays; the default tile is in test_tile_mesh_2x2. Without the vector units,
    # which a matmul does not use and which are most of these tiles' build time.
    # Every format in decode (M = 1) and prefill (M = 32) shapes, then the bad micro-ops
    # among a matmul's, odd M and a full-rate edge, then real rows of SmolLM2's attn_q times
    # the real prompt.
    shapes = [[fmt, m, 1, 256 if fmt == "TQ2_0" else 64, 51, 51]
              for fmt in WEIGHT_FORMATS for m in (1, 32)]
    run_mesh(TesseraConfig(mesh_x=mesh_x, mesh_y=mesh_y, array_rows=2, array_cols=2,
                           flit_width=64, sram_width=64, tile_vector=False),
             [*shapes, ["Q4_1", 1, 2, 64, 51, 51], ["Q4_1", 5, 2, 64, 51, 51, "bad"],
              ["MXFP4", 5, 2, 96, 26, 128],
              ["Q8_0", 1, 3, 32, 0, 0], ["TQ2_0", 2, 1, 256, 51, 51],
              ["blk.0.attn_q.weight", 5, 1, None, 51, 51]])


@pytest.mark.slow
def test_tile_mesh_2x2():
    from rtl.config import TesseraConfig
    # The default configuration: every format in decode; Q4_1 (SmolLM2's format) with two
    # groups of activation rows (M = 9) and prefill's M = 32 (four groups); a full-rate run;
    # rows of SmolLM2's real ffn_up times the real prompt. Without the tiles' vector units,
    # which these matmuls do not use (test_tile.py runs VECTOR on the default tile; make demo
    # builds the default mesh with them).
    run_mesh(TesseraConfig(tile_vector=False),
             [["Q8_0", 1, 2, 64, 26, 51], ["Q4_0", 1, 2, 96, 26, 51],
              ["Q4_1", 9, 2, 64, 51, 77], ["MXFP4", 1, 2, 64, 26, 51],
              ["TQ2_0", 1, 1, 256, 26, 51], ["Q4_1", 32, 1, 32, 26, 51],
              ["Q4_1", 1, 3, 64, 0, 0], ["blk.0.ffn_up.weight", 5, 1, None, 26, 51]])

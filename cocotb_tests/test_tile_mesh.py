"""The tile mesh under Verilator: distributed matmuls (sim/mesh_program.py) entering at the
edge port as micro-op packets, every result bit-exact with sim.dequant.matmul and every packet
the tiles send equal to the golden mesh model's, with random idle and stalls at the edge.
"""

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from . import harness
from .streams import Watchdog, make_rng, start_clock_and_reset


def _pack(fields, offsets):
    word = 0
    for name, value in fields.items():
        word |= int(value) << offsets[name]
    return word


class Edge:
    """The testbench at the edge port: sends the program's packets (honouring its waits) and
    collects the packets the tiles send."""

    def __init__(self, dut, offsets, rng, *, idle, stall):
        self.dut, self.offsets, self.rng = dut, offsets, rng
        self.idle, self.stall = idle, stall
        self.received = []          # (src, kind, words)
        self.answers = {}
        self.flits_in = 0
        dut.i_header__valid.value = 0
        dut.i__valid.value = 0
        dut.o_header__ready.value = 0
        dut.o__ready.value = 0

    async def _offer(self, valid, payload, ready, value):
        while self.rng.random() < self.idle:
            valid.value = 0
            await RisingEdge(self.dut.clk)
        valid.value = 1
        payload.value = value
        while True:
            await ReadOnly()
            taken = bool(ready.value)
            await RisingEdge(self.dut.clk)
            if taken:
                break
        valid.value = 0
        self.flits_in += 1

    async def send(self, items):
        from sim.mesh_program import Packet
        dut, h = self.dut, self.offsets["header"]
        for item in items:
            if not isinstance(item, Packet):
                while self.answers.get(item.tile, 0) < item.answers:
                    await RisingEdge(dut.clk)
                continue
            last = item.last if item.multicast else item.dst
            header = _pack({"dst_x": item.dst[0], "dst_y": item.dst[1], "last_x": last[0],
                            "last_y": last[1], "multicast": int(item.multicast),
                            "kind": int(item.kind), "length": len(item.words)}, h)
            await self._offer(dut.i_header__valid, dut.i_header__payload, dut.i_header__ready,
                              header)
            for word in item.words:
                await self._offer(dut.i__valid, dut.i__payload, dut.i__ready, word)

    async def receive(self):
        dut, o = self.dut, self.offsets
        width = o["width"]
        while True:
            dut.o_header__ready.value = int(self.rng.random() >= self.stall)
            await ReadOnly()
            if not (dut.o_header__valid.value and dut.o_header__ready.value):
                await RisingEdge(dut.clk)
                continue
            value = int(dut.o_header__payload.value)
            await RisingEdge(dut.clk)
            dut.o_header__ready.value = 0
            field = lambda name: (value >> o["received"][name]) & ((1 << o["bits"][name]) - 1)  # noqa: E731,E501
            src = (field("src_x"), field("src_y"))
            words = []
            for _ in range(field("length")):
                while True:
                    dut.o__ready.value = int(self.rng.random() >= self.stall)
                    await ReadOnly()
                    if dut.o__valid.value and dut.o__ready.value:
                        words.append(int(dut.o__payload.value) & ((1 << width) - 1))
                        await RisingEdge(dut.clk)
                        break
                    await RisingEdge(dut.clk)
            dut.o__ready.value = 0
            self.received.append((src, field("kind"), words))
            self.answers[src] = self.answers.get(src, 0) + 1


def _weights(rng, fmt, n, k):
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 1.0, (n, 1))).astype(np.float32)
    return quantize(w, getattr(GGMLQuantizationType, fmt))


@cocotb.test()
async def mesh_matmul(dut):
    from sim import dequant
    from sim.mesh_program import MatmulProgram, MeshModel
    from sim.tile import TileGeometry
    p = harness.params()
    seed = harness.seed()
    rng = make_rng(seed)
    nrng = np.random.default_rng(seed)
    geometry = TileGeometry(**p["geometry"])
    dut.clear.value = 0
    await start_clock_and_reset(dut)
    watchdog = Watchdog(dut.clk, limit=20000)
    cocotb.start_soon(watchdog.run())
    for fmt, m, chunks, k, idle, stall in p["jobs"]:
        n = chunks * geometry.outputs_per_tile(fmt) * p["mesh_x"] * p["mesh_y"]
        w_raw = _weights(nrng, fmt, n, k)
        x = nrng.standard_normal((m, k)).astype(np.float32)
        program = MatmulProgram(fmt, w_raw, x, p["mesh_x"], p["mesh_y"], geometry)
        expected = MeshModel(p["mesh_x"], p["mesh_y"], geometry).run(program.items)
        edge = Edge(dut, p["offsets"], rng, idle=idle, stall=stall)
        receiver = cocotb.start_soon(edge.receive())
        sender = cocotb.start_soon(edge.send(program.items))
        start = cocotb.utils.get_sim_time("ns")
        progress = None
        while len(edge.received) < len(expected) or not sender.done():
            await RisingEdge(dut.clk)
            now = (len(edge.received), edge.flits_in)
            if now != progress:
                watchdog.kick()
                progress = now
        cycles = (cocotb.utils.get_sim_time("ns") - start) / 10
        while True:
            await ReadOnly()
            if not int(dut.busy.value):
                break
            await RisingEdge(dut.clk)
        await ClockCycles(dut.clk, 20)
        receiver.cancel()
        label = f"{fmt} M={m} N={n} K={k} on {p['mesh_x']}x{p['mesh_y']}"
        assert len(edge.received) == len(expected), \
            f"{label}: {len(edge.received)} packets at the edge, expected {len(expected)}"
        for tile in sorted({src for src, _, _ in expected}):
            got = [(kind, words) for src, kind, words in edge.received if src == tile]
            want = [(kind, words) for src, kind, words in expected if src == tile]
            for i, (g, e) in enumerate(zip(got, want)):
                if g != e:
                    raise AssertionError(f"{label}: packet {i} from tile {tile}: got kind "
                                         f"{g[0]} {len(g[1])} words, expected kind {e[0]} "
                                         f"{len(e[1])} words; first words {g[1][:3]} vs "
                                         f"{e[1][:3]}")
            assert len(got) == len(want), f"{label}: tile {tile} sent {len(got)} packets"
        y = program.result(edge.received)
        reference = dequant.matmul(fmt, w_raw, x).view(np.uint32)
        mismatch = np.argwhere(y != reference)
        assert mismatch.size == 0, (f"{label}: y{tuple(mismatch[0])} = {y[tuple(mismatch[0])]:#x}"
                                    f", expected {reference[tuple(mismatch[0])]:#x}")
        assert int(dut.errors.value) == 0, f"{label}: errors {int(dut.errors.value):#x}"
        print(f"[tessera] {label}: {len(program.packets())} packets, {edge.flits_in} flits in, "
              f"{cycles:.0f} cycles, bit-exact")


@cocotb.test()
async def demo_run(dut):
    """scripts/demo.py's jobs: each a saved (fmt, w_raw, x); no idle or stall at the edge, so
    the cycles are the mesh's own. Writes each job's y bits and cycles, and a progress file
    the demo's progress bar reads."""
    import json
    import time
    from pathlib import Path
    from sim.mesh_program import MatmulProgram
    from sim.tile import TileGeometry
    p = harness.params()
    geometry = TileGeometry(**p["geometry"])
    dut.clear.value = 0
    await start_clock_and_reset(dut)
    rng = make_rng(0)
    progress_file = Path(p["progress"])
    results = []
    for index, job in enumerate(p["jobs"]):
        data = np.load(job)
        fmt = str(data["fmt"])
        program = MatmulProgram(fmt, data["w_raw"], data["x"], p["mesh_x"], p["mesh_y"],
                                geometry)
        total = sum(1 + len(item.words) for item in program.packets())
        edge = Edge(dut, p["offsets"], rng, idle=0.0, stall=0.0)
        receiver = cocotb.start_soon(edge.receive())
        sender = cocotb.start_soon(edge.send(program.items))
        start_ns, wall = cocotb.utils.get_sim_time("ns"), time.monotonic()
        cycle = 0
        while len(edge.received) < len(program.sends) or not sender.done():
            await RisingEdge(dut.clk)
            cycle += 1
            if cycle % 2000 == 0:
                progress_file.write_text(json.dumps({"job": index, "flits": edge.flits_in,
                                                     "total": total}))
        cycles = round((cocotb.utils.get_sim_time("ns") - start_ns) / 10)
        seconds = time.monotonic() - wall
        receiver.cancel()
        y = program.result(edge.received)
        out = Path(job).with_suffix(".out.npz")
        np.savez(out, y=y, cycles=cycles, seconds=seconds, flits=edge.flits_in,
                 errors=int(dut.errors.value))
        results.append(str(out))
        progress_file.write_text(json.dumps({"job": index, "flits": total, "total": total}))
        while True:
            await ReadOnly()
            if not int(dut.busy.value):
                break
            await RisingEdge(dut.clk)
        await RisingEdge(dut.clk)


# ---- pytest runners ----------------------------------------------------------------------------

def _offsets(mesh):
    from amaranth.hdl import Shape
    header = mesh.fmt.header
    received = mesh.o_header.payload.shape()
    return {
        "header": {name: header[name].offset for name, _ in header},
        "received": {name: received["header"].offset + header[name].offset
                     for name, _ in header},
        "bits": {name: Shape.cast(header[name].shape).width for name, _ in header},
        "width": mesh.fmt.flit_width,
    }


def _run(config, jobs, testcase="mesh_matmul", **extra):
    from dataclasses import asdict
    from rtl.tile_mesh import TileMesh
    from sim.tile import TileGeometry
    mesh = TileMesh(config)
    harness.run(mesh, toplevel="tile_mesh", test_module="cocotb_tests.test_tile_mesh",
                testcase=testcase, quick_build=True,
                parameters={"offsets": _offsets(mesh), "mesh_x": config.mesh_x,
                            "mesh_y": config.mesh_y,
                            "geometry": asdict(TileGeometry.from_config(config)),
                            "jobs": jobs, **extra})


def test_tile_mesh_1x1():
    from rtl.config import TesseraConfig
    _run(TesseraConfig(mesh_x=1, mesh_y=1),
         [["Q4_0", 1, 3, 96, 0.2, 0.2], ["Q8_0", 9, 2, 64, 0.2, 0.3]])


def test_tile_mesh_2x2():
    from rtl.config import TesseraConfig
    # Every format in decode; two activation-row groups (M = 9) in Q4_1, SmolLM2's format.
    _run(TesseraConfig(),
         [["Q8_0", 1, 2, 64, 0.1, 0.2], ["Q4_0", 1, 3, 96, 0.1, 0.2],
          ["Q4_1", 9, 2, 64, 0.2, 0.3], ["MXFP4", 1, 2, 64, 0.1, 0.2],
          ["TQ2_0", 1, 2, 256, 0.1, 0.2]])

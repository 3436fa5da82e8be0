"""A simulation-only driver of the tile mesh's edge port that plays a program from memory, so a
long run needs no Python in the simulation loop (cocotb_tests/test_tile_mesh.py, make demo).

The testbench writes the program into ``program_ram.mem`` through VPI before starting, pulses
``start``, waits for ``done`` and reads what the edge received from ``capture_ram.mem``. The two
memories are Verilog (:data:`VERILOG`, to be built with the player). Each entry of both is
``type`` (2 bits) above :func:`data_bits` of data (64, or the flit width if wider):

======= ===================================================================================
type    data
======= ===================================================================================
HEADER  a packet's header (the edge interface's ``i_header``; in ``capture``: as received)
WORD    one word of the packet
WAIT    tile index (bits 0–7, y·X + x) and answer count (bits 8–39): continue once that tile
        has sent that many packets to the edge
END     stop; ``done`` rises
======= ===================================================================================
"""

from pathlib import Path

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.tile_mesh import TileMesh


__all__ = ["EdgePlayer", "HEADER", "WORD", "WAIT", "END", "data_bits", "VERILOG"]

HEADER, WORD, WAIT, END = range(4)


def data_bits(flit_width):
    """Bits of data in an entry, below its 2-bit type: a word of the edge port, and never fewer
    than 64 so that a WAIT's fields and a received header fit."""
    return max(64, flit_width)


#: The Verilog of the two memories, for :func:`cocotb_tests.harness.run`'s ``verilog_sources``.
VERILOG = Path(__file__).with_name("player_ram.v")


def _ram(depth, width, *, raddr, rdata, we=None, waddr=None, wdata=None):
    """One ``tessera_player_ram`` (:data:`VERILOG`): ``rdata`` is ``mem[raddr]`` without a
    clock; ``wdata`` is written at ``waddr`` on the clock edge when ``we``."""
    abits = len(raddr)
    return Instance("tessera_player_ram",
                    p_WIDTH=width, p_DEPTH=depth, p_ABITS=abits,
                    i_clk=ClockSignal(), i_raddr=raddr, o_rdata=rdata,
                    i_we=Const(0) if we is None else we,
                    i_waddr=Const(0, abits) if waddr is None else waddr,
                    i_wdata=Const(0, width) if wdata is None else wdata)


class EdgePlayer(wiring.Component):
    """:class:`~rtl.tile_mesh.TileMesh` with its edge port driven from ``program`` and
    recorded into ``capture``.

    Parameters
    ----------
    config : TesseraConfig
    program_depth, capture_depth : int
        Entries the program and capture memories hold.
    tile_module : str or None
        :class:`~rtl.tile_mesh.TileMesh`'s: the name of the tile's separately converted
        Verilog module (``TILE_MODULE`` in cocotb_tests/test_tile_mesh.py, whose
        ``run_mesh`` converts it), or None to elaborate every tile.

    Members
    -------
    start : ``In(1)``
        Play from entry 0 (clears the capture and the counters).
    done : ``Out(1)``
        The END entry was reached.
    cycles : ``Out(32)``
        Cycles from ``start`` to ``done``.
    captured : ``Out(32)``
        Entries written to ``capture``.
    position : ``Out(32)``
        The entry being played.
    idle, stall : ``In(8)``
        Random gaps: a cycle offers nothing to the mesh with probability ``idle``/256 and
        refuses what the mesh offers with probability ``stall``/256 (from an LFSR).
    errors : ``Out(8)``
        The mesh's tiles' errors, ORed.
    tile_errors : ``Out(8 · tiles)``
        Each tile's errors: tile (x, y) in bits 8·t to 8·t + 7, t = (y − 1)·mesh_x + x − 1 (one
        flat port, which a lean Verilator build makes visible to the testbench).
    clear : ``In(1)``
        Clears every tile's errors.
    busy : ``Out(1)``
        The mesh's ``busy``.
    """

    def __init__(self, config, program_depth=1 << 18, capture_depth=1 << 16, *,
                 tile_module=None):
        self._config = config
        self._tile_module = tile_module
        self._program_depth = program_depth
        self._capture_depth = capture_depth
        super().__init__({
            "start": In(1), "done": Out(1), "cycles": Out(32), "captured": Out(32),
            "idle": In(8), "stall": In(8), "position": Out(32), "errors": Out(8),
            "tile_errors": Out(8 * config.mesh_x * config.mesh_y), "clear": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        config = self._config
        X = config.mesh_x
        tiles = config.mesh_x * config.mesh_y
        m.submodules.mesh = mesh = TileMesh(config, tile_module=self._tile_module)
        running = Signal()
        pc = Signal(range(self._program_depth))
        bits = data_bits(config.flit_width)
        entry = Signal(bits + 2)
        m.submodules.program_ram = _ram(self._program_depth, bits + 2, raddr=pc, rdata=entry)
        write_addr = Signal(range(self._capture_depth))
        write_en = Signal()
        write_data = Signal(bits + 2)
        m.submodules.capture_ram = _ram(self._capture_depth, bits + 2, raddr=write_addr,
                                        rdata=Signal(bits + 2), we=write_en,
                                        waddr=write_addr, wdata=write_data)
        answers = [Signal(32, name=f"answers{t}") for t in range(tiles)]
        kind, data = entry[bits:], entry[:bits]

        waiting = Signal()
        target = data[:8]
        count = data[8:40]
        for t in range(tiles):
            with m.If(target == t):
                m.d.comb += waiting.eq(answers[t] < count)

        # x^16 + x^14 + x^13 + x^11 + 1, one step per cycle.
        lfsr = Signal(16, init=0xACE1)
        m.d.sync += lfsr.eq(Mux(lfsr[0], (lfsr >> 1) ^ 0xB400, lfsr >> 1))
        offer = lfsr[:8] >= self.idle
        take = lfsr[8:] >= self.stall
        m.d.comb += [
            mesh.i_header.payload.eq(data),
            mesh.i.payload.eq(data),
            mesh.i_header.valid.eq(running & offer & (kind == HEADER)),
            mesh.i.valid.eq(running & offer & (kind == WORD)),
        ]
        advance = ((kind == HEADER) & mesh.i_header.valid & mesh.i_header.ready) \
            | ((kind == WORD) & mesh.i.valid & mesh.i.ready) | ((kind == WAIT) & ~waiting)
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(kind == END):
                m.d.sync += [running.eq(0), self.done.eq(1)]
            with m.Elif(advance):
                m.d.sync += pc.eq(pc + 1)

        # The edge takes what the tiles send, one entry per cycle, a packet's words first.
        header = mesh.o_header.payload.header
        m.d.comb += [
            mesh.o.ready.eq(take),
            mesh.o_header.ready.eq(take & ~mesh.o.valid),
            write_addr.eq(self.captured),
        ]
        with m.If(mesh.o_header.valid & mesh.o_header.ready):
            m.d.comb += [write_en.eq(1), write_data.eq((HEADER << bits) | mesh.o_header.payload
                                                       .as_value())]
            for t in range(tiles):
                with m.If((header.src_y - 1) * X + (header.src_x - 1) == t):
                    m.d.sync += answers[t].eq(answers[t] + 1)
            m.d.sync += self.captured.eq(self.captured + 1)
        with m.Elif(mesh.o.valid & mesh.o.ready):
            m.d.comb += [write_en.eq(1), write_data.eq((WORD << bits) | mesh.o.payload.data)]
            m.d.sync += self.captured.eq(self.captured + 1)

        with m.If(self.start):
            m.d.sync += [running.eq(1), pc.eq(0), self.done.eq(0), self.cycles.eq(0),
                         self.captured.eq(0)]
            m.d.sync += [a.eq(0) for a in answers]
        m.d.comb += [self.errors.eq(mesh.errors), self.busy.eq(mesh.busy), self.position.eq(pc),
                     self.tile_errors.eq(Cat(mesh.tile_errors[y][x] for y in range(config.mesh_y)
                                             for x in range(X))),
                     mesh.clear.eq(self.clear)]
        return m

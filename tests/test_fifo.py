# amaranth: UnusedElaboratable=no
"""StreamFIFO: parameter errors, Amaranth-simulator unit tests, and the formal proof."""

from collections import deque

import pytest
from amaranth.asserts import AnySeq
from amaranth.hdl import Array, Assert, Cover, Elaboratable, Module, Shape, Signal
from amaranth.lib import data
from amaranth.sim import Simulator

from rtl.fifo import StreamFIFO
from synth.formal import FormalFailure, prove
from tests.mutants import OverrunFIFO


# ---- parameters --------------------------------------------------------------------------

def test_depth_must_be_positive():
    with pytest.raises(ValueError, match=r"^FIFO depth must be an integer of at least 1, not 0$"):
        StreamFIFO(8, 0)


def test_buffered_depth_at_least_two():
    with pytest.raises(ValueError,
                       match=r"^FIFO depth must be an integer of at least 2 when buffered, not 1$"):
        StreamFIFO(8, 1, buffered=True)


def test_depth_must_be_integer():
    with pytest.raises(TypeError, match=r"^FIFO depth must be a positive integer, not 2.5$"):
        StreamFIFO(8, 2.5)


def test_shape_must_be_shape_like():
    with pytest.raises(TypeError):
        StreamFIFO("wide", 4)


def test_properties_are_read_only():
    fifo = StreamFIFO(8, 3)
    assert (fifo.depth, fifo.shape.width, fifo.buffered) == (3, 8, False)
    with pytest.raises(AttributeError):
        fifo.depth = 4


# ---- simulation --------------------------------------------------------------------------

def _simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_fills_to_depth_then_drains_in_order(depth):
    dut = StreamFIFO(16, depth)

    async def bench(ctx):
        assert ctx.get(dut.i.ready) and not ctx.get(dut.o.valid)
        for n in range(depth):
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, 0x100 + n)
            await ctx.tick()
            assert ctx.get(dut.level) == n + 1
        # Full: ready drops, and an offered payload is not taken.
        ctx.set(dut.i.payload, 0xdead)
        assert not ctx.get(dut.i.ready)
        await ctx.tick()
        assert ctx.get(dut.level) == depth
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.o.ready, 1)
        for n in range(depth):
            assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 0x100 + n
            await ctx.tick()
        assert not ctx.get(dut.o.valid) and ctx.get(dut.level) == 0

    _simulate(dut, bench)


def test_written_payload_is_readable_next_cycle():
    dut = StreamFIFO(8, 4)

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, 0x5a)
        assert not ctx.get(dut.o.valid), "no combinational path from i to o"
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 0x5a

    _simulate(dut, bench)


@pytest.mark.parametrize("buffered", [False, True])
def test_structured_payload_streams_through(buffered):
    layout = data.StructLayout({"dest": 4, "last": 1, "data": 11})
    dut = StreamFIFO(layout, 4, buffered=buffered)
    sent = [{"dest": n % 16, "last": n % 3 == 0, "data": (n * 37) % 2048} for n in range(40)]

    async def bench(ctx):
        received = []
        pending = deque(sent)
        for cycle in range(400):
            # A fixed, irregular pattern of stalls on both sides.
            ctx.set(dut.i.valid, bool(pending) and cycle % 3 != 1)
            if pending:
                ctx.set(dut.i.payload, pending[0])
            ctx.set(dut.o.ready, cycle % 5 not in (2, 3))
            await ctx.delay(1e-9)
            took = ctx.get(dut.i.valid) and ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                p = ctx.get(dut.o.payload)
                received.append({"dest": p.dest, "last": bool(p.last), "data": p.data})
            await ctx.tick()
            if took:
                pending.popleft()
            if len(received) == len(sent):
                break
        assert received == [{**s, "last": bool(s["last"])} for s in sent]

    _simulate(dut, bench)


# ---- formal ------------------------------------------------------------------------------

class FIFOSpec(Elaboratable):
    """``fifo`` behaves exactly as an ideal queue of its depth, cycle for cycle.

    The ideal queue is a shift register of ``depth`` entries and a count, written here from the
    definition of a queue (not from the FIFO's pointers): it takes a payload when it has room
    and gives its oldest one when asked. Every input is free.
    """

    def __init__(self, fifo):
        self.fifo = fifo

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = self.fifo
        depth, width = fifo.depth, Shape.cast(fifo.shape).width

        m.d.comb += [
            fifo.i.valid.eq(AnySeq(1)),
            fifo.i.payload.eq(AnySeq(width)),
            fifo.o.ready.eq(AnySeq(1)),
        ]

        queue = Array(Signal(width, name=f"queue_{k}") for k in range(depth))
        count = Signal(range(depth + 1))
        push = Signal()
        pop = Signal()
        m.d.comb += [
            push.eq(fifo.i.valid & (count < depth)),
            pop.eq(fifo.o.ready & (count > 0)),
        ]
        with m.If(pop):
            for k in range(depth - 1):
                m.d.sync += queue[k].eq(queue[k + 1])
        with m.If(push):
            m.d.sync += queue[count - pop].eq(fifo.i.payload)
        m.d.sync += count.eq(count + push - pop)

        m.d.comb += [
            Assert(fifo.level == count, "level differs from the ideal queue"),
            Assert(fifo.i.ready == (count < depth), "i.ready differs from the ideal queue"),
            Assert(fifo.o.valid == (count > 0), "o.valid differs from the ideal queue"),
        ]
        with m.If(count > 0):
            m.d.comb += Assert(fifo.o.payload == queue[0], "o.payload is not the oldest")

        # Non-vacuity: the proof must see the FIFO fill, and see it drain after its pointers
        # have wrapped (more payloads delivered than it holds).
        delivered = Signal(range(depth + 2))
        with m.If(pop & (delivered <= depth)):
            m.d.sync += delivered.eq(delivered + 1)
        m.d.comb += [
            Cover(count == depth),
            Cover((delivered == depth + 1) & (count == 0)),
        ]
        return m


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_fifo_equals_ideal_queue(depth):
    # Depth 2*DEPTH+3 reaches full, wraps both pointers and drains again; the reference bar is
    # DEPTH+1 (Amaranth's own FIFO proof, OpenTitan prim_fifo_sync).
    prove(FIFOSpec(StreamFIFO(4, depth)), name=f"fifo_d{depth}", depth=2 * depth + 3)


def test_fifo_proof_catches_overrun_mutant():
    with pytest.raises(FormalFailure, match=r"failed assertion .*'i.ready differs from the ideal"):
        prove(FIFOSpec(OverrunFIFO(4, 4)), name="fifo_overrun", depth=11, tasks=("bmc",))


def test_unreachable_cover_fails_the_run():
    class Unreachable(FIFOSpec):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            m.d.comb += Cover(self.fifo.level > self.fifo.depth)
            return m

    with pytest.raises(FormalFailure, match=r"(?i)unreached cover statement"):
        prove(Unreachable(StreamFIFO(4, 2)), name="fifo_unreachable_cover", depth=6,
              tasks=("cover",))

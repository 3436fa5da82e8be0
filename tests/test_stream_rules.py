"""The stream-rule assertions (rtl/stream_rules.py) on their own: they hold for a producer that keeps
the rules, whatever the payload's signedness, and fire for one that breaks them."""

import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import stream
from amaranth.sim import Simulator

from rtl.stream_rules import assert_stream_rules


def _producer(shape, change_while_stalled):
    m = Module()
    port = stream.Signature(shape).create()
    counter = Signal(4)
    m.d.sync += counter.eq(counter + 1)
    m.d.comb += [port.valid.eq(1), port.ready.eq(counter[2])]
    # Hold -1 (all ones) while stalled; the broken producer changes it to -2.
    m.d.comb += port.payload.eq(-1)
    if change_while_stalled:
        with m.If(counter[0] & ~port.ready):
            m.d.comb += port.payload.eq(-2)
    assert_stream_rules(m, port, "test stream")
    return m


def _run(m, cycles=16):
    sim = Simulator(m)
    sim.add_clock(1e-8)

    async def bench(ctx):
        await ctx.tick().repeat(cycles)

    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("shape", [8, signed(8)])
def test_a_held_payload_passes(shape):
    # A signed payload of -1 once failed here: it was compared with an unsigned copy (255).
    _run(_producer(shape, change_while_stalled=False))


@pytest.mark.parametrize("shape", [8, signed(8)])
def test_a_payload_changed_before_ready_fails(shape):
    with pytest.raises(AssertionError, match="test stream changed payload before ready"):
        _run(_producer(shape, change_while_stalled=True))

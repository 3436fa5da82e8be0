"""Drive a Component's ``i``/``o`` streams in the Amaranth simulator, with random idle and stall
cycles: the unit tests' counterpart of cocotb_tests/streams.py."""

import random

from amaranth.hdl import Value
from amaranth.sim import Simulator


__all__ = ["stream_through"]


def stream_through(dut, payloads, *, idle=0.0, stall=0.0, seed=0):
    """Send ``payloads`` (unsigned integers) through ``dut``; return the outputs (unsigned) and,
    for each, the cycle it left (the first input is taken in cycle 0 when nothing idles)."""
    rng = random.Random(seed)
    received, cycles = [], []
    i_payload, o_payload = Value.cast(dut.i.payload), Value.cast(dut.o.payload)
    in_width, out_width = len(i_payload), len(o_payload)

    async def source(ctx):
        for payload in payloads:
            while rng.random() < idle:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            if i_payload.shape().signed and payload >> (in_width - 1):
                payload -= 1 << in_width
            ctx.set(dut.i.valid, 1)
            ctx.set(i_payload, payload)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        cycle = 0
        while len(received) < len(payloads):
            ready = rng.random() >= stall
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, o_payload)
            if valid and ready:
                received.append(payload & ((1 << out_width) - 1))
                cycles.append(cycle)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return received, cycles

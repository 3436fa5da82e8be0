"""cocotb drivers for Amaranth ``lib.stream`` ports, with random stalls.

Amaranth flattens a stream member ``i`` of a Component into the Verilog ports ``i__valid``,
``i__ready`` and ``i__payload``; these classes take the member name. Every driver acts right
after a rising edge and samples in the ``ReadOnly`` phase of the same time step, when all
combinational logic has settled, so a transfer is "valid and ready both high before the edge".

(cocotbext-axi has AXI-Stream drivers, but its signal naming is ``tvalid``/``tready``/``tdata``
and it has no notion of Amaranth's flattened names; these few lines are simpler than adapting it.)
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge


__all__ = ["start_clock_and_reset", "StreamSource", "StreamSink", "Watchdog"]


async def start_clock_and_reset(dut, cycles=2, period_ns=10):
    """Start ``dut.clk`` and hold ``dut.rst`` for ``cycles`` cycles."""
    cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0


class _StreamPort:
    """The Verilog ports of stream member ``name`` of ``dut``."""

    def __init__(self, dut, name, rng):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.rng = rng


class StreamSource(_StreamPort):
    """Offers payloads on stream ``name`` of ``dut``, idling at random between them.

    ``idle`` is the probability of a cycle without ``valid`` before each payload; it can be
    changed while running (a test sweeps it to fill and drain buffers). Once offered, a payload
    is held until taken, as the stream rules require.
    """

    def __init__(self, dut, name, rng, *, idle=0.3):
        super().__init__(dut, name, rng)
        self.idle = idle
        self.sent = 0
        self.valid.value = 0

    async def send(self, payloads):
        for payload in payloads:
            while self.rng.random() < self.idle:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.valid.value = 1
            self.payload.value = payload
            while True:
                await ReadOnly()
                taken = bool(self.ready.value)
                await RisingEdge(self.clk)
                if taken:
                    break
            self.sent += 1
        self.valid.value = 0


class StreamSink(_StreamPort):
    """Takes payloads from stream ``name`` of ``dut``, refusing at random.

    ``stall`` is the probability that ``ready`` is low in a given cycle. Received payloads are
    appended to :attr:`received` as unsigned integers.
    """

    def __init__(self, dut, name, rng, *, stall=0.3):
        super().__init__(dut, name, rng)
        self.stall = stall
        self.received = []
        self.ready.value = 0

    async def run(self):
        while True:
            self.ready.value = int(self.rng.random() >= self.stall)
            await ReadOnly()
            if self.valid.value and self.ready.value:
                self.received.append(int(self.payload.value))
            await RisingEdge(self.clk)


class Watchdog:
    """Fails the test when :meth:`kick` has not been called for ``limit`` cycles."""

    def __init__(self, clk, limit=1024):
        self.clk = clk
        self.limit = limit
        self.idle = 0

    def kick(self):
        self.idle = 0

    async def run(self):
        while True:
            await RisingEdge(self.clk)
            self.idle += 1
            assert self.idle <= self.limit, f"nothing moved for {self.limit} cycles"


def make_rng(seed):
    return random.Random(seed)

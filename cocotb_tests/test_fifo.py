"""StreamFIFO under Verilator: scoreboard against an ideal queue with random stalls on both sides.

The cocotb test checks, every cycle, that the FIFO behaves exactly as an ideal queue of its
depth would: ``level`` equals the number of payloads held, ``i.ready`` is high exactly when
there is room, ``o.valid`` exactly when something is held, and ``o.payload`` is the oldest
payload. The producer's and consumer's stall rates are swept so that the FIFO runs full, empty
and in between.
"""

from collections import deque

import cocotb
import pytest
from cocotb.triggers import ReadOnly, RisingEdge

from cocotb_tests import harness
from cocotb_tests.streams import StreamSink, StreamSource, Watchdog, make_rng, start_clock_and_reset


PAYLOADS = 3000


@cocotb.test()
async def fifo_matches_ideal_queue(dut):
    p = harness.params()
    depth, width = p["depth"], p["width"]
    rng = make_rng(harness.seed())
    await start_clock_and_reset(dut)

    source = StreamSource(dut, "i", rng)
    sink = StreamSink(dut, "o", rng)
    watchdog = Watchdog(dut.clk)
    payloads = [rng.getrandbits(width) for _ in range(PAYLOADS)]
    cocotb.start_soon(sink.run())
    cocotb.start_soon(watchdog.run())
    sending = cocotb.start_soon(source.send(payloads))

    async def sweep_stall_rates():
        # Phases of a slow consumer fill the FIFO; phases of a slow producer drain it.
        while True:
            source.idle, sink.stall = rng.choice([(0.0, 0.9), (0.9, 0.0), (0.3, 0.3), (0.0, 0.0)])
            for _ in range(rng.randrange(4, 4 * depth + 8)):
                await RisingEdge(dut.clk)

    cocotb.start_soon(sweep_stall_rates())

    model = deque()
    cycles = full_cycles = 0
    while len(sink.received) < PAYLOADS:
        await ReadOnly()
        level = int(dut.level.value)
        assert level == len(model), f"cycle {cycles}: level {level}, queue holds {len(model)}"
        assert bool(dut.i__ready.value) == (len(model) < depth), \
            f"cycle {cycles}: i.ready {dut.i__ready.value} with {len(model)} of {depth} held"
        assert bool(dut.o__valid.value) == (len(model) > 0), \
            f"cycle {cycles}: o.valid {dut.o__valid.value} with {len(model)} held"
        if model:
            assert int(dut.o__payload.value) == model[0], \
                f"cycle {cycles}: o.payload {int(dut.o__payload.value):#x}, expected {model[0]:#x}"
        full_cycles += len(model) == depth
        if dut.o__valid.value and dut.o__ready.value:
            model.popleft()
            watchdog.kick()
        if dut.i__valid.value and dut.i__ready.value:
            model.append(int(dut.i__payload.value))
            watchdog.kick()
        await RisingEdge(dut.clk)
        cycles += 1

    await sending
    assert sink.received == payloads, "payloads lost, duplicated or reordered"
    assert full_cycles > 0, "the test never filled the FIFO"
    dut._log.info(f"{PAYLOADS} payloads in {cycles} cycles, full for {full_cycles}")


@cocotb.test()
async def fifo_keeps_order(dut):
    """Order and completeness only, for FIFOs whose latency is not the ideal queue's."""
    p = harness.params()
    rng = make_rng(harness.seed())
    await start_clock_and_reset(dut)
    source = StreamSource(dut, "i", rng, idle=0.2)
    sink = StreamSink(dut, "o", rng, stall=0.5)
    watchdog = Watchdog(dut.clk)
    payloads = [rng.getrandbits(p["width"]) for _ in range(PAYLOADS)]
    cocotb.start_soon(sink.run())
    cocotb.start_soon(watchdog.run())
    cocotb.start_soon(source.send(payloads))
    while len(sink.received) < PAYLOADS:
        seen = len(sink.received)
        await RisingEdge(dut.clk)
        if len(sink.received) != seen:
            watchdog.kick()
        assert int(dut.level.value) <= p["depth"]
    assert sink.received == payloads, "payloads lost, duplicated or reordered"


# ---- pytest side -------------------------------------------------------------------------

from rtl.blocks import build_block          # noqa: E402
from rtl.config import TesseraConfig        # noqa: E402
from rtl.fifo import StreamFIFO             # noqa: E402
from tests.mutants import FickleFIFO, OverrunFIFO  # noqa: E402


CONFIGS = [
    TesseraConfig(),                                    # 128 bits x 4
    TesseraConfig(flit_width=32, buffer_depth=1),       # the one-entry corner
    TesseraConfig(flit_width=64, buffer_depth=5),       # depth not a power of two
    TesseraConfig(flit_width=40, buffer_depth=16),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"w{c.flit_width}-d{c.buffer_depth}")
def test_fifo(config):
    fifo = build_block("fifo", config)
    harness.run(fifo, toplevel="fifo", test_module="cocotb_tests.test_fifo",
                testcase="fifo_matches_ideal_queue",
                parameters={"depth": fifo.depth, "width": config.flit_width})


def test_buffered_fifo():
    # Block-RAM storage adds a cycle of latency, so only order and completeness are checked.
    harness.run(StreamFIFO(64, 16, buffered=True), toplevel="fifo_buffered",
                test_module="cocotb_tests.test_fifo", testcase="fifo_keeps_order",
                parameters={"depth": 16, "width": 64})


def test_fifo_mutant_is_caught():
    """The scoreboard fails a FIFO that accepts payloads when full, and keeps a waveform."""
    with pytest.raises(harness.SimulationFailure) as failure:
        harness.run(OverrunFIFO(16, 4), toplevel="fifo_overrun",
                    test_module="cocotb_tests.test_fifo", testcase="fifo_matches_ideal_queue",
                    parameters={"depth": 4, "width": 16})
    message = str(failure.value)
    assert "i.ready" in message
    wave = message.split("Waveform: ")[1].split("\n")[0]
    assert wave.endswith(".fst") and harness.Path(wave).stat().st_size > 0


def test_stream_rule_assertion_fires_in_verilator():
    """A FIFO that withdraws valid loses no data; only the Assert inside it can fail the run."""
    with pytest.raises(harness.SimulationFailure) as failure:
        harness.run(FickleFIFO(16, 4), toplevel="fifo_fickle",
                    test_module="cocotb_tests.test_fifo", testcase="fifo_keeps_order",
                    parameters={"depth": 4, "width": 16})
    assert "FIFO output dropped valid before ready" in str(failure.value)

"""MAC array under Verilator: real GGUF blocks in every weight mode against sim/mac_array.py.

Weights are random matrices quantized by ``gguf.quants.quantize`` into each format and read
back into codes from their bytes; activations are Q8_0 codes made the same way. Each array
shape runs a decode-shaped (1 to 4 rows) and a prefill-shaped (more rows than the array) matmul
per format, plus one command with an undefined mode, whose steps must be taken and dropped.
The command, activation and weight streams idle at random, independently; the output stalls at
random. Every output word must match the reference, in order, with nothing extra.
"""

import json

import cocotb
import numpy as np
import pytest
from cocotb.triggers import ClockCycles, RisingEdge
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from cocotb_tests import harness
from cocotb_tests.streams import StreamSink, StreamSource, Watchdog, make_rng, start_clock_and_reset
from sim.gguf_blocks import code_values, split_blocks
from sim.mac_array import schedule


UNDEFINED_MODE = 7


def _pack(values, width):
    mask = (1 << width) - 1
    return sum((int(v) & mask) << (width * i) for i, v in enumerate(values))


def pack_weights(pairs, packed):
    """One ``i_w`` word: per column ``lo`` (8 bits) and, in a packed array, ``hi`` (5 bits)."""
    if packed:
        return _pack([(lo & 0xFF) | (hi & 0x1F) << 8 for lo, hi in pairs], 13)
    return _pack([lo for lo, _ in pairs], 8)


def _signed(value, width):
    return value - (1 << width) if value >> (width - 1) & 1 else value


def real_codes(rng, fmt, rows, k):
    """Codes of a random ``rows × k`` matrix quantized to ``fmt`` by gguf."""
    scale = rng.uniform(0.01, 4.0, (rows, 1))
    matrix = (rng.standard_normal((rows, k)) * scale).astype(np.float32)
    raw = quantize(matrix, getattr(GGMLQuantizationType, fmt))
    return split_blocks(fmt, raw).codes.reshape(rows, k)


def make_jobs(rng, p):
    rows, cols = p["rows"], p["cols"]
    jobs = []
    for fmt in p["formats"]:
        width = cols * (1 if fmt == "Q8_0" else 2)
        for m in (int(rng.integers(1, 5)), int(rng.integers(rows, 2 * rows + 2))):
            n = int(rng.integers(1, 2 * width + 1))
            k = 256 if fmt == "TQ2_0" else 32 * int(rng.integers(1, 4))
            x = code_values("Q8_0", real_codes(rng, "Q8_0", m, k))
            jobs.append(schedule(fmt, x, real_codes(rng, fmt, n, k),
                                 rows=rows, cols=cols, lanes=p["lanes"]))
    order = rng.permutation(len(jobs))
    return [jobs[i] for i in order]


def unpack_output(value, p):
    lanes = p["lanes"] * p["cols"]
    sums = tuple(_signed(value >> (32 * i) & 0xFFFFFFFF, 32) for i in range(lanes))
    field = lambda name, width: value >> p["offsets"][name] & ((1 << width) - 1)
    return (field("tile", 16), field("block", 16), field("row", p["row_width"]), sums,
            field("last", 1))


@cocotb.test()
async def matmuls(dut):
    p = harness.params()
    seed = harness.seed()
    rng = make_rng(seed)
    nrng = np.random.default_rng(seed)
    await start_clock_and_reset(dut)
    dut.clear.value = 0

    jobs = make_jobs(nrng, p)
    # One undefined-mode command in the middle: 2 blocks of 1 tile, 64 steps to drop.
    bad_at = len(jobs) // 2
    commands, x_words, w_words = [], [], []
    for index, job in enumerate(jobs):
        if index == bad_at:
            commands.append(_pack([UNDEFINED_MODE], 3) | 2 << 3 | 1 << 19)
            x_words += [_pack(nrng.integers(-128, 128, p["rows"]), 8) for _ in range(64)]
            w_words += [pack_weights(nrng.integers(-12, 16, (p["cols"], 2)), p["lanes"] == 2)
                        for _ in range(64)]
        mode, blocks, tiles = job.command
        commands.append(mode | blocks << 3 | tiles << 19)
        x_words += [_pack(step, 8) for step in job.x_steps]
        w_words += [pack_weights(step, p["lanes"] == 2) for step in job.w_steps]
    expected = [out for job in jobs for out in job.outputs]
    ends = list(np.cumsum([len(job.outputs) for job in jobs]) - 1)

    cmd = StreamSource(dut, "i_cmd", rng, idle=0.2)
    xs = StreamSource(dut, "i_x", rng, idle=0.15)
    ws = StreamSource(dut, "i_w", rng, idle=0.15)
    sink = StreamSink(dut, "o", rng, stall=0.3)
    watchdog = Watchdog(dut.clk)
    cocotb.start_soon(sink.run())
    cocotb.start_soon(watchdog.run())
    cocotb.start_soon(cmd.send(commands))
    cocotb.start_soon(xs.send(x_words))
    cocotb.start_soon(ws.send(w_words))

    progress = None
    while len(sink.received) < len(expected):
        await RisingEdge(dut.clk)
        now = (len(sink.received), xs.sent, ws.sent)
        if now != progress:
            watchdog.kick()
            progress = now
    await ClockCycles(dut.clk, 200)

    received = [unpack_output(v, p) for v in sink.received]
    assert len(received) == len(expected), \
        f"{len(received)} output words, expected {len(expected)}"
    for i, (got, want) in enumerate(zip(received, expected)):
        assert got[:4] == want, f"word {i}: got {got[:4]}, expected {want}"
    assert [i for i, r in enumerate(received) if r[4]] == ends, "`last` on the wrong words"
    assert xs.sent == len(x_words) and ws.sent == len(w_words)
    assert int(dut.errors.value) & 1 == 1, "undefined mode did not set errors.mode"
    dut._log.info("%d matmuls, %d k-steps, %d output words", len(jobs), len(x_words),
                  len(received))


@cocotb.test()
async def benchmark(dut):
    """Full-rate runs for `tessera bench array`: each job alone, inputs always valid, output
    always ready; cycles from the first k-step taken to the last word delivered. Outputs are
    still checked against the reference."""
    p = harness.params()
    nrng = np.random.default_rng(harness.seed())
    rng = make_rng(harness.seed())
    await start_clock_and_reset(dut)
    dut.clear.value = 0
    cycle = 0

    async def count():
        nonlocal cycle
        while True:
            await RisingEdge(dut.clk)
            cycle += 1

    cocotb.start_soon(count())
    sink = StreamSink(dut, "o", rng, stall=0.0)
    cocotb.start_soon(sink.run())
    results = []
    for spec in p["bench"]:
        fmt, m, n, k = spec["format"], spec["m"], spec["n"], spec["k"]
        x = nrng.integers(-128, 128, (m, k))
        job = schedule(fmt, x, real_codes(nrng, fmt, n, k), rows=p["rows"], cols=p["cols"],
                       lanes=p["lanes"])
        mode, blocks, tiles = job.command
        cmd = StreamSource(dut, "i_cmd", rng, idle=0.0)
        xs = StreamSource(dut, "i_x", rng, idle=0.0)
        ws = StreamSource(dut, "i_w", rng, idle=0.0)
        before = len(sink.received)
        await cmd.send([mode | blocks << 3 | tiles << 19])
        start = cycle
        cocotb.start_soon(xs.send([_pack(step, 8) for step in job.x_steps]))
        cocotb.start_soon(ws.send([pack_weights(step, p["lanes"] == 2) for step in job.w_steps]))
        while len(sink.received) < before + len(job.outputs):
            await RisingEdge(dut.clk)
            assert cycle - start < 4 * len(job.x_steps) + 1000, "benchmark run stuck"
        cycles = cycle - start
        got = [unpack_output(v, p)[:4] for v in sink.received[before:]]
        assert got == job.outputs, f"{spec}: outputs differ from the reference"
        results.append({**spec, "cycles": cycles, "steps": len(job.x_steps), "macs": job.macs})
        await ClockCycles(dut.clk, 10)
    with open(p["report"], "w") as f:
        json.dump(results, f, indent=1)


# ---- pytest runners --------------------------------------------------------------------------

def _params(array):
    layout = array.output_layout
    return {
        "rows": array.rows, "cols": array.cols, "lanes": array.lanes,
        "formats": list(array.formats),
        "row_width": layout["row"].shape.width,
        "offsets": {name: layout[name].offset for name in ("row", "block", "tile", "last")},
    }


@pytest.mark.parametrize("rows, cols", [(2, 2), (4, 4), (8, 8), (4, 8), (8, 4)])
def test_mac_array(rows, cols):
    from rtl.tiles.mac_array import MACArray
    array = MACArray(rows=rows, cols=cols)
    harness.run(array, toplevel="mac_array", test_module="cocotb_tests.test_mac_array",
                testcase="matmuls", parameters=_params(array))


def test_mac_array_int8_only():
    from rtl.tiles.mac_array import MACArray
    array = MACArray(rows=3, cols=5, formats=("Q8_0",))
    harness.run(array, toplevel="mac_array", test_module="cocotb_tests.test_mac_array",
                testcase="matmuls", parameters=_params(array))

# amaranth: UnusedElaboratable=no
"""The Q8_0 quantizer: its golden model (sim/quantizer.py) byte for byte against
``gguf.quants.quantize(x, Q8_0)`` on every kind of block, including real activations; the RTL in
the Amaranth simulator on a few blocks of each defined case (flags, clear, latency); parameter
errors. The bulk runs are in cocotb_tests/test_quantizer.py (Verilator)."""

import random

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from cocotb_tests.test_quantizer import (FINITE_KINDS, check_output, finite_mix, gguf_bytes,
                                         nonfinite_blocks, smollm2_activations, tie_count)
from rtl.tiles.quantizer import BLOCK, OUTPUT_LAYOUT, Q8_0Quantizer
from sim.quantizer import quantize


OFFSETS = {name: OUTPUT_LAYOUT[name].offset for name in ("q", "d", "sum", "first", "last")}


# ---- Golden model against gguf -------------------------------------------------------------

@pytest.mark.parametrize("kind", list(FINITE_KINDS))
def test_golden_matches_gguf(kind):
    rng = np.random.default_rng(sorted(FINITE_KINDS).index(kind))
    x = FINITE_KINDS[kind](rng, 3000)
    golden = quantize(x)
    assert np.array_equal(golden.raw, gguf_bytes(x))
    assert not golden.nonfinite.any()
    assert np.array_equal(golden.sums, golden.q.astype(np.int64).sum(axis=1))


def test_golden_cases_are_exercised():
    rng = np.random.default_rng(1)
    assert tie_count(FINITE_KINDS["ties"](rng, 100)) > 1000
    x = FINITE_KINDS["tiny"](rng, 3000)
    with np.errstate(all="ignore"):
        d = np.max(np.abs(x), axis=1) / np.float32(127)
        inverse = np.float32(1) / d
    tiny = quantize(x)
    assert np.count_nonzero(d == 0) > 100                             # d rounds to zero
    infinite = (d != 0) & np.isinf(inverse)
    assert np.count_nonzero(infinite) > 100 and np.all(tiny.q[infinite] == 0)    # 1/d = ∞
    assert np.count_nonzero(np.any(tiny.q != 0, axis=1)) > 100        # d subnormal, 1/d finite
    assert np.all(tiny.d == 0)                # all far below the binary16 range
    small = quantize(FINITE_KINDS["fp16 subnormal d"](rng, 1000))
    assert np.count_nonzero((small.d & 0x7C00) == 0) > 500
    huge = quantize(FINITE_KINDS["huge"](rng, 1000))
    assert np.count_nonzero(huge.d == 0x7C00) > 500


def test_golden_nonfinite_blocks():
    rng = np.random.default_rng(2)
    x = nonfinite_blocks(rng, 2000)
    golden = quantize(x)
    assert golden.nonfinite.all()
    assert np.all(golden.q == 0) and np.all(golden.sums == 0)
    has_nan = np.any(np.isnan(x), axis=1)
    assert np.all(golden.d[has_nan] == 0x7E00) and np.all(golden.d[~has_nan] == 0x7C00)
    # gguf agrees once its NaN scale is made canonical.
    assert np.array_equal(golden.raw, gguf_bytes(x))


def test_golden_matches_gguf_on_smollm2_activations():
    rng = np.random.default_rng(3)
    x = smollm2_activations(rng, 64)
    golden = quantize(x)
    assert np.array_equal(golden.raw, gguf_bytes(x))
    assert np.all(np.abs(golden.q).max(axis=1) == 127)


def test_golden_rejects_partial_blocks():
    with pytest.raises(ValueError, match=r"^Q8_0 needs a multiple of 32 values, not 33$"):
        quantize(np.zeros(33, dtype=np.float32))


# ---- RTL in the Amaranth simulator ---------------------------------------------------------

def simulate(x, *, idle=0.0, stall=0.0, clear_at=None, seed=0):
    """Run blocks ``x`` through the quantizer; return the output payloads, the cycle of each,
    and the error flags sampled every cycle."""
    dut = Q8_0Quantizer()
    rng = random.Random(seed)
    words = [int(v) for v in np.asarray(x, dtype=np.float32).reshape(-1).view(np.uint32)]
    received, cycles, flags = [], [], []
    o_payload = Value.cast(dut.o.payload)

    async def source(ctx):
        for word in words:
            while rng.random() < idle:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(Value.cast(dut.i.payload), word)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        cycle = 0
        while len(received) < len(words):
            ready = rng.random() >= stall
            ctx.set(dut.o.ready, ready)
            ctx.set(dut.clear, cycle == clear_at)
            _, _, valid, payload, errors = await ctx.tick().sample(
                dut.o.valid, o_payload, Value.cast(dut.errors))
            if valid and ready:
                received.append(payload)
                cycles.append(cycle)
            flags.append(errors)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return received, cycles, flags


def test_rtl_blocks_of_every_kind():
    rng = np.random.default_rng(4)
    x = np.concatenate([finite_mix(rng, 1), nonfinite_blocks(rng, 2)])
    received, cycles, flags = simulate(x, idle=0.2, stall=0.3)
    check_output("amaranth", x, received, OFFSETS)
    assert flags[-1] == 1


def test_rtl_full_rate_and_latency():
    rng = np.random.default_rng(5)
    x = FINITE_KINDS["random"](rng, 6)
    received, cycles, flags = simulate(x)
    check_output("amaranth full rate", x, received, OFFSETS)
    # One element per cycle once the first block's scale is known.
    assert cycles == list(range(cycles[0], cycles[0] + len(cycles)))
    print(f"first output {cycles[0]} cycles after the first input")
    assert not any(flags)


def test_rtl_flag_and_clear():
    rng = np.random.default_rng(6)
    x = np.concatenate([nonfinite_blocks(rng, 1), FINITE_KINDS["random"](rng, 4)])
    # The flag rises as the ∞/NaN element is taken and stays until clear (cycle 60, long
    # after the first block); nothing after the clear sets it again.
    received, _, flags = simulate(x, clear_at=60)
    check_output("flag", x, received, OFFSETS)
    assert flags[40:60] == [1] * 20
    assert not any(flags[61:])


def test_parameter_errors():
    with pytest.raises(TypeError, match=r"^Quantizer buffer depth must be an integer of at "
                                        r"least 32, not 64\.0$"):
        Q8_0Quantizer(buffer_depth=64.0)
    with pytest.raises(ValueError, match=r"^Quantizer buffer depth must be an integer of at "
                                         r"least 32, not 31$"):
        Q8_0Quantizer(buffer_depth=31)
    assert Q8_0Quantizer(buffer_depth=40).buffer_depth == 40
    assert BLOCK == 32

"""The binary32 units in the Amaranth simulator: latency and throughput as documented, nothing lost
under backpressure, the IEEE corner cases by name. The 10⁶-vector bit-exactness runs are in
cocotb_tests/test_fp_vectors.py (Verilator)."""


import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

import sim.fp32 as golden
from rtl.fp import FP16ToFP32, FP32ToFP16, FPAdd, FPCompare, FPMul, Int32ToFP32
from rtl.fp.format import leading_zeros
from tests.sim_streams import stream_through


def _f(x):
    return int(np.float32(x).view(np.uint32))


UNITS = {"add": (FPAdd, golden.add), "mul": (FPMul, golden.mul)}




@pytest.mark.parametrize("unit", [FPAdd, FPMul, FPCompare, FP16ToFP32, FP32ToFP16, Int32ToFP32])
def test_latency_and_one_result_per_cycle(unit):
    dut = unit()
    count = 16
    received, cycles = stream_through(dut, list(range(1, count + 1)))
    # The first input is taken in cycle 0; its result is offered LATENCY cycles later, and
    # the rest follow back to back.
    assert cycles == list(range(unit.LATENCY, unit.LATENCY + count))


@pytest.mark.parametrize("name", ["add", "mul"])
def test_nothing_lost_under_backpressure(name):
    unit, model = UNITS[name]
    rng = np.random.default_rng(5)
    a = rng.integers(0, 1 << 32, 300, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 1 << 32, 300, dtype=np.uint64).astype(np.uint32)
    payloads = [int(x) | int(y) << 32 for x, y in zip(a, b)]
    received, _ = stream_through(unit(), payloads, idle=0.3, stall=0.5, seed=7)
    assert received == [int(v) for v in model(a, b)]


def _one(unit, payload):
    received, _ = stream_through(unit(), [payload])
    return received[0]


def _pair(a, b):
    return a | b << 32


# Corner cases stated from IEEE 754, not from NumPy: an independent check of the golden model's
# conventions as much as of the RTL.
@pytest.mark.parametrize("a, b, expected", [
    (_f(1.0), _f(-1.0), 0x00000000),              # exact cancellation is +0
    (0x80000000, 0x80000000, 0x80000000),         # −0 + −0 = −0
    (0x80000000, 0x00000000, 0x00000000),         # −0 + +0 = +0
    (0x7F800000, 0xFF800000, 0x7FC00000),         # ∞ − ∞ is the canonical NaN
    (0x7F800001, _f(1.0), 0x7FC00000),            # a signalling NaN comes out canonical
    (0x7F7FFFFF, 0x73000000, 0x7F800000),         # max (odd) + half an ulp ties to even: ∞
    (0x7F7FFFFF, 0x72800000, 0x7F7FFFFF),         # max + a quarter ulp stays max
    (_f(1.0), 0x33800000, _f(1.0)),               # 1 + 2^-24 ties to even: 1
    (0x3F800001, 0x33800000, 0x3F800002),         # (1 + 2^-23) + 2^-24 ties up to even
    (0x00000001, 0x00000001, 0x00000002),         # subnormals add exactly
    (0x007FFFFF, 0x00000001, 0x00800000),         # the largest subnormal + 1 ulp is normal
    (0x00800000, 0x80000001, 0x007FFFFF),         # and back
])
def test_add_corner_cases(a, b, expected):
    assert _one(FPAdd, _pair(a, b)) == expected


@pytest.mark.parametrize("a, b, expected", [
    (0x7F800000, 0x00000000, 0x7FC00000),         # ∞ · 0 is NaN
    (0xFF800000, 0x80000001, 0x7F800000),         # −∞ · −tiny = +∞
    (0x80000000, _f(3.0), 0x80000000),            # −0 · 3 = −0
    (0x00800000, 0x3F000000, 0x00400000),         # 2^-126 / 2 is the subnormal 2^-127
    (0x00000001, 0x3F000000, 0x00000000),         # 2^-149 / 2 ties to even: +0
    (0x00000003, 0x3F000000, 0x00000002),         # 3 · 2^-150 ties to even: 2 · 2^-149
    (0x00000001, 0x4B000000, 0x00800000),         # 2^-149 · 2^23 is the smallest normal
    (0x7F000000, 0x40000000, 0x7F800000),         # 2^127 · 2 overflows
    (0x3F800001, 0x3F800001, 0x3F800002),         # (1 + 2^-23)^2 = 1 + 2^-22 + 2^-46
])
def test_mul_corner_cases(a, b, expected):
    assert _one(FPMul, _pair(a, b)) == expected


def _compare(a, b):
    result = _one(FPCompare, _pair(a, b))
    return result & 0xFFFFFFFF, result >> 32 & 1, result >> 33 & 1, result >> 34 & 1


@pytest.mark.parametrize("a, b, expected", [
    # (max, less, equal, unordered)
    (0x80000000, 0x00000000, (0x00000000, 0, 1, 0)),   # −0 = +0, and the maximum is +0
    (0x00000000, 0x80000000, (0x00000000, 0, 1, 0)),   # whatever the order
    (0x80000000, 0x80000000, (0x80000000, 0, 1, 0)),
    (_f(-2.0), _f(-1.0), (_f(-1.0), 1, 0, 0)),
    (_f(1.0), 0x7FC00000, (0x7FC00000, 0, 0, 1)),      # NaN: unordered, max is NaN
    (0xFF800000, 0x00000001, (0x00000001, 1, 0, 0)),
])
def test_compare_corner_cases(a, b, expected):
    assert _compare(a, b) == expected


@pytest.mark.parametrize("h, expected", [
    (0x0001, 0x33800000),                           # the smallest binary16 subnormal, 2^-24
    (0x03FF, _f(np.float32(1023) * np.float32(2.0 ** -24))),
    (0x8400, 0xB8800000),                           # −2^-14
    (0x7BFF, _f(65504.0)),
    (0xFC00, 0xFF800000),
    (0x7C01, 0x7FC00000),
])
def test_fp16_to_fp32_corner_cases(h, expected):
    assert _one(FP16ToFP32, h) == expected


@pytest.mark.parametrize("a, expected", [
    (_f(65504.0), 0x7BFF),
    (_f(65519.99), 0x7BFF),                         # below the halfway point to 2^16
    (_f(65520.0), 0x7C00),                          # halfway rounds to even: ∞
    (_f(2.0 ** -24), 0x0001),
    (_f(2.0 ** -25), 0x0000),                       # half the smallest subnormal ties to 0
    (_f(1.5 * 2.0 ** -25), 0x0001),
    (0x80000001, 0x8000),                           # binary32 subnormals round to zero
    (0x7F800001, 0x7E00),
])
def test_fp32_to_fp16_corner_cases(a, expected):
    assert _one(FP32ToFP16, a) == expected


@pytest.mark.parametrize("v, expected", [
    (0, 0x00000000),
    (-(2 ** 31), 0xCF000000),
    (2 ** 31 - 1, 0x4F000000),                      # rounds up to 2^31
    (2 ** 24 + 1, 0x4B800000),                      # ties to even: 2^24
    (2 ** 24 + 3, 0x4B800002),                      # ties to even: 2^24 + 4
])
def test_int32_to_fp32_corner_cases(v, expected):
    assert _one(Int32ToFP32, v & 0xFFFFFFFF) == expected


@pytest.mark.parametrize("width", [1, 5, 10, 16])
def test_leading_zeros_every_value(width):
    m = Module()
    value = Signal(width)
    count = Signal(range(width + 1))
    m.d.comb += count.eq(leading_zeros(value))

    async def bench(ctx):
        for v in range(1 << width):
            ctx.set(value, v)
            assert ctx.get(count) == width - v.bit_length(), v

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()

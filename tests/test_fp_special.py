"""The special-function units (FPExp, FPReciprocal) in the Amaranth simulator: latency and
throughput as documented, nothing lost under backpressure, the delay line in RAM equal to the one
in registers, and the corner cases (NaN, ±∞, ±0, subnormals, the clamp and range edges) against
the golden sequences of sim/vector_math.py. The 10⁶-vector runs are in
cocotb_tests/test_fp_special_vectors.py (Verilator)."""


import numpy as np
import pytest
from amaranth.hdl import Cat, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

import sim.vector_math as golden
from rtl.fp import FPExp, FPReciprocal
from rtl.fp.format import Pipeline
from tests.sim_streams import stream_through


def _f(x):
    return int(np.float32(x).view(np.uint32))


def _next(x, direction):
    """Bits of the binary32 neighbour of ``x`` towards ``direction``."""
    return _f(np.nextafter(np.float32(x), np.float32(direction)))


def _reciprocal_payloads(values, rsqrt):
    return [int(v) | int(r) << 32 for v, r in zip(values, rsqrt)]


def _reciprocal_golden(values, rsqrt):
    values = np.asarray(values, dtype=np.uint32)
    return np.where(np.asarray(rsqrt) == 1, golden.rsqrt(values), golden.recip(values))


@pytest.mark.parametrize("unit", [FPExp, FPReciprocal])
def test_latency_and_one_result_per_cycle(unit):
    count = 16
    received, cycles = stream_through(unit(), list(range(1, count + 1)))
    # The first input is taken in cycle 0; its result is offered LATENCY cycles later, and
    # the rest follow back to back.
    assert cycles == list(range(unit.LATENCY, unit.LATENCY + count))


def test_nothing_lost_under_backpressure():
    rng = np.random.default_rng(11)
    x = np.concatenate([np.float32(rng.uniform(-110, 95, 150)).view(np.uint32),
                        rng.integers(0, 1 << 32, 150, dtype=np.uint64).astype(np.uint32)])
    received, _ = stream_through(FPExp(), [int(v) for v in x], idle=0.3, stall=0.5, seed=3)
    assert received == [int(v) for v in golden.exp(x)]
    rsqrt = rng.integers(0, 2, len(x))
    received, _ = stream_through(FPReciprocal(), _reciprocal_payloads(x, rsqrt), idle=0.3,
                                 stall=0.5, seed=4)
    assert received == [int(v) for v in _reciprocal_golden(x, rsqrt)]


class _Delays(wiring.Component):
    """A value through :meth:`Pipeline.delay` and :meth:`Pipeline.delay_memory` side by side
    (twice in RAM, so that two rings share their address counter)."""

    i: In(stream.Signature(16))
    o: Out(stream.Signature(48))

    def __init__(self, stages):
        self.stages = stages
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o, self.stages)
        value = self.i.payload
        m.d.comb += self.o.payload.eq(Cat(
            p.delay(value, self.stages, "registers"),
            p.delay_memory(value, self.stages, "ram"),
            p.delay_memory(~value, self.stages, "ram_inverted")))
        return m


@pytest.mark.parametrize("stages", [1, 3, 4, 5, 9, 16, 23])
def test_delay_memory_is_delay(stages):
    rng = np.random.default_rng(stages)
    values = [int(v) for v in rng.integers(0, 1 << 16, 120)]
    # Back to back (the latency is the number of stages) and under heavy backpressure.
    received, cycles = stream_through(_Delays(stages), values)
    assert cycles == list(range(stages, stages + len(values)))
    assert received == [v | v << 16 | (v ^ 0xFFFF) << 32 for v in values]
    received, _ = stream_through(_Delays(stages), values, idle=0.4, stall=0.6, seed=stages)
    assert received == [v | v << 16 | (v ^ 0xFFFF) << 32 for v in values]


NANS = [0x7FC00000, 0x7F800001, 0xFFC12345, 0x7FFFFFFF]

EXP_CORNERS = NANS + [
    0x7F800000, 0xFF800000, 0x00000000, 0x80000000,          # ±∞, ±0
    0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF,          # subnormals
    0x00800000, 0x80800000, 0x7F7FFFFF, 0xFF7FFFFF,          # smallest, largest normals
    _f(-104), _next(-104, 0), _next(-104, -1e9),              # the low clamp
    _f(89), _next(89, 0), _next(89, 1e9),                     # the high clamp
    _f(88.72283), _next(88.72283, 0), _next(88.72283, 1e9),   # ln of the largest binary32
    _f(88.7), _f(88.75),
    _f(-87.33654), _next(-87.33654, 0), _next(-87.33654, -1e9),  # ln 2^-126: subnormal below
    _f(-103.27893), _f(-103.9720),                            # the smallest subnormal, half it
    _f(1.0), _f(-1.0), _f(0.5), _f(-0.34657359), _f(0.34657359),  # ±ln2/2: the reduction edge
    _f(1e-8), _f(-1e-8), _f(-30.0), _f(-0.0001), _f(10.0), _f(-10.0),
]


def test_exp_corner_cases():
    x = np.array(EXP_CORNERS, dtype=np.uint32)
    received, _ = stream_through(FPExp(), [int(v) for v in x])
    expected = golden.exp(x)
    assert received == [int(v) for v in expected]
    # Stated from the mathematics rather than from the golden model.
    result = dict(zip(EXP_CORNERS, received))
    assert all(result[n] == 0x7FC00000 for n in NANS)
    assert result[0x7F800000] == 0x7F800000 and result[0xFF800000] == 0
    assert result[0x00000000] == result[0x80000000] == _f(1.0)
    assert result[_f(89)] == 0x7F800000 and result[_f(-104)] == 0
    assert result[0x7F7FFFFF] == 0x7F800000 and result[0xFF7FFFFF] == 0
    assert (result[_f(-87.33654) & 0xFFFFFFFF] >> 23) & 0xFF in (0, 1)   # at the edge of normal


RECIP_CORNERS = NANS + [
    0x7F800000, 0xFF800000, 0x00000000, 0x80000000,          # ±∞, ±0
    0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF,          # subnormals: ±∞
    0x00800000, 0x80800000, 0x00800001, 0x00FFFFFF,          # exponent field 1
    0x7E800000, 0xFE800000, 0x7E7FFFFF, 0xFE7FFFFF,          # 2^126 (→ ±0) and just below
    0x7E000000, 0x7E7FFFFF, 0x7F7FFFFF, 0xFF7FFFFF,          # exponents 252, 253, 254
    _f(1.0), _f(-1.0), _f(2.0), _f(0.5), _f(3.0), _f(-7.0), 0x3FFFFFFF, 0x3F800001,
    _f(1e4), _f(1e-4), _f(1e-6), _f(1e30), _f(1e-30),
]

RSQRT_CORNERS = NANS + [
    0x7F800000, 0xFF800000, 0x00000000, 0x80000000,          # +∞ → +0, −∞ → NaN, ±0 → ±∞
    0x00000001, 0x007FFFFF, 0x80000001, 0x807FFFFF,          # subnormals: +∞; negative: NaN
    0x00800000, 0x00800001, 0x01000000, 0x7F7FFFFF,          # both exponent parities, the top
    _f(-1.0), _f(-4.0), 0xFF7FFFFF, 0x80800000,              # negative: NaN
    _f(1.0), _f(4.0), _f(2.0), _f(0.25), _f(3.0), 0x3FFFFFFF, 0x407FFFFF,
    _f(1e4), _f(1e-6), _f(1e30), _f(1e-30),
]


def test_reciprocal_corner_cases():
    x = np.array(RECIP_CORNERS + RSQRT_CORNERS, dtype=np.uint32)
    rsqrt = [0] * len(RECIP_CORNERS) + [1] * len(RSQRT_CORNERS)
    received, _ = stream_through(FPReciprocal(), _reciprocal_payloads(x, rsqrt))
    assert received == [int(v) for v in _reciprocal_golden(x, rsqrt)]
    recip = dict(zip(RECIP_CORNERS, received[:len(RECIP_CORNERS)]))
    rsq = dict(zip(RSQRT_CORNERS, received[len(RECIP_CORNERS):]))
    # Stated from the mathematics and the documented choices, not from the golden model.
    assert all(recip[n] == rsq[n] == 0x7FC00000 for n in NANS)
    assert recip[0x00000000] == 0x7F800000 and recip[0x80000000] == 0xFF800000
    assert recip[0x00000001] == 0x7F800000 and recip[0x807FFFFF] == 0xFF800000
    assert recip[0x7F800000] == 0 and recip[0xFF800000] == 0x80000000
    assert recip[0x7E800000] == 0 and recip[0xFE800000] == 0x80000000
    assert recip[_f(1.0)] == _f(1.0) and recip[_f(2.0)] == _f(0.5) and recip[_f(-1.0)] == _f(-1.0)
    assert rsq[0x00000000] == 0x7F800000 and rsq[0x80000000] == 0xFF800000
    assert rsq[0x00000001] == 0x7F800000 and rsq[0x80000001] == 0x7FC00000
    assert rsq[0x7F800000] == 0 and rsq[0xFF800000] == 0x7FC00000
    assert rsq[_f(-1.0)] == rsq[_f(-4.0)] == 0x7FC00000
    assert rsq[_f(1.0)] == _f(1.0) and rsq[_f(4.0)] == _f(0.5) and rsq[_f(0.25)] == _f(2.0)

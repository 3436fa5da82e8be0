# amaranth: UnusedElaboratable=no
"""FPDiv and FP32ToInt in the Amaranth simulator: latency and throughput as documented, nothing
lost under backpressure, parameter errors, and corner cases whose expected results come from exact
rational arithmetic (``fractions``), not from NumPy. The bulk bit-exactness runs are in
cocotb_tests/test_fp_div_vectors.py (Verilator)."""

from fractions import Fraction

import numpy as np
import pytest

import sim.fp32 as golden
from rtl.fp import FP32ToInt, FPDiv
from tests.sim_streams import stream_through




# ---- Exact reference: a rational rounded to binary32 -------------------------------------------

def _f(x):
    return int(np.float32(x).view(np.uint32))


def value_of(bits):
    """The exact rational value of finite binary32 ``bits``."""
    sign = -1 if bits >> 31 else 1
    exponent, fraction = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    if exponent == 0:
        return sign * Fraction(fraction, 1 << 149)
    return sign * ((1 << 23) | fraction) * Fraction(2) ** (exponent - 150)


def nearest_float32(x, negative=False):
    """binary32 bits of rational ``x`` rounded to nearest, ties to even; ±∞ past the range."""
    sign = 0x80000000 if (x < 0 or (x == 0 and negative)) else 0
    x = abs(x)
    if x == 0:
        return sign
    exponent = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** exponent > x:
        exponent -= 1
    exponent = max(exponent, -126)              # below 2^-126: the subnormal grid
    scaled = x / Fraction(2) ** (exponent - 23)  # significand in units of the last place
    whole = scaled.numerator // scaled.denominator
    rest = scaled - whole
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole & 1):
        whole += 1
    if whole == 1 << 24:
        whole, exponent = 1 << 23, exponent + 1
    if exponent > 127:
        return sign | 0x7F800000
    field = exponent + 127 if whole >> 23 else 0
    return sign | field << 23 | (whole & 0x7FFFFF)


def exact_quotient(a, b):
    return nearest_float32(value_of(a) / value_of(b), negative=bool((a ^ b) >> 31))


# ---- FPDiv -----------------------------------------------------------------------------------

def _pair(a, b):
    return a | b << 32


def test_div_latency_and_interval():
    count = 6
    received, cycles = stream_through(FPDiv(), [_pair(_f(k + 1), _f(3.0)) for k in range(count)])
    assert cycles == [FPDiv.LATENCY + k * FPDiv.INTERVAL for k in range(count)]
    assert received == [exact_quotient(_f(k + 1), _f(3.0)) for k in range(count)]


def test_div_nothing_lost_under_backpressure():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 1 << 32, 40, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 1 << 32, 40, dtype=np.uint64).astype(np.uint32)
    received, _ = stream_through(FPDiv(), [_pair(int(x), int(y)) for x, y in zip(a, b)],
                                 idle=0.3, stall=0.6, seed=4)
    assert received == [int(v) for v in golden.div(a, b)]


NAN = 0x7FC00000
INF = 0x7F800000
MAX = 0x7F7FFFFF
TINY = 0x00000001          # 2^-149
MIN_NORMAL = 0x00800000


@pytest.mark.parametrize("a, b, expected", [
    (_f(1.0), 0x00000000, INF),                     # x / +0 = +∞
    (_f(-1.0), 0x00000000, 0xFF800000),             # −x / +0 = −∞
    (_f(1.0), 0x80000000, 0xFF800000),              # x / −0 = −∞
    (TINY, 0x80000000, 0xFF800000),                 # even a subnormal over zero
    (0x00000000, 0x00000000, NAN),                  # 0 / 0
    (0x80000000, 0x00000000, NAN),
    (INF, 0xFF800000, NAN),                         # ∞ / ∞
    (INF, 0x00000000, INF),                         # ∞ / 0 = ∞
    (0xFF800000, _f(2.0), 0xFF800000),              # −∞ / 2 = −∞
    (_f(1.0), INF, 0x00000000),                     # x / ∞ = 0
    (_f(-1.0), INF, 0x80000000),                    # −x / ∞ = −0
    (0x00000000, _f(-3.0), 0x80000000),             # 0 / −3 = −0
    (0x80000000, TINY, 0x80000000),
    (0x7F800001, _f(1.0), NAN),                     # a signalling NaN comes out canonical
    (_f(1.0), 0xFFC12345, NAN),
    (0x7FC00000, INF, NAN),
    (MAX, TINY, INF),                               # overflow to ∞
    (MAX, _f(0.5), INF),
    (0xFF7FFFFF, _f(0.5), 0xFF800000),
])
def test_div_specials(a, b, expected):
    received, _ = stream_through(FPDiv(), [_pair(a, b)])
    assert received[0] == expected


@pytest.mark.parametrize("a, b", [
    (_f(1.0), _f(3.0)),                    # 1/3: round up
    (_f(2.0), _f(3.0)),                    # 2/3: round down
    (_f(1.0), _f(127.0)),                  # the quantizer's 1/d for d = 1 ...
    (_f(127.0), _f(127.0)),                # ... and amax/127
    (_f(1.0), 0x3F800001),                 # 1 / (1 + 2^-23): just below 1
    (0x3F7FFFFF, 0x3F800001),              # the quotient's leading one one place down
    (0x3F800001, 0x3F7FFFFF),
    (MIN_NORMAL, _f(2.0)),                 # 2^-127, subnormal, exact
    (TINY, _f(2.0)),                       # 2^-150 ties to even: +0
    (0x00000003, _f(2.0)),                 # 1.5 · 2^-148 ties to even: 2 · 2^-149
    (0x00000003, _f(-2.0)),
    (TINY, _f(1.5)),                       # 2^-149 / 1.5 rounds up to 2^-149
    (TINY, _f(3.0)),                       # below half of 2^-149: 0
    (0x007FFFFF, 0x00000003),              # subnormal / subnormal
    (0x00000003, 0x007FFFFF),
    (0x00000001, 0x7F7FFFFF),              # far below the subnormals: 0
    (MIN_NORMAL, 0x3F800001),              # rounds up to 2^-126 from just below it
    (0x007FFFFF, 0x3F7FFFFF),              # the largest subnormal / (1 − 2^-24): normal?
    (MAX, 0x3F800001),                     # near overflow, stays finite
    (0x7F000000, 0x00800000),              # 2^127 / 2^-126 = ∞
    (_f(3.0), 0x3F000001),                 # just under 6
])
def test_div_rounding(a, b):
    received, _ = stream_through(FPDiv(), [_pair(a, b)])
    assert received[0] == exact_quotient(a, b)


def test_div_random_against_exact_arithmetic():
    # Independent of NumPy: 150 random pairs of finite values, half of them subnormal or near
    # the subnormal boundary.
    rng = np.random.default_rng(11)
    pairs = []
    for k in range(150):
        a = int(rng.integers(0, 0x7F800000)) | int(rng.integers(0, 2)) << 31
        b = int(rng.integers(1, 0x7F800000)) | int(rng.integers(0, 2)) << 31
        if k % 2:
            a = (a & 0x807FFFFF) | int(rng.integers(0, 8)) << 23
            b = (b & 0x807FFFFF) | int(rng.integers(120, 140)) << 23
        pairs.append((a, b))
    received, _ = stream_through(FPDiv(), [_pair(a, b) for a, b in pairs])
    assert received == [exact_quotient(a, b) for a, b in pairs]


# ---- FP32ToInt -------------------------------------------------------------------------------

@pytest.mark.parametrize("width, rounding", [(32, "away"), (8, "even")])
def test_to_int_latency_and_one_result_per_cycle(width, rounding):
    count = 12
    received, cycles = stream_through(FP32ToInt(width, rounding=rounding),
                                      [_f(k) for k in range(count)])
    assert cycles == list(range(FP32ToInt.LATENCY, FP32ToInt.LATENCY + count))
    assert received == list(range(count))


def test_to_int_nothing_lost_under_backpressure():
    rng = np.random.default_rng(8)
    values = (rng.standard_normal(200) * 1e3).astype(np.float32).view(np.uint32)
    received, _ = stream_through(FP32ToInt(16, rounding="even"), [int(v) for v in values],
                                 idle=0.3, stall=0.5, seed=9)
    expected = golden.fp32_to_int(values, 16, "even")
    assert received == [int(v) & 0xFFFF for v in expected]


def _signed(value, width):
    return value - (1 << width) if value >> (width - 1) else value


@pytest.mark.parametrize("x, width, away, even", [
    (0.5, 8, 1, 0), (-0.5, 8, -1, 0), (1.5, 8, 2, 2), (2.5, 8, 3, 2), (-2.5, 8, -3, -2),
    (0.49999997, 8, 0, 0), (0.50000006, 8, 1, 1), (-0.0, 8, 0, 0), (1e-45, 8, 0, 0),
    (126.5, 8, 127, 126), (127.49999, 8, 127, 127), (127.5, 8, 127, 127),   # 128 saturates
    (-127.5, 8, -128, -128), (-128.0, 8, -128, -128), (-128.5, 8, -128, -128),
    (-1e30, 8, -128, -128), (300.0, 8, 127, 127),
    (float("inf"), 8, 127, 127), (float("-inf"), 8, -128, -128), (float("nan"), 8, 0, 0),
    (2147483520.0, 32, 2147483520, 2147483520),        # the largest binary32 below 2^31
    (2147483648.0, 32, 2**31 - 1, 2**31 - 1), (-2147483648.0, 32, -2**31, -2**31),
    (8388609.0, 32, 8388609, 8388609), (4194304.5, 32, 4194305, 4194304),
    (1.5, 2, 1, 1), (-1.5, 2, -2, -2), (-2.5, 2, -2, -2),
])
def test_to_int_corner_cases(x, width, away, even):
    for rounding, expected in (("away", away), ("even", even)):
        received, _ = stream_through(FP32ToInt(width, rounding=rounding), [_f(x)])
        assert _signed(received[0], width) == expected, (x, width, rounding)
        assert golden.fp32_to_int(np.array([_f(x)], dtype=np.uint32), width,
                                  rounding)[0] == expected


def test_to_int_parameter_errors():
    with pytest.raises(TypeError, match=r"^Integer width must be an integer from 2 to 32, "
                                        r"not 8\.0$"):
        FP32ToInt(8.0)
    with pytest.raises(ValueError, match=r"^Integer width must be an integer from 2 to 32, "
                                         r"not 33$"):
        FP32ToInt(33)
    with pytest.raises(ValueError, match=r"^Rounding must be one of away, even, not 'up'$"):
        FP32ToInt(8, rounding="up")
    unit = FP32ToInt(12, rounding="even")
    assert (unit.width, unit.rounding) == (12, "even")

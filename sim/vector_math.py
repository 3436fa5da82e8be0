"""Golden model of the vector unit's special functions (rtl/fp/exp.py, rtl/fp/recip.py): exp, reciprocal and
reciprocal square root as fixed sequences of binary32 operations and exponent manipulation
(SPEC §2, docs/vector.md), and the constants of the erfc sequence of the erf-form GELU.

Every ``+`` and ``·`` below is one binary32 operation rounded to nearest even, exactly as
:mod:`sim.fp32` (NumPy float32) computes it, so the RTL, which performs the same operations in
the same order on the units of ``rtl/fp/``, agrees on every bit. The sequences are written here
from the mathematics, separately from the RTL; the tests compare the two.

The error of each function against float64 is measured by ``tessera bench vector`` and
``tests/test_vector.py`` and stated in docs/vector.md.

All functions take and return raw binary32 bits (uint32 arrays).
"""

import math

import numpy as np

from . import fp32


__all__ = ["EXP_COEFFICIENTS", "RECIP_SEEDS", "RSQRT_SEEDS", "exp", "recip", "rsqrt",
           "ulp", "ulp_error", "ERFC_SCALE", "ERFC_OFFSET", "ERFC_C", "ERFC_M", "fit_erfc"]


def _f(x):
    return int(np.float32(x).view(np.uint32))


#: Constants of exp as binary32 bits.
LOG2E = _f(1.4426950408889634)          # 1/ln 2
ROUNDER = _f(12582912.0)                # 1.5 · 2^23: x + it − it rounds x to an integer
LN2_HIGH = _f(0.693359375)              # ln 2 to 11 bits: k · it is exact for |k| < 2^13
LN2_LOW = _f(np.log(2) - 0.693359375)   # the rest of ln 2
EXP_LOW = _f(-104.0)                    # below it exp underflows to +0
EXP_HIGH = _f(89.0)                     # above it exp overflows to +∞
ONE = _f(1.0)
HALF = _f(0.5)

#: P(r) ≈ (e^r − 1 − r)/r² on |r| ≤ ln2/2, highest degree first: a least-squares fit on
#: Chebyshev nodes (weighted by r²/e^r, the weight of its error in the result), rounded to
#: binary32 (docs/vector.md says how).
EXP_COEFFICIENTS = (0x394FE556, 0x3AB6CB14, 0x3C0888F0, 0x3D2AAA40, 0x3E2AAAAA, 0x3F000000)


def _seed_table(function, entries):
    """binary32 bits (exponent field 126, value in [0.5, 1)) of ``function`` at the midpoint of
    each of ``entries`` equal intervals; ``function`` maps the interval index to the value."""
    values = np.array([function(i) for i in range(entries)], dtype=np.float64)
    table = values.astype(np.float32)
    assert np.all((table >= 0.5) & (table < 1.0))
    return tuple(int(v) for v in table.view(np.uint32))


#: 1/m for m = 1 + (i + ½)/128: the reciprocal's seed, indexed by the top 7 fraction bits.
RECIP_SEEDS = _seed_table(lambda i: 1.0 / (1.0 + (i + 0.5) / 128), 128)

#: 1/√m for m = (1 + (j + ½)/64) · 2^odd, indexed by odd·64 + j (the exponent's parity and the
#: top 6 fraction bits).
RSQRT_SEEDS = _seed_table(lambda i: 1.0 / np.sqrt((1.0 + ((i % 64) + 0.5) / 64) * 2 ** (i // 64)),
                          128)


def _u32(x):
    return np.asarray(x, dtype=np.uint32)


def _const(value, like):
    return np.full(np.shape(like), value, dtype=np.uint32)


def _fields(x):
    x = _u32(x)
    return x >> 31, (x >> 23) & 0xFF, x & 0x7FFFFF


def _power_of_two(k):
    """binary32 bits of 2^k for integers −126 ≤ k ≤ 127 (exponent manipulation, exact)."""
    return ((np.asarray(k, dtype=np.int64) + 127) << 23).astype(np.uint32)


def exp(x):
    """e^x: range reduction x = k·ln2 + r with |r| ≤ ln2/2 (Cody and Waite's two-part ln 2),
    e^r = 1 + r + r²·P(r) by Horner's rule, and the scaling by 2^k as two exact powers of two
    so that a result below 2^-126 is rounded once, as a subnormal.

    In binary32 operations (+, · rounded to nearest even)::

        c  = min(max(x, −104), 89)          (exact; NaN stays NaN)
        t  = c · log2(e)
        kf = (t + 1.5·2^23) − 1.5·2^23      (an integer k, rounded to nearest even)
        r  = (c − kf · ln2_high) − kf · ln2_low
        y  = ((((P0 · r + P1) · r + P2) · r + P3) · r + P4) · r + P5
        y  = ((y · (r · r)) + r) + 1
        e^x = (y · 2^⌊k/2⌋) · 2^(k − ⌊k/2⌋)

    NaN gives the canonical NaN; −∞ gives +0 and +∞ gives +∞ through the clamp.
    """
    x = _u32(x)
    sign, exponent, fraction = _fields(x)
    nan = (exponent == 0xFF) & (fraction != 0)
    xf = fp32.floats(x)
    clamped = fp32.bits(np.minimum(np.maximum(xf, fp32.floats(_const(EXP_LOW, x))),
                                   fp32.floats(_const(EXP_HIGH, x))))
    t = fp32.mul(clamped, _const(LOG2E, x))
    shifted = fp32.add(t, _const(ROUNDER, x))
    kf = fp32.add(shifted, _const(ROUNDER | 0x80000000, x))
    # The integer k sits in the low fraction bits of shifted (1.5 · 2^23 + k, exponent 23).
    k = (shifted.astype(np.int64) - ROUNDER)
    r = fp32.add(clamped, fp32.mul(kf, _const(LN2_HIGH, x)) ^ np.uint32(0x80000000))
    r = fp32.add(r, fp32.mul(kf, _const(LN2_LOW, x)) ^ np.uint32(0x80000000))
    y = _const(EXP_COEFFICIENTS[0], x)
    for c in EXP_COEFFICIENTS[1:]:
        y = fp32.add(fp32.mul(y, r), _const(c, x))
    y = fp32.add(fp32.add(fp32.mul(y, fp32.mul(r, r)), r), _const(ONE, x))
    half = k >> 1
    y = fp32.mul(fp32.mul(y, _power_of_two(half)), _power_of_two(k - half))
    return np.where(nan, fp32.CANONICAL_NAN32, y).astype(np.uint32)


def _newton_recip(x, y):
    """One Newton step for 1/x from y: y + y·(1 − x·y)."""
    e = fp32.add(_const(ONE, x), fp32.mul(x, y) ^ np.uint32(0x80000000))
    return fp32.add(y, fp32.mul(y, e))


def recip(x):
    """1/x: a seed from a 128-entry table on the top 7 fraction bits with the exponent negated,
    then two Newton steps y ← y + y·(1 − x·y).

    Special cases, decided from the operand's fields: ±0 and subnormals give ±∞ (1/x of a
    subnormal x is above 2^126; the choice is documented); |x| ≥ 2^126 gives ±0 (the
    reciprocal is subnormal, or at exactly 2^126 the smallest normal, 2^-126); ±∞ gives ±0;
    NaN gives the canonical NaN.
    """
    x = _u32(x)
    sign, exponent, fraction = _fields(x)
    seed_fraction = np.asarray(RECIP_SEEDS, dtype=np.uint32)[fraction >> 16] & 0x7FFFFF
    field = np.clip(253 - exponent.astype(np.int64), 1, 254).astype(np.uint32)
    y = (sign << 31) | (field << 23) | seed_fraction
    for _ in range(2):
        y = _newton_recip(x, y)
    infinite = exponent == 0
    zero = (exponent >= 253) & ~((exponent == 0xFF) & (fraction != 0))
    nan = (exponent == 0xFF) & (fraction != 0)
    y = np.where(infinite, (sign << 31) | np.uint32(0x7F800000), y)
    y = np.where(zero, sign << 31, y)
    return np.where(nan, fp32.CANONICAL_NAN32, y).astype(np.uint32)


def _newton_rsqrt(x, y):
    """One Newton step for 1/√x from y: y + (y·(1 − (x·y)·y))·½."""
    e = fp32.add(_const(ONE, x), fp32.mul(fp32.mul(x, y), y) ^ np.uint32(0x80000000))
    return fp32.add(y, fp32.mul(fp32.mul(y, e), _const(HALF, x)))


def rsqrt(x):
    """1/√x: a seed from a 128-entry table on the exponent's parity and the top 6 fraction bits
    with the exponent halved and negated, then two Newton steps y ← y + (y·(1 − (x·y)·y))·½.

    Special cases: +0 and positive subnormals give +∞ (documented choice), −0 gives −∞ (IEEE),
    +∞ gives +0, negative numbers and NaN give the canonical NaN.
    """
    x = _u32(x)
    sign, exponent, fraction = _fields(x)
    unbiased = exponent.astype(np.int64) - 127
    odd = unbiased & 1
    index = (odd << 6) | (fraction >> 17)
    seed_fraction = np.asarray(RSQRT_SEEDS, dtype=np.uint32)[index] & 0x7FFFFF
    field = np.clip(126 - (unbiased >> 1), 1, 254).astype(np.uint32)
    y = (field << 23) | seed_fraction
    for _ in range(2):
        y = _newton_rsqrt(x, y)
    nan = ((exponent == 0xFF) & (fraction != 0)) | ((sign == 1) & ~((exponent == 0)
                                                                      & (fraction == 0)))
    y = np.where(exponent == 0, (sign << 31) | np.uint32(0x7F800000), y)
    y = np.where((exponent == 0xFF) & (sign == 0), np.uint32(0), y)
    return np.where(nan, fp32.CANONICAL_NAN32, y).astype(np.uint32)


def ulp(reference):
    """The unit in the last place of binary32 at float64 values ``reference`` (2^-149 for a
    subnormal)."""
    magnitude = np.abs(np.asarray(reference, dtype=np.float64))
    exponent = np.floor(np.log2(np.maximum(magnitude, 2.0 ** -126)))
    return 2.0 ** (np.maximum(exponent, -126) - 23)


def ulp_error(result, reference):
    """|result − reference| in units in the last place of binary32 at ``reference`` (float64
    values; the ulp of a subnormal is 2^-149)."""
    reference = np.asarray(reference, dtype=np.float64)
    value = fp32.floats(result).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return np.abs(value - reference) / ulp(reference)


# ---- erfc for the erf form of GELU ------------------------------------------------------------
#
# erfc(y) for y = |x|/√2 ≥ 0 is written, with s = 1/(y + 2) = 1/(|x|·(1/√2) + 2) ∈ (0, ½], as
#
#     erfc(y) = s · exp(−y² + Q(s)),    Q(s) = c · M(s),
#     M(s) = s¹¹ + m9·s⁹ + m8·s⁸ + … + m0      (no s¹⁰ term),
#
# the form of Numerical Recipes' erfcc (the factor s carries the 1/y decay of erfc·e^{y²}, so Q
# is smooth). M is monic without an s¹⁰ term because the vector unit's POLY pass evaluates two
# Horner steps p ← (p·s + k1)·s + k2 starting from p = s. So the sequence, each + and · one
# binary32 operation (the vector unit's passes RECIP_ABS, POLY ×5, GAUSS, MUL; sim/vector.py's
# gelu_erf), is
#
#     s = recip(|x| · ERFC_SCALE + ERFC_OFFSET)
#     p = s;  p = (p·s + m9)·s + m8;  p = (p·s + m7)·s + m6;  …  p = (p·s + m1)·s + m0
#     e = exp((p · ERFC_C + x·x) · −½)            ERFC_C = −2c
#     erfc(|x|/√2) ≈ e · s


def fit_erfc(points=4000, x_max=14.5):
    """The constants of the erfc sequence above: a least-squares fit of Q on ``points``
    Chebyshev nodes of s over |x| ≤ ``x_max`` (beyond it exp(−x²/2) underflows), in float64,
    then rounded to binary32. Returns ``(c_bits, m_bits)``: the bits of ERFC_C and of m9 … m0."""
    scale = float(fp32.floats(np.uint32(ERFC_SCALE)))
    offset = float(fp32.floats(np.uint32(ERFC_OFFSET)))
    slope = scale * math.sqrt(2.0)           # s = 1/(slope·y + offset)
    low, high = 1.0 / (slope * x_max / math.sqrt(2.0) + offset), 1.0 / offset
    s = (low + high) / 2 + (high - low) / 2 * np.cos(np.linspace(0.0, np.pi, points))
    y = (1.0 / s - offset) / slope
    target = np.array([math.log(math.erfc(v)) + v * v for v in y]) - np.log(s)
    powers = [11] + list(range(9, -1, -1))
    basis = np.stack([s ** k for k in powers], axis=1)
    coefficients = np.linalg.lstsq(basis, target, rcond=None)[0]
    c = coefficients[0]
    c_bits = int(np.float32(-2.0 * c).view(np.uint32))
    m_bits = tuple(int(np.float32(m / c).view(np.uint32)) for m in coefficients[1:])
    return c_bits, m_bits


#: s = recip(|x| · ERFC_SCALE + ERFC_OFFSET): 1/√2 and 2.
ERFC_SCALE = 0x3F3504F3
ERFC_OFFSET = 0x40000000
#: −2c and m9 … m0 as binary32 bits, from :func:`fit_erfc` (tests/test_vector.py checks that the
#: fit still gives them).
ERFC_C = 0x42B73768
ERFC_M = (0xC0CD4105, 0x413F282B, 0xC11EE9D2, 0x40892FB3, 0xBF80336C, 0x3E632A12, 0xBD15742E,
          0xBCFF4BBF, 0xBD331DC7, 0x3C4CC0A4)

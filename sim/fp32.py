"""Golden model of the binary32 units (rtl/fp/): NumPy float32, with the choices SPEC §2 leaves to
us written down once (docs/fp.md).

- Subnormals are supported in full, inputs and results, exactly as NumPy computes them; nothing
  flushes to zero.
- Every NaN result is the canonical quiet NaN (0x7FC00000, binary16 0x7E00): NumPy's payload
  depends on which operand the compiler put first.
- ``maximum`` is IEEE 754-2019 maximum: NaN-propagating and +0 above −0 (NumPy's
  ``np.maximum`` leaves the sign of a zero result to the operand order).

All functions take and return raw bits (uint32, or uint16 for binary16) as NumPy arrays.
"""

import numpy as np


__all__ = ["CANONICAL_NAN32", "CANONICAL_NAN16", "add", "mul", "fp16_to_fp32", "fp32_to_fp16",
           "int32_to_fp32", "compare", "bits", "floats", "div", "round_half_away", "fp32_to_int"]


CANONICAL_NAN32 = np.uint32(0x7FC00000)
CANONICAL_NAN16 = np.uint16(0x7E00)


def floats(raw):
    """binary32 view of uint32 bits."""
    return np.asarray(raw, dtype=np.uint32).view(np.float32)


def bits(values):
    """uint32 bits of float32 values, every NaN made canonical."""
    values = np.asarray(values, dtype=np.float32)
    return np.where(np.isnan(values), CANONICAL_NAN32, values.view(np.uint32)).astype(np.uint32)


def add(a, b):
    with np.errstate(all="ignore"):
        return bits(floats(a) + floats(b))


def mul(a, b):
    with np.errstate(all="ignore"):
        return bits(floats(a) * floats(b))


def fp16_to_fp32(h):
    return bits(np.asarray(h, dtype=np.uint16).view(np.float16).astype(np.float32))


def fp32_to_fp16(a):
    with np.errstate(all="ignore"):
        half = floats(a).astype(np.float16)
    return np.where(np.isnan(half), CANONICAL_NAN16, half.view(np.uint16)).astype(np.uint16)


def int32_to_fp32(v):
    return bits(np.asarray(v, dtype=np.int32).astype(np.float32))


def compare(a, b):
    """(maximum bits, a < b, a == b, unordered) of binary32 bits ``a`` and ``b``."""
    x, y = floats(a), floats(b)
    unordered = np.isnan(x) | np.isnan(y)
    both_zero = (x == 0) & (y == 0)
    with np.errstate(all="ignore"):
        larger = bits(np.maximum(x, y))
    # ±0: +0 unless both are −0, whatever the order.
    zero = np.where(np.signbit(x) & np.signbit(y), np.uint32(0x80000000), np.uint32(0))
    maximum = np.where(unordered, CANONICAL_NAN32, np.where(both_zero, zero, larger))
    return maximum.astype(np.uint32), x < y, x == y, unordered


# ---- Division and conversion to integers (rtl/fp/div.py, rtl/fp/fp32_to_int.py) ---------------

def div(a, b):
    """Bits of ``a / b`` in float32 (IEEE 754: x/0 = ±∞, 0/0 and ∞/∞ the canonical NaN)."""
    with np.errstate(all="ignore"):
        return bits(floats(a) / floats(b))


def round_half_away(x):
    """float32 round half away from zero, as ``gguf.quants.np_roundf`` states it: the integer
    part plus one when the fraction is at least one half (every step is exact in float32)."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(all="ignore"):
        magnitude = np.abs(x)
        whole = np.floor(magnitude)
        rounded = whole + (magnitude - whole >= np.float32(0.5)).astype(np.float32)
    return np.copysign(rounded, x)


def fp32_to_int(a, width=32, rounding="away"):
    """Signed ``width``-bit integers (int64 array) from binary32 bits ``a``: rounded half away
    from zero (``rounding="away"``) or half to even (``"even"``), saturated to the range of
    the width, NaN → 0 (the semantics of Arm's FCVTAS/FCVTNS)."""
    x = floats(a)
    with np.errstate(all="ignore"):
        rounded = round_half_away(x) if rounding == "away" else np.rint(x)
        low, high = -(1 << (width - 1)), (1 << (width - 1)) - 1
        clipped = np.clip(np.nan_to_num(rounded.astype(np.float64), nan=0.0), low, high)
    return clipped.astype(np.int64)

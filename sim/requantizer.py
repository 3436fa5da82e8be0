"""Reference model of the integer requantizer, written from the definitions it implements, not
from the RTL (docs/requantizer.md).

Two roundings:

``GEMMLOWP``
    TFLite's ``MultiplyByQuantizedMultiplier(x, multiplier, shift)`` followed by the output
    offset, transcribed from gemmlowp's fixedpoint.h definitions:
    ``SaturatingRoundingDoublingHighMul`` (the int64 product plus a nudge of ±2^30, divided by
    2^31 truncating toward zero as C++ does; −2^31 · −2^31 saturates to INT32_MAX) and
    ``RoundingDivideByPOT`` (mask, remainder, threshold). Positive TFLite shifts become
    ``left_shift``, negative ones ``right_shift``.
``HALF_EVEN``
    What ``onnx.reference``'s QLinearMatMul computes for a float32 scale, done exactly:
    ``y = round_half_even(x · multiplier / 2^right_shift + zero_point)``, the zero point added
    before the rounding; :func:`onnx_multiplier` turns the float32 scale into that
    ``(multiplier, right_shift)`` pair with no rounding at all.

Both then saturate to int8 or uint8. Everything is vectorised over NumPy arrays (configuration
fields broadcast against the accumulators) in int64/uint64, where every intermediate is exact.
"""

import math

import numpy as np


__all__ = ["GEMMLOWP", "HALF_EVEN", "INT8", "UINT8", "RANGES", "INT32_MIN", "INT32_MAX",
           "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
           "multiply_by_quantized_multiplier", "quantize_multiplier", "requantize",
           "onnx_scale", "onnx_multiplier", "onnx_exact", "EXACT_SHIFT", "onnx_qlinear_matmul"]


#: ``rounding`` codes (as the RTL's ``Rounding``).
GEMMLOWP, HALF_EVEN = 0, 1
#: ``output`` codes (as the RTL's ``Output``).
INT8, UINT8 = 0, 1
#: Saturation range of each output code.
RANGES = {INT8: (-128, 127), UINT8: (0, 255)}

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

#: For a scale whose exact form ``multiplier · 2^-right_shift`` has ``right_shift`` at most
#: this, onnx.reference's float64 arithmetic is exact wherever the result is not saturated, so
#: it equals :func:`requantize` for every int32 accumulator (docs/requantizer.md).
EXACT_SHIFT = 45


def _i64(x):
    return np.asarray(x, dtype=np.int64)


def _wrap32(v):
    """Two's-complement wrap of int64 values to int32."""
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` of int32 values (as int64 arrays)."""
    a, b = _i64(a), _i64(b)
    overflow = (a == b) & (a == INT32_MIN)
    ab = a * b                                     # |ab| ≤ 2^62: exact in int64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    t = ab + nudge
    # C++ `/` truncates toward zero; `//` floors.
    high = np.where(t >= 0, t // (1 << 31), -((-t) // (1 << 31)))
    return np.where(overflow, INT32_MAX, high)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero.
    ``exponent`` 0–63 (gemmlowp allows 0–31; the formula goes on the same way)."""
    x, exponent = _i64(x), _i64(exponent)
    e = exponent.astype(np.uint64)
    mask = (np.uint64(1) << e) - np.uint64(1)
    remainder = x.astype(np.uint64) & mask          # two's complement bits, as `x & mask`
    threshold = (mask >> np.uint64(1)) + (x < 0).astype(np.uint64)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, multiplier, shift):
    """TFLite ``MultiplyByQuantizedMultiplier`` (double rounding): ``shift`` > 0 shifts left
    before the multiply (wrapping in 32 bits), < 0 divides after it."""
    x, shift = _i64(x), _i64(shift)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(_wrap32(x << left), multiplier), right)


def quantize_multiplier(real):
    """TFLite ``QuantizeMultiplier``: ``real ≈ multiplier · 2^(shift − 31)`` with the multiplier
    in [2^30, 2^31) (or 0), the significand rounded half away from zero as ``std::round``."""
    real = float(real)
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)              # real = fraction · 2^shift, |fraction| ∈ [½, 1)
    scaled = abs(fraction) * (1 << 31)
    q = int(math.floor(scaled + 0.5))               # exact: scaled has at most 53 bits
    q = q if fraction > 0 else -q
    if abs(q) == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (INT32_MAX if q > 0 else INT32_MIN), 30
    return q, shift


def requantize(acc, *, multiplier, left_shift=0, right_shift=0, zero_point=0,
               rounding=GEMMLOWP, output=INT8):
    """The requantizer on int32 accumulators ``acc``; every keyword broadcasts against it.

    Returns ``(values, saturated)``: the results as int64 in the output range, and whether each
    was out of range before saturation.
    """
    acc = _i64(acc)
    multiplier, left_shift, right_shift = _i64(multiplier), _i64(left_shift), _i64(right_shift)
    zero_point, rounding, output = _i64(zero_point), _i64(rounding), _i64(output)
    x = _wrap32(acc << left_shift)

    # GEMMLOWP: TFLite's multiply, then the output offset (added in int64, so never wrapping).
    gemmlowp = rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, multiplier),
                                      right_shift) + zero_point

    # HALF_EVEN: P / 2^n + zp to nearest, ties to the even result. The fraction of P / 2^n is
    # that of P / 2^n + zp, so the remainder decides, and the tie looks at the parity after zp.
    product = x * multiplier
    quotient = product >> right_shift                                     # floor
    n = right_shift.astype(np.uint64)
    remainder = product.astype(np.uint64) & ((np.uint64(1) << n) - np.uint64(1))
    half = np.uint64(1) << (np.maximum(n, np.uint64(1)) - np.uint64(1))  # unused when n = 0
    base = quotient + zero_point
    up = (right_shift > 0) & ((remainder > half) | ((remainder == half) & (base % 2 == 1)))
    half_even = base + up

    value = np.where(rounding == HALF_EVEN, half_even, gemmlowp)
    low = np.where(output == UINT8, 0, -128)
    high = np.where(output == UINT8, 255, 127)
    saturated = (value < low) | (value > high)
    return np.clip(value, low, high), saturated


def onnx_scale(a_scale, b_scale, y_scale):
    """The float32 scale onnx.reference's QLinearMatMul multiplies by: ``a_scale · b_scale /
    y_scale`` with both operations rounded to float32 (its operands are float32 arrays)."""
    a, b, y = (np.asarray(v, dtype=np.float32) for v in (a_scale, b_scale, y_scale))
    return (a * b) / y


def onnx_multiplier(scale):
    """``(multiplier, right_shift)`` int64 arrays with ``multiplier · 2^-right_shift`` exactly
    the float32 ``scale`` (any shape), for the ``HALF_EVEN`` rounding:

    * ``scale = m · 2^e`` with ``m`` odd (``|m|`` < 2^24, a float32's significand); ``e < 0``
      gives ``(m, −e)``, and ``right_shift`` ≤ 55 whenever ``|scale|`` ≥ 2^-32;
    * ``|scale|`` < 2^-32 gives ``(0, 0)``: ``|acc · scale|`` < ½ for every int32, so the result
      is the zero point, which a zero multiplier gives too;
    * ``e ≥ 0`` gives ``(m · 2^e, 0)`` while that fits an int32, else ``(±2^30, 0)``: with
      ``|scale|`` ≥ 2^31 every non-zero accumulator saturates, and so does ``±2^30 · acc``.

    A NaN or infinite scale raises :class:`ValueError`.
    """
    s = np.asarray(scale, dtype=np.float32)
    if not np.all(np.isfinite(s)):
        raise ValueError("Requantizer scale must be finite")
    fraction, exponent = np.frexp(s.astype(np.float64))
    m = (fraction * (1 << 24)).astype(np.int64)          # exact: 24 significant bits at most
    e = exponent.astype(np.int64) - 24
    for _ in range(24):                                  # strip trailing zeros: m odd
        even = (m != 0) & (m % 2 == 0)
        m = np.where(even, m // 2, m)
        e = np.where(even, e + 1, e)
    tiny = np.abs(s.astype(np.float64)) < 2.0 ** -32
    integral = m * (np.int64(1) << np.clip(e, 0, 40))
    fits = (e >= 0) & (e <= 40) & (np.abs(integral) < (1 << 31))
    big = np.where(m < 0, -(1 << 30), 1 << 30)
    multiplier = np.where(tiny, 0, np.where(e < 0, m, np.where(fits, integral, big)))
    right_shift = np.where(tiny | (e >= 0), 0, -e)
    return multiplier.astype(np.int64), right_shift.astype(np.int64)


def onnx_exact(acc, multiplier, right_shift, zero_point):
    """Where onnx.reference's QLinearMatMul provably equals :func:`requantize` (``HALF_EVEN``,
    ``left_shift`` 0, a pair from :func:`onnx_multiplier`, a zero point of the output type).

    The reference computes ``rint(float64(float64(acc) · scale) + zero_point)``; both float64
    operations are exact when ``|acc · multiplier|`` ≤ 2^53 and
    ``|acc · multiplier + zero_point · 2^right_shift|`` ≤ 2^53. That always holds outside
    saturation for ``right_shift`` ≤ :data:`EXACT_SHIFT`, and saturation agrees anyway (both
    roundings are monotonic and the limits ± ½ are float64 numbers). Returns a bool array.
    """
    acc, multiplier, right_shift, zero_point = np.broadcast_arrays(
        _i64(acc), _i64(multiplier), _i64(right_shift), _i64(zero_point))
    product = acc.astype(object) * multiplier.astype(object)
    total = product + zero_point.astype(object) * (np.ones_like(right_shift, dtype=object)
                                                   << right_shift.astype(object))
    limit = 1 << 53
    exact = (np.abs(product) <= limit) & (np.abs(total) <= limit)
    return (right_shift <= EXACT_SHIFT) | exact.astype(bool)


_ONNX_TYPES = {np.dtype(np.int8): "INT8", np.dtype(np.uint8): "UINT8", np.dtype(np.int32): "INT32",
               np.dtype(np.float32): "FLOAT"}


def onnx_qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale,
                        y_zero_point, *, check=True):
    """Run one QLinearMatMul (opset 21) through ``onnx.reference.ReferenceEvaluator``.

    The arguments are NumPy arrays of the ONNX types (scales float32; ``b_scale`` and
    ``y_zero_point`` may be per-column 1-D arrays). With ``check`` the model passes
    ``onnx.checker``; without it ``a`` may be int32, which the evaluator does not refuse: with
    ``b`` the int8 identity the reference then applies its own requantization to arbitrary int32
    accumulators ``a``.
    """
    from onnx import TensorProto, checker, helper
    from onnx.reference import ReferenceEvaluator

    names = ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale",
             "y_zero_point"]
    values = [np.asarray(v) for v in (a, a_scale, a_zero_point, b, b_scale, b_zero_point,
                                      y_scale, y_zero_point)]
    inputs = [helper.make_tensor_value_info(name, getattr(TensorProto, _ONNX_TYPES[v.dtype]),
                                            list(v.shape)) for name, v in zip(names, values)]
    y_type = getattr(TensorProto, _ONNX_TYPES[values[-1].dtype])
    shape = [values[0].shape[0], values[3].shape[1]]
    node = helper.make_node("QLinearMatMul", names, ["y"])
    graph = helper.make_graph([node], "requantize", inputs,
                              [helper.make_tensor_value_info("y", y_type, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    if check:
        checker.check_model(model, full_check=True)
    (y,) = ReferenceEvaluator(model).run(None, dict(zip(names, values)))
    return y

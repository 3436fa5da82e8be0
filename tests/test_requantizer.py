# amaranth: UnusedElaboratable=no
"""Requantizer: parameter errors; the reference model against onnx.reference's QLinearMatMul and
against exact rational evaluations of the gemmlowp/TFLite definitions; the RTL in the Amaranth
simulator (configuration changing with every beat, backpressure, the saturation counter). The
10⁵-accumulator runs under Verilator are in cocotb_tests/test_requantizer.py."""

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from amaranth.sim import Simulator

import sim.requantizer as golden
from rtl.tiles.requantizer import Output, Requantizer, Rounding


# ---- parameters --------------------------------------------------------------------------

def test_lanes_must_be_positive():
    with pytest.raises(ValueError, match=r"^Requantizer lanes must be a positive integer, not 0$"):
        Requantizer(0)


@pytest.mark.parametrize("lanes", [1.5, True, "2"])
def test_lanes_must_be_integer(lanes):
    with pytest.raises(TypeError,
                       match=rf"^Requantizer lanes must be a positive integer, not {lanes!r}$"):
        Requantizer(lanes)


def test_counter_width_must_be_positive():
    with pytest.raises(ValueError,
                       match=r"^Requantizer counter width must be a positive integer, not 0$"):
        Requantizer(counter_width=0)
    with pytest.raises(TypeError,
                       match=r"^Requantizer counter width must be a positive integer, not 8.0$"):
        Requantizer(counter_width=8.0)


def test_properties_are_read_only():
    dut = Requantizer(3, counter_width=12)
    assert (dut.lanes, dut.counter_width) == (3, 12)
    assert len(dut.i.payload) == 96 and len(dut.o.payload) == 24 and len(dut.saturated) == 12
    with pytest.raises(AttributeError):
        dut.lanes = 2


# ---- the reference model: gemmlowp / TFLite ---------------------------------------------

def test_gemmlowp_primitives_pinned():
    srdhm = golden.saturating_rounding_doubling_high_mul
    rdbpot = golden.rounding_divide_by_pot
    # The one overflow saturates; otherwise the nudge makes ties go up (−0.5 → 0, −1.5 → −1).
    assert srdhm(golden.INT32_MIN, golden.INT32_MIN) == golden.INT32_MAX
    assert srdhm(1 << 30, 1 << 30) == 1 << 29
    assert [int(srdhm(x, 1 << 30)) for x in (1, -1, 3, -3)] == [1, 0, 2, -1]
    # Rounding division: ties away from zero.
    assert [int(rdbpot(x, e)) for x, e in [(5, 1), (-5, 1), (6, 2), (-6, 2), (-2, 2), (7, 0),
                                           (-1, 31), (golden.INT32_MIN, 31), (-3, 63)]] == \
        [3, -3, 2, -2, -1, 7, 0, -1, 0]


def _c_division(numerator, denominator):
    """C++ integer division: the quotient truncated toward zero."""
    q = abs(numerator) // abs(denominator)
    return q if (numerator >= 0) == (denominator > 0) else -q


def _gemmlowp_exact(acc, multiplier, left, right, zero_point):
    """The gemmlowp/TFLite definition in Python integers and fractions, one value at a time."""
    x = ((acc << left) + (1 << 31)) % (1 << 32) - (1 << 31)
    if x == multiplier == golden.INT32_MIN:
        high = golden.INT32_MAX
    else:
        product = x * multiplier
        high = _c_division(product + ((1 << 30) if product >= 0 else 1 - (1 << 30)), 1 << 31)
    quotient = Fraction(high, 1 << right)
    # Nearest, ties away from zero.
    rounded = math.floor(abs(quotient) + Fraction(1, 2))
    return (rounded if quotient >= 0 else -rounded) + zero_point


def _random_configs(rng, n):
    """Accumulators and GEMMLOWP configurations: TFLite-like multipliers from real scales, any
    int32 multipliers, sparse multipliers (exact ties in both roundings), extreme values."""
    acc = (rng.integers(-2**31, 2**31, n) >> rng.integers(0, 32, n)).astype(np.int64)
    multiplier = np.empty(n, dtype=np.int64)
    left = np.zeros(n, dtype=np.int64)
    right = np.zeros(n, dtype=np.int64)
    for k in range(n):
        kind = k % 4
        if kind == 0:
            m, shift = golden.quantize_multiplier(2.0 ** rng.uniform(-24, 6))
            multiplier[k], left[k], right[k] = m, max(shift, 0), max(-shift, 0)
        elif kind == 1:
            multiplier[k] = rng.integers(-2**31, 2**31)
            left[k], right[k] = rng.integers(0, 32), rng.integers(0, 64)
        else:
            # 1–3 set bits, the lowest at `low`, and an accumulator that puts the product's
            # lowest set bit at 30 (a tie in the first rounding, kind 2) or at 30 + right (an
            # exact first rounding, then a tie in the second, kind 3).
            bits = rng.integers(20, 31, rng.integers(1, 4))
            multiplier[k] = int(sum(1 << int(b) for b in set(bits.tolist())))
            low = int(bits.min())
            right[k] = rng.integers(0, 20) if kind == 2 else rng.integers(1, low + 1)
            position = 30 - low + (int(right[k]) if kind == 3 else 0)
            odd = 2 * int(rng.integers(-(1 << (30 - position)), 1 << (30 - position))) + 1
            acc[k] = odd << position
    # −2^31 · −2^31 saturates in the high multiply; with right shift 32 that shows.
    acc[:8] = [golden.INT32_MIN, golden.INT32_MAX, 0, golden.INT32_MIN, 1, golden.INT32_MIN,
               -2**30, 2**30]
    multiplier[:8] = [golden.INT32_MIN, golden.INT32_MAX, 1 << 30, golden.INT32_MIN,
                      golden.INT32_MIN, golden.INT32_MAX, 1 << 30, -(1 << 30)]
    right[:8] = [0, 0, 5, 32, 31, 63, 1, 2]
    return acc, multiplier, left, right


def test_gemmlowp_model_equals_the_definition():
    rng = np.random.default_rng(1)
    n = 4000
    acc, multiplier, left, right = _random_configs(rng, n)
    zero_point = rng.integers(-128, 128, n)
    got, saturated = golden.requantize(acc, multiplier=multiplier, left_shift=left,
                                       right_shift=right, zero_point=zero_point,
                                       rounding=golden.GEMMLOWP, output=golden.INT8)
    ties = second_ties = 0
    for k in range(n):
        exact = _gemmlowp_exact(int(acc[k]), int(multiplier[k]), int(left[k]), int(right[k]),
                                int(zero_point[k]))
        assert got[k] == min(max(exact, -128), 127), k
        assert saturated[k] == (not -128 <= exact <= 127), k
        x = ((int(acc[k]) << int(left[k])) + 2**31) % 2**32 - 2**31
        product = x * int(multiplier[k])
        ties += product % (1 << 31) == 1 << 30
        r = int(right[k])
        second_ties += r > 0 and product % (1 << (31 + r)) == 1 << (30 + r) \
            and product % (1 << 31) == 0
    assert ties > 500 and second_ties > 500, (ties, second_ties)


def test_gemmlowp_is_tflite_formula_up_to_double_rounding():
    """Against TFLite's documented meaning, acc · M · 2^(shift − 31) rounded, in float64: the
    double rounding can differ by one, and only where the exact value lies within 2^-(rs+1) of
    a half (the first rounding moves it by at most half a unit of 2^-31 · 2^31 / 2^rs)."""
    rng = np.random.default_rng(2)
    n = 200_000
    acc = (rng.integers(-2**31, 2**31, n) >> rng.integers(0, 32, n)).astype(np.int64)
    pairs = [golden.quantize_multiplier(r) for r in 2.0 ** rng.uniform(-30, 0, n)]
    multiplier = np.array([p[0] for p in pairs], dtype=np.int64)
    shift = np.array([p[1] for p in pairs], dtype=np.int64)
    got = golden.multiply_by_quantized_multiplier(acc, multiplier, shift)
    exact = acc.astype(np.float64) * multiplier.astype(np.float64) * np.exp2(shift - 31.0)
    single = np.where(exact >= 0, np.floor(exact + 0.5), -np.floor(-exact + 0.5))
    differ = got != single
    assert np.all(np.abs(got - single) <= 1)
    distance = np.abs(np.abs(exact - np.trunc(exact)) - 0.5)
    assert np.all(distance[differ] <= np.exp2(shift[differ] - 1.0) + 1e-9 * np.abs(exact[differ]))
    # Small accumulators meet such near-halves often (2–3 % here), large ones rarely.
    assert np.count_nonzero(differ) < n // 20


def test_quantize_multiplier_like_tflite():
    assert golden.quantize_multiplier(0.5) == (1 << 30, 0)
    assert golden.quantize_multiplier(1.0) == (1 << 30, 1)
    assert golden.quantize_multiplier(0.75) == (3 << 29, 0)
    assert golden.quantize_multiplier(0.0) == (0, 0)
    assert golden.quantize_multiplier(2.0 ** -40) == (0, 0)
    # The significand rounding up to 2^31 moves to the next power of two.
    assert golden.quantize_multiplier(1.0 - 2.0 ** -40) == (1 << 30, 1)
    for real in 2.0 ** np.random.default_rng(3).uniform(-31, 20, 1000):
        m, shift = golden.quantize_multiplier(real)
        assert 1 << 30 <= m < 1 << 31
        assert abs(Fraction(m) * Fraction(2) ** (shift - 31) - Fraction(real)) \
            <= Fraction(2) ** (shift - 32)


# ---- the reference model: ONNX -----------------------------------------------------------

def _half_even(value):
    floor = math.floor(value)
    rest = value - floor
    return floor + (rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1))


def test_half_even_model_equals_exact_rounding():
    rng = np.random.default_rng(4)
    n = 4000
    acc = (rng.integers(-2**31, 2**31, n) >> rng.integers(0, 32, n)).astype(np.int64)
    multiplier = rng.integers(-2**31, 2**31, n) >> rng.integers(0, 31, n)
    right = rng.integers(0, 64, n)
    # Exact ties: acc an odd multiple of 2^(right − 1) with an odd multiplier.
    tie = np.arange(n) % 3 == 0
    right[tie] = rng.integers(1, 31, tie.sum())
    multiplier[tie] |= 1
    span = np.int64(1) << (30 - right[tie])               # keeps acc within int32
    acc[tie] = (2 * rng.integers(-span, span) + 1) << (right[tie] - 1)
    zero_point = rng.integers(-256, 256, n)
    output = rng.integers(0, 2, n)
    got, saturated = golden.requantize(acc, multiplier=multiplier, right_shift=right,
                                       zero_point=zero_point, rounding=golden.HALF_EVEN,
                                       output=output)
    for k in range(n):
        exact = _half_even(Fraction(int(acc[k]) * int(multiplier[k]), 1 << int(right[k]))
                           + int(zero_point[k]))
        low, high = golden.RANGES[int(output[k])]
        assert got[k] == min(max(exact, low), high), k
        assert saturated[k] == (not low <= exact <= high), k


def _float32_scales(rng, n, low, high):
    """Float32 scales with every significand bit random, exponents uniform in [low, high)."""
    exponent = rng.integers(low, high, n) + 127
    fraction = rng.integers(0, 1 << 23, n)
    return ((exponent << 23) | fraction).astype(np.uint32).view(np.float32)


def test_onnx_multiplier_is_exact():
    rng = np.random.default_rng(5)
    scales = _float32_scales(rng, 20000, -60, 40)
    scales[::7] *= -1
    scales[::11] = np.float32(2.0) ** rng.integers(-40, 40, len(scales[::11])).astype(np.float32)
    multiplier, right = golden.onnx_multiplier(scales)
    assert np.all(np.abs(multiplier) < 2**31) and np.all((0 <= right) & (right <= 55))
    for s, m, r in zip(scales, multiplier, right):
        value = Fraction(float(s))
        if abs(value) < Fraction(1, 2**32):
            assert (m, r) == (0, 0)
        elif abs(value) >= 2**31:
            # A stand-in: every non-zero accumulator saturates with either.
            assert (abs(m), r) == (1 << 30, 0) and (m < 0) == (value < 0)
        else:
            assert Fraction(int(m), 1 << int(r)) == value
            assert r == 0 or m % 2 == 1
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match=r"^Requantizer scale must be finite$"):
            golden.onnx_multiplier(np.float32(bad))


def test_onnx_scale_is_float32_arithmetic():
    a, b, y = np.float32(0.1), np.float32(0.3), np.float32(0.7)
    assert golden.onnx_scale(a, b, y) == np.float32(np.float32(a * b) / y)
    assert golden.onnx_scale(a, b, y).dtype == np.float32


def _reference(acc, scales, zero_points):
    """onnx.reference's QLinearMatMul applied to int32 accumulators: acc (rows × columns) times
    the int8 identity, with a per-column b_scale (so a per-column requantization scale) and a
    per-column output zero point."""
    columns = acc.shape[1]
    return golden.onnx_qlinear_matmul(
        acc.astype(np.int32), np.float32(1), np.int8(0), np.eye(columns, dtype=np.int8),
        scales.astype(np.float32), np.int8(0), np.float32(1), zero_points, check=False)


def _compare_with_reference(acc, scales, zero_points, output):
    reference = _reference(acc, scales, zero_points).astype(np.int64)
    multiplier, right = golden.onnx_multiplier(scales)
    got, _ = golden.requantize(acc, multiplier=multiplier, right_shift=right,
                               zero_point=zero_points.astype(np.int64),
                               rounding=golden.HALF_EVEN, output=output)
    exact = golden.onnx_exact(acc, multiplier, right, zero_points)
    return reference, got, exact, multiplier, right


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_model_matches_onnx_reference_on_every_int32(dtype):
    """Random scales whose exact forms have right_shift ≤ EXACT_SHIFT (all of them ≥ 2^-21),
    accumulators over the whole int32 range: equal everywhere."""
    rng = np.random.default_rng(6 + (dtype == np.uint8))
    output = golden.UINT8 if dtype == np.uint8 else golden.INT8
    info = np.iinfo(dtype)
    rows, columns = 64, 256
    scales = _float32_scales(rng, columns, -21, 12)
    # A quarter of the columns use products as QLinearMatMul forms them.
    quarter = columns // 4
    scales[:quarter] = golden.onnx_scale(_float32_scales(rng, quarter, -9, 0),
                                         _float32_scales(rng, quarter, -9, 0),
                                         _float32_scales(rng, quarter, -6, 2))
    zero_points = rng.integers(info.min, int(info.max) + 1, columns).astype(dtype)
    acc = rng.integers(-2**31, 2**31, (rows, columns)) >> rng.integers(0, 32, (rows, columns))
    acc[0], acc[1], acc[2] = golden.INT32_MIN, golden.INT32_MAX, 0
    # Around the saturation limits of each column: acc ≈ (limit ± ½ − zp) / scale.
    limit = np.where(np.arange(columns) % 2, info.max + 0.5, info.min - 0.5)
    centre = np.round((limit - zero_points.astype(np.float64)) / scales.astype(np.float64))
    acc[3:8] = np.clip(centre + np.arange(-2, 3)[:, None], golden.INT32_MIN, golden.INT32_MAX)
    reference, got, exact, _, right = _compare_with_reference(acc, scales, zero_points, output)
    assert right.max() <= golden.EXACT_SHIFT and exact.all()
    np.testing.assert_array_equal(got, reference)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_model_matches_onnx_reference_on_exact_ties(dtype):
    """Scales with few significand bits and accumulators that make acc · scale exactly k + ½:
    the reference rounds k + ½ + zp to even, after the zero point."""
    rng = np.random.default_rng(8 + (dtype == np.uint8))
    output = golden.UINT8 if dtype == np.uint8 else golden.INT8
    info = np.iinfo(dtype)
    rows, columns = 64, 256
    odd = 2 * rng.integers(0, 1 << rng.integers(1, 9, columns)) + 1
    right = rng.integers(1, 12, columns)
    scales = (odd * np.exp2(-right.astype(np.float64))).astype(np.float32)
    # acc · odd · 2^-right has fraction ½ exactly when acc is an odd multiple of 2^(right − 1).
    # (2j + 1) · odd / 2 within about ±300, so that most results are not saturated.
    j = rng.integers(-(300 // odd) - 1, 300 // odd + 1, (rows, columns))
    half = (2 * j + 1) << (right - 1)
    acc = np.where(rng.random((rows, columns)) < 0.8, half,
                   half + rng.integers(-1, 2, (rows, columns)))
    zero_points = rng.integers(info.min, int(info.max) + 1, columns).astype(dtype)
    reference, got, exact, _, _ = _compare_with_reference(acc, scales, zero_points, output)
    assert exact.all()
    np.testing.assert_array_equal(got, reference)
    ties = (acc * odd) % (1 << right) == 1 << (right - 1)
    low, high = golden.RANGES[output]
    value = (acc * odd) >> right   # floor(acc · scale)
    unsaturated = ties & (value + zero_points >= low) & (value + zero_points < high)
    assert unsaturated.sum() > 1000
    # Half to even after the zero point: the tie goes up exactly when floor + zp is odd.
    np.testing.assert_array_equal(got[unsaturated] - (value + zero_points)[unsaturated],
                                  ((value + zero_points) % 2)[unsaturated])


def test_model_matches_onnx_reference_for_tiny_scales_where_exact():
    """Scales below 2^-21 (right_shift up to 55): the reference's float64 sum can round before
    rint. Wherever onnx_exact holds the two agree; elsewhere they may not."""
    rng = np.random.default_rng(10)
    rows, columns = 64, 256
    scales = _float32_scales(rng, columns, -40, -21)
    zero_points = rng.integers(-128, 128, columns).astype(np.int8)
    acc = rng.integers(-2**31, 2**31, (rows, columns)) >> rng.integers(0, 32, (rows, columns))
    reference, got, exact, _, right = _compare_with_reference(acc, scales, zero_points,
                                                              golden.INT8)
    assert (right > golden.EXACT_SHIFT).sum() > 50 and exact.sum() > rows * columns // 4
    np.testing.assert_array_equal(got[exact], reference[exact])


#: The smallest kind of disagreement: scale = 15793935 · 2^-54 (a float32, ≈ 8.8e-10),
#: acc = 570294816, zero point 101. acc · scale = ½ − 2^-49 exactly; + 101 needs 54 bits, so
#: float64 rounds the sum to 101.5, and rint gives 102; the exact value rounds to 101.
_DISAGREEMENT = dict(acc=570294816, multiplier=15793935, right_shift=54, zero_point=101)


def test_documented_disagreement_below_the_exact_range():
    case = _DISAGREEMENT
    scale = np.float32(case["multiplier"] * 2.0 ** -case["right_shift"])
    assert golden.onnx_multiplier(scale) == (case["multiplier"], case["right_shift"])
    value = Fraction(case["acc"] * case["multiplier"], 2 ** case["right_shift"])
    assert value == Fraction(1, 2) - Fraction(1, 2**49)
    reference = _reference(np.array([[case["acc"]]]), np.array([scale]),
                           np.array([case["zero_point"]], dtype=np.int8))
    got, _ = golden.requantize(case["acc"], rounding=golden.HALF_EVEN, **{
        k: v for k, v in case.items() if k != "acc"})
    assert (int(reference[0, 0]), int(got)) == (102, 101)
    assert _half_even(value + case["zero_point"]) == 101
    assert not golden.onnx_exact(case["acc"], case["multiplier"], case["right_shift"],
                                 case["zero_point"])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_model_matches_a_real_qlinear_matmul(dtype):
    """A QLinearMatMul that passes onnx.checker: int8/uint8 matrices, the accumulators from
    NumPy. The end-to-end RTL version is in cocotb_tests/test_requantizer.py."""
    rng = np.random.default_rng(11 + (dtype == np.uint8))
    info = np.iinfo(dtype)
    for a_scale, b_scale, y_scale in [(0.25, 0.5, 1.0), (0.02, 0.011, 0.37), (0.5, 0.375, 4.0)]:
        a = rng.integers(info.min, int(info.max) + 1, (24, 48)).astype(dtype)
        b = rng.integers(info.min, int(info.max) + 1, (48, 20)).astype(dtype)
        a_zp, b_zp, y_zp = (np.array(rng.integers(info.min, int(info.max) + 1), dtype=dtype)
                            for _ in range(3))
        a_s, b_s, y_s = np.float32(a_scale), np.float32(b_scale), np.float32(y_scale)
        y = golden.onnx_qlinear_matmul(a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp)
        acc = (a.astype(np.int64) - int(a_zp)) @ (b.astype(np.int64) - int(b_zp))
        multiplier, right = golden.onnx_multiplier(golden.onnx_scale(a_s, b_s, y_s))
        got, _ = golden.requantize(acc, multiplier=multiplier, right_shift=right,
                                   zero_point=int(y_zp), rounding=golden.HALF_EVEN,
                                   output=golden.UINT8 if dtype == np.uint8 else golden.INT8)
        np.testing.assert_array_equal(got, y.astype(np.int64))


# ---- the RTL in the Amaranth simulator ---------------------------------------------------

def _config(multiplier, left_shift=0, right_shift=0, zero_point=0, rounding=golden.GEMMLOWP,
            output=golden.INT8):
    return {"multiplier": int(multiplier), "left_shift": int(left_shift),
            "right_shift": int(right_shift), "zero_point": int(zero_point),
            "rounding": Rounding(int(rounding)), "output": Output(int(output))}


def _expected(accs, config):
    values, saturated = golden.requantize(
        np.array(accs), multiplier=config["multiplier"], left_shift=config["left_shift"],
        right_shift=config["right_shift"], zero_point=config["zero_point"],
        rounding=config["rounding"].value, output=config["output"].value)
    return [int(v) & 0xFF for v in values], int(saturated.sum())


def _run(dut, beats, *, idle=0.0, stall=0.0, seed=0, clears=()):
    """Send ``beats`` (lists of accumulators with a config each) through ``dut``; return the
    outputs (lists of bytes), the cycle each left, and ``saturated`` sampled at every clock edge
    (``counts[c + 1]`` is its value after the edge that ends cycle ``c``)."""
    rng = random.Random(seed)
    received, cycles, counts = [], [], []

    async def source(ctx):
        for accs, config in beats:
            while rng.random() < idle:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, sum((a & 0xFFFFFFFF) << (32 * k) for k, a in enumerate(accs)))
            ctx.set(dut.config, config)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        cycle = 0
        while len(received) < len(beats):
            ready = rng.random() >= stall
            ctx.set(dut.o.ready, ready)
            ctx.set(dut.clear, cycle in clears)
            _, _, valid, payload, count = await ctx.tick().sample(dut.o.valid, dut.o.payload,
                                                                  dut.saturated)
            counts.append(count)
            if valid and ready:
                received.append([(payload >> (8 * k)) & 0xFF for k in range(dut.lanes)])
                cycles.append(cycle)
            cycle += 1
        for _ in range(2):
            _, _, count = await ctx.tick().sample(dut.saturated)
            counts.append(count)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return received, cycles, counts


def test_latency_and_one_beat_per_cycle():
    dut = Requantizer()
    beats = [([k * 1000], _config(1 << 30, right_shift=3)) for k in range(16)]
    received, cycles, _ = _run(dut, beats)
    assert cycles == list(range(Requantizer.LATENCY, Requantizer.LATENCY + 16))
    assert received == [_expected(accs, config)[0] for accs, config in beats]


def _random_beats(rng, n, lanes):
    beats = []
    acc, multiplier, left, right = _random_configs(rng, n)
    for k in range(n):
        accs = [int(acc[k])] + [int(v) for v in (rng.integers(-2**31, 2**31, lanes - 1)
                                                 >> rng.integers(0, 32, lanes - 1))]
        rounding = k % 2 if k >= 8 else golden.GEMMLOWP   # the corner cases are gemmlowp's
        if rounding == golden.HALF_EVEN and k % 4 == 1:
            # A float32 scale as the ONNX mode gets it.
            m, r = golden.onnx_multiplier(_float32_scales(rng, 1, -30, 4)[0])
            multiplier[k], left[k], right[k] = m, 0, r
        zero_point = rng.integers(-256, 256) if k >= 8 else 0
        beats.append((accs, _config(multiplier[k], left[k], right[k], zero_point, rounding,
                                    rng.integers(0, 2) if k >= 8 else golden.INT8)))
    return beats


def test_random_configurations_under_backpressure():
    """The configuration changes with every beat, both roundings, both output types; random
    idle and stall cycles; two lanes."""
    dut = Requantizer(2)
    beats = _random_beats(np.random.default_rng(12), 400, 2)
    received, _, counts = _run(dut, beats, idle=0.3, stall=0.4, seed=3)
    expected = [_expected(accs, config) for accs, config in beats]
    assert received == [values for values, _ in expected]
    assert counts[-1] == sum(count for _, count in expected)


def test_saturation_counter_clear_and_stick():
    dut = Requantizer(counter_width=3)
    # Every result saturates: the count goes 1, 2, … and sticks at 7.
    beats = [([2**31 - 1], _config(1 << 30))] * 10
    _, cycles, counts = _run(dut, beats)
    assert [counts[c + 1] for c in cycles] == [1, 2, 3, 4, 5, 6, 7, 7, 7, 7]
    # `clear` in the cycle a saturated beat leaves keeps that beat's count; in a cycle with no
    # beat leaving it gives zero.
    beats = [([-2**31], _config(1 << 30, output=golden.UINT8))] * 6 + \
            [([0], _config(1 << 30))] * 2
    first = Requantizer.LATENCY
    _, cycles, counts = _run(Requantizer(), beats, clears={first + 2, first + 7})
    assert cycles == list(range(first, first + 8))
    assert [counts[c + 1] for c in cycles] == [1, 2, 1, 2, 3, 4, 4, 0]
    # A counter narrower than a beat's count saturates too.
    beats = [([2**31 - 1] * 3, _config(1 << 30))] * 2
    _, cycles, counts = _run(Requantizer(3, counter_width=1), beats, clears={first})
    assert [counts[c + 1] for c in cycles] == [1, 1]

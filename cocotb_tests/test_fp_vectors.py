"""The binary32 units under Verilator, 10⁶ operand sets per operation with random stalls on both
streams, bit-exact against NumPy float32 (through the conventions of sim/fp32.py).

The operands mix uniformly random bit patterns (every class: NaN, ∞, subnormals) with the cases
where adders and multipliers go wrong: nearly equal magnitudes (cancellation), significands with
few bits set (exact ties, counted below in float64 so the test knows it exercised them), results
at the subnormal and overflow boundaries, and every pair of a list of special values.
"""


import numpy as np
import pytest

import sim.fp32 as golden
from rtl.fp import FP16ToFP32, FP32ToFP16, FPAdd, FPCompare, FPMul, Int32ToFP32

from .vectors import compose_float32, first_mismatch, new_seed, pack_pair, run_vectors


COUNT = 1_000_000

#: Values every pair of which is run: zeros, infinities, NaNs (quiet, signalling, negative),
#: the extreme normals and subnormals, and neighbours of 1.
SPECIALS = np.array([
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC12345,
    0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x80800000, 0x00000001, 0x80000001, 0x007FFFFF,
    0x807FFFFF, 0x00400000, 0x3F800000, 0xBF800000, 0x3F800001, 0x3F7FFFFF, 0x33800000,
    0xB3800000, 0x34000000, 0x4B000000, 0x4B7FFFFF, 0x3FC00000, 0x3F000000, 0x1F800000,
    0x5F800000, 0x00800001, 0x7F000000, 0x3F800003,
], dtype=np.uint32)






def _sparse(rng, n):
    """Fractions with one to three bits set: sums and products of these tie often."""
    fraction = np.zeros(n, dtype=np.uint32)
    for _ in range(3):
        keep = rng.random(n) < 0.7
        fraction |= np.where(keep, np.uint32(1) << rng.integers(0, 23, n, dtype=np.uint32), 0
                             ).astype(np.uint32)
    return fraction


def operand_pairs(rng, n, op):
    """``n`` (a, b) pairs of binary32 bits, stressing ``op`` ("add", "mul" or "compare")."""
    part = n // 6
    pairs = []
    # Any bits at all.
    pairs.append(rng.integers(0, 1 << 32, (part, 2), dtype=np.uint64).astype(np.uint32))
    # Normal values near each other: cancellation for add, close calls for compare.
    ea = rng.integers(1, 255, part)
    eb = np.clip(ea + rng.integers(-2, 3, part), 1, 254)
    a = compose_float32(rng, part, ea)
    b = compose_float32(rng, part, eb)
    near = rng.random(part) < 0.3  # b = ±a with a few low bits changed
    b = np.where(near, (a ^ rng.integers(0, 16, part, dtype=np.uint32))
                 ^ (rng.integers(0, 2, part, dtype=np.uint32) << 31), b)
    pairs.append(np.stack([a, b], axis=1))
    # Sparse significands, exponents close enough for ties to survive in float64.
    ea = rng.integers(60, 190, part)
    eb = ea + rng.integers(-26, 27, part) if op != "mul" else rng.integers(60, 190, part)
    sa = (rng.integers(0, 2, part, dtype=np.uint32) << 31) | (ea.astype(np.uint32) << 23)
    sb = (rng.integers(0, 2, part, dtype=np.uint32) << 31) | (eb.astype(np.uint32) << 23)
    pairs.append(np.stack([sa | _sparse(rng, part), sb | _sparse(rng, part)], axis=1))
    # Around the subnormal range: subnormal operands, and products that land there.
    if op == "mul":
        ea = rng.integers(0, 128, part)
        eb = np.clip(rng.integers(80, 128, part) - ea + rng.integers(0, 48, part), 0, 254)
    else:
        ea = rng.integers(0, 4, part)
        eb = rng.integers(0, 4, part)
    pairs.append(np.stack([compose_float32(rng, part, ea), compose_float32(rng, part, eb)], axis=1))
    # Around overflow.
    if op == "mul":
        ea = rng.integers(127, 255, part)
        eb = np.clip(254 + 127 - ea + rng.integers(-2, 3, part), 1, 254)
    else:
        ea = rng.integers(250, 255, part)
        eb = rng.integers(250, 255, part)
    pairs.append(np.stack([compose_float32(rng, part, ea), compose_float32(rng, part, eb)], axis=1))
    # Every pair of specials, then uniformly random normals to make up the count.
    grid = np.stack(np.meshgrid(SPECIALS, SPECIALS), axis=-1).reshape(-1, 2)
    pairs.append(grid)
    rest = n - sum(len(p) for p in pairs)
    pairs.append(np.stack([compose_float32(rng, rest, rng.integers(1, 255, rest)),
                           compose_float32(rng, rest, rng.integers(1, 255, rest))], axis=1))
    return np.concatenate(pairs)


def exact_ties(a, b, op):
    """How many of the pairs have an exact result exactly halfway between two binary32 values,
    judged in float64 (exact there for products, and for sums of operands 29 binades apart or
    less)."""
    with np.errstate(all="ignore"):
        x = golden.floats(a).astype(np.float64)
        y = golden.floats(b).astype(np.float64)
        exact = x * y if op == "mul" else x + y
        usable = np.isfinite(exact) & (np.abs(exact) >= 2.0 ** -126) & (np.abs(exact) < 2.0 ** 127)
        if op == "add":
            ea = (a >> 23) & 0xFF
            eb = (b >> 23) & 0xFF
            usable &= np.abs(ea.astype(np.int64) - eb.astype(np.int64)) <= 29
        rounded = exact.astype(np.float32)
        away = np.nextafter(rounded, np.where(exact > rounded, np.float32(np.inf),
                                              np.float32(-np.inf)))
        midpoint = (rounded.astype(np.float64) + away.astype(np.float64)) / 2
    return int(np.count_nonzero(usable & (rounded != exact) & (midpoint == exact)))






@pytest.mark.parametrize("op", ["add", "mul"])
def test_arithmetic_is_bit_exact_with_numpy(op):
    seed = new_seed()
    rng = np.random.default_rng(seed)
    pairs = operand_pairs(rng, COUNT, op)
    a, b = pairs[:, 0], pairs[:, 1]
    unit = FPAdd() if op == "add" else FPMul()
    run = run_vectors(unit, toplevel=f"fp_{op}", inputs=pack_pair(a, b), seed=seed)
    expected = (golden.add if op == "add" else golden.mul)(a, b)
    first_mismatch(f"{op} (seed {seed})", pairs, run.outputs.astype(np.uint32), expected)
    # The vectors did exercise what they are meant to.
    ties = exact_ties(a, b, op)
    subnormal_results = np.count_nonzero(((expected >> 23) & 0xFF) == 0)
    assert ties > 1000, f"only {ties} exact ties among the {op} operands"
    assert subnormal_results > 10000
    assert len(pairs) == COUNT


def test_compare_is_exact():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    pairs = operand_pairs(rng, COUNT, "compare")
    a, b = pairs[:, 0], pairs[:, 1]
    run = run_vectors(FPCompare(), toplevel="fp_compare", inputs=pack_pair(a, b), seed=seed)
    out = run.outputs
    maximum, less, equal, unordered = golden.compare(a, b)
    first_mismatch("max", pairs, (out & 0xFFFFFFFF).astype(np.uint32), maximum)
    for bit, name, expected in [(32, "less", less), (33, "equal", equal),
                                (34, "unordered", unordered)]:
        first_mismatch(name, pairs, ((out >> np.uint64(bit)) & np.uint64(1)).astype(bool),
                        expected)


def test_fp16_to_fp32_every_value():
    seed = new_seed()
    values = np.arange(1 << 16, dtype=np.uint32)
    run = run_vectors(FP16ToFP32(), toplevel="fp16_to_fp32", inputs=values, seed=seed)
    first_mismatch("fp16→fp32", values, run.outputs.astype(np.uint32),
                    golden.fp16_to_fp32(values.astype(np.uint16)))


def test_fp32_to_fp16_is_bit_exact_with_numpy():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    part = COUNT // 4
    values = np.concatenate([
        rng.integers(0, 1 << 32, part, dtype=np.uint64).astype(np.uint32),
        # The binary16 range, its subnormals and the rounding boundary to infinity.
        compose_float32(rng, part, rng.integers(95, 145, part)),
        # Halfway cases: the 13 (or more) dropped bits exactly 100…0.
        compose_float32(rng, part, rng.integers(95, 145, part)) & ~np.uint32(0xFFF) | np.uint32(0x1000),
        SPECIALS,
    ])
    values = np.concatenate([values, compose_float32(rng, COUNT - len(values),
                                              rng.integers(0, 255, COUNT - len(values)))])
    run = run_vectors(FP32ToFP16(), toplevel="fp32_to_fp16", inputs=values, seed=seed)
    first_mismatch("fp32→fp16", values, run.outputs.astype(np.uint16),
                    golden.fp32_to_fp16(values))


def test_int32_to_fp32_is_bit_exact_with_numpy():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    # Magnitudes of every bit length, so every rounding position is exercised; ties where
    # the dropped bits are exactly 100…0.
    lengths = rng.integers(0, 33, COUNT)
    magnitudes = rng.integers(0, 1 << 32, COUNT, dtype=np.uint64) >> (32 - lengths).astype(
        np.uint64)
    values = np.where(rng.random(COUNT) < 0.5, -magnitudes.astype(np.int64),
                      magnitudes.astype(np.int64))
    ties = (rng.integers(1 << 23, 1 << 24, 1000) << 7) | (1 << 6)
    extremes = np.array([0, 1, -1, 2**31 - 1, -2**31, 2**24, 2**24 + 1, -(2**24 + 1)])
    values = np.concatenate([np.clip(values, -2**31, 2**31 - 1)[:COUNT - 1008], ties, extremes])
    values = values.astype(np.int64).astype(np.int32)
    run = run_vectors(Int32ToFP32(), toplevel="int32_to_fp32",
                      inputs=values.view(np.uint32), seed=seed)
    first_mismatch("int32→fp32", values, run.outputs.astype(np.uint32),
                    golden.int32_to_fp32(values))

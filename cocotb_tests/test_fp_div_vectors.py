"""FPDiv and FP32ToInt under Verilator, with random stalls on both streams, bit-exact against the
golden model (sim/fp32.py: NumPy float32 division with the canonical NaN; float32 rounding half
away from zero as gguf's ``np_roundf`` or half to even as ``np.rint``, saturated, NaN → 0).

The division operands mix random bit patterns (every class) with the cases a divider gets wrong:
quotients that are exact or one ulp off exact, results in and around the subnormal range (where
ties are possible: a quotient of binary32 values can only tie when it is subnormal), results near
overflow, subnormal operands, and every pair of a list of special values. The test counts
subnormal results and subnormal ties and fails if the vectors stopped exercising them.
"""


import numpy as np

import sim.fp32 as golden
from rtl.fp import FP32ToInt, FPDiv

from .vectors import compose_float32, first_mismatch, new_seed, pack_pair, run_vectors


DIV_COUNT = 300_000
INT_COUNT = 1_000_000

#: Every pair of these is divided: zeros, infinities, NaNs (quiet, signalling, negative), the
#: extreme normals and subnormals, powers of two and neighbours of 1.
SPECIALS = np.array([
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC12345,
    0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x80800000, 0x00000001, 0x80000001, 0x007FFFFF,
    0x00000003, 0x00400000, 0x3F800000, 0xBF800000, 0x3F800001, 0x3F7FFFFF, 0x40000000,
    0x3F000000, 0x42FE0000, 0x40400000, 0x4B7FFFFF, 0x34000000, 0x7F000000, 0x00FFFFFF,
], dtype=np.uint32)






def _few_bits(rng, n):
    """Fractions with at most two bits set."""
    fraction = np.zeros(n, dtype=np.uint32)
    for _ in range(2):
        bit = np.uint32(1) << rng.integers(0, 23, n, dtype=np.uint32)
        fraction |= np.where(rng.random(n) < 0.6, bit, 0).astype(np.uint32)
    return fraction






def division_pairs(rng, n):
    part = n // 8
    pairs = [rng.integers(0, 1 << 32, (part, 2), dtype=np.uint64).astype(np.uint32)]
    # Exact quotients: a = b · c with c a small integer times a power of two (exact in binary32
    # when b has few significand bits), and their neighbours one ulp away.
    b = compose_float32(rng, part, rng.integers(60, 190, part))
    b = np.where(rng.random(part) < 0.5, (b & np.uint32(0xFF800000)) | _few_bits(rng, part), b)
    c = (rng.integers(1, 1 << 12, part) * 2.0 ** rng.integers(-8, 9, part))
    with np.errstate(all="ignore"):
        product = golden.floats(b).astype(np.float64) * c
    a = golden.bits(product.astype(np.float32))
    for delta in (0, 1, -1):
        pairs.append(np.stack([(a.astype(np.int64) + delta).astype(np.uint32), b], axis=1))
    # Results around 2^-126 and below, down to nothing: subnormal quotients, subnormal ties.
    ea = rng.integers(0, 40, part)
    eb = np.clip(ea + 127 + rng.integers(-30, 8, part), 1, 254)
    # Half of them with few significand bits (b a power of two): ties in the subnormals.
    sparse = rng.random(part) < 0.5
    a = compose_float32(rng, part, ea)
    a = np.where(sparse, (a & np.uint32(0xFF800000)) | _few_bits(rng, part), a)
    b = compose_float32(rng, part, eb)
    b = np.where(sparse, b & np.uint32(0xFF800000), b)
    pairs.append(np.stack([a, b], axis=1))
    # Around overflow, and subnormal divisors.
    ea = rng.integers(200, 255, part)
    eb = np.clip(ea - 127 + rng.integers(-3, 3, part), 0, 254)
    pairs.append(np.stack([compose_float32(rng, part, ea), compose_float32(rng, part, eb)], axis=1))
    # Both subnormal (or close).
    pairs.append(np.stack([compose_float32(rng, part, rng.integers(0, 3, part)),
                           compose_float32(rng, part, rng.integers(0, 3, part))], axis=1))
    grid = np.stack(np.meshgrid(SPECIALS, SPECIALS), axis=-1).reshape(-1, 2)
    pairs.append(grid)
    rest = n - sum(len(p) for p in pairs)
    pairs.append(np.stack([compose_float32(rng, rest, rng.integers(1, 255, rest)),
                           compose_float32(rng, rest, rng.integers(1, 255, rest))], axis=1))
    return np.concatenate(pairs)


def subnormal_ties(a, b):
    """How many quotients are exactly halfway between two subnormals: a / b = m · 2^-150 with
    m odd, checked as a · 2^150 = m · b, both sides exact in float64 for |m| < 2^24."""
    with np.errstate(all="ignore"):
        x = golden.floats(a).astype(np.float64)
        y = golden.floats(b).astype(np.float64)
        m = np.round(x / y * 2.0 ** 150)
        usable = np.isfinite(x) & np.isfinite(y) & (np.abs(m) < 2.0 ** 24) & (m % 2 == 1)
        return int(np.count_nonzero(usable & (x * 2.0 ** 150 == m * y)))


def exact_quotients(a, b, q):
    """How many non-zero finite quotients ``q`` are exact: q · b = a in float64 (exact there)."""
    with np.errstate(all="ignore"):
        x, y, z = (golden.floats(v).astype(np.float64) for v in (a, b, q))
        return int(np.count_nonzero(np.isfinite(z) & (z != 0) & (z * y == x)))


def test_division_is_bit_exact_with_numpy():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    pairs = division_pairs(rng, DIV_COUNT)
    a, b = pairs[:, 0], pairs[:, 1]
    run = run_vectors(FPDiv(), toplevel="fp_div", inputs=pack_pair(a, b), seed=seed)
    expected = golden.div(a, b)
    first_mismatch(f"div (seed {seed})", pairs, run.outputs.astype(np.uint32), expected)
    subnormal_results = np.count_nonzero((((expected >> 23) & 0xFF) == 0)
                                         & ((expected & 0x7FFFFFFF) != 0))
    ties = subnormal_ties(a, b)
    exact = exact_quotients(a, b, expected)
    print(f"div: {len(pairs)} pairs, {subnormal_results} subnormal results, {ties} subnormal "
          f"ties, {exact} exact quotients; {run.cycles / len(pairs):.1f} cycles per result "
          f"with 25 % idle inputs and stalled outputs")
    assert subnormal_results > 10000 and ties > 100 and exact > 20000
    assert len(pairs) == DIV_COUNT


def to_int_values(rng, n):
    part = n // 5
    values = [
        rng.integers(0, 1 << 32, part, dtype=np.uint64).astype(np.uint32),
        # Every binade from below one half to beyond 2^31.
        compose_float32(rng, part, rng.integers(110, 165, part)),
        # Halves: the dropped bits exactly 100…0, for every integer bit length.
        (rng.integers(0, 1 << 24, part) + 0.5).astype(np.float32).view(np.uint32)
        ^ (rng.integers(0, 2, part, dtype=np.uint32) << 31),
        # Small values, ties among them, and the int8 boundary.
        (rng.integers(-1100, 1100, part) / 4).astype(np.float32).view(np.uint32),
        SPECIALS,
    ]
    rest = n - sum(len(v) for v in values)
    values.append(compose_float32(rng, rest, rng.integers(100, 170, rest)))
    return np.concatenate(values)


def test_fp32_to_int_is_bit_exact_with_numpy():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    values = to_int_values(rng, INT_COUNT)
    for width, rounding, count in ((32, "away", INT_COUNT), (8, "even", INT_COUNT // 5)):
        chosen = values[:count] if count == INT_COUNT else rng.permutation(values)[:count]
        unit = FP32ToInt(width, rounding=rounding)
        run = run_vectors(unit, toplevel=f"fp32_to_int{width}_{rounding}", inputs=chosen,
                          seed=seed)
        got = run.outputs.astype(np.int64)
        got = np.where(got >> (width - 1) & 1, got - (1 << width), got)
        expected = golden.fp32_to_int(chosen, width, rounding)
        first_mismatch(f"fp32→int{width} {rounding} (seed {seed})", chosen, got, expected)
        with np.errstate(all="ignore"):
            halves = np.count_nonzero(np.abs(golden.floats(chosen)) % 1 == 0.5)
        assert halves > count // 10

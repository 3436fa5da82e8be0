"""FPExp and FPReciprocal under Verilator, 10⁶ operands per function with random stalls on both
streams, bit-exact against the golden sequences of sim/vector_math.py; and the golden's own
accuracy, in ulps against float64, over the finite operands with a normal result.

The operands mix uniformly random bit patterns (every class: NaN, ∞, subnormals) with the ranges
the vector unit computes on (softmax's exp on [−30, 0] and the whole unclamped range [−104, 89];
reciprocals of sums on [1, 10⁴], rsqrt of variances on [10⁻⁶, 10⁴]), random values of every
exponent, the neighbours of the edges (the clamp bounds, overflow and the subnormal threshold for
exp; 2^126 and exponent 0 for the reciprocal) and a list of special values.
"""


import numpy as np

import sim.vector_math as golden
from rtl.fp import FPExp, FPReciprocal

from .vectors import compose_float32, first_mismatch, new_seed, run_vectors


COUNT = 1_000_000

#: Zeros, infinities, NaNs (quiet, signalling, negative), extreme normals and subnormals, powers
#: of two and neighbours of 1.
SPECIALS = np.array([
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC12345,
    0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x80800000, 0x00000001, 0x80000001, 0x007FFFFF,
    0x807FFFFF, 0x00400000, 0x3F800000, 0xBF800000, 0x3F800001, 0x3F7FFFFF, 0x7E800000,
    0xFE800000, 0x7E7FFFFF, 0x7E000000, 0x40000000, 0x3F000000, 0x4B000000, 0x00FFFFFF,
], dtype=np.uint32)


def _floats(values):
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def _neighbours(centres, spread):
    """The binary32 values within ``spread`` ulps of each of ``centres``."""
    bits = _floats(centres).astype(np.int64)
    steps = np.arange(-spread, spread + 1)
    return (bits[:, None] + steps[None, :]).reshape(-1).astype(np.uint32)


def exp_operands(rng, n):
    edges = _neighbours([-104.0, 89.0, 88.72283, -87.33654, -103.27893, -103.9720, 0.34657359,
                         -0.34657359, 0.0], 200)
    parts = [
        rng.integers(0, 1 << 32, n // 8, dtype=np.uint64).astype(np.uint32),
        _floats(rng.uniform(-104, 89, 3 * n // 8)),
        _floats(rng.uniform(-30, 0, n // 4)),
        compose_float32(rng, n // 8, rng.integers(0, 256, n // 8)),
        edges, SPECIALS,
    ]
    rest = n - sum(len(p) for p in parts)
    parts.append(_floats(rng.uniform(-110, 95, rest)))
    return np.concatenate(parts)


def reciprocal_operands(rng, n, rsqrt):
    if rsqrt:
        activation = _floats(10.0 ** rng.uniform(-6, 4, 3 * n // 8))
    else:
        activation = _floats(rng.uniform(1, 1e4, 3 * n // 8))
    edges = _neighbours(np.array([2.0 ** 126, -2.0 ** 126, 2.0 ** -126, 1.0, 2.0, 4.0],
                                 dtype=np.float64), 200)
    parts = [
        rng.integers(0, 1 << 32, n // 4, dtype=np.uint64).astype(np.uint32),
        activation,
        compose_float32(rng, n // 4, rng.integers(0, 256, n // 4)),
        edges, SPECIALS,
    ]
    if rsqrt:  # mostly the positive operands rsqrt is for
        parts = [p & np.uint32(0x7FFFFFFF) if k == 2 else p for k, p in enumerate(parts)]
    rest = n - sum(len(p) for p in parts)
    parts.append(compose_float32(rng, rest, rng.integers(1, 255, rest)))
    return np.concatenate(parts)


def check_accuracy(name, x, result, reference, domain):
    """Fail if the golden result is more than 2 ulps from float64 where the operand is in
    ``domain`` (finite, outside the documented special cases) and the exact result a normal
    binary32 value; print the largest error."""
    with np.errstate(all="ignore"):
        magnitude = np.abs(reference)
        normal = domain & (magnitude >= 2.0 ** -126) & (magnitude <= np.finfo(np.float32).max)
        error = golden.ulp_error(result[normal], reference[normal])
    worst = float(np.max(error))
    k = int(np.argmax(error))
    print(f"[tessera] {name}: max {worst:.3f} ulp against float64 over {int(normal.sum())} "
          f"operands (at {int(x[normal][k]):#010x})")
    assert worst <= 2.0, f"{name}: {worst} ulp at {int(x[normal][k]):#x}"
    return worst


def test_exp_is_bit_exact_with_golden():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = exp_operands(rng, COUNT)
    run = run_vectors(FPExp(), toplevel="fp_exp", inputs=x, seed=seed)
    expected = golden.exp(x)
    first_mismatch(f"exp (seed {seed})", x, run.outputs.astype(np.uint32), expected)
    with np.errstate(all="ignore"):
        reference = np.exp(golden.fp32.floats(x).astype(np.float64))
    field = (x >> 23) & 0xFF
    check_accuracy("exp", x, expected, reference, field != 0xFF)
    # The vectors reached what they are meant to: subnormal results, overflow, the clamp.
    assert np.count_nonzero((((expected >> 23) & 0xFF) == 0) & (expected != 0)) > 1000
    assert np.count_nonzero(expected == 0x7F800000) > 1000
    assert len(x) == COUNT


def _reciprocal_run(seed, x, rsqrt):
    payload = x.astype(np.uint64) | (np.asarray(rsqrt, dtype=np.uint64) << np.uint64(32))
    run = run_vectors(FPReciprocal(), toplevel="fp_reciprocal", inputs=payload, seed=seed)
    expected = np.where(np.asarray(rsqrt) == 1, golden.rsqrt(x), golden.recip(x))
    return run.outputs.astype(np.uint32), expected.astype(np.uint32)


def test_reciprocal_is_bit_exact_with_golden():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = reciprocal_operands(rng, COUNT, rsqrt=False)
    got, expected = _reciprocal_run(seed, x, np.zeros(len(x), dtype=np.uint64))
    first_mismatch(f"recip (seed {seed})", x, got, expected)
    with np.errstate(all="ignore"):
        reference = 1.0 / golden.fp32.floats(x).astype(np.float64)
    # Subnormal operands give ±∞ and |x| ≥ 2^126 gives ±0 by choice (docs/fp.md).
    field = (x >> 23) & 0xFF
    check_accuracy("recip", x, expected, reference, (field >= 1) & (field <= 252))
    assert np.count_nonzero(((x >> 23) & 0xFF) == 0) > 1000   # subnormal operands
    assert np.count_nonzero(((x >> 23) & 0xFF) >= 253) > 1000  # reciprocals below 2^-126


def test_rsqrt_is_bit_exact_with_golden():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = reciprocal_operands(rng, COUNT, rsqrt=True)
    got, expected = _reciprocal_run(seed, x, np.ones(len(x), dtype=np.uint64))
    first_mismatch(f"rsqrt (seed {seed})", x, got, expected)
    with np.errstate(all="ignore"):
        reference = 1.0 / np.sqrt(golden.fp32.floats(x).astype(np.float64))
    # Subnormal operands give +∞ by choice; negative ones NaN.
    field = (x >> 23) & 0xFF
    positive = (x >> 31) == 0
    check_accuracy("rsqrt", x, expected, reference, (field >= 1) & (field <= 254) & positive)
    assert np.count_nonzero(expected == golden.fp32.CANONICAL_NAN32) > 1000   # negative


def test_reciprocal_modes_mixed_in_one_stream():
    """Both functions interleaved at random: the mode travels with its operand through the
    shared datapath."""
    seed = new_seed()
    rng = np.random.default_rng(seed)
    half = COUNT // 2
    x = np.concatenate([reciprocal_operands(rng, half, rsqrt=False),
                        reciprocal_operands(rng, half, rsqrt=True)])
    order = rng.permutation(len(x))
    rsqrt = np.concatenate([np.zeros(half, dtype=np.uint64), np.ones(half, dtype=np.uint64)])
    x, rsqrt = x[order], rsqrt[order]
    got, expected = _reciprocal_run(seed, x, rsqrt)
    first_mismatch(f"recip/rsqrt mixed (seed {seed})", np.stack([x, rsqrt], axis=1), got,
                   expected)

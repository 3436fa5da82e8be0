# amaranth: UnusedElaboratable=no
"""The vector unit's golden model (sim/vector.py, sim/vector_math.py) against float64, and the
unit's parameter checks. The RTL against the golden model: cocotb_tests/test_vector.py."""

import math

import numpy as np
import pytest

from sim import fp32
from sim import vector as V
from sim import vector_math as vm


def _f32(values):
    return np.asarray(values, dtype=np.float32)


def _ulps(result, reference):
    """Error in ulp of ``result`` (float32 values or their uint32 bits)."""
    result = np.asarray(result)
    bits = result if result.dtype == np.uint32 else _f32(result).view(np.uint32)
    return vm.ulp_error(bits, np.asarray(reference, dtype=np.float64))


# ---- Special functions: error against float64 ----------------------------------------------

def test_exp_within_one_ulp():
    # Every 97th binary32 value of the whole finite range of exp, normal and subnormal results.
    low, high = np.float32(-103.9), np.float32(88.72)
    x = _f32(np.linspace(low, high, 3_000_001))
    y = vm.exp(x.view(np.uint32))
    assert _ulps(y, np.exp(x.astype(np.float64))).max() < 1.0


def test_reciprocal_and_rsqrt_within_two_ulps_on_every_significand():
    # Every significand in [1, 2) (and [2, 4) for rsqrt, whose seed depends on the exponent's
    # parity), sampled with a stride coprime to the table's intervals, at three exponents.
    m = _f32(1 + np.arange(0, 1 << 23, 3) / (1 << 23))
    for scale in (1.0, 2.0 ** -60, 2.0 ** 70):
        x = _f32(m * scale)
        assert _ulps(vm.recip(x.view(np.uint32)), 1 / x.astype(np.float64)).max() < 1.5
        for odd in (1.0, 2.0):
            z = _f32(x * odd)
            reference = 1 / np.sqrt(z.astype(np.float64))
            assert _ulps(vm.rsqrt(z.view(np.uint32)), reference).max() < 1.5


@pytest.mark.parametrize("function, value, expected", [
    ("exp", np.inf, np.inf), ("exp", -np.inf, 0.0), ("exp", 89.0, np.inf),
    ("exp", -104.0, 0.0), ("exp", 0.0, 1.0), ("exp", -0.0, 1.0),
    ("recip", 0.0, np.inf), ("recip", -0.0, -np.inf), ("recip", np.inf, 0.0),
    ("recip", -np.inf, -0.0), ("recip", 2.0 ** -130, np.inf), ("recip", -(2.0 ** 126), -0.0),
    ("recip", 4.0, 0.25), ("rsqrt", 4.0, 0.5), ("rsqrt", 0.0, np.inf),
    ("rsqrt", -0.0, -np.inf), ("rsqrt", np.inf, 0.0), ("rsqrt", 2.0 ** -140, np.inf),
])
def test_special_values(function, value, expected):
    result = getattr(vm, function)(_f32([value]).view(np.uint32))
    assert result.view(np.float32)[0] == expected
    assert np.signbit(result.view(np.float32)[0]) == np.signbit(expected)


@pytest.mark.parametrize("function", ["exp", "recip", "rsqrt"])
def test_nan_gives_the_canonical_nan(function):
    x = np.array([0x7FC00000, 0xFF812345, 0x7F800001], dtype=np.uint32)
    assert list(getattr(vm, function)(x)) == [0x7FC00000] * 3
    if function == "rsqrt":
        assert vm.rsqrt(_f32([-1.0, -np.inf]).view(np.uint32)).tolist() == [0x7FC00000] * 2


# ---- Sum order --------------------------------------------------------------------------------

def test_sum_is_lanes_then_a_pairwise_tree():
    rng = np.random.default_rng(3)
    x = _f32(rng.standard_normal(53) * 10 ** rng.uniform(-3, 3, 53))
    lanes = [np.float32(-0.0)] * V.SUM_LANES
    for i, v in enumerate(x):
        lanes[i % V.SUM_LANES] = np.float32(lanes[i % V.SUM_LANES] + v)
    while len(lanes) > 1:
        lanes = [np.float32(lanes[j] + lanes[j + 1]) for j in range(0, len(lanes), 2)]
    assert V.tree_sum(x.view(np.uint32)) == lanes[0].view(np.uint32)
    # The order matters: summing left to right gives another result for these values.
    assert np.float32(np.cumsum(x, dtype=np.float32)[-1]) != lanes[0]
    # −0 stays −0 (every partial starts at −0, the identity).
    assert V.tree_sum(_f32([-0.0, -0.0]).view(np.uint32)) == 0x80000000


# ---- Operators against float64, on SmolLM2's real operands -----------------------------------

@pytest.fixture(scope="module")
def layer0():
    from sim.smollm2 import layer0_vectors
    return layer0_vectors()


def test_rmsnorm_and_swiglu_on_real_operands(layer0):
    model = V.VectorModel()
    eps = layer0["epsilon"]
    for t in range(len(layer0["embeddings"])):
        x = layer0["embeddings"][t].astype(np.float64)
        y = V.rmsnorm(model, layer0["embeddings"][t], layer0["attn_norm"], eps)
        reference = x / np.sqrt(np.mean(x * x) + eps) * layer0["attn_norm"]
        assert _ulps(y, reference).max() <= 4
        gate, up = layer0["gate"][t].astype(np.float64), layer0["up"][t].astype(np.float64)
        y = V.swiglu(model, layer0["gate"][t], layer0["up"][t])
        assert _ulps(y, gate / (1 + np.exp(-gate)) * up).max() <= 4
    assert not model.nonfinite


def test_softmax_with_causal_mask_on_real_scores(layer0):
    model = V.VectorModel()
    scale = 1 / np.sqrt(layer0["head_dim"])
    for head in range(layer0["scores"].shape[0]):
        for t in range(layer0["scores"].shape[1]):
            row = layer0["scores"][head, t]
            y = V.softmax(model, row, scale, limit=t + 1)
            s = row[:t + 1].astype(np.float64) * np.float32(scale)
            e = np.exp(s - s.max())
            assert _ulps(y[:t + 1], e / e.sum()).max() <= 4
            assert np.all(y[t + 1:].view(np.uint32) == 0)


def test_softmax_rows_in_overlapped_order_equal_one_softmax_per_row(layer0):
    scores = layer0["scores"][:, 4]
    limits = [5, 3, 1, 4, 5, 2, 5, 5, 1]
    model = V.VectorModel()
    rows = V.softmax_rows(model, scores, 0.125, limits)
    for row, limit, got in zip(scores, limits, rows):
        assert np.array_equal(V.softmax(V.VectorModel(), row, 0.125, limit).view(np.uint32),
                              got.view(np.uint32))


def test_rope_rotates_adjacent_pairs_as_llama_cpp_does_for_llama(layer0):
    from gguf import GGUFReader
    from sim.smollm2 import gguf_path
    reader = GGUFReader(gguf_path())
    # llama.cpp's rope type NORM (adjacent pairs) is the one of architecture "llama".
    architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    assert architecture == "llama"
    assert int(reader.fields["llama.rope.dimension_count"].parts[-1][0]) == layer0["head_dim"]
    model = V.VectorModel()
    d, base = layer0["head_dim"], layer0["rope_base"]
    for t in range(layer0["q"].shape[0]):
        x = layer0["q"][t, 0]
        y = V.rope(model, x, V.rope_table(t, d, base)).astype(np.float64)
        # Written from the definition: pair (x[2i], x[2i+1]) rotated by t·base^(−2i/d).
        for i in range(d // 2):
            theta = t * base ** (-2 * i / d)
            c, s = np.cos(theta), np.sin(theta)
            x0, x1 = float(x[2 * i]), float(x[2 * i + 1])
            assert y[2 * i] == pytest.approx(x0 * c - x1 * s, abs=2e-6 * max(1, abs(x0) + abs(x1)))
            assert y[2 * i + 1] == pytest.approx(x0 * s + x1 * c,
                                                 abs=2e-6 * max(1, abs(x0) + abs(x1)))


def test_layernorm_and_gelu():
    rng = np.random.default_rng(5)
    model = V.VectorModel()
    x, w, b = (_f32(rng.standard_normal(384) * s + o) for s, o in ((2, 3), (1, 0), (1, 0)))
    y = V.layernorm(model, x, w, b, 1e-12)
    xd = x.astype(np.float64)
    reference = (xd - xd.mean()) / np.sqrt(xd.var() + 1e-12) * w + b
    assert np.max(np.abs(y - reference)) < 1e-5
    g = _f32(rng.uniform(-8, 8, 4000))
    gd = g.astype(np.float64)
    reference = 0.5 * gd * (1 + np.tanh(np.sqrt(2 / np.pi) * (gd + 0.044715 * gd ** 3)))
    # Relative to the larger of the result and the input: near the zero crossing the tanh
    # form's cancellation makes the ulp of the result meaningless.
    error = np.abs(V.gelu(model, g) - reference) / np.maximum(np.abs(reference), 1e-3 * np.abs(gd))
    assert error.max() < 4e-6


def _gelu_erf_reference(x):
    x = np.asarray(x, dtype=np.float64)
    return np.array([v * 0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x])


def test_gelu_erf_accuracy():
    # Against float64 erfc over the range where Φ is not rounded away: ≤ 10 ulp for |x| < 4,
    # where the rounding of x² in exp(−x²/2) is still small; beyond, the error grows with x²
    # (docs/vector.md), so there it is bounded relative to the result's magnitude instead.
    x = _f32(np.concatenate([np.linspace(-14, 14, 56001),
                             np.random.default_rng(11).standard_normal(9000) * 2]))
    reference = _gelu_erf_reference(x)
    error = vm.ulp_error(V.gelu_erf(V.VectorModel(65535), x).view(np.uint32), reference)
    inner = np.abs(x) < 4
    assert error[inner].max() < 10
    assert np.mean(error[inner]) < 1.5
    assert error.max() < 130


def test_gelu_erf_special_values():
    x = _f32([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 20.0, -20.0])
    model = V.VectorModel()
    y = V.gelu_erf(model, x)
    assert model.nonfinite
    assert y[0] == 0 and not np.signbit(y[0]) and y[1] == 0 and np.signbit(y[1])
    assert y[2] == np.inf and np.isnan(y[3]) and np.isnan(y[4])
    assert y[5] == np.float32(1e30) and y[6] == 0 and y[7] == 20 and y[8] == 0


def test_erfc_constants_are_the_fit():
    c, m = vm.fit_erfc()
    stored = np.array((vm.ERFC_C,) + vm.ERFC_M, dtype=np.uint32)
    fitted = np.array((c,) + m, dtype=np.uint32)
    # A different LAPACK may round a coefficient the other way: allow one ulp.
    assert np.all(np.abs(stored.astype(np.int64) - fitted.astype(np.int64)) <= 1)


# ---- Rejection rules of the model (the RTL mirrors them) ---------------------------------------

def test_bad_lengths_are_rejected_and_flagged():
    model = V.VectorModel(max_length=64)
    x = np.zeros(65, dtype=np.uint32)
    assert model.run(V.Command(V.Op.ADD, 65), x, x).size == 0
    assert model.command_error and not model.nonfinite
    model = V.VectorModel(max_length=64)
    assert model.run(V.Command(V.Op.ROPE, 3), x[:3], x[:3]).size == 0
    assert model.command_error
    model = V.VectorModel(max_length=64)
    assert model.run(V.Command(V.Op.SILU, 0), x[:0]).size == 0
    assert model.command_error
    for command, a, b in ((V.Command(V.Op.ADD, 33, quantize=True), x[:33], x[:33]),
                          (V.Command(V.Op.RMS, 32, quantize=True), x[:32], None)):
        model = V.VectorModel(max_length=64)
        assert model.run(command, a, b).size == 0
        assert model.command_error
    model = V.VectorModel(max_length=64)
    assert model.run(V.Command(V.Op.ADD, 32, quantize=True), x[:32], x[:32]).size == 32
    assert not model.command_error


def test_nonfinite_is_flagged():
    model = V.VectorModel()
    y = V.add(model, _f32([1.0, np.inf]), _f32([1.0, 1.0]))
    assert model.nonfinite and np.isinf(y[1])
    model = V.VectorModel()
    V.mul(model, _f32([3e38]), _f32([10.0]))       # overflow of a finite product
    assert model.nonfinite


# ---- Parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 0, -3, 65536, 2.5, True, "8"])
def test_max_length_is_checked(value):
    from rtl.tiles.vector import VectorUnit
    with pytest.raises(ValueError, match=rf"^Vector unit max_length must be an integer from 2 "
                                         rf"to 65535, not {value!r}$"):
        VectorUnit(max_length=value)


def test_unit_and_model_agree_on_constants():
    from rtl.tiles import vector as rtl
    assert rtl.SUM_LANES == V.SUM_LANES
    assert {op.name: op.value for op in rtl.Op} == {op.name: op.value for op in V.Op}
    assert rtl._GELU_G0 == V.GELU_G0 and rtl._GELU_G1 == V.GELU_G1
    assert fp32.floats(np.uint32(V.GELU_G0)) * fp32.floats(np.uint32(V.GELU_G1)) == \
        pytest.approx(-2 * np.sqrt(2 / np.pi), rel=1e-6)

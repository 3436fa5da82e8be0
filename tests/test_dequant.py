"""The dequant pipeline: parameters, bad modes (Amaranth simulator), and its golden model against the
independent float64 reference of SPEC §4, gguf.quants.dequantize(W) @ gguf.quants.dequantize(x_q8)."""

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

import sim.dequant as golden
from rtl.config import WEIGHT_FORMATS, TesseraConfig
from rtl.tiles.dequant import Dequantizer


@pytest.mark.parametrize("outputs, error, message", [
    (0, ValueError, "Dequantizer outputs must be an integer from 1 to 4096, not 0"),
    (5000, ValueError, "Dequantizer outputs must be an integer from 1 to 4096, not 5000"),
    ("8", TypeError, "Dequantizer outputs must be an integer from 1 to 4096, not '8'"),
])
def test_bad_outputs(outputs, error, message):
    with pytest.raises(error, match=message):
        Dequantizer(outputs)


def test_bad_formats():
    with pytest.raises(ValueError, match="Dequantizer formats must be a non-empty tuple of "
                                         "Q8_0, Q4_0, Q4_1, MXFP4, TQ2_0, not \\('Q5_K',\\)"):
        Dequantizer(8, formats=("Q5_K",))


def test_from_config_holds_a_tile_of_outputs():
    assert Dequantizer.from_config(TesseraConfig()).outputs == 8 * 8 * 2
    assert Dequantizer.from_config(TesseraConfig(weight_formats=("Q8_0",))).outputs == 64


def test_undefined_mode_is_dropped_and_flagged():
    dut = Dequantizer(4, formats=("Q8_0",))

    async def bench(ctx):
        payload = Value.cast(dut.i.payload)
        layout = dut.i.payload.shape()
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        # Mode 1 (Q4_0) is not built in: taken at once, dropped, flagged.
        ctx.set(payload, (1 << layout["mode"].offset) | (1 << layout["first"].offset)
                | (1 << layout["last"].offset))
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(Dequantizer.TERM_LATENCY + 20):
            assert not ctx.get(dut.o.valid)
            await ctx.tick()
        assert ctx.get(dut.errors.mode)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        assert not ctx.get(dut.errors.mode)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def relative_errors(fmt, w_raw, x):
    """|y − reference| / Σ|w·x| per output, against the float64 product of gguf's dequantized
    weights and activations."""
    qtype = getattr(GGMLQuantizationType, fmt)
    weights = dequantize(w_raw, qtype).astype(np.float64)
    xq = dequantize(quantize(x, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
    reference = xq.astype(np.float64) @ weights.T
    magnitude = np.abs(xq.astype(np.float64)) @ np.abs(weights.T)
    y = golden.matmul(fmt, w_raw, x).astype(np.float64)
    return np.abs(y - reference) / np.where(magnitude == 0, 1, magnitude)


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_golden_matmul_sits_at_binary32_accumulation_error(fmt):
    rng = np.random.default_rng(3)
    n, k = 24, 1024
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 2, (n, 1))).astype(np.float32)
    w_raw = quantize(w, getattr(GGMLQuantizationType, fmt))
    x = (rng.standard_normal((3, k)) * 4).astype(np.float32)
    errors = relative_errors(fmt, w_raw, x)
    # Each term carries a few roundings and the sum over B blocks B − 1 more, each at most
    # 2^-24 of the running magnitude; the reference's dequantized values one each.
    blocks = k // 32
    assert errors.max() <= (blocks + 6) * 2.0 ** -24
    # And the error is not zero: the two really compute differently (rounding).
    assert errors.max() > 0

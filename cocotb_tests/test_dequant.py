"""The dequant pipeline under Verilator: quantized matmuls of every weight format, random and real
(SmolLM2-135M), their block sums and scales streamed through the RTL with random stalls on both
streams, every output bit-exact with the golden model (sim/dequant.py).

The block sums come from NumPy (the MAC array's own tests hold it to the same sums), the weight
codes and scales from sim/gguf_blocks.py (the unpacker's tests hold it to gguf), the activation
scales from gguf's Q8_0 quantizer (the quantizer's tests hold it to gguf).
"""


import numpy as np
import pytest
from amaranth.hdl import Shape
from gguf import GGMLQuantizationType
from gguf.quants import quantize

import sim.dequant as golden
from rtl.config import WEIGHT_FORMATS, mode_code
from rtl.tiles.dequant import Dequantizer, term_layout

from .vectors import run_vectors, new_seed


OUTPUTS = 64




def pack_terms(ops, outputs):
    """Payload integers of the terms of ``ops`` in the MAC array's order: block by block, and
    within a block every output (m, n) in row-major order."""
    layout = term_layout(outputs)
    m_count, n_count, blocks = ops.sums.shape
    shape = (m_count, n_count, blocks)
    fields = {
        "sum": np.broadcast_to(ops.sums, shape),
        "mode": np.full(shape, mode_code(ops.format)),
        "d_w": np.broadcast_to(ops.d_w, shape),
        "m_w": np.broadcast_to(ops.m_w, shape),
        "d_x": np.broadcast_to(ops.d_x, shape),
        "q_sum": np.broadcast_to(ops.q_sum, shape),
        "index": np.broadcast_to((np.arange(m_count)[:, None] * n_count
                                  + np.arange(n_count)[None, :])[:, :, None], shape),
        "first": np.broadcast_to(np.arange(blocks) == 0, shape),
        "last": np.broadcast_to(np.arange(blocks) == blocks - 1, shape),
    }
    payloads = np.zeros(shape, dtype=object)
    for name, value in fields.items():
        field = layout[name]
        width = Shape.cast(field.shape).width
        payloads = payloads + ((np.asarray(value).astype(np.int64) & ((1 << width) - 1))
                               .astype(object) << field.offset)
    # Block-major: (blocks, m, n).
    return list(np.moveaxis(payloads, 2, 0).reshape(-1))


def run_matmul(fmt, w_raw, x, seed, *, idle=0.25, stall=0.25):
    ops = golden.matmul_operands(fmt, w_raw, x)
    expected = golden.matmul(fmt, w_raw, x).view(np.uint32).reshape(-1)
    outputs = max(OUTPUTS, expected.size)
    payloads = pack_terms(ops, outputs)
    dut = Dequantizer(outputs)
    run = run_vectors(dut, toplevel="dequant", inputs=payloads, seed=seed,
                      idle=idle, stall=stall, outputs=expected.size)
    count = expected.size
    assert len(run.outputs) == count
    layout = dut.o.payload.shape()
    index_bits = Shape.cast(layout["index"].shape).width
    index = (run.outputs >> np.uint64(layout["index"].offset)
             & np.uint64((1 << index_bits) - 1)).astype(np.int64)
    value = (run.outputs >> np.uint64(layout["value"].offset)
             & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    # The last terms arrive in output order, so the results do too.
    assert list(index) == list(range(count))
    bad = np.flatnonzero(value != expected)
    assert not bad.size, (f"{fmt}: {bad.size} of {count} outputs differ (seed {seed}); first "
                          f"output {bad[0]}: RTL {value[bad[0]]:#x}, golden {expected[bad[0]]:#x}")
    return run.cycles, len(payloads)


def random_weights(rng, fmt, n, k):
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 1.0, (n, 1))).astype(np.float32)
    return quantize(w, getattr(GGMLQuantizationType, fmt))


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_random_matmul_is_bit_exact(fmt):
    seed = new_seed()
    rng = np.random.default_rng(seed)
    m, n, k = 4, 16, 512
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    run_matmul(fmt, random_weights(rng, fmt, n, k), x, seed)


def test_few_outputs_wait_for_their_sums():
    # Two outputs: each term waits for the previous sum of its output to leave the adder.
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    cycles, terms = run_matmul("Q8_0", random_weights(rng, "Q8_0", 2, 256), x, seed,
                               idle=0, stall=0)
    # One term per output per adder pass at most: the busy bits did throttle the input.
    assert cycles >= (terms // 2) * 10


def test_nonfinite_scales_give_ieee_results():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    w = random_weights(rng, "Q4_1", 8, 64).copy()
    # Block 0 of row 0: d = +inf; block 1 of row 1: m = NaN; row 2: d = 0, m = -inf.
    w[0, 0:2] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)
    w[1, 22:24] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
    w[2, 0:2] = 0
    w[2, 2:4] = np.frombuffer(np.float16(-np.inf).tobytes(), np.uint8)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    run_matmul("Q4_1", w, x, seed)
    y = golden.matmul("Q4_1", w, x)
    assert not np.isfinite(y[:, :3]).any() and np.isfinite(y[:, 3:]).all()


def test_real_smollm2_attention_matmul_is_bit_exact():
    from sim.smollm2 import prompt_activations, tensors
    q = {t.name: t for t in tensors()}["blk.0.attn_q.weight"]
    assert q.tensor_type == GGMLQuantizationType.Q4_1
    # A real prompt's layer-0 input times the first 32 rows of the real query projection.
    run_matmul("Q4_1", np.asarray(q.data)[:32], prompt_activations()[:2], new_seed())


def test_an_output_of_negative_zeros_is_negative_zero():
    # Every term of row 0 is 0 · (negative scale) = −0, and −0 + −0 = −0: the first term must
    # not be added to +0. Row 1 is the same with a positive scale: +0.
    seed = new_seed()
    rng = np.random.default_rng(seed)
    w = random_weights(rng, "Q8_0", 4, 128).copy().reshape(4, -1, 34)
    w[0:2, :, 2:] = 0
    w[0, :, 0:2] = np.frombuffer(np.float16(-0.5).tobytes(), np.uint8)
    w[1, :, 0:2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    w = w.reshape(4, -1)
    x = rng.standard_normal((1, 128)).astype(np.float32)
    run_matmul("Q8_0", w, x, seed)
    y = golden.matmul("Q8_0", w, x)
    assert y[0, 0] == 0 and np.signbit(y[0, 0]) and not np.signbit(y[0, 1])

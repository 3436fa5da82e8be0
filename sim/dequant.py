"""Golden model of the dequant pipeline (rtl/tiles/dequant.py) and of a whole quantized matmul:
block sums scaled and accumulated in binary32, in the order docs/dequant.md fixes.

    s = d_w · d_x                          (MXFP4: d_w = 2^(e − 128))
    t = float(sum) · s
    Q4_1 only:  t = t + m_w · (d_x · float(Σq_x))
    y = (((t₀ + t₁) + t₂) + …)             over the output's 32-element blocks in K order

Every operation is one ``np.float32`` operation (round to nearest even); NaN results are the
canonical NaN, as the hardware makes them (sim/fp32.py).
"""

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from .fp32 import bits
from .gguf_blocks import FORMATS, code_values, e8m0_half, split_blocks


__all__ = ["terms", "accumulate", "MatmulOperands", "matmul_operands", "matmul_operands_q8",
           "matmul", "matmul_q8"]


def _half(raw):
    return np.asarray(raw, dtype=np.uint16).view(np.float16).astype(np.float32)


def terms(fmt, sums, d_w, d_x, m_w=None, q_sum=None):
    """float32 term of every block sum. ``d_w``, ``d_x`` and ``m_w`` are raw fp16 bits (uint16;
    for MXFP4 ``d_w`` holds the E8M0 exponent); all arguments broadcast together."""
    with np.errstate(all="ignore"):
        weight_scale = e8m0_half(np.asarray(d_w) & 0xFF) if fmt == "MXFP4" else _half(d_w)
        x_scale = _half(d_x)
        scale = weight_scale * x_scale
        t = np.asarray(sums).astype(np.float32) * scale
        if fmt == "Q4_1":
            shift = x_scale * np.asarray(q_sum).astype(np.float32)
            t = t + _half(m_w) * shift
    return t.astype(np.float32)


def accumulate(t, axis=-1):
    """Left-to-right binary32 sum of ``t`` along ``axis``, as the pipeline adds the terms."""
    t = np.moveaxis(np.asarray(t, dtype=np.float32), axis, -1)
    y = t[..., 0].copy()
    with np.errstate(all="ignore"):
        for b in range(1, t.shape[-1]):
            y = y + t[..., b]
    return y


class MatmulOperands:
    """What the pipeline sees of ``y = W · x``: per output (m, n) and block b the exact integer
    block sum and the raw scale fields, all as (M, N, B) arrays (scales broadcast)."""

    def __init__(self, fmt, sums, d_w, d_x, m_w, q_sum):
        self.format = fmt
        self.sums = sums
        self.d_w = d_w
        self.d_x = d_x
        self.m_w = m_w
        self.q_sum = q_sum


def matmul_operands(fmt, w_raw, x):
    """Block sums and scales of ``W · x`` for weights ``w_raw`` (uint8, N rows of GGUF blocks
    of ``fmt``) and float32 activations ``x`` (M × K), quantized to Q8_0 as the chip does
    (``gguf.quants.quantize``, byte-identical by SPEC §2)."""
    x = np.asarray(x, dtype=np.float32)
    k = x.shape[1]
    x_blocks = split_blocks("Q8_0", quantize(x, GGMLQuantizationType.Q8_0))
    x_codes = code_values("Q8_0", x_blocks.codes).reshape(x.shape[0], k)
    d_x = x_blocks.d.view(np.uint16).reshape(x.shape[0], k // 32)
    return matmul_operands_q8(fmt, w_raw, x_codes, d_x)


def matmul_operands_q8(fmt, w_raw, x_codes, d_x, *, interleaved=False):
    """:func:`matmul_operands` for activations already quantized: Q8_0 codes ``x_codes``
    (M × K integers) and raw fp16 block scales ``d_x`` (M × K/32), as the tile holds them.
    ``interleaved``: MXFP4 weights in the gpt-oss nibble order."""
    x_codes = np.asarray(x_codes, dtype=np.int64)
    rows = np.asarray(w_raw, dtype=np.uint8).reshape(np.asarray(w_raw).shape[0], -1)
    n, k = rows.shape[0], x_codes.shape[1]
    x_codes = x_codes.reshape(x_codes.shape[0], k // 32, 32)
    d_x = np.asarray(d_x, dtype=np.uint16)
    blocks = split_blocks(fmt, rows, interleaved=interleaved and fmt == "MXFP4")
    elements = FORMATS[fmt][0]
    w_codes = code_values(fmt, blocks.codes).reshape(n, k // 32, 32)
    # A TQ2_0 block is eight 32-element blocks sharing one scale.
    per = elements // 32

    def spread(field):
        return np.repeat(np.asarray(field).reshape(n, k // elements), per, axis=1)

    d_w = spread(blocks.e if fmt == "MXFP4" else blocks.d.view(np.uint16))
    m_w = spread(blocks.m.view(np.uint16)) if fmt == "Q4_1" else np.zeros_like(d_w)
    sums = np.einsum("mbk,nbk->mnb", x_codes, w_codes)
    q_sum = x_codes.sum(axis=2)
    return MatmulOperands(fmt, sums, d_w[None, :, :], d_x[:, None, :], m_w[None, :, :],
                          q_sum[:, None, :])


def matmul(fmt, w_raw, x):
    """``y = W · x`` (M × N, float32) as the MAC array and the dequant pipeline compute it."""
    return _result(matmul_operands(fmt, w_raw, x))


def matmul_q8(fmt, w_raw, x_codes, d_x, *, interleaved=False):
    """:func:`matmul` for activations already quantized to Q8_0 codes and raw fp16 scales."""
    return _result(matmul_operands_q8(fmt, w_raw, x_codes, d_x, interleaved=interleaved))


def _result(ops):
    t = terms(ops.format, ops.sums, ops.d_w, ops.d_x, ops.m_w, ops.q_sum)
    return bits(accumulate(t)).view(np.float32)

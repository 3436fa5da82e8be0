"""GGUF weight blocks read from their bytes, as SPEC §2 lays them out: integer codes and scales.

This is the reading the hardware weight unpacker does, written from the layout table, not from
the ``gguf`` package; the tests check it against ``gguf.quants.dequantize``.
"""

from dataclasses import dataclass

import numpy as np


__all__ = ["FORMATS", "Blocks", "split_blocks", "code_values", "e2m1_doubled", "ZERO_CODE",
           "e8m0_half", "element_values"]


#: format -> (elements per block, bytes per block)
FORMATS = {
    "Q8_0": (32, 34),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "MXFP4": (32, 17),
    "TQ2_0": (256, 66),
}

#: A code whose integer value is zero, per format (for padding a matrix to the array's shape).
ZERO_CODE = {"Q8_0": 0, "Q4_0": 8, "Q4_1": 0, "MXFP4": 0, "TQ2_0": 1}


def e2m1_doubled(code):
    """Twice the value of a 4-bit E2M1 code (sign, two exponent bits, one mantissa bit).

    E2M1 has exponent bias 1; exponent 0 is subnormal (0 or 0.5). Doubling makes every value an
    integer: 0, 1, 2, 3, 4, 6, 8, 12 and their negatives.
    """
    code = np.asarray(code, dtype=np.int64)
    sign = np.where(code & 8, -1, 1)
    exponent = (code >> 1) & 3
    mantissa = code & 1
    # value = 2**(e-1) * (1 + m/2) for e > 0, m/2 for e == 0; doubled: 2**e + m*2**(e-1), m.
    doubled = np.where(exponent == 0, mantissa,
                       (1 << exponent) + mantissa * (1 << np.maximum(exponent - 1, 0)))
    return sign * doubled


@dataclass
class Blocks:
    """Blocks of one format: ``codes`` (blocks × elements, the raw code of each element in
    element order: a byte for Q8_0, a nibble for the 4-bit formats, two bits for TQ2_0) and the
    raw scale fields (``d``, and ``m`` for Q4_1, as float16; ``e`` for MXFP4 as uint8)."""

    format: str
    codes: np.ndarray
    d: np.ndarray = None
    m: np.ndarray = None
    e: np.ndarray = None


def split_blocks(fmt, raw, *, interleaved=False):
    """Read ``raw`` (uint8, a whole number of blocks, any leading shape) as blocks of ``fmt``.

    ``interleaved`` (MXFP4 only) reads the nibbles in the order of gpt-oss checkpoints:
    element 2k in the low nibble of byte k, element 2k + 1 in the high nibble.
    """
    if interleaved and fmt != "MXFP4":
        raise ValueError(f"Only MXFP4 has an interleaved nibble order, not {fmt}")
    if fmt not in FORMATS:
        raise ValueError(f"Unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")
    elements, size = FORMATS[fmt]
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size % size:
        raise ValueError(f"{fmt} data must be a multiple of {size} bytes, not {raw.size}")
    b = raw.reshape(-1, size)
    if fmt == "Q8_0":
        return Blocks(fmt, b[:, 2:].copy(), d=b[:, :2].copy().view(np.float16)[:, 0])
    if fmt == "TQ2_0":
        qs = b[:, :64]
        # Byte j of each 32-byte half h holds elements h*128 + s*32 + j in bits 2s, 2s+1.
        codes = np.empty((b.shape[0], 256), dtype=np.uint8)
        for h in range(2):
            for s in range(4):
                codes[:, h * 128 + s * 32:h * 128 + (s + 1) * 32] = \
                    (qs[:, h * 32:(h + 1) * 32] >> (2 * s)) & 3
        return Blocks(fmt, codes, d=b[:, 64:66].copy().view(np.float16)[:, 0])
    header = {"Q4_0": 2, "Q4_1": 4, "MXFP4": 1}[fmt]
    qs = b[:, header:]
    if interleaved:
        # Element 2k is the low nibble of byte k, element 2k + 1 the high nibble.
        codes = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(b.shape[0], 32)
    else:
        # Element j is the low nibble of byte j, element j + 16 the high nibble.
        codes = np.concatenate([qs & 0xF, qs >> 4], axis=1)
    blocks = Blocks(fmt, codes)
    if fmt == "MXFP4":
        blocks.e = b[:, 0].copy()
    else:
        blocks.d = b[:, :2].copy().view(np.float16)[:, 0]
        if fmt == "Q4_1":
            blocks.m = b[:, 2:4].copy().view(np.float16)[:, 0]
    return blocks


def code_values(fmt, codes):
    """The integers the MAC array multiplies for raw ``codes`` of ``fmt`` (SPEC §2):
    Q8_0 the signed byte; Q4_0 q − 8; Q4_1 q; MXFP4 twice the E2M1 value; TQ2_0 q − 1."""
    codes = np.asarray(codes).astype(np.int64)
    if fmt == "Q8_0":
        return np.where(codes >= 128, codes - 256, codes)
    if fmt == "Q4_0":
        return codes - 8
    if fmt == "Q4_1":
        return codes
    if fmt == "MXFP4":
        return e2m1_doubled(codes)
    if fmt == "TQ2_0":
        return codes - 1
    raise ValueError(f"Unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")


def e8m0_half(e):
    """Half the scale an E8M0 exponent stands for, 2**(e − 128), as float32: MXFP4's block scale
    applied to twice the E2M1 value (SPEC §2: E2M1(q)·2**(e − 127)). Exponents 0 and 1 give the
    subnormals 2**−128 and 2**−127; 0xFF gives 2**127 (the OCP MX specification reserves it for
    NaN, llama.cpp and ``gguf`` read it as a number)."""
    e = np.asarray(e).astype(np.int32)
    return np.ldexp(np.float32(1), e - 128).astype(np.float32)


def element_values(fmt, values, d=None, m=None, e=None):
    """The float32 value of every element from its integer code value (``code_values``) and the
    block's raw scale fields, one block per row of ``values``: d·q (Q8_0, Q4_0, TQ2_0),
    d·q + m (Q4_1), 2**(e − 128)·q (MXFP4); each product and sum rounded to binary32, as
    ``gguf.quants.dequantize`` computes them."""
    q = np.asarray(values).astype(np.float32)
    # An inf/NaN scale (or E8M0 0xFF, 2**127) gives inf/NaN elements, as it does in gguf.
    with np.errstate(over="ignore", invalid="ignore"):
        if fmt == "MXFP4":
            return e8m0_half(e)[:, None] * q
        out = np.asarray(d, dtype=np.float16).astype(np.float32)[:, None] * q
        if fmt == "Q4_1":
            out = out + np.asarray(m, dtype=np.float16).astype(np.float32)[:, None]
        return out

"""Golden model of the Q8_0 activation quantizer (rtl/tiles/quantizer.py), written from the
definition of ``gguf.quants.quantize(x, Q8_0)`` (SPEC §2, docs/quantizer.md):

- ``d = amax / 127`` in binary32, ``amax`` the largest ``|x|`` of the 32-element block;
- ``id = 1 / d`` in binary32, 0 where ``d == 0``;
- ``q = round_half_away(x · id)``, the product in binary32;
- ``d`` stored as binary16 (round to nearest even), then the 32 codes as int8.

Cases the formula leaves to the platform, as NumPy computes them on x86-64 (where converting a
non-finite float to int8 gives 0) and as the RTL defines them:

- a product ``x · id`` that is not finite (``1 / d`` = ∞ for ``d`` below about 2^-128; a block
  with ±∞ or NaN) gives ``q = 0``;
- a block with ±∞ or NaN is flagged ``nonfinite``; its ``d`` is binary16 ∞ for ∞ and the
  canonical NaN 0x7E00 for a NaN (gguf keeps the payload of whichever NaN ``max`` returned).

Every finite product lies within 127 · (1 + 2^-21) of 0, so every other ``q`` is in [−127, 127].
"""

from dataclasses import dataclass

import numpy as np

from . import fp32


__all__ = ["BLOCK", "BLOCK_BYTES", "QuantizedBlocks", "quantize"]


BLOCK = 32
BLOCK_BYTES = 2 + BLOCK


@dataclass
class QuantizedBlocks:
    """``n`` quantized blocks: ``raw`` (n × 34 bytes, as GGUF stores them), the raw binary16
    scales ``d``, the codes ``q`` (n × 32 int8), their sums ``sums`` and the ``nonfinite``
    flag of each block."""

    raw: np.ndarray
    d: np.ndarray
    q: np.ndarray
    sums: np.ndarray
    nonfinite: np.ndarray


def quantize(x):
    """Quantize float32 values ``x`` (a multiple of 32 of them, any shape) to Q8_0 blocks."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if x.size % BLOCK:
        raise ValueError(f"Q8_0 needs a multiple of {BLOCK} values, not {x.size}")
    blocks = x.reshape(-1, BLOCK)
    with np.errstate(all="ignore"):
        nonfinite = ~np.all(np.isfinite(blocks), axis=1)
        # max propagates NaN; |x| of a block with both ∞ and NaN is NaN.
        amax = np.max(np.abs(blocks), axis=1)
        d = amax / np.float32(127)
        inverse = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
        products = blocks * inverse[:, None]
        finite = np.isfinite(products)
        rounded = fp32.round_half_away(np.where(finite, products, np.float32(0)))
    assert np.all(np.abs(rounded) <= 127), "a finite product beyond ±127.5"
    q = rounded.astype(np.int8)
    d16 = fp32.fp32_to_fp16(d.view(np.uint32))
    raw = np.concatenate([d16.astype("<u2").view(np.uint8).reshape(-1, 2),
                          q.view(np.uint8)], axis=1)
    return QuantizedBlocks(raw=raw, d=d16, q=q, sums=q.astype(np.int64).sum(axis=1),
                           nonfinite=nonfinite)

"""Reference model of the MAC array: exact block sums, and the streams that drive the RTL.

The array computes, for activation codes ``x`` (M × K, int8) and weight values ``w`` (N × K), the
exact integer sums ``S[m, n, b] = Σ_{k in block b} x[m, k] · w[n, k]`` over 32-element blocks
of K. :func:`block_sums` is that definition in NumPy. :func:`schedule` cuts a matmul into the
k-step words, the command and the expected output words of the hardware interface documented in
``docs/mac_array.md``.
"""

from dataclasses import dataclass

import numpy as np

from rtl.config import PACKED_FORMATS, mode_code
from .gguf_blocks import ZERO_CODE, code_values


__all__ = ["BLOCK", "block_sums", "Schedule", "schedule"]


#: Elements of K per block sum (the block size of Q8_0 activations).
BLOCK = 32


def block_sums(x, w):
    """Exact per-block dot products: ``S[m, n, b]`` as int64, for int ``x`` (M × K) and ``w``
    (N × K); K must be a multiple of :data:`BLOCK`."""
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    m, k = x.shape
    n, k2 = w.shape
    if k != k2 or k % BLOCK:
        raise ValueError(f"K must agree and be a multiple of {BLOCK}, not {k} and {k2}")
    xb = x.reshape(m, k // BLOCK, BLOCK)
    wb = w.reshape(n, k // BLOCK, BLOCK)
    return np.einsum("mbk,nbk->mnb", xb, wb)


@dataclass
class Schedule:
    """One matmul as the array's interface sees it.

    ``command``: (mode, blocks, tiles). ``x_steps``: steps × rows, int8 codes. ``w_steps``:
    steps × cols × 2, the (lo, hi) integer weights each column takes per step. ``outputs``: the expected output words in
    order, each ``(tile, block, row, sums)`` with ``sums`` a tuple of ``lanes × cols`` ints.
    ``tile_origin[t]`` is the (m, n) of tile ``t``'s first output. ``macs``: the useful
    multiply-accumulates (M·N·K of the unpadded matmul).
    """

    command: tuple
    x_steps: np.ndarray
    w_steps: np.ndarray
    outputs: list
    tile_origin: list
    macs: int


def schedule(fmt, x, w_codes, *, rows, cols, lanes):
    """Cut ``x`` (M × K int8 codes) times ``w_codes`` (N × K raw codes of ``fmt``) into tiles.

    The array is ``rows × cols``; ``lanes`` is 2 for an array built with a packed format, else 1.
    A tile is ``rows`` outputs along M by ``cols`` (Q8_0) or ``2·cols`` (packed formats) along N;
    tiles go along N first, then M, and within a tile K goes block by block. M and N are padded
    with zero activations and zero-valued weight codes. The weights go in as integers: in
    Q8_0 ``lo`` is the value and ``hi`` zero; in a packed format column ``c`` takes output ``c``
    of the tile in ``lo`` and output ``cols + c`` in ``hi``.
    """
    x = np.asarray(x, dtype=np.int64)
    w_codes = np.asarray(w_codes, dtype=np.int64)
    m, k = x.shape
    n = w_codes.shape[0]
    packed = fmt in PACKED_FORMATS
    width = cols * (2 if packed else 1)
    m_tiles = -(-m // rows)
    n_tiles = -(-n // width)
    xp = np.zeros((m_tiles * rows, k), dtype=np.int64)
    xp[:m] = x
    wp = np.full((n_tiles * width, k), ZERO_CODE[fmt], dtype=np.int64)
    wp[:n] = w_codes
    values = code_values(fmt, wp)
    sums = block_sums(xp, values)
    blocks = k // BLOCK

    x_steps, w_steps, outputs, origins = [], [], [], []
    for ti in range(m_tiles):
        for tj in range(n_tiles):
            tile = len(origins)
            origins.append((ti * rows, tj * width))
            xs = xp[ti * rows:(ti + 1) * rows].T                 # K × rows
            ws = values[tj * width:(tj + 1) * width].T           # K × width
            pair = np.zeros((k, cols, 2), dtype=np.int64)
            pair[:, :, 0] = ws[:, :cols]
            if packed:
                pair[:, :, 1] = ws[:, cols:]
            x_steps.append(xs)
            w_steps.append(pair)
            for b in range(blocks):
                for r in range(rows):
                    row = sums[ti * rows + r, tj * width:(tj + 1) * width, b]
                    lane_sums = list(row) + [0] * (lanes * cols - width)
                    outputs.append((tile, b, r, tuple(int(v) for v in lane_sums)))
    return Schedule(
        command=(mode_code(fmt), blocks, len(origins)),
        x_steps=np.concatenate(x_steps).astype(np.int64),
        w_steps=np.concatenate(w_steps).astype(np.int64),
        outputs=outputs,
        tile_origin=origins,
        macs=m * n * k,
    )

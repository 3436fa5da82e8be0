"""Reference model of the SRAM's SECDED code (a Hsiao code), written from its definition.

Specification (docs/ecc.md):

* ``r`` check bits for ``k`` data bits: the smallest ``m`` with ``2**m >= k + m + 1``, plus one.
* The parity-check matrix ``H`` (``r`` rows, ``k + r`` columns) has only odd-weight, distinct,
  non-zero columns. The columns of the check bits are the unit vectors; the data columns are
  chosen lightest weight first (3, 5, ...); a weight class is taken whole, in lexicographic
  order of row indices, while more data bits remain than it has; the rest are then picked one
  at a time as the candidate whose rows hold the fewest ones so far (first in lexicographic
  order on a tie).
* A code word ``c`` (bit ``p`` of the integer is position ``p``) is the data in positions
  ``0 .. k-1`` and the check bits in ``k .. k+r-1``, such that ``H c = 0`` (mod 2).
* Decoding computes the syndrome ``s = H c``: zero is a clean word; equal to column ``p`` is a
  single error at position ``p``, corrected by flipping it; anything else is uncorrectable and
  the stored data is returned as it is.

This module does not use the RTL (``rtl/``); it builds ``H`` its own way, as a NumPy array.
"""

import itertools

import numpy as np


__all__ = ["HsiaoModel"]


class HsiaoModel:
    """Hsiao SECDED code of ``data_width`` data bits.

    Attributes
    ----------
    k : int
        Data bits.
    r : int
        Check bits.
    n : int
        Code word bits, ``k + r``.
    H : numpy.ndarray
        Parity-check matrix, ``(r, n)`` of 0/1 (``uint8``): the data columns, then the identity.
    """

    def __init__(self, data_width):
        k = int(data_width)
        m = 0
        while 2 ** m < k + m + 1:
            m += 1
        self.k, self.r, self.n = k, m + 1, k + m + 1
        self.H = np.concatenate([self._data_part(), np.eye(self.r, dtype=np.uint8)], axis=1)

        # The definition of the code, checked: distinct, odd-weight columns.
        weights = self.H.sum(axis=0)
        assert (weights % 2 == 1).all()
        assert len({tuple(col) for col in self.H.T}) == self.n

    def _data_part(self):
        r, k = self.r, self.k
        # Every r-bit vector as a row of 0/1, then grouped by weight.
        every = ((np.arange(2 ** r)[:, None] >> np.arange(r)) & 1).astype(np.uint8)
        picked = np.zeros((0, r), dtype=np.uint8)
        for weight in itertools.count(3, 2):
            if len(picked) == k:
                break
            group = every[every.sum(axis=1) == weight]
            group = group[np.array(sorted(range(len(group)),
                                          key=lambda g: tuple(np.flatnonzero(group[g]))),
                                   dtype=int)]
            if k - len(picked) >= len(group):
                picked = np.concatenate([picked, group])
                continue
            while len(picked) < k:
                row_ones = picked.sum(axis=0, dtype=np.int64)
                best = int(np.argmin(group.astype(np.int64) @ row_ones))   # first of the least
                picked = np.concatenate([picked, group[best:best + 1]])
                group = np.delete(group, best, axis=0)
        return picked.T.copy()

    # ---- bit vectors <-> integers ---------------------------------------------------------

    def _bits(self, value, width):
        return np.array([(value >> p) & 1 for p in range(width)], dtype=np.uint8)

    @staticmethod
    def _int(bits):
        return sum(int(b) << p for p, b in enumerate(bits))

    # ---- the code ------------------------------------------------------------------------

    def encode(self, data):
        """Code word (an ``n``-bit integer) for the ``k``-bit integer ``data``."""
        if not 0 <= data < 1 << self.k:
            raise ValueError(f"data {data!r} does not fit in {self.k} bits")
        d = self._bits(data, self.k)
        check = (self.H[:, :self.k].astype(np.int64) @ d) % 2
        code = self._int(np.concatenate([d, check]))
        assert not self.syndrome(code).any()
        return code

    def syndrome(self, code):
        """``H c`` (mod 2) as an array of ``r`` 0/1 values."""
        return (self.H.astype(np.int64) @ self._bits(code, self.n)) % 2

    def decode(self, code):
        """``(data, corrected, uncorrectable)`` for the ``n``-bit integer ``code``."""
        if not 0 <= code < 1 << self.n:
            raise ValueError(f"code {code!r} does not fit in {self.n} bits")
        s = self.syndrome(code)
        raw = code & ((1 << self.k) - 1)
        if not s.any():
            return raw, False, False
        positions = np.flatnonzero((self.H == s[:, None]).all(axis=0))
        if len(positions) == 1:
            fixed = code ^ (1 << int(positions[0]))
            return fixed & ((1 << self.k) - 1), True, False
        return raw, False, True

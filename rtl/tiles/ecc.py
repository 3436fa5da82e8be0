"""SECDED error-correcting code for the tile SRAM banks: a Hsiao code, encoder and decoder.

Each SRAM word of ``data_width`` bits is stored with ``check_bits`` check bits. The code is a
Hsiao code (M. Y. Hsiao, "A class of optimal minimum odd-weight-column SEC-DED codes", IBM J.
Res. Dev. 14(4), 1970): every column of its parity-check matrix ``H`` has odd weight, which
gives minimum distance 4, so any single-bit error is corrected and any double-bit error is
detected. It needs as many check bits as an extended Hamming code, and fewer ones in ``H`` (so
smaller XOR trees) and no overall-parity bit spanning the whole word.

Layout of a code word (``n = data_width + check_bits`` bits)::

    code = Cat(data, check)     # data in bits 0 .. data_width-1, check bits above

Check bit ``j`` is the XOR of the data bits whose column has a one in row ``j``; the columns of
``H`` for the check bits are the unit vectors. :func:`hsiao_columns` builds the data columns;
``docs/ecc.md`` describes the construction.
"""

from itertools import combinations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


__all__ = ["secded_check_bits", "hsiao_columns", "SECDEDEncoder", "SECDEDDecoder"]


def _check_data_width(data_width):
    # bool is an int subclass; `SECDEDEncoder(True)` is always a mistake.
    if not isinstance(data_width, int) or isinstance(data_width, bool):
        raise TypeError(f"ECC data width must be a positive integer, not {data_width!r}")
    if data_width < 1:
        raise ValueError(f"ECC data width must be a positive integer, not {data_width!r}")


def secded_check_bits(data_width):
    """Number of check bits that protect ``data_width`` data bits with SECDED.

    The smallest ``r`` with ``2**r >= data_width + r + 1`` (the Hamming bound for single-error
    correction), plus one for double-error detection: 5 for 8 data bits, 7 for 32, 8 for 64,
    11 for 512. A Hsiao code of ``r + 1`` check bits has ``2**r - r - 1`` odd-weight columns of
    weight 3 or more available for data bits, so it fits in exactly this many.

    Parameters
    ----------
    data_width : int
        Data bits per word, at least 1.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        If ``data_width`` is not an integer.
    ValueError
        If ``data_width`` is less than 1.
    """
    _check_data_width(data_width)
    r = 1
    while (1 << r) < data_width + r + 1:
        r += 1
    return r + 1


def hsiao_columns(data_width):
    """Columns of the Hsiao parity-check matrix for the data bits, in data-bit order.

    Column ``i`` is an integer whose bit ``j`` is set when check bit ``j`` covers data bit ``i``
    (row ``j`` of ``H``). The construction is deterministic:

    1. Candidate columns are the ``r``-bit vectors (``r = secded_check_bits(data_width)``) of
       odd weight 3, 5, 7, …, lightest first; within one weight, in lexicographic order of their
       row indices (the order of ``itertools.combinations(range(r), w)``).
    2. While the data bits still to place outnumber the candidates of the current weight, all of
       them are taken, in that order (fewest ones in ``H``).
    3. From the last weight needed, the remaining columns are picked one at a time: each time
       the candidate whose rows hold the fewest ones so far (summed over its rows), the first in
       lexicographic order on a tie. This balances the row weights, so the XOR trees of the
       check bits have nearly equal sizes and the deepest one is as shallow as it can be.

    Weight-1 columns (the unit vectors) belong to the check bits themselves and are never used
    for data. All columns are distinct and of odd weight, which makes the minimum distance 4.

    Parameters
    ----------
    data_width : int
        Data bits per word, at least 1.

    Returns
    -------
    tuple of int
        ``data_width`` distinct column masks, each of odd weight at least 3.
    """
    r = secded_check_bits(data_width)
    row_weight = [0] * r     # ones in each row of H so far

    def load(column):
        return sum(row_weight[row] for row in range(r) if column >> row & 1)

    def take(column):
        columns.append(column)
        for row in range(r):
            row_weight[row] += column >> row & 1

    columns = []
    for weight in range(3, r + 1, 2):
        needed = data_width - len(columns)
        if needed == 0:
            break
        candidates = [sum(1 << row for row in rows) for rows in combinations(range(r), weight)]
        if needed >= len(candidates):
            for column in candidates:
                take(column)
        else:
            for _ in range(needed):
                best = min(candidates, key=load)   # the first of equals: lexicographic order
                candidates.remove(best)
                take(best)
    assert len(columns) == data_width
    return tuple(columns)


def _xor_tree(bits, fan_in=3):
    """XOR of ``bits`` as an explicit tree of ``fan_in``-input XORs, in the order given.

    Synthesis remaps the tree into LUTs whatever its shape, though not always as well (for the
    64-bit encoder on ECP5, 3-input groups and a flat XOR give 89 LUT4, 2- or 4-input groups
    132). The explicit tree matters to the prover: the decoder re-encodes with the very same
    trees, and the 64-bit proof in ``tests/test_ecc.py`` takes about 12 s with them against
    40-280 s with flat XOR reductions (its double-error half alone did not finish in 10 min).
    """
    bits = list(bits)
    while len(bits) > 1:
        bits = [Cat(*bits[g:g + fan_in]).xor() for g in range(0, len(bits), fan_in)]
    return bits[0]


class _SECDEDComponent(wiring.Component):
    """Parameters and properties common to the encoder and the decoder."""

    def __init__(self, data_width, members):
        _check_data_width(data_width)
        self._data_width = data_width
        self._check_bits = secded_check_bits(data_width)
        super().__init__(members(data_width, data_width + self._check_bits))

    @property
    def data_width(self):
        return self._data_width

    @property
    def check_bits(self):
        return self._check_bits

    @property
    def code_width(self):
        return self._data_width + self._check_bits


class SECDEDEncoder(_SECDEDComponent):
    """Appends the Hsiao SECDED check bits to a data word. Purely combinational.

    Each check bit is one XOR tree (of 3-input XORs) over the data bits in its row of ``H``
    (see :func:`hsiao_columns`); the rows are balanced, so for 64 data bits every tree has 26
    inputs and three levels of LUT4.

    Parameters
    ----------
    data_width : int
        Data bits per word, at least 1 (the SRAM uses multiples of 8 from 8 to 512).

    Members
    -------
    data : ``In(data_width)``
        Word to protect.
    code : ``Out(data_width + check_bits)``
        ``Cat(data, check)``: the data unchanged in the low ``data_width`` bits, the
        ``check_bits`` check bits above them.
    """

    def __init__(self, data_width):
        super().__init__(data_width, lambda k, n: {
            "data": In(k),
            "code": Out(n),
        })

    def elaborate(self, platform):
        m = Module()

        columns = hsiao_columns(self.data_width)
        check = Signal(self.check_bits)
        for j in range(self.check_bits):
            row = [self.data[i] for i, column in enumerate(columns) if column >> j & 1]
            m.d.comb += check[j].eq(_xor_tree(row))
        m.d.comb += self.code.eq(Cat(self.data, check))

        return m


class SECDEDDecoder(_SECDEDComponent):
    """Checks a Hsiao SECDED code word, corrects a single-bit error, detects a double one.

    The syndrome is the stored check bits XOR the check bits recomputed from the stored data
    (by an :class:`SECDEDEncoder` inside the decoder, so the XOR trees are the encoder's).
    Zero: the word is clean. Equal to the column of ``H`` of bit ``p``: bit ``p`` flipped; a
    data bit is corrected by inverting it (one comparison of the syndrome with each data
    column, no binary decoder), a check bit needs nothing. Anything else (a non-zero syndrome
    that is no column; every double error gives an even-weight syndrome, which no column has):
    uncorrectable. Each flag is a fixed table of ``2**check_bits`` entries indexed by the
    syndrome.

    Combinational unless ``registered``.

    Three or more flipped bits are outside the guarantee: they can look clean, look like a
    single error (and be miscorrected) or be flagged ``uncorrectable``.

    Parameters
    ----------
    data_width : int
        Data bits per word, at least 1 (the SRAM uses multiples of 8 from 8 to 512).
    registered : bool
        Register the syndrome and the stored data half-way (``sync`` domain): the outputs
        describe the ``code`` of the previous cycle, and the decoder's critical path is split
        between the syndrome's XOR trees and the correction.

    Members
    -------
    code : ``In(data_width + check_bits)``
        Word as read from storage, laid out as the encoder's ``code``.
    data : ``Out(data_width)``
        The data bits, corrected when ``corrected``; the raw stored data bits otherwise (also
        when ``uncorrectable``).
    corrected : ``Out(1)``
        A single-bit error was found and corrected: in a data bit (``data`` differs from the
        stored data in that bit) or in a check bit (``data`` is the stored data).
    uncorrectable : ``Out(1)``
        An error was detected that cannot be corrected: every double-bit error, and any other
        pattern whose syndrome is neither zero nor a column. Never high with ``corrected``.
    """

    def __init__(self, data_width, *, registered=False):
        self._registered = bool(registered)
        super().__init__(data_width, lambda k, n: {
            "code": In(n),
            "data": Out(k),
            "corrected": Out(1),
            "uncorrectable": Out(1),
        })

    @property
    def registered(self):
        return self._registered

    def elaborate(self, platform):
        m = Module()

        k, r = self.data_width, self.check_bits
        stored_data = self.code[:k]
        stored_check = self.code[k:]

        # Re-encode the stored data (the encoder's XOR trees); the syndrome is the difference.
        m.submodules.reencode = reencode = SECDEDEncoder(k)
        syndrome = Signal(r)
        m.d.comb += reencode.data.eq(stored_data)
        if self._registered:
            held_data = Signal(k)
            m.d.sync += [syndrome.eq(reencode.code[k:] ^ stored_check), held_data.eq(stored_data)]
            stored_data = held_data
        else:
            m.d.comb += syndrome.eq(reencode.code[k:] ^ stored_check)

        # Correction: one comparator of the syndrome with each data column of H.
        columns = hsiao_columns(k)
        flip = Signal(k)
        for i, column in enumerate(columns):
            m.d.comb += flip[i].eq(syndrome == Const(column, r))
        m.d.comb += self.data.eq(stored_data ^ flip)

        # Flags: each a table of 2**r bits indexed by the syndrome (a function of r bits that
        # synthesis maps directly; an OR over the comparators above maps deeper and bigger).
        is_column = set(columns) | {1 << j for j in range(r)}
        corrected_table = sum(1 << s for s in is_column)
        uncorrectable_table = sum(1 << s for s in range(1, 1 << r) if s not in is_column)
        m.d.comb += [
            self.corrected.eq(Const(corrected_table, 1 << r).bit_select(syndrome, 1)),
            self.uncorrectable.eq(Const(uncorrectable_table, 1 << r).bit_select(syndrome, 1)),
        ]

        return m

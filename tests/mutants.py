"""Deliberately broken blocks: each test suite and proof must catch them.

A mutant has the same signature as the block it breaks, so the same testbench and the same
formal spec run against it unchanged; a suite that passes a mutant is not testing anything.
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring

from rtl.arbiter import RoundRobinArbiter
from rtl.fifo import StreamFIFO
from rtl.stream_rules import assert_stream_rules
from rtl.tiles.ecc import SECDEDDecoder, hsiao_columns


class OverrunFIFO(StreamFIFO):
    """A FIFO that claims to be ready when full: the payload offered then is silently lost.

    This is the classic ready/valid bug (``ready`` wired high, or an off-by-one in the full
    test), one that only shows when the consumer stalls long enough to fill the buffer.
    """

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = StreamFIFO(self.shape, self.depth, buffered=self.buffered)
        wiring.connect(m, wiring.flipped(self.o), inner.o)
        m.d.comb += [
            inner.i.payload.eq(self.i.payload),
            inner.i.valid.eq(self.i.valid),
            self.i.ready.eq(1),
            self.level.eq(inner.level),
        ]
        return m


class FixedPriorityArbiter(RoundRobinArbiter):
    """An arbiter that always grants the lowest-numbered requester: safe, but it starves."""

    def elaborate(self, platform):
        m = Module()
        n = self.count
        for k in range(n):
            m.d.comb += self.grant[k].eq(self.requests[k] & ~self.requests[:k].any())
            with m.If(self.grant[k]):
                m.d.comb += self.index.eq(k)
        m.d.comb += self.valid.eq(self.requests.any())
        return m


class FickleFIFO(StreamFIFO):
    """A FIFO whose output withdraws ``valid`` every other cycle, breaking the stream rules.

    It loses no data (the inner FIFO only pops on a real transfer), so only the stream-rule
    assertion inside the block can tell that anything is wrong.
    """

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = StreamFIFO(self.shape, self.depth, buffered=self.buffered)
        blink = Signal()
        m.d.sync += blink.eq(~blink)
        m.d.comb += [
            inner.i.payload.eq(self.i.payload),
            inner.i.valid.eq(self.i.valid),
            self.i.ready.eq(inner.i.ready),
            self.level.eq(inner.level),
            self.o.payload.eq(inner.o.payload),
            self.o.valid.eq(inner.o.valid & blink),
            inner.o.ready.eq(self.o.ready & blink),
        ]
        assert_stream_rules(m, self.o, "FIFO output")
        return m


# ---- SECDED decoder mutants (rtl/tiles/ecc.py) ------------------------------------------


def _syndrome(m, decoder):
    """The syndrome of ``decoder.code``, written out from the columns of H (for the mutants)."""
    k, r = decoder.data_width, decoder.check_bits
    columns = hsiao_columns(k)
    syndrome = Signal(r)
    for j in range(r):
        covered = [decoder.code[i] for i, column in enumerate(columns) if column >> j & 1]
        m.d.comb += syndrome[j].eq(Cat(decoder.code[k + j], *covered).xor())
    return syndrome, columns


class CheckBlindDecoder(SECDEDDecoder):
    """A SECDED decoder that only knows the data columns of ``H``: an error in a check bit,
    whose syndrome is a unit vector, matches no column and is reported ``uncorrectable``.

    The data is never wrong, so only a test that flips the check bits, and looks at the flags,
    can tell.
    """

    def elaborate(self, platform):
        m = Module()
        k, r = self.data_width, self.check_bits
        syndrome, columns = _syndrome(m, self)
        flip = Cat(syndrome == Const(column, r) for column in columns)
        m.d.comb += [
            self.data.eq(self.code[:k] ^ flip),
            self.corrected.eq(flip.any()),
            self.uncorrectable.eq(syndrome.any() & ~flip.any()),
        ]
        return m


class MisaimedDecoder(SECDEDDecoder):
    """A SECDED decoder that corrects the neighbour of the flipped data bit (its comparators are
    wired one data bit off, wrapping around): every flag is right, the data is not."""

    def elaborate(self, platform):
        m = Module()
        k, r = self.data_width, self.check_bits
        syndrome, columns = _syndrome(m, self)
        match = [syndrome == Const(column, r) for column in columns]
        unit = Cat(syndrome == Const(1 << j, r) for j in range(r))
        found = Cat(*match).any() | unit.any()
        m.d.comb += [
            self.data.eq(self.code[:k] ^ Cat(match[1:] + match[:1])),
            self.corrected.eq(found),
            self.uncorrectable.eq(syndrome.any() & ~found),
        ]
        return m

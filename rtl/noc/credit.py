"""Credit counter: how many flits the receiver at the far end of a link can still take."""

from amaranth.hdl import Assert, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .flit import check_depth


__all__ = ["CreditCounter"]


class CreditCounter(wiring.Component):
    """Counts the free slots of the buffer at the receiving end of a credit link.

    It starts at ``depth`` (the receiver's buffer is empty), goes down by one for every flit
    sent and up by one for every credit returned; both can happen in the same cycle. The
    invariant it keeps with the receiver, proved in ``tests/test_noc_formal.py``: credits held
    here, plus flits and credits on their way, plus flits in the receiver's buffer, equal
    ``depth``, so a sender that only sends while ``available`` never overruns the buffer.

    Parameters
    ----------
    depth : int
        Slots in the receiver's buffer, at least 1.

    Members
    -------
    send : ``In(1)``
        A flit is sent this cycle (only allowed while ``available``).
    credit : ``In(1)``
        A credit comes back this cycle.
    available : ``Out(1)``
        At least one credit is held.
    count : ``Out(range(depth + 1))``
        Credits held.
    """

    def __init__(self, depth):
        check_depth(depth, "Credit counter depth")
        self._depth = depth
        super().__init__({
            "send": In(1),
            "credit": In(1),
            "available": Out(1),
            "count": Out(range(depth + 1)),
        })

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()

        count = Signal(range(self._depth + 1), init=self._depth)
        # A separate "not zero" register, so `available` comes straight from a flip-flop: it
        # gates the router's crossbar, which is its longest path.
        nonzero = Signal(init=1)
        m.d.comb += [
            self.count.eq(count),
            self.available.eq(nonzero),
        ]
        with m.If(self.send & ~self.credit):
            m.d.sync += [count.eq(count - 1), nonzero.eq(count != 1)]
        with m.Elif(self.credit & ~self.send):
            m.d.sync += [count.eq(count + 1), nonzero.eq(1)]

        m.d.sync += [
            Assert(~self.send | nonzero, "flit sent without a credit"),
            # At full count nothing is outstanding, so no credit may come back, even in a
            # cycle that also sends.
            Assert(~self.credit | (count != self._depth), "more credits returned than flits sent"),
        ]
        return m

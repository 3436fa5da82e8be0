"""Round-robin arbiter: output ports of the NoC router, bank ports of the SRAM."""

from amaranth.hdl import Assert, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


__all__ = ["RoundRobinArbiter"]


class RoundRobinArbiter(wiring.Component):
    """Grants one of ``count`` requesters at a time, in round-robin order.

    The arbiter keeps one register, which requesters come at or after the highest priority. The grant is the
    first requester at or after it, wrapping around; it is combinational, so a requester can be
    granted in the cycle it first requests. When the holder of the grant is served (``advance``
    high) priority moves to the requester after it; while it is not served the grant stays with
    it for as long as it keeps requesting, which is what a wormhole router needs to keep an
    output port for the whole of a packet.

    Fairness: a requester that keeps requesting is granted before ``count - 1`` other grants
    have been served; under full load (every requester requesting, ``advance`` every cycle)
    each requester is granted once in every ``count`` cycles.

    Parameters
    ----------
    count : int
        Number of requesters, at least 1.

    Members
    -------
    requests : ``In(count)``
        Bit ``n`` is high while requester ``n`` wants the grant.
    grant : ``Out(count)``
        One-hot: the requester granted this cycle; zero if nobody requests.
    index : ``Out(range(count))``
        Index of the granted requester (meaningful while ``valid``).
    valid : ``Out(1)``
        Some requester is granted.
    advance : ``In(1)``
        The granted requester is served this cycle; the next grant goes to someone after it.
    """

    def __init__(self, count):
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f"Arbiter requester count must be a positive integer, not {count!r}")
        if count < 1:
            raise ValueError(f"Arbiter requester count must be a positive integer, not {count!r}")
        self._count = count
        super().__init__({
            "requests": In(count),
            "grant": Out(count),
            "index": Out(range(count)),
            "valid": Out(1),
            "advance": In(1),
        })

    @property
    def count(self):
        return self._count

    def elaborate(self, platform):
        m = Module()

        n = self._count
        everyone = Const((1 << n) - 1, n)
        # Priority as a thermometer mask (bit k set: requester k is at or after the highest
        # priority) rather than an index, so no shifter sits on the grant path.
        eligible = Signal(n, init=everyone.value)

        # The lowest requester among the eligible ones wins; if none is eligible the search
        # wraps around to the lowest requester of all.
        at_or_after = Signal(n)
        m.d.comb += at_or_after.eq(self.requests & eligible)
        candidates = Signal(n)
        m.d.comb += candidates.eq(Mux(at_or_after.any(), at_or_after, self.requests))
        # Lowest set bit by prefix-OR rather than `c & -c`: on FPGAs a short carry chain is
        # slower than a LUT tree.
        for k in range(n):
            m.d.comb += self.grant[k].eq(candidates[k] & ~candidates[:k].any())

        for i in range(n):
            with m.If(self.grant[i]):
                m.d.comb += self.index.eq(i)
        m.d.comb += self.valid.eq(self.requests.any())

        with m.If(self.valid):
            with m.If(self.advance):
                # Everyone strictly after the one served.
                m.d.sync += eligible.eq(Cat(self.grant[:k].any() for k in range(n)))
            with m.Else():
                # Pin priority on the holder so a newcomer cannot take the grant mid-packet.
                m.d.sync += eligible.eq(Cat(self.grant[:k + 1].any() for k in range(n)))

        # Checked at the clock edge: the Amaranth simulator evaluates comb-domain assertions on
        # values that have not settled yet.
        m.d.sync += [
            Assert((self.grant & (self.grant - 1)[:n]) == 0, "arbiter granted twice"),
            Assert((self.grant & ~self.requests) == 0, "arbiter granted a non-requester"),
            Assert(self.grant.any() == self.valid, "arbiter valid disagrees with grant"),
        ]

        return m

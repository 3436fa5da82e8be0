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


# ---- NoC mutants (rtl/noc/credit.py, rtl/noc/router.py) ---------------------------------
# Each breaks one property that tests/test_noc_formal.py proves. The router mutants change the
# router in one of three ways, from the most to the least robust to edits of rtl/noc/router.py:
# a wrapper around a real Router (the fault sits on its ports), a substitute for a name the
# router's elaborate() looks up (`route`, `CreditCounter`), or one line of its source replaced.

import inspect
import sys
import textwrap
from unittest import mock

from amaranth.hdl import Mux

from rtl.noc import router as _router_module
from rtl.noc.credit import CreditCounter
from rtl.noc.flit import PORTS, Port
from rtl.noc.router import Router
from rtl.noc.routing import route as _route


class EagerCreditCounter(CreditCounter):
    """A credit counter that, when a flit is sent in the cycle a credit comes back, counts the
    credit and forgets the send: one credit too many each time, and the sender overruns the
    receiver's buffer. It only shows when sends and credits coincide, i.e. under load."""

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self.depth + 1), init=self.depth)
        m.d.comb += [self.count.eq(count), self.available.eq(count != 0)]
        with m.If(self.credit):
            m.d.sync += count.eq(count + 1)
        with m.Elif(self.send):
            m.d.sync += count.eq(count - 1)
        return m


class _FreeCreditCounter(CreditCounter):
    """Counts like the real one, but always claims a credit is available (and checks nothing)."""

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self.depth + 1), init=self.depth)
        m.d.comb += [self.count.eq(count), self.available.eq(1)]
        m.d.sync += count.eq(count - self.send + self.credit)
        return m


class _PatchedRouter(Router):
    """A Router whose elaborate() sees other objects under some of its module's global names."""
    _patches = {}

    def elaborate(self, platform):
        with mock.patch.multiple(_router_module, **self._patches):
            return super().elaborate(platform)


class CreditlessRouter(_PatchedRouter):
    """A router whose outputs ignore credits: it sends whenever it has a flit (its own
    "sent without a credit" assertion is blind too, since it reads the same counter)."""
    _patches = {"CreditCounter": _FreeCreditCounter}


def _mirrored_route(fmt, x, y, in_port, header):
    # North and south swapped: every flit leaves, but on the wrong Y port.
    mask = _route(fmt, x, y, in_port, header)
    return Cat(mask[Port.EAST.value], mask[Port.WEST.value], mask[Port.SOUTH.value],
               mask[Port.NORTH.value], mask[Port.LOCAL.value])


class MisroutingRouter(_PatchedRouter):
    """A router whose routing function sends north what should go south and vice versa."""
    _patches = {"route": _mirrored_route}


def _branch_everywhere_route(fmt, x, y, in_port, header):
    # Every multicast routed as if it had just been injected here: it branches along X again in
    # every row it reaches, a Y-to-X turn (and copies delivered several times over).
    return _route(fmt, x, y, Port.LOCAL, header)


class MulticastBranchRouter(_PatchedRouter):
    """A router that forgets where a multicast packet came from and branches it along X in
    every row of its rectangle, not just the first: flits that came along Y turn onto X."""
    _patches = {"route": _branch_everywhere_route}


class _SourceMutantRouter(Router):
    """A Router whose elaborate() is its source with some snippets replaced (each must occur
    exactly once, so an edit of router.py that removes the site fails loudly, not silently)."""
    _replacements = ()

    def elaborate(self, platform):
        source = textwrap.dedent(inspect.getsource(Router.elaborate))
        for old, new in self._replacements:
            if source.count(old) != 1:
                raise RuntimeError(f"{type(self).__name__}: mutation site {old!r} occurs "
                                   f"{source.count(old)} times in Router.elaborate, not once")
            source = source.replace(old, new)
        namespace = {}
        exec(compile(source, f"<{type(self).__name__}>", "exec"),
             vars(sys.modules[Router.__module__]), namespace)
        return namespace["elaborate"](self, platform)


class EarlyUnlockRouter(_SourceMutantRouter):
    """A router that frees an output for a new packet after every flit instead of after the
    tail: another input can take the output in the middle of a packet and interleave."""
    _replacements = (("(lock & sends & tails).any()", "(lock & sends).any()"),)


class TailTrustingRouter(_SourceMutantRouter):
    """A router whose input police believe the sender's tail bit instead of counting the
    header's length: a packet that arrives without its tail never ends on the output."""
    _replacements = (("entry.flit.tail.eq(last | incoming.tail)",
                      "entry.flit.tail.eq(incoming.tail)"),)


def _router_options(router):
    # Keyword parameters of a Router to build another one like it.
    ports = getattr(router, "multicast_ports", None)
    return {} if ports is None else {"multicast_ports": ports}


class _WrappedRouter(Router):
    """A real Router inside, with every port passed through unless ``_tamper`` says otherwise."""

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = Router(self.fmt, self.x, self.y, self.depth,
                                            **_router_options(self))
        for port in PORTS:
            outer_i, inner_i = self.input(port), inner.input(port)
            outer_o, inner_o = self.output(port), inner.output(port)
            m.d.comb += [
                inner_i.valid.eq(outer_i.valid), inner_i.flit.eq(outer_i.flit),
                outer_i.credit.eq(inner_i.credit),
                outer_o.valid.eq(inner_o.valid), outer_o.flit.eq(inner_o.flit),
                inner_o.credit.eq(outer_o.credit),
            ]
        m.d.comb += self.malformed.eq(inner.malformed)
        self._tamper(m, inner)
        return m

    def _tamper(self, m, inner):
        raise NotImplementedError


class DoubleCreditRouter(_WrappedRouter):
    """A router that returns each input credit twice (the pulse is stretched to two cycles)."""

    def _tamper(self, m, inner):
        for port in PORTS:
            again = Signal(name=f"{port.name.lower()}_again")
            m.d.sync += again.eq(inner.input(port).credit)
            m.d.comb += self.input(port).credit.eq(inner.input(port).credit | again)


class CorruptingRouter(_WrappedRouter):
    """A router that flips the lowest data bit of every payload flit it gives its tile."""

    def _tamper(self, m, inner):
        flit = inner.output(Port.LOCAL).flit
        m.d.comb += self.o_local.flit.data.eq(flit.data ^ ~flit.head)


class DroppingRouter(_WrappedRouter):
    """A router that loses every single-flit packet bound for its tile (the credit it used is
    never returned, so nothing else looks wrong until the link runs dry)."""

    def _tamper(self, m, inner):
        link = inner.output(Port.LOCAL)
        m.d.comb += self.o_local.valid.eq(link.valid & ~(link.flit.head & link.flit.tail))


class DuplicatingRouter(_WrappedRouter):
    """A router that sends every single-flit packet for its tile twice: again in the next
    cycle, if the link is idle then (a retry that forgets the first copy went through)."""

    def _tamper(self, m, inner):
        link = inner.output(Port.LOCAL)
        again = Signal()
        flit = Signal.like(link.flit)
        m.d.sync += [again.eq(link.valid & link.flit.head & link.flit.tail), flit.eq(link.flit)]
        replay = again & ~link.valid
        m.d.comb += [
            self.o_local.valid.eq(link.valid | replay),
            self.o_local.flit.eq(Mux(replay, flit, link.flit)),
        ]

# amaranth: UnusedElaboratable=no
"""Formal proofs of the mesh NoC: the credit loop, and one router in a free environment.

- :class:`CreditLoopSpec`: a :class:`~rtl.noc.credit.CreditCounter` at the sending end of a
  link, the receiver's buffer at the other, each credit returned one cycle after its pop, as
  the router returns them. Credits held + flits buffered + credit in flight = depth, always,
  so a sender that only sends while ``available`` never overruns the receiver.
- :class:`RouterSpec`: one :class:`~rtl.noc.router.Router` whose inputs are free but for the
  credit rule and whose outputs' credits come back from free receivers. The proofs built on
  it: credits are kept on both sides, packets leave well framed and never interleaved
  whatever arrives, the police end every packet at its length, a watched flit leaves once on
  every port of its route, unchanged, and nowhere else, and (the router's own ``Assert``)
  nothing that came along Y from a router turns onto X towards another.

Each property is shown able to fail by a mutant from ``tests/mutants.py``.

The proofs are bounded (SymbiYosys ``bmc``), at the depths argued above the router tests; a
router with five free inputs costs about three times more for each cycle added, so each proof
leaves out what another one covers: the free proofs check framing by head and tail bits only,
the policing proof checks lengths with one input, and each delivery proof watches one input.
"""

import pytest
from amaranth.asserts import AnySeq
from amaranth.hdl import (Assert, Assume, Cat, Cover, Elaboratable, Module, Mux, Shape,
                          Signal)
from amaranth.lib import data
from amaranth.sim import Simulator

from rtl.fifo import StreamFIFO
from rtl.noc.credit import CreditCounter
from rtl.noc.flit import PORTS, FlitFormat, Port
from rtl.noc.router import Router
from rtl.noc.routing import route
from sim.noc import NEIGHBOUR, Packet, packet_flits, tile_field
from synth.formal import FormalFailure, prove
from tests.mutants import (CorruptingRouter, CreditlessRouter, DoubleCreditRouter,
                           DroppingRouter, DuplicatingRouter, EagerCreditCounter,
                           EarlyUnlockRouter, MisroutingRouter, MulticastBranchRouter,
                           TailTrustingRouter)


# ---- the credit loop ---------------------------------------------------------------------

class CreditLoopSpec(Elaboratable):
    """A credit counter and the receiver it counts for, with free sends and free pops.

    The sender wants to send whenever ``AnySeq`` says so and is assumed to send only while the
    counter says ``available``; the receiver pops whenever ``AnySeq`` says so (and it has a
    flit); the credit for a pop reaches the counter one cycle later, from a register, as in
    :class:`~rtl.noc.router.Router`.
    """

    def __init__(self, counter):
        self.counter = counter

    def elaborate(self, platform):
        m = Module()
        m.submodules.counter = counter = self.counter
        depth = counter.depth
        m.submodules.receiver = receiver = StreamFIFO(1, depth)

        send, pop, credit = Signal(), Signal(), Signal()
        m.d.comb += [
            send.eq(AnySeq(1)),
            Assume(~send | counter.available),
            counter.send.eq(send),
            receiver.i.valid.eq(send),
            receiver.i.payload.eq(AnySeq(1)),
            receiver.o.ready.eq(AnySeq(1)),
            pop.eq(receiver.o.valid & receiver.o.ready),
            counter.credit.eq(credit),
        ]
        m.d.sync += credit.eq(pop)

        m.d.comb += [
            Assert(counter.count + receiver.level + credit == depth,
                   "credits held + flits buffered + credit in flight != depth"),
            Assert(counter.available == (counter.count != 0), "available disagrees with count"),
            Assert(~send | receiver.i.ready, "flit sent into a full receiver"),
        ]

        # Non-vacuity: every credit is spent, and every one comes back.
        emptied = Signal()
        with m.If(counter.count == 0):
            m.d.sync += emptied.eq(1)
        m.d.comb += [
            Cover(counter.count == 0),
            Cover(emptied & (counter.count == depth)),
        ]
        return m


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_credit_loop_invariant(depth):
    # Spending every credit takes `depth` cycles and getting them back `depth + 2` (pop, then
    # the registered credit); 2 * depth + 4 covers a full drain and refill with room to spare.
    prove(CreditLoopSpec(CreditCounter(depth)), name=f"noc_credit_loop_d{depth}",
          depth=2 * depth + 4)


def test_credit_loop_proof_catches_eager_counter():
    with pytest.raises(FormalFailure, match=r"failed assertion .*'credits held \+ flits"):
        prove(CreditLoopSpec(EagerCreditCounter(3)), name="noc_credit_loop_eager", depth=10,
              tasks=("bmc",))


# ---- one router ---------------------------------------------------------------------------

#: The smallest mesh with a router all of whose ports lead to other routers or the tile: the
#: centre of 3x3. Flits are exactly as wide as the header (31 bits).
FMT3 = FlitFormat(3, 3, FlitFormat(3, 3, 64).header_width)
#: 2x2, for the router at (0, 0): its west and south ports are edges of the mesh, where
#: endpoints inject packets for anywhere (25-bit flits).
FMT2 = FlitFormat(2, 2, FlitFormat(2, 2, 64).header_width)

_OPPOSITE = {Port.EAST: Port.WEST, Port.WEST: Port.EAST,
             Port.NORTH: Port.SOUTH, Port.SOUTH: Port.NORTH}


def _from_neighbour(fmt, x, y, port, header):
    """Whether the neighbour behind ``port`` of router (x, y) could have sent a head with
    ``header`` on this link: its routing function, from some input, includes the link."""
    dx, dy = NEIGHBOUR[port]
    nx, ny = x + dx, y + dy
    out = _OPPOSITE[port].value
    return Cat(route(fmt, nx, ny, q, header)[out] for q in PORTS).any()


def _is_edge(fmt, x, y, port):
    if port == Port.LOCAL:
        return True
    dx, dy = NEIGHBOUR[port]
    return not (0 <= x + dx < fmt.mesh_x and 0 <= y + dy < fmt.mesh_y)


class RouterSpec(Elaboratable):
    """One router in a free environment that keeps the credit rule.

    Inputs: every port in ``inputs`` carries whatever ``AnySeq`` gives, while an upstream
    credit counter (initialised to ``depth``, down on ``valid``, up on the router's ``credit``)
    has a credit; the other inputs stay idle. A head arriving from a neighbouring router is one
    that neighbour's routing function sends this way (a real neighbour sends nothing else);
    injection inputs (the tile's, edge ports) are free. Heads say at most ``max_length`` flits
    follow, so the bounded proof sees packets end.

    With ``watch``, that input keeps the framing rules (a head of ``length``, then exactly
    ``length`` flits, the last one the tail, nothing poisoned), and one of its flits, the
    watched one, is followed through the router; the others stay free.

    Outputs: a receiver per output counts the flits sent and not yet credited (``outstanding``)
    and returns a credit whenever ``AnySeq`` says so, but only for a flit it has.

    Assertions, besides the router's own (no output sends without a credit, no flit reaches a
    full buffer, no output locked twice, no Y-to-X turn), which are proof targets too:

    - credits: no output sends while ``depth`` flits are outstanding; no input gets back more
      credits than flits it sent;
    - framing, on every output: a packet starts with a head and nothing but its own flits
      follow until its tail, so packets are never interleaved; with ``lengths``, the tail
      comes exactly ``length`` flits after the head (or earlier, then poisoned: a packet the
      router repaired);
    - delivery (``watch``): the watched flit leaves on exactly the ports of its packet's
      route (as :func:`~rtl.noc.routing.route` gives it), once each, unchanged, and has left
      on all of them by the time its credit comes back: a flit dropped, duplicated, altered
      or misrouted fails one of these.
    """

    def __init__(self, router, *, inputs=PORTS, watch=None, lengths=False, max_length=3):
        self.router = router
        self.inputs = tuple(Port(p) for p in inputs)
        self.watch = None if watch is None else Port(watch)
        self.lengths = lengths
        self.max_length = max_length

    def elaborate(self, platform):
        m = Module()
        m.submodules.router = router = self.router
        fmt, depth, x, y = router.fmt, router.depth, router.x, router.y
        # Injection ports through which a multicast may enter (any, for a router without the
        # restriction).
        multicast_ports = getattr(router, "multicast_ports", PORTS)
        flit_bits = data.Layout.cast(fmt.flit).size
        n, longest = len(PORTS), self.max_length

        # ---- inputs ----------------------------------------------------------------------
        upstream = []          # credits the sender on each input holds
        # The router never reads a header's `kind`, nor any bit of a payload flit: bit `tag`
        # (the top bit of `kind`) is only data to it. Exactly one flit ever accepted, the
        # watched one, has it set, so it is recognised on the outputs by that bit.
        kind = fmt.header["kind"]
        tag = kind.offset + Shape.cast(kind.shape).width - 1
        for p in PORTS:
            name = p.name.lower()
            link = router.input(p)
            credits = Signal(range(depth + 2), init=depth, name=f"up_{name}_credits")
            upstream.append(credits)
            if p in self.inputs:
                m.d.comb += [link.valid.eq(AnySeq(1)), link.flit.eq(AnySeq(flit_bits))]
            m.d.comb += [
                Assume(~link.valid | (credits != 0)),
                Assert(credits <= depth, f"{name} input: more credits returned than flits sent"),
            ]
            m.d.sync += credits.eq(credits - link.valid + link.credit)

            flit = link.flit
            header = data.View(fmt.header, flit.data[:fmt.header_width])
            with m.If(link.valid & flit.head):
                m.d.comb += Assume(header.length <= longest)
                if not _is_edge(fmt, x, y, p):
                    m.d.comb += Assume(_from_neighbour(fmt, x, y, p, header))

            if p != self.watch:
                if self.watch is not None:
                    m.d.comb += Assume(~link.valid | ~flit.data[tag])
                continue
            head_route = route(fmt, x, y, p, header)
            if _is_edge(fmt, x, y, p) and p not in multicast_ports:
                head_route = Mux(header.multicast, 0, head_route)
            remaining = Signal(range(longest + 1), name=f"up_{name}_remaining")
            open_route = Signal(n, name=f"up_{name}_route")
            is_open = remaining != 0
            packet_route = Mux(is_open, open_route, head_route)
            with m.If(link.valid):
                m.d.comb += Assume(~flit.poison)
                with m.If(~is_open):
                    m.d.comb += Assume(flit.head & (flit.tail == (header.length == 0)))
                    m.d.sync += [remaining.eq(header.length), open_route.eq(head_route)]
                with m.Else():
                    m.d.comb += Assume(~flit.head & (flit.tail == (remaining == 1)))
                    m.d.sync += remaining.eq(remaining - 1)

        # ---- outputs: credits and framing -------------------------------------------------
        sent, body, repaired = [], [], []
        for o in PORTS:
            name = o.name.lower()
            link = router.output(o)
            flit = link.flit
            outstanding = Signal(range(depth + 2), name=f"down_{name}_outstanding")
            credit = Signal(name=f"down_{name}_credit")
            m.d.comb += [
                credit.eq(AnySeq(1) & (outstanding != 0)),
                link.credit.eq(credit),
                Assert(~link.valid | (outstanding < depth),
                       f"{name} output: sent with no credit left"),
            ]
            m.d.sync += outstanding.eq(outstanding + link.valid - credit)

            header = data.View(fmt.header, flit.data[:fmt.header_width])
            if self.lengths:
                remaining = Signal(range(longest + 1), name=f"down_{name}_remaining")
                is_open = remaining != 0
            else:
                is_open = Signal(name=f"down_{name}_open")
            with m.If(link.valid):
                with m.If(~is_open):
                    m.d.comb += Assert(flit.head, f"{name} output: flit outside a packet")
                    if self.lengths:
                        m.d.comb += [
                            Assert(flit.tail | (header.length != 0),
                                   f"{name} output: packet longer than its length"),
                            Assert(~flit.tail | (header.length == 0) | flit.poison,
                                   f"{name} output: short packet not poisoned"),
                        ]
                        with m.If(~flit.tail):
                            m.d.sync += remaining.eq(header.length)
                    else:
                        m.d.sync += is_open.eq(~flit.tail)
                with m.Else():
                    m.d.comb += Assert(~flit.head, f"{name} output: head inside a packet")
                    if self.lengths:
                        m.d.comb += [
                            Assert(flit.tail | (remaining != 1),
                                   f"{name} output: packet longer than its length"),
                            Assert(~flit.tail | (remaining == 1) | flit.poison,
                                   f"{name} output: short packet not poisoned"),
                        ]
                        m.d.sync += remaining.eq(Mux(flit.tail, 0, remaining - 1))
                    else:
                        m.d.sync += is_open.eq(~flit.tail)
            count = Signal(range(depth + 3), name=f"down_{name}_sent")
            with m.If(link.valid & (count != depth + 2)):
                m.d.sync += count.eq(count + 1)
            sent.append(count)
            body.append(link.valid & ~flit.head & ~flit.tail)
            repaired.append(link.valid & ~flit.head & flit.tail & flit.poison)

        if self.watch is None:
            # Non-vacuity: an input buffer fills up; an output spends more than its credits
            # (they came back); a packet's middle flit goes through; a packet is repaired.
            m.d.comb += [
                Cover(upstream[self.inputs[0].value] == 0),
                Cover(sent[Port.LOCAL.value] == depth + 1),
                Cover(Cat(body).any()),
            ]
            if self.lengths:
                m.d.comb += Cover(Cat(repaired).any())
            return m

        # ---- delivery of the watched flit -------------------------------------------------
        source = router.input(self.watch)
        hit = source.valid & source.flit.data[tag]
        seen = Signal()                      # the watched flit has been accepted
        expected = Signal(flit_bits)         # as it arrived
        expected_route = Signal(n)           # the ports it must leave on
        pending = Signal(range(depth + 2))   # credits to come back until its own
        delivered = Signal(n)
        m.d.comb += Assume(~(seen & hit))
        with m.If(hit):
            m.d.sync += [
                seen.eq(1),
                expected.eq(source.flit.as_value()),
                expected_route.eq(packet_route),
                # The flits ahead of it in the buffer, and itself: the credits not yet back,
                # less one arriving right now.
                pending.eq(depth - upstream[self.watch.value] + 1 - source.credit),
            ]
        with m.If(seen & (pending != 0) & source.credit):
            m.d.sync += pending.eq(pending - 1)
        m.d.comb += Assert(~seen | (pending <= depth - upstream[self.watch.value]),
                           "watched flit's credit returned while it was still in the buffer")
        for o in PORTS:
            name = o.name.lower()
            link = router.output(o)
            with m.If(link.valid & link.flit.data[tag]):
                m.d.comb += [
                    Assert(seen, f"{name} output: watched flit left before it arrived"),
                    Assert(expected_route[o.value],
                           f"{name} output: watched flit left on a port not in its route"),
                    Assert(~delivered[o.value], f"{name} output: watched flit left twice"),
                    Assert(link.flit.as_value() == expected,
                           f"{name} output: watched flit altered"),
                ]
                m.d.sync += delivered[o.value].eq(1)
        done = seen & (pending == 0)
        with m.If(done):
            m.d.comb += Assert(delivered == expected_route,
                               "watched flit's credit came back before it left on every port "
                               "of its route")

        # Non-vacuity: the watched flit is delivered as a payload flit; as a head to the tile
        # (from the north: a Y-to-tile turn); as a head copied to two ports; as a head that
        # found another packet on its way out and waited for it to finish.
        is_head = expected[fmt.flit_width]
        contended = Signal()
        others = Cat(router.output(o).valid & ~router.output(o).flit.data[tag] for o in PORTS)
        with m.If(seen & (others & expected_route & ~delivered).any()):
            m.d.sync += contended.eq(1)
        m.d.comb += [
            Cover(done & ~is_head & (expected_route != 0)),
            Cover(done & is_head & (expected_route == 1 << Port.LOCAL.value)),
            Cover(done & (sum(expected_route[k] for k in range(n)) >= 2)),
            Cover(done & is_head & contended),
        ]
        if depth > 2:
            # Behind two flits that did not move as it arrived, so it went through the
            # buffer's storage (behind the two registers) on its way out.
            fresh, stored = Signal(), Signal()
            m.d.sync += fresh.eq(hit)
            with m.If(fresh & (pending >= 3) & ~source.credit):
                m.d.sync += stored.eq(1)
            m.d.comb += Cover(done & stored)
        return m


def _router(cls=Router, depth=2):
    # The centre of 3x3, whose four neighbours are routers; multicasts start from its tile.
    return cls(FMT3, 1, 1, depth, multicast_ports=(Port.LOCAL,))


# Depths. A head written into an input buffer in cycle t is allocated in t + 1 and leaves in
# t + 2; its credit is back at the sender in t + 3 (the pop is registered): a credit goes round
# in three cycles, on the router's inputs as on its outputs. Every input is free from the
# first cycle. Within 8 cycles an input's sender runs out of its 4 credits (so flits wait in
# the storage behind the buffer's two registers), an output sends more flits than it has
# credits (both covered), and packets of up to 4 flits are allocated, cross and release
# their outputs behind one another. A delivery proof must see the watched flit's credit come
# back, at least 4 cycles after it arrived, to know it was not lost: within 7 cycles a head
# can wait for another input's packet to leave its output and still be checked, within 8 a
# flit can also wait behind two others and go through the storage of a 4-flit buffer (all
# covered). The policing proof has one input and goes to 10 cycles: a whole packet of the
# longest kind (5 flits), and the start of the next.
#
# Buffer depths: 4 is the default configuration (two registers and a 2-entry FIFO behind them);
# 2 is the other way `_Buffer` is built (the two registers alone).

@pytest.mark.slow
def test_router_credits_framing_turns():
    # Every input free, bad framing included: credits kept on both sides, packets never
    # interleaved, no Y-to-X turn, and the router's own assertions.
    prove(RouterSpec(_router(depth=4)), name="noc_router_free", depth=8)


def test_edge_router_credits_framing_turns():
    # The same at a corner of the mesh with 2-flit buffers. Endpoints beyond the west and south
    # edges inject packets for anywhere: one from the south may turn east (it starts there),
    # and the router's Y-to-X assertion must let it (an earlier version did not).
    prove(RouterSpec(Router(FMT2, 0, 0, 2)), name="noc_router_edge_free", depth=7)


def test_router_policing():
    # One input, free: whatever arrives, every packet that leaves ends exactly `length` flits
    # after its head, or earlier and poisoned. (The police are the same code on every input.)
    prove(RouterSpec(_router(), inputs=[Port.LOCAL], lengths=True, max_length=4),
          name="noc_router_policing", depth=10)


@pytest.mark.slow
@pytest.mark.parametrize("watch, buffer, depth", [
    # From the tile: unicast or multicast, to any set of ports; 2-flit buffers.
    (Port.LOCAL, 2, 7),
    # From the router to the north: on south, or a turn to the tile; 4-flit buffers.
    (Port.NORTH, 4, 8),
], ids=["local", "north"])
def test_router_delivery(watch, buffer, depth):
    # The watched flit is in a well-formed packet; the other four inputs are free (bad framing
    # included) and contend for the same outputs. The router builds every input from the same
    # code: these two stand for injection ports and links from routers.
    prove(RouterSpec(_router(depth=buffer), watch=watch),
          name=f"noc_router_delivery_{watch.name.lower()}", depth=depth)


def test_edge_injection_turning_east_is_not_flagged():
    # The simulation form of the corner case above: a packet from the endpoint south of
    # router (0, 0) for tile (1, 0) enters along Y and leaves east.
    dut = Router(FMT2, 0, 0, 2)
    head, = packet_flits(FMT2, Packet(dst=tile_field(1, 0), src=(1, 0)))
    assert route(FMT2, 0, 0, Port.SOUTH, Packet(dst=tile_field(1, 0)).header()) == 1

    async def bench(ctx):
        ctx.set(dut.i_south.valid, 1)
        ctx.set(dut.i_south.flit.as_value(), head)
        await ctx.tick()
        ctx.set(dut.i_south.valid, 0)
        for _ in range(4):
            if ctx.get(dut.o_east.valid):
                assert ctx.get(dut.o_east.flit.as_value()) == head
                return
            await ctx.tick()
        raise AssertionError("the packet never left east")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


# ---- the proofs can fail ------------------------------------------------------------------
# Each mutant breaks one class of property and must be caught by the assertion written for
# it, by the same spec as the proof above it; their counterexamples are 3 to 5 cycles long.

FREE_MUTANTS = [
    # Credits: sends while the receiver is full; returns more credits than flits taken.
    (CreditlessRouter, r"output: sent with no credit left"),
    (DoubleCreditRouter, r"input: more credits returned than flits sent"),
    # Wormhole: frees an output after every flit, so another packet cuts in.
    (EarlyUnlockRouter, r"output: head inside a packet"),
    # Dimension order: re-branches multicasts along X in every row (the router's own Assert).
    (MulticastBranchRouter, r"output \d: Y-to-X turn"),
]


@pytest.mark.parametrize("mutant, message", FREE_MUTANTS,
                         ids=[case[0].__name__ for case in FREE_MUTANTS])
def test_free_router_proof_catches(mutant, message):
    with pytest.raises(FormalFailure, match=r"failed assertion .*" + message):
        prove(RouterSpec(_router(mutant)), name=f"noc_mutant_{mutant.__name__}", depth=6,
              tasks=("bmc",))


def test_policing_proof_catches_tail_trusting_router():
    with pytest.raises(FormalFailure, match=r"failed assertion .*packet longer than its length"):
        prove(RouterSpec(_router(TailTrustingRouter), inputs=[Port.LOCAL], lengths=True,
                         max_length=4),
              name="noc_mutant_TailTrustingRouter", depth=6, tasks=("bmc",))


DELIVERY_MUTANTS = [
    # Wrong port, altered, lost, duplicated.
    (MisroutingRouter, Port.NORTH, r"watched flit left on a port not in its route"),
    (CorruptingRouter, Port.LOCAL, r"watched flit altered"),
    (DroppingRouter, Port.LOCAL, r"credit came back before it left on every port"),
    (DuplicatingRouter, Port.LOCAL, r"watched flit left twice"),
]


@pytest.mark.parametrize("mutant, watch, message", DELIVERY_MUTANTS,
                         ids=[case[0].__name__ for case in DELIVERY_MUTANTS])
def test_delivery_proof_catches(mutant, watch, message):
    with pytest.raises(FormalFailure, match=r"failed assertion .*" + message):
        prove(RouterSpec(_router(mutant), watch=watch), name=f"noc_mutant_{mutant.__name__}",
              depth=6, tasks=("bmc",))

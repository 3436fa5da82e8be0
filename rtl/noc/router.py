"""Mesh router: five ports, XY routing, wormhole switching, credits, multicast replication."""

from amaranth.hdl import Assert, Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..arbiter import RoundRobinArbiter
from ..fifo import StreamFIFO
from .credit import CreditCounter
from .flit import PORTS, FlitFormat, Link, Port
from .routing import route


__all__ = ["Router"]


def _lowest(bits, width):
    # One-hot lowest set bit by prefix-OR (a LUT tree, faster than a carry chain on FPGAs).
    return Cat(bits[k] & ~bits[:k].any() if k else bits[0] for k in range(width))


class Router(wiring.Component):
    """One node of the mesh: routes flits between its four neighbours and its tile in one cycle.

    - **Routing** (:func:`~rtl.noc.routing.route`): dimension order, X then Y; a multicast head
      is copied to every output of its XY tree. The route is computed as a flit is written into
      the input buffer and stored beside it, so it is off the path from buffer to output.
    - **Wormhole switching**: a head locks the outputs it needs until its tail has passed; the
      flits of a packet are never interleaved with another's on a link.
    - **Allocation**: one :class:`~rtl.arbiter.RoundRobinArbiter` per output over the five
      inputs. A head acquires its outputs one per cycle in port order (X links, then Y links,
      then the tile), which keeps multicast deadlock-free; a unicast head acquires its output
      and crosses the router in the same cycle.
    - **Flow control**: one :class:`~rtl.noc.credit.CreditCounter` per output; a flit leaves only
      when every output it goes to has a credit, so all copies of a flit leave together.
    - **Policing**: each input enforces the framing of what it accepts. A flit that is not a
      head while no packet is open is dropped; a packet ends after exactly ``length`` more flits
      whatever its tail bits say, a head bit inside a packet is cleared, and a packet whose
      flags disagreed with its length gets ``poison`` on its tail. Packets that route nowhere
      are dropped. Each of these sets the sticky ``malformed`` flag. Nothing is ever left half
      in a buffer, so no mistake upstream can wedge an output.

    Latency at zero load: a flit written into an input buffer in one cycle leaves the router
    in the next; one cycle per hop.

    Parameters
    ----------
    fmt : :class:`~rtl.noc.flit.FlitFormat`
    x, y : int
        Tile coordinates of this router (0-based).
    depth : int
        Flits per input buffer; also the credits each output starts with, since every receiver
        (router or network interface) has a buffer this deep. At least 3 sustain one flit per
        cycle per link (the credit loop takes three cycles).

    Members
    -------
    i_east, i_west, i_north, i_south, i_local : ``In(Link(fmt.flit))``
        Incoming links; the router returns their credits.
    o_east, o_west, o_north, o_south, o_local : ``Out(Link(fmt.flit))``
        Outgoing links.
    malformed : ``Out(1)``
        Sticky: some input received a flit that broke the framing rules above.
    """

    def __init__(self, fmt, x, y, depth):
        if not isinstance(fmt, FlitFormat):
            raise TypeError(f"Router flit format must be a FlitFormat, not {fmt!r}")
        for name, value, size in (("x", x, fmt.mesh_x), ("y", y, fmt.mesh_y)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < size:
                raise ValueError(f"Router {name} must be an integer from 0 to {size - 1}, "
                                 f"not {value!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"Router buffer depth must be a positive integer, not {depth!r}")
        self._fmt, self._x, self._y, self._depth = fmt, x, y, depth
        members = {}
        for port in PORTS:
            members[f"i_{port.name.lower()}"] = In(Link(fmt.flit))
        for port in PORTS:
            members[f"o_{port.name.lower()}"] = Out(Link(fmt.flit))
        members["malformed"] = Out(1)
        super().__init__(members)

    @property
    def fmt(self):
        return self._fmt

    @property
    def x(self):
        return self._x

    @property
    def y(self):
        return self._y

    @property
    def depth(self):
        return self._depth

    def input(self, port):
        return getattr(self, f"i_{Port(port).name.lower()}")

    def output(self, port):
        return getattr(self, f"o_{Port(port).name.lower()}")

    @property
    def entry_layout(self):
        """What an input buffer holds: the flit and the output ports of its packet."""
        return data.StructLayout({"flit": self._fmt.flit, "route": len(PORTS)})

    def elaborate(self, platform):
        m = Module()

        fmt, n = self._fmt, len(PORTS)
        malformed = Signal()
        m.d.comb += self.malformed.eq(malformed)

        # ---- input side: police, route, buffer ------------------------------------------
        fronts, valids, pops = [], [], []
        for p in PORTS:
            name = p.name.lower()
            link = self.input(p)
            buffer = StreamFIFO(self.entry_layout, self._depth)
            m.submodules[f"buffer_{name}"] = buffer

            is_open = Signal(name=f"{name}_open")
            remaining = Signal(8, name=f"{name}_remaining")
            packet_route = Signal(n, name=f"{name}_route")
            packet_poison = Signal(name=f"{name}_poison")

            incoming = link.flit
            header = data.View(fmt.header, incoming.data[:fmt.header_width])
            head_route = route(fmt, self._x, self._y, p, header)
            entry = buffer.i.payload
            m.d.comb += [
                buffer.i.valid.eq(link.valid),
                entry.flit.data.eq(incoming.data),
            ]
            single = header.length == 0
            last = remaining == 1
            with m.If(~is_open):
                # A head opens a packet of 1 + length flits. Anything else here is headless
                # and goes in the buffer with an empty route, which the output side drops: it
                # still returns its credit.
                m.d.comb += [
                    entry.flit.head.eq(incoming.head),
                    entry.flit.tail.eq(incoming.head & (single | incoming.tail)),
                    entry.flit.poison.eq(incoming.head &
                                         (incoming.poison | (incoming.tail != single))),
                    entry.route.eq(Mux(incoming.head, head_route, 0)),
                ]
                with m.If(link.valid):
                    with m.If(~incoming.head | (incoming.tail != single) | (head_route == 0)):
                        m.d.sync += malformed.eq(1)
                    with m.If(incoming.head & ~single & ~incoming.tail):
                        m.d.sync += [
                            is_open.eq(1),
                            remaining.eq(header.length),
                            packet_route.eq(head_route),
                            packet_poison.eq(incoming.poison),
                        ]
            with m.Else():
                # Inside a packet: the length decides where it ends, not the flags.
                bad = incoming.head | (incoming.tail != last)
                m.d.comb += [
                    entry.flit.head.eq(0),
                    entry.flit.tail.eq(last | incoming.tail),
                    entry.flit.poison.eq(packet_poison | incoming.poison | bad),
                    entry.route.eq(packet_route),
                ]
                with m.If(link.valid):
                    m.d.sync += [
                        remaining.eq(remaining - 1),
                        packet_poison.eq(packet_poison | incoming.poison | bad),
                    ]
                    with m.If(bad):
                        m.d.sync += malformed.eq(1)
                    with m.If(last | incoming.tail):
                        m.d.sync += is_open.eq(0)

            # Credits guarantee room; a flit arriving at a full buffer means the sender ignored
            # them, and the flit would be lost.
            m.d.sync += Assert(~link.valid | buffer.i.ready,
                               f"{name} input: flit arrived at a full buffer")

            pop = Signal(name=f"{name}_pop")
            m.d.sync += link.credit.eq(pop)
            m.d.comb += buffer.o.ready.eq(pop)
            fronts.append(buffer.o.payload)
            valids.append(buffer.o.valid)
            pops.append(pop)

        # ---- allocation ------------------------------------------------------------------
        # lock[o] is one-hot over inputs: which input holds output o (for a packet in flight).
        locks = [Signal(n, name=f"lock_{o.name.lower()}") for o in PORTS]
        held = [Cat(locks[o][p] for o in range(n)) for p in range(n)]

        arbiters = []
        for o in PORTS:
            arbiter = RoundRobinArbiter(n)
            m.submodules[f"arbiter_{o.name.lower()}"] = arbiter
            arbiters.append(arbiter)

        credits = []
        for o in PORTS:
            counter = CreditCounter(self._depth)
            m.submodules[f"credits_{o.name.lower()}"] = counter
            link = self.output(o)
            m.d.comb += [
                counter.credit.eq(link.credit),
                counter.send.eq(link.valid),
            ]
            credits.append(counter.available)
        available = Cat(credits)

        requests = [Signal(n, name=f"{p.name.lower()}_request") for p in PORTS]
        for o in range(n):
            arbiter, busy = arbiters[o], locks[o].any()
            m.d.comb += [
                # A locked output takes no requests, so a grant always means a new lock.
                arbiter.requests.eq(Mux(busy, 0, Cat(requests[p][o] for p in range(n)))),
                arbiter.advance.eq(arbiter.valid),
            ]

        sends = []
        for p in range(n):
            name = PORTS[p].name.lower()
            front, valid = fronts[p], valids[p]
            want = Signal(n, name=f"{name}_want")
            got = Signal(n, name=f"{name}_got")
            send = Signal(name=f"{name}_send")
            m.d.comb += [
                want.eq(front.route & ~held[p]),
                # One output at a time, in port order: see the class docstring.
                requests[p].eq(Mux(valid, _lowest(want, n), 0)),
                got.eq(Cat(arbiters[o].grant[p] for o in range(n))),
                send.eq(valid & (front.route != 0) & ((want & ~got) == 0) &
                        ((front.route & ~available) == 0)),
                pops[p].eq(valid & ((front.route == 0) | send)),
            ]
            sends.append(send)
        sends = Cat(sends)
        tails = Cat(front.flit.tail for front in fronts)

        # ---- crossbar and lock update ----------------------------------------------------
        for o in range(n):
            link, lock, arbiter = self.output(PORTS[o]), locks[o], arbiters[o]
            holder = Signal(n, name=f"{PORTS[o].name.lower()}_holder")
            m.d.comb += holder.eq(Mux(lock.any(), lock, arbiter.grant))
            moving = holder & sends
            flit = 0
            for p in range(n):
                flit = flit | Mux(holder[p], fronts[p].flit.as_value(), 0)
            m.d.comb += [
                link.valid.eq(moving.any()),
                link.flit.eq(flit),
            ]
            with m.If((moving & tails).any()):
                m.d.sync += lock.eq(0)
            with m.Else():
                m.d.sync += lock.eq(holder)

            m.d.sync += [
                Assert((lock & (lock - 1)[:n]) == 0, f"output {o} locked by two inputs"),
                Assert(~link.valid | credits[o], f"output {o} sent without a credit"),
            ]
            # Dimension order: a flit that came along Y never turns onto an X link to another
            # router. An edge port is an endpoint, so turning into it is allowed.
            if PORTS[o] in (Port.EAST, Port.WEST) and not self._is_edge(PORTS[o]):
                m.d.sync += Assert(~(moving[Port.NORTH.value] | moving[Port.SOUTH.value]),
                                   f"output {o}: Y-to-X turn")

        return m

    def _is_edge(self, port):
        """Whether ``port`` leads out of the mesh rather than to a neighbouring router."""
        return {
            Port.EAST: self._x == self._fmt.mesh_x - 1,
            Port.WEST: self._x == 0,
            Port.NORTH: self._y == self._fmt.mesh_y - 1,
            Port.SOUTH: self._y == 0,
            Port.LOCAL: True,
        }[Port(port)]

"""Mesh router: five ports, XY routing, wormhole switching, credits, multicast replication."""

from amaranth.hdl import Assert, Cat, Const, Module, Mux, Shape, Signal
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out

from ..arbiter import RoundRobinArbiter
from .credit import CreditCounter
from .flit import PORTS, Link, Port, check_depth, check_format, check_tile
from .routing import route


__all__ = ["Router"]


def _lowest(bits, width):
    # One-hot lowest set bit by prefix-OR (a LUT tree, faster than a carry chain on FPGAs).
    return Cat(bits[k] & ~bits[:k].any() if k else bits[0] for k in range(width))


class _Buffer:
    """An input buffer of ``depth`` entries whose two oldest entries, ``front`` and ``second``,
    are registers (the rest is LUT RAM behind them): the router allocates outputs for the
    packet behind a departing tail from ``second``, and reads nothing slower than a
    flip-flop on its allocation path. An entry written into an empty buffer is at the front in
    the next cycle."""

    def __init__(self, m, name, layout, depth):
        self.front = Signal(layout, name=f"{name}_front")
        self.front_valid = Signal(name=f"{name}_front_valid")
        self.second = Signal(layout, name=f"{name}_second")
        self.second_valid = Signal(name=f"{name}_second_valid")
        self.pop = Signal(name=f"{name}_pop")
        self.incoming = Signal(layout, name=f"{name}_incoming")
        self.incoming_valid = Signal(name=f"{name}_incoming_valid")
        self.ready = Signal(name=f"{name}_ready")

        v0, v1, w = self.front_valid, self.second_valid, self.incoming_valid
        take = Signal(name=f"{name}_take")        # the front is empty or leaves this cycle
        m.d.comb += take.eq(~v0 | self.pop)

        if depth == 1:
            m.d.comb += self.ready.eq(~v0)
            with m.If(take):
                m.d.sync += [self.front.eq(self.incoming), v0.eq(w & ~v0)]
            return

        if depth > 2:
            storage = fifo.SyncFIFO(width=Shape.cast(layout).width, depth=depth - 2)
            m.submodules[f"buffer_{name}"] = storage
            stored, stored_data = storage.r_rdy, storage.r_data
            m.d.comb += [
                self.ready.eq(storage.w_rdy),
                storage.w_data.eq(self.incoming),
            ]
        else:
            storage, stored, stored_data = None, Const(0), 0
            m.d.comb += self.ready.eq(~v1)

        # The order of everything held, oldest first, is front, second, storage, incoming;
        # each cycle the two registers take the first two of what remains after the pop.
        to_storage = Signal(name=f"{name}_to_storage")
        with m.If(take):
            with m.If(v1):
                m.d.sync += [self.front.eq(self.second), v0.eq(1)]
                with m.If(stored):
                    m.d.sync += [self.second.eq(stored_data), v1.eq(1)]
                    m.d.comb += to_storage.eq(w)
                with m.Else():
                    m.d.sync += [self.second.eq(self.incoming), v1.eq(w)]
            with m.Else():
                m.d.sync += [self.front.eq(self.incoming), v0.eq(w)]
        with m.Else():
            with m.If(v1):
                m.d.comb += to_storage.eq(w)
            with m.Else():
                m.d.sync += [self.second.eq(self.incoming), v1.eq(w)]
        if storage is not None:
            m.d.comb += [
                storage.w_en.eq(to_storage),
                storage.r_en.eq(take & v1),
            ]


class Router(wiring.Component):
    """One node of the mesh: routes flits between its four neighbours and its tile.

    - **Routing** (:func:`~rtl.noc.routing.route`): dimension order, X then Y; a multicast head
      is copied to every output of its XY tree. The route is computed as a flit is written into
      the input buffer and stored beside it, so it is off the path from buffer to output.
    - **Wormhole switching**: a head locks the outputs it needs until its tail has passed; the
      flits of a packet are never interleaved with another's on a link.
    - **Two stages**: allocation, then traversal. One
      :class:`~rtl.arbiter.RoundRobinArbiter` per output over the five inputs grants free
      outputs to heads, into lock registers; a flit crosses the crossbar when its input holds
      every output it needs, so traversal reads nothing but flip-flops. A head acquires its
      outputs one per cycle in port order (X links, then Y links, then the tile), which keeps
      multicast deadlock-free. The head behind a departing tail is allocated from the
      buffer's second register while the tail leaves, and an output whose tail leaves is
      granted again in the same cycle, so back-to-back packets stream without idle cycles.
    - **Flow control**: one :class:`~rtl.noc.credit.CreditCounter` per output; a flit leaves only
      when every output it goes to has a credit, so all copies of a flit leave together.
    - **Policing**: each input enforces the framing of what it accepts. A flit that is not a
      head while no packet is open is dropped; a packet ends after exactly ``length`` more flits
      whatever its tail bits say, a head bit inside a packet is cleared, and a packet whose
      flags disagreed with its length gets ``poison`` on its tail. Packets that route nowhere
      are dropped. Each of these sets the sticky ``malformed`` flag. Nothing is ever left half
      in a buffer, so no mistake upstream can wedge an output.

    Latency at zero load: a head written into an input buffer in cycle ``t`` is allocated in
    ``t + 1`` and leaves in ``t + 2``, two cycles per hop; the rest of the packet follows one
    flit per cycle. The single-cycle variant (allocation and traversal in the same cycle) was
    measured at 71.7–80 MHz on ECP5 against about 95 MHz for this one; it would set the clock
    of every tile (docs/noc.md).

    Parameters
    ----------
    fmt : :class:`~rtl.noc.flit.FlitFormat`
    x, y : int
        Tile coordinates of this router (0-based).
    depth : int
        Flits per input buffer; also the credits each output starts with, since every receiver
        (router or network interface) has a buffer this deep. At least 3 sustain one flit per
        cycle per link (the credit loop takes three cycles).
    multicast_ports : iterable of :class:`~rtl.noc.flit.Port`
        Injection ports (``LOCAL``, or edge ports of a router on the boundary) through which
        an endpoint may start a multicast. A multicast head arriving on another injection port
        is dropped and flags ``malformed``. Multicasts arriving from neighbouring routers are
        always forwarded. The mesh gives this to the router of its one multicast source.

    Members
    -------
    i_east, i_west, i_north, i_south, i_local : ``In(Link(fmt.flit))``
        Incoming links; the router returns their credits.
    o_east, o_west, o_north, o_south, o_local : ``Out(Link(fmt.flit))``
        Outgoing links.
    malformed : ``Out(1)``
        Sticky: some input received a flit that broke the framing rules above.
    """

    def __init__(self, fmt, x, y, depth, *, multicast_ports=()):
        check_format(fmt, "Router")
        check_tile(fmt, x, y, "Router")
        check_depth(depth, "Router buffer depth")
        self._fmt, self._x, self._y, self._depth = fmt, x, y, depth
        injection = [p for p in PORTS if self._is_edge(p)]
        try:
            ports = frozenset(Port(p) for p in multicast_ports)
        except (TypeError, ValueError):
            ports = None
        if ports is None or not ports <= set(injection):
            raise ValueError(f"Router multicast ports must be injection ports of router "
                             f"({x}, {y}) ({', '.join(p.name for p in injection)}), "
                             f"not {multicast_ports!r}")
        self._multicast_ports = ports
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

    @property
    def multicast_ports(self):
        """Injection ports (the tile's, or edge ports) through which an endpoint may start a
        multicast; a multicast head arriving on any other injection port is dropped."""
        return self._multicast_ports

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
        fronts, valids, seconds, second_valids, pops = [], [], [], [], []
        for p in PORTS:
            name = p.name.lower()
            link = self.input(p)
            buffer = _Buffer(m, name, self.entry_layout, self._depth)

            is_open = Signal(name=f"{name}_open")
            remaining = Signal(8, name=f"{name}_remaining")
            packet_route = Signal(n, name=f"{name}_route")
            packet_poison = Signal(name=f"{name}_poison")

            incoming = link.flit
            header = data.View(fmt.header, incoming.data[:fmt.header_width])
            head_route = route(fmt, self._x, self._y, p, header)
            if self._is_edge(p) and p not in self._multicast_ports:
                # Only the mesh's one multicast source may start a multicast (docs/noc.md,
                # "Deadlock freedom"); one from anywhere else routes nowhere.
                head_route = Mux(header.multicast, 0, head_route)
            entry = buffer.incoming
            m.d.comb += [
                buffer.incoming_valid.eq(link.valid),
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
            m.d.sync += Assert(~link.valid | buffer.ready,
                               f"{name} input: flit arrived at a full buffer")

            m.d.sync += link.credit.eq(buffer.pop)
            fronts.append(buffer.front)
            valids.append(buffer.front_valid)
            seconds.append(buffer.second)
            second_valids.append(buffer.second_valid)
            pops.append(buffer.pop)

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

        sends = Signal(n)
        tails = Cat(front.flit.tail for front in fronts)
        requests = [Signal(n, name=f"{p.name.lower()}_request") for p in PORTS]

        # Switch traversal reads only registers: a flit moves when its input holds every
        # output it goes to (allocated in an earlier cycle) and each of them has a credit.
        for p in range(n):
            front, valid = fronts[p], valids[p]
            m.d.comb += [
                sends[p].eq(valid & (front.route != 0) & ((front.route & ~held[p]) == 0) &
                            ((front.route & ~available) == 0)),
                pops[p].eq(valid & ((front.route == 0) | sends[p])),
            ]

        # Allocation, for the next cycle's traversal. The candidate of an input is its front
        # flit while that still needs outputs; when the front is the end of a packet and leaves
        # now, it is the flit behind it, so back-to-back packets need no idle cycle.
        for p in range(n):
            name = PORTS[p].name.lower()
            front, valid = fronts[p], valids[p]
            behind = Signal(name=f"{name}_behind")
            # Both candidates' requests are formed from registers in parallel; the choice
            # between them, which waits for this cycle's traversal, comes last.
            from_front = Signal(n, name=f"{name}_from_front")
            from_second = Signal(n, name=f"{name}_from_second")
            m.d.comb += [
                behind.eq(pops[p] & (front.flit.tail | (front.route == 0)) & second_valids[p]),
                # One output at a time, in port order: see the class docstring.
                from_front.eq(Mux(valid, _lowest(front.route & ~held[p], n), 0)),
                from_second.eq(_lowest(seconds[p].route, n)),
                requests[p].eq(Mux(behind, from_second, from_front)),
            ]

        for o in range(n):
            arbiter, lock = arbiters[o], locks[o]
            # An output is free for a new packet when nobody holds it or its holder's tail
            # leaves this cycle.
            free = Signal(name=f"{PORTS[o].name.lower()}_free")
            m.d.comb += [
                free.eq(~lock.any() | (lock & sends & tails).any()),
                arbiter.requests.eq(Mux(free, Cat(requests[p][o] for p in range(n)), 0)),
                arbiter.advance.eq(arbiter.valid),
            ]
            with m.If(free):
                m.d.sync += lock.eq(arbiter.grant)

        # ---- crossbar --------------------------------------------------------------------
        for o in range(n):
            link, lock = self.output(PORTS[o]), locks[o]
            moving = lock & sends
            flit = 0
            for p in range(n):
                flit = flit | Mux(lock[p], fronts[p].flit.as_value(), 0)
            m.d.comb += [
                link.valid.eq(moving.any()),
                link.flit.eq(flit),
            ]

            m.d.sync += [
                Assert((lock & (lock - 1)[:n]) == 0, f"output {o} locked by two inputs"),
                Assert(~link.valid | credits[o], f"output {o} sent without a credit"),
            ]
            # Dimension order: a flit that came along Y from another router never turns onto
            # an X link to another router. Edge ports are endpoints: a packet injected at a
            # north or south edge starts its route there, and one leaving through an east or
            # west edge ends it, so those turns close no cycle.
            y_links = [q.value for q in (Port.NORTH, Port.SOUTH) if not self._is_edge(q)]
            if PORTS[o] in (Port.EAST, Port.WEST) and not self._is_edge(PORTS[o]) and y_links:
                m.d.sync += Assert(~Cat(moving[q] for q in y_links).any(),
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

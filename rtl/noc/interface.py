"""Network interface: a tile's messages in and out of the mesh, so tiles never see flits."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..fifo import StreamFIFO
from ..stream_rules import assert_stream_rules
from .credit import CreditCounter
from .flit import (LENGTH_BITS, Link, Port, check_depth, check_format, check_tile,
                   endpoint_port)


__all__ = ["NetworkInterface"]


class NetworkInterface(wiring.Component):
    """Turns (header, words) messages into packets for the tile's router, and packets back.

    **Sending.** The tile offers a header on ``i_header`` (destination, or a multicast
    rectangle, ``kind`` and ``length``) and then exactly ``length`` words on ``i``. The
    interface fills in the source, sends the head flit and one flit per word, the last as the
    tail, one flit per cycle while the router has buffer room (credits); otherwise it holds
    ``ready`` low. A header addressed outside the mesh (a unicast destination that is neither a
    tile nor the endpoint beyond an edge, or a multicast rectangle that is empty or leaves the
    tiles) is dropped here with its ``length`` words, so the streams stay aligned; the drop
    sets the sticky ``error`` and counts in ``dropped``. Nothing of it enters the network.

    **Receiving.** Each packet comes out as its header on ``o_header`` followed by its
    ``length`` words on ``o``, the last with ``last`` set. ``poison`` marks a packet a router
    had to repair (its flags disagreed with its length, see :class:`~rtl.noc.router.Router`):
    on the header for a packet with no words, else on the last word; the tile discards it. The
    receive buffer holds ``depth`` flits and returns a credit for each flit the tile takes, so
    a tile that stops reading backs the network up but loses nothing.

    Parameters
    ----------
    fmt : :class:`~rtl.noc.flit.FlitFormat`
    x, y : int or None
        The tile's coordinates (0-based); sent as the source of every packet. None for an
        interface at an edge endpoint (``field``).
    depth : int
        Flits in the receive buffer; also the router's input buffer depth (the credits this
        interface starts with).
    multicast : bool
        This tile is the mesh's multicast source. Elsewhere a multicast header is dropped like
        one addressed outside the mesh (the router would drop it too).
    field : tuple of int or None
        Field coordinates of the edge endpoint this interface serves instead of a tile (the
        tile mesh's edge port); ``x`` and ``y`` must then be None.

    Members
    -------
    i_header : ``In(stream.Signature(fmt.header))``
        Header of the next message; ``src_x``/``src_y`` are ignored.
    i : ``In(stream.Signature(fmt.flit_width))``
        The message's words.
    o_header : ``Out(stream.Signature(StructLayout({"header": fmt.header, "poison": 1})))``
        Header of each received packet, as sent (field coordinates).
    o : ``Out(stream.Signature(StructLayout({"data", "last", "poison"})))``
        Words of each received packet.
    o_link : ``Out(Link(fmt.flit))``
        To the router's local input.
    i_link : ``In(Link(fmt.flit))``
        From the router's local output.
    error : ``Out(1)``
        Sticky: a message was dropped for its destination.
    dropped : ``Out(16)``
        Messages dropped, saturating.
    """

    def __init__(self, fmt, x, y, depth, *, multicast=False, field=None):
        check_format(fmt, "Network interface")
        if field is None:
            check_tile(fmt, x, y, "Network interface")
            self._field = (x + 1, y + 1)
        else:
            if x is not None or y is not None:
                raise ValueError(f"Network interface at an edge endpoint takes field, not x and "
                                 f"y, not x={x!r} y={y!r}")
            if endpoint_port(fmt, field, "Network interface field")[1] == Port.LOCAL:
                raise ValueError(f"Network interface field must be an edge endpoint, not the "
                                 f"tile at {tuple(field)!r}")
            self._field = tuple(int(v) for v in field)
        check_depth(depth, "Network interface buffer depth")
        self._fmt, self._x, self._y, self._depth = fmt, x, y, depth
        self._multicast = bool(multicast)
        super().__init__({
            "i_header": In(stream.Signature(fmt.header)),
            "i": In(stream.Signature(fmt.flit_width)),
            "o_header": Out(stream.Signature(self.received_header_layout(fmt))),
            "o": Out(stream.Signature(self.word_layout(fmt))),
            "o_link": Out(Link(fmt.flit)),
            "i_link": In(Link(fmt.flit)),
            "error": Out(1),
            "dropped": Out(16),
        })

    @staticmethod
    def received_header_layout(fmt):
        return data.StructLayout({"header": fmt.header, "poison": 1})

    @staticmethod
    def word_layout(fmt):
        return data.StructLayout({"data": fmt.flit_width, "last": 1, "poison": 1})

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
    def multicast(self):
        return self._multicast

    def elaborate(self, platform):
        m = Module()

        fmt, X, Y = self._fmt, self._fmt.mesh_x, self._fmt.mesh_y

        # ---- sending -----------------------------------------------------------------------
        m.submodules.credits = credits = CreditCounter(self._depth)
        m.d.comb += [
            credits.send.eq(self.o_link.valid),
            credits.credit.eq(self.o_link.credit),
        ]

        header = self.i_header.payload
        dx, dy, lx, ly = header.dst_x, header.dst_y, header.last_x, header.last_y
        in_x = (dx >= 1) & (dx <= X)
        in_y = (dy >= 1) & (dy <= Y)
        # An edge endpoint is one step beyond a tile along exactly one axis.
        beyond_x = (dx == 0) | (dx == X + 1)
        beyond_y = (dy == 0) | (dy == Y + 1)
        unicast_ok = (in_x & in_y) | (beyond_x & in_y) | (in_x & beyond_y)
        multicast_ok = in_x & in_y & (lx >= dx) & (lx <= X) & (ly >= dy) & (ly <= Y)
        addressable = Signal()
        if not self._multicast:
            multicast_ok = 0
        m.d.comb += addressable.eq(Mux(header.multicast, multicast_ok, unicast_ok))

        head = Signal(fmt.header)
        m.d.comb += [
            head.eq(header),
            head.src_x.eq(self._field[0]),
            head.src_y.eq(self._field[1]),
        ]

        remaining = Signal(LENGTH_BITS)
        error, dropped = Signal(), Signal(16)
        m.d.comb += [self.error.eq(error), self.dropped.eq(dropped)]

        with m.FSM(name="send"):
            with m.State("HEADER"):
                with m.If(self.i_header.valid & ~addressable):
                    m.d.comb += self.i_header.ready.eq(1)
                    m.d.sync += [
                        error.eq(1),
                        dropped.eq(dropped + (dropped != 0xFFFF)),
                        remaining.eq(header.length),
                    ]
                    with m.If(header.length != 0):
                        m.next = "DROP"
                with m.Elif(self.i_header.valid & credits.available):
                    m.d.comb += [
                        self.i_header.ready.eq(1),
                        self.o_link.valid.eq(1),
                        self.o_link.flit.data.eq(head),
                        self.o_link.flit.head.eq(1),
                        self.o_link.flit.tail.eq(header.length == 0),
                    ]
                    m.d.sync += remaining.eq(header.length)
                    with m.If(header.length != 0):
                        m.next = "WORDS"
            with m.State("WORDS"):
                with m.If(self.i.valid & credits.available):
                    m.d.comb += [
                        self.i.ready.eq(1),
                        self.o_link.valid.eq(1),
                        self.o_link.flit.data.eq(self.i.payload),
                        self.o_link.flit.tail.eq(remaining == 1),
                    ]
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        m.next = "HEADER"
            with m.State("DROP"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        m.next = "HEADER"

        # ---- receiving ---------------------------------------------------------------------
        m.submodules.buffer = buffer = StreamFIFO(fmt.flit, self._depth)
        m.d.comb += [
            buffer.i.valid.eq(self.i_link.valid),
            buffer.i.payload.eq(self.i_link.flit),
        ]
        m.d.sync += self.i_link.credit.eq(buffer.o.valid & buffer.o.ready)

        front = buffer.o.payload
        m.d.comb += [
            self.o_header.payload.header.eq(front.data[:fmt.header_width]),
            self.o_header.payload.poison.eq(front.tail & front.poison),
            self.o.payload.data.eq(front.data),
            self.o.payload.last.eq(front.tail),
            self.o.payload.poison.eq(front.poison),
        ]
        with m.If(front.head):
            m.d.comb += [
                self.o_header.valid.eq(buffer.o.valid),
                buffer.o.ready.eq(self.o_header.ready),
            ]
        with m.Else():
            m.d.comb += [
                self.o.valid.eq(buffer.o.valid),
                buffer.o.ready.eq(self.o.ready),
            ]

        assert_stream_rules(m, self.o_header, "Received header")
        assert_stream_rules(m, self.o, "Received word")
        return m

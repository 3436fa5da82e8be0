"""The network as tiles see it: a mesh with a network interface at every tile."""

from amaranth.hdl import Cat, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .flit import DIRECTIONS, FlitFormat, Link, Port, check_depth, check_format, endpoint_port
from .interface import NetworkInterface
from .mesh import Mesh


__all__ = ["Network"]


class Network(wiring.Component):
    """A :class:`~rtl.noc.mesh.Mesh` with a :class:`~rtl.noc.interface.NetworkInterface` at
    every tile: message streams at the tiles, raw credit links at the edges.

    Parameters
    ----------
    fmt : :class:`~rtl.noc.flit.FlitFormat`
    depth : int
        Router and interface buffer depth, in flits.
    multicast_source : tuple of int or None
        Field coordinates of the one tile or edge endpoint that may start multicasts (see
        :class:`~rtl.noc.mesh.Mesh`); default tile (0, 0).

    Members
    -------
    i_header, i, o_header, o : arrays ``[y][x]`` of the interfaces' streams
        See :class:`~rtl.noc.interface.NetworkInterface`.
    i_east, o_east, … : the mesh's edge links, as in :class:`~rtl.noc.mesh.Mesh`.
    malformed : ``Out(mesh_x * mesh_y)``
        Routers' sticky malformed-packet flags, bit ``y * mesh_x + x``.
    error : ``Out(mesh_x * mesh_y)``
        Interfaces' sticky dropped-message flags.
    dropped : ``Out(16).array(mesh_y, mesh_x)``
        Interfaces' dropped-message counters.
    """

    def __init__(self, fmt, depth, *, multicast_source=(1, 1)):
        check_format(fmt, "Network")
        check_depth(depth, "Network buffer depth")
        self._fmt, self._depth = fmt, depth
        endpoint_port(fmt, multicast_source, "Network multicast source")
        self._multicast_source = None if multicast_source is None else tuple(multicast_source)
        X, Y = fmt.mesh_x, fmt.mesh_y
        link = Link(fmt.flit)
        members = {
            "i_header": In(stream.Signature(fmt.header)).array(Y, X),
            "i": In(stream.Signature(fmt.flit_width)).array(Y, X),
            "o_header": Out(stream.Signature(
                NetworkInterface.received_header_layout(fmt))).array(Y, X),
            "o": Out(stream.Signature(NetworkInterface.word_layout(fmt))).array(Y, X),
            "malformed": Out(X * Y),
            "error": Out(X * Y),
            "dropped": Out(16).array(Y, X),
        }
        for port in DIRECTIONS:
            count = Y if port in (Port.EAST, Port.WEST) else X
            members[f"i_{port.name.lower()}"] = In(link).array(count)
            members[f"o_{port.name.lower()}"] = Out(link).array(count)
        super().__init__(members)

    @classmethod
    def from_config(cls, config):
        return cls(FlitFormat.from_config(config), config.buffer_depth)

    @property
    def fmt(self):
        return self._fmt

    @property
    def depth(self):
        return self._depth

    @property
    def multicast_source(self):
        return self._multicast_source

    def elaborate(self, platform):
        m = Module()

        X, Y = self._fmt.mesh_x, self._fmt.mesh_y
        m.submodules.mesh = mesh = Mesh(self._fmt, self._depth,
                                        multicast_source=self._multicast_source)
        errors = []
        for y in range(Y):
            for x in range(X):
                ni = NetworkInterface(self._fmt, x, y, self._depth,
                                      multicast=self._multicast_source == (x + 1, y + 1))
                m.submodules[f"interface_{x}_{y}"] = ni
                wiring.connect(m, ni.o_link, mesh.i_local[y][x])
                wiring.connect(m, mesh.o_local[y][x], ni.i_link)
                wiring.connect(m, wiring.flipped(self.i_header[y][x]), ni.i_header)
                wiring.connect(m, wiring.flipped(self.i[y][x]), ni.i)
                wiring.connect(m, ni.o_header, wiring.flipped(self.o_header[y][x]))
                wiring.connect(m, ni.o, wiring.flipped(self.o[y][x]))
                m.d.comb += self.dropped[y][x].eq(ni.dropped)
                errors.append(ni.error)

        for port in DIRECTIONS:
            count = Y if port in (Port.EAST, Port.WEST) else X
            for k in range(count):
                wiring.connect(m, wiring.flipped(getattr(self, f"i_{port.name.lower()}")[k]),
                               mesh.edge_input(port, k))
                wiring.connect(m, mesh.edge_output(port, k),
                               wiring.flipped(getattr(self, f"o_{port.name.lower()}")[k]))

        m.d.comb += [
            self.malformed.eq(mesh.malformed),
            self.error.eq(Cat(errors)),
        ]
        return m

"""Mesh generator: X×Y routers joined by credit links, with every tile and edge port exposed."""

from amaranth.hdl import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .flit import FlitFormat, Link, Port, check_depth, check_format, endpoint_port
from .router import Router


__all__ = ["Mesh"]


class Mesh(wiring.Component):
    """A ``mesh_x`` × ``mesh_y`` mesh of :class:`~rtl.noc.router.Router`.

    Router ``(x, y)`` sits at tile ``(x, y)``; east is +x, north is +y. Neighbours are joined by
    a pair of credit links. The local port of every router and the outward port of every
    router on the boundary are ports of the mesh: a tile's network interface attaches to the
    first, memory and host endpoints to the second. An endpoint is addressed like a tile, with
    the field coordinate just beyond the edge (:mod:`rtl.noc.flit`).

    Every link out of the mesh needs a receiver with a buffer of ``depth`` flits that returns
    a credit for each flit it removes; every link into it carries flits only while the sender
    holds credits, which the routers return.

    Parameters
    ----------
    fmt : :class:`~rtl.noc.flit.FlitFormat`
        Flit format; its mesh size is the mesh's.
    depth : int
        Flits per router input buffer (and per receiver at the mesh's outputs).
    multicast_source : tuple of int or None
        Field coordinates of the one endpoint (a tile or an edge endpoint) allowed to start
        multicast packets; default tile (0, 0), i.e. ``(1, 1)``; None for no multicast. Tree
        multicast with wormhole switching deadlocks when two sources' trees cross
        (docs/noc.md), so the routers drop multicasts from anywhere else.

    Members
    -------
    i_local, o_local : ``In/Out(Link(fmt.flit)).array(mesh_y, mesh_x)``
        Tile ports, indexed ``[y][x]``.
    i_east, o_east, i_west, o_west : ``In/Out(Link(fmt.flit)).array(mesh_y)``
        Edge ports of the east and west columns, indexed by row.
    i_north, o_north, i_south, o_south : ``In/Out(Link(fmt.flit)).array(mesh_x)``
        Edge ports of the north and south rows, indexed by column.
    malformed : ``Out(mesh_x * mesh_y)``
        Router ``(x, y)``'s sticky malformed-packet flag is bit ``y * mesh_x + x``.
    """

    def __init__(self, fmt, depth, *, multicast_source=(1, 1)):
        check_format(fmt, "Mesh")
        check_depth(depth, "Mesh buffer depth")
        self._fmt, self._depth = fmt, depth
        self._multicast_at = endpoint_port(fmt, multicast_source, "Mesh multicast source")
        self._multicast_source = None if multicast_source is None else tuple(multicast_source)
        X, Y = fmt.mesh_x, fmt.mesh_y
        link = Link(fmt.flit)
        super().__init__({
            "i_local": In(link).array(Y, X),
            "o_local": Out(link).array(Y, X),
            "i_east": In(link).array(Y), "o_east": Out(link).array(Y),
            "i_west": In(link).array(Y), "o_west": Out(link).array(Y),
            "i_north": In(link).array(X), "o_north": Out(link).array(X),
            "i_south": In(link).array(X), "o_south": Out(link).array(X),
            "malformed": Out(X * Y),
        })

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

    def edge_input(self, port, index):
        """The mesh's input link on edge ``port`` at row/column ``index``."""
        return getattr(self, f"i_{Port(port).name.lower()}")[index]

    def edge_output(self, port, index):
        return getattr(self, f"o_{Port(port).name.lower()}")[index]

    def elaborate(self, platform):
        m = Module()

        X, Y = self._fmt.mesh_x, self._fmt.mesh_y
        routers = {}
        for y in range(Y):
            for x in range(X):
                at = self._multicast_at
                ports = (at[1],) if at is not None and at[0] == (x, y) else ()
                router = Router(self._fmt, x, y, self._depth, multicast_ports=ports)
                m.submodules[f"router_{x}_{y}"] = router
                routers[x, y] = router
                wiring.connect(m, wiring.flipped(self.i_local[y][x]), router.i_local)
                wiring.connect(m, router.o_local, wiring.flipped(self.o_local[y][x]))

        for (x, y), router in routers.items():
            if x + 1 < X:
                east = routers[x + 1, y]
                wiring.connect(m, router.o_east, east.i_west)
                wiring.connect(m, east.o_west, router.i_east)
            if y + 1 < Y:
                north = routers[x, y + 1]
                wiring.connect(m, router.o_north, north.i_south)
                wiring.connect(m, north.o_south, router.i_north)

        for y in range(Y):
            for port, x in ((Port.EAST, X - 1), (Port.WEST, 0)):
                self._expose(m, routers[x, y], port, y)
        for x in range(X):
            for port, y in ((Port.NORTH, Y - 1), (Port.SOUTH, 0)):
                self._expose(m, routers[x, y], port, x)

        m.d.comb += self.malformed.eq(Cat(routers[x, y].malformed
                                          for y in range(Y) for x in range(X)))
        return m

    def _expose(self, m, router, port, index):
        wiring.connect(m, wiring.flipped(self.edge_input(port, index)), router.input(port))
        wiring.connect(m, router.output(port), wiring.flipped(self.edge_output(port, index)))

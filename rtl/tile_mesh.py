"""Tile mesh: the configuration's X×Y compute tiles on the NoC, with one edge port where
micro-ops and data enter and results leave (docs/tile.md)."""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .external import ExternalModule
from .noc.flit import FlitFormat
from .noc.interface import NetworkInterface
from .noc.mesh import Mesh
from .tiles.tile import Tile


__all__ = ["TileMesh", "EDGE"]

#: Field coordinates of the edge port: the endpoint beyond the west edge of row 0. It is the
#: mesh's one multicast source, so an activation vector can be broadcast to every tile.
EDGE = (0, 1)


class TileMesh(wiring.Component):
    """``mesh_x × mesh_y`` tiles (:class:`~rtl.tiles.tile.Tile` with its network interface) on
    a :class:`~rtl.noc.mesh.Mesh`, and a network interface at the edge port :data:`EDGE`.

    The other edge endpoints are unused: nothing enters there, and a flit that arrives there
    (a packet a program addressed to one) is taken and dropped, so it cannot block the mesh.

    Parameters
    ----------
    config : TesseraConfig
    tile_module : str or None
        None builds a :class:`~rtl.tiles.tile.Tile` at each position. A name instantiates the
        Verilog module of that name instead (:class:`~rtl.external.ExternalModule`), which
        must be ``Tile(config)`` converted on its own: simulation builds do so, to convert and
        compile the tile once rather than once per position.

    Members
    -------
    i_header, i : ``In(stream.Signature(...))``
        Packets into the mesh from the edge (the edge interface's ``i_header`` and ``i``):
        micro-ops and data for the tiles, multicast allowed.
    o_header, o : ``Out(stream.Signature(...))``
        Packets the tiles send to the edge.
    errors : ``Out(8)``
        The tiles' sticky error bits, ORed.
    tile_errors : ``Out(8).array(mesh_y, mesh_x)``
        Each tile's.
    clear : ``In(1)``
        Clears every tile's errors.
    busy : ``Out(1)``
        Some tile has a micro-op queued or running.
    """

    def __init__(self, config, *, tile_module=None):
        if tile_module is not None and not (isinstance(tile_module, str)
                                            and tile_module.isidentifier()):
            raise ValueError(f"Tile module must be None or a Verilog identifier, not "
                             f"{tile_module!r}")
        self._config = config
        self._tile_module = tile_module
        fmt = self._fmt = FlitFormat.from_config(config)
        X, Y = config.mesh_x, config.mesh_y
        super().__init__({
            "i_header": In(stream.Signature(fmt.header)),
            "i": In(stream.Signature(fmt.flit_width)),
            "o_header": Out(stream.Signature(NetworkInterface.received_header_layout(fmt))),
            "o": Out(stream.Signature(NetworkInterface.word_layout(fmt))),
            "errors": Out(8),
            "tile_errors": Out(8).array(Y, X),
            "clear": In(1),
            "busy": Out(1),
        })

    @property
    def config(self):
        return self._config

    @property
    def fmt(self):
        return self._fmt

    @property
    def tile_module(self):
        return self._tile_module

    def elaborate(self, platform):
        m = Module()
        config, fmt = self._config, self._fmt
        X, Y, depth = config.mesh_x, config.mesh_y, config.buffer_depth
        m.submodules.mesh = mesh = Mesh(fmt, depth, multicast_source=EDGE)

        m.submodules.edge = edge = NetworkInterface(fmt, None, None, depth, multicast=True,
                                                    field=EDGE)
        wiring.connect(m, edge.o_link, mesh.i_west[0])
        wiring.connect(m, mesh.o_west[0], edge.i_link)
        for name in ("i_header", "i"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(edge, name))
        for name in ("o_header", "o"):
            wiring.connect(m, getattr(edge, name), wiring.flipped(getattr(self, name)))

        # Unused edge endpoints: send nothing, take (and drop) whatever arrives.
        unused = ([mesh.o_west[y] for y in range(1, Y)] + [mesh.o_east[y] for y in range(Y)]
                  + [mesh.o_north[x] for x in range(X)] + [mesh.o_south[x] for x in range(X)])
        for link in unused:
            m.d.comb += link.credit.eq(link.valid)

        errors = 0
        busy = 0
        for y in range(Y):
            for x in range(X):
                ni = NetworkInterface(fmt, x, y, depth)
                if self._tile_module is None:
                    tile = Tile(config)
                else:
                    tile = ExternalModule(Tile.signature_for(config), self._tile_module)
                m.submodules[f"ni_{x}_{y}"] = ni
                m.submodules[f"tile_{x}_{y}"] = tile
                wiring.connect(m, ni.o_link, mesh.i_local[y][x])
                wiring.connect(m, mesh.o_local[y][x], ni.i_link)
                wiring.connect(m, ni.o_header, tile.i_header)
                wiring.connect(m, ni.o, tile.i)
                wiring.connect(m, tile.o_header, ni.i_header)
                wiring.connect(m, tile.o, ni.i)
                m.d.comb += [self.tile_errors[y][x].eq(tile.errors), tile.clear.eq(self.clear)]
                errors = errors | tile.errors
                busy = busy | tile.busy
        m.d.comb += [self.errors.eq(errors), self.busy.eq(busy)]
        return m

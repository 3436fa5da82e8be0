"""Flits, packet headers and the credit-based link of Tessera's mesh NoC.

A packet is a head flit followed by ``length`` more flits, the last of which is the tail (a
packet of length 0 is a single flit that is head and tail at once). The head flit carries only
the header, in the low bits of its data; the other flits carry payload.

Coordinates in a header are *field* coordinates: tile ``(x, y)`` of an X×Y mesh is
``(x + 1, y + 1)``, and the values 0 and X + 1 (0 and Y + 1) address the endpoints beyond the
west and east (south and north) edges. Field coordinates never go negative, so the routers
compare unsigned numbers, and every edge port of the mesh is a destination like any tile.
"""

from amaranth.hdl import ShapeCastable
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for


__all__ = ["Port", "PORTS", "FlitFormat", "Link", "LENGTH_BITS", "KIND_BITS", "DIRECTIONS",
           "endpoint_port", "check_format", "check_depth", "check_tile"]


class Port(enum.Enum, shape=3):
    """Router ports. The numbering is also the order in which a packet acquires the outputs it
    needs (a multicast head can need several): X links before Y links before the tile, which
    keeps multicast deadlock-free (docs/noc.md)."""
    EAST = 0
    WEST = 1
    NORTH = 2
    SOUTH = 3
    LOCAL = 4


#: Router ports in index order.
PORTS = tuple(Port)

#: The four mesh directions, in port order.
DIRECTIONS = PORTS[:4]

#: Header field widths that do not depend on the mesh: the packet length (flits after the head,
#: so up to 256 flits a packet) and the packet kind, which the network carries but never reads.
LENGTH_BITS = 8
KIND_BITS = 4


class FlitFormat:
    """Layouts of the flit and the head flit's header for one mesh size and flit width.

    Parameters
    ----------
    mesh_x, mesh_y : int
        Tiles along X and Y, 1 to 16 each.
    flit_width : int
        Bits of data per flit, at least :attr:`header_width`.

    Attributes
    ----------
    header : :class:`~amaranth.lib.data.StructLayout`
        ``dst_x``, ``dst_y`` (destination, or the low corner of a multicast rectangle),
        ``last_x``, ``last_y`` (the high corner of a multicast rectangle), ``src_x``, ``src_y``,
        ``multicast``, ``kind`` and ``length``; coordinates are field coordinates.
    flit : :class:`~amaranth.lib.data.StructLayout`
        ``data`` (``flit_width`` bits), ``head``, ``tail`` and ``poison`` (set on the tail of a
        packet a router had to repair: discard it).
    """

    def __init__(self, mesh_x, mesh_y, flit_width):
        for name, value in (("Mesh X size", mesh_x), ("Mesh Y size", mesh_y)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 16:
                raise ValueError(f"{name} must be an integer from 1 to 16, not {value!r}")
        if not isinstance(flit_width, int) or isinstance(flit_width, bool) or flit_width < 1:
            raise ValueError(f"Flit width must be a positive integer, not {flit_width!r}")
        self._mesh_x, self._mesh_y = mesh_x, mesh_y
        xw, yw = bits_for(mesh_x + 1), bits_for(mesh_y + 1)
        self._header = data.StructLayout({
            "dst_x": xw, "dst_y": yw,
            "last_x": xw, "last_y": yw,
            "src_x": xw, "src_y": yw,
            "multicast": 1,
            "kind": KIND_BITS,
            "length": LENGTH_BITS,
        })
        if self._header.size > flit_width:
            raise ValueError(f"Flit width must be at least {self._header.size} bits for a "
                             f"{mesh_x}x{mesh_y} mesh (the head flit's header), not {flit_width}")
        self._flit_width = flit_width
        self._flit = data.StructLayout({
            "data": flit_width, "head": 1, "tail": 1, "poison": 1,
        })

    @classmethod
    def from_config(cls, config):
        return cls(config.mesh_x, config.mesh_y, config.flit_width)

    @property
    def mesh_x(self):
        return self._mesh_x

    @property
    def mesh_y(self):
        return self._mesh_y

    @property
    def flit_width(self):
        return self._flit_width

    @property
    def header(self):
        return self._header

    @property
    def flit(self):
        return self._flit

    @property
    def header_width(self):
        return self._header.size

    def __eq__(self, other):
        return (isinstance(other, FlitFormat) and
                (self._mesh_x, self._mesh_y, self._flit_width) ==
                (other._mesh_x, other._mesh_y, other._flit_width))

    def __hash__(self):
        return hash((self._mesh_x, self._mesh_y, self._flit_width))

    def __repr__(self):
        return f"FlitFormat({self._mesh_x}, {self._mesh_y}, {self._flit_width})"


class Link(wiring.Signature):
    """One direction of a credit-flow-controlled channel, seen from the sender.

    The sender may drive ``valid`` only while it holds a credit; each flit it sends uses one.
    The receiver owns a buffer of ``depth`` flits and pulses ``credit`` once for every flit it
    removes from that buffer, which returns the credit. There is no ``ready``: a flit sent is
    always taken.

    Members
    -------
    valid : ``Out(1)``
        A flit is on ``flit`` this cycle.
    flit : ``Out(flit_layout)``
    credit : ``In(1)``
        One buffer slot was freed at the receiver.
    """

    def __init__(self, flit_layout):
        if not isinstance(flit_layout, ShapeCastable):
            raise TypeError(f"Link flit layout must be a shape-castable layout, not "
                            f"{flit_layout!r}")
        self._flit_layout = flit_layout
        super().__init__({
            "valid": Out(1),
            "flit": Out(flit_layout),
            "credit": In(1),
        })

    @property
    def flit_layout(self):
        return self._flit_layout

    def __eq__(self, other):
        return isinstance(other, Link) and self._flit_layout == other._flit_layout

    def __hash__(self):
        return hash(self._flit_layout)

    def __repr__(self):
        return f"Link({self._flit_layout!r})"


def endpoint_port(fmt, field, what):
    """``((x, y), port)``: the router and injection port of the endpoint at field coordinates
    ``field`` (a tile, or an endpoint beyond an edge); None for None. ``what`` names the
    parameter in the error for anything else."""
    if field is None:
        return None
    X, Y = fmt.mesh_x, fmt.mesh_y
    try:
        fx, fy = field
        fx, fy = int(fx), int(fy)
    except (TypeError, ValueError):
        fx = fy = -1
    in_x, in_y = 1 <= fx <= X, 1 <= fy <= Y
    if in_x and in_y:
        return (fx - 1, fy - 1), Port.LOCAL
    if in_y and fx in (0, X + 1):
        return ((0, fy - 1), Port.WEST) if fx == 0 else ((X - 1, fy - 1), Port.EAST)
    if in_x and fy in (0, Y + 1):
        return ((fx - 1, 0), Port.SOUTH) if fy == 0 else ((fx - 1, Y - 1), Port.NORTH)
    raise ValueError(f"{what} must be the field coordinates of a tile or an edge endpoint of "
                     f"the {X}x{Y} mesh (x from 0 to {X + 1}, y from 0 to {Y + 1}, not a "
                     f"corner), not {field!r}")


def check_format(fmt, what):
    """Raise a TypeError naming ``what`` unless ``fmt`` is a :class:`FlitFormat`."""
    if not isinstance(fmt, FlitFormat):
        raise TypeError(f"{what} flit format must be a FlitFormat, not {fmt!r}")


def check_depth(depth, what):
    """Raise a ValueError naming ``what`` unless ``depth`` is a positive integer."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"{what} must be a positive integer, not {depth!r}")


def check_tile(fmt, x, y, what):
    """Raise a ValueError naming ``what`` unless ``(x, y)`` is a tile of ``fmt``'s mesh."""
    for name, value, size in (("x", x, fmt.mesh_x), ("y", y, fmt.mesh_y)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < size:
            raise ValueError(f"{what} {name} must be an integer from 0 to {size - 1}, "
                             f"not {value!r}")

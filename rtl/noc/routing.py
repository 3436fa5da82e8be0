"""The routing function of the mesh: one piece of code for the router's logic and for Python.

:func:`route` takes the header fields either as Python integers or as Amaranth values. With
integers it returns the set of output ports as an integer bit mask, which the channel
dependency graph (``sim/noc.py``), the traffic model and the tests use; with Amaranth values it
returns the same mask as a 5-bit expression, which the router stores beside each flit. The
router's position and the input port are always Python constants, so the logic a router gets
is the routing function specialised to where it sits.

Unicast packets go X first, then Y (dimension order). A destination beyond an edge (field
coordinate 0 or X + 1, 0 or Y + 1) is reached by travelling to the tile next to it and leaving
through that edge port; the turn into an edge port is the only Y-to-X turn, and it ends in an
endpoint, never another router.

A multicast packet addresses a rectangle of tiles; it travels along X towards the rectangle,
branches along X across the rectangle's columns, and in each of them along Y across its rows:
an X-then-Y tree, so it makes no Y-to-X turn at all.
"""

from amaranth.hdl import Cat, Const, Value

from .flit import Port


__all__ = ["route", "port_mask"]


def port_mask(ports):
    """Bit mask of a collection of :class:`~rtl.noc.flit.Port`."""
    mask = 0
    for port in ports:
        mask |= 1 << Port(port).value
    return mask


def _and(*terms):
    # Static terms (Python bools) are folded away, so the router's logic has no constant gates
    # and Python callers get a plain bool.
    if any(t is False for t in terms):
        return False
    dynamic = [t for t in terms if t is not True]
    if not dynamic:
        return True
    result = dynamic[0]
    for term in dynamic[1:]:
        result = result & term
    return result


def _or(*terms):
    if any(t is True for t in terms):
        return True
    dynamic = [t for t in terms if t is not False]
    if not dynamic:
        return False
    result = dynamic[0]
    for term in dynamic[1:]:
        result = result | term
    return result


def _bool(value):
    # Comparisons of Python ints give bools already; Amaranth comparisons give 1-bit values.
    return bool(value) if isinstance(value, int) else value


def route(fmt, x, y, in_port, header):
    """Output ports of router ``(x, y)`` for a head flit arriving on ``in_port``.

    Parameters
    ----------
    fmt : :class:`~rtl.noc.flit.FlitFormat`
    x, y : int
        Tile coordinates of the router (0-based, not field coordinates).
    in_port : :class:`~rtl.noc.flit.Port`
        Where the head arrived; multicast trees depend on the direction of travel.
    header : mapping or :class:`~amaranth.lib.data.View`
        ``dst_x``, ``dst_y``, ``last_x``, ``last_y`` and ``multicast``, in field coordinates.

    Returns
    -------
    int or Value
        Bit ``p`` set for every output port ``p`` the packet must be copied to. Zero means the
        packet cannot be routed (a corner beyond the mesh, an empty rectangle): the router
        drops it and flags it.
    """
    in_port = Port(in_port)
    X, Y = fmt.mesh_x, fmt.mesh_y
    rx, ry = x + 1, y + 1
    dx, dy = header["dst_x"], header["dst_y"]
    lx, ly = header["last_x"], header["last_y"]

    # Unicast. A router on the east column counts every destination at or beyond it as "in
    # this column" (likewise for the other edges), so a packet for an edge endpoint first
    # travels along Y to the row of that endpoint, then leaves through the edge.
    x_here = _and(_bool(dx <= rx) if rx < X else True, _bool(dx >= rx) if rx > 1 else True)
    on_x, on_y = _bool(dx == rx), _bool(dy == ry)
    unicast = {
        Port.EAST:  _and(_bool(dx > rx), True if rx < X else on_y),
        Port.WEST:  _and(_bool(dx < rx), True if rx > 1 else on_y),
        Port.NORTH: _and(x_here, _bool(dy > ry), True if ry < Y else on_x),
        Port.SOUTH: _and(x_here, _bool(dy < ry), True if ry > 1 else on_x),
        Port.LOCAL: _and(on_x, on_y),
    }

    # Multicast over the tile rectangle [dx, lx] x [dy, ly].
    in_columns = _and(_bool(dx <= rx), _bool(lx >= rx))
    moving_x = in_port in (Port.LOCAL, Port.WEST, Port.EAST)
    multicast = {
        Port.EAST:  _and(in_port in (Port.LOCAL, Port.WEST), _bool(lx > rx)),
        Port.WEST:  _and(in_port in (Port.LOCAL, Port.EAST), _bool(dx < rx)),
        Port.NORTH: _and(moving_x or in_port == Port.SOUTH, in_columns, _bool(ly > ry)),
        Port.SOUTH: _and(moving_x or in_port == Port.NORTH, in_columns, _bool(dy < ry)),
        Port.LOCAL: _and(in_columns, _bool(dy <= ry), _bool(ly >= ry)),
    }

    is_multicast = header["multicast"]
    if isinstance(is_multicast, int):
        chosen = multicast if is_multicast else unicast
        return sum(1 << port.value for port, want in chosen.items() if want)
    is_multicast = Value.cast(is_multicast)
    return Cat(*(_value(_or(_and(~is_multicast, unicast[port]), _and(is_multicast, multicast[port])))
                 for port in Port))


def _value(term):
    return Const(int(term), 1) if isinstance(term, bool) else Value.cast(term)

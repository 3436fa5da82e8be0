"""Synthetic traffic patterns of the NoC benchmark, and what they allow in theory.

Tiles are numbered ``y * X + x``. Every pattern is a destination distribution per source:
:func:`destinations` gives ``{destination: probability}``; the permutations also have
:func:`permutation`, the table the C++ traffic driver reads. The patterns follow BookSim2's
definitions:

- ``uniform``: every tile with probability 1/N, the source included;
- ``transpose``: ``(x, y) -> (y, x)`` (square meshes);
- ``bitcomp`` (bit-complement): ``(x, y) -> (X-1-x, Y-1-y)``, which is the complement of every
  bit of the tile number when X and Y are powers of two;
- ``tornado``: ``(x, y) -> ((x + ceil(X/2) - 1) mod X, (y + ceil(Y/2) - 1) mod Y)``;
- ``hotspot``: with probability :data:`HOTSPOT_FRACTION` the hotspot tile ``(X//2, Y//2)``,
  otherwise a uniformly random tile (the hotspot and the source included), so the hotspot
  receives an extra ``HOTSPOT_FRACTION`` of all traffic on top of its uniform share.

:func:`channel_loads` follows every flow along the route the RTL takes
(:func:`rtl.noc.routing.route`) and sums, per channel, the flits per cycle it must carry for an
injection rate of one flit per node per cycle. A channel carries at most one flit per cycle, so
the injection rate any network with this routing can sustain is at most
``Θ* = 1 / max load`` (:func:`bound`): 4/k for uniform traffic on a k×k mesh, the bisection
limit; the hotspot's limit is its ejection port, ``1 / (N·h + 1 - h)``.
"""

import functools
from collections import defaultdict
from fractions import Fraction

from rtl.noc.flit import PORTS, Port
from rtl.noc.routing import route


__all__ = ["PATTERNS", "HOTSPOT_FRACTION", "tile", "coords", "hotspot_tile", "permutation",
           "destinations", "route_path", "hops", "channel_loads", "bound", "average_hops",
           "zero_load_latency"]


PATTERNS = ("uniform", "transpose", "bitcomp", "hotspot", "tornado")

#: Probability that a packet of the ``hotspot`` pattern goes to the hotspot tile.
HOTSPOT_FRACTION = Fraction(1, 10)

_STEP = {Port.EAST: (1, 0), Port.WEST: (-1, 0), Port.NORTH: (0, 1), Port.SOUTH: (0, -1)}
_ARRIVES_ON = {Port.EAST: Port.WEST, Port.WEST: Port.EAST, Port.NORTH: Port.SOUTH,
               Port.SOUTH: Port.NORTH}


def tile(fmt, x, y):
    return y * fmt.mesh_x + x


def coords(fmt, index):
    return index % fmt.mesh_x, index // fmt.mesh_x


def hotspot_tile(fmt):
    return tile(fmt, fmt.mesh_x // 2, fmt.mesh_y // 2)


def permutation(fmt, pattern):
    """Destination of every source for a permutation pattern, or None for a random one."""
    X, Y = fmt.mesh_x, fmt.mesh_y
    if pattern in ("uniform", "hotspot"):
        return None
    table = []
    for s in range(X * Y):
        x, y = coords(fmt, s)
        if pattern == "transpose":
            if X != Y:
                raise ValueError("The transpose pattern needs a square mesh")
            d = (y, x)
        elif pattern == "bitcomp":
            d = (X - 1 - x, Y - 1 - y)
        elif pattern == "tornado":
            d = ((x + (X + 1) // 2 - 1) % X, (y + (Y + 1) // 2 - 1) % Y)
        else:
            raise ValueError(f"Unknown traffic pattern {pattern!r}; known: {', '.join(PATTERNS)}")
        table.append(tile(fmt, *d))
    return table


def destinations(fmt, pattern, source):
    """``{destination tile: probability}`` for packets from ``source``."""
    n = fmt.mesh_x * fmt.mesh_y
    table = permutation(fmt, pattern)
    if table is not None:
        return {table[source]: Fraction(1)}
    uniform = {d: Fraction(1, n) for d in range(n)}
    if pattern == "uniform":
        return uniform
    h = HOTSPOT_FRACTION
    result = {d: (1 - h) * p for d, p in uniform.items()}
    result[hotspot_tile(fmt)] += h
    return result


@functools.lru_cache(maxsize=None)
def route_path(fmt, source, destination):
    """The channels a unicast packet from tile ``source`` to tile ``destination`` uses, in
    order: ``("inject", s)``, then ``("link", (x, y), port)`` for every router output it takes
    towards another router, then ``("eject", d)``. Follows :func:`rtl.noc.routing.route`."""
    X, Y = fmt.mesh_x, fmt.mesh_y
    dx, dy = coords(fmt, destination)
    header = {"dst_x": dx + 1, "dst_y": dy + 1, "last_x": dx + 1, "last_y": dy + 1,
              "multicast": 0}
    (x, y), arrived = coords(fmt, source), Port.LOCAL
    path = [("inject", source)]
    for _ in range(X + Y + 1):
        mask = route(fmt, x, y, arrived, header)
        (port,) = [p for p in PORTS if mask >> p.value & 1]
        if port == Port.LOCAL:
            path.append(("eject", tile(fmt, x, y)))
            return tuple(path)
        path.append(("link", (x, y), port))
        step = _STEP[port]
        x, y, arrived = x + step[0], y + step[1], _ARRIVES_ON[port]
        if not (0 <= x < X and 0 <= y < Y):
            raise AssertionError(f"route from {source} to {destination} leaves the mesh")
    raise AssertionError(f"route from {source} to {destination} does not end")


def hops(fmt, source, destination):
    """Router-to-router links a packet crosses (its route visits ``hops + 1`` routers)."""
    return sum(1 for c in route_path(fmt, source, destination) if c[0] == "link")


def channel_loads(fmt, pattern):
    """``{channel: flits/cycle}`` at an injection rate of 1 flit per node per cycle."""
    loads = defaultdict(Fraction)
    for s in range(fmt.mesh_x * fmt.mesh_y):
        for d, p in destinations(fmt, pattern, s).items():
            for channel in route_path(fmt, s, d):
                loads[channel] += p
    return dict(loads)


def bound(fmt, pattern):
    """Θ*: the highest injection rate (flits/node/cycle) no channel exceeds capacity at, and
    the channels that limit it."""
    loads = channel_loads(fmt, pattern)
    worst = max(loads.values())
    return 1 / worst, [c for c, v in loads.items() if v == worst]


def average_hops(fmt, pattern):
    n = fmt.mesh_x * fmt.mesh_y
    total = sum(p * hops(fmt, s, d)
                for s in range(n) for d, p in destinations(fmt, pattern, s).items())
    return total / n


def zero_load_latency(h, length, t_router=1, t_link=0):
    """(H+1)·t_router + H·t_link + (L−1): cycles from a packet's creation to the cycle its tail
    leaves the destination router. In Tessera's router a flit crosses the router and the link
    to the next router's buffer in one cycle, so t_router = 1 and t_link = 0."""
    return (h + 1) * t_router + h * t_link + (length - 1)

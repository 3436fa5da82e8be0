"""Python side of the NoC: packets as integers, destinations, and the channel dependency graph.

Everything here reads the same :class:`~rtl.noc.flit.FlitFormat` and the same routing function
(:func:`rtl.noc.routing.route`) as the RTL, so a test that checks the graph checks the routers'
own logic.
"""

from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter

from amaranth.hdl import Shape

from rtl.noc.flit import DIRECTIONS, PORTS, Port
from rtl.noc.routing import route


__all__ = ["injection_points", "header_fields", "Packet", "encode_header", "decode_header",
           "packet_flits", "flit_value",
           "decode_flit", "tile_field", "edge_field", "destinations", "deliveries",
           "channel_dependency_graph", "find_cycle", "NEIGHBOUR"]


#: Step in tile coordinates along each direction.
NEIGHBOUR = {Port.EAST: (1, 0), Port.WEST: (-1, 0), Port.NORTH: (0, 1), Port.SOUTH: (0, -1)}
_OPPOSITE = {Port.EAST: Port.WEST, Port.WEST: Port.EAST, Port.NORTH: Port.SOUTH,
             Port.SOUTH: Port.NORTH}


@dataclass(frozen=True)
class Packet:
    """A packet as a test or driver sees it. Coordinates are field coordinates."""
    dst: tuple
    src: tuple = (1, 1)
    payload: tuple = ()
    kind: int = 0
    multicast: bool = False
    last: tuple = None     # high corner of a multicast rectangle

    def header(self):
        last = self.last if self.last is not None else self.dst
        return {"dst_x": self.dst[0], "dst_y": self.dst[1], "last_x": last[0],
                "last_y": last[1], "src_x": self.src[0], "src_y": self.src[1],
                "multicast": int(self.multicast), "kind": self.kind,
                "length": len(self.payload)}


def tile_field(x, y):
    """Field coordinates of tile ``(x, y)``."""
    return (x + 1, y + 1)


def edge_field(fmt, port, index):
    """Field coordinates of the endpoint beyond edge ``port`` at row/column ``index``."""
    X, Y = fmt.mesh_x, fmt.mesh_y
    return {Port.EAST: (X + 1, index + 1), Port.WEST: (0, index + 1),
            Port.NORTH: (index + 1, Y + 1), Port.SOUTH: (index + 1, 0)}[Port(port)]


def encode_header(fmt, fields):
    value = 0
    for name, (offset, width) in header_fields(fmt).items():
        field = int(fields.get(name, 0))
        if not 0 <= field < (1 << width):
            raise ValueError(f"Header field {name} must fit {width} bits, not {field}")
        value |= field << offset
    return value


def decode_header(fmt, value):
    return {name: (value >> offset) & ((1 << width) - 1)
            for name, (offset, width) in header_fields(fmt).items()}


def header_fields(fmt):
    """``{field: (offset, width)}`` of the head flit's header layout."""
    return {name: (fmt.header[name].offset, Shape.cast(fmt.header[name].shape).width)
            for name, _ in fmt.header}


def flit_value(fmt, data, *, head=False, tail=False, poison=False):
    """A flit as the integer the link carries."""
    w = fmt.flit_width
    return data | (int(head) << w) | (int(tail) << (w + 1)) | (int(poison) << (w + 2))


def decode_flit(fmt, value):
    w = fmt.flit_width
    return {"data": value & ((1 << w) - 1), "head": (value >> w) & 1,
            "tail": (value >> (w + 1)) & 1, "poison": (value >> (w + 2)) & 1}


def packet_flits(fmt, packet):
    """The flits of ``packet`` as link integers: head, then one flit per payload word."""
    words = list(packet.payload)
    flits = [flit_value(fmt, encode_header(fmt, packet.header()), head=True, tail=not words)]
    for k, word in enumerate(words):
        flits.append(flit_value(fmt, word, tail=k == len(words) - 1))
    return flits


def destinations(fmt):
    """Every unicast destination in field coordinates: the tiles, then the edge endpoints."""
    X, Y = fmt.mesh_x, fmt.mesh_y
    tiles = [tile_field(x, y) for y in range(Y) for x in range(X)]
    edges = ([edge_field(fmt, Port.EAST, y) for y in range(Y)] +
             [edge_field(fmt, Port.WEST, y) for y in range(Y)] +
             [edge_field(fmt, Port.NORTH, x) for x in range(X)] +
             [edge_field(fmt, Port.SOUTH, x) for x in range(X)])
    return tiles + edges


def injection_points(fmt):
    """Every ``(router, port)`` where an endpoint injects: tiles' local ports, edge ports."""
    return list(_sources(fmt))


def _sources(fmt):
    # Injection points: every tile's local port and every edge port (router, input port).
    X, Y = fmt.mesh_x, fmt.mesh_y
    for y in range(Y):
        for x in range(X):
            yield (x, y), Port.LOCAL
            for port in DIRECTIONS:
                dx, dy = NEIGHBOUR[port]
                if not (0 <= x + dx < X and 0 <= y + dy < Y):
                    yield (x, y), port


def _walk(fmt, start, in_port, header, visit, routing=route):
    """Follow a head flit from router ``start`` (arriving on ``in_port``) through the mesh.

    ``visit(router, in_port, outputs)`` is called at every router it passes. Returns the
    endpoints it reaches: ``(router, port)`` pairs for local and edge outputs.
    """
    X, Y = fmt.mesh_x, fmt.mesh_y
    reached, stack, steps = [], [(start, in_port)], 0
    while stack:
        (x, y), arrived = stack.pop()
        steps += 1
        if steps > 4 * X * Y * len(PORTS):
            raise RuntimeError(f"Routing loops for header {header}")
        mask = routing(fmt, x, y, arrived, header)
        outputs = [p for p in PORTS if mask >> p.value & 1]
        visit((x, y), arrived, outputs)
        for port in outputs:
            if port == Port.LOCAL:
                reached.append(((x, y), port))
                continue
            dx, dy = NEIGHBOUR[port]
            nx, ny = x + dx, y + dy
            if 0 <= nx < X and 0 <= ny < Y:
                stack.append(((nx, ny), _OPPOSITE[port]))
            else:
                reached.append(((x, y), port))
    return reached


def deliveries(fmt, source, in_port, header):
    """Endpoints a packet with ``header`` injected at router ``source`` on ``in_port`` reaches."""
    return _walk(fmt, source, in_port, header, lambda *a: None)


def _headers(fmt):
    X, Y = fmt.mesh_x, fmt.mesh_y
    for dst in destinations(fmt):
        yield {"dst_x": dst[0], "dst_y": dst[1], "last_x": 0, "last_y": 0, "multicast": 0}
    for x0 in range(1, X + 1):
        for x1 in range(x0, X + 1):
            for y0 in range(1, Y + 1):
                for y1 in range(y0, Y + 1):
                    yield {"dst_x": x0, "dst_y": y0, "last_x": x1, "last_y": y1,
                           "multicast": 1}


def channel_dependency_graph(fmt, routing=route, multicast_sources=None):
    """Channel dependency graph of the routing function, multicast included.

    Nodes are channels: ``("in", router, port)`` for an injection link into a router (a tile's
    local port or an edge port) and ``("out", router, port)`` for a router's output link. An
    edge ``a -> b`` means a packet can hold ``a`` while it waits for ``b``:

    - at every router a packet passes, the channel it arrived on waits for each output it
      needs;
    - a multicast sends each flit to all its outputs together, so each output it holds at a
      router waits for what every sibling output waits for next (in both directions: the copy
      on one branch stops when another branch runs out of credits).

    Every header (every unicast destination, tiles and edges, and every multicast rectangle)
    is walked along the route the RTL takes from every injection point, multicasts only from
    ``multicast_sources`` (``(router, port)`` injection points; None: from everywhere), so the
    graph has exactly the dependencies that can occur. ``routing`` replaces the routing
    function (the tests pass broken ones to show the check can fail). Returns
    ``{node: set(successors)}``.
    """
    X, Y = fmt.mesh_x, fmt.mesh_y
    graph = {}

    def channel_into(router, arrived):
        # The link a flit arrived on: an injection link, or the neighbour's output towards us.
        if arrived == Port.LOCAL:
            return ("in", router, arrived)
        dx, dy = NEIGHBOUR[arrived]
        nx, ny = router[0] + dx, router[1] + dy
        if 0 <= nx < X and 0 <= ny < Y:
            return ("out", (nx, ny), _OPPOSITE[arrived])
        return ("in", router, arrived)

    for router, in_port in _sources(fmt):
        allowed = multicast_sources is None or (router, in_port) in multicast_sources
        for header in _headers(fmt):
            if header["multicast"] and not allowed:
                continue
            # One packet's tree: the outputs it needs after each channel it holds.
            needs = {}

            def visit(router, arrived, outputs):
                held = channel_into(router, arrived)
                needs.setdefault(held, set()).update(("out", router, p) for p in outputs)

            _walk(fmt, router, in_port, header, visit, routing)
            for held, outs in needs.items():
                graph.setdefault(held, set()).update(outs)
                for out in outs:
                    graph.setdefault(out, set())
                    # A copy stops when a sibling copy stops: holding one branch, the packet
                    # waits for whatever every other branch waits for next.
                    for sibling in outs - {out}:
                        graph[out].update(needs.get(sibling, ()))
    return graph


def find_cycle(graph):
    """A list of nodes forming a cycle in ``graph``, or None if it is acyclic."""
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        return list(error.args[1])
    return None

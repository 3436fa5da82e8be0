# amaranth: UnusedElaboratable=no
"""NoC: parameter errors, the routing function against an independent XY model, the channel
dependency graph, and the router's cycle-level behaviour in the Amaranth simulator."""

import itertools
import random

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from rtl.config import TesseraConfig
from rtl.noc.credit import CreditCounter
from rtl.noc.flit import FlitFormat, Port, endpoint_port
from rtl.noc.interface import NetworkInterface
from rtl.noc.mesh import Mesh
from rtl.noc.network import Network
from rtl.noc.router import Router
from rtl.noc.routing import route
from sim.noc import (Packet, channel_dependency_graph, decode_flit, decode_header, deliveries,
                     encode_header, find_cycle, flit_value, injection_points, packet_flits,
                     tile_field)


# ---- parameters --------------------------------------------------------------------------

def test_flit_width_must_hold_the_header():
    with pytest.raises(ValueError, match=r"^Flit width must be at least 43 bits for a 16x16 "
                                         r"mesh \(the head flit's header\), not 32$"):
        FlitFormat(16, 16, 32)


def test_config_rejects_a_flit_too_narrow_for_its_mesh():
    with pytest.raises(ValueError, match=r"^flit_width must be at least 43 bits for a 16x16 "):
        TesseraConfig(mesh_x=16, mesh_y=16, flit_width=32)


def test_mesh_size_must_be_in_range():
    with pytest.raises(ValueError, match=r"^Mesh X size must be an integer from 1 to 16, not 0$"):
        FlitFormat(0, 2, 64)


def test_router_position_must_be_in_the_mesh():
    with pytest.raises(ValueError, match=r"^Router y must be an integer from 0 to 1, not 2$"):
        Router(FlitFormat(3, 2, 64), 0, 2, 4)


def test_router_depth_must_be_positive():
    with pytest.raises(ValueError, match=r"^Router buffer depth must be a positive integer, "
                                         r"not 0$"):
        Router(FlitFormat(2, 2, 64), 0, 0, 0)


def test_router_format_must_be_a_flit_format():
    with pytest.raises(TypeError, match=r"^Router flit format must be a FlitFormat, not 64$"):
        Router(64, 0, 0, 4)


def test_credit_counter_depth_must_be_positive():
    with pytest.raises(ValueError, match=r"^Credit counter depth must be a positive integer, "
                                         r"not -1$"):
        CreditCounter(-1)


def test_interface_and_mesh_parameters():
    fmt = FlitFormat(2, 2, 64)
    with pytest.raises(ValueError, match=r"^Network interface x must be an integer from 0 to 1, "
                                         r"not 5$"):
        NetworkInterface(fmt, 5, 0, 4)
    with pytest.raises(ValueError, match=r"^Mesh buffer depth must be a positive integer, "
                                         r"not 0$"):
        Mesh(fmt, 0)
    with pytest.raises(TypeError, match=r"^Network flit format must be a FlitFormat"):
        Network("fmt", 4)


def test_properties_are_read_only():
    router = Router(FlitFormat(3, 3, 64), 1, 2, 5)
    assert (router.x, router.y, router.depth, router.fmt) == (1, 2, 5, FlitFormat(3, 3, 64))
    with pytest.raises(AttributeError):
        router.depth = 3


def test_header_round_trips_through_its_integer():
    fmt = FlitFormat(3, 2, 64)
    fields = {"dst_x": 4, "dst_y": 0, "last_x": 2, "last_y": 3, "src_x": 1, "src_y": 2,
              "multicast": 1, "kind": 9, "length": 200}
    assert decode_header(fmt, encode_header(fmt, fields)) == fields
    with pytest.raises(ValueError, match=r"^Header field length must fit 8 bits, not 256$"):
        encode_header(fmt, {"length": 256})


# ---- routing -----------------------------------------------------------------------------

MESHES = [(1, 1), (2, 2), (3, 2), (2, 3), (4, 4)]


def _expected_unicast(fmt, x, y, dst):
    """Next port by the textbook rule, written independently of rtl/noc/routing.py: X first
    towards the tile nearest the destination, then Y, then out (local or through the edge)."""
    X, Y = fmt.mesh_x, fmt.mesh_y
    gx, gy = dst[0] - 1, dst[1] - 1                  # tile coordinates, may be -1 or X / Y
    tx, ty = min(max(gx, 0), X - 1), min(max(gy, 0), Y - 1)
    if x != tx:
        return Port.EAST if x < tx else Port.WEST
    if y != ty:
        return Port.NORTH if y < ty else Port.SOUTH
    beyond = [p for p, cond in ((Port.EAST, gx >= X), (Port.WEST, gx < 0),
                                (Port.NORTH, gy >= Y), (Port.SOUTH, gy < 0)) if cond]
    if len(beyond) > 1:
        return None                                   # a corner: nobody lives there
    return beyond[0] if beyond else Port.LOCAL


@pytest.mark.parametrize("X,Y", MESHES)
def test_unicast_follows_dimension_order_everywhere(X, Y):
    fmt = FlitFormat(X, Y, 64)
    field_range = [(dx, dy) for dx in range(X + 2) for dy in range(Y + 2)]
    for x, y, dst in itertools.product(range(X), range(Y), field_range):
        header = {"dst_x": dst[0], "dst_y": dst[1], "last_x": 0, "last_y": 0, "multicast": 0}
        expected = _expected_unicast(fmt, x, y, dst)
        for in_port in Port:
            mask = route(fmt, x, y, in_port, header)
            want = 0 if expected is None else 1 << expected.value
            assert mask == want, (x, y, dst, in_port, mask)


@pytest.mark.parametrize("X,Y", MESHES)
def test_multicast_reaches_every_tile_of_its_rectangle_once(X, Y):
    fmt = FlitFormat(X, Y, 64)
    rng = random.Random(X * 100 + Y)
    rectangles = [(x0, x1, y0, y1) for x0 in range(X) for x1 in range(x0, X)
                  for y0 in range(Y) for y1 in range(y0, Y)]
    for sx, sy in itertools.product(range(X), range(Y)):
        for x0, x1, y0, y1 in rng.sample(rectangles, min(len(rectangles), 40)):
            header = {"dst_x": x0 + 1, "dst_y": y0 + 1, "last_x": x1 + 1, "last_y": y1 + 1,
                      "multicast": 1}
            reached = deliveries(fmt, (sx, sy), Port.LOCAL, header)
            expected = [((x, y), Port.LOCAL) for x in range(x0, x1 + 1)
                        for y in range(y0, y1 + 1)]
            assert sorted(reached) == sorted(expected), (sx, sy, x0, x1, y0, y1)


def test_multicast_never_turns_from_y_to_x():
    fmt = FlitFormat(4, 4, 64)
    for x, y in itertools.product(range(4), range(4)):
        for in_port in (Port.NORTH, Port.SOUTH):
            header = {"dst_x": 1, "dst_y": 1, "last_x": 4, "last_y": 4, "multicast": 1}
            mask = route(fmt, x, y, in_port, header)
            assert mask & ((1 << Port.EAST.value) | (1 << Port.WEST.value)) == 0


def test_empty_or_inverted_rectangle_routes_nowhere():
    fmt = FlitFormat(3, 3, 64)
    header = {"dst_x": 3, "dst_y": 1, "last_x": 1, "last_y": 3, "multicast": 1}
    assert deliveries(fmt, (1, 1), Port.LOCAL, header) == []


# ---- deadlock freedom --------------------------------------------------------------------

@pytest.mark.parametrize("X,Y", MESHES)
def test_dependency_graph_is_acyclic_with_any_one_multicast_source(X, Y):
    fmt = FlitFormat(X, Y, 64)
    for source in injection_points(fmt):
        graph = channel_dependency_graph(fmt, multicast_sources={source})
        assert find_cycle(graph) is None, source
    # Not vacuous: the graph has a node per used channel and the X-to-Y turns as edges.
    assert sum(len(v) for v in graph.values()) >= 2 * X * Y


def test_the_mesh_lets_only_its_multicast_source_start_multicasts():
    fmt = FlitFormat(3, 2, 64)
    for field in [(1, 1), (3, 2), (0, 2), (2, 3)]:
        mesh = Mesh(fmt, 4, multicast_source=field)
        (x, y), port = endpoint_port(fmt, field, "source")
        routers = {(r.x, r.y): r for r in _routers(mesh)}
        assert {(xy, p) for xy, r in routers.items() for p in r.multicast_ports} == {((x, y), port)}


def _routers(mesh):
    # The routers as the mesh elaborated them (a fragment remembers what it came from).
    fragment = Fragment.get(mesh, None)
    return [origin for sub, _, _ in fragment.subfragments for origin in sub.origins
            if isinstance(origin, Router)]


def test_multicast_source_must_be_an_endpoint():
    with pytest.raises(ValueError, match=r"^Mesh multicast source must be the field "
                                         r"coordinates of a tile or an edge endpoint of the 3x2 "
                                         r"mesh \(x from 0 to 4, y from 0 to 3, not a corner\), "
                                         r"not \(0, 0\)$"):
        Mesh(FlitFormat(3, 2, 64), 4, multicast_source=(0, 0))
    with pytest.raises(ValueError, match=r"^Router multicast ports must be injection ports of "
                                         r"router \(1, 1\) \(LOCAL\), not"):
        Router(FlitFormat(3, 3, 64), 1, 1, 4, multicast_ports=[Port.EAST])


@pytest.mark.parametrize("X,Y", [(2, 2), (3, 3)])
def test_two_multicast_sources_can_deadlock(X, Y):
    # The hazard the single-source rule exists for: two trees that cross hold outputs the
    # other's copies need (cocotb_tests/test_noc.py reproduces it in the RTL when the rule is
    # lifted).
    fmt = FlitFormat(X, Y, 64)
    assert find_cycle(channel_dependency_graph(fmt)) is not None


def _mixed_order_route(fmt, x, y, in_port, header):
    # A broken routing function: half the unicast packets go Y first. Each order alone is
    # deadlock-free; together they close cycles of turns.
    if header["multicast"] or (header["dst_x"] + header["dst_y"]) % 2 == 0:
        return route(fmt, x, y, in_port, header)
    swap = {Port.EAST: Port.NORTH, Port.NORTH: Port.EAST, Port.WEST: Port.SOUTH,
            Port.SOUTH: Port.WEST, Port.LOCAL: Port.LOCAL}
    transposed = FlitFormat(fmt.mesh_y, fmt.mesh_x, 64)
    mask = route(transposed, y, x, swap[Port(in_port)],
                 {"dst_x": header["dst_y"], "dst_y": header["dst_x"], "last_x": 0,
                  "last_y": 0, "multicast": 0})
    return sum(1 << swap[p].value for p in Port if mask >> p.value & 1)


def test_dependency_check_finds_the_cycle_of_mixed_dimension_orders():
    graph = channel_dependency_graph(FlitFormat(3, 3, 64), routing=_mixed_order_route,
                                     multicast_sources=set())
    assert find_cycle(graph) is not None



# ---- router, cycle by cycle --------------------------------------------------------------

def _run_router(router, inputs, *, cycles, credit_delay=None, start_credits=None):
    """Drive ``router``'s input links with ``inputs`` ({port: [flit ints]}), one flit per cycle
    per port while the sender holds credits; drain every output, returning a credit
    ``credit_delay`` cycles after each flit (None: never). Returns {port: [(cycle, flit)]} and
    the number of credits each input got back."""
    depth = router.depth
    outputs = {p: [] for p in Port}
    returned = {p: 0 for p in Port}

    async def bench(ctx):
        credits = {p: depth if start_credits is None else start_credits for p in Port}
        queues = {p: list(inputs.get(p, [])) for p in Port}
        pending = []                                    # (cycle, port) credit returns
        for cycle in range(cycles):
            for p in Port:
                link = router.input(p)
                if ctx.get(link.credit):
                    credits[p] += 1
                    returned[p] += 1
                send = bool(queues[p]) and credits[p] > 0
                ctx.set(link.valid, send)
                if send:
                    ctx.set(link.flit.as_value(), queues[p].pop(0))
                    credits[p] -= 1
                out = router.output(p)
                ctx.set(out.credit, any(c == cycle and q == p for c, q in pending))
                if ctx.get(out.valid):
                    outputs[p].append((cycle, decode_flit(router.fmt, ctx.get(out.flit.as_value()))))
                    if credit_delay is not None:
                        pending.append((cycle + credit_delay, p))
            await ctx.tick()

    sim = Simulator(router)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return outputs, returned


def _packet(fmt, dst, words, **kw):
    return packet_flits(fmt, Packet(dst=dst, payload=tuple(words), **kw))


def test_a_head_crosses_the_router_in_two_cycles_and_the_rest_follow_at_one_per_cycle():
    fmt = FlitFormat(3, 3, 64)
    router = Router(fmt, 1, 1, 4)
    flits = _packet(fmt, tile_field(2, 1), [0xAB, 0xCD])
    outputs, returned = _run_router(router, {Port.LOCAL: flits}, cycles=8, credit_delay=1)
    # Flit k is on the link in cycle k and at the front of the buffer in k + 1, where the head
    # is allocated its output; it leaves in k + 2, and the body flits stream behind it.
    assert [c for c, _ in outputs[Port.EAST]] == [2, 3, 4]
    assert [f["data"] for _, f in outputs[Port.EAST]][1:] == [0xAB, 0xCD]
    assert all(not outputs[p] for p in Port if p != Port.EAST)
    assert returned[Port.LOCAL] == 3


@pytest.mark.parametrize("alternate", [False, True])
def test_back_to_back_single_flit_packets_leave_one_per_cycle(alternate):
    # The packet behind a departing tail is allocated while the tail leaves, so a queue of
    # one-flit packets streams through at full rate, to one output or to alternating ones.
    fmt = FlitFormat(3, 3, 64)
    router = Router(fmt, 1, 1, 4)
    dsts = [tile_field(2, 1), tile_field(1, 2)] if alternate else [tile_field(2, 1)]
    flits = [_packet(fmt, dsts[k % len(dsts)], [], kind=k % 16)[0] for k in range(12)]
    outputs, _ = _run_router(router, {Port.WEST: flits}, cycles=30, credit_delay=1)
    cycles = sorted(c for p in (Port.EAST, Port.NORTH) for c, _ in outputs[p])
    assert cycles == list(range(2, 14))


def test_packets_sharing_an_output_are_not_interleaved():
    fmt = FlitFormat(3, 3, 64)
    router = Router(fmt, 1, 1, 4)
    a = _packet(fmt, tile_field(2, 1), [1, 2, 3, 4], src=(1, 2))
    b = _packet(fmt, tile_field(2, 1), [5, 6, 7], src=(2, 2))
    outputs, _ = _run_router(router, {Port.LOCAL: b, Port.WEST: a}, cycles=20, credit_delay=2)
    flits = [f for _, f in outputs[Port.EAST]]
    assert len(flits) == len(a) + len(b)
    heads = [k for k, f in enumerate(flits) if f["head"]]
    first, second = heads
    assert flits[second - 1]["tail"] and flits[-1]["tail"]
    words = [[f["data"] for f in flits[first + 1:second]], [f["data"] for f in flits[second + 1:]]]
    assert sorted(words) == [[1, 2, 3, 4], [5, 6, 7]]


def test_output_stops_at_zero_credits_and_resumes():
    fmt = FlitFormat(3, 3, 64)
    router = Router(fmt, 1, 1, 3)
    flits = _packet(fmt, tile_field(1, 2), list(range(8)))
    stalled, _ = _run_router(router, {Port.LOCAL: flits}, cycles=20, credit_delay=None)
    assert len(stalled[Port.NORTH]) == 3          # the receiver's buffer, then nothing
    flowing, _ = _run_router(router, {Port.LOCAL: flits}, cycles=30, credit_delay=1)
    assert len(flowing[Port.NORTH]) == len(flits)


def test_multicast_copies_leave_together():
    fmt = FlitFormat(3, 3, 64)
    router = Router(fmt, 1, 1, 4, multicast_ports=[Port.LOCAL])
    flits = _packet(fmt, (1, 1), [7, 8, 9], multicast=True, last=(3, 3))
    outputs, _ = _run_router(router, {Port.LOCAL: flits}, cycles=16, credit_delay=1)
    copies = [outputs[p] for p in Port]
    assert all(len(c) == len(flits) for c in copies)
    # Every output sends flit k in the same cycle as every other.
    assert len({tuple(c for c, _ in copy) for copy in copies}) == 1
    assert [f["data"] for _, f in outputs[Port.SOUTH]][1:] == [7, 8, 9]


def test_multicast_from_a_port_that_is_not_the_source_is_dropped():
    fmt = FlitFormat(3, 3, 64)
    router = Router(fmt, 1, 1, 4)
    flits = _packet(fmt, (1, 1), [7, 8], multicast=True, last=(3, 3))
    unicast = _packet(fmt, tile_field(2, 1), [5])
    outputs, returned = _run_router(router, {Port.LOCAL: flits + unicast}, cycles=12,
                                    credit_delay=1)
    assert [f["data"] for _, f in outputs[Port.EAST]][1:] == [5]
    assert all(not outputs[p] for p in Port if p != Port.EAST)
    assert returned[Port.LOCAL] == len(flits + unicast)


def _malformed(router, flits):
    outputs, returned = _run_router(router, {Port.WEST: flits}, cycles=len(flits) + 8,
                                    credit_delay=1)
    return [f for _, f in outputs[Port.EAST]], returned[Port.WEST]


def test_headless_flits_are_dropped_and_their_credits_returned():
    fmt = FlitFormat(3, 3, 64)
    router = Router(fmt, 1, 1, 4)
    good = _packet(fmt, tile_field(2, 1), [3])
    flits, returned = _malformed(router, [flit_value(fmt, 0x55), flit_value(fmt, 0x66, tail=True)]
                                 + good)
    assert [f["data"] for f in flits][1:] == [3] and not flits[-1]["poison"]
    assert returned == 4


def test_packets_are_cut_to_their_length_and_poisoned():
    fmt = FlitFormat(3, 3, 64)
    router = Router(fmt, 1, 1, 4)
    head = _packet(fmt, tile_field(2, 1), [0, 0])[0]          # says: two flits follow
    early = [head, flit_value(fmt, 1, tail=True)]              # the tail comes after one
    late = [head, flit_value(fmt, 2), flit_value(fmt, 3), flit_value(fmt, 4),
            flit_value(fmt, 5, tail=True)]                     # four follow, no tail on time
    flits, returned = _malformed(router, early + late + _packet(fmt, tile_field(2, 1), [9]))
    packets, current = [], []
    for f in flits:
        current.append(f)
        if f["tail"]:
            packets.append(current)
            current = []
    assert [[f["data"] for f in p[1:]] for p in packets] == [[1], [2, 3], [9]]
    assert [p[-1]["poison"] for p in packets] == [1, 1, 0]
    assert returned == len(early + late) + 2


def test_malformed_flag_is_sticky():
    fmt = FlitFormat(2, 2, 64)
    router = Router(fmt, 0, 0, 4)

    async def bench(ctx):
        assert not ctx.get(router.malformed)
        ctx.set(router.i_local.valid, 1)
        ctx.set(router.i_local.flit.as_value(), flit_value(fmt, 1))   # no head
        await ctx.tick()
        ctx.set(router.i_local.valid, 0)
        for _ in range(5):
            await ctx.tick()
            assert ctx.get(router.malformed)

    sim = Simulator(router)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()

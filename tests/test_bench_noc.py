"""The NoC benchmark (scripts/bench_noc.py) on a Verilated 4×4 mesh: its driver delivers and
checks every packet, and single packets take exactly the hop formula's cycles.

The expectations here are computed independently of the benchmark's own code: hop counts are
Manhattan distances, bounds are the closed forms of REFERENCES.md.
"""

from fractions import Fraction

import pytest

from rtl.config import TesseraConfig
from rtl.noc.flit import FlitFormat
from scripts import bench_noc
from sim import noc_traffic as traffic
from sim.noc import tile_field


#: rtl/noc/router.py: "a head written into an input buffer in cycle t is allocated in t + 1 and
#: leaves in t + 2, two cycles per hop".
ROUTER_CYCLES = 2

pytestmark = pytest.mark.slow  # the first run builds the mesh under Verilator (minutes)


@pytest.fixture(scope="module")
def mesh():
    config = TesseraConfig()
    fmt = FlitFormat(4, 4, config.flit_width)
    return fmt, bench_noc.build(fmt, config.buffer_depth, log=lambda message: None)


def test_quick_sweep_delivers_every_packet_exactly_once(mesh):
    results = bench_noc.run(quick=True, meshes=(4,), patterns=("uniform",), lengths=(4,),
                            constellation_test=False, broadcasts=False, progress=False)
    (sweep,) = results["sweeps"]
    points = [sweep.zero_load, *sweep.points]
    assert len(points) >= 3
    for p in points:
        # The driver checks each flit as it leaves (any error raises BenchError); after the
        # flush every packet created has arrived, once.
        assert p["errors"] == 0 and p["flushed"] == 1, p
        assert p["created"] == p["delivered"] == p["deliveries"] > 0
    low = [p for p in points if p["rate"] <= 0.5 * sweep.bound]
    for p in low:
        assert p["accepted"] == pytest.approx(p["offered"], abs=0.02), p
        assert p["min_source_ratio"] >= 0.9 or p is sweep.zero_load
    # Uniform traffic on a 4×4 mesh cannot exceed 4/k = 1 flit/node/cycle.
    assert sweep.bound == pytest.approx(1.0)
    assert all(p["accepted"] <= 1.0 + 1e-9 for p in points)


def test_low_load_point_accepts_what_is_offered(mesh):
    fmt, binary = mesh
    p = bench_noc.run_point(binary, fmt, "uniform", 0.05, 4, warmup=500, measure=4000, seed=11)
    # 16 tiles × 4000 cycles × 0.05 / 4 flits ≈ 800 measured packets.
    assert 600 < p["measured_created"] < 1000
    assert p["measured_delivered"] == p["measured_created"]
    assert p["created"] == p["delivered"]
    assert p["accepted"] == pytest.approx(0.05, abs=0.01)
    assert not p["unstable"] and not p["deadlock"]


@pytest.mark.parametrize("fault, message", [("payload", "carries"), ("misroute", "delivered here")])
def test_driver_catches_corrupted_and_misdelivered_packets(mesh, fault, message):
    fmt, binary = mesh
    with pytest.raises(bench_noc.BenchError, match=message):
        bench_noc.run_point(binary, fmt, "uniform", 0.05, 4, warmup=100, measure=1000,
                            fault=fault)


PAIRS = [((0, 0), (0, 0)), ((0, 0), (1, 0)), ((0, 0), (3, 3)), ((1, 2), (3, 0)),
         ((3, 3), (0, 1)), ((2, 1), (2, 3)), ((3, 0), (0, 3))]


def test_single_packets_take_the_hop_formula_exactly(mesh):
    fmt, binary = mesh
    packets, expected = [], []
    for (s, d) in PAIRS:
        for flits in (1, 4, 16):
            packets.append(bench_noc.Scripted(cycle=100 * len(packets), source=s[1] * 4 + s[0],
                                              dst=tile_field(*d), length=flits - 1))
            hops = abs(s[0] - d[0]) + abs(s[1] - d[1])
            expected.append((hops + 1) * ROUTER_CYCLES + (flits - 1))
    _, deliveries = bench_noc.run_trace(binary, packets)
    assert sorted(k for k, *_ in deliveries) == list(range(len(packets)))  # each exactly once
    for k, tile, inject, tail in deliveries:
        p = packets[k]
        assert tile_field(tile % 4, tile // 4) == p.dst
        assert inject == p.cycle               # an idle source sends in the creation cycle
        assert tail - p.cycle == expected[k], (p, tail - p.cycle, expected[k])


def test_hop_timing_finds_two_cycle_routers(mesh):
    fmt, binary = mesh
    t_router, mismatches, count = bench_noc.hop_timing(binary, fmt)
    assert t_router == ROUTER_CYCLES
    assert mismatches == [] and count == 5 * 16 * 2


def test_broadcast_reaches_every_tile_and_beats_unicast(mesh):
    fmt, binary = mesh
    result = bench_noc.broadcast(binary, fmt, source=0, flits=16)
    # One multicast packet to 16 tiles: no faster than the farthest unicast packet, and far
    # faster than 15 unicast packets through one injection port.
    farthest = (6 + 1) * ROUTER_CYCLES + 15
    assert farthest <= result["multicast"] < result["unicast"]
    assert result["unicast"] >= 15 * 16


@pytest.mark.parametrize("k", [4, 8])
def test_bounds_match_the_closed_forms(k):
    fmt = FlitFormat(k, k, 64)
    closed = {"uniform": Fraction(4, k), "transpose": Fraction(1, k - 1),
              "bitcomp": Fraction(2, k), "tornado": Fraction(1, (k + 1) // 2 - 1)}
    for pattern, value in closed.items():
        assert traffic.bound(fmt, pattern)[0] == value, pattern
    n, h = k * k, traffic.HOTSPOT_FRACTION
    assert traffic.bound(fmt, "hotspot")[0] == 1 / (n * h + 1 - h)
    assert traffic.average_hops(fmt, "uniform") == Fraction(2 * (k * k - 1), 3 * k)

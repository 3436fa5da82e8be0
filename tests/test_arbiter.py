# amaranth: UnusedElaboratable=no
"""RoundRobinArbiter: parameter errors, Amaranth-simulator unit tests, and the formal proof."""

import random

import pytest
from amaranth.asserts import AnySeq
from amaranth.hdl import Assert, Cover, Elaboratable, Module, Signal
from amaranth.sim import Simulator

from rtl.arbiter import RoundRobinArbiter
from sim.arbiter import RoundRobinModel
from synth.formal import FormalFailure, prove
from tests.mutants import FixedPriorityArbiter


def test_count_must_be_positive():
    with pytest.raises(ValueError, match=r"^Arbiter requester count must be a positive integer, not 0$"):
        RoundRobinArbiter(0)


def test_count_must_be_integer():
    with pytest.raises(TypeError, match=r"^Arbiter requester count must be a positive integer, not '5'$"):
        RoundRobinArbiter("5")


def _simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def _index(onehot):
    assert onehot & (onehot - 1) == 0, f"grant {onehot:b} is not one-hot"
    return onehot.bit_length() - 1 if onehot else None


def test_full_load_rotates_through_every_requester():
    dut = RoundRobinArbiter(5)

    async def bench(ctx):
        ctx.set(dut.requests, 0b11111)
        ctx.set(dut.advance, 1)
        order = []
        for _ in range(10):
            order.append(_index(ctx.get(dut.grant)))
            await ctx.tick()
        assert order == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]

    _simulate(dut, bench)


def test_grant_is_held_until_served():
    dut = RoundRobinArbiter(4)

    async def bench(ctx):
        ctx.set(dut.requests, 0b0100)
        assert _index(ctx.get(dut.grant)) == 2 and ctx.get(dut.index) == 2
        await ctx.tick()                      # not served: requester 2 keeps the grant ...
        ctx.set(dut.requests, 0b0111)         # ... even against requesters before it
        assert _index(ctx.get(dut.grant)) == 2
        ctx.set(dut.advance, 1)
        await ctx.tick()                      # served: the next grant wraps to requester 0
        assert _index(ctx.get(dut.grant)) == 0

    _simulate(dut, bench)


def test_no_request_no_grant():
    dut = RoundRobinArbiter(3)

    async def bench(ctx):
        ctx.set(dut.advance, 1)
        for _ in range(3):
            assert ctx.get(dut.grant) == 0 and not ctx.get(dut.valid)
            await ctx.tick()

    _simulate(dut, bench)


@pytest.mark.parametrize("count", [1, 2, 5, 8])
def test_matches_reference_model_on_random_traffic(count):
    dut = RoundRobinArbiter(count)
    rng = random.Random(count)
    model = RoundRobinModel(count)

    async def bench(ctx):
        for _ in range(500):
            requests, advance = rng.getrandbits(count), rng.random() < 0.6
            ctx.set(dut.requests, requests)
            ctx.set(dut.advance, advance)
            assert _index(ctx.get(dut.grant)) == model.step(requests, advance)
            await ctx.tick()

    _simulate(dut, bench)


# ---- formal ------------------------------------------------------------------------------

class ArbiterSpec(Elaboratable):
    """Safety and fairness of the arbiter, on free requests and free ``advance``.

    Fairness is stated as a bound: while a requester keeps requesting and is not granted,
    fewer than ``count`` grants to others are served. (Under full load this is "each requester
    is granted once in every ``count`` cycles".)
    """

    def __init__(self, arbiter):
        self.arbiter = arbiter

    def elaborate(self, platform):
        m = Module()
        m.submodules.arbiter = arb = self.arbiter
        n = arb.count
        m.d.comb += [arb.requests.eq(AnySeq(n)), arb.advance.eq(AnySeq(1))]

        m.d.comb += [
            Assert((arb.grant & (arb.grant - 1)[:n]) == 0, "more than one grant"),
            Assert((arb.grant & ~arb.requests) == 0, "grant without request"),
            Assert(arb.valid == arb.requests.any(), "valid without request or request ignored"),
        ]
        served_other = arb.valid & arb.advance
        for i in range(n):
            waited = Signal(range(n + 1), name=f"waited_{i}")
            with m.If(~arb.requests[i] | (arb.grant[i] & arb.advance)):
                m.d.sync += waited.eq(0)
            with m.Elif(~arb.grant[i] & served_other):
                m.d.sync += waited.eq(waited + 1)
            m.d.comb += [
                Assert(waited < n, f"requester {i} starved"),
                Cover(arb.grant[i] & arb.advance),
            ]
            if i == 0:
                # The bound is tight: requester 0 can see every other requester served first.
                m.d.comb += Cover(waited == n - 1)
        return m


@pytest.mark.parametrize("count", [1, 2, 5])
def test_arbiter_properties(count):
    prove(ArbiterSpec(RoundRobinArbiter(count)), name=f"arbiter_{count}", depth=3 * count + 2)


def test_fairness_proof_catches_fixed_priority_mutant():
    with pytest.raises(FormalFailure, match=r"failed assertion .*'requester [1-4] starved'"):
        prove(ArbiterSpec(FixedPriorityArbiter(5)), name="arbiter_fixed_priority", depth=17,
              tasks=("bmc",))

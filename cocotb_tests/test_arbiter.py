"""RoundRobinArbiter under Verilator, against the reference model in sim/arbiter.py.

Traffic is shaped like a router output port's: a requester that asks keeps asking until it is
served; being served takes a random number of cycles (``advance`` is held low at random, as
while a packet's body flits wait for a stalled downstream). Every cycle the grant must equal
the model's, and no requester may wait for ``count`` or more services of others.
"""

import cocotb
import pytest
from cocotb.triggers import ReadOnly, RisingEdge

from cocotb_tests import harness
from cocotb_tests.streams import Watchdog, make_rng, start_clock_and_reset
from sim.arbiter import RoundRobinModel


CYCLES = 20000


@cocotb.test()
async def arbiter_matches_model(dut):
    count = harness.params()["count"]
    rng = make_rng(harness.seed())
    await start_clock_and_reset(dut)
    watchdog = Watchdog(dut.clk)
    cocotb.start_soon(watchdog.run())

    model = RoundRobinModel(count)
    requests = 0
    waited = [0] * count
    served = [0] * count
    new_request_rate = rng.choice([0.05, 0.3, 0.9])
    for cycle in range(CYCLES):
        for i in range(count):
            if rng.random() < new_request_rate:
                requests |= 1 << i
        advance = int(rng.random() < 0.5)
        dut.requests.value = requests
        dut.advance.value = advance
        await ReadOnly()

        expected = model.step(requests, advance)
        grant = int(dut.grant.value)
        assert grant == (0 if expected is None else 1 << expected), \
            f"cycle {cycle}: requests {requests:0{count}b}, grant {grant:0{count}b}, " \
            f"model grants {expected}"
        assert bool(dut.valid.value) == (expected is not None)
        if expected is not None:
            assert int(dut.index.value) == expected
            if advance:
                served[expected] += 1
                for i in range(count):
                    if i != expected and requests >> i & 1:
                        waited[i] += 1
                        assert waited[i] < count, f"cycle {cycle}: requester {i} starved"
                waited[expected] = 0
                requests &= ~(1 << expected)
                watchdog.kick()
        if not requests:
            watchdog.kick()
        await RisingEdge(dut.clk)

    assert all(served), f"some requester was never served: {served}"
    dut._log.info(f"request rate {new_request_rate}: served {served} in {CYCLES} cycles")


# ---- pytest side -------------------------------------------------------------------------

from rtl.arbiter import RoundRobinArbiter   # noqa: E402
from rtl.blocks import build_block          # noqa: E402


@pytest.mark.parametrize("count", [1, 2, 5, 7])
def test_arbiter(count):
    # Five requesters is the configuration's router arbiter; the others are corners.
    arbiter = build_block("arbiter") if count == 5 else RoundRobinArbiter(count)
    assert arbiter.count == count
    harness.run(arbiter, toplevel="arbiter", test_module="cocotb_tests.test_arbiter",
                parameters={"count": count})

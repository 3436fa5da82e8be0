"""The region reader (rtl/tiles/reader.py) in the Amaranth simulator, against a port model: an
SRAM read port that takes requests when it likes (at most seven owed, as the SRAM's ports),
answers them in order after random latencies, and a consumer that stalls at random. The words
that leave must be, for s < segments, r < repeat, i < count, the word at
addr + (s·count + i)·step, ``last`` on the very last only; an error response sets ``error``
until ``clear``."""

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from rtl.tiles.reader import RegionReader
from rtl.tiles.sram import SRAMError


#: Requests an SRAM port holds before its responses are taken (docs/sram.md).
PORT_OWED = 7


def _word(addr):
    # A word that names its address (and is not the address itself).
    return (addr * 0x9E3779B1 + 0x5A) & ((1 << 64) - 1)


def _expected(addr, count, repeat, segments, step):
    return [addr + (s * count + i) * step
            for s in range(segments) for _ in range(repeat) for i in range(count)]


def _run(step, commands, *, req_stall, resp_idle, stall, seed, bad=()):
    """Run ``commands`` (addr, count, repeat, segments) one after the other; return, per
    command, the words and ``last`` flags that left, and ``error`` after each. ``bad``:
    addresses whose response carries an uncorrectable error."""
    dut = RegionReader(64, 16, step=step)
    rng = random.Random(seed)
    results = []

    async def bench(ctx):
        owed = deque()              # (address, cycle its response may come)
        offered = False             # the head's response is offered: it stays until taken
        cycle = 0
        for addr, count, repeat, segments in commands:
            expected = len(_expected(addr, count, repeat, segments, step))
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            while not ctx.get(dut.i_cmd.ready):
                await ctx.tick()
            ctx.set(dut.i_cmd.valid, 1)
            ctx.set(dut.i_cmd.payload, {"addr": addr, "count": count, "repeat": repeat,
                                        "segments": segments})
            await ctx.tick()
            ctx.set(dut.i_cmd.valid, 0)
            words, lasts = [], []
            quiet = 0
            while len(words) < expected or ctx.get(dut.busy):
                ctx.set(dut.o_req.ready, len(owed) < PORT_OWED and rng.random() >= req_stall)
                due = offered or (bool(owed) and owed[0][1] <= cycle
                                  and rng.random() >= resp_idle)
                ctx.set(dut.i_resp.valid, due)
                if due:
                    a = owed[0][0]
                    ctx.set(dut.i_resp.payload, {
                        "data": _word(a),
                        "error": SRAMError.UNCORRECTABLE if a in bad else SRAMError.NONE})
                ctx.set(dut.o.ready, rng.random() >= stall)
                if ctx.get(dut.o_req.valid) and ctx.get(dut.o_req.ready):
                    owed.append((ctx.get(dut.o_req.payload.addr), cycle + rng.randrange(1, 5)))
                offered = due and not ctx.get(dut.i_resp.ready)
                if due and ctx.get(dut.i_resp.ready):
                    owed.popleft()
                if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                    words.append(ctx.get(dut.o.payload.data))
                    lasts.append(ctx.get(dut.o.payload.last))
                    quiet = 0
                quiet += 1
                assert quiet < 200, f"the reader stopped after {len(words)} of {expected} words"
                await ctx.tick()
                cycle += 1
            assert not owed, "requests left without responses"
            # Nothing moves on the ports between commands.
            for port in (dut.o_req.ready, dut.i_resp.valid, dut.o.ready):
                ctx.set(port, 0)
            results.append((words, lasts, ctx.get(dut.error)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


@pytest.mark.parametrize("step", [1, 2])
@pytest.mark.parametrize("rates", [(0.0, 0.0, 0.0), (0.4, 0.3, 0.5)])
def test_reader_streams_its_regions(step, rates):
    rng = random.Random(step * 100 + int(rates[0] * 10))
    commands = [(rng.randrange(0, 4000), rng.randrange(0, 9), rng.randrange(0, 4),
                 rng.randrange(0, 4)) for _ in range(24)]
    commands += [(65535 - 20, 7, 2, 1), (3, 1, 1, 1), (10, 5, 1, 3)]
    results = _run(step, commands, req_stall=rates[0], resp_idle=rates[1], stall=rates[2],
                   seed=step)
    for (addr, count, repeat, segments), (words, lasts, error) in zip(commands, results):
        addresses = _expected(addr, count, repeat, segments, step)
        assert words == [_word(a & 0xFFFF) for a in addresses], (addr, count, repeat, segments)
        assert lasts == [0] * (len(addresses) - 1) + [1] * bool(addresses)
        assert not error


def test_reader_error_is_sticky_until_clear():
    # One bad word in the second of three commands: error high after it, low after clear.
    results = _run(1, [(100, 4, 1, 1), (200, 4, 2, 1), (300, 4, 1, 1)], req_stall=0.2,
                   resp_idle=0.2, stall=0.2, seed=3, bad={202})
    assert [error for _, _, error in results] == [0, 1, 0]
    assert results[1][0] == [_word(a) for a in _expected(200, 4, 2, 1, 1)]

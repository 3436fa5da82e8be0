# amaranth: UnusedElaboratable=no
"""SRAM: parameter errors and Amaranth-simulator tests of arbitration, errors, ECC, zeroization."""

import pytest
from amaranth.sim import Simulator

from rtl.tiles.sram import SRAM, SRAMError


def _sram(**kwargs):
    params = dict(banks=4, depth=16, width=32, ecc=True, interleave="low")
    params.update(kwargs)
    return SRAM(**params)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"banks": 3}, ValueError, r"^SRAM bank count must be a power of two of at least 1, not 3$"),
    ({"depth": 1}, ValueError, r"^SRAM bank depth must be a power of two of at least 2, not 1$"),
    ({"width": 0}, ValueError, r"^SRAM width must be a positive integer, not 0$"),
    ({"ports": {}}, TypeError, r"^SRAM ports must be a non-empty dict of name to kind, not \{\}$"),
    ({"ports": {"a": "x"}}, ValueError, r"^SRAM port 'a' kind must be one of 'r', 'w', 'rw', "
                                        r"not 'x'$"),
    ({"ports": {"1a": "r"}}, ValueError, r"^SRAM port name must be an identifier, not '1a'$"),
    ({"interleave": "odd"}, ValueError, r"^SRAM interleave must be one of 'low', 'high', "
                                        r"'xor', not 'odd'$"),
    ({"address_width": 6}, ValueError, r"^SRAM address width must be an integer above 6 "),
    ({"priority": ("act", "dma")}, ValueError, r"^SRAM priority must be a sequence of distinct "
                                               r"port names \(fill, weight, act, vector\), not "
                                               r"\('act', 'dma'\)$"),
    ({"priority": "act"}, ValueError, r"^SRAM priority must be a sequence of distinct port "
                                      r"names \(fill, weight, act, vector\), not 'act'$"),
    ({"priority": ("act", "act")}, ValueError, r"^SRAM priority must be a sequence of "),
])
def test_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        _sram(**kwargs)


def test_layout_follows_the_interleave():
    low, high, xor = _sram(interleave="low"), _sram(interleave="high"), _sram(interleave="xor")
    assert [low.locate(a) for a in (0, 1, 5)] == [(0, 0), (1, 0), (1, 1)]
    assert [high.locate(a) for a in (0, 1, 17)] == [(0, 0), (0, 1), (1, 1)]
    # xor: the low interleave's bank XOR the row's low bits, so every four consecutive words
    # (from a multiple of four) still take four banks, in an order that changes with the row.
    assert [xor.locate(a)[0] for a in range(16)] == [0, 1, 2, 3, 1, 0, 3, 2,
                                                     2, 3, 0, 1, 3, 2, 1, 0]
    assert [xor.locate(a)[1] for a in (0, 5, 63)] == [0, 1, 15]
    for sram in (low, high, xor):
        assert all(sram.address(*sram.locate(a)) == a for a in range(sram.capacity))
    assert (low.capacity, low.code_width) == (64, 32 + 7)
    assert _sram(ecc=False).code_width == 32


# Cycles a helper waits before failing the test: a stuck design must fail, not hang the suite.
PATIENCE = 10_000


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


async def _request(ctx, port, **fields):
    """Offer one request on stream ``port`` until it is accepted; returns the wait in cycles."""
    ctx.set(port.valid, 1)
    ctx.set(port.payload, fields)
    waited = 0
    while not ctx.get(port.ready):
        await ctx.tick()
        waited += 1
        assert waited < PATIENCE, "request never accepted"
    await ctx.tick()
    ctx.set(port.valid, 0)
    return waited


async def _response(ctx, port):
    ctx.set(port.ready, 1)
    for _ in range(PATIENCE):
        if ctx.get(port.valid):
            break
        await ctx.tick()
    else:
        raise AssertionError("no response")
    payload = ctx.get(port.payload)
    await ctx.tick()
    ctx.set(port.ready, 0)
    return payload


def test_write_then_read_back_through_another_port():
    dut = _sram()

    async def bench(ctx):
        await _request(ctx, dut.i_fill, addr=13, data=0xdeadbeef)
        assert (await _response(ctx, dut.o_fill)).error == SRAMError.NONE
        await _request(ctx, dut.i_weight, addr=13)
        response = await _response(ctx, dut.o_weight)
        assert (response.error, response.data) == (SRAMError.NONE, 0xdeadbeef)

    _run(dut, bench)


def test_same_bank_conflict_waits_and_different_banks_proceed_together():
    dut = _sram()

    async def bench(ctx):
        # weight and act both read bank 1 (addresses 1 and 5 with 4 low-interleaved banks)...
        ctx.set(dut.i_weight.valid, 1)
        ctx.set(dut.i_weight.payload.addr, 1)
        ctx.set(dut.i_act.valid, 1)
        ctx.set(dut.i_act.payload.addr, 5)
        assert ctx.get(dut.i_weight.ready) + ctx.get(dut.i_act.ready) == 1
        # ... while the vector port reads bank 2 and fill writes bank 1 in the same cycle.
        ctx.set(dut.i_vector.valid, 1)
        ctx.set(dut.i_vector.payload, {"addr": 2, "write": 0})
        ctx.set(dut.i_fill.valid, 1)
        ctx.set(dut.i_fill.payload, {"addr": 9, "data": 1})
        assert ctx.get(dut.i_vector.ready) and ctx.get(dut.i_fill.ready)
        first_was_weight = ctx.get(dut.i_weight.ready)
        await ctx.tick()
        ctx.set(dut.i_vector.valid, 0)
        ctx.set(dut.i_fill.valid, 0)
        # The loser goes next.
        if first_was_weight:
            ctx.set(dut.i_weight.valid, 0)
            assert ctx.get(dut.i_act.ready)
        else:
            ctx.set(dut.i_act.valid, 0)
            assert ctx.get(dut.i_weight.ready)

    _run(dut, bench)


def test_a_priority_port_never_loses_its_bank():
    # act and weight read bank 1 in every cycle, eight words each. With act first, act is
    # accepted every cycle and weight only once act has stopped; without, they alternate.
    for priority, expected in (((), "wa" * 8), (("act",), "a" * 8 + "w" * 8)):
        dut = _sram(priority=priority)

        async def bench(ctx, dut=dut, expected=expected):
            for port in (dut.o_act, dut.o_weight):
                ctx.set(port.ready, 1)
            order = ""
            acts = weights = 0
            while len(order) < 16:
                ctx.set(dut.i_act.valid, acts < 8)
                ctx.set(dut.i_act.payload.addr, 1 + 4 * (acts % 4))
                ctx.set(dut.i_weight.valid, weights < 8)
                ctx.set(dut.i_weight.payload.addr, 1 + 4 * (weights % 4))
                a, w = ctx.get(dut.i_act.ready), ctx.get(dut.i_weight.ready)
                assert a + w == 1, "one read of bank 1 per cycle"
                order += "a" if a else "w"
                acts, weights = acts + a, weights + w
                await ctx.tick()
            assert order == expected, (priority, order)

        _run(dut, bench)


def test_read_in_the_cycle_of_a_write_returns_the_old_word():
    dut = _sram()

    async def bench(ctx):
        await _request(ctx, dut.i_fill, addr=6, data=111)
        ctx.set(dut.i_fill.valid, 1)
        ctx.set(dut.i_fill.payload, {"addr": 6, "data": 222})
        ctx.set(dut.i_act.valid, 1)
        ctx.set(dut.i_act.payload.addr, 6)
        assert ctx.get(dut.i_fill.ready) and ctx.get(dut.i_act.ready)
        await ctx.tick()
        ctx.set(dut.i_fill.valid, 0)
        ctx.set(dut.i_act.valid, 0)
        assert (await _response(ctx, dut.o_act)).data == 111
        await _request(ctx, dut.i_act, addr=6)
        assert (await _response(ctx, dut.o_act)).data == 222

    _run(dut, bench)


def test_out_of_range_address_is_answered_counted_and_never_wraps():
    dut = _sram()

    async def bench(ctx):
        await _request(ctx, dut.i_fill, addr=3, data=7)
        await _response(ctx, dut.o_fill)
        # 67 would wrap to 3 if the address were truncated.
        await _request(ctx, dut.i_fill, addr=67, data=99)
        assert (await _response(ctx, dut.o_fill)).error == SRAMError.ADDRESS
        await _request(ctx, dut.i_vector, addr=1 << 20, write=0)
        response = await _response(ctx, dut.o_vector)
        assert (response.error, response.data) == (SRAMError.ADDRESS, 0)
        assert ctx.get(dut.address_errors) == 2
        await _request(ctx, dut.i_weight, addr=3)
        assert (await _response(ctx, dut.o_weight)).data == 7

    _run(dut, bench)


def test_unread_responses_stop_only_their_own_port():
    dut = _sram()

    async def bench(ctx):
        # The documented limit: seven responses waiting to be taken.
        for n in range(7):
            assert await _request(ctx, dut.i_weight, addr=n) == 0
        ctx.set(dut.i_weight.valid, 1)
        ctx.set(dut.i_weight.payload.addr, 7)
        for _ in range(4):
            await ctx.tick()
            assert not ctx.get(dut.i_weight.ready)
        ctx.set(dut.i_weight.valid, 0)
        assert await _request(ctx, dut.i_act, addr=7) == 0
        assert [(await _response(ctx, dut.o_weight)).data for _ in range(7)] == [0] * 7

    _run(dut, bench)


@pytest.mark.parametrize("flips, error, counter", [
    (1, SRAMError.NONE, "corrected_errors"),
    (2, SRAMError.UNCORRECTABLE, "uncorrectable_errors"),
])
def test_injected_bit_flips_are_corrected_or_flagged(flips, error, counter):
    dut = _sram()
    word = 0x12345678

    async def bench(ctx):
        await _request(ctx, dut.i_fill, addr=10, data=word)
        await _response(ctx, dut.o_fill)
        bank, row = dut.locate(10)
        stored = ctx.get(dut.bank_data[bank][row])
        # Flip data bit 3 and, for two flips, a check bit as well.
        mask = (1 << 3) | ((1 << (dut.width + 2)) if flips == 2 else 0)
        ctx.set(dut.bank_data[bank][row], stored ^ mask)
        await _request(ctx, dut.i_weight, addr=10)
        response = await _response(ctx, dut.o_weight)
        assert response.error == error
        if error == SRAMError.NONE:
            assert response.data == word
        assert ctx.get(getattr(dut, counter)) == 1

    _run(dut, bench)


def test_zeroize_clears_everything_blocks_access_and_reports_done():
    dut = _sram(depth=8)

    async def bench(ctx):
        for addr in range(dut.capacity):
            await _request(ctx, dut.i_fill, addr=addr, data=0xa5a50000 | addr)
            await _response(ctx, dut.o_fill)
        ctx.set(dut.zeroize, 1)
        await ctx.tick()
        ctx.set(dut.zeroize, 0)
        ctx.set(dut.i_act.valid, 1)
        ctx.set(dut.i_act.payload.addr, 0)
        busy_cycles = 0
        while ctx.get(dut.busy):
            assert not ctx.get(dut.i_act.ready), "a port was served while zeroizing"
            busy_cycles += 1
            await ctx.tick()
        assert busy_cycles == dut.depth
        assert ctx.get(dut.done)
        # The request that waited through zeroization goes now, and reads a cleared word.
        assert ctx.get(dut.i_act.ready)
        await ctx.tick()
        ctx.set(dut.i_act.valid, 0)
        assert (await _response(ctx, dut.o_act)).data == 0
        for port, response in ((dut.i_weight, dut.o_weight), (dut.i_act, dut.o_act),
                               (dut.i_vector, dut.o_vector)):
            for addr in range(dut.capacity):
                await _request(ctx, port, addr=addr, **({"write": 0} if port is dut.i_vector
                                                        else {}))
                assert (await _response(ctx, response)).data == 0

    _run(dut, bench)


def test_response_latency_is_as_documented():
    dut = _sram()

    async def bench(ctx):
        ctx.set(dut.o_act.ready, 1)
        ctx.set(dut.i_act.valid, 1)
        ctx.set(dut.i_act.payload.addr, 5)
        assert ctx.get(dut.i_act.ready)
        await ctx.tick()
        ctx.set(dut.i_act.valid, 0)
        cycles = 1
        while not ctx.get(dut.o_act.valid):
            await ctx.tick()
            cycles += 1
        assert cycles == 6, f"response offered {cycles} cycles after acceptance"

    _run(dut, bench)


def test_double_buffering_fills_one_region_while_another_is_read_at_full_rate():
    # One bank: the two regions share it, yet a write and a read proceed every cycle.
    dut = _sram(banks=1, depth=32)

    async def bench(ctx):
        ctx.set(dut.o_fill.ready, 1)
        ctx.set(dut.o_weight.ready, 1)
        for addr in range(16):                        # region A holds the current weights
            await _request(ctx, dut.i_fill, addr=addr, data=1000 + addr)
        read = []
        for n in range(16):
            ctx.set(dut.i_fill.valid, 1)              # region B gets the next ones
            ctx.set(dut.i_fill.payload, {"addr": 16 + n, "data": 2000 + n})
            ctx.set(dut.i_weight.valid, 1)
            ctx.set(dut.i_weight.payload.addr, n)
            assert ctx.get(dut.i_fill.ready) and ctx.get(dut.i_weight.ready), f"cycle {n}"
            if ctx.get(dut.o_weight.valid):
                read.append(ctx.get(dut.o_weight.payload.data))
            await ctx.tick()
        ctx.set(dut.i_fill.valid, 0)
        ctx.set(dut.i_weight.valid, 0)
        while len(read) < 16:
            if ctx.get(dut.o_weight.valid):
                read.append(ctx.get(dut.o_weight.payload.data))
            await ctx.tick()
        assert read == [1000 + n for n in range(16)]
        await _request(ctx, dut.i_weight, addr=31)
        assert (await _response(ctx, dut.o_weight)).data == 2015

    _run(dut, bench)

# amaranth: UnusedElaboratable=no
"""MAC array: parameters, the GGUF code reference against gguf, the PE's packed lanes at their
extremes, and whole matmuls in the Amaranth simulator (every mode, bad commands)."""

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from rtl.config import TesseraConfig, mode_code
from rtl.tiles.mac_array import MACArray
from rtl.tiles.pe import LANE_SHIFT, MULTIPLY_LATENCY, ProcessingElement
from sim.gguf_blocks import FORMATS, code_values, split_blocks
from sim.mac_array import block_sums, schedule
from synth.flow import platform_for


# ---- Parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(rows=0, cols=4), ValueError, r"^MAC array rows must be an integer from 1 to 32, not 0$"),
    (dict(rows=33, cols=4), ValueError, r"^MAC array rows must be an integer from 1 to 32, not 33$"),
    (dict(rows=4, cols=65), ValueError,
     r"^MAC array columns must be an integer from 1 to 64, not 65$"),
    (dict(rows=4, cols=True), ValueError,
     r"^MAC array columns must be an integer from 1 to 64, not True$"),
    (dict(rows=4, cols=4, formats=()), TypeError,
     r"^MAC array formats must be a non-empty tuple of format names, not \(\)$"),
    (dict(rows=4, cols=4, formats="Q8_0"), TypeError,
     r"^MAC array formats must be a non-empty tuple of format names, not 'Q8_0'$"),
    (dict(rows=4, cols=4, formats=("Q8_0", "Q5_K")), ValueError,
     r"^MAC array format 'Q5_K' is not a known format; allowed: Q8_0, Q4_0, Q4_1, MXFP4, "
     r"TQ2_0$"),
    (dict(rows=4, cols=4, buffer_blocks=1), ValueError,
     r"^MAC array buffer blocks must be an integer from 2 to 16, not 1$"),
    (dict(rows=4, cols=4, buffer_blocks=3.0), ValueError,
     r"^MAC array buffer blocks must be an integer from 2 to 16, not 3\.0$"),
])
def test_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        MACArray(**kwargs)


def test_pe_packed_must_be_bool():
    with pytest.raises(TypeError, match=r"^PE packed must be True or False, not 1$"):
        ProcessingElement(packed=1)


def test_from_config():
    array = MACArray.from_config(TesseraConfig(array_rows=4, array_cols=6,
                                               weight_formats=("Q8_0",)))
    assert (array.rows, array.cols, array.lanes, array.packed) == (4, 6, 1, False)
    assert MACArray(rows=2, cols=2, formats=("TQ2_0",)).lanes == 2


def test_ecp5_multipliers_are_dsps():
    # One MULT18X18D per PE on ECP5, none in the portable elaboration.
    array = MACArray(rows=2, cols=3)
    assert rtlil.convert(array, platform=platform_for("ecp5")).count("MULT18X18D") == 6
    assert "MULT18X18D" not in rtlil.convert(MACArray(rows=2, cols=3))


# ---- The code reference against gguf -------------------------------------------------------

_QTYPE = {name: getattr(GGMLQuantizationType, name) for name in FORMATS}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_codes_reproduce_gguf_dequantize(fmt):
    # Quantize random data with gguf, read the bytes back with sim.gguf_blocks, and rebuild
    # gguf's float32 values from our integer codes and scales, bit for bit.
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((8, 512)) * rng.uniform(0.01, 10, (8, 1))).astype(np.float32)
    raw = quantize(x, _QTYPE[fmt])
    reference = dequantize(raw, _QTYPE[fmt]).reshape(-1, FORMATS[fmt][0])
    blocks = split_blocks(fmt, raw)
    values = code_values(fmt, blocks.codes).astype(np.float32)
    if fmt == "MXFP4":
        # The E8M0 exponent scales twice the E2M1 value: 2**(e - 127) / 2.
        scale = np.ldexp(np.float32(1), blocks.e.astype(np.int32) - 128).astype(np.float32)
        ours = scale[:, None] * values
    else:
        ours = blocks.d.astype(np.float32)[:, None] * values
        if fmt == "Q4_1":
            ours = ours + blocks.m.astype(np.float32)[:, None]
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours.view(np.uint32), reference.view(np.uint32))


def test_block_sums_definition():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (3, 64))
    w = rng.integers(-12, 13, (5, 64))
    sums = block_sums(x, w)
    for b in range(2):
        np.testing.assert_array_equal(sums[:, :, b], x[:, 32 * b:32 * b + 32] @ w[:, 32 * b:32 * b + 32].T)


# ---- The PE, in the Amaranth simulator ------------------------------------------------------

def _run_pe(packed, steps):
    """Feed ``steps`` (a list of (x, w, first, last)) to one PE; return its (sum_a, sum_b)
    at each `done`."""
    pe = ProcessingElement(packed=packed)
    results = []

    async def testbench(ctx):
        flags = [(0, 0)] * (MULTIPLY_LATENCY - 1) + [(f, l) for _, _, f, l in steps]
        operands = [(x, w) for x, w, _, _ in steps] + [(0, 0)] * 8
        for cycle in range(len(steps) + 8):
            x, w = operands[cycle]
            ctx.set(pe.x, x)
            ctx.set(pe.w, w)
            first, last = flags[cycle] if cycle < len(flags) else (0, 0)
            ctx.set(pe.first, first)
            ctx.set(pe.last, last)
            await ctx.tick()
            if ctx.get(pe.done):
                results.append((ctx.get(pe.sum_a), ctx.get(pe.sum_b) if packed else None))
            else:
                assert ctx.get(pe.sum_a) == 0

    sim = Simulator(pe)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return results


def _word(a, b=0):
    """A packed weight word as weight_word_width() documents it: ``a`` in bits 0-7, ``b`` minus
    the sign of ``a`` in bits 8-13; as a signed 14-bit number."""
    raw = (a & 0xFF) | ((b - (a < 0)) & 0x3F) << 8
    return raw - (1 << 14) if raw >> 13 else raw


def _block(pairs):
    return [(x, w, i == 0, i == len(pairs) - 1) for i, (x, w) in enumerate(pairs)]


@pytest.mark.parametrize("x, a, b", [
    (-128, -12, -12), (-128, 7, -8), (-128, -8, 7), (-128, 15, 15), (127, -12, 15),
    (127, 15, -12), (-1, -1, 2), (0, -8, -8), (1, 0, -1),
])
def test_pe_packed_extremes(x, a, b):
    # A whole block of the same extreme pair: the lanes must not leak into each other even
    # when 32 borrows accumulate.
    (sum_a, sum_b), = _run_pe(True, _block([(x, _word(a, b))] * 32))
    assert (sum_a, sum_b) == (32 * x * a, 32 * x * b)


@pytest.mark.parametrize("x, w", [(-128, -128), (-128, 127), (127, -128), (-1, 1)])
def test_pe_int8_through_packed_lanes(x, w):
    # Q8_0 goes through the same split: the block sum is sum_a + sum_b · 2**12.
    (sum_a, sum_b), = _run_pe(True, _block([(x, _word(w))] * 32))
    assert sum_a + (sum_b << LANE_SHIFT) == 32 * x * w
    (only,), = [(s,) for s, _ in _run_pe(False, _block([(x, w)] * 32))]
    assert only == 32 * x * w


def test_pe_random_blocks_back_to_back():
    rng = np.random.default_rng(11)
    steps, expected = [], []
    for _ in range(3):
        xs = rng.integers(-128, 128, 32)
        a = rng.integers(-12, 16, 32)
        b = rng.integers(-12, 16, 32)
        steps += _block([(int(xv), _word(int(av), int(bv))) for xv, av, bv in zip(xs, a, b)])
        expected.append((int(xs @ a), int(xs @ b)))
    assert _run_pe(True, steps) == expected


# ---- Whole matmuls, in the Amaranth simulator -----------------------------------------------

def _random_codes(rng, fmt, shape):
    high = {"Q8_0": 256, "TQ2_0": 3}.get(fmt, 16)
    return rng.integers(0, high, shape)


def _weights(array, pairs):
    if array.packed:
        return [{"lo": int(lo), "hi": int(hi)} for lo, hi in pairs]
    return [int(lo) for lo, _ in pairs]


def _simulate(array, commands, *, stall_seed=None, drain=True):
    """Run ``commands`` (each a Schedule, or a (mode, blocks, tiles, steps) tuple for a bad
    command) through ``array``; return the output words and the error flags after each."""
    rng = np.random.default_rng(stall_seed) if stall_seed is not None else None
    received, errors = [], []

    async def producer(ctx):
        for entry in commands:
            if hasattr(entry, "command"):
                (mode, blocks, tiles), xs, ws = entry.command, entry.x_steps, entry.w_steps
            else:
                mode, blocks, tiles, count = entry
                xs = np.zeros((count, array.rows), dtype=np.int64)
                ws = np.zeros((count, array.cols, 2), dtype=np.int64)
            ctx.set(array.i_cmd.payload, {"mode": mode, "blocks": blocks, "tiles": tiles})
            ctx.set(array.i_cmd.valid, 1)
            await ctx.tick().until(array.i_cmd.ready)
            ctx.set(array.i_cmd.valid, 0)
            for x, w in zip(xs, ws):
                while rng is not None and rng.random() < 0.3:
                    ctx.set(array.i_x.valid, 0)
                    await ctx.tick()
                ctx.set(array.i_x.payload, [int(v) for v in x])
                ctx.set(array.i_w.payload, _weights(array, w))
                ctx.set(array.i_x.valid, 1)
                ctx.set(array.i_w.valid, 1)
                await ctx.tick().until(array.i_x.ready & array.i_w.valid)
            ctx.set(array.i_x.valid, 0)
            ctx.set(array.i_w.valid, 0)
            if drain:
                await ctx.tick().until(~array.busy)
                errors.append((ctx.get(array.errors.mode), ctx.get(array.errors.empty)))
                ctx.set(array.clear, 1)
                await ctx.tick()
                ctx.set(array.clear, 0)
        await ctx.tick().until(~array.busy)

    async def consumer(ctx):
        async for _, _, valid, ready, payload in ctx.tick().sample(
                array.o.valid, array.o.ready, array.o.payload):
            if valid and ready:
                received.append((payload.tile, payload.block, payload.row,
                                 tuple(payload.sums), payload.last))
            ctx.set(array.o.ready, rng is None or rng.random() >= 0.3)

    sim = Simulator(array)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer, background=True)
    sim.run()
    return received, errors


@pytest.mark.parametrize("formats", [None, ("Q8_0",), ("TQ2_0", "Q4_1")])
def test_array_every_mode(formats):
    array = MACArray(rows=2, cols=3, **({"formats": formats} if formats else {}))
    rng = np.random.default_rng(5)
    jobs = []
    for fmt in array.formats:
        m, n, k = int(rng.integers(1, 5)), int(rng.integers(1, 8)), 32 * int(rng.integers(1, 3))
        jobs.append(schedule(fmt, rng.integers(-128, 128, (m, k)),
                             _random_codes(rng, fmt, (n, k)),
                             rows=array.rows, cols=array.cols, lanes=array.lanes))
    received, errors = _simulate(array, jobs, stall_seed=1)
    expected = [out for job in jobs for out in job.outputs]
    assert [r[:4] for r in received] == expected
    # `last` on exactly the final word of each command.
    ends = np.cumsum([len(job.outputs) for job in jobs]) - 1
    assert [i for i, r in enumerate(received) if r[4]] == list(ends)
    assert errors == [(0, 0)] * len(jobs)


def test_array_bad_commands():
    # A disabled mode, an undefined mode and an empty command: flagged, nothing emitted, and
    # the next good command is unaffected.
    array = MACArray(rows=2, cols=2, formats=("Q8_0", "MXFP4"))
    rng = np.random.default_rng(9)
    good = schedule("MXFP4", rng.integers(-128, 128, (2, 32)), _random_codes(rng, "MXFP4", (4, 32)),
                    rows=2, cols=2, lanes=2)
    commands = [(mode_code("Q4_0"), 1, 2, 64), (7, 2, 1, 64), (mode_code("Q8_0"), 0, 5, 0), good]
    received, errors = _simulate(array, commands)
    assert errors == [(1, 0), (1, 0), (0, 1), (0, 0)]
    assert [r[:4] for r in received] == good.outputs


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 2), (5, 2)])
def test_latency_and_row_order(rows, cols):
    # One block at full rate into an always-ready output: row 0's word appears `latency`
    # cycles after the block's last step is taken, and row r r cycles after that.
    array = MACArray(rows=rows, cols=cols)
    taken_last, seen = [], []

    async def testbench(ctx):
        ctx.set(array.o.ready, 1)
        ctx.set(array.i_cmd.payload, {"mode": mode_code("Q8_0"), "blocks": 1, "tiles": 1})
        ctx.set(array.i_cmd.valid, 1)
        await ctx.tick()
        ctx.set(array.i_cmd.valid, 0)
        ctx.set(array.i_x.valid, 1)
        ctx.set(array.i_w.valid, 1)
        for cycle in range(200):
            taken = ctx.get(array.i_x.ready)
            valid = ctx.get(array.o.valid)
            if valid:
                seen.append((cycle, ctx.get(array.o.payload.row)))
            await ctx.tick()
            if taken and len(taken_last) < 32:
                taken_last.append(cycle)
                if len(taken_last) == 32:
                    ctx.set(array.i_x.valid, 0)
                    ctx.set(array.i_w.valid, 0)

    sim = Simulator(array)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    last = taken_last[-1]
    assert seen == [(last + array.latency + r, r) for r in range(rows)]


def test_ecp5_synthesis_maps_every_product_to_a_dsp(tmp_path):
    # The hand-instantiated MULT18X18D must survive synth_ecp5 (ports and parameters it
    # accepts) as one DSP per PE; the output buffer is LUT RAM, not flip-flops.
    from synth.flow import synthesize
    result = synthesize(MACArray(rows=2, cols=3), name="mac_array_2x3", target="ecp5",
                        workdir=tmp_path, place_and_route=False)
    assert result.dsps == 6
    assert result.lutrams > 0 and result.brams == 0
    int8 = synthesize(MACArray(rows=2, cols=3, formats=("Q8_0",)), name="mac_array_2x3_int8",
                      target="ecp5", workdir=tmp_path / "int8", place_and_route=False)
    assert int8.dsps == 6
    # Without packed formats: narrower accumulators and weight chain, no decoders.
    assert int8.ffs < result.ffs and int8.luts < result.luts


def test_mode_change_between_back_to_back_commands():
    # With 24 rows the last rows of a block leave after the next block's tag is queued: a
    # Q8_0 block followed at once by a packed one must still combine each with its own mode.
    array = MACArray(rows=24, cols=1)
    rng = np.random.default_rng(13)
    jobs = [schedule(fmt, rng.integers(-128, 128, (24, 64)), _random_codes(rng, fmt, (2, 64)),
                     rows=24, cols=1, lanes=2)
            for fmt in ("Q8_0", "Q4_0", "Q8_0", "MXFP4")]
    received, _ = _simulate(array, jobs, drain=False)
    assert [r[:4] for r in received] == [out for job in jobs for out in job.outputs]

# amaranth: UnusedElaboratable=no
"""Weight unpacker: parameters, the block reference (including the gpt-oss MXFP4 order) against
gguf, and whole jobs in the Amaranth simulator (every format, truncated jobs, bad modes)."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from cocotb_tests.test_unpack import (Job, _params, decode_beat, expected_beats, finite_random_blocks,
                                      gguf_order, gguf_values, input_words, interleaved_order,
                                      nonfinite_blocks, rtl_values, same_floats)
from rtl.config import WEIGHT_FORMATS, TesseraConfig, mode_code
from rtl.tiles.unpack import BLOCK_GEOMETRY, WeightUnpacker
from sim.gguf_blocks import FORMATS, code_values, e8m0_half, element_values, split_blocks


# ---- Parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(byte_width=3), ValueError, r"^Unpacker byte width must be a power of two from 1 to 64, not 3$"),
    (dict(byte_width=0), ValueError, r"^Unpacker byte width must be a power of two from 1 to 64, not 0$"),
    (dict(byte_width=128), ValueError,
     r"^Unpacker byte width must be a power of two from 1 to 64, not 128$"),
    (dict(byte_width=True), TypeError,
     r"^Unpacker byte width must be a power of two from 1 to 64, not True$"),
    (dict(byte_width=8.0), TypeError,
     r"^Unpacker byte width must be a power of two from 1 to 64, not 8.0$"),
    (dict(lanes=0), ValueError, r"^Unpacker lanes must be a power of two from 1 to 32, not 0$"),
    (dict(lanes=12), ValueError, r"^Unpacker lanes must be a power of two from 1 to 32, not 12$"),
    (dict(lanes=64), ValueError, r"^Unpacker lanes must be a power of two from 1 to 32, not 64$"),
    (dict(lanes="16"), TypeError, r"^Unpacker lanes must be a power of two from 1 to 32, not '16'$"),
    (dict(formats=()), TypeError,
     r"^Unpacker formats must be a non-empty tuple of format names, not \(\)$"),
    (dict(formats="Q8_0"), TypeError,
     r"^Unpacker formats must be a non-empty tuple of format names, not 'Q8_0'$"),
    (dict(formats=("Q8_0", "Q5_K")), ValueError,
     r"^Unpacker format 'Q5_K' is not a known format; allowed: Q8_0, Q4_0, Q4_1, MXFP4, TQ2_0$"),
    (dict(formats=("Q8_0", "MXFP4", "Q8_0")), ValueError,
     r"^Unpacker formats must not repeat a format, not \('Q8_0', 'MXFP4', 'Q8_0'\)$"),
])
def test_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        WeightUnpacker(**kwargs)


def test_parameters_and_from_config():
    unpacker = WeightUnpacker()
    assert (unpacker.formats, unpacker.byte_width, unpacker.lanes) == (WEIGHT_FORMATS, 8, 16)
    with pytest.raises(AttributeError):
        unpacker.lanes = 4
    config = TesseraConfig(sram_width=256, weight_formats=("Q4_1", "Q8_0"))
    unpacker = WeightUnpacker.from_config(config)
    assert (unpacker.formats, unpacker.byte_width, unpacker.lanes) == (("Q4_1", "Q8_0"), 32, 16)
    assert unpacker.slots == 8
    assert [unpacker.beats_per_block(f) for f in unpacker.formats] == [2, 2]
    with pytest.raises(ValueError,
                       match=r"^Unpacker byte width must be a power of two from 1 to 64, not 3$"):
        WeightUnpacker.from_config(TesseraConfig(sram_width=24))


def test_geometry_matches_the_reference():
    # The RTL's layout table and the reference's are written separately; they must agree.
    for fmt, (elements, size) in FORMATS.items():
        g = BLOCK_GEOMETRY[fmt]
        assert (g.elements, g.size) == (elements, size)
        assert g.codes_at + g.elements * g.code_bits // 8 + (2 if fmt == "TQ2_0" else 0) == size


# ---- The reference against gguf ----------------------------------------------------------------

_QTYPE = {name: getattr(GGMLQuantizationType, name) for name in FORMATS}


def _random_data(seed, rows=6, k=512):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, k)) * rng.uniform(0.01, 10, (rows, 1))).astype(np.float32)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_element_values_reproduce_gguf(fmt):
    raw = quantize(_random_data(3), _QTYPE[fmt])
    blocks = split_blocks(fmt, raw)
    ours = element_values(fmt, code_values(fmt, blocks.codes), d=blocks.d, m=blocks.m,
                          e=blocks.e)
    reference = dequantize(raw, _QTYPE[fmt]).reshape(ours.shape)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours.view(np.uint32), reference.view(np.uint32))


def test_e8m0_half_is_ggml_e8m0_to_fp32_half():
    from gguf.quants import MXFP4
    e = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(e8m0_half(e).view(np.uint32),
                                  MXFP4.e8m0_to_fp32_half(e).view(np.uint32))


def test_mxfp4_gpt_oss_order_against_gguf():
    # gguf reads MXFP4 in GGUF's nibble order only: quantize with it, rewrite the bytes in the
    # gpt-oss order (element 2k low, 2k + 1 high nibble of byte k), read them back with
    # interleaved=True, and the codes and values must be gguf's.
    raw = quantize(_random_data(4), _QTYPE["MXFP4"]).reshape(-1)
    gpt_oss = interleaved_order(raw)
    assert not np.array_equal(gpt_oss, raw)
    np.testing.assert_array_equal(gguf_order(gpt_oss), raw)
    ours = split_blocks("MXFP4", gpt_oss, interleaved=True)
    theirs = split_blocks("MXFP4", raw)
    np.testing.assert_array_equal(ours.codes, theirs.codes)
    np.testing.assert_array_equal(ours.e, theirs.e)
    values = element_values("MXFP4", code_values("MXFP4", ours.codes), e=ours.e)
    np.testing.assert_array_equal(values.view(np.uint32),
                                  dequantize(raw, _QTYPE["MXFP4"]).reshape(values.shape)
                                  .view(np.uint32))
    # One byte by hand: codes 0x3 (element 0) and 0xA (element 1) in byte 0 of the codes.
    block = np.zeros(17, dtype=np.uint8)
    block[0], block[1] = 127, 0xA3
    assert split_blocks("MXFP4", block, interleaved=True).codes[0, :2].tolist() == [0x3, 0xA]
    assert split_blocks("MXFP4", block).codes[0, [0, 16]].tolist() == [0x3, 0xA]
    with pytest.raises(ValueError, match="^Only MXFP4 has an interleaved nibble order, not Q4_0$"):
        split_blocks("Q4_0", np.zeros(18, dtype=np.uint8), interleaved=True)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_nonfinite_scales_decode_as_gguf_does():
    # The scoreboard's NaN rule: gguf turns an inf/NaN d into inf/NaN values (and E8M0 0xFF
    # into 2**127, which overflows for |code| >= 2); ours must match, NaN for NaN.
    rng = np.random.default_rng(5)
    for fmt in FORMATS:
        job = Job(fmt, nonfinite_blocks(rng, fmt), mode_code(fmt))
        beats = expected_beats(job, 8)
        assert same_floats(rtl_values(fmt, beats), gguf_values(job))
        assert not np.isfinite(gguf_values(job)[1]).all()


# ---- Whole jobs in the Amaranth simulator -----------------------------------------------------

def _simulate(unpacker, jobs, *, seed=0, stall=0.3):
    """Run ``jobs``, one after another, idling and stalling at random; return the output beats
    and the error flags after each job (then cleared)."""
    p = _params(unpacker)
    rng = np.random.default_rng(seed)
    received, errors = [], []

    async def producer(ctx):
        for job in jobs:
            ctx.set(unpacker.i_cmd.payload, {"mode": job.mode, "interleaved": job.interleaved})
            ctx.set(unpacker.i_cmd.valid, 1)
            await ctx.tick().until(unpacker.i_cmd.ready)
            ctx.set(unpacker.i_cmd.valid, 0)
            for word in getattr(job, "words", None) or input_words(job, p):
                while rng.random() < stall:
                    ctx.set(unpacker.i.valid, 0)
                    await ctx.tick()
                ctx.set(unpacker.i.payload.as_value(), word)
                ctx.set(unpacker.i.valid, 1)
                await ctx.tick().until(unpacker.i.ready)
            ctx.set(unpacker.i.valid, 0)
            # Every beat of the job is out well before this.
            await ctx.tick().repeat(200)
            errors.append({name: ctx.get(getattr(unpacker.errors, name))
                           for name in ("framing", "nonfinite", "mode")})
            ctx.set(unpacker.clear, 1)
            await ctx.tick()
            ctx.set(unpacker.clear, 0)

    async def consumer(ctx):
        async for _, _, valid, ready, payload in ctx.tick().sample(
                unpacker.o.valid, unpacker.o.ready, unpacker.o.payload.as_value()):
            if valid and ready:
                received.append(decode_beat(payload, p))
            ctx.set(unpacker.o.ready, rng.random() >= stall)

    sim = Simulator(unpacker)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer, background=True)
    sim.run()
    return received, errors


def test_every_format_and_bad_jobs():
    unpacker = WeightUnpacker(byte_width=4, lanes=8)
    rng = np.random.default_rng(1)
    jobs = []
    for fmt in WEIGHT_FORMATS:
        count = 1 if fmt == "TQ2_0" else 3
        jobs.append(Job(fmt, finite_random_blocks(rng, fmt, count), mode_code(fmt)))
    jobs.append(Job("MXFP4", finite_random_blocks(rng, "MXFP4", 2), mode_code("MXFP4"),
                    interleaved=True))
    size = FORMATS["Q4_1"][1]
    truncated = np.concatenate([finite_random_blocks(rng, "Q4_1", 2), np.arange(7, dtype=np.uint8)])
    jobs.append(Job("Q4_1", truncated, mode_code("Q4_1"), complete=2 * size))
    jobs.append(Job("Q8_0", rng.integers(0, 256, 40, dtype=np.uint8), 7, complete=0))
    jobs.append(Job("Q4_0", nonfinite_blocks(rng, "Q4_0"), mode_code("Q4_0")))
    jobs.append(Job("Q4_0", finite_random_blocks(rng, "Q4_0", 2), mode_code("Q4_0"),
                    empty_tail=True))
    assert len(input_words(jobs[-1], _params(unpacker))) == 36 // 4 + 1

    received, errors = _simulate(unpacker, jobs)
    expected = [beat for job in jobs for beat in expected_beats(job, 8)]
    assert received == expected
    none = {"framing": 0, "nonfinite": 0, "mode": 0}
    assert errors == [none] * 6 + [{**none, "framing": 1}, {**none, "mode": 1},
                                   {**none, "nonfinite": 1}, none]
    start = 0
    for job in jobs:
        beats = expected_beats(job, 8)
        if beats:
            assert same_floats(rtl_values(job.fmt, received[start:start + len(beats)]),
                               gguf_values(job))
        start += len(beats)


def test_disabled_format_is_a_bad_mode():
    unpacker = WeightUnpacker(formats=("TQ2_0",), byte_width=16, lanes=32)
    rng = np.random.default_rng(2)
    good = Job("TQ2_0", finite_random_blocks(rng, "TQ2_0", 2), mode_code("TQ2_0"))
    jobs = [Job("Q8_0", finite_random_blocks(rng, "Q8_0", 2), mode_code("Q8_0"), complete=0),
            good]
    received, errors = _simulate(unpacker, jobs, seed=3)
    assert received == expected_beats(good, 32)
    assert [e["mode"] for e in errors] == [1, 0]


def test_back_to_back_blocks_at_full_rate():
    # No idle cycles and an always-ready output, so blocks follow each other as closely as
    # they can (the rate itself is measured by the cocotb throughput test).
    unpacker = WeightUnpacker(formats=("Q4_0", "Q8_0"), byte_width=8, lanes=16)
    rng = np.random.default_rng(4)
    job = Job("Q4_0", finite_random_blocks(rng, "Q4_0", 40), mode_code("Q4_0"))
    received, _ = _simulate(unpacker, [job], stall=0.0)
    assert received == expected_beats(job, 16)


def test_count_above_byte_width_means_full():
    # `count` has room for values above byte_width; they count as a full beat.
    unpacker = WeightUnpacker(formats=("Q4_0",), byte_width=4, lanes=32)
    rng = np.random.default_rng(6)
    job = Job("Q4_0", finite_random_blocks(rng, "Q4_0", 2), mode_code("Q4_0"))
    p = _params(unpacker)
    words = input_words(job, p)
    assert words[-1] >> p["input"]["count"] & 7 == 4
    job.words = words[:-1] + [words[-1] | 7 << p["input"]["count"]]
    received, errors = _simulate(unpacker, [job], seed=7)
    assert received == expected_beats(job, 32)
    assert errors == [{"framing": 0, "nonfinite": 0, "mode": 0}]

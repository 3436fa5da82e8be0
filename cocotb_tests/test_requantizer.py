"""Requantizer under Verilator against the reference model in sim/requantizer.py.

* Bulk (the compiled driver of :mod:`cocotb_tests.vectors`): 60 000 two-lane beats per rounding,
  120 000 accumulators each, with random idle and stall cycles. ``run_vectors`` drives only
  ``i`` and ``o``, so a test-only wrapper (:class:`ConfigInPayload`) takes each beat's
  configuration from the input payload and returns the saturation counter with each output beat:
  the configuration changes at every beat, and the counter is checked beat by beat.
* End to end: real QLinearMatMuls (int8 and uint8 matrices, a model that passes
  ``onnx.checker``), the int32 accumulators from NumPy, requantized by the RTL, equal to
  ``onnx.reference``'s output, ties included.
* cocotb: the bare block with its ``config`` port, random ``clear`` pulses and a narrow counter
  that reaches its maximum, checked cycle by cycle, with a watchdog.
"""

from collections import deque

import cocotb
import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from cocotb.triggers import ReadOnly, RisingEdge

import sim.requantizer as golden
from cocotb_tests import harness
from cocotb_tests.streams import Watchdog, make_rng, start_clock_and_reset
from rtl.tiles.requantizer import CONFIG, Requantizer

from .vectors import run_vectors, new_seed


LANES = 2
BEATS = 60_000


class ConfigInPayload(wiring.Component):
    """Test-only wrapper: a :class:`Requantizer` whose configuration comes with each input beat
    and whose saturation counter (before the beat is counted) leaves with each output beat."""

    def __init__(self, lanes):
        self.dut = Requantizer(lanes)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"acc": 32 * lanes, "config": CONFIG}))),
            "o": Out(stream.Signature(data.StructLayout({"values": 8 * lanes,
                                                         "saturated": 32}))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.requantizer = dut = self.dut
        m.d.comb += [
            dut.i.valid.eq(self.i.valid),
            self.i.ready.eq(dut.i.ready),
            dut.i.payload.eq(self.i.payload.acc),
            dut.config.eq(self.i.payload.config),
            self.o.valid.eq(dut.o.valid),
            dut.o.ready.eq(self.o.ready),
            self.o.payload.values.eq(dut.o.payload),
            self.o.payload.saturated.eq(dut.saturated),
        ]
        return m




def _pack_config(multiplier, left, right, zero_point, rounding, output):
    """CONFIG bits (as uint64) of arrays of field values."""
    fields = {"multiplier": multiplier, "left_shift": left, "right_shift": right,
              "zero_point": zero_point, "rounding": rounding, "output": output}
    bits = np.zeros(len(multiplier), dtype=np.uint64)
    for name, values in fields.items():
        field = CONFIG[name]
        mask = np.uint64((1 << field.width) - 1)
        bits |= (np.asarray(values).astype(np.int64).astype(np.uint64) & mask) \
            << np.uint64(field.offset)
    return bits


def _inputs(acc, config_bits):
    """Input payloads (Python ints) of the wrapper."""
    words = acc.astype(np.int64).astype(np.uint64) & np.uint64(0xFFFFFFFF)
    acc_bits = words[:, 0] | (words[:, 1] << np.uint64(32))
    return [int(a) | (int(c) << (32 * LANES)) for a, c in zip(acc_bits, config_bits)]


def _log_uniform(rng, shape):
    return rng.integers(-2**31, 2**31, shape) >> rng.integers(0, 32, shape)


def _gemmlowp_stimulus(rng, n):
    acc = _log_uniform(rng, (n, LANES))
    multiplier = rng.integers(-2**31, 2**31, n)
    left = np.where(rng.random(n) < 0.3, rng.integers(0, 32, n), 0)
    right = rng.integers(0, 64, n)
    kind = np.arange(n) % 4
    # 0: TFLite multipliers of real scales 2^-24 … 2^6.
    tflite = np.flatnonzero(kind == 0)
    pairs = [golden.quantize_multiplier(r) for r in 2.0 ** rng.uniform(-24, 6, len(tflite))]
    multiplier[tflite] = [p[0] for p in pairs]
    left[tflite] = [max(p[1], 0) for p in pairs]
    right[tflite] = [max(-p[1], 0) for p in pairs]
    # 2, 3: sparse multipliers (lowest bit `low`) and accumulators putting the product's lowest
    # set bit at 30 (a tie in the first rounding) or at 30 + right (a tie in the second).
    for k_kind in (2, 3):
        rows = np.flatnonzero(kind == k_kind)
        low = rng.integers(20, 31, len(rows))
        extra = rng.integers(0, 1 << 8, len(rows)) << (low + 1)
        multiplier[rows] = ((1 << low) | extra) & 0x7FFFFFFF
        right[rows] = rng.integers(0, 20, len(rows)) if k_kind == 2 else rng.integers(1, low + 1)
        position = 30 - low + (right[rows] if k_kind == 3 else 0)
        span = np.int64(1) << (30 - position)
        for lane in range(LANES):
            acc[rows, lane] = (2 * rng.integers(-span, span) + 1) << position
        left[rows] = 0
    # Extremes.
    corner = rng.random(n) < 0.02
    acc[corner] = rng.choice([golden.INT32_MIN, golden.INT32_MAX, 0, 1, -1, 1 << 30, -(1 << 30)],
                             (corner.sum(), LANES))
    multiplier[corner] = rng.choice([golden.INT32_MIN, golden.INT32_MAX, 1 << 30, -(1 << 30), 0,
                                     1], corner.sum())
    right[corner] = rng.choice([0, 1, 31, 32, 63], corner.sum())
    zero_point = rng.integers(-256, 256, n)
    output = rng.integers(0, 2, n)
    return acc, (multiplier, left, right, zero_point, np.full(n, golden.GEMMLOWP), output)


def _half_even_stimulus(rng, n):
    acc = _log_uniform(rng, (n, LANES))
    output = rng.integers(0, 2, n)
    low = np.where(output == golden.UINT8, 0, -128)
    zero_point = low + rng.integers(0, 256, n)          # a zero point of the output type
    kind = np.arange(n) % 4
    # 0, 1: float32 scales 2^-40 … 2^12 (1: ± and some below 2^-32 or above 2^31).
    exponent = np.where(kind == 1, rng.integers(-50, 40, n), rng.integers(-40, 12, n))
    scale = ((exponent + 127) << 23 | rng.integers(0, 1 << 23, n)).astype(np.uint32).view(
        np.float32)
    scale = np.where((kind == 1) & (rng.random(n) < 0.5), -scale, scale)
    multiplier, right = golden.onnx_multiplier(scale)
    left = np.zeros(n, dtype=np.int64)
    # 2: exact ties: a small odd multiplier m, acc an odd multiple of 2^(right − 1) with
    # |acc · m / 2^right| up to about 300, or one away from such a tie.
    rows = np.flatnonzero(kind == 2)
    odd = 2 * rng.integers(0, 1 << rng.integers(1, 9, len(rows))) + 1
    multiplier[rows] = odd
    right[rows] = rng.integers(1, 31, len(rows))
    for lane in range(LANES):
        j = rng.integers(-(300 // odd) - 1, 300 // odd + 1)
        acc[rows, lane] = ((2 * j + 1) << (right[rows] - 1)) + np.where(
            rng.random(len(rows)) < 0.8, 0, rng.integers(-1, 2, len(rows)))
    # 3: the general form: any multiplier, left and right shift, zero point.
    rows = np.flatnonzero(kind == 3)
    multiplier[rows] = rng.integers(-2**31, 2**31, len(rows)) >> rng.integers(0, 31, len(rows))
    left[rows] = np.where(rng.random(len(rows)) < 0.3, rng.integers(0, 32, len(rows)), 0)
    right[rows] = rng.integers(0, 64, len(rows))
    zero_point[rows] = rng.integers(-256, 256, len(rows))
    acc = np.clip(acc, golden.INT32_MIN, golden.INT32_MAX)
    return acc, (multiplier, left, right, zero_point, np.full(n, golden.HALF_EVEN), output)


def _check(run, acc, config):
    multiplier, left, right, zero_point, rounding, output = config
    expected, saturated = golden.requantize(
        acc, multiplier=multiplier[:, None], left_shift=left[:, None], right_shift=right[:, None],
        zero_point=zero_point[:, None], rounding=rounding[:, None], output=output[:, None])
    out = run.outputs
    values = np.stack([(out >> np.uint64(8 * lane)) & np.uint64(0xFF) for lane in range(LANES)],
                      axis=1).astype(np.int64)
    bad = np.flatnonzero(np.any(values != (expected & 0xFF), axis=1))
    if bad.size:
        k = bad[0]
        pytest.fail(f"{bad.size} of {len(acc)} beats differ; first #{k}: acc {acc[k].tolist()}, "
                    f"multiplier {multiplier[k]}, left {left[k]}, right {right[k]}, zero point "
                    f"{zero_point[k]}, rounding {rounding[k]}, output {output[k]}: RTL "
                    f"{values[k].tolist()}, model {(expected[k] & 0xFF).tolist()}")
    counter = (out >> np.uint64(8 * LANES)).astype(np.int64)
    before = np.concatenate([[0], np.cumsum(saturated.sum(axis=1))[:-1]])
    np.testing.assert_array_equal(counter, before)
    return saturated


@pytest.mark.parametrize("rounding", ["gemmlowp", "half_even"])
def test_requantizer_bulk(rounding):
    seed = new_seed()
    rng = np.random.default_rng(seed)
    stimulus = _gemmlowp_stimulus if rounding == "gemmlowp" else _half_even_stimulus
    acc, config = stimulus(rng, BEATS)
    multiplier, left, right = config[:3]
    run = run_vectors(ConfigInPayload(LANES), toplevel="requantizer_vectors",
                      inputs=_inputs(acc, _pack_config(*config)), seed=seed, idle=0.2, stall=0.3)
    saturated = _check(run, acc, config)
    # The vectors exercised what they are meant to: exact ties, saturation both ways and not.
    x = ((acc << left[:, None]) + 2**31) % 2**32 - 2**31
    product = x * multiplier[:, None]
    if rounding == "gemmlowp":
        ties = np.count_nonzero(product % (1 << 31) == 1 << 30)
    else:
        r = right[:, None]
        ties = np.count_nonzero((r > 0) & (product % (np.int64(1) << r)
                                           == (np.int64(1) << np.maximum(r - 1, 0))))
    assert ties > 5000, f"only {ties} exact ties"
    assert 0.1 < saturated.mean() < 0.9
    assert acc.size >= 100_000


def _qlinear_cases(rng):
    """(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp) of QLinearMatMuls: int8 and uint8,
    scales that make ties (0.125 = 0.25 · 0.5 / 1, 3/64, 1/32), random scales, and a
    per-column b_scale (None below)."""
    cases = []
    for dtype in (np.int8, np.uint8):
        info = np.iinfo(dtype)
        for scales in [(0.25, 0.5, 1.0), (0.5, 0.375, 4.0), (0.0625, 0.25, 0.5),
                       (0.02, 0.011, 0.37), (0.0037, 0.0041, 0.02), None]:
            k = int(rng.integers(8, 300))
            zps = [np.array(rng.integers(info.min, int(info.max) + 1), dtype=dtype)
                   for _ in range(3)]
            # Full-range matrices, and narrow ones (within ±4 of the zero points) whose small
            # accumulators keep the tie cases out of saturation.
            for spread in (None, 4):
                def matrix(shape, zp):
                    if spread is None:
                        return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
                    return np.clip(int(zp) + rng.integers(-spread, spread + 1, shape), info.min,
                                   info.max).astype(dtype)
                rows, columns = (32, 24) if spread is None else (64, 48)
                a = matrix((rows, k), zps[0])
                b = matrix((k, columns), zps[1])
                a_s, b_s, y_s = scales or (0.01, np.exp2(rng.uniform(-10, -2, columns)), 0.3)
                cases.append((a, np.float32(a_s), zps[0], b, np.asarray(b_s, dtype=np.float32),
                              zps[1], np.float32(y_s), zps[2]))
    return cases


def test_requantizer_qlinear_matmul_end_to_end():
    seed = new_seed()
    rng = np.random.default_rng(seed)
    accs, configs, checks = [], [], []
    for a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp in _qlinear_cases(rng):
        y = golden.onnx_qlinear_matmul(a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp)
        acc = (a.astype(np.int64) - int(a_zp)) @ (b.astype(np.int64) - int(b_zp))
        # Column by column: the lanes of a beat are neighbouring rows of one column, so they
        # share its scale even when b_scale is per column.
        scale = np.broadcast_to(golden.onnx_scale(a_s, b_s, y_s), acc.shape).T
        multiplier, right = golden.onnx_multiplier(scale[:, ::LANES])
        n = acc.size // LANES
        output = golden.UINT8 if y.dtype == np.uint8 else golden.INT8
        accs.append(acc.T.reshape(-1, LANES))
        configs.append((multiplier.reshape(-1), np.zeros(n, np.int64), right.reshape(-1),
                        np.full(n, int(y_zp)), np.full(n, golden.HALF_EVEN), np.full(n, output)))
        checks.append((y.T.reshape(-1, LANES).astype(np.int64), output))
    acc = np.concatenate(accs)
    config = tuple(np.concatenate([c[k] for c in configs]) for k in range(6))
    run = run_vectors(ConfigInPayload(LANES), toplevel="requantizer_vectors",
                      inputs=_inputs(acc, _pack_config(*config)), seed=seed)
    _check(run, acc, config)    # the RTL equals the model (and the counter counts) …
    out = run.outputs
    values = np.stack([(out >> np.uint64(8 * lane)) & np.uint64(0xFF) for lane in range(LANES)],
                      axis=1).astype(np.int64)
    start = 0
    for y, output in checks:                  # … and onnx.reference
        got = values[start:start + len(y)]
        start += len(y)
        got = np.where(got >= 128, got - 256, got) if output == golden.INT8 else got
        np.testing.assert_array_equal(got, y)
    # Exact ties (acc · scale = k + ½) whose results are not saturated.
    multiplier, _, right, zero_point = config[:4]
    r = right[:, None]
    product = acc * multiplier[:, None]
    tie = (r > 0) & (product % (np.int64(1) << r) == (np.int64(1) << np.maximum(r - 1, 0)))
    low = np.where(config[5] == golden.UINT8, 0, -128)[:, None]
    value = (product >> r) + zero_point[:, None]
    ties = np.count_nonzero(tie & (value >= low) & (value < low + 255))
    assert ties > 300, f"only {ties} unsaturated exact ties"


# ---- cocotb: the bare block, its config port, clear and the counter ----------------------

COUNTER_WIDTH = 6
COCOTB_BEATS = 2500


def _cocotb_config(rng):
    if rng.random() < 0.5:
        m, shift = golden.quantize_multiplier(2.0 ** rng.uniform(-14, 1))
        return dict(multiplier=m, left_shift=max(shift, 0), right_shift=max(-shift, 0),
                    zero_point=rng.randrange(-128, 128), rounding=golden.GEMMLOWP,
                    output=rng.randrange(2))
    scale = np.float32(2.0 ** rng.uniform(-14, 1))
    m, r = golden.onnx_multiplier(scale)
    output = rng.randrange(2)
    return dict(multiplier=int(m), left_shift=0, right_shift=int(r),
                zero_point=rng.randrange(256) - (128 if output == golden.INT8 else 0),
                rounding=golden.HALF_EVEN, output=output)


def _config_bits(config):
    bits = 0
    for name, value in config.items():
        field = CONFIG[name]
        bits |= (int(value) & ((1 << field.width) - 1)) << field.offset
    return bits


@cocotb.test()
async def requantizer_config_clear_counter(dut):
    rng = make_rng(harness.seed())
    lanes = harness.params()["lanes"]
    maximum = (1 << COUNTER_WIDTH) - 1
    await start_clock_and_reset(dut)
    watchdog = Watchdog(dut.clk)
    cocotb.start_soon(watchdog.run())

    expected = deque()
    counter = sent = received = clears = at_maximum = 0
    offering = None
    config = _cocotb_config(rng)
    idle, stall = 0.3, 0.3
    cycle = 0
    while received < COCOTB_BEATS:
        if cycle % 200 == 0:
            idle, stall = rng.choice([(0.0, 0.0), (0.3, 0.3), (0.0, 0.8), (0.8, 0.0)])
            clear_rate = rng.choice([0.0, 0.0, 0.05])   # long runs without clear reach the top
        if offering is None and sent < COCOTB_BEATS and rng.random() >= idle:
            if rng.random() < 0.1:
                config = _cocotb_config(rng)
            accs = [rng.randrange(-2**31, 2**31) >> rng.randrange(32) for _ in range(lanes)]
            offering = (accs, config)
        dut.i__valid.value = int(offering is not None)
        if offering is not None:
            accs, offered = offering
            dut.i__payload.value = sum((a & 0xFFFFFFFF) << (32 * k) for k, a in enumerate(accs))
            dut.config.value = _config_bits(offered)
        ready = rng.random() >= stall
        dut.o__ready.value = int(ready)
        clear = rng.random() < clear_rate
        dut.clear.value = int(clear)
        await ReadOnly()

        assert int(dut.saturated.value) == counter, \
            f"cycle {cycle}: saturated {int(dut.saturated.value)}, expected {counter}"
        count = 0
        if dut.o__valid.value and ready:
            values, saturated = expected.popleft()
            payload = int(dut.o__payload.value)
            got = [(payload >> (8 * k)) & 0xFF for k in range(lanes)]
            assert got == values, f"cycle {cycle}: RTL {got}, model {values}"
            count = saturated
            received += 1
            watchdog.kick()
        if offering is not None and dut.i__ready.value:
            accs, offered = offering
            values, saturated = golden.requantize(np.array(accs), **offered)
            expected.append(([int(v) & 0xFF for v in values], int(saturated.sum())))
            offering = None
            sent += 1
            watchdog.kick()
        counter = count if clear else min(counter + count, maximum)
        clears += clear
        at_maximum += counter == maximum
        await RisingEdge(dut.clk)
        cycle += 1
    assert clears > 10 and at_maximum > 10
    dut._log.info(f"{COCOTB_BEATS} beats in {cycle} cycles, {clears} clears, "
                  f"{at_maximum} cycles at the maximum")


@pytest.mark.parametrize("lanes", [2])
def test_requantizer_cocotb(lanes):
    harness.run(Requantizer(lanes, counter_width=COUNTER_WIDTH), toplevel="requantizer",
                test_module="cocotb_tests.test_requantizer", parameters={"lanes": lanes})

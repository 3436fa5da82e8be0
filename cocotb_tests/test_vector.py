"""The vector unit under Verilator: operator programs on random vectors and on SmolLM2's real
layer-0 operands, bit-exact against the golden model (sim/vector.py), with random stalls on the
command, both operand streams and the output; rejected commands and non-finite values.
"""

from types import SimpleNamespace

import cocotb
import numpy as np
import pytest
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from . import harness
from .test_quantizer import check_output
from .streams import StreamSink, StreamSource, Watchdog, make_rng, start_clock_and_reset


MAX_LENGTH = 2048


def _pack(fields, offsets):
    word = 0
    for name, value in fields.items():
        word |= int(value) << offsets[name]
    return word


def command_word(command, offsets):
    return _pack({"op": int(command.op), "length": command.length,
                  "limit": min(command.limit, 0xFFFF), "gated": int(command.gated),
                  "quantize": int(command.quantize), "k1": command.k1, "k2": command.k2},
                 offsets)


async def run_program(dut, rng, recorded, offsets, *, idle, stall, label, hold=0):
    """Send the recorded commands and their operands; check every output against the model.
    ``hold``: both outputs refuse everything for that many cycles first."""
    commands = [command_word(c, offsets["command"]) for c, _, _, _ in recorded]
    a = [int(v) for _, av, _, _ in recorded for v in av]
    b = [int(v) for c, _, bv, _ in recorded if bv is not None and c.reads_b for v in bv]
    expected = [(int(v), i == len(out) - 1) for c, _, _, out in recorded if not c.quantize
                for i, v in enumerate(out)]
    quantized = [out for c, _, _, out in recorded if c.quantize and out.size]
    quantized = (np.concatenate(quantized).view(np.float32).reshape(-1, 32) if quantized
                 else np.zeros((0, 32), np.float32))
    sources = [StreamSource(dut, "i_cmd", rng, idle=idle), StreamSource(dut, "i_a", rng, idle=idle),
               StreamSource(dut, "i_b", rng, idle=idle)]
    sink = StreamSink(dut, "o", rng, stall=stall)
    q8_sink = StreamSink(dut, "o_q8", rng, stall=stall)
    watchdog = Watchdog(dut.clk, limit=4096)
    tasks = [cocotb.start_soon(c) for c in (sink.run(), q8_sink.run(), watchdog.run(),
                                            sources[0].send(commands), sources[1].send(a),
                                            sources[2].send(b))]
    if hold:
        async def release():
            sink.stall = q8_sink.stall = 1.0
            await ClockCycles(dut.clk, hold)
            sink.stall = q8_sink.stall = stall
        tasks.append(cocotb.start_soon(release()))
    progress = None
    while (len(sink.received) < len(expected) or len(q8_sink.received) < quantized.size
           or any(s.sent < n for s, n in zip(sources, (len(commands), len(a), len(b))))):
        await RisingEdge(dut.clk)
        now = (len(sink.received), len(q8_sink.received)) + tuple(s.sent for s in sources)
        if now != progress:
            watchdog.kick()
            progress = now
    # Let reductions finish (a register is written after its pass) and extra outputs show.
    while True:
        await ReadOnly()
        if not int(dut.busy.value):
            break
        await RisingEdge(dut.clk)
        watchdog.kick()
    await RisingEdge(dut.clk)
    await ClockCycles(dut.clk, 4)
    for task in tasks:
        task.cancel()
    dut.o__ready.value = 0
    dut.o_q8__ready.value = 0
    if quantized.size or q8_sink.received:
        check_output(f"{label}, quantized", quantized, q8_sink.received, offsets["q8"])
    value_offset, last_offset = offsets["output"]["value"], offsets["output"]["last"]
    got = [((w >> value_offset) & 0xFFFFFFFF, bool((w >> last_offset) & 1))
           for w in sink.received]
    assert len(got) == len(expected), f"{label}: {len(got)} outputs, expected {len(expected)}"
    for n, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            raise AssertionError(f"{label}: output {n}: got {g[0]:#010x} last={g[1]}, "
                                 f"expected {e[0]:#010x} last={e[1]}")
    print(f"[tessera] {label}: {len(recorded)} commands, {len(a)} elements in, {len(got)} out, "
          f"bit-exact")


def random_program(nrng, recorder):
    from sim import vector as V
    f32 = lambda n, s=1.0: (nrng.standard_normal(n) * s).astype(np.float32)  # noqa: E731
    for _ in range(3):
        n = int(nrng.integers(1, 80))
        V.add(recorder, f32(n, 3), f32(n, 3))
        V.mul(recorder, f32(n), f32(n))
        V.rmsnorm(recorder, f32(n, 2), f32(n), 1e-5)
        V.layernorm(recorder, f32(n, 2) + 1, f32(n), f32(n), 1e-5)
        V.softmax(recorder, f32(n, 4), 0.125, int(nrng.integers(1, n + 1)))
        # Rows of different lengths' worth of masking, overlapped as the compiler orders them.
        V.softmax_rows(recorder, f32(3 * n, 4).reshape(3, n), 0.25,
                       limits=[int(v) for v in nrng.integers(1, n + 1, 3)])
        V.silu(recorder, f32(n, 4))
        V.swiglu(recorder, f32(n, 4), f32(n))
        V.gelu(recorder, f32(n, 3))
        V.gelu_erf(recorder, f32(n, 3))
        pairs = int(nrng.integers(1, 40))
        V.rope(recorder, f32(2 * pairs, 2), V.rope_table(int(nrng.integers(0, 100)), 2 * pairs,
                                                          10000.0))
    # limit is softmax's causal mask: every other pass ignores it.
    n = int(nrng.integers(2, 60))
    x, y = f32(n, 2), f32(n)
    for op in (V.Op.ADD, V.Op.MUL, V.Op.SILU, V.Op.GELU):
        recorder.run(V.Command(op, n, limit=int(nrng.integers(0, n))), x.view(np.uint32),
                     y.view(np.uint32) if op in (V.Op.ADD, V.Op.MUL) else None)
    recorder.run(V.Command(V.Op.MEAN, n, k1=1.0 / n, limit=0), x.view(np.uint32))
    recorder.run(V.Command(V.Op.VAR, n, k1=1.0 / n, k2=1e-5, limit=1), x.view(np.uint32))
    recorder.run(V.Command(V.Op.NORM, n, limit=0), x.view(np.uint32), y.view(np.uint32))
    recorder.run(V.Command(V.Op.GELU, n, gated=True), x.view(np.uint32), y.view(np.uint32))
    # The erf passes with other scalars than gelu_erf's, and ± signs in every operand (small
    # enough that GAUSS cannot overflow).
    for op in (V.Op.RECIP_ABS, V.Op.POLY, V.Op.GAUSS, V.Op.GELU_ERF):
        k1, k2 = (float(v) for v in nrng.uniform(-2, 2, 2))
        recorder.run(V.Command(op, n, k1=k1, k2=k2), x.view(np.uint32),
                     None if op == V.Op.RECIP_ABS else y.view(np.uint32))
    # Results into the Q8_0 quantizer: SwiGLU and a residual add, as before a matmul.
    n = 32 * int(nrng.integers(1, 4))
    recorder.run(V.Command(V.Op.SILU, n, gated=True, quantize=True), f32(n, 4).view(np.uint32),
                 f32(n).view(np.uint32))
    x, y = f32(n), f32(n)
    recorder.run(V.Command(V.Op.ADD, n, quantize=True), x.view(np.uint32), y.view(np.uint32))
    # Long enough to wrap the sum lanes many times; exp over its whole range.
    V.rmsnorm(recorder, f32(700, 0.3), f32(700), 1e-6)
    V.silu(recorder, nrng.uniform(-110, 95, 500).astype(np.float32))
    V.gelu_erf(recorder, nrng.uniform(-16, 16, 300).astype(np.float32))


def real_program(recorder):
    """One token's vector work of SmolLM2's layer 0, on the real operands."""
    from sim import vector as V
    from sim.smollm2 import layer0_vectors
    d = layer0_vectors()
    t = 4   # the last prompt token: its softmax rows are unmasked up to 5
    V.rmsnorm(recorder, d["embeddings"][t], d["attn_norm"], d["epsilon"])
    for head in range(2):
        table = V.rope_table(t, d["head_dim"], d["rope_base"])
        V.rope(recorder, d["q"][t, head], table)
        V.rope(recorder, d["k"][t, head], table)
    scale = 1.0 / np.sqrt(d["head_dim"])
    rows = np.zeros((3, 8), dtype=np.float32)
    rows[:, :5] = d["scores"][:3, t]
    V.softmax_rows(recorder, rows, scale, limits=[5, 5, 5])
    V.softmax(recorder, rows[0], scale, limit=5)
    V.add(recorder, d["embeddings"][t], d["attention"][t])
    V.rmsnorm(recorder, d["residual"][t], d["ffn_norm"], d["epsilon"])
    V.swiglu(recorder, d["gate"][t], d["up"][t])
    # The FFN's activation into its down projection: SwiGLU straight into Q8_0.
    recorder.run(V.Command(V.Op.SILU, len(d["gate"][t]), gated=True, quantize=True),
                 d["gate"][t].view(np.uint32), d["up"][t].view(np.uint32))


async def expect_errors(dut, label, command, nonfinite, offsets):
    await ReadOnly()
    errors = int(dut.errors.value)
    got = ((errors >> offsets["command"]) & 1, (errors >> offsets["nonfinite"]) & 1)
    assert got == (command, nonfinite), f"{label}: errors (command, nonfinite) = {got}"
    await RisingEdge(dut.clk)


async def clear(dut):
    dut.clear.value = 1
    await RisingEdge(dut.clk)
    dut.clear.value = 0
    await RisingEdge(dut.clk)


@cocotb.test()
async def programs(dut):
    from sim import vector as V
    p = harness.params()
    offsets = p["offsets"]
    seed = harness.seed()
    rng = make_rng(seed)
    nrng = np.random.default_rng(seed)
    dut.clear.value = 0
    await start_clock_and_reset(dut)
    model = V.VectorModel(max_length=MAX_LENGTH)

    recorder = V.Recorder(model)
    random_program(nrng, recorder)
    await run_program(dut, rng, recorder.commands, offsets, idle=0.3, stall=0.3,
                      label="random operators")
    assert not (model.command_error or model.nonfinite)
    await expect_errors(dut, "random operators", 0, 0, offsets["errors"])

    recorder = V.Recorder(model)
    real_program(recorder)
    await run_program(dut, rng, recorder.commands, offsets, idle=0.2, stall=0.4,
                      label="SmolLM2 layer 0")
    assert not (model.command_error or model.nonfinite)
    await expect_errors(dut, "SmolLM2 layer 0", 0, 0, offsets["errors"])

    # Each kind of rejected command between good ones, on its own so that each must set the
    # flag: its operands are dropped, nothing is written, the commands around it are unaffected.
    x = nrng.standard_normal(32).astype(np.float32)
    big = MAX_LENGTH + 1
    noise = lambda n: nrng.integers(0, 1 << 32, n, dtype=np.uint32)  # noqa: E731
    rejected = [
        ("length 0", V.Command(V.Op.ADD, 0), noise(0), noise(0)),
        ("above max_length", V.Command(V.Op.MUL, big), noise(big), noise(big)),
        ("odd RoPE", V.Command(V.Op.ROPE, 7), noise(7), noise(7)),
        ("quantized length not a multiple of 32", V.Command(V.Op.ADD, 31, quantize=True),
         noise(31), noise(31)),
        ("quantize on a reduction", V.Command(V.Op.RMS, 32, quantize=True), noise(32), None),
        ("gated SILU above max_length", V.Command(V.Op.SILU, big, gated=True), noise(big),
         noise(big)),
        ("unknown op", SimpleNamespace(op=21, length=40, limit=40, gated=False, quantize=False,
                                       k1=0, k2=0, reads_b=False), noise(40), None),
    ]
    for label, command, a, b in rejected:
        recorder = V.Recorder(model)
        V.add(recorder, x, x)
        if isinstance(command, V.Command):
            recorder.run(command, a, b)
        else:   # not expressible in the model: drains length elements of a
            recorder.commands.append((command, a, b, np.zeros(0, np.uint32)))
            model.command_error = True
        V.rmsnorm(recorder, x, x, 1e-5)
        await run_program(dut, rng, recorder.commands, offsets, idle=0.3, stall=0.3,
                          label=f"rejected: {label}")
        assert model.command_error and not model.nonfinite
        await expect_errors(dut, f"rejected: {label}", 1, 0, offsets["errors"])
        await clear(dut)
        model.command_error = False
        await expect_errors(dut, f"after clear ({label})", 0, 0, offsets["errors"])

    # A non-finite register alone: rsqrt(0) of a zero vector with ε = 0 makes SCALE = +∞.
    recorder = V.Recorder(model)
    recorder.run(V.Command(V.Op.RMS, 32, k1=1 / 32), np.zeros(32, np.uint32))
    await run_program(dut, rng, recorder.commands, offsets, idle=0.3, stall=0.3,
                      label="non-finite register")
    assert model.nonfinite
    await expect_errors(dut, "non-finite register", 0, 1, offsets["errors"])
    await clear(dut)
    model.nonfinite = False

    # Non-finite operands propagate by IEEE rules and set the flag.
    recorder = V.Recorder(model)
    y = x.copy()
    y[[3, 9, 20]] = [np.inf, -np.inf, np.nan]
    V.add(recorder, y, x)
    V.softmax(recorder, y, 0.5)
    V.silu(recorder, y)
    await run_program(dut, rng, recorder.commands, offsets, idle=0.3, stall=0.3,
                      label="non-finite operands")
    assert model.nonfinite and not model.command_error
    await expect_errors(dut, "non-finite operands", 0, 1, offsets["errors"])
    await clear(dut)
    model.nonfinite = False

    # Both outputs held for longer than the pipeline and its result FIFO can absorb: issue
    # stops on credit, nothing is lost, and everything flows once they are released.
    recorder = V.Recorder(model)
    V.silu(recorder, nrng.standard_normal(1200).astype(np.float32))
    recorder.run(V.Command(V.Op.ADD, 640, quantize=True), *(
        nrng.standard_normal(640).astype(np.float32).view(np.uint32) for _ in range(2)))
    await run_program(dut, rng, recorder.commands, offsets, idle=0.0, stall=0.1,
                      label="outputs held", hold=1500)
    await expect_errors(dut, "outputs held", 0, 0, offsets["errors"])

    # Full rate: no idle input, no output stall.
    recorder = V.Recorder(model)
    V.silu(recorder, nrng.standard_normal(600).astype(np.float32))
    V.add(recorder, x, x)
    V.softmax_rows(recorder, (nrng.standard_normal((4, 48)) * 5).astype(np.float32), 0.125,
                   limits=[48, 7, 30, 1])
    await run_program(dut, rng, recorder.commands, offsets, idle=0.0, stall=0.0,
                      label="full rate")
    await expect_errors(dut, "full rate", 0, 0, offsets["errors"])


# ---- pytest runner ---------------------------------------------------------------------------

def _offsets():
    from rtl.tiles.quantizer import OUTPUT_LAYOUT as Q8_0_LAYOUT
    from rtl.tiles.vector import COMMAND_LAYOUT, ERROR_LAYOUT, OUTPUT_LAYOUT
    return {
        "command": {name: COMMAND_LAYOUT[name].offset for name in
                    ("op", "length", "limit", "gated", "quantize", "k1", "k2")},
        "output": {name: OUTPUT_LAYOUT[name].offset for name in ("value", "last")},
        "errors": {name: ERROR_LAYOUT[name].offset for name in ("command", "nonfinite")},
        "q8": {name: Q8_0_LAYOUT[name].offset for name in ("q", "d", "sum", "first", "last")},
    }


@pytest.mark.slow
def test_vector_unit():
    from rtl.tiles.vector import VectorUnit
    from sim.smollm2 import gguf_path
    gguf_path()
    harness.run(VectorUnit(max_length=MAX_LENGTH), toplevel="vector_unit",
                test_module="cocotb_tests.test_vector", testcase="programs",
                parameters={"offsets": _offsets()}, quick_build=True)


# ---- Benchmark (scripts/bench_vector.py) -------------------------------------------------------

def throughput_programs(n=4096):
    """(label, elements streamed, recorder) per operator, vectors of ``n`` elements."""
    from sim import vector as V
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    programs = []
    for label, build in (
            ("residual add (ADD)", lambda r: V.add(r, x, y)),
            ("RMSNorm (RMS + NORM)", lambda r: V.rmsnorm(r, x, y, 1e-5)),
            ("LayerNorm (MEAN + VAR + NORM + ADD)", lambda r: V.layernorm(r, x, y, x, 1e-5)),
            ("softmax (MAX + EXP + SCALE)", lambda r: V.softmax(r, x, 0.125)),
            ("SiLU", lambda r: V.silu(r, x)),
            ("SwiGLU (SILU gated)", lambda r: V.swiglu(r, x, y)),
            ("GELU (tanh)", lambda r: V.gelu(r, x)),
            ("GELU (erf: RECIP_ABS, 5 POLY, GAUSS, MUL, GELU_ERF)", lambda r: V.gelu_erf(r, x)),
            ("RoPE", lambda r: V.rope(r, x, np.resize(V.rope_table(7, 64, 1e5), n)))):
        recorder = V.Recorder()
        build(recorder)
        programs.append((label, n, recorder))
    return programs


def layer_program(context=128):
    """One decode step's vector work of a SmolLM2 layer: the operands are SmolLM2's real
    layer-0 vectors where the prompt has them, random scores for the 128-token context."""
    from sim import vector as V
    from sim.smollm2 import layer0_vectors
    d = layer0_vectors()
    rng = np.random.default_rng(1)
    t = 4
    heads, dim = d["q"].shape[1], d["head_dim"]
    parts = []

    def part(label, build):
        recorder = V.Recorder()
        build(recorder)
        parts.append((label, recorder))

    table = V.rope_table(context - 1, dim, d["rope_base"])
    part("RMSNorm (attention)", lambda r: V.rmsnorm(r, d["embeddings"][t], d["attn_norm"],
                                                     d["epsilon"]))
    part(f"RoPE q ({heads} heads)", lambda r: V.rope(r, d["q"][t].reshape(-1),
                                                      np.tile(table, heads)))
    part(f"RoPE k ({d['k'].shape[1]} heads)", lambda r: V.rope(r, d["k"][t].reshape(-1),
                                                                np.tile(table, d["k"].shape[1])))
    scores = (rng.standard_normal((heads, context)) * 8).astype(np.float32)
    part(f"softmax ({heads} heads × {context})",
         lambda r: V.softmax_rows(r, scores, 1 / np.sqrt(dim)))
    part("residual add", lambda r: V.add(r, d["embeddings"][t], d["attention"][t]))
    part("RMSNorm (FFN)", lambda r: V.rmsnorm(r, d["residual"][t], d["ffn_norm"],
                                               d["epsilon"]))
    part("SwiGLU", lambda r: V.swiglu(r, d["gate"][t], d["up"][t]))
    part("residual add", lambda r: V.add(r, d["residual"][t], d["attention"][t]))
    return parts


async def timed(dut, rng, recorded, offsets, label):
    start = cocotb.utils.get_sim_time("ns")
    await run_program(dut, rng, recorded, offsets, idle=0.0, stall=0.0, label=label)
    # run_program waits 5 cycles after the unit goes idle.
    return round((cocotb.utils.get_sim_time("ns") - start) / 10) - 5


@cocotb.test()
async def bench(dut):
    import json
    p = harness.params()
    offsets = p["offsets"]
    rng = make_rng(1)
    dut.clear.value = 0
    await start_clock_and_reset(dut)
    report = {"throughput": [], "layer": [], "latency": None}
    for label, n, recorder in throughput_programs():
        cycles = await timed(dut, rng, recorder.commands, offsets, label)
        report["throughput"].append({"label": label, "elements": n,
                                     "passes": len(recorder.commands), "cycles": cycles})
    parts = layer_program()
    for label, recorder in parts:
        cycles = await timed(dut, rng, recorder.commands, offsets, label)
        report["layer"].append({"label": label, "commands": len(recorder.commands),
                                "elements": sum(len(a) for _, a, _, _ in recorder.commands),
                                "cycles": cycles})
    everything = [c for _, recorder in parts for c in recorder.commands]
    report["layer_total"] = await timed(dut, rng, everything, offsets, "whole layer")
    from sim import vector as V
    one = V.Recorder()
    V.add(one, np.ones(1, np.float32), np.ones(1, np.float32))
    report["latency"] = await timed(dut, rng, one.commands, offsets, "one element")
    await expect_errors(dut, "bench", 0, 0, offsets["errors"])
    with open(p["report"], "w") as f:
        json.dump(report, f, indent=1)


def run_bench(report, max_length=16384):
    from rtl.tiles.vector import VectorUnit
    harness.run(VectorUnit(max_length=max_length), toplevel="vector_unit",
                test_module="cocotb_tests.test_vector", testcase="bench",
                parameters={"offsets": _offsets(), "report": str(report)}, quick_build=True)

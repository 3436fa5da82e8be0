"""The numeric path chained, RTL to RTL: real GGUF weight bytes through the weight unpacker under
Verilator (random stalls), the codes and scales it emits turned into block sums by NumPy (the
stand-in for the MAC array), those through the dequant pipeline under Verilator (random stalls),
and the results compared bit for bit with the golden model computed from the original bytes.

Nothing here comes from the reference reading of the blocks except the expected results: what
the dequant pipeline sees is what the unpacker RTL produced.
"""

import json
import random

import cocotb
import numpy as np
import pytest
from cocotb.triggers import RisingEdge
from gguf import GGMLQuantizationType
from gguf.quants import quantize

import sim.dequant as golden
from rtl.config import mode_code
from rtl.tiles.dequant import Dequantizer
from rtl.tiles.unpack import WeightUnpacker
from sim.gguf_blocks import FORMATS, code_values, split_blocks

from . import harness
from .streams import StreamSink, StreamSource, Watchdog, start_clock_and_reset
from .test_dequant import pack_terms
from .vectors import new_seed, run_vectors


# ---- cocotb: run bytes through the unpacker, keep every output beat ---------------------------

@cocotb.test()
async def unpack_dump(dut):
    p = harness.params()
    rng = random.Random(harness.seed())
    await start_clock_and_reset(dut)
    commands = StreamSource(dut, "i_cmd", rng, idle=0.3)
    source = StreamSource(dut, "i", rng, idle=0.3)
    sink = StreamSink(dut, "o", rng, stall=0.3)
    watchdog = Watchdog(dut.clk)
    cocotb.start_soon(sink.run())
    cocotb.start_soon(watchdog.run())
    raw = bytes.fromhex(p["bytes"])
    width = p["byte_width"]
    beats = []
    for start in range(0, len(raw), width):
        chunk = raw[start:start + width]
        last = start + width >= len(raw)
        beats.append(int.from_bytes(chunk, "little") | (len(chunk) << p["count_at"])
                     | (int(last) << p["last_at"]))
    cocotb.start_soon(commands.send([p["mode"] << p["mode_at"]]))
    cocotb.start_soon(source.send(beats))
    seen = 0
    while len(sink.received) < p["beats_out"]:
        await RisingEdge(dut.clk)
        if len(sink.received) != seen:
            seen = len(sink.received)
            watchdog.kick()
    with open(p["report"], "w") as f:
        json.dump(sink.received, f)


# ---- pytest ------------------------------------------------------------------------------------

def _unpack_rtl(fmt, raw, tmp_path):
    unpacker = WeightUnpacker()
    ilay, olay = unpacker.input_layout, unpacker.output_layout
    elements, size = FORMATS[fmt]
    blocks = len(raw) // size
    report = tmp_path / "beats.json"
    harness.run(unpacker, toplevel="weight_unpacker", test_module="cocotb_tests.test_numeric_chain",
                testcase="unpack_dump", parameters={
                    "bytes": bytes(raw).hex(), "byte_width": unpacker.byte_width,
                    "count_at": ilay["count"].offset, "last_at": ilay["last"].offset,
                    "mode": mode_code(fmt), "mode_at": 0,
                    "beats_out": blocks * elements // unpacker.lanes, "report": str(report)})
    beats = json.loads(report.read_text())
    lanes = unpacker.lanes

    def field(beat, name, width):
        return (beat >> olay[name].offset) & ((1 << width) - 1)

    codes = np.array([[((field(b, "codes", 8 * lanes) >> (8 * k)) & 0xFF) for k in range(lanes)]
                      for b in beats], dtype=np.int64)
    codes = np.where(codes >= 128, codes - 256, codes).reshape(blocks, elements)
    first = [b for b in beats if field(b, "first", 1)]
    scales = {name: np.array([field(b, name, bits) for b in first])
              for name, bits in (("d", 16), ("m", 16), ("e", 8))}
    return codes, scales


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["Q4_1", "MXFP4", "TQ2_0"])
def test_unpack_then_dequant_is_bit_exact(fmt, tmp_path):
    from sim.smollm2 import prompt_activations, tensors
    from gguf.quants import dequantize
    q = {t.name: t for t in tensors()}["blk.0.attn_q.weight"]
    n = 8
    x = prompt_activations()[:2]
    if fmt == "Q4_1":
        w_raw = np.asarray(q.data)[:n]            # the model's own bytes
    else:
        # The same real weights re-quantized (TQ2_0 needs K in multiples of 256).
        values = dequantize(np.asarray(q.data)[:n], q.tensor_type).astype(np.float32)
        if fmt == "TQ2_0":
            values, x = values[:, :512], x[:, :512]
        w_raw = quantize(values, getattr(GGMLQuantizationType, fmt))
    k = x.shape[1]
    codes, scales = _unpack_rtl(fmt, np.asarray(w_raw).reshape(-1), tmp_path)

    # The MAC array's stand-in: exact block sums of the unpacked codes with the Q8_0 codes of x.
    x_blocks = split_blocks("Q8_0", quantize(x, GGMLQuantizationType.Q8_0))
    x_codes = code_values("Q8_0", x_blocks.codes).reshape(x.shape[0], k // 32, 32)
    w_codes = codes.reshape(n, k // 32, 32)
    per = FORMATS[fmt][0] // 32
    d_w = np.repeat((scales["e"] if fmt == "MXFP4" else scales["d"]).reshape(n, -1), per, axis=1)
    m_w = np.repeat(scales["m"].reshape(n, -1), per, axis=1)
    ops = golden.MatmulOperands(fmt, np.einsum("mbk,nbk->mnb", x_codes, w_codes),
                                d_w[None], x_blocks.d.view(np.uint16).reshape(x.shape[0], -1)[:, None],
                                m_w[None], x_codes.sum(axis=2)[:, None])
    seed = new_seed()
    dut = Dequantizer(64)
    expected = golden.matmul(fmt, w_raw, x).view(np.uint32).reshape(-1)
    run = run_vectors(dut, toplevel="dequant", inputs=pack_terms(ops, 64), seed=seed,
                      outputs=expected.size)
    value = (run.outputs >> np.uint64(dut.o.payload.shape()["value"].offset)
             & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    bad = np.flatnonzero(value != expected)
    assert not bad.size, f"{fmt}: {bad.size} of {expected.size} outputs differ (seed {seed})"

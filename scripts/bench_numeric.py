"""`tessera bench numeric`: the numeric path measured. Writes docs/numeric_performance.md.

- Throughput from Verilator: the weight unpacker's blocks per cycle per format (the cocotb
  ``throughput`` test of cocotb_tests/test_unpack.py, default configuration), and the dequant
  pipeline's block sums per cycle (cocotb_tests/vectors.py, no stalls) for a prefill tile, a
  decode tile and a decode tile too narrow to hide the adder's latency.
- Accuracy: the dequant golden model (bit-exact with the RTL, see cocotb_tests/test_dequant.py)
  against the independent float64 reference of SPEC §4, gguf.quants.dequantize(W) @
  gguf.quants.dequantize(x_q8), for every format, on random weights and on SmolLM2-135M's
  ``blk.0.attn_q`` (Q4_1 as shipped; re-quantized from its values for the other formats) times a
  real prompt's layer-0 input.
- Area and Fmax of every stage on ECP5 (synth/flow.py).
"""

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from rtl.config import WEIGHT_FORMATS, TesseraConfig


REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "numeric_performance.md"

#: The stages measured on ECP5, by registry name.
STAGES = ("unpack", "quantizer", "dequant", "requantizer", "fp_add", "fp_mul", "fp_div",
          "fp_compare", "fp16_to_fp32", "fp32_to_fp16", "int32_to_fp32", "fp32_to_int")


def unpack_throughput(config):
    from cocotb_tests import harness
    from cocotb_tests.test_unpack import _params
    from rtl.tiles.unpack import WeightUnpacker
    unpacker = WeightUnpacker.from_config(config)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "throughput.json"
        harness.run(unpacker, toplevel="weight_unpacker", test_module="cocotb_tests.test_unpack",
                    testcase="throughput", parameters=_params(unpacker, report=str(report)))
        results = json.loads(report.read_text())
    return unpacker, results


def dequant_throughput(config):
    """(label, outputs, terms, cycles) for three tile shapes, checked bit for bit as they run."""
    from cocotb_tests.test_dequant import random_weights, run_matmul
    rng = np.random.default_rng(0)
    rows = []
    cols = config.array_cols * 2
    for label, m, n in (("prefill tile (rows × 2·cols outputs)", config.array_rows, cols),
                        ("decode tile (1 × 2·cols outputs)", 1, cols),
                        ("decode, Q8_0 (1 × cols outputs)", 1, config.array_cols)):
        x = rng.standard_normal((m, 576)).astype(np.float32)
        cycles, terms = run_matmul("Q4_1", random_weights(rng, "Q4_1", n, 576), x, seed=1,
                                   idle=0, stall=0)
        rows.append((label, m * n, terms, cycles))
    return rows


def quantizer_throughput():
    """(elements, cycles) of the Q8_0 quantizer at full rate on a real prompt's activations,
    checked byte for byte against gguf while measured."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    from cocotb_tests.vectors import run_vectors
    from rtl.tiles.quantizer import Q8_0Quantizer
    from sim.smollm2 import prompt_activations
    x = np.tile(prompt_activations(), (8, 1)).reshape(-1)
    dut = Q8_0Quantizer()
    run = run_vectors(dut, toplevel="quantizer", inputs=x.view(np.uint32), seed=1, idle=0,
                      stall=0)
    layout = dut.o.payload.shape()
    q = ((run.outputs >> np.uint64(layout["q"].offset)) & np.uint64(0xFF)).astype(np.uint8)
    d = ((run.outputs >> np.uint64(layout["d"].offset)) & np.uint64(0xFFFF)).astype(np.uint16)
    blocks = np.concatenate([d.reshape(-1, 32)[:, :1].view(np.uint8), q.reshape(-1, 32)], axis=1)
    expected = quantize(x.reshape(-1, 32), GGMLQuantizationType.Q8_0).reshape(-1, 34)
    assert np.array_equal(blocks, expected), "quantizer output differs from gguf"
    return x.size, run.cycles


def _real_weights():
    from gguf.quants import dequantize
    from sim.smollm2 import prompt_activations, tensors
    q = {t.name: t for t in tensors()}["blk.0.attn_q.weight"]
    raw = np.asarray(q.data)
    return raw, dequantize(raw, q.tensor_type).astype(np.float32), prompt_activations()


def accuracy():
    """Per format and data set: blocks per output, max and median of |y − reference| / Σ|w·x|,
    and max |y − reference| / |reference| over outputs with |reference| ≥ 1 % of the largest."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize
    import sim.dequant as golden
    rng = np.random.default_rng(0)
    real_raw, real_values, prompt = _real_weights()
    rows = []
    for fmt in WEIGHT_FORMATS:
        qtype = getattr(GGMLQuantizationType, fmt)
        random_w = (rng.standard_normal((64, 576 if fmt != "TQ2_0" else 512))
                    * rng.uniform(0.01, 2, (64, 1))).astype(np.float32)
        cases = [("random 4 × 64 × K", quantize(random_w, qtype),
                  (rng.standard_normal((4, random_w.shape[1])) * 4).astype(np.float32))]
        if fmt == "Q4_1":
            cases.append(("SmolLM2 attn_q as shipped", real_raw, prompt))
        elif fmt != "TQ2_0":
            cases.append(("SmolLM2 attn_q re-quantized", quantize(real_values, qtype), prompt))
        else:
            # TQ2_0 needs K in multiples of 256: the first 512 columns, re-quantized.
            cases.append(("SmolLM2 attn_q[:, :512] re-quantized",
                          quantize(real_values[:, :512], qtype), prompt[:, :512]))
        for label, w_raw, x in cases:
            weights = dequantize(w_raw, qtype).astype(np.float64)
            xq = dequantize(quantize(x, GGMLQuantizationType.Q8_0),
                            GGMLQuantizationType.Q8_0).astype(np.float64)
            reference = xq @ weights.T
            magnitude = np.abs(xq) @ np.abs(weights.T)
            y = golden.matmul(fmt, w_raw, x).astype(np.float64)
            normwise = np.abs(y - reference) / np.where(magnitude == 0, 1, magnitude)
            large = np.abs(reference) >= 0.01 * np.abs(reference).max()
            elementwise = np.abs(y - reference)[large] / np.abs(reference)[large]
            rows.append((fmt, label, x.shape[1] // 32, normwise.max(), np.median(normwise),
                         elementwise.max()))
    return rows


def synthesize_stages(config, progress=True, names=STAGES):
    """(name, SynthResult) of each registry block in ``names`` on ECP5, with a progress bar."""
    from rtl.blocks import build_block
    from synth.flow import synthesize
    results = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("synthesis", total=len(names))
        for name in names:
            results.append((name, synthesize(build_block(name, config), name=name,
                                             target="ecp5")))
            bar.advance(task)
    return results


def run(progress=True):
    from synth.flow import block_cell, dff_note, fmax_text
    config = TesseraConfig()
    start = time.monotonic()
    unpacker, unpack_rows = unpack_throughput(config)
    dequant_rows = dequant_throughput(config)
    elements, quantizer_cycles = quantizer_throughput()
    accuracy_rows = accuracy()
    synthesis = synthesize_stages(config, progress)

    lines = [
        "# Numeric path: measured performance",
        "",
        "Generated by `tessera bench numeric` (also part of `make bench`); do not edit. The "
        "stages are described in [unpack.md](unpack.md), [quantizer.md](quantizer.md), "
        "[dequant.md](dequant.md), [requantizer.md](requantizer.md) and [fp.md](fp.md).",
        "",
        f"## Weight unpacker throughput (byte_width {unpacker.byte_width}, lanes "
        f"{unpacker.lanes}, Verilator)",
        "",
        "Steady state with the input always valid and the output always ready; the bound is one "
        "input beat or one output beat per cycle, whichever a block needs more of.",
        "",
        "| Format | Blocks per cycle | Bound | Elements per cycle |",
        "|---|---:|---:|---:|",
    ]
    from sim.gguf_blocks import FORMATS
    for r in unpack_rows:
        rate = 1 / r["steady_cycles_per_block"]
        lines.append(f"| {r['format']} | {rate:.4f} | {1 / r['bound_cycles_per_block']:.4f} | "
                     f"{rate * FORMATS[r['format']][0]:.1f} |")
    lines += [
        "",
        "## Activation quantizer throughput (Verilator)",
        "",
        f"A real prompt's layer-0 input repeated to {elements:,} elements ({elements // 32:,} "
        f"Q8_0 blocks), input always valid, output always ready, checked byte for byte against "
        f"gguf: {quantizer_cycles:,} cycles, {elements / quantizer_cycles:.3f} elements per "
        f"cycle ({elements / 32 / quantizer_cycles:.4f} blocks per cycle).",
        "",
        "## Dequant pipeline throughput (Verilator, Q4_1, K = 576)",
        "",
        "A term is one block sum of one output (32 elements of K). The pipeline takes one per "
        "cycle while at least as many outputs interleave as the adder has stages; fewer, and a "
        "term waits for its output's previous sum.",
        "",
        "| Shape | Outputs | Terms | Cycles | Terms per cycle |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, outputs, terms, cycles in dequant_rows:
        lines.append(f"| {label} | {outputs} | {terms:,} | {cycles:,} | {terms / cycles:.3f} |")
    lines += [
        "",
        "## Accuracy against the float64 reference",
        "",
        "y from the golden model (bit-exact with the RTL); reference = gguf's dequantized W times "
        "gguf's dequantized Q8_0 activations, in float64. Normwise error is |y − ref| / Σ|w·x| "
        "per output, the quantity binary32 accumulation bounds (about (B + 3) · 2⁻²⁴ ≈ "
        "6·10⁻⁸ · (B + 3) for B blocks); elementwise is |y − ref| / |ref| over outputs at least "
        "1 % of the largest.",
        "",
        "| Format | Data | Blocks B | Max normwise | Median normwise | Max elementwise |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for fmt, label, blocks, worst, median, elementwise in accuracy_rows:
        lines.append(f"| {fmt} | {label} | {blocks} | {worst:.2e} | {median:.2e} | "
                     f"{elementwise:.2e} |")
    lines += [
        "",
        "## Area and Fmax (ECP5 LFE5U-85F, speed 6, default configuration)",
        "",
        "| Stage | LUT4 | FF | CCU2C | MULT18X18D | DP16KD | LUT RAM | Fmax (MHz) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in synthesis:
        lines.append(f"| {block_cell(r, name)} | {r.luts:,} | {r.ffs:,} | {r.carries:,} | "
                     f"{r.dsps} | {r.brams} | {r.lutrams:,} | {fmax_text(r)} |")
    lines += dff_note([r for _, r in synthesis])
    lines += ["", f"Measured in {time.monotonic() - start:.0f} s.", ""]
    text = "\n".join(lines)
    OUTPUT.write_text(text)
    return text

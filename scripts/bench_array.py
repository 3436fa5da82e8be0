"""`tessera bench array`: MAC array utilisation from Verilator, area and Fmax from synthesis.

Writes docs/mac_array_performance.md. Utilisation comes from the cocotb ``benchmark`` test in
cocotb_tests/test_mac_array.py on the default configuration's array: each matmul alone, inputs
always valid and the output always ready, so the figures are the array's own (pipeline fill and
drain, padding), checked bit for bit against the reference while they are measured. Area and
Fmax come from synth/flow.py for three array sizes, built for Q8_0 only and for all formats.
"""

import json
import tempfile
import time
from pathlib import Path

from rich.progress import Progress

from rtl.config import PACKED_FORMATS, WEIGHT_FORMATS, TesseraConfig
from rtl.tiles.mac_array import MACArray


REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "mac_array_performance.md"

#: SmolLM2-135M's hidden size: a real K and N for the utilisation runs (TQ2_0 needs K in
#: multiples of 256, so it runs K = 512).
HIDDEN = 576

SIZES = (4, 8, 12)

#: Sizes whose area only is measured: nextpnr-ecp5's router did not converge on a 12x12 array
#: (144 of the device's 156 MULT18X18D) within 25 minutes, stuck at ~600 overused wires.
AREA_ONLY = (12,)
BUILDS = {"Q8_0 only": ("Q8_0",), "all formats": WEIGHT_FORMATS}


def _shapes():
    shapes = []
    for phase, m in (("decode", 1), ("prefill", 32)):
        for fmt in WEIGHT_FORMATS:
            k = 512 if fmt == "TQ2_0" else HIDDEN
            shapes.append({"phase": phase, "format": fmt, "m": m, "n": HIDDEN, "k": k})
    return shapes


def measure_utilisation(config):
    """Cycles of each benchmark shape on ``config``'s array, from Verilator."""
    from cocotb_tests import harness
    from cocotb_tests.test_mac_array import _params

    array = MACArray.from_config(config)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "bench.json"
        parameters = {**_params(array), "bench": _shapes(), "report": str(report)}
        harness.run(array, toplevel="mac_array", test_module="cocotb_tests.test_mac_array",
                    testcase="benchmark", parameters=parameters)
        results = json.loads(report.read_text())
    rows = []
    for r in results:
        lanes = 2 if r["format"] in PACKED_FORMATS else 1
        peak = config.array_rows * config.array_cols * lanes
        # Roofline of a decode matmul: the weights it needs, at one weight word per column per
        # cycle (one code per column in Q8_0, two in the packed formats).
        weight_cycles = r["n"] * r["k"] / (config.array_cols * lanes)
        rows.append({**r, "utilisation": r["macs"] / (r["cycles"] * peak),
                     "roofline": weight_cycles * -(-r["m"] // config.array_rows) / r["cycles"]})
    return rows


def synthesize_sizes(progress=True):
    from synth.flow import synthesize
    jobs = [(size, label, formats, target) for size in SIZES for label, formats in BUILDS.items()
            for target in ("ecp5", "generic")]
    results = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("synthesis", total=len(jobs))
        for size, label, formats, target in jobs:
            tag = "int8" if len(formats) == 1 else "all"
            array = MACArray(rows=size, cols=size, formats=formats)
            result = synthesize(array, name=f"mac_array_{size}x{size}_{tag}", target=target,
                                place_and_route=size not in AREA_ONLY)
            results.append((size, label, target, result))
            bar.advance(task)
    return results


def _utilisation_table(rows, config):
    lines = [
        "| Phase | Format | M × N × K | Cycles | MAC utilisation | Weight-stream roofline |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['format']} | {r['m']} × {r['n']} × {r['k']} | "
                     f"{r['cycles']:,} | {100 * r['utilisation']:.1f} % | "
                     f"{100 * r['roofline']:.1f} % |")
    return "\n".join(lines) + "\n"


def _synthesis_tables(results):
    from synth.flow import fmax_text
    ecp5 = [(s, l, r) for s, l, t, r in results if t == "ecp5"]
    lines = [
        "| Array | Build | LUT4 | FF | CCU2C | MULT18X18D | DP16KD | LUT RAM (DPR16X4) | "
        "Fmax (MHz) | LUT+FF vs Q8_0 only |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {s: r.luts + r.ffs for s, l, r in ecp5 if l == "Q8_0 only"}
    for size, label, r in ecp5:
        fmax = fmax_text(r, missing="not routed")
        ratio = (r.luts + r.ffs) / base[size]
        lines.append(f"| {size}×{size} | {label} | {r.luts:,} | {r.ffs:,} | {r.carries:,} | "
                     f"{r.dsps} | {r.brams} | {r.lutrams:,} | {fmax} | {ratio:.2f}× |")
    generic = [(s, l, r) for s, l, t, r in results if t == "generic"]
    glines = ["| Array | Build | Cells | FF | Largest cell types |",
              "|---|---|---:|---:|---|"]
    for size, label, r in generic:
        cells = {k: v for k, v in r.cells.items() if not k.startswith("$scopeinfo")}
        top = ", ".join(f"{k} {v:,}" for k, v in sorted(cells.items(), key=lambda kv: -kv[1])[:4])
        glines.append(f"| {size}×{size} | {label} | {sum(cells.values()):,} | {r.ffs:,} | "
                      f"{top} |")
    return "\n".join(lines) + "\n", "\n".join(glines) + "\n"


def run(progress=True):
    config = TesseraConfig()
    start = time.monotonic()
    rows = measure_utilisation(config)
    results = synthesize_sizes(progress)
    ecp5_table, generic_table = _synthesis_tables(results)
    text = (
        "# MAC array: measured performance\n\n"
        "Generated by `tessera bench array` (also part of `make bench`); do not edit. The design "
        "is described in [mac_array.md](mac_array.md).\n\n"
        f"## Utilisation ({config.array_rows}×{config.array_cols} array, all formats, "
        "Verilator)\n\n"
        "Each matmul runs alone from an idle array, inputs always valid and the output always "
        "ready; cycles run from the first k-step taken to the last block sum delivered, so they "
        "include pipeline fill and drain. MAC utilisation is M·N·K over cycles × peak MACs per "
        "cycle (rows × cols in Q8_0, twice that in the packed formats). The weight-stream "
        "roofline is the cycles the weights need at one weight word per column per cycle (for "
        "each of the ⌈M / rows⌉ row tiles) over the cycles measured: the decode target is "
        "90 %, the prefill target 95 % MAC utilisation.\n\n"
        + _utilisation_table(rows, config)
        + "\n## ECP5 (LFE5U-85F, speed 6, out of context)\n\n"
        "Area of the bare array after `synth_ecp5`; Fmax from nextpnr with every port "
        "registered (see [synthesis.md](synthesis.md)). Multipliers are hand-instantiated "
        "MULT18X18D with input, pipeline and output registers. Target: 8×8 at 200 MHz or more; "
        "4-bit modes at 1.3× or less the LUT+FF of the Q8_0-only build. \"Not routed\": "
        "nextpnr-ecp5's router did not converge on the 12×12 arrays (144 of the device's 156 "
        "DSPs) within 25 minutes, so only their area is measured.\n\n"
        + ecp5_table
        + "\n## Yosys generic cells\n\n"
        "`synth -flatten` to Yosys's internal gates (multipliers included), memories kept as "
        "`$mem` cells.\n\n"
        + generic_table
        + f"\nBenchmark run time: {time.monotonic() - start:.0f} s.\n"
    )
    OUTPUT.write_text(text)
    return text

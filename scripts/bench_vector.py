"""`tessera bench vector`: the vector unit measured. Writes docs/vector_performance.md.

- Cycles from Verilator (the cocotb ``bench`` test of cocotb_tests/test_vector.py, which checks
  every result bit for bit while it counts): elements per cycle of every operator on 4096-element
  vectors, and one decode step's vector work of a SmolLM2 layer (two RMSNorms, RoPE on q and k,
  softmax over a 128-token context, SwiGLU, two residual adds), part by part and back to back.
- Accuracy: the golden model (bit-exact with the RTL) against float64, in ulp, for exp,
  reciprocal and rsqrt over their ranges and for each operator on SmolLM2's real layer-0
  operands.
- Area and Fmax on ECP5 (synth/flow.py) of the vector unit (about half an hour).
"""

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from rtl.config import TesseraConfig
from scripts.bench_numeric import synthesize_stages


REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "vector_performance.md"

#: Blocks measured on ECP5, by registry name (the special-function units alone are in
#: docs/fp.md and docs/area.md: each takes a quarter of an hour more).
BLOCKS = ("vector_unit",)


def cycles():
    from cocotb_tests.test_vector import run_bench
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "bench.json"
        run_bench(report)
        return json.loads(report.read_text())


def _ulps(bits, reference):
    from sim.vector_math import ulp_error
    return ulp_error(np.asarray(bits, dtype=np.uint32), np.asarray(reference, dtype=np.float64))


def function_accuracy():
    """(function, input range, samples, max ulp, mean ulp) of exp, recip and rsqrt (and of the
    erf-form GELU's program)."""
    from sim import vector_math as vm
    rng = np.random.default_rng(0)
    rows = []
    n = 2_000_000
    for label, low, high in (("exp", -103.9, 88.72), ("exp", -30.0, 0.0)):
        x = rng.uniform(low, high, n).astype(np.float32)
        e = _ulps(vm.exp(x.view(np.uint32)), np.exp(x.astype(np.float64)))
        rows.append((label, f"[{low:g}, {high:g}]", n, e.max(), e.mean()))
    for label, function, reference in (("reciprocal", vm.recip, lambda x: 1 / x),
                                       ("rsqrt", vm.rsqrt, lambda x: 1 / np.sqrt(x))):
        x = np.exp(rng.uniform(np.log(2.0 ** -125), np.log(2.0 ** 125), n)).astype(np.float32)
        e = _ulps(function(x.view(np.uint32)), reference(x.astype(np.float64)))
        rows.append((label, "[2^-125, 2^125], log-uniform", n, e.max(), e.mean()))
    # The erf-form GELU is a program of nine passes, not one function; its error depends on
    # |x| through the rounding of x² in exp(−x²/2) (docs/vector.md).
    from sim import vector as V
    n = 60_000
    for low, high in ((-4.0, 4.0), (-14.0, 14.0)):
        x = rng.uniform(low, high, n).astype(np.float32)
        reference = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x.astype(float)])
        e = _ulps(V.gelu_erf(V.VectorModel(n), x).view(np.uint32), reference)
        rows.append(("GELU, erf form", f"[{low:g}, {high:g}]", n, e.max(), e.mean()))
    return rows


def operator_accuracy():
    """(operator, data, elements, max ulp, mean ulp) on SmolLM2's layer-0 operands."""
    from sim import vector as V
    from sim.smollm2 import layer0_vectors
    d = layer0_vectors()
    model = V.VectorModel()
    rows = []

    def row(label, data, results, references, scales=None):
        """Error in ulp of the reference, or of ``scales`` where they are larger: the size of
        the terms a result cancelled from, the measure for RoPE's differences."""
        y = np.concatenate([np.asarray(r, dtype=np.float32).view(np.uint32) for r in results])
        reference = np.concatenate(references)
        if scales is None:
            e = _ulps(y, reference)
        else:
            from sim.vector_math import ulp
            scale = np.maximum(np.abs(reference), np.concatenate(scales))
            e = np.abs(y.view(np.float32).astype(np.float64) - reference) / ulp(scale)
        rows.append((label, data, y.size, e.max(), e.mean()))

    eps = d["epsilon"]
    tokens = range(len(d["embeddings"]))
    results, references = [], []
    for t in tokens:
        for x, w in ((d["embeddings"][t], d["attn_norm"]), (d["residual"][t], d["ffn_norm"])):
            results.append(V.rmsnorm(model, x, w, eps))
            xd = x.astype(np.float64)
            references.append(xd / np.sqrt(np.mean(xd * xd) + eps) * w)
    row("RMSNorm", "both norms, 5 tokens", results, references)
    results, references = [], []
    scale = 1 / np.sqrt(d["head_dim"])
    for head in range(d["scores"].shape[0]):
        for t in tokens:
            y = V.softmax(model, d["scores"][head, t], scale, limit=t + 1)
            s = d["scores"][head, t, :t + 1].astype(np.float64) * np.float32(scale)
            e = np.exp(s - s.max())
            results.append(y[:t + 1])
            references.append(e / e.sum())
    row("softmax (causal)", "9 heads × 5 rows of q·k", results, references)
    gate, up = d["gate"].reshape(-1), d["up"].reshape(-1)
    g = gate.astype(np.float64)
    row("SiLU", "FFN gate, 5 tokens", [V.silu(model, gate)], [g / (1 + np.exp(-g))])
    row("SwiGLU", "FFN gate and up, 5 tokens", [V.swiglu(model, gate, up)],
        [g / (1 + np.exp(-g)) * up])
    tanh = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
    y = V.gelu(model, gate)
    # Where the tanh form cancels (x near −3 … −10) the result is tiny and its ulp is no
    # measure; those elements are counted by absolute error in the docs' text instead.
    keep = np.abs(tanh) >= 1e-3 * np.abs(g)
    row("GELU (tanh)", "FFN gate, 5 tokens, \\|y\\| ≥ 10⁻³·\\|x\\|", [y[keep]], [tanh[keep]])
    erf = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2.0)) for v in g])
    row("GELU (erf, 9 passes)", "FFN gate, 5 tokens", [V.gelu_erf(model, gate)], [erf])
    q = d["q"].reshape(len(d["q"]), -1)
    results, references, scales = [], [], []
    for t in tokens:
        table = V.rope_table(t, d["head_dim"], d["rope_base"])
        x = q[t]
        results.append(V.rope(model, x, np.tile(table, d["q"].shape[1])))
        theta = t * d["rope_base"] ** (-np.arange(0, d["head_dim"], 2) / d["head_dim"])
        xd = x.astype(np.float64).reshape(-1, d["head_dim"])
        c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
        ref = np.empty_like(xd)
        ref[:, 0::2] = xd[:, 0::2] * np.cos(theta) - xd[:, 1::2] * np.sin(theta)
        ref[:, 1::2] = xd[:, 0::2] * np.sin(theta) + xd[:, 1::2] * np.cos(theta)
        magnitude = np.empty_like(xd)
        magnitude[:, 0::2] = np.abs(xd[:, 0::2]) * c + np.abs(xd[:, 1::2]) * s
        magnitude[:, 1::2] = np.abs(xd[:, 0::2]) * s + np.abs(xd[:, 1::2]) * c
        references.append(ref.reshape(-1))
        scales.append(magnitude.reshape(-1))
    row("RoPE", "q, 9 heads, 5 positions; ulp of \\|x0·c\\| + \\|x1·s\\|", results, references,
        scales)
    return rows


def run(progress=True, synthesis=True):
    from rtl.tiles.vector import VectorUnit
    from synth.flow import fmax_text
    config = TesseraConfig()
    start = time.monotonic()
    measured = cycles()
    functions = function_accuracy()
    operators = operator_accuracy()
    areas = synthesize_stages(config, progress, names=BLOCKS) if synthesis else []
    latency = VectorUnit.LATENCY

    lines = [
        "# Vector unit: measured performance",
        "",
        "Generated by `tessera bench vector` (also part of `make bench`); do not edit. The unit "
        "is described in [vector.md](vector.md).",
        "",
        f"## Throughput (Verilator, {VectorUnit.__name__}, pipeline latency {latency} cycles)",
        "",
        "Each operator on 4096-element vectors, operands always valid and the output always "
        "ready, from the first command to the unit going idle (every result checked bit for bit "
        "while counted). A pass streams one element per cycle; a pass that ends in a register "
        "(a sum or maximum) makes the next pass that reads the register wait for the pipeline "
        "to empty, the partial sums to be added and the sum to cross the pipeline once more.",
        "",
        "| Operator | Passes | Elements | Cycles | Elements per cycle | Element passes per cycle "
        "| Cycles beyond one per element pass |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in measured["throughput"]:
        passes = r["elements"] * r["passes"]
        lines.append(f"| {r['label']} | {r['passes']} | {r['elements']:,} | {r['cycles']:,} | "
                     f"{r['elements'] / r['cycles']:.3f} | {passes / r['cycles']:.3f} | "
                     f"{r['cycles'] - passes:,} |")
    lines += [
        "",
        f"The passes themselves stream at one element per cycle: what a command adds beyond that "
        f"is the pipeline's latency once per command (one element alone, an ADD of length 1, "
        f"takes {measured['latency']} cycles from command to idle) and, where a pass reads a "
        f"register a reduction is computing, a wait for the pipeline to empty, the 16 partial "
        f"sums to be added and the sum to cross the pipeline once more.",
        "",
        "## One SmolLM2 layer's vector work (decode, 128-token context)",
        "",
        "Hidden size 576, 9 query heads and 3 KV heads of 64, FFN 1536. The operands are SmolLM2's "
        "real layer-0 vectors where the 5-token prompt has them (the softmax rows are random, "
        "128 long).",
        "",
        "| Part | Commands | Elements streamed | Cycles alone |",
        "|---|---:|---:|---:|",
    ]
    for r in measured["layer"]:
        lines.append(f"| {r['label']} | {r['commands']} | {r['elements']:,} | {r['cycles']:,} |")
    alone = sum(r["cycles"] for r in measured["layer"])
    elements = sum(r["elements"] for r in measured["layer"])
    lines += [
        f"| **sum of the parts** | | {elements:,} | {alone:,} |",
        f"| **back to back** | | {elements:,} | **{measured['layer_total']:,}** |",
        "",
        "## Accuracy against float64",
        "",
        "From the golden model, which the RTL matches bit for bit. ulp = unit in the last place "
        "of binary32 at the float64 reference.",
        "",
        "| Function | Inputs | Samples | Max ulp | Mean ulp |",
        "|---|---|---:|---:|---:|",
    ]
    for label, data, n, worst, mean in functions:
        lines.append(f"| {label} | {data} | {n:,} | {worst:.3f} | {mean:.3f} |")
    lines += [
        "",
        "| Operator | Data (SmolLM2 layer 0) | Elements | Max ulp | Mean ulp |",
        "|---|---|---:|---:|---:|",
    ]
    for label, data, n, worst, mean in operators:
        lines.append(f"| {label} | {data} | {n:,} | {worst:.2f} | {mean:.3f} |")
    if areas:
        lines += [
            "",
            "## Area and Fmax (ECP5 LFE5U-85F, speed 6)",
            "",
            "The whole unit: the element pipeline (exp and 1/x-or-1/√x units, eight multipliers, "
            "two adders), the sum adder and its partials, the command front end and the Q8_0 "
            "quantizer. The exp and reciprocal units alone are in [fp.md](fp.md).",
            "",
            "| Block | LUT4 | FF | CCU2 | MULT18X18D | DP16KD | LUT RAM | Fmax (MHz) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, result in areas:
            lines.append(f"| `{name}` | {result.luts:,} | {result.ffs:,} | {result.carries:,} | "
                         f"{result.dsps} | {result.brams} | {result.lutrams} | "
                         f"{fmax_text(result)} |")
    lines += ["", f"(Measured in {time.monotonic() - start:.0f} s.)", ""]
    text = "\n".join(lines)
    OUTPUT.write_text(text)
    return text

"""``tessera bench mesh``: the tile mesh measured. Writes docs/tile_performance.md.

- Cycles from Verilator: SmolLM2-135M's ``blk.0.ffn_up`` (1536 × 576, Q4_1 as stored) on 1×1,
  2×2 and 4×4 meshes of the default tile, through the same driver (sim/mesh_program.py), edge
  player and testbench as ``make demo``; decode (M = 1, the first token of the demo's prompt)
  and prefill (M = 32, a 32-token real prompt). Every result is checked bit for bit against the
  golden model; a mismatch fails the benchmark.
- Against the ideal: speed-up over 1×1 next to the tile count, and the cycles against the
  edge port's bound (every flit of the program enters through it, one per cycle).
- Area and Fmax of one tile on ECP5 (synth/flow.py), unless ``--no-synth``: the default
  tile (with its vector unit it is over the LFE5U-85F's DSPs and LUTs, which the flow says
  after Yosys) and the tile these meshes simulate, without it (``tile_vector=False``). With
  8 SRAM banks that tile does not route on the 85F: the flow spends its two router budgets
  (synth/flow.py, about two and a half hours with the two placements) and reports it as not
  routed, with the placement's estimate. The two syntheses run after the simulations, in a
  process each, so that the simulations' cycles per second are measured on an otherwise idle
  machine (beside two Yosys processes on two cores they measured a fifth of that); the
  simulations' table is written before the syntheses start.
  ``--no-pnr`` stops both syntheses after Yosys: the tiles' area in minutes, without Fmax.
"""

import tempfile
import time
from pathlib import Path

import numpy as np

from rtl.config import TesseraConfig
from scripts import demo


REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "tile_performance.md"
TENSOR = "blk.0.ffn_up.weight"
MESHES = ((1, 1), (2, 2), (4, 4))

#: 32 whole tokens of SmolLM2's vocabulary ("Ġ" is GPT-2's space): prefill's M.
PREFILL_PROMPT = tuple(
    "The Ġcapital Ġof ĠFrance Ġis ĠParis , Ġand Ġthe Ġcapital Ġof ĠItaly Ġis ĠRome . ĠBoth "
    "Ġcities Ġare Ġold , Ġand Ġmany Ġpeople Ġvisit Ġthem Ġevery Ġyear Ġto Ġsee Ġthe Ġart ."
    .split())


def prepare(workdir):
    """The decode and prefill jobs on ``TENSOR``, in :func:`scripts.demo.simulate`'s form."""
    from gguf.quants import dequantize
    from sim.smollm2 import prompt_activations, tensors
    (t,) = [t for t in tensors() if t.name == TENSOR]
    w_raw = np.asarray(t.data, dtype=np.uint8)
    w64 = dequantize(w_raw, t.tensor_type).astype(np.float64)
    fmt = t.tensor_type.name
    jobs = []
    for name, x in (("decode", prompt_activations()[:1]),
                    ("prefill", prompt_activations(PREFILL_PROMPT))):
        path = Path(workdir) / f"{name}.npz"
        np.savez(path, fmt=fmt, w_raw=w_raw, x=x)
        jobs.append({"name": name, "fmt": fmt, "w_raw": w_raw, "x": x, "path": path,
                     "reference": x.astype(np.float64) @ w64.T})
    return jobs


def simulate(meshes, progress):
    """{(X, Y): [(job name, figures of scripts.demo.measure, flits)]} for every mesh."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    results = {}
    with tempfile.TemporaryDirectory() as workdir, \
            Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                     disable=not progress) as bar:
        jobs = prepare(workdir)
        for mesh in meshes:
            # The tiles' vector units are idle in a matmul and change no cycle (the tile
            # switches its readers to the unit only for a VECTOR); sixteen of them would make
            # the 4×4 model's build and simulation several times longer.
            config = TesseraConfig(mesh_x=mesh[0], mesh_y=mesh[1], tile_vector=False)
            task = bar.add_task(f"{mesh[0]}×{mesh[1]}: building", total=len(jobs))

            def report(phase, fraction, task=task, mesh=mesh):
                if phase != "build":
                    index = [job["name"] for job in jobs].index(phase)
                    bar.update(task, completed=index + fraction,
                               description=f"{mesh[0]}×{mesh[1]}: {phase}")
            demo.simulate(config, jobs, workdir, report)
            bar.update(task, completed=len(jobs))
            results[mesh] = [(job["name"], demo.measure(job, config), job["flits"])
                             for job in jobs]
            bad = [name for name, figures, _ in results[mesh] if not figures["exact"]]
            if bad:
                raise AssertionError(f"{mesh[0]}×{mesh[1]} mesh: {', '.join(bad)} not "
                                     f"bit-exact with the golden model")
    return results


#: The tiles synthesized: (block name in the table, configuration).
TILES = (("tile", TesseraConfig()),
         ("tile_no_vector", TesseraConfig(tile_vector=False)))


def synthesize_tile(name, config, place_and_route=True):
    """SynthResult of a tile on ECP5 (only Yosys's counts without ``place_and_route``)."""
    from rtl.tiles.tile import Tile
    from synth.flow import synthesize
    return synthesize(Tile(config), name=name, target="ecp5", place_and_route=place_and_route)


def run(progress=True, synthesis=True, meshes=MESHES, place_and_route=True):
    from concurrent.futures import ProcessPoolExecutor
    start = time.monotonic()
    results = simulate(meshes, progress)
    area = []
    if synthesis:
        # The tile's place-and-route takes hours: the simulations' table is written now, so
        # that a run stopped while it waits keeps them.
        OUTPUT.write_text(report(results, [], time.monotonic() - start, pending=True))
        if progress:
            print(f"simulations written to {OUTPUT.relative_to(REPO)}; synthesizing the tiles",
                  flush=True)
        with ProcessPoolExecutor(max_workers=len(TILES)) as pool:
            pending = [pool.submit(synthesize_tile, *tile, place_and_route) for tile in TILES]
            area = [future.result() for future in pending]
    text = report(results, area, time.monotonic() - start, place_and_route=place_and_route)
    OUTPUT.write_text(text)
    return text


def report(results, area, seconds, pending=False, place_and_route=True):
    """The text of docs/tile_performance.md: ``results`` of :func:`simulate`, ``area`` a
    list of SynthResult (empty without synthesis), ``seconds`` the benchmark's time;
    ``pending`` says the tiles' synthesis is still running; without ``place_and_route`` the
    area is Yosys's alone."""
    from synth.flow import markdown_table
    config = TesseraConfig()
    lines = [
        "# Tile mesh: measured performance",
        "",
        "<!-- Generated by `tessera bench mesh` (scripts/bench_mesh.py); do not edit by "
        "hand. -->",
        "",
        f"SmolLM2-135M-Instruct's `{TENSOR}` (1536 × 576, Q4_1 as the GGUF file stores it) "
        "times RMSNorm-ed token embeddings, on meshes of the default tile "
        f"({config.array_rows}×{config.array_cols} MAC array, "
        f"{config.sram_banks * config.sram_bank_depth * config.sram_width // 8 // 1024} KiB "
        f"SRAM, {config.flit_width}-bit NoC) without its vector unit (`tile_vector=False`: "
        "idle in a matmul, it changes no cycle, but sixteen of them would slow the 4×4 "
        "model several times), in Verilator: decode is M = 1 (the demo "
        "prompt's first token), prefill M = 32 (a 32-token real prompt). The driver is "
        "sim/mesh_program.py, the edge is driven by the edge player (cocotb_tests/"
        "edge_player.py) at full rate. Every result is bit-exact with the golden model "
        "(the benchmark fails otherwise).",
        "",
        "| Mesh | Shape | Cycles | Speed-up over 1×1 | Ideal | Edge flits | Cycles / flits "
        "| Weight B/cycle | MAC util | Sim cycles/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {name: figures["cycles"] for name, figures, _ in results.get((1, 1), [])}
    for mesh, rows in results.items():
        for name, f, flits in rows:
            speedup = (f"{base[name] / f['cycles']:.2f}×" if name in base else "–")
            lines.append(
                f"| {mesh[0]}×{mesh[1]} | {name} {f['shape']} | {f['cycles']:,} | {speedup} "
                f"| {mesh[0] * mesh[1]}× | {flits:,} | {f['cycles'] / flits:.2f} "
                f"| {f['bytes_per_cycle']:.2f} | {f['util']:.1%} | {f['rate']:,.0f} |")
    lines += [
        "",
        "- **Edge flits**: the program's packets (headers and words: weights, activations, "
        "micro-ops), all of which enter through the one edge port at one flit per cycle; "
        "*cycles / flits* near 1 means the edge port is the bound.",
        "- **MAC util**: multiply-accumulates done over those the mesh's arrays could do in the "
        "cycles (two per PE per cycle in a 4-bit format).",
        "- **Sim cycles/s**: Verilator's speed on the machine that ran the benchmark "
        "(2 cores), for the record of what a run costs.",
        "",
    ]
    if area:
        lines += ["## One tile on ECP5", "", markdown_table(area),
                  "LFE5U-85F-6, out of context, registers on every port (synth/flow.py). "
                  "`tile` is the default tile; `tile_no_vector` is the tile with "
                  "`tile_vector=False`, the one these meshes simulate.", ""]
        if not place_and_route:
            lines += ["Yosys's counts only (`--no-pnr`), so no Fmax: the place-and-route of "
                      "`tile_no_vector` takes hours, and with 8 SRAM banks it did not route "
                      "on the 85F (docs/tile.md).", ""]
        over = [f"- {r.block}: {', '.join(r.over)}" for r in area if r.over]
        if over:
            lines += ["Over the device's capacity after Yosys (so no place-and-route):", "",
                      *over, ""]
    if pending:
        lines += ["## One tile on ECP5", "",
                  "The tiles' synthesis was still running when this table was written.", ""]
        lines.append(f"Simulations' time: {seconds:.0f} s.")
    else:
        lines.append(f"Benchmark time: {seconds:.0f} s.")
    return "\n".join(lines) + "\n"

"""``tessera demo``: real SmolLM2-135M matmuls on the default 2×2 tile mesh in RTL simulation.

The two matrices of layer 0 that the issue names, ``blk.0.attn_q`` (576 × 576) and
``blk.0.ffn_up`` (1536 × 576), both Q4_1 as the GGUF file stores them, multiply the embeddings
of a short real prompt after RMSNorm (computed by the vector unit's golden model, which the
vector unit's RTL matches bit for bit). The driver (sim/mesh_program.py) splits each matrix
across the four tiles by output rows, streams the weights into the tiles' SRAM through the edge
port and multicasts the activations; Verilator runs the whole mesh. The demo then prints
whether the mesh's results equal the golden model's bit for bit, their error against float64
(gguf's dequantized weights times the unquantized activations), the cycles, the MAC
utilisation, the weight bytes per cycle against the edge port's bandwidth, and the area and
Fmax of the tile's blocks as measured by the synthesis benchmarks.
"""

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from rtl.config import TesseraConfig


REPO = Path(__file__).resolve().parents[1]
TENSORS = ("blk.0.attn_q.weight", "blk.0.ffn_up.weight")


def prepare(workdir):
    """(name, fmt, w_raw, x, x_float64) per tensor, saved as job files in ``workdir``."""
    from gguf.quants import dequantize
    from sim import vector as V
    from sim.smollm2 import layer0_vectors, tensors
    d = layer0_vectors()
    model = V.VectorModel()
    x = np.stack([V.rmsnorm(model, e, d["attn_norm"], d["epsilon"]) for e in d["embeddings"]])
    by_name = {t.name: t for t in tensors()}
    jobs = []
    for name in TENSORS:
        t = by_name[name]
        w_raw = np.asarray(t.data, dtype=np.uint8)
        fmt = t.tensor_type.name
        path = Path(workdir) / f"{name}.npz"
        np.savez(path, fmt=fmt, w_raw=w_raw, x=x)
        reference = x.astype(np.float64) @ dequantize(w_raw, t.tensor_type).astype(np.float64).T
        jobs.append({"name": name, "fmt": fmt, "w_raw": w_raw, "x": x, "path": path,
                     "reference": reference})
    return jobs


def simulate(config, jobs, workdir, progress):
    """Run the jobs on the RTL mesh; ``progress(phase, fraction)`` is called while it runs."""
    from cocotb_tests.test_tile_mesh import run_mesh
    progress_file = Path(workdir) / "progress.json"
    failure = []

    def run():
        try:
            run_mesh(config, [str(job["path"]) for job in jobs], testcase="demo_run",
                     progress=str(progress_file))
        except Exception as error:      # reported by the caller
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():
        if progress_file.exists():
            try:
                state = json.loads(progress_file.read_text())
                progress(jobs[state["job"]]["name"], state["fraction"])
            except (ValueError, KeyError):
                pass
        else:
            progress("build", 0)
        time.sleep(0.5)
    thread.join()
    if failure:
        raise failure[0]
    for job in jobs:
        out = np.load(Path(job["path"]).with_suffix(".out.npz"))
        job.update(y=out["y"], cycles=int(out["cycles"]), seconds=float(out["seconds"]),
                   flits=int(out["flits"]), errors=int(out["errors"]))
    return jobs


def measure(job, config):
    """The figures of a simulated job (see :func:`simulate`): ``exact`` (bit for bit with the
    golden model, no tile error), ``error`` (max |y − y₆₄| / max |y₆₄| against the job's
    float64 ``reference``), ``cycles``, ``util`` (MACs done over MACs the mesh's arrays could
    do in those cycles), ``bytes_per_cycle`` (weight bytes), ``roofline`` (that against the
    edge port's bytes per cycle), ``rate`` (simulated cycles per second)."""
    from rtl.config import PACKED_FORMATS
    from sim import dequant
    golden = dequant.matmul(job["fmt"], job["w_raw"], job["x"]).view(np.uint32)
    y = job["y"].view(np.float32).astype(np.float64)
    reference = job["reference"]
    m, k = job["x"].shape
    n = job["w_raw"].shape[0]
    # A PE does two MACs per cycle in a packed (4-bit or ternary) format (rtl/tiles/mac_array.py).
    lanes = 2 if job["fmt"] in PACKED_FORMATS else 1
    peak = config.mesh_x * config.mesh_y * config.array_rows * config.array_cols * lanes
    per_cycle = job["w_raw"].size / job["cycles"]
    return {
        "exact": bool(np.array_equal(job["y"], golden)) and job["errors"] == 0,
        "error": float(np.max(np.abs(y - reference)) / np.max(np.abs(reference))),
        "shape": f"{m}×{n}×{k}",
        "cycles": job["cycles"],
        "util": m * n * k / (job["cycles"] * peak),
        "bytes_per_cycle": per_cycle,
        "roofline": per_cycle / (config.flit_width // 8),
        "rate": job["cycles"] / job["seconds"],
    }


def area_rows(docs=REPO / "docs"):
    """ECP5 rows (block, LUT4, FF, DSP, BRAM, Fmax, source) of the mesh's blocks, from the
    generated docs tables in ``docs`` (``| Block | Target | LUT4 | FF | CCU2 | DSP | BRAM |
    LUT RAM | Fmax |``)."""
    from synth.flow import DFF_MARK

    def table_rows(path):
        for line in path.read_text().splitlines():
            yield [c.strip().strip("`") for c in line.strip().strip("|").split("|")]

    rows = []
    # The SRAM's row from its own benchmark, which `make bench` regenerates for the default
    # configuration with every change of it; docs/area.md names the configuration it was made
    # with, which can be older.
    for doc, names in (("area.md", ("mac_array", "unpack", "dequant", "router",
                                    "noc_interface", "mesh")),
                       ("sram_performance.md", ("sram_ecc",)),
                       ("tile_performance.md", ("tile", "tile_no_vector"))):
        path = docs / doc
        if not path.exists():
            continue
        for cells in table_rows(path):
            # A marked block was mapped with `synth_ecp5 -dff` (synth.flow.ABC9_DFF_NOTE).
            block = cells[0].removesuffix(DFF_MARK)
            if len(cells) == 9 and block in names and cells[1] == "ecp5":
                source = f"{doc} (synth_ecp5 -dff)" if block != cells[0] else doc
                rows.append((block, cells[2], cells[3], cells[5], cells[6], cells[8], source))
    # The vector unit's own benchmark has ECP5 only: | Block | LUT4 | FF | CCU2 | MULT18X18D |
    # DP16KD | LUT RAM | Fmax (MHz) |.
    path = docs / "vector_performance.md"
    if path.exists():
        for cells in table_rows(path):
            if len(cells) == 8 and cells[0] == "vector_unit":
                rows.append((cells[0], cells[1], cells[2], cells[4], cells[5], cells[7],
                             path.name))
    return rows


def run(config=None):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
    config = config or TesseraConfig()
    console = Console()
    console.print(f"[bold]Tessera demo[/bold]: SmolLM2-135M-Instruct layer 0 on a "
                  f"{config.mesh_x}×{config.mesh_y} tile mesh ({config.array_rows}×"
                  f"{config.array_cols} MAC arrays, {config.flit_width}-bit NoC), Verilator")
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        jobs = prepare(workdir)
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                      console=console) as bar:
            tasks = {}
            build = bar.add_task("building the Verilator model (cached after the first run)",
                                 total=None, info="")

            def progress(phase, fraction):
                if phase == "build":
                    return
                bar.update(build, visible=False)
                if phase not in tasks:
                    tasks[phase] = bar.add_task(f"{phase} through the mesh", total=1.0,
                                                info="")
                bar.update(tasks[phase], completed=fraction, info=f"{fraction:.0%} of the "
                                                                  f"program")

            simulate(config, jobs, workdir, progress)
            for task in tasks.values():
                bar.update(task, completed=bar.tasks[task].total)

    table = Table(title="Results")
    for column in ("tensor", "M×N×K", "bit-exact", "rel. error", "cycles", "MAC util",
                   "weight B/cycle", "roofline", "cycles/s"):
        table.add_column(column, justify="right")
    exact_all = True
    for job in jobs:
        r = measure(job, config)
        exact_all &= r["exact"]
        table.add_row(job["name"].split(".")[2], r["shape"], "yes" if r["exact"] else "NO",
                      f"{r['error']:.1e}", f"{r['cycles']:,}", f"{r['util']:.1%}",
                      f"{r['bytes_per_cycle']:.2f}", f"{r['roofline']:.1%}",
                      f"{r['rate']:,.0f}")
    console.print(table)
    console.print("rel. error = max |y − y₆₄| / max |y₆₄|, y₆₄ = float64 product of gguf's "
                  "dequantized weights and the unquantized activations (the difference is "
                  "mostly the Q8_0 quantization of the activations). roofline: weight bytes per "
                  f"cycle against the {config.flit_width // 8} that can enter the mesh per "
                  "cycle. cycles/s: Verilator's speed on this machine.")
    rows = area_rows()
    if rows:
        area = Table(title="Area and Fmax (ECP5 LFE5U-85F; from docs/, measured by the "
                           "synthesis benchmarks)")
        for column in ("block", "LUT4", "FF", "DSP", "BRAM", "Fmax", "source"):
            area.add_column(column, justify="right")
        for row in rows:
            area.add_row(*row)
        console.print(area)
    console.print(f"done in {time.monotonic() - start:.0f} s")
    return exact_all

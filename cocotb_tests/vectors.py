"""Millions of vectors through a Component's ``i``/``o`` streams under Verilator, with random
stalls, from a compiled C++ testbench.

cocotb spends tens of microseconds of Python per simulated cycle; the binary32 units need 10⁶
operand pairs per operation, so their bulk runs use this driver instead: a small C++ ``main``
(generated for the payload widths) reads the input payloads from a file, offers them on ``i``
with random idle cycles, takes ``o`` with random stalls, and writes what came out to a file,
which the test compares with the golden model in NumPy. The Verilog carries the blocks'
``Assert``s (``--assert``), so a protocol violation stops the run. The build is cached under
``build/vectors/`` by a hash of the Verilog and the driver, like :mod:`cocotb_tests.harness`.

A failing comparison names the operands, which replay in the Amaranth simulator or cocotb with
a waveform; this driver itself writes none.
"""

import fcntl
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import time

import numpy as np
from amaranth.back import verilog
from amaranth.hdl import Shape

from .harness import BUILD, _VERILATOR_ARGS, _verilator_env


__all__ = ["VectorRun", "run_vectors", "to_words", "from_words", "new_seed", "compose_float32",
           "pack_pair", "first_mismatch"]


def new_seed():
    """A run's random seed: ``TESSERA_SEED`` to replay one, else a fresh one (the runs print it)."""
    chosen = os.environ.get("TESSERA_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(1 << 31)


def compose_float32(rng, n, exponents):
    """``n`` binary32 bit patterns with the given exponent fields, random signs and fractions."""
    sign = rng.integers(0, 2, n, dtype=np.uint32) << 31
    fraction = rng.integers(0, 1 << 23, n, dtype=np.uint32)
    return sign | (np.asarray(exponents).astype(np.uint32) << 23) | fraction


_MAIN = r"""
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <verilated.h>
#include "V{top}.h"

static uint64_t state;
static inline uint32_t draw() {{  // xorshift64*: the stalls need speed, not quality
    state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
    return (uint32_t)((state * 0x2545F4914F6CDD1DULL) >> 48);  // 16 bits
}}

int main(int argc, char **argv) {{
    if (argc != 9) {{ fprintf(stderr, "usage: in out count expected seed idle stall watchdog\n"); return 2; }}
    const size_t count = strtoull(argv[3], nullptr, 10), expected = strtoull(argv[4], nullptr, 10);
    state = strtoull(argv[5], nullptr, 10) * 2654435761ULL + 1;
    const uint32_t idle = strtoul(argv[6], nullptr, 10), stall = strtoul(argv[7], nullptr, 10);
    const uint64_t watchdog = strtoull(argv[8], nullptr, 10);
    std::vector<uint32_t> in(count * {in_words}), out(expected * {out_words});
    FILE *f = fopen(argv[1], "rb");
    if (!f || fread(in.data(), 4, in.size(), f) != in.size()) {{ fprintf(stderr, "cannot read %s\n", argv[1]); return 2; }}
    fclose(f);

    VerilatedContext context;
    V{top} top{{&context}};
    top.clk = 0; top.rst = 1; top.i__valid = 0; top.o__ready = 0; top.eval();
    for (int k = 0; k < 2; k++) {{ top.clk = 1; top.eval(); top.clk = 0; top.eval(); }}
    top.rst = 0; top.eval();

    size_t sent = 0, received = 0;
    uint64_t cycles = 0, quiet = 0;
    bool offering = false;
    while (received < expected) {{
        if (!offering && sent < count && draw() >= idle) offering = true;
        top.i__valid = offering;
        if (offering) {{
            const uint32_t *w = &in[sent * {in_words}];
            {set_input}
        }}
        top.o__ready = draw() >= stall;
        top.eval();
        const bool taken = offering && top.i__ready, given = top.o__valid && top.o__ready;
        if (given) {{
            uint32_t *w = &out[received * {out_words}];
            {get_output}
            received++;
        }}
        top.clk = 1; top.eval(); top.clk = 0;
        if (taken) {{ sent++; offering = false; }}
        cycles++;
        quiet = (taken || given) ? 0 : quiet + 1;
        if (quiet > watchdog) {{
            fprintf(stderr, "watchdog: nothing moved for %llu cycles after %zu in, %zu out\n",
                    (unsigned long long)watchdog, sent, received);
            return 3;
        }}
        if (context.gotFinish()) {{ fprintf(stderr, "simulation stopped (assertion?)\n"); return 4; }}
    }}
    top.final();
    f = fopen(argv[2], "wb");
    fwrite(out.data(), 4, out.size(), f);
    fclose(f);
    printf("%llu\n", (unsigned long long)cycles);
    return 0;
}}
"""


def _set(port, width):
    words = -(-width // 32)
    if width <= 32:
        return f"top.{port} = w[0];"
    if width <= 64:
        return f"top.{port} = (uint64_t)w[0] | ((uint64_t)w[1] << 32);"
    return " ".join(f"top.{port}[{k}] = w[{k}];" for k in range(words))


def _get(port, width):
    words = -(-width // 32)
    if width <= 32:
        return f"w[0] = (uint32_t)top.{port};"
    if width <= 64:
        return f"w[0] = (uint32_t)top.{port}; w[1] = (uint32_t)(top.{port} >> 32);"
    return " ".join(f"w[{k}] = top.{port}[{k}];" for k in range(words))


def pack_pair(a, b):
    """Payloads of two-operand units (``OPERANDS``): ``a`` in bits 0–31, ``b`` in 32–63."""
    return a.astype(np.uint64) | (b.astype(np.uint64) << np.uint64(32))


def first_mismatch(name, inputs, got, expected):
    """Fail naming how many results differ and the operands of the first."""
    import pytest
    bad = np.flatnonzero(got != expected)
    if bad.size:
        k = bad[0]
        operands = ", ".join(f"{int(v):#x}" for v in np.atleast_1d(inputs[k]))
        pytest.fail(f"{name}: {bad.size} of {len(got)} results differ; first at #{k}: "
                    f"operands {operands}, RTL {int(got[k]):#x}, golden {int(expected[k]):#x}")


def to_words(values, width):
    """uint32 words (n × ⌈width/32⌉, least significant first) of unsigned integers ``values``
    (a NumPy integer array for widths up to 64, else a sequence of Python ints)."""
    words = -(-width // 32)
    if width <= 64:
        values = np.asarray(values).astype(np.uint64)
        return np.stack([(values >> np.uint64(32 * k)).astype(np.uint32)
                         for k in range(words)], axis=1)
    return np.array([[(int(v) >> (32 * k)) & 0xFFFFFFFF for k in range(words)]
                     for v in values], dtype=np.uint32)


def from_words(words, width):
    """Inverse of :func:`to_words`: uint64 for widths up to 64, else a list of Python ints."""
    words = np.asarray(words, dtype=np.uint32)
    if width <= 64:
        total = np.zeros(words.shape[0], dtype=np.uint64)
        for k in range(words.shape[1]):
            total |= words[:, k].astype(np.uint64) << np.uint64(32 * k)
        return total
    return [sum(int(w) << (32 * k) for k, w in enumerate(row)) for row in words]


class VectorRun:
    """Result of :func:`run_vectors`: ``outputs`` and the ``cycles`` the run took."""

    def __init__(self, outputs, cycles):
        self.outputs = outputs
        self.cycles = cycles


def _build(component, toplevel, in_width, out_width):
    version = _verilator_env()
    text = verilog.convert(component, name=toplevel, emit_src=False)
    main = _MAIN.format(top=toplevel, in_words=-(-in_width // 32), out_words=-(-out_width // 32),
                        set_input=_set("i__payload", in_width),
                        get_output=_get("o__payload", out_width))
    # Verilator escapes the double underscore of Amaranth's flattened port names.
    main = main.replace("top.i__", "top.i___05F").replace("top.o__", "top.o___05F")
    key = hashlib.sha256("\0".join([text, main, version, *_VERILATOR_ARGS]).encode())
    directory = BUILD / "vectors" / f"{toplevel}-{key.hexdigest()[:16]}"
    directory.parent.mkdir(parents=True, exist_ok=True)
    binary = directory / "obj" / f"V{toplevel}"
    with open(f"{directory}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            (directory / f"{toplevel}.v").write_text(text)
            (directory / "main.cpp").write_text(main)
            # No tracing here: the bulk runs are about speed; --trace-fst would also need the
            # harness's lz4 for nothing.
            args = [a for a in _VERILATOR_ARGS if not a.startswith("--trace")]
            log = directory / "build.log"
            with open(log, "w") as out:
                result = subprocess.run(
                    ["verilator", "--cc", "--exe", "--build", "-j", "2", *args,
                     "--top-module", toplevel, "--Mdir", "obj", "-o", f"V{toplevel}",
                     f"{toplevel}.v", "main.cpp"],
                    cwd=directory, stdout=out, stderr=subprocess.STDOUT)
            if result.returncode:
                raise RuntimeError(f"Verilator build of {toplevel} failed; see {log}")
    return binary


def run_vectors(component, *, toplevel, inputs, seed, idle=0.25, stall=0.25, watchdog=1024,
                outputs=None):
    """Offer ``inputs`` (unsigned payload integers, one per transfer) on ``component.i`` and
    return the ``outputs`` payloads (default: as many as inputs) taken from ``component.o`` as
    a :class:`VectorRun`.

    ``idle`` is the probability of an idle cycle before each input, ``stall`` that of ``ready``
    low on the output in a cycle; the run fails if no transfer happens for ``watchdog`` cycles.
    """
    in_width = Shape.cast(component.i.payload.shape()).width
    out_width = Shape.cast(component.o.payload.shape()).width
    start = time.monotonic()
    binary = _build(component, toplevel, in_width, out_width)
    built = time.monotonic() - start
    with tempfile.TemporaryDirectory(dir=BUILD) as scratch:
        source = os.path.join(scratch, "in.bin")
        sink = os.path.join(scratch, "out.bin")
        words = to_words(inputs, in_width)
        words.tofile(source)
        count = words.shape[0]
        expected = count if outputs is None else outputs
        result = subprocess.run(
            [str(binary), source, sink, str(count), str(expected), str(seed), str(int(idle * 65536)),
             str(int(stall * 65536)), str(watchdog)], capture_output=True, text=True)
        if result.returncode:
            raise AssertionError(f"{toplevel} vector run failed (seed {seed}, exit "
                                 f"{result.returncode}): {result.stderr.strip()[-2000:]}")
        out = np.fromfile(sink, dtype=np.uint32).reshape(expected, -(-out_width // 32))
    print(f"[tessera] {toplevel}: {count} vectors in, {expected} out, in {int(result.stdout)} cycles "
          f"(seed {seed}; build {built:.1f} s)")
    return VectorRun(from_words(out, out_width), int(result.stdout))

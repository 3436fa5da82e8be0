"""Golden model of the vector unit (rtl/tiles/vector.py): its commands, executed on NumPy float32
with the binary32 conventions of :mod:`sim.fp32` and the special functions of
:mod:`sim.vector_math` (docs/vector.md).

The unit executes one command at a time. A command is one *pass*: it reads ``length`` elements
of operand stream ``a`` (and of ``b`` where the operation has a second operand) and either
writes ``length`` results or folds them into one of the unit's scalar registers:

========= ======================================================= =========================
op        per element (every + and · one binary32 operation)      after the pass
========= ======================================================= =========================
ADD       o = a + b
MUL       o = a · b
NORM      o = ((a − MEAN) · SCALE) · b
SCALE     o = a · SCALE
MEAN      s = a (summed)                                          MEAN = Σ · k1
VAR       s = (a − MEAN) · (a − MEAN) (summed)                    SCALE = rsqrt(Σ · k1 + k2)
RMS       s = a · a (summed)                                      SCALE = rsqrt(Σ · k1 + k2),
                                                                  MEAN = +0
MAX       s = a · k1, −∞ where masked (maximum)                   MAX = max
EXP       o = exp(a · k1 − MAX), +0 where masked (summed)         SCALE = recip(Σ)
SILU      o = (recip(exp(−a) + 1) · a) [· b if gated]
GELU      o = (recip(exp(z) + 1) · a) [· b if gated],
          z = ((a · a + G0) · G1) · a
ROPE      pairs (x0, x1) of a, (c, s) of b:
          o0 = x0 · c − x1 · s,  o1 = x0 · s + x1 · c
RECIP_ABS o = recip(|a| · k1 + k2)
POLY      o = (a · b + k1) · b + k2
GAUSS     o = exp((b · k1 + a · a) · k2)
GELU_ERF  o = a · (b · k1) if a is negative (sign bit set),
          o = a · (b · −k1 + 1) otherwise
========= ======================================================= =========================

``k1`` and ``k2`` are binary32 scalars of the command (1/n and ε for the norms, the attention
scale for softmax). In MAX and EXP, element ``i`` is *masked* when ``i ≥ limit`` (the causal
mask of one row of attention scores; ``limit = length`` masks nothing); the other passes ignore
``limit``. GELU is the tanh form written as
x·σ(2·√(2/π)·(x + 0.044715·x³)), so ``G1 = −2·√(2/π)·0.044715`` and ``G0 = 1/0.044715``.
The last four passes are the steps of the erf form of GELU, x·Φ(x) = x·(1 − ½·erfc(x/√2)) for
x ≥ 0 and x·½·erfc(|x|/√2) below: :func:`gelu_erf` runs RECIP_ABS, five POLY, GAUSS, a MUL
and GELU_ERF, the erfc sequence of :mod:`sim.vector_math`.

So the operators of a transformer layer are short programs (:func:`rmsnorm`, :func:`softmax`,
…): RMSNorm is RMS then NORM; LayerNorm is MEAN, VAR, NORM and an ADD of the bias; softmax is
MAX, EXP and SCALE. Each pass streams its operands from SRAM again, so no vector is ever held
in the unit.

**Sums** are taken over ``SUM_LANES`` partial sums: element ``i`` of the pass is added to
partial ``i mod SUM_LANES`` (in stream order, each partial starting from −0, the identity of
IEEE addition), then the partials are added pairwise in a tree, ``(p0 + p1) + (p2 + p3)`` …,
which is the order in which the pipelined adder can take them. The maximum is IEEE 754-2019
``maximum`` and does not depend on the order.

A writing command with ``quantize`` sends its results to the Q8_0 activation quantizer
(:mod:`sim.quantizer`) instead of the plain output: the last pass before a matmul.

**Non-finite values** propagate by IEEE rules (NaN canonical); any non-finite input element or
result sets the sticky ``nonfinite`` flag. A command with ``length`` 0, above the unit's
maximum, odd for ROPE, or with ``quantize`` on a length that is not a multiple of 32 or on a
pass that writes nothing, is rejected: it sets the sticky ``command`` flag, its operand
elements are consumed and dropped, and it writes nothing. (The RTL also rejects the op codes
16–31, which this model cannot express, draining ``length`` elements of ``a``.)
"""

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from . import fp32, vector_math


__all__ = ["Op", "Command", "SUM_LANES", "VectorModel", "Recorder", "tree_sum", "add", "mul",
           "rmsnorm", "layernorm", "softmax", "softmax_rows", "silu", "swiglu", "gelu", "gelu_erf",
           "rope", "rope_table", "GELU_G0", "GELU_G1"]


class Op(IntEnum):
    ADD = 0
    MUL = 1
    NORM = 2
    SCALE = 3
    MEAN = 4
    VAR = 5
    RMS = 6
    MAX = 7
    EXP = 8
    SILU = 9
    GELU = 10
    ROPE = 11
    RECIP_ABS = 12
    POLY = 13
    GAUSS = 14
    GELU_ERF = 15


#: Operations that read operand stream ``b`` (SILU and GELU only when gated).
READS_B = {Op.ADD, Op.MUL, Op.NORM, Op.ROPE, Op.POLY, Op.GAUSS, Op.GELU_ERF}
#: Operations that write results (the others fold them into a register).
WRITES = {Op.ADD, Op.MUL, Op.NORM, Op.SCALE, Op.EXP, Op.SILU, Op.GELU, Op.ROPE, Op.RECIP_ABS,
          Op.POLY, Op.GAUSS, Op.GELU_ERF}

#: Partial sums of a reduction.
SUM_LANES = 16

_SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
GELU_G0 = int(np.float32(1.0 / 0.044715).view(np.uint32))
GELU_G1 = int(np.float32(-2.0 * _SQRT_2_OVER_PI * 0.044715).view(np.uint32))

_NEG = np.uint32(0x80000000)
_ONE = np.uint32(0x3F800000)
_NEG_ZERO = np.uint32(0x80000000)
_NEG_INF = np.uint32(0xFF800000)


def _bits(value):
    return int(np.float32(value).view(np.uint32))


@dataclass(frozen=True)
class Command:
    """One pass of the vector unit (see the module docstring). ``k1``/``k2`` are binary32 bits
    (or Python floats, converted)."""

    op: Op
    length: int
    k1: int = _bits(1.0)
    k2: int = 0
    limit: int = None
    gated: bool = False
    quantize: bool = False

    def __post_init__(self):
        for name in ("k1", "k2"):
            value = getattr(self, name)
            if isinstance(value, float):
                object.__setattr__(self, name, _bits(value))
        if self.limit is None:
            object.__setattr__(self, "limit", self.length)

    @property
    def reads_b(self):
        return self.op in READS_B or (self.op in (Op.SILU, Op.GELU) and self.gated)

    @property
    def writes(self):
        return self.op in WRITES


def _full(value, n):
    return np.full(n, value, dtype=np.uint32)


def tree_sum(values):
    """Bits of the sum of ``values`` (binary32 bits) in the unit's order."""
    values = np.asarray(values, dtype=np.uint32)
    partials = _full(_NEG_ZERO, SUM_LANES)
    for i, v in enumerate(values):
        lane = i % SUM_LANES
        partials[lane] = fp32.add(partials[lane], v)
    while partials.size > 1:
        partials = fp32.add(partials[0::2], partials[1::2])
    return np.uint32(partials[0])


def _maximum(values):
    result = _NEG_INF
    for v in np.asarray(values, dtype=np.uint32):
        result = fp32.compare(np.uint32(result), v)[0]
    return np.uint32(result)


def _nonfinite(values):
    return bool(np.any((np.asarray(values, dtype=np.uint32) & 0x7F800000) == 0x7F800000))


class VectorModel:
    """The vector unit's state (registers ``MEAN``, ``SCALE``, ``MAX`` and the sticky flags) and
    its commands. :meth:`run` executes one command on its operand elements."""

    def __init__(self, max_length=16384):
        self.max_length = max_length
        self.mean = np.uint32(0)
        self.scale = _ONE
        self.max = _NEG_INF
        self.nonfinite = False
        self.command_error = False

    def valid(self, command):
        return (1 <= command.length <= self.max_length
                and not (command.op == Op.ROPE and command.length % 2)
                and not (command.quantize and (command.length % 32
                                               or command.op not in WRITES)))

    def run(self, command, a, b=None):
        """Results (binary32 bits) of ``command`` on operand elements ``a`` (and ``b``): an
        empty array for a rejected command or one that folds into a register."""
        n = command.length
        a = np.asarray(a, dtype=np.uint32).reshape(-1)
        if a.size != n or (command.reads_b and (b is None or np.asarray(b).size != n)):
            raise ValueError(f"{command.op.name} of length {n} needs {n} elements of a"
                             f"{' and b' if command.reads_b else ''}")
        if not self.valid(command):
            self.command_error = True
            return np.zeros(0, dtype=np.uint32)
        b = np.asarray(b, dtype=np.uint32).reshape(-1) if command.reads_b else None
        self.nonfinite |= _nonfinite(a) or (b is not None and _nonfinite(b))
        op = command.op
        k1, k2 = _full(command.k1, n), _full(command.k2, n)
        masked = np.arange(n) >= command.limit
        out = None
        if op == Op.ADD:
            out = fp32.add(a, b)
        elif op == Op.MUL:
            out = fp32.mul(a, b)
        elif op == Op.NORM:
            centred = fp32.add(a, _full(self.mean ^ _NEG, n))
            out = fp32.mul(fp32.mul(centred, _full(self.scale, n)), b)
        elif op == Op.SCALE:
            out = fp32.mul(a, _full(self.scale, n))
        elif op == Op.MEAN:
            self.mean = self._scalar(fp32.mul(np.array([tree_sum(a)]), k1[:1])[0])
        elif op in (Op.VAR, Op.RMS):
            centre = np.uint32(0) if op == Op.RMS else self.mean
            centred = fp32.add(a, _full(centre ^ _NEG, n))
            total = tree_sum(fp32.mul(centred, centred))
            variance = fp32.add(fp32.mul(np.array([total]), k1[:1]), k2[:1])
            self.scale = self._scalar(vector_math.rsqrt(variance)[0])
            if op == Op.RMS:
                self.mean = np.uint32(0)
        elif op == Op.MAX:
            scaled = np.where(masked, _NEG_INF, fp32.mul(a, k1))
            self.max = self._scalar(_maximum(scaled))
        elif op == Op.EXP:
            shifted = fp32.add(fp32.mul(a, k1), _full(self.max ^ _NEG, n))
            out = np.where(masked, np.uint32(0), vector_math.exp(shifted)).astype(np.uint32)
            self.scale = self._scalar(vector_math.recip(np.array([tree_sum(out)]))[0])
        elif op in (Op.SILU, Op.GELU):
            if op == Op.SILU:
                z = a ^ _NEG
            else:
                z = fp32.add(fp32.mul(a, a), _full(GELU_G0, n))
                z = fp32.mul(fp32.mul(z, _full(GELU_G1, n)), a)
            gate = vector_math.recip(fp32.add(vector_math.exp(z), _full(_ONE, n)))
            out = fp32.mul(gate, a)
            if command.gated:
                out = fp32.mul(out, b)
        elif op == Op.ROPE:
            x0, x1, c, s = a[0::2], a[1::2], b[0::2], b[1::2]
            out = np.empty(n, dtype=np.uint32)
            out[0::2] = fp32.add(fp32.mul(x0, c), fp32.mul(x1, s) ^ _NEG)
            out[1::2] = fp32.add(fp32.mul(x0, s), fp32.mul(x1, c))
        elif op == Op.RECIP_ABS:
            out = vector_math.recip(fp32.add(fp32.mul(a & ~_NEG, k1), k2))
        elif op == Op.POLY:
            out = fp32.add(fp32.mul(fp32.add(fp32.mul(a, b), k1), b), k2)
        elif op == Op.GAUSS:
            out = vector_math.exp(fp32.mul(fp32.add(fp32.mul(b, k1), fp32.mul(a, a)), k2))
        elif op == Op.GELU_ERF:
            negative = (a & _NEG) != 0
            phi = fp32.add(fp32.mul(b, np.where(negative, k1, k1 ^ _NEG)),
                           np.where(negative, _NEG_ZERO, _ONE).astype(np.uint32))
            out = fp32.mul(a, phi)
        if out is None:
            return np.zeros(0, dtype=np.uint32)
        out = np.asarray(out, dtype=np.uint32)
        self.nonfinite |= _nonfinite(out)
        return out

    def _scalar(self, value):
        value = np.uint32(value)
        self.nonfinite |= _nonfinite([value])
        return value


# ---- Operators as programs ------------------------------------------------------------------
#
# Each operator takes a ``unit`` with a ``run(command, a, b)`` method (a VectorModel, or a
# Recorder that also keeps the stimulus for the RTL) and float32 arrays, and returns the
# result as float32. A pass that reads an earlier pass's result reads it back as the tile would
# from SRAM.

def _f32(x):
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint32)


def _out(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def _k(value):
    return _bits(np.float32(value))


def rmsnorm(unit, x, weight, eps):
    """llama.cpp's ``rms_norm`` then ``mul`` by the weight: x · rsqrt(mean(x²) + ε) · w."""
    n = _f32(x).size
    unit.run(Command(Op.RMS, n, k1=_k(1.0 / n), k2=_k(eps)), _f32(x))
    return _out(unit.run(Command(Op.NORM, n), _f32(x), _f32(weight)))


def layernorm(unit, x, weight, bias, eps):
    """(x − mean) · rsqrt(var + ε) · w + b, the variance centred (two-pass)."""
    n = _f32(x).size
    unit.run(Command(Op.MEAN, n, k1=_k(1.0 / n)), _f32(x))
    unit.run(Command(Op.VAR, n, k1=_k(1.0 / n), k2=_k(eps)), _f32(x))
    y = unit.run(Command(Op.NORM, n), _f32(x), _f32(weight))
    return _out(unit.run(Command(Op.ADD, n), y, _f32(bias)))


def softmax(unit, x, scale=1.0, limit=None):
    """softmax(x · scale) over the first ``limit`` elements, 0 beyond (the causal mask)."""
    n = _f32(x).size
    limit = n if limit is None else limit
    unit.run(Command(Op.MAX, n, k1=_k(scale), limit=limit), _f32(x))
    e = unit.run(Command(Op.EXP, n, k1=_k(scale), limit=limit), _f32(x))
    return _out(unit.run(Command(Op.SCALE, n), e))


def softmax_rows(unit, rows, scale=1.0, limits=None):
    """softmax of each row (a 2-D array), ordered so that the unit overlaps them: row r + 1's
    MAX pass runs while row r's sum is still being reduced, before row r's SCALE pass
    (MAX_0, EXP_0, MAX_1, SCALE_0, EXP_1, MAX_2, SCALE_1, …). Executed in order, this is the
    same as one :func:`softmax` per row."""
    rows = np.asarray(rows, dtype=np.float32)
    count, n = rows.shape
    limits = [n] * count if limits is None else list(limits)
    k1 = _k(scale)
    e = [None] * count
    out = np.empty_like(rows)
    unit.run(Command(Op.MAX, n, k1=k1, limit=limits[0]), _f32(rows[0]))
    e[0] = unit.run(Command(Op.EXP, n, k1=k1, limit=limits[0]), _f32(rows[0]))
    for r in range(1, count + 1):
        if r < count:
            unit.run(Command(Op.MAX, n, k1=k1, limit=limits[r]), _f32(rows[r]))
        out[r - 1] = _out(unit.run(Command(Op.SCALE, n), e[r - 1]))
        if r < count:
            e[r] = unit.run(Command(Op.EXP, n, k1=k1, limit=limits[r]), _f32(rows[r]))
    return out


def silu(unit, x):
    return _out(unit.run(Command(Op.SILU, _f32(x).size), _f32(x)))


def swiglu(unit, gate, up):
    """silu(gate) · up, llama.cpp's ``swiglu`` of the FFN."""
    return _out(unit.run(Command(Op.SILU, _f32(gate).size, gated=True), _f32(gate), _f32(up)))


def gelu(unit, x):
    """GELU, tanh form."""
    return _out(unit.run(Command(Op.GELU, _f32(x).size), _f32(x)))


def gelu_erf(unit, x):
    """GELU, erf form (BERT's exact GELU): x·Φ(x) from erfc(|x|/√2) ≈ s · exp(−x²/2 + Q(s)) with
    s = 1/(|x|/√2 + 2) (:mod:`sim.vector_math`), in nine passes: s; Q by five POLY passes of two
    Horner steps; the exp; its product with s; and Φ from erfc by the sign of x."""
    n = _f32(x).size
    xb = _f32(x)
    s = unit.run(Command(Op.RECIP_ABS, n, k1=vector_math.ERFC_SCALE,
                         k2=vector_math.ERFC_OFFSET), xb)
    p = s
    m = vector_math.ERFC_M
    for i in range(0, len(m), 2):
        p = unit.run(Command(Op.POLY, n, k1=m[i], k2=m[i + 1]), p, s)
    e = unit.run(Command(Op.GAUSS, n, k1=vector_math.ERFC_C, k2=_k(-0.5)), xb, p)
    erfc = unit.run(Command(Op.MUL, n), e, s)
    return _out(unit.run(Command(Op.GELU_ERF, n, k1=_k(0.5)), xb, erfc))


def add(unit, x, y):
    return _out(unit.run(Command(Op.ADD, _f32(x).size), _f32(x), _f32(y)))


def mul(unit, x, y):
    return _out(unit.run(Command(Op.MUL, _f32(x).size), _f32(x), _f32(y)))


def rope_table(position, dims, base):
    """cos/sin table of llama.cpp's ``LLAMA_ROPE_TYPE_NORM`` (rotating adjacent pairs x[2i],
    x[2i+1]), which llama.cpp uses for ``general.architecture = llama`` (SmolLM2): for pair i,
    θ = position · base^(−2i/dims), interleaved (cos θ, sin θ) as float32. The compiler computes
    it in float64 and rounds once."""
    theta = position * base ** (-np.arange(0, dims, 2, dtype=np.float64) / dims)
    table = np.empty(dims, dtype=np.float32)
    table[0::2] = np.cos(theta)
    table[1::2] = np.sin(theta)
    return table


def rope(unit, x, table):
    """RoPE of one head (or several: ``table`` repeated per head) with adjacent pairs."""
    return _out(unit.run(Command(Op.ROPE, _f32(x).size), _f32(x), _f32(table)))


class Recorder:
    """A VectorModel that also records every command with its operands and expected results,
    as the stimulus and the expectation of an RTL run."""

    def __init__(self, model=None):
        self.model = model or VectorModel()
        self.commands = []

    def run(self, command, a, b=None):
        out = self.model.run(command, a, b)
        self.commands.append((command, np.asarray(a, dtype=np.uint32).reshape(-1),
                              None if b is None else np.asarray(b, dtype=np.uint32).reshape(-1),
                              out))
        return out

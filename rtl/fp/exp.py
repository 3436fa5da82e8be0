"""Pipelined binary32 exponential, bit-exact with the golden sequence of sim/vector_math.py
(docs/fp.md)."""

from amaranth.hdl import Cat, Const, Module, Mux, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from sim.vector_math import (EXP_COEFFICIENTS, EXP_HIGH, EXP_LOW, LN2_HIGH, LN2_LOW, LOG2E, ONE,
                             ROUNDER)

from ..stream_rules import assert_stream_rules
from .add import FPAdd, fp_add
from .format import FLOAT32, Pipeline
from .mul import FPMul, fp_mul


__all__ = ["FPExp", "fp_exp"]


_M = FPMul.LATENCY
_A = FPAdd.LATENCY


class FPExp(wiring.Component):
    """``e^x`` in IEEE-754 binary32, bit for bit the sequence of :func:`sim.vector_math.exp`.

    Every ``+`` and ``·`` of that sequence is one :func:`~rtl.fp.add.fp_add` or
    :func:`~rtl.fp.mul.fp_mul` here, in the same order: the clamp of ``x`` to [−104, 89]; the
    range reduction ``k = round(x·log2 e)`` (by adding and subtracting 1.5·2^23) and
    ``r = (x − k·ln2_high) − k·ln2_low``; ``e^r = ((P(r)·r²) + r) + 1`` with ``P`` by Horner's
    rule; the scaling by the two exact powers of two ``2^⌊k/2⌋`` and ``2^(k − ⌊k/2⌋)``, made from
    the bits of ``k``. Operations that do not depend on each other run side by side
    (``k·ln2_low`` beside ``k·ln2_high``, ``r·r`` beside Horner's chain); the values that wait
    across the chain wait in RAM (:meth:`~rtl.fp.format.Pipeline.delay_memory`).

    One result per cycle, :attr:`LATENCY` cycles after the operand is taken. NaN gives the
    canonical NaN 0x7FC00000, −∞ gives +0 and +∞ gives +∞ (through the clamp).

    Members
    -------
    i : ``In(stream.Signature(FLOAT32))``
        The operands ``x``.
    o : ``Out(stream.Signature(FLOAT32))``
        ``e^x``, in order.
    """

    #: Cycles from taking the operand to offering the result: 2 (take, clamp), then the chain
    #: x·log2e, +rounder, −rounder, k·ln2_high, −, −, five Horner steps (· and +), ·r², +r, +1,
    #: ·2^⌊k/2⌋, ·2^(k−⌊k/2⌋).
    LATENCY = 2 + 10 * _M + 11 * _A

    i: In(stream.Signature(FLOAT32))
    o: Out(stream.Signature(FLOAT32))

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o, self.LATENCY)
        m.d.comb += self.o.payload.eq(fp_exp(p, platform, self.i.payload))

        assert_stream_rules(m, self.o, "FP exp output")
        return m


def _key(bits):
    """An unsigned key in the order of the binary32 values (NaN aside): negative values
    inverted below the positive ones."""
    bits = Value.cast(bits)
    return Mux(bits[31], ~bits, bits | Const(1 << 31, 32))


def _const_key(bits):
    return (~bits & 0xFFFFFFFF) if bits >> 31 else bits | (1 << 31)


def _negated(value):
    """``−value``: the sign bit flipped (exact, as ``^ 0x80000000`` in the golden model)."""
    value = Value.cast(value)
    return Cat(value[:31], ~value[31])


def _power_of_two(field):
    """binary32 ``2^(field − 127)`` from an 8-bit exponent field."""
    return Cat(Const(0, 23), field, Const(0, 1))


def fp_exp(p, platform, x, name="exp"):
    """The stages of ``e^x`` (a binary32 value) in pipeline ``p``: the registered result,
    :attr:`FPExp.LATENCY` stages later. ``name`` prefixes the registers, memories and DSPs of
    the operations inside (each op is named ``{name}_{op}``), so a pipeline may hold several."""
    # 1: take the operand. 2: the clamp, by an integer key compare (exact, as min/max of
    # non-NaN values); a NaN passes unchanged, and every operation after it turns it into the
    # canonical NaN, which is what the golden model's override gives.
    x = p.stage(x, f"{name}_s1_x", shape=FLOAT32)
    bits = x.as_value()
    nan = (x.exponent == 0xFF) & (x.fraction != 0)
    below = _key(bits) < _const_key(EXP_LOW)
    above = _key(bits) > _const_key(EXP_HIGH)
    c = p.stage(Mux(nan, bits, Mux(below, EXP_LOW, Mux(above, EXP_HIGH, bits))),
                f"{name}_s2_c", shape=32)
    now = 2

    def mul(a, b, op):
        return fp_mul(p, platform, a, b, f"{name}_{op}")

    def add(a, b, op):
        return fp_add(p, a, b, f"{name}_{op}")

    def const(bits):
        return Const(bits, 32)

    # k = round(c·log2 e): adding 1.5·2^23 leaves k in the low fraction bits, subtracting it
    # again gives k as a binary32 integer.
    t = mul(c, const(LOG2E), "t")
    shifted = add(t, const(ROUNDER), "shifted")
    now += _M + _A
    # |k| ≤ 150, so 1.5·2^23 + k borrows nothing from above bit 9: k is those bits, signed. The
    # two exponent fields of 2^⌊k/2⌋ and 2^(k − ⌊k/2⌋) lie in [52, 191]. (A NaN leaves
    # garbage here, but NaN times anything is NaN.)
    k = shifted[:10].as_signed()
    half = k >> 1
    fields_at = now
    fields = Cat((half + 127)[:8], (k - half + 127)[:8])
    kf = add(shifted, const(ROUNDER | 0x80000000), "kf")
    now += _A

    # r = (c − kf·ln2_high) − kf·ln2_low; the second product waits for the first difference.
    high = mul(kf, const(LN2_HIGH), "kf_high")
    low = mul(kf, const(LN2_LOW), "kf_low")
    now += _M
    r = add(p.delay_memory(c, now - 2, f"{name}_c"), _negated(high), "r_high")
    r = add(r, _negated(p.delay_memory(low, _A, f"{name}_kf_low")), "r")
    now += 2 * _A

    # Horner's rule on r, each step's r waiting in RAM; r·r beside the chain.
    r_at = now
    square = mul(r, r, "r_square")
    y = const(EXP_COEFFICIENTS[0])
    r_tap = r
    for step, coefficient in enumerate(EXP_COEFFICIENTS[1:]):
        if step:
            r_tap = p.delay_memory(r_tap, _M + _A, f"{name}_r{step}")
        y = add(mul(y, r_tap, f"horner{step}_mul"), const(coefficient), f"horner{step}_add")
        now += _M + _A

    # ((y·r²) + r) + 1.
    y = mul(y, p.delay_memory(square, now - r_at - _M, f"{name}_r_square"), "y_square")
    now += _M
    y = add(y, p.delay_memory(r_tap, now - (r_at + 4 * (_M + _A)), f"{name}_r5"), "y_r")
    y = add(y, const(ONE), "y_one")
    now += 2 * _A

    # The scaling: two exact powers of two, so that a result below 2^-126 is rounded once.
    fields = p.delay_memory(fields, now - fields_at, f"{name}_fields", shape=16)
    y = mul(y, _power_of_two(fields[:8]), "scale_half")
    y = mul(y, _power_of_two(p.delay_memory(fields[8:], _M, f"{name}_field_rest", shape=8)),
            "scale_rest")
    now += 2 * _M
    assert now == FPExp.LATENCY
    return y

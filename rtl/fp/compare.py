"""binary32 comparison and maximum: the running max of softmax (docs/fp.md)."""

from amaranth.hdl import Cat, Const, Module, Mux
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..stream_rules import assert_stream_rules
from .format import CANONICAL_NAN32, FLOAT32, OPERANDS, Pipeline


__all__ = ["FPCompare", "COMPARISON"]


#: The result of comparing ``a`` with ``b``.
COMPARISON = data.StructLayout({"max": FLOAT32, "less": 1, "equal": 1, "unordered": 1})


class FPCompare(wiring.Component):
    """IEEE-754 comparison of two binary32 values, and their maximum.

    ``less`` and ``equal`` are IEEE's ordered predicates: −0 equals +0, and both are false when an
    operand is NaN (``unordered``). ``max`` is IEEE 754-2019 *maximum*: NaN if either operand
    is (the canonical 0x7FC00000), and +0 as the larger of ±0, so it does not depend on the
    operand order.

    Members
    -------
    i : ``In(stream.Signature(OPERANDS))``
        The operands ``a`` and ``b``.
    o : ``Out(stream.Signature(COMPARISON))``
        ``max``, ``less`` (a < b), ``equal`` (a = b) and ``unordered``, :attr:`LATENCY` cycles
        later.
    """

    #: Cycles from taking the operands to offering the result.
    LATENCY = 2

    i: In(stream.Signature(OPERANDS))
    o: Out(stream.Signature(COMPARISON))

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o, self.LATENCY)

        a = p.stage(self.i.payload.a, "s1_a")
        b = p.stage(self.i.payload.b, "s1_b")

        def key(x):
            # Sign-magnitude to an unsigned key in the order of the values: negative values
            # inverted below the positive ones. It orders −0 just below +0, as maximum wants.
            bits = x.as_value()
            return Mux(x.sign, ~bits, bits | Const(1 << 31, 32))

        def is_nan(x):
            return (x.exponent == 0xFF) & (x.fraction != 0)

        unordered = is_nan(a) | is_nan(b)
        both_zero = (a.as_value()[:31] == 0) & (b.as_value()[:31] == 0)
        a_below = key(a) < key(b)
        m.d.comb += self.o.payload.eq(p.stage(Cat(
            Mux(unordered, CANONICAL_NAN32, Mux(a_below, b.as_value(), a.as_value())),
            ~unordered & a_below & ~both_zero,
            ~unordered & ((a.as_value() == b.as_value()) | both_zero),
            unordered), "s2_result", shape=COMPARISON))

        assert_stream_rules(m, self.o, "FP compare output")
        return m

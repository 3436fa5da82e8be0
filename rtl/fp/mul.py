"""Pipelined binary32 multiplier, bit-exact with NumPy float32 (docs/fp.md)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..dsp import registered_multiply
from ..stream_rules import assert_stream_rules
from .format import (CANONICAL_NAN32, FLOAT32, OPERANDS, Pipeline, leading_zeros, round_float32,
                     significand_and_exponent)


__all__ = ["FPMul", "fp_mul"]


class FPMul(wiring.Component):
    """``a · b`` in IEEE-754 binary32, round to nearest even, subnormals in full.

    One result per cycle, :attr:`LATENCY` cycles after the operands are taken (with no
    backpressure). The 24 × 24-bit product of the significands is four 12 × 12-bit products
    (one fully registered DSP multiplier each on ECP5, :func:`~rtl.dsp.registered_multiply`)
    summed in two registered additions; its leading
    zeros (non-zero only with a subnormal operand) and the exponents decide one right shift of
    the product into a 96-bit window, which both normalises and, for a result below 2^-126,
    denormalises it with every dropped bit kept for the sticky bit.

    Special values follow IEEE 754: ∞ · 0 and any NaN operand give the canonical quiet NaN
    0x7FC00000; the sign of a zero or infinite product is the XOR of the signs.

    Members
    -------
    i : ``In(stream.Signature(OPERANDS))``
        The operands ``a`` and ``b``, each a :data:`~rtl.fp.format.FLOAT32`.
    o : ``Out(stream.Signature(FLOAT32))``
        The products, in order.
    """

    #: Cycles from taking the operands to offering the product.
    LATENCY = 13

    i: In(stream.Signature(OPERANDS))
    o: Out(stream.Signature(FLOAT32))

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o, self.LATENCY)
        m.d.comb += self.o.payload.eq(fp_mul(p, platform, self.i.payload.a, self.i.payload.b))

        assert_stream_rules(m, self.o, "FP multiplier output")
        return m


def fp_mul(p, platform, a, b, name="mul"):
    """The stages of ``a · b`` (binary32 values) in pipeline ``p``: the registered product,
    :attr:`FPMul.LATENCY` stages later. ``name`` prefixes the registers and the DSPs."""
    with p.scope(name):

        # 1: take the operands.
        a = p.stage(a, "s1_a", shape=FLOAT32)
        b = p.stage(b, "s1_b", shape=FLOAT32)

        # 2: significands (no hidden bit for a subnormal, whose exponent is that of 2^-126)
        # and the exponent of the product with the leading one at bit 47: bias 127 once, and
        # one more because a product of two normal significands has its leading one at bit 46
        # or 47 and the count below is of zeros above bit 47.

        def kind(x):
            top = x.exponent == 0xFF
            return top & (x.fraction != 0), top & (x.fraction == 0), x.as_value()[:31] == 0

        a_significand, a_exponent = significand_and_exponent(a)
        b_significand, b_exponent = significand_and_exponent(b)
        a_nan, a_inf, a_zero = kind(a)
        b_nan, b_inf, b_zero = kind(b)
        s2_exponent = p.stage(a_exponent + b_exponent - 126, "s2_exponent", shape=signed(11))
        s2_sign = p.stage(a.sign ^ b.sign, "s2_sign")
        s2_nan = p.stage(a_nan | b_nan | (a_inf & b_zero) | (a_zero & b_inf), "s2_nan")
        s2_inf = p.stage(a_inf | b_inf, "s2_inf")

        # 2–4: four 12 × 12 products, each one DSP multiplier with its input, pipeline and
        # output registers as stages 2, 3 and 4.
        products = {}
        for x_half, x in (("l", a_significand[:12]), ("h", a_significand[12:])):
            for y_half, y in (("l", b_significand[:12]), ("h", b_significand[12:])):
                product = Signal(24, name=f"{name}_s4_{x_half}{y_half}")
                registered_multiply(p.m, platform, x, y, product, signed=False,
                                    enable=p.advance, name=f"{name}_{x_half}{y_half}")
                products[x_half + y_half] = product

        def carry(stage, names_values):
            return {name: p.stage(value, f"s{stage}_{name}") for name, value in names_values}

        # The right shift a result below 2^-126 needs (stage 8), ready long before it is used.
        s3 = carry(3, [("exponent", s2_exponent), ("sign", s2_sign), ("nan", s2_nan),
                       ("inf", s2_inf)])
        s3["tiny_shift"] = p.stage(Mux(s2_exponent < -47, 96, 49 - s2_exponent), "s3_tiny_shift",
                                   shape=range(97))
        s4 = carry(4, list(s3.items()))

        # 5: the cross products meet; the outer two do not overlap and need no adder.
        s5 = carry(5, list(s4.items()))
        s5_middle = p.stage(products["lh"] + products["hl"], "s5_middle", shape=25)
        s5_outer = p.stage(Cat(products["ll"], products["hh"]), "s5_outer", shape=48)

        # 6: the full product.
        s6 = carry(6, list(s5.items()))
        s6_product = p.stage(s5_outer + (s5_middle << 12), "s6_product", shape=48)

        # 7: leading zeros of the product.
        s7 = carry(7, list(s6.items()))
        s7_product = p.stage(s6_product, "s7_product")
        s7_zeros = p.stage(leading_zeros(s6_product), "s7_zeros", shape=range(49))

        # 8: the shift. With the product in bits 96–143 of a 144-bit word, a right shift by
        # 48 − zeros puts its leading one at bit 95, the top of the 96 bits kept: a normal
        # result, exponent s2 − zeros. If that exponent would be below 1, the shift is the one
        # that gives exponent 1 instead, and the result is subnormal. Beyond 96 places nothing
        # but sticky bits remain. The comparison and the values it chooses between are
        # computed side by side.
        normal = s7["exponent"] > s7_zeros
        s8 = carry(8, [("sign", s7["sign"]), ("nan", s7["nan"]), ("inf", s7["inf"])])
        s8_product = p.stage(s7_product, "s8_product")
        s8["exponent"] = p.stage(Mux(normal, s7["exponent"] - s7_zeros, 1), "s8_exponent",
                                 shape=signed(11))
        s8_shift = p.stage(Mux(normal, 48 - s7_zeros, s7["tiny_shift"]), "s8_shift",
                           shape=range(97))

        # 9, 10: shift, by multiples of 16 and then by the rest: one 7-level shifter of 144
        # bits was the longest path. Nothing falls off the 144 bits in the first step.
        s9 = carry(9, list(s8.items()))
        s9_window = p.stage(Cat(Const(0, 96), s8_product) >> (s8_shift[4:] << 4), "s9_window",
                            shape=144)
        s9_fine = p.stage(s8_shift[:4], "s9_fine")
        s10 = carry(10, list(s9.items()))
        s10_window = p.stage((s9_window >> s9_fine)[:96], "s10_window")

        # 11: significand, guard and sticky.
        s11 = carry(11, list(s10.items()))
        s11_significand = p.stage(s10_window[72:], "s11_significand", shape=24)
        s11_guard = p.stage(s10_window[71], "s11_guard")
        s11_sticky = p.stage(s10_window[:71].any(), "s11_sticky")

        # 12, 13: round, pack.
        inf = Cat(Const(0, 23), Const(0xFF, 8), s11["sign"])
        special = (s11["nan"] | s11["inf"], Mux(s11["nan"], CANONICAL_NAN32, inf))
        result = round_float32(p, "s12", s11["sign"], s11["exponent"], s11_significand,
                               s11_guard, s11_sticky, special)
        return p.stage(result, "s13_result", shape=32)

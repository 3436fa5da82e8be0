"""Pipelined binary32 adder, bit-exact with NumPy float32 (docs/fp.md)."""

from amaranth.hdl import Cat, Const, Module, Mux, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..stream_rules import assert_stream_rules
from .format import (CANONICAL_NAN32, FLOAT32, OPERANDS, Pipeline, leading_zeros, round_float32,
                     significand_and_exponent)


__all__ = ["FPAdd", "fp_add"]


class FPAdd(wiring.Component):
    """``a + b`` in IEEE-754 binary32, round to nearest even, subnormals in full.

    One result per cycle, :attr:`LATENCY` cycles after the operands are taken (with no
    backpressure). The stages: take the operands; order them by magnitude; align the smaller
    one (guard, round and sticky bits are enough for a correctly rounded sum); add or subtract;
    count leading zeros; choose the normalising shift, limited so that a result below 2^-126
    stays subnormal; shift; round; pack.

    Special values follow IEEE 754: an exact zero sum is +0 unless both operands are −0; ∞ − ∞
    and any NaN operand give the canonical quiet NaN 0x7FC00000; overflow gives ±∞.

    Members
    -------
    i : ``In(stream.Signature(OPERANDS))``
        The operands ``a`` and ``b``, each a :data:`~rtl.fp.format.FLOAT32`.
    o : ``Out(stream.Signature(FLOAT32))``
        The sums, in order.
    """

    #: Cycles from taking the operands to offering the sum.
    LATENCY = 10

    i: In(stream.Signature(OPERANDS))
    o: Out(stream.Signature(FLOAT32))

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o, self.LATENCY)
        m.d.comb += self.o.payload.eq(fp_add(p, self.i.payload.a, self.i.payload.b))

        assert_stream_rules(m, self.o, "FP adder output")
        return m


def fp_add(p, a, b, name="add"):
    """The stages of ``a + b`` (binary32 values) in pipeline ``p``: the registered sum,
    :attr:`FPAdd.LATENCY` stages later. ``name`` prefixes the registers."""
    with p.scope(name):

        # 1: take the operands.
        a = p.stage(a, "s1_a", shape=FLOAT32)
        b = p.stage(b, "s1_b", shape=FLOAT32)

        # 2: order by magnitude, so that the difference of the significands is never negative
        # and the larger operand's exponent and sign are the result's before normalising.
        a_significand, a_exponent = significand_and_exponent(a)
        b_significand, b_exponent = significand_and_exponent(b)
        swap = a.as_value()[:31] < b.as_value()[:31]
        # The alignment distance does not need the magnitude order, only the exponents': both
        # differences, in parallel with the comparison (stage 3 picks and clamps).
        s2_a_minus_b = p.stage(a_exponent - b_exponent, "s2_a_minus_b")
        s2_b_minus_a = p.stage((b_exponent - a_exponent)[:8], "s2_b_minus_a")

        def is_nan(x):
            return (x.exponent == 0xFF) & (x.fraction != 0)

        def is_inf(x):
            return (x.exponent == 0xFF) & (x.fraction == 0)

        nan = is_nan(a) | is_nan(b) | (is_inf(a) & is_inf(b) & (a.sign != b.sign))
        s2_nan = p.stage(nan, "s2_nan")
        s2_inf = p.stage(is_inf(a) | is_inf(b), "s2_inf")
        s2_inf_sign = p.stage(Mux(is_inf(a), a.sign, b.sign), "s2_inf_sign")
        s2_sign = p.stage(Mux(swap, b.sign, a.sign), "s2_sign")
        s2_subtract = p.stage(a.sign ^ b.sign, "s2_subtract")
        s2_exponent = p.stage(Mux(swap, b_exponent, a_exponent), "s2_exponent")
        s2_large = p.stage(Mux(swap, b_significand, a_significand), "s2_large")
        s2_small = p.stage(Mux(swap, a_significand, b_significand), "s2_small")

        # 3: the distance, clamped: past 27 places everything of the smaller operand is sticky.
        def clamped(difference):
            # difference > 27 from its bits: a LUT, where `>` would be a second carry chain.
            beyond = difference[5:].any() | (difference[4] & difference[3] & difference[2])
            return Mux(beyond, 27, difference[:5])

        distance = Mux(s2_a_minus_b < 0, clamped(s2_b_minus_a), clamped(s2_a_minus_b[:8]))
        flags = [(s2_nan, "nan"), (s2_inf, "inf"), (s2_inf_sign, "inf_sign"), (s2_sign, "sign"),
                 (s2_subtract, "subtract"), (s2_exponent, "exponent"), (s2_large, "large")]
        s3 = {name: p.stage(value, f"s3_{name}") for value, name in flags}
        s3_small = p.stage(s2_small, "s3_small")
        s3_small_zeros = p.stage(leading_zeros(s2_small[::-1]), "s3_small_zeros",
                                  shape=range(25))
        s3_distance = p.stage(distance, "s3_distance", shape=range(28))
        # How far left a result may shift before it would go below exponent 1; ready early so
        # that stage 7 only compares.
        s3["headroom"] = p.stage(s2_exponent - 1, "s3_headroom", shape=8)

        # 4: align. The smaller significand sits 26 places up in a 50-bit word, so that after
        # the shift bits 23–49 are its 24 bits plus guard, round and sticky positions and bits
        # 0–22 are what falls below them.
        s4 = {name: p.stage(value, f"s4_{name}") for name, value in s3.items()}
        s4_aligned = p.stage((Cat(Const(0, 26), s3_small) >> s3_distance)[23:], "s4_aligned",
                             shape=27)
        # The sticky bit, from the trailing zeros rather than an OR of what the shift drops, so
        # that the adder after it does not wait for an OR-tree: significand bit k falls below
        # the sticky position when k < distance − 3.
        s4_sticky = p.stage(s3_small_zeros + 3 < s3_distance, "s4_sticky")

        # 5: add or subtract, 3 bits below the significands and one carry bit above.
        large = Cat(Const(0, 3), s4["large"])
        small = Cat(s4_aligned[0] | s4_sticky, s4_aligned[1:])
        total = Mux(s4["subtract"], large - small, large + small)[:28]
        s5 = {name: p.stage(s4[name], f"s5_{name}")
              for name in ("nan", "inf", "inf_sign", "sign", "subtract", "exponent", "headroom")}
        s5_total = p.stage(total, "s5_total", shape=28)

        # 6: leading zeros of the 27 bits below the carry.
        s6 = {name: p.stage(s5[name], f"s6_{name}") for name in s5}
        s6_total = p.stage(s5_total, "s6_total")
        s6_zeros = p.stage(leading_zeros(s5_total[:27]), "s6_zeros", shape=range(28))
        s6_zero = p.stage(s5_total == 0, "s6_zero")

        # 7: the shift. A carry shifts right by one (the dropped bit joins the sticky bit);
        # otherwise shift left to put the leading one at bit 26, but never below exponent 1:
        # what does not reach bit 26 then is a subnormal.
        # The comparison and both exponents it chooses between are computed side by side.
        limited = s6["headroom"] < s6_zeros
        left = Mux(limited, s6["headroom"], s6_zeros)
        exponent = Mux(s6_total[27], s6["exponent"] + 1,
                       Mux(limited, 1, s6["exponent"] - s6_zeros))
        # An exact zero difference is +0 in round-to-nearest; a zero sum keeps the sign both
        # operands share.
        sign = Mux(s6_zero & s6["subtract"], 0, s6["sign"])
        s7 = {name: p.stage(s6[name], f"s7_{name}") for name in ("nan", "inf", "inf_sign")}
        s7_sign = p.stage(sign, "s7_sign")
        s7_exponent = p.stage(exponent, "s7_exponent", shape=signed(10))
        s7_carry = p.stage(s6_total[27], "s7_carry")
        s7_total = p.stage(s6_total, "s7_total")
        s7_left = p.stage(Mux(s6_total[27], 0, left), "s7_left", shape=range(28))

        # 8: normalise into 27 bits: significand in 3–26, guard 2, the rest sticky.
        shifted = (s7_total[:27] << s7_left)[:27]
        normalised = Mux(s7_carry, Cat(s7_total[0] | s7_total[1], s7_total[2:28]), shifted)
        s8 = {name: p.stage(s7[name], f"s8_{name}") for name in s7}
        s8_sign = p.stage(s7_sign, "s8_sign")
        s8_exponent = p.stage(s7_exponent, "s8_exponent")
        s8_normalised = p.stage(normalised, "s8_normalised", shape=27)

        # 9, 10: round, pack.
        inf = Cat(Const(0, 23), Const(0xFF, 8), s8["inf_sign"])
        special = (s8["nan"] | s8["inf"], Mux(s8["nan"], CANONICAL_NAN32, inf))
        result = round_float32(p, "s9", s8_sign, s8_exponent, s8_normalised[3:27],
                               s8_normalised[2], s8_normalised[:2].any(), special)
        return p.stage(result, "s10_result", shape=32)

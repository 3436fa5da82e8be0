"""Iterative binary32 divider, correctly rounded, bit-exact with NumPy float32 (docs/quantizer.md)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..stream_rules import assert_stream_rules
from .format import CANONICAL_NAN32, FLOAT32, OPERANDS, Pipeline, leading_zeros, round_float32


__all__ = ["FPDiv"]


#: The number of quotient bits the restoring loop produces: weights 2^0 down to 2^-25, that is
#: 24 significand bits and a guard bit whichever of the two top positions the leading one takes.
_QUOTIENT_BITS = 26

#: What the front end hands the loop: normalised significands (bit 23 set unless zero), the
#: biased exponent of a quotient in [1, 2), the sign, and a special result found early.
_LOOP_INPUT = data.StructLayout({
    "dividend": 24, "divisor": 24, "exponent": signed(11), "sign": 1,
    "special": 1, "special_bits": 32,
})

#: What the loop hands the back end.
_LOOP_OUTPUT = data.StructLayout({
    "quotient": _QUOTIENT_BITS, "remainder": 25, "exponent": signed(11), "sign": 1,
    "special": 1, "special_bits": 32,
})


class FPDiv(wiring.Component):
    """``a / b`` in IEEE-754 binary32, round to nearest even, subnormals in full.

    A restoring divider producing one quotient bit per cycle on normalised significands,
    between a pipelined front end (operand classes, leading-zero count and normalisation of
    subnormal operands) and a pipelined back end (denormalisation of a result below 2^-126,
    rounding and packing, shared with the adder and the multiplier). The loop holds one
    division at a time and takes the next operands in the cycle it hands its result on, so the
    unit gives **one result every** :attr:`INTERVAL` **cycles**; the front and back ends hold
    up to three and six more operations, so nothing is lost under backpressure.

    Special values follow IEEE 754: ``x / 0`` = ±∞ for ``x`` ≠ 0, ``x / ∞`` = ±0 for finite
    ``x``, and ``0 / 0``, ``∞ / ∞`` and any NaN operand give the canonical quiet NaN
    0x7FC00000; every other sign is the XOR of the operands' signs.

    Members
    -------
    i : ``In(stream.Signature(OPERANDS))``
        Dividend ``a`` and divisor ``b``, each a :data:`~rtl.fp.format.FLOAT32`.
    o : ``Out(stream.Signature(FLOAT32))``
        The quotients, in order.
    """

    #: Cycles from taking the operands to offering the quotient, when the loop is free.
    LATENCY = 36
    #: Cycles between results at full rate (operands always offered, quotients always taken).
    INTERVAL = 27

    i: In(stream.Signature(OPERANDS))
    o: Out(stream.Signature(FLOAT32))

    def elaborate(self, platform):
        m = Module()
        to_loop = stream.Signature(_LOOP_INPUT).create(path=("to_loop",))
        from_loop = stream.Signature(_LOOP_OUTPUT).create(path=("from_loop",))

        # ---- Front end: three pipelined stages ------------------------------------------
        f = Pipeline(m, self.i, to_loop, 3)
        a = f.stage(self.i.payload.a, "f1_a")
        b = f.stage(self.i.payload.b, "f1_b")

        # 2: classes, the special result, significands and their leading zeros. A subnormal
        # has no hidden bit and the exponent of 2^-126.
        def parts(x):
            normal = x.exponent != 0
            significand = Cat(x.fraction, normal)
            top = x.exponent == 0xFF
            kinds = (top & (x.fraction != 0), top & (x.fraction == 0),
                     x.as_value()[:31] == 0)
            return significand, Mux(normal, x.exponent, 1), kinds

        a_significand, a_exponent, (a_nan, a_inf, a_zero) = parts(a)
        b_significand, b_exponent, (b_nan, b_inf, b_zero) = parts(b)
        sign = a.sign ^ b.sign
        nan = a_nan | b_nan | (a_zero & b_zero) | (a_inf & b_inf)
        infinite = a_inf | b_zero
        zero = a_zero | b_inf
        special_bits = Mux(nan, CANONICAL_NAN32,
                           Cat(Const(0, 23), Mux(infinite, 0xFF, 0), sign))
        f2_special = f.stage(nan | infinite | zero, "f2_special")
        f2_special_bits = f.stage(special_bits, "f2_special_bits", shape=32)
        f2_sign = f.stage(sign, "f2_sign")
        f2_a = f.stage(a_significand, "f2_a_significand")
        f2_b = f.stage(b_significand, "f2_b_significand")
        f2_a_zeros = f.stage(leading_zeros(a_significand), "f2_a_zeros", shape=range(25))
        f2_b_zeros = f.stage(leading_zeros(b_significand), "f2_b_zeros", shape=range(25))
        f2_a_exponent = f.stage(a_exponent, "f2_a_exponent")
        f2_b_exponent = f.stage(b_exponent, "f2_b_exponent")

        # 3: normalise; the biased exponent of the quotient of two significands in [1, 2).
        f3 = {
            "dividend": f.stage((f2_a << f2_a_zeros)[:24], "f3_dividend"),
            "divisor": f.stage((f2_b << f2_b_zeros)[:24], "f3_divisor"),
            "exponent": f.stage((f2_a_exponent - f2_a_zeros) - (f2_b_exponent - f2_b_zeros)
                                + 127, "f3_exponent", shape=signed(11)),
            "sign": f.stage(f2_sign, "f3_sign"),
            "special": f.stage(f2_special, "f3_special"),
            "special_bits": f.stage(f2_special_bits, "f3_special_bits"),
        }
        m.d.comb += [getattr(to_loop.payload, name).eq(value) for name, value in f3.items()]

        # ---- The loop: restoring division, one quotient bit per cycle --------------------
        # The partial remainder stays below twice the divisor (< 2^25); each cycle subtracts
        # the divisor, keeps the difference if it is not negative, and shifts left.
        remainder = Signal(25, reset_less=True)
        divisor = Signal(24, reset_less=True)
        quotient = Signal(_QUOTIENT_BITS, reset_less=True)
        carried = Signal(data.StructLayout({"exponent": signed(11), "sign": 1, "special": 1,
                                            "special_bits": 32}), reset_less=True)
        count = Signal(range(_QUOTIENT_BITS))
        busy = Signal()
        done = Signal()

        difference = Signal(signed(26))
        m.d.comb += difference.eq(remainder - divisor)
        fits = ~difference[-1]

        m.d.comb += [
            to_loop.ready.eq(~busy & (~done | from_loop.ready)),
            from_loop.valid.eq(done),
            from_loop.payload.quotient.eq(quotient),
            from_loop.payload.remainder.eq(remainder),
            from_loop.payload.exponent.eq(carried.exponent),
            from_loop.payload.sign.eq(carried.sign),
            from_loop.payload.special.eq(carried.special),
            from_loop.payload.special_bits.eq(carried.special_bits),
        ]
        with m.If(to_loop.valid & to_loop.ready):
            m.d.sync += [
                remainder.eq(to_loop.payload.dividend),
                divisor.eq(to_loop.payload.divisor),
                quotient.eq(0),
                carried.exponent.eq(to_loop.payload.exponent),
                carried.sign.eq(to_loop.payload.sign),
                carried.special.eq(to_loop.payload.special),
                carried.special_bits.eq(to_loop.payload.special_bits),
                count.eq(_QUOTIENT_BITS - 1),
                busy.eq(1),
                done.eq(0),
            ]
        with m.Elif(busy):
            m.d.sync += [
                remainder.eq(Mux(fits, difference[:25], remainder) << 1),
                quotient.eq(Cat(fits, quotient[:-1])),
                count.eq(count - 1),
            ]
            with m.If(count == 0):
                m.d.sync += [busy.eq(0), done.eq(1)]
        with m.Elif(from_loop.ready):
            m.d.sync += done.eq(0)

        # ---- Back end: six pipelined stages ----------------------------------------------
        p = Pipeline(m, from_loop, self.o, 6)
        loop = from_loop.payload

        # 1: the quotient lies in (1/2, 2): bring its leading one to bit 25 (one place at
        # most), so the significand is bits 2–25 and the guard bit is bit 1. The remainder
        # says whether anything is left below the last bit.
        top = loop.quotient[-1]
        b1_value = p.stage(Mux(top, loop.quotient, loop.quotient << 1), "b1_value",
                           shape=_QUOTIENT_BITS)
        b1_exponent = p.stage(loop.exponent - ~top, "b1_exponent", shape=signed(11))
        b1_rest = p.stage(loop.remainder != 0, "b1_rest")
        b1 = {name: p.stage(getattr(loop, name), f"b1_{name}")
              for name in ("sign", "special", "special_bits")}

        # 2: a result below 2^-126 is shifted right to exponent 1 (a subnormal); past 27
        # places only sticky bits remain.
        normal = b1_exponent >= 1
        b2_value = p.stage(b1_value, "b2_value")
        b2_rest = p.stage(b1_rest, "b2_rest")
        b2_shift = p.stage(Mux(normal, 0, Mux(b1_exponent < -26, 27, 1 - b1_exponent)),
                           "b2_shift", shape=range(28))
        b2_exponent = p.stage(Mux(normal, b1_exponent, 1), "b2_exponent", shape=signed(11))
        b2 = {name: p.stage(value, f"b2_{name}") for name, value in b1.items()}

        # 3: the shift, into a window that keeps what falls off for the sticky bit.
        b3_window = p.stage(Cat(Const(0, 27), b2_value) >> b2_shift, "b3_window",
                            shape=27 + _QUOTIENT_BITS)
        b3_rest = p.stage(b2_rest, "b3_rest")
        b3_exponent = p.stage(b2_exponent, "b3_exponent")
        b3 = {name: p.stage(value, f"b3_{name}") for name, value in b2.items()}

        # 4: significand, guard and sticky.
        b4_significand = p.stage(b3_window[29:], "b4_significand", shape=24)
        b4_guard = p.stage(b3_window[28], "b4_guard")
        b4_sticky = p.stage(b3_window[:28].any() | b3_rest, "b4_sticky")
        b4_exponent = p.stage(b3_exponent, "b4_exponent")
        b4 = {name: p.stage(value, f"b4_{name}") for name, value in b3.items()}

        # 5, 6: round, pack.
        result = round_float32(p, "b5", b4["sign"], b4_exponent, b4_significand, b4_guard,
                               b4_sticky, (b4["special"], b4["special_bits"]))
        m.d.comb += self.o.payload.eq(p.stage(result, "b6_result", shape=32))

        assert_stream_rules(m, self.o, "FP divider output")
        return m

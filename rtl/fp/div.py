"""Iterative binary32 divider, correctly rounded, bit-exact with NumPy (docs/quantizer.md)."""

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
    up to six and seven more operations, so nothing is lost under backpressure.

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
    LATENCY = 41
    #: Cycles between results at full rate (operands always offered, quotients always taken).
    INTERVAL = 27

    i: In(stream.Signature(OPERANDS))
    o: Out(stream.Signature(FLOAT32))

    def elaborate(self, platform):
        m = Module()
        to_loop = stream.Signature(_LOOP_INPUT).create(path=("to_loop",))
        from_loop = stream.Signature(_LOOP_OUTPUT).create(path=("from_loop",))

        # ---- Front end: six pipelined stages --------------------------------------------
        # Normalising a subnormal operand takes a leading-zero count and a shift; each is
        # split in two (whole bytes, then the bits within the top byte) so that no stage holds
        # more than a few levels of logic. These stages cost latency, not throughput.
        f = Pipeline(m, self.i, to_loop, 6)
        a = f.stage(self.i.payload.a, "f1_a")
        b = f.stage(self.i.payload.b, "f1_b")

        def carry(stage, values):
            return {name: f.stage(value, f"f{stage}_{name}") for name, value in values.items()}

        # 2: the operands' classes; significands (a subnormal has no hidden bit and the
        # exponent of 2^-126); the whole bytes of leading zeros; the exponent of the quotient
        # before normalisation.
        def parts(x):
            normal = x.exponent != 0
            significand = Cat(x.fraction, normal)
            top = x.exponent == 0xFF
            kinds = (top & (x.fraction != 0), top & (x.fraction == 0),
                     x.as_value()[:31] == 0)
            return significand, kinds

        def zero_bytes(significand):
            return Mux(significand[16:] != 0, 0, Mux(significand[8:16] != 0, 1, 2))

        a_significand, a_kinds = parts(a)
        b_significand, b_kinds = parts(b)
        f2 = carry(2, {
            "sign": a.sign ^ b.sign,
            **{f"a_{kind}": flag for kind, flag in zip(("nan", "inf", "zero"), a_kinds)},
            **{f"b_{kind}": flag for kind, flag in zip(("nan", "inf", "zero"), b_kinds)},
            # From the exponent fields, with a subnormal's 1 instead of 0 added in stage 3.
            "base": (a.exponent - b.exponent + 127).as_signed()[:10].as_signed(),
            "a_subnormal": a.exponent == 0, "b_subnormal": b.exponent == 0,
            "a": a_significand, "b": b_significand,
            "a_bytes": zero_bytes(a_significand), "b_bytes": zero_bytes(b_significand),
        })

        # 3: shift by whole bytes; the special result.
        def by_bytes(significand, count):
            return Mux(count == 0, significand,
                       Mux(count == 1, significand << 8, significand << 16))[:24]

        nan = (f2["a_nan"] | f2["b_nan"] | (f2["a_zero"] & f2["b_zero"])
               | (f2["a_inf"] & f2["b_inf"]))
        infinite = f2["a_inf"] | f2["b_zero"]
        zero = f2["a_zero"] | f2["b_inf"]
        f3 = carry(3, {
            "special": nan | infinite | zero,
            "special_bits": Mux(nan, CANONICAL_NAN32,
                                Cat(Const(0, 23), Mux(infinite, 0xFF, 0), f2["sign"])),
            "sign": f2["sign"],
            "base": Mux(f2["a_subnormal"] & ~f2["b_subnormal"], f2["base"] + 1,
                        Mux(f2["b_subnormal"] & ~f2["a_subnormal"], f2["base"] - 1,
                            f2["base"]))[:10].as_signed(),
            "a_bytes": f2["a_bytes"], "b_bytes": f2["b_bytes"],
            "a": by_bytes(f2["a"], f2["a_bytes"]), "b": by_bytes(f2["b"], f2["b_bytes"]),
        })

        # 4: leading zeros of the top byte (8 only for a zero operand, a special case).
        f4 = carry(4, {**f3, "a_bits": leading_zeros(f3["a"][16:]),
                       "b_bits": leading_zeros(f3["b"][16:])})

        # 5: shift by the rest; what normalising does to the exponent.
        f5 = carry(5, {
            "special": f4["special"], "special_bits": f4["special_bits"], "sign": f4["sign"],
            "base": f4["base"],
            "a": (f4["a"] << f4["a_bits"])[:24], "b": (f4["b"] << f4["b_bits"])[:24],
            "zeros": (Cat(f4["b_bits"][:3], f4["b_bytes"])
                      - Cat(f4["a_bits"][:3], f4["a_bytes"])),
        })

        # 6: the biased exponent of the quotient of two significands in [1, 2).
        f6 = carry(6, {
            "dividend": f5["a"], "divisor": f5["b"],
            "exponent": (f5["base"] + f5["zeros"])[:11].as_signed(),
            "sign": f5["sign"], "special": f5["special"], "special_bits": f5["special_bits"],
        })
        m.d.comb += [getattr(to_loop.payload, name).eq(value) for name, value in f6.items()]

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

        # The result moves from the loop into a handoff register when that is empty, and
        # new operands enter the loop as it leaves: every decision here is made from
        # registers, so no ready signal runs from the output through to the loop.
        handoff = Signal(_LOOP_OUTPUT, reset_less=True)
        handoff_valid = Signal()
        m.d.comb += [
            to_loop.ready.eq(~busy & (~done | ~handoff_valid)),
            from_loop.valid.eq(handoff_valid),
            from_loop.payload.eq(handoff),
        ]
        with m.If(from_loop.ready):
            m.d.sync += handoff_valid.eq(0)
        with m.If(done & ~handoff_valid):
            m.d.sync += [
                handoff.quotient.eq(quotient),
                handoff.remainder.eq(remainder),
                handoff.exponent.eq(carried.exponent),
                handoff.sign.eq(carried.sign),
                handoff.special.eq(carried.special),
                handoff.special_bits.eq(carried.special_bits),
                handoff_valid.eq(1),
                done.eq(0),
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
            ]
        with m.Elif(busy):
            m.d.sync += [
                remainder.eq(Mux(fits, difference[:25], remainder) << 1),
                quotient.eq(Cat(fits, quotient[:-1])),
                count.eq(count - 1),
            ]
            with m.If(count == 0):
                m.d.sync += [busy.eq(0), done.eq(1)]

        # ---- Back end: seven pipelined stages --------------------------------------------
        p = Pipeline(m, from_loop, self.o, 7)
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

        # 3, 4: the shift, into a window that keeps what falls off for the sticky bit: by
        # multiples of 8, then by the rest (one 5-level shifter was the longest path).
        b3_window = p.stage(Cat(Const(0, 27), b2_value) >> (b2_shift[3:] << 3), "b3_window",
                            shape=27 + _QUOTIENT_BITS)
        b3_fine = p.stage(b2_shift[:3], "b3_fine")
        b3_rest = p.stage(b2_rest, "b3_rest")
        b3_exponent = p.stage(b2_exponent, "b3_exponent")
        b3 = {name: p.stage(value, f"b3_{name}") for name, value in b2.items()}

        b4_window = p.stage(b3_window >> b3_fine, "b4_window", shape=27 + _QUOTIENT_BITS)
        b4_rest = p.stage(b3_rest, "b4_rest")
        b4_exponent = p.stage(b3_exponent, "b4_exponent")
        b4 = {name: p.stage(value, f"b4_{name}") for name, value in b3.items()}

        # 5: significand, guard and sticky.
        b5_significand = p.stage(b4_window[29:], "b5_significand", shape=24)
        b5_guard = p.stage(b4_window[28], "b5_guard")
        b5_sticky = p.stage(b4_window[:28].any() | b4_rest, "b5_sticky")
        b5_exponent = p.stage(b4_exponent, "b5_exponent")
        b5 = {name: p.stage(value, f"b5_{name}") for name, value in b4.items()}

        # 6, 7: round, pack.
        result = round_float32(p, "b6", b5["sign"], b5_exponent, b5_significand, b5_guard,
                               b5_sticky, (b5["special"], b5["special_bits"]))
        m.d.comb += self.o.payload.eq(p.stage(result, "b7_result", shape=32))

        assert_stream_rules(m, self.o, "FP divider output")
        return m

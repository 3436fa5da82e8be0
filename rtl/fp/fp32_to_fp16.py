"""binary32 to binary16 conversion, round to nearest even: GGUF block scales (docs/fp.md)."""

from amaranth.hdl import Cat, Const, Module, Mux
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..stream_rules import assert_stream_rules
from .format import CANONICAL_NAN16, FLOAT16, FLOAT32, Pipeline


__all__ = ["FP32ToFP16"]


class FP32ToFP16(wiring.Component):
    """IEEE-754 binary32 to binary16, round to nearest even, as NumPy's ``astype(float16)``.

    Results below 2^-14 are binary16 subnormals (rounded, not flushed); values that round to
    2^16 or more become ±∞; binary32 subnormals round to ±0. A NaN becomes the canonical quiet
    NaN 0x7E00. The activation quantizer stores its Q8_0 scales with this.

    Members
    -------
    i : ``In(stream.Signature(FLOAT32))``
        The binary32 values.
    o : ``Out(stream.Signature(FLOAT16))``
        The rounded binary16 values, :attr:`LATENCY` cycles later.
    """

    #: Cycles from taking a value to offering it converted.
    LATENCY = 5

    i: In(stream.Signature(FLOAT32))
    o: Out(stream.Signature(FLOAT16))

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o, self.LATENCY)

        a = p.stage(self.i.payload, "s1_a")

        # 2: the 24-bit significand s (value s · 2^(e − 150)) shifts right by k into an
        # 11-bit binary16 significand: k = 13 for a normal result, and 126 − e for a subnormal
        # one (whose unit is 2^-24). Past 25 places only sticky bits remain. The packed result
        # is then (max(e − 112, 1) − 1) · 2^10 plus the rounded significand: its hidden bit,
        # and a carry out of rounding, land in the exponent field by themselves.
        # The comparisons and the difference are side by side, on the raw exponent field (a
        # binary32 subnormal, field 0, gets the clamped shift as it should).
        exponent = a.exponent
        shift = Mux(exponent >= 113, 13, Mux(exponent <= 101, 25, (126 - exponent)[:5]))
        top = exponent == 0xFF
        s2_significand = p.stage(Cat(a.fraction, exponent != 0), "s2_significand")
        s2_shift = p.stage(shift, "s2_shift", shape=range(26))
        s2_base = p.stage(Mux(exponent >= 113, (exponent - 113) << 10, 0), "s2_base", shape=15)
        s2_overflow = p.stage(~top & (exponent >= 143), "s2_overflow")
        s2_nan = p.stage(top & (a.fraction != 0), "s2_nan")
        s2_inf = p.stage(top & (a.fraction == 0), "s2_inf")
        s2_sign = p.stage(a.sign, "s2_sign")

        # 3: shift, with the significand 26 places up so that what falls off stays visible.
        names = ("base", "overflow", "nan", "inf", "sign")
        values = (s2_base, s2_overflow, s2_nan, s2_inf, s2_sign)
        s3 = {name: p.stage(value, f"s3_{name}") for name, value in zip(names, values)}
        s3_window = p.stage(Cat(Const(0, 26), s2_significand) >> s2_shift, "s3_window",
                            shape=50)

        # 4: round.
        kept = s3_window[26:]
        guard = s3_window[25]
        sticky = s3_window[:25].any()
        s4 = {name: p.stage(s3[name], f"s4_{name}") for name in names}
        s4_rounded = p.stage(kept + (guard & (sticky | kept[0])), "s4_rounded", shape=12)

        # 5: pack. The sum is at most 31 · 2^10: exponent field 31 is the only overflow.
        packed = (s4["base"] + s4_rounded)[:15]
        infinite = s4["inf"] | s4["overflow"] | (packed[10:] == 0x1F)
        result = Mux(s4["nan"], CANONICAL_NAN16,
                     Mux(infinite, Cat(Const(0x7C00, 15), s4["sign"]), Cat(packed, s4["sign"])))
        m.d.comb += self.o.payload.eq(p.stage(result, "s5_result", shape=16))

        assert_stream_rules(m, self.o, "FP32 to FP16 output")
        return m

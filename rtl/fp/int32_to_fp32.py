"""int32 to binary32 conversion, round to nearest even: the MAC array's block sums (docs/fp.md)."""

from amaranth.hdl import Module, Mux, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..stream_rules import assert_stream_rules
from .format import FLOAT32, Pipeline, leading_zeros, round_float32


__all__ = ["Int32ToFP32", "int32_to_fp32"]


class Int32ToFP32(wiring.Component):
    """A signed 32-bit integer to IEEE-754 binary32, round to nearest even.

    Integers of magnitude above 2^24 round; −2^31 is exact. Zero is +0.

    Members
    -------
    i : ``In(stream.Signature(signed(32)))``
        The integers.
    o : ``Out(stream.Signature(FLOAT32))``
        The rounded binary32 values, :attr:`LATENCY` cycles later.
    """

    #: Cycles from taking an integer to offering it converted.
    LATENCY = 6

    i: In(stream.Signature(signed(32)))
    o: Out(stream.Signature(FLOAT32))

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o, self.LATENCY)
        m.d.comb += self.o.payload.eq(int32_to_fp32(p, self.i.payload))

        assert_stream_rules(m, self.o, "int32 to FP32 output")
        return m


def int32_to_fp32(p, value, name="float"):
    """The stages of int32 ``value`` to binary32 in pipeline ``p``: the registered result,
    :attr:`Int32ToFP32.LATENCY` stages later."""
    with p.scope(name):

        value = p.stage(value, "s1_value", shape=signed(32))

        # 2: magnitude; 32 unsigned bits hold |−2^31|.
        s2_sign = p.stage(value[31], "s2_sign")
        s2_magnitude = p.stage(Mux(value[31], -value, value)[:32], "s2_magnitude", shape=32)

        # 3: leading zeros.
        s3_sign = p.stage(s2_sign, "s3_sign")
        s3_magnitude = p.stage(s2_magnitude, "s3_magnitude")
        s3_zeros = p.stage(leading_zeros(s2_magnitude), "s3_zeros", shape=range(33))

        # 4: normalise, leading one to bit 31; its weight is 2^(31 − zeros).
        s4_sign = p.stage(s3_sign, "s4_sign")
        s4_exponent = p.stage(158 - s3_zeros, "s4_exponent", shape=range(160))
        s4_normalised = p.stage((s3_magnitude << s3_zeros)[:32], "s4_normalised", shape=32)

        # 5, 6: round, pack; zero has a zero significand and packs as +0.
        result = round_float32(p, "s5", s4_sign, s4_exponent, s4_normalised[8:],
                               s4_normalised[7], s4_normalised[:7].any())
        return p.stage(result, "s6_result", shape=32)

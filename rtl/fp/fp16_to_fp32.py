"""binary16 to binary32 conversion: the scales of GGUF blocks (docs/fp.md)."""

from amaranth.hdl import Cat, Const, Module, Mux
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..stream_rules import assert_stream_rules
from .format import CANONICAL_NAN32, FLOAT16, FLOAT32, Pipeline, leading_zeros


__all__ = ["FP16ToFP32", "fp16_to_fp32"]


class FP16ToFP32(wiring.Component):
    """Exact conversion of IEEE-754 binary16 to binary32.

    Every binary16 value is a binary32 value, so nothing rounds. A subnormal binary16 (which
    GGUF scales can be) becomes a normal binary32: its leading one is found and shifted out.
    A NaN becomes the canonical quiet NaN 0x7FC00000.

    Members
    -------
    i : ``In(stream.Signature(FLOAT16))``
        The binary16 values.
    o : ``Out(stream.Signature(FLOAT32))``
        The same values in binary32, :attr:`LATENCY` cycles later.
    """

    #: Cycles from taking a value to offering it converted.
    LATENCY = 3

    i: In(stream.Signature(FLOAT16))
    o: Out(stream.Signature(FLOAT32))

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o, self.LATENCY)
        m.d.comb += self.o.payload.eq(fp16_to_fp32(p, self.i.payload))

        assert_stream_rules(m, self.o, "FP16 to FP32 output")
        return m


def fp16_to_fp32(p, h, name="widen"):
    """The stages of binary16 ``h`` to binary32 in pipeline ``p``: the registered result,
    :attr:`FP16ToFP32.LATENCY` stages later."""
    with p.scope(name):

        h = p.stage(h, "s1_h", shape=FLOAT16)

        # 2: leading zeros of the fraction (for a subnormal).
        s2_h = p.stage(h, "s2_h")
        s2_zeros = p.stage(leading_zeros(h.fraction), "s2_zeros", shape=range(11))

        # 3: the exponent bias goes from 15 to 127. A subnormal h is f · 2^-24; with its
        # leading one at bit 9 − z that is 2^(−15 − z) · 1.(bits below), biased exponent 112 − z.
        h, zeros = s2_h, s2_zeros
        subnormal_fraction = (h.fraction << (zeros + 1))[:10]
        finite = Mux(h.exponent == 0,
                     Mux(h.fraction == 0, Cat(Const(0, 31), h.sign),
                         Cat(Const(0, 13), subnormal_fraction, (112 - zeros)[:8], h.sign)),
                     Cat(Const(0, 13), h.fraction, (h.exponent + 112)[:8], h.sign))
        special = Mux(h.fraction != 0, CANONICAL_NAN32,
                      Cat(Const(0, 23), Const(0xFF, 8), h.sign))
        result = Mux(h.exponent == 0x1F, special, finite)
        return p.stage(result, "s3_result", shape=32)

"""binary32 to a signed integer, rounded half away from zero or half to even, saturating
(docs/quantizer.md)."""

from amaranth.hdl import Cat, Const, Module, Mux, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..stream_rules import assert_stream_rules
from .format import FLOAT32, Pipeline


__all__ = ["FP32ToInt", "ROUNDING_MODES"]


#: ``"away"``: ties away from zero (C ``roundf``, ``gguf.quants.np_roundf``, the Q8_0
#: quantizer); ``"even"``: ties to even (``np.rint``).
ROUNDING_MODES = ("away", "even")


class FP32ToInt(wiring.Component):
    """IEEE-754 binary32 to a ``width``-bit two's complement integer, pipelined.

    The value is rounded to the nearest integer, ties away from zero or to even; results
    beyond the range of the width saturate (±∞ too) and a NaN gives 0: the semantics of
    Arm's ``FCVTAS``/``FCVTNS``. One result per cycle, :attr:`LATENCY` cycles after the value
    is taken.

    The 24-bit significand is placed at the top of a ``width`` + 24-bit word whose binary point
    sits 25 bits from the bottom, and shifted right by ``width`` + 125 − exponent (at most
    ``width``: the value is then below one half and rounds to 0 anyway; below 0, the magnitude
    is at least 2^(width − 1) and saturates). The integer part, the bit below it and the OR of
    the rest decide the rounding; negation and rounding share one adder.

    Parameters
    ----------
    width : int
        Bits of the result, 2 to 32.
    rounding : str
        One of :data:`ROUNDING_MODES`.

    Members
    -------
    i : ``In(stream.Signature(FLOAT32))``
        The binary32 values.
    o : ``Out(stream.Signature(signed(width)))``
        The integers, in order.
    """

    #: Cycles from taking a value to offering the integer.
    LATENCY = 5

    def __init__(self, width=32, *, rounding="away"):
        if not isinstance(width, int) or isinstance(width, bool):
            raise TypeError(f"Integer width must be an integer from 2 to 32, not {width!r}")
        if not 2 <= width <= 32:
            raise ValueError(f"Integer width must be an integer from 2 to 32, not {width!r}")
        if rounding not in ROUNDING_MODES:
            raise ValueError(f"Rounding must be one of {', '.join(ROUNDING_MODES)}, "
                             f"not {rounding!r}")
        self._width = width
        self._rounding = rounding
        super().__init__({
            "i": In(stream.Signature(FLOAT32)),
            "o": Out(stream.Signature(signed(width))),
        })

    @property
    def width(self):
        return self._width

    @property
    def rounding(self):
        return self._rounding

    def elaborate(self, platform):
        m = Module()
        w = self._width
        p = Pipeline(m, self.i, self.o, self.LATENCY)

        a = p.stage(self.i.payload, "s1_a")

        # 2: the shift, and the cases decided by the exponent alone.
        exponent = Mux(a.exponent == 0, 1, a.exponent)
        top = a.exponent == 0xFF
        s2_significand = p.stage(Cat(a.fraction, a.exponent != 0), "s2_significand")
        s2_shift = p.stage(Mux(exponent < 125, w, w + 125 - exponent), "s2_shift",
                           shape=range(w + 1))
        s2_nan = p.stage(top & (a.fraction != 0), "s2_nan")
        s2_huge = p.stage(~(top & (a.fraction != 0)) & (exponent >= w + 126), "s2_huge")
        s2_sign = p.stage(a.sign, "s2_sign")

        # 3: shift.
        s3_window = p.stage(Cat(Const(0, w), s2_significand) >> s2_shift, "s3_window",
                            shape=w + 24)
        s3 = {name: p.stage(value, f"s3_{name}")
              for name, value in (("nan", s2_nan), ("huge", s2_huge), ("sign", s2_sign))}

        # 4: integer part (below 2^(w-1)), and the rounding increment. Negative results are
        # ~(integer + up) + 1 = ~integer + (1 − up): one adder for both.
        integer = s3_window[25:]
        guard = s3_window[24]
        sticky = s3_window[:24].any()
        up = guard if self._rounding == "away" else guard & (sticky | integer[0])
        sign = s3["sign"]
        total = (Cat(integer, Const(0, 1)) ^ sign.replicate(w)) + (up ^ sign)
        s4_total = p.stage(total, "s4_total", shape=w + 1)
        s4 = {name: p.stage(s3[name], f"s4_{name}") for name in ("nan", "huge", "sign")}

        # 5: saturate. A positive total of 2^(w-1) (an integer part of 2^(w-1) − 1 rounded
        # up) is the only overflow past the exponent test; a negative one reaches −2^(w-1)
        # at most, which fits.
        largest = (1 << (w - 1)) - 1
        overflow = ~s4["sign"] & s4_total[w - 1]
        saturated = Mux(s4["sign"], -(largest + 1), largest)
        result = Mux(s4["nan"], 0, Mux(s4["huge"] | overflow, saturated, s4_total[:w]))
        m.d.comb += self.o.payload.eq(p.stage(result, "s5_result", shape=signed(w)))

        assert_stream_rules(m, self.o, "FP32 to integer output")
        return m

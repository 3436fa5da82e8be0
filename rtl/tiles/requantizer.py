"""Integer requantizer: int32 accumulators to int8/uint8 for integer-only graphs, bit-exact with
TFLite/gemmlowp and with ``onnx.reference``'s QLinearMatMul (docs/requantizer.md)."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..dsp import MULTIPLY_REGISTERS, registered_multiply
from ..fp.format import Pipeline
from ..stream_rules import assert_stream_rules


__all__ = ["Requantizer", "Rounding", "Output", "CONFIG"]


class Rounding(enum.Enum, shape=1):
    """How the product is rounded (docs/requantizer.md, "Arithmetic")."""

    #: TFLite's ``MultiplyByQuantizedMultiplier``: gemmlowp's
    #: ``SaturatingRoundingDoublingHighMul`` (round half up at 2^31), then
    #: ``RoundingDivideByPOT`` by ``right_shift`` (round half away from zero), then the zero point.
    GEMMLOWP = 0
    #: ONNX: ``x · multiplier · 2^-right_shift + zero_point`` rounded half to even, the zero
    #: point added before rounding (as ``onnx.reference`` does).
    HALF_EVEN = 1


class Output(enum.Enum, shape=1):
    """Output type: the saturation range and the meaning of the 8 output bits."""

    INT8 = 0
    UINT8 = 1


#: Run-time configuration, sampled with every beat taken on ``i``.
CONFIG = data.StructLayout({
    #: Q0.31 fixed-point multiplier (GEMMLOWP) or the integer significand of the scale
    #: (HALF_EVEN); any int32.
    "multiplier": signed(32),
    #: The accumulator is multiplied by 2^left_shift (wrapping in 32 bits, as TFLite's
    #: ``x * (1 << left_shift)`` on two's-complement hardware) before the multiplier.
    "left_shift": unsigned(5),
    #: Rounding right shift after the multiplier (gemmlowp defines 0–31; 32–63 continue the
    #: same formula).
    "right_shift": unsigned(6),
    #: Output zero point, added as described under :class:`Rounding`.
    "zero_point": signed(9),
    "rounding": Rounding,
    "output": Output,
})

#: The configuration fields the stages after the multiplier need.
_TAIL = data.StructLayout({
    "right_shift": unsigned(6),
    "zero_point": signed(9),
    "rounding": Rounding,
    "output": Output,
})

_INT32_MAX = (1 << 31) - 1


def _check_positive(value, what):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Requantizer {what} must be a positive integer, not {value!r}")
    if value < 1:
        raise ValueError(f"Requantizer {what} must be a positive integer, not {value!r}")


class Requantizer(wiring.Component):
    """Requantizes ``lanes`` int32 accumulators per beat to 8-bit integers.

    For each accumulator ``acc`` with the configuration ``c`` taken with its beat,
    ``x = wrap32(acc · 2^c.left_shift)`` and ``P = x · c.multiplier`` (exact, 64 bits, from four
    18×18 multipliers); then

    * ``Rounding.GEMMLOWP``: ``h = ⌊(P + 2^30) / 2^31⌋`` (``INT32_MAX`` when
      ``x = c.multiplier = −2^31``), ``r = h / 2^right_shift`` rounded half away from zero,
      ``y = r + zero_point``: TFLite's ``MultiplyByQuantizedMultiplier`` plus the output offset.
    * ``Rounding.HALF_EVEN``: ``y = P / 2^right_shift + zero_point`` rounded half to even, which
      is ``onnx.reference``'s QLinearMatMul for a float32 scale ``multiplier · 2^-right_shift``
      (:func:`sim.requantizer.onnx_multiplier` gives the pair, exactly).

    ``y`` is saturated to [−128, 127] (``Output.INT8``) or [0, 255] (``Output.UINT8``), and
    the 8-bit two's-complement or unsigned result is sent on ``o``. Every result that was out of
    range before saturation adds one to ``saturated`` when its beat leaves on ``o``.

    One beat per cycle, :attr:`LATENCY` cycles from ``i`` to ``o`` with no backpressure; under
    backpressure the pipeline holds its contents and loses nothing (``i.ready`` follows
    ``o.ready`` combinationally, see :class:`~rtl.fp.format.Pipeline`). Because the
    configuration travels with each beat, it may change at any cycle, even between beats that
    are still in flight.

    Parameters
    ----------
    lanes : int
        Accumulators per beat, at least 1. They share the configuration.
    counter_width : int
        Width of the saturation counter, at least 1; it sticks at its maximum.

    Members
    -------
    i : ``In(stream.Signature(32 * lanes))``
        The accumulators, lane ``k`` in bits ``32k`` to ``32k + 31``, two's complement.
    o : ``Out(stream.Signature(8 * lanes))``
        The requantized values, lane ``k`` in bits ``8k`` to ``8k + 7``: int8 in two's
        complement or uint8, per the beat's ``output``.
    config : ``In(CONFIG)``
        The configuration, sampled with each beat that ``i`` transfers.
    saturated : ``Out(counter_width)``
        Results saturated so far, counted as their beats leave on ``o``.
    clear : ``In(1)``
        Sets ``saturated`` to the count of the beat leaving in this cycle (zero if none).
    """

    #: Cycles from taking a beat to offering its results.
    LATENCY = 13

    def __init__(self, lanes=1, *, counter_width=32):
        _check_positive(lanes, "lanes")
        _check_positive(counter_width, "counter width")
        self._lanes = lanes
        self._counter_width = counter_width
        super().__init__({
            "i": In(stream.Signature(32 * lanes)),
            "o": Out(stream.Signature(8 * lanes)),
            "config": In(CONFIG),
            "saturated": Out(counter_width),
            "clear": In(1),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def counter_width(self):
        return self._counter_width

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o, self.LATENCY)
        assert MULTIPLY_REGISTERS == 3

        # 1: take the beat and its configuration.
        config = p.stage(self.config, "s1_config")
        tail = Signal(_TAIL)
        m.d.comb += [tail.right_shift.eq(config.right_shift),
                     tail.zero_point.eq(config.zero_point),
                     tail.rounding.eq(config.rounding),
                     tail.output.eq(config.output)]
        tails = {1: tail}
        for stage in range(2, 12):
            tails[stage] = p.stage(tails[stage - 1], f"s{stage}_config")

        multiplier = p.stage(config.multiplier, "s2_multiplier")
        over = []
        under = []
        results = []
        for k in range(self._lanes):
            acc = p.stage(self.i.payload[32 * k:32 * (k + 1)].as_signed(), f"s1_acc{k}")
            # Each lane's shifter has its own copy of the shift amount (kept through synthesis:
            # one register fanning out to every lane's shifter was the critical path).
            left_shift = Signal(5, name=f"s1_left_shift{k}", reset_less=True,
                                attrs={"keep": 1})
            with m.If(p.advance):
                m.d.sync += left_shift.eq(self.config.left_shift)
            lane = self._lane(m, p, platform, k, acc, left_shift, multiplier, tails)
            results.append(lane[0])
            over.append(lane[1])
            under.append(lane[2])
        # 13: the results wait a cycle while their saturations are counted, so that the
        # counter's adder starts at a register.
        m.d.comb += self.o.payload.eq(p.stage(Cat(results), "s13_results"))
        count = p.stage(sum(o | u for o, u in zip(over, under)), "s13_count",
                        shape=range(self._lanes + 1))

        # The saturation counter, on beats leaving; it sticks at its maximum.
        counter = Signal(self._counter_width)
        total = Signal(self._counter_width + len(count) + 1)
        m.d.comb += [total.eq(Mux(self.clear, 0, counter) + count),
                     self.saturated.eq(counter)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += counter.eq(Mux(total[self._counter_width:].any(),
                                       (1 << self._counter_width) - 1, total))
        with m.Elif(self.clear):
            m.d.sync += counter.eq(0)

        assert_stream_rules(m, self.o, "Requantizer output")
        return m

    def _lane(self, m, p, platform, k, acc, left_shift, multiplier, tails):
        """The datapath of lane ``k`` from its stage-1 accumulator; returns its stage-12
        result and the flags of a result above and below the output range."""
        # 2: the left shift (wrapping), 8 places at a time; the last 0–7 places are shifted on
        # the way into the multipliers' input registers.
        coarse = p.stage(Array([(acc << (8 * j))[:32] for j in range(4)])[left_shift[3:]],
                         f"s2_x{k}", shape=32)
        x = (coarse << p.stage(left_shift[:3], f"s2_left_shift{k}"))[:32]

        # 3–5: the product, from four 18×18 multipliers (16-bit halves; the low halves
        # zero-extended to 17 bits, the high ones signed), each with its three registers.
        x_lo, x_hi = Cat(x[:16], Const(0, 1)).as_signed(), x[16:].as_signed()
        m_lo, m_hi = Cat(multiplier[:16], Const(0, 1)).as_signed(), multiplier[16:].as_signed()
        partial = {}
        for name, a, b, shape in [("ll", x_lo, m_lo, unsigned(32)), ("lh", x_lo, m_hi, signed(32)),
                                  ("hl", x_hi, m_lo, signed(32)), ("hh", x_hi, m_hi, signed(32))]:
            partial[name] = Signal(shape, name=f"s5_{name}{k}")
            registered_multiply(m, platform, a, b, partial[name], signed=True, enable=p.advance,
                                name=f"multiply_{name}{k}")
        # 6: the middle partial products; the outer two do not overlap and are just placed.
        middle = p.stage(partial["lh"] + partial["hl"], f"s6_middle{k}", shape=signed(33))
        outer = p.stage(Cat(partial["ll"], partial["hh"]), f"s6_outer{k}", shape=64)

        # 7: the 64-bit product.
        product = p.stage((outer.as_signed() + (middle << 16))[:64].as_signed(),
                          f"s7_product{k}", shape=signed(64))

        # 8: what the variable shift rounds. GEMMLOWP first rounds at 2^31, half up (gemmlowp's
        # nudge and truncating division come to this); HALF_EVEN rounds only once.
        # gemmlowp's one overflow, −2^31 · −2^31 = 2^62 (the only product that reaches 2^62),
        # saturates to INT32_MAX.
        high = (product[30:].as_signed() + 1)[1:].as_signed()
        high = Mux(product[62] & ~product[63], _INT32_MAX, high)
        value = p.stage(Mux(tails[7].rounding == Rounding.HALF_EVEN, product, high),
                        f"s8_value{k}", shape=signed(64))

        # 9–10: shift right arithmetically by right_shift, 8 places then 0–7. A zero below the
        # value makes bit 0 of the result the guard bit (the highest bit shifted out); the
        # sticky bit (any bit below it) is the OR of what each step drops, through a mask.
        n = tails[8].right_shift
        wide = Cat(Const(0, 1), value).as_signed()
        coarse = p.stage(Array([wide >> (8 * j) for j in range(8)])[n[3:]], f"s9_coarse{k}",
                         shape=signed(65))
        dropped = Cat(wide[8 * j:8 * j + 8].any() & (n[3:] > j) for j in range(7))
        sticky = p.stage(dropped.any(), f"s9_sticky{k}")
        n = tails[9].right_shift
        fine = p.stage(coarse >> n[:3], f"s10_fine{k}", shape=signed(65))
        sticky = p.stage(sticky | Cat(coarse[j] & (n[:3] > j) for j in range(7)).any(),
                         f"s10_sticky{k}")

        # 11: round and add the zero point. Only the low 11 bits of the quotient matter when
        # its upper bits are a sign extension; otherwise the result saturates by its sign.
        guard, quotient = fine[0], fine[1:].as_signed()
        sign = quotient[-1]
        zero_point = tails[10].zero_point
        up = Mux(tails[10].rounding == Rounding.HALF_EVEN,
                 guard & (sticky | (quotient[0] ^ zero_point[0])),   # half to even, after zp
                 guard & (sticky | ~sign))                           # half away from zero
        y = p.stage(quotient[:11].as_signed() + up + zero_point, f"s11_y{k}", shape=signed(12))
        upper = quotient[10:]
        big = p.stage(~(upper.all() | ~upper.any()), f"s11_big{k}")
        negative = p.stage(sign, f"s11_sign{k}")

        # 12: saturate. The limits are tested on the bits of y (12-bit two's complement), not
        # with comparators: int8 needs y[7:12] all equal, uint8 y[8:12] all zero.
        unsigned_out = tails[11].output == Output.UINT8
        y_negative = y[11]
        above = Mux(big, ~negative,
                    ~y_negative & Mux(unsigned_out, y[8:11].any(), y[7:11].any()))
        below = Mux(big, negative,
                    y_negative & (unsigned_out | ~y[7:11].all()))
        limit = Mux(unsigned_out, Mux(above, 0xFF, 0x00), Mux(above, 0x7F, 0x80))
        result = p.stage(Mux(above | below, limit, y[:8]), f"s12_result{k}", shape=8)
        return result, p.stage(above, f"s12_above{k}"), p.stage(below, f"s12_below{k}")

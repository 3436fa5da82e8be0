"""Processing element of the MAC array: one multiplier, one (or two) block-sum accumulators."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..dsp import registered_multiply


__all__ = ["ProcessingElement", "MULTIPLY_LATENCY", "LANE_SHIFT", "weight_word_width",
           "sum_widths"]


#: Cycles from operands at a PE's inputs to their product at its accumulator: the input,
#: pipeline and output registers of an ECP5 MULT18X18D and one fabric register after it,
#: mirrored in the generic elaboration so that both have the same timing. The fabric register
#: is what lets the accumulator sit away from its DSP: DSPs are in rows at the die's edges,
#: and without it the route from the DSP's output to the accumulator's adder was the critical
#: path of an 8x8 array (4.5 ns of routing, 152 MHz).
MULTIPLY_LATENCY = 4

#: Bit position of the second weight code in a packed operand. Each of the two products is at
#: most 128 · 15 = 1920 in magnitude, so it fits the 12 bits below the shift (signed).
LANE_SHIFT = 12

#: Width of the activation codes (Q8_0 int8).
ACTIVATION_WIDTH = 8


def weight_word_width(packed):
    """Bits of the weight word that moves down a column.

    Unpacked: the int8 code. Packed: the multiplier operand ``a + b · 2**LANE_SHIFT`` (codes in
    −12…15, so within ±2**16: 18 bits, the MULT18X18D's width) without the four bits that only
    repeat the sign of ``a``: bits 0–7 are ``a`` (or an int8 code), bits 8–13 are ``b`` minus
    the sign bit of ``a``. Fourteen bits instead of eighteen in every PE's chain register.
    """
    return 14 if packed else 8


def _operand(word, packed):
    """The multiplier operand of a weight word (see :func:`weight_word_width`)."""
    if not packed:
        return word
    return Cat(word[:8], word[7].replicate(LANE_SHIFT - 8), word[8:]).as_signed()


def sum_widths(packed):
    """Widths of the accumulators over one 32-element block.

    Unpacked: one lane of x·w, |Σ| ≤ 32 · 128 · 128 = 2**19 → 21 bits signed.
    Packed: the product splits into lane a, its low 12 bits as a signed number (|a| ≤ 2048,
    |Σa| ≤ 65536 → 18 bits), and lane b, the rest (|Σb| ≤ 32 · 1920 in 4-bit modes → 17 bits).
    """
    return (18, 17) if packed else (21,)


class ProcessingElement(wiring.Component):
    """Multiply-accumulate cell: sums ``x · w`` over the products between ``first`` and ``last``.

    Each cycle the PE multiplies its activation ``x`` by its weight operand ``w`` and passes
    ``w`` on, registered, to the PE below (``w_next``). The product reaches the accumulator
    :data:`MULTIPLY_LATENCY` cycles later. ``first`` and ``last`` describe that product and are
    given one cycle before it arrives (``MULTIPLY_LATENCY - 1`` cycles after the operands): the
    PE registers them itself, so that the row's flag registers drive one flip-flop per PE rather
    than every accumulator bit.

    Packed (``packed=True``): the weight operand holds two codes, ``w = a + b · 2**12``; the
    single product ``x · w`` is split into ``x · a`` (its low 12 bits, as a signed number) and
    ``x · b`` (the bits above plus bit 11, the borrow the signed low part took). The two lanes
    accumulate separately. An int8 weight operand goes through the same split, and its sum is
    ``sum_a + sum_b · 2**12``: one datapath serves every mode, and the mode matters only where
    the array combines the lanes.

    On ECP5 (``platform.family == "ecp5"``) the multiplier is a MULT18X18D with its input,
    pipeline and output registers on; elsewhere it is ``*`` between the same three registers.

    Parameters
    ----------
    packed : bool
        Two products per multiplication (4-bit and ternary weight formats), two accumulators.

    Members
    -------
    x : ``In(signed(8))``
        Activation code.
    w : ``In(signed(weight_word_width(packed)))``
        Weight word.
    w_next : ``Out(signed(weight_word_width(packed)))``
        ``w`` one cycle later, for the PE below.
    first : ``In(1)``
        The product arriving at the accumulator next cycle starts a block: the sum restarts.
    last : ``In(1)``
        The product arriving next cycle ends a block.
    done : ``Out(1)``
        The sums hold a complete block; high for one cycle.
    sum_a : ``Out(signed(sum_widths(packed)[0]))``
        Block sum of lane a (the whole product when not packed); zero unless ``done``.
    sum_b : ``Out(signed(17))``
        Block sum of lane b; zero unless ``done``. Only when packed.
    """

    def __init__(self, *, packed):
        if not isinstance(packed, bool):
            raise TypeError(f"PE packed must be True or False, not {packed!r}")
        self._packed = packed
        members = {
            "x": In(signed(ACTIVATION_WIDTH)),
            "w": In(signed(weight_word_width(packed))),
            "w_next": Out(signed(weight_word_width(packed))),
            "first": In(1),
            "last": In(1),
            "done": Out(1),
        }
        for lane, width in zip("ab", sum_widths(packed)):
            members[f"sum_{lane}"] = Out(signed(width))
        super().__init__(members)

    @property
    def packed(self):
        return self._packed

    def elaborate(self, platform):
        m = Module()

        m.d.sync += self.w_next.eq(self.w)

        operand = _operand(self.w, self._packed)
        product = Signal(signed(ACTIVATION_WIDTH + len(operand)), reset_less=True)
        dsp_product = Signal.like(product)
        registered_multiply(m, platform, self.x, operand, dsp_product)
        m.d.sync += product.eq(dsp_product)

        # Every PE of a row gets the same flags: these registers are the row's flags duplicated,
        # one copy per PE beside its accumulator. `keep` stops synthesis from merging the
        # copies back into one register whose fan-out spans the die (synth/flow.py).
        # `first` is copied once more, per lane: each copy selects one accumulator's input.
        widths = sum_widths(self._packed)
        firsts = [Signal(name=f"first_{lane}", attrs={"keep": 1}) for lane in "ab"[:len(widths)]]
        last = Signal(attrs={"keep": 1})
        done = Signal(attrs={"keep": 1})
        m.d.sync += [*(first.eq(self.first) for first in firsts), last.eq(self.last),
                     done.eq(last)]
        m.d.comb += self.done.eq(done)

        # The accumulators hold garbage until the first block; `done` gates every read.
        sums = [Signal(signed(width), reset_less=True, name=f"acc_{lane}")
                for lane, width in zip("ab", widths)]
        bases = [Mux(first, 0, acc) for first, acc in zip(firsts, sums)]
        if self._packed:
            low = product[:LANE_SHIFT].as_signed()
            high = product[LANE_SHIFT:].as_signed()
            m.d.sync += sums[0].eq(bases[0] + low)
            # base + high + product[11] as one adder: bit 0 of the two addends is (1, p[11]),
            # so the carry out of bit 0 is exactly p[11].
            width_b = widths[1] + 1
            base_b = Signal(signed(width_b))
            high_b = Signal(signed(width_b))
            total = Signal(width_b + 1)
            m.d.comb += [
                base_b.eq(bases[1]),
                high_b.eq(high),
                total.eq(Cat(Const(1, 1), base_b) + Cat(product[LANE_SHIFT - 1], high_b)),
            ]
            m.d.sync += sums[1].eq(total[1:])
        else:
            m.d.sync += sums[0].eq(bases[0] + product)

        for lane, acc in zip("ab", sums):
            m.d.comb += getattr(self, f"sum_{lane}").eq(Mux(done, acc, 0))

        return m

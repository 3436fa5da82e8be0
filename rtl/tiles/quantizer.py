"""Q8_0 activation quantizer: binary32 vectors → Q8_0 blocks and their Σq, byte-identical to
``gguf.quants.quantize(x, Q8_0)`` (docs/quantizer.md)."""

from amaranth.hdl import Assert, Cat, Const, Module, Mux, Shape, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..dsp import lut_ram
from ..fifo import StreamFIFO
from ..fp.div import FPDiv
from ..fp.format import FLOAT16, FLOAT32
from ..fp.fp32_to_fp16 import FP32ToFP16
from ..fp.fp32_to_int import FP32ToInt
from ..fp.mul import FPMul
from ..stream_rules import assert_stream_rules


__all__ = ["Q8_0Quantizer", "OUTPUT_LAYOUT", "ERROR_LAYOUT", "BLOCK"]


#: Elements per Q8_0 block.
BLOCK = 32

#: One output beat per element: its code ``q``; the raw binary16 scale ``d`` of its block (on
#: every beat of the block); ``sum``, the Σq of the block so far (the whole block's on the beat
#: with ``last``); ``first``/``last`` mark the block's first and 32nd element.
OUTPUT_LAYOUT = data.StructLayout({
    "q": signed(8), "d": FLOAT16, "sum": signed(13), "first": 1, "last": 1,
})

#: Sticky error flags: an input element was ±∞ or NaN.
ERROR_LAYOUT = data.StructLayout({"nonfinite": 1})

#: binary32 bits of 127 and of 1.
_F32_127 = 0x42FE0000
_F32_ONE = 0x3F800000

#: A block's scale as the issue stage needs it: the factor 1/d (0 where 1/d is not finite) and
#: the raw binary16 d.
_SCALE_LAYOUT = data.StructLayout({"factor": FLOAT32, "d": FLOAT16})

#: What travels beside an element through the multiplier and the conversion.
_SIDE_LAYOUT = data.StructLayout({"d": 16, "first": 1, "last": 1})

#: What the result FIFO holds per element.
_RESULT_LAYOUT = data.StructLayout({"q": signed(8), "d": 16, "first": 1, "last": 1})


class _Buffer(wiring.Component):
    """First-in first-out buffer in LUT RAM (``ram_style`` ``distributed``), with ``o.valid``
    and ``i.ready`` straight from registers: an entry written is readable in the next cycle.

    Not :class:`~rtl.fifo.StreamFIFO`: Yosys would put the element buffer into ECP5 block RAM,
    merging the register after it into the read port, and a DP16KD's output without its output
    register (which Yosys does not infer) takes 5.8 ns, too slow for 150 MHz; and the
    quantizer's issue decision needs the valid flags without a comparison of levels.
    """

    def __init__(self, shape, depth):
        self._shape = shape
        self._depth = depth
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        depth = self._depth
        width = Shape.cast(self._shape).width
        m.submodules.storage = storage = Memory(shape=width, depth=depth, init=[],
                                                attrs=lut_ram(platform))
        write = storage.write_port()
        read = storage.read_port(domain="comb")
        head = Signal(range(depth))
        tail = Signal(range(depth))
        level = Signal(range(depth + 1))
        filled = Signal()
        room = Signal(init=1)
        push = self.i.valid & room
        pop = filled & self.o.ready
        m.d.comb += [
            self.i.ready.eq(room),
            self.o.valid.eq(filled),
            write.addr.eq(tail),
            write.data.eq(self.i.payload),
            write.en.eq(push),
            read.addr.eq(head),
            self.o.payload.eq(read.data),
        ]
        with m.If(push):
            m.d.sync += tail.eq(Mux(tail == depth - 1, 0, tail + 1))
        with m.If(pop):
            m.d.sync += head.eq(Mux(head == depth - 1, 0, head + 1))
        # The flags of the next cycle, from the level now and this cycle's push and pop.
        m.d.sync += [
            level.eq(level + push - pop),
            filled.eq(push | (level > 1) | ((level == 1) & ~pop)),
            room.eq(pop | (level < depth - 1) | ((level == depth - 1) & ~push)),
            Assert(filled == (level != 0), "buffer valid flag out of step"),
            Assert(room == (level != depth), "buffer ready flag out of step"),
        ]
        assert_stream_rules(m, self.o, "Quantizer buffer output")
        return m


class Q8_0Quantizer(wiring.Component):
    """Binary32 elements in, Q8_0 blocks out, as ``gguf.quants.quantize(x, Q8_0)``.

    The input is consecutive 32-element blocks, one element per beat. For each block,
    ``d = amax / 127`` and ``id = 1 / d`` in binary32 (:class:`~rtl.fp.div.FPDiv`, one divider
    each), ``q = round_half_away(x · id)`` (:class:`~rtl.fp.mul.FPMul`,
    :class:`~rtl.fp.fp32_to_int.FP32ToInt`) and the scale is stored as binary16
    (:class:`~rtl.fp.fp32_to_fp16.FP32ToFP16`). ``amax`` is the largest ``|x|`` found on the
    bit patterns: with the sign cleared, binary32 values order as unsigned integers, and every
    NaN lies above ∞.

    While a block's scale is computed its elements wait in a FIFO of ``buffer_depth``
    elements (LUT RAM). The two dividers take one block per ``FPDiv.INTERVAL`` (27)
    cycles each, so with ``buffer_depth`` ≥ 128 the quantizer takes and gives **one element per
    cycle** sustained, several blocks in flight. The multiplier and the conversion never stall:
    an element is issued into them only when the result FIFO has room for it (a credit count),
    so no ready signal runs back through their pipelines. The first code leaves 139 cycles
    after the first element is taken.

    Defined cases, as gguf computes them (NumPy on x86-64 converts a non-finite float to
    int8 as 0):

    - an all-zero block (or ``amax`` < 2^-143, so that ``d`` rounds to 0): ``d`` = 0, every
      ``q`` = 0 (gguf's ``id = 0 where d == 0``);
    - ``1 / d`` = ∞ (``d`` below about 2^-128): every ``q`` = 0;
    - a block with ±∞ or NaN (sets ``errors.nonfinite``): ``d`` = binary16 ∞ for ∞, the
      canonical NaN 0x7E00 for a NaN (NaN wins over ∞), every ``q`` = 0.

    All three are one rule: where ``1 / d`` is not finite, ``x`` is multiplied by 0 instead
    (which gives 0, or NaN for an infinite ``x``, and a NaN converts to 0).

    Parameters
    ----------
    buffer_depth : int
        Elements the input buffer holds; at least 32 (one block), 128 or more for one element
        per cycle.

    Members
    -------
    i : ``In(stream.Signature(FLOAT32))``
        The elements, block after block.
    o : ``Out(stream.Signature(OUTPUT_LAYOUT))``
        One beat per element, in order.
    errors : ``Out(ERROR_LAYOUT)``
        Sticky error flags, until ``clear``; an error in the cycle of ``clear`` is kept.
    clear : ``In(1)``
        Clears ``errors``.
    """

    #: Capacity of the multiplier → conversion → result FIFO path (the credit count); a power
    #: of two.
    RESULT_DEPTH = 32
    #: Depth of the delay line beside the multiplier and the conversion (more than their
    #: latency, a power of two).
    SIDE_DEPTH = 32

    def __init__(self, *, buffer_depth=128):
        message = f"Quantizer buffer depth must be an integer of at least {BLOCK}, " \
                  f"not {buffer_depth!r}"
        if not isinstance(buffer_depth, int) or isinstance(buffer_depth, bool):
            raise TypeError(message)
        if buffer_depth < BLOCK:
            raise ValueError(message)
        self._buffer_depth = buffer_depth
        super().__init__({
            "i": In(stream.Signature(FLOAT32)),
            "o": Out(stream.Signature(OUTPUT_LAYOUT)),
            "errors": Out(ERROR_LAYOUT),
            "clear": In(1),
        })

    @property
    def buffer_depth(self):
        return self._buffer_depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.elements = elements = _Buffer(FLOAT32, self._buffer_depth)
        m.submodules.scale_div = scale_div = FPDiv()
        m.submodules.inverse_div = inverse_div = FPDiv()
        m.submodules.to_fp16 = to_fp16 = FP32ToFP16()
        m.submodules.inverses = inverses = _Buffer(FLOAT32, 2)
        m.submodules.halves = halves = _Buffer(FLOAT16, 2)
        m.submodules.scales = scales = _Buffer(_SCALE_LAYOUT, 4)
        m.submodules.multiply = multiply = FPMul()
        m.submodules.to_int = to_int = FP32ToInt(8, rounding="away")
        m.submodules.results = results = StreamFIFO(_RESULT_LAYOUT, self.RESULT_DEPTH)

        # ---- Input: buffer the elements, find each block's amax ----------------------------
        count_in = Signal(range(BLOCK))
        last_in = count_in == BLOCK - 1
        amax_valid = Signal()                   # a finished block's amax waits for the divider
        # A block may end only when the previous block's amax has gone to the divider.
        accept = elements.i.ready & ~(last_in & amax_valid)
        take = self.i.valid & accept
        m.d.comb += [
            self.i.ready.eq(accept),
            elements.i.valid.eq(self.i.valid & ~(last_in & amax_valid)),
            elements.i.payload.eq(self.i.payload),
        ]
        with m.If(take):
            m.d.sync += count_in.eq(Mux(last_in, 0, count_in + 1))

        # The running maximum of |x| (the bits without the sign), a cycle behind the input; a
        # cycle after a block's last element it holds the block's amax.
        taken = Signal()
        first = Signal(reset_less=True)
        last = Signal(reset_less=True)
        magnitude = Signal(31, reset_less=True)
        amax = Signal(31, reset_less=True)
        closing = Signal()
        amax_bits = Signal(31, reset_less=True)
        m.d.sync += [taken.eq(take), closing.eq(taken & last)]
        with m.If(take):
            m.d.sync += [magnitude.eq(self.i.payload.as_value()[:31]), first.eq(count_in == 0),
                         last.eq(last_in)]
        # magnitude > amax as the borrow of a subtraction: one carry chain and nothing after.
        larger = (amax.as_unsigned() - magnitude.as_unsigned())[-1]
        with m.If(taken & (first | larger)):
            m.d.sync += amax.eq(magnitude)
        m.d.comb += [
            scale_div.i.valid.eq(amax_valid),
            scale_div.i.payload.a.eq(Cat(amax_bits, Const(0, 1))),
            scale_div.i.payload.b.eq(_F32_127),
        ]
        with m.If(scale_div.i.ready):
            m.d.sync += amax_valid.eq(0)
        with m.If(closing):
            m.d.sync += [amax_valid.eq(1), amax_bits.eq(amax)]

        nonfinite = take & (self.i.payload.exponent == 0xFF)
        m.d.sync += self.errors.as_value().eq(
            Mux(self.clear, 0, self.errors.as_value()) | Cat(nonfinite))

        # ---- Scales: d = amax / 127 to 1 / d and to binary16, through a registered fork -----
        fork = Signal(32, reset_less=True)
        to_inverse = Signal()
        to_half = Signal()
        m.d.comb += [
            scale_div.o.ready.eq(~to_inverse & ~to_half),
            inverse_div.i.valid.eq(to_inverse),
            inverse_div.i.payload.a.eq(_F32_ONE),
            inverse_div.i.payload.b.eq(fork),
            to_fp16.i.valid.eq(to_half),
            to_fp16.i.payload.eq(fork),
        ]
        with m.If(inverse_div.i.ready):
            m.d.sync += to_inverse.eq(0)
        with m.If(to_fp16.i.ready):
            m.d.sync += to_half.eq(0)
        with m.If(scale_div.o.valid & scale_div.o.ready):
            m.d.sync += [fork.eq(scale_div.o.payload), to_inverse.eq(1), to_half.eq(1)]
        wiring.connect(m, inverse_div.o, inverses.i)
        wiring.connect(m, to_fp16.o, halves.i)

        # The binary16 d is ready long before 1/d; the two meet in the scale buffer. Where 1/d
        # is not finite (d = 0, d tiny, or a non-finite block), the factor is 0.
        inverse = inverses.o.payload
        m.d.comb += [
            scales.i.valid.eq(inverses.o.valid & halves.o.valid),
            scales.i.payload.factor.eq(Mux(inverse.exponent == 0xFF, 0, inverse.as_value())),
            scales.i.payload.d.eq(halves.o.payload),
            inverses.o.ready.eq(scales.i.ready & halves.o.valid),
            halves.o.ready.eq(scales.i.ready & inverses.o.valid),
        ]

        # ---- Issue: each element with its block's 1/d into the multiplier ------------------
        # Only when the result FIFO will have room for the product (``in_flight`` counts the
        # elements issued and not yet taken from it; RESULT_DEPTH is a power of two, so its top
        # bit says "full"). Every input of the decision is a register.
        count_out = Signal(range(BLOCK))
        last_out = count_out == BLOCK - 1
        in_flight = Signal(range(self.RESULT_DEPTH + 1))
        issue = elements.o.valid & scales.o.valid & ~in_flight[-1]
        released = results.o.valid & results.o.ready
        m.d.comb += [
            multiply.i.valid.eq(issue),
            multiply.i.payload.a.eq(elements.o.payload),
            multiply.i.payload.b.eq(scales.o.payload.factor),
            elements.o.ready.eq(issue),
            scales.o.ready.eq(issue & last_out),
        ]
        with m.If(issue):
            m.d.sync += count_out.eq(Mux(last_out, 0, count_out + 1))
        m.d.sync += in_flight.eq(in_flight + issue - released)

        # The credit count guarantees room, so the arithmetic never waits: its pipelines move
        # every cycle and a product leaves the conversion exactly DELAY cycles after its
        # element was issued. What the output needs besides q waits that long in a delay line
        # in LUT RAM, written every cycle.
        delay = FPMul.LATENCY + FP32ToInt.LATENCY
        m.submodules.side = side = Memory(shape=_SIDE_LAYOUT, depth=self.SIDE_DEPTH, init=[],
                                          attrs=lut_ram(platform))
        side_write = side.write_port()
        side_read = side.read_port(domain="comb")
        time = Signal(range(self.SIDE_DEPTH))
        m.d.sync += time.eq(time + 1)
        m.d.comb += [
            side_write.en.eq(1),
            side_write.addr.eq(time),
            side_write.data.d.eq(scales.o.payload.d),
            side_write.data.first.eq(count_out == 0),
            side_write.data.last.eq(last_out),
            side_read.addr.eq(time - delay),
        ]
        wiring.connect(m, multiply.o, to_int.i)
        m.d.comb += [
            to_int.o.ready.eq(1),
            results.i.valid.eq(to_int.o.valid),
            results.i.payload.q.eq(to_int.o.payload),
            results.i.payload.d.eq(side_read.data.d),
            results.i.payload.first.eq(side_read.data.first),
            results.i.payload.last.eq(side_read.data.last),
        ]
        with m.If(to_int.o.valid):
            m.d.sync += Assert(results.i.ready, "quantizer result FIFO overflow")

        # ---- Output: one register, with the running Σq -------------------------------------
        total = Signal(signed(13))
        entry = results.o.payload
        advance = ~self.o.valid | self.o.ready
        m.d.comb += results.o.ready.eq(advance)
        with m.If(advance):
            m.d.sync += self.o.valid.eq(results.o.valid)
        with m.If(advance & results.o.valid):
            running = Mux(entry.first, 0, total) + entry.q
            m.d.sync += [
                self.o.payload.q.eq(entry.q),
                self.o.payload.d.eq(entry.d),
                self.o.payload.sum.eq(running),
                self.o.payload.first.eq(entry.first),
                self.o.payload.last.eq(entry.last),
                total.eq(running),
            ]

        assert_stream_rules(m, self.o, "Quantizer output")
        return m

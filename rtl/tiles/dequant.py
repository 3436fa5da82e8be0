"""Dequant pipeline: the MAC array's exact block sums scaled and accumulated in binary32
(docs/dequant.md)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..config import PACKED_FORMATS, WEIGHT_FORMATS, mode_code
from ..dsp import lut_ram
from ..fifo import StreamFIFO
from ..fp.add import FPAdd, fp_add
from ..fp.format import FLOAT32, Pipeline
from ..fp.fp16_to_fp32 import FP16ToFP32, fp16_to_fp32
from ..fp.int32_to_fp32 import Int32ToFP32, int32_to_fp32
from ..fp.mul import FPMul, fp_mul
from ..stream_rules import assert_stream_rules


__all__ = ["Dequantizer", "term_layout", "ERROR_LAYOUT"]


def term_layout(outputs):
    """One block sum of one output, with the scales it is multiplied by.

    ``sum``: the MAC array's exact integer dot product of one 32-element block. ``mode``: the
    weight format (index in WEIGHT_FORMATS). ``d_w``: the weight block's fp16 scale, or for
    MXFP4 its E8M0 exponent in bits 0–7. ``m_w``: the weight block's fp16 minimum (Q4_1).
    ``d_x``: the activation block's fp16 scale. ``q_sum``: Σq of the activation block (Q4_1's
    minimum multiplies it). ``index``: the output (accumulator) the term belongs to.
    ``first``/``last``: the output's first and last block.
    """
    return data.StructLayout({
        "sum": signed(32),
        "mode": 3,
        "d_w": 16,
        "m_w": 16,
        "d_x": 16,
        "q_sum": signed(16),
        "index": range(outputs),
        "first": 1,
        "last": 1,
    })

#: Sticky error flags: a term whose mode is not a weight format of the pipeline.
ERROR_LAYOUT = data.StructLayout({"mode": 1})

#: binary32 −0: the identity of IEEE addition (−0 + x is x for every x, ±0 included), added to
#: an output's first term so that every term takes the same path.
_NEGATIVE_ZERO = 0x80000000


def _e8m0_half(e):
    """binary32 bits of 2^(e − 128), the scale gguf applies to twice the E2M1 value."""
    return Mux(e < 2, Const(0x00200000, 32) << e, Cat(Const(0, 23), (e - 1)[:8], Const(0, 1)))


class Dequantizer(wiring.Component):
    """Scales the MAC array's block sums and accumulates them per output in binary32.

    For every term (one block sum of one output) the pipeline computes, each operation rounded
    to binary32 (round to nearest even), in this order::

        s = d_w · d_x                       (MXFP4: d_w = 2^(e − 128))
        t = float(sum) · s
        Q4_1 only:  t = t + m_w · (d_x · float(Σq_x))

    and adds ``t`` to its output's accumulator: ``y = (((t₀ + t₁) + t₂) + …)`` over the
    output's blocks in the order they arrive. That is the order of llama.cpp's scalar dot
    products (``sumi * (d_x * d_y)``, and ``+ m_x * s_y`` for Q4_1 with ``s_y = d_y·Σq_y``
    kept in binary32 here). ``sim/dequant.py`` repeats it with ``np.float32``.

    The term pipeline takes one term per cycle. Terms of different outputs interleave freely
    (the MAC array emits a block's sums for every output of a tile, then the next block's); a
    term whose output still has an addition in flight waits, so with fewer than
    ``FPAdd.LATENCY + 1`` interleaved outputs the rate drops to one term per output per
    ``FPAdd.LATENCY + 1`` cycles.

    Parameters
    ----------
    outputs : int
        Accumulators: the most outputs whose blocks may interleave (a MAC array tile has
        ``rows × cols`` of them, twice that in the 4-bit modes). 1 to 4096.
    formats : tuple of str
        Weight formats accepted; a term with another mode sets ``errors.mode`` and is dropped.

    Members
    -------
    i : ``In(stream.Signature(term_layout(outputs)))``
        Terms.
    o : ``Out(stream.Signature({index, value}))``
        One result per output, when its ``last`` term has been added, in the order of the
        ``last`` terms.
    errors : ``Out(ERROR_LAYOUT)``
        Sticky error flags.
    clear : ``In(1)``
        Clears ``errors``.
    """

    #: Cycles of the term pipeline (conversions, four multiplications, one addition).
    TERM_LATENCY = 1 + Int32ToFP32.LATENCY + 2 * FPMul.LATENCY + FPAdd.LATENCY + 1

    def __init__(self, outputs, *, formats=WEIGHT_FORMATS):
        if not isinstance(outputs, int) or isinstance(outputs, bool):
            raise TypeError(f"Dequantizer outputs must be an integer from 1 to 4096, "
                            f"not {outputs!r}")
        if not 1 <= outputs <= 4096:
            raise ValueError(f"Dequantizer outputs must be an integer from 1 to 4096, "
                             f"not {outputs!r}")
        if (isinstance(formats, str) or not isinstance(formats, (tuple, list)) or not formats
                or any(f not in WEIGHT_FORMATS for f in formats)):
            raise ValueError(f"Dequantizer formats must be a non-empty tuple of "
                             f"{', '.join(WEIGHT_FORMATS)}, not {formats!r}")
        self._outputs = outputs
        self._formats = tuple(formats)
        super().__init__({
            "i": In(stream.Signature(term_layout(outputs))),
            "o": Out(stream.Signature(data.StructLayout({"index": range(outputs),
                                                          "value": FLOAT32}))),
            "errors": Out(ERROR_LAYOUT),
            "clear": In(1),
        })

    @classmethod
    def from_config(cls, config):
        lanes = 2 if any(f in PACKED_FORMATS for f in config.weight_formats) else 1
        return cls(config.array_rows * config.array_cols * lanes,
                   formats=config.weight_formats)

    @property
    def outputs(self):
        return self._outputs

    @property
    def formats(self):
        return self._formats

    def elaborate(self, platform):
        m = Module()

        # Terms of undefined or disabled modes are dropped here, before the pipeline.
        known = Signal()
        m.d.comb += known.eq(Cat(self.i.payload.mode == mode_code(f)
                                 for f in self._formats).any())
        term_in = stream.Signature(self.i.payload.shape()).create()
        m.d.comb += [
            term_in.payload.eq(self.i.payload),
            term_in.valid.eq(self.i.valid & known),
            self.i.ready.eq(term_in.ready | ~known),
        ]
        with m.If(self.clear):
            m.d.sync += self.errors.mode.eq(0)
        with m.If(self.i.valid & ~known):
            m.d.sync += self.errors.mode.eq(1)

        scaled_layout = data.StructLayout({"t": FLOAT32, "index": range(self._outputs),
                                           "first": 1, "last": 1})
        scaled_out = stream.Signature(scaled_layout).create()

        # The term pipeline.
        p = Pipeline(m, term_in, scaled_out, self.TERM_LATENCY)
        with p.scope("term"):
            term = p.stage(term_in.payload, "in")                               # depth 1
        is_q4_1 = term.mode == mode_code("Q4_1")
        is_mxfp4 = term.mode == mode_code("MXFP4")
        widen = FP16ToFP32.LATENCY
        d_w = fp16_to_fp32(p, term.d_w, name="d_w")                             # 1 + 3
        d_w = Mux(p.delay(is_mxfp4, widen, "is_mxfp4"), p.delay(_e8m0_half(term.d_w[:8]), widen,
                                                                 "e8m0"), d_w)
        d_x = fp16_to_fp32(p, term.d_x, name="d_x")                             # 4
        m_w = fp16_to_fp32(p, term.m_w, name="m_w")                             # 4
        total = int32_to_fp32(p, term.sum, name="sum")                          # 7
        q_sum = int32_to_fp32(p, term.q_sum, name="q_sum")                      # 7
        lag = Int32ToFP32.LATENCY - widen                                       # 3
        scale = fp_mul(p, platform, d_w, d_x, name="scale")                     # 17
        shift = fp_mul(p, platform, p.delay(d_x, lag, "d_x"), q_sum, name="x_sum")  # 20
        product = fp_mul(p, platform, scale, p.delay(total, 1 + widen + FPMul.LATENCY
                                                     - (1 + Int32ToFP32.LATENCY), "sum"),
                         name="product")                                        # 30
        minimum = fp_mul(p, platform, p.delay(m_w, lag + FPMul.LATENCY, "m_w"), shift,
                         name="minimum")                                        # 33
        product = p.delay(product, lag, "product")                              # 33
        with_minimum = fp_add(p, product, minimum, name="q4_1")                 # 43
        depth = self.TERM_LATENCY - 1
        flags = p.delay(Cat(is_q4_1, term.index, term.first, term.last), depth - 1, "flags")
        t = Mux(flags[0], with_minimum, p.delay(product, FPAdd.LATENCY, "t"))
        with p.scope("term"):
            out = p.stage(Cat(t, flags[1:]), "out", shape=scaled_layout)        # 44
        m.d.comb += scaled_out.payload.eq(out)

        # A FIFO between the two halves: its `ready` is a register, so a stall of the output
        # does not run through logic into the clock enable of every stage above.
        m.submodules.scaled = fifo = StreamFIFO(scaled_layout, 4)
        wiring.connect(m, scaled_out, fifo.i)
        scaled = fifo.o

        # The accumulators: one FP adder and a memory of running sums. A term waits in `held`
        # while a sum of its output is anywhere in the adder: it must add to that sum, not
        # to the one in memory. The check compares against the adder's own stage registers,
        # so it involves no `ready`; it counts the stage being written back as in flight, a
        # cycle of caution that keeps a read and a write of one address out of one cycle.
        # (A busy bit per output, set at issue and cleared at write-back, put a 128-way
        # lookup and the FIFO's read enable on one path: 109 MHz.)
        # In LUT RAM: block RAM's unregistered read (5.6 ns clock to output on ECP5) fed the
        # adder's first stage directly and was the critical path (73 MHz).
        memory = Memory(shape=32, depth=self._outputs, init=[],
                        attrs=lut_ram(platform))
        m.submodules.accumulators = memory
        read = memory.read_port(domain="comb")
        write = memory.write_port()

        held = Signal(scaled_layout, reset_less=True)
        held_valid = Signal()
        adder_in = stream.Signature(scaled_layout).create()
        written_layout = data.StructLayout({"value": FLOAT32, "index": range(self._outputs),
                                            "last": 1})
        written = stream.Signature(written_layout).create()
        q = Pipeline(m, adder_in, written, FPAdd.LATENCY)
        base = Mux(held.first, _NEGATIVE_ZERO, read.data)
        value = fp_add(q, base, held.t, name="accumulate")
        tags = []
        tag = Cat(held.index, held.last)
        for k in range(FPAdd.LATENCY):
            tag = q.stage(tag, f"tag_{k + 1}")
            tags.append(tag)
        m.d.comb += written.payload.eq(Cat(value, tag))

        in_flight = Cat((q.valid[k] & (tags[k][:-1] == held.index)) for k in range(len(tags)))
        m.d.comb += [
            read.addr.eq(held.index),
            adder_in.valid.eq(held_valid & ~in_flight.any()),
            adder_in.payload.eq(held),
            scaled.ready.eq(~held_valid | (adder_in.valid & adder_in.ready)),
        ]
        with m.If(scaled.ready):
            m.d.sync += [held.eq(scaled.payload), held_valid.eq(scaled.valid)]

        # Intermediate sums go back to memory whatever the output does; a final one waits
        # for the output to take it.
        m.d.comb += [
            written.ready.eq(~written.payload.last | self.o.ready),
            self.o.valid.eq(written.valid & written.payload.last),
            self.o.payload.index.eq(written.payload.index),
            self.o.payload.value.eq(written.payload.value),
            write.addr.eq(written.payload.index),
            write.data.eq(written.payload.value),
            write.en.eq(written.valid & written.ready),
        ]

        assert_stream_rules(m, self.o, "Dequantizer output")
        return m

"""Vector unit: the binary32 operators of a transformer layer that are not matmuls (norms,
softmax, activations, residual add, RoPE), one command per pass over a vector (docs/vector.md).
"""

from amaranth.hdl import Assert, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..fp.add import FPAdd, fp_add
from ..fp.exp import FPExp, fp_exp
from ..fp.format import FLOAT32, Pipeline
from ..fp.mul import FPMul, fp_mul
from ..fp.recip import FPReciprocal, fp_recip
from ..fifo import StreamFIFO
from ..stream_rules import assert_stream_rules
from .quantizer import BLOCK, OUTPUT_LAYOUT as Q8_0_LAYOUT, Q8_0Quantizer


__all__ = ["VectorUnit", "Op", "reads_b", "writes", "COMMAND_LAYOUT", "OUTPUT_LAYOUT",
           "ERROR_LAYOUT", "SUM_LANES", "MAX_LENGTH"]


class Op(enum.Enum, shape=5):
    """The passes of the vector unit; ``sim/vector.py`` states what each computes."""
    ADD = 0
    MUL = 1
    NORM = 2
    SCALE = 3
    MEAN = 4
    VAR = 5
    RMS = 6
    MAX = 7
    EXP = 8
    SILU = 9
    GELU = 10
    ROPE = 11
    RECIP_ABS = 12
    POLY = 13
    GAUSS = 14
    GELU_ERF = 15


#: The largest ``length`` field (the ``max_length`` parameter may not exceed it).
MAX_LENGTH = 65535

#: One command: the operation, its vector length, the mask limit (elements at index ≥ limit
#: are masked; ``limit ≥ length`` masks nothing), SILU/GELU's gate by ``b``, whether the
#: results go to the Q8_0 quantizer (``o_q8``) instead of ``o``, and two binary32 scalars.
COMMAND_LAYOUT = data.StructLayout({
    "op": Op, "length": 16, "limit": 16, "gated": 1, "quantize": 1, "k1": FLOAT32,
    "k2": FLOAT32,
})

#: One result element; ``last`` marks the last of its command.
OUTPUT_LAYOUT = data.StructLayout({"value": FLOAT32, "last": 1})

#: Sticky error flags: a rejected command (length 0 or above ``max_length``, odd for ROPE, not
#: a multiple of 32 when quantized, ``quantize`` on a pass that writes nothing, op 16–31); a
#: non-finite operand, result or register value.
ERROR_LAYOUT = data.StructLayout({"command": 1, "nonfinite": 1})

#: Partial sums of a reduction (sim/vector.py adds element i to partial i mod SUM_LANES). At
#: least the adder's latency + 1, so that a partial is written back before its next element.
SUM_LANES = 16

#: What goes into the element pipeline besides the operands.
_KIND_WIDTH = 3
_ELEMENT = 0        # an element of the current command
_FIN_MEAN = 1       # a reduction's sum, to become MEAN
_FIN_RSQRT = 2      # … to become SCALE = rsqrt(Σ·k1 + k2)
_FIN_RECIP = 3      # … to become SCALE = recip(Σ)

_ONE = 0x3F800000
_MINUS_ONE = 0xBF800000
_NEG_ZERO = 0x80000000
_NEG_INF = 0xFF800000
_NAN = 0x7FC00000

# GELU's constants (sim/vector.py).
_GELU_G0 = 0x41B2E92F
_GELU_G1 = 0xBD922279

_SIDE = data.StructLayout({
    "op": Op, "kind": _KIND_WIDTH, "gated": 1, "masked": 1, "last": 1, "quantize": 1,
})

#: What leaves the element pipeline.
_RESULT = data.StructLayout({"value": FLOAT32, "side": _SIDE})

#: Results the result FIFO holds: more than the pipeline's latency, so that issue never waits
#: for credit while the output keeps up.
RESULT_DEPTH = 512

_ISSUE = data.StructLayout({
    "x1": FLOAT32, "y1": FLOAT32,   # S1a: u = x1 · y1
    "x2": FLOAT32, "y2": FLOAT32,   # S1b: u2 = x2 · y2 (RoPE's second product)
    "w": FLOAT32,                   # S2: v = u + w, or u ± u2 for RoPE
    "a": FLOAT32, "b": FLOAT32,     # the element's operands, for the later multiplications
    "rope": 1, "rope_minus": 1,
    "side": _SIDE,
})


def _negate(x):
    return Cat(_bits(x)[:31], ~_bits(x)[31])


def _bits(x):
    return x.as_value() if hasattr(x, "as_value") else x


def _nonfinite(x):
    return _bits(x)[23:31] == 0xFF


def _is_nan(x):
    return _nonfinite(x) & (_bits(x)[:23] != 0)


def reads_b(op, gated):
    """Whether a command of ``op`` (and ``gated``) reads operand stream ``b``."""
    return ((op == Op.ADD) | (op == Op.MUL) | (op == Op.NORM) | (op == Op.ROPE)
            | (op == Op.POLY) | (op == Op.GAUSS) | (op == Op.GELU_ERF)
            | (((op == Op.SILU) | (op == Op.GELU)) & gated))


def writes(op):
    """Whether a command of ``op`` writes results (the others fold into a register)."""
    return ~((op == Op.MEAN) | (op == Op.VAR) | (op == Op.RMS) | (op == Op.MAX))


def _summed(op):
    return (op == Op.MEAN) | (op == Op.VAR) | (op == Op.RMS) | (op == Op.EXP)


def _waits_for_sum(op):
    # Reads MEAN or SCALE, or needs the partial sums: waits for the sum reduction before it.
    return (op == Op.NORM) | (op == Op.SCALE) | _summed(op)


def _waits_for_max(op):
    # Reads MAX or folds into it: waits for the maximum before it. A MAX pass may run while a
    # sum is still being reduced, so softmax rows overlap (sim.vector.softmax_rows).
    return (op == Op.MAX) | (op == Op.EXP)


def _delay(p, value, stages, name):
    # Beyond a few stages a RAM ring costs less than a flip-flop per bit and stage.
    if stages > 8:
        return p.delay_memory(value, stages, name)
    return p.delay(value, stages, name)


def _sigmoid(side):
    # The elements of SILU and GELU (not a reduction's sum on its way to a register).
    return ((side.op == Op.SILU) | (side.op == Op.GELU)) & (side.kind == _ELEMENT)


class VectorUnit(wiring.Component):
    """Executes vector commands, one pass per command, one element per cycle.

    Every element of every operation goes through one binary32 pipeline of fixed stages::

        u = x1·y1, u2 = x2·y2 → v = u + w → w' = v·y3 → z = w'·y4 → e = exp(z) or z
          → d = e + y6 → r = recip(d), rsqrt(d) or d → y = r·y8 → o = y·y9

    whose operands each operation picks (``docs/vector.md`` has the table); an operand of 1 or
    −0 leaves a value unchanged bit for bit, so every operation is exactly the sequence of
    ``sim/vector.py``. Reductions fold the pipeline's output into ``SUM_LANES`` partial sums
    (or a running maximum); the sum then goes through the same pipeline once more to become a
    register (MEAN = Σ·k1, SCALE = rsqrt(Σ·k1 + k2) or recip(Σ)).

    A command that reads or writes a register waits until the reduction before it has written
    its register; the others follow the previous command's elements without a gap.

    The pipeline never stalls. Its results go into a FIFO of ``RESULT_DEPTH`` entries, and an
    element issues only while fewer than that many are in the pipeline and the FIFO together,
    so the outputs' ``ready`` drives the FIFO alone and not the clock enable of the pipeline's
    tens of thousands of registers.

    Parameters
    ----------
    max_length : int
        Longest vector a command may have, 2 to 65535 (``vector_max_length`` of the
        configuration). Longer, zero-length and otherwise bad commands are rejected:
        ``errors.command`` is set, their operand elements are taken and dropped, and nothing
        is written.

    Members
    -------
    i_cmd : ``In(stream.Signature(COMMAND_LAYOUT))``
        Commands.
    i_a, i_b : ``In(stream.Signature(FLOAT32))``
        Operand elements, ``length`` per command (``i_b`` only for the operations that read it).
    o : ``Out(stream.Signature(OUTPUT_LAYOUT))``
        Results, ``length`` per writing command, ``last`` on the last.
    o_q8 : ``Out(stream.Signature(quantizer.OUTPUT_LAYOUT))``
        The results of commands with ``quantize`` set, as Q8_0 blocks from the activation
        quantizer (docs/quantizer.md): one beat per element, ``gguf.quants.quantize`` byte for
        byte.
    errors : ``Out(ERROR_LAYOUT)``
        Sticky error flags.
    clear : ``In(1)``
        Clears ``errors``.
    busy : ``Out(1)``
        A command, an element or a reduction is in progress.
    """

    #: Cycles from an element's issue to its result.
    LATENCY = (FPMul.LATENCY + FPAdd.LATENCY + 2 * FPMul.LATENCY + FPExp.LATENCY
               + FPAdd.LATENCY + FPReciprocal.LATENCY + 2 * FPMul.LATENCY)

    def __init__(self, max_length=16384):
        if (not isinstance(max_length, int) or isinstance(max_length, bool)
                or not 2 <= max_length <= MAX_LENGTH):
            raise ValueError(f"Vector unit max_length must be an integer from 2 to "
                             f"{MAX_LENGTH}, not {max_length!r}")
        self._max_length = max_length
        super().__init__({
            "i_cmd": In(stream.Signature(COMMAND_LAYOUT)),
            "i_a": In(stream.Signature(FLOAT32)),
            "i_b": In(stream.Signature(FLOAT32)),
            "o": Out(stream.Signature(OUTPUT_LAYOUT)),
            "o_q8": Out(stream.Signature(Q8_0_LAYOUT)),
            "errors": Out(ERROR_LAYOUT),
            "clear": In(1),
            "busy": Out(1),
        })

    @classmethod
    def from_config(cls, config):
        return cls(max_length=config.vector_max_length)

    @property
    def max_length(self):
        return self._max_length

    def elaborate(self, platform):
        m = Module()

        # ---- Registers written by reductions --------------------------------------------
        mean = Signal(32)
        scale = Signal(32, init=_ONE)
        maximum = Signal(32, init=_NEG_INF)
        pending_sum = Signal()  # a sum reduction has not written its register yet
        pending_max = Signal()  # a MAX pass has not finished
        nonfinite = Signal()

        # ---- The element pipeline --------------------------------------------------------
        chain_i = stream.Signature(_ISSUE).create()
        chain_o = stream.Signature(_RESULT).create()
        p = Pipeline(m, chain_i, chain_o, self.LATENCY)
        # The pipeline never stalls: an element issues only with a place reserved for its
        # result in the result FIFO, so no output's ready reaches the pipeline's registers.
        m.submodules.results = results = StreamFIFO(_RESULT, RESULT_DEPTH, buffered=True)
        m.d.comb += [
            chain_o.ready.eq(1),
            results.i.valid.eq(chain_o.valid),
            results.i.payload.eq(chain_o.payload),
        ]
        m.d.sync += Assert(~chain_o.valid | results.i.ready,
                           "Vector unit result FIFO overflows: the issue credit is wrong")
        front_i = stream.Signature(_ISSUE).create()     # the front end's issue, before credit
        in_flight = Signal(range(RESULT_DEPTH + 1))     # issued, not yet out of the FIFO
        room = Signal()
        m.d.comb += [
            room.eq(in_flight != RESULT_DEPTH),
            chain_i.valid.eq(front_i.valid & room),
            chain_i.payload.eq(front_i.payload),
            front_i.ready.eq(chain_i.ready & room),
        ]
        # The block RAM's output (5.6 ns from the clock on ECP5) must not feed the output
        # logic directly: a two-entry FIFO in flip-flops and LUT RAM sits behind it.
        m.submodules.result_out = result_out = StreamFIFO(_RESULT, 2)
        wiring.connect(m, results.o, result_out.i)
        res = result_out.o
        m.d.sync += in_flight.eq(in_flight + (chain_i.valid & chain_i.ready)
                                 - (res.valid & res.ready))
        el = chain_i.payload
        s1 = FPMul.LATENCY
        u = fp_mul(p, platform, el.x1, el.y1, "s1a")
        u2 = fp_mul(p, platform, el.x2, el.y2, "s1b")
        side = _delay(p, el.side, s1, "side_s2")
        w = _delay(p, el.w, s1, "w_s2")
        rope = _delay(p, Cat(el.rope, el.rope_minus), s1, "rope_s2")
        w2 = Mux(rope[0], Mux(rope[1], _negate(u2), u2), w)
        v = fp_add(p, u, w2, "s2")
        side = _delay(p, side, FPAdd.LATENCY, "side_s3")
        side = data.View(_SIDE, side)
        y3 = Mux(side.op == Op.NORM, scale,
                 Mux(side.op == Op.VAR, v, Mux(side.op == Op.GELU, _GELU_G1, _ONE)))
        w3 = fp_mul(p, platform, v, y3, "s3")
        stages = s1 + FPAdd.LATENCY + FPMul.LATENCY
        ab = _delay(p, Cat(el.a, el.b), stages, "ab_s4")
        side = data.View(_SIDE, _delay(p, side, FPMul.LATENCY, "side_s4"))
        # ab holds k2 in place of a for POLY and GAUSS (S1 has already taken a).
        y4 = Mux((side.op == Op.NORM) | (side.op == Op.POLY), ab[32:],
                 Mux((side.op == Op.GELU) | (side.op == Op.GAUSS) | (side.op == Op.GELU_ERF),
                     ab[:32], _ONE))
        z = fp_mul(p, platform, w3, y4, "s4")
        side = data.View(_SIDE, _delay(p, side, FPMul.LATENCY, "side_s5"))
        ab = _delay(p, ab, FPMul.LATENCY, "ab_s5")

        special = ((side.op == Op.EXP) | (side.op == Op.SILU) | (side.op == Op.GELU)
                   | (side.op == Op.GAUSS))
        use_exp = special & (side.kind == _ELEMENT)
        e_exp = fp_exp(p, platform, z, "s5")
        e_bypass = _delay(p, z, FPExp.LATENCY, "z_bypass")
        use_exp = _delay(p, use_exp, FPExp.LATENCY, "use_exp")
        e = Mux(use_exp, e_exp, e_bypass)
        side = data.View(_SIDE, _delay(p, side, FPExp.LATENCY, "side_s6"))
        ab = _delay(p, ab, FPExp.LATENCY, "ab_s6")

        poly = (side.op == Op.POLY) & (side.kind == _ELEMENT)
        d = fp_add(p, e, Mux(poly, ab[:32], Mux(_sigmoid(side), _ONE, _NEG_ZERO)), "s6")
        side = data.View(_SIDE, _delay(p, side, FPAdd.LATENCY, "side_s7"))
        ab = _delay(p, ab, FPAdd.LATENCY, "ab_s7")

        use_recip = (_sigmoid(side) | ((side.op == Op.RECIP_ABS) & (side.kind == _ELEMENT))
                     | (side.kind == _FIN_RSQRT) | (side.kind == _FIN_RECIP))
        r_recip = fp_recip(p, platform, d, side.kind == _FIN_RSQRT, "s7")
        r_bypass = _delay(p, d, FPReciprocal.LATENCY, "d_bypass")
        use_recip = _delay(p, use_recip, FPReciprocal.LATENCY, "use_recip")
        r = Mux(use_recip, r_recip, r_bypass)
        side = data.View(_SIDE, _delay(p, side, FPReciprocal.LATENCY, "side_s8"))
        ab = _delay(p, ab, FPReciprocal.LATENCY, "ab_s8")

        y = fp_mul(p, platform, r, Mux(_sigmoid(side), ab[:32], _ONE), "s8")
        side = data.View(_SIDE, _delay(p, side, FPMul.LATENCY, "side_s9"))
        ab = _delay(p, ab, FPMul.LATENCY, "ab_s9")
        gate = _sigmoid(side) & side.gated
        result = fp_mul(p, platform, y, Mux(gate, ab[32:], _ONE), "s9")
        side = _delay(p, side, FPMul.LATENCY, "side_out")
        m.d.comb += [chain_o.payload.value.eq(result), chain_o.payload.side.eq(side)]

        # ---- Outputs and reductions ------------------------------------------------------
        out_side = res.payload.side
        value = res.payload.value
        is_element = out_side.kind == _ELEMENT
        written = is_element & writes(out_side.op)
        to_output = written & ~out_side.quantize
        to_quantizer = written & out_side.quantize
        masked_value = Mux(out_side.masked,
                           Mux(out_side.op == Op.MAX, _NEG_INF, 0), value.as_value())
        m.submodules.quantizer = quantizer = Q8_0Quantizer()
        wiring.connect(m, quantizer.o, wiring.flipped(self.o_q8))
        m.d.comb += [
            res.ready.eq(Mux(to_output, self.o.ready,
                                 Mux(to_quantizer, quantizer.i.ready, 1))),
            self.o.valid.eq(res.valid & to_output),
            self.o.payload.value.eq(masked_value),
            self.o.payload.last.eq(out_side.last),
            quantizer.i.valid.eq(res.valid & to_quantizer),
            quantizer.i.payload.eq(masked_value),
            quantizer.clear.eq(self.clear),
        ]
        # Elements in the quantizer (one output beat each), so that busy covers them.
        in_quantizer = Signal(16)
        m.d.sync += in_quantizer.eq(in_quantizer + (quantizer.i.valid & quantizer.i.ready)
                                    - (self.o_q8.valid & self.o_q8.ready))
        taken = res.valid & res.ready
        with m.If(taken & written & _nonfinite(masked_value)):
            m.d.sync += nonfinite.eq(1)

        # Sum reduction: SUM_LANES partials through one adder that never stalls.
        m.submodules.sum_adder = adder = FPAdd()
        partials = [Signal(32, name=f"partial{j}", init=_NEG_ZERO)
                    for j in range(SUM_LANES)]
        lane = Signal(range(SUM_LANES))
        lane_bits = (SUM_LANES - 1).bit_length()
        lane_valid = Signal(FPAdd.LATENCY)
        lane_pipe = Signal(FPAdd.LATENCY * lane_bits)
        m.d.comb += adder.o.ready.eq(1)

        def partial(index):
            return Cat(*partials).word_select(index, 32)

        summed = is_element & _summed(out_side.op)
        combine = Signal()          # the tree combination is issuing
        combine_size = Signal(range(SUM_LANES + 1))
        combine_index = Signal(range(SUM_LANES))
        issue_lane = Signal(range(SUM_LANES))
        issue = Signal()
        with m.If(taken & summed):
            m.d.comb += [
                issue.eq(1),
                adder.i.payload.a.eq(partial(lane)),
                adder.i.payload.b.eq(masked_value),
                issue_lane.eq(lane),
            ]
            m.d.sync += lane.eq(lane + 1)
        with m.Elif(combine):
            m.d.comb += [
                issue.eq(1),
                adder.i.payload.a.eq(partial(Cat(Const(0, 1), combine_index))),
                adder.i.payload.b.eq(partial(Cat(Const(1, 1), combine_index))),
                issue_lane.eq(combine_index),
            ]
        m.d.comb += adder.i.valid.eq(issue)
        m.d.sync += [
            lane_valid.eq(Cat(issue, lane_valid[:-1])),
            lane_pipe.eq(Cat(issue_lane, lane_pipe[:-lane_bits])),
        ]
        out_lane = lane_pipe[-lane_bits:]
        with m.If(adder.o.valid):
            for j in range(SUM_LANES):
                with m.If(out_lane == j):
                    m.d.sync += partials[j].eq(adder.o.payload)
        adder_busy = lane_valid.any() | adder.o.valid

        # Maximum: one register, IEEE maximum, order-independent.
        def key(x):
            bits = x.as_value() if hasattr(x, "as_value") else x
            return Mux(bits[31], ~bits, bits | Const(1 << 31, 32))

        with m.If(taken & is_element & (out_side.op == Op.MAX)):
            nan = _is_nan(masked_value)
            old_nan = _is_nan(maximum)
            with m.If(nan | old_nan):
                m.d.sync += maximum.eq(_NAN)
            with m.Elif(key(maximum) < key(masked_value)):
                m.d.sync += maximum.eq(masked_value)

        # ---- Reduction sequencing --------------------------------------------------------
        # After the last element of a reduction leaves the pipeline: wait for the adder, add
        # the partials pairwise (16 → 8 → … → 1), then send the sum through the pipeline.
        max_done = Signal()         # the maximum was written last cycle: check it
        with m.If(max_done):
            m.d.sync += max_done.eq(0)
            with m.If(_nonfinite(maximum)):
                m.d.sync += nonfinite.eq(1)
        red_op = Signal(Op)
        red_k1 = Signal(FLOAT32)
        red_k2 = Signal(FLOAT32)
        fin_ready = Signal()        # the sum waits to enter the pipeline
        fin_sent = Signal()
        with m.If(taken & is_element & out_side.last & (out_side.op == Op.MAX)):
            m.d.sync += [pending_max.eq(0), max_done.eq(1)]
        with m.FSM(name="reduction"):
            with m.State("IDLE"):
                with m.If(taken & summed & out_side.last):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(~adder_busy & ~(taken & summed)):
                    m.d.sync += [combine_size.eq(SUM_LANES), combine_index.eq(0)]
                    m.next = "COMBINE"
            with m.State("COMBINE"):
                with m.If(combine_size == 1):
                    m.d.sync += fin_ready.eq(1)
                    m.next = "FIN"
                with m.Else():
                    m.d.comb += combine.eq(1)
                    m.d.sync += combine_index.eq(combine_index + 1)
                    with m.If(combine_index == (combine_size >> 1) - 1):
                        m.next = "LEVEL"
            with m.State("LEVEL"):
                with m.If(~adder_busy):
                    m.d.sync += [combine_size.eq(combine_size >> 1), combine_index.eq(0)]
                    m.next = "COMBINE"
            with m.State("FIN"):
                with m.If(taken & (out_side.kind != _ELEMENT)):
                    m.d.sync += [pending_sum.eq(0), lane.eq(0), fin_sent.eq(0)]
                    m.d.sync += [partials[j].eq(_NEG_ZERO) for j in range(SUM_LANES)]
                    with m.Switch(out_side.kind):
                        with m.Case(_FIN_MEAN):
                            m.d.sync += mean.eq(value)
                        with m.Case(_FIN_RSQRT, _FIN_RECIP):
                            m.d.sync += scale.eq(value)
                            with m.If(red_op == Op.RMS):
                                m.d.sync += mean.eq(0)
                    with m.If(_nonfinite(value)):
                        m.d.sync += nonfinite.eq(1)
                    m.next = "IDLE"

        # ---- Command front end -----------------------------------------------------------
        cmd = Signal(COMMAND_LAYOUT)
        index = Signal(16)
        cmd_reads_b = reads_b(cmd.op, cmd.gated)
        fin_kind = Mux(red_op == Op.MEAN, _FIN_MEAN, Mux(red_op == Op.EXP, _FIN_RECIP,
                                                          _FIN_RSQRT))
        # RoPE holds a pair's first element and table entry until the second arrives.
        held_x0 = Signal(FLOAT32)
        held_c = Signal(FLOAT32)
        held_x1 = Signal(FLOAT32)
        held_s = Signal(FLOAT32)
        rope_phase = Signal(2)      # 0: take x0; 1: take x1, issue o0; (second issue is 2)
        second = Signal()           # o1 of the held pair still to issue

        issue_el = Signal(_ISSUE)   # the front end's element
        fin_el = Signal(_ISSUE)     # a reduction's sum on its way to a register
        front_valid = Signal()
        take = Signal()             # consume one element of a (and b)
        running = Signal()          # taking the elements of a valid command
        operands = self.i_a.valid & (self.i_b.valid | ~cmd_reads_b)

        fin_active = fin_ready & ~fin_sent
        m.d.comb += [
            fin_el.x1.eq(partials[0]),
            fin_el.y1.eq(Mux(red_op == Op.EXP, _ONE, red_k1)),
            fin_el.w.eq(Mux((red_op == Op.VAR) | (red_op == Op.RMS), red_k2, _NEG_ZERO)),
            fin_el.side.kind.eq(fin_kind),
            # A neutral operation, so that the later stages leave the sum alone.
            fin_el.side.op.eq(Op.ADD),
            front_i.valid.eq(Mux(fin_active, 1, front_valid)),
            front_i.payload.eq(Mux(fin_active, fin_el, issue_el)),
        ]
        with m.If(fin_active & front_i.ready):
            m.d.sync += [fin_sent.eq(1), fin_ready.eq(0)]
        front_free = ~fin_active

        a_value = self.i_a.payload
        b_value = self.i_b.payload
        op = cmd.op
        a_negative = _bits(a_value)[31]
        x1 = Mux(op == Op.RECIP_ABS, Cat(_bits(a_value)[:31], 0),
             Mux((op == Op.GAUSS) | (op == Op.GELU_ERF), b_value, a_value))
        y1 = Mux((op == Op.MUL) | (op == Op.POLY), b_value,
             Mux(op == Op.SCALE, scale,
             Mux((op == Op.RMS) | (op == Op.GELU), a_value,
             Mux((op == Op.MAX) | (op == Op.EXP) | (op == Op.RECIP_ABS) | (op == Op.GAUSS),
                 cmd.k1,
             Mux(op == Op.GELU_ERF, Mux(a_negative, cmd.k1, _negate(cmd.k1)),
             Mux(op == Op.SILU, _MINUS_ONE, _ONE))))))
        w_static = Mux(op == Op.ADD, b_value,
                   Mux((op == Op.NORM) | (op == Op.VAR), _negate(mean),
                   Mux(op == Op.EXP, _negate(maximum),
                   Mux(op == Op.GELU, _GELU_G0,
                   Mux(op == Op.RECIP_ABS, cmd.k2,
                   Mux(op == Op.POLY, cmd.k1,
                   Mux((op == Op.GELU_ERF) & ~a_negative, _ONE, _NEG_ZERO)))))))

        with m.FSM(name="front"):
            with m.State("IDLE"):
                new = self.i_cmd.payload
                bad = ((new.length == 0) | (new.length > self.max_length)
                       | ((new.op == Op.ROPE) & new.length[0])
                       | (new.quantize & ((new.length % BLOCK != 0) | ~writes(new.op)))
                       | ~((new.op.as_value() <= Op.GELU_ERF.value)))
                wait = ((_waits_for_sum(new.op) & pending_sum)
                        | (_waits_for_max(new.op) & pending_max))
                m.d.comb += self.i_cmd.ready.eq(~wait)
                with m.If(self.i_cmd.valid & ~wait):
                    m.d.sync += [cmd.eq(new), index.eq(0), rope_phase.eq(0), second.eq(0)]
                    with m.If(bad):
                        m.d.sync += self.errors.command.eq(1)
                        with m.If(new.length != 0):
                            m.next = "DROP"
                    with m.Else():
                        with m.If(_summed(new.op)):
                            m.d.sync += [pending_sum.eq(1), red_op.eq(new.op),
                                         red_k1.eq(new.k1), red_k2.eq(new.k2)]
                        with m.If(new.op == Op.MAX):
                            m.d.sync += [pending_max.eq(1), maximum.eq(_NEG_INF)]
                        m.next = "RUN"
            with m.State("DROP"):
                m.d.comb += take.eq(operands)
                with m.If(take):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == cmd.length - 1):
                        m.next = "IDLE"
            with m.State("RUN"):
                m.d.comb += running.eq(1)
                last = index == cmd.length - 1
                with m.If(op == Op.ROPE):
                    # index counts the elements taken; a pair's two results are issued when
                    # its second element is taken and in the cycle after, while the next
                    # pair's first element may already be taken.
                    issue_second = second & front_free & front_i.ready
                    with m.If(second):
                        # o1 = x0·s + x1·c.
                        m.d.comb += [
                            front_valid.eq(front_free),
                            issue_el.x1.eq(held_x0), issue_el.y1.eq(held_s),
                            issue_el.x2.eq(held_x1), issue_el.y2.eq(held_c),
                            issue_el.rope.eq(1), issue_el.rope_minus.eq(0),
                            issue_el.side.last.eq(index == cmd.length),
                        ]
                        with m.If(issue_second):
                            m.d.sync += second.eq(0)
                            with m.If(index == cmd.length):
                                m.next = "IDLE"
                    with m.Elif(rope_phase == 1):
                        # o0 = x0·c − x1·s.
                        m.d.comb += [
                            front_valid.eq(operands & front_free),
                            issue_el.x1.eq(held_x0), issue_el.y1.eq(held_c),
                            issue_el.x2.eq(a_value), issue_el.y2.eq(b_value),
                            issue_el.rope.eq(1), issue_el.rope_minus.eq(1),
                            take.eq(operands & front_free & front_i.ready),
                        ]
                        with m.If(take):
                            m.d.sync += [held_x1.eq(a_value), held_s.eq(b_value),
                                         rope_phase.eq(0), second.eq(1),
                                         index.eq(index + 1)]
                    with m.If((rope_phase == 0) & (index != cmd.length)
                              & (~second | issue_second)):
                        m.d.comb += take.eq(operands)
                        with m.If(operands):
                            m.d.sync += [held_x0.eq(a_value), held_c.eq(b_value),
                                         rope_phase.eq(1), index.eq(index + 1)]
                with m.Else():
                    m.d.comb += [
                        front_valid.eq(operands & front_free),
                        issue_el.x1.eq(x1), issue_el.y1.eq(y1),
                        issue_el.w.eq(w_static),
                        # GAUSS adds a·a, S1's second product, as RoPE adds its own.
                        issue_el.x2.eq(a_value), issue_el.y2.eq(a_value),
                        issue_el.rope.eq(op == Op.GAUSS), issue_el.rope_minus.eq(0),
                        # The causal mask is softmax's: the other passes ignore limit.
                        issue_el.side.masked.eq(((op == Op.MAX) | (op == Op.EXP))
                                                & (index >= cmd.limit)),
                        issue_el.side.last.eq(last),
                        take.eq(operands & front_free & front_i.ready),
                    ]
                    with m.If(take):
                        m.d.sync += index.eq(index + 1)
                        with m.If(last):
                            m.next = "IDLE"
                m.d.comb += [
                    issue_el.a.eq(Mux((op == Op.POLY) | (op == Op.GAUSS), cmd.k2, a_value)),
                    issue_el.b.eq(b_value),
                    issue_el.side.op.eq(op), issue_el.side.gated.eq(cmd.gated),
                    issue_el.side.quantize.eq(cmd.quantize),
                    issue_el.side.kind.eq(_ELEMENT),
                ]

        m.d.comb += [
            self.i_a.ready.eq(take),
            self.i_b.ready.eq(take & cmd_reads_b),
        ]
        with m.If(take & running & (_nonfinite(a_value) | (cmd_reads_b & _nonfinite(b_value)))):
            m.d.sync += nonfinite.eq(1)

        m.d.comb += [
            self.errors.nonfinite.eq(nonfinite),
            self.busy.eq((in_flight != 0) | pending_sum | pending_max | max_done
                         | (in_quantizer != 0)
                         | ~self.i_cmd.ready),
        ]
        with m.If(self.clear):
            m.d.sync += [nonfinite.eq(0), self.errors.command.eq(0)]

        assert_stream_rules(m, self.o, "Vector unit output")
        return m

"""Pipelined binary32 reciprocal and reciprocal square root on one datapath, bit-exact with the
golden sequences of sim/vector_math.py (docs/fp.md)."""

from amaranth.hdl import Cat, Const, Module, Mux, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sim.vector_math import HALF, ONE, RECIP_SEEDS, RSQRT_SEEDS

from ..stream_rules import assert_stream_rules
from .add import FPAdd, fp_add
from .format import CANONICAL_NAN32, FLOAT32, Pipeline
from .mul import FPMul, fp_mul


__all__ = ["FPReciprocal", "fp_recip", "RECIPROCAL_OPERAND"]


#: What :class:`FPReciprocal` takes: the operand and which function of it.
RECIPROCAL_OPERAND = data.StructLayout({"x": FLOAT32, "rsqrt": 1})

_M = FPMul.LATENCY
_A = FPAdd.LATENCY

#: Stages of one Newton step: x·y, ·(y or 1), 1 −, y·, ·(½ or 1), y +.
_STEP = 4 * _M + 2 * _A


class FPReciprocal(wiring.Component):
    """``1/x`` or ``1/√x`` in IEEE-754 binary32, chosen per operand, bit for bit the sequences
    of :func:`sim.vector_math.recip` and :func:`sim.vector_math.rsqrt`.

    A seed from a 128-entry table (one ROM holds both tables) with the exponent negated (and
    halved for ``1/√x``), then two Newton steps on one shared datapath::

        p = x·y;  q = p·(y or 1);  e = 1 − q;  c = y·e;  c' = c·(½ or 1);  y ← y + c'

    With 1 (``1/x``) the two extra products are exact copies (every product the unit makes
    is already a canonical NaN when it is a NaN), so the step is ``y + y·(1 − x·y)``, the
    golden reciprocal's; with ``y`` and ½ it is the golden ``y + (y·(1 − (x·y)·y))·½``.
    Every ``+`` and ``·`` is one :func:`~rtl.fp.add.fp_add` or :func:`~rtl.fp.mul.fp_mul`.

    Special cases, from the operand's fields, as the golden model decides them: ``1/x`` of ±0
    and of a subnormal is ±∞, of ``|x| ≥ 2^126`` (its reciprocal would be subnormal) and ±∞
    is ±0; ``1/√x`` of +0 and of a positive subnormal is +∞, of −0 is −∞, of +∞ is +0, of a
    negative number NaN; NaN gives the canonical NaN 0x7FC00000.

    One result per cycle, :attr:`LATENCY` cycles after the operand is taken.

    Members
    -------
    i : ``In(stream.Signature(RECIPROCAL_OPERAND))``
        ``x`` (a :data:`~rtl.fp.format.FLOAT32`) and ``rsqrt``: 0 for ``1/x``, 1 for ``1/√x``.
    o : ``Out(stream.Signature(FLOAT32))``
        The results, in order.
    """

    #: Cycles from taking the operand to offering the result: take, seed, two Newton steps,
    #: the special-case override.
    LATENCY = 2 + 2 * _STEP + 1

    i: In(stream.Signature(RECIPROCAL_OPERAND))
    o: Out(stream.Signature(FLOAT32))

    def elaborate(self, platform):
        m = Module()
        p = Pipeline(m, self.i, self.o, self.LATENCY)
        m.d.comb += self.o.payload.eq(fp_recip(p, platform, self.i.payload.x,
                                               self.i.payload.rsqrt))

        assert_stream_rules(m, self.o, "FP reciprocal output")
        return m


def _negated(value):
    value = Value.cast(value)
    return Cat(value[:31], ~value[31])


def _newton(p, platform, x, y, rsqrt, name):
    """One Newton step from ``y`` (for ``1/x``, or ``1/√x`` if ``rsqrt``), :data:`_STEP`
    stages; ``y`` and the mode wait beside the products in RAM."""
    one, half = Const(ONE, 32), Const(HALF, 32)
    product = fp_mul(p, platform, x, y, f"{name}_xy")
    waiting = p.delay_memory(Cat(y, rsqrt), _M, f"{name}_y1", shape=33)
    q = fp_mul(p, platform, product, Mux(waiting[32], waiting[:32], one), f"{name}_q")
    e = fp_add(p, one, _negated(q), f"{name}_e")
    waiting = p.delay_memory(waiting, _M + _A, f"{name}_y2", shape=33)
    c = fp_mul(p, platform, waiting[:32], e, f"{name}_c")
    waiting = p.delay_memory(waiting, _M, f"{name}_y3", shape=33)
    c = fp_mul(p, platform, c, Mux(waiting[32], half, one), f"{name}_half")
    y = p.delay_memory(waiting[:32], _M, f"{name}_y4", shape=32)
    return fp_add(p, y, c, f"{name}_y")


def fp_recip(p, platform, x, rsqrt, name="recip"):
    """The stages of ``1/x`` (``rsqrt`` 0) or ``1/√x`` (``rsqrt`` 1) of binary32 ``x`` in
    pipeline ``p``: the registered result, :attr:`FPReciprocal.LATENCY` stages later.
    ``rsqrt`` is a 1-bit value that comes with ``x``. ``name`` prefixes the registers,
    memories, ROM and DSPs (each op inside is named ``{name}_{op}``)."""
    # 1: take the operand.
    x = p.stage(x, f"{name}_s1_x", shape=FLOAT32)
    rsqrt = p.stage(rsqrt, f"{name}_s1_rsqrt", shape=1)
    exponent, fraction, sign = x.exponent, x.fraction, x.sign

    # 2: the seed. One ROM holds both tables (reciprocal at 0–127, rsqrt at 128–255), read
    # with the pipeline's enable, so its output is this stage's register. The rsqrt table is
    # indexed by the parity of the unbiased exponent (odd when the field is even) and the top
    # 6 fraction bits, the reciprocal's by the top 7.
    seeds = [s & 0x7FFFFF for s in RECIP_SEEDS] + [s & 0x7FFFFF for s in RSQRT_SEEDS]
    rom = Memory(shape=23, depth=256, init=seeds)
    p.m.submodules[f"{name}_seeds"] = rom
    read = rom.read_port(transparent_for=())
    index = Mux(rsqrt, Cat(fraction[17:], ~exponent[0]), fraction[16:])
    p.m.d.comb += [read.addr.eq(Cat(index, rsqrt)), read.en.eq(p.advance)]
    # The seed's exponent field: 253 − e clipped to 1 for the reciprocal; for rsqrt
    # 126 − ⌊(e − 127)/2⌋ = 190 − ⌊(e + 1)/2⌋, which is always in [62, 190].
    field = Mux(rsqrt, 190 - ((exponent + 1) >> 1), Mux(exponent >= 252, 1, 253 - exponent))
    s2_field = p.stage(field[:8], f"{name}_s2_field", shape=8)
    s2_sign = p.stage(sign & ~rsqrt, f"{name}_s2_sign")
    y = Cat(read.data, s2_field, s2_sign)

    # The special cases, decided now and applied after the Newton steps.
    zero_operand = (exponent == 0) & (fraction == 0)
    nan = ((exponent == 0xFF) & (fraction != 0)) | (rsqrt & sign & ~zero_operand)
    infinite = exponent == 0
    zero = Mux(rsqrt, (exponent == 0xFF) & ~sign, exponent >= 253) & ~nan
    s2_x = p.stage(x, f"{name}_s2_x", shape=FLOAT32)
    s2_rsqrt = p.stage(rsqrt, f"{name}_s2_rsqrt")
    s2_special = p.stage(Cat(nan, infinite, zero, sign), f"{name}_s2_special", shape=4)

    y = _newton(p, platform, s2_x, y, s2_rsqrt, f"{name}_step1")
    waiting = p.delay_memory(Cat(s2_x.as_value(), s2_rsqrt, s2_special), _STEP, f"{name}_x",
                             shape=37)
    y = _newton(p, platform, waiting[:32], y, waiting[32], f"{name}_step2")
    special = p.delay_memory(waiting[33:], _STEP, f"{name}_special", shape=4)

    nan, infinite, zero, sign = special[0], special[1], special[2], special[3]
    result = Mux(nan, CANONICAL_NAN32,
                 Mux(infinite, Cat(Const(0, 23), Const(0xFF, 8), sign),
                     Mux(zero, Cat(Const(0, 31), sign), y)))
    return p.stage(result, f"{name}_result", shape=32)

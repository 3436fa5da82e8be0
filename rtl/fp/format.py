"""What the binary32 units share: the IEEE-754 layouts, the pipeline control, leading-zero count,
and round-to-nearest-even packing (docs/fp.md)."""

from amaranth.hdl import Cat, Const, Mux, Shape, Signal, Value
from amaranth.lib import data
from amaranth.lib.memory import Memory


__all__ = ["FLOAT32", "FLOAT16", "OPERANDS", "CANONICAL_NAN32", "CANONICAL_NAN16",
           "Pipeline", "leading_zeros", "round_float32",
           "significand_and_exponent"]


#: IEEE-754 binary32, fields in bit order (fraction in bits 0–22).
FLOAT32 = data.StructLayout({"fraction": 23, "exponent": 8, "sign": 1})

#: IEEE-754 binary16 (the scales of GGUF blocks).
FLOAT16 = data.StructLayout({"fraction": 10, "exponent": 5, "sign": 1})

#: The two operands of a binary operation.
OPERANDS = data.StructLayout({"a": FLOAT32, "b": FLOAT32})

#: Every NaN a unit produces is this quiet NaN, whatever the NaN operands were: the payload
#: NumPy would give depends on which operand the compiler put first, so no hardware can match
#: it bit for bit. (RISC-V makes the same choice.)
CANONICAL_NAN32 = 0x7FC00000
CANONICAL_NAN16 = 0x7E00


class Pipeline:
    """Valid bits and a common clock enable for a fixed-latency pipeline between two streams.

    Every stage moves when the output register is empty or being taken, so the pipeline holds
    ``stages`` results under backpressure and loses none. ``i.ready`` is therefore
    combinational from ``o.ready``; a unit that must cut that path puts a
    :class:`~rtl.fifo.StreamFIFO` after it.

    :meth:`stage` registers a value into the next stage; the unit connects the last stage's
    register to ``o.payload``.
    """

    def __init__(self, m, i, o, stages):
        self.advance = Signal()
        self.valid = Signal(stages)
        m.d.comb += [
            self.advance.eq(~o.valid | o.ready),
            i.ready.eq(self.advance),
            o.valid.eq(self.valid[-1]),
        ]
        with m.If(self.advance):
            m.d.sync += self.valid.eq(Cat(i.valid, self.valid[:-1]))
        self.m = m
        self._prefix = ""
        self._rings = {}

    def stage(self, value, name, shape=None):
        """A register of ``value`` (of ``shape``, default the value's) loaded when the pipeline
        moves. Data registers need no reset: the valid bits say when they mean something."""
        if shape is None:
            shape = value.shape() if hasattr(value, "shape") else Value.cast(value).shape()
        register = Signal(shape, name=self._prefix + name, reset_less=True)
        with self.m.If(self.advance):
            self.m.d.sync += register.eq(value)
        return register

    def delay(self, value, stages, name, shape=None):
        """``value`` after ``stages`` registers (itself if ``stages`` is 0): to line a value up
        with one computed beside it in more stages."""
        for k in range(stages):
            value = self.stage(value, f"{name}_d{k + 1}", shape=shape)
        return value

    def delay_memory(self, value, stages, name, shape=None, attrs=None):
        """``value`` after ``stages`` stages, exactly as :meth:`delay`, but held in a memory: a
        long bypass (a value waiting beside a chain of arithmetic) then costs RAM rather than a
        flip-flop per bit and stage.

        The memory is a ring of ``stages − 2`` words, written and read at the same address,
        which advances with the pipeline: its read port, synchronous, not transparent and
        enabled with the pipeline, returns the word written ``stages − 2`` moves earlier, one
        move later. One more register after it keeps the memory's clock-to-output delay off
        the path into the consumer (ECP5 block RAM's read is not registered at its output).
        Below 4 stages it is :meth:`delay` itself. ``attrs`` are the memory's attributes (for
        example :func:`~rtl.dsp.lut_ram`); rings of one depth share their address counter.
        """
        if stages < 4:
            return self.delay(value, stages, name, shape=shape)
        if shape is None:
            shape = value.shape() if hasattr(value, "shape") else Value.cast(value).shape()
        width = Shape.cast(shape).width
        depth = stages - 2
        memory = Memory(shape=width, depth=depth, init=[], attrs=attrs)
        self.m.submodules[f"{self._prefix}{name}_ring"] = memory
        write = memory.write_port()
        # Not transparent: the word at the address is read before this move overwrites it.
        read = memory.read_port(transparent_for=())
        address = self._ring_address(depth)
        self.m.d.comb += [
            write.addr.eq(address),
            write.data.eq(Value.cast(value)),
            write.en.eq(self.advance),
            read.addr.eq(address),
            read.en.eq(self.advance),
        ]
        return self.stage(read.data, f"{name}_d{stages}", shape=shape)

    def _ring_address(self, depth):
        """The address counter of the rings of ``depth`` words (0, 1, …, depth − 1, 0, …),
        moving with the pipeline."""
        if depth not in self._rings:
            # Any start value works (the valid bits say when the words mean something), but a
            # reset keeps it inside the ring when depth is not a power of two.
            address = Signal(range(depth), name=f"ring{depth}_address")
            with self.m.If(self.advance):
                self.m.d.sync += address.eq(Mux(address == depth - 1, 0, address + 1))
            self._rings[depth] = address
        return self._rings[depth]

    def scope(self, prefix):
        """Context in which :meth:`stage` prefixes register names, so that the stages of one
        operation can appear several times in one pipeline."""
        pipeline = self

        class _Scope:
            def __enter__(self):
                self.outer = pipeline._prefix
                pipeline._prefix = f"{self.outer}{prefix}_"

            def __exit__(self, *exc):
                pipeline._prefix = self.outer

        return _Scope()


def significand_and_exponent(x):
    """24-bit significand and effective exponent of binary32 ``x``: a subnormal has no hidden
    bit and the exponent of the smallest normal, 1."""
    normal = x.exponent != 0
    return Cat(x.fraction, normal), Mux(normal, x.exponent, 1)


def _count(bits):
    """(all zero, leading zeros) of ``bits``, a power-of-two width of at least 2, as a tree:
    log2(width) levels of 2:1 muxes instead of a chain of width priority muxes."""
    n = len(bits)
    if n == 2:
        return ~(bits[0] | bits[1]), ~bits[1]
    high_zero, high = _count(bits[n // 2:])
    low_zero, low = _count(bits[:n // 2])
    return high_zero & low_zero, Mux(high_zero, Cat(low, Const(1, 1)), Cat(high, Const(0, 1)))


def leading_zeros(value):
    """Number of zeros above the highest set bit of ``value`` (its width if it is zero)."""
    value = Value.cast(value)
    width = len(value)
    padded = 2
    while padded < width:
        padded *= 2
    # Zeros padded below the value leave the count of a non-zero value unchanged.
    zero, count = _count(Cat(Const(0, padded - width), value))
    return Mux(zero, width, count)


def round_float32(p, prefix, sign, exponent, significand, guard, sticky, special=None):
    """binary32 bits of ``(-1)^sign · significand · 2^(exponent − 150)``, rounded to nearest even.

    ``significand`` is 24 bits. A normal result has its bit 23 set and ``exponent`` ≥ 1 (the
    biased exponent); a subnormal one has bit 23 clear and ``exponent`` = 1. ``guard`` is the
    bit below the significand and ``sticky`` the OR of all bits below that. ``exponent`` may be
    any width; at 255 or more the result is infinity.

    The increment takes one stage of pipeline ``p`` (registers named ``prefix_…``); the packing
    after it is returned as a value, for the caller to register. ``special``, a pair
    ``(flag, bits)`` given with the operands of the rounding, replaces the result when ``flag``
    is set (a NaN or infinity found earlier).
    """
    round_up = guard & (sticky | significand[0])
    rounded = p.stage(Cat(significand, Const(0, 1)) + round_up, f"{prefix}_rounded", shape=25)
    # Both exponents the packing may pick, and whether each overflows, are ready before the
    # increment's carry is known, so the stage after it is only a few multiplexers.
    r_sign = p.stage(sign, f"{prefix}_sign")
    same = p.stage(exponent, f"{prefix}_exponent", shape=8)
    bumped = p.stage(exponent + 1, f"{prefix}_bumped", shape=8)
    same_overflows = p.stage(exponent >= 255, f"{prefix}_same_overflows")
    bumped_overflows = p.stage(exponent >= 254, f"{prefix}_bumped_overflows")
    carried = rounded[24]
    # Rounding a subnormal up to 2^-126 sets bit 23 and makes it normal with the same
    # exponent field 1; a carry out of bit 23 of a normal one bumps the exponent.
    field = Mux(carried, bumped, Mux(rounded[23], same, 0))
    fraction = Mux(carried, 0, rounded[:23])
    overflow = Mux(carried, bumped_overflows, same_overflows & rounded[23])
    result = Mux(overflow, Cat(Const(0, 23), Const(0xFF, 8), r_sign), Cat(fraction, field, r_sign))
    if special is not None:
        flag, bits = special
        result = Mux(p.stage(flag, f"{prefix}_special"), p.stage(bits, f"{prefix}_special_bits",
                                                                  shape=32), result)
    return result

"""Weight unpacker: GGUF blocks as stored in the file → integer codes and raw scales (docs/unpack.md)."""

from dataclasses import dataclass

from amaranth.hdl import Assert, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import WEIGHT_FORMATS, mode_code
from ..stream_rules import assert_stream_rules


__all__ = ["WeightUnpacker", "COMMAND_LAYOUT", "ERROR_LAYOUT", "BLOCK_GEOMETRY"]


@dataclass(frozen=True)
class _Geometry:
    """Where the fields of one format's block sit (SPEC §2, byte offsets within the block)."""
    elements: int
    size: int           # bytes per block
    code_bits: int      # bits per raw code
    codes_at: int       # first byte of the packed codes
    d_at: int = None    # fp16 scale
    m_at: int = None    # fp16 min (Q4_1)
    e_at: int = None    # E8M0 exponent (MXFP4)


#: The block layouts the unpacker parses, written from SPEC §2 (independently of
#: ``sim/gguf_blocks.py``, which the tests hold it against).
BLOCK_GEOMETRY = {
    "Q8_0": _Geometry(elements=32, size=34, code_bits=8, codes_at=2, d_at=0),
    "Q4_0": _Geometry(elements=32, size=18, code_bits=4, codes_at=2, d_at=0),
    "Q4_1": _Geometry(elements=32, size=20, code_bits=4, codes_at=4, d_at=0, m_at=2),
    "MXFP4": _Geometry(elements=32, size=17, code_bits=4, codes_at=1, e_at=0),
    "TQ2_0": _Geometry(elements=256, size=66, code_bits=2, codes_at=0, d_at=64),
}

#: One job: the weight format (its index in WEIGHT_FORMATS) and, for MXFP4, the gpt-oss nibble
#: order (element 2k in the low nibble of byte k, 2k + 1 in the high one).
COMMAND_LAYOUT = data.StructLayout({"mode": 3, "interleaved": 1})

#: Sticky error flags: a job ended inside a block; a block with an inf/NaN fp16 scale or an
#: E8M0 exponent of 0xFF; a job whose mode is undefined or not built in.
ERROR_LAYOUT = data.StructLayout({"framing": 1, "nonfinite": 1, "mode": 1})


def _e2m1_doubled(code):
    """Twice the value of E2M1 ``code``: 1 sign, 2 exponent (bias 1), 1 mantissa bit."""
    sign, exponent, mantissa = code >> 3, (code >> 1) & 3, code & 1
    # Doubled, the subnormals (exponent 0) are just the mantissa, and a normal number is
    # 2**exponent · (1 + mantissa/2).
    magnitude = mantissa if exponent == 0 else (2 + mantissa) << (exponent - 1)
    return -magnitude if sign else magnitude


def _check_power_of_two(what, value, high):
    message = f"Unpacker {what} must be a power of two from 1 to {high}, not {value!r}"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(message)
    if not 1 <= value <= high or value & (value - 1):
        raise ValueError(message)


class WeightUnpacker(wiring.Component):
    """Parses GGUF weight blocks, byte for byte as stored in the file, into the integer codes the
    MAC array multiplies and the raw scale fields the dequant pipeline needs.

    A job is one command on ``i_cmd`` (the format and, for MXFP4, the nibble order) followed by
    the bytes of a whole number of blocks on ``i``, densely packed, ``byte_width`` bytes per
    beat, the last beat marked ``last`` and holding ``count`` valid bytes. For every block the
    unpacker emits ``elements / lanes`` beats on ``o``, each with the next ``lanes`` codes of the
    block in element order and the block's scale fields; ``first`` and ``last`` mark the beats
    that start and end a block, ``end`` the final beat of the job. Codes are the integers SPEC §2
    defines: Q8_0 the signed byte, Q4_0 q − 8, Q4_1 q, MXFP4 twice the E2M1 value, TQ2_0 q − 1.

    A block is emitted only once all its bytes are in (store and forward), from a byte
    accumulator that holds up to ``capacity`` bytes; jobs run one at a time, so the next command
    is taken when the previous job has left the accumulator. Throughput: one input beat and one
    output beat per cycle, whichever is the bound (docs/unpack.md has the measured rates).

    Bad input never hangs the unpacker: a job whose bytes end inside a block drops that partial
    block and sets ``errors.framing``; a block whose fp16 ``d`` or ``m`` is inf/NaN, or whose
    E8M0 ``e`` is 0xFF, is emitted unchanged and sets ``errors.nonfinite``; a job with an
    undefined or disabled mode has its bytes taken and dropped and sets ``errors.mode``. The
    flags stay set until ``clear``; an error in the cycle of ``clear`` is kept.

    Parameters
    ----------
    formats : tuple of str
        Formats the unpacker parses: a non-empty subset of WEIGHT_FORMATS without repeats.
    byte_width : int
        Bytes per input beat: a power of two from 1 to 64.
    lanes : int
        Codes per output beat: a power of two from 1 to 32.

    Members
    -------
    i_cmd : ``In(stream.Signature(COMMAND_LAYOUT))``
        One command per job: ``mode`` (index in WEIGHT_FORMATS) and ``interleaved`` (MXFP4 in
        the gpt-oss nibble order; ignored for other formats).
    i : ``In(stream.Signature(input_layout))``
        ``data`` (``byte_width`` bytes, byte 0 in bits 0–7), ``count`` (valid bytes, read on the
        ``last`` beat only; values above ``byte_width`` count as ``byte_width``), ``last``.
    o : ``Out(stream.Signature(output_layout))``
        ``codes`` (``lanes`` signed 8-bit integers), ``d`` (raw fp16; Q8_0, Q4_0, Q4_1, TQ2_0),
        ``m`` (raw fp16; Q4_1), ``e`` (raw E8M0; MXFP4), ``first``, ``last``, ``end``. Scale
        fields a format does not have are zero.
    errors : ``Out(ERROR_LAYOUT)``
        Sticky error flags.
    clear : ``In(1)``
        Clears ``errors``.
    """

    def __init__(self, *, formats=WEIGHT_FORMATS, byte_width=8, lanes=16):
        if isinstance(formats, str) or not isinstance(formats, (tuple, list)) or not formats:
            raise TypeError(f"Unpacker formats must be a non-empty tuple of format names, "
                            f"not {formats!r}")
        for name in formats:
            if name not in WEIGHT_FORMATS:
                raise ValueError(f"Unpacker format {name!r} is not a known format; allowed: "
                                 f"{', '.join(WEIGHT_FORMATS)}")
        if len(set(formats)) != len(formats):
            raise ValueError(f"Unpacker formats must not repeat a format, not {tuple(formats)!r}")
        _check_power_of_two("byte width", byte_width, 64)
        _check_power_of_two("lanes", lanes, 32)
        self._formats = tuple(formats)
        self._byte_width = byte_width
        self._lanes = lanes
        self._input_layout = data.StructLayout({
            "data": 8 * byte_width,
            "count": range(byte_width + 1),
            "last": 1,
        })
        self._output_layout = data.StructLayout({
            "codes": data.ArrayLayout(signed(8), lanes),
            "d": 16,
            "m": 16,
            "e": 8,
            "first": 1,
            "last": 1,
            "end": 1,
        })
        super().__init__({
            "i_cmd": In(stream.Signature(COMMAND_LAYOUT)),
            "i": In(stream.Signature(self._input_layout)),
            "o": Out(stream.Signature(self._output_layout)),
            "errors": Out(ERROR_LAYOUT),
            "clear": In(1),
        })

    @classmethod
    def from_config(cls, config):
        return cls(formats=config.weight_formats, byte_width=config.sram_width // 8)

    formats = property(lambda self: self._formats)
    byte_width = property(lambda self: self._byte_width)
    lanes = property(lambda self: self._lanes)
    input_layout = property(lambda self: self._input_layout)
    output_layout = property(lambda self: self._output_layout)

    @property
    def capacity(self):
        """Bytes the accumulator holds: the largest block, plus room for the beat that completes
        the next block and the one already on its way, so input never waits while the output
        keeps up (and the output never waits for a block the input has already sent)."""
        return max(BLOCK_GEOMETRY[f].size for f in self._formats) + 2 * self._byte_width

    def beats_per_block(self, fmt):
        """Output beats per block of ``fmt``."""
        return BLOCK_GEOMETRY[fmt].elements // self._lanes

    def elaborate(self, platform):
        m = Module()
        bw, lanes, cap = self._byte_width, self._lanes, self.capacity
        formats = self._formats
        geometry = {f: BLOCK_GEOMETRY[f] for f in formats}
        max_size = max(g.size for g in geometry.values())
        max_beats = max(self.beats_per_block(f) for f in formats)
        # The block register holds the codes of one block in element order, each code as
        # wide as its format needs (Q8_0 256 bits, the 4-bit formats 128, TQ2_0 512).
        store_width = max(g.elements * g.code_bits for g in geometry.values())

        new_framing = Signal()
        new_nonfinite = Signal()
        new_mode = Signal()

        # ---- Jobs -----------------------------------------------------------------------
        running = Signal()      # a job's bytes are being parsed
        discarding = Signal()   # a job with a bad mode: its bytes are taken and dropped
        ended = Signal()        # the running job's last beat is in the accumulator
        # The job's format as one bit per configured format, and what follows from it, latched
        # with the command so that the datapath selects on registers rather than on a decoder.
        is_fmt = {f: Signal(name=f"is_{f.lower()}") for f in formats}
        interleaved = Signal()
        size = Signal(range(max_size + 1))
        size2 = Signal(range(2 * max_size + 1))
        room_after_take = Signal(range(cap + max_size + 1))
        final_beat = Signal(range(max(max_beats, 2)))

        cmd = self.i_cmd.payload
        m.d.comb += self.i_cmd.ready.eq(~running & ~discarding)
        with m.If(self.i_cmd.valid & self.i_cmd.ready):
            known = Signal()
            for f in formats:
                with m.If(cmd.mode == mode_code(f)):
                    m.d.comb += known.eq(1)
                    m.d.sync += [
                        size.eq(geometry[f].size),
                        size2.eq(2 * geometry[f].size),
                        room_after_take.eq(cap - bw + geometry[f].size),
                        final_beat.eq(self.beats_per_block(f) - 1),
                    ]
                m.d.sync += is_fmt[f].eq(cmd.mode == mode_code(f))
            m.d.sync += [
                interleaved.eq(cmd.interleaved),
                running.eq(known),
                discarding.eq(~known),
            ]
            m.d.comb += new_mode.eq(~known)

        # ---- Byte accumulator -------------------------------------------------------------
        # Bytes of the running job, oldest in byte 0. Beats are appended at `level`; a whole
        # block leaves from the front when it moves to the block register. All beats of a job
        # but the last are full, so only the front is ever misaligned, and a block leaves by one
        # of a few constant shifts.
        buf = Signal(8 * cap)
        level = Signal(range(cap + 1))
        # Registered forms of `level >= size` and `level <= cap - bw`, computed a cycle ahead
        # (see below), so that neither a comparator nor the accumulator's adder sits between
        # `o.ready` and the hundreds of registers a block move updates.
        have_block = Signal()
        room = Signal(init=1)

        m.d.comb += self.i.ready.eq(discarding | (running & ~ended & room))
        accept = Signal()
        m.d.comb += accept.eq(self.i.valid & self.i.ready)
        incoming = Signal(range(bw + 1))
        with m.If(accept & running):
            with m.If(~self.i.payload.last | (self.i.payload.count > bw)):
                m.d.comb += incoming.eq(bw)
            with m.Else():
                m.d.comb += incoming.eq(self.i.payload.count)

        # ---- Block register and output ----------------------------------------------------
        held = Signal()                          # the block register holds a block
        beat = Signal(range(max(max_beats, 2)))  # next beat of the held block to emit
        store = Signal(store_width)
        d = Signal(16)
        mm = Signal(16)
        e = Signal(8)
        # The held block's own copy of its format: the next job may start filling the
        # accumulator while the last block of this one is still being emitted.
        blk_fmt = {f: Signal(name=f"blk_{f.lower()}") for f in formats}
        blk_final_beat = Signal(range(max(max_beats, 2)))
        blk_job_end = Signal()   # the held block is known to be its job's last

        o = self.o.payload
        o_free = Signal()
        m.d.comb += o_free.eq(~self.o.valid | self.o.ready)
        is_final = Signal()
        m.d.comb += is_final.eq(beat == blk_final_beat)
        # The final beat of a block waits until its job is known either to go on (the next
        # block is complete) or to have ended, so that it can carry `end`: a truncated block
        # after it is never emitted and could not carry it.
        emit = Signal()
        m.d.comb += emit.eq(held & o_free & (~is_final | blk_job_end | have_block | ended))
        release = Signal()
        m.d.comb += release.eq(emit & is_final)
        take_block = Signal()
        m.d.comb += take_block.eq(have_block & (~held | release))

        # Append first, at `level` (registers only: one barrel shift of the input beat by whole
        # bytes), then drop the front block if it moves: `take_block`, which depends on
        # `o.ready`, only selects between two finished values.
        placed = Signal(8 * cap)
        m.d.comb += placed.eq((self.i.payload.data << Cat(Const(0, 3), level))[:8 * cap])
        merged = Signal(8 * cap)
        for b in range(cap):
            byte = slice(8 * b, 8 * b + 8)
            m.d.comb += merged[byte].eq(Mux(b < level, buf[byte], placed[byte]))
        m.d.sync += buf.eq(merged)
        with m.If(take_block):
            for f in formats:
                with m.If(is_fmt[f]):
                    m.d.sync += buf.eq(merged >> (8 * geometry[f].size))

        total = Signal(range(cap + 1))
        m.d.comb += total.eq(level + incoming)
        m.d.sync += [
            level.eq(Mux(take_block, total - size, total)),
            have_block.eq(running & Mux(take_block, total >= size2, total >= size)),
            room.eq(Mux(take_block, total <= room_after_take, total <= cap - bw)),
        ]

        with m.If(accept & self.i.payload.last):
            with m.If(running):
                m.d.sync += ended.eq(1)
            with m.Else():
                m.d.sync += discarding.eq(0)

        # The job is over when its last beat is in and every complete block has moved out of
        # the accumulator; what is left there is a block cut short. Its last block may still
        # be in the block register, marked as the last so that it need not wait.
        with m.If(running & ended & ~have_block):
            m.d.sync += [running.eq(0), ended.eq(0), level.eq(0), have_block.eq(0),
                         room.eq(1), blk_job_end.eq(1)]
            m.d.comb += new_framing.eq(level != 0)

        # Moving a block into the block register puts its codes in element order, so that
        # every output beat reads the same low bits and the register shifts by one beat.
        def arranged(f):
            g = geometry[f]
            byte = lambda k: buf[8 * (g.codes_at + k):8 * (g.codes_at + k + 1)]
            if f == "Q8_0":
                codes = [byte(k) for k in range(32)]
            elif f == "TQ2_0":
                # Byte j of each 32-byte half h: elements h·128 + s·32 + j in bits 2s, 2s + 1.
                codes = [byte((k >> 7) * 32 + (k & 31))[2 * ((k >> 5) & 3):][:2]
                         for k in range(256)]
            else:
                # GGUF order: element j in the low nibble of byte j, j + 16 in the high one.
                codes = [byte(k)[:4] for k in range(16)] + [byte(k)[4:] for k in range(16)]
            return Cat(*codes)

        def interleaved_nibbles(f):
            g = geometry[f]
            return Cat(*(buf[8 * (g.codes_at + k // 2) + 4 * (k % 2):][:4] for k in range(32)))

        def field(offset, width):
            return buf[8 * offset:8 * offset + width]

        def nonfinite_half(value):
            return value[10:15] == 0x1F

        with m.If(take_block):
            m.d.sync += [held.eq(1), beat.eq(0), blk_final_beat.eq(final_beat),
                         blk_job_end.eq(0)]
            m.d.sync += [blk_fmt[f].eq(is_fmt[f]) for f in formats]
            for f in formats:
                g = geometry[f]
                with m.If(is_fmt[f]):
                    codes = arranged(f)
                    if f == "MXFP4":
                        codes = Mux(interleaved, interleaved_nibbles(f), codes)
                    m.d.sync += [
                        store.eq(codes),
                        d.eq(field(g.d_at, 16) if g.d_at is not None else 0),
                        mm.eq(field(g.m_at, 16) if g.m_at is not None else 0),
                        e.eq(field(g.e_at, 8) if g.e_at is not None else 0),
                    ]
                    bad = []
                    if g.d_at is not None:
                        bad.append(nonfinite_half(field(g.d_at, 16)))
                    if g.m_at is not None:
                        bad.append(nonfinite_half(field(g.m_at, 16)))
                    if g.e_at is not None:
                        bad.append(field(g.e_at, 8) == 0xFF)
                    m.d.comb += new_nonfinite.eq(Cat(*bad).any())
        with m.Elif(release):
            m.d.sync += held.eq(0)
        with m.Elif(emit):
            m.d.sync += beat.eq(beat + 1)
            for f in formats:
                with m.If(blk_fmt[f]):
                    m.d.sync += store.eq(store >> (lanes * geometry[f].code_bits))

        # Codes of the next beat: the low bits of the block register, decoded per format.
        decoded = Signal(data.ArrayLayout(signed(8), lanes))
        for lane in range(lanes):
            for f in formats:
                w = geometry[f].code_bits
                raw = store[w * lane:w * (lane + 1)]
                if f == "Q8_0":
                    value = raw.as_signed()
                elif f == "Q4_0":
                    value = raw - 8
                elif f == "Q4_1":
                    value = raw
                elif f == "MXFP4":
                    value = Signal(signed(5), name=f"e2m1_{lane}")
                    with m.Switch(raw):
                        for code in range(16):
                            with m.Case(code):
                                m.d.comb += value.eq(_e2m1_doubled(code))
                else:  # TQ2_0
                    value = raw - 1
                with m.If(blk_fmt[f]):
                    m.d.comb += decoded[lane].eq(value)

        with m.If(emit):
            m.d.sync += [
                self.o.valid.eq(1),
                o.codes.eq(decoded),
                o.d.eq(d),
                o.m.eq(mm),
                o.e.eq(e),
                o.first.eq(beat == 0),
                o.last.eq(is_final),
                o.end.eq(is_final & (blk_job_end | ~have_block)),
            ]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        # ---- Errors -----------------------------------------------------------------------
        flags = Cat(new_framing, new_nonfinite, new_mode)
        m.d.sync += self.errors.as_value().eq(
            Mux(self.clear, 0, self.errors.as_value()) | flags)

        # ---- Rules ------------------------------------------------------------------------
        m.d.sync += [
            Assert(level <= cap, "Unpacker accumulator overflowed"),
            Assert(have_block == (running & (level >= size)),
                   "Unpacker block-complete register disagrees with the level"),
            Assert(room == (level <= cap - bw), "Unpacker room register disagrees with the level"),
            Assert(~(running & discarding), "Unpacker both running and discarding a job"),
            Assert(~held | running | blk_job_end, "Unpacker holds a block of no job"),
            Assert(~(self.i_cmd.ready & (level != 0)),
                   "Unpacker took a command before the previous job left the accumulator"),
        ]
        assert_stream_rules(m, self.o, "Unpacker output")

        return m

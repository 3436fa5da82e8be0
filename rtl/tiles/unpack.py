"""Weight unpacker: GGUF blocks as stored in the file → integer codes and raw scales (docs/unpack.md)."""

from dataclasses import dataclass

from amaranth.hdl import Array, Assert, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
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

    @property
    def code_bytes(self):
        return self.elements * self.code_bits // 8

    def scale_bytes(self):
        """``(field, byte of the field, offset from the first code byte)`` of every scale byte."""
        fields = [("d", self.d_at, 2), ("m", self.m_at, 2), ("e", self.e_at, 1)]
        return [(name, k, at + k - self.codes_at)
                for name, at, width in fields if at is not None for k in range(width)]


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

#: Scale bytes are stored by their offset from the first code byte modulo this: the leading
#: scales (offsets −4 to −1) and TQ2_0's trailing ``d`` (64, 65) then never share a column.
_SCALE_COLUMNS = 8


def _e2m1_doubled(code):
    """Twice the value of E2M1 ``code``: 1 sign, 2 exponent (bias 1), 1 mantissa bit."""
    sign, exponent, mantissa = code >> 3, (code >> 1) & 3, code & 1
    # Doubled, the subnormals (exponent 0) are just the mantissa, and a normal number is
    # 2**exponent · (1 + mantissa/2).
    magnitude = mantissa if exponent == 0 else (2 + mantissa) << (exponent - 1)
    return -magnitude if sign else magnitude


def _element_source(fmt, element, interleaved=False):
    """Where element ``element`` of a ``fmt`` block sits: (code byte, counted from the first
    code byte; bit offset in it; bits)."""
    if fmt == "Q8_0":
        return element, 0, 8
    if fmt == "TQ2_0":
        # Byte j of each 32-byte half h: elements h·128 + s·32 + j in bits 2s, 2s + 1.
        return (element >> 7) * 32 + (element & 31), 2 * ((element >> 5) & 3), 2
    if interleaved:
        # gpt-oss MXFP4: elements 2k and 2k + 1 in the low and high nibble of byte k.
        return element >> 1, 4 * (element & 1), 4
    # GGUF order: element j in the low nibble of byte j, j + 16 in the high one.
    return element & 15, 4 * (element >> 4), 4


def _check_power_of_two(what, value, high):
    message = f"Unpacker {what} must be a power of two from 1 to {high}, not {value!r}"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(message)
    if not 1 <= value <= high or value & (value - 1):
        raise ValueError(message)


def _power_of_two_at_least(value):
    result = 1
    while result < value:
        result *= 2
    return result


class _Plan:
    """The storage geometry and the write pattern of every input beat, worked out at
    elaboration.

    Block bytes are stored by their offset t from the block's first code byte: code byte t in
    column ``t % width`` of word ``t // width`` of the block's slot, scale byte t in scale column
    ``t % 8``. An input beat holds the tail of its block 0 (the oldest unfinished block) and the
    first bytes of block 1; a beat that also holds the start of block 2 (blocks shorter than a
    beat) is taken in several passes, two blocks per pass. Rotated so that offset t lands on
    byte ``t % byte_width``, the beat is, for each of its blocks, a window of ``byte_width``
    consecutive offsets: those at rotated bytes from ``p = first % byte_width`` on in row
    ``R = first // byte_width``, the others in row R + 1 (``first`` being the offset of the beat's
    byte 0 in that block). A row is a ``byte_width``-byte slice of a word. The bytes of a window
    that are not the block's own fall outside its code rows, so a block writes exactly the code
    rows of its window. Every ``(format, lo, pass)`` a job can reach (``lo``: bytes of block 0
    in earlier beats; it starts at 0 and grows by the beat width modulo the block size) is
    enumerated, to check that the two blocks of a pass never write the same column (if they
    can, even and odd slots get banks of RAM of their own) and to know which of the two can
    write each column.
    """

    def __init__(self, formats, byte_width, lanes):
        self.geometry = {f: BLOCK_GEOMETRY[f] for f in formats}
        bw = self.byte_width = byte_width
        # A word holds the codes of one output beat, and at least a whole input beat, so that
        # a beat writes each column at most once per block.
        self.width = max(lanes, bw)
        self.rows_per_word = self.width // bw
        self.words = max(1, max(g.code_bytes for g in self.geometry.values()) // self.width)
        self.code_rows = {f: -(-g.code_bytes // bw) for f, g in self.geometry.items()}
        # Blocks written per cycle: the beat's block 0 and the next. A beat holding the start of
        # a third block (blocks shorter than the beat) is taken in several passes.
        self.reach = {f: min(2, 1 + -(-(bw - 1) // g.size)) for f, g in self.geometry.items()}
        self.passes = any(g.size + 1 < bw for g in self.geometry.values())
        self.max_reach = max(self.reach.values())
        # Slots: the blocks a beat writes, the block whose final beat waits for the next one to
        # be complete, that next one, and one more where blocks can complete in back-to-back
        # cycles (a block shorter than two beats).
        short = any(g.size < 2 * bw for g in self.geometry.values())
        self.slots = _power_of_two_at_least(self.max_reach + (3 if short else 2))
        self.orbit = {}
        self.code_writers = {}      # column → blocks of the beat that can write it
        self.scale_writers = {}     # scale column → blocks of the beat that can write it
        conflict = False
        for f, g in self.geometry.items():
            seen, lo = [], 0
            while lo not in seen:
                seen.append(lo)
                lo = (lo + bw) % g.size
            self.orbit[f] = seen
            for lo in seen:
                # Pass p takes blocks 2p and 2p + 1 of the beat, while block 2p starts in it.
                first_pass = 0
                while first_pass == 0 or (g.size - lo) + (2 * first_pass - 1) * g.size < bw:
                    used_codes, used_scales = set(), set()
                    for j in range(self.reach[f]):
                        first = lo - g.codes_at - (2 * first_pass + j) * g.size
                        codes, scales = self.beat_writes(f, first)
                        conflict |= bool(used_codes & codes.keys())
                        conflict |= bool(used_scales & scales.keys())
                        used_codes |= codes.keys()
                        used_scales |= scales.keys()
                        for c in codes:
                            self.code_writers.setdefault(c, set()).add(j)
                        for h in scales:
                            self.scale_writers.setdefault(h, set()).add(j)
                    first_pass += 1
        self.banks = _power_of_two_at_least(self.max_reach) if conflict else 1
        self.scale_columns = sorted({t % _SCALE_COLUMNS for g in self.geometry.values()
                                     for _, _, t in g.scale_bytes()})

    def beat_writes(self, f, first):
        """What a block of format ``f`` whose offset ``first`` is at the beat's byte 0 writes:
        ``{column: word}`` of its code rows and ``{scale column: offset}`` of its scale
        bytes."""
        g, bw = self.geometry[f], self.byte_width
        codes, scales = {}, {}
        for q in range(bw):
            row = first // bw + (q < first % bw)
            if 0 <= row < self.code_rows[f]:
                column = q + bw * (row % self.rows_per_word)
                codes[column] = row // self.rows_per_word
                assert codes[column] < self.words
        for _, _, t in g.scale_bytes():
            if first <= t < first + bw:
                scales[t % _SCALE_COLUMNS] = t
        return codes, scales


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

    A block is emitted only once all its bytes are in (store and forward). Each input beat is
    rotated so that every byte lands at its offset within its block, and written into LUT RAM
    holding ``slots`` blocks; each output beat reads one RAM word, and each lane takes its code
    from a fixed place per format. Jobs follow each other without draining. Throughput: one
    input beat and one output beat per cycle, whichever is the bound (docs/unpack.md has the
    measured rates).

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
        self._plan = _Plan(self._formats, byte_width, lanes)
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
    def slots(self):
        """Blocks the store holds: those an input beat writes, the block whose final beat waits
        for the next block to be complete, and that next block."""
        return self._plan.slots

    def beats_per_block(self, fmt):
        """Output beats per block of ``fmt``."""
        return BLOCK_GEOMETRY[fmt].elements // self._lanes

    def elaborate(self, platform):
        m = Module()
        bw, lanes, formats, plan = self._byte_width, self._lanes, self._formats, self._plan
        geometry = plan.geometry
        width, words, slots, banks = plan.width, plan.words, plan.slots, plan.banks
        rows_per_word = plan.rows_per_word
        reach = plan.max_reach
        max_beats = max(self.beats_per_block(f) for f in formats)
        slot_bits = (slots - 1).bit_length()
        bank_bits = (banks - 1).bit_length()
        word_bits = (words - 1).bit_length()
        shift_bits = (bw - 1).bit_length()
        row_bits = (rows_per_word - 1).bit_length()
        depth = slots // banks * words
        # Offsets within a block of the beat's byte 0, and bytes to a block's end counted from
        # a beat: between −(bw + 3·size) and bw + 3·size (a pass looks up to three blocks on).
        max_size = max(g.size for g in geometry.values())
        span = bw + 3 * max_size
        offset_shape = signed(span.bit_length() + 1)

        new_framing = Signal()
        new_nonfinite = Signal()
        new_mode = Signal()

        def select(cases, shape, name):
            """The value of the case whose condition holds (the conditions exclude each other),
            else zero: an AND-OR of the cases."""
            result = Signal(shape, name=name)
            if cases:
                m.d.comb += result.eq(_or_all([Mux(cond, value, 0) for cond, value in cases]))
            return result

        def any_of(conds):
            return Cat(*conds).any() if conds else Const(0)

        # Slot pointers count modulo 2·slots: `ws` is the slot of the oldest block the input is
        # still writing, `wc` one past the last complete block, `rs` the block being emitted.
        ws = Signal(slot_bits + 1)
        wc = Signal(slot_bits + 1)
        rs = Signal(slot_bits + 1)

        # ---- Jobs -----------------------------------------------------------------------
        running = Signal()      # a job's bytes are being taken
        discarding = Signal()   # a job with a bad mode: its bytes are taken and dropped
        is_fmt = {f: Signal(name=f"is_{f.lower()}") for f in formats}
        interleaved = Signal()
        job_blocks = Signal()   # the running job has completed a block
        # The next beat's block 0: `need`, its bytes still to come; `rotation`, the rotation
        # that puts its offset t (counted from its first code byte) at byte t mod bw.
        need = Signal(range(span + 1))
        rotation = Signal(shift_bits)
        # `firsts[j]`: the offset (from its first code byte) of block j of the next beat at
        # that beat's byte 0, size − codes_at − need − j·size; it is negative for block 0
        # while its leading scale bytes are still to come, and for the blocks after it.
        firsts = [Signal(offset_shape, name=f"first_{j}") for j in range(reach)]
        # Constants of the running job's format, latched with its command: the size, j·size,
        # step k = k·size − bw and rotation step k = k·size mod bw.
        job_size = Signal(range(max_size + 1))
        job_sizes = [Signal(range(j * max_size + 1), name=f"job_size_{j}")
                     for j in range(reach + 1)]
        steps = [Signal(signed(offset_shape.width), name=f"step_{k}") for k in range(reach + 1)]
        rotation_steps = [Signal(shift_bits, name=f"rotation_step_{k}")
                          for k in range(reach + 1)]

        cmd = self.i_cmd.payload
        m.d.comb += self.i_cmd.ready.eq(~running & ~discarding)
        with m.If(self.i_cmd.valid & self.i_cmd.ready):
            known = any_of([cmd.mode == mode_code(f) for f in formats])
            m.d.sync += [is_fmt[f].eq(cmd.mode == mode_code(f)) for f in formats]
            m.d.sync += [
                interleaved.eq(cmd.interleaved),
                running.eq(known),
                discarding.eq(~known),
                job_blocks.eq(0),
            ]
            m.d.comb += new_mode.eq(~known)
            for f in formats:
                with m.If(cmd.mode == mode_code(f)):
                    g = geometry[f]
                    m.d.sync += [need.eq(g.size), rotation.eq(g.codes_at % bw)]
                    m.d.sync += [firsts[j].eq(-g.codes_at - j * g.size) for j in range(reach)]
                    m.d.sync += [job_size.eq(g.size)]
                    m.d.sync += [job_sizes[j].eq(j * g.size) for j in range(reach + 1)]
                    m.d.sync += [steps[k].eq(k * g.size - bw) for k in range(reach + 1)]
                    m.d.sync += [rotation_steps[k].eq(k * g.size % bw)
                                 for k in range(reach + 1)]

        # ---- Input: accept a beat, rotate it, count the blocks it completes ----------------
        # `room`: two slots are free, those of blocks 0 and 1; `room_one`: one is. A beat in
        # which block 1 does not start (`need ≥ bw`) only needs one. Both are registered, from
        # the next values of the slot pointers, so `i.ready` is a function of registers (and,
        # in configurations with passes, of `count`).
        room = Signal(init=1)
        room_one = Signal(init=1)
        last = self.i.payload.last
        count = Signal(range(bw + 1))
        m.d.comb += count.eq(Mux(~last | (self.i.payload.count > bw), bw,
                                 self.i.payload.count))
        # `go`: a pass over the input beat writes its blocks 0 and 1; `more`: block 2 starts in
        # the beat too, so the beat is held for another pass; `take`: the beat is taken.
        more = Signal()
        if plan.passes:
            m.d.comb += more.eq(need + job_sizes[1] < count)
        fits = Signal()
        if reach > 1:
            m.d.comb += fits.eq(room | (room_one & ((need >> shift_bits) != 0)))
        else:
            m.d.comb += fits.eq(room_one)
        go = Signal()
        m.d.comb += go.eq(self.i.valid & running & fits)
        m.d.comb += self.i.ready.eq(discarding | (running & fits & ~more))
        take = Signal()
        m.d.comb += take.eq(go & ~more)

        # Block j of the beat ends within it if `need + j·size ≤ count`; a full beat completes
        # those with `need + j·size ≤ bw`. The last beat leaves no partial block if one ends
        # exactly at `count` (or if block 0 has no bytes yet and there are none).
        # For block 0 the tests are written without carry chains: need ≤ bw is "need < bw or
        # need = bw", and then need ≤ count compares the low bits only.
        need_low = need[:shift_bits + 1]
        need_fits = Signal()
        m.d.comb += need_fits.eq(((need >> shift_bits) == 0) | (need == bw))
        # Block 1 can only end within a beat if a block is shorter than it.
        short = [j for j in range(1, reach) if any(j * geometry[f].size < bw for f in formats)]
        completes, exact_cases = [need_fits & (need_low <= count)], \
            [need_fits & (need_low == count), (need == job_size) & (count == 0)]
        full_done_terms = [need_fits]
        for j in range(1, reach):
            if j in short:
                completes.append(need + job_sizes[j] <= count)
                exact_cases.append(need + job_sizes[j] == count)
                full_done_terms.append(need + job_sizes[j] <= bw)
            else:
                completes.append(Const(0))
        full_done = Signal(range(reach + 1))
        m.d.comb += full_done.eq(sum(full_done_terms))
        done = Signal(range(reach + 1))
        m.d.comb += done.eq(Mux(last, sum(completes), full_done))
        # Another pass over the same beat: blocks 2 and 3 become blocks 0 and 1.
        if plan.passes:
            with m.If(go & more):
                m.d.sync += [need.eq(need + job_sizes[2]),
                             rotation.eq(rotation + rotation_steps[2])]
                m.d.sync += [first.eq(first - job_sizes[2]) for first in firsts]
        # After a full beat that completes k blocks, `need` grows by step k = k·size − bw, each
        # `first` shrinks by it and `rotation` turns by k·size mod bw: the candidate sums are
        # formed in parallel from registers and one is picked.
        with m.If(take & ~last):
            for k in range(reach + 1):
                with m.If(full_done == k):
                    m.d.sync += [need.eq(need + steps[k]),
                                 rotation.eq(rotation + rotation_steps[k])]
                    m.d.sync += [first.eq(first - steps[k]) for first in firsts]

        rotated = Signal(8 * bw)
        if bw > 1:
            # Offset t of block 0 to byte t mod bw.
            doubled = Cat(self.i.payload.data, self.i.payload.data)
            m.d.comb += rotated.eq((doubled >> Cat(Const(0, 3), rotation))[:8 * bw])
        else:
            m.d.comb += rotated.eq(self.i.payload.data)

        # Stage W: the rotated beat and, per block j of it, where its window falls, registered;
        # the RAM writes follow with one or two LUTs in front of the write ports. Block j's
        # window: offset `first = size − codes_at − need − j·size` at the beat's byte 0, so
        # rotated bytes from `p = first % bw` on are in row `R = first // bw`, those below p
        # in row R + 1; it writes those of the two rows that are code rows of its format.
        w_valid = Signal()
        w_data = Signal(8 * bw)
        w_done = Signal(range(reach + 1))
        w_fmt = {f: Signal(name=f"w_{f.lower()}") for f in formats}
        m.d.sync += [
            w_valid.eq(go),
            w_data.eq(rotated),
            w_done.eq(Mux(go, done, 0)),
        ]
        m.d.sync += [w_fmt[f].eq(is_fmt[f]) for f in formats]
        # A block counts as complete once its bytes are in its RAM and its slot registers are
        # written (stage W), the cycle after.
        w2_done = Signal(range(reach + 1))
        m.d.sync += [w2_done.eq(w_done), wc.eq(wc + w2_done)]

        # Per block j of the beat, worked out from `firsts` and registered: which code columns
        # and scale columns it writes, the word of each column and its slot.
        w_code, w_word, w_scale, slot_of = {}, {}, {}, []
        for j in range(reach):
            first = firsts[j]
            row = first >> shift_bits if shift_bits else first
            phase = first[:shift_bits] if shift_bits else Const(0, 0)
            row_low = row[:row_bits] if row_bits else Const(0, 0)
            code_a, code_b = [], []
            for f in formats:
                if j < plan.reach[f]:
                    code_row_bits = (plan.code_rows[f] - 1).bit_length()
                    in_rows = (row >> code_row_bits) == 0       # 0 ≤ R < code rows
                    code_a.append(is_fmt[f] & in_rows)
                    code_b.append(is_fmt[f] & ((row == -1) |
                                               (in_rows & (row != plan.code_rows[f] - 1))))
            code_a, code_b = any_of(code_a), any_of(code_b)
            word_a = (row >> row_bits)[:word_bits] if word_bits else Const(0, 0)
            word_b = ((row + 1) >> row_bits)[:word_bits] if word_bits else Const(0, 0)
            slot_ = Signal(slot_bits, name=f"w_slot_{j}")
            m.d.sync += slot_.eq((ws + j)[:slot_bits])
            slot_of.append(slot_)
            for c in range(width):
                if j not in plan.code_writers.get(c, ()):
                    continue
                q, h = c % bw, c // bw
                low = Const(q, shift_bits) < phase if shift_bits else Const(0)
                hit_a = ~low & code_a & ((row_low == h) if row_bits else 1)
                hit_b = low & code_b & ((row_low == (h - 1) % rows_per_word) if row_bits else 1)
                w_code[j, c] = Signal(name=f"w_code_{j}_{c}")
                m.d.sync += w_code[j, c].eq(hit_a | hit_b)
                # Its word: that of row R, or of row R + 1 for the bytes below p.
                w_word[j, c] = Signal(word_bits, name=f"w_word_{j}_{c}")
                if word_bits:
                    pick_b = (row_low != h) if rows_per_word > 1 else low
                    m.d.sync += w_word[j, c].eq(Mux(pick_b, word_b, word_a))
            for h in plan.scale_columns:
                hits = []
                for f in formats:
                    if j >= plan.reach[f]:
                        continue
                    for _, _, t in geometry[f].scale_bytes():
                        if t % _SCALE_COLUMNS == h:
                            t_row, t_position = t >> shift_bits, t & (bw - 1)
                            hits.append(is_fmt[f] & Mux(t_position < phase, row == t_row - 1,
                                                        row == t_row))
                w_scale[j, h] = Signal(name=f"w_scale_{j}_{h}")
                m.d.sync += w_scale[j, h].eq(any_of(hits))

        # Block j's bytes sit in the rotated beat j·size bytes further round.
        byte_cache = {}

        def byte_of(j, position):
            if (j, position) not in byte_cache:
                byte_cache[j, position] = _byte_of(j, position)
            return byte_cache[j, position]

        def _byte_of(j, position):
            sources = {}
            for f in formats:
                if j < plan.reach[f]:
                    sources.setdefault((position + j * geometry[f].size) % bw, []).append(w_fmt[f])
            if len(sources) == 1:
                (source,) = sources
                return w_data.word_select(source, 8)
            return select([(any_of(conds), w_data.word_select(source, 8))
                           for source, conds in sources.items()], 8,
                          f"block_{j}_byte_{position}")

        # With banks, block j of the beat writes bank (slot of block 0 + j) mod banks.
        bank_of = [[Const(1)] if banks == 1 else
                   [Signal(name=f"w_bank_{bank}_{j}") for bank in range(banks)]
                   for j in range(reach)]
        if banks > 1:
            for j in range(reach):
                for bank in range(banks):
                    m.d.comb += bank_of[j][bank].eq(slot_of[j][:bank_bits] == bank)

        def ports(kind, column, writers, hit_word, position, depth_):
            """Write port signals of ``column`` in each bank."""
            result = []
            for bank in range(banks):
                cases = []
                for j in writers:
                    hit, word = hit_word(j)
                    if banks > 1:
                        hit = hit & bank_of[j][bank]
                    cases.append((j, hit, word))
                en = Signal(name=f"{kind}_en_{bank}_{column}")
                m.d.comb += en.eq(w_valid & any_of([hit for _, hit, _ in cases]))
                address = [(hit, Cat(word, slot_of[j][bank_bits:])) for j, hit, word in cases]
                data_ = [(hit, byte_of(j, position)) for j, hit, _ in cases]
                if len(cases) == 1:
                    addr, value = address[0][1], data_[0][1]
                else:
                    addr = select(address, range(depth_), f"{kind}_addr_{bank}_{column}")
                    value = select(data_, 8, f"{kind}_data_{bank}_{column}")
                result.append((en, addr, value))
            return result

        code_read, scale_read = {}, {}
        for c in range(width):
            writers = sorted(plan.code_writers.get(c, ()))
            if not writers:
                continue
            for bank, (en, addr, value) in enumerate(
                    ports("code", c, writers, lambda j, c=c: (w_code[j, c], w_word[j, c]),
                          c % bw, depth)):
                memory = Memory(shape=8, depth=depth, init=[])
                m.submodules[f"code_{bank}_{c}"] = memory
                wr, rd = memory.write_port(), memory.read_port(domain="comb")
                m.d.comb += [wr.en.eq(en), wr.addr.eq(addr), wr.data.eq(value)]
                code_read[bank, c] = rd
        for h in plan.scale_columns:
            writers = sorted(plan.scale_writers.get(h, ()))
            (position,) = {t % bw for g in geometry.values() for _, _, t in g.scale_bytes()
                           if t % _SCALE_COLUMNS == h}
            for bank, (en, addr, value) in enumerate(
                    ports("scale", h, writers, lambda j, h=h: (w_scale[j, h], Const(0, 0)),
                          position, slots // banks)):
                memory = Memory(shape=8, depth=slots // banks, init=[])
                m.submodules[f"scale_{bank}_{h}"] = memory
                wr, rd = memory.write_port(), memory.read_port(domain="comb")
                m.d.comb += [wr.en.eq(en), wr.addr.eq(addr), wr.data.eq(value)]
                scale_read[bank, h] = rd

        # ---- Blocks: their format, and which one is its job's last ------------------------
        slot_fmt = [Signal(len(formats), name=f"slot_fmt_{s}") for s in range(slots)]
        slot_interleaved = [Signal(name=f"slot_interleaved_{s}") for s in range(slots)]
        slot_end = [Signal(name=f"slot_end_{s}") for s in range(slots)]
        # The slots as one-hot vectors, so that slot s is block j's when bit s − j is set.
        ws_hot = Signal(slots, init=1)
        rs_hot = Signal(slots, init=1)

        def rotated_left(value, amount):
            return Cat(value, value)[slots - amount:2 * slots - amount] if amount else value

        final_pass = Signal()
        m.d.comb += final_pass.eq(last & ~more)
        with m.If(go):
            m.d.sync += ws.eq(ws + done)
            with m.Switch(done):
                for d in range(1, reach + 1):
                    with m.Case(d):
                        m.d.sync += ws_hot.eq(rotated_left(ws_hot, d % slots))
            with m.If(done != 0):
                m.d.sync += job_blocks.eq(1)
            with m.If(final_pass):
                # What is left is a block cut short: dropped.
                m.d.sync += running.eq(0)
                m.d.comb += new_framing.eq(~any_of(exact_cases))

        # The slot registers are written from stage W, with the RAMs: for each block the pass
        # completes its format and order, and whether it is its job's last (the last one the
        # job's last pass completes). A last pass that completes nothing marks the block
        # before, if the job has one.
        w_slots_hot = Signal(slots)
        w_completes = Signal(reach)
        w_finals = Signal(reach)
        w_mark_previous = Signal()
        w_interleaved = Signal()
        m.d.sync += [
            w_slots_hot.eq(ws_hot),
            w_completes.eq(Cat(*(go & Mux(last, completes[j], full_done > j)
                                 for j in range(reach)))),
            w_finals.eq(Cat(*(final_pass & (~completes[j + 1] if j + 1 < reach else 1)
                              for j in range(reach)))),
            w_mark_previous.eq(go & final_pass & (done == 0) & job_blocks),
            w_interleaved.eq(interleaved),
        ]
        w_fmt_bits = Cat(*(w_fmt[f] for f in formats))
        for slot_ in range(slots):
            for j in range(reach):
                with m.If(w_completes[j] & w_slots_hot[(slot_ - j) % slots]):
                    m.d.sync += [
                        slot_fmt[slot_].eq(w_fmt_bits),
                        slot_interleaved[slot_].eq(w_interleaved),
                        slot_end[slot_].eq(w_finals[j]),
                    ]
            with m.If(w_mark_previous & w_slots_hot[(slot_ + 1) % slots]):
                m.d.sync += slot_end[slot_].eq(1)
        with m.If(self.i.valid & self.i.ready & discarding & last):
            m.d.sync += discarding.eq(0)

        # ---- Output: one RAM word per beat, then the codes picked from fixed places ---------
        o = self.o.payload
        o_free = Signal()
        m.d.comb += o_free.eq(~self.o.valid | self.o.ready)
        # A skid register behind `o`: a decoded beat that `o` cannot take waits there, and the
        # staged beat moves on whenever the skid register is empty. So nothing before the
        # output register depends on `o.ready` within the cycle.
        skid_full = Signal()
        staged = Signal()       # a beat read from the RAMs, waiting to be decoded
        staged_free = Signal()
        m.d.comb += staged_free.eq(~staged | ~skid_full)

        slot = rs[:slot_bits]
        # The beat of the block to read next, one-hot: comparisons with it are single bits
        # and stepping it is a shift.
        beat = Signal(max_beats, init=1)
        # The block being emitted: its format, nibble order, final beat and whether it is its
        # job's last, registered from the slot registers of the read pointer as it will be.
        # A block's are written with the beat that completes it, a cycle before it counts as
        # complete, so they are in place when it is emitted; `cur_end` may be set later, while
        # the block's final beat waits.
        cur_fmt = Signal(len(formats))
        cur_interleaved = Signal()
        cur_end = Signal()
        is_final = Signal()

        # Beat b of a block: for every (format, nibble order, b), the word its codes are in
        # and, per lane, (column, bit offset, bits).
        layouts = {}
        for f in formats:
            for il in ((False, True) if f == "MXFP4" else (False,)):
                for b in range(self.beats_per_block(f)):
                    sources = [_element_source(f, b * lanes + lane, il) for lane in range(lanes)]
                    (word,) = {t // width for t, _, _ in sources}
                    assert b != 0 or word == 0
                    layouts[f, il, b] = word, [(t % width, shift, bits)
                                               for t, shift, bits in sources]

        def layout_cond(f, il, b, beat_, fmt_, interleaved_):
            cond = fmt_[formats.index(f)] & beat_[b]
            if f == "MXFP4":
                cond &= interleaved_ if il else ~interleaved_
            return cond

        # A block's final beat waits until its job is known either to go on (the next block is
        # complete) or to have ended, so that it can carry `end`: a block cut short after it
        # is never emitted and could not carry it.
        # Registered, like `room`: at least one complete block, and at least two; `can`: a beat
        # may be read now.
        available = Signal()
        next_complete = Signal()
        can = Signal()
        issue = Signal()
        m.d.comb += issue.eq(staged_free & can)
        # The same for the ~200 enables of the staged datapath registers: a copy of `can` of
        # its own (kept apart in synthesis), so that the control logic sees a light `issue`.
        can_copy = Signal(attrs={"keep": 1})
        load = Signal()
        m.d.comb += load.eq(staged_free & can_copy)
        release = Signal()
        m.d.comb += release.eq(issue & is_final)
        available_next, next_complete_next = Signal(), Signal()
        final_next, end_next = Signal(), Signal()

        def read_slot(values, offset):
            """Slot register of the block being read (offset 0) or of the one after (1)."""
            return _or_all([Mux(rs_hot[(k - offset) % slots], value, 0)
                            for k, value in enumerate(values)])

        m.d.comb += end_next.eq(Mux(release, read_slot(slot_end, 1), read_slot(slot_end, 0)))
        next_beat = Signal.like(beat)
        m.d.comb += next_beat.eq(Mux(issue, Mux(is_final, 1, beat << 1), beat))
        m.d.sync += [
            beat.eq(next_beat),
            cur_fmt.eq(Mux(release, read_slot(slot_fmt, 1), read_slot(slot_fmt, 0))),
            cur_interleaved.eq(Mux(release, read_slot(slot_interleaved, 1),
                                   read_slot(slot_interleaved, 0))),
            cur_end.eq(end_next),
        ]

        # What depends on the next beat is registered too: worked out for the three cases
        # (the final beat is issued: beat 0 of the next slot; another beat is issued: the next
        # beat of this slot; nothing is issued), then picked by `release` and `issue`.
        here_fmt, here_interleaved = Signal(len(formats)), Signal()
        next_fmt, next_interleaved = Signal(len(formats)), Signal()
        m.d.comb += [
            here_fmt.eq(read_slot(slot_fmt, 0)),
            here_interleaved.eq(read_slot(slot_interleaved, 0)),
            next_fmt.eq(read_slot(slot_fmt, 1)),
            next_interleaved.eq(read_slot(slot_interleaved, 1)),
        ]
        cases_of_next = [(Const(1, max_beats), next_fmt, next_interleaved),
                         ((beat << 1)[:max_beats], here_fmt, here_interleaved),
                         (beat, here_fmt, here_interleaved)]

        def registered_next(value_of, shape, name):
            reg = Signal(shape, name=name)
            m.d.sync += reg.eq(value_of(next_beat, Mux(release, next_fmt, here_fmt),
                                        Mux(release, next_interleaved, here_interleaved)))
            return reg

        def final_of(beat_, fmt_, interleaved_):
            return any_of([fmt_[k] & beat_[self.beats_per_block(f) - 1]
                           for k, f in enumerate(formats)])

        finals = [final_of(*case) for case in cases_of_next]
        m.d.comb += final_next.eq(Mux(release, finals[0], Mux(issue, finals[1], finals[2])))
        m.d.sync += is_final.eq(final_next)

        def registered_layout(keys, name):
            return registered_next(
                lambda beat_, fmt_, il_: any_of([layout_cond(*key, beat_, fmt_, il_)
                                                 for key in sorted(keys)]), 1, name)

        read_word = registered_next(
            lambda beat_, fmt_, il_: select([(layout_cond(f, il, b, beat_, fmt_, il_), w)
                                             for (f, il, b), (w, _) in layouts.items() if w],
                                            range(words), None),
            range(words), "read_word")

        local = Cat(read_word[:word_bits], slot[bank_bits:])
        for read in code_read.values():
            m.d.comb += read.addr.eq(local)
        for read in scale_read.values():
            m.d.comb += read.addr.eq(slot[bank_bits:])
        bank = slot[:bank_bits]

        def read_data(reads, key, name):
            if banks == 1:
                return reads[0, key].data if (0, key) in reads else Const(0, 8)
            return select([(bank == b, reads[b, key].data) for b in range(banks)
                           if (b, key) in reads], 8, name)

        # Each lane's field is picked from the word as it is read: per lane, an 8-bit field
        # (Q8_0) and a field of up to 4 bits, from one of a few fixed places. One condition per
        # distinct set of (format, order, beat), shared by the lanes.
        groups = []         # per lane: {(column, shift, bits): keys}
        for lane in range(lanes):
            lane_groups = {}
            for key, (_, places) in layouts.items():
                lane_groups.setdefault(places[lane], set()).add(key)
            groups.append(lane_groups)
        conds = {}
        for lane_groups in groups:
            for keys in lane_groups.values():
                keys = frozenset(keys)
                if keys not in conds:
                    conds[keys] = registered_layout(keys, f"layout_{len(conds)}")
        word_data = Signal(8 * width)
        m.d.comb += word_data.eq(Cat(*(read_data(code_read, c, f"read_code_{c}")
                                       for c in range(width))))
        has_wide = "Q8_0" in formats
        wide_fields, code_fields = [], []
        for lane in range(lanes):
            wide_terms, narrow_terms = [], []
            for (column, shift, bits), keys in groups[lane].items():
                field_ = word_data[8 * column + shift:8 * column + shift + bits]
                (wide_terms if bits == 8 else narrow_terms).append((conds[frozenset(keys)],
                                                                    field_))
            if has_wide:
                # Alone, the Q8_0 field needs no condition: the format picks it after.
                wide_fields.append(wide_terms[0][1] if len(wide_terms) == 1 else
                                   _or_all([Mux(cond, field_, 0)
                                            for cond, field_ in wide_terms]))
            code_fields.append(_or_all([Mux(cond, field_, 0) for cond, field_ in narrow_terms])
                               if narrow_terms else Const(0, 4))

        staged_wide = Signal(8 * lanes if has_wide else 0)
        staged_code = Signal(4 * lanes)
        staged_scales = Signal(8 * len(plan.scale_columns))
        staged_fmt = Signal(len(formats))
        staged_first = Signal()
        staged_last = Signal()
        staged_end = Signal()
        with m.If(load):
            m.d.sync += [
                staged_wide.eq(Cat(*wide_fields)),
                staged_code.eq(Cat(*(Cat(field_, Const(0, 4))[:4] for field_ in code_fields))),
                staged_scales.eq(Cat(*(read_data(scale_read, h, f"read_scale_{h}")
                                       for h in plan.scale_columns))),
                staged_fmt.eq(cur_fmt),
                staged_first.eq(beat[0]),
                staged_last.eq(is_final),
                staged_end.eq(is_final & cur_end),
            ]
        with m.If(issue):
            m.d.sync += staged.eq(1)
            with m.If(is_final):
                m.d.sync += [rs.eq(rs + 1), rs_hot.eq(rotated_left(rs_hot, 1 % slots))]
        with m.Elif(~skid_full):
            m.d.sync += staged.eq(0)

        # `room`, `available` and `next_complete` for the next cycle, from counts kept in
        # registers (`occupied` = ws − rs, `complete` = wc − rs): worked out for every number
        # of blocks the input may complete or finish writing and the output may release, then
        # picked. The tests are equality comparisons of a few bits, with no carry chain.
        occupied = Signal(slot_bits + 1)
        complete = Signal(slot_bits + 1)
        added = Signal(range(reach + 1))
        m.d.comb += added.eq(Mux(go, done, 0))
        m.d.sync += [occupied.eq(occupied + added - release),
                     complete.eq(complete + w2_done - release)]

        def at_most(value, limit):
            return any_of([value == v for v in range(0, min(limit, slots) + 1)])

        with m.Switch(Cat(release, added)):
            for d in range(reach + 1):
                for r in range(2):
                    with m.Case(r | d << 1):
                        m.d.sync += [room.eq(at_most(occupied, slots - reach - d + r)),
                                     room_one.eq(at_most(occupied, slots - 1 - d + r))]
        with m.Switch(Cat(release, w2_done)):
            for d in range(reach + 1):
                for r in range(2):
                    with m.Case(r | d << 1):
                        m.d.comb += [available_next.eq(~at_most(complete, 0 - d + r)),
                                     next_complete_next.eq(~at_most(complete, 1 - d + r))]
        m.d.sync += [
            available.eq(available_next),
            next_complete.eq(next_complete_next),
            can.eq(available_next & (~final_next | next_complete_next | end_next)),
            can_copy.eq(available_next & (~final_next | next_complete_next | end_next)),
        ]

        # Decode the staged beat: the integer each lane's field stands for in its format.
        staged_is = {f: staged_fmt[k] for k, f in enumerate(formats)}
        decoded = Signal(data.ArrayLayout(signed(8), lanes))
        for lane in range(lanes):
            code = staged_code[4 * lane:4 * lane + 4]
            cases = []
            for f in formats:
                if f == "Q4_0":
                    value = Cat(code[:3], ~code[3]).as_signed()
                elif f == "Q4_1":
                    value = code
                elif f == "MXFP4":
                    value = _lookup(code, [_e2m1_doubled(k) for k in range(16)], signed(5))
                elif f == "TQ2_0":
                    value = _lookup(code[:2], [k - 1 for k in range(4)], signed(3))
                else:
                    continue
                cases.append(Mux(staged_is[f], value, 0))
            small = _or_all(cases) if cases else Const(0, signed(5))
            if has_wide:
                wide = staged_wide[8 * lane:8 * lane + 8]
                m.d.comb += decoded[lane].eq(Mux(staged_is["Q8_0"], wide, small))
            else:
                m.d.comb += decoded[lane].eq(small)

        # Scale fields by format; those a format does not have are zero.
        scale_byte = {h: staged_scales[8 * k:8 * k + 8] for k, h in enumerate(plan.scale_columns)}
        fields = {"d": Signal(16), "m": Signal(16), "e": Signal(8)}
        bad = []
        for name, field_ in fields.items():
            terms = []
            for f in formats:
                parts = {k: scale_byte[t % _SCALE_COLUMNS]
                         for field_name, k, t in geometry[f].scale_bytes() if field_name == name}
                if parts:
                    value = Cat(*(parts[k] for k in sorted(parts)))
                    terms.append(Mux(staged_is[f], value, 0))
                    bad.append(staged_is[f] & ((value == 0xFF) if name == "e"
                                               else (value[10:15] == 0x1F)))
            m.d.comb += field_.eq(_or_all(terms) if terms else 0)

        out = Signal(self._output_layout)
        m.d.comb += [
            out.codes.eq(decoded),
            out.d.eq(fields["d"]),
            out.m.eq(fields["m"]),
            out.e.eq(fields["e"]),
            out.first.eq(staged_first),
            out.last.eq(staged_last),
            out.end.eq(staged_end),
        ]
        skid = Signal(self._output_layout)
        moving = Signal()       # the staged beat leaves, to `o` or to the skid register
        m.d.comb += moving.eq(staged & ~skid_full)
        with m.If(moving):
            m.d.comb += new_nonfinite.eq(staged_first & any_of(bad))
        with m.If(o_free):
            m.d.sync += [o.eq(Mux(skid_full, skid, out)), self.o.valid.eq(skid_full | moving),
                         skid_full.eq(0)]
        with m.Elif(moving):
            m.d.sync += skid_full.eq(1)
        with m.If(~skid_full):
            m.d.sync += skid.eq(out)

        # ---- Errors -----------------------------------------------------------------------
        flags = Cat(new_framing, new_nonfinite, new_mode)
        m.d.sync += self.errors.as_value().eq(
            Mux(self.clear, 0, self.errors.as_value()) | flags)

        # ---- Rules ------------------------------------------------------------------------
        held = (ws - rs)[:slot_bits + 1]
        m.d.sync += [
            Assert(held <= slots, "Unpacker slot ring overflowed"),
            Assert((wc - rs)[:slot_bits + 1] <= held,
                   "Unpacker has a complete block the input has not written"),
            Assert(occupied == held, "Unpacker occupancy count disagrees with the slot pointers"),
            Assert(ws_hot == (1 << ws[:slot_bits] if slots > 1 else 1),
                   "Unpacker one-hot write slot disagrees with the pointer"),
            Assert(rs_hot == (1 << rs[:slot_bits] if slots > 1 else 1),
                   "Unpacker one-hot read slot disagrees with the pointer"),
            Assert(complete == (wc - rs)[:slot_bits + 1],
                   "Unpacker complete-block count disagrees with the slot pointers"),
            Assert(room == (held <= slots - reach),
                   "Unpacker room register disagrees with the slot pointers"),
            Assert(room_one == (held <= slots - 1),
                   "Unpacker room register disagrees with the slot pointers"),
            Assert(available == (wc != rs),
                   "Unpacker block-complete register disagrees with the slot pointers"),
            Assert(next_complete == ((wc - rs)[:slot_bits + 1] >= 2),
                   "Unpacker next-block register disagrees with the slot pointers"),
            Assert(can == (available & (~is_final | next_complete | cur_end)),
                   "Unpacker issue register disagrees with its terms"),
            Assert(can_copy == can, "Unpacker issue register copies disagree"),
            Assert(~(running & discarding), "Unpacker both running and discarding a job"),
        ]
        assert_stream_rules(m, self.o, "Unpacker output")

        return m


def _lookup(code, values, shape):
    """``values[code]`` as a value of ``shape`` (a table of constants)."""
    return Array(Const(v, shape) for v in values)[code]


def _or_all(values):
    """OR of ``values``, as a balanced tree (a chain of hundreds would be too deep to elaborate)."""
    values = list(values)
    while len(values) > 1:
        values = [values[k] | values[k + 1] if k + 1 < len(values) else values[k]
                  for k in range(0, len(values), 2)]
    return values[0]
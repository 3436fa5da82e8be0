"""Systolic MAC array: exact int32 block sums of quantized matmuls (docs/mac_array.md)."""

from functools import reduce
from operator import or_

from amaranth.hdl import Assert, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..config import MAX_ARRAY_ROWS, PACKED_FORMATS, WEIGHT_FORMATS, mode_code
from ..fifo import StreamFIFO
from ..stream_rules import assert_stream_rules
from .pe import LANE_SHIFT, MULTIPLY_LATENCY, ProcessingElement, sum_widths, \
    weight_word_width


__all__ = ["MACArray", "COMMAND_LAYOUT", "WEIGHT_PAIR_LAYOUT", "ERROR_LAYOUT", "BLOCK"]


#: K elements per block sum: the block of Q8_0 activations, and of every weight format but
#: TQ2_0 (whose 256-element blocks hold eight of them).
BLOCK = 32

#: Output words the array can hold per row of PEs: enough for the blocks in flight between
#: accepting a block's first step and its sums leaving the output buffer, so that a consumer that
#: keeps up never slows the array.
FIFO_BLOCKS = 2

#: One matmul: weight format (index in WEIGHT_FORMATS), K / 32, and the number of output tiles.
COMMAND_LAYOUT = data.StructLayout({"mode": 3, "blocks": 16, "tiles": 16})

#: One column's weights for one k-step in an array with a packed format: ``lo`` is the int8
#: Q8_0 value, or the 4-bit/ternary value of output ``c`` of the tile; ``hi`` is the value of
#: output ``cols + c`` (zero in Q8_0 mode).
WEIGHT_PAIR_LAYOUT = data.StructLayout({"lo": signed(8), "hi": signed(5)})

#: Sticky error flags: an undefined or disabled mode; a command with zero blocks or tiles.
ERROR_LAYOUT = data.StructLayout({"mode": 1, "empty": 1})


def _tree_fan_ins(count):
    """Fan-in of each register level of an OR-tree over ``count`` inputs: pairs first (a PE's
    sum gated by its `done`, ORed with its neighbour's, is one LUT4 per bit), then four inputs
    (one LUT4) per level; at least one level."""
    fan_ins = [2]
    count = -(-count // 2)
    while count > 1:
        fan_ins.append(4)
        count = -(-count // 4)
    return fan_ins


class MACArray(wiring.Component):
    """``rows × cols`` multiply-accumulate array producing exact 32-element block sums.

    Output-stationary: PE (r, c) owns output (r, c) of an output tile and accumulates its dot
    product over K, one k-step per cycle, emitting the sum at every 32nd step. Weight operands
    enter at the top of each column and move one PE down per cycle; activations enter row r
    ``r`` cycles after row 0 and reach all PEs of the row at once. Every PE of row r therefore
    finishes a block in the same cycle, one cycle after row r − 1, and a column's PEs share one
    output path without collisions (hence at most 32 rows). A decode matmul (one activation
    row) streams one weight word per column per cycle; a prefill matmul keeps every PE busy.

    Weight modes (``i_cmd.mode``, the index in :data:`~rtl.config.WEIGHT_FORMATS`): the weights
    arrive as the integers the format's codes stand for (the weight unpacker's job, SPEC §2):
    Q8_0 one int8 per column per step (``lo``; ``hi`` zero); Q4_0 (q − 8), Q4_1 (q), MXFP4
    (twice the E2M1 value) and TQ2_0 (q − 1) two per column per step, ``lo`` for output ``c``
    of the tile and ``hi`` for output ``cols + c``, so the tile is ``rows × 2·cols`` and the
    array does two MACs per PE per cycle. The mode decides how the two lanes of a sum combine.

    A command asks for ``tiles × blocks × 32`` k-steps; each step is one ``i_x`` word (one
    activation code per row) and one ``i_w`` word (weights for every column), taken together.
    For every block of every tile the array emits ``rows`` words on ``o``, one per row, in row
    order, tagged with tile, block and row; ``last`` marks the final word of the command. There
    is no global stall: the array only starts a block when its output buffer has room for the
    block's sums, so random backpressure on ``o`` slows the inputs, never the PEs.

    Bad input: a mode that is undefined or not in ``formats`` sets ``errors.mode``; its steps
    are taken and dropped, and it produces no output. A command with zero blocks or tiles sets
    ``errors.empty`` and takes nothing. The flags stay set until ``clear``.

    Parameters
    ----------
    rows : int
        PE rows, 1 to 32.
    cols : int
        PE columns, 1 to 64.
    formats : tuple of str
        Weight formats the array accepts: a non-empty subset of WEIGHT_FORMATS. Without a 4-bit
        or ternary format the PEs have one accumulator and no packing logic.
    buffer_blocks : int
        Blocks of sums the output buffer holds, 2 to 16 (default 2). A block holds its
        ``rows`` words from its first step until they are delivered: two blocks keep the array
        at full rate when the consumer takes a word a cycle; a consumer as slow as the array
        (all ``rows`` words of a block in 32 cycles, the matmul engine at M = ``rows``) needs
        four.

    Members
    -------
    i_cmd : ``In(stream.Signature(COMMAND_LAYOUT))``
        Matmul commands.
    i_x : ``In(stream.Signature(data.ArrayLayout(signed(8), rows)))``
        Activation codes, one per row per k-step.
    i_w : ``In(stream.Signature(data.ArrayLayout(WEIGHT_PAIR_LAYOUT, cols)))``
        Weights per column per k-step; ``data.ArrayLayout(signed(8), cols)`` (int8 only) in
        an array built without a packed format.
    o : ``Out(stream.Signature(output_layout))``
        ``sums`` (``lanes × cols`` signed 32-bit block sums; entries from ``cols`` on are lane b,
        zero in Q8_0 mode), ``row``, ``block``, ``tile``, ``last``.
    errors : ``Out(ERROR_LAYOUT)``
        Sticky error flags.
    clear : ``In(1)``
        Clears ``errors``.
    busy : ``Out(1)``
        A command is being taken or its sums are not all delivered.
    """

    def __init__(self, *, rows, cols, formats=WEIGHT_FORMATS, buffer_blocks=FIFO_BLOCKS):
        for name, value, high in (("rows", rows, MAX_ARRAY_ROWS), ("columns", cols, 64)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise ValueError(f"MAC array {name} must be an integer from 1 to {high}, "
                                 f"not {value!r}")
        if isinstance(formats, str) or not isinstance(formats, (tuple, list)) or not formats:
            raise TypeError(f"MAC array formats must be a non-empty tuple of format names, "
                            f"not {formats!r}")
        for name in formats:
            if name not in WEIGHT_FORMATS:
                raise ValueError(f"MAC array format {name!r} is not a known format; allowed: "
                                 f"{', '.join(WEIGHT_FORMATS)}")
        if (not isinstance(buffer_blocks, int) or isinstance(buffer_blocks, bool)
                or not 2 <= buffer_blocks <= 16):
            raise ValueError(f"MAC array buffer blocks must be an integer from 2 to 16, not "
                             f"{buffer_blocks!r}")
        self._rows = rows
        self._cols = cols
        self._buffer_blocks = buffer_blocks
        self._formats = tuple(formats)
        self._packed = any(name in PACKED_FORMATS for name in formats)
        self._lanes = 2 if self._packed else 1
        self._output_layout = data.StructLayout({
            "sums": data.ArrayLayout(signed(32), self._lanes * cols),
            "row": unsigned(max(1, (rows - 1).bit_length())),
            "block": 16,
            "tile": 16,
            "last": 1,
        })
        super().__init__({
            "i_cmd": In(stream.Signature(COMMAND_LAYOUT)),
            "i_x": In(stream.Signature(data.ArrayLayout(signed(8), rows))),
            "i_w": In(stream.Signature(data.ArrayLayout(
                WEIGHT_PAIR_LAYOUT if self._packed else signed(8), cols))),
            "o": Out(stream.Signature(self._output_layout)),
            "errors": Out(ERROR_LAYOUT),
            "clear": In(1),
            "busy": Out(1),
        })

    @classmethod
    def from_config(cls, config):
        return cls(rows=config.array_rows, cols=config.array_cols,
                   formats=config.weight_formats)

    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    formats = property(lambda self: self._formats)
    buffer_blocks = property(lambda self: self._buffer_blocks)
    packed = property(lambda self: self._packed)
    lanes = property(lambda self: self._lanes)
    output_layout = property(lambda self: self._output_layout)

    @property
    def fifo_depth(self):
        """Output words buffered (and the credit count the inputs wait for): ``buffer_blocks``
        blocks of ``rows`` words."""
        return self._buffer_blocks * self._rows

    @property
    def gather_levels(self):
        """Register levels of each column's output OR-tree (see :meth:`_or_tree`)."""
        return len(_tree_fan_ins(self._rows))

    @property
    def latency(self):
        """Cycles from taking a block's last k-step to row 0's output word being offered on
        ``o`` (row r follows r cycles later), when ``o`` is ready."""
        # Two input registers, edge registers, PE latency, the accumulator and `done`, the
        # gather tree, the tag stage, the combiner writing the buffer, and the buffer's output
        # register.
        return 3 + MULTIPLY_LATENCY + 1 + self.gather_levels + 1 + 1 + 1

    def _word(self, column):
        """The PE weight word for one column's ``i_w`` entry."""
        if not self._packed:
            return column
        # The operand a + b·2**12 without its sign-extension bits: the low value (8 bits) and,
        # above it, b minus the low value's sign (what the carry out of the sign-extended low
        # part subtracts). The PE re-inserts the sign bits as wires.
        return Cat(column.lo, (column.hi - column.lo[7])[:6])

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._rows, self._cols

        # ---- Commands and the k-step counter ---------------------------------------------
        active = Signal()
        discard = Signal()      # the current command's mode is bad: take its steps, drop them
        # Only "is Q8_0" is used, but latching that bit instead moved nextpnr's placement from
        # 198.5 to 188.8 MHz at 8x8 (same seed): kept as measured.
        mode = Signal(3)
        blocks_m1 = Signal(16)
        tiles_m1 = Signal(16)
        step = Signal(range(BLOCK))
        block = Signal(16)
        tile = Signal(16)
        # Where the next step falls in its block, kept in registers rather than decoded from
        # `step` in front of `take`.
        starts_block = Signal()
        ends_block = Signal()

        depth = self.fifo_depth
        credits = Signal(range(depth + 1), init=depth)

        # A command waits in a register, checked, until the current one has taken its last
        # step; so the checks are off the path that starts it, and consecutive commands
        # follow each other without a gap.
        command = self.i_cmd.payload
        pending = Signal(COMMAND_LAYOUT)
        pending_valid = Signal()
        pending_empty = Signal()
        pending_ok = Signal()
        m.d.comb += self.i_cmd.ready.eq(~pending_valid)
        with m.If(self.i_cmd.valid & ~pending_valid):
            m.d.sync += [
                pending.eq(command),
                pending_valid.eq(1),
                pending_empty.eq((command.blocks == 0) | (command.tiles == 0)),
                pending_ok.eq(reduce(or_, (command.mode == mode_code(name)
                                           for name in self._formats))),
            ]
        with m.If(pending_valid & ~active):
            m.d.sync += pending_valid.eq(0)
            with m.If(pending_empty):
                m.d.sync += self.errors.empty.eq(1)
            with m.Else():
                m.d.sync += [
                    active.eq(1),
                    discard.eq(~pending_ok),
                    mode.eq(pending.mode),
                    blocks_m1.eq(pending.blocks - 1),
                    tiles_m1.eq(pending.tiles - 1),
                    step.eq(0), block.eq(0), tile.eq(0),
                    starts_block.eq(1), ends_block.eq(0),
                ]
                with m.If(~pending_ok):
                    m.d.sync += self.errors.mode.eq(1)
        with m.If(self.clear):
            m.d.sync += self.errors.eq(0)

        # Registered comparisons: a cycle old, which is safe because block and tile change
        # only at the end of a block, at least 32 cycles before they are next looked at.
        last_block = Signal()
        last_tile = Signal()
        m.d.sync += [last_block.eq(block == blocks_m1), last_tile.eq(tile == tiles_m1)]
        # A block starts only when the output buffer has room for all of its rows. `room` is a
        # cycle old; that is safe because blocks start at least 32 cycles apart and a stale
        # value can only have missed a delivery, which adds credits.
        room = Signal()
        m.d.sync += room.eq(credits >= rows)
        go = active & (discard | ~starts_block | room)
        m.d.comb += [
            self.i_x.ready.eq(go & self.i_w.valid),
            self.i_w.ready.eq(go & self.i_x.valid),
        ]
        take = Signal()
        m.d.comb += take.eq(go & self.i_x.valid & self.i_w.valid)
        # Only what the next step depends on changes in the cycle a step is taken; the block
        # and tile counters advance a cycle later (`block_ended`), which is safe because the
        # next block ends at least 32 cycles later.
        block_ended = Signal()
        m.d.sync += block_ended.eq(take & ends_block & ~(last_block & last_tile))
        with m.If(take):
            m.d.sync += [step.eq(step + 1), starts_block.eq(ends_block),
                         ends_block.eq(step == BLOCK - 2)]
            with m.If(ends_block):
                m.d.sync += step.eq(0)
                with m.If(last_block & last_tile):
                    m.d.sync += active.eq(0)
        with m.If(block_ended):
            with m.If(last_block):
                m.d.sync += [block.eq(0), tile.eq(tile + 1)]
            with m.Else():
                m.d.sync += block.eq(block + 1)
        compute = Signal()
        m.d.comb += compute.eq(take & ~discard)

        # Each block's tag waits here for its sums; credits bound the blocks in flight.
        tag_layout = data.StructLayout({"tile": 16, "block": 16, "last": 1, "wide": 1})
        m.submodules.tags = tags = StreamFIFO(tag_layout, self._buffer_blocks)
        # Registered, like the tag below: credits and `room` may lag a cycle or two, which is
        # safe while blocks start at least 32 cycles apart.
        reserve = Signal()
        m.d.sync += reserve.eq(compute & starts_block)
        # The tag goes in (a cycle after) the block's last step is taken: the counters'
        # comparisons are settled by then, and the tag still precedes the block's sums by the
        # array's latency.
        m.d.sync += [
            tags.i.valid.eq(compute & ends_block),
            tags.i.payload.tile.eq(tile),
            tags.i.payload.block.eq(block),
            tags.i.payload.last.eq(last_block & last_tile),
            tags.i.payload.wide.eq(mode == mode_code("Q8_0")),
        ]
        m.d.sync += Assert(~tags.i.valid | tags.i.ready, "MAC array: more blocks in flight "
                                                        "than tags")

        # ---- West and north edges: skew the activations, decode the weights ---------------
        # The input payloads are registered as they are, with no enable, so that `take` (a long
        # path from the valids and the credit check) drives only the control; whether a step
        # was taken follows in registers, one copy per row.
        # Two register stages: `compute` is registered once beside the control, then copied
        # into one register per row (its fan-out reaches every row of the die).
        x_q = Signal(data.ArrayLayout(signed(8), rows), reset_less=True)
        x_qq = Signal(data.ArrayLayout(signed(8), rows), reset_less=True)
        w_q = Signal(self.i_w.payload.shape(), reset_less=True)
        w_qq = Signal(self.i_w.payload.shape(), reset_less=True)
        compute_q = Signal()
        m.d.sync += [x_q.eq(self.i_x.payload), x_qq.eq(x_q),
                     w_q.eq(self.i_w.payload), w_qq.eq(w_q), compute_q.eq(compute)]
        flags_layout = data.StructLayout({"first": 1, "last": 1})
        flags_in = Signal(flags_layout)
        m.d.sync += [flags_in.first.eq(compute & starts_block),
                     flags_in.last.eq(compute & ends_block)]
        flags_mid = Signal(flags_layout)
        flags = Signal(flags_layout, name="flags_edge")
        m.d.sync += [flags_mid.eq(flags_in), flags.eq(flags_mid)]

        # Row r sees k-step s r cycles after row 0; a step not taken enters as zeros, so it adds
        # nothing.
        row_flags = []
        row_x = []
        for r in range(rows):
            taken = Signal(name=f"taken_{r}", attrs={"keep": 1})   # one copy per row
            m.d.sync += taken.eq(compute_q)
            value = Mux(taken, x_qq[r], 0)
            for stage in range(r + 1):
                reg = Signal(signed(8), reset_less=True, name=f"x_skew_{r}_{stage}")
                m.d.sync += reg.eq(value)
                value = reg
            row_x.append(value)
            if r:
                reg = Signal(flags_layout, name=f"flags_{r}")
                m.d.sync += reg.eq(row_flags[-1])
                row_flags.append(reg)
            else:
                row_flags.append(flags)

        weights = []
        for c in range(cols):
            reg = Signal(signed(weight_word_width(self._packed)), reset_less=True,
                         name=f"w_edge_{c}")
            m.d.sync += reg.eq(self._word(w_qq[c]))
            weights.append(reg)

        # ---- The PEs ----------------------------------------------------------------------
        pes = [[None] * cols for _ in range(rows)]
        row_done = []
        for r in range(rows):
            # The PEs want their flags MULTIPLY_LATENCY - 1 cycles after their operands.
            lead = row_flags[r]
            for stage in range(MULTIPLY_LATENCY - 1):
                reg = Signal(flags_layout, name=f"flags_{r}_lead{stage}")
                m.d.sync += reg.eq(lead)
                lead = reg
            # A row-level copy of the PEs' `done`, for the output valid.
            last_q = Signal(name=f"last_{r}")
            done = Signal(name=f"done_{r}")
            m.d.sync += [last_q.eq(lead.last), done.eq(last_q)]
            row_done.append(done)
            for c in range(cols):
                pe = ProcessingElement(packed=self._packed)
                m.submodules[f"pe_{r}_{c}"] = pe
                pes[r][c] = pe
                m.d.comb += [
                    pe.x.eq(row_x[r]),
                    pe.w.eq(weights[c] if r == 0 else pes[r - 1][c].w_next),
                    pe.first.eq(lead.first),
                    pe.last.eq(lead.last),
                ]

        # ---- Output: one OR-tree per column, then the lane combiner and the buffer ------------
        # Within a column at most one PE is `done` in any cycle, and the others output zero.
        widths = sum_widths(self._packed)
        gathered = []
        for c in range(cols):
            items = [Cat(*(getattr(pes[r][c], f"sum_{lane}") for lane in "ab"[:self._lanes]))
                     for r in range(rows)]
            gathered.append(self._or_tree(m, items, f"gather_{c}", reset_less=True))
        valid = self._or_tree(m, row_done, "gather_valid", reset_less=False)

        row = Signal(range(rows), name="out_row")
        with m.If(valid):
            m.d.sync += row.eq(Mux(row == rows - 1, 0, row + 1))
        m.d.sync += Assert(~(valid & (row == 0)) | tags.o.valid,
                           "MAC array: block sums without a tag")

        # Tag and combiner stage. Row 0 of a block takes its tag from the tag FIFO into
        # registers; the combiner needs only the mode bit, which it takes from a registered copy
        # of the FIFO's head (one per column, kept apart in synthesis), so the LUT RAM read never
        # sits in front of the adders. The copy follows the head except while a block's rows
        # pass: the head holds the block's tag long before its row 0 (the tag goes in a dozen
        # cycles before, the previous one left at least 32 cycles before), and changes after.
        follow = ~valid | (row == rows - 1)
        tag = Signal(tag_layout)
        # Popped a cycle after row 0 reads it: the pop is then a register, not the gather
        # tree's valid travelling across the die into the FIFO's counters.
        pop = Signal()
        m.d.sync += pop.eq(valid & (row == 0))
        m.d.comb += tags.o.ready.eq(pop)
        with m.If(valid & (row == 0)):
            m.d.sync += tag.eq(tags.o.payload)
        staged_valid = Signal()
        staged_row = Signal.like(row)
        m.d.sync += [staged_valid.eq(valid), staged_row.eq(row)]

        fifo_lanes = {"a": data.ArrayLayout(signed(21), cols)}
        if self._packed:
            fifo_lanes["b"] = data.ArrayLayout(signed(widths[1]), cols)
        fifo_layout = data.StructLayout({
            **fifo_lanes,
            "row": self._output_layout["row"].shape,
            "block": 16, "tile": 16, "last": 1,
        })
        staged = Signal(fifo_layout, reset_less=True)
        for c in range(cols):
            sum_a = gathered[c][:widths[0]].as_signed()
            if self._packed:
                sum_b = gathered[c][widths[0]:].as_signed()
                wide = Signal(name=f"wide_{c}", attrs={"keep": 1})
                with m.If(follow):
                    m.d.sync += wide.eq(tags.o.payload.wide)
                # Q8_0 went through the packed split too: put the lanes back together.
                with m.If(wide):
                    m.d.sync += [staged.a[c].eq(sum_a + (sum_b << LANE_SHIFT)),
                                 staged.b[c].eq(0)]
                with m.Else():
                    m.d.sync += [staged.a[c].eq(sum_a), staged.b[c].eq(sum_b)]
            else:
                m.d.sync += staged.a[c].eq(sum_a)

        # The word goes straight into the buffer's LUT RAM, whose write is the register of
        # the next stage.
        entry = Signal(fifo_layout)
        entry_valid = Signal()
        m.d.comb += [
            entry_valid.eq(staged_valid),
            entry.eq(staged),
            entry.row.eq(staged_row),
            entry.block.eq(tag.block),
            entry.tile.eq(tag.tile),
            entry.last.eq(tag.last & (staged_row == rows - 1)),
        ]

        # Output buffer. Not lib.fifo: the credits already guarantee room, so the write enable
        # is `staged_valid` straight from its register, with no full check in front of the
        # ~90 LUT RAM cells it drives; and the output is a register, not a RAM read.
        m.submodules.buffer = buffer = Memory(shape=fifo_layout, depth=depth, init=[])
        write = buffer.write_port()
        read = buffer.read_port(domain="comb")
        write_ptr = Signal(range(depth))
        read_ptr = Signal(range(depth))
        held = Signal(range(depth + 1))
        nonempty = Signal()
        out_valid = Signal()
        out = Signal(fifo_layout, reset_less=True)
        load = Signal()
        m.d.comb += [
            write.addr.eq(write_ptr), write.data.eq(entry), write.en.eq(entry_valid),
            read.addr.eq(read_ptr),
            load.eq(nonempty & (~out_valid | self.o.ready)),
        ]
        with m.If(entry_valid):
            m.d.sync += write_ptr.eq(Mux(write_ptr == depth - 1, 0, write_ptr + 1))
        with m.If(load):
            m.d.sync += [out.eq(read.data), out_valid.eq(1),
                         read_ptr.eq(Mux(read_ptr == depth - 1, 0, read_ptr + 1))]
        with m.Elif(self.o.ready):
            m.d.sync += out_valid.eq(0)
        m.d.sync += held.eq(held + entry_valid - load)
        # `held != 0` next cycle, without waiting for the adder: a write keeps it non-empty
        # (a read needs one word already there); otherwise two words, or one not read now.
        m.d.sync += nonempty.eq(entry_valid | (held >= 2) | ((held == 1) & ~load))
        m.d.sync += Assert(~entry_valid | load | (held != depth),
                           "MAC array: output buffer overflow (credits out of step)")

        m.d.comb += [
            self.o.valid.eq(out_valid),
            self.o.payload.row.eq(out.row),
            self.o.payload.block.eq(out.block),
            self.o.payload.tile.eq(out.tile),
            self.o.payload.last.eq(out.last),
        ]
        for c in range(cols):
            m.d.comb += self.o.payload.sums[c].eq(out.a[c])
            if self._packed:
                m.d.comb += self.o.payload.sums[cols + c].eq(out.b[c])
        assert_stream_rules(m, self.o, "o")

        # Credits: a block takes `rows` when it starts; each word delivered returns one.
        delivered = self.o.valid & self.o.ready
        m.d.sync += credits.eq(credits - Mux(reserve, rows, 0) + delivered)
        m.d.comb += self.busy.eq(active | (credits != depth))

        return m

    @staticmethod
    def _or_tree(m, items, name, *, reset_less):
        """OR of ``items`` through one register per level of :func:`_tree_fan_ins`."""
        for level, fan_in in enumerate(_tree_fan_ins(len(items))):
            merged = []
            for group in range(0, len(items), fan_in):
                reg = Signal(len(items[0]), name=f"{name}_l{level}_{group // fan_in}",
                             reset_less=reset_less)
                m.d.sync += reg.eq(reduce(or_, items[group:group + fan_in]))
                merged.append(reg)
            items = merged
        return items[0]

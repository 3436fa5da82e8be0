"""Matmul engine: a tile's quantized matrix multiply, from GGUF weight blocks as stored and
Q8_0 activations to binary32 results (docs/matmul.md).
"""

from amaranth.hdl import Array, Assert, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..arbiter import RoundRobinArbiter
from ..config import PACKED_FORMATS, WEIGHT_FORMATS, mode_code
from ..fifo import StreamFIFO
from ..stream_rules import assert_stream_rules
from .dequant import Dequantizer
from .mac_array import BLOCK, MACArray
from .unpack import BLOCK_GEOMETRY, WeightUnpacker


__all__ = ["MatmulEngine", "XS_LAYOUT", "ERROR_LAYOUT", "WEIGHT_WORDS"]

#: SRAM words per weight beat in a tile (:meth:`MatmulEngine.from_config`): the tile reads its
#: weights through two SRAM ports, because a k-step of a packed format at 8 × 8 takes 16 rows'
#: codes, 9 to 10.3 bytes a cycle (Q4_0 18, Q4_1 20, TQ2_0 66 bytes per block), more than one
#: 8-byte word.
WEIGHT_WORDS = 2


#: Sticky error flags: a rejected command (unknown or unbuilt mode, zero blocks or tiles, rows
#: 0 or above the array's, TQ2_0 blocks not a multiple of 8); a weight stream the unpacker
#: flagged (framing, non-finite scale); a term the dequant pipeline dropped.
ERROR_LAYOUT = data.StructLayout({"command": 1, "weights": 1, "dequant": 1})

#: One activation block's scale and code sum for one row.
XS_LAYOUT = data.StructLayout({"d": 16, "sum": signed(16)})

#: Results of TQ2_0's 256-element blocks per 32-element block of the array.
_TQ2_0_SUBBLOCKS = BLOCK_GEOMETRY["TQ2_0"].elements // BLOCK


def _pow2_at_least(n):
    return 1 << max(0, (n - 1).bit_length())


class MatmulEngine(wiring.Component):
    """y = W · x for a weight matrix W in a GGUF format and up to ``rows`` activation rows x
    quantized to Q8_0, bit-exact with :func:`sim.dequant.matmul`.

    The weights stream in as the bytes of their GGUF blocks, grouped by *tile* of G output
    rows (G = ``cols``, or ``2·cols`` in the packed formats, as many as the MAC array computes
    at once): for each tile, for each block along K, the block of each of the tile's G rows.
    The weight unpacker turns them into integer codes; a double-buffered transposer turns G
    rows' blocks into the array's k-steps (one code per column and lane); the MAC array forms
    exact block sums; and the dequant pipeline scales them by the weight and activation block
    scales and accumulates each output in binary32. The activations stream in once per tile,
    one k-step of ``rows`` codes per beat, with one beat of block scales and code sums per
    32-element block.

    Parameters
    ----------
    rows, cols : int
        The MAC array's shape (:class:`~rtl.tiles.mac_array.MACArray`).
    formats : tuple of str
        Weight formats built in.
    byte_width : int
        Bytes per weight beat (the SRAM width in bytes).
    lanes : int
        Codes per unpacker output beat.
    term_lanes : int or None
        Dequant terms built per cycle, each lane with its own dequant pipeline: a power of two
        up to G rounded up to a power of two. None (the default) takes as many as keep the
        array at full rate with all ``rows`` in use: ``rows``·G / 32 rounded up to a power of
        two (4 at 8 × 8 with a packed format), at most that maximum.

    Members
    -------
    i_cmd : ``In(stream.Signature(COMMAND_LAYOUT))``
        One command per matmul: ``mode`` (index in WEIGHT_FORMATS), ``interleaved`` (MXFP4 in
        the gpt-oss nibble order), ``blocks`` (K / 32), ``tiles`` (N / G), ``rows`` (M, 1 to
        ``rows``).
    i_w : ``In(stream.Signature(WeightUnpacker input layout))``
        The command's weight blocks, one unpacker job (``last`` on its last beat).
    i_x : ``In(stream.Signature(data.ArrayLayout(signed(8), rows)))``
        Activation codes, one k-step per beat, for every tile (``tiles × blocks × 32`` beats);
        rows from M on are zero.
    i_xs : ``In(stream.Signature(data.ArrayLayout(XS_LAYOUT, rows)))``
        Per tile and 32-element block, each row's raw fp16 scale ``d`` and code sum ``sum``.
    o : ``Out(stream.Signature(OUTPUT_LAYOUT))``
        One result per output: ``row`` (m), ``col`` (n), the binary32 ``value`` and
        ``command``, which alternates from one command to the next (the first is 1): the
        engine takes the next command as soon as its unpacker and array have taken the one
        before, so the results of two commands may come out mixed.
    errors : ``Out(ERROR_LAYOUT)``
        Sticky error flags.
    clear : ``In(1)``
        Clears ``errors``.
    busy : ``Out(1)``
        A command is in progress or results are still to come.
    """

    def __init__(self, *, rows, cols, formats=WEIGHT_FORMATS, byte_width=8, lanes=16,
                 term_lanes=None):
        # The blocks inside check and report their own parameters.
        # Four blocks of sums: with all rows in use the term lanes take a block's words in as
        # long as the array computes one, and a block holds its credits from its first k-step
        # until its last word has gone (about 80 cycles at 8 × 8): two blocks gave 77 %.
        self._array = MACArray(rows=rows, cols=cols, formats=formats, buffer_blocks=4)
        self._unpack = WeightUnpacker(formats=formats, byte_width=byte_width, lanes=lanes)
        self._rows = rows
        self._cols = cols
        self._formats = tuple(formats)
        self._lanes = lanes
        self._byte_width = byte_width
        self._stride = _pow2_at_least(self._array.lanes * cols)
        if term_lanes is None:
            term_lanes = min(self._stride, _pow2_at_least(
                -(-rows * self._array.lanes * cols // BLOCK)))
        if (not isinstance(term_lanes, int) or isinstance(term_lanes, bool)
                or not 1 <= term_lanes <= self._stride or term_lanes & (term_lanes - 1)):
            raise ValueError(f"Matmul engine term lanes must be a power of two from 1 to "
                             f"{self._stride}, not {term_lanes!r}")
        self._term_lanes = term_lanes
        # Lane l takes the terms of outputs j ≡ l (mod term_lanes) of each array word.
        self._dequants = [Dequantizer(rows * self._stride // term_lanes, formats=formats)
                          for _ in range(term_lanes)]
        super().__init__({
            "i_cmd": In(stream.Signature(self.command_layout)),
            "i_w": In(stream.Signature(self._unpack.input_layout)),
            "i_x": In(stream.Signature(data.ArrayLayout(signed(8), rows))),
            "i_xs": In(stream.Signature(data.ArrayLayout(XS_LAYOUT, rows))),
            "o": Out(stream.Signature(self.output_layout)),
            "errors": Out(ERROR_LAYOUT),
            "clear": In(1),
            "busy": Out(1),
        })

    @classmethod
    def from_config(cls, config):
        return cls(rows=config.array_rows, cols=config.array_cols,
                   formats=config.weight_formats,
                   byte_width=WEIGHT_WORDS * config.sram_width // 8,
                   term_lanes=config.term_lanes or None)

    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    formats = property(lambda self: self._formats)
    byte_width = property(lambda self: self._byte_width)
    term_lanes = property(lambda self: self._term_lanes)

    @property
    def command_layout(self):
        return data.StructLayout({"mode": 3, "interleaved": 1, "blocks": 16, "tiles": 16,
                                  "rows": range(self._rows + 1)})

    @property
    def output_layout(self):
        return data.StructLayout({"row": range(self._rows), "col": 16, "value": 32,
                                  "command": 1})

    def outputs_per_tile(self, fmt):
        """G: the outputs (weight rows) of one tile in format ``fmt``."""
        return self._cols * (2 if fmt in PACKED_FORMATS and self._array.packed else 1)

    def elaborate(self, platform):
        m = Module()
        rows, cols, lanes = self._rows, self._cols, self._lanes
        m.submodules.unpack = unpack = self._unpack
        m.submodules.array = array = self._array
        for n, dequant in enumerate(self._dequants):
            m.submodules[f"dequant{n}"] = dequant
        n_lanes = self._term_lanes
        lane_bits = (n_lanes - 1).bit_length()
        packed = array.packed
        g_max = cols * array.lanes
        stride = self._stride
        tq2 = "TQ2_0" in self._formats
        beats_max = (_TQ2_0_SUBBLOCKS if tq2 else 1) * BLOCK // lanes   # beats per weight block

        # ---- Command ---------------------------------------------------------------------
        # The front (unpacker, transposer, array) takes the next command as soon as the unpacker
        # and the array have taken this one's; the back (the term builder) finishes the
        # commands before from `backlog`. So a command's weights stream in while the array
        # and the term lanes finish the one before, instead of after its last result (about
        # 100 cycles a command). The transposer and the term builder share the format
        # (`mode`, `is_q8`, `is_tq2`), so a command of another format, or one to be rejected
        # (its streams are drained), waits until the back has finished.
        cmd = Signal(self.command_layout)
        bad_cmd = Signal()
        parity = Signal()           # of the command: 1, 0, 1, … (`o.payload.command`)
        mode = Signal(3)            # the format of the commands in flight
        is_q8 = Signal()
        is_tq2 = Signal()
        blocks_m1 = Signal(16)      # of the command being drained
        tiles_m1 = Signal(16)
        word_done = Signal()        # the term builder took the command's last array word
        back_layout = data.StructLayout({"rows": range(rows + 1), "blocks_m1": 16,
                                         "tiles_m1": 16, "parity": 1})
        m.submodules.backlog = backlog = StreamFIFO(back_layout, 2)
        back = backlog.o.payload
        new = self.i_cmd.payload
        known = Const(0, 1)
        for name in self._formats:
            known = known | (new.mode == mode_code(name))
        bad = (~known | (new.blocks == 0) | (new.tiles == 0) | (new.rows == 0)
               | (new.rows > rows)
               | ((new.mode == mode_code("TQ2_0")) & (new.blocks % _TQ2_0_SUBBLOCKS != 0)))

        # Drain counters of a rejected command.
        drain_w = Signal()
        drain_x = Signal()
        drain_xs = Signal()
        x_step = Signal(21)
        x_tile = Signal(16)
        xs_step = Signal(16)
        xs_tile = Signal(16)
        sent_unpack = Signal()
        sent_array = Signal()

        with m.FSM(name="command"):
            with m.State("IDLE"):
                m.d.comb += self.i_cmd.ready.eq(backlog.i.ready)
                with m.If(self.i_cmd.valid & backlog.i.ready):
                    m.d.sync += [
                        cmd.eq(new),
                        bad_cmd.eq(bad),
                        parity.eq(~parity),
                        blocks_m1.eq(new.blocks - 1),
                        tiles_m1.eq(new.tiles - 1),
                        sent_unpack.eq(0), sent_array.eq(0),
                        x_step.eq(0), x_tile.eq(0), xs_step.eq(0), xs_tile.eq(0),
                    ]
                    m.next = "CHECK"
            with m.State("CHECK"):
                drained = ~backlog.o.valid
                with m.If(bad_cmd):
                    with m.If(drained):
                        m.d.sync += [
                            self.errors.command.eq(1),
                            drain_w.eq(1),
                            drain_x.eq((cmd.blocks != 0) & (cmd.tiles != 0)),
                            drain_xs.eq((cmd.blocks != 0) & (cmd.tiles != 0)),
                        ]
                        m.next = "DRAIN"
                with m.Elif(drained | (cmd.mode == mode)):
                    m.d.comb += backlog.i.valid.eq(1)
                    m.d.sync += [
                        mode.eq(cmd.mode),
                        is_q8.eq(cmd.mode == mode_code("Q8_0")),
                        is_tq2.eq(cmd.mode == mode_code("TQ2_0")),
                    ]
                    m.next = "START"
            with m.State("START"):
                m.d.comb += [
                    unpack.i_cmd.valid.eq(~sent_unpack),
                    unpack.i_cmd.payload.mode.eq(cmd.mode),
                    unpack.i_cmd.payload.interleaved.eq(cmd.interleaved),
                    array.i_cmd.valid.eq(~sent_array),
                    array.i_cmd.payload.mode.eq(cmd.mode),
                    array.i_cmd.payload.blocks.eq(cmd.blocks),
                    array.i_cmd.payload.tiles.eq(cmd.tiles),
                ]
                with m.If(unpack.i_cmd.ready):
                    m.d.sync += sent_unpack.eq(1)
                with m.If(array.i_cmd.ready):
                    m.d.sync += sent_array.eq(1)
                with m.If((sent_unpack | unpack.i_cmd.ready) & (sent_array | array.i_cmd.ready)):
                    m.next = "IDLE"
            with m.State("DRAIN"):
                with m.If(~drain_w & ~drain_x & ~drain_xs):
                    m.next = "IDLE"
        m.d.comb += [
            backlog.i.payload.rows.eq(cmd.rows),
            backlog.i.payload.blocks_m1.eq(cmd.blocks - 1),
            backlog.i.payload.tiles_m1.eq(cmd.tiles - 1),
            backlog.i.payload.parity.eq(parity),
        ]

        # A rejected command's streams are taken and dropped: its weight job up to `last`,
        # tiles × blocks × 32 k-steps and tiles × blocks scale beats.
        m.d.comb += [
            unpack.i.payload.eq(self.i_w.payload),
            unpack.i.valid.eq(self.i_w.valid & ~drain_w),
            self.i_w.ready.eq(Mux(drain_w, 1, unpack.i.ready)),
            array.i_x.payload.eq(self.i_x.payload),
            array.i_x.valid.eq(self.i_x.valid & ~drain_x),
            self.i_x.ready.eq(Mux(drain_x, 1, array.i_x.ready)),
        ]
        with m.If(drain_w & self.i_w.valid & self.i_w.payload.last):
            m.d.sync += drain_w.eq(0)
        with m.If(drain_x & self.i_x.valid):
            m.d.sync += x_step.eq(x_step + 1)
            with m.If(x_step == Cat(Const(BLOCK - 1, 5), blocks_m1)):
                m.d.sync += [x_step.eq(0), x_tile.eq(x_tile + 1)]
                with m.If(x_tile == tiles_m1):
                    m.d.sync += drain_x.eq(0)
        xs_drain_take = drain_xs & self.i_xs.valid
        with m.If(xs_drain_take):
            m.d.sync += xs_step.eq(xs_step + 1)
            with m.If(xs_step == blocks_m1):
                m.d.sync += [xs_step.eq(0), xs_tile.eq(xs_tile + 1)]
                with m.If(xs_tile == tiles_m1):
                    m.d.sync += drain_xs.eq(0)

        # ---- Transposer: G rows' blocks → k-steps ----------------------------------------
        # Row g's codes go to memory g, one unpacker beat per word, at (buffer, beat); a
        # k-step reads word k // lanes of every memory and picks code k % lanes.
        depth = 2 * beats_max
        beat_bits = max(1, (beats_max - 1).bit_length())
        code_row = data.ArrayLayout(signed(8), lanes)
        mems = []
        for g in range(g_max):
            mem = Memory(shape=code_row, depth=depth, init=[])
            m.submodules[f"rows{g}"] = mem
            mems.append(mem)
        scale_layout = data.ArrayLayout(data.StructLayout({"d": 16, "m": 16}), g_max)
        scales = [Signal(scale_layout, name=f"scales{b}") for b in range(2)]
        full = Signal(2)

        # Write side.
        w_buf = Signal()
        w_row = Signal(range(g_max))
        w_beat = Signal(beat_bits)
        g_last = Mux(is_q8, cols - 1, g_max - 1)
        beat = unpack.o.payload
        m.d.comb += unpack.o.ready.eq(~full.bit_select(w_buf, 1))
        written = unpack.o.valid & unpack.o.ready
        for g, mem in enumerate(mems):
            port = mem.write_port()
            m.d.comb += [
                port.addr.eq(Cat(w_beat, w_buf)),
                port.data.eq(beat.codes),
                port.en.eq(written & (w_row == g)),
            ]
        with m.If(written):
            m.d.sync += w_beat.eq(w_beat + 1)
            with m.If(beat.last):
                m.d.sync += w_beat.eq(0)
                for b in range(2):
                    with m.If(w_buf == b):
                        m.d.sync += [scales[b][w_row].d.eq(beat.d | beat.e),
                                     scales[b][w_row].m.eq(beat.m)]
                m.d.sync += w_row.eq(w_row + 1)
                with m.If(w_row == g_last):
                    m.d.sync += [w_row.eq(0), w_buf.eq(~w_buf)]

        # Read side: one k-step per cycle into a one-stage read pipeline.
        r_buf = Signal()
        r_step = Signal(range(beats_max * lanes))
        step_last = Mux(is_tq2, _TQ2_0_SUBBLOCKS * BLOCK - 1, BLOCK - 1)
        s1_valid = Signal()
        s1_pick = Signal(range(lanes))
        advance = ~s1_valid | array.i_w.ready
        m.submodules.scale_fifo = scale_fifo = StreamFIFO(scale_layout, 8)
        starts_block = r_step[:5] == 0
        can_read = full.bit_select(r_buf, 1) & (~starts_block | scale_fifo.i.ready)
        issue = advance & can_read
        m.d.comb += [
            scale_fifo.i.valid.eq(issue & starts_block),
            scale_fifo.i.payload.eq(Mux(r_buf, scales[1], scales[0])),
        ]
        with m.If(advance):
            m.d.sync += [s1_valid.eq(issue), s1_pick.eq(r_step[:(lanes - 1).bit_length()]
                                                         if lanes > 1 else 0)]
        with m.If(issue):
            m.d.sync += r_step.eq(r_step + 1)
            with m.If(r_step == step_last):
                m.d.sync += [r_step.eq(0), r_buf.eq(~r_buf)]
        # A buffer is free again once its last k-step has been read. (A write in the same
        # cycle goes to the other buffer: w_buf only reaches r_buf after it is freed.)
        with m.If(issue & (r_step == step_last)):
            m.d.sync += full.bit_select(r_buf, 1).eq(0)
        with m.If(written & beat.last & (w_row == g_last)):
            m.d.sync += full.bit_select(w_buf, 1).eq(1)

        reads = []
        for mem in mems:
            port = mem.read_port()
            m.d.comb += [
                port.addr.eq(Cat(r_step[(lanes - 1).bit_length():][:beat_bits], r_buf)
                             if lanes > 1 else Cat(r_step[:beat_bits], r_buf)),
                port.en.eq(advance),
            ]
            reads.append(port.data)
        m.d.comb += array.i_w.valid.eq(s1_valid)
        for c in range(cols):
            lo = reads[c][s1_pick]
            if packed:
                hi = Mux(is_q8, 0, reads[cols + c][s1_pick])
                m.d.comb += [array.i_w.payload[c].lo.eq(lo), array.i_w.payload[c].hi.eq(hi)]
            else:
                m.d.comb += array.i_w.payload[c].eq(lo)

        # ---- Term builder: array words → dequant terms -----------------------------------
        # Each array word holds one row's block sums for the tile's G outputs; rows from M on
        # computed on zero activations and are dropped. Each cycle the term lanes take the
        # word's next outputs, lane l output j = step·term_lanes + l, all lanes together, so
        # a word takes G / term_lanes cycles. The scale entry and the activation scales of a
        # block serve its `rows` words and are released after the last.
        word = array.o.payload
        xs = self.i_xs.payload
        ws = scale_fifo.o.payload
        lane_stride = stride // n_lanes                 # accumulators per row in a lane
        step_bits = (lane_stride - 1).bit_length()
        step = Signal(max(1, step_bits))
        use = word.row < back.rows
        ready_scales = scale_fifo.o.valid & self.i_xs.valid & ~drain_xs
        last_block = word.block == back.blocks_m1
        row_xs = xs[word.row]
        g_cur = Mux(is_q8, cols, g_max)
        tile_col = Signal(16)       # the column of the word's output 0: tile · G
        m.d.comb += tile_col.eq(Mux(is_q8, word.tile * cols, word.tile * g_max))
        lanes_ok = Const(1, 1)
        lane_terms = []
        for n, dequant in enumerate(self._dequants):
            tags = StreamFIFO(17, 64)       # column, command parity
            m.submodules[f"tags{n}"] = tags
            j = Signal(range(stride), name=f"j{n}")
            m.d.comb += j.eq((step << lane_bits) | n)
            active = j < g_cur
            lanes_ok = lanes_ok & (~active | (dequant.i.ready & (~last_block | tags.i.ready)))
            lane_terms.append((dequant, tags, j, active))
        fire = Signal()             # every active lane takes its term
        m.d.comb += fire.eq(array.o.valid & use & ready_scales & lanes_ok)
        for dequant, tags, j, active in lane_terms:
            term = dequant.i.payload
            m.d.comb += [
                term.sum.eq(word.sums[j]),
                term.mode.eq(mode),
                term.d_w.eq(ws[j].d),
                term.m_w.eq(ws[j].m),
                term.d_x.eq(row_xs.d),
                term.q_sum.eq(row_xs.sum),
                term.index.eq(Cat(step[:step_bits], word.row) if step_bits else word.row),
                term.first.eq(word.block == 0),
                term.last.eq(last_block),
                dequant.i.valid.eq(fire & active),
                # An output's column is known when its last term is sent.
                tags.i.valid.eq(fire & active & last_block),
                tags.i.payload.eq(Cat((tile_col + j)[:16], back.parity)),
            ]
        step_last = Mux(is_q8, (cols - 1) >> lane_bits, (g_max - 1) >> lane_bits)
        take_word = array.o.valid & ready_scales & (~use | (fire & (step == step_last)))
        with m.If(fire):
            m.d.sync += step.eq(step + 1)
            with m.If(step == step_last):
                m.d.sync += step.eq(0)
        release = take_word & (word.row == rows - 1)
        m.d.comb += [
            array.o.ready.eq(take_word),
            scale_fifo.o.ready.eq(release),
            self.i_xs.ready.eq(Mux(drain_xs, 1, release)),
            word_done.eq(release & (word.tile == back.tiles_m1) & last_block),
            backlog.o.ready.eq(word_done),
        ]

        # ---- Results ---------------------------------------------------------------------
        # Each lane's results meet their column tags (the lane emits them in the order of
        # their last terms, the order of its tag FIFO). With several lanes, a lane holds one
        # engine tile's results (rows · G / term_lanes) in a FIFO: the lanes finish a tile
        # term_lanes results a cycle, `o` takes one, and the rest leave while the next tile
        # computes instead of stalling it. A round-robin arbiter merges the lanes.
        lane_outs = []
        for n, (dequant, tags, _, _) in enumerate(lane_terms):
            out = dequant.o.payload
            if n_lanes > 1:
                queue = StreamFIFO(self.output_layout, rows * g_max // n_lanes)
                m.submodules[f"out{n}"] = queue
                lane_i, lane_o = queue.i, queue.o
            else:
                lane_i = lane_o = self.o
            m.d.comb += [
                lane_i.valid.eq(dequant.o.valid),
                dequant.o.ready.eq(lane_i.ready),
                tags.o.ready.eq(dequant.o.valid & lane_i.ready),
                lane_i.payload.row.eq(out.index[step_bits:]),
                lane_i.payload.col.eq(tags.o.payload[:16]),
                lane_i.payload.command.eq(tags.o.payload[16]),
                lane_i.payload.value.eq(out.value),
            ]
            m.d.sync += Assert(~dequant.o.valid | tags.o.valid,
                               "Matmul engine: a result without its column tag")
            lane_outs.append(lane_o)
        if n_lanes > 1:
            # The merged result is registered (a two-word FIFO keeps one a cycle): unregistered,
            # the lanes' LUT-RAM reads, the arbiter and its multiplexer ran on into the tile's
            # result address and were the four-lane tile's critical path (37.4 MHz).
            m.submodules.merge = merge = RoundRobinArbiter(n_lanes)
            m.submodules.merged = merged = StreamFIFO(self.output_layout, 2)
            m.d.comb += [
                merge.requests.eq(Cat(lane.valid for lane in lane_outs)),
                merged.i.valid.eq(merge.valid),
                merged.i.payload.eq(Array(lane.payload for lane in lane_outs)[merge.index]),
                merge.advance.eq(merged.i.valid & merged.i.ready),
            ]
            for n, lane in enumerate(lane_outs):
                m.d.comb += lane.ready.eq(merge.grant[n] & merged.i.ready)
            wiring.connect(m, merged.o, wiring.flipped(self.o))
        assert_stream_rules(m, self.o, "Matmul engine output")

        # Outputs whose last term is sent and whose result has not left.
        pending = Signal(16)
        pushed = sum((tags.i.valid & tags.i.ready) for _, tags, _, _ in lane_terms)
        m.d.sync += pending.eq(pending + pushed - (self.o.valid & self.o.ready))

        # ---- Errors and busy -------------------------------------------------------------
        with m.If(unpack.errors.as_value().any()):
            m.d.sync += self.errors.weights.eq(1)
        with m.If(Cat(d.errors.as_value().any() for d in self._dequants).any()):
            m.d.sync += self.errors.dequant.eq(1)
        with m.If(array.errors.as_value().any()):
            m.d.sync += self.errors.command.eq(1)
        m.d.comb += [
            unpack.clear.eq(self.clear),
            array.clear.eq(self.clear),
            *(d.clear.eq(self.clear) for d in self._dequants),
        ]
        with m.If(self.clear):
            m.d.sync += [self.errors.command.eq(0), self.errors.weights.eq(0),
                         self.errors.dequant.eq(0)]
        m.d.comb += self.busy.eq(~self.i_cmd.ready | backlog.o.valid | (pending != 0)
                                 | array.busy)
        return m

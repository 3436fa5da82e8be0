"""Compute tile: SRAM, matmul engine and a sequencer that executes the micro-ops arriving as
NoC packets (docs/tile.md; golden model sim/tile.py)."""

from amaranth.hdl import Array, Assert, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import PACKED_FORMATS, mode_code
from ..fifo import StreamFIFO
from ..noc.flit import FlitFormat
from ..noc.interface import NetworkInterface
from .matmul import WEIGHT_WORDS, MatmulEngine
from .reader import RegionReader
from .sram import SRAM, SRAMError
from .unpack import BLOCK_GEOMETRY
from .vector import Op as VectorOp, VectorUnit, reads_b, writes


__all__ = ["Tile", "Kind", "Error", "TILE_SRAM_PORTS", "QUEUE_DEPTH"]


class Kind(enum.Enum, shape=4):
    """Micro-ops: the ``kind`` of a packet to a tile (and of the tile's replies)."""
    WRITE = 0
    MATMUL = 1
    SEND = 2
    DONE = 3
    VECTOR = 4
    ERROR = 15


class Error(enum.IntEnum):
    """Bits of ``errors`` and of an ERROR packet's word."""
    KIND = 0
    LENGTH = 1
    RANGE = 2
    SHAPE = 3
    MEMORY = 4
    ENGINE = 5
    POISON = 6
    VECTOR = 7


#: The tile's SRAM ports: packets' data in, the engine's operand streams (the weights through
#: two ports, even and odd words, WEIGHT_WORDS per beat), its results, and the words a SEND
#: ships. A VECTOR reads its operands through the ``act`` and ``scale`` ports and writes its
#: results through ``result``: it never runs beside a MATMUL.
TILE_SRAM_PORTS = {"fill": "w", "weight": "r", "weight_odd": "r", "act": "r", "scale": "r",
                   "result": "w", "send": "r"}

#: Queued micro-ops (MATMUL, VECTOR, SEND, DONE, and errors to report) the tile holds while one
#: runs.
QUEUE_DEPTH = 8

#: Operand words of the queued micro-ops.
_WORDS = {Kind.MATMUL: 4, Kind.SEND: 2, Kind.DONE: 1, Kind.VECTOR: 4}
_MAX_WORDS = max(_WORDS.values())

#: Weight bytes per 32 elements, times 8 (TQ2_0's 66-byte blocks hold 256 elements).
_BYTES_X8 = {name: geometry.size * 8 * 32 // geometry.elements
             for name, geometry in BLOCK_GEOMETRY.items()}


def _field(words, word, offset, width):
    return words[word][offset:offset + width]


class Tile(wiring.Component):
    """A compute tile without its network interface: it takes the packets its interface
    receives and gives the interface the packets it sends.

    WRITE packets are written to SRAM as they arrive. MATMUL, VECTOR, SEND and DONE micro-ops
    (and the reports of bad packets) wait in a queue of ``QUEUE_DEPTH`` and run in order, with
    overlap where the program's ordering rules allow it (docs/tile.md): a MATMUL starts while
    the one before still writes its results, and SENDs ship while later micro-ops run; a
    VECTOR waits for every MATMUL's results and runs to its end; DONE and ERROR answers wait
    for everything before them. A micro-op that cannot run (unknown kind, wrong length, a
    region beyond the SRAM, a matmul the engine or a pass the vector unit cannot take) sets
    its bit in ``errors`` and is answered with an ERROR packet to its sender, and the tile
    goes on with the next. So is a packet with the NoC's
    ``poison`` mark (a router repaired it), whatever else is wrong with it; of a poisoned WRITE
    the words before the last are already in SRAM, the last is not written.

    Parameters
    ----------
    config : TesseraConfig
        Array, formats, SRAM, flit format, and whether the tile has a vector unit
        (``tile_vector``, ``vector_max_length``).

    Members
    -------
    i_header : ``In(stream.Signature(NetworkInterface.received_header_layout(fmt)))``
    i : ``In(stream.Signature(NetworkInterface.word_layout(fmt)))``
        Packets received (the network interface's ``o_header`` and ``o``).
    o_header : ``Out(stream.Signature(fmt.header))``
    o : ``Out(stream.Signature(fmt.flit_width))``
        Packets to send (the network interface's ``i_header`` and ``i``).
    errors : ``Out(8)``
        Sticky error bits (:class:`Error`).
    clear : ``In(1)``
        Clears ``errors``.
    busy : ``Out(1)``
        A micro-op is queued or running, a SEND is shipping, results are being written, or
        the vector unit is busy.
    """

    def __init__(self, config):
        self._config = config
        super().__init__(Tile.signature_for(config))

    @staticmethod
    def signature_for(config):
        """The signature of ``Tile(config)``, without building one: what stands in for a tile
        whose Verilog is emitted on its own (:class:`~rtl.external.ExternalModule`) needs it.
        Raises the tile's errors for a configuration it cannot take."""
        fmt = FlitFormat.from_config(config)
        if config.flit_width != config.sram_width:
            raise ValueError(f"Tile needs flit_width equal to sram_width, not "
                             f"{config.flit_width} and {config.sram_width}")
        if (config.array_rows * 8 > config.sram_width
                or (config.array_rows * 32) % config.sram_width):
            raise ValueError(f"Tile needs array_rows·8 ≤ sram_width and array_rows·32 a "
                             f"multiple of sram_width, not array_rows {config.array_rows} and "
                             f"sram_width {config.sram_width}")
        return wiring.Signature({
            "i_header": In(stream.Signature(NetworkInterface.received_header_layout(fmt))),
            "i": In(stream.Signature(NetworkInterface.word_layout(fmt))),
            "o_header": Out(stream.Signature(fmt.header)),
            "o": Out(stream.Signature(fmt.flit_width)),
            "errors": Out(8),
            "clear": In(1),
            "busy": Out(1),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        config = self._config
        width = config.sram_width
        rows, cols = config.array_rows, config.array_cols
        size = config.sram_banks * config.sram_bank_depth
        xs_words = rows * 32 // width
        packed = any(f in PACKED_FORMATS for f in config.weight_formats)

        # The activations are read once per k-step, one word a cycle at the array's full rate,
        # with no slack to catch up on a lost bank; the two weight ports need 1.25 words a
        # cycle between them (Q4_1) and run ahead. Round-robin, or with the low interleave
        # (which locks the three streams into step, docs/sram.md), prefill ran at 79 %.
        m.submodules.sram = sram = SRAM.from_config(config, ports=TILE_SRAM_PORTS,
                                                    priority=("act",))
        m.submodules.engine = engine = MatmulEngine.from_config(config)
        assert WEIGHT_WORDS == 2
        m.submodules.weights = weights = RegionReader(width, sram.address_width, step=2)
        m.submodules.weights_odd = weights_odd = RegionReader(width, sram.address_width, step=2)
        m.submodules.acts = acts = RegionReader(width, sram.address_width)
        m.submodules.scales = scales = RegionReader(width, sram.address_width)
        m.submodules.sender = sender = RegionReader(width, sram.address_width)
        for reader, port in ((weights, "weight"), (weights_odd, "weight_odd"), (acts, "act"),
                             (scales, "scale"), (sender, "send")):
            wiring.connect(m, reader.o_req, getattr(sram, f"i_{port}"))
            wiring.connect(m, getattr(sram, f"o_{port}"), reader.i_resp)

        errors = Signal(8)
        # Each part raises error bits through its own signal; `errors` takes them all, so
        # two parts raising bits in one cycle both count.
        rx_raise = Signal(8)            # receive: a bad packet
        ex_raise = Signal(8)            # execute: a MATMUL, SEND or its check
        tx_raise = Signal(8)            # the send unit: a SEND's uncorrectable word
        mem_raise = Signal(8)           # the SRAM's write ports
        coord = len(self.o_header.payload.src_x)
        op_layout = data.StructLayout({
            "kind": Kind, "src_x": coord, "src_y": coord,
            "words": data.ArrayLayout(width, _MAX_WORDS),
        })
        m.submodules.queue = queue = StreamFIFO(op_layout, QUEUE_DEPTH)
        # Without a vector unit, VECTOR is an unknown micro-op.
        op_words = {kind: count for kind, count in _WORDS.items()
                    if kind != Kind.VECTOR or config.tile_vector}

        # ---- Receive ---------------------------------------------------------------------
        header = self.i_header.payload.header
        rx = Signal(op_layout)          # the micro-op being received
        rx_left = Signal(8)             # words of the packet still to come, by its length
        rx_index = Signal(range(_MAX_WORDS + 1))
        fill_addr = Signal(32)
        report = Signal(8)              # the error bit to report for this packet
        word = self.i.payload

        # A packet ends at its word with ``last``: one a router repaired (poison on the header,
        # else on the last word) may have fewer words than its header's length. A poisoned
        # packet is answered POISON whatever else is wrong with it: its length and words are not
        # what was sent, so the other checks mean nothing.
        def packet_ends(then):
            # At a packet's last word: a poisoned packet is answered POISON instead.
            with m.If(word.poison):
                m.d.sync += report.eq(Error.POISON)
                m.next = "REPORT"
            with m.Else():
                m.next = then

        with m.FSM(name="receive"):
            with m.State("HEADER"):
                m.d.comb += self.i_header.ready.eq(1)
                with m.If(self.i_header.valid):
                    m.d.sync += [
                        rx.kind.eq(header.kind), rx.src_x.eq(header.src_x),
                        rx.src_y.eq(header.src_y), rx_left.eq(header.length),
                        rx_index.eq(0),
                    ]
                    for i in range(_MAX_WORDS):
                        m.d.sync += rx.words[i].eq(0)
                    known = Const(0, 1)
                    for kind, count in op_words.items():
                        with m.If(header.kind == kind):
                            with m.If(header.length != count):
                                m.d.sync += report.eq(Error.LENGTH)
                                m.next = "DRAIN"
                            with m.Else():
                                m.next = "OPERANDS"
                        known = known | (header.kind == kind)
                    with m.If(header.kind == Kind.WRITE):
                        with m.If(header.length == 0):
                            m.d.sync += report.eq(Error.LENGTH)
                            m.next = "REPORT"
                        with m.Else():
                            m.next = "WRITE_ADDR"
                    with m.Elif(~known):
                        m.d.sync += report.eq(Error.KIND)
                        m.next = "DRAIN"
                    # Poison on the header: a router cut the packet at its head, so no words
                    # follow, whatever its length says. (Assigned last, this wins over the
                    # checks above.)
                    with m.If(self.i_header.payload.poison):
                        m.d.sync += report.eq(Error.POISON)
                        m.next = "REPORT"
            with m.State("WRITE_ADDR"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [
                        fill_addr.eq(word.data[:32]),
                        rx_left.eq(rx_left - 1),
                    ]
                    with m.If(word.last):
                        packet_ends("HEADER")     # an address and no data: nothing to write
                    with m.Elif(word.data[:32] + rx_left - 1 > size):
                        m.d.sync += report.eq(Error.RANGE)
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "WRITE_DATA"
            with m.State("WRITE_DATA"):
                # The words before are in SRAM already; a poisoned (last) word is not written.
                m.d.comb += [
                    sram.i_fill.valid.eq(self.i.valid & ~word.poison),
                    sram.i_fill.payload.addr.eq(fill_addr),
                    sram.i_fill.payload.data.eq(word.data),
                    self.i.ready.eq(sram.i_fill.ready | word.poison),
                ]
                with m.If(self.i.valid & self.i.ready):
                    m.d.sync += [fill_addr.eq(fill_addr + 1), rx_left.eq(rx_left - 1)]
                    with m.If(word.last):
                        packet_ends("HEADER")
            with m.State("OPERANDS"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    for i in range(_MAX_WORDS):
                        with m.If(rx_index == i):
                            m.d.sync += rx.words[i].eq(word.data)
                    m.d.sync += [rx_index.eq(rx_index + 1), rx_left.eq(rx_left - 1)]
                    with m.If(word.last):
                        packet_ends("QUEUE")
            with m.State("QUEUE"):
                m.d.comb += [queue.i.valid.eq(1), queue.i.payload.eq(rx)]
                with m.If(queue.i.ready):
                    m.next = "HEADER"
            with m.State("DRAIN"):
                m.d.comb += self.i.ready.eq(rx_left != 0)
                with m.If(rx_left == 0):
                    m.next = "REPORT"
                with m.Elif(self.i.valid):
                    m.d.sync += rx_left.eq(rx_left - 1)
                    with m.If(word.last):
                        packet_ends("REPORT")
            with m.State("REPORT"):
                # An ERROR entry in the queue, so that it is answered in the packets' order.
                m.d.comb += [
                    queue.i.valid.eq(1),
                    queue.i.payload.kind.eq(Kind.ERROR),
                    queue.i.payload.src_x.eq(rx.src_x),
                    queue.i.payload.src_y.eq(rx.src_y),
                    queue.i.payload.words[0].eq((Const(1, 8) << report) | (rx.kind.as_value() << 8)),
                ]
                with m.If(queue.i.ready):
                    m.d.comb += rx_raise.eq(Const(1, 8) << report)
                    m.next = "HEADER"
        m.d.comb += sram.o_fill.ready.eq(1)
        fill_error = sram.o_fill.valid & (sram.o_fill.payload.error != SRAMError.NONE)

        # ---- Execute ---------------------------------------------------------------------
        # Micro-ops run in order. A SEND is handed to the send unit (below), and the next
        # micro-op starts while it ships its words: a MATMUL does not wait for an earlier
        # SEND (the program must not let it write what that SEND reads, docs/tile.md). Every
        # answer (a SEND's packet, DONE, ERROR) goes out in order: nothing is answered while
        # the send unit is busy.
        op = Signal(op_layout)
        w = op.words
        mode = _field(w, 0, 0, 3)
        blocks = _field(w, 0, 8, 16)
        tiles = _field(w, 0, 24, 16)
        m_rows = _field(w, 0, 40, 8)
        w_addr, x_addr = _field(w, 1, 0, 32), _field(w, 1, 32, 32)
        xs_addr, y_addr = _field(w, 2, 0, 32), _field(w, 2, 32, 32)
        y_stride, groups = _field(w, 3, 0, 32), _field(w, 3, 32, 8)
        send_addr, send_count = _field(w, 0, 0, 32), _field(w, 0, 32, 8)
        v_op, v_gated = _field(w, 0, 0, 5), _field(w, 0, 5, 1)
        v_length, v_limit = _field(w, 0, 16, 16), _field(w, 0, 32, 16)
        a_addr, b_addr, v_y_addr = _field(w, 1, 0, 32), _field(w, 1, 32, 32), _field(w, 2, 0, 32)
        v_reads_b, v_writes = reads_b(v_op, v_gated), writes(v_op)
        # A VECTOR has the act and scale readers and the result port to itself while it runs.
        vec_active = Signal()
        vec_left = Signal(16)           # its results still to be written
        vec_addr = Signal(32)           # where its next result goes

        is_q8 = mode == mode_code("Q8_0")
        outputs = Signal(24)            # N = tiles · G
        prod = Signal(40)               # N · blocks
        stride_rows = Signal(40)        # (rows − 1) · y_stride
        engine_tiles = Signal(24)       # tiles · groups
        y_span = Signal(32)             # N · groups
        x_span = Signal(32)             # K · groups
        xs_span = Signal(32)            # blocks · xs_words · groups
        bytes_x8 = Signal(48)
        w_words = Signal(48)
        ends = [Signal(48, name=f"end{i}") for i in range(4)]   # the regions' ends
        # Two MATMULs overlap: the next one starts when the engine has taken the last input of
        # one, while its results are still being written. Each has a slot, by the parity of
        # its engine command (`command` on the engine's results; the first is 1): the results
        # still to be written, the region they go to, and y_addr + r · y_stride for each array
        # row r, so that a result's address is one add.
        slot = Signal()                 # of the MATMUL being started: the other's
        row_base = [[Signal(32, name=f"row_base{p}_{r}") for r in range(rows)] for p in range(2)]
        left = [Signal(32, name=f"left{p}") for p in range(2)]
        y_end = [Signal(48, name=f"y_end{p}") for p in range(2)]
        y_start = [Signal(32, name=f"y_start{p}") for p in range(2)]
        due = Signal(40)                # M · N · groups: the results of the MATMUL
        # Every MATMUL's results are in SRAM.
        results_done = Signal()
        # A SEND waits while a MATMUL before it is still writing the SEND's region.
        send_blocked = Signal()
        last_count = Signal(range(width // 8 + 1))
        shape_ok = Signal()
        range_ok = Signal()
        reply_kind = Signal(Kind)
        reply_word = Signal(width)
        sent = Signal(5)                # which of the engine and the four readers took it
        engine_error = Signal()
        send_busy = Signal()            # a SEND waits or is being shipped
        unit_busy = Signal()            # the send unit ships one
        # A SEND's own fields: its sender and its two operand words.
        send_layout = data.StructLayout({"src_x": coord, "src_y": coord,
                                         "words": data.ArrayLayout(width, _WORDS[Kind.SEND])})
        waiting = Signal(send_layout)   # the SEND waiting for the send unit
        waiting_valid = Signal()

        known = Const(0, 1)
        for name in config.weight_formats:
            known = known | (mode == mode_code(name))

        def reject(bit, kind):
            # Answer the running micro-op with an ERROR packet and keep its bit.
            m.d.comb += ex_raise.eq(1 << bit)
            m.d.sync += [reply_kind.eq(Kind.ERROR), reply_word.eq((1 << bit) | (kind.value << 8))]
            m.next = "REPLY"

        def hand_out(starts):
            # Offer each command until its stream takes it; true once all have been taken.
            done = Const(1, 1)
            for i, (port, fields) in enumerate(starts):
                m.d.comb += port.valid.eq(~sent[i])
                for name, value in fields.items():
                    m.d.comb += Value.cast(getattr(port.payload, name)).eq(value)
                with m.If(port.valid & port.ready):
                    m.d.sync += sent[i].eq(1)
                done = done & (sent[i] | port.ready)
            return done

        def report(memory, unit, unit_bit, kind):
            # After a MATMUL or VECTOR: what went wrong reading SRAM or in its unit.
            bits = Mux(memory, 1 << Error.MEMORY, 0) | Mux(unit, 1 << unit_bit, 0)
            with m.If(memory | unit):
                m.d.comb += ex_raise.eq(bits)
                m.d.sync += [reply_kind.eq(Kind.ERROR), reply_word.eq(bits | (kind.value << 8))]
                m.next = "REPLY"
            with m.Else():
                m.next = "IDLE"

        tx = self.o_header.payload

        def answer_header(kind, src):
            # The header of a one-word answer (DONE, ERROR) to the sender `src`.
            return [tx.kind.eq(kind), tx.dst_x.eq(src.src_x), tx.dst_y.eq(src.src_y),
                    tx.last_x.eq(src.src_x), tx.last_y.eq(src.src_y), tx.length.eq(1)]

        with m.FSM(name="execute") as execute:
            with m.State("IDLE"):
                m.d.comb += queue.o.ready.eq(1)
                with m.If(queue.o.valid):
                    m.d.sync += op.eq(queue.o.payload)
                    with m.Switch(queue.o.payload.kind):
                        with m.Case(Kind.MATMUL):
                            m.next = "MATMUL_SIZE"
                        with m.Case(Kind.SEND):
                            m.next = "SEND_CHECK"
                        if config.tile_vector:
                            with m.Case(Kind.VECTOR):
                                m.next = "VECTOR_SIZE"
                        with m.Case(Kind.DONE):
                            m.d.sync += [reply_kind.eq(Kind.DONE),
                                         reply_word.eq(queue.o.payload.words[0][:32])]
                            m.next = "REPLY"
                        with m.Default():    # an error found while receiving
                            m.d.sync += [reply_kind.eq(Kind.ERROR),
                                         reply_word.eq(queue.o.payload.words[0])]
                            m.next = "REPLY"
            with m.State("REPLY"):
                # After the SENDs before it have gone out and every MATMUL's results are in
                # SRAM (neither can start again here).
                replying = ~send_busy & results_done
                m.d.comb += [self.o_header.valid.eq(replying), *answer_header(reply_kind, op)]
                # (o_header.valid is the send unit's while it sends: not this state's.)
                with m.If(replying & self.o_header.ready):
                    m.next = "REPLY_WORD"
            with m.State("REPLY_WORD"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(reply_word)]
                with m.If(self.o.ready):
                    m.next = "IDLE"

            # SEND: checked here and handed over; it waits while the send unit ships the one
            # before, so execute goes on unless two SENDs are still to go out.
            with m.State("SEND_CHECK"):
                with m.If(~waiting_valid & ~send_blocked):
                    # The answer is a WRITE packet: an address word and at most 254 data words.
                    with m.If((send_count == 0) | (send_count == 255)
                              | (send_addr + send_count > size)):
                        reject(Error.RANGE, Kind.SEND)
                    with m.Else():
                        m.d.sync += [waiting.src_x.eq(op.src_x), waiting.src_y.eq(op.src_y),
                                     waiting.words.eq(
                                         op.words.as_value()[:_WORDS[Kind.SEND] * width]),
                                     waiting_valid.eq(1)]
                        m.next = "IDLE"

            # MATMUL: sizes, checks, then the engine and its streams.
            with m.State("MATMUL_SIZE"):
                g_shift = Mux(is_q8 | (not packed), 0, 1)
                # The MATMUL before the last one must have written all its results: its slot
                # is this one's.
                with m.If(Mux(slot, left[0], left[1]) != 0):
                    m.next = "MATMUL_SIZE"
                with m.Else():
                    m.next = "MATMUL_BYTES"
                m.d.sync += [
                    outputs.eq((tiles * cols) << g_shift),
                    stride_rows.eq((m_rows - 1) * y_stride),
                    engine_tiles.eq(tiles * groups),
                    x_span.eq((blocks << 5) * groups),
                    xs_span.eq((blocks * xs_words) * groups),
                    shape_ok.eq(known & (blocks != 0) & (tiles != 0) & (m_rows != 0)
                                & (m_rows <= rows) & (groups != 0)
                                & ~((mode == mode_code("TQ2_0")) & (blocks[:3] != 0))),
                ]
            # One multiplication or addition per state: this runs once per MATMUL and must not
            # set the tile's clock.
            with m.State("MATMUL_BYTES"):
                m.d.sync += [prod.eq(outputs * blocks), y_span.eq(outputs * groups)]
                for p in range(2):
                    with m.If(slot == p ^ 1):
                        m.d.sync += [row_base[p][r].eq(y_addr + y_stride * r)
                                     for r in range(rows)]
                m.next = "MATMUL_BYTES_X8"
            with m.State("MATMUL_BYTES_X8"):
                with m.Switch(mode):
                    for name, per in _BYTES_X8.items():
                        with m.Case(mode_code(name)):
                            m.d.sync += bytes_x8.eq(prod * per)
                m.next = "MATMUL_ENDS"
            with m.State("MATMUL_ENDS"):
                nbytes = bytes_x8 >> 3
                shift = (width // 8 - 1).bit_length()
                words_ = (nbytes + (width // 8 - 1)) >> shift
                m.d.sync += [
                    w_words.eq(words_),
                    last_count.eq((nbytes - 1)[:shift] + 1),
                    ends[0].eq(w_addr + words_),
                    ends[1].eq(x_addr + x_span),
                    ends[2].eq(xs_addr + xs_span),
                    ends[3].eq(y_addr + stride_rows + y_span),
                    due.eq(m_rows * y_span),
                ]
                m.next = "MATMUL_RANGE"
            with m.State("MATMUL_RANGE"):
                # The weights are read once per group, so with groups they must end on a whole
                # beat (two words): the engine takes one weight job, whose only partial beat is
                # its last.
                m.d.sync += [
                    range_ok.eq((ends[0] <= size) & (ends[1] <= size)
                                & (ends[2] <= size) & (ends[3] <= size)),
                    shape_ok.eq(shape_ok & (engine_tiles[16:] == 0)
                                & ((groups == 1)
                                   | ((last_count == width // 8) & ~w_words[0]))),
                ]
                m.next = "MATMUL_CHECK"
            with m.State("MATMUL_CHECK"):
                with m.If(~shape_ok):
                    reject(Error.SHAPE, Kind.MATMUL)
                with m.Elif(~range_ok):
                    reject(Error.RANGE, Kind.MATMUL)
                with m.Else():
                    m.d.sync += sent.eq(0)
                    m.next = "MATMUL_START"
            with m.State("MATMUL_START"):
                # Engine tile e = g · tiles + t: group g's activations against weight tile t,
                # so output n of group g is column g·N + n.
                starts = [
                    (engine.i_cmd, {"mode": mode, "interleaved": _field(w, 0, 3, 1),
                                    "blocks": blocks, "tiles": engine_tiles[:16],
                                    "rows": m_rows}),
                    # The even words through one port, the odd ones through the other.
                    (weights.i_cmd, {"addr": w_addr, "count": (w_words + 1) >> 1,
                                     "repeat": groups, "segments": 1}),
                    (weights_odd.i_cmd, {"addr": w_addr + 1, "count": w_words >> 1,
                                         "repeat": groups, "segments": 1}),
                    (acts.i_cmd, {"addr": x_addr, "count": blocks << 5, "repeat": tiles,
                                  "segments": groups}),
                    (scales.i_cmd, {"addr": xs_addr, "count": blocks * xs_words,
                                    "repeat": tiles, "segments": groups}),
                ]
                with m.If(hand_out(starts)):
                    # The engine took the command: the MATMUL has its slot.
                    m.d.sync += slot.eq(~slot)
                    for p in range(2):
                        with m.If(slot == p ^ 1):
                            m.d.sync += [left[p].eq(due), y_start[p].eq(y_addr),
                                         y_end[p].eq(ends[3])]
                    m.next = "MATMUL_WAIT"
            with m.State("MATMUL_WAIT"):
                # Until the engine has taken the MATMUL's last input (it is then idle, ready
                # for the next command), not until its results are written.
                with m.If(engine.i_cmd.ready & ~weights.busy & ~weights_odd.busy & ~acts.busy
                          & ~scales.busy):
                    m.next = "MATMUL_ERRORS"
            # Report what went wrong reading SRAM or in the engine.
            with m.State("MATMUL_ERRORS"):
                report(weights.error | weights_odd.error | acts.error | scales.error,
                       engine_error, Error.ENGINE, Kind.MATMUL)

            # VECTOR: one pass of the vector unit over SRAM, one binary32 element per word
            # (the low half), run to its end: its results are in SRAM and any register it
            # computes is written before the next micro-op starts.
            if config.tile_vector:
                m.submodules.vector = vector = VectorUnit.from_config(config)
                with m.State("VECTOR_SIZE"):
                    m.d.sync += [
                        ends[0].eq(a_addr + v_length), ends[1].eq(b_addr + v_length),
                        ends[2].eq(v_y_addr + v_length),
                        shape_ok.eq((v_op < len(VectorOp)) & (v_length != 0)
                                    & (v_length <= config.vector_max_length)
                                    & ~((v_op == VectorOp.ROPE.value) & v_length[0])),
                    ]
                    m.next = "VECTOR_CHECK"
                with m.State("VECTOR_CHECK"):
                    # Its operands may be a MATMUL's results, and it shares their write port.
                    with m.If(results_done):
                        with m.If(~shape_ok):
                            reject(Error.SHAPE, Kind.VECTOR)
                        with m.Elif((ends[0] > size) | (v_reads_b & (ends[1] > size))
                                    | (v_writes & (ends[2] > size))):
                            reject(Error.RANGE, Kind.VECTOR)
                        with m.Else():
                            m.d.sync += [sent.eq(0), vec_active.eq(1), vec_addr.eq(v_y_addr),
                                         vec_left.eq(Mux(v_writes, v_length, 0))]
                            m.next = "VECTOR_START"
                with m.State("VECTOR_START"):
                    starts = [
                        (vector.i_cmd, {"op": v_op, "length": v_length, "limit": v_limit,
                                        "gated": v_gated, "quantize": 0,
                                        "k1": _field(w, 3, 0, 32), "k2": _field(w, 3, 32, 32)}),
                        (acts.i_cmd, {"addr": a_addr, "count": v_length, "repeat": 1,
                                      "segments": 1}),
                        (scales.i_cmd, {"addr": b_addr, "count": Mux(v_reads_b, v_length, 0),
                                        "repeat": 1, "segments": 1}),
                    ]
                    with m.If(hand_out(starts)):
                        m.next = "VECTOR_WAIT"
                with m.State("VECTOR_WAIT"):
                    with m.If(~vector.busy & ~acts.busy & ~scales.busy & (vec_left == 0)):
                        m.d.sync += vec_active.eq(0)
                        m.next = "VECTOR_ERRORS"
                with m.State("VECTOR_ERRORS"):
                    report(acts.error | scales.error,
                           vector.errors.nonfinite | vector.errors.command, Error.VECTOR,
                           Kind.VECTOR)
        # Reader and engine flags are per micro-op: reported once, cleared with the next.
        clear_flags = Signal()
        m.d.comb += clear_flags.eq(queue.o.valid & queue.o.ready)
        m.d.comb += [weights.clear.eq(clear_flags), weights_odd.clear.eq(clear_flags),
                     acts.clear.eq(clear_flags),
                     scales.clear.eq(clear_flags),
                     engine.clear.eq(clear_flags)]
        if config.tile_vector:
            m.d.comb += vector.clear.eq(clear_flags)
        m.d.comb += engine_error.eq(engine.errors.as_value().any())

        # ---- Send unit: a SEND's region as a WRITE packet, dst_addr first ----------------
        snd = Signal(send_layout)       # the SEND being shipped
        sw = snd.words
        dst_x, dst_y, dst_addr = _field(sw, 1, 0, 8), _field(sw, 1, 8, 8), _field(sw, 1, 32, 32)
        snd_count = _field(sw, 0, 32, 8)
        with m.FSM(name="send"):
            with m.State("IDLE"):
                # The reader's error flag is per SEND: cleared as one starts.
                m.d.comb += sender.clear.eq(waiting_valid)
                with m.If(waiting_valid):
                    m.d.sync += [snd.eq(waiting), waiting_valid.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [
                    unit_busy.eq(1),
                    self.o_header.valid.eq(1),
                    tx.dst_x.eq(dst_x), tx.dst_y.eq(dst_y), tx.last_x.eq(dst_x),
                    tx.last_y.eq(dst_y), tx.kind.eq(Kind.WRITE), tx.length.eq(snd_count + 1),
                    sender.i_cmd.valid.eq(self.o_header.ready),
                    sender.i_cmd.payload.addr.eq(_field(sw, 0, 0, 32)),
                    sender.i_cmd.payload.count.eq(snd_count),
                    sender.i_cmd.payload.repeat.eq(1),
                    sender.i_cmd.payload.segments.eq(1),
                ]
                # The reader is idle here, so it takes the command in the header's cycle.
                with m.If(self.o_header.ready):
                    m.next = "ADDR"
            with m.State("ADDR"):
                m.d.comb += [unit_busy.eq(1), self.o.valid.eq(1), self.o.payload.eq(dst_addr)]
                with m.If(self.o.ready):
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [
                    unit_busy.eq(1),
                    self.o.valid.eq(sender.o.valid),
                    self.o.payload.eq(sender.o.payload.data),
                    sender.o.ready.eq(self.o.ready),
                ]
                with m.If(sender.o.valid & self.o.ready & sender.o.payload.last):
                    m.next = "CHECK"
            with m.State("CHECK"):
                # An uncorrectable word was sent as it was read: the ERROR follows the packet.
                m.d.comb += unit_busy.eq(1)
                with m.If(sender.error):
                    m.d.comb += tx_raise.eq(1 << Error.MEMORY)
                    m.next = "ERROR"
                with m.Else():
                    m.next = "IDLE"
            with m.State("ERROR"):
                m.d.comb += [unit_busy.eq(1), self.o_header.valid.eq(1),
                             *answer_header(Kind.ERROR, snd)]
                with m.If(self.o_header.ready):
                    m.next = "ERROR_WORD"
            with m.State("ERROR_WORD"):
                m.d.comb += [unit_busy.eq(1), self.o.valid.eq(1),
                             self.o.payload.eq((1 << Error.MEMORY) | (Kind.SEND.value << 8))]
                with m.If(self.o.ready):
                    m.next = "IDLE"

        m.d.comb += send_busy.eq(unit_busy | waiting_valid)
        # The send unit and the replies share the outputs: never both at once.
        m.d.sync += Assert(~(unit_busy & execute.ongoing("REPLY_WORD")),
                           "Tile: a reply and the send unit drive the outputs together")

        # ---- The engine's streams --------------------------------------------------------
        # A weight beat is an even word and the odd word after it; when the region has an
        # odd number of words, its last beat is the last even word alone.
        single = weights.o.payload.last & w_words[0]
        # While a VECTOR runs, the act and scale readers feed the vector unit instead.
        vec_a_ready = vec_b_ready = 0
        if config.tile_vector:
            m.d.comb += [
                vector.i_a.valid.eq(acts.o.valid & vec_active),
                vector.i_a.payload.eq(acts.o.payload.data[:32]),
                vector.i_b.valid.eq(scales.o.valid & vec_active),
                vector.i_b.payload.eq(scales.o.payload.data[:32]),
            ]
            vec_a_ready, vec_b_ready = vector.i_a.ready, vector.i_b.ready
        m.d.comb += [
            engine.i_w.valid.eq(weights.o.valid & (weights_odd.o.valid | single)),
            engine.i_w.payload.data.eq(Cat(weights.o.payload.data,
                                           Mux(single, 0, weights_odd.o.payload.data))),
            engine.i_w.payload.count.eq(Mux(weights.o.payload.last,
                                            Mux(w_words[0], 0, width // 8) + last_count,
                                            2 * width // 8)),
            engine.i_w.payload.last.eq(weights.o.payload.last),
            weights.o.ready.eq(engine.i_w.valid & engine.i_w.ready),
            weights_odd.o.ready.eq(engine.i_w.valid & engine.i_w.ready & ~single),
            engine.i_x.valid.eq(acts.o.valid & ~vec_active),
            engine.i_x.payload.eq(acts.o.payload.data[:rows * 8]),
            acts.o.ready.eq(Mux(vec_active, vec_a_ready, engine.i_x.ready)),
        ]
        # xs_words SRAM words make one beat of activation scales.
        if xs_words == 1:
            m.d.comb += [
                engine.i_xs.valid.eq(scales.o.valid & ~vec_active),
                engine.i_xs.payload.eq(scales.o.payload.data),
                scales.o.ready.eq(Mux(vec_active, vec_b_ready, engine.i_xs.ready)),
            ]
        else:
            # The engine holds a block's beat until the block's last array word, then wants the
            # next at once (at M = 8 its term lanes have no cycle to spare). Assembled only
            # then, the next beat came xs_words − 1 cycles late, every block: a beat is
            # assembled ahead into a two-beat FIFO.
            m.submodules.xs_beats = xs_beats = StreamFIFO(engine.i_xs.payload.shape(), 2)
            wiring.connect(m, xs_beats.o, engine.i_xs)
            held = Signal(width * (xs_words - 1))
            part = Signal(range(xs_words))
            final = part == xs_words - 1
            m.d.comb += [
                xs_beats.i.valid.eq(scales.o.valid & final & ~vec_active),
                xs_beats.i.payload.eq(Cat(held, scales.o.payload.data)),
                scales.o.ready.eq(Mux(vec_active, vec_b_ready, ~final | xs_beats.i.ready)),
            ]
            with m.If(scales.o.valid & scales.o.ready & ~vec_active):
                m.d.sync += part.eq(Mux(final, 0, part + 1))
                with m.If(~final):
                    m.d.sync += held.eq(Cat(held[width:], scales.o.payload.data))

        # Results to SRAM, one binary32 per word, at y_addr + row · y_stride + col. The address
        # is computed into a FIFO, so that the SRAM's bank arbitration starts from a register.
        # A MATMUL's slot counts its results until the SRAM has written them: the written
        # results come back in order, so a FIFO of their slots says whose each is.
        result = engine.o.payload
        m.submodules.results = results = StreamFIFO(sram.i_result.payload.shape(), 2)
        m.submodules.result_slots = result_slots = StreamFIFO(1, 64)
        base = Mux(result.command, Array(row_base[1])[result.row],
                   Array(row_base[0])[result.row])
        with m.If(~vec_active):
            m.d.comb += [
                results.i.valid.eq(engine.o.valid & result_slots.i.ready),
                results.i.payload.addr.eq(base + result.col),
                results.i.payload.data.eq(result.value),
                engine.o.ready.eq(results.i.ready & result_slots.i.ready),
                result_slots.i.valid.eq(engine.o.valid & results.i.ready),
                result_slots.i.payload.eq(result.command),
                result_slots.o.ready.eq(sram.o_result.valid),
            ]
        if config.tile_vector:
            # A VECTOR's results go to consecutive words; the MATMULs' are all written.
            with m.If(vec_active):
                m.d.comb += [
                    results.i.valid.eq(vector.o.valid),
                    results.i.payload.addr.eq(vec_addr),
                    results.i.payload.data.eq(vector.o.payload.value),
                    vector.o.ready.eq(results.i.ready),
                ]
                with m.If(results.i.valid & results.i.ready):
                    m.d.sync += vec_addr.eq(vec_addr + 1)
                with m.If(sram.o_result.valid):
                    m.d.sync += vec_left.eq(vec_left - 1)
            # Its Q8_0 output is not used: a VECTOR never sets quantize.
            m.d.comb += vector.o_q8.ready.eq(1)
        m.d.comb += sram.o_result.ready.eq(1)
        wiring.connect(m, results.o, sram.i_result)
        m.d.sync += Assert(~sram.o_result.valid | result_slots.o.valid | vec_active,
                           "Tile: a result written that was not sent")
        for p in range(2):
            with m.If(sram.o_result.valid & ~vec_active & (result_slots.o.payload == p)):
                m.d.sync += left[p].eq(left[p] - 1)
        m.d.comb += results_done.eq((left[0] == 0) & (left[1] == 0))
        blocked = Const(0, 1)
        for p in range(2):
            blocked = blocked | ((left[p] != 0) & (send_addr < y_end[p])
                                 & (y_start[p] < send_addr + send_count))
        m.d.comb += send_blocked.eq(blocked)
        result_error = sram.o_result.valid & (sram.o_result.payload.error != SRAMError.NONE)
        m.d.comb += mem_raise[Error.MEMORY].eq(fill_error | result_error)

        m.d.sync += errors.eq(errors | rx_raise | ex_raise | tx_raise | mem_raise)
        with m.If(self.clear):
            m.d.sync += errors.eq(0)
        m.d.comb += [
            self.errors.eq(errors),
            self.busy.eq(queue.o.valid | ~queue.o.ready | queue.i.valid | send_busy
                         | ~results_done | vec_active
                         | (vector.busy if config.tile_vector else 0)),
        ]
        return m

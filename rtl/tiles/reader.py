"""Region reader: streams consecutive ranges of SRAM words, each possibly several times, through
one SRAM read port (docs/tile.md)."""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..stream_rules import assert_stream_rules
from .sram import SRAMError


__all__ = ["RegionReader"]


class RegionReader(wiring.Component):
    """Reads ``segments`` consecutive ranges of ``count`` words from ``addr`` on, each
    ``repeat`` times over before the next, through an SRAM read port, and streams them out in
    order with ``last`` on the very last word: for s < segments, for r < repeat, for
    i < count, the word at ``addr + (s·count + i)·step``.

    Requests go out as fast as the port takes them; the port itself stops accepting while
    seven responses are owed, so a stalled consumer holds the reader back without losing a
    word.

    Parameters
    ----------
    width : int
        Bits per word.
    address_width : int
        Bits of an SRAM address.
    step : int
        Address step between the words of a range, a power of two (2: every other word, the
        half of a region that one of two readers on two ports takes).

    Members
    -------
    i_cmd : ``In(stream.Signature({addr, count, repeat, segments}))``
        One region per command; ``count``, ``repeat`` or ``segments`` of 0 reads nothing.
    o_req : ``Out(stream.Signature({addr}))``
        To the SRAM port's request stream.
    i_resp : ``In(stream.Signature({error, data}))``
        From the SRAM port's response stream.
    o : ``Out(stream.Signature({data, last}))``
        The words.
    error : ``Out(1)``
        Sticky: a response carried an error (cleared by ``clear``).
    clear : ``In(1)``
    busy : ``Out(1)``
        A command is being read or its words are still to leave.
    """

    def __init__(self, width, address_width=32, *, step=1):
        if (not isinstance(step, int) or isinstance(step, bool) or step < 1
                or step & (step - 1)):
            raise ValueError(f"Region reader step must be a power of two, not {step!r}")
        self._width = width
        self._address_width = address_width
        self._step = step
        super().__init__({
            "i_cmd": In(stream.Signature(data.StructLayout({
                "addr": address_width, "count": 32, "repeat": 16, "segments": 16}))),
            "o_req": Out(stream.Signature(data.StructLayout({"addr": address_width}))),
            "i_resp": In(stream.Signature(data.StructLayout({"error": SRAMError,
                                                              "data": width}))),
            "o": Out(stream.Signature(data.StructLayout({"data": width, "last": 1}))),
            "error": Out(1),
            "clear": In(1),
            "busy": Out(1),
        })

    step = property(lambda self: self._step)

    def elaborate(self, platform):
        m = Module()
        base = Signal(self._address_width)     # of the segment being requested
        # The next request's address, kept in a register: it goes straight into the SRAM's
        # range check and bank arbitration, which must not start behind an adder.
        addr = Signal(self._address_width)
        count = Signal(32)
        repeat = Signal(16)
        segments = Signal(16)
        index = Signal(32)          # of the next request within the segment
        round_ = Signal(16)         # segment pass of the next request
        segment = Signal(16)        # of the next request
        requesting = Signal()
        owed = Signal(range(64))    # requests sent whose words have not left
        # The responses come in request order: a second set of counters marks the last.
        out_index = Signal(32)
        out_round = Signal(16)
        out_segment = Signal(16)

        m.d.comb += self.i_cmd.ready.eq(~requesting & (owed == 0))
        with m.If(self.i_cmd.valid & self.i_cmd.ready):
            new = self.i_cmd.payload
            empty = (new.count == 0) | (new.repeat == 0) | (new.segments == 0)
            m.d.sync += [
                base.eq(new.addr),
                addr.eq(new.addr),
                count.eq(new.count),
                repeat.eq(new.repeat),
                segments.eq(new.segments),
                index.eq(0), round_.eq(0), segment.eq(0),
                requesting.eq(~empty),
                out_index.eq(0), out_round.eq(0), out_segment.eq(0),
            ]

        m.d.comb += [
            self.o_req.valid.eq(requesting),
            self.o_req.payload.addr.eq(addr),
        ]
        sent = self.o_req.valid & self.o_req.ready
        with m.If(sent):
            m.d.sync += [index.eq(index + 1), addr.eq(addr + self._step)]
            with m.If(index == count - 1):
                m.d.sync += [index.eq(0), round_.eq(round_ + 1)]
                with m.If(round_ == repeat - 1):
                    # The next segment starts where this one ends.
                    m.d.sync += [round_.eq(0), segment.eq(segment + 1),
                                 base.eq(addr + self._step)]
                    with m.If(segment == segments - 1):
                        m.d.sync += requesting.eq(0)
                with m.Else():
                    m.d.sync += addr.eq(base)

        resp = self.i_resp
        m.d.comb += [
            self.o.valid.eq(resp.valid),
            self.o.payload.data.eq(resp.payload.data),
            self.o.payload.last.eq((out_index == count - 1) & (out_round == repeat - 1)
                                   & (out_segment == segments - 1)),
            resp.ready.eq(self.o.ready),
        ]
        taken = self.o.valid & self.o.ready
        with m.If(taken):
            m.d.sync += out_index.eq(out_index + 1)
            with m.If(out_index == count - 1):
                m.d.sync += [out_index.eq(0), out_round.eq(out_round + 1)]
                with m.If(out_round == repeat - 1):
                    m.d.sync += [out_round.eq(0), out_segment.eq(out_segment + 1)]
            with m.If(resp.payload.error != SRAMError.NONE):
                m.d.sync += self.error.eq(1)
        m.d.sync += owed.eq(owed + sent - taken)
        with m.If(self.clear):
            m.d.sync += self.error.eq(0)
        m.d.comb += self.busy.eq(requesting | (owed != 0))
        assert_stream_rules(m, self.o, "Region reader output")
        return m

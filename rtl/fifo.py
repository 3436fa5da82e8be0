"""Stream FIFO: the elastic buffer of router input ports and SRAM request queues."""

from amaranth.hdl import Assert, Module, Shape
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .stream_rules import assert_stream_rules


__all__ = ["StreamFIFO"]


class StreamFIFO(wiring.Component):
    """First-in first-out buffer between two streams.

    The storage and pointer logic are :class:`amaranth.lib.fifo.SyncFIFO` (shallow, storage in
    LUT RAM, an accepted word is readable on the next cycle) or
    :class:`~amaranth.lib.fifo.SyncFIFOBuffered` (``buffered=True``: storage in block RAM, one
    more cycle of latency); this block gives them a typed stream interface, checks the stream
    rules with ``Assert`` and is what the rest of Tessera instantiates.

    ``i.ready`` depends only on the FIFO's own state, never combinationally on ``o.ready``, so
    chains of FIFOs do not build long ready paths.

    Parameters
    ----------
    shape : :ref:`shape-like <lang-shapelike>`
        Shape of the payload (an integer width, a :class:`~amaranth.lib.data.Layout`, …).
    depth : int
        Number of payloads the FIFO holds; at least 1 (at least 2 when ``buffered``).
    buffered : bool
        Read storage through a synchronous port so it maps to block RAM.

    Members
    -------
    i : ``In(stream.Signature(shape))``
        Payloads to enqueue.
    o : ``Out(stream.Signature(shape))``
        Payloads in the order they were accepted.
    level : ``Out(range(depth + 1))``
        Number of payloads held.
    """

    def __init__(self, shape, depth, *, buffered=False):
        shape = Shape.cast(shape) if isinstance(shape, int) else shape
        Shape.cast(shape)  # raises a TypeError naming the bad shape
        if not isinstance(depth, int) or isinstance(depth, bool):
            raise TypeError(f"FIFO depth must be a positive integer, not {depth!r}")
        minimum = 2 if buffered else 1
        if depth < minimum:
            raise ValueError(f"FIFO depth must be an integer of at least {minimum}"
                             f"{' when buffered' if buffered else ''}, not {depth!r}")
        self._shape = shape
        self._depth = depth
        self._buffered = bool(buffered)
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
            "level": Out(range(depth + 1)),
        })

    @property
    def shape(self):
        return self._shape

    @property
    def depth(self):
        return self._depth

    @property
    def buffered(self):
        return self._buffered

    def elaborate(self, platform):
        m = Module()

        width = Shape.cast(self._shape).width
        cls = fifo.SyncFIFOBuffered if self._buffered else fifo.SyncFIFO
        m.submodules.storage = storage = cls(width=width, depth=self._depth)

        m.d.comb += [
            storage.w_data.eq(self.i.payload),
            storage.w_en.eq(self.i.valid),
            self.i.ready.eq(storage.w_rdy),
            self.o.payload.eq(storage.r_data),
            self.o.valid.eq(storage.r_rdy),
            storage.r_en.eq(self.o.ready),
            self.level.eq(storage.level),
        ]

        m.d.sync += Assert(self.level <= self._depth, "FIFO level exceeds its depth")
        assert_stream_rules(m, self.o, "FIFO output")

        return m

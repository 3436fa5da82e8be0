"""The valid/ready rules every Tessera stream keeps, as ``Assert`` statements.

A producer that has offered a payload (``valid`` high) keeps offering the same payload until it
is taken (``ready`` high in the same cycle). Blocks call :func:`assert_stream_rules` on the
streams they drive, so a violation fails in the Amaranth simulator, in Verilator (the emitted
Verilog carries the assertion) and in a SymbiYosys proof alike; synthesis drops the check and
the registers that only feed it.
"""

from amaranth.hdl import Assert, Signal, Shape, Value


__all__ = ["assert_stream_rules"]


def assert_stream_rules(m, port, name):
    """Add assertions that the producer of ``port`` holds ``valid`` and ``payload`` until taken.

    ``m`` is the :class:`~amaranth.hdl.Module` that drives ``port``; ``name`` prefixes the
    signals it creates and the assertion messages.
    """
    prefix = name.lower().replace(" ", "_")
    stalled = Signal(name=f"{prefix}_stalled")
    held = Signal(Shape.cast(port.payload.shape()).width, name=f"{prefix}_held")
    m.d.sync += [
        stalled.eq(port.valid & ~port.ready),
        held.eq(port.payload),
    ]
    # Checked at the clock edge, on settled values (see rtl/arbiter.py).
    with m.If(stalled):
        m.d.sync += [
            Assert(port.valid, f"{name} dropped valid before ready"),
            Assert(Value.cast(port.payload).as_unsigned() == held,
                   f"{name} changed payload before ready"),
        ]

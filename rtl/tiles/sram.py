"""Banked tile scratchpad: weights, activations, KV cache and fp32 vectors live here."""

import enum
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In, Out

from ..arbiter import RoundRobinArbiter
from ..config import SRAM_INTERLEAVES
from ..fifo import StreamFIFO
from .ecc import SECDEDDecoder, SECDEDEncoder, secded_check_bits


__all__ = ["SRAM", "SRAMError", "PORT_KINDS", "TILE_PORTS"]


#: A port reads ("r"), writes ("w"), or does either per request ("rw").
PORT_KINDS = ("r", "w", "rw")

#: The ports of a compute tile's SRAM: filled from the NoC/DMA, read by the MAC array for
#: weights and activations, read and written by the vector unit.
TILE_PORTS = {"fill": "w", "weight": "r", "act": "r", "vector": "rw"}

#: Registers between accepting a request and queueing its response (see elaborate()).
RESPONSE_STAGES = 5

#: Saturating width of the error counters.
COUNTER_WIDTH = 16


class SRAMError(enum.IntEnum):
    """Why a response failed (its ``error`` field)."""
    NONE = 0
    ADDRESS = 1         #: address beyond the capacity; nothing was read or written
    UNCORRECTABLE = 2   #: ECC found two flipped bits in the word read; its data is unreliable


class SRAM(wiring.Component):
    """Banked scratchpad with stream ports, round-robin bank arbitration, ECC and zeroization.

    Each bank is a simple dual-port memory (one read and one write per cycle), which maps to a
    block RAM (ECP5 DP16KD, iCE40 SB_RAM40_4K). Each bank has a round-robin arbiter for reads and
    one for writes, so in every cycle each bank serves one read and one write; requests to
    different banks proceed in the same cycle. Because writes never compete with reads, a region
    being filled never slows down a region being read: that is double buffering, whatever the
    interleave. A read in the same cycle as a write to the same word returns the old word.

    Every port is a pair of streams: requests in (``i_<port>``), responses out (``o_<port>``), one
    response per request, in request order. A response is offered six cycles after its request
    is accepted (five pipeline registers and the response FIFO). A port whose responses are not
    taken stops accepting requests after seven; other ports are not affected.

    An address at or beyond ``banks * depth`` gets a response with ``error = ADDRESS``, touches no
    memory, and is counted. With ECC, a word with one flipped bit is corrected (and counted); a
    word with two is returned with ``error = UNCORRECTABLE`` (and counted).

    Zeroization: a pulse on ``zeroize`` writes zero to every word of every bank, one row of all
    banks per cycle (``depth`` cycles), while every port stops accepting requests (they wait; none
    is dropped). ``done`` pulses for one cycle when it has finished.

    Parameters
    ----------
    banks : int
        Number of banks, a power of two.
    depth : int
        Words per bank, a power of two of at least 2.
    width : int
        Data bits per word.
    ports : dict of str to str
        Port name to kind, one of :data:`PORT_KINDS`.
    ecc : bool
        Store a SECDED code with each word.
    interleave : str
        ``"low"``: word ``a`` lives in bank ``a % banks``; ``"high"``: in bank ``a // depth``;
        ``"xor"``: in bank ``(a ^ a // banks) % banks`` (row ``a // banks``, as ``"low"``).
    address_width : int
        Width of request addresses; wider than needed so that bad addresses can be expressed.
    priority : sequence of str
        Ports served first: at each bank a request from one of them wins over the round-robin
        ports (and over the priority ports after it in the sequence). For a port that must
        take a word every cycle beside others that can run ahead: it never loses its bank.
        The others wait while it holds theirs, so its addresses should move across the banks
        (consecutive words do with the ``"low"`` and ``"xor"`` interleaves); it stops
        requesting, and frees every bank, once seven responses are owed to it.

    Members
    -------
    i_<port> : ``In(stream.Signature(request_layout(kind)))``
        Requests: ``addr``; ``data`` for writing ports; ``write`` for "rw" ports.
    o_<port> : ``Out(stream.Signature(response_layout(kind)))``
        Responses: ``error`` (an :class:`SRAMError`); ``data`` for reading ports.
    zeroize : ``In(1)``
        Start clearing every bank (ignored while already clearing).
    busy : ``Out(1)``
        Clearing; ports accept nothing.
    done : ``Out(1)``
        One-cycle pulse at the end of clearing.
    address_errors, corrected_errors, uncorrectable_errors : ``Out(16)``
        Saturating counts since reset.
    """

    def __init__(self, *, banks, depth, width, ports=TILE_PORTS, ecc=True, interleave="low",
                 address_width=32, priority=()):
        for name, value, low in (("SRAM bank count", banks, 1), ("SRAM bank depth", depth, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low \
                    or value & (value - 1):
                raise ValueError(f"{name} must be a power of two of at least {low}, not {value!r}")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"SRAM width must be a positive integer, not {width!r}")
        if not isinstance(ports, dict) or not ports:
            raise TypeError(f"SRAM ports must be a non-empty dict of name to kind, not {ports!r}")
        for name, kind in ports.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"SRAM port name must be an identifier, not {name!r}")
            if kind not in PORT_KINDS:
                raise ValueError(f"SRAM port {name!r} kind must be one of "
                                 f"{', '.join(map(repr, PORT_KINDS))}, not {kind!r}")
        if isinstance(priority, str) or not all(name in ports for name in priority) \
                or len(set(priority)) != len(priority):
            raise ValueError(f"SRAM priority must be a sequence of distinct port names "
                             f"({', '.join(ports)}), not {priority!r}")
        if interleave not in SRAM_INTERLEAVES:
            raise ValueError(f"SRAM interleave must be one of "
                             f"{', '.join(map(repr, SRAM_INTERLEAVES))}, not {interleave!r}")
        capacity_bits = (banks * depth - 1).bit_length()
        if not isinstance(address_width, int) or address_width <= capacity_bits:
            raise ValueError(f"SRAM address width must be an integer above {capacity_bits} "
                             f"(so that an out-of-range address can be expressed), "
                             f"not {address_width!r}")
        self._banks = banks
        self._depth = depth
        self._width = width
        self._ports = dict(ports)
        self._ecc = bool(ecc)
        self._interleave = interleave
        self._address_width = address_width
        self._priority = tuple(priority)
        # Storage is created here, not in elaborate(), so that test benches can reach stored
        # words directly (fault injection flips bits behind the ECC encoder's back).
        self._bank_data = [MemoryData(shape=self.code_width, depth=depth, init=[])
                           for _ in range(banks)]

        members = {}
        for name, kind in self._ports.items():
            members[f"i_{name}"] = In(stream.Signature(self.request_layout(kind)))
            members[f"o_{name}"] = Out(stream.Signature(self.response_layout(kind)))
        members.update({
            "zeroize": In(1),
            "busy": Out(1),
            "done": Out(1),
            "address_errors": Out(COUNTER_WIDTH),
            "corrected_errors": Out(COUNTER_WIDTH),
            "uncorrectable_errors": Out(COUNTER_WIDTH),
        })
        super().__init__(members)

    @classmethod
    def from_config(cls, config, **kwargs):
        return cls(banks=config.sram_banks, depth=config.sram_bank_depth,
                   width=config.sram_width, ecc=config.sram_ecc,
                   interleave=config.sram_interleave, **kwargs)

    banks = property(lambda self: self._banks)
    depth = property(lambda self: self._depth)
    width = property(lambda self: self._width)
    ports = property(lambda self: dict(self._ports))
    ecc = property(lambda self: self._ecc)
    interleave = property(lambda self: self._interleave)
    address_width = property(lambda self: self._address_width)
    priority = property(lambda self: self._priority)

    @property
    def bank_data(self):
        """The stored words of each bank (``MemoryData``), for test benches."""
        return tuple(self._bank_data)

    @property
    def capacity(self):
        """Words in all banks."""
        return self._banks * self._depth

    @property
    def code_width(self):
        """Stored bits per word."""
        return self._width + (secded_check_bits(self._width) if self._ecc else 0)

    def request_layout(self, kind):
        fields = {"addr": self._address_width}
        if kind in ("w", "rw"):
            fields["data"] = self._width
        if kind == "rw":
            fields["write"] = 1
        return data.StructLayout(fields)

    def response_layout(self, kind):
        fields = {"error": SRAMError}
        if kind in ("r", "rw"):
            fields["data"] = self._width
        return data.StructLayout(fields)

    def locate(self, address):
        """(bank, row) of an in-range word address, in Python: the model and tests use it."""
        if self._interleave == "low":
            return address % self._banks, address // self._banks
        if self._interleave == "xor":
            row = address // self._banks
            return (address ^ row) % self._banks, row
        return address // self._depth, address % self._depth

    def address(self, bank, row):
        """The word address at ``(bank, row)``: the inverse of :meth:`locate`."""
        if self._interleave == "low":
            return row * self._banks + bank
        if self._interleave == "xor":
            return row * self._banks + (bank ^ (row % self._banks))
        return bank * self._depth + row

    def elaborate(self, platform):
        m = Module()

        nbanks, depth = self._banks, self._depth
        bank_bits = (nbanks - 1).bit_length()
        row_bits = (depth - 1).bit_length()
        names = list(self._ports)

        busy = Signal()
        m.d.comb += self.busy.eq(busy)

        # Per port: what the request is and whether it can go this cycle.
        requests = {}
        for name in names:
            kind = self._ports[name]
            port = getattr(self, f"i_{name}")
            r = SimpleNamespace(kind=kind, port=port)
            addr = port.payload.addr
            r.in_range = Signal(name=f"{name}_in_range")
            m.d.comb += r.in_range.eq(addr < self.capacity)
            r.bank = Signal(range(nbanks), name=f"{name}_bank")
            r.row = Signal(range(depth), name=f"{name}_row")
            if self._interleave == "low":
                m.d.comb += [r.bank.eq(addr[:bank_bits]), r.row.eq(addr[bank_bits:][:row_bits])]
            elif self._interleave == "xor":
                m.d.comb += [r.bank.eq(addr[:bank_bits] ^ addr[bank_bits:][:bank_bits]),
                             r.row.eq(addr[bank_bits:][:row_bits])]
            else:
                m.d.comb += [r.row.eq(addr[:row_bits]), r.bank.eq(addr[row_bits:][:bank_bits])]
            r.write = Signal(name=f"{name}_write")
            if kind == "rw":
                m.d.comb += r.write.eq(port.payload.write)
            else:
                m.d.comb += r.write.eq(kind == "w")
            if kind in ("w", "rw"):
                # Encode at the port, not at each bank: there are fewer writers than banks.
                r.code = Signal(self.code_width, name=f"{name}_code")
                if self._ecc:
                    m.submodules[f"{name}_encoder"] = encoder = SECDEDEncoder(self._width)
                    m.d.comb += [encoder.data.eq(port.payload.data), r.code.eq(encoder.code)]
                else:
                    m.d.comb += r.code.eq(port.payload.data)

            # The response queue must have room for this response and all still in flight;
            # two more entries than stages keep a port at one request per cycle.
            m.submodules[f"{name}_responses"] = r.fifo = StreamFIFO(
                self.response_layout(kind), RESPONSE_STAGES + 2)
            r.stage_valid = [Signal(name=f"{name}_s{k}_valid") for k in range(RESPONSE_STAGES)]
            # Responses owed (in flight or queued), kept as a register rather than summed from
            # the stages each cycle: the sum was on the critical path.
            r.owed = Signal(range(RESPONSE_STAGES + 3), name=f"{name}_owed")
            r.room = Signal(name=f"{name}_room")
            m.d.comb += r.room.eq(r.owed < RESPONSE_STAGES + 2)
            r.offer = Signal(name=f"{name}_offer")     # valid and allowed to compete
            m.d.comb += r.offer.eq(port.valid & r.room & ~busy)
            r.granted = Signal(name=f"{name}_granted")  # wins its bank (or needs none)
            requests[name] = r

        readers = [n for n in names if self._ports[n] in ("r", "rw")]
        writers = [n for n in names if self._ports[n] in ("w", "rw")]

        # Zeroization walks the rows; while it runs it owns every write port.
        zero_row = Signal(range(depth))
        with m.If(busy):
            m.d.sync += zero_row.eq(zero_row + 1)
            with m.If(zero_row == depth - 1):
                m.d.sync += [busy.eq(0), self.done.eq(1)]
        with m.Else():
            m.d.sync += self.done.eq(0)
            with m.If(self.zeroize):
                m.d.sync += [busy.eq(1), zero_row.eq(0)]

        bank_read_data = []
        granted_by = {name: [] for name in names}
        for b in range(nbanks):
            m.submodules[f"bank_{b}"] = memory = Memory(self._bank_data[b])
            rd = memory.read_port()
            wr = memory.write_port()
            # The block RAM's own output is slow (5.8 ns clock-to-out on ECP5): register it once
            # per bank, before the port muxes.
            read_word = Signal(self.code_width, name=f"bank_{b}_read_word")
            m.d.sync += read_word.eq(rd.data)
            bank_read_data.append(read_word)

            def arbiter(kind, contenders, write):
                # Per bank and direction: the priority ports first, in their order, then one
                # round-robin arbiter for the others; a grant is served at once. Returns each
                # contender's grant and whether anyone has one.
                wants = {name: (requests[name].offer & requests[name].in_range
                                & (requests[name].write == write) & (requests[name].bank == b))
                         for name in contenders}
                grants = {}
                taken = Const(0, 1)
                for name in self._priority:
                    if name in wants:
                        grants[name] = Signal(name=f"bank_{b}_{kind}_{name}_first")
                        m.d.comb += grants[name].eq(wants[name] & ~taken)
                        taken = taken | wants[name]
                rest = [name for name in contenders if name not in grants]
                if rest:
                    m.submodules[f"bank_{b}_{kind}_arbiter"] = arb = RoundRobinArbiter(len(rest))
                    m.d.comb += arb.advance.eq(1)
                    for k, name in enumerate(rest):
                        m.d.comb += arb.requests[k].eq(wants[name] & ~taken)
                        grants[name] = arb.grant[k]
                for name in contenders:
                    granted_by[name].append(grants[name])
                return grants, Cat(grants.values()).any()

            if readers:
                grants, any_read = arbiter("read", readers, write=0)
                for name in readers:
                    with m.If(grants[name]):
                        m.d.sync += rd.addr.eq(requests[name].row)
                m.d.sync += rd.en.eq(any_read)
            if writers:
                wgrants, any_write = arbiter("write", writers, write=1)
            with m.If(busy):
                # Zero is a code word of the (linear) SECDED code: all check bits zero too.
                m.d.sync += [wr.addr.eq(zero_row), wr.data.eq(0), wr.en.eq(1)]
            with m.Else():
                # No port offers anything while busy (`offer` includes ~busy), so the arbiters
                # are idle then.
                for name in writers:
                    with m.If(wgrants[name]):
                        m.d.sync += [wr.addr.eq(requests[name].row),
                                     wr.data.eq(requests[name].code)]
                m.d.sync += wr.en.eq(any_write if writers else 0)

        # Accepted requests travel a pipeline of RESPONSE_STAGES registers to the response
        # FIFO: (0) the bank's address, data and enables are registered, so the arbiters' muxes
        # end at flip-flops, not at block RAM pins; (1) the block RAM reads; (2) each bank
        # registers the word it read; (3) the ECC syndrome of the right bank's word is
        # registered; (4) the corrected word is registered. Every access, the
        # zeroizer's included, takes the same path, so a read still sees exactly the writes
        # accepted before it.
        corrected = []
        uncorrectable = []
        address_error_events = []
        for name in names:
            r = requests[name]
            m.d.comb += r.granted.eq(Cat(granted_by[name]).any())
            accept = Signal(name=f"{name}_accept")
            m.d.comb += [
                accept.eq(r.offer & (~r.in_range | r.granted)),
                r.port.ready.eq(accept),
            ]
            delivered = r.fifo.o.valid & r.fifo.o.ready
            m.d.sync += r.owed.eq(r.owed + accept - delivered)
            address_error = Signal(name=f"{name}_address_error")
            m.d.sync += address_error.eq(accept & ~r.in_range)
            address_error_events.append(address_error)

            reads = r.kind in ("r", "rw")
            s0, s1, s2, s3, s4 = r.stage_valid
            # Stages 0 and 1: what was accepted, while the bank works on it.
            s0_read, s1_read = Signal(name=f"{name}_s0_read"), Signal(name=f"{name}_s1_read")
            s0_error, s1_error = Signal(name=f"{name}_s0_error"), Signal(name=f"{name}_s1_error")
            s0_bank = Signal(range(nbanks), name=f"{name}_s0_bank")
            s1_bank = Signal(range(nbanks), name=f"{name}_s1_bank")
            m.d.sync += [
                s0.eq(accept), s0_read.eq(~r.write & r.in_range), s0_error.eq(~r.in_range),
                s0_bank.eq(r.bank),
                s1.eq(s0), s1_read.eq(s0_read), s1_error.eq(s0_error), s1_bank.eq(s0_bank),
            ]
            # Stage 2: the word read, registered at its bank; the right bank's is selected.
            s2_read = Signal(name=f"{name}_s2_read")
            s2_error = Signal(name=f"{name}_s2_error")
            s2_bank = Signal(range(nbanks), name=f"{name}_s2_bank")
            s2_word = Signal(self.code_width if reads else 0, name=f"{name}_s2_word")
            m.d.sync += [s2.eq(s1), s2_read.eq(s1_read), s2_error.eq(s1_error),
                         s2_bank.eq(s1_bank)]
            if reads:
                with m.Switch(s2_bank):
                    for b in range(nbanks):
                        with m.Case(b):
                            m.d.comb += s2_word.eq(bank_read_data[b])
            # Stage 3: the syndrome (inside the registered decoder), with the flags alongside.
            s3_read = Signal(name=f"{name}_s3_read")
            s3_error = Signal(name=f"{name}_s3_error")
            m.d.sync += [s3.eq(s2), s3_read.eq(s2_read), s3_error.eq(s2_error)]
            # Stage 4: the response.
            response = Signal(self.response_layout(r.kind), name=f"{name}_s4_response")
            m.d.sync += s4.eq(s3)
            with m.If(s3_error):
                m.d.sync += response.error.eq(SRAMError.ADDRESS)
            with m.Else():
                m.d.sync += response.error.eq(SRAMError.NONE)
            if reads:
                s4_corrected = Signal(name=f"{name}_s4_corrected")
                s4_uncorrectable = Signal(name=f"{name}_s4_uncorrectable")
                if self._ecc:
                    m.submodules[f"{name}_decoder"] = decoder = SECDEDDecoder(
                        self._width, registered=True)
                    m.d.comb += decoder.code.eq(s2_word)
                    data_out, fixed, broken = decoder.data, decoder.corrected, decoder.uncorrectable
                else:
                    s3_word = Signal(self._width, name=f"{name}_s3_word")
                    m.d.sync += s3_word.eq(s2_word[:self._width])
                    data_out, fixed, broken = s3_word, 0, 0
                m.d.sync += [
                    response.data.eq(Mux(s3_read, data_out, 0)),
                    s4_corrected.eq(s3 & s3_read & fixed),
                    s4_uncorrectable.eq(s3 & s3_read & broken),
                ]
                with m.If(s3_read & broken):
                    m.d.sync += response.error.eq(SRAMError.UNCORRECTABLE)
                corrected.append(s4_corrected)
                uncorrectable.append(s4_uncorrectable)

            m.d.comb += [r.fifo.i.valid.eq(s4), r.fifo.i.payload.eq(response)]
            # The response FIFO asserts the stream rules on what it offers.
            wiring.connect(m, r.fifo.o, wiring.flipped(getattr(self, f"o_{name}")))

        for counter, events in ((self.address_errors, address_error_events),
                                (self.corrected_errors, corrected),
                                (self.uncorrectable_errors, uncorrectable)):
            # Events arrive registered, so the counter's adder starts from flip-flops.
            if events:
                total = sum(events, Const(0, COUNTER_WIDTH + 1))
                limit = (1 << COUNTER_WIDTH) - 1
                m.d.sync += counter.eq(Mux(counter + total > limit, limit, counter + total))

        return m

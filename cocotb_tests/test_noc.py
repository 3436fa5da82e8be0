"""The network (mesh + one interface per tile) under Verilator: a scoreboard of every packet.

``noc_scoreboard`` (2x2, 4x4 and 3x2 meshes, 128-bit flits, depth 4, at least 100,000 flits a
run, 40,000 on the 4x4): every tile's interface sends random messages (unicast to tiles and to the endpoints
beyond the edges, multicast rectangles; lengths 0-8 words, some up to 128) while endpoints on
a random half of the edge inputs inject well-formed packets through the raw credit links
(honouring credits, ``depth`` to start with), and every edge output drains into a modelled
endpoint buffer of ``depth`` flits that returns one credit per flit it removes. Headers and
words idle at random at every source; every receiver (tile streams and edge endpoints) stalls
at random, with the rates swept by phases (saturation, back-pressure that fills the network,
full stops, hot spots, trickle). Each payload word encodes (source, sequence number, word
index) above random bits, and the interfaces are offered junk in the source fields. The
scoreboard checks that every packet reaches each of its receivers exactly once, in order per
(source, receiver), with the header (source, kind, length, destination) and every word intact,
no poison and ``last`` on the last word only; the receivers of a multicast rectangle are its
tiles, computed from the rectangle (not from the routing function). At the end ``malformed``,
``error`` and every ``dropped`` are zero and every edge credit has come back. A watchdog fails
the run if no receiver takes anything for 1,024 cycles, with a dump of every router's buffers,
locks and credits.

``noc_bad_input`` (3x2): tiles send messages addressed outside the mesh (corners beyond the
edges, coordinates past X + 1, multicast rectangles that are empty or leave the tiles) among
good ones; each interface must drop exactly those (``dropped``; sticky ``error`` on those tiles
only) and still deliver the good messages after them. An edge endpoint injects raw malformed
packets among good ones: lone body flits, a tail that comes early (on the head or mid-packet),
a missing tail (length 2, four flits sent), a length-0 head without tail, and destinations
that route nowhere. The router where they enter must flag ``malformed`` (no router off their
way may), cut each packet at its length or its early tail with ``poison`` on its last word
(on the header when nothing follows it), drop what routes nowhere, never deliver a headless
flit, and the rest of the traffic must flow on.

``noc_second_multicast_source`` (2x2): the scenario that deadlocked before the mesh had one
multicast source (two crossing multicast trees, each holding the north output the other's
branch needs): now the second tile's multicast is dropped at its interface with a counted
error, and the first one arrives. Only tile (0, 0), the mesh's multicast source, sends
multicasts in the other tests; other tiles' multicasts are bad input.

The testbench steps every port from one coroutine, once per cycle (writes after the rising
edge, samples in ReadOnly), writes a signal only when its value changes and reads the
simulator objects directly, so that the Verilator model rather than cocotb sets most of the
pace (the run logs its cycles per second).
"""

import functools
import math
import time
from collections import deque

import cocotb
import pytest
from cocotb.triggers import ReadOnly, RisingEdge

from cocotb_tests import harness
from cocotb_tests.streams import Watchdog, make_rng, start_clock_and_reset
from rtl.noc.flit import DIRECTIONS, FlitFormat, Port
from sim.noc import edge_field, encode_header, flit_value, header_fields, tile_field


WATCHDOG_CYCLES = 1024

#: Whether multicasts to more than one tile may be in the network together. Two crossing
#: multicast trees deadlock (docs/noc.md), so the mesh has one multicast source, tile (0, 0),
#: whose multicasts queue at its interface: no testbench token is needed. (False lets one in at
#: a time, which is what this test did while multicasts could come from every tile.)
CONCURRENT_MULTICAST = True

#: The Network's multicast source (its default), in tile coordinates.
MULTICAST_TILE = (0, 0)


# ---- packets and their receivers ----------------------------------------------------------------

def describe_header(offsets, value):
    return ", ".join(f"{name}={(value >> offset) & ((1 << width) - 1)}"
                     for name, (offset, width) in offsets.items())


class WordCode:
    """Payload words that say where they come from: source, sequence number and word index in
    the top bits, random bits below (as many as the flit width leaves)."""

    SRC_BITS, SEQ_BITS, IDX_BITS = 10, 16, 8

    def __init__(self, width):
        self.width = width
        self.info_bits = min(width, self.SRC_BITS + self.SEQ_BITS + self.IDX_BITS)
        self.random_bits = width - self.info_bits

    def word(self, rng, src, seq, index):
        info = ((src[0] << 5 | src[1]) << (self.SEQ_BITS + self.IDX_BITS) |
                (seq & 0xFFFF) << self.IDX_BITS | index & 0xFF)
        info &= (1 << self.info_bits) - 1
        return info << self.random_bits | rng.getrandbits(self.random_bits)

    def describe(self, word):
        info = word >> self.random_bits
        src = info >> (self.SEQ_BITS + self.IDX_BITS)
        return (f"word {(info & 0xFF)} of packet {(info >> self.IDX_BITS) & 0xFFFF} from "
                f"({src >> 5}, {src & 31})")


class Packet:
    """One packet as it must arrive: header (source filled in), words, and whether the last
    word (the header, when no words arrive) carries poison."""

    __slots__ = ("src", "seq", "header", "words", "poison", "receivers", "pending", "note")

    def __init__(self, src, seq, header, words, poison=False, note=""):
        self.src, self.seq, self.header, self.words = src, seq, header, words
        self.poison, self.note = poison, note
        self.receivers, self.pending = (), 0

    def __repr__(self):
        return f"packet {self.seq} from {self.src}{' (' + self.note + ')' if self.note else ''}"


class Mesh:
    """Tiles, edge endpoints and their field coordinates."""

    def __init__(self, fmt):
        self.fmt = fmt
        X, Y = self.X, self.Y = fmt.mesh_x, fmt.mesh_y
        self.tiles = [(x, y) for y in range(Y) for x in range(X)]
        self.edges = [(port, k) for port in DIRECTIONS
                      for k in range(Y if port in (Port.EAST, Port.WEST) else X)]
        self.edge_fields = [edge_field(fmt, port, k) for port, k in self.edges]

    def is_tile(self, field):
        return 1 <= field[0] <= self.X and 1 <= field[1] <= self.Y

    def rectangle(self, first, last):
        """The tiles of a multicast rectangle, as field coordinates: computed from the
        rectangle alone, never from the routing function."""
        return [(fx, fy) for fy in range(first[1], last[1] + 1)
                for fx in range(first[0], last[0] + 1)]

    def header(self, dst, src, length, kind, *, last=None, multicast=False):
        last = dst if last is None else last
        return encode_header(self.fmt, {
            "dst_x": dst[0], "dst_y": dst[1], "last_x": last[0], "last_y": last[1],
            "src_x": src[0], "src_y": src[1], "multicast": int(multicast), "kind": kind,
            "length": length})


class MulticastToken:
    """Lets one multicast of more than one tile into the network at a time, unless
    :data:`CONCURRENT_MULTICAST`: the sender takes it before offering the header, and the
    scoreboard frees it when the last receiver has the packet."""

    __slots__ = ("holder", "taken", "refused", "deferred")

    def __init__(self):
        self.holder, self.taken, self.refused, self.deferred = None, 0, 0, 0

    def take(self, packet):
        if packet is None:
            return True
        if self.holder is not None:
            self.refused += 1
            return False
        self.holder = packet
        self.taken += 1
        return True


class Plan:
    """Messages a source has still to send (``pending``, each an ``(emit, serial)`` pair:
    ``emit()`` queues it at the source and returns its packet; ``serial``: it needs the
    multicast token) and the multicasts set aside until the token is free (``deferred``).
    ``queue`` is the source's own list of what it offers."""

    __slots__ = ("source", "queue", "pending", "deferred")

    def __init__(self, source, queue):
        self.source, self.queue = source, queue
        self.pending, self.deferred = deque(), deque()


class Scoreboard:
    """Packets still expected, per (receiver, source), in the order they were sent."""

    def __init__(self, mesh):
        self.mesh = mesh
        self.offsets = header_fields(mesh.fmt)
        self.code = WordCode(mesh.fmt.flit_width)
        self.queues = {}
        self.expected = self.delivered = 0
        self.token = MulticastToken()
        self.flits_delivered = 0

    def expect(self, packet, receivers):
        packet.receivers = tuple(receivers)
        packet.pending = len(packet.receivers)
        for receiver in receivers:
            self.queues.setdefault((receiver, packet.src), deque()).append(packet)
            self.expected += 1

    def complete(self, packet):
        """``packet`` arrived whole at one of its receivers."""
        self.delivered += 1
        packet.pending -= 1
        if packet.pending == 0 and self.token.holder is packet:
            self.token.holder = None

    def arrive(self, receiver, header, cycle):
        """A header arrived at ``receiver``: the next packet expected there from its source."""
        offsets = self.offsets
        src = tuple((header >> offsets[f][0]) & ((1 << offsets[f][1]) - 1)
                    for f in ("src_x", "src_y"))
        queue = self.queues.get((receiver, src))
        if not queue:
            raise AssertionError(
                f"cycle {cycle}: unexpected packet at {receiver} "
                f"({describe_header(offsets, header)}): duplicated, misrouted or never sent")
        packet = queue.popleft()
        if header != packet.header:
            raise AssertionError(
                f"cycle {cycle}: at {receiver}, expected {packet} with header "
                f"({describe_header(offsets, packet.header)}), got "
                f"({describe_header(offsets, header)}) (lost, reordered or corrupted)")
        return packet

    def word(self, receiver, packet, index, data, last, poison, cycle):
        words = packet.words
        if index >= len(words):
            raise AssertionError(f"cycle {cycle}: {receiver}: {packet} has only {len(words)} "
                                 f"words, got another: {self.code.describe(data)}")
        if data != words[index]:
            raise AssertionError(
                f"cycle {cycle}: {receiver}: word {index} of {packet} is {data:#x} "
                f"({self.code.describe(data)}), expected {words[index]:#x}")
        end = index == len(words) - 1
        if last != end:
            raise AssertionError(f"cycle {cycle}: {receiver}: word {index} of {len(words)} of "
                                 f"{packet} has last={last}")
        if poison != (end and packet.poison):
            raise AssertionError(f"cycle {cycle}: {receiver}: word {index} of {packet} has "
                                 f"poison={poison}, expected {int(end and packet.poison)}")
        return end

    def header_poison(self, receiver, packet, poison, cycle):
        want = packet.poison and not packet.words
        if poison != want:
            raise AssertionError(f"cycle {cycle}: {receiver}: header of {packet} has "
                                 f"poison={poison}, expected {int(want)}")

    def missing(self):
        left = [(receiver, packet) for (receiver, _), queue in self.queues.items()
                for packet in queue]
        return left


# ---- drivers (one object per port, all stepped by one coroutine) --------------------------------

def reader(handle):
    """A function that reads ``handle`` as an unsigned int straight from the simulator object:
    cocotb's ``.value`` builds a LogicArray on every read, which costs more than the rest of a
    port's work per cycle. (Verilator has no X or Z to lose.)"""
    raw = getattr(handle, "_handle", None)
    if raw is None:
        return lambda: int(handle.value)
    if len(handle) <= 32:
        return raw.get_signal_val_long
    binstr = raw.get_signal_val_binstr
    return lambda: int(binstr(), 2)


class Source:
    """Offers ``items`` in order on a stream; idles with probability ``idle`` before each."""

    __slots__ = ("valid", "ready", "payload", "items", "pos", "offered", "valid_now", "idle",
                 "rng", "gates", "token", "ready_get")

    def __init__(self, dut, name, items, rng, token=None):
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.ready_get = reader(self.ready)
        self.items, self.pos, self.offered, self.valid_now = items, 0, False, 0
        self.idle, self.rng = 0.0, rng
        self.gates, self.token = {}, token      # item index -> packet that needs the token
        self.valid.value = 0

    def drive(self):
        if self.offered:
            return                  # held until taken; valid is already high
        if (self.pos < len(self.items) and self.rng.random() >= self.idle and
                (not self.gates or self.token.take(self.gates.get(self.pos)))):
            self.payload.value = self.items[self.pos]
            self.offered = True
            if not self.valid_now:
                self.valid.value = self.valid_now = 1
        elif self.valid_now:
            self.valid.value = self.valid_now = 0

    def sample(self):
        if self.offered and self.ready_get():
            self.offered = False
            self.pos += 1
            return True
        return False

    @property
    def done(self):
        return self.pos == len(self.items)


class Sink:
    """Takes a stream; ``ready`` is low with probability ``stall`` each cycle."""

    __slots__ = ("valid", "ready", "payload", "ready_now", "stall", "rng", "valid_get",
                 "payload_get")

    def __init__(self, dut, name, rng):
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.valid_get, self.payload_get = reader(self.valid), reader(self.payload)
        self.ready_now, self.stall, self.rng = 0, 0.0, rng
        self.ready.value = 0

    def drive(self):
        stall = self.stall
        ready = 1 if stall <= 0.0 else 0 if stall >= 1.0 else int(self.rng.random() >= stall)
        if ready != self.ready_now:
            self.ready.value = self.ready_now = ready

    def sample(self):
        """The payload taken at the coming edge, or None."""
        if self.ready_now and self.valid_get():
            return self.payload_get()
        return None


class TileReceiver:
    """A tile's two receive streams, checked against the scoreboard."""

    __slots__ = ("field", "header", "words", "board", "packet", "index", "hw", "w")

    def __init__(self, dut, x, y, board, rng):
        self.field = tile_field(x, y)
        self.header = Sink(dut, f"o_header__{y}__{x}", rng)
        self.words = Sink(dut, f"o__{y}__{x}", rng)
        self.board, self.packet, self.index = board, None, 0
        self.hw, self.w = board.mesh.fmt.header_width, board.mesh.fmt.flit_width

    def sample(self, cycle):
        moved = False
        board = self.board
        value = self.header.sample()
        if value is not None:
            moved = True
            if self.packet is not None:
                raise AssertionError(f"cycle {cycle}: tile {self.field}: a header came out "
                                     f"inside {self.packet}")
            header, poison = value & ((1 << self.hw) - 1), value >> self.hw & 1
            packet = board.arrive(self.field, header, cycle)
            board.header_poison(self.field, packet, poison, cycle)
            board.flits_delivered += 1
            if packet.words:
                self.packet, self.index = packet, 0
            else:
                board.complete(packet)
        value = self.words.sample()
        if value is not None:
            moved = True
            packet = self.packet
            if packet is None:
                raise AssertionError(f"cycle {cycle}: tile {self.field}: a word came out "
                                     f"with no packet open: {board.code.describe(value)}")
            w = self.w
            if board.word(self.field, packet, self.index, value & ((1 << w) - 1),
                          value >> w & 1, value >> (w + 1) & 1, cycle):
                self.packet = None
                board.complete(packet)
            self.index += 1
            board.flits_delivered += 1
        return moved


class EdgeSink:
    """The endpoint beyond an edge output: a buffer of ``depth`` flits drained at random, one
    credit returned per flit removed. Flits are checked as they leave the buffer."""

    __slots__ = ("field", "valid", "flit", "credit", "buffer", "depth", "credit_now", "stall",
                 "rng", "board", "packet", "index", "w", "hw", "valid_get", "flit_get")

    def __init__(self, dut, port, k, board, depth, rng):
        name = f"o_{port.name.lower()}__{k}"
        self.field = edge_field(board.mesh.fmt, port, k)
        self.valid = getattr(dut, f"{name}__valid")
        self.flit = getattr(dut, f"{name}__flit")
        self.credit = getattr(dut, f"{name}__credit")
        self.valid_get, self.flit_get = reader(self.valid), reader(self.flit)
        self.buffer, self.depth, self.credit_now = deque(), depth, 0
        self.stall, self.rng, self.board = 0.0, rng, board
        self.packet, self.index = None, 0
        self.w, self.hw = board.mesh.fmt.flit_width, board.mesh.fmt.header_width
        self.credit.value = 0

    def drive(self, cycle):
        """Remove at most one flit (returning its credit this cycle); True if one left."""
        credit = 0
        if self.buffer and self.rng.random() >= self.stall:
            self.check(self.buffer.popleft(), cycle)
            credit = 1
        if credit != self.credit_now:
            self.credit.value = self.credit_now = credit
        return bool(credit)

    def sample(self, cycle):
        if self.valid_get():
            self.buffer.append(self.flit_get())
            if len(self.buffer) > self.depth:
                raise AssertionError(f"cycle {cycle}: edge {self.field}: a flit arrived with "
                                     f"the endpoint's {self.depth}-flit buffer full (credit "
                                     f"overrun)")
            return True
        return False

    def check(self, flit, cycle):
        w, board = self.w, self.board
        data, head, tail, poison = (flit & ((1 << w) - 1), flit >> w & 1, flit >> (w + 1) & 1,
                                    flit >> (w + 2) & 1)
        board.flits_delivered += 1
        if self.packet is None:
            if not head:
                raise AssertionError(f"cycle {cycle}: edge {self.field}: a flit without head "
                                     f"came out between packets: {board.code.describe(data)}")
            packet = board.arrive(self.field, data & ((1 << self.hw) - 1), cycle)
            if data >> self.hw:
                raise AssertionError(f"cycle {cycle}: edge {self.field}: head of {packet} has "
                                     f"bits set above the header: {data:#x}")
            if tail != (not packet.words):
                raise AssertionError(f"cycle {cycle}: edge {self.field}: head of {packet} "
                                     f"({len(packet.words)} words) has tail={tail}")
            board.header_poison(self.field, packet, poison, cycle)
            if packet.words:
                self.packet, self.index = packet, 0
            else:
                board.complete(packet)
        else:
            if head:
                raise AssertionError(f"cycle {cycle}: edge {self.field}: a head inside "
                                     f"{self.packet}")
            packet = self.packet
            if board.word(self.field, packet, self.index, data, tail, poison, cycle):
                self.packet = None
                board.complete(packet)
            self.index += 1


class EdgeSource:
    """An endpoint beyond an edge input: sends ``flits`` (link integers) while it holds a
    credit, idling with probability ``idle``; starts with ``depth`` credits."""

    __slots__ = ("field", "valid", "flit", "credit", "flits", "pos", "credits", "depth",
                 "valid_now", "idle", "rng", "gates", "token", "credit_get")

    def __init__(self, dut, port, k, fmt, depth, rng, token):
        name = f"i_{port.name.lower()}__{k}"
        self.field = edge_field(fmt, port, k)
        self.valid = getattr(dut, f"{name}__valid")
        self.flit = getattr(dut, f"{name}__flit")
        self.credit = getattr(dut, f"{name}__credit")
        self.credit_get = reader(self.credit)
        self.flits, self.pos, self.credits, self.depth = [], 0, depth, depth
        self.valid_now, self.idle, self.rng = 0, 0.0, rng
        self.gates, self.token = {}, token      # flit index -> packet that needs the token
        self.valid.value = 0

    def drive(self):
        send = bool(self.credits and self.pos < len(self.flits) and
                    self.rng.random() >= self.idle and
                    (not self.gates or self.token.take(self.gates.get(self.pos))))
        if send:
            self.flit.value = self.flits[self.pos]
            self.pos += 1
            self.credits -= 1
        if send != self.valid_now:
            self.valid.value = self.valid_now = int(send)
        return send

    def sample(self):
        # The router returns a credit only for a flit it took; none can come while all are home.
        if self.credits < self.depth and self.credit_get():
            self.credits += 1

    @property
    def done(self):
        return self.pos == len(self.flits)


class Bench:
    """Every port of the network, stepped together once per cycle."""

    def __init__(self, dut, fmt, depth, rng, edge_sources, *,
                 concurrent_multicast=CONCURRENT_MULTICAST):
        self.dut, self.fmt, self.depth, self.rng = dut, fmt, depth, rng
        self.concurrent_multicast = concurrent_multicast
        self.mesh = Mesh(fmt)
        self.board = Scoreboard(self.mesh)
        token = self.board.token
        self.header_sources, self.word_sources, self.receivers = {}, {}, {}
        for x, y in self.mesh.tiles:
            self.header_sources[x, y] = Source(dut, f"i_header__{y}__{x}", [], rng, token)
            self.word_sources[x, y] = Source(dut, f"i__{y}__{x}", [], rng)
            self.receivers[x, y] = TileReceiver(dut, x, y, self.board, rng)
        self.edge_sinks = [EdgeSink(dut, port, k, self.board, depth, rng)
                           for port, k in self.mesh.edges]
        self.edge_sources = {}
        for port, k in self.mesh.edges:
            source = EdgeSource(dut, port, k, fmt, depth, rng, token)
            if (port, k) in edge_sources:
                self.edge_sources[port, k] = source
        self.sources = list(self.header_sources.values()) + list(self.word_sources.values())
        self.sinks = ([r.header for r in self.receivers.values()] +
                      [r.words for r in self.receivers.values()])
        self.watchdog = Watchdog(dut.clk, WATCHDOG_CYCLES)
        self.cycle = 0
        self.flits_injected = 0
        self.seq = {}
        self.plans = []

    # -- traffic --------------------------------------------------------------------------------

    def next_seq(self, src):
        seq = self.seq.get(src, 0)
        self.seq[src] = seq + 1
        return seq

    def serialised(self, multicast, receivers):
        """Whether a packet must wait for the multicast token."""
        return multicast and len(receivers) > 1 and not self.concurrent_multicast

    def random_length(self):
        r = self.rng.random()
        if r < 0.8:
            return self.rng.randrange(9)
        if r < 0.97:
            return self.rng.randrange(9, 33)
        return self.rng.randrange(33, 129)

    def words(self, src, seq, length):
        code = self.board.code
        return [code.word(self.rng, src, seq, k) for k in range(length)]

    def random_destination(self, *, multicast_ok=True):
        """(dst, last, multicast, receivers): a tile, an edge endpoint or a rectangle."""
        rng, mesh = self.rng, self.mesh
        r = rng.random()
        # Multicasts to several tiles go one at a time unless CONCURRENT_MULTICAST, each
        # taking longer on a larger mesh: few enough that their turns do not set the pace.
        share = 0.2 if self.concurrent_multicast else 0.08 / math.sqrt(mesh.X * mesh.Y)
        if multicast_ok and r < share:
            x0, x1 = sorted(rng.randrange(1, mesh.X + 1) for _ in range(2))
            y0, y1 = sorted(rng.randrange(1, mesh.Y + 1) for _ in range(2))
            if rng.random() < 0.1:
                x0, y0, x1, y1 = 1, 1, mesh.X, mesh.Y        # broadcast
            return (x0, y0), (x1, y1), True, mesh.rectangle((x0, y0), (x1, y1))
        if r < 0.4:
            dst = rng.choice(mesh.edge_fields)
        else:
            dst = tile_field(*rng.choice(mesh.tiles))
        # A unicast header's last corner means nothing: random, and must arrive unchanged.
        xw = self.board.offsets["last_x"][1]
        yw = self.board.offsets["last_y"][1]
        last = (rng.getrandbits(xw), rng.getrandbits(yw))
        return dst, last, False, [dst]

    def tile_message(self, x, y, dst, last, multicast, length, receivers, kind=None, *,
                     gate=True):
        """Queue one message at tile (x, y); expect it at ``receivers`` (empty: dropped).
        Returns the packet (None if dropped). With ``gate``, a multicast that needs the token
        waits for it when its turn comes to be offered."""
        src = tile_field(x, y)
        seq = self.next_seq(src)
        kind = self.rng.getrandbits(4) if kind is None else kind
        words = self.words(src, seq, length)
        # The interface fills in the source: offer junk there.
        junk = (self.rng.getrandbits(self.board.offsets["src_x"][1]),
                self.rng.getrandbits(self.board.offsets["src_y"][1]))
        self.header_sources[x, y].items.append(
            self.mesh.header(dst, junk, length, kind, last=last, multicast=multicast))
        self.word_sources[x, y].items.extend(words)
        if receivers:
            packet = Packet(src, seq, self.mesh.header(dst, src, length, kind, last=last,
                                                       multicast=multicast), words)
            self.board.expect(packet, receivers)
            if gate and self.serialised(multicast, receivers):
                source = self.header_sources[x, y]
                source.gates[len(source.items) - 1] = packet
            self.flits_injected += 1 + length
            return packet
        return None

    def edge_packet(self, source, dst, last, multicast, length, receivers, *, gate=True):
        """Queue one well-formed packet at edge ``source``; returns it."""
        src = source.field
        seq = self.next_seq(src)
        kind = self.rng.getrandbits(4)
        words = self.words(src, seq, length)
        header = self.mesh.header(dst, src, length, kind, last=last, multicast=multicast)
        fmt = self.fmt
        packet = Packet(src, seq, header, words)
        if gate and self.serialised(multicast, receivers):
            source.gates[len(source.flits)] = packet
        source.flits.append(flit_value(fmt, header, head=True, tail=not words))
        for k, word in enumerate(words):
            source.flits.append(flit_value(fmt, word, tail=k == length - 1))
        self.board.expect(packet, receivers)
        self.flits_injected += 1 + length
        return packet

    def random_traffic(self, flits):
        """Plan random messages at every tile and edge source, ``flits`` flits in all. They are
        queued at their sources as the sources empty (:meth:`feed`)."""
        tiles = self.mesh.tiles
        edges = list(self.edge_sources.values())
        # An edge source offers about half a tile's load.
        shares = [(("tile", t), 2) for t in tiles] + [(("edge", e), 1) for e in edges]
        total = sum(s for _, s in shares)
        for (kind, who), share in shares:
            budget = flits * share // total + 1
            if kind == "tile":
                plan = Plan(self.header_sources[who], self.header_sources[who].items)
            else:
                plan = Plan(who, who.flits)
            self.plans.append(plan)
            while budget > 0:
                # Only the mesh's multicast source may multicast.
                dst, last, multicast, receivers = self.random_destination(
                    multicast_ok=kind == "tile" and who == MULTICAST_TILE)
                length = self.random_length()
                serial = self.serialised(multicast, receivers)
                if serial:
                    # Each of these holds the network's one multicast turn until its last copy
                    # is out: keep them short.
                    length = self.rng.randrange(9)
                if kind == "tile":
                    emit = functools.partial(self.tile_message, *who, dst, last, multicast,
                                             length, receivers, gate=False)
                else:
                    emit = functools.partial(self.edge_packet, who, dst, last, multicast,
                                             length, receivers, gate=False)
                plan.pending.append((emit, serial))
                budget -= 1 + length

    def feed(self, plan):
        """Queue the next planned message at an empty source. A multicast that needs the
        token while another multicast has it waits aside, and the source goes on past it."""
        token = self.board.token
        if plan.deferred and token.holder is None:
            token.take(plan.deferred.popleft()())
            return
        while plan.pending:
            emit, serial = plan.pending.popleft()
            if not serial:
                emit()
                return
            if token.holder is None:
                token.take(emit())
                return
            plan.deferred.append(emit)
            token.deferred += 1

    # -- stall phases ---------------------------------------------------------------------------

    def new_phase(self):
        """Pick idle and stall rates for every port for the next stretch of cycles."""
        rng = self.rng
        kind = rng.choices(["saturate", "random", "backpressure", "freeze", "hotspot",
                            "trickle"], weights=[3, 3, 2, 1, 1, 1])[0]
        ins = self.sources + list(self.edge_sources.values())
        outs = self.sinks + self.edge_sinks
        # The buffers hold a few flits per port: a hundred cycles of heavy stalls fill the
        # network back to the sources.
        if kind == "saturate":
            idle, stall, cycles = (lambda: 0.0), (lambda: 0.0), rng.randrange(100, 1000)
        elif kind == "random":
            idle, stall = (lambda: rng.uniform(0, 0.6)), (lambda: rng.uniform(0, 0.6))
            cycles = rng.randrange(100, 1000)
        elif kind == "backpressure":
            # Receivers barely take anything: the buffers fill back to the sources.
            idle, stall = (lambda: 0.0), (lambda: rng.uniform(0.85, 0.98))
            cycles = rng.randrange(100, 400)
        elif kind == "freeze":
            idle, stall, cycles = (lambda: 0.0), (lambda: 1.0), rng.randrange(50, 200)
        elif kind == "hotspot":
            # A quarter of the receivers nearly stop; the rest take everything.
            idle = lambda: rng.uniform(0, 0.3)                     # noqa: E731
            stall = lambda: 0.97 if rng.random() < 0.25 else 0.0   # noqa: E731
            cycles = rng.randrange(100, 600)
        else:   # trickle
            idle, stall = (lambda: rng.uniform(0.8, 0.95)), (lambda: 0.0)
            cycles = rng.randrange(100, 300)
        for port in ins:
            port.idle = idle()
        for port in outs:
            port.stall = stall()
        return kind, cycles

    def calm(self):
        for port in self.sources + list(self.edge_sources.values()):
            port.idle = 0.0
        for port in self.sinks + self.edge_sinks:
            port.stall = 0.0

    # -- the cycle loop -------------------------------------------------------------------------

    async def run(self, *, phases=True, max_cycles=None, drain=64):
        """Step every port until all traffic is sent and delivered, then ``drain`` more cycles
        in which nothing may arrive."""
        dut, board, watchdog = self.dut, self.board, self.watchdog
        sources, sinks = self.sources, self.sinks
        receivers = list(self.receivers.values())
        edge_sinks, edge_sources = self.edge_sinks, list(self.edge_sources.values())
        all_sources = sources + edge_sources
        plans = self.plans
        phase_left, phase_counts = 0, {}
        after = None
        read_only, rising = ReadOnly(), RisingEdge(dut.clk)
        start = time.monotonic()
        while True:
            cycle = self.cycle
            if phases:
                phase_left -= 1
                if phase_left <= 0:
                    kind, phase_left = self.new_phase()
                    phase_counts[kind] = phase_counts.get(kind, 0) + 1
            # After the edge: drive.
            for plan in plans:
                if plan.source.pos == len(plan.queue):
                    self.feed(plan)
            for source in sources:
                source.drive()
            for source in edge_sources:
                source.drive()
            for sink in sinks:
                sink.drive()
            for sink in edge_sinks:
                if sink.drive(cycle):
                    watchdog.kick()
            await read_only
            # Before the next edge: what moves at it.
            for source in sources:
                source.sample()
            for source in edge_sources:
                source.sample()
            for receiver in receivers:
                if receiver.sample(cycle):
                    watchdog.kick()
            for sink in edge_sinks:
                if sink.sample(cycle):
                    watchdog.kick()
            await rising
            self.cycle += 1
            watchdog.idle += 1
            if watchdog.idle > WATCHDOG_CYCLES:
                raise AssertionError(
                    f"cycle {self.cycle}: nothing arrived anywhere for {WATCHDOG_CYCLES} cycles "
                    f"({board.expected - board.delivered} deliveries outstanding): deadlock?\n"
                    + self.stuck_report())
            if max_cycles is not None and self.cycle > max_cycles:
                raise AssertionError(f"not done after {max_cycles} cycles")
            if after is None:
                if (board.delivered == board.expected and
                        all(s.done for s in all_sources) and
                        not any(p.pending or p.deferred for p in plans) and
                        not any(s.buffer for s in edge_sinks)):
                    after = self.cycle
                    self.calm()
                    phases = False
            elif self.cycle - after >= drain:
                break
        self.seconds = time.monotonic() - start
        self.phase_counts = phase_counts

    def stuck_report(self):
        """What every source, endpoint and router holds, for a watchdog failure."""
        lines = []
        for (x, y), source in self.header_sources.items():
            lines.append(f"tile ({x},{y}): headers {source.pos}/{len(source.items)}, words "
                         f"{self.word_sources[x, y].pos}/{len(self.word_sources[x, y].items)}")
        for source in self.edge_sources.values():
            lines.append(f"edge source {source.field}: {source.pos}/{len(source.flits)} flits, "
                         f"{source.credits} credits")
        for sink in self.edge_sinks:
            lines.append(f"edge sink {sink.field}: {len(sink.buffer)} buffered")
        missing = self.board.missing()
        lines.append(f"{len(missing)} deliveries missing, first: " +
                     ", ".join(f"{p} at {r}" for r, p in missing[:8]))
        lines += self.router_state()
        return "\n".join(lines)

    def router_state(self):
        """Inside every router (by the register names of rtl/noc/router.py; best effort)."""
        w = self.fmt.flit_width
        lines = ["routers: per port, its input buffer [front second +stored, flags Head Tail "
                 "Poison > route; 'open n': n flits of the packet still to come], then the "
                 "output of that name: lock = the input holding it, cr = its credits; port "
                 "bits are local south north west east"]

        def entry(value):
            flit, route = value & ((1 << (w + 3)) - 1), value >> (w + 3)
            flags = "".join(c for c, bit in (("H", w), ("T", w + 1), ("P", w + 2))
                            if flit >> bit & 1)
            return f"{flags or '-'}>{route:05b}"

        try:
            for x, y in self.mesh.tiles:
                router = getattr(self.dut.mesh, f"router_{x}_{y}")
                parts = []
                for port in Port:
                    name = port.name.lower()
                    r = lambda n: int(getattr(router, n).value)        # noqa: E731
                    held = []
                    if r(f"{name}_front_valid"):
                        held.append(entry(r(f"{name}_front")))
                    if r(f"{name}_second_valid"):
                        held.append(entry(r(f"{name}_second")))
                    storage = getattr(router, f"buffer_{name}", None)
                    level = int(storage.level.value) if storage is not None else 0
                    parts.append(
                        f"{name}[{' '.join(held)}{f' +{level}' if level else ''}"
                        f"{' open ' + str(r(name + '_remaining')) if r(name + '_open') else ''}]"
                        f" lock={r('lock_' + name):05b}"
                        f" cr={int(getattr(router, 'credits_' + name).count.value)}")
                lines.append(f"router ({x},{y}): " + "; ".join(parts))
        except (AttributeError, ValueError) as error:
            lines.append(f"(router state unavailable: {error})")
        return lines

    def check_end(self, *, malformed=0, malformed_allowed=None, errors=0, dropped=None):
        """The run ended clean: everything delivered, credits home, and the sticky flags as
        given (``malformed`` bits must be set, and no others outside ``malformed_allowed``)."""
        dut, mesh = self.dut, self.mesh
        missing = self.board.missing()
        assert not missing, (f"{len(missing)} deliveries never arrived: " +
                             ", ".join(f"{p} at {r}" for r, p in missing[:10]))
        assert self.board.delivered == self.board.expected
        for receiver in self.receivers.values():
            assert receiver.packet is None, f"tile {receiver.field}: {receiver.packet} cut short"
        for sink in self.edge_sinks:
            assert sink.packet is None, f"edge {sink.field}: {sink.packet} cut short"
        for source in self.edge_sources.values():
            assert source.credits == self.depth, (
                f"edge {source.field}: {source.credits} of {self.depth} credits came back")
        got = int(dut.malformed.value)
        allowed = malformed if malformed_allowed is None else malformed_allowed
        assert got & malformed == malformed and got & ~allowed == 0, (
            f"malformed = {got:#b}: must have {malformed:#b} set and nothing outside "
            f"{allowed:#b}")
        got = int(dut.error.value)
        assert got == errors, f"error = {got:#b}, expected {errors:#b}"
        for x, y in mesh.tiles:
            got = int(getattr(dut, f"dropped__{y}__{x}").value)
            want = 0 if dropped is None else dropped.get((x, y), 0)
            assert got == want, f"tile ({x},{y}): dropped = {got}, expected {want}"


def edge_source_choice(mesh, rng):
    """Edge inputs that get a source: a random half, at least one on every side."""
    chosen = set()
    for port in DIRECTIONS:
        links = [(p, k) for p, k in mesh.edges if p == port]
        chosen.add(rng.choice(links))
        chosen.update(link for link in links if rng.random() < 0.5)
    return chosen


# ---- cocotb tests -------------------------------------------------------------------------------

@cocotb.test()
async def noc_scoreboard(dut):
    p = harness.params()
    fmt = FlitFormat(p["mesh_x"], p["mesh_y"], p["flit_width"])
    rng = make_rng(harness.seed())
    mesh = Mesh(fmt)
    bench = Bench(dut, fmt, p["depth"], rng, edge_source_choice(mesh, rng))
    bench.random_traffic(p["flits"])
    await start_clock_and_reset(dut)
    await bench.run()
    bench.check_end()
    board = bench.board
    rate = bench.cycle / bench.seconds
    dut._log.info(
        f"NOC SUMMARY {fmt.mesh_x}x{fmt.mesh_y}: {bench.flits_injected} flits injected "
        f"({sum(len(s.items) for s in bench.header_sources.values())} tile messages, "
        f"{sum(s.pos for s in bench.edge_sources.values())} edge flits from "
        f"{len(bench.edge_sources)} edge sources), {board.delivered} deliveries, "
        f"{board.flits_delivered} flits delivered, {bench.cycle} cycles in "
        f"{bench.seconds:.1f} s ({rate:.0f} cycles/s); {board.token.taken} multicasts to "
        f"several tiles, one at a time ({board.token.deferred} set aside while another was "
        f"out); phases {bench.phase_counts}")
    assert bench.flits_injected >= p["flits"]


@cocotb.test()
async def noc_bad_input(dut):
    p = harness.params()
    fmt = FlitFormat(p["mesh_x"], p["mesh_y"], p["flit_width"])
    X, Y = fmt.mesh_x, fmt.mesh_y
    depth = p["depth"]
    rng = make_rng(harness.seed())
    mesh = Mesh(fmt)
    # The raw bad packets come in from the west edge at row 0 (router (0, 0)); two more edge
    # sources send good traffic.
    bad_port = (Port.WEST, 0)
    good_edges = {(Port.EAST, Y - 1), (Port.NORTH, X - 1)}
    bench = Bench(dut, fmt, depth, rng, {bad_port} | good_edges)
    xw, yw = bench.board.offsets["dst_x"][1], bench.board.offsets["dst_y"][1]

    # Destinations no interface may send: corners beyond two edges, coordinates past X + 1 or
    # Y + 1 (where the field is wide enough), and bad multicast rectangles.
    bad_unicast = [(0, 0), (0, Y + 1), (X + 1, 0), (X + 1, Y + 1)]
    bad_unicast += [(fx, rng.randrange(Y + 2)) for fx in range(X + 2, 1 << xw)]
    bad_unicast += [(rng.randrange(X + 2), fy) for fy in range(Y + 2, 1 << yw)]
    bad_multicast = [
        ((2, 1), (1, 1)) if X > 1 else ((1, 2), (1, 1)),     # last < dst
        ((1, 2), (1, 1)) if Y > 1 else ((2, 1), (1, 1)),
        ((0, 1), (1, 1)),                                     # starts beyond the west edge
        ((1, 0), (1, 1)),                                     # starts beyond the south edge
        ((1, 1), (X + 1, 1)),                                 # leaves through the east edge
        ((1, 1), (1, Y + 1)),                                 # leaves through the north edge
        ((X + 1, 1), (X + 1, 1)),                             # entirely beyond the east edge
        ((1, 1), ((1 << xw) - 1, (1 << yw) - 1)),
    ]
    dropped = {}
    clean_tile = rng.choice(mesh.tiles)            # sends only good messages
    for _ in range(p["rounds"]):
        for x, y in mesh.tiles:
            for _ in range(rng.randrange(1, 4)):
                # Good messages, so those after a drop must still line up with their words.
                dst, last, multicast, receivers = bench.random_destination(
                    multicast_ok=(x, y) == MULTICAST_TILE)
                bench.tile_message(x, y, dst, last, multicast, rng.randrange(6), receivers)
            if (x, y) == clean_tile:
                continue
            if rng.random() < 0.5:
                dst, multicast = rng.choice(bad_unicast), False
                last = (rng.getrandbits(xw), rng.getrandbits(yw))
            else:
                # A good rectangle is bad input too from a tile that is not the source.
                choices = bad_multicast + ([((1, 1), (X, Y))] if (x, y) != MULTICAST_TILE
                                           else [])
                (dst, last), multicast = rng.choice(choices), True
            bench.tile_message(x, y, dst, last, multicast, rng.choice([0, 1, 3, 8]), [])
            dropped[x, y] = dropped.get((x, y), 0) + 1

    # Raw packets at the bad edge, between good ones.
    source = bench.edge_sources[bad_port]
    src = source.field

    def good_packet():
        dst, last, multicast, receivers = bench.random_destination(multicast_ok=False)
        bench.edge_packet(source, dst, last, multicast, rng.randrange(5), receivers)

    def raw(dst, length, head_tail, body_tails, expect_words, poison, note, *, last=None,
            multicast=False, receivers=None):
        """A head for ``dst`` saying ``length`` with tail flag ``head_tail``, then one body flit
        per entry of ``body_tails`` (its tail flag); the receivers must get the first
        ``expect_words`` words, the last (or the header) poisoned if ``poison``."""
        seq = bench.next_seq(src)
        header = mesh.header(dst, src, length, rng.getrandbits(4), last=last,
                             multicast=multicast)
        words = bench.words(src, seq, len(body_tails))
        source.flits.append(flit_value(fmt, header, head=True, tail=head_tail))
        for word, tail in zip(words, body_tails):
            source.flits.append(flit_value(fmt, word, tail=tail))
        receivers = [dst] if receivers is None else receivers
        if receivers:
            bench.board.expect(Packet(src, seq, header, words[:expect_words], poison, note),
                               receivers)
        bench.flits_injected += 1 + len(body_tails)

    target = tile_field(X - 1, Y - 1)
    edge_target = edge_field(fmt, Port.EAST, 0)
    malformed_cases = [
        # A lone body flit between packets: dropped, never delivered.
        lambda: lone_flit(tail=False),
        lambda: lone_flit(tail=True),
        # The tail comes early: the packet ends there, its last word poisoned.
        lambda: raw(target, 4, False, [False, True], 2, True, "early tail"),
        lambda: raw(edge_target, 4, False, [False, True], 2, True, "early tail"),
        # The tail comes on the head of a packet of 3: the header alone, poisoned; the three
        # body flits after it are headless.
        lambda: raw(target, 3, True, [False, False, True], 0, True, "tail on head"),
        # No tail where the length ends (length 2, four flits): cut after 2 words, the second
        # poisoned; the last two flits are headless.
        lambda: raw(target, 2, False, [False, False, False, True], 2, True, "missing tail"),
        lambda: raw(edge_target, 2, False, [False, False, False, True], 2, True,
                    "missing tail"),
        # Length 0 without the tail flag: the header alone, poisoned.
        lambda: raw(target, 0, False, [], 0, True, "no tail, length 0"),
        # Destinations that route nowhere are dropped whole by the router where the route
        # ends: a corner next to this router, a corner across the mesh (dropped by the router
        # at the far end of row 0), an empty multicast rectangle.
        lambda: raw((0, 0), 3, False, [False, False, True], 0, False, "corner",
                    receivers=[]),
        lambda: raw((X + 1, 0), 2, False, [False, True], 0, False, "far corner",
                    receivers=[]),
        lambda: raw((2, 1), 1, False, [True], 0, False, "empty rectangle", last=(1, 1),
                    multicast=True, receivers=[]),
    ]

    def lone_flit(tail):
        word = bench.board.code.word(rng, src, 0xFFFF, 0xFF)
        source.flits.append(flit_value(fmt, word, tail=tail))
        bench.flits_injected += 1

    for _ in range(p["rounds"]):
        for _ in range(rng.randrange(1, 3)):
            good_packet()
        rng.choice(malformed_cases)()
    for case in malformed_cases:        # each at least once
        case()
        good_packet()
    for port in good_edges:
        for _ in range(p["rounds"]):
            e = bench.edge_sources[port]
            # Edge endpoints are not the multicast source.
            dst, last, multicast, receivers = bench.random_destination(multicast_ok=False)
            bench.edge_packet(e, dst, last, multicast, rng.randrange(6), receivers)

    await start_clock_and_reset(dut)
    await bench.run()
    errors = sum(1 << (y * X + x) for (x, y) in dropped)
    # Router (0, 0) took the malformed packets in; router (X - 1, 0) dropped the far corner.
    # A packet cut short by an early tail keeps the length in its header, so the routers after
    # the first see the same disagreement: those on its way (row 0, then column X - 1 up to
    # the target tile) may flag it too, no others.
    on_the_way = {(x, 0) for x in range(X)} | {(X - 1, y) for y in range(Y)}
    bench.check_end(malformed=1 << 0 | 1 << (X - 1),
                    malformed_allowed=sum(1 << (y * X + x) for x, y in on_the_way),
                    errors=errors, dropped=dropped)
    dut._log.info(f"NOC BAD INPUT {X}x{Y}: {sum(dropped.values())} messages dropped at "
                  f"{len(dropped)} interfaces, {bench.board.delivered} deliveries, "
                  f"{bench.flits_injected} flits, {bench.cycle} cycles in {bench.seconds:.1f} s")


@cocotb.test()
async def noc_second_multicast_source(dut):
    """Tile (0, 0), the multicast source, sends 16 words to the top row while tile (1, 0)
    broadcasts 16 words to every tile, every receiver always ready: two crossing trees that
    deadlocked the routers before the mesh had one multicast source. The broadcast must be
    dropped at tile (1, 0)'s interface (counted, sticky error), the first multicast must
    arrive, and nothing may wedge."""
    p = harness.params()
    fmt = FlitFormat(p["mesh_x"], p["mesh_y"], p["flit_width"])
    rng = make_rng(harness.seed())
    bench = Bench(dut, fmt, p["depth"], rng, set(), concurrent_multicast=True)
    mesh = bench.mesh
    bench.tile_message(0, 0, (1, 2), (2, 2), True, 16, mesh.rectangle((1, 2), (2, 2)))
    bench.tile_message(1, 0, (1, 1), (2, 2), True, 16, [])
    await start_clock_and_reset(dut)
    await bench.run(phases=False)
    bench.check_end(errors=1 << 1, dropped={(1, 0): 1})


# ---- pytest side --------------------------------------------------------------------------------

from rtl.config import TesseraConfig        # noqa: E402
from rtl.noc.network import Network         # noqa: E402


#: Flits of each mesh's scoreboard run. The 4x4 mesh's Python drives 16 interfaces and 16 edge
#: endpoints every cycle, 3.5 times the 2x2's work per cycle: 40,000 flits keep it to the
#: others' time (tessera bench noc loads it far longer).
FLITS = {(2, 2): 100_000, (4, 4): 40_000, (3, 2): 100_000}
MESHES = list(FLITS)


def _network(mesh_x, mesh_y):
    config = TesseraConfig(mesh_x=mesh_x, mesh_y=mesh_y)    # 128-bit flits, depth 4
    fmt = FlitFormat.from_config(config)
    params = {"mesh_x": mesh_x, "mesh_y": mesh_y, "flit_width": fmt.flit_width,
              "depth": config.buffer_depth}
    return Network(fmt, config.buffer_depth), f"noc_{mesh_x}x{mesh_y}", params


def _run(network, toplevel, testcase, parameters):
    # Python drives every port every cycle, so the model's speed hardly matters; an optimised
    # C++ build of the 4x4 mesh took 4.5 minutes of the suite.
    harness.run(network, toplevel=toplevel, test_module="cocotb_tests.test_noc",
                testcase=testcase, parameters=parameters, quick_build=True)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: f"{m[0]}x{m[1]}")
def test_noc_scoreboard(mesh):
    network, toplevel, params = _network(*mesh)
    _run(network, toplevel, "noc_scoreboard", {**params, "flits": FLITS[mesh]})


def test_noc_bad_input():
    network, toplevel, params = _network(3, 2)
    _run(network, toplevel, "noc_bad_input", {**params, "rounds": 40})


def test_noc_second_multicast_source():
    network, toplevel, params = _network(2, 2)
    _run(network, toplevel, "noc_second_multicast_source", params)

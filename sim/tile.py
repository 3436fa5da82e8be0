"""The compute tile's micro-ops (docs/tile.md) and their golden model: what a tile does with
each packet it receives, on an SRAM image of words, bit-exact with rtl/tiles/tile.py.

A micro-op is one NoC packet; its header's ``kind`` is the opcode and its words (``word_bits``
wide, the flit and SRAM width) are the operands:

========= ==== ============================================================================
micro-op  kind words
========= ==== ============================================================================
WRITE     0    ``addr``; then the data words, written to SRAM from ``addr`` on
MATMUL    1    ``mode | interleaved | blocks | tiles | rows``; ``w_addr | x_addr``;
               ``xs_addr | y_addr``; ``y_stride | groups``: y = W · x on the matmul engine,
               for ``groups`` activation groups of ``rows`` rows stored one after the other
               (group g's output n of row r at ``y_addr + r·y_stride + g·N + n``)
SEND      2    ``addr | count``; ``dst_x | dst_y | dst_addr``: send ``count`` SRAM words
               from ``addr`` as a WRITE packet (``dst_addr`` first) to ``(dst_x, dst_y)``
DONE      3    ``tag``: when every earlier micro-op has finished, send a DONE packet with
               ``tag`` back to the micro-op's sender
VECTOR    4    ``op | gated | length | limit``; ``a_addr | b_addr``; ``y_addr``; ``k1 | k2``:
               one pass of the vector unit (sim/vector.py ``Command``) over ``length``
               binary32 elements, one per word (its bits 0–31), from ``a_addr`` (and
               ``b_addr``); a writing pass puts its results at ``y_addr`` on, the other
               bits zero. The unit's registers (MEAN, SCALE, MAX) persist between VECTORs.
               A tile built without a vector unit answers it as an unknown micro-op.
ERROR     15   (sent by a tile) the error flags and the offending micro-op's kind
========= ==== ============================================================================

WRITE packets are executed as they arrive; MATMUL, SEND and DONE are queued and executed in
order, but a SEND ships its words while the micro-ops after it run (one SEND ships and one more
waits; a third waits for the first), and a MATMUL starts while the results of the one before
it are still being written (a SEND waits for the results it sends, a DONE for all); a VECTOR
waits for every MATMUL's results and runs to its end before the next micro-op. So a
program must not WRITE a region that a queued or running MATMUL or SEND still reads (the
driver waits for an answer first); a MATMUL or VECTOR must not write the region of either of
the last two SENDs before it; a VECTOR's results may overwrite its operands in place or
behind them, not ahead (result i is written after operand i is read); a MATMUL must not read or write the results region of the MATMUL before it, unless a
DONE or an ERROR answer lies between them (:class:`TileModel` raises :class:`ProgramHazard`);
and a MATMUL's result region must not overlap its operand regions (the engine re-reads the
activations for every engine tile while it writes results).

A packet with the NoC's ``poison`` mark (a router repaired it: the mark is on its last word, or
on its header when no words arrived; it may have fewer words than its header's ``length``) is
not executed but answered with ERROR (POISON), whatever else is wrong with it: its length and
words are not what was sent. Of a poisoned WRITE, the data words before the last are in SRAM
already (written on arrival, if the header's region fits the SRAM); the last is not written.
"""

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from .dequant import matmul_q8
from .gguf_blocks import FORMATS
from .vector import Command as VectorCommand, Op as VectorOp, VectorModel


__all__ = ["Kind", "Error", "TileGeometry", "TileModel", "ProgramHazard",
           "write_packet", "matmul_packet", "send_packet", "done_packet", "vector_packet",
           "weight_layout", "activation_layout", "unpack_fields", "pack_fields"]


class Kind(IntEnum):
    WRITE = 0
    MATMUL = 1
    SEND = 2
    DONE = 3
    VECTOR = 4
    ERROR = 15


class Error(IntEnum):
    """Bits of the ERROR packet's first word (and of the tile's sticky ``errors``)."""
    KIND = 0        # unknown micro-op
    LENGTH = 1      # a packet of the wrong length for its micro-op
    RANGE = 2       # a region beyond the SRAM
    SHAPE = 3       # a matmul the engine cannot take (mode, blocks, tiles, rows)
    MEMORY = 4      # an SRAM response with an uncorrectable error
    ENGINE = 5      # the matmul engine flagged its input
    POISON = 6      # a packet a router repaired (the NoC's poison mark)
    VECTOR = 7      # the vector unit met a non-finite operand, result or register value


#: SRAM words per beat of the engine's weight stream (two read ports).
WEIGHT_WORDS = 2

#: Operand fields: name → (word, offset, width).
FIELDS = {
    Kind.MATMUL: {"mode": (0, 0, 3), "interleaved": (0, 3, 1), "blocks": (0, 8, 16),
                  "tiles": (0, 24, 16), "rows": (0, 40, 8),
                  "w_addr": (1, 0, 32), "x_addr": (1, 32, 32),
                  "xs_addr": (2, 0, 32), "y_addr": (2, 32, 32),
                  "y_stride": (3, 0, 32), "groups": (3, 32, 8)},
    Kind.SEND: {"addr": (0, 0, 32), "count": (0, 32, 8),
                "dst_x": (1, 0, 8), "dst_y": (1, 8, 8), "dst_addr": (1, 32, 32)},
    Kind.DONE: {"tag": (0, 0, 32)},
    Kind.VECTOR: {"op": (0, 0, 5), "gated": (0, 5, 1), "length": (0, 16, 16),
                  "limit": (0, 32, 16), "a_addr": (1, 0, 32), "b_addr": (1, 32, 32),
                  "y_addr": (2, 0, 32), "k1": (3, 0, 32), "k2": (3, 32, 32)},
}

#: Words of each queued micro-op.
WORDS = {kind: 1 + max(w for w, _, _ in fields.values()) for kind, fields in FIELDS.items()}


def pack_fields(kind, values):
    words = [0] * WORDS[kind]
    for name, (word, offset, width) in FIELDS[kind].items():
        value = int(values.get(name, 0))
        if not 0 <= value < (1 << width):
            raise ValueError(f"{kind.name} field {name} must fit {width} bits, not {value}")
        words[word] |= value << offset
    return words


def unpack_fields(kind, words):
    return {name: (int(words[word]) >> offset) & ((1 << width) - 1)
            for name, (word, offset, width) in FIELDS[kind].items()}


@dataclass(frozen=True)
class TileGeometry:
    """What a tile is built with: its array and its SRAM. The defaults are a tile of 64-bit
    words, which the model's tests are written for; :meth:`from_config` gives a
    configuration's (the default configuration's words are 128 bits)."""
    rows: int = 8
    cols: int = 8
    words: int = 4096               # sram_banks · sram_bank_depth
    word_bits: int = 64             # sram_width = flit_width
    packed: bool = True             # the array has the packed (two-lane) formats
    vector: bool = True             # a vector unit (tile_vector)
    vector_max_length: int = 16384

    @classmethod
    def from_config(cls, config):
        from rtl.config import PACKED_FORMATS
        return cls(rows=config.array_rows, cols=config.array_cols,
                   words=config.sram_banks * config.sram_bank_depth,
                   word_bits=config.sram_width,
                   packed=any(f in PACKED_FORMATS for f in config.weight_formats),
                   vector=config.tile_vector, vector_max_length=config.vector_max_length)

    def outputs_per_tile(self, fmt):
        return self.cols * (2 if fmt != "Q8_0" and self.packed else 1)

    @property
    def xs_words(self):
        """SRAM words of one block's activation scales (``rows`` pairs of 16-bit fields)."""
        return self.rows * 32 // self.word_bits

    def groups_share_weights(self, fmt, tiles, blocks):
        """Whether one MATMUL can run these weights (``tiles`` engine tiles of ``blocks``
        32-element blocks) against several groups: they are read once per group as one job,
        so they must end on a whole beat of the engine's weight stream (WEIGHT_WORDS words)."""
        n = tiles * self.outputs_per_tile(fmt)
        return n * blocks * _bytes_per_block32(fmt) % (WEIGHT_WORDS * self.word_bits // 8) == 0


def _bytes_per_block32(fmt):
    elements, size = FORMATS[fmt][:2]
    return size * 32 / elements


def weight_layout(geometry, fmt, w_raw):
    """SRAM words of weight rows ``w_raw`` (uint8, N × row bytes, N a multiple of G) in the
    engine's order (docs/matmul.md): per tile of G rows, per block along K, each row's block."""
    g = geometry.outputs_per_tile(fmt)
    elements, size = FORMATS[fmt][:2]
    rows = np.asarray(w_raw, dtype=np.uint8)
    n = rows.shape[0]
    blocks = rows.reshape(n // g, g, -1, size)             # tile, row, block, bytes
    stream = blocks.transpose(0, 2, 1, 3).reshape(-1)      # tile, block, row, bytes
    return _words(stream, geometry.word_bits)


def _words(byte_stream, word_bits):
    per = word_bits // 8
    padded = np.zeros(-(-byte_stream.size // per) * per, dtype=np.uint8)
    padded[:byte_stream.size] = byte_stream
    return [int.from_bytes(padded[i:i + per].tobytes(), "little")
            for i in range(0, padded.size, per)]


def activation_layout(geometry, x_codes, d_x):
    """SRAM words of Q8_0 activations: ``x_codes`` (M × K int8) as one word per k-step (row r
    in byte r, zero rows from M on), and ``d_x`` (M × K/32 raw fp16) with the code sums as
    ``xs_words`` words per block (row r's d in bits 32r..32r+15, its sum above)."""
    m, k = x_codes.shape
    steps = np.zeros((k, geometry.word_bits // 8), dtype=np.uint8)     # a word per k-step
    steps[:, :m] = np.asarray(x_codes, dtype=np.int8).T.view(np.uint8)
    x_words = _words(steps.reshape(-1), geometry.word_bits)
    sums = np.asarray(x_codes, dtype=np.int64).reshape(m, k // 32, 32).sum(axis=2)
    xs = np.zeros((k // 32, geometry.rows), dtype=np.uint32)
    xs[:, :m] = (np.asarray(d_x, dtype=np.uint32).T
                 | ((sums.T & 0xFFFF).astype(np.uint32) << 16))
    xs_words = _words(xs.reshape(-1).view(np.uint8), geometry.word_bits)
    return x_words, xs_words


class ProgramHazard(ValueError):
    """A program whose result would depend on timing: a MATMUL that writes a region a SEND
    before it may still be reading, or that reads or writes the region the MATMUL before it
    may still be writing."""

#: SENDs that may still be reading SRAM when a MATMUL starts: the one the send unit ships and
#: the one waiting for it.
SENDS_IN_FLIGHT = 2


@dataclass
class TileModel:
    """One tile: its SRAM image and its queue; :meth:`receive` takes a packet and returns the
    packets the tile sends in reply, in order."""
    geometry: TileGeometry = field(default_factory=TileGeometry)
    x: int = 1
    y: int = 1

    def __post_init__(self):
        self.sram = np.zeros(self.geometry.words, dtype=object)
        self.errors = 0
        # The regions of the SENDs that may still be shipping: the last SENDS_IN_FLIGHT, until
        # an answer that waits for them (DONE, ERROR).
        self.sending = []
        # The results region of the last MATMUL, while it may still be writing it.
        self.writing = None
        self.vector = VectorModel(self.geometry.vector_max_length)

    def _error(self, bit, kind, src):
        self.errors |= 1 << bit
        self.sending = []
        self.writing = None
        return [(src, Kind.ERROR, [(1 << bit) | (int(kind) << 8)])]

    def receive(self, kind, words, src, poison=False, *, length=None):
        """Execute the micro-op of a packet and return the packets the tile sends, as
        (destination, kind, words).

        Parameters
        ----------
        kind : int
        words : list of int
            The words that arrived.
        src : tuple of int
            The sender (field coordinates).
        poison : bool
            The packet carries the NoC's poison mark: answered with ERROR (POISON).
        length : int or None
            The header's ``length``, when a poisoned packet arrived cut short; the words'
            count by default. (It decides whether a poisoned WRITE's region fits the SRAM.)
        """
        words = [int(w) for w in words]
        size = self.geometry.words
        length = len(words) if length is None else length
        if length < len(words) or (length > len(words) and not poison):
            raise ValueError(f"Packet length must be {len(words)}, or more for a poisoned "
                             f"packet cut short, not {length}")
        if poison:
            # A WRITE's words went to SRAM as they arrived: all but the poisoned last one.
            if kind == Kind.WRITE and len(words) > 1:
                addr = words[0] & 0xFFFFFFFF
                if addr + length - 1 <= size:
                    self.sram[addr:addr + len(words) - 2] = words[1:-1]
            return self._error(Error.POISON, kind, src)
        if kind == Kind.WRITE:
            if len(words) < 1:
                return self._error(Error.LENGTH, kind, src)
            addr, data = words[0] & 0xFFFFFFFF, words[1:]
            if data and addr + len(data) > size:
                return self._error(Error.RANGE, kind, src)
            self.sram[addr:addr + len(data)] = data
            return []
        if kind not in WORDS or (kind == Kind.VECTOR and not self.geometry.vector):
            return self._error(Error.KIND, kind, src)
        if len(words) != WORDS[kind]:
            return self._error(Error.LENGTH, kind, src)
        f = unpack_fields(kind, words)
        if kind == Kind.DONE:
            self.sending = []
            self.writing = None
            return [(src, Kind.DONE, [f["tag"]])]
        if kind == Kind.SEND:
            # The answer is a WRITE packet: an address word and at most 254 data words.
            if f["addr"] + f["count"] > size or not 1 <= f["count"] <= 254:
                return self._error(Error.RANGE, kind, src)
            data = [int(w) for w in self.sram[f["addr"]:f["addr"] + f["count"]]]
            self.sending = self.sending[1 - SENDS_IN_FLIGHT:] + [(f["addr"],
                                                                  f["addr"] + f["count"])]
            return [((f["dst_x"], f["dst_y"]), Kind.WRITE, [f["dst_addr"]] + data)]
        if kind == Kind.VECTOR:
            return self._vector(f, src)
        return self._matmul(f, src)

    def vector_command(self, f):
        """The vector unit's command of a VECTOR's fields, or None when the tile rejects it
        (SHAPE): an op beyond the unit's, a length of 0 or above ``vector_max_length``, an odd
        length for ROPE."""
        if f["op"] >= len(VectorOp):
            return None
        command = VectorCommand(VectorOp(f["op"]), f["length"], k1=f["k1"], k2=f["k2"],
                                limit=f["limit"], gated=bool(f["gated"]))
        return command if self.vector.valid(command) else None

    def vector_regions(self, f, command):
        """(start, end) of the a, b and result regions a VECTOR uses (b and the results only
        when its op reads or writes them)."""
        n = command.length
        regions = {"a": (f["a_addr"], f["a_addr"] + n)}
        if command.reads_b:
            regions["b"] = (f["b_addr"], f["b_addr"] + n)
        if command.writes:
            regions["y"] = (f["y_addr"], f["y_addr"] + n)
        return regions

    def _vector(self, f, src):
        command = self.vector_command(f)
        if command is None:
            return self._error(Error.SHAPE, Kind.VECTOR, src)
        regions = self.vector_regions(f, command)
        if any(end > self.geometry.words for _, end in regions.values()):
            return self._error(Error.RANGE, Kind.VECTOR, src)
        if "y" in regions:
            y0, y1 = regions["y"]
            for a, b in self.sending:
                if y0 < b and a < y1:
                    raise ProgramHazard(f"VECTOR writes SRAM {y0}..{y1 - 1}, which a SEND "
                                        f"before it ({a}..{b - 1}) may still be reading")
            # Result i is written after operand i is read, never before: in place or behind
            # an operand is safe, ahead of it not.
            for name in ("a", "b"):
                if name in regions:
                    a, b = regions[name]
                    if y0 < b and a < y1 and y0 > a:
                        raise ProgramHazard(f"VECTOR writes SRAM {y0}..{y1 - 1}, ahead of "
                                            f"its operand {name} ({a}..{b - 1}) that it "
                                            f"still reads")
        # It waits for every MATMUL's results and finishes before the next micro-op.
        self.writing = None
        operands = {name: np.array([int(w) & 0xFFFFFFFF for w in self.sram[a:b]],
                                   dtype=np.uint32)
                    for name, (a, b) in regions.items() if name != "y"}
        self.vector.nonfinite = False
        out = self.vector.run(command, operands["a"], operands.get("b"))
        if "y" in regions:
            y0, y1 = regions["y"]
            self.sram[y0:y1] = [int(v) for v in out]
        if self.vector.nonfinite:
            return self._error(Error.VECTOR, Kind.VECTOR, src)
        return []

    def matmul_shape_ok(self, f):
        from rtl.config import WEIGHT_FORMATS
        g = self.geometry
        if f["mode"] >= len(WEIGHT_FORMATS):
            return False
        fmt = WEIGHT_FORMATS[f["mode"]]
        if fmt != "Q8_0" and not g.packed:
            return False
        if not (f["blocks"] > 0 and f["tiles"] > 0 and 1 <= f["rows"] <= g.rows
                and 1 <= f["groups"] and f["tiles"] * f["groups"] < 1 << 16
                and not (fmt == "TQ2_0" and f["blocks"] % 8)):
            return False
        return f["groups"] == 1 or g.groups_share_weights(fmt, f["tiles"], f["blocks"])

    def matmul_regions(self, f):
        """(start, end) of the weight, activation, scale and result regions (words)."""
        from rtl.config import WEIGHT_FORMATS
        g = self.geometry
        fmt = WEIGHT_FORMATS[f["mode"]]
        n = f["tiles"] * g.outputs_per_tile(fmt)
        w_bytes = int(n * f["blocks"] * _bytes_per_block32(fmt))
        per = g.word_bits // 8
        groups = f["groups"]
        return [(f["w_addr"], f["w_addr"] + -(-w_bytes // per)),
                (f["x_addr"], f["x_addr"] + 32 * f["blocks"] * groups),
                (f["xs_addr"], f["xs_addr"] + g.xs_words * f["blocks"] * groups),
                (f["y_addr"], f["y_addr"] + (f["rows"] - 1) * f["y_stride"] + n * groups)]

    def _matmul(self, f, src):
        from rtl.config import WEIGHT_FORMATS
        g = self.geometry
        if not self.matmul_shape_ok(f):
            return self._error(Error.SHAPE, Kind.MATMUL, src)
        if any(end > g.words for _, end in self.matmul_regions(f)):
            return self._error(Error.RANGE, Kind.MATMUL, src)
        fmt = WEIGHT_FORMATS[f["mode"]]
        (w0, w1), (x0, _), (s0, _), (y0, y1) = self.matmul_regions(f)
        for a, b in self.sending:
            if y0 < b and a < y1:
                raise ProgramHazard(f"MATMUL writes SRAM {y0}..{y1 - 1}, which a SEND before "
                                    f"it ({a}..{b - 1}) may still be reading")
        if self.writing:
            a, b = self.writing
            for c, d in self.matmul_regions(f):
                if c < b and a < d:
                    raise ProgramHazard(f"MATMUL uses SRAM {c}..{d - 1}, which the MATMUL "
                                        f"before it ({a}..{b - 1}) may still be writing")
        self.writing = (y0, y1)
        per = g.word_bits // 8
        gsize = g.outputs_per_tile(fmt)
        elements, size = FORMATS[fmt][:2]
        n, k = f["tiles"] * gsize, 32 * f["blocks"]
        stream = b"".join(int(w).to_bytes(per, "little") for w in self.sram[w0:w1])
        stream = np.frombuffer(stream, dtype=np.uint8)[:n * k // elements * size]
        blocks = stream.reshape(f["tiles"], k // elements, gsize, size)
        w_raw = blocks.transpose(0, 2, 1, 3).reshape(n, -1)
        for group in range(f["groups"]):
            codes, d_x = self._activations(f, x0 + group * k,
                                           s0 + group * g.xs_words * f["blocks"])
            y = matmul_q8(fmt, w_raw, codes, d_x, interleaved=bool(f["interleaved"]))
            for r in range(f["rows"]):
                base = f["y_addr"] + r * f["y_stride"] + group * n
                self.sram[base:base + n] = [int(v) for v in y[r].view(np.uint32)]
        # The engine's unpacker flags a weight block with an inf/NaN scale (the results are
        # still IEEE's): reported after the MATMUL.
        if _nonfinite_scales(fmt, w_raw):
            return self._error(Error.ENGINE, Kind.MATMUL, src)
        return []

    def _activations(self, f, x0, s0):
        g = self.geometry
        per = g.word_bits // 8
        m, k = f["rows"], 32 * f["blocks"]
        steps = b"".join(int(w).to_bytes(per, "little") for w in self.sram[x0:x0 + k])
        codes = np.frombuffer(steps, dtype=np.int8).reshape(k, -1)[:, :m].T
        xs = b"".join(int(w).to_bytes(per, "little")
                      for w in self.sram[s0:s0 + g.xs_words * f["blocks"]])
        pairs = np.frombuffer(xs, dtype=np.uint32).reshape(f["blocks"], g.rows)
        d_x = (pairs[:, :m] & 0xFFFF).T.astype(np.uint16)
        return codes, d_x


def _nonfinite_scales(fmt, w_raw):
    from .gguf_blocks import split_blocks
    blocks = split_blocks(fmt, w_raw)
    if fmt == "MXFP4":
        return bool(np.any(np.asarray(blocks.e) == 0xFF))
    fields = [blocks.d] + ([blocks.m] if fmt == "Q4_1" else [])
    return any(bool(np.any((np.asarray(f).view(np.uint16) & 0x7C00) == 0x7C00))
               for f in fields)


def write_packet(addr, data):
    return Kind.WRITE, [addr] + [int(d) for d in data]


def matmul_packet(**fields):
    """A MATMUL; ``groups`` is 1 unless given."""
    return Kind.MATMUL, pack_fields(Kind.MATMUL, {"groups": 1, **fields})


def send_packet(**fields):
    return Kind.SEND, pack_fields(Kind.SEND, fields)


def done_packet(tag):
    return Kind.DONE, pack_fields(Kind.DONE, {"tag": tag})


def vector_packet(**fields):
    """A VECTOR; ``limit`` is ``length`` (nothing masked) and ``k1`` binary32 1.0 unless
    given."""
    fields = {"limit": fields.get("length", 0), "k1": 0x3F800000, **fields}
    return Kind.VECTOR, pack_fields(Kind.VECTOR, fields)

"""Driver of the tile mesh: a distributed matmul y = W · x as a stream of micro-op packets
entering at the edge port, and the golden model of the whole mesh (docs/tile.md).

**Split.** x's rows come in *groups* of up to ``rows`` (the array's). With at least as many
groups as the mesh has rows, each mesh row is a *band* that takes its share of the groups
(in order, as evenly as they go) and the N output rows of W are split across the X tiles of
a band (tensor parallel within a band, data parallel across bands; with fewer groups than
rows but enough for the columns, the same with rows and columns swapped); with fewer groups,
one band of all T = X·Y tiles. Tile s of a band computes W's rows [s·N/S, (s+1)·N/S) for its
band's groups; its weights stream into its SRAM one *chunk* (G rows, one engine tile) at a
time, into two buffers in turn, while it computes on the other. The tiles that share a slice
(a mesh column) are a rectangle, so a chunk enters the mesh once and is multicast to them.

**Activations.** x (M × K) is quantized to Q8_0 at the edge (``gguf.quants.quantize``) and
multicast to every tile of its band, each group in its own SRAM region. As many groups as the
SRAM holds beside the buffers are *resident* at a time; the matmul makes one pass over the
weights per set of resident groups.

**Order and waits.** Each pass multicasts its groups' activations; then, for each chunk index
j and each slice s in turn: WRITE chunk j of slice s's weights to the slice's tiles, then on
each of them one MATMUL over its band's resident groups (a group with fewer rows, the last of
x, gets a MATMUL of its own) and the SENDs of the tile's MATMUL before it, so that a MATMUL
computes while the one before writes its results and they leave (the last MATMUL's SENDs end
the pass). A chunk's weights thus enter the mesh once per pass, and the tile's engine streams
the chunk once per group without a pause between groups (prefill's M = 32 is four groups at
8 rows; with K = 576 two fit the default tile's SRAM beside the buffers: two passes on one
tile, one on the 2×2, whose mesh rows take two groups each). Consecutive MATMULs of a tile
write its four result buffers in turn: a MATMUL must not write what the last two SENDs before
it may still be shipping, nor what the MATMUL before it may still be writing (docs/tile.md).
Before the weights of chunk j + 2 go to a slice, the edge waits until each of its tiles' last
SEND of chunk j has arrived (the buffer it reuses is then free); before a pass's activations,
until every tile has answered every SEND. A tile executes its micro-ops in order and answers
in order, so counting each tile's answers is enough.
"""

from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from .gguf_blocks import FORMATS, code_values, split_blocks
from .tile import (SENDS_IN_FLIGHT, Kind, TileGeometry, TileModel, activation_layout,
                   matmul_packet, send_packet, weight_layout)


__all__ = ["EDGE", "Packet", "Wait", "MatmulProgram", "MeshModel", "MAX_WORDS"]

#: Field coordinates of the edge port (rtl/tile_mesh.py).
EDGE = (0, 1)

#: Words of one packet (the NoC's 8-bit length field).
MAX_WORDS = 255

#: Result buffers a tile's MATMULs write in turn. A MATMUL's SENDs follow the next MATMUL, so
#: when MATMUL n starts, the last SENDS_IN_FLIGHT SENDs (sim.tile) may be those of MATMULs
#: n − 2 and n − 3 (one SEND each), and MATMUL n − 1 may still be writing.
RESULT_BUFFERS = SENDS_IN_FLIGHT + 2


@dataclass(frozen=True)
class Packet:
    """A packet from the edge: to tile field ``dst`` (or the rectangle ``dst``–``last`` when
    ``multicast``), micro-op ``kind``, operand ``words``."""
    dst: tuple
    kind: int
    words: tuple
    multicast: bool = False
    last: tuple = None


@dataclass(frozen=True)
class Wait:
    """The edge sends nothing more until tile ``tile`` (field coordinates) has sent
    ``answers`` packets to the edge since the program began."""
    tile: tuple
    answers: int


@dataclass
class MatmulProgram:
    """The packets (and waits) of y = W · x on a mesh of ``mesh_x × mesh_y`` tiles of
    ``geometry``; :meth:`result` assembles y from the edge's received packets."""
    fmt: str
    w_raw: np.ndarray
    x: np.ndarray
    mesh_x: int = 2
    mesh_y: int = 2
    geometry: TileGeometry = field(default_factory=TileGeometry)

    def __post_init__(self):
        from rtl.config import mode_code
        g = self.geometry
        self.w_raw = np.asarray(self.w_raw, dtype=np.uint8)
        self.x = np.asarray(self.x, dtype=np.float32)
        self.n, self.k = self.w_raw.shape[0], self.x.shape[1]
        self.m = self.x.shape[0]
        self.per_chunk = g.outputs_per_tile(self.fmt)
        self.bands = self._bands(-(-self.m // g.rows))
        slices = len(self.bands[0])
        if self.n % (slices * self.per_chunk):
            raise ValueError(f"{self.n} weight rows do not split into {slices} tiles of whole "
                             f"{self.per_chunk}-row chunks")
        elements = FORMATS[self.fmt][0]
        if self.k % max(32, elements):
            raise ValueError(f"K = {self.k} is not a whole number of {self.fmt} blocks")
        self.rows_per_tile = self.n // slices
        self.chunks = self.rows_per_tile // self.per_chunk
        blocks = self.k // 32
        chunk_words = len(weight_layout(g, self.fmt, self.w_raw[:self.per_chunk]))
        # Groups of activation rows, dealt to the bands in order, as evenly as they go.
        groups = [(r0, min(g.rows, self.m - r0)) for r0 in range(0, self.m, g.rows)]
        share, extra = divmod(len(groups), len(self.bands))
        ends = np.cumsum([share + (b < extra) for b in range(len(self.bands))])
        self.band_groups = [groups[end - share - (b < extra):end] for b, end in enumerate(ends)]
        # SRAM map of every tile: the resident groups' activations, their scales, the result
        # buffers (a chunk's results of every resident group) and two weight buffers. As
        # many groups stay resident as the SRAM holds.
        groups = len(self.band_groups[0])
        per_group = self.k + blocks * g.xs_words + RESULT_BUFFERS * g.rows * self.per_chunk
        buffers = 2 * chunk_words
        self.resident = min(groups, (g.words - buffers) // per_group)
        if self.resident < 1:
            raise ValueError(f"a {self.fmt} matmul with K = {self.k} needs "
                             f"{per_group + buffers} SRAM words per tile; the tile has "
                             f"{g.words}")
        self.x_addr = tuple(i * self.k for i in range(self.resident))
        xs0 = self.resident * self.k
        self.xs_addr = tuple(xs0 + i * blocks * g.xs_words for i in range(self.resident))
        y0 = xs0 + self.resident * blocks * g.xs_words
        y_words = self.resident * g.rows * self.per_chunk
        self.y_addr = tuple(y0 + i * y_words for i in range(RESULT_BUFFERS))
        w0 = y0 + RESULT_BUFFERS * y_words
        self.w_addr = (w0, w0 + chunk_words)
        self.mode = mode_code(self.fmt)
        xb = split_blocks("Q8_0", quantize(self.x, GGMLQuantizationType.Q8_0))
        self.codes = code_values("Q8_0", xb.codes).reshape(self.m, self.k)
        self.d_x = xb.d.view(np.uint16).reshape(self.m, blocks)
        self.items = self._build()

    def tile_fields(self):
        return [(tx + 1, ty + 1) for ty in range(self.mesh_y) for tx in range(self.mesh_x)]

    def _bands(self, groups):
        """The tiles as bands × slices: ``bands[b][s]`` computes slice s of W's rows for band
        b's groups of activation rows. A band is a mesh row (or column) when there are groups
        enough for each, so that a slice's tiles (a column, or a row) and a band's tiles are
        rectangles, each reached by one multicast; else one band of every tile."""
        x, y = self.mesh_x, self.mesh_y
        if y > 1 and groups >= y:
            return [[(tx + 1, ty + 1) for tx in range(x)] for ty in range(y)]
        if x > 1 and groups >= x:
            return [[(tx + 1, ty + 1) for ty in range(y)] for tx in range(x)]
        return [self.tile_fields()]

    @staticmethod
    def _to(tiles):
        """Packet keywords that reach ``tiles`` (a rectangle, in order) in one packet."""
        if len(tiles) == 1:
            return {"dst": tiles[0]}
        return {"dst": tiles[0], "multicast": True, "last": tiles[-1]}

    def _writes(self, addr, words, **to):
        out = []
        for i in range(0, len(words), MAX_WORDS - 1):
            part = [addr + i] + [int(v) for v in words[i:i + MAX_WORDS - 1]]
            out.append(Packet(kind=Kind.WRITE, words=tuple(part), **to))
        return out

    def _build(self):
        g = self.geometry
        items = []
        tiles = self.tile_fields()
        matmuls = {t: 0 for t in tiles}
        deferred = {t: [] for t in tiles}   # SENDs that follow the tile's next MATMUL
        emitted = {t: 0 for t in tiles}     # SENDs placed in the program: its answers
        # Each SEND in program order: (tile, first column, first row of each of its groups,
        # the rows [r0, r1) of the groups it carries).
        self.sends = []
        passes = -(-max(len(groups) for groups in self.band_groups) // self.resident)
        for p in range(passes):
            resident = [groups[p * self.resident:(p + 1) * self.resident]
                        for groups in self.band_groups]
            # Bands run out of groups in band order: the busy ones are the first.
            busy = [b for b, groups in enumerate(resident) if groups]
            if p:
                items += [Wait(t, emitted[t]) for t in tiles]
            for b in busy:
                for i, (r0, rows) in enumerate(resident[b]):
                    x_words, xs_words = activation_layout(g, self.codes[r0:r0 + rows],
                                                          self.d_x[r0:r0 + rows])
                    to = self._to(self.bands[b])
                    items += self._writes(self.x_addr[i], x_words, **to)
                    items += self._writes(self.xs_addr[i], xs_words, **to)
            # One MATMUL per run of groups with the same rows: the full groups, then the
            # last group of x if it is shorter; one MATMUL per group when the chunk's weights
            # cannot serve several (they do not end on a whole beat).
            runs = [[[i for i, (_, rows) in enumerate(groups) if rows == size]
                     for size in sorted({rows for _, rows in groups}, reverse=True)]
                    for groups in resident]
            if not g.groups_share_weights(self.fmt, 1, self.k // 32):
                runs = [[[i] for run in band for i in run] for band in runs]
            # done[t][j]: the answers from tile t that show chunk j's weights are no longer
            # read: up to the first SEND queued after the chunk's last MATMUL, because the
            # tile runs that SEND only once the MATMUL has taken all its inputs.
            done = {t: [] for t in tiles}
            unresolved = {t: [] for t in tiles}
            for j in range(self.chunks):
                for s in range(len(self.bands[0])):
                    readers = [self.bands[b][s] for b in busy]
                    if j >= 2:
                        for t in readers:
                            assert done[t][j - 2] is not None
                            items.append(Wait(t, done[t][j - 2]))
                    start = s * self.rows_per_tile + j * self.per_chunk
                    chunk = self.w_raw[start:start + self.per_chunk]
                    items += self._writes(self.w_addr[j % 2], weight_layout(g, self.fmt, chunk),
                                          **self._to(readers))
                    for b, t in zip(busy, readers):
                        for index, run in enumerate(runs[b]):
                            matmul, sends = self._matmul(
                                t, j, start, [resident[b][i] for i in run], run[0],
                                matmuls[t] % RESULT_BUFFERS)
                            matmuls[t] += 1
                            items.append(matmul)
                            if index == len(runs[b]) - 1:      # the chunk's last MATMUL
                                done[t].append(None)
                                unresolved[t].append(j)
                            # The SENDs of the MATMUL before: it finishes writing its results
                            # while this one computes.
                            items += self._emit(t, deferred, emitted, done, unresolved)
                            deferred[t] = sends
            for t in tiles:
                items += self._emit(t, deferred, emitted, done, unresolved)
        return items

    @staticmethod
    def _emit(t, deferred, emitted, done, unresolved):
        """Tile ``t``'s deferred SENDs, to go into the program now: the first of them is the
        answer that frees the weights of the chunks whose MATMULs came before."""
        sends, deferred[t] = deferred[t], []
        if sends:
            for j in unresolved[t]:
                done[t][j] = emitted[t] + 1
            unresolved[t].clear()
        emitted[t] += len(sends)
        return sends

    def _matmul(self, t, j, col0, groups, first, buffer):
        """A MATMUL of chunk ``j`` on tile ``t`` over resident ``groups`` (stored from
        resident index ``first`` on) into result buffer ``buffer``, and its SENDs: whole rows,
        as few packets as fit, of the groups' results side by side (y_stride = groups·G).
        Returns the MATMUL packet and the SEND packets."""
        rows = groups[0][1]
        y_addr, stride = self.y_addr[buffer], len(groups) * self.per_chunk
        kind, words = matmul_packet(
            mode=self.mode, blocks=self.k // 32, tiles=1, rows=rows, groups=len(groups),
            w_addr=self.w_addr[j % 2], x_addr=self.x_addr[first], xs_addr=self.xs_addr[first],
            y_addr=y_addr, y_stride=stride)
        matmul = Packet(t, kind, tuple(words))
        sends = []
        packets = -(-rows * stride // (MAX_WORDS - 1))
        per = -(-rows // packets)
        for r0 in range(0, rows, per):
            r1 = min(rows, r0 + per)
            kind, words = send_packet(addr=y_addr + r0 * stride, count=(r1 - r0) * stride,
                                      dst_x=EDGE[0], dst_y=EDGE[1], dst_addr=len(self.sends))
            sends.append(Packet(t, kind, tuple(words)))
            self.sends.append((t, col0, tuple(g0 for g0, _ in groups), r0, r1))
        return matmul, sends

    def packets(self):
        return [item for item in self.items if isinstance(item, Packet)]

    def weight_bytes(self):
        return int(self.w_raw.size)

    def result(self, received):
        """y (M × N binary32 bits) from the packets the edge received: ``(src, kind, words)``
        with the SEND answers among them. An ERROR answer, a SEND answer that is not the
        program's or a missing one raises ValueError."""
        y = np.zeros((self.m, self.n), dtype=np.uint32)
        seen = set()
        for src, kind, words in received:
            if kind == Kind.ERROR:
                raise ValueError(f"tile {src} answered a micro-op with ERROR "
                                 f"{int(words[0]):#x}")
            if kind != Kind.WRITE:
                continue
            index = int(words[0])
            t, c0, starts, r0, r1 = self.sends[index]
            if src != t or index in seen:
                raise ValueError(f"answer {index} from {src} does not belong there")
            seen.add(index)
            values = np.array([int(v) & 0xFFFFFFFF for v in words[1:]], dtype=np.uint32)
            values = values.reshape(r1 - r0, len(starts), self.per_chunk)
            for gi, g0 in enumerate(starts):
                y[g0 + r0:g0 + r1, c0:c0 + self.per_chunk] = values[:, gi]
        if len(seen) != len(self.sends):
            raise ValueError(f"{len(self.sends) - len(seen)} of {len(self.sends)} answers "
                             f"missing")
        return y


class MeshModel:
    """The golden model of a tile mesh: every packet from the edge through the TileModels in
    program order. :meth:`run` returns what the edge receives, as (src, kind, words)."""

    def __init__(self, mesh_x=2, mesh_y=2, geometry=None):
        geometry = geometry or TileGeometry()
        self.tiles = {(x + 1, y + 1): TileModel(geometry, x + 1, y + 1)
                      for y in range(mesh_y) for x in range(mesh_x)}

    def run(self, items):
        received = []
        for item in items:
            if not isinstance(item, Packet):
                continue
            if item.multicast:
                (x0, y0), (x1, y1) = item.dst, item.last
                targets = [t for t in self.tiles if x0 <= t[0] <= x1 and y0 <= t[1] <= y1]
            else:
                targets = [item.dst]
            for t in targets:
                for dst, kind, words in self.tiles[t].receive(item.kind, item.words, EDGE):
                    if dst != EDGE:
                        raise ValueError(f"tile {t} sent to {dst}, not to the edge")
                    received.append((t, kind, list(words)))
        return received

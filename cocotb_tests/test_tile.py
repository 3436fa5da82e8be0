"""The compute tile (rtl/tiles/tile.py) under Verilator: micro-op programs sent to it as NoC
packets, every reply packet compared in order, bit for bit, with the golden model's
(sim/tile.py ``TileModel``).

A *program* is a list of packets ``(src, kind, words)``; running each through one
``TileModel`` in order gives the reply packets ``(dst, kind, words)`` the tile must send, in
order (WRITEs execute as they arrive; MATMUL, SEND, DONE and the reports of bad packets are
queued and answered in the packets' order). The testbench offers a program's packets as the
network interface does (a header on ``i_header``, then its words on ``i``) with random idle
cycles, takes ``o_header`` and ``o`` with random stalls, cuts the replies into packets by their
headers' ``length`` and compares them with the model's: destination (field coordinates,
``last`` = ``dst``, no multicast), kind, ``length`` and every word. Then it waits for ``busy``
low, checks that nothing more arrives and that the sticky ``errors`` equal the model's.

Programs:

- per weight format: random gguf weights N = 2 tiles × G, K = 96 (TQ2_0: 256), gguf Q8_0
  activations of M = 1 and M = 5 rows (shared weights), WRITTEN in packets of at most 255
  words, two MATMULs, their results SENT back in packets of at most 254 words, a DONE; the
  model's results are first held to ``sim.dequant.matmul_q8`` on the same operands, so the
  SEND replies are checked against the matmul itself;
- back to back: a region WRITTEN and SENT back at once; two MATMULs queued (M = 8, a strided
  result), their SENDs, and a burst of SENDs and DONEs from several endpoints that overfills
  the queue, at full rate and under heavy stalls;
- VECTOR (when the tile has a vector unit): sim/vector.py's operators (RMSNorm, LayerNorm,
  softmax with a causal limit and over rows, SwiGLU, SiLU, GELU in both forms, RoPE, add,
  mul) run pass by pass as VECTORs on random vectors, each pass reading the earlier passes'
  results where the tile wrote them; each operator's result equals sim.vector's own and is
  SENT back; VECTORs over a MATMUL's results; non-finite operands (ERROR VECTOR);
- every kind of bad micro-op on its own between good ones (each must set its flag and be
  answered with the model's ERROR word; ``clear`` then clears it) and the limits that are not
  errors (regions ending exactly at the end of the SRAM);
- poisoned packets of every kind (the NoC's mark on a packet a router repaired: on its last
  word, or on its header when no words arrived; some cut short of their header's length), on
  their own between good ones and then many in a row: each is answered POISON, and SENDs of
  the regions show that a poisoned WRITE wrote the data words before its last and not the last
  (nothing when its header's region leaves the SRAM) and that a poisoned MATMUL wrote nothing.

Operand words carry random junk in the bits no field uses, which the tile must ignore.

``test_tile_throughput`` times prefill's steady state: two MATMULs of three activation groups
back to back must keep the MAC array taking a k-step in 85 % of the cycles, at each of four
random SRAM layouts (with 4 banks, layouts ranged from 81.4 to 89.5 %: one layout passed by
luck).

``test_tile_edge_cases`` runs the cases where this testbench first found the RTL and the model
apart (:func:`edge_case_programs`), settled since: they stay as regression tests. (A MATMUL
whose results overwrite its own operands was a sixth; the micro-op rules now forbid it.)
"""

import random
from dataclasses import dataclass, field

import cocotb
import numpy as np
import pytest
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from rtl.config import WEIGHT_FORMATS, mode_code
from sim.dequant import matmul_q8
from sim.gguf_blocks import code_values, split_blocks
from sim import vector as vec
from sim.tile import (FIELDS, Error, Kind, TileGeometry, TileModel, activation_layout,
                      done_packet, matmul_packet, send_packet, vector_packet, weight_layout)

from cocotb_tests import harness
from cocotb_tests.streams import StreamSink, StreamSource, Watchdog, make_rng, start_clock_and_reset


#: The west edge endpoint of row 0 (field coordinates): the default sender.
SENDER = (0, 1)
#: Data words per WRITE packet (255 words with the address; a packet has at most 255).
MAX_WRITE = 254
#: Words per SEND (its reply is a WRITE of 255 words with ``dst_addr``).
MAX_SEND = 254
#: Cycles without any port moving before a program is declared stuck (a MATMUL runs silently).
QUIET_LIMIT = 20000
#: Issue 8's prefill target: of the cycles from a MATMUL pair's first packet to the DONE after
#: it, the MAC array must take a k-step in at least this share (test_tile_throughput).
PREFILL_UTILISATION = 0.85
#: Random SRAM layouts test_tile_throughput times: the rate depends on which streams meet on a
#: bank, so one layout could pass by luck.
THROUGHPUT_LAYOUTS = 4


# ---- Operands ----------------------------------------------------------------------------------

def random_weights(rng, fmt, n, k):
    """``n × k`` random float32 weights quantized by gguf (as in test_dequant.py)."""
    w = (rng.standard_normal((n, k)) * rng.uniform(0.01, 1.0, (n, 1))).astype(np.float32)
    return quantize(w, getattr(GGMLQuantizationType, fmt))


def quantize_activations(x):
    """Q8_0 codes (M × K) and raw fp16 block scales (M × K/32) of ``x`` by gguf."""
    x = np.asarray(x, dtype=np.float32)
    blocks = split_blocks("Q8_0", quantize(x, GGMLQuantizationType.Q8_0))
    codes = code_values("Q8_0", blocks.codes).reshape(x.shape)
    return codes, blocks.d.view(np.uint16).reshape(x.shape[0], x.shape[1] // 32)


def with_junk(kind, words, prng, word_bits):
    """``words`` with random bits wherever no field of ``kind`` lies."""
    used = [0] * len(words)
    for w, offset, width in FIELDS[kind].values():
        used[w] |= ((1 << width) - 1) << offset
    return [int(v) | (prng.getrandbits(word_bits) & ~used[i]) for i, v in enumerate(words)]


def f32(bits_):
    return float(np.uint32(bits_ & 0xFFFFFFFF).view(np.float32))


# ---- Programs ----------------------------------------------------------------------------------

@dataclass
class Program:
    """Packets to send and the model's replies to them. ``replies`` holds
    ``(dst, kind, words, packet index)``; ``marks`` holds each packet's ``(poison, length)``
    (its header's length); ``errors`` is the model's sticky flags after the last packet;
    ``clear`` pulses the tile's ``clear`` (and clears the model's) afterwards; ``overlap``
    offers the words independently of the headers (:class:`Bench`)."""
    label: str
    model: TileModel
    prng: random.Random
    idle: float = 0.3
    stall: float = 0.3
    packets: list = field(default_factory=list)
    marks: list = field(default_factory=list)
    replies: list = field(default_factory=list)
    errors: int = 0
    clear: bool = False
    overlap: bool = False

    @property
    def word_bits(self):
        return self.model.geometry.word_bits

    def add(self, kind, words, src=SENDER, *, poison=False, length=None):
        """Send one packet (``poison``: with the NoC's mark, its header saying ``length`` when
        it arrives cut short); returns the model's replies to it."""
        index = len(self.packets)
        src = tuple(int(v) for v in src)
        words = [int(w) for w in words]
        self.packets.append((src, int(kind), words))
        self.marks.append((bool(poison), len(words) if length is None else length))
        new = [(tuple(int(v) for v in dst), int(k), [int(v) for v in w], index)
               for dst, k, w in self.model.receive(kind, words, src, poison, length=length)]
        self.replies += new
        return new

    def write(self, addr, data, src=SENDER, *, split=True):
        """WRITE ``data`` from ``addr`` in packets of at most MAX_WRITE data words (random sizes
        when ``split``), the address words with junk above their 32 bits."""
        data = [int(d) for d in data]
        start = 0
        while start < len(data):
            count = MAX_WRITE
            if split and self.prng.random() < 0.5:
                count = self.prng.randint(1, MAX_WRITE)
            count = min(count, len(data) - start)
            junk = self.prng.getrandbits(self.word_bits - 32) << 32
            assert not self.add(Kind.WRITE, [(addr + start) | junk] + data[start:start + count],
                                src)
            start += count

    def send(self, addr, count, dst=SENDER, src=SENDER, *, largest=MAX_SEND):
        """SEND ``count`` words from ``addr`` to ``dst`` in SENDs of at most ``largest`` words;
        returns the words the replies carry."""
        got = []
        start = 0
        while start < count:
            n = min(largest if self.prng.random() < 0.5 else self.prng.randint(1, largest),
                    count - start)
            kind, words = send_packet(addr=addr + start, count=n, dst_x=dst[0], dst_y=dst[1],
                                      dst_addr=self.prng.getrandbits(32))
            (reply,) = self.add(kind, with_junk(kind, words, self.prng, self.word_bits), src)
            assert reply[0] == tuple(dst) and reply[1] == Kind.WRITE and len(reply[2]) == n + 1
            got += reply[2][1:]
            start += n
        return got

    def done(self, src=SENDER):
        tag = self.prng.getrandbits(32)
        kind, words = done_packet(tag)
        (reply,) = self.add(kind, with_junk(kind, words, self.prng, self.word_bits), src)
        assert reply == (tuple(src), Kind.DONE, [tag], len(self.packets) - 1)

    def finish(self, clear=False):
        self.errors = self.model.errors
        self.clear = clear
        if clear:
            self.model.errors = 0
        return self


class Regions:
    """SRAM regions one after the other from ``start``, random gaps between them."""

    def __init__(self, prng, end, start=0):
        self.prng, self.end = prng, end
        self.cursor = start + prng.randrange(0, 40)

    def take(self, n):
        addr = self.cursor + self.prng.randrange(0, 24)
        self.cursor = addr + n
        assert self.cursor <= self.end, f"regions overflow the SRAM ({self.cursor} words)"
        return addr


@dataclass
class Job:
    """y = W · x of one format on random operands, and where its regions lie."""
    fmt: str
    m: int
    tiles: int
    blocks: int
    n: int
    w_raw: np.ndarray
    codes: np.ndarray
    d_x: np.ndarray
    expected: np.ndarray            # M × N binary32 bits, from sim.dequant.matmul_q8
    w_words: list
    x_words: list
    xs_words: list
    w_addr: int = 0
    x_addr: int = 0
    xs_addr: int = 0
    y_addr: int = 0
    y_stride: int = 0
    groups: int = 1                 # activation groups of m rows; expected is m × groups·n

    @property
    def span(self):
        """Results of one row: each group's N side by side."""
        return self.groups * self.n

    def fields(self, **overrides):
        f = {"mode": mode_code(self.fmt), "interleaved": 0, "blocks": self.blocks,
             "tiles": self.tiles, "rows": self.m, "w_addr": self.w_addr, "x_addr": self.x_addr,
             "xs_addr": self.xs_addr, "y_addr": self.y_addr, "y_stride": self.y_stride,
             "groups": self.groups}
        f.update(overrides)
        return f

    def describe(self):
        groups = f" × {self.groups} groups" if self.groups > 1 else ""
        return (f"{self.fmt} M={self.m}{groups} N={self.n} K={32 * self.blocks} "
                f"(w@{self.w_addr}, x@{self.x_addr}, xs@{self.xs_addr}, y@{self.y_addr} "
                f"stride {self.y_stride})")


def make_job(geometry, nrng, fmt, m, *, tiles=2, blocks=None, w_raw=None, groups=1):
    """A job of ``groups`` activation groups of ``m`` rows each (one MATMUL), stored one
    after the other; its expected results are matmul_q8's per group, side by side."""
    blocks = blocks or (8 if fmt == "TQ2_0" else 3)
    n, k = tiles * geometry.outputs_per_tile(fmt), 32 * blocks
    if w_raw is None:
        w_raw = random_weights(nrng, fmt, n, k)
    parts = []
    for _ in range(groups):
        x = (nrng.standard_normal((m, k)) * nrng.uniform(0.1, 4.0, (m, 1))).astype(np.float32)
        if m > 1:
            x[m - 1, :32] = 0       # an all-zero activation block: d = 0, sum = 0
        codes, d_x = quantize_activations(x)
        parts.append((codes, d_x, *activation_layout(geometry, codes, d_x),
                      matmul_q8(fmt, w_raw, codes, d_x).view(np.uint32).reshape(m, n)))
    codes, d_x = parts[0][:2]
    return Job(fmt, m, tiles, blocks, n, w_raw, codes, d_x,
               np.concatenate([p[4] for p in parts], axis=1),
               weight_layout(geometry, fmt, w_raw), sum((p[2] for p in parts), []),
               sum((p[3] for p in parts), []), y_stride=groups * n, groups=groups)


def with_weights(geometry, job, w_raw):
    """``job`` with other weights (same shape)."""
    assert job.groups == 1
    job.w_raw = w_raw
    job.w_words = weight_layout(geometry, job.fmt, w_raw)
    job.expected = matmul_q8(job.fmt, w_raw, job.codes, job.d_x).view(np.uint32) \
        .reshape(job.m, job.n)
    return job


def load(prog, job, regions, src=SENDER, *, weights=True, y_addr=None):
    """Place the job's regions and WRITE its operands (in random order)."""
    if weights:
        job.w_addr = regions.take(len(job.w_words))
    job.x_addr = regions.take(len(job.x_words))
    job.xs_addr = regions.take(len(job.xs_words))
    job.y_addr = (regions.take((job.m - 1) * job.y_stride + job.span) if y_addr is None
                  else y_addr)
    writes = [(job.x_addr, job.x_words), (job.xs_addr, job.xs_words)]
    if weights:
        writes.append((job.w_addr, job.w_words))
    prog.prng.shuffle(writes)
    for addr, words in writes:
        prog.write(addr, words, src)


def matmul(prog, job, src=SENDER):
    """Queue the job's MATMUL; the model's results must be sim.dequant.matmul_q8's."""
    kind, words = matmul_packet(**job.fields())
    assert not prog.add(kind, with_junk(kind, words, prog.prng, prog.word_bits), src)
    sram = prog.model.sram
    for r in range(job.m):
        base = job.y_addr + r * job.y_stride
        got = [int(v) for v in sram[base:base + job.span]]
        assert got == [int(v) for v in job.expected[r]], \
            f"the model's MATMUL differs from sim.dequant.matmul_q8: {job.describe()} row {r}"


def send_results(prog, job, dst=SENDER, src=SENDER):
    """SEND the job's results to ``dst``: the whole region when its rows are contiguous, else
    row by row; the replies must carry matmul_q8's results."""
    if job.y_stride == job.span:
        got = prog.send(job.y_addr, job.m * job.span, dst, src)
    else:
        got = []
        for r in range(job.m):
            got += prog.send(job.y_addr + r * job.y_stride, job.span, dst, src)
    assert got == [int(v) for v in job.expected.reshape(-1)]


def endpoints(mesh_x, mesh_y):
    """Field coordinates of every tile and edge endpoint of the mesh (the senders)."""
    tiles = [(x, y) for x in range(1, mesh_x + 1) for y in range(1, mesh_y + 1)]
    edges = ([(0, y) for y in range(1, mesh_y + 1)] + [(mesh_x + 1, y)
                                                        for y in range(1, mesh_y + 1)]
             + [(x, 0) for x in range(1, mesh_x + 1)] + [(x, mesh_y + 1)
                                                         for x in range(1, mesh_x + 1)])
    return edges + tiles


def format_programs(geometry, model, nrng, prng, senders):
    """Per weight format: M = 1 and M = 5 on shared weights, written, multiplied, sent back."""
    programs = []
    rates = [(0.3, 0.3), (0.0, 0.0), (0.5, 0.2), (0.2, 0.6), (0.3, 0.3)]
    for index, fmt in enumerate(WEIGHT_FORMATS):
        src = SENDER if index == 0 else prng.choice(senders)
        idle, stall = rates[index % len(rates)]
        prog = Program(f"{fmt} program (from {src}, idle {idle}, stall {stall})", model, prng,
                       idle, stall)
        regions = Regions(prng, geometry.words, start=prng.randrange(0, 1024))
        first = make_job(geometry, nrng, fmt, 1)
        second = make_job(geometry, nrng, fmt, 5, w_raw=first.w_raw)
        jobs = [first, second]
        # In every other format, three groups of all the array's rows on the same weights in
        # one MATMUL (groups do not depend on the format but for the weight job's end).
        if index % 2 == 0:
            jobs.append(make_job(geometry, nrng, fmt, geometry.rows, w_raw=first.w_raw,
                                 groups=3))
            if index == 2:
                jobs[-1].y_stride += 3      # rows apart: SENT row by row
        load(prog, first, regions, src)
        for job in jobs[1:]:
            job.w_addr = first.w_addr
            load(prog, job, regions, src, weights=False)
        for job in jobs:
            matmul(prog, job, src)
            send_results(prog, job, src, src)
        prog.done(src)
        prog.label += ": " + "; ".join(job.describe() for job in jobs)
        programs.append(prog.finish())
    return programs


def back_to_back_programs(geometry, model, nrng, prng, senders):
    programs = []
    size = geometry.words
    # A region written and sent back at once, with nothing queued: the SEND's reads follow
    # the last written word within a few cycles. Then one word, and the last words of the SRAM.
    # (A program must not WRITE what a queued SEND still reads: each WRITE a region of its own.)
    prog = Program("WRITE then SEND at once (full rate)", model, prng, 0.0, 0.0)
    addr = prng.randrange(0, size - 2 * MAX_WRITE - 16)
    data = [prng.getrandbits(prog.word_bits) for _ in range(MAX_WRITE)]
    prog.write(addr, data, split=False)
    assert prog.send(addr, MAX_WRITE, largest=MAX_SEND) == data
    prog.write(addr + MAX_WRITE + 7, [prng.getrandbits(prog.word_bits)], split=False)
    prog.send(addr + MAX_WRITE + 7, 1)
    prog.write(size - 10, [prng.getrandbits(prog.word_bits) for _ in range(10)], split=False)
    prog.send(size - 10, 10)
    prog.done()
    programs.append(prog.finish())

    for label, idle, stall in (("full rate", 0.0, 0.0), ("heavy stalls", 0.5, 0.7)):
        prog = Program(f"back to back ({label})", model, prng, idle, stall)
        regions = Regions(prng, size, start=prng.randrange(0, 512))
        fmt_a, fmt_b = prng.sample(WEIGHT_FORMATS, 2)
        a = make_job(geometry, nrng, fmt_a, geometry.rows, tiles=2)
        b = make_job(geometry, nrng, fmt_b, 3, tiles=1)
        b.y_stride = b.n + 5
        load(prog, a, regions)
        load(prog, b, regions)
        matmul(prog, a)
        matmul(prog, b)
        send_results(prog, a)
        send_results(prog, b)
        prog.done()
        # More queued micro-ops than the queue holds, from several endpoints.
        for _ in range(14):
            src = prng.choice(senders)
            if prng.random() < 0.5:
                prog.done(src)
            else:
                count = prng.randint(1, 3)
                prog.send(a.y_addr + prng.randrange(0, a.m * a.n - count), count,
                          prng.choice(senders), src)
        prog.done()
        prog.label += f": {a.describe()}; {b.describe()}"
        programs.append(prog.finish())
    return programs


def bad_programs(geometry, model, nrng, prng, senders):
    """Each bad micro-op on its own between good ones, then ``clear``; and the limits that are
    not errors."""
    size = geometry.words
    programs = []
    setup = Program("bad micro-ops: setup", model, prng)
    regions = Regions(prng, size - 512)
    jobs = [make_job(geometry, nrng, "Q4_1", 3, tiles=1, blocks=2),
            make_job(geometry, nrng, "TQ2_0", 2, tiles=1, blocks=8)]
    load(setup, jobs[0], regions)
    # The second job's results end exactly at the end of the SRAM.
    load(setup, jobs[1], regions, y_addr=size - 2 * jobs[1].n)
    setup.done()
    programs.append(setup.finish())

    q4 = jobs[0]
    w_end = len(q4.w_words)

    def mm(**overrides):
        return matmul_packet(**q4.fields(**overrides))

    def snd(**fields):
        return send_packet(**{"dst_x": SENDER[0], "dst_y": SENDER[1], **fields})

    def vp(**fields):
        # An ADD of 64 elements within the SRAM unless changed.
        return vector_packet(**{"op": vec.Op.ADD, "length": 64, "a_addr": 0, "b_addr": 100,
                                "y_addr": 200, **fields})

    noise = lambda n: [prng.getrandbits(geometry.word_bits) for _ in range(n)]  # noqa: E731
    bad = [
        ("unknown kind 7 with 2 words", (7, noise(2)), Error.KIND),
        ("unknown kind 5 with no words", (5, []), Error.KIND),
        ("an ERROR packet sent to the tile", (Kind.ERROR, noise(1)), Error.KIND),
        ("unknown kind 14 with 40 words", (14, noise(40)), Error.KIND),
        ("MATMUL with 3 words", (Kind.MATMUL, mm()[1][:3]), Error.LENGTH),
        ("MATMUL with 5 words", (Kind.MATMUL, mm()[1] + noise(1)), Error.LENGTH),
        ("SEND with 1 word", (Kind.SEND, snd(addr=0, count=1)[1][:1]), Error.LENGTH),
        ("DONE with 0 words", (Kind.DONE, []), Error.LENGTH),
        ("DONE with 2 words", (Kind.DONE, noise(2)), Error.LENGTH),
        ("WRITE with 0 words", (Kind.WRITE, []), Error.LENGTH),
        ("WRITE beyond the SRAM", (Kind.WRITE, [size - 6] + noise(10)), Error.RANGE),
        ("WRITE one word beyond the SRAM", (Kind.WRITE, [size - 9] + noise(10)), Error.RANGE),
        ("WRITE far beyond the SRAM", (Kind.WRITE, [0xFFFFFFF0] + noise(20)), Error.RANGE),
        ("SEND beyond the SRAM", snd(addr=size - 100, count=101), Error.RANGE),
        ("SEND far beyond the SRAM", snd(addr=0xFFFFFF00, count=1), Error.RANGE),
        ("SEND of 0 words", snd(addr=0, count=0), Error.RANGE),
        ("MATMUL rows 0", mm(rows=0), Error.SHAPE),
        ("MATMUL rows 9", mm(rows=geometry.rows + 1), Error.SHAPE),
        ("MATMUL blocks 0", mm(blocks=0), Error.SHAPE),
        ("MATMUL tiles 0", mm(tiles=0), Error.SHAPE),
        ("MATMUL mode 5", mm(mode=5), Error.SHAPE),
        ("MATMUL mode 7", mm(mode=7), Error.SHAPE),
        ("MATMUL TQ2_0 with 4 blocks", mm(mode=mode_code("TQ2_0"), blocks=4), Error.SHAPE),
        ("MATMUL groups 0", mm(groups=0), Error.SHAPE),
        ("MATMUL tiles · groups beyond the engine's 16 bits", mm(tiles=0x8000, groups=2),
         Error.SHAPE),
        ("MATMUL rows 0 and a region beyond the SRAM (shape first)",
         mm(rows=0, y_addr=size), Error.SHAPE),
        ("MATMUL weights beyond the SRAM", mm(w_addr=size - w_end + 1), Error.RANGE),
        ("MATMUL activations beyond the SRAM", mm(x_addr=size - 32 * q4.blocks + 1),
         Error.RANGE),
        ("MATMUL scales beyond the SRAM",
         mm(xs_addr=size - geometry.xs_words * q4.blocks + 1), Error.RANGE),
        ("MATMUL results beyond the SRAM", mm(y_addr=size - q4.n + 1, rows=1), Error.RANGE),
        ("MATMUL results beyond the SRAM by their stride", mm(y_addr=0, y_stride=2100),
         Error.RANGE),
        ("MATMUL far beyond the SRAM", mm(x_addr=0xFFFFFFFF), Error.RANGE),
        ("MATMUL activations of 255 groups beyond the SRAM", mm(groups=255, y_addr=0, rows=1),
         Error.RANGE),
        ("MATMUL results of two groups beyond the SRAM",
         mm(groups=2, y_addr=size - 2 * q4.n + 1, rows=1), Error.RANGE),
        ("MATMUL with more tiles than the weights fit", mm(tiles=0xFFFF, blocks=0xFFFF),
         Error.RANGE),
    ]
    if geometry.vector:
        longest = geometry.vector_max_length
        bad += [
            ("VECTOR with 3 words", (Kind.VECTOR, vp()[1][:3]), Error.LENGTH),
            ("VECTOR with 5 words", (Kind.VECTOR, vp()[1] + noise(1)), Error.LENGTH),
            ("VECTOR length 0", vp(length=0), Error.SHAPE),
            (f"VECTOR length {longest + 1}", vp(length=longest + 1, a_addr=0), Error.SHAPE),
            ("VECTOR op 16", vp(op=16), Error.SHAPE),
            ("VECTOR op 31", vp(op=31), Error.SHAPE),
            ("VECTOR ROPE of odd length", vp(op=vec.Op.ROPE, length=33), Error.SHAPE),
            ("VECTOR length 0 and a beyond the SRAM (shape first)",
             vp(length=0, a_addr=size), Error.SHAPE),
            ("VECTOR a beyond the SRAM", vp(a_addr=size - 63), Error.RANGE),
            ("VECTOR b beyond the SRAM", vp(b_addr=size - 63), Error.RANGE),
            ("VECTOR results beyond the SRAM", vp(y_addr=size - 63), Error.RANGE),
            ("VECTOR far beyond the SRAM", vp(a_addr=0xFFFFFFFF), Error.RANGE),
            ("VECTOR gated SILU with b beyond the SRAM",
             vp(op=vec.Op.SILU, gated=1, b_addr=size - 1), Error.RANGE),
            ("VECTOR RMS with a beyond the SRAM by one", vp(op=vec.Op.RMS, a_addr=size - 63),
             Error.RANGE),
        ]
    for index, (label, (kind, words), bit) in enumerate(bad):
        idle, stall = prng.choice([(0.3, 0.3), (0.0, 0.0), (0.5, 0.5)])
        prog = Program(f"bad micro-op: {label}", model, prng, idle, stall)
        good = jobs[index % 2]
        # Stale results cannot pass for the good MATMUL's.
        prog.write(good.y_addr, noise((good.m - 1) * good.y_stride + good.span))
        prog.done(prng.choice(senders))
        src = prng.choice(senders)
        replies = prog.add(kind, words, src)
        want = (src, Kind.ERROR, [(1 << bit) | (int(kind) << 8)], len(prog.packets) - 1)
        assert replies == [want], f"{label}: the model answers {replies}, not {want}"
        matmul(prog, good)
        send_results(prog, good)
        prog.done()
        prog.label += f" (from {src}, idle {idle}, stall {stall}; then {good.describe()})"
        programs.append(prog.finish(clear=True))
        assert prog.errors == 1 << bit

    # Limits that are not errors.
    prog = Program("limits that are not errors", model, prng)
    prog.write(size - 10, noise(10))
    prog.write(size - MAX_WRITE, noise(MAX_WRITE), split=False)
    prog.add(Kind.WRITE, [100])             # an address and no data: nothing written
    prog.add(Kind.WRITE, [size])            # ... even at the end of the SRAM
    prog.send(size - MAX_SEND, MAX_SEND, largest=MAX_SEND)
    prog.send(size - 1, 1)
    prog.done()             # the SENDs may still be reading what the MATMULs write
    for good in jobs:
        matmul(prog, good)
        send_results(prog, good)
    prog.done()
    programs.append(prog.finish())
    assert prog.errors == 0
    if geometry.vector:
        # (A program of its own: the WRITE below must not overwrite what the SENDs above
        # still read.)
        prog = Program("VECTOR limits that are not errors", model, prng)
        # Regions ending at the end of the SRAM; a region a pass does not use may lie
        # anywhere (results of a reduction, b of a pass that reads none). Finite operands:
        # noise would raise VECTOR.
        prog.write(size - 48, (nrng.standard_normal(48).astype(np.float32).view(np.uint32)
                               .astype(np.uint64) | np.uint64(0xABC << 40)).tolist())
        for fields in ({"op": vec.Op.ADD, "a_addr": size - 16, "b_addr": size - 48,
                        "y_addr": size - 32},
                       {"op": vec.Op.RMS, "a_addr": size - 16, "y_addr": 0xFFFFFFFF,
                        "b_addr": 0xFFFFFFF0, "k1": vec._k(1 / 16)},
                       {"op": vec.Op.SILU, "a_addr": size - 16, "b_addr": 0xFFFFFFFF,
                        "y_addr": size - 16}):
            assert not prog.add(*vector_packet(length=16, **fields))
        prog.send(size - 48, 48)
        prog.done()
        programs.append(prog.finish())
        assert prog.errors == 0
    return programs


def poison_programs(geometry, model, nrng, prng, senders):
    """Each kind of poisoned packet on its own between good ones, then ``clear``; then all of
    them in a row with good micro-ops between, at full rate with the words offered
    independently of the headers, and under heavy stalls."""
    size = geometry.words
    bits = geometry.word_bits
    noise = lambda n: [prng.getrandbits(bits) for _ in range(n)]  # noqa: E731
    programs = []
    setup = Program("poisoned packets: setup", model, prng)
    job = make_job(geometry, nrng, "Q4_1", 3, tiles=1, blocks=2)
    load(setup, job, Regions(prng, size - 512))
    setup.done()
    programs.append(setup.finish())
    results = (job.m - 1) * job.y_stride + job.n
    scratch = size - 256            # the WRITEs' regions, beyond the job's

    # WRITEs: (label, addr, the header's length, words that arrive, new data words the region
    # must then hold, region words checked). The rule, stated here on its own: the data words
    # that arrive before the poisoned last one are written, unless the header's region leaves
    # the SRAM; the poisoned word is not.
    writes = [
        ("WRITE of 6 data words, the last poisoned", scratch, 7, 7, 5, 6),
        ("WRITE of 1 data word, poisoned", scratch + 9, 2, 2, 0, 1),
        ("WRITE of 200 data words, the last poisoned", scratch + 12, 201, 201, 199, 200),
        ("WRITE cut short after 3 of 10 data words", scratch + 230, 11, 4, 2, 10),
        ("WRITE of an address only, poisoned", scratch, 1, 1, 0, 0),
        ("WRITE cut short at its address word", scratch, 5, 1, 0, 4),
        ("WRITE cut at its head", scratch, 5, 0, 0, 4),
        ("WRITE of length 0, poisoned", scratch, 0, 0, 0, 0),
        ("WRITE to the end of the SRAM, the last poisoned", size - 5, 6, 6, 4, 5),
        ("WRITE beyond the SRAM, poisoned", size - 6, 11, 11, 0, 6),
        ("WRITE whose length runs beyond the SRAM, cut short", size - 4, 10, 3, 0, 4),
    ]
    mm = with_junk(Kind.MATMUL, matmul_packet(**job.fields())[1], prng, bits)
    snd = with_junk(Kind.SEND, send_packet(addr=job.y_addr, count=4, dst_x=SENDER[0],
                                           dst_y=SENDER[1])[1], prng, bits)
    # Queued micro-ops: (label, kind, words that arrive, the header's length).
    ops = [
        ("MATMUL, the last word poisoned", Kind.MATMUL, mm, 4),
        ("MATMUL cut short after 2 words", Kind.MATMUL, mm[:2], 4),
        ("MATMUL cut at its head", Kind.MATMUL, [], 4),
        ("MATMUL of 5 words, poisoned", Kind.MATMUL, mm + noise(1), 5),
        ("SEND, the last word poisoned", Kind.SEND, snd, 2),
        ("SEND cut short after 1 word", Kind.SEND, snd[:1], 2),
        ("DONE, its word poisoned", Kind.DONE, noise(1), 1),
        ("DONE cut at its head", Kind.DONE, [], 1),
        ("DONE of length 0, poisoned", Kind.DONE, [], 0),
        ("unknown kind 7 with 2 words, poisoned", 7, noise(2), 2),
        ("unknown kind 5 cut at its head", 5, [], 3),
        ("an ERROR packet sent to the tile, poisoned", Kind.ERROR, noise(1), 1),
    ]

    def poisoned(prog, kind, words, length, src, label):
        replies = prog.add(kind, words, src, poison=True, length=length)
        want = (src, Kind.ERROR, [(1 << Error.POISON) | (int(kind) << 8)],
                len(prog.packets) - 1)
        assert replies == [want], f"{label}: the model answers {replies}, not {want}"

    # ``check``: write the region first and SEND it after. (Not in a row: a WRITE must not
    # overwrite a region that a queued SEND still reads, and the cases' regions overlap.)
    def poisoned_write(prog, case, src, check):
        label, addr, length, arrived, keep, region = case
        old, new = noise(region), noise(max(length - 1, 0))
        if check and region:
            prog.write(addr, old, split=False)
        junk = prng.getrandbits(bits - 32) << 32
        poisoned(prog, Kind.WRITE, ([addr | junk] + new)[:arrived], length, src, label)
        if check and region:
            assert prog.send(addr, region) == new[:keep] + old[keep:], \
                f"{label}: the model's SRAM is not what the WRITE rule leaves"

    def poisoned_op(prog, case, src, check):
        label, kind, words, length = case
        check = check and kind == Kind.MATMUL
        stale = noise(results)
        if check:
            prog.write(job.y_addr, stale)
        poisoned(prog, kind, words, length, src, label)
        if check:
            # A MATMUL that ran would have overwritten them.
            assert prog.send(job.y_addr, results) == stale, f"{label}: the model ran it"

    cases = ([(case[0], poisoned_write, case) for case in writes]
             + [(case[0], poisoned_op, case) for case in ops])
    for label, run, case in cases:
        idle, stall = prng.choice([(0.3, 0.3), (0.0, 0.0), (0.5, 0.5)])
        prog = Program(f"poisoned packet: {label}", model, prng, idle, stall)
        src = prng.choice(senders)
        prog.done(prng.choice(senders))
        run(prog, case, src, True)
        prog.done()             # the SEND that checked may still be reading job's results
        matmul(prog, job)
        send_results(prog, job)
        prog.done()
        prog.label += f" (from {src}, idle {idle}, stall {stall})"
        programs.append(prog.finish(clear=True))
        assert prog.errors == 1 << Error.POISON

    for label, idle, stall, overlap in (("full rate, words offered early", 0.0, 0.0, True),
                                        ("heavy stalls", 0.5, 0.7, False)):
        prog = Program(f"poisoned packets in a row ({label})", model, prng, idle, stall,
                       overlap=overlap)
        for _, run, case in prng.sample(cases, len(cases)):
            run(prog, case, prng.choice(senders), False)
            if prng.random() < 0.5:
                prog.done(prng.choice(senders))
            else:
                prog.send(job.y_addr + prng.randrange(0, results - 3), prng.randint(1, 3),
                          prng.choice(senders), prng.choice(senders))
        prog.send(scratch, size - scratch)      # what the poisoned WRITEs left, the model's
        prog.done()
        matmul(prog, job)
        send_results(prog, job)
        prog.done()
        programs.append(prog.finish(clear=True))
        assert prog.errors == 1 << Error.POISON
    return programs


def edge_case_programs(geometry, model, nrng, prng, senders):
    """Where this testbench first found the RTL and the model apart (each program's replies
    are the model's)."""
    size = geometry.words
    noise = lambda n: [prng.getrandbits(geometry.word_bits) for _ in range(n)]  # noqa: E731
    programs = []

    # 1. A WRITE of an address beyond the SRAM with no data writes nothing: no error.
    prog = Program("WRITE of address size + 904 and no data", model, prng)
    prog.add(Kind.WRITE, [size + 904])
    prog.done()
    programs.append(prog.finish(clear=True))

    # 2. A SEND of 255 words: its answer would have 256 words, more than a packet holds, so
    #    it is a RANGE error.
    prog = Program("SEND of 255 words", model, prng)
    addr = prng.randrange(0, size - 300)
    prog.write(addr, noise(255))
    prog.add(*send_packet(addr=addr, count=255, dst_x=SENDER[0], dst_y=SENDER[1],
                          dst_addr=prng.getrandbits(32)))
    prog.done()
    programs.append(prog.finish(clear=True))

    # 3. MXFP4 with interleaved = 1: gpt-oss's nibble order.
    job = make_job(geometry, nrng, "MXFP4", 2, tiles=1, blocks=2)
    prog = Program("MXFP4 MATMUL with interleaved = 1", model, prng)
    load(prog, job, Regions(prng, size))
    prog.add(*matmul_packet(**job.fields(interleaved=1)))
    prog.send(job.y_addr, job.m * job.n)
    prog.done()
    programs.append(prog.finish(clear=True))

    # 4. A weight block with a non-finite scale: IEEE results, and ERROR (ENGINE | MATMUL << 8)
    #    after the MATMUL.
    job = make_job(geometry, nrng, "Q4_1", 2, tiles=1, blocks=2)
    w = np.array(job.w_raw)
    w[0, 0:2] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)
    job = with_weights(geometry, job, w)
    prog = Program("Q4_1 MATMUL with d = +inf in one weight block", model, prng)
    load(prog, job, Regions(prng, size))
    assert prog.add(*matmul_packet(**job.fields()))     # the ENGINE error
    send_results(prog, job)
    prog.done()
    programs.append(prog.finish(clear=True))

    # 5. Packets of no words with a word of the next packet already waiting on ``i`` (which the
    #    network interface never does): draining nothing must not take that word.
    for kind, label in ((5, "unknown kind 5"), (Kind.DONE, "DONE")):
        prog = Program(f"{label} with no words, the next words already offered", model, prng,
                       idle=0.0, stall=0.0, overlap=True)
        prog.add(kind, [])
        prog.done()
        prog.done()
        programs.append(prog.finish(clear=True))
    return programs


class TileVector:
    """A vector ``unit`` for sim/vector.py's operators that runs each pass as a VECTOR of a
    program: an operand the tile does not hold yet is WRITTEN to a region of its own (junk in
    the words' high halves), one an earlier pass wrote is read where it lies, and each writing
    pass gets a region of its own. ``run`` returns the model's results, read from its SRAM."""

    def __init__(self, prog, regions, src=SENDER):
        self.prog, self.regions, self.src = prog, regions, src
        self.where = {}             # a vector's bits → where the tile holds it

    def place(self, bits, addr=None):
        # (sim.vector passes binary32 bits; a float32 array is taken bit for bit too.)
        bits = np.asarray(bits)
        bits = (bits.view(np.uint32) if bits.dtype == np.float32
                else bits.astype(np.uint32)).reshape(-1)
        key = bits.tobytes()
        if addr is not None:
            self.where[key] = addr
        if key not in self.where:
            prog = self.prog
            addr = self.regions.take(bits.size)
            prog.write(addr, [int(v) | (prog.prng.getrandbits(prog.word_bits - 32) << 32)
                              for v in bits], self.src)
            self.where[key] = addr
        return self.where[key]

    def fields(self, command, a, b=None):
        prng = self.prog.prng
        return {"op": int(command.op), "gated": int(command.gated), "length": command.length,
                "limit": command.limit, "k1": command.k1, "k2": command.k2,
                "a_addr": self.place(a),
                "b_addr": self.place(b) if command.reads_b else prng.getrandbits(32),
                "y_addr": (self.regions.take(command.length) if command.writes
                           else prng.getrandbits(32))}

    def run(self, command, a, b=None):
        prog = self.prog
        f = self.fields(command, a, b)
        kind, words = vector_packet(**f)
        assert not prog.add(kind, with_junk(kind, words, prog.prng, prog.word_bits), self.src)
        if not command.writes:
            return np.zeros(0, dtype=np.uint32)
        out = np.array([int(v) for v in prog.model.sram[f["y_addr"]:f["y_addr"] + f["length"]]],
                       dtype=np.uint32)
        self.place(out, f["y_addr"])
        return out


def _floats(nrng, n, scale=2.0):
    return (nrng.standard_normal(n) * scale).astype(np.float32)


def vector_programs(geometry, model, nrng, prng, senders):
    """sim/vector.py's operators as VECTOR programs, a VECTOR over a MATMUL's results, and
    non-finite operands: each operator's result must equal sim.vector's on a VectorModel of its
    own, and is SENT back."""
    if not geometry.vector:
        return []
    programs = []
    size = geometry.words
    table = vec.rope_table(7, 64, 10000.0)
    scores = _floats(nrng, (3, 40), 4.0)
    operators = [
        [("RMSNorm", vec.rmsnorm, (_floats(nrng, 96), _floats(nrng, 96, 0.5), 1e-5)),
         ("softmax, causal", lambda u, x: vec.softmax(u, x, 0.125, limit=50),
          (_floats(nrng, 80, 8.0),)),
         ("SwiGLU", vec.swiglu, (_floats(nrng, 64, 3.0), _floats(nrng, 64))),
         ("RoPE", vec.rope, (_floats(nrng, 64), table)),
         ("residual add", vec.add, (_floats(nrng, 64), _floats(nrng, 64)))],
        [("LayerNorm", vec.layernorm,
          (_floats(nrng, 72), _floats(nrng, 72, 0.5), _floats(nrng, 72, 0.1), 1e-5)),
         ("softmax of 3 rows", lambda u, x: vec.softmax_rows(u, x, 0.25, limits=[10, 25, 40]),
          (scores,)),
         ("GELU", vec.gelu, (_floats(nrng, 64),)),
         ("SiLU", vec.silu, (_floats(nrng, 64),))],
        [("GELU, erf form", vec.gelu_erf, (_floats(nrng, 48),)),
         ("mul", vec.mul, (_floats(nrng, 48), _floats(nrng, 48)))],
    ]
    rates = [(0.3, 0.3), (0.0, 0.0), (0.5, 0.6)]
    for (idle, stall), ops in zip(rates, operators):
        src = prng.choice(senders)
        prog = Program(f"vector operators (from {src}, idle {idle}, stall {stall}): "
                       + ", ".join(name for name, _, _ in ops), model, prng, idle, stall)
        unit = TileVector(prog, Regions(prng, size), src)
        for name, operator, args in ops:
            got = np.asarray(operator(unit, *args), dtype=np.float32)
            want = np.asarray(operator(vec.VectorModel(geometry.vector_max_length), *args),
                              dtype=np.float32)
            assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist(), \
                f"the model's {name} differs from sim.vector's"
            for row in got.reshape(-1, got.shape[-1]).view(np.uint32):
                sent = prog.send(unit.place(row), row.size, src, src)
                assert sent == row.tolist(), f"{name}: not where the pass wrote it"
        prog.done(src)
        programs.append(prog.finish())

    # A MATMUL's results through the vector unit: SiLU of y, and RMSNorm of y with a weight.
    prog = Program("MATMUL, then VECTORs over its results", model, prng)
    regions = Regions(prng, size)
    job = make_job(geometry, nrng, "Q4_0", 1, tiles=2)
    load(prog, job, regions)
    matmul(prog, job)
    unit = TileVector(prog, regions)
    y = job.expected[0]
    unit.place(y, job.y_addr)
    weight = _floats(nrng, y.size, 0.5)
    for name, operator, args in (("SiLU", vec.silu, ()),
                                 ("RMSNorm", vec.rmsnorm, (weight, 1e-6))):
        got = np.asarray(operator(unit, y.view(np.float32), *args), dtype=np.float32)
        want = operator(vec.VectorModel(), y.view(np.float32), *args)
        assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
        prog.send(unit.place(got.view(np.uint32)), got.size)
    prog.done()
    programs.append(prog.finish())

    # Non-finite operands: ERROR (VECTOR) after the pass, its results written all the same;
    # the next pass's flags are its own.
    prog = Program("VECTORs with non-finite operands", model, prng)
    unit = TileVector(prog, Regions(prng, size))
    x, z = _floats(nrng, 40), _floats(nrng, 40)
    x[5], z[17] = np.inf, np.nan
    # The last: finite operands, but RMS of zeros with ε = 0 makes SCALE = 1/√0 = +inf, a
    # register the unit writes after its last element: the answer must wait for it.
    zeros = np.zeros(40, dtype=np.float32)
    for op, a in ((vec.Op.ADD, x), (vec.Op.RMS, x), (vec.Op.RMS, zeros)):
        command = vec.Command(op, 40, k1=vec._k(1 / 40), k2=0)
        f = unit.fields(command, a, z)
        (reply,) = prog.add(*vector_packet(**f))
        assert reply[1] == Kind.ERROR and reply[2] == [(1 << Error.VECTOR)
                                                       | (Kind.VECTOR << 8)]
        if command.writes:
            prog.send(f["y_addr"], 40)
    unit.run(vec.Command(vec.Op.MUL, 40), _floats(nrng, 40), _floats(nrng, 40))
    prog.done()
    programs.append(prog.finish(clear=True))
    assert prog.errors == 1 << Error.VECTOR
    return programs


PROGRAMS = {"programs": lambda *a: format_programs(*a) + back_to_back_programs(*a),
            "vector": vector_programs,
            "bad_micro_ops": bad_programs,
            "poisoned_packets": poison_programs,
            "edge_cases": edge_case_programs}


def build_programs(which, geometry, seed, mesh):
    model = TileModel(geometry)
    nrng = np.random.default_rng(seed)
    prng = random.Random(seed ^ 0x5EED)
    return PROGRAMS[which](geometry, model, nrng, prng, endpoints(*mesh))


# ---- Driving and checking ----------------------------------------------------------------------

def pack(values, layout):
    word = 0
    for name, value in values.items():
        offset, width = layout[name]
        value = int(value)
        assert 0 <= value < 1 << width, f"{name} = {value} does not fit {width} bits"
        word |= value << offset
    return word


def unpack(word, layout):
    return {name: (int(word) >> offset) & ((1 << width) - 1)
            for name, (offset, width) in layout.items()}


def kind_name(kind):
    try:
        return Kind(kind).name
    except ValueError:
        return f"kind {kind}"


def describe_packet(packet):
    src, kind, words = packet
    shown = ", ".join(f"{w:#x}" for w in words[:5]) + (", ..." if len(words) > 5 else "")
    return f"{kind_name(kind)} from {src}, {len(words)} words [{shown}]"


def describe_word(kind, index, value):
    if kind == Kind.WRITE and index > 0:
        return f"{value:#018x} (low half {f32(value):.9g})"
    return f"{value:#x}"


class Bench:
    """The tile's four streams: a program's packets in, its replies collected throughout.

    The packets go in as the network interface (rtl/noc/interface.py) offers them: a header on
    ``i_header``, then its words on ``i``, then the next header, each beat after a random idle.
    With ``overlap`` (the bench's or a program's) the headers and the words are offered
    independently instead, so the words of a packet can wait on ``i`` before the tile has taken
    its header. ``quiet``: cycles without any port moving before a program is declared stuck.
    """

    def __init__(self, dut, rng, offsets, overlap=False, quiet=QUIET_LIMIT):
        self.dut, self.rng, self.offsets, self.overlap = dut, rng, offsets, overlap
        self.quiet = quiet
        dut.clear.value = 0
        dut.i_header__valid.value = 0
        dut.i__valid.value = 0
        self.headers = StreamSink(dut, "o_header", rng)
        self.words = StreamSink(dut, "o", rng)
        self.watchdog = Watchdog(dut.clk, limit=2 * QUIET_LIMIT)

    def start(self):
        for coroutine in (self.headers.run(), self.words.run(), self.watchdog.run()):
            cocotb.start_soon(coroutine)

    def encode(self, program):
        o = self.offsets
        headers, words = [], []
        for (src, kind, data), (poison, length) in zip(program.packets, program.marks):
            header = pack({"dst_x": 1, "dst_y": 1, "last_x": 1, "last_y": 1, "src_x": src[0],
                           "src_y": src[1], "multicast": 0, "kind": kind,
                           "length": length}, o["header"])
            # Poison where the interface puts it: on the last word that arrived, or on the
            # header when none did.
            headers.append(pack({"header": header, "poison": int(poison and not data)},
                                o["rx"]))
            for i, value in enumerate(data):
                last = i == len(data) - 1
                words.append(pack({"data": value, "last": int(last),
                                   "poison": int(poison and last)}, o["word"]))
        return headers, words

    @staticmethod
    async def in_order(h_src, w_src, headers, words, program):
        """As the network interface offers them: a header, then its words, then the next."""
        start = 0
        for header, (_, _, data) in zip(headers, program.packets):
            await h_src.send([header])
            await w_src.send(words[start:start + len(data)])
            start += len(data)

    def received(self, h0, w0):
        """Reply packets from header ``h0`` and word ``w0`` on: (header fields, words)."""
        packets, used = [], w0
        for h in self.headers.received[h0:]:
            f = unpack(h, self.offsets["header"])
            if used + f["length"] > len(self.words.received):
                break
            packets.append((f, self.words.received[used:used + f["length"]]))
            used += f["length"]
        return packets

    async def errors(self):
        await ReadOnly()
        value = int(self.dut.errors.value)
        await RisingEdge(self.dut.clk)
        return value

    async def run(self, program):
        """Send the program, check its replies and the errors; returns its cycles."""
        dut = self.dut
        headers, words = self.encode(program)
        h0, w0 = len(self.headers.received), len(self.words.received)
        self.headers.stall = self.words.stall = program.stall
        h_src = StreamSource(dut, "i_header", self.rng, idle=program.idle)
        w_src = StreamSource(dut, "i", self.rng, idle=program.idle)
        if self.overlap or program.overlap:
            tasks = [cocotb.start_soon(h_src.send(headers)),
                     cocotb.start_soon(w_src.send(words))]
        else:
            tasks = [cocotb.start_soon(self.in_order(h_src, w_src, headers, words, program))]
        try:
            return await self._check(program, h_src, w_src, headers, words, h0, w0)
        finally:
            for task in tasks:
                task.cancel()
            dut.i_header__valid.value = 0
            dut.i__valid.value = 0

    async def _check(self, program, h_src, w_src, headers, words, h0, w0):
        dut, label, limit = self.dut, program.label, self.quiet
        want_h = len(program.replies)
        want_w = sum(len(w) for _, _, w, _ in program.replies)

        def state():
            return (f"headers in {h_src.sent}/{len(headers)}, words in {w_src.sent}/"
                    f"{len(words)}, reply headers {len(self.headers.received) - h0}/{want_h}, "
                    f"reply words {len(self.words.received) - w0}/{want_w}")

        progress, quiet, cycles = None, 0, 0
        while (h_src.sent < len(headers) or w_src.sent < len(words)
               or len(self.headers.received) - h0 < want_h
               or len(self.words.received) - w0 < want_w):
            await RisingEdge(dut.clk)
            cycles += 1
            now = (h_src.sent, w_src.sent, len(self.headers.received),
                   len(self.words.received))
            if now != progress:
                progress, quiet = now, 0
                self.watchdog.kick()
            else:
                quiet += 1
                if quiet >= limit:
                    got = self.received(h0, w0)
                    self.compare(program, got, partial=True)
                    raise AssertionError(f"{label}: nothing moved for {limit} cycles: "
                                         f"{state()}")
        # Everything expected has arrived: the tile must go idle and send nothing more.
        self.headers.stall = self.words.stall = 0.0
        for _ in range(limit):
            await ReadOnly()
            if not int(dut.busy.value):
                break
            await RisingEdge(dut.clk)
            self.watchdog.kick()
        else:
            raise AssertionError(f"{label}: busy still high after the last reply; {state()}")
        await RisingEdge(dut.clk)
        await ClockCycles(dut.clk, 32)
        got = self.received(h0, w0)
        self.compare(program, got)
        extra_h = len(self.headers.received) - h0 - want_h
        extra_w = len(self.words.received) - w0 - want_w
        assert not (extra_h or extra_w), (f"{label}: {extra_h} reply headers and {extra_w} "
                                          f"words more than the model's; {state()}")
        errors = await self.errors()
        assert errors == program.errors, (f"{label}: errors {errors:#04x}, the model's "
                                          f"{program.errors:#04x}")
        if program.clear:
            dut.clear.value = 1
            await RisingEdge(dut.clk)
            dut.clear.value = 0
            await RisingEdge(dut.clk)
            errors = await self.errors()
            assert errors == 0, f"{label}: errors {errors:#04x} after clear"
        dut._log.info(f"{label}: {len(program.packets)} packets, {want_h} replies "
                      f"({want_w} words) match in {cycles} cycles")
        return cycles

    def compare(self, program, got, partial=False):
        label = program.label
        for index, (expected, (f, words)) in enumerate(zip(program.replies, got)):
            dst, kind, want, origin = expected
            problems = []
            if (f["dst_x"], f["dst_y"]) != dst:
                problems.append(f"dst {(f['dst_x'], f['dst_y'])}, expected {dst}")
            if (f["last_x"], f["last_y"]) != dst or f["multicast"]:
                problems.append(f"last {(f['last_x'], f['last_y'])} multicast "
                                f"{f['multicast']}, expected last {dst} and no multicast")
            if f["kind"] != kind:
                problems.append(f"kind {kind_name(f['kind'])}, expected {kind_name(kind)}")
            if f["length"] != len(want):
                problems.append(f"length {f['length']}, expected {len(want)}")
            if words != want:
                bad = [i for i, (g, w) in enumerate(zip(words, want)) if g != w]
                if bad:
                    i = bad[0]
                    problems.append(f"{len(bad)} of {len(want)} words differ, first word {i}: "
                                    f"got {describe_word(kind, i, words[i])}, expected "
                                    f"{describe_word(kind, i, want[i])}")
            if problems:
                raise AssertionError(
                    f"{label}: reply {index} of {len(program.replies)} (to packet {origin}: "
                    f"{describe_packet(program.packets[origin])}): " + "; ".join(problems))
        if len(got) != len(program.replies) and not partial:
            summary = lambda items: [kind_name(k) for k in items]  # noqa: E731
            raise AssertionError(
                f"{label}: {len(got)} replies, the model's {len(program.replies)}: got kinds "
                f"{summary(f['kind'] for f, _ in got)}, expected "
                f"{summary(k for _, k, _, _ in program.replies)}")


async def run_all(dut, which):
    p = harness.params()
    seed = harness.seed()
    rng = make_rng(seed)
    bench = Bench(dut, rng, p["offsets"], overlap=p.get("overlap", False))
    await start_clock_and_reset(dut)
    await ClockCycles(dut.clk, 2)
    bench.start()
    programs = build_programs(which, TileGeometry(**p["geometry"]), seed, p["mesh"])
    total = 0
    for program in programs:
        total += await bench.run(program)
    dut._log.info(f"{len(programs)} programs in {total} cycles")


@cocotb.test()
async def programs(dut):
    """Parameters: ``offsets`` (:func:`_offsets`), ``geometry`` (TileGeometry's fields),
    ``mesh`` (mesh_x, mesh_y)."""
    await run_all(dut, "programs")


@cocotb.test()
async def vector(dut):
    await run_all(dut, "vector")


@cocotb.test()
async def bad_micro_ops(dut):
    await run_all(dut, "bad_micro_ops")


@cocotb.test()
async def poisoned_packets(dut):
    await run_all(dut, "poisoned_packets")


@cocotb.test()
async def edge_cases(dut):
    await run_all(dut, "edge_cases")


@cocotb.test()
async def throughput(dut):
    """Prefill's steady state: two MATMULs back to back on the same operands (Q4_1, K = 576,
    three groups of ``rows`` activation rows against one engine tile of weights), their
    operands written first, at THROUGHPUT_LAYOUTS random places in the SRAM (where the
    regions fall decides which streams meet on a bank). For each, from the first MATMUL's
    packet to the answer of a DONE after the second, the array must take a k-step in
    PREFILL_UTILISATION of the cycles; then both results are SENT back and checked as
    everywhere else."""
    p = harness.params()
    seed = harness.seed()
    rng = make_rng(seed)
    geometry = TileGeometry(**p["geometry"])
    model = TileModel(geometry)
    nrng, prng = np.random.default_rng(seed), random.Random(seed ^ 0x5EED)
    bench = Bench(dut, rng, p["offsets"])
    await start_clock_and_reset(dut)
    await ClockCycles(dut.clk, 2)
    bench.start()
    measured = []
    for layout in range(THROUGHPUT_LAYOUTS):
        job = make_job(geometry, nrng, "Q4_1", geometry.rows, tiles=1, blocks=18, groups=3)
        # A fresh layout: each region starts at a random offset, on any bank.
        regions = Regions(prng, geometry.words, start=prng.randrange(0, 64))
        setup = Program(f"throughput {layout}: operands", model, prng, idle=0.0, stall=0.0)
        load(setup, job, regions)
        y_addrs = [job.y_addr, regions.take((job.m - 1) * job.y_stride + job.span)]
        await bench.run(setup.finish())
        timed = Program(f"throughput {layout}: two MATMULs and a DONE", model, prng,
                        idle=0.0, stall=0.0)
        for y_addr in y_addrs:
            job.y_addr = y_addr
            matmul(timed, job)
        timed.done()
        cycles = await bench.run(timed.finish())
        k_steps = len(y_addrs) * job.groups * job.tiles * 32 * job.blocks
        where = (f"w at {job.w_addr}, x at {job.x_addr}, xs at {job.xs_addr}, "
                 f"y at {y_addrs}")
        measured.append((k_steps / cycles, cycles, k_steps, where))
        dut._log.info(f"layout {layout} ({where}): {k_steps} k-steps in {cycles} cycles: "
                      f"{100 * k_steps / cycles:.1f} % of the array's rate")
        check = Program(f"throughput {layout}: results", model, prng, idle=0.0, stall=0.0)
        for y_addr in y_addrs:
            job.y_addr = y_addr
            send_results(check, job)
        check.done()        # the next layout's MATMULs may overwrite what these SENDs read
        await bench.run(check.finish())
    utilisation, cycles, k_steps, where = min(measured)
    assert utilisation >= PREFILL_UTILISATION, (
        f"two prefill MATMULs took {cycles} cycles for {k_steps} k-steps ({where}): "
        f"{100 * utilisation:.1f} % of the array's rate, below "
        f"{100 * PREFILL_UTILISATION:.0f} % (all layouts: "
        f"{', '.join(f'{100 * u:.1f} %' for u, *_ in measured)})")


# ---- pytest ------------------------------------------------------------------------------------

def _config():
    from rtl.config import TesseraConfig
    return TesseraConfig()


def _offsets(fmt):
    from amaranth.hdl import Shape
    from rtl.noc.interface import NetworkInterface

    def fields(layout):
        return {name: [f.offset, Shape.cast(f.shape).width] for name, f in layout}

    return {"header": fields(fmt.header),
            "rx": fields(NetworkInterface.received_header_layout(fmt)),
            "word": fields(NetworkInterface.word_layout(fmt))}


def _params(config):
    from dataclasses import asdict
    from rtl.noc.flit import FlitFormat
    fmt = FlitFormat.from_config(config)
    return {"offsets": _offsets(fmt), "geometry": asdict(TileGeometry.from_config(config)),
            "mesh": [fmt.mesh_x, fmt.mesh_y]}


def _run(testcase):
    from rtl.tiles.tile import Tile
    config = _config()
    harness.run(lambda: Tile(config), toplevel="tile", test_module="cocotb_tests.test_tile",
                testcase=testcase, parameters=_params(config), quick_build=True,
                verilog_key=("Tile", config))


def test_encodings_agree():
    # The RTL's opcodes and error bits are the model's.
    from rtl.tiles import tile as rtl_tile
    assert {k.name: k.value for k in rtl_tile.Kind} == {k.name: k.value for k in Kind}
    assert {e.name: e.value for e in rtl_tile.Error} == {e.name: e.value for e in Error}
    from rtl.tiles.matmul import WEIGHT_WORDS
    from sim.tile import WEIGHT_WORDS as model_weight_words
    assert WEIGHT_WORDS == model_weight_words


def test_programs_model_only():
    # The program builders on their own: the model's results are matmul_q8's, each bad
    # micro-op gets its ERROR, every packet fits a NoC packet (no simulator).
    config = _config()
    p = _params(config)
    geometry = TileGeometry(**p["geometry"])
    for which in ("programs", "vector", "bad_micro_ops", "poisoned_packets"):
        for program in build_programs(which, geometry, 12345, p["mesh"]):
            assert all(len(w) <= 255 for _, _, w in program.packets)
            assert all(len(w) <= 255 for _, _, w, _ in program.replies)


@pytest.mark.slow
def test_tile_programs():
    _run("programs")


def test_tile_vector():
    _run("vector")


def test_tile_bad_micro_ops():
    _run("bad_micro_ops")


def test_tile_poisoned_packets():
    _run("poisoned_packets")


def test_tile_edge_cases():
    _run("edge_cases")


def test_tile_throughput():
    _run("throughput")

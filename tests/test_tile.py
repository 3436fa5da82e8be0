# amaranth: UnusedElaboratable=no
"""The tile's golden model and the mesh driver (sim/tile.py, sim/mesh_program.py) against
sim.dequant.matmul, and the parameter checks of the tile, the mesh and the edge interface. The
RTL against the model: cocotb_tests/test_tile.py and test_tile_mesh.py."""

from collections import Counter

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from rtl.config import WEIGHT_FORMATS, TesseraConfig
from sim import dequant
from sim import mesh_program as P
from sim import tile as T


def _weights(rng, fmt, n, k):
    return quantize(rng.standard_normal((n, k)).astype(np.float32),
                    getattr(GGMLQuantizationType, fmt))


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
@pytest.mark.parametrize("m", [1, 11, 32])
def test_distributed_matmul_is_the_golden_matmul(fmt, m):
    rng = np.random.default_rng(m)
    k = 512 if fmt == "TQ2_0" else 96
    g = T.TileGeometry().outputs_per_tile(fmt)
    w_raw = _weights(rng, fmt, 4 * 3 * g, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    program = P.MatmulProgram(fmt, w_raw, x)
    received = P.MeshModel().run(program.items)
    y = program.result(received)
    assert np.array_equal(y, dequant.matmul(fmt, w_raw, x).view(np.uint32))
    # These shapes leave room for every group, so every weight byte enters the mesh once,
    # multicast to the tiles that share it (the words round a chunk's blocks up, by far less
    # than a copy).
    sent = _weight_words(program)
    assert w_raw.size <= sent * 8 < 2 * w_raw.size


def _weight_words(program):
    """Weight words entering at the edge: a multicast packet enters once."""
    return sum(len(p.words) - 1 for p in program.packets()
               if p.kind == T.Kind.WRITE and p.words[0] >= program.w_addr[0])


@pytest.mark.parametrize("mesh, words, passes", [
    ((1, 1), 4096, 2), ((1, 1), 8192, 1), ((1, 1), 2600, 4),
    ((2, 2), 4096, 1), ((2, 2), 2600, 2), ((2, 1), 4096, 1), ((4, 2), 4096, 1)])
def test_weights_enter_once_per_set_of_groups_the_sram_holds(mesh, words, passes):
    # K = 576 (SmolLM2's width) and M = 32: four groups of 8 rows. Each resident group takes
    # 576 + 18 · 4 words of activations and 8 · 16 words in each of the four result buffers:
    # 1160; the two Q4_1 weight buffers 2 · 720. 4096 words hold two groups, 8192 all four,
    # 2600 one. One tile makes a pass over the weights per set of groups its SRAM holds; on a
    # mesh with as many groups as rows (or columns), each mesh row takes its share of the
    # groups and the weights are multicast down the columns, so the passes are those of the
    # share: the 2 × 2's two groups a row fit 4096 words in one pass.
    rng = np.random.default_rng(5)
    w_raw = _weights(rng, "Q4_1", 8 * 16, 576)
    x = rng.standard_normal((32, 576)).astype(np.float32)
    geometry = T.TileGeometry(words=words)
    program = P.MatmulProgram("Q4_1", w_raw, x, *mesh, geometry)
    y = program.result(P.MeshModel(*mesh, geometry).run(program.items))
    assert np.array_equal(y, dequant.matmul("Q4_1", w_raw, x).view(np.uint32))
    assert _weight_words(program) * 8 == passes * w_raw.size


def test_mesh_rows_share_the_groups_when_there_are_enough():
    # M = 32 on a 2 × 2 mesh: four groups of 8 rows, two per mesh row; each column computes
    # half of W's rows for both. M = 9 has two groups, one per mesh row. M = 5 has one: every
    # tile computes a quarter of W for it.
    rng = np.random.default_rng(6)
    w_raw = _weights(rng, "Q4_0", 8 * 16, 64)
    for m, expected in ((32, {(1, 1): ({0, 8}, range(0, 64)), (2, 1): ({0, 8}, range(64, 128)),
                              (1, 2): ({16, 24}, range(0, 64)),
                              (2, 2): ({16, 24}, range(64, 128))}),
                        (9, {(1, 1): ({0}, range(0, 64)), (2, 1): ({0}, range(64, 128)),
                             (1, 2): ({8}, range(0, 64)), (2, 2): ({8}, range(64, 128))}),
                        (5, {(1, 1): ({0}, range(0, 32)), (2, 1): ({0}, range(32, 64)),
                             (1, 2): ({0}, range(64, 96)), (2, 2): ({0}, range(96, 128))})):
        x = rng.standard_normal((m, 64)).astype(np.float32)
        program = P.MatmulProgram("Q4_0", w_raw, x)
        for tile, (starts, cols) in expected.items():
            sends = [send for send in program.sends if send[0] == tile]
            assert {g0 for _, _, s, _, _ in sends for g0 in s} == starts, (m, tile)
            assert {c0 for _, c0, _, _, _ in sends} == set(cols[::16]), (m, tile)
        y = program.result(P.MeshModel().run(program.items))
        assert np.array_equal(y, dequant.matmul("Q4_0", w_raw, x).view(np.uint32))


@pytest.mark.parametrize("mesh", [(1, 1), (2, 1)])
def test_groups_share_a_matmul_only_when_the_weights_end_on_a_beat(mesh):
    # At 2 × 2 an MXFP4 chunk of K = 96 is 4 rows × 3 blocks × 17 bytes = 204 bytes, not a
    # whole number of 16-byte beats: a MATMUL over several groups would be answered SHAPE
    # (the weights stream once per group as one job), so each group gets its own. M = 5 is
    # groups of 2, 2 and 1 rows.
    rng = np.random.default_rng(7)
    geometry = T.TileGeometry(rows=2, cols=2)
    w_raw = _weights(rng, "MXFP4", 2 * 4 * mesh[0] * mesh[1], 96)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    program = P.MatmulProgram("MXFP4", w_raw, x, *mesh, geometry)
    received = P.MeshModel(*mesh, geometry).run(program.items)
    assert not [p for p in received if p[1] == T.Kind.ERROR]
    y = program.result(received)
    assert np.array_equal(y, dequant.matmul("MXFP4", w_raw, x).view(np.uint32))
    # Two chunks a tile, three one-group MATMULs each (`groups`: word 3, bits 32–39).
    matmuls = [p for p in program.packets() if p.kind == T.Kind.MATMUL]
    assert len(matmuls) == 2 * 3 * mesh[0] * mesh[1]
    assert all((p.words[3] >> 32) & 0xFF == 1 for p in matmuls)


def test_an_error_answer_is_not_a_result():
    rng = np.random.default_rng(8)
    w_raw = _weights(rng, "Q4_0", 4 * 16, 64)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    program = P.MatmulProgram("Q4_0", w_raw, x)
    received = P.MeshModel().run(program.items)
    received.insert(3, ((2, 1), T.Kind.ERROR, [1 << T.Error.SHAPE | 1 << 8]))
    with pytest.raises(ValueError, match=r"^tile \(2, 1\) answered a micro-op with ERROR "
                                         r"0x108$"):
        program.result(received)


@pytest.mark.parametrize("rows, cols", [(4, 4), (2, 8), (8, 3)])
def test_smaller_arrays_take_a_word_per_k_step(rows, cols):
    # Activation codes take one SRAM word per k-step whatever the array's rows.
    rng = np.random.default_rng(rows)
    geometry = T.TileGeometry(rows=rows, cols=cols)
    w_raw = _weights(rng, "Q4_1", 2 * 2 * geometry.outputs_per_tile("Q4_1"), 64)
    x = rng.standard_normal((rows + 1, 64)).astype(np.float32)
    program = P.MatmulProgram("Q4_1", w_raw, x, 2, 1, geometry)
    y = program.result(P.MeshModel(2, 1, geometry).run(program.items))
    assert np.array_equal(y, dequant.matmul("Q4_1", w_raw, x).view(np.uint32))
    x_words, _ = T.activation_layout(geometry, np.ones((1, 64), np.int8),
                                     np.zeros((1, 2), np.uint16))
    assert x_words == [1] * 64


@pytest.mark.parametrize("mesh", [(1, 1), (2, 1), (2, 2)])
def test_the_split_covers_every_row_once(mesh):
    rng = np.random.default_rng(3)
    w_raw = _weights(rng, "Q4_0", 16 * 2 * mesh[0] * mesh[1], 64)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    program = P.MatmulProgram("Q4_0", w_raw, x, *mesh)
    covered = Counter((c0, g0 + r) for _, c0, starts, r0, r1 in program.sends
                      for g0 in starts for r in range(r0, r1))
    assert covered == {(c, r): 1 for c in range(0, w_raw.shape[0], 16) for r in range(3)}
    assert {send[0] for send in program.sends} == set(program.tile_fields())


def test_waits_keep_a_buffer_until_its_answer():
    # Before chunk j + 2's weights go to a tile, the edge waits for that tile's answer j.
    rng = np.random.default_rng(4)
    program = P.MatmulProgram("Q4_1", _weights(rng, "Q4_1", 16 * 4 * 4, 64),
                              rng.standard_normal((1, 64)).astype(np.float32))
    waits = [item for item in program.items if isinstance(item, P.Wait)]
    assert len(waits) == 4 * (4 - 2)
    assert all(w.answers in (1, 2) for w in waits)


def test_program_errors_name_the_problem():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^40 weight rows do not split into 4 tiles of whole "
                                         r"16-row chunks$"):
        P.MatmulProgram("Q4_0", _weights(rng, "Q4_0", 40, 64), x)
    x = rng.standard_normal((1, 8192)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^a Q8_0 matmul with K = 8192 needs \d+ SRAM words "
                                         r"per tile; the tile has 4096$"):
        P.MatmulProgram("Q8_0", _weights(rng, "Q8_0", 32, 8192), x)


def test_model_answers_bad_micro_ops():
    tile = T.TileModel()
    edge = (0, 1)
    assert tile.receive(7, [1], edge) == [(edge, T.Kind.ERROR, [1 << T.Error.KIND | 7 << 8])]
    assert tile.receive(T.Kind.DONE, [], edge)[0][2] == [1 << T.Error.LENGTH | 3 << 8]
    assert tile.receive(T.Kind.WRITE, [4095, 1, 2], edge)[0][2] == \
        [1 << T.Error.RANGE | 0 << 8]
    assert tile.receive(*T.send_packet(addr=0, count=255, dst_x=0, dst_y=1), edge)[0][2] == \
        [1 << T.Error.RANGE | 2 << 8]
    assert tile.receive(*T.matmul_packet(mode=1, blocks=2, tiles=1, rows=0), edge)[0][2] == \
        [1 << T.Error.SHAPE | 1 << 8]
    assert tile.receive(*T.done_packet(9), edge) == [(edge, T.Kind.DONE, [9])]
    assert tile.errors == (1 << T.Error.KIND | 1 << T.Error.LENGTH | 1 << T.Error.RANGE
                           | 1 << T.Error.SHAPE)


def test_model_answers_poisoned_packets():
    # A poisoned packet is answered POISON, whatever else is wrong with it; a poisoned WRITE
    # leaves the words before its last in SRAM and does not write the last.
    tile = T.TileModel()
    edge = (0, 1)

    def poison(kind, words, **kw):
        return tile.receive(kind, words, edge, poison=True, **kw)

    def answer(kind):
        return [(edge, T.Kind.ERROR, [1 << T.Error.POISON | int(kind) << 8])]

    tile.sram[10:14] = [7, 7, 7, 7]
    assert poison(T.Kind.WRITE, [10, 1, 2, 3]) == answer(T.Kind.WRITE)
    assert list(tile.sram[10:14]) == [1, 2, 7, 7]
    assert poison(T.Kind.WRITE, [12]) == answer(T.Kind.WRITE)     # an address only
    assert poison(T.Kind.WRITE, []) == answer(T.Kind.WRITE)       # cut at its head
    # Cut short: the header's length decides whether the region fits, as in the tile, which
    # checks it at the address word.
    assert poison(T.Kind.WRITE, [20, 5, 6], length=200) == answer(T.Kind.WRITE)
    assert list(tile.sram[20:22]) == [5, 0]
    assert poison(T.Kind.WRITE, [4090, 5, 6], length=10) == answer(T.Kind.WRITE)
    assert list(tile.sram[4090:4092]) == [0, 0]
    assert poison(T.Kind.WRITE, [4094, 5, 6]) == answer(T.Kind.WRITE)
    assert list(tile.sram[4094:4096]) == [5, 0]
    assert tile.errors == 1 << T.Error.POISON

    # Queued micro-ops are not run: no DONE, no SEND, the MATMUL's results untouched.
    assert poison(*T.done_packet(9)) == answer(T.Kind.DONE)
    assert poison(T.Kind.DONE, []) == answer(T.Kind.DONE)
    assert poison(*T.send_packet(addr=10, count=2, dst_x=0, dst_y=1)) == answer(T.Kind.SEND)
    tile.sram[300:316] = 5          # a MATMUL of the zero SRAM would write zeros here
    assert poison(*T.matmul_packet(mode=1, blocks=1, tiles=1, rows=1, w_addr=0, x_addr=100,
                                   xs_addr=200, y_addr=300, y_stride=16)) \
        == answer(T.Kind.MATMUL)
    assert list(tile.sram[300:316]) == [5] * 16
    # Other errors give way to poison.
    assert poison(7, [1, 2]) == answer(7)
    assert poison(T.Kind.DONE, [1, 2]) == answer(T.Kind.DONE)
    assert poison(T.Kind.SEND, [1], length=2) == answer(T.Kind.SEND)
    assert poison(T.Kind.WRITE, [4095, 1, 2]) == answer(T.Kind.WRITE)
    assert poison(*T.send_packet(addr=0, count=255, dst_x=0, dst_y=1)) == answer(T.Kind.SEND)
    assert tile.errors == 1 << T.Error.POISON
    # The next good micro-op runs.
    assert tile.receive(*T.done_packet(9), edge) == [(edge, T.Kind.DONE, [9])]
    assert tile.receive(*T.send_packet(addr=10, count=4, dst_x=0, dst_y=1), edge) == \
        [(edge, T.Kind.WRITE, [0, 1, 2, 7, 7])]


def test_model_length_is_for_packets_cut_short():
    tile = T.TileModel()
    with pytest.raises(ValueError, match=r"^Packet length must be 2, or more for a poisoned "
                                         r"packet cut short, not 1$"):
        tile.receive(T.Kind.WRITE, [1, 2], (0, 1), poison=True, length=1)
    with pytest.raises(ValueError, match=r"^Packet length must be 1, or more for a poisoned "
                                         r"packet cut short, not 2$"):
        tile.receive(T.Kind.DONE, [1], (0, 1), length=2)


def test_fields_must_fit():
    with pytest.raises(ValueError, match=r"^MATMUL field rows must fit 8 bits, not 256$"):
        T.matmul_packet(rows=256)


def test_tile_parameters_are_checked():
    from rtl.tiles.tile import Tile
    with pytest.raises(ValueError, match=r"^Tile needs flit_width equal to sram_width, not 64 "
                                         r"and 128$"):
        Tile(TesseraConfig(flit_width=64))
    with pytest.raises(ValueError, match=r"^Tile needs array_rows·8 ≤ sram_width and "
                                         r"array_rows·32 a multiple of sram_width, not "
                                         r"array_rows 3 and sram_width 128$"):
        Tile(TesseraConfig(array_rows=3))


def test_edge_interface_takes_an_edge_endpoint():
    from rtl.noc.flit import FlitFormat
    from rtl.noc.interface import NetworkInterface
    fmt = FlitFormat(2, 2, 64)
    assert NetworkInterface(fmt, None, None, 4, field=(0, 1)).depth == 4
    with pytest.raises(ValueError, match=r"^Network interface field must be an edge endpoint, "
                                         r"not the tile at \(1, 1\)$"):
        NetworkInterface(fmt, None, None, 4, field=(1, 1))
    with pytest.raises(ValueError, match=r"^Network interface at an edge endpoint takes field, "
                                         r"not x and y, not x=0 y=0$"):
        NetworkInterface(fmt, 0, 0, 4, field=(0, 1))


def _q8(rng, m, k):
    xb = quantize(rng.standard_normal((m, k)).astype(np.float32), GGMLQuantizationType.Q8_0)
    blocks = np.frombuffer(xb.tobytes(), dtype=np.uint8).reshape(m, k // 32, 34)
    d_x = blocks[:, :, :2].copy().view(np.uint16).reshape(m, k // 32)
    codes = blocks[:, :, 2:].copy().view(np.int8).reshape(m, k)
    return codes, d_x


def test_model_groups_share_the_weights():
    # One MATMUL over three groups of activation rows stored one after the other: group g's
    # output n of row r lands at y_addr + r·y_stride + g·N + n (docs/tile.md).
    rng = np.random.default_rng(8)
    geometry = T.TileGeometry()
    tile, edge = T.TileModel(geometry), (0, 1)
    n, k, m, groups = 2 * 16, 64, 3, 3
    w_raw = _weights(rng, "Q4_0", n, k)
    w_words = T.weight_layout(geometry, "Q4_0", w_raw)
    x_addr, xs_addr, y_addr, y_stride = 1000, 1500, 2000, groups * n + 7
    parts = [_q8(rng, m, k) for _ in range(groups)]
    tile.receive(*T.write_packet(0, w_words), edge)
    for g, (codes, d_x) in enumerate(parts):
        x_words, xs_words = T.activation_layout(geometry, codes, d_x)
        assert len(x_words) == k and len(xs_words) == 2 * geometry.xs_words
        tile.receive(*T.write_packet(x_addr + g * k, x_words), edge)
        tile.receive(*T.write_packet(xs_addr + g * len(xs_words), xs_words), edge)
    assert tile.receive(*T.matmul_packet(
        mode=1, blocks=k // 32, tiles=2, rows=m, groups=groups, w_addr=0, x_addr=x_addr,
        xs_addr=xs_addr, y_addr=y_addr, y_stride=y_stride), edge) == []
    for g, (codes, d_x) in enumerate(parts):
        want = dequant.matmul_q8("Q4_0", w_raw, codes, d_x).view(np.uint32)
        for r in range(m):
            base = y_addr + r * y_stride + g * n
            assert [int(v) for v in tile.sram[base:base + n]] == [int(v) for v in want[r]]
    # Nothing between the rows' spans is written.
    assert tile.sram[y_addr + groups * n] == 0


def test_model_groups_shape():
    edge = (0, 1)
    shape_error = [1 << T.Error.SHAPE | int(T.Kind.MATMUL) << 8]
    tile = T.TileModel()
    assert tile.receive(*T.matmul_packet(mode=1, blocks=1, tiles=1, rows=1, groups=0),
                        edge)[0][2] == shape_error
    assert tile.receive(*T.matmul_packet(mode=1, blocks=1, tiles=0x8000, rows=1, groups=2),
                        edge)[0][2] == shape_error
    # 3 columns: a Q4_0 tile is 6 rows, 6 · 18 bytes per block, not whole 16-byte beats (two
    # 8-byte words). The engine reads the weights once per group as one job, so more groups
    # need whole beats.
    tile = T.TileModel(T.TileGeometry(cols=3))
    fields = dict(mode=1, blocks=1, tiles=1, rows=1, x_addr=100, xs_addr=200, y_addr=300)
    assert tile.receive(*T.matmul_packet(**fields, groups=2), edge)[0][2] == shape_error
    assert tile.receive(*T.matmul_packet(**fields, groups=1), edge) == []
    tile.receive(*T.done_packet(0), edge)
    assert tile.receive(*T.matmul_packet(**{**fields, "blocks": 4}, groups=2),
                        edge) == []                                       # 432 bytes
    assert tile.receive(*T.matmul_packet(**{**fields, "blocks": 2}, groups=2),
                        edge)[0][2] == shape_error                        # 27 words


def test_model_refuses_a_matmul_over_a_send_in_flight():
    # A SEND ships its words while the next micro-ops run, and one more SEND waits for it: a
    # MATMUL must not write the regions of the last two SENDs until an answer that waits for
    # them (DONE, ERROR) lies between.
    edge = (0, 1)
    fields = dict(mode=1, blocks=1, tiles=1, rows=1, x_addr=100, xs_addr=200, y_addr=300)
    send = T.send_packet(addr=310, count=4, dst_x=0, dst_y=1)
    other = T.send_packet(addr=0, count=1, dst_x=0, dst_y=1)
    tile = T.TileModel()
    tile.receive(*send, edge)
    with pytest.raises(T.ProgramHazard, match=r"^MATMUL writes SRAM 300\.\.315, which a "
                                               r"SEND before it \(310\.\.313\) may still be "
                                               r"reading$"):
        tile.receive(*T.matmul_packet(**fields), edge)
    assert tile.receive(*T.matmul_packet(**{**fields, "y_addr": 310 - 16}), edge) == []
    # ... nor what the MATMUL before it may still be writing.
    with pytest.raises(T.ProgramHazard, match=r"^MATMUL uses SRAM 294\.\.309, which the "
                                               r"MATMUL before it \(294\.\.309\) may still "
                                               r"be writing$"):
        tile.receive(*T.matmul_packet(**{**fields, "y_addr": 310 - 16}), edge)
    tile = T.TileModel()
    tile.receive(*send, edge)
    # One SEND between: the first may still be shipping while the second waits.
    tile.receive(*other, edge)
    with pytest.raises(T.ProgramHazard):
        tile.receive(*T.matmul_packet(**fields), edge)
    # Two SENDs between, or an answer: the first has gone.
    tile.receive(*other, edge)
    assert tile.receive(*T.matmul_packet(**fields), edge) == []
    for between in (T.done_packet(1), (7, [0])):
        tile = T.TileModel()
        tile.receive(*send, edge)
        tile.receive(*between, edge)
        assert tile.receive(*T.matmul_packet(**fields), edge) == []


def test_region_reader_step_is_checked():
    from rtl.tiles.reader import RegionReader
    assert RegionReader(64, step=2).step == 2
    for bad in (0, 3, 2.0, True):
        with pytest.raises(ValueError, match=r"^Region reader step must be a power of two, "
                                             r"not "):
            RegionReader(64, step=bad)


def test_model_vector_is_the_vector_units_pass():
    # A VECTOR reads one binary32 per word (the low half), writes its results with zero high
    # halves, and keeps the unit's registers from one VECTOR to the next (RMS, then NORM).
    from sim import vector as V
    edge = (0, 1)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(24).astype(np.float32)
    w = rng.standard_normal(24).astype(np.float32)
    tile = T.TileModel()
    junk = rng.integers(0, 1 << 32, 48, dtype=np.uint64) << np.uint64(32)
    tile.receive(*T.write_packet(100, x.view(np.uint32).astype(np.uint64) | junk[:24]), edge)
    tile.receive(*T.write_packet(200, w.view(np.uint32).astype(np.uint64) | junk[24:]), edge)
    k1, k2 = int(np.float32(1 / 24).view(np.uint32)), int(np.float32(1e-5).view(np.uint32))
    assert tile.receive(*T.vector_packet(op=V.Op.RMS, length=24, a_addr=100, k1=k1, k2=k2,
                                         y_addr=0xFFFFFFFF), edge) == []
    assert tile.receive(*T.vector_packet(op=V.Op.NORM, length=24, a_addr=100, b_addr=200,
                                         y_addr=300), edge) == []
    want = V.rmsnorm(V.VectorModel(), x, w, np.float32(1e-5)).view(np.uint32)
    assert [int(v) for v in tile.sram[300:324]] == want.tolist()


def test_model_answers_bad_vectors():
    from sim import vector as V
    edge = (0, 1)
    tile = T.TileModel(T.TileGeometry(vector_max_length=100))

    def answer(**fields):
        fields = {"op": V.Op.ADD, "length": 8, "a_addr": 0, "b_addr": 8, "y_addr": 16,
                  **fields}
        (reply,) = tile.receive(*T.vector_packet(**fields), edge)
        return reply[2][0]

    shape, range_ = 1 << T.Error.SHAPE | 4 << 8, 1 << T.Error.RANGE | 4 << 8
    assert answer(length=0) == shape
    assert answer(length=101) == shape
    assert answer(op=16) == shape
    assert answer(op=V.Op.ROPE, length=7) == shape
    assert answer(a_addr=4089) == range_
    assert answer(b_addr=4089) == range_
    assert answer(y_addr=4089) == range_
    # Regions a pass does not use are not checked.
    assert tile.receive(*T.vector_packet(op=V.Op.MAX, length=8, a_addr=4088, b_addr=1 << 31,
                                         y_addr=1 << 31), edge) == []
    # A non-finite operand: ERROR (VECTOR), the results written all the same.
    tile.receive(*T.write_packet(0, [0x7F800000] + [0x3F800000] * 15), edge)
    assert answer() == 1 << T.Error.VECTOR | 4 << 8
    assert tile.sram[16] == 0x7F800000 and tile.sram[17] == 0x40000000
    # A tile without a vector unit does not know the micro-op.
    tile = T.TileModel(T.TileGeometry(vector=False))
    assert answer() == 1 << T.Error.KIND | 4 << 8


def test_model_refuses_a_vector_over_a_send_in_flight():
    from sim import vector as V
    edge = (0, 1)
    tile = T.TileModel()
    tile.receive(*T.send_packet(addr=310, count=4, dst_x=0, dst_y=1), edge)
    with pytest.raises(T.ProgramHazard, match=r"^VECTOR writes SRAM 300\.\.315, which a "
                                               r"SEND before it \(310\.\.313\) may still be "
                                               r"reading$"):
        tile.receive(*T.vector_packet(op=V.Op.SILU, length=16, a_addr=0, y_addr=300), edge)
    # Results ahead of an operand would overwrite elements not yet read; in place is fine.
    with pytest.raises(T.ProgramHazard, match=r"^VECTOR writes SRAM 401\.\.416, ahead of its "
                                               r"operand b \(400\.\.415\) that it still "
                                               r"reads$"):
        tile.receive(*T.vector_packet(op=V.Op.ADD, length=16, a_addr=0, b_addr=400,
                                      y_addr=401), edge)
    assert tile.receive(*T.vector_packet(op=V.Op.ADD, length=16, a_addr=400, b_addr=399,
                                         y_addr=399), edge) == []
    # Reading it is fine, and a reduction writes nothing.
    assert tile.receive(*T.vector_packet(op=V.Op.SILU, length=16, a_addr=300, y_addr=0),
                        edge) == []
    assert tile.receive(*T.vector_packet(op=V.Op.MAX, length=16, a_addr=0, y_addr=300),
                        edge) == []


def test_tile_without_vector_unit_is_smaller():
    # tile_vector=False leaves the vector unit out of the elaborated tile.
    from amaranth.hdl import Fragment
    from rtl.tiles.tile import Tile
    names = {}
    for vector in (True, False):
        fragment = Fragment.get(Tile(TesseraConfig(tile_vector=vector)), None)
        names[vector] = {sub[1] for sub in fragment.subfragments}
    assert "vector" in names[True] and "vector" not in names[False]


def test_term_lanes_reach_the_engine():
    # term_lanes=1 is the decode-sized engine; 0 picks the engine's own default (4 at 8 × 8).
    from rtl.tiles.matmul import MatmulEngine
    assert MatmulEngine.from_config(TesseraConfig(term_lanes=1)).term_lanes == 1
    assert MatmulEngine.from_config(TesseraConfig()).term_lanes == 4
    with pytest.raises(ValueError, match=r"^Matmul engine term lanes must be a power of two "
                                         r"from 1 to 8, not 16$"):
        MatmulEngine.from_config(TesseraConfig(array_rows=2, array_cols=4, term_lanes=16))

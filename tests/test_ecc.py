# amaranth: UnusedElaboratable=no
"""SECDED codec: parameter errors, the code itself, Amaranth-simulator tests against the
reference model, and the formal proof of single-error correction and double-error detection."""

import itertools
import random

import pytest
from amaranth.asserts import AnyConst
from amaranth.hdl import Assert, Assume, Cat, Cover, Elaboratable, Module, Signal
from amaranth.sim import Simulator

from rtl.tiles.ecc import SECDEDDecoder, SECDEDEncoder, hsiao_columns, secded_check_bits
from sim.ecc import HsiaoModel
from synth.formal import FormalFailure, prove
from tests.mutants import CheckBlindDecoder, MisaimedDecoder


# ---- parameters --------------------------------------------------------------------------

@pytest.mark.parametrize("make", [secded_check_bits, SECDEDEncoder, SECDEDDecoder])
def test_data_width_must_be_positive(make):
    with pytest.raises(ValueError, match=r"^ECC data width must be a positive integer, not 0$"):
        make(0)


@pytest.mark.parametrize("make", [secded_check_bits, SECDEDEncoder, SECDEDDecoder])
@pytest.mark.parametrize("width, shown", [(64.0, "64.0"), ("64", "'64'"), (True, "True")])
def test_data_width_must_be_integer(make, width, shown):
    with pytest.raises(TypeError, match=rf"^ECC data width must be a positive integer, not {shown}$"):
        make(width)


@pytest.mark.parametrize("width, check", [(1, 3), (4, 4), (8, 5), (16, 6), (32, 7), (40, 7),
                                          (57, 7), (58, 8), (64, 8), (128, 9), (512, 11)])
def test_check_bits(width, check):
    assert secded_check_bits(width) == check


def test_properties_are_read_only():
    enc, dec = SECDEDEncoder(64), SECDEDDecoder(64)
    for block in (enc, dec):
        assert (block.data_width, block.check_bits, block.code_width) == (64, 8, 72)
        with pytest.raises(AttributeError):
            block.data_width = 32
    assert (len(enc.data), len(enc.code)) == (64, 72)
    assert (len(dec.code), len(dec.data), len(dec.corrected), len(dec.uncorrectable)) == (72, 64, 1, 1)


# ---- the code ----------------------------------------------------------------------------

@pytest.mark.parametrize("width", [1, 2, 8, 28, 32, 40, 64, 100, 512])
def test_matrix_is_hsiao_and_matches_the_model(width):
    columns = hsiao_columns(width)
    r = secded_check_bits(width)
    assert len(set(columns)) == width
    assert all(bin(c).count("1") % 2 == 1 and bin(c).count("1") >= 3 and c < 1 << r
               for c in columns)
    # Fewest ones: no column heavier than needed (all lighter classes used up first).
    heaviest = max(bin(c).count("1") for c in columns)
    lighter = sum(len(list(itertools.combinations(range(r), w))) for w in range(3, heaviest, 2))
    assert sum(bin(c).count("1") < heaviest for c in columns) == lighter
    # Balanced rows: the deepest XOR tree is at most two inputs bigger than the shallowest.
    rows = [sum(c >> j & 1 for c in columns) for j in range(r)]
    assert max(rows) - min(rows) <= (0 if width in (64, 256) else 2)
    # The model builds its H independently, from the written construction.
    model = HsiaoModel(width)
    assert [sum(int(b) << j for j, b in enumerate(model.H[:, i])) for i in range(width)] \
        == list(columns)


def test_model_decodes_to_the_nearest_code_word():
    """Exhaustively for 8 data bits: the code has distance 4 (checked by brute force over all
    pairs of code words), and the model's decoder corrects every error of weight 1 and flags
    every error of weight 2 on every code word."""
    model = HsiaoModel(8)
    codes = [model.encode(d) for d in range(256)]
    distance = lambda a, b: bin(a ^ b).count("1")
    assert min(distance(a, b) for a, b in itertools.combinations(codes, 2)) == 4
    for data, code in enumerate(codes):
        assert model.decode(code) == (data, False, False)
        for p in range(model.n):
            assert model.decode(code ^ 1 << p) == (data, True, False)
        for p, q in itertools.combinations(range(model.n), 2):
            bad = code ^ 1 << p ^ 1 << q
            assert model.decode(bad) == (bad & 0xff, False, True)   # raw data, flagged


# ---- simulation --------------------------------------------------------------------------

def _simulate(dut, bench):
    sim = Simulator(dut)          # combinational: no clock
    sim.add_testbench(bench)
    sim.run()


WIDTHS = [8, 32, 40, 64]


@pytest.mark.parametrize("width", WIDTHS)
def test_encoder_matches_model(width):
    dut, model = SECDEDEncoder(width), HsiaoModel(width)
    rng = random.Random(width)
    words = [0, (1 << width) - 1, *(1 << i for i in range(width)),
             *(rng.getrandbits(width) for _ in range(300))]

    async def bench(ctx):
        for data in words:
            ctx.set(dut.data, data)
            code = ctx.get(dut.code)
            assert code == model.encode(data), f"data {data:#x}"
            assert code & ((1 << width) - 1) == data, "data bits not at the bottom of the code"

    _simulate(dut, bench)


def _double_flips(width, n, rng):
    pairs = list(itertools.combinations(range(n), 2))
    return pairs if width <= 40 else rng.sample(pairs, 400)


@pytest.mark.parametrize("width", WIDTHS)
def test_decoder_corrects_single_and_detects_double_errors(width):
    dut, model = SECDEDDecoder(width), HsiaoModel(width)
    n = model.n
    rng = random.Random(1000 + width)
    mask = (1 << width) - 1

    async def check(ctx, code, want_data, want_corrected, want_uncorrectable, what):
        ctx.set(dut.code, code)
        got = (ctx.get(dut.data), ctx.get(dut.corrected), ctx.get(dut.uncorrectable))
        assert got == (want_data, want_corrected, want_uncorrectable), \
            f"{what}: code {code:#x} gave (data, corrected, uncorrectable) = " \
            f"({got[0]:#x}, {got[1]}, {got[2]})"

    async def bench(ctx):
        counts = {"clean": 0, "single": 0, "double": 0}
        for data in [0, mask, *(rng.getrandbits(width) for _ in range(3))]:
            code = model.encode(data)
            await check(ctx, code, data, 0, 0, "clean word")
            counts["clean"] += 1
            for p in range(n):   # every position, check bits included
                await check(ctx, code ^ 1 << p, data, 1, 0, f"single flip of bit {p}")
                counts["single"] += 1
        pairs = _double_flips(width, n, rng)
        for p, q in pairs:
            data = rng.getrandbits(width)
            # Uncorrectable: the raw (still erroneous) data bits come out.
            code = model.encode(data) ^ 1 << p ^ 1 << q
            await check(ctx, code, code & mask, 0, 1, f"double flip of bits {p}, {q}")
            counts["double"] += 1
        assert counts == {"clean": 5, "single": 5 * n, "double": len(pairs)}

    _simulate(dut, bench)


@pytest.mark.parametrize("width", [8, 64])
def test_decoder_matches_model_beyond_the_guarantee(width):
    """Three to five flipped bits: no promise, but the RTL must do what the code's definition
    says (zero syndrome, a column, or neither), exactly as the model."""
    dut, model = SECDEDDecoder(width), HsiaoModel(width)
    rng = random.Random(2000 + width)
    outcomes = set()

    async def bench(ctx):
        for _ in range(300):
            code = model.encode(rng.getrandbits(width))
            for p in rng.sample(range(model.n), rng.randint(3, 5)):
                code ^= 1 << p
            ctx.set(dut.code, code)
            got = (ctx.get(dut.data), bool(ctx.get(dut.corrected)),
                   bool(ctx.get(dut.uncorrectable)))
            want = model.decode(code)
            assert got == want, f"code {code:#x}"
            outcomes.add(want[1:])

    _simulate(dut, bench)
    assert (True, False) in outcomes and (False, True) in outcomes


def test_registered_decoder_answers_one_cycle_later():
    width = 64
    dut, model = SECDEDDecoder(width, registered=True), HsiaoModel(width)
    rng = random.Random(77)
    codes = []
    for flips in (0, 1, 2) * 40:
        code = model.encode(rng.getrandbits(width))
        for p in rng.sample(range(model.n), flips):
            code ^= 1 << p
        codes.append(code)

    async def bench(ctx):
        for code in codes:
            ctx.set(dut.code, code)
            await ctx.tick()
            got = (ctx.get(dut.data), bool(ctx.get(dut.corrected)),
                   bool(ctx.get(dut.uncorrectable)))
            assert got == model.decode(code), f"code {code:#x}"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_simulation_catches_check_blind_mutant():
    dut, model = CheckBlindDecoder(32), HsiaoModel(32)

    async def bench(ctx):
        ctx.set(dut.code, model.encode(0x1234_5678) ^ 1 << 33)   # a check bit
        assert (ctx.get(dut.corrected), ctx.get(dut.uncorrectable)) == (0, 1)

    _simulate(dut, bench)


# ---- formal ------------------------------------------------------------------------------

NONE, SINGLE, DOUBLE = 0, 1, 2


class ECCSpec(Elaboratable):
    """Encoder, then zero, one or two flipped bits, then decoder, on any data word.

    ``data``, the flip positions ``i`` and ``j`` (distinct, anywhere in the code word, check
    bits included) and ``mode`` (none / single / double) are free constants: the proof covers
    every data word and every error of weight up to two at once.
    """

    def __init__(self, encoder, decoder):
        self.encoder = encoder
        self.decoder = decoder

    def elaborate(self, platform):
        m = Module()
        m.submodules.encoder = enc = self.encoder
        m.submodules.decoder = dec = self.decoder
        k, n = enc.data_width, enc.code_width

        data = Signal(k)
        i = Signal(range(n))
        j = Signal(range(n))
        mode = Signal(2)
        m.d.comb += [
            data.eq(AnyConst(k)),
            i.eq(AnyConst(len(i))),
            j.eq(AnyConst(len(j))),
            mode.eq(AnyConst(2)),
            Assume(i < n),
            Assume(j < n),
            Assume(i != j),
            Assume(mode != 3),
        ]

        # Error pattern as one-hot decoders (no wide shifter for the solver).
        at_i = Cat(i == p for p in range(n))
        at_j = Cat(j == p for p in range(n))
        error = Signal(n)
        with m.Switch(mode):
            with m.Case(SINGLE):
                m.d.comb += error.eq(at_i)
            with m.Case(DOUBLE):
                m.d.comb += error.eq(at_i | at_j)
        m.d.comb += [
            enc.data.eq(data),
            # `enc.code ^ error`, bit by bit: as 1-bit XOR reductions the SMT model keeps them
            # Boolean, which the solver handles faster (64 bits: 13 s against 19 s).
            dec.code.eq(Cat(Cat(enc.code[p], error[p]).xor() for p in range(n))),
        ]

        m.d.comb += [
            Assert(enc.code[:k] == data, "encoder changed the data bits"),
            Assert(~(dec.corrected & dec.uncorrectable), "corrected and uncorrectable together"),
        ]
        with m.Switch(mode):
            with m.Case(NONE):
                m.d.comb += [
                    Assert(dec.data == data, "clean word: data changed"),
                    Assert(~dec.corrected & ~dec.uncorrectable, "clean word flagged"),
                ]
            with m.Case(SINGLE):
                m.d.comb += [
                    Assert(dec.data == data, "single error: data not corrected"),
                    Assert(dec.corrected, "single error not flagged corrected"),
                    Assert(~dec.uncorrectable, "single error flagged uncorrectable"),
                ]
            with m.Case(DOUBLE):
                m.d.comb += [
                    Assert(dec.uncorrectable, "double error not flagged uncorrectable"),
                    Assert(~dec.corrected, "double error flagged corrected"),
                ]

        m.d.comb += [
            Cover(mode == NONE),
            Cover((mode == SINGLE) & (i < k)),      # a data bit, corrected by inverting it
            Cover((mode == SINGLE) & (i >= k)),     # a check bit
            Cover(mode == DOUBLE),
        ]
        return m


@pytest.mark.parametrize("width", [8, 64])
def test_secded_proof(width):
    # Combinational: every property holds in the first cycle or never.
    prove(ECCSpec(SECDEDEncoder(width), SECDEDDecoder(width)), name=f"ecc_{width}", depth=1)


def test_proof_catches_check_blind_mutant():
    with pytest.raises(FormalFailure,
                       match=r"failed assertion .*'single error (not flagged corrected|"
                             r"flagged uncorrectable)'"):
        prove(ECCSpec(SECDEDEncoder(8), CheckBlindDecoder(8)), name="ecc_check_blind",
              depth=1, tasks=("bmc",))


def test_proof_catches_misaimed_mutant():
    with pytest.raises(FormalFailure, match=r"failed assertion .*'single error: data not corrected'"):
        prove(ECCSpec(SECDEDEncoder(8), MisaimedDecoder(8)), name="ecc_misaimed", depth=1,
              tasks=("bmc",))

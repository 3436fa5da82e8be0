"""SRAM under Verilator: random traffic on every port at once against sim/sram.py.

Each cycle a monitor collects the requests the SRAM accepted and hands them to the reference
model, which predicts every response (and fails if a bank served two reads or two writes in one
cycle); the responses the SRAM delivers must match, port by port, in order. Addresses come in
phases (one hot bank, random, sequential) with a few out of range; producers idle and consumers
stall at random; zeroization is started at random moments.
"""

from collections import deque

import cocotb
import pytest
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from cocotb_tests import harness
from cocotb_tests.streams import StreamSink, StreamSource, Watchdog, make_rng, start_clock_and_reset
from sim.sram import Request, Response, SRAMModel


REQUESTS_PER_PORT = 1500


def _field(value, offset, width):
    return value >> offset & ((1 << width) - 1)


class Layouts:
    """Packing of request and response payloads, from the offsets the pytest side sends."""

    def __init__(self, p):
        self.p = p

    def pack_request(self, port, addr, data=0, write=0):
        off = self.p["request"][port]
        value = addr
        if "data" in off:
            value |= (data & ((1 << self.p["width"]) - 1)) << off["data"]
        if "write" in off:
            value |= write << off["write"]
        return value

    def unpack_request(self, port, value):
        kind = self.p["ports"][port]
        off = self.p["request"][port]
        addr = _field(value, 0, self.p["address_width"])
        data = _field(value, off["data"], self.p["width"]) if "data" in off else 0
        write = {"r": False, "w": True}.get(kind)
        if write is None:
            write = bool(_field(value, off["write"], 1))
        return Request(port, addr, write, data)

    def unpack_response(self, port, value):
        off = self.p["response"][port]
        data = _field(value, off["data"], self.p["width"]) if "data" in off else None
        return Response(_field(value, 0, off["error_width"]), data)


def _address(p, bank, row):
    """The word address at (bank, row), by the interleave's definition (docs/sram.md)."""
    if p["interleave"] == "low":
        return row * p["banks"] + bank
    if p["interleave"] == "xor":
        return row * p["banks"] + (bank ^ (row % p["banks"]))
    return bank * p["depth"] + row


def _place(p, addr):
    """(bank, row) of a word address: the inverse of _address."""
    if p["interleave"] == "high":
        return addr // p["depth"], addr % p["depth"]
    row = addr // p["banks"]
    bank = addr % p["banks"]
    return (bank ^ (row % p["banks"]) if p["interleave"] == "xor" else bank), row


def _addresses(rng, p, count):
    capacity = p["banks"] * p["depth"]
    out = []
    while len(out) < count:
        phase = rng.choice(["hot", "random", "sequential"])
        start = rng.randrange(capacity)
        for n in range(rng.randrange(8, 64)):
            if rng.random() < 0.03:
                out.append(capacity + rng.randrange(1 << 12))     # out of range
            elif phase == "hot":
                bank = start % p["banks"]
                row = rng.randrange(p["depth"])
                out.append(_address(p, bank, row))
            elif phase == "random":
                out.append(rng.randrange(capacity))
            else:
                out.append((start + n) % capacity)
    return out[:count]


@cocotb.test()
async def sram_matches_model_under_random_traffic(dut):
    p = harness.params()
    rng = make_rng(harness.seed())
    layouts = Layouts(p)
    ports = p["ports"]
    data_ports = {name for name, kind in ports.items() if kind in ("r", "rw")}
    await start_clock_and_reset(dut)
    dut.zeroize.value = 0

    sources, sinks, senders = {}, {}, []
    for name, kind in ports.items():
        sources[name] = StreamSource(dut, f"i_{name}", rng, idle=rng.choice([0.0, 0.3]))
        sinks[name] = StreamSink(dut, f"o_{name}", rng, stall=rng.choice([0.0, 0.2, 0.6]))
        cocotb.start_soon(sinks[name].run())
        payloads = []
        for addr in _addresses(rng, p, REQUESTS_PER_PORT):
            write = {"r": 0, "w": 1, "rw": rng.getrandbits(1)}[kind]
            payloads.append(layouts.pack_request(name, addr, rng.getrandbits(p["width"]), write))
        senders.append(cocotb.start_soon(sources[name].send(payloads)))

    async def zeroize_now_and_then():
        while True:
            await ClockCycles(dut.clk, rng.randrange(500, 3000))
            dut.zeroize.value = 1
            await RisingEdge(dut.clk)
            dut.zeroize.value = 0

    cocotb.start_soon(zeroize_now_and_then())
    watchdog = Watchdog(dut.clk, limit=p["depth"] + 1024)
    cocotb.start_soon(watchdog.run())

    model = SRAMModel(banks=p["banks"], depth=p["depth"], width=p["width"],
                      interleave=p["interleave"])
    expected = {name: deque() for name in ports}
    handles = {name: (getattr(dut, f"i_{name}__valid"), getattr(dut, f"i_{name}__ready"),
                      getattr(dut, f"i_{name}__payload"), getattr(dut, f"o_{name}__valid"),
                      getattr(dut, f"o_{name}__ready"), getattr(dut, f"o_{name}__payload"))
               for name in ports}
    total = REQUESTS_PER_PORT * len(ports)
    delivered = zeroizations = address_errors = cycles = 0
    was_busy = False
    while delivered < total:
        await ReadOnly()
        busy = bool(dut.busy.value)
        if busy and not was_busy:
            model.zeroize()
            zeroizations += 1
        was_busy = busy
        accepted = []
        for name, (iv, ir, ip, ov, orr, op) in handles.items():
            if iv.value and ir.value:
                assert not busy, f"cycle {cycles}: port {name} accepted a request while zeroizing"
                accepted.append(layouts.unpack_request(name, int(ip.value)))
            if ov.value and orr.value:
                got = layouts.unpack_response(name, int(op.value))
                assert expected[name], f"cycle {cycles}: port {name} answered nothing asked"
                want = expected[name].popleft()
                assert got == want, f"cycle {cycles}: port {name} answered {got}, expected {want}"
                delivered += 1
                watchdog.kick()
        for name, response in model.cycle(accepted, data_ports):
            expected[name].append(response)
            address_errors += response.error == 1
        if busy:
            watchdog.kick()
        await RisingEdge(dut.clk)
        cycles += 1

    for sender in senders:
        await sender
    assert int(dut.address_errors.value) == address_errors
    assert int(dut.uncorrectable_errors.value) == 0 and int(dut.corrected_errors.value) == 0
    dut._log.info(f"{total} requests in {cycles} cycles ({total / cycles:.2f} per cycle), "
                  f"{zeroizations} zeroizations, {address_errors} address errors")


@cocotb.test()
async def zeroize_clears_tenant_data(dut):
    """Tenant A fills every word; after zeroization every word reads zero through every port."""
    p = harness.params()
    rng = make_rng(harness.seed())
    layouts = Layouts(p)
    await start_clock_and_reset(dut)
    dut.zeroize.value = 0
    capacity = p["banks"] * p["depth"]
    writers = [n for n, k in p["ports"].items() if k in ("w", "rw")]
    readers = [n for n, k in p["ports"].items() if k in ("r", "rw")]

    for name in p["ports"]:
        cocotb.start_soon(StreamSink(dut, f"o_{name}", rng, stall=0.0).run())
    fill = StreamSource(dut, f"i_{writers[0]}", rng, idle=0.0)
    await fill.send([layouts.pack_request(writers[0], a, 0x7e4a_0000 | a, 1)
                     for a in range(capacity)])
    await ClockCycles(dut.clk, 4)

    dut.zeroize.value = 1
    await RisingEdge(dut.clk)
    dut.zeroize.value = 0
    busy_cycles = 0
    while True:
        await ReadOnly()
        if dut.done.value:
            break
        busy_cycles += bool(dut.busy.value)
        await RisingEdge(dut.clk)
    assert busy_cycles == p["depth"], f"zeroization took {busy_cycles} cycles"
    await RisingEdge(dut.clk)

    for name in readers:
        sink = StreamSink(dut, f"o_{name}", rng, stall=0.3)
        cocotb.start_soon(sink.run())
        source = StreamSource(dut, f"i_{name}", rng, idle=0.1)
        await source.send([layouts.pack_request(name, a, 0, 0) for a in range(capacity)])
        while len(sink.received) < capacity:
            await RisingEdge(dut.clk)
        words = [layouts.unpack_response(name, v) for v in sink.received]
        assert all(w == Response(0, 0) for w in words), \
            f"port {name} read tenant data after zeroization: " \
            f"{next(w for w in words if w != Response(0, 0))}"


@cocotb.test()
async def ecc_corrects_single_and_flags_double_flips(dut):
    """Stored bits flipped through the back door: one per word is corrected, two are flagged."""
    p = harness.params()
    if not p["ecc"]:
        return
    rng = make_rng(harness.seed())
    layouts = Layouts(p)
    await start_clock_and_reset(dut)
    dut.zeroize.value = 0
    capacity = p["banks"] * p["depth"]
    writer = next(n for n, k in p["ports"].items() if k == "w")
    reader = next(n for n, k in p["ports"].items() if k == "r")
    for name in p["ports"]:
        if name != reader:
            cocotb.start_soon(StreamSink(dut, f"o_{name}", rng, stall=0.0).run())
    words = [rng.getrandbits(p["width"]) for _ in range(capacity)]
    await StreamSource(dut, f"i_{writer}", rng, idle=0.0).send(
        [layouts.pack_request(writer, a, words[a], 1) for a in range(capacity)])
    await ClockCycles(dut.clk, 8)

    flips = {}
    for addr in rng.sample(range(capacity), capacity // 3):
        bank, row = _place(p, addr)
        cell = getattr(dut, f"bank_{bank}")[row]
        positions = rng.sample(range(p["code_width"]), rng.choice([1, 2]))
        stored = int(cell.value)
        for bit in positions:
            stored ^= 1 << bit
        cell.value = stored
        flips[addr] = positions
    await ClockCycles(dut.clk, 2)

    sink = StreamSink(dut, f"o_{reader}", rng, stall=0.2)
    cocotb.start_soon(sink.run())
    await StreamSource(dut, f"i_{reader}", rng, idle=0.1).send(
        [layouts.pack_request(reader, a) for a in range(capacity)])
    while len(sink.received) < capacity:
        await RisingEdge(dut.clk)
    singles = doubles = 0
    for addr, value in enumerate(sink.received):
        got = layouts.unpack_response(reader, value)
        positions = flips.get(addr, [])
        if len(positions) == 2:
            doubles += 1
            assert got.error == 2, f"word {addr}: bits {positions} flipped, got {got}"
        else:
            singles += len(positions) == 1
            assert got == Response(0, words[addr]), \
                f"word {addr}: bits {positions} flipped, got {got}, stored {words[addr]:#x}"
    assert int(dut.corrected_errors.value) == singles
    assert int(dut.uncorrectable_errors.value) == doubles
    dut._log.info(f"{singles} single and {doubles} double flips in {capacity} words")


# ---- pytest side -------------------------------------------------------------------------

from rtl.blocks import build_block          # noqa: E402
from rtl.config import TesseraConfig        # noqa: E402


def _params(sram):
    def offsets(layout):
        return {name: field.offset for name, field in layout}
    return {
        "banks": sram.banks, "depth": sram.depth, "width": sram.width,
        "interleave": sram.interleave, "address_width": sram.address_width,
        "ports": sram.ports, "ecc": sram.ecc, "code_width": sram.code_width,
        "request": {n: offsets(sram.request_layout(k)) for n, k in sram.ports.items()},
        "response": {n: {**offsets(sram.response_layout(k)),
                         "error_width": sram.response_layout(k)["error"].width}
                     for n, k in sram.ports.items()},
    }


CONFIGS = [
    TesseraConfig(sram_bank_depth=64),                             # 8 banks, 128 bits, ECC, xor
    TesseraConfig(sram_banks=2, sram_bank_depth=32, sram_width=32, sram_ecc=False,
                  sram_interleave="high"),
    TesseraConfig(sram_banks=1, sram_bank_depth=16, sram_width=8),
    TesseraConfig(sram_banks=4, sram_bank_depth=16, sram_width=64, sram_interleave="low"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: (
    f"b{c.sram_banks}-d{c.sram_bank_depth}-w{c.sram_width}-"
    f"{'ecc' if c.sram_ecc else 'noecc'}-{c.sram_interleave}"))
def test_sram(config):
    sram = build_block("sram", config)
    harness.run(sram, toplevel="sram", test_module="cocotb_tests.test_sram",
                parameters=_params(sram))

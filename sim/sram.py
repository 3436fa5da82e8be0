"""Reference model of the tile SRAM, written from its specification (docs/sram.md).

The model is driven by what the hardware *accepted* each cycle, not by a prediction of its
arbitration: arbitration order is the hardware's choice, within rules the model checks. What the
model fixes is everything else:

- a read returns the word as it was before this cycle's writes; writes take effect at the end
  of the cycle in which they were accepted;
- each bank serves at most one read and one write per cycle;
- an address at or beyond the capacity answers with an address error and changes nothing;
- zeroization sets every word to zero; nothing is accepted while it runs;
- responses come back per port in the order of that port's requests.
"""

from dataclasses import dataclass

import numpy as np


ERROR_NONE, ERROR_ADDRESS, ERROR_UNCORRECTABLE = 0, 1, 2


class ModelViolation(AssertionError):
    """The hardware did something its specification forbids."""


@dataclass(frozen=True)
class Request:
    port: str
    addr: int
    write: bool
    data: int = 0


@dataclass(frozen=True)
class Response:
    error: int
    data: int | None   # None for write-only ports, whose responses carry no data


class SRAMModel:
    def __init__(self, *, banks, depth, width, interleave):
        self.banks, self.depth, self.width = banks, depth, width
        self.interleave = interleave
        self.capacity = banks * depth
        self.words = np.zeros(self.capacity, dtype=object)

    def bank_of(self, addr):
        # Straight from the definition of the three interleaves.
        if self.interleave == "low":
            return addr % self.banks
        if self.interleave == "xor":
            return (addr ^ (addr // self.banks)) % self.banks
        return addr // self.depth

    def zeroize(self):
        self.words[:] = 0

    def cycle(self, accepted, data_ports):
        """Apply one cycle's accepted requests; return {port: Response} in acceptance order.

        ``data_ports`` is the set of ports whose responses carry data (they can read).
        """
        reads, writes = {}, {}
        responses = []
        for request in accepted:
            if not 0 <= request.addr < self.capacity:
                responses.append((request.port, Response(
                    ERROR_ADDRESS, 0 if request.port in data_ports else None)))
                continue
            bank = self.bank_of(request.addr)
            served = writes if request.write else reads
            if bank in served:
                raise ModelViolation(
                    f"bank {bank} served two {'writes' if request.write else 'reads'} in one "
                    f"cycle: {served[bank]} and {request}")
            served[bank] = request
            if request.write:
                responses.append((request.port, Response(
                    ERROR_NONE, 0 if request.port in data_ports else None)))
            else:
                responses.append((request.port, Response(ERROR_NONE, int(self.words[request.addr]))))
        for request in writes.values():
            self.words[request.addr] = request.data & ((1 << self.width) - 1)
        return responses

"""The blocks a configuration can build, by name: what `tessera verilog`/`synth` and the docs
tables iterate over. Each entry turns a :class:`~rtl.config.TesseraConfig` into a Component."""

from .arbiter import RoundRobinArbiter
from .config import ROUTER_PORTS, TesseraConfig
from .fifo import StreamFIFO
from .tiles.mac_array import MACArray
from .tiles.sram import SRAM


__all__ = ["BLOCKS", "build_block"]


#: name -> (factory taking a config, one-line description)
BLOCKS = {
    "fifo": (lambda c: StreamFIFO(c.flit_width, c.buffer_depth),
             "stream FIFO, one flit wide and buffer_depth deep (a router input buffer)"),
    "arbiter": (lambda c: RoundRobinArbiter(ROUTER_PORTS),
                "round-robin arbiter over the five router ports"),
    "sram": (lambda c: SRAM.from_config(c),
             "tile scratchpad: sram_banks x sram_bank_depth words, fill/weight/act/vector ports"),
    "mac_array": (lambda c: MACArray.from_config(c),
                  "systolic MAC array, array_rows x array_cols, block sums for weight_formats"),
}


def build_block(name, config=None):
    """Elaboratable Component for block ``name`` under ``config`` (the default if None)."""
    if name not in BLOCKS:
        raise ValueError(f"Unknown block {name!r}; known blocks: {', '.join(BLOCKS)}")
    return BLOCKS[name][0](config or TesseraConfig())

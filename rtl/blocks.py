"""The blocks a configuration can build, by name: what `tessera verilog`/`synth` and the docs
tables iterate over. Each entry turns a :class:`~rtl.config.TesseraConfig` into a Component."""

from .arbiter import RoundRobinArbiter
from .config import ROUTER_PORTS, TesseraConfig
from .fifo import StreamFIFO
from .noc.flit import FlitFormat
from .noc.interface import NetworkInterface
from .noc.mesh import Mesh
from .noc.router import Router
from .fp import (FP16ToFP32, FP32ToFP16, FP32ToInt, FPAdd, FPCompare, FPDiv, FPExp, FPMul,
                 FPReciprocal, Int32ToFP32)
from .tiles.dequant import Dequantizer
from .tile_mesh import TileMesh
from .tiles.mac_array import MACArray
from .tiles.matmul import MatmulEngine
from .tiles.quantizer import Q8_0Quantizer
from .tiles.requantizer import Requantizer
from .tiles.sram import SRAM
from .tiles.unpack import WeightUnpacker
from .tiles.tile import Tile
from .tiles.vector import VectorUnit


__all__ = ["BLOCKS", "SLOW_BLOCKS", "build_block"]


#: name -> (factory taking a config, one-line description)
BLOCKS = {
    "fifo": (lambda c: StreamFIFO(c.flit_width, c.buffer_depth),
             "stream FIFO, one flit wide and buffer_depth deep (a router input buffer)"),
    "arbiter": (lambda c: RoundRobinArbiter(ROUTER_PORTS),
                "round-robin arbiter over the five router ports"),
    "router": (lambda c: Router(FlitFormat.from_config(c), min(1, c.mesh_x - 1),
                                min(1, c.mesh_y - 1), c.buffer_depth),
               "NoC router: five ports, XY wormhole routing, credits, multicast (an inner one)"),
    "mesh": (lambda c: Mesh.from_config(c),
             "NoC mesh: mesh_x x mesh_y routers, tile and edge links exposed"),
    "noc_interface": (lambda c: NetworkInterface(FlitFormat.from_config(c), 0, 0, c.buffer_depth),
                      "NoC network interface: a tile's messages to packets and back"),
    "sram": (lambda c: SRAM.from_config(c),
             "tile scratchpad: sram_banks x sram_bank_depth words, fill/weight/act/vector ports"),
    "mac_array": (lambda c: MACArray.from_config(c),
                  "systolic MAC array, array_rows x array_cols, block sums for weight_formats"),
    "unpack": (lambda c: WeightUnpacker.from_config(c),
               "GGUF weight unpacker: blocks as stored in the file to integer codes and scales"),
    "dequant": (lambda c: Dequantizer.from_config(c),
                "dequant pipeline: block sums x scales, accumulated per output in binary32"),
    "matmul_engine": (lambda c: MatmulEngine.from_config(c),
                      "matmul engine: weight unpacker, transposer, MAC array and dequant "
                      "pipeline, GGUF blocks and Q8_0 activations to binary32 results"),
    "tile": (lambda c: Tile(c),
             "compute tile (without its network interface): SRAM, matmul engine, micro-op "
             "sequencer"),
    "tile_mesh": (lambda c: TileMesh(c),
                  "mesh_x x mesh_y compute tiles with network interfaces on the NoC, edge port"),
    "vector_unit": (lambda c: VectorUnit.from_config(c),
                    "vector unit: norms, softmax, SiLU/GELU, RoPE, add/mul in binary32, one pass "
                    "per command, Q8_0 out"),
    "quantizer": (lambda c: Q8_0Quantizer(),
                  "Q8_0 activation quantizer: binary32 elements to Q8_0 blocks and their sums"),
    "requantizer": (lambda c: Requantizer(),
                    "integer requantizer: int32 x fixed-point multiplier, gemmlowp or ONNX rounding"),
    "fp_add": (lambda c: FPAdd(), "binary32 adder, pipelined, round to nearest even"),
    "fp_mul": (lambda c: FPMul(), "binary32 multiplier, pipelined, round to nearest even"),
    "fp_compare": (lambda c: FPCompare(), "binary32 comparison and IEEE maximum"),
    "fp16_to_fp32": (lambda c: FP16ToFP32(), "binary16 to binary32 conversion (exact)"),
    "fp32_to_fp16": (lambda c: FP32ToFP16(), "binary32 to binary16 conversion, round to nearest even"),
    "int32_to_fp32": (lambda c: Int32ToFP32(), "int32 to binary32 conversion, round to nearest even"),
    "fp_div": (lambda c: FPDiv(), "binary32 divider, iterative, round to nearest even"),
    "fp32_to_int": (lambda c: FP32ToInt(), "binary32 to int32, rounding half away or half even, saturating"),
    "fp_exp": (lambda c: FPExp(), "binary32 e^x, pipelined, bit-exact with sim/vector_math.py"),
    "fp_reciprocal": (lambda c: FPReciprocal(),
                      "binary32 1/x or 1/sqrt(x), chosen per operand, pipelined"),
}


#: Blocks whose synthesis takes tens of minutes: `tessera demo` leaves them to their benches.
SLOW_BLOCKS = ("matmul_engine", "tile", "tile_mesh", "vector_unit")


def build_block(name, config=None):
    """Elaboratable Component for block ``name`` under ``config`` (the default if None)."""
    if name not in BLOCKS:
        raise ValueError(f"Unknown block {name!r}; known blocks: {', '.join(BLOCKS)}")
    return BLOCKS[name][0](config or TesseraConfig())

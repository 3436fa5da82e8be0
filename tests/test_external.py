# amaranth: UnusedElaboratable=no
"""ExternalModule: its instance's ports are the ones Amaranth gives the component converted on
its own (the tile mesh's simulation builds rely on it; cocotb_tests/test_tile_mesh.py runs
them)."""

import re

import pytest
from amaranth.back import verilog
from amaranth.hdl import Fragment, Instance

from rtl.config import TesseraConfig
from rtl.external import ExternalModule
from rtl.fifo import StreamFIFO
from rtl.tile_mesh import TileMesh
from rtl.tiles.tile import Tile


def _module_ports(text, name):
    """{port: width} of module ``name`` in Yosys-written Verilog."""
    body = re.search(rf"^module {re.escape(name)}\(.*?^endmodule", text, re.S | re.M).group(0)
    ports = {}
    for high, low, port in re.findall(r"^\s*(?:input|output)\s+(?:wire\s+|reg\s+)?"
                                      r"(?:\[(\d+):(\d+)\]\s*)?(\S+);", body, re.M):
        ports[port] = int(high) - int(low) + 1 if high else 1
    return ports


def _instance(component):
    fragment = Fragment.get(component, None)
    (instance,) = [sub for sub, *_ in fragment.subfragments if isinstance(sub, Instance)]
    return instance


@pytest.mark.parametrize("make", [lambda: StreamFIFO(12, 4),
                                  lambda: Tile(TesseraConfig(array_rows=2, array_cols=2,
                                                             flit_width=64, sram_width=64,
                                                             tile_vector=False))],
                         ids=["fifo", "tile"])
def test_instance_ports_are_the_converted_modules(make):
    component = make()
    ports = _module_ports(verilog.convert(component, name="inner", emit_src=False), "inner")
    instance = _instance(ExternalModule(component.signature, "inner"))
    assert instance.type == "inner"
    named = {name: len(value) for name, (value, kind) in instance.ports.items()}
    assert named == ports
    directions = {name: kind for name, (value, kind) in instance.ports.items()}
    assert directions["clk"] == directions["rst"] == "i"
    assert {directions[name] for name in ("i__valid", "o__ready")} == {"i"}
    assert {directions[name] for name in ("i__ready", "o__valid")} == {"o"}


def test_tile_signature_for_is_the_tiles():
    config = TesseraConfig(array_rows=2, array_cols=2, flit_width=64, sram_width=64)
    assert Tile.signature_for(config) == Tile(config).signature


def test_tile_signature_for_checks_the_configuration():
    with pytest.raises(ValueError, match=r"^Tile needs flit_width equal to sram_width, not 128 "
                                         r"and 64$"):
        Tile.signature_for(TesseraConfig(sram_width=64))


def test_parameters_are_checked():
    signature = StreamFIFO(8, 2).signature
    with pytest.raises(ValueError, match=r"^External module name must be a Verilog identifier, "
                                         r"not 'a b'$"):
        ExternalModule(signature, "a b")
    with pytest.raises(TypeError, match=r"^External module signature must be a "
                                        r"wiring.Signature, not \{\}$"):
        ExternalModule({}, "inner")
    with pytest.raises(ValueError, match=r"^Tile module must be None or a Verilog identifier, "
                                         r"not 'tile-0'$"):
        TileMesh(TesseraConfig(), tile_module="tile-0")


def test_name_is_read_only():
    external = ExternalModule(StreamFIFO(8, 2).signature, "inner")
    assert external.name == "inner"
    with pytest.raises(AttributeError):
        external.name = "other"

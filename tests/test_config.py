"""TesseraConfig: one validated source of truth; every bad value names itself and the rule."""

import pytest

from rtl.config import ROUTER_PORTS, WEIGHT_FORMATS, TesseraConfig


def test_defaults_are_the_2x2_demo_configuration():
    config = TesseraConfig()
    assert (config.mesh_x, config.mesh_y, config.tiles) == (2, 2, 4)
    assert config.weight_formats == WEIGHT_FORMATS
    assert ROUTER_PORTS == 5


@pytest.mark.parametrize("name, value, message", [
    ("mesh_x", 0, r"^mesh_x must be an integer from 1 to 16, not 0$"),
    ("mesh_y", 17, r"^mesh_y must be an integer from 1 to 16, not 17$"),
    ("array_rows", -2, r"^array_rows must be an integer from 1 to 32, not -2$"),
    ("array_rows", 33, r"^array_rows must be an integer from 1 to 32, not 33$"),
    ("array_cols", 65, r"^array_cols must be an integer from 1 to 64, not 65$"),
    ("flit_width", 36, r"^flit_width must be a multiple of 8 from 32 to 1024, not 36$"),
    ("flit_width", 16, r"^flit_width must be a multiple of 8 from 32 to 1024, not 16$"),
    ("buffer_depth", 0, r"^buffer_depth must be an integer from 1 to 64, not 0$"),
    ("sram_banks", 3, r"^sram_banks must be a power of two from 1 to 32, not 3$"),
    ("sram_bank_depth", 8, r"^sram_bank_depth must be a power of two from 16 to 65536, not 8$"),
    ("sram_width", 12, r"^sram_width must be a multiple of 8 from 8 to 512, not 12$"),
    ("vector_max_length", 65536,
     r"^vector_max_length must be an integer from 2 to 65535, not 65536$"),
    ("term_lanes", 3, r"^term_lanes must be 0 \(automatic\) or a power of two from 1 to 16, "
                      r"not 3$"),
    ("term_lanes", 32, r"^term_lanes must be an integer from 0 to 16, not 32$"),
    ("weight_formats", (), r"^weight_formats must name at least one of Q8_0, Q4_0, Q4_1, "
                           r"MXFP4, TQ2_0, not \(\)$"),
    ("weight_formats", ("Q8_0", "Q5_K"), r"^weight_formats entry 'Q5_K' is not a known format; "
                                         r"allowed: Q8_0, Q4_0, Q4_1, MXFP4, TQ2_0$"),
    ("weight_formats", ("Q8_0", "Q8_0"), r"^weight_formats must not repeat a format, "
                                         r"not \('Q8_0', 'Q8_0'\)$"),
])
def test_bad_values_raise_value_error(name, value, message):
    with pytest.raises(ValueError, match=message):
        TesseraConfig(**{name: value})


@pytest.mark.parametrize("name, value, message", [
    ("mesh_x", 2.0, r"^mesh_x must be an integer, not 2\.0$"),
    ("array_rows", "8", r"^array_rows must be an integer, not '8'$"),
    ("buffer_depth", True, r"^buffer_depth must be an integer, not True$"),
    ("weight_formats", "Q8_0", r"^weight_formats must be a tuple of format names, not 'Q8_0'$"),
])
def test_wrong_types_raise_type_error(name, value, message):
    with pytest.raises(TypeError, match=message):
        TesseraConfig(**{name: value})


def test_configuration_is_immutable_and_hashable():
    config = TesseraConfig(weight_formats=["Q4_0", "Q8_0"])
    assert config.weight_formats == ("Q4_0", "Q8_0")
    with pytest.raises(AttributeError):
        config.mesh_x = 4
    assert hash(config) == hash(TesseraConfig(weight_formats=("Q4_0", "Q8_0")))


def test_replace_validates_and_rejects_unknown_names():
    config = TesseraConfig().replace(mesh_x=4, mesh_y=1)
    assert config.tiles == 4
    with pytest.raises(ValueError, match=r"^buffer_depth must be"):
        config.replace(buffer_depth=100)
    with pytest.raises(TypeError, match=r"^Unknown configuration parameter 'mesh_z'; known: mesh_x"):
        config.replace(mesh_z=2)


def test_overrides_from_the_command_line():
    config = TesseraConfig().with_overrides(["mesh_x=4", " flit_width = 0x80 ",
                                             "weight_formats=Q4_0,TQ2_0"])
    assert (config.mesh_x, config.flit_width) == (4, 128)
    assert config.weight_formats == ("Q4_0", "TQ2_0")
    with pytest.raises(ValueError, match=r"^Configuration override must look like name=value, "
                                         r"not 'mesh_x'$"):
        TesseraConfig().with_overrides(["mesh_x"])
    with pytest.raises(TypeError, match=r"^mesh_x must be an integer, not 'four'$"):
        TesseraConfig().with_overrides(["mesh_x=four"])
    with pytest.raises(TypeError, match=r"^Unknown configuration parameter 'banks'"):
        TesseraConfig().with_overrides(["banks=4"])


def test_as_dict_round_trips():
    config = TesseraConfig(mesh_x=3, buffer_depth=8)
    assert TesseraConfig(**config.as_dict()) == config


def test_sram_options():
    config = TesseraConfig().with_overrides(["sram_ecc=false", "sram_interleave=high"])
    assert (config.sram_ecc, config.sram_interleave) == (False, "high")
    with pytest.raises(ValueError, match=r"^sram_interleave must be one of 'low', 'high', "
                                         r"'xor', not 'middle'$"):
        TesseraConfig(sram_interleave="middle")
    with pytest.raises(TypeError, match=r"^sram_ecc must be True or False, not 1$"):
        TesseraConfig(sram_ecc=1)
    with pytest.raises(TypeError, match=r"^tile_vector must be True or False, not 'no'$"):
        TesseraConfig(tile_vector="no")
    assert TesseraConfig().with_overrides(["tile_vector=false"]).tile_vector is False
    with pytest.raises(TypeError, match=r"^sram_ecc must be true or false, not 'yes'$"):
        TesseraConfig().with_overrides(["sram_ecc=yes"])

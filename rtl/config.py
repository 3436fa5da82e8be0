"""The one configuration object of a Tessera build.

Every layer (RTL, golden model, performance model, register map, docs) reads a
:class:`TesseraConfig`; it is validated once, here, so a bad value fails before anything is
elaborated, with a message naming the parameter, the value and what is allowed.
"""

import dataclasses
from dataclasses import dataclass, fields


__all__ = ["TesseraConfig", "WEIGHT_FORMATS", "PACKED_FORMATS", "MAX_ARRAY_ROWS", "mode_code",
           "ROUTER_PORTS", "SRAM_INTERLEAVES"]


#: Weight formats the hardware can decode (SPEC §2), in the order the docs list them.
WEIGHT_FORMATS = ("Q8_0", "Q4_0", "Q4_1", "MXFP4", "TQ2_0")

def mode_code(fmt):
    """Run-time mode number of weight format ``fmt``: its index in :data:`WEIGHT_FORMATS`."""
    return WEIGHT_FORMATS.index(fmt)


#: Formats whose weight codes are narrow enough for two products per multiplier (the MAC
#: array's 2x modes); the rest (Q8_0) take one.
PACKED_FORMATS = ("Q4_0", "Q4_1", "MXFP4", "TQ2_0")

#: The MAC array's rows finish a 32-element block one cycle apart and share one output path per
#: column, so a block must end in every row before the next block ends in the first: at most
#: 32 rows (docs/mac_array.md).
MAX_ARRAY_ROWS = 32

#: How SRAM word addresses spread over banks: "low" (consecutive words in consecutive banks),
#: "high" (each bank a contiguous range) or "xor" (as "low", the bank XORed with the row's low
#: bits: streams with different strides do not fall into step on the banks; docs/sram.md).
SRAM_INTERLEAVES = ("low", "high", "xor")

#: A mesh router has a port towards each neighbour (N, E, S, W) and one to its tile.
ROUTER_PORTS = 5


def _is_power_of_two(value):
    return value > 0 and value & (value - 1) == 0


def _check_int(name, value, *, low, high, power_of_two=False, multiple_of=None):
    # bool is an int subclass; `mesh_x=True` is always a mistake, so reject it by name.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    allowed = f"an integer from {low} to {high}"
    if power_of_two:
        allowed = f"a power of two from {low} to {high}"
    elif multiple_of is not None:
        allowed = f"a multiple of {multiple_of} from {low} to {high}"
    if (not low <= value <= high
            or (power_of_two and not _is_power_of_two(value))
            or (multiple_of is not None and value % multiple_of != 0)):
        raise ValueError(f"{name} must be {allowed}, not {value!r}")


@dataclass(frozen=True)
class TesseraConfig:
    """Parameters of one Tessera accelerator.

    Instances are immutable; derive variants with :meth:`replace` or :meth:`with_overrides`.

    Parameters
    ----------
    mesh_x, mesh_y : int
        Tiles along X and Y of the mesh, 1 to 16 each.
    array_rows, array_cols : int
        Shape of each tile's systolic MAC array: 1 to :data:`MAX_ARRAY_ROWS` rows, 1 to 64
        columns.
    weight_formats : tuple of str
        Weight formats the unpacker and array support; a non-empty subset of
        :data:`WEIGHT_FORMATS`, without repeats.
    flit_width : int
        Width of a NoC flit in bits; a multiple of 8 from 32 to 1024. A tile needs it equal to
        ``sram_width``. The default, 128, lets the one edge port feed a 2 × 2 mesh of 8 × 8
        arrays in prefill: at M = 32 those arrays take 10 bytes of 4-bit weights a cycle, more
        than a 64-bit port carries (docs/tile.md).
    buffer_depth : int
        Depth of each router input buffer (and the stream FIFOs that stand in for it), in
        flits; 1 to 64.
    sram_banks : int
        SRAM banks per tile; a power of two from 1 to 32.
    sram_bank_depth : int
        Words per SRAM bank; a power of two from 16 to 65536.
    sram_width : int
        Bits per SRAM word (data, not counting ECC); a multiple of 8 from 8 to 512.
    sram_ecc : bool
        Protect each SRAM word with a SECDED code (a 64-bit word gets 8 check bits, which fill
        the 72-bit width of two ECP5 DP16KD in 512 × 36 exactly; a 128-bit word gets 9, in
        four).
    sram_interleave : str
        One of :data:`SRAM_INTERLEAVES`.
    vector_max_length : int
        Longest vector one vector-unit command may stream, 2 to 65535 (a command is a pass over
        SRAM, so this is only a counter's range, not storage).
    tile_vector : bool
        Build a vector unit into each tile (the VECTOR micro-op). Without it a tile answers
        VECTOR as an unknown micro-op; it saves about 34k LUT4 and 108 DSPs per tile.
    term_lanes : int
        Dequant pipelines of each tile's matmul engine (docs/matmul.md): 0 (the default)
        takes as many as keep the array at full rate in prefill (4 at 8 × 8), 1 builds the
        decode-sized engine; otherwise a power of two up to 16 (and at most the engine's
        outputs per array word, which the engine checks).
    """

    mesh_x: int = 2
    mesh_y: int = 2
    array_rows: int = 8
    array_cols: int = 8
    weight_formats: tuple = WEIGHT_FORMATS
    flit_width: int = 128
    buffer_depth: int = 4
    sram_banks: int = 8
    sram_bank_depth: int = 512
    sram_width: int = 128
    sram_ecc: bool = True
    sram_interleave: str = "xor"
    vector_max_length: int = 16384
    tile_vector: bool = True
    term_lanes: int = 0

    def __post_init__(self):
        _check_int("mesh_x", self.mesh_x, low=1, high=16)
        _check_int("mesh_y", self.mesh_y, low=1, high=16)
        _check_int("array_rows", self.array_rows, low=1, high=MAX_ARRAY_ROWS)
        _check_int("array_cols", self.array_cols, low=1, high=64)
        _check_int("flit_width", self.flit_width, low=32, high=1024, multiple_of=8)
        _check_int("buffer_depth", self.buffer_depth, low=1, high=64)
        _check_int("sram_banks", self.sram_banks, low=1, high=32, power_of_two=True)
        _check_int("sram_bank_depth", self.sram_bank_depth, low=16, high=65536,
                   power_of_two=True)
        _check_int("sram_width", self.sram_width, low=8, high=512, multiple_of=8)
        _check_int("vector_max_length", self.vector_max_length, low=2, high=65535)
        _check_int("term_lanes", self.term_lanes, low=0, high=16)
        if self.term_lanes and not _is_power_of_two(self.term_lanes):
            raise ValueError(f"term_lanes must be 0 (automatic) or a power of two from 1 to "
                             f"16, not {self.term_lanes!r}")

        # The head flit carries the whole header, whose coordinate fields grow with the mesh.
        from .noc.flit import FlitFormat
        try:
            FlitFormat(self.mesh_x, self.mesh_y, self.flit_width)
        except ValueError as error:
            raise ValueError(str(error).replace("Flit width", "flit_width", 1)) from None

        for name in ("sram_ecc", "tile_vector"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if self.sram_interleave not in SRAM_INTERLEAVES:
            raise ValueError(f"sram_interleave must be one of "
                             f"{', '.join(map(repr, SRAM_INTERLEAVES))}, "
                             f"not {self.sram_interleave!r}")

        formats = self.weight_formats
        if isinstance(formats, str) or not isinstance(formats, (tuple, list)):
            raise TypeError(f"weight_formats must be a tuple of format names, not {formats!r}")
        allowed = ", ".join(WEIGHT_FORMATS)
        if not formats:
            raise ValueError(f"weight_formats must name at least one of {allowed}, not ()")
        for name in formats:
            if name not in WEIGHT_FORMATS:
                raise ValueError(f"weight_formats entry {name!r} is not a known format; "
                                 f"allowed: {allowed}")
        if len(set(formats)) != len(formats):
            raise ValueError(f"weight_formats must not repeat a format, not {tuple(formats)!r}")
        # Normalise lists to tuples so configurations stay hashable and compare equal.
        object.__setattr__(self, "weight_formats", tuple(formats))

    @property
    def tiles(self):
        """Number of compute tiles in the mesh."""
        return self.mesh_x * self.mesh_y

    def replace(self, **changes):
        """A copy with ``changes`` applied (and validated)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"Unknown configuration parameter {unknown[0]!r}; "
                            f"known: {', '.join(self.parameter_names())}")
        return dataclasses.replace(self, **changes)

    def with_overrides(self, assignments):
        """A copy with ``name=value`` strings (as given to ``tessera --set``) applied.

        Integers parse as Python integers, booleans as ``true``/``false`` (or 1/0), strings
        as they are; ``weight_formats`` takes a comma-separated list.
        """
        changes = {}
        for assignment in assignments:
            name, sep, text = assignment.partition("=")
            name, text = name.strip(), text.strip()
            if not sep or not name:
                raise ValueError(f"Configuration override must look like name=value, "
                                 f"not {assignment!r}")
            if name not in self.parameter_names():
                raise TypeError(f"Unknown configuration parameter {name!r}; "
                                f"known: {', '.join(self.parameter_names())}")
            kind = {f.name: f.type for f in fields(self)}[name]
            if name == "weight_formats":
                changes[name] = tuple(part.strip() for part in text.split(",") if part.strip())
            elif kind in (bool, "bool"):
                truth = {"true": True, "1": True, "false": False, "0": False}
                if text.lower() not in truth:
                    raise TypeError(f"{name} must be true or false, not {text!r}")
                changes[name] = truth[text.lower()]
            elif kind in (str, "str"):
                changes[name] = text
            else:
                try:
                    changes[name] = int(text, 0)
                except ValueError:
                    raise TypeError(f"{name} must be an integer, not {text!r}") from None
        return self.replace(**changes)

    @classmethod
    def parameter_names(cls):
        return tuple(f.name for f in fields(cls))

    def as_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}

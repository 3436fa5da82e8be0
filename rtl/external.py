"""A component that stands in for a Verilog module emitted on its own."""

from amaranth.hdl import ClockSignal, Instance, Module, ResetSignal
from amaranth.lib import wiring
from amaranth.lib.wiring import In


__all__ = ["ExternalModule"]


class ExternalModule(wiring.Component):
    """Instantiates Verilog module ``name``, which has ``signature``'s ports named as
    :func:`amaranth.back.verilog.convert` names a component's (``i__payload``, ``o__valid``, …)
    and the ``sync`` domain's ``clk`` and ``rst``.

    A design with several copies of one large block elaborates and emits it once this way: the
    block is converted on its own as module ``name`` and its Verilog given to the simulator
    beside the design's. Amaranth emits every instance of a block as a module of its own, so
    the 2×2 tile mesh's four tiles took four times the tile's conversion (23 s each) and
    Verilator compiled four copies of the same model.

    Parameters
    ----------
    signature : wiring.Signature
        The block's signature (as its component has it, not flipped).
    name : str
        The Verilog module's name.

    Members
    -------
    Those of ``signature``.
    """

    def __init__(self, signature, name):
        if not isinstance(signature, wiring.Signature):
            raise TypeError(f"External module signature must be a wiring.Signature, not "
                            f"{signature!r}")
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"External module name must be a Verilog identifier, not {name!r}")
        self._name = name
        super().__init__(signature)

    @property
    def name(self):
        return self._name

    def elaborate(self, platform):
        m = Module()
        ports = {"i_clk": ClockSignal(), "i_rst": ResetSignal()}
        for path, member, value in self.signature.flatten(self):
            direction = "i" if member.flow == In else "o"
            ports[f"{direction}_{'__'.join(map(str, path))}"] = value
        m.submodules.instance = Instance(self._name, **ports)
        return m

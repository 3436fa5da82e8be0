"""Vendor mapping the datapaths share: the pipelined multiplier (an ECP5 MULT18X18D with its
input, pipeline and output registers, or ``*`` between the same three registers elsewhere), and
the attribute that keeps a small memory in LUT RAM where the device has it."""

from amaranth.hdl import ClockSignal, Const, Instance, Signal


__all__ = ["is_ecp5", "registered_multiply", "MULTIPLY_REGISTERS", "lut_ram"]


#: Cycles from the operands to the product of :func:`registered_multiply`.
MULTIPLY_REGISTERS = 3


def is_ecp5(platform):
    """True when elaborating for a Lattice ECP5 (hand-instantiated DSPs)."""
    return getattr(platform, "family", None) == "ecp5"


def lut_ram(platform):
    """Memory attributes asking for LUT RAM on ECP5, where block RAM's unregistered read (5.6 ns
    clock to output) would sit on a critical path; none elsewhere (the iCE40 has no LUT RAM,
    and Yosys refuses a forced mapping it cannot honour)."""
    return {"ram_style": "distributed"} if is_ecp5(platform) else {}


def registered_multiply(m, platform, a, b, product, *, signed=True, enable=None, name="multiplier"):
    """Drive ``product`` with ``a · b`` three cycles later (:data:`MULTIPLY_REGISTERS`).

    Yosys maps ``*`` to MULT18X18D without its registers, so on ECP5 the DSP is instantiated
    by hand with all three on: the multiplier's own delay then sits between two registers
    inside the DSP. Elsewhere the same registers surround ``*``, so both elaborations have
    the same timing. ``a`` and ``b`` are at most 18 bits; ``enable`` (default always) is the
    registers' clock enable, for a pipeline that stalls. The registers have no reset: they
    hold data whose validity the caller tracks.
    """
    if is_ecp5(platform):
        # Named a, b, p as they were inside the PE: nextpnr's placement depends on net names,
        # and the MAC array's measured Fmax was taken with these.
        a18, b18, p36 = Signal(18, name="a"), Signal(18, name="b"), Signal(36, name="p")
        extend = (lambda v: v.as_signed()) if signed else (lambda v: v.as_unsigned())
        m.d.comb += [a18.eq(extend(a)), b18.eq(extend(b)), product.eq(p36[:len(product)])]
        ports = {}
        for i in range(18):
            ports[f"i_A{i}"] = a18[i]
            ports[f"i_B{i}"] = b18[i]
            ports[f"i_C{i}"] = Const(0, 1)
        for i in range(36):
            ports[f"o_P{i}"] = p36[i]
        clocked = {}
        for register in ("INPUTA", "INPUTB", "PIPELINE", "OUTPUT"):
            clocked[f"p_REG_{register}_CLK"] = "CLK0"
            clocked[f"p_REG_{register}_CE"] = "CE0"
            clocked[f"p_REG_{register}_RST"] = "RST0"
        setattr(m.submodules, name, Instance(
            "MULT18X18D",
            **clocked,
            p_REG_INPUTC_CLK="NONE",
            p_GSR="DISABLED",
            p_RESETMODE="SYNC",
            p_MULT_BYPASS="DISABLED",
            p_SOURCEB_MODE="B_SHIFT",
            p_CAS_MATCH_REG="FALSE",
            p_HIGHSPEED_CLK="NONE",
            p_CLK0_DIV="ENABLED",
            i_SIGNEDA=Const(int(signed), 1), i_SIGNEDB=Const(int(signed), 1),
            i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
            i_CLK0=ClockSignal(), i_CLK1=Const(0, 1), i_CLK2=Const(0, 1), i_CLK3=Const(0, 1),
            i_CE0=Const(1, 1) if enable is None else enable,
            i_CE1=Const(0, 1), i_CE2=Const(0, 1), i_CE3=Const(0, 1),
            i_RST0=Const(0, 1), i_RST1=Const(0, 1), i_RST2=Const(0, 1), i_RST3=Const(0, 1),
            **ports,
        ))
        return
    a_q = Signal.like(a, reset_less=True, name=f"{name}_a")
    b_q = Signal.like(b, reset_less=True, name=f"{name}_b")
    p_q = Signal.like(product, reset_less=True, name=f"{name}_p")
    p_qq = Signal.like(product, reset_less=True, name=f"{name}_pp")
    registers = [a_q.eq(a), b_q.eq(b), p_q.eq(a_q * b_q), p_qq.eq(p_q)]
    if enable is None:
        m.d.sync += registers
    else:
        with m.If(enable):
            m.d.sync += registers
    m.d.comb += product.eq(p_qq)

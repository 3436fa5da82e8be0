"""Yosys / nextpnr synthesis flows and SymbiYosys formal flow."""

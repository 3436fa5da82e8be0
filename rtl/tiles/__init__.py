"""Compute tile blocks: MAC array, unpack, dequant, vector unit, SRAM (issues 3-8)."""
